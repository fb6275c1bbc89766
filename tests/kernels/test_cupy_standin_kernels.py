"""The stand-in's kernels are the CUDA kernels' maths: every op of the CuPy backend, run on the
stand-in, equals bit for bit the nvcc host build of the same ``kernels/*.cuh`` function
(``tests/support/host_harness.cu``, shared with tests/kernels/test_kernels_host.py), edge values included."""

import ctypes

import numpy as np
import pytest

from gpunn.backends.selection import resolve_backend
from gpunn.backends.base import ACTIVATIONS
from support import cupy_standin, whole_buffer

from test_kernels_host import (CTYPES, extremes, harness, harness_source, pointer, pytestmark,  # noqa: F401
                               run_activation)

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
    dy = rng.normal(size=z.shape).astype(dtype)
    function, y, saved = run_activation(harness, dtype, activation, z, bias, None)
    device_saved = cp_backend.empty(z.shape, dtype)
    same(cp_backend.bias_activation(*on_device(cp_backend, z, bias), function, saved=device_saved), y)
    same(device_saved, saved)
    _, dz = run_activation(harness, dtype, activation, saved, bias, None, backward_dy=dy)
    same(cp_backend.activation_backward(*on_device(cp_backend, dy, saved), function), dz)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rule,hyper,flag", [("sgd", (0.9, 0.0, 0.0), True), ("adam", (0.9, 0.999, 1e-8), True)])
def test_update_rules(harness, cp_backend, rng, dtype, rule, hyper, flag):
    """The fused update kernel (prologue and rule) equals the nvcc build of the same .cuh functions."""
    from gpunn.kernels.update_rules import RULES

    c_type, suffix = CTYPES[dtype]
    n, decay_end, lr, scale, norm, max_norm = 64, 40, 0.05, 4.0, 10.0, 2.0
    p, g = rng.normal(size=n).astype(dtype), rng.normal(size=n).astype(dtype)
    s0, s1 = (rng.uniform(0.1, 1, size=n).astype(dtype) for _ in range(2))
    states = [s0, s1][:len(RULES[rule].states)]
    P, G = on_device(cp_backend, p, g)
    S = on_device(cp_backend, *states)
    cp_backend.optimizer_update(RULES[rule], P, G, S, None, cp_backend.asarray([2.0, 0.0, scale, 0.0, 0.0], "float64"),
                                cp_backend.asarray([lr], "float64"), cp_backend.asarray([norm], dtype), hyper, flag,
                                0.01, decay_end, max_norm, False, *whole_buffer(cp_backend, n, applied=2.0))
    effective = np.empty_like(g)
    harness[f"effective_grad_{suffix}"](pointer(g), ctypes.c_double(scale), c_type(norm), c_type(max_norm),
                                        pointer(effective), ctypes.c_long(n))
    harness[f"{rule}_update_{suffix}"](pointer(p), pointer(s0), pointer(s1), pointer(effective), c_type(lr),
                                      c_type(3.0), c_type(0.01), *(c_type(h) for h in hyper), ctypes.c_int(flag),
                                      ctypes.c_long(decay_end), ctypes.c_long(n))
    same(P, p)
    for device, host in zip(S, states):
        same(device, host)


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
