"""CupyBackend.capture's bookkeeping, run on the CPU against a fake of the CuPy calls it makes.

What this checks is gpunn's logic only: one private stream and pool reused across recordings,
the pool's cached blocks freed when its graph is dropped (CuPy 14.1+ never frees a dropped
pool's blocks, cupy PR #9437), cuBLAS handles let go of the private stream, and a failing step's
error is the one raised. Capture, replay and pool bytes run on the stand-in's model of CuPy's pool,
and on a GPU (tests/backends/test_cupy_parity.py::test_re_recording_reuses_one_pool_and_frees_it).
"""

import contextlib
import gc
import types

import pytest

cupy_backend = pytest.importorskip("gpunn.backends.cupy_backend", reason="CuPy is not installed")


class FakeStream:
    count = 0

    def __init__(self, non_blocking=False):
        FakeStream.count += 1
        self.ptr, self.capturing, self.fail_end = 1000 + FakeStream.count, False, False

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        return False

    def begin_capture(self):
        self.capturing = True

    def end_capture(self):
        self.capturing = False
        if self.fail_end:
            raise RuntimeError("cudaErrorStreamCaptureInvalidated")
        return types.SimpleNamespace(launch=lambda stream: None)

    def synchronize(self):
        pass


class FakePool:
    def __init__(self):
        self.freed = 0

    def malloc(self, size):
        raise AssertionError("not called by these tests")

    def free_all_blocks(self):
        self.freed += 1


class FakeHandle:
    def __init__(self):
        self.forgotten = []

    def forget_stream(self, stream):
        self.forgotten.append(stream)


@pytest.fixture
def backend(monkeypatch):
    cuda = types.SimpleNamespace(Stream=FakeStream, MemoryPool=FakePool,
                                 Device=lambda: types.SimpleNamespace(synchronize=lambda: None),
                                 using_allocator=lambda malloc: contextlib.nullcontext(),
                                 get_current_stream=lambda: None)
    monkeypatch.setattr(cupy_backend, "cupy", types.SimpleNamespace(cuda=cuda))
    backend = cupy_backend.CupyBackend()
    handle = FakeHandle()
    monkeypatch.setattr(backend, "_cublas", lambda: backend._cublas_handles.setdefault(0, handle))
    return backend


def test_recordings_share_one_stream_and_pool_freed_with_the_last_graph(backend):
    _, first = backend.capture(lambda: "loss")
    memory = first._memory
    _, second = backend.capture(lambda: "loss", first)
    assert second._memory is memory and first._memory is None and first._graph is None
    assert memory.pool.freed == 0
    del first
    gc.collect()
    assert memory.pool.freed == 0, "a stale graph freed the pool its successor uses"
    del second
    gc.collect()
    assert memory.pool.freed == 1


def test_cublas_lets_go_of_the_private_stream(backend):
    _, graph = backend.capture(lambda: "loss")
    assert backend._cublas_handles[0].forgotten == [graph._memory.stream.ptr]


def test_the_steps_error_is_raised_not_the_broken_captures(backend):
    calls = []

    def step():
        calls.append(1)
        if len(calls) == 2:  # the recording run
            raise ValueError("the step's own error")
        return "loss"

    original = FakeStream.begin_capture

    def begin_and_break(stream):
        original(stream)
        stream.fail_end = True

    FakeStream.begin_capture = begin_and_break
    try:
        with pytest.raises(ValueError, match="the step's own error"):
            backend.capture(step)
    finally:
        FakeStream.begin_capture = original


def test_a_graph_dropped_during_another_capture_frees_its_pool_after_it(backend, monkeypatch):
    """Freeing a pool synchronises the device, which would invalidate the capture in progress;
    a graph collected then (garbage collection runs anywhere) waits until the capture has ended."""
    _, old = backend.capture(lambda: "loss")
    memory, events = old._memory, []
    monkeypatch.setattr(cupy_backend.cupy.cuda, "Device", lambda: types.SimpleNamespace(
        synchronize=lambda: events.append("synchronize while capturing" if capturing() else "synchronize")))
    streams = []
    monkeypatch.setattr(cupy_backend.cupy.cuda, "Stream", lambda non_blocking=False: streams.append(FakeStream())
                        or streams[-1])

    def capturing():
        return any(stream.capturing for stream in streams)

    holder = [old]
    del old

    def step():
        if capturing():
            holder.clear()  # the last reference goes in the middle of the recording
            gc.collect()
        return "loss"

    backend.capture(step)
    assert "synchronize while capturing" not in events
    assert memory.pool.freed == 1
