"""The stand-in's kernels are the CUDA kernels' maths: every op of the CuPy backend, run on the
stand-in, equals bit for bit the nvcc host build of the same ``kernels/*.cuh`` function
(``kernels/host_harness.cu``, shared with tests/test_kernels_host.py), edge values included."""

import ctypes

import numpy as np
import pytest

from gpunn.backends import resolve_backend
from gpunn.backends.base import ACTIVATIONS
from gpunn.testing import cupy_standin

from test_kernels_host import CTYPES, extremes, harness, pointer, pytestmark  # noqa: F401 (fixture, marks)

DTYPES = sorted(CTYPES)


@pytest.fixture
def cp_backend():
    with cupy_standin.installed():
        yield resolve_backend("cupy")


def on_device(cp_backend, *arrays):
    return [cp_backend.asarray(array) for array in arrays]


def same(got, expected):
    np.testing.assert_array_equal(got.get(), expected)  # NaN where NaN, every other bit equal


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_activations(harness, cp_backend, rng, dtype, activation):
    z = extremes(dtype, rng)
    bias = rng.normal(size=z.shape[1]).astype(dtype)
    y, dy = np.empty_like(z), rng.normal(size=z.shape).astype(dtype)
    suffix = CTYPES[dtype][1]
    getattr(harness, f"bias_{activation}_{suffix}")(pointer(z), pointer(bias), pointer(y),
                                                     ctypes.c_long(z.shape[0]), ctypes.c_long(z.shape[1]))
    same(cp_backend.bias_activation(*on_device(cp_backend, z, bias), activation), y)
    dz = np.empty_like(z)
    getattr(harness, f"{activation}_backward_{suffix}")(pointer(dy), pointer(y), pointer(dz), ctypes.c_long(y.size))
    same(cp_backend.activation_backward(*on_device(cp_backend, dy, y), activation), dz)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_sgd(harness, cp_backend, rng, dtype, momentum):
    c_type, suffix = CTYPES[dtype]
    p, g, v = (rng.normal(size=50).astype(dtype) for _ in range(3))
    P, G, V = on_device(cp_backend, p, g, v)
    cp_backend.sgd_update(P, G, V if momentum else None, 0.05, momentum)
    if momentum:
        harness[f"sgd_momentum_step_{suffix}"](pointer(p), pointer(v), pointer(g), c_type(0.05), c_type(momentum),
                                               ctypes.c_long(p.size))
        same(V, v)
    else:
        harness[f"sgd_step_{suffix}"](pointer(p), pointer(g), c_type(0.05), ctypes.c_long(p.size))
    same(P, p)


@pytest.mark.parametrize("dtype", DTYPES)
def test_loss_heads(harness, cp_backend, rng, dtype):
    c_type, suffix = CTYPES[dtype]
    z, t = extremes(dtype, rng), rng.uniform(size=(7, 9)).astype(dtype)
    grad = np.empty_like(z)
    harness[f"bce_with_logits_grad_{suffix}"](pointer(z), pointer(t), c_type(0.25), pointer(grad), ctypes.c_long(z.size))
    same(cp_backend.bce_with_logits_grad(*on_device(cp_backend, z, t), 0.25), grad)
    finite = np.where(np.isfinite(z), z, 3.0).astype(dtype)
    elementwise = np.empty_like(finite)
    harness[f"bce_with_logits_{suffix}"](pointer(finite), pointer(t), pointer(elementwise), ctypes.c_long(z.size))
    # The stand-in sums in index order in the compute type, then divides by the size.
    mean = np.cumsum(elementwise, dtype=dtype)[-1] / np.array(z.size, dtype)
    same(cp_backend.bce_with_logits_loss(*on_device(cp_backend, finite, t)), mean)
    labels = rng.integers(0, 9, size=7)
    row_max = finite.max(axis=1)
    lse = (row_max + np.log(np.exp(finite - row_max[:, None]).sum(axis=1))).astype(dtype)
    xent = np.empty_like(finite)
    harness[f"softmax_xent_grad_{suffix}"](pointer(finite), pointer(lse), pointer(labels), c_type(1 / 7),
                                           pointer(xent), ctypes.c_long(7), ctypes.c_long(9))
    same(cp_backend.softmax_cross_entropy_grad(*on_device(cp_backend, finite, lse, labels), 1 / 7), xent)
