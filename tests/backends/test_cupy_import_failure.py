"""``import cupy`` can raise OSError: CuPy 14.2 creates its kernel cache folder at import
(``cupy/cuda/_compiler_cache.py``, ``os.makedirs``). Where it cannot, gpunn says which folder and
how to fix it, ``auto`` picks NumPy, and ``gpunn info`` reports it instead of crashing.

The folder is made impossible to create by putting it under a regular file, which stops root too.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("cupy", reason="CuPy is not installed (pip install '.[cuda13]')")

ROOT = Path(__file__).resolve().parents[2]


def run(code_or_args, tmp_path, **variables):
    env = {key: value for key, value in os.environ.items() if key not in ("CUPY_CACHE_DIR", "GPUNN_BACKEND")}
    env.update(PYTHONPATH=str(ROOT), **variables)
    args = code_or_args if isinstance(code_or_args, list) else ["-c", code_or_args]
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, cwd=tmp_path)


@pytest.fixture
def blocked(tmp_path):
    regular_file = tmp_path / "a-file"
    regular_file.write_text("not a folder")
    return regular_file


def test_import_cupy_really_raises_oserror_there(blocked, tmp_path):
    result = run("import cupy", tmp_path, CUPY_CACHE_DIR=str(blocked / "cache"))
    assert result.returncode != 0 and "NotADirectoryError" in result.stderr, result.stderr


def test_auto_picks_numpy_and_says_why(blocked, tmp_path):
    code = ("import logging; logging.basicConfig(level=logging.INFO); import gpunn; "
            "print(gpunn.get_backend().name); print(gpunn.available_backends())")
    result = run(code, tmp_path, CUPY_CACHE_DIR=str(blocked / "cache"), GPUNN_BACKEND="auto")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["numpy", "['numpy']"]
    assert f"kernel cache folder {blocked / 'cache'}" in result.stderr and "CUPY_CACHE_DIR" in result.stderr


def test_asking_for_cupy_is_a_clear_error(blocked, tmp_path):
    result = run("import gpunn; gpunn.use_backend('cupy')", tmp_path, CUPY_CACHE_DIR=str(blocked / "cache"))
    assert "BackendUnavailableError" in result.stderr and "set CUPY_CACHE_DIR to a writable folder" in result.stderr


def test_gpunn_info_names_the_folder_of_an_unusable_home(blocked, tmp_path):
    result = run(["-m", "gpunn", "info"], tmp_path, HOME=str(blocked))
    assert result.returncode == 0, result.stderr
    assert f"cupy backend: unusable: importing CuPy failed: it could not create its kernel cache folder " \
           f"{blocked}/.cupy/kernel_cache" in result.stdout
    assert "backends available: numpy" in result.stdout and "Traceback" not in result.stderr
