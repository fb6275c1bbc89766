"""The CUDA kernels' maths, checked on every CI run without a GPU.

``kernels/host_harness.cu`` includes every ``kernels/*.cuh``: nvcc builds it as device code
for sm_90 (the H100/H200) and as a host shared library, which ctypes loads so that the very
functions CuPy compiles for the GPU are compared with the NumPy backend, extremes included.
"""

import ctypes
import shutil
import subprocess

import numpy as np
import pytest

from gpunn.backends.base import ACTIVATIONS
from gpunn.backends.numpy_backend import NumpyBackend
from gpunn.kernel_source import kernel_dir, kernel_source

NVCC = shutil.which("nvcc")
pytestmark = [pytest.mark.nvcc, pytest.mark.skipif(NVCC is None, reason="CUDA's nvcc is not on PATH")]
HARNESS = kernel_dir() / "host_harness.cu"
CTYPES = {"float32": (ctypes.c_float, "f32"), "float64": (ctypes.c_double, "f64")}
RTOL = {"float32": 2e-6, "float64": 1e-14}
numpy_backend = NumpyBackend()


def nvcc(*arguments):
    result = subprocess.run([NVCC, *arguments], capture_output=True, text=True)
    assert result.returncode == 0, f"nvcc {' '.join(arguments)} failed:\n{result.stderr}"


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    library = tmp_path_factory.mktemp("kernels") / "libgpunn_host.so"
    nvcc("-O2", "-shared", "-Xcompiler", "-fPIC", str(HARNESS), "-o", str(library))
    return ctypes.CDLL(str(library))


def test_device_build_for_hopper(tmp_path):
    nvcc("-arch=sm_90", "-c", str(HARNESS), "-o", str(tmp_path / "device.o"))


@pytest.mark.parametrize("header", sorted(path.name for path in kernel_dir().glob("*.cuh")))
def test_each_header_compiles_on_its_own(tmp_path, header):
    unit = tmp_path / "unit.cu"
    unit.write_text(f'#include <cmath>\n#include "{kernel_dir() / header}"\n')
    nvcc("-arch=sm_90", "-c", str(unit), "-o", str(tmp_path / "unit.o"))
    nvcc("-c", "-x", "cu", str(unit), "-o", str(tmp_path / "host.o"))


def test_preamble_inlines_includes_once():
    text = kernel_source("losses.cuh", "activations.cuh")
    assert '#include "' not in text
    assert text.count("gpunn_sigmoid_forward(C z)") == 1 and text.count("gpunn_exp(float x)") == 1


def pointer(array):
    return array.ctypes.data_as(ctypes.c_void_p)


def extremes(dtype, rng, shape=(7, 9)):
    """Random values with the edge cases planted in: ±1000, ±0, denormals, ±Inf, NaN."""
    values = rng.normal(size=shape) * 4
    tiny = np.finfo(dtype).smallest_subnormal
    special = [1000.0, -1000.0, 0.0, -0.0, tiny, -tiny, np.inf, -np.inf, np.nan, 88.0, -88.0, 20.0, -20.0]
    values.flat[: len(special)] = special
    return values.astype(dtype)


@pytest.mark.parametrize("dtype", CTYPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_bias_activation_matches_numpy(harness, rng, dtype, activation):
    z = extremes(dtype, rng)
    bias = np.zeros(z.shape[1], dtype)
    bias[-3:] = rng.normal(size=3)
    got = np.empty_like(z)
    function = getattr(harness, f"bias_{activation}_{CTYPES[dtype][1]}")
    function(pointer(z), pointer(bias), pointer(got), ctypes.c_long(z.shape[0]), ctypes.c_long(z.shape[1]))
    expected = numpy_backend.bias_activation(z, bias, activation)
    np.testing.assert_allclose(got, expected, rtol=RTOL[dtype], atol=0, equal_nan=True)
    if activation == "sigmoid":
        assert got[0, 0] == 1.0 and got[0, 1] == 0.0  # ±1000: exactly 1 and 0, no NaN


@pytest.mark.parametrize("dtype", CTYPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_activation_backward_matches_numpy(harness, rng, dtype, activation):
    y = numpy_backend.bias_activation(extremes(dtype, rng), 0, activation)
    dy = rng.normal(size=y.shape).astype(dtype)
    dy.flat[-1] = np.nan
    got = np.empty_like(y)
    getattr(harness, f"{activation}_backward_{CTYPES[dtype][1]}")(pointer(dy), pointer(y), pointer(got),
                                                                   ctypes.c_long(y.size))
    expected = numpy_backend.activation_backward(dy, y, activation)
    np.testing.assert_allclose(got, expected, rtol=RTOL[dtype], atol=0, equal_nan=True)


UPDATE_CASES = [("sgd", (0.0, 0.0, 0.0), False), ("sgd", (0.9, 0.0, 0.0), False), ("sgd", (0.9, 0.0, 0.0), True),
                ("adam", (0.9, 0.999, 1e-8), False), ("adam", (0.8, 0.99, 1e-6), True)]


@pytest.mark.parametrize("dtype", CTYPES)
@pytest.mark.parametrize("rule,hyper,flag", UPDATE_CASES)
def test_update_rules_match_numpy(harness, rng, dtype, rule, hyper, flag):
    """kernels/optim.cuh against its host twin in optim.rules, zero, huge and NaN gradients included."""
    from gpunn.optim.rules import RULES

    c_type, suffix = CTYPES[dtype]
    p, g = rng.normal(size=60).astype(dtype), extremes(dtype, rng, shape=(60,))
    g[np.isinf(g)] = 1e30  # huge but finite; an infinite gradient is the loss scaler's business
    s0, s1 = (rng.uniform(0.1, 1.0, size=60).astype(dtype) for _ in range(2))
    lr, step, weight_decay, decay_end = 0.05, 3.0, 0.01, 40
    expected_p, expected_states = p.copy(), [s0.copy(), s1.copy()][:len(RULES[rule].states)]
    with np.errstate(over="ignore", invalid="ignore"):  # 1e30² overflows in float32, in both builds
        RULES[rule].host(expected_p, expected_states, g.copy(), np.empty_like(g), lr, step, weight_decay,
                         decay_end, *hyper, flag)
    harness[f"{rule}_update_{suffix}"](pointer(p), pointer(s0), pointer(s1), pointer(g), c_type(lr), c_type(step),
                                      c_type(weight_decay), *(c_type(h) for h in hyper), ctypes.c_int(flag),
                                      ctypes.c_long(decay_end), ctypes.c_long(p.size))
    np.testing.assert_allclose(p, expected_p, rtol=RTOL[dtype] * 8, atol=RTOL[dtype], equal_nan=True)
    for got, expected in zip((s0, s1), expected_states):
        np.testing.assert_allclose(got, expected, rtol=RTOL[dtype] * 8, atol=RTOL[dtype], equal_nan=True)
    assert np.isnan(p[np.isnan(g)]).all()  # a NaN gradient poisons its parameter, as in torch


@pytest.mark.parametrize("dtype", CTYPES)
def test_effective_grad_and_counters_match_numpy(harness, rng, dtype):
    c_type, suffix = CTYPES[dtype]
    g = rng.normal(size=20).astype(dtype)
    got = np.empty_like(g)
    harness[f"effective_grad_{suffix}"](pointer(g), c_type(4.0), c_type(10.0), c_type(0.5), pointer(got),
                                        ctypes.c_long(g.size))
    np.testing.assert_allclose(got, g / 4 * (0.5 / (10 / 4 + 1e-6)), rtol=RTOL[dtype] * 4)
    harness[f"effective_grad_{suffix}"](pointer(g), c_type(1.0), c_type(np.nan), c_type(0.5), pointer(got),
                                        ctypes.c_long(g.size))
    assert np.isnan(got).all()  # torch's clip factor is NaN for a NaN norm
    device, host = np.array([3.0, 3.0, 8.0, 1.0, 0.0]), np.array([3.0, 3.0, 8.0, 1.0, 0.0])
    for norm, dynamic in ((1.0, True), (np.inf, True), (1.0, True), (1.0, True), (np.nan, False)):
        harness[f"after_update_{suffix}"](host.ctypes.data_as(ctypes.c_void_p), c_type(norm), ctypes.c_int(dynamic),
                                          ctypes.c_double(2.0))
        numpy_backend.optimizer_counters(device, np.array([norm]), dynamic, 2.0)
        np.testing.assert_array_equal(host, device)


@pytest.mark.parametrize("dtype", CTYPES)
def test_bce_with_logits_matches_numpy(harness, rng, dtype):
    c_type, suffix = CTYPES[dtype]
    z = extremes(dtype, rng)
    z[np.isinf(z)] = 5.0  # an infinite logit has an infinite loss; that is not what we test here
    t = rng.uniform(size=z.shape).astype(dtype)
    elementwise, grad = np.empty_like(z), np.empty_like(z)
    harness[f"bce_with_logits_{suffix}"](pointer(z), pointer(t), pointer(elementwise), ctypes.c_long(z.size))
    harness[f"bce_with_logits_grad_{suffix}"](pointer(z), pointer(t), c_type(0.25), pointer(grad),
                                              ctypes.c_long(z.size))
    finite = ~np.isnan(z)
    assert np.all(np.isfinite(elementwise[finite]))
    assert np.isnan(elementwise[~finite]).all()
    expected_mean = numpy_backend.bce_with_logits_loss(z[finite], t[finite])
    np.testing.assert_allclose(elementwise[finite].astype(float).mean(), expected_mean, rtol=RTOL[dtype] * 10)
    np.testing.assert_allclose(grad, numpy_backend.bce_with_logits_grad(z, t, 0.25),
                               rtol=RTOL[dtype], atol=RTOL[dtype], equal_nan=True)


@pytest.mark.parametrize("dtype", CTYPES)
def test_softmax_cross_entropy_grad_matches_numpy(harness, rng, dtype):
    c_type, suffix = CTYPES[dtype]
    z = (rng.normal(size=(6, 5)) * 5).astype(dtype)
    z[0, 0] = 1000.0  # a dominant logit: softmax 1 there, 0 elsewhere, no overflow
    labels = rng.integers(0, 5, size=6).astype(np.int64)
    row_max = z.max(axis=1)
    lse = (row_max + np.log(np.exp(z - row_max[:, None]).sum(axis=1))).astype(dtype)
    got = np.empty_like(z)
    harness[f"softmax_xent_grad_{suffix}"](pointer(z), pointer(lse), pointer(labels), c_type(1 / 6),
                                           pointer(got), ctypes.c_long(6), ctypes.c_long(5))
    expected = numpy_backend.softmax_cross_entropy_grad(z, lse, labels, 1 / 6)
    np.testing.assert_allclose(got, expected, rtol=RTOL[dtype] * 4, atol=RTOL[dtype])
    assert np.all(np.isfinite(got))
