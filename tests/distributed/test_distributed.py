"""gpunn.distributed without starting MPI jobs: imports, launcher checks, shards, NCCL probes.

The MPI jobs themselves (mpiexec -n 2 and -n 3) run in tests/distributed/test_distributed_mpi.py.
"""

import subprocess
import sys

import pytest

from gpunn.distributed import world as distributed, transports


def test_importing_gpunn_never_imports_mpi4py_or_cupy():
    code = "import sys, gpunn; gpunn.distributed; print(sorted(m for m in ('mpi4py', 'cupy') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("name", distributed.LAUNCHER_SIZE_VARIABLES)
def test_a_launcher_that_started_several_processes_and_a_world_of_one_is_refused(name):
    environ = {name: "4"}
    assert distributed.launcher_size(environ) == (name, 4)
    with pytest.raises(distributed.DistributedError, match=f"{name}=4.*world of 1.*mpiexec"):
        distributed.check_launcher(1, environ)
    distributed.check_launcher(4, environ)  # launcher and library agree


def test_one_process_and_unrelated_variables_pass():
    for environ in ({}, {"PMI_SIZE": "1"}, {"PMI_SIZE": "garbage"}, {"SLURM_NTASKS": "8"}):
        distributed.check_launcher(1, environ)
        assert distributed.launcher_size(environ) is None


@pytest.mark.parametrize("rows", [0, 1, 2, 3, 7, 8, 10, 33])
@pytest.mark.parametrize("size", [1, 2, 3, 4, 5])
def test_shards_tile_the_batch_in_rank_order(rows, size):
    bounds = [distributed.shard_bounds(rows, rank, size) for rank in range(size)]
    assert bounds[0][0] == 0 and bounds[-1][1] == rows
    assert all(stop == start for (_, stop), (start, _) in zip(bounds, bounds[1:]))  # contiguous
    lengths = [stop - start for start, stop in bounds]
    assert max(lengths) - min(lengths) <= 1 and lengths == sorted(lengths, reverse=True)
    assert lengths.count(0) == max(0, size - rows)  # empty shards exactly when rows < size


def test_nccl_version_codes():
    assert transports._version_text(23203) == "2.32.3"
    assert transports._version_text(20900) == "2.9.0"
    assert transports._version_text(2804) == "2.8.4"


def test_nccl_probe_names_the_reason_or_the_version():
    reason = transports.nccl_unavailable_reason()
    if reason is None:
        assert distributed.nccl_report().startswith(f"nccl: {transports.nccl_version()}")
    else:
        assert "nvidia-nccl" in reason or "CuPy is not installed" in reason
        assert distributed.nccl_report() == f"nccl: unavailable: {reason}"


def test_unknown_transport_is_a_clear_error():
    from gpunn.backends.numpy_backend import NumpyBackend

    with pytest.raises(ValueError, match="unknown transport 'tcp'"):
        distributed._transport_for(NumpyBackend(), "tcp", comm=None)
    with pytest.raises(distributed.DistributedError, match="use 'nccl'"):
        backend = NumpyBackend()
        backend.host_resident = False
        distributed._transport_for(backend, "mpi", comm=None)
