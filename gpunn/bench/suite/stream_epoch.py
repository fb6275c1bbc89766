"""An epoch over a float32 .npy streamed from a memory map against the same epoch in memory, each in a
fresh process, so that its peak resident memory (``VmHWM``; see ``peak_resident_mb``) is its own.

``python gpunn/bench/suite/stream_epoch.py --size 2GB`` writes the file in a temporary folder (a
block at a time: writing it never holds it), times ``--epochs`` epochs of a 256-64-1 MLP from each
source after one warm-up epoch (``--pairs`` pairs of processes, back to back), and prints each
epoch's wall and CPU seconds, the ratios and each run's peak resident memory. As ``gpunn bench``, it
sets ``OPENBLAS_THREAD_TIMEOUT=4`` unless it is set: OpenBLAS's idle workers otherwise spin for
about 0.1 s after each GEMM and take the reading thread's core (benchmarks/PERF.md). ``test_mmap_epoch`` (the benchmark suite) uses the same functions.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

FEATURES, BATCH, DTYPE = 256, 1024, "float32"


def size_rows(case: str) -> int:
    """The rows of a float32 file of ``case`` ("64MB", "2GB") with 256 features."""
    return (int(case[:-2]) << (30 if case.endswith("GB") else 20)) // (FEATURES * 4)


def write_files(folder, case: str) -> tuple[str, str]:
    """``x-<case>.npy`` (normal rows) and its targets, written 65,536 rows at a time through
    ``np.lib.format.open_memmap``, so writing never holds the file in memory."""
    import numpy as np

    rows = size_rows(case)
    x_path, t_path = os.path.join(folder, f"x-{case}.npy"), os.path.join(folder, f"t-{case}.npy")
    array = np.lib.format.open_memmap(x_path, mode="w+", dtype=DTYPE, shape=(rows, FEATURES))
    rng = np.random.default_rng(0)
    for start in range(0, rows, 1 << 16):
        block = array[start:start + (1 << 16)]
        block[...] = rng.normal(size=block.shape)
        array.flush()
    del array, block
    np.save(t_path, np.random.default_rng(1).normal(size=(rows, 1)).astype(DTYPE))
    return x_path, t_path


def blas_info() -> list:
    """threadpoolctl's view of the BLAS: library, kernel (architecture) and threads."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    return [{key: pool.get(key) for key in ("internal_api", "architecture", "num_threads", "version")}
            for pool in threadpool_info() if pool.get("user_api") == "blas"]


def child(x_path: str, t_path: str, source: str, epochs: int, backend: str) -> dict:
    """In this process: one fit of ``epochs + 1`` epochs, the first a warm-up (it also checks and loads the
    data); each epoch's wall and CPU seconds (all threads) and the peak resident memory."""
    import resource

    import numpy as np

    import gpunn as gn

    x = np.load(x_path, mmap_mode="r") if source == "mmap" else np.load(x_path)
    t = np.load(t_path)
    with gn.use_backend(backend):
        model = gn.Sequential(gn.Dense(FEATURES, 64, seed=0), gn.Tanh(), gn.Dense(64, 1, seed=1))
        optimizer = gn.SGD(lr=0.01)
        marks = [(time.perf_counter(), time.process_time())]

        def mark(epoch, logs):
            model.backend.synchronize()
            marks.append((time.perf_counter(), time.process_time()))

        model.fit(x, t, loss=gn.MSELoss(), optimizer=optimizer, epochs=epochs + 1, batch_size=BATCH, seed=0,
                  verbose=0, callback=mark)
    wall = [after[0] - before[0] for before, after in itertools.pairwise(marks)]
    cpu = [after[1] - before[1] for before, after in itertools.pairwise(marks)]
    return {"source": source, "openblas_thread_timeout": os.environ.get("OPENBLAS_THREAD_TIMEOUT"), "seconds": wall[1:], "cpu_seconds": cpu[1:], "warm_up_seconds": wall[0],
            "peak_rss_mb": peak_resident_mb(), "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "blas": blas_info()}


def peak_resident_mb() -> float:
    """This process's peak resident memory: Linux's VmHWM, the high-water mark of its own address space.
    ``ru_maxrss`` is not that: exec records the parent's high-water mark into the child's (the kernel's
    exec_mmap, through subprocess's vfork), so a parent that wrote the 2 GB file shows in its child."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux, bytes on macOS


def run_child(x_path: str, t_path: str, source: str, epochs: int, backend: str = "numpy") -> dict:
    """``child`` in a fresh Python (this file as a script), its JSON result."""
    environ = dict(os.environ)
    environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # as `gpunn bench` sets it (gpunn/bench/report.py)
    done = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", source, "--x", str(x_path),
                           "--t", str(t_path), "--epochs", str(epochs), "--backend", backend],
                          check=True, capture_output=True, text=True, env=environ)
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare(x_path: str, t_path: str, epochs: int, backend: str = "numpy", pairs: int = 1) -> dict:
    """``pairs`` times a streamed then an in-memory process, back to back (a busy minute of a shared
    machine falls on both sides of a pair); the ratios (streamed / in memory) of each pair's median
    wall and CPU epoch, and their medians."""
    runs, ratios = [], {"wall": [], "cpu": []}
    for _ in range(pairs):
        pair = {source: run_child(x_path, t_path, source, epochs, backend) for source in ("mmap", "memory")}
        runs.append(pair)
        for kind, key in (("wall", "seconds"), ("cpu", "cpu_seconds")):
            ratios[kind].append(statistics.median(pair["mmap"][key]) / statistics.median(pair["memory"][key]))
    return {"runs": runs, "ratios": ratios, "median_ratio": {kind: statistics.median(values) for kind, values
                                                             in ratios.items()},
            "peak_rss_mb": {source: max(pair[source]["peak_rss_mb"] for pair in runs) for source in ("mmap", "memory")}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="2GB")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--backend", default="numpy")
    parser.add_argument("--pairs", type=int, default=1, help="streamed/in-memory process pairs, back to back")
    parser.add_argument("--child", choices=("mmap", "memory"))
    parser.add_argument("--x", help="an .npy of inputs written before (instead of --size)")
    parser.add_argument("--t", help="its targets")
    options = parser.parse_args(argv)
    if options.child:
        print(json.dumps(child(options.x, options.t, options.child, options.epochs, options.backend)))
        return 0
    if options.x:  # files written before (write_files)
        result = compare(options.x, options.t, options.epochs, options.backend, options.pairs)
    else:
        with tempfile.TemporaryDirectory() as folder:
            x_path, t_path = write_files(folder, options.size)
            result = compare(x_path, t_path, options.epochs, options.backend, options.pairs)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
