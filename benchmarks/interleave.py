"""Time gpunn-numpy and PyTorch training steps, and the step's GEMMs alone, in alternating blocks
inside one process.

    python benchmarks/interleave.py CPU            # a train-step case of the suite
    OPENBLAS_THREAD_TIMEOUT=4 python benchmarks/interleave.py CPU-adam 10

The benchmark suite also runs both libraries in one process, one case after the other; this
shows, in a minute, how much each library's idle worker threads slow the other (PERF.md). With
many blocks it is also the steadiest ratio this shared machine gives: each block's ratio compares
steps timed seconds apart, so a slow minute slows both sides; the last line is their median.
"""

import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "gpunn" / "bench" / "suite"))  # peers
from peers import GpunnPeer, TorchPeer, train_case


def median_ms(step, rounds=60, warm_up=5):
    for _ in range(warm_up):
        step()
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e3


def main(case="CPU", blocks="2"):
    config, dtype, _, optimizer = train_case(case)
    rng = np.random.default_rng(0)
    gpunn = GpunnPeer("numpy")
    train_step, x, t = gpunn.build_train_step(config, dtype, rng, optimizer)
    steps = {"torch-cpu": TorchPeer("cpu").train_step(config, dtype, rng, optimizer),
             "gpunn-numpy": lambda: train_step(x, t), "GEMMs": gpunn.gemm_floor(config, dtype, rng)}
    ratios, overheads = [], {"torch-cpu": [], "gpunn-numpy": []}
    for block in range(int(blocks)):
        times = {name: median_ms(step) for name, step in steps.items()}
        ratios.append(times["torch-cpu"] / times["gpunn-numpy"])
        for name, spent in overheads.items():
            spent.append(times[name] - times["GEMMs"])
        print(f"block {block + 1}: " + "  ".join(f"{name} {ms:.2f} ms" for name, ms in times.items())
              + f"  torch/gpunn {ratios[-1]:.2f}×")
    print(f"{case}: median torch/gpunn over {len(ratios)} blocks {statistics.median(ratios):.2f}× "
          f"(range {min(ratios):.2f}-{max(ratios):.2f}×); median step beyond gpunn's GEMMs: "
          + ", ".join(f"{name} {statistics.median(spent):.2f} ms" for name, spent in overheads.items()))


if __name__ == "__main__":
    main(*sys.argv[1:3])
