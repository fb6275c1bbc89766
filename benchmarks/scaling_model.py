"""A model, not a measurement: data-parallel scaling of the L training step on N GPUs.

    python benchmarks/scaling_model.py      # prints the markdown table quoted in benchmarks/PERF.md

gpunn all-reduces the whole flat gradient once per step, after the backward pass (no overlap), so
a step on N GPUs takes t_compute + t_allreduce. A ring all-reduce moves 2(N-1)/N of the buffer
through each GPU's slowest link: t_allreduce = 2(N-1)/N * bytes / bus_bandwidth + 2(N-1) * latency.
Every rate below is an ASSUMPTION (vendor peak times an efficiency), to be replaced by
`gpunn bench` measurements whenever several GPUs are at hand.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "gpunn" / "bench" / "suite"))  # peers

from allreduce import gradient_elements  # noqa: E402
from peers import TRAIN_CONFIGS  # noqa: E402

# Achieved GEMM rates on one H100 SXM: about 75 % of the dense peaks 67 (FP32), 495 (TF32), 989 (FP16) TFLOP/s.
RATES = {"float32": 50e12, "tf32": 370e12, "float16": 740e12}
# Bus bandwidth per GPU for NCCL's ring: NVLink 4 (450 GB/s per direction) and one 400 Gb/s
# InfiniBand NDR port per GPU (50 GB/s per direction), each at about 80 %.
LINKS = {"NVLink (1 node)": 360e9, "InfiniBand NDR (across nodes)": 40e9}
LATENCY = 10e-6  # per ring step


def allreduce_seconds(nbytes: float, ranks: int, bandwidth: float) -> float:
    return 2 * (ranks - 1) / ranks * nbytes / bandwidth + 2 * (ranks - 1) * LATENCY


def table() -> str:
    config = TRAIN_CONFIGS["L"]
    elements, flops = gradient_elements(config), config.gemm_flops()
    lines = [f"L: {'-'.join(map(str, config.sizes))}, batch {config.batch} per GPU (weak scaling), "
             f"{elements:,} parameters, {flops / 1e12:.2f} TFLOP of GEMMs per step", "",
             "| precision | step on 1 GPU | link | N | all-reduce | step on N | efficiency | speed-up |",
             "|---|---|---|---|---|---|---|---|"]
    for precision, rate in RATES.items():
        step = flops / rate
        nbytes = elements * (2 if precision == "float16" else 4)
        for link, bandwidth in LINKS.items():
            for ranks in ((2, 8) if link.startswith("NVLink") else (16, 64)):
                reduce = allreduce_seconds(nbytes, ranks, bandwidth)
                efficiency = step / (step + reduce)
                lines.append(f"| {precision} | {step * 1e3:.1f} ms | {link} | {ranks} | {reduce * 1e3:.2f} ms | "
                             f"{(step + reduce) * 1e3:.1f} ms | {efficiency:.0%} | {ranks * efficiency:.1f}× |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())
