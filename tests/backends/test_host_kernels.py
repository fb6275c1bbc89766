"""The NumPy backend's host kernels, kernels/optim.cuh and activations.cuh built as host code (one
compiled pass each), against the NumPy twins (a dozen NumPy passes for an Adam update, about
twenty-five for GELU), the path it takes without a compiler or with GPUNN_HOST_KERNELS=0: the same
numbers, extremes included."""

import os
import subprocess
import sys

import numpy as np
import pytest

from gpunn.backends import native
from gpunn.kernels.activations import REGISTRY, activation_function
from gpunn.backends.numpy_backend import NumpyBackend
from gpunn.kernels.update_rules import RULES

from conftest import without_host_kernels
from test_backend_conformance import UPDATE_CASES

TOLERANCE = {"float32": (4e-6, 1e-6), "float64": (1e-14, 1e-15)}


def run_update(monkeypatch, compiled, rule, p, g, states, scalars, max_norm, norm, hyper, flag, weight_decay):
    if not compiled:  # the twin: the backend's path when the compiled pass is unavailable
        without_host_kernels(monkeypatch)
    P, S = p.copy(), [state.copy() for state in states]
    NumpyBackend().optimizer_update(RULES[rule], P, g, S, None, scalars.copy(), np.array([0.05, 0.02]),
                                    np.array([norm], p.dtype), hyper, flag, weight_decay, p.size // 2, max_norm,
                                    False, np.array([0, p.size, 0, 1]), np.array([scalars[0]]))
    monkeypatch.undo()
    return P, S


@pytest.mark.parametrize("rule,hyper,flag", UPDATE_CASES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("scale,max_norm,weight_decay", [(1.0, 0.0, 0.0), (4.0, 0.5, 0.01)])
def test_compiled_pass_equals_the_numpy_twin(monkeypatch, rng, rule, hyper, flag, dtype, scale, max_norm,
                                             weight_decay):
    if native.update_status().startswith("NumPy passes"):
        pytest.skip(f"no compiled update here: {native.update_status()}")
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
    native.update(RULES["adam"], np.zeros(500), [np.zeros(500), np.zeros(500)], g, 0.1, 1.0, 0.01, 250,
                       (0.9, 0.999, 1e-8), True, 2.0, 1.0, 0.5)
    np.testing.assert_array_equal(g, before)


def test_what_it_cannot_take_goes_to_the_twin():
    """float16, mixed dtypes and strided views: False, nothing written."""
    cases = [(np.zeros(8, np.float16), np.zeros(8, np.float16)), (np.zeros(8), np.zeros(8, np.float32)),
             (np.zeros(16)[::2], np.zeros(8))]
    for param, grad in cases:
        assert native.update(RULES["sgd"], param, [np.zeros_like(param)], grad, 0.1, 1.0, 0.0, 0,
                                  (0.0,) * 3, False, 1.0, 0.0, 0.0) is False


@pytest.mark.parametrize("environment,expected", [
    ({"GPUNN_HOST_KERNELS": "0"}, "NumPy passes (off (GPUNN_HOST_KERNELS=0))"),
    ({"CXX": "", "PATH": ""}, "NumPy passes (no host C++ compiler found: install g++ or set CXX)"),
    ({"GPUNN_HOST_KERNEL_CACHE": "/dev/null/cache"}, "NumPy passes ([Errno 20] Not a directory: '/dev/null/cache')"),
])
def test_gpunn_info_says_which_update_runs(environment, expected):
    """A machine without a compiler, or an unwritable cache, still trains (on the twins) and says so."""
    script = ("import numpy as np, gpunn as gn\n"
              "from gpunn.backends import native\n"
              "model = gn.Sequential(gn.Dense(3, 2, seed=0))\n"
              "gn.TrainStep(model, gn.MSELoss(), gn.Adam(lr=0.1))(np.ones((4, 3)), np.zeros((4, 2)))\n"
              "print(native.update_status())")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env={**os.environ, **environment})
    assert result.stdout.strip().startswith(expected), result.stderr


def test_a_native_build_is_kept_apart_per_cpu(monkeypatch, tmp_path):
    """-march=native code must not reach another CPU through a shared cache folder."""
    source = 'extern "C" int answer() { return 42; }\n'
    paths = []
    for cpu in ("cpu one", "cpu two"):
        monkeypatch.setattr(native, "cpu_signature", lambda cpu=cpu: cpu)
        assert native.build(source, ("-O1", "-march=native"), tmp_path).answer() == 42
        paths.append(sorted(p.name for p in tmp_path.glob("*.so")))
    assert len(paths[0]) == 1 and len(paths[1]) == 2


PARAMETERS = {"leaky_relu": {"negative_slope": 0.2}, "softplus": {"beta": 1.5, "threshold": 4.0}}


@pytest.mark.parametrize("name", list(REGISTRY))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_compiled_activations_equal_the_numpy_twins(monkeypatch, rng, name, dtype):
    """Forward (with what backward reads) and backward, ±1000, ±∞, ±0 and NaN included."""
    if not native.activations_available(np.dtype(dtype)):
        pytest.skip(f"no compiled activations here: {native.activation_status()}")
    function = activation_function(name, **PARAMETERS.get(name, {}))
    z = (rng.normal(size=(37, 50)) * 4).astype(dtype)
    z.flat[:8] = [1000.0, -1000.0, np.inf, -np.inf, np.nan, 0.0, -0.0, 30.0]
    bias, dy = rng.normal(size=50).astype(dtype), rng.normal(size=z.shape).astype(dtype)
    backend = NumpyBackend()
    saved = np.empty_like(z)
    y = backend.bias_activation(z, bias, function, saved=saved)
    dz = backend.activation_backward(dy, saved, function)
    without_host_kernels(monkeypatch)
    twin_saved = np.empty_like(z)
    kept = np.empty_like(z) if backend.keeps(function, dtype) else None  # the twin keeps GELU's Φ(x)
    twin_y = backend.bias_activation(z, bias, function, saved=twin_saved, kept=kept)
    twin_dz = backend.activation_backward(dy, twin_saved, function, kept=kept)
    monkeypatch.undo()
    compiled_dz = backend.activation_backward(dy, twin_saved, function)  # from the same saved values
    # libmvec's and the twins' erf/tanh differ by a few ulp; 1 + erf (GELU) and 1 + tanh cancel for
    # negative inputs, in torch's formula as in these, so the error there is absolute, in units of x.
    eps = np.finfo(dtype).eps
    scale = 1 + np.abs(np.nan_to_num((z + bias).astype(np.float64), posinf=0, neginf=0))
    for got, expected in ((y, twin_y), (saved, twin_saved), (compiled_dz, twin_dz)):
        assert (np.isnan(got) == np.isnan(expected)).all()
        finite = np.isfinite(expected)
        assert np.array_equal(got[~finite], expected[~finite], equal_nan=True)
        error = np.abs(got[finite].astype(np.float64) - expected[finite])
        assert (error <= 64 * eps * (np.abs(expected[finite]) + scale[finite])).all(), error.max()
    assert np.isnan(dz).sum() == np.isnan(twin_dz).sum()


# --- a compiler or a cache that misbehaves (issue 22): fall back or rebuild, never hang or crash ----
def fake_compiler(tmp_path, body):
    script = tmp_path / "fake-cxx"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(0o755)
    return str(script)


@pytest.mark.parametrize("body,what", [
    ("sleep 60", "the host compiler's --version did not finish in 1 s"),
    ('case "$1" in --version) echo "fake 1.0";; *) sleep 60;; esac', "compiling the host kernels did not finish in 1 s"),
])
def test_a_hanging_compiler_is_cut_off_and_the_twins_run(tmp_path, body, what):
    environment = {**os.environ, "CXX": fake_compiler(tmp_path, body), "GPUNN_HOST_COMPILE_TIMEOUT": "1",
                   "GPUNN_HOST_KERNEL_CACHE": str(tmp_path / "cache")}
    result = subprocess.run([sys.executable, "-m", "gpunn", "info"], capture_output=True, text=True, timeout=60,
                            env=environment)
    assert result.returncode == 0, result.stderr
    assert f"numpy optimizer update: NumPy passes ({what}" in result.stdout, result.stdout
    assert "the NumPy backend runs its NumPy twins" in result.stderr  # logged, with the reason


def build_answer(folder):
    """A fresh process builds (or loads) a one-function library in ``folder`` and calls it."""
    script = ("import sys, pathlib\nfrom gpunn.backends import native\n"
              "library = native.build('extern \"C\" int answer() { return 42; }\\n', ('-O1',), "
              "pathlib.Path(sys.argv[1]), ('answer',))\nprint(library.answer())")
    return subprocess.run([sys.executable, "-c", script, str(folder)], capture_output=True, text=True, timeout=120)


def test_a_truncated_cached_library_is_rebuilt_not_loaded(tmp_path):
    assert build_answer(tmp_path).stdout.strip() == "42"
    library, = tmp_path.glob("*.so")
    library.write_bytes(library.read_bytes()[:len(library.read_bytes()) // 2])  # a disk that filled up
    result = build_answer(tmp_path)
    assert result.returncode == 0 and result.stdout.strip() == "42", result.stderr  # not SIGBUS
    assert "damaged; building them again" in result.stderr


def test_a_cached_library_without_the_functions_is_rebuilt(tmp_path):
    assert build_answer(tmp_path).stdout.strip() == "42"
    library, = tmp_path.glob("*.so")
    other = tmp_path / "other"
    other.mkdir()
    subprocess.run(["g++", "-shared", "-fPIC", "-x", "c++", "-", "-o", str(library)], input='extern "C" int other() { return 1; }',
                   text=True, check=True)
    library.with_suffix(".stamp").write_text(native._stamp(library))  # whole, but not what was asked for
    result = build_answer(tmp_path)
    assert result.returncode == 0 and result.stdout.strip() == "42", result.stderr
    assert "lacks answer; building it again" in result.stderr
