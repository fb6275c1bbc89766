"""The profiling scripts PERF.md quotes still run (a few steps each, on the CPU)."""

import subprocess
import sys
from pathlib import Path

import pytest

SUITE = Path(__file__).resolve().parents[2] / "benchmarks"


def run(script, *arguments):
    result = subprocess.run([sys.executable, str(SUITE / script), *arguments], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_backend_time_splits_a_step_by_backend_method():
    out = run("backend_time.py", "S-adam")
    assert out.startswith("S-adam: step ") and "optimizer_update" in out and "matmul_tn" in out and "other" in out


def test_interleave_pairs_both_libraries_and_the_gemms():
    pytest.importorskip("torch", reason="the PyTorch peer needs torch (a local comparison, not a CI dependency)")
    out = run("interleave.py", "S-adam", "2")
    assert "block 2: torch-cpu" in out and "GEMMs" in out
    assert "S-adam: median torch/gpunn over 2 blocks" in out and "beyond gpunn's GEMMs" in out


def test_step_time_prints_a_median_per_step():
    out = run("step_time.py")
    assert out.strip().endswith("ms/step") and float(out.split(": ")[-1].split()[0]) > 0


def test_optimizer_step_time_prints_a_median():
    out = run("optimizer_step_time.py", "frozen", "12")
    assert out.startswith("middle layer frozen (") and out.strip().endswith("us/step")
