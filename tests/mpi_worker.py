"""What each rank runs in tests/test_distributed_mpi.py: ``mpiexec -n N python mpi_worker.py SCENARIO OUT``.

Checks that need every rank's view (the same bytes everywhere) are made here, by gathering to
rank 0; what must be compared with a single process is written to OUT for the test to compare.
A failed assert reaches the abort hook, which ends the job with a non-zero status.
"""

import json
import sys
import time
from pathlib import Path

import numpy as np

import gpunn as gn
from gpunn import distributed
from gpunn.backends.numpy_backend import NumpyBackend


class DeviceStandIn(NumpyBackend):
    """A backend whose arrays count as device arrays: to_numpy/asarray copy, as CuPy's do."""

    name = "device-stand-in"
    host_resident = False

    def to_numpy(self, x):
        return np.array(x, copy=True)

    def asarray(self, x, dtype=None):
        return np.array(x, dtype=dtype, copy=True)


def same_everywhere(comm, value) -> bool:
    values = comm.allgather(value)
    return all(np.array_equal(np.asarray(v), np.asarray(values[0])) for v in values)


def collectives(out: Path):
    """Sum, broadcast, the host-staged transport, NCCL's id and its errors, root-only helpers."""
    world = gn.distributed.init("numpy")
    assert gn.distributed.init("numpy") is world
    comm, rank, size = world.comm, world.rank, world.size
    report = {"size": size, "local_size": world.local_size, "transport": world.transport.name}
    for dtype in ("float32", "float64"):
        buffer = (np.arange(5) + 10.0 ** rank).astype(dtype)
        world.allreduce_sum(buffer)
        expected = sum((np.arange(5) + 10.0 ** r).astype(dtype) for r in range(size))
        assert buffer.dtype == dtype and np.array_equal(buffer, expected), (dtype, buffer, expected)
    values = np.full(4, float(rank))
    world.broadcast(values)
    assert np.array_equal(values, np.zeros(4))
    assert world.sum_scalar(rank + 0.5) == sum(r + 0.5 for r in range(size))

    staged = distributed.HostStagedTransport(comm, DeviceStandIn())
    buffer = np.full(3, rank + 1.0)
    staged.allreduce_sum(buffer)
    assert np.array_equal(buffer, np.full(3, size * (size + 1) / 2))
    buffer = np.full(3, rank + 1.0)
    staged.broadcast(buffer, root=size - 1)
    assert np.array_equal(buffer, np.full(3, float(size)))

    reason = distributed.nccl_unavailable_reason()
    report["nccl_reason"] = reason
    if reason is None:  # NCCL loads: the id is made on rank 0 and every rank receives the same 128 bytes
        unique_id = distributed.nccl_unique_id(comm)
        assert isinstance(unique_id, bytes) and len(unique_id) == 128
        assert same_everywhere(comm, np.frombuffer(unique_id, np.uint8))
    try:
        distributed.nccl_communicator(comm)
    except distributed.DistributedError as error:
        report["communicator_error"] = str(error)
    else:
        raise AssertionError("a NCCL communicator was made on a machine without a GPU")
    assert same_everywhere(comm, int("communicator_error" in report))

    world.save(gn.Sequential(gn.Dense(2, 1, seed=0)), out / "root-only.npz")
    assert (out / "root-only.npz").is_file()  # every rank returns after rank 0's write
    world.print(f"printed by rank {rank}")
    if world.is_root:
        (out / "collectives.json").write_text(json.dumps(report))


def fail_on_one_rank(out: Path):
    """Rank 1 raises while the others wait in a collective: the hook must end the whole job."""
    world = gn.distributed.init("numpy")
    if world.rank == 1:
        time.sleep(0.2)
        raise RuntimeError("rank 1 fails on purpose")
    world.allreduce_sum(np.zeros(1))  # never completes: rank 1 is gone
    (out / f"rank{world.rank}-passed-the-collective").write_text("")


def init_only(out: Path):
    gn.distributed.init("numpy")


SCENARIOS = {"collectives": collectives, "fail-on-one-rank": fail_on_one_rank, "init": init_only}

if __name__ == "__main__":
    SCENARIOS[sys.argv[1]](Path(sys.argv[2]))
