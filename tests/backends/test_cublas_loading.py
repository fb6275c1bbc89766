"""cuBLAS is found where CuPy finds it, for CuPy's CUDA major version, with no GPU and no driver.

dlopen needs no driver, so the lookup runs on the CPU machine exactly as on a GPU machine: in a
fresh interpreter with nothing on LD_LIBRARY_PATH, after a plain ``import cupy`` (which loads no
cuBLAS: CuPy 14 loads it lazily, at its own cuBLAS wrappers' first use).
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gpunn.backends import cublas
from gpunn.extras import install_command

ROOT = Path(__file__).resolve().parents[2]


def test_finds_the_wheels_cublas_after_a_plain_import_cupy():
    pytest.importorskip("cupy", reason="CuPy is not installed (pip install '.[cuda13]')")
    code = textwrap.dedent("""
        import cupy
        maps = open("/proc/self/maps").read()
        assert "/libcublas.so" not in maps, "import cupy loaded cuBLAS already: the test would prove nothing"
        from gpunn.backends.cublas import load_library
        major = cupy.cuda.runtime.runtimeGetVersion() // 1000
        library = load_library(major)
        print(major, library.gpunn_path)
        assert library.gpunn_path in open("/proc/self/maps").read()
        assert library.cublasGemmEx is not None
    """)
    env = {key: value for key, value in os.environ.items() if not key.startswith(("LD_", "CUDA_"))}
    env["PYTHONPATH"] = str(ROOT)
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    major, path = result.stdout.split()
    assert Path(path).name == f"libcublas.so.{major}"
    assert "site-packages" in path, f"{path} is not a pip wheel's cuBLAS"


def test_another_majors_cublas_is_refused_and_the_error_says_what_was_tried(monkeypatch):
    pathfinder = pytest.importorskip("cuda.pathfinder", reason="cuda-pathfinder comes with CuPy 14")

    class Found:
        abs_path = "/opt/cuda-12/lib64/libcublas.so.12"

    monkeypatch.setattr(pathfinder, "load_nvidia_dynamic_lib", lambda name: Found())
    monkeypatch.setattr(cublas.ctypes, "CDLL", lambda name: (_ for _ in ()).throw(OSError(f"{name}: no such file")))
    with pytest.raises(OSError) as error:
        cublas.load_library(13)
    message = str(error.value)
    assert "libcublas.so.12, not the cuBLAS 13" in message
    assert "dlopen(libcublas.so.13): libcublas.so.13: no such file" in message
    assert install_command("cuda13") in message and "LD_LIBRARY_PATH" in message
