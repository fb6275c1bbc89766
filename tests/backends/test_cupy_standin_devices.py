"""The stand-in's devices (issue 21): arrays remember where they were allocated, and every consumer
of device memory (a kernel, a CuPy routine, the cuBLAS model, the NCCL stand-in) refuses memory of
another device than its own, as CuPy's ``_check_peer_access`` (cupy/_core/_kernel.pyx) does for a
device without peer access. And the cuBLAS model's float16 reduction (issue 21, item 7)."""


import numpy as np
import pytest

import gpunn as gn
from gpunn.backends import cublas
from support import cupy_standin
from support.cupy_standin import StandinViolation


@pytest.fixture
def two_gpus():
    with cupy_standin.installed(devices=2) as standin, gn.use_backend("cupy") as backend:
        yield standin, backend


def test_arrays_remember_their_device_and_devices_switch_like_cupy(two_gpus):
    standin, _ = two_gpus
    cp = standin.cupy
    on_zero = cp.asarray(np.ones(3))
    with cp.cuda.Device(1):
        on_one = cp.asarray(np.ones(3))
        assert cp.cuda.Device().id == 1 and cp.cuda.runtime.getDevice() == 1
    assert cp.cuda.Device().id == 0
    assert (on_zero.device.id, on_one.device.id, on_one[1:].device.id) == (0, 1, 1)
    assert cp.cuda.runtime.getDeviceCount() == 2
    assert cp.cuda.Device(0).pci_bus_id != cp.cuda.Device(1).pci_bus_id
    with pytest.raises(cp.cuda.runtime.CUDARuntimeError, match="invalid device ordinal"):
        cp.cuda.Device(2).use()


def test_kernels_and_routines_refuse_another_devices_array(two_gpus):
    standin, backend = two_gpus
    cp = standin.cupy
    x = backend.asarray(np.linspace(-1, 1, 8))
    with cp.cuda.Device(1):
        with pytest.raises(ValueError, match=r"resides \(0\) is different from the current device \(1\)"):
            backend.xp.multiply(x, 2.0)  # a CuPy routine
        with pytest.raises(ValueError, match="Peer access is unavailable"):
            backend.mse_grad(x, x, 0.5)  # one of gpunn's ElementwiseKernels
        y = backend.asarray(np.linspace(-1, 1, 8))
        backend.mse_grad(y, y, 0.5)  # its own device's arrays pass


def test_the_cublas_model_binds_a_handle_to_its_device(two_gpus):
    standin, backend = two_gpus
    cp = standin.cupy
    a = backend.asarray(np.ones((2, 3), dtype="float32"))
    backend.matmul(a, backend.asarray(np.ones((3, 2), dtype="float32")))  # device 0's handle
    with cp.cuda.Device(1):
        b = backend.asarray(np.ones((3, 2), dtype="float32"))
        handle = backend._cublas()  # device 1's handle
        layout = cublas.row_major_gemm("nn", a.shape, b.shape)
        out = cp.empty((2, 2), dtype="float32")
        with pytest.raises(StandinViolation, match="memory of device 0"):
            handle.gemm(layout, a.data.ptr, b.data.ptr, out.data.ptr, 0, cublas.COMPUTE_32F,
                        cp.cuda.get_current_stream().ptr)
    with pytest.raises(StandinViolation, match="made on device 1 used while device 0 is current"):
        handle.gemm(layout, a.data.ptr, a.data.ptr, a.data.ptr, 0, cublas.COMPUTE_32F, 0)
    assert sorted(state["device"] for state in standin.cublas.handles.values()) == [0, 1]


def test_the_nccl_standin_binds_a_communicator_to_its_device(two_gpus):
    standin, backend = two_gpus
    cp, nccl = standin.cupy, standin.cupy.cuda.nccl
    with cp.cuda.Device(1):
        communicator = nccl.NcclCommunicator(2, nccl.get_unique_id(), 1)
        mine = backend.asarray(np.arange(4, dtype="float32"))
        communicator.allReduce(mine.data.ptr, mine.data.ptr, 4, nccl.NCCL_FLOAT32, nccl.NCCL_SUM, 0)
        np.testing.assert_array_equal(mine.get(), 2 * np.arange(4))  # the peer holds the same buffer
    other = backend.asarray(np.arange(4, dtype="float32"))
    with cp.cuda.Device(1), pytest.raises(StandinViolation, match="memory of device 0"):
        communicator.allReduce(other.data.ptr, other.data.ptr, 4, nccl.NCCL_FLOAT32, nccl.NCCL_SUM, 0)
    with pytest.raises(StandinViolation, match="collective on device 0 through a communicator of device 1"):
        communicator.allReduce(other.data.ptr, other.data.ptr, 4, nccl.NCCL_FLOAT32, nccl.NCCL_SUM, 0)


def test_float16_gemms_reduce_in_float32_because_gpunn_sets_the_math_mode(rng):
    """Issue 21, item 7: under the default math mode the cuBLAS model, like cuBLAS, may sum
    split-K partials in float16; gpunn's handles set CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION,
    so a float16 GEMM equals the float32-accumulated product rounded once to float16."""
    a = rng.normal(size=(8, 4096)).astype(np.float16)
    b = rng.normal(size=(4096, 8)).astype(np.float16)
    exact = (a.astype(np.float64) @ b.astype(np.float64)).astype(np.float16)
    with cupy_standin.installed() as standin, gn.use_backend("cupy") as backend:
        got = backend.matmul(backend.asarray(a), backend.asarray(b)).get()
        modes = [state["math_mode"] for state in standin.cublas.handles.values()]
    assert modes == [cublas.DISALLOW_REDUCED_PRECISION_REDUCTION]
    # One rounding of a float32 sum: it differs from the rounded exact product only where the exact
    # value lies within float32's accumulation error of a float16 rounding boundary (at most 2 of
    # the 64 entries in 300 seeds), while float16 split-K reduction misses a third or more of them.
    assert np.mean(got != exact) <= 0.1, np.mean(got != exact)
    with cupy_standin.installed() as standin, gn.use_backend("cupy") as backend:
        library = standin.cublas
        original = library.cublasSetMathMode
        library.cublasSetMathMode = type(original)(lambda handle, mode: 0, original.argtypes)  # ignored
        reduced = backend.matmul(backend.asarray(a), backend.asarray(b)).get()
    assert np.mean(reduced != exact) >= 0.25, np.mean(reduced != exact)  # float16 split-K: visibly worse


def test_one_backend_trains_on_each_device_in_turn(two_gpus):
    """The backend's per-device caches (cuBLAS handle and workspace, the ones of the bias gradient,
    dropout's idle step, the unit loss scale) are kept per device: the same
    model trained on device 0 and then built and trained on device 1 uses only device 1's memory there.
    A cache keyed without the device fails this (the stand-in's peer checks)."""
    standin, backend = two_gpus
    cp = standin.cupy
    rng = np.random.default_rng(0)
    X, labels = rng.normal(size=(16, 4)), rng.integers(0, 3, size=16)

    def train():
        model = gn.Sequential(gn.Dense(4, 8, seed=1), gn.Dropout(0.0), gn.ReLU(), gn.Dense(8, 3, seed=2))
        return model.fit(X, labels, loss=gn.SoftmaxCrossEntropyLoss(), optimizer=gn.Adam(), epochs=2, batch_size=8,
                         verbose=0, seed=0)["loss"]

    def loss_gradient():  # without an optimizer's loss scale: the backend's unit scale
        y = backend.asarray(np.linspace(-1, 1, 6).reshape(3, 2))
        return backend.to_numpy(backend.mse_grad(y, y * 0.5, 0.5))

    first = train(), loss_gradient()
    with cp.cuda.Device(1):
        second = train(), loss_gradient()
    assert second[0] == first[0]
    np.testing.assert_array_equal(second[1], first[1])
