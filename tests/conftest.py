"""Shared fixtures: every backend-aware test runs once per backend, and random inputs are fresh
each run with the seed printed (shown by pytest when a test fails; rerun with GPUNN_TEST_SEED)."""

import os

import numpy as np
import pytest

import gpunn as gn
from gpunn.testing import cupy_standin

#: "cupy-standin" is the CuPy backend's own code on the CPU stand-in (gpunn/testing/cupy_standin):
#: it runs on every CI run; "cupy" needs a GPU.
BACKENDS = ("numpy", "cupy", "cupy-standin")


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
    reason = skip_reason(request.param)
    if reason:
        pytest.skip(reason)
    with gn.use_backend(request.param) as selected:
        yield selected


@pytest.fixture
def rng():
    seed = int(os.environ.get("GPUNN_TEST_SEED", int.from_bytes(os.urandom(4), "little")))
    print(f"random inputs drawn with seed {seed} (rerun with GPUNN_TEST_SEED={seed})")
    return np.random.default_rng(seed)


def tolerance(dtype):
    """(rtol, atol) for comparing a dtype's results with a float64 reference."""
    return {"float16": (2e-2, 2e-3), "float32": (2e-5, 1e-6), "float64": (1e-12, 1e-14)}[np.dtype(dtype).name]
