"""Shared fixtures: every backend-aware test runs once per backend, and random inputs are fresh
each run with the seed printed (shown by pytest when a test fails; rerun with GPUNN_TEST_SEED)."""

import os

import numpy as np
import pytest

import gpunn as gn
from support import cupy_standin

#: "cupy-standin" is the CuPy backend's own code on the CPU stand-in (tests/support/cupy_standin):
#: it runs on every CI run; "cupy" needs a GPU. "numpy-twins" is the NumPy backend without its
#: compiled host kernels (gpunn/backends/native.py): the NumPy twins a machine without a C++
#: compiler runs.
BACKENDS = ("numpy", "numpy-twins", "cupy", "cupy-standin")


def without_host_kernels(monkeypatch):
    from gpunn.backends import native

    for name in ("bias_activation", "activation_backward", "update", "activations_available"):
        monkeypatch.setattr(native, name, lambda *arguments: False)


def skip_reason(name):
    if name in gn.available_backends():
        return None
    return f"the {name} backend is not usable here: {gn.cupy_unavailable_reason()}"


@pytest.fixture(params=BACKENDS)
def backend(request):
    """The backend under test, made current for the test's duration."""
    if request.param == "cupy-standin":
        with cupy_standin.installed(), gn.use_backend("cupy") as selected:
            yield selected
        return
    if request.param == "numpy-twins":
        without_host_kernels(request.getfixturevalue("monkeypatch"))
    name = request.param.split("-")[0]
    reason = skip_reason(name)
    if reason:
        pytest.skip(reason)
    with gn.use_backend(name) as selected:
        yield selected


@pytest.fixture
def rng():
    seed = int(os.environ.get("GPUNN_TEST_SEED", int.from_bytes(os.urandom(4), "little")))
    print(f"random inputs drawn with seed {seed} (rerun with GPUNN_TEST_SEED={seed})")
    return np.random.default_rng(seed)


def tolerance(dtype):
    """(rtol, atol) for comparing a dtype's results with a float64 reference."""
    return {"float16": (2e-2, 2e-3), "float32": (2e-5, 1e-6), "float64": (1e-12, 1e-14)}[np.dtype(dtype).name]


def matmul_error_bound(a, b, dtype):
    """How far a GEMM of ``a·b`` (float64 copies of the stored operands) may be from the float64
    product: accumulating k products in the compute type (float32 for float16 and float32 storage,
    float64 for float64) errs by at most λ·√k·u·Σ|a||b| with overwhelming probability (Higham and
    Mary's probabilistic bound, λ = 4; for k ≤ 16 it also covers the worst case k·u), then the
    result is rounded once to the storage type (u_out·|a·b|)."""
    k = a.shape[1]
    u_accumulate = np.finfo("float64" if dtype == "float64" else "float32").eps / 2
    u_out = np.finfo(dtype).eps / 2
    return 4 * np.sqrt(k) * u_accumulate * (np.abs(a) @ np.abs(b)) + u_out * np.abs(a @ b)
