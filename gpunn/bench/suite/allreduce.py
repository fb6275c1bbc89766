"""The all-reduce of each training-step case's flat gradient, timed under MPI for ``gpunn bench``.

Run by ``gpunn bench`` as ``mpiexec -n RANKS python allreduce.py OUT.json --cases S,CPU,M``. Each
round starts after a barrier and takes as long as the slowest rank (the step waits for it); the
median over rounds is written as pytest-benchmark rows of the group ``distributed``, so the
report reads them beside the training steps. It times gpunn's own transport (MPI on NumPy, NCCL
on CuPy), in place, as data-parallel training calls it; with one rank that is MPI's in-place
call with nobody to sum with, the floor of the call itself.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from peers import PEERS, TRAIN_CONFIGS  # noqa: E402

import gpunn as gn  # noqa: E402

WARM_UP_CALLS = 3


def gradient_elements(config) -> int:
    """Weights and biases of every Dense layer: the length of the model's flat gradient."""
    return sum(a * b + b for a, b in zip(config.sizes, config.sizes[1:]))


def time_allreduce(world, buffer, rounds: int, max_time: float) -> list[float]:
    from mpi4py import MPI

    backend = world.backend
    for _ in range(WARM_UP_CALLS):
        world.transport.allreduce_sum(buffer)
    backend.synchronize()
    times, started, done = [], time.perf_counter(), False
    while not done:
        world.comm.Barrier()
        begin = time.perf_counter()
        world.transport.allreduce_sum(buffer)
        backend.synchronize()
        times.append(world.comm.allreduce(time.perf_counter() - begin, op=MPI.MAX))
        # Rank 0's clock alone decides when to stop, so every rank leaves after the same round.
        done = len(times) >= rounds and (time.perf_counter() - started >= max_time or len(times) >= 10_000)
        done = world.comm.bcast(done, root=0)
    return times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", help="the JSON file rank 0 writes")
    parser.add_argument("--cases", default="S,CPU,M", help="training-step cases (default: S,CPU,M)")
    parser.add_argument("--backend", default="numpy", choices=["numpy", "cupy"])
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per case at least (default: 5)")
    parser.add_argument("--max-time", type=float, default=1.0, help="seconds per case (default: 1.0)")
    parser.add_argument("--threads", type=int, default=None, help="recorded in the rows (BLAS is unused here)")
    args = parser.parse_args(argv)
    world = gn.distributed.init(args.backend)
    peer = PEERS["gpunn-numpy" if args.backend == "numpy" else "gpunn-cupy"]
    rows = []
    for case in args.cases.split(","):
        config = TRAIN_CONFIGS[case]
        elements = gradient_elements(config)
        buffer = world.backend.zeros((elements,), args.dtype)
        times = time_allreduce(world, buffer, args.rounds, args.max_time)
        nbytes = elements * buffer.dtype.itemsize
        rows.append({"group": "distributed", "stats": {"median": statistics.median(times), "rounds": len(times)},
                     "extra_info": {"impl": f"allreduce-{world.size}-rank{'s' if world.size > 1 else ''}",
                                    "case": case, "device": peer.device, "device_name": peer.device_name(),
                                    "versions": peer.versions(), "dtype": args.dtype, "threads": args.threads,
                                    "bytes": nbytes, "elements": elements, "ranks": world.size,
                                    "transport": world.transport.name}})
    if world.is_root:
        Path(args.out).write_text(json.dumps({"benchmarks": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
