"""The benchmark suite cannot rot: CI runs it once with minimal rounds and reads the report."""

import json
import re
import subprocess
import sys

import pytest

from gpunn.bench import report as bench
from gpunn import cli
from gpunn.extras import install_command


@pytest.mark.benchmark_run
def test_quick_suite_runs_and_writes_the_report(tmp_path, capfd):
    code = cli.main(["bench", "--quick", "--backend", "numpy", "--max-time", "0.001", "--min-rounds", "1",
                     "--passes", "2", "--out", str(tmp_path)])
    out = capfd.readouterr().out
    assert code == 0
    reports = list(tmp_path.glob("*.md"))
    assert len(reports) == 1 and reports[0].name.startswith("cpu-")
    text = reports[0].read_text()
    for group in ("ceiling", "matmul", "activation", "dense", "train-step", "epoch"):
        assert f"## {group}" in text, group
    assert "cpu copy 2^16:" in text and "cpu copy 2^24:" in text and "cpu matmul:" in text and "CPU step/GEMMs" in text
    assert "## distributed" in text and "2-rank all-reduce/step" in text  # mpiexec on 1 and 2 ranks
    passes = json.loads(reports[0].with_suffix(".json").read_text())["passes"]
    assert len(passes) == 2 and "median over 2 passes" in text
    impls = {b["extra_info"]["impl"] for b in passes[0]["benchmarks"]}
    assert {"gpunn-numpy", "gemm-floor-cpu"} <= impls
    assert all(b["extra_info"]["threads"] >= 1 and "device_name" in b["extra_info"] for b in passes[1]["benchmarks"])
    assert not list(tmp_path.glob(".raw-*")), "the raw pass files are merged, then removed"
    assert reports[0].with_suffix(".png").stat().st_size > 1000
    assert f"report: {reports[0]}" in out
    # only the report reaches the screen; pytest's own tables are kept beside it
    assert out.startswith("# gpunn benchmarks") and "Name (time in" not in out and "passed" not in out
    log = reports[0].with_suffix(".log").read_text()
    assert "=== pass 2 ===" in log and "Name (time in" in log


def row(group, case, impl, median, device="cpu", flops=0, moved=0, tf32=False, elements=None, pass_index=0):
    return {"pass": pass_index, "group": group, "case": case, "impl": impl, "device": device, "device_name": "x",
            "median": median,
            "flops": flops, "bytes": moved, "tf32": tf32, "threads": 2, "versions": {}, "elements": elements}


def test_ratios_and_fractions():
    rows = [row("ceiling", "matmul-1", "gpunn-numpy", 1.0, flops=100.0),
            row("ceiling", "copy-2^24", "gpunn-numpy", 1.0, moved=50.0),
            row("train-step", "S", "gpunn-numpy", 2.0, flops=100.0),
            row("train-step", "S", "torch-cpu", 3.0, flops=100.0),
            row("train-step", "S", "gemm-floor-cpu", 1.6, flops=100.0),
            row("activation", "tanh forward 2^16", "gpunn-numpy", 1.0, moved=25.0)]
    rows += [row("train-step", "S", "torch-cpu", 5.0, flops=100.0, pass_index=1),  # two more passes of torch
             row("train-step", "S", "torch-cpu", 2.5, flops=100.0, pass_index=2)]
    summary = {(line["group"], line["case"]): line for line in bench.summarise(rows)}
    step = summary[("train-step", "S")]
    assert step["median"]["torch-cpu"] == 3.0  # the median over passes
    assert step["vs_torch_cpu"] == pytest.approx(1.5)  # only pass 0 has both sides
    assert step["over_floor_cpu"] == pytest.approx(1.25)
    assert step["fraction"]["gpunn-numpy"] == pytest.approx(0.5)  # 50 FLOP/s of a 100 FLOP/s ceiling
    assert summary[("activation", "tanh forward 2^16")]["fraction"]["gpunn-numpy"] == pytest.approx(0.5)
    assert step["gpu_over_cpu"] is None


def test_a_ratio_pairs_the_two_sides_of_one_pass():
    """A slow phase of the machine hits both sides of a pass (they run back to back): each pass
    says 1.3x here. The ratio of the overall medians (5.2 / 2.2) would claim 2.4x."""
    times = [(2.0, 2.6), (4.0, 5.2), (2.2, 5.4)]  # (gpunn, torch) per pass
    rows = [row("train-step", "S", impl, t, pass_index=index)
            for index, pair in enumerate(times) for impl, t in zip(("gpunn-numpy", "torch-cpu"), pair)]
    rows += [row("distributed", "S", "allreduce-2-ranks", 0.5 * pair[0], pass_index=index)
             for index, pair in enumerate(times)]
    summary = {(line["group"], line["case"]): line for line in bench.summarise(rows)}
    step = summary[("train-step", "S")]
    assert (step["median"]["gpunn-numpy"], step["median"]["torch-cpu"]) == (2.2, 5.2)
    assert step["vs_torch_cpu"] == pytest.approx(1.3)
    distributed = summary[("distributed", "S")]
    assert distributed["allreduce_over_step"] == pytest.approx(0.5)  # each pass against its own step
    assert distributed["median"]["train step"] == 2.2


def test_the_peers_of_a_case_run_back_to_back():
    from pathlib import Path

    suite = Path(bench.suite_dir())
    result = subprocess.run([sys.executable, "-m", "pytest", str(suite), "--collect-only", "-q", "-p",
                             "no:cacheprovider", f"--rootdir={suite}", "-k", "test_train_step and not floor"],
                            capture_output=True, text=True, cwd=suite)
    ids = [line.split("[", 1)[1].rstrip("]") for line in result.stdout.splitlines() if "::test_train_step[" in line]
    assert ids.index("torch-cpu-S-adam") == ids.index("gpunn-numpy-S-adam") + 1, ids
    assert ids.index("torch-cpu-CPU-adam") == ids.index("gpunn-numpy-CPU-adam") + 1, ids
    cuda = [i for i in ids if i.endswith("-L-adam")]
    assert len(cuda) == 4 and ids.index(cuda[-1]) - ids.index(cuda[0]) == 3, ids


def test_bench_without_pytest_benchmark_says_how_to_install(monkeypatch, tmp_path):
    hint = install_command("bench")  # before find_spec is patched: the hint reads pip's record of the install
    monkeypatch.setattr(bench.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RuntimeError, match=re.escape(hint)):
        bench.run_suite(tmp_path, True, "gpunn-numpy", [], None, 1, 0.001, 1)


def test_a_case_in_cache_is_judged_against_a_copy_in_cache():
    """The 197% bug: a 2^16-element activation (in cache) was judged against a 2^24-element copy
    (through DRAM). Each bytes-bound case now meets the copy of its own size."""
    rows = [row("ceiling", "copy-2^16", "gpunn-numpy", 1.0, moved=300.0),  # cache: fast
            row("ceiling", "copy-2^24", "gpunn-numpy", 1.0, moved=100.0),  # DRAM: slow
            row("activation", "tanh backward 2^16", "gpunn-numpy", 1.0, moved=200.0, elements=2**16),
            row("activation", "tanh backward 2^24", "gpunn-numpy", 1.0, moved=80.0, elements=2**24),
            row("activation", "tanh backward 2^20", "gpunn-numpy", 1.0, moved=60.0, elements=2**20)]
    fractions = {line["case"]: line["fraction"]["gpunn-numpy"] for line in bench.summarise(rows)}
    assert fractions["tanh backward 2^16"] == pytest.approx(2 / 3)  # was 200%
    assert fractions["tanh backward 2^24"] == pytest.approx(0.8)
    assert fractions["tanh backward 2^20"] == pytest.approx(0.6)  # no copy of its size: the largest


def test_unknown_peers_and_empty_selections_say_so(tmp_path):
    with pytest.raises(RuntimeError, match="unknown peer\\(s\\) 'bogus'.*choose from gpunn-numpy"):
        bench.run_suite(tmp_path, True, "gpunn-numpy,bogus", [], None, 1, 0.001, 1)
    with pytest.raises(RuntimeError, match="measured nothing .*check --peers, --case and -k"):
        bench.run_suite(tmp_path, True, "gpunn-numpy", ["matmul"], "no_such_case", 1, 0.001, 1)


def test_a_run_started_inside_a_test_worker_still_times(monkeypatch, tmp_path):
    """pytest-benchmark turns timing off in a process whose environment says it is an xdist worker; a
    suite started from one (CI's benchmark step runs under xdist) must not inherit that."""
    seen = {}

    def capture(command, env=None, **options):
        seen.update(env)
        raise RuntimeError("stop here")

    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw0")
    monkeypatch.setattr(bench.subprocess, "run", capture)
    with pytest.raises(RuntimeError, match="stop here"):
        bench.run_suite(tmp_path, True, "gpunn-numpy", [], None, 1, 0.001, 1)
    assert seen and not any(name.startswith("PYTEST_XDIST_") for name in seen)
