"""Where a gpunn-numpy training step spends its time, per backend method (GEMMs, fused activations,
the optimizer update, …), inside real steps: each method is wrapped with a timer.

    python benchmarks/backend_time.py GELU CPU-adam     # train-step cases of the suite
"""

import collections
import functools
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "gpunn" / "bench" / "suite"))  # peers
from peers import GpunnPeer, train_case

from gpunn.backends.numpy_backend import NumpyBackend

METHODS = ("matmul", "matmul_nt", "matmul_tn", "bias_activation", "activation_backward", "bias_gradient",
           "optimizer_update", "global_norm", "mse_grad", "softmax_cross_entropy_grad")
SPENT = collections.defaultdict(float)


def timed(name, method):
    @functools.wraps(method)
    def run(*args, **kwargs):
        started = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            SPENT[name] += time.perf_counter() - started

    return run


def main(cases, steps=40):
    for name in METHODS:
        setattr(NumpyBackend, name, timed(name, getattr(NumpyBackend, name)))
    for case in cases:
        config, dtype, _, optimizer = train_case(case)
        train_step, x, t = GpunnPeer("numpy").build_train_step(config, dtype, np.random.default_rng(0), optimizer)
        for _ in range(5):
            train_step(x, t)
        SPENT.clear()
        started = time.perf_counter()
        for _ in range(steps):
            train_step(x, t)
        step = (time.perf_counter() - started) / steps * 1e3
        parts = sorted(((name, spent / steps * 1e3) for name, spent in SPENT.items()), key=lambda part: -part[1])
        rest = step - sum(ms for _, ms in parts)
        print(f"{case}: step {step:.2f} ms  " + "  ".join(f"{name} {ms:.2f}" for name, ms in parts if ms >= 0.01)
              + f"  other {rest:.2f}")


if __name__ == "__main__":
    main(sys.argv[1:] or ["CPU"])
