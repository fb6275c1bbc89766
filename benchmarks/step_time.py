"""A training step's time in whichever gpunn PYTHONPATH points at, to compare two trees side by side:

    PYTHONPATH=/path/to/tree python benchmarks/step_time.py

The CPU-adam case's shape (784-256-256-10, batch 128, Adam, float32) on NumPy: prints the median of
five blocks of 100 steps, in ms per step. Run two trees as alternating processes and compare the
pairs' ratios (benchmarks/PERF.md, change 19)."""

import statistics
import time

import numpy as np

import gpunn as gn

rng = np.random.default_rng(0)
x = rng.normal(size=(128, 784)).astype("float32")
t = rng.integers(0, 10, size=128)
with gn.use_backend("numpy"):
    model = gn.Sequential(gn.Dense(784, 256, seed=1), gn.Tanh(), gn.Dense(256, 256, seed=2), gn.Tanh(),
                          gn.Dense(256, 10, seed=3))
    step = gn.TrainStep(model, gn.SoftmaxCrossEntropyLoss(), gn.Adam(lr=1e-3))
    xb, tb = step.prepare(x, t)
    for _ in range(20):
        step(xb, tb)
    blocks = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(100):
            step(xb, tb)
        float(step(xb, tb))  # waits for the device
        blocks.append((time.perf_counter() - start) / 101 * 1e3)
print(f"{gn.__file__}: {statistics.median(blocks):.3f} ms/step")
