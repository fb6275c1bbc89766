"""Backend selection: names, the context manager, GPUNN_BACKEND, "auto", and no silent fallback."""

import logging
import subprocess
import sys

import pytest

import gpunn as gn
from gpunn.backends import selection as backends


def test_use_backend_as_call_and_context_manager():
    with gn.use_backend("numpy") as outer:
        assert gn.get_backend() is outer and outer.name == "numpy"
        gn.use_backend("auto")
        assert gn.get_backend().name in gn.available_backends()
    assert "numpy" in gn.available_backends()


def test_unknown_backend_name_is_an_error():
    with pytest.raises(ValueError, match="unknown backend 'tpu'"):
        gn.use_backend("tpu")


def test_environment_variable_picks_the_starting_backend():
    code = "import gpunn; print(gpunn.get_backend().name)"
    result = subprocess.run([sys.executable, "-c", code], env={"GPUNN_BACKEND": "numpy", "PATH": ""},
                            capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "numpy"
    bad = subprocess.run([sys.executable, "-c", code], env={"GPUNN_BACKEND": "nonsense"},
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "unknown backend 'nonsense'" in bad.stderr


def test_importing_gpunn_touches_no_cuda():
    code = "import sys, gpunn; print('cupy' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


@pytest.mark.skipif(gn.cupy_unavailable_reason() is None, reason="a GPU is usable here")
def test_without_a_gpu_auto_picks_numpy_and_says_why(caplog):
    with caplog.at_level(logging.INFO, logger="gpunn"):
        with gn.use_backend("auto") as chosen:
            assert chosen.name == "numpy"
    assert "chose numpy" in caplog.text and "cupy unusable" in caplog.text


@pytest.mark.skipif(gn.cupy_unavailable_reason() is None, reason="a GPU is usable here")
def test_without_a_gpu_asking_for_cupy_raises_the_reason():
    with pytest.raises(gn.BackendUnavailableError, match="cupy backend cannot run here: .+"):
        gn.use_backend("cupy")
    assert gn.available_backends() == ["numpy"]


def test_cupy_not_installed_is_reported(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # makes `import cupy` raise ImportError
    assert "CuPy is not installed" in backends.cupy_unavailable_reason()


def test_matmul_precision_setting():
    assert gn.get_matmul_precision() == "highest"
    gn.set_matmul_precision("tf32")
    try:
        assert gn.get_matmul_precision() == "tf32"
    finally:
        gn.set_matmul_precision("highest")
    with pytest.raises(ValueError, match="unknown matmul precision 'fp8'"):
        gn.set_matmul_precision("fp8")


# --- blocks out of order, one object entered again (issue 22) ---------------------------------
def two_backends():
    from gpunn.backends.numpy_backend import NumpyBackend

    return NumpyBackend(), NumpyBackend()  # two distinct instances: which one is current is visible


def test_blocks_left_out_of_order_are_a_clear_error_that_changes_nothing():
    """The outer block left first used to restore the state before it, then the inner one put
    the outer's backend back: the wrong backend stayed current after both."""
    first, second = two_backends()
    before = gn.get_backend()
    outer, inner = gn.use_backend(first), gn.use_backend(second)
    outer.__enter__()
    inner.__enter__()
    with pytest.raises(RuntimeError, match="left innermost first"):
        outer.__exit__(None, None, None)
    assert gn.get_backend() is second
    inner.__exit__(None, None, None)
    assert gn.get_backend() is first
    outer.__exit__(None, None, None)
    assert gn.get_backend() is before
    with pytest.raises(RuntimeError, match="never entered"):
        outer.__exit__(None, None, None)


def test_one_use_backend_object_entered_again_switches_each_time():
    """Re-entering raised a raw RuntimeError about a ContextVar token."""
    first, second = two_backends()
    before = gn.get_backend()
    switch = gn.use_backend(first)
    with switch:
        assert gn.get_backend() is first
    assert gn.get_backend() is before
    with gn.use_backend(second):
        with switch as entered:
            assert entered is first and gn.get_backend() is first
            with switch:  # inside itself too
                assert gn.get_backend() is first
            assert gn.get_backend() is first
        assert gn.get_backend() is second
    assert gn.get_backend() is before
