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


def test_launches_counts_a_replayed_graph_step_and_labels_pytorchs_cpu_operators():
    """PERF.md's launch table: gpunn's launches as CuPy makes them; PyTorch's column says what it
    counts (CPU leaf operators, not CUDA kernels); a replayed fit(graph=True) step is one graph
    launch and one copy (issue 21, items 4 and 8)."""
    out = run("launches.py", "S")
    header, _, row = out.strip().splitlines()[-3:]
    assert "PyTorch CPU leaf operators (not CUDA kernels)" in header and "PyTorch operators |" not in header
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[0] == "S" and cells[6] == "1 + 1", row
    assert int(cells[4]) == sum(map(int, cells[1:4]))


def test_optimizer_step_time_prints_a_median():
    out = run("optimizer_step_time.py", "frozen", "12")
    assert out.startswith("middle layer frozen (") and out.strip().endswith("us/step")
