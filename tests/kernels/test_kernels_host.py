"""The CUDA kernels' maths, checked on every CI run without a GPU.

``tests/support/host_harness.cu`` includes every ``gpunn/kernels/*.cuh``: nvcc builds it as device code
for sm_90 (the H100/H200) and as a host shared library, which ctypes loads so that the very
functions CuPy compiles for the GPU are compared with the NumPy backend, extremes included.
"""

import contextlib
import ctypes
from pathlib import Path
import shutil
import subprocess

import numpy as np
import pytest

from gpunn.kernels.activations import REGISTRY, activation_function
from gpunn.backends.base import ACTIVATIONS, DropoutMask
from gpunn.backends.numpy_backend import NumpyBackend, advance_counters
from gpunn.kernels.source import kernel_dir, kernel_source

NVCC = shutil.which("nvcc")
pytestmark = [pytest.mark.nvcc, pytest.mark.skipif(NVCC is None, reason="CUDA's nvcc is not on PATH")]
HARNESS = Path(__file__).resolve().parents[1] / "support" / "host_harness.cu"
CTYPES = {"float32": (ctypes.c_float, "f32"), "float64": (ctypes.c_double, "f64")}
RTOL = {"float32": 2e-6, "float64": 1e-14}
numpy_backend = NumpyBackend()


def nvcc(*arguments):
    arguments = ("-I", str(kernel_dir()), *arguments)  # the harness sits in tests/support, the .cuh files in gpunn/kernels
    result = subprocess.run([NVCC, *arguments], capture_output=True, text=True)
    assert result.returncode == 0, f"nvcc {' '.join(arguments)} failed:\n{result.stderr}"


# Test parameter values, not the defaults, so that a parameter passed in the wrong place shows.
PARAMETERS = {"leaky_relu": {"negative_slope": 0.2}, "softplus": {"beta": 1.5, "threshold": 4.0}}


def activation_wrappers() -> str:
    """Host and device wrappers for every registry entry: the harness reads the registry."""
    parts = []
    for name, kind in REGISTRY.items():
        values = [f"p[{index}]" for index in range(len(kind.parameters))]
        saved = "pre" if kind.reads_input else "a"
        for c_type, suffix in (("float", "f32"), ("double", "f64")):
            parts.append(f"""
extern "C" void bias_{name}_{suffix}(const {c_type}* z, const {c_type}* b, {c_type}* y, {c_type}* saved, long rows,
        long cols, const {c_type}* p, gpunn_u64 step, gpunn_u64 k0, gpunn_u64 k1, unsigned int threshold, {c_type} scale,
        gpunn_u64 skip) {{
    const gpunn_u64 n = rows * cols, first = skip / 512 * 32, end = ((skip + n - 1) / 512 + 1) * 32;
    for (gpunn_u64 group = first; group < end; ++group)
        gpunn_dropout_groups<1>(group, skip, n, (unsigned int)cols, 32u % (unsigned int)cols, step, k0, k1,
                                threshold, [&](gpunn_u64 k, unsigned int column, unsigned int keep) {{
            {c_type} pre = z[k] + b[column];
            {c_type} a = {kind.forward_call("pre", values)};
            saved[k] = {saved};
            y[k] = gpunn_dropout(a, keep != 0, scale);
        }});
}}
extern "C" void {name}_backward_{suffix}(const {c_type}* dy, const {c_type}* s, {c_type}* dz, long n, const {c_type}* p,
        gpunn_u64 step, gpunn_u64 k0, gpunn_u64 k1, unsigned int threshold, {c_type} scale, gpunn_u64 skip) {{
    const gpunn_u64 first = skip / 512 * 32, end = ((skip + n - 1) / 512 + 1) * 32;
    for (gpunn_u64 group = first; group < end; ++group)
        gpunn_dropout_groups<1>(group, skip, n, 1u, 0u, step, k0, k1, threshold,
                                [&](gpunn_u64 k, unsigned int, unsigned int keep) {{
            dz[k] = {kind.backward_call("gpunn_dropout(dy[k], keep != 0, scale)", "s[k]", values)};
        }});
}}""")
        device_values = [f"C({index + 1}) / C(2)" for index in range(len(kind.parameters))]
        parts.append(f"""
template <typename S, typename C> __global__ void {name}_device_check(const S* z, S* y, long n) {{
    long i = blockIdx.x * (long)blockDim.x + threadIdx.x;
    if (i >= n) return;
    C a = {kind.forward_call("C(z[i])", device_values)};
    y[i] = S({kind.backward_call("a", "C(z[i])", device_values)});
}}
template __global__ void {name}_device_check<float, float>(const float*, float*, long);
template __global__ void {name}_device_check<double, double>(const double*, double*, long);
template __global__ void {name}_device_check<__half, float>(const __half*, __half*, long);""")
    return "\n".join(parts)


@pytest.fixture(scope="module")
def harness_source(tmp_path_factory):
    unit = tmp_path_factory.mktemp("source") / "harness.cu"
    unit.write_text(f'#include "{HARNESS}"\n{activation_wrappers()}\n')
    return unit


@pytest.fixture(scope="module")
def harness(tmp_path_factory, harness_source):
    library = tmp_path_factory.mktemp("kernels") / "libgpunn_host.so"
    nvcc("-O2", "-shared", "-Xcompiler", "-fPIC", str(harness_source), "-o", str(library))
    return ctypes.CDLL(str(library))


def test_device_build_for_hopper(tmp_path, harness_source):
    nvcc("-arch=sm_90", "-c", str(harness_source), "-o", str(tmp_path / "device.o"))


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


def assert_rounding_close(got, expected, pre, dtype):
    """Equal up to rounding: relative to the value, or to the pre-activation where a formula
    cancels (GELU's 1 + erf in the far negative tail amplifies erf's last bit)."""
    bound = RTOL[dtype] * np.abs(expected) + 4 * np.finfo(dtype).eps * (np.abs(np.nan_to_num(pre)) + 1)
    same = (got == expected) | (np.isnan(got) & np.isnan(expected))
    with np.errstate(invalid="ignore"):
        assert np.all(same | (np.abs(got - expected) <= bound)), (got, expected)


def run_activation(harness, dtype, activation, z, bias, mask, backward_dy=None):
    """The harness's fused forward (y, saved) or, given dy, its backward from ``z`` as saved."""
    c_type, suffix = CTYPES[dtype]
    function = activation_function(activation, **PARAMETERS.get(activation, {}))
    params = np.array(function.values or [0.0], dtype)
    step = int(mask.step[0]) if mask else 0
    k0, k1 = mask.key_words if mask else (0, 0)
    dropout = [ctypes.c_ulonglong(v) for v in (step, k0, k1)] + [ctypes.c_uint(mask.threshold if mask else 0)]
    dropout += [c_type(mask.scale if mask else 1.0), ctypes.c_ulonglong(mask.skip(z.shape[1]) if mask else 0)]
    if backward_dy is None:
        y, saved = np.empty_like(z), np.empty_like(z)
        getattr(harness, f"bias_{activation}_{suffix}")(pointer(z), pointer(bias), pointer(y), pointer(saved),
                                                        ctypes.c_long(z.shape[0]), ctypes.c_long(z.shape[1]),
                                                        pointer(params), *dropout)
        return function, y, saved
    dz = np.empty_like(z)
    getattr(harness, f"{activation}_backward_{suffix}")(pointer(backward_dy), pointer(z), pointer(dz),
                                                        ctypes.c_long(z.size), pointer(params), *dropout)
    return function, dz


@pytest.mark.parametrize("dropout", [False, True])
@pytest.mark.parametrize("dtype", CTYPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_bias_activation_matches_numpy(harness, rng, dtype, activation, dropout):
    z = extremes(dtype, rng)
    bias = np.zeros(z.shape[1], dtype)
    bias[-3:] = rng.normal(size=3)
    mask = DropoutMask(int(rng.integers(1 << 62)) << 40, 1 << 15, 2.0, np.array([7], np.uint64), 3) if dropout else None
    function, got, got_saved = run_activation(harness, dtype, activation, z, bias, mask)
    saved = np.empty_like(z)
    expected = numpy_backend.bias_activation(z, bias, function, saved=saved, dropout=mask)
    pre = z + bias
    assert_rounding_close(got, expected, pre * 2, dtype)
    assert_rounding_close(got_saved, saved, pre, dtype)
    if dropout:
        assert 0 < np.mean(got == 0) < 1
    if activation == "sigmoid":
        assert got_saved[0, 0] == 1.0 and got_saved[0, 1] == 0.0  # ±1000: exactly 1 and 0, no NaN


@pytest.mark.parametrize("dropout", [False, True])
@pytest.mark.parametrize("dtype", CTYPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_activation_backward_matches_numpy(harness, rng, dtype, activation, dropout):
    z = extremes(dtype, rng)
    function = activation_function(activation, **PARAMETERS.get(activation, {}))
    saved = z if function.reads_input else numpy_backend.bias_activation(z, 0, function)
    dy = rng.normal(size=z.shape).astype(dtype)
    dy.flat[-1] = np.nan
    mask = DropoutMask(12345, 1 << 14, 4 / 3, np.array([3], np.uint64), 60) if dropout else None
    _, got = run_activation(harness, dtype, activation, np.ascontiguousarray(saved), None, mask, backward_dy=dy)
    expected = numpy_backend.activation_backward(dy, saved, function, dropout=mask)
    assert_rounding_close(got, expected, z * dy * 2, dtype)


@pytest.mark.parametrize("rows,cols,row_offset,width", [
    (1, 1, 0, 1), (3, 5, 0, 1), (40, 37, 0, 1), (40, 37, 9, 1), (7, 512, 3, 1), (1, 2000, 1, 1), (33, 17, 1000, 1),
    (1, 2, 0, 2), (3, 6, 0, 2), (40, 38, 9, 2), (7, 512, 3, 2), (1, 2000, 1, 2), (33, 18, 1001, 2), (5, 34, 15, 2),
    (1, 4, 0, 4), (3, 12, 0, 4), (40, 36, 9, 4), (7, 512, 3, 4), (33, 20, 1001, 4), (5, 68, 15, 4)])
def test_dropout_mask_matches_the_numpy_twin(harness, rng, rows, cols, row_offset, width):
    """kernels/dropout.cuh's group walk, run on the host over every group (width 1) or two or four
    neighbouring groups (the "pairs" and "quads" kernels) of the launch's tiles, keeps exactly the
    elements the NumPy twin keeps: whole and partial tiles, shards that start mid-tile, one element."""
    from gpunn.backends.numpy_backend import dropout_keep

    key = int(rng.integers(1 << 62)) + (int(rng.integers(1 << 62)) << 64)
    mask = DropoutMask(key, int(rng.integers(1, 1 << 16)), 2.0, np.array([int(rng.integers(1 << 63))], np.uint64),
                       row_offset)
    got = np.full(rows * cols, 2, np.uint8)
    low, high = mask.key_words
    harness.dropout_keep(*(ctypes.c_ulonglong(v) for v in (mask.skip(cols), rows * cols, int(mask.step[0]), low, high)),
                         ctypes.c_uint(mask.threshold), pointer(got), ctypes.c_int(width))
    np.testing.assert_array_equal(got.reshape(rows, cols), dropout_keep(mask, (rows, cols)).astype(np.uint8))


def test_philox_matches_numpy_random_philox(harness, rng):
    """Blocks for counters (c0, c1, 0, 0) equal numpy.random.Philox started one counter before."""
    c0 = rng.integers(0, 1 << 63, size=40, dtype=np.uint64) * np.uint64(2)
    c1 = rng.integers(0, 1 << 63, size=40, dtype=np.uint64)
    c0[:3] = [0, 1, np.iinfo(np.uint64).max]
    c1[:3] = [1, 0, 5]
    key = int(rng.integers(1 << 62)) * 3 + (int(rng.integers(1 << 62)) << 64)
    got = np.empty(4 * c0.size, np.uint64)
    harness.philox4x64_10(pointer(c0), pointer(c1), ctypes.c_ulonglong(key & (2 ** 64 - 1)),
                          ctypes.c_ulonglong(key >> 64), pointer(got), ctypes.c_long(c0.size))
    for index, (low, high) in enumerate(zip(c0.tolist(), c1.tolist())):
        counter = (low + (high << 64) - 1) % (1 << 256)
        expected = np.random.Philox(key=key, counter=counter).random_raw(4)
        np.testing.assert_array_equal(got[4 * index: 4 * index + 4], expected)


@pytest.mark.parametrize("dtype", CTYPES)
def test_layer_norm_matches_numpy(harness, rng, dtype):
    c_type, suffix = CTYPES[dtype]
    rows, cols = 5, 7
    x = (rng.normal(size=(rows, cols)) * 3 + 1).astype(dtype)
    gain, bias, dy = (rng.normal(size=shape).astype(dtype) for shape in (cols, cols, (rows, cols)))
    y, mean, rstd, dx = np.empty_like(x), np.empty(rows, dtype), np.empty(rows, dtype), np.empty_like(x)
    harness[f"layer_norm_forward_{suffix}"](pointer(x), pointer(gain), pointer(bias), c_type(1e-5), pointer(y),
                                            pointer(mean), pointer(rstd), ctypes.c_long(rows), ctypes.c_long(cols))
    harness[f"layer_norm_backward_{suffix}"](pointer(dy), pointer(x), pointer(gain), pointer(mean), pointer(rstd),
                                             pointer(dx), ctypes.c_long(rows), ctypes.c_long(cols))
    expected_mean, expected_rstd = np.empty(rows, dtype), np.empty(rows, dtype)
    expected = numpy_backend.layer_norm_forward(x, gain, bias, 1e-5, np.empty_like(x), expected_mean, expected_rstd)
    rtol = RTOL[dtype] * 20
    np.testing.assert_allclose(y, expected, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(rstd, expected_rstd, rtol=rtol)
    np.testing.assert_allclose(dx, numpy_backend.layer_norm_backward(dy, x, gain, mean, rstd), rtol=rtol, atol=rtol)


UPDATE_CASES = [("sgd", (0.0, 0.0, 0.0), False), ("sgd", (0.9, 0.0, 0.0), False), ("sgd", (0.9, 0.0, 0.0), True),
                ("adam", (0.9, 0.999, 1e-8), False), ("adam", (0.8, 0.99, 1e-6), True)]


@pytest.mark.parametrize("dtype", CTYPES)
@pytest.mark.parametrize("rule,hyper,flag", UPDATE_CASES)
def test_update_rules_match_numpy(harness, rng, dtype, rule, hyper, flag):
    """kernels/optim.cuh against its host twin in optim.rules, zero, huge and NaN gradients included."""
    from gpunn.kernels.update_rules import RULES

    c_type, suffix = CTYPES[dtype]
    p, g = rng.normal(size=60).astype(dtype), extremes(dtype, rng, shape=(60,))
    g[np.isinf(g)] = 1e30  # huge but finite; an infinite gradient is the loss scaler's business
    s0, s1 = (rng.uniform(0.1, 1.0, size=60).astype(dtype) for _ in range(2))
    lr, step, weight_decay, decay_end = 0.05, 3.0, 0.01, 40
    expected_p, expected_states = p.copy(), [s0.copy(), s1.copy()][:len(RULES[rule].states)]
    with np.errstate(over="ignore", invalid="ignore"):  # 1e30² overflows in float32, in both builds
        RULES[rule].host(np, expected_p, expected_states, g.copy(), np.empty_like(g), lr, step, weight_decay,
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
    harness[f"effective_grad_{suffix}"](pointer(g), ctypes.c_double(4.0), c_type(10.0), c_type(0.5), pointer(got),
                                        ctypes.c_long(g.size))
    np.testing.assert_allclose(got, g / 4 * (0.5 / (10 / 4 + 1e-6)), rtol=RTOL[dtype] * 4)
    harness[f"effective_grad_{suffix}"](pointer(g), ctypes.c_double(1.0), c_type(np.nan), c_type(0.5), pointer(got),
                                        ctypes.c_long(g.size))
    assert np.isnan(got).all()  # torch's clip factor is NaN for a NaN norm
    # Unscaling multiplies by the float64 reciprocal rounded to the compute type, as torch's GradScaler
    # (``self._scale.double().reciprocal().float()``) and the NumPy twin do; not a division per element.
    harness[f"effective_grad_{suffix}"](pointer(g), ctypes.c_double(3.0), c_type(1.0), c_type(0.0), pointer(got),
                                        ctypes.c_long(g.size))
    np.testing.assert_array_equal(got, g * np.dtype(dtype).type(1.0 / 3.0))
    device, host = np.array([3.0, 3.0, 8.0, 1.0, 0.0]), np.array([3.0, 3.0, 8.0, 1.0, 0.0])
    for norm, dynamic in ((1.0, True), (np.inf, True), (1.0, True), (1.0, True), (np.nan, False)):
        harness[f"after_update_{suffix}"](host.ctypes.data_as(ctypes.c_void_p), c_type(norm), ctypes.c_int(dynamic),
                                          ctypes.c_double(2.0))
        advance_counters(device, norm, dynamic, 2.0)
        np.testing.assert_array_equal(host, device)


@pytest.mark.parametrize("stride", [1, 3, 1000])
def test_segment_lookup_matches_the_table(harness, rng, stride):
    """optim.cuh's segment search (the fused update's, resuming as a grid-strided thread does) finds
    each element's state, and nothing between segments or in one not updated this step."""
    n = 5000
    for _ in range(5):
        cuts = np.sort(rng.choice(np.arange(1, n), size=12, replace=False))
        pairs = [(0, cuts[0])] + [(cuts[i], cuts[i + 1]) for i in range(1, 11, 2)]  # gaps between them
        expected, table, state_start = np.full(n, -1), [], 0
        for start, stop in pairs:
            updated = int(rng.integers(0, 2))
            table += [start, stop, state_start, updated]
            if updated:
                expected[start:stop] = np.arange(state_start, state_start + stop - start)
            state_start += stop - start
        table, got = np.array(table, np.int64), np.empty(n, np.int64)
        harness.segment_lookup(table.ctypes.data_as(ctypes.c_void_p), ctypes.c_longlong(len(pairs)), ctypes.c_long(n),
                               ctypes.c_long(stride), got.ctypes.data_as(ctypes.c_void_p))
        np.testing.assert_array_equal(got, expected)


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


# --- the GPU's flush-to-zero rules (issue 21, item 6) ----------------------------------------
# CuPy compiles every kernel with -ftz=true (cupy/cuda/compiler.py, _compile_with_cache_cuda):
# float32 subnormals become zero on the GPU, operands and results. The harness runs the same maths
# with x86's MXCSR FTZ and DAZ bits set (gpunn_host_flush_to_zero in host_harness.cu), around the
# harness call only, so NumPy's references are computed under the usual rules.
FTZ_SKIP = pytest.mark.skipif(__import__("platform").machine() not in ("x86_64", "AMD64", "i686"),
                              reason="FTZ/DAZ are set through x86's MXCSR")


@contextlib.contextmanager
def flush_to_zero(harness):
    switch = harness.gpunn_host_flush_to_zero
    switch.restype = ctypes.c_uint
    before = switch(ctypes.c_int(1))
    try:
        yield
    finally:
        switch(ctypes.c_int(bool(before & 0x8040)))


def flushed(values):
    """float32 values with subnormals flushed to (signed) zero, as the GPU reads and writes them."""
    values = np.array(values, np.float32)
    with np.errstate(invalid="ignore"):
        small = np.abs(values) < np.finfo(np.float32).tiny
    values[small] = np.copysign(np.float32(0), values[small])
    return values


@FTZ_SKIP
def test_flush_to_zero_is_in_force_inside_the_block_only(harness):
    multiply = harness.gpunn_host_multiply_f32
    multiply.restype, multiply.argtypes = ctypes.c_float, [ctypes.c_float, ctypes.c_float]
    tiny = float(np.finfo(np.float32).tiny)
    assert multiply(tiny, 0.5) == tiny / 2  # a subnormal result
    with flush_to_zero(harness):
        assert multiply(tiny, 0.5) == 0.0  # FTZ
        assert multiply(tiny / 4, 4.0) == 0.0  # DAZ: a subnormal operand reads as zero
    assert multiply(tiny, 0.5) == tiny / 2


@FTZ_SKIP
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_float32_activations_under_the_gpus_flush_to_zero(harness, rng, activation):
    """The forward and backward of every activation, float32, under FTZ/DAZ: finite where NumPy
    is finite, and NumPy's value on flushed operands, flushed, up to rounding."""
    z = extremes("float32", rng)
    z.flat[20:26] = [1e-39, -1e-39, 3e-38, -3e-38, 1e-45, 87.5]  # subnormal and near-subnormal operands
    bias = np.zeros(z.shape[1], np.float32)
    with flush_to_zero(harness):
        function, got, got_saved = run_activation(harness, "float32", activation, z, bias, None)
    expected = flushed(numpy_backend.bias_activation(flushed(z), bias, function))
    assert_rounding_close(got, expected, z * 2, "float32")
    assert not np.isnan(got[~np.isnan(expected)]).any()
    saved = z if function.reads_input else got_saved
    dy = rng.normal(size=z.shape).astype(np.float32)
    dy.flat[30:32] = [1e-40, -1e-40]
    with flush_to_zero(harness):
        _, got_dz = run_activation(harness, "float32", activation, np.ascontiguousarray(saved), None, None,
                                   backward_dy=dy)
    expected_dz = flushed(numpy_backend.activation_backward(flushed(dy), flushed(saved), function))
    assert_rounding_close(got_dz, expected_dz, z * dy * 2, "float32")


def adam_eps_zero(harness, p, g, s0, s1, dtype="float32"):
    c_type, suffix = CTYPES[dtype]
    harness[f"adam_update_{suffix}"](pointer(p), pointer(s0), pointer(s1), pointer(g), c_type(1e-3), c_type(1.0),
                                     c_type(0.0), c_type(0.9), c_type(0.999), c_type(0.0), ctypes.c_int(0),
                                     ctypes.c_long(0), ctypes.c_long(p.size))


@pytest.mark.parametrize("dtype", CTYPES)
def test_adam_with_eps_zero_leaves_an_element_without_gradient_in_place(harness, rng, dtype):
    """eps = 0 and no gradient yet: 0/0 would make the parameter NaN; the kernel and its NumPy twin
    leave it where it is, and move the others alike."""
    from gpunn.kernels.update_rules import RULES

    p = rng.normal(size=16).astype(dtype)
    g = rng.normal(size=16).astype(dtype)
    g[::3] = 0
    s0, s1 = np.zeros_like(p), np.zeros_like(p)
    expected_p, expected_states = p.copy(), [s0.copy(), s1.copy()]
    RULES["adam"].host(np, expected_p, expected_states, g.copy(), np.empty_like(g), 1e-3, 1.0, 0.0, 0, 0.9, 0.999,
                       0.0, False)
    adam_eps_zero(harness, p, g, s0, s1, dtype)
    assert np.isfinite(p).all() and np.isfinite(expected_p).all()
    np.testing.assert_array_equal(p[::3], expected_p[::3])
    np.testing.assert_allclose(p, expected_p, rtol=RTOL[dtype] * 8, atol=RTOL[dtype])


@FTZ_SKIP
def test_adam_with_eps_zero_is_finite_when_the_gpu_flushes_the_second_moment(harness):
    """A float32 gradient of 1e-20 has a subnormal square: the GPU flushes the second moment to zero
    while the first stays 1e-21, and exp_avg / 0 would be Inf. The element stays in place."""
    p = np.ones(4, np.float32)
    g = np.array([1e-20, -1e-20, 2e-20, 0.5], np.float32)
    s0, s1 = np.zeros_like(p), np.zeros_like(p)
    with flush_to_zero(harness):
        adam_eps_zero(harness, p, g, s0, s1)
    assert np.isfinite(p).all(), p
    assert (s1[:3] == 0).all() and (s0[:3] != 0).all()  # the GPU's state: flushed second moment only
    np.testing.assert_array_equal(p[:3], 1.0)
    assert p[3] == pytest.approx(1.0 - 1e-3, rel=1e-5)  # an ordinary gradient moves as always
