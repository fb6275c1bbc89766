"""``gpunn bench``: run the pytest-benchmark suite and turn its JSON into a report.

The report puts every case's median time per implementation side by side, with the ratios
that matter: gpunn's GPU/CPU speedup, gpunn against PyTorch on the same device (above 1 means
gpunn is faster), a training step against its GEMMs alone, and each case's fraction of the
device ceilings (copy bandwidth, matmul rate) measured in the same run.
"""

from __future__ import annotations

import datetime
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from gpunn.extras import install_command

GROUPS = ("ceiling", "matmul", "activation", "dense", "train-step", "epoch", "transfer", "distributed")
BACKEND_PEERS = {"numpy": "gpunn-numpy,torch-cpu",
                 "cupy": "gpunn-cupy,gpunn-cupy-graph,torch-cuda,torch-cuda-graph"}
IMPL_ORDER = ("gpunn-numpy", "torch-cpu", "gemm-floor-cpu", "gpunn-cupy", "gpunn-cupy-graph", "torch-cuda",
              "torch-cuda-graph", "gemm-floor-gpu", "train step", "allreduce-1-rank", "allreduce-2-ranks")
DISTRIBUTED_RANKS = (1, 2)
# OpenBLAS's idle workers spin for 2^28 cycles (about 0.1 s) by default, and PyTorch's OpenMP
# workers spin too: in one process each library's spinning threads slowed the other by a fifth
# or more on 2 cores (benchmarks/PERF.md). 2^4 cycles lets both run at their stand-alone speed.
OPENBLAS_THREAD_TIMEOUT = "4"
PEER_NAMES = tuple(name for names in BACKEND_PEERS.values() for name in names.split(","))
BOUND = {"activation": "bytes", "transfer": "bytes"}  # every other group is judged by FLOPs
# A bytes-bound case is judged against a copy of the same number of elements: a 2^16-element
# case runs from cache, and judged against a copy through DRAM it showed 197% of its "ceiling".


def suite_dir() -> Path:
    """The pytest-benchmark suite: ``suite/`` beside this module (shipped in the wheel)."""
    return Path(__file__).resolve().parent / "suite"


def run_suite(out_dir: Path, quick: bool, peers: str, groups: list[str], keyword: str | None,
              threads: int | None, max_time: float, min_rounds: int, passes: int = 1) -> list[Path]:
    """Run the suite ``passes`` times, each in a fresh interpreter (so thread counts are fixed
    before NumPy loads). Several passes spread every case over time: on a shared machine a slow
    phase of a few seconds then hits one pass of a case, not the whole comparison."""
    unknown = sorted(set(peers.split(",")) - set(PEER_NAMES))
    if unknown:
        raise RuntimeError(f"unknown peer(s) {', '.join(map(repr, unknown))} in --peers; choose from "
                           f"{', '.join(PEER_NAMES)}")
    for module, extra in (("pytest", "bench"), ("pytest_benchmark", "bench")):
        if importlib.util.find_spec(module) is None:
            raise RuntimeError(f"{module} is not installed: {install_command(extra)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    threads = threads or os.cpu_count()
    if groups and "ceiling" not in groups:
        groups = ["ceiling", *groups]  # every report needs the ceilings of its own run
    distributed = (not groups or "distributed" in groups) and "gpunn-numpy" in peers.split(",")
    if distributed and groups and "train-step" not in groups:
        groups = [*groups, "train-step"]  # the all-reduce is judged against the step it serves
    selection = " or ".join(f"test_{group.replace('-', '_')}" for group in groups)
    keywords = " and ".join(f"({k})" for k in (selection, keyword) if k)
    command = [sys.executable, "-m", "pytest", str(suite_dir()), "-q", "-p", "no:cacheprovider",
               f"--rootdir={suite_dir()}", f"--benchmark-max-time={max_time}",
               f"--benchmark-min-rounds={min_rounds}", "--benchmark-warmup=off", f"--peers={peers}",
               f"--threads={threads}", "-W", "ignore::pytest_benchmark.logger.PytestBenchmarkWarning",
               "-W", "error::RuntimeWarning"]  # an overflow would mean timing Inf/NaN, not the case
    if quick:
        command.append("--quick")
    if keywords:
        command += ["-k", keywords]
    env = dict(os.environ, **{name: str(threads) for name in
                              ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")})
    env.setdefault("OPENBLAS_THREAD_TIMEOUT", OPENBLAS_THREAD_TIMEOUT)
    for name in [name for name in env if name.startswith("PYTEST_XDIST_")]:  # a run started from a test worker:
        del env[name]  # pytest-benchmark disables timing in any process that says it is an xdist worker
    raws = []
    for index in range(passes):
        raw = out_dir / f".raw-{os.getpid()}-{index}.json"
        print(f"gpunn bench: pass {index + 1}/{passes} running; pytest's output goes to {raw.with_suffix('.log')}",
              file=sys.stderr, flush=True)
        with open(raw.with_suffix(".log"), "w") as log:  # the raw tables stay in the log, off the screen
            result = subprocess.run(command + [f"--benchmark-json={raw}"], env=env, stdout=log,
                                    stderr=subprocess.STDOUT)
        if result.returncode not in (0, 5):
            tail = raw.with_suffix(".log").read_text().strip().splitlines()[-1:]
            raise RuntimeError(f"the benchmark run failed (pytest exit status {result.returncode}: "
                               f"{' '.join(tail)}); see {raw.with_suffix('.log')}")
        if not raw.is_file():
            raise RuntimeError("the benchmark run measured nothing (every case was skipped or deselected: "
                               "check --peers, --case and -k)")
        if distributed:
            _add_allreduce_rows(raw, quick, threads, max_time, min_rounds, env)
        raws.append(raw)
    return raws


def _add_allreduce_rows(raw: Path, quick: bool, threads: int, max_time: float, min_rounds: int, env) -> None:
    """Time each training-step case's gradient all-reduce under mpiexec on 1 and 2 ranks (MPI on
    NumPy buffers) and add the rows to this pass's raw JSON; without MPI, say why and go on."""
    from gpunn.distributed.world import mpi_install_hint

    mpiexec = Path(sys.executable).parent / "mpiexec"
    if importlib.util.find_spec("mpi4py") is None or not mpiexec.is_file():
        print(f"gpunn bench: the distributed group needs mpi4py and MPICH's mpiexec; {mpi_install_hint()}")
        return
    data = json.loads(raw.read_text())
    for ranks in DISTRIBUTED_RANKS:
        out = raw.with_name(f"{raw.stem}-allreduce-{ranks}.json")
        command = [str(mpiexec), "-n", str(ranks), sys.executable, str(suite_dir() / "allreduce.py"), str(out),
                   "--cases", "S,CPU" if quick else "S,CPU,M", "--max-time", str(max_time),
                   "--rounds", str(min_rounds), "--threads", str(threads)]
        result = subprocess.run(command, env=dict(env, MPIEXEC_TIMEOUT="600", GPUNN_BACKEND="numpy"))
        if result.returncode != 0 or not out.is_file():
            raise RuntimeError(f"the all-reduce benchmark on {ranks} ranks failed (exit status {result.returncode})")
        data["benchmarks"] += json.loads(out.read_text())["benchmarks"]
        out.unlink()
    raw.write_text(json.dumps(data))


# --- the report ---------------------------------------------------------------------------
def _rows(data: dict, pass_index: int = 0) -> list[dict]:
    rows = []
    for bench in data["benchmarks"]:
        info = bench["extra_info"]
        rows.append({"pass": pass_index, "group": bench["group"], "case": info["case"], "impl": info["impl"],
                     "device": info["device"], "device_name": info["device_name"], "median": bench["stats"]["median"],
                     "flops": info.get("flops", 0), "bytes": info.get("bytes", 0), "tf32": info.get("tf32", False),
                     "dtype": info.get("dtype", "float32"), "elements": info.get("elements"),
                     "threads": info.get("threads"), "versions": info.get("versions", {})})
    return rows


def _matmul_kind(row) -> str:
    """Which matmul ceiling a row is judged against: float32, TF32 or float16."""
    return "matmul-tf32" if row["tf32"] else "matmul-fp16" if row.get("dtype") == "float16" else "matmul"


def _copy_kind(elements) -> str:
    return f"copy 2^{int(elements).bit_length() - 1}"


def _ceilings(rows) -> dict:
    """(device, kind) -> the best rate measured: bytes/s for each copy size ('copy 2^20', and
    'copy' for the largest), FLOP/s for each matmul kind."""
    best = {}
    for row in rows:
        if row["group"] != "ceiling":
            continue
        copy = row["case"].startswith("copy")
        kind = f"copy 2^{int(row['case'].split('^')[1])}" if copy else _matmul_kind(row)
        rate = (row["bytes"] if copy else row["flops"]) / row["median"]
        best[(row["device"], kind)] = max(rate, best.get((row["device"], kind), 0.0))
    for device in {device for device, _ in best}:
        copies = [kind for held, kind in best if held == device and kind.startswith("copy 2^")]
        if copies:
            best[(device, "copy")] = best[(device, max(copies, key=lambda kind: int(kind[len("copy 2^"):])))]
    return best


def _fraction(row, ceilings) -> float | None:
    if BOUND.get(row["group"]) == "bytes":
        same_size = ceilings.get((row["device"], _copy_kind(row["elements"]))) if row.get("elements") else None
        ceiling, work = same_size or ceilings.get((row["device"], "copy")), row["bytes"]
    else:
        ceiling = ceilings.get((row["device"], _matmul_kind(row)))
        work = row["flops"]
    if not ceiling or not work:
        return None
    return work / row["median"] / ceiling


def _ratio(numerator, denominator):
    return numerator / denominator if numerator and denominator else None


def _median(values):
    values = sorted(values)
    middle = len(values) // 2
    return values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) / 2


def _combine_passes(rows) -> list[dict]:
    """One row per (group, case, implementation): the median over passes of the pass medians."""
    by_key = {}
    for row in rows:
        by_key.setdefault((row["group"], row["case"], row["impl"]), []).append(row)
    return [{**same[0], "median": _median(row["median"] for row in same)} for same in by_key.values()]


RATIO_COLUMNS = [("gpu_over_cpu", "gpunn GPU/CPU"), ("vs_torch_cpu", "vs torch CPU"),
                 ("vs_torch_gpu", "vs torch GPU"), ("graph_vs_torch_gpu", "graph vs torch GPU"),
                 ("graph_vs_torch_graph", "graph vs torch graph"),
                 ("over_floor_cpu", "CPU step/GEMMs"), ("over_floor_gpu", "GPU step/GEMMs"),
                 ("allreduce_over_step", "2-rank all-reduce/step")]


def _pass_ratios(m: dict, step) -> dict:
    """The ratio columns of one case from one pass's medians ``m`` (impl -> seconds); ``step`` is
    the same pass's gpunn-numpy step time for a distributed case."""
    return {"gpu_over_cpu": _ratio(m.get("gpunn-numpy"), m.get("gpunn-cupy")),
            "vs_torch_cpu": _ratio(m.get("torch-cpu"), m.get("gpunn-numpy")),
            "vs_torch_gpu": _ratio(m.get("torch-cuda"), m.get("gpunn-cupy")),
            "graph_vs_torch_gpu": _ratio(m.get("torch-cuda"), m.get("gpunn-cupy-graph")),
            "graph_vs_torch_graph": _ratio(m.get("torch-cuda-graph"), m.get("gpunn-cupy-graph")),
            "over_floor_cpu": _ratio(m.get("gpunn-numpy"), m.get("gemm-floor-cpu")),
            "over_floor_gpu": _ratio(m.get("gpunn-cupy"), m.get("gemm-floor-gpu")),
            "allreduce_over_step": _ratio(m.get("allreduce-2-ranks"), step)}


def summarise(rows) -> list[dict]:
    """One line per (group, case): medians per implementation and the derived ratios. A time is
    the median over passes; a ratio is the median over passes of that pass's ratio. The two
    sides of a ratio ran back to back in one pass (case-major order), so a slow phase of the
    shared machine lands on both; a ratio of the overall medians could pair a slow pass of one
    side with a fast pass of the other."""
    by_pass = {}
    for row in rows:
        by_pass.setdefault(row.get("pass", 0), {}).setdefault((row["group"], row["case"]), {})[row["impl"]] = \
            row["median"]
    combined = _combine_passes(rows)
    ceilings = _ceilings(combined)
    lines = {}
    for row in combined:
        line = lines.setdefault((row["group"], row["case"]), {"group": row["group"], "case": row["case"],
                                                              "median": {}, "fraction": {}})
        line["median"][row["impl"]] = row["median"]
        line["fraction"][row["impl"]] = _fraction(row, ceilings)
    for key, line in lines.items():
        per_pass = []
        for cases in by_pass.values():
            step = cases.get(("train-step", line["case"]), {}).get("gpunn-numpy")
            if key in cases:
                per_pass.append(_pass_ratios(cases[key], step if line["group"] == "distributed" else None))
        for column, _ in RATIO_COLUMNS:
            values = [ratios[column] for ratios in per_pass if ratios[column]]
            line[column] = _median(values) if values else None
        if line["group"] == "distributed":  # beside the step time of the same case, from the same run
            step = lines.get(("train-step", line["case"]), {}).get("median", {}).get("gpunn-numpy")
            if step:
                line["median"]["train step"] = step
    order = {group: index for index, group in enumerate(GROUPS)}
    return sorted(lines.values(), key=lambda line: (order.get(line["group"], 99), line["case"]))


def _format_time(seconds):
    return "" if seconds is None else f"{seconds * 1e3:.3g} ms" if seconds < 1 else f"{seconds:.3g} s"


def markdown_table(summary, group) -> str:
    lines = [line for line in summary if line["group"] == group]
    impls = [impl for impl in IMPL_ORDER if any(impl in line["median"] for line in lines)]
    ratios = [(key, title) for key, title in RATIO_COLUMNS if any(line[key] for line in lines)]
    fractions = [impl for impl in ("gpunn-numpy", "gpunn-cupy")
                 if any(line["fraction"].get(impl) for line in lines)]
    header = ["case"] + impls + [title for _, title in ratios] + [f"{impl} of ceiling" for impl in fractions]
    table = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for line in lines:
        cells = [line["case"]] + [_format_time(line["median"].get(impl)) for impl in impls]
        cells += [f"{line[key]:.2f}×" if line[key] else "" for key, _ in ratios]
        cells += [f"{line['fraction'][impl]:.0%}" if line["fraction"].get(impl) else "" for impl in fractions]
        table.append("| " + " | ".join(cells) + " |")
    return "\n".join(table)


def _plot(rows, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    series = {}
    for row in rows:
        if row["group"] == "activation":
            activation, direction, size = row["case"].split()
            key = (direction, f"{row['impl']} {activation}")
            series.setdefault(key, []).append((2 ** int(size[2:]), row["bytes"] / row["median"] / 1e9))
    if not series:
        return False
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for axis, direction in zip(axes, ("forward", "backward")):
        for (which, label), points in sorted(series.items()):
            if which == direction:
                points.sort()
                axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
        axis.set(xscale="log", yscale="log", xlabel="elements", title=f"bias+activation {direction}")
        axis.legend(fontsize=7)
    axes[0].set_ylabel("achieved GB/s (read + write)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True


def report_stem(rows) -> str:
    names = {row["device_name"] for row in rows if row["device"] == "gpu"}
    tag = next(iter(sorted(names)), None)
    if tag is None:
        tag = f"cpu-{os.cpu_count()}core"
    slug = re.sub(r"[^a-z0-9]+", "-", tag.lower()).strip("-")
    return f"{slug}-{datetime.date.today().isoformat()}"


def write_report(raw_jsons: list[Path], out_dir: Path, command: str) -> tuple[Path, str]:
    """Write <device>-<date>.json/.md/.png into ``out_dir``; return the markdown path and text."""
    passes = [json.loads(Path(raw).read_text()) for raw in raw_jsons]
    rows = [row for index, data in enumerate(passes) for row in _rows(data, index)]
    if not rows:
        raise RuntimeError("the benchmark run measured nothing (every case was skipped or filtered out)")
    stem = out_dir / report_stem(rows)
    for data in passes:  # every round's sample would make the file megabytes; the stats stay
        for bench in data["benchmarks"]:
            bench["stats"].pop("data", None)
    stem.with_suffix(".json").write_text(json.dumps({"passes": passes}, indent=1))
    logs = [Path(raw).with_suffix(".log") for raw in raw_jsons]
    stem.with_suffix(".log").write_text("".join(f"=== pass {index + 1} ===\n" + log.read_text()
                                                for index, log in enumerate(logs) if log.is_file()))
    for path in [Path(raw) for raw in raw_jsons] + logs:
        path.unlink(missing_ok=True)
    summary = summarise(rows)
    devices = sorted({(row["device"], row["device_name"]) for row in rows})
    versions = {}
    for row in rows:
        versions.update(row["versions"])
    ceilings = _ceilings(_combine_passes(rows))
    parts = [f"# gpunn benchmarks: {stem.name}", "",
             f"Command: `{command}`. Each time is the median of pytest-benchmark rounds (the median over "
             f"{len(passes)} pass{'es' if len(passes) > 1 else ''} of the suite when there are several), each step synchronised with its device. "
             "Ratios, each the median over passes of the ratio within a pass (whose two sides ran back to back): "
             "'vs torch' is PyTorch's time over gpunn's on the same device (above 1: gpunn is faster); "
             "'step/GEMMs' is a training step over its GEMMs timed alone; 'of ceiling' is achieved FLOP/s "
             "(bytes/s for activation and transfer) over the ceiling measured in this run; a bytes-bound case is "
             "judged against a copy of as many elements, so a case that fits in cache meets a copy in cache. "
             f"pytest's own tables: `{stem.with_suffix('.log').name}`.", "",
             "Devices: " + "; ".join(f"{device}: {name}" for device, name in devices),
             (f"Threads (NumPy BLAS and PyTorch): {rows[0]['threads']}; OpenBLAS thread timeout: "
              f"2^{os.environ.get('OPENBLAS_THREAD_TIMEOUT', OPENBLAS_THREAD_TIMEOUT)} cycles"),
             "Versions: " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())), "",
             "Ceilings: " + "; ".join(
                 f"{device} {kind}: " + (f"{rate / 1e9:.1f} GB/s" if kind.startswith("copy") else
                                         f"{rate / 1e12:.2f} TFLOP/s")
                 for (device, kind), rate in sorted(ceilings.items()) if kind != "copy")]
    for group in GROUPS:
        if any(line["group"] == group for line in summary):
            parts += ["", f"## {group}", "", markdown_table(summary, group)]
    plot = stem.with_suffix(".png")
    if _plot(rows, plot):
        parts += ["", f"![activation bandwidth]({plot.name})"]
    text = "\n".join(parts) + "\n"
    stem.with_suffix(".md").write_text(text)
    return stem.with_suffix(".md"), text
