"""The wheel carries the CUDA source, so an installed gpunn finds its kernels."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_ships_the_kernels(tmp_path):
    # Built as pip builds it for an install: in an isolated environment with pyproject's setuptools.
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path),
                             str(ROOT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    wheel, = tmp_path.glob("gpunn-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {Path(name).name for name in names if name.startswith("gpunn/kernels/")}
    assert {path.name for path in (ROOT / "kernels").glob("*.cuh")} <= shipped
    assert "gpunn/cli.py" in names and "gpunn/backends/cupy_backend.py" in names
