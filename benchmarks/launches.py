"""Launches per training step: a GPU cost counted on the CPU.

Small MLPs on a GPU are launch-bound: each kernel launch costs a few microseconds of host and
driver time whatever its size. gpunn's step runs on the CuPy stand-in (tests/support/cupy_standin),
which logs every kernel launch, cuBLAS call and memset/memcpy, each CuPy routine counted as the
launches CuPy 14.2's source makes for it (tests/support/cupy_standin/_launches.py): eager, and as
``fit(graph=True)`` replays it (the launches outside the graph, beside the graph's one).

PyTorch's same step (the peer of the benchmarks) runs under torch.profiler on the CPU: its leaf
aten operators (views and allocations left out) are CPU operators, not CUDA kernels. A CUDA step
runs other kernels (a foreach Adam runs a few ``_foreach`` kernels for all parameters where the CPU
runs several operators per parameter), so the column is no launch count of PyTorch on a GPU and the
table compares nothing with it; that count needs torch.profiler on a GPU (benchmarks/gpu_check.sh).
Counts do not depend on sizes, so each case runs on a scaled-down copy of its network (same layers,
loss, optimizer and dtype). ``python benchmarks/launches.py`` prints the table.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np

sys.path[:0] = [str(Path(__file__).resolve().parent.parent / "gpunn" / "bench" / "suite"),  # peers
                str(Path(__file__).resolve().parent.parent / "tests")]  # support: the CuPy stand-in
from peers import GpunnPeer, TorchPeer, train_case  # noqa: E402

#: The launch overhead of the model in benchmarks/PERF.md: a prediction's parameter, not a measurement.
LAUNCH_MICROSECONDS = 5.0
#: aten operators that launch no kernel: views, reshapes, allocations, no-op conversions.
NO_KERNEL = {"aten::view", "aten::_unsafe_view", "aten::t", "aten::transpose", "aten::as_strided", "aten::expand",
             "aten::reshape", "aten::_reshape_alias", "aten::detach", "aten::alias", "aten::permute",
             "aten::unsqueeze", "aten::squeeze", "aten::select", "aten::slice", "aten::empty", "aten::empty_like",
             "aten::empty_strided", "aten::resize_", "aten::lift_fresh", "aten::result_type", "aten::numpy_T",
             "aten::resolve_conj", "aten::resolve_neg", "aten::conj", "aten::to"}


def scaled(config, limit: int = 16):
    """The same network with every width and the batch at most ``limit``."""
    return dataclasses.replace(config, sizes=tuple(min(s, limit) for s in config.sizes),
                               batch=min(config.batch, limit))


def gpunn_launches(case: str) -> tuple[dict, dict]:
    """Device operations per kind in one eager gpunn step on the CuPy backend (the stand-in), and in
    one replayed step as fit(graph=True) runs it (the batch's row indices copied in, the graph)."""
    from support import cupy_standin

    config, dtype, _, optimizer = train_case(case)
    with cupy_standin.installed() as standin:
        step, x, t = GpunnPeer("cupy").build_train_step(scaled(config), dtype, np.random.default_rng(0), optimizer)
        step(x, t)  # the first step makes the buffers
        eager = dict(standin.count(lambda: step(x, t)))
        step.graph, rows = True, step.model.backend.xp.arange(x.shape[0])
        for _ in range(2):  # eager, then recorded
            step.train(x, t, rows=rows)
        return eager, dict(standin.count(lambda: step.train(x, t, rows=rows)))


def torch_operators(case: str) -> int | None:
    """Leaf aten operators of one eager PyTorch step on the CPU (not CUDA kernels), or None without PyTorch."""
    try:
        import torch
        from torch.profiler import ProfilerActivity, profile
    except ImportError:
        return None
    config, dtype, _, optimizer = train_case(case)
    step = TorchPeer("cpu").train_step(scaled(config), dtype, np.random.default_rng(0), optimizer)
    step()
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        step()
    del torch

    def works(event) -> bool:
        return event.name.startswith("aten::") and event.name not in NO_KERNEL

    # An operator counts when none of the operators it calls does work itself (the leaves).
    return sum(1 for event in profiler.events() if works(event) and not any(map(works, event.cpu_children)))


def markdown(cases) -> str:
    """The report's table: counts per case and the launch-bound time they predict."""
    lines = ["| case | gpunn kernels | gpunn cuBLAS calls | gpunn memset/memcpy | gpunn total "
             f"| gpunn launch-bound floor ({LAUNCH_MICROSECONDS:g} µs/launch, a model) "
             "| gpunn fit(graph=True) replay: launches outside the graph + graph launches "
             "| PyTorch CPU leaf operators (not CUDA kernels) |", "|" + "---|" * 8]
    for case in cases:
        (eager, replay), torch_count = gpunn_launches(case), torch_operators(case)
        total = sum(eager.values())
        graphs = replay.get("graph", 0)
        lines.append(f"| {case} | {eager.get('kernel', 0)} | {eager.get('cublas', 0)} | {eager.get('memory', 0)} "
                     f"| {total} | {total * LAUNCH_MICROSECONDS:.0f} µs | {sum(replay.values()) - graphs} + {graphs} "
                     f"| {'' if torch_count is None else torch_count} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown(sys.argv[1:] or ["S", "M", "L", "L-fp16", "CPU", "S-adam", "L-adam"]))
