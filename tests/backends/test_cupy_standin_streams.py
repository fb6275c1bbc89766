"""The stand-in's streams, capture rules and memory pools (issue 21): what a GPU would do with
gpunn's ordering and memory, seen on the CPU. Each rule is checked both ways: the ordered or
allowed form passes, the other fails as the GPU would (or would silently go wrong)."""

import gc

import numpy as np
import pytest
from support import cupy_standin
from support.cupy_standin import StandinViolation

import gpunn as gn


@pytest.fixture
def standin():
    with cupy_standin.installed() as standin, gn.use_backend("cupy"):
        yield standin


# --- streams ---------------------------------------------------------------------------------
def test_work_of_one_stream_is_unordered_on_another_without_an_event(standin):
    cp = standin.cupy
    x = cp.asarray(np.arange(4.0))
    cp.cuda.Device().synchronize()  # the copy to the device is queued on the legacy stream too
    side = cp.cuda.Stream(non_blocking=True)
    with side:
        y = x * 2  # written on the side stream
    with pytest.raises(StandinViolation, match="without an event"):
        y + 1  # the current (legacy) stream reads it: nothing orders the two
    with side:
        event = side.record()
    cp.cuda.get_current_stream().wait_event(event)
    assert float((y + 1).sum()) == 16.0  # ordered by the event
    with side:
        z = x * 3
    side.synchronize()  # the host saw it complete: every stream may read it
    assert float(z.sum()) == 18.0


def test_a_host_read_synchronises_only_its_own_stream(standin):
    """CuPy's ndarray.get copies on the current stream and synchronises that stream
    (cupy/_core/core.pyx, ndarray.get): data another stream is still writing is not ready."""
    cp = standin.cupy
    x = cp.asarray(np.arange(4.0))
    cp.cuda.Device().synchronize()  # the copy to the device is queued on the legacy stream too
    side = cp.cuda.Stream(non_blocking=True)
    with side:
        y = x + 1
    with pytest.raises(StandinViolation, match="memcpy device-to-host reads"):
        cp.asnumpy(y)
    assert cp.asnumpy(y, stream=side).tolist() == [1.0, 2.0, 3.0, 4.0]  # on its own stream: ordered, synchronised
    assert float(y.sum()) == 10.0  # complete since that read
    with side:
        w = y * 2
    with pytest.raises(StandinViolation, match="memcpy device-to-host reads"):
        float(w[0])  # float() is get() on the current stream too


def test_a_blocking_stream_and_the_legacy_stream_order_each_other(standin):
    cp = standin.cupy
    x = cp.asarray(np.arange(4.0))
    with cp.cuda.Stream():  # blocking (CuPy's default): the legacy stream waits for it
        y = x * 2
    assert float(y.sum()) == 12.0


def test_writes_too_must_be_ordered(standin):
    cp = standin.cupy
    x = cp.asarray(np.arange(4.0))
    cp.cuda.Device().synchronize()
    with cp.cuda.Stream(non_blocking=True):
        x *= 2
    y = cp.zeros(4)
    cp.cuda.get_current_stream().synchronize()
    copy = cp.ElementwiseKernel("T a", "T b", "b = a", "copy")
    with pytest.raises(StandinViolation, match="copy writes on stream 0x0"):
        copy(y, x)  # a kernel that only writes x


# --- capture (relaxed mode) -----------------------------------------------------------------------
def test_capture_refuses_what_conflicts_with_it(standin):
    cp = standin.cupy
    x = cp.asarray(np.arange(4.0))
    cp.cuda.Device().synchronize()
    pool, stream = cp.cuda.MemoryPool(), cp.cuda.Stream(non_blocking=True)
    with cp.cuda.using_allocator(pool.malloc), stream:
        y = x * 2  # allocated before capturing
        for refused, match in ((lambda: stream.synchronize(), "cudaStreamSynchronize"),
                               (lambda: cp.cuda.Device().synchronize(), "cudaDeviceSynchronize"),
                               (lambda: float(y[0]), "device-to-host"),
                               (lambda: cp.asarray(np.ones(2)), "host-to-device")):
            stream.begin_capture()
            try:
                with pytest.raises(StandinViolation, match=match):
                    refused()
            finally:
                stream.end_capture()
        stream.begin_capture()
        z = y + 1  # from the capture's pool: allowed
        with cp.cuda.using_allocator(None), pytest.raises(StandinViolation, match="from the default pool"):
            y - 1
        graph = stream.end_capture()
    stream.synchronize()
    cp.cuda.Stream(non_blocking=True).synchronize()  # another stream's sync is allowed in relaxed mode
    graph.launch(stream)
    stream.synchronize()
    assert cp.asnumpy(z).tolist() == [1.0, 3.0, 5.0, 7.0]
    with pytest.raises(RuntimeError, match="legacy"):
        cp.cuda.Stream.null.begin_capture()


def recorded_step(standin):
    model = gn.Sequential(gn.Dense(5, 8, seed=1), gn.Tanh(), gn.Dense(8, 3, seed=2))
    step = gn.TrainStep(model, gn.SoftmaxCrossEntropyLoss(), gn.SGD(lr=0.1, momentum=0.9), graph=True)
    x, t = step.prepare(np.random.default_rng(0).normal(size=(4, 5)), np.arange(4) % 3)
    return step, x, t


def test_the_graph_step_orders_its_private_stream_with_the_callers(standin):
    """CupyBackend.capture synchronises the device before it runs the step on its private stream
    (the batch was copied in on the caller's stream) and the private stream after (the caller reads
    the loss and replays on its own stream): without either, a step here fails as unordered; and
    without its private pool (``using_allocator``) the recording's temporaries come from the default
    pool, an allocation outside the capture's pool, which fails too."""
    step, x, t = recorded_step(standin)
    losses = [float(step(x, t)) for _ in range(4)]  # eager, recorded, replayed, replayed
    assert step._recorded.graph is not None and losses[-1] < losses[0]


# --- memory pools (CuPy 14.2, cupy/cuda/memory.pyx) ------------------------------------------------
def test_a_pool_rounds_splits_merges_and_frees_only_whole_blocks(standin):
    cp = standin.cupy
    pool = cp.cuda.MemoryPool()
    with cp.cuda.using_allocator(pool.malloc):
        big = cp.empty(4096, "uint8")
        assert (pool.used_bytes(), pool.total_bytes(), standin.device.held_bytes()) == (4096, 4096, 4096)
        del big  # back to the pool: cached, not freed
        small = cp.empty(100, "uint8")  # 512 bytes, split from the cached block
        assert (pool.used_bytes(), pool.total_bytes()) == (512, 4096)
        pool.free_all_blocks()
        assert pool.total_bytes() == 4096, "a split block was freed"
        del small  # merges with its free neighbour: a whole block again
        pool.free_all_blocks()
        assert (pool.used_bytes(), pool.total_bytes(), standin.device.held_bytes()) == (0, 0, 0)


def test_a_dropped_pool_keeps_its_cached_and_split_blocks_forever(standin):
    cp = standin.cupy
    pool = cp.cuda.MemoryPool()
    with cp.cuda.using_allocator(pool.malloc):
        cached, whole = cp.empty(1024, "uint8"), cp.empty(2048, "uint8")
        del cached
        split = cp.empty(8, "uint8")  # 512 of the cached 1024 bytes
    pool.free_all_blocks()  # frees nothing: the cached block is split
    del pool
    gc.collect()
    assert standin.device.held_bytes() == 1024 + 2048
    del whole  # all of its allocation was in use: freed with it
    gc.collect()
    assert standin.device.held_bytes() == 1024
    del split  # its free half sits in the dead pool's arena: never freed
    gc.collect()
    assert standin.device.held_bytes() == 1024
