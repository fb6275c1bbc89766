"""``pip install gpunn[cuda13]`` (or ``[cuda12]``) is a working GPU install on a machine with only
the driver: pip's resolver turns each extra into CuPy plus NVRTC, the CUDA headers (cudart's
wheel), cuBLAS and NCCL, for that CUDA major, and nothing of the toolkit that gpunn never calls.

The requirement lists are read from pyproject.toml and resolved with ``pip install --dry-run
--report`` against the configured index. Skipped only where that index cannot be reached,
never where the CI variable is set.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli", reason="reading pyproject.toml on Python 3.10 needs tomli")

ROOT = Path(__file__).resolve().parents[2]
EXTRAS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]

#: What the CuPy backend needs, as the wheels are named for each CUDA major.
NEEDED = {
    "cuda13": {"cupy-cuda13x", "nvidia-cuda-nvrtc", "nvidia-cuda-runtime", "nvidia-cublas", "nvidia-nccl-cu13"},
    "cuda12": {"cupy-cuda12x", "nvidia-cuda-nvrtc-cu12", "nvidia-cuda-runtime-cu12", "nvidia-cublas-cu12",
               "nvidia-nccl-cu12"},
}
NEVER_CALLED = ("cufft", "curand", "cusolver", "cusparse", "cudnn", "nvjitlink")


def resolve(requirements, tmp_path):
    report = tmp_path / "report.json"
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                             "--report", str(report), *requirements], capture_output=True, text=True)
    if result.returncode != 0:
        unreachable = any(text in result.stderr for text in ("NewConnectionError", "Failed to establish",
                                                             "Temporary failure in name resolution",
                                                             "Network is unreachable"))
        if unreachable and not os.environ.get("CI"):
            pytest.skip(f"the package index is unreachable from here: {result.stderr.strip()[-300:]}")
        pytest.fail(f"pip could not resolve {requirements}:\n{result.stderr[-2000:]}")
    return {item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]}


@pytest.mark.parametrize("extra", ["cuda13", "cuda12"])
def test_extra_resolves_to_what_the_cupy_backend_needs(extra, tmp_path):
    names = resolve(EXTRAS[extra], tmp_path)
    assert NEEDED[extra] <= names, f"{extra} lacks {sorted(NEEDED[extra] - names)}"
    assert "cuda-pathfinder" in names  # how CuPy 14 and gpunn find the wheels' libraries and headers
    unneeded = sorted(name for name in names if any(library in name for library in NEVER_CALLED))
    assert not unneeded, f"{extra} brings libraries gpunn never calls: {unneeded}"
