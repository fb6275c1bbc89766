"""Time gpunn-numpy and PyTorch training steps in alternating blocks inside one process.

    python benchmarks/interleave.py CPU            # a case of peers.TRAIN_CONFIGS
    OPENBLAS_THREAD_TIMEOUT=4 python benchmarks/interleave.py CPU

The benchmark suite also runs both libraries in one process, one case after the other; this
shows, in a minute, how much each library's idle worker threads slow the other (PERF.md).
"""

import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import TRAIN_CONFIGS, GpunnPeer, TorchPeer


def median_ms(step, rounds=60, warm_up=5):
    for _ in range(warm_up):
        step()
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e3


def main(case="CPU", blocks=2):
    config, rng = TRAIN_CONFIGS[case], np.random.default_rng(0)
    train_step, x, t = GpunnPeer("numpy").build_train_step(config, "float32", rng)
    steps = {"torch-cpu": TorchPeer("cpu").train_step(config, "float32", rng),
             "gpunn-numpy": lambda: train_step(x, t)}
    for block in range(blocks):
        print(f"block {block + 1}: " + "  ".join(f"{name} {median_ms(step):.2f} ms" for name, step in steps.items()))


if __name__ == "__main__":
    main(*sys.argv[1:2])
