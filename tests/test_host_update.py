"""The NumPy backend's optimizer update built from kernels/optim.cuh as host code (one compiled
pass) against the rules' NumPy twins (a dozen NumPy passes), the path it takes without a compiler
or with GPUNN_HOST_KERNELS=0: the same numbers, extremes included."""

import subprocess
import sys

import numpy as np
import pytest

from gpunn.backends import host_update
from gpunn.backends.numpy_backend import NumpyBackend
from gpunn.optim.rules import RULES

from test_backend_conformance import UPDATE_CASES

TOLERANCE = {"float32": (4e-6, 1e-6), "float64": (1e-14, 1e-15)}


def run_update(monkeypatch, compiled, rule, p, g, states, scalars, max_norm, norm, hyper, flag, weight_decay):
    if not compiled:  # the twin: the backend's path when the compiled pass is unavailable
        monkeypatch.setattr(host_update, "update", lambda *arguments: False)
    P, S = p.copy(), [state.copy() for state in states]
    NumpyBackend().optimizer_update(RULES[rule], P, g, S, None, scalars.copy(), np.array([0.05, 0.02]),
                                    np.array([norm], p.dtype), hyper, flag, weight_decay, p.size // 2, max_norm,
                                    False)
    monkeypatch.undo()
    return P, S


@pytest.mark.parametrize("rule,hyper,flag", UPDATE_CASES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("scale,max_norm,weight_decay", [(1.0, 0.0, 0.0), (4.0, 0.5, 0.01)])
def test_compiled_pass_equals_the_numpy_twin(monkeypatch, rng, rule, hyper, flag, dtype, scale, max_norm,
                                             weight_decay):
    if host_update.status().startswith("NumPy passes"):
        pytest.skip(f"no compiled update here: {host_update.status()}")
    n = 3000
    g = (rng.normal(size=n) * scale).astype(dtype)
    g[:4] = [0.0, 1e30, -1e-30, np.nan]  # zero, huge, tiny and NaN gradients
    p = rng.normal(size=n).astype(dtype)
    states = [rng.uniform(0.1, 1.0, size=n).astype(dtype) for _ in RULES[rule].states]
    scalars = np.array([3.0, 1.0, scale, 0.0, 0.0])
    norm = float(np.linalg.norm(g[4:].astype(np.float64)))
    got = run_update(monkeypatch, True, rule, p, g, states, scalars, max_norm, norm, hyper, flag, weight_decay)
    expected = run_update(monkeypatch, False, rule, p, g, states, scalars, max_norm, norm, hyper, flag,
                          weight_decay)
    rtol, atol = TOLERANCE[dtype]
    for compiled, twin in zip([got[0], *got[1]], [expected[0], *expected[1]]):
        np.testing.assert_allclose(compiled, twin, rtol=rtol, atol=atol, equal_nan=True)
    assert np.isnan(got[0][3]) and not np.isnan(got[0][4:]).any()


def test_the_gradient_is_only_read(rng):
    g = rng.normal(size=500)
    before = g.copy()
    host_update.update(RULES["adam"], np.zeros(500), [np.zeros(500), np.zeros(500)], g, 0.1, 1.0, 0.01, 250,
                       (0.9, 0.999, 1e-8), True, 2.0, 1.0, 0.5)
    np.testing.assert_array_equal(g, before)


def test_what_it_cannot_take_goes_to_the_twin():
    """float16, mixed dtypes and strided views: False, nothing written."""
    cases = [(np.zeros(8, np.float16), np.zeros(8, np.float16)), (np.zeros(8), np.zeros(8, np.float32)),
             (np.zeros(16)[::2], np.zeros(8))]
    for param, grad in cases:
        assert host_update.update(RULES["sgd"], param, [np.zeros_like(param)], grad, 0.1, 1.0, 0.0, 0,
                                  (0.0,) * 3, False, 1.0, 0.0, 0.0) is False


@pytest.mark.parametrize("environment,expected", [
    ({"GPUNN_HOST_KERNELS": "0"}, "NumPy passes (off (GPUNN_HOST_KERNELS=0))"),
    ({"CXX": "", "PATH": ""}, "NumPy passes (no host C++ compiler found: install g++ or set CXX)"),
])
def test_gpunn_info_says_which_update_runs(environment, expected):
    import os

    script = "from gpunn.backends import host_update; print(host_update.status())"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env={**os.environ, **environment})
    assert result.stdout.strip() == expected, result.stderr
