"""Median time of Adam's optimizer.step() on the NumPy backend (native host build), float32 784-512-512-10."""
import statistics, sys, time
import numpy as np
import gpunn as gn
from threadpoolctl import threadpool_info
frozen = sys.argv[1:] == ["frozen"]
model = gn.Sequential(gn.Dense(784, 512, seed=0, dtype="float32"), gn.ReLU(), gn.Dense(512, 512, seed=1, dtype="float32"),
                      gn.ReLU(), gn.Dense(512, 10, seed=2, dtype="float32"))
if frozen:
    model.freeze(2)
opt = gn.Adam(model.parameters(), lr=1e-3)
rng = np.random.default_rng(0)
for p in model.parameters():
    p.grad = rng.normal(size=p.shape).astype(np.float32)
times = []
for _ in range(300):
    for p in model.parameters():
        p.grad_valid = True
    t = time.perf_counter(); opt.step(); times.append(time.perf_counter() - t)
print(f"{'frozen middle layer' if frozen else 'all trainable'}: median {statistics.median(times[50:]) * 1e6:.0f} us",
      [(i['internal_api'], i.get('architecture')) for i in threadpool_info()][:1])
