"""The median time of one Adam ``optimizer.step()`` on the NumPy backend, over a float32 784-512-512-10
MLP with fresh gradients, every layer trainable or (``frozen``) the middle Dense frozen: what the
per-parameter step counts and the segment table cost on the host (PERF.md, issues 22 and 24).

    python benchmarks/optimizer_step_time.py [frozen] [steps]
"""

import statistics
import sys
import time

import numpy as np
from threadpoolctl import threadpool_info

import gpunn as gn


def main(frozen: bool, steps: int) -> None:
    model = gn.Sequential(gn.Dense(784, 512, seed=0, dtype="float32"), gn.ReLU(),
                          gn.Dense(512, 512, seed=1, dtype="float32"), gn.ReLU(), gn.Dense(512, 10, seed=2, dtype="float32"))
    if frozen:
        model.freeze(2)
    optimizer = gn.Adam(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(0)
    for parameter in model.parameters():
        parameter.grad = rng.normal(size=parameter.shape).astype(np.float32)
    times = []
    for _ in range(steps):
        for parameter in model.parameters():
            parameter.grad_valid = True  # a fresh gradient, as after a backward
        started = time.perf_counter()
        optimizer.step()
        times.append(time.perf_counter() - started)
    blas = next((f"{info['internal_api']} {info.get('architecture')}" for info in threadpool_info()), "no BLAS")
    print(f"{'middle layer frozen' if frozen else 'all trainable'} ({blas}): median "
          f"{statistics.median(times[steps // 6:]) * 1e6:.0f} us/step")


if __name__ == "__main__":
    arguments = sys.argv[1:]
    main("frozen" in arguments, int(next((a for a in arguments if a.isdigit()), "300")))
