"""The float32 kernels' approximate device maths against float32's parity tolerance.

On the GPU, float ``gpunn_exp`` is ``__expf`` and sigmoid's and SiLU's divisions are ``__fdividef``
(kernels/math.cuh); the host builds (NumPy twins, stand-in, host harness) keep IEEE maths, so no
parity test sees them. ``tests/support/device_maths_model.cu`` builds the very .cuh functions for
the host with each intrinsic replaced by a model that errs by its whole documented bound (the CUDA C++
Programming Guide's table of single-precision intrinsics: __expf 2 + floor(|1.173·x|) ulp,
__fdividef 2 ulp), up or down, and this compares them with the same functions in exact double maths.

What it proves: if the GPU's intrinsics keep to their documented bounds (NVIDIA's, from extensive
but not exhaustive tests), every registered activation (forward and backward) and the BCE and
softmax cross-entropy heads stay within float32's tolerance (rtol 2e-5, atol 1e-6) of the exact
result over [-100, 100] and beyond, with both intrinsics erring the same or opposite ways. What it
does not: errors that vary in sign from one input to the next (bounded by the same sum), FTZ,
and whether the GPU keeps the bound; that needs a GPU.
"""

import ctypes
from pathlib import Path

import numpy as np
import pytest

from gpunn.kernels.activations import REGISTRY
from conftest import tolerance
from test_kernels_host import NVCC, PARAMETERS, nvcc, pointer, pytestmark  # noqa: F401

MODEL = Path(__file__).resolve().parents[1] / "support" / "device_maths_model.cu"


def wrappers() -> str:
    parts = []
    for name, kind in REGISTRY.items():
        values = [repr(float(PARAMETERS.get(name, {})[parameter])) for parameter, _ in kind.parameters]
        for c_type, suffix in (("float", "f32"), ("double", "f64")):
            typed = [f"{c_type}({value})" for value in values]
            parts.append(f"""
extern "C" void {name}_{suffix}(const {c_type}* z, const {c_type}* saved, {c_type}* y, {c_type}* dz, long n) {{
    for (long i = 0; i < n; ++i) {{
        y[i] = {kind.forward_call("z[i]", typed)};
        dz[i] = {kind.backward_call(f"{c_type}(0.75)", "saved[i]", typed)};
    }}
}}""")
    return "\n".join(parts)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("device_maths")
    unit, path = folder / "model.cu", folder / "libgpunn_device_maths.so"
    unit.write_text(f'#include "{MODEL}"\n{wrappers()}\n')
    nvcc("-O2", "-shared", "-Xcompiler", "-fPIC", str(unit), "-o", str(path))
    library = ctypes.CDLL(str(path))
    library.gpunn_model_expf.restype = ctypes.c_float
    library.gpunn_model_expf.argtypes = [ctypes.c_float]
    return library


# Dense over the range where e^x is finite and normal, both overflow edges, and zero's neighbourhood.
Z = np.unique(np.concatenate([np.linspace(-100, 100, 40001), [-1000.0, -88.8, -87.4, 87.4, 88.8, 1000.0],
                              np.geomspace(1e-6, 1.0, 200), -np.geomspace(1e-6, 1.0, 200)])).astype(np.float32)
DIRECTIONS = [(1, 1), (1, -1), (-1, 1), (-1, -1)]


def within(got, exact):
    rtol, atol = tolerance("float32")
    excess = np.abs(got.astype(np.float64) - exact) - (rtol * np.abs(exact) + atol)
    same_nan = np.isnan(got) == np.isnan(exact)
    return same_nan.all() and not (np.nan_to_num(excess, nan=-1.0) > 0).any(), float(np.nanmax(excess))


def test_the_model_errs_by_the_documented_bound(model):
    model.gpunn_model_directions(1, 1)
    exact = np.float32(np.exp(10.0))
    stepped = exact
    for _ in range(2 + 11):  # 2 + floor(1.173 · 10)
        stepped = np.nextafter(stepped, np.float32(np.inf))
    assert model.gpunn_model_expf(10.0) == stepped != exact


@pytest.mark.parametrize("directions", DIRECTIONS)
@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_activations_with_intrinsics_at_their_bounds_stay_within_float32_tolerance(model, name, directions):
    model.gpunn_model_directions(*directions)
    kind, n = REGISTRY[name], Z.size
    exact_y, exact_dz = np.empty(n), np.empty(n)
    z64 = Z.astype(np.float64)
    getattr(model, f"{name}_f64")(pointer(z64), pointer(z64), pointer(exact_y), pointer(exact_dz), ctypes.c_long(n))
    # Backward reads the input, or the output, which the float32 kernel saved rounded.
    saved = Z if kind.reads_input else exact_y.astype(np.float32)
    if not kind.reads_input:
        saved64 = saved.astype(np.float64)
        getattr(model, f"{name}_f64")(pointer(z64), pointer(saved64), pointer(exact_y), pointer(exact_dz),
                                      ctypes.c_long(n))
    y, dz = np.empty(n, np.float32), np.empty(n, np.float32)
    getattr(model, f"{name}_f32")(pointer(Z), pointer(saved), pointer(y), pointer(dz), ctypes.c_long(n))
    for what, got, exact in (("forward", y, exact_y), ("backward", dz, exact_dz)):
        ok, worst = within(got, exact)
        assert ok, (name, what, directions, worst)


@pytest.mark.parametrize("directions", DIRECTIONS)
def test_loss_heads_with_intrinsics_at_their_bounds_stay_within_float32_tolerance(model, directions):
    model.gpunn_model_directions(*directions)
    n, z64 = Z.size, Z.astype(np.float64)
    exact = [np.empty(n) for _ in range(3)]
    got = [np.empty(n, np.float32) for _ in range(3)]
    model.losses_f64(pointer(z64), *(pointer(a) for a in exact), ctypes.c_long(n))
    model.losses_f32(pointer(Z), *(pointer(a) for a in got), ctypes.c_long(n))
    for what, values, reference in zip(("softmax gradient", "BCE gradient", "BCE"), got, exact):
        ok, worst = within(values, reference)
        assert ok, (what, directions, worst)
