"""Real MPI jobs (mpiexec -n 2 and -n 3) running tests/mpi_worker.py, each bounded three ways:
MPIEXEC_TIMEOUT for the job, a subprocess timeout for mpiexec, pytest-timeout for the test.
A few runs check many things each, so the whole file stays within seconds on 2 cores."""

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "mpi_worker.py"
JOB_SECONDS = 60


def _mpiexec():
    beside_python = Path(sys.executable).parent / "mpiexec"
    return str(beside_python) if beside_python.is_file() else shutil.which("mpiexec")


def _skip_reason():
    if importlib.util.find_spec("mpi4py") is None:
        return "mpi4py is not installed (pip install '.[test]' brings mpi4py and MPICH)"
    if _mpiexec() is None:
        return "no mpiexec beside this Python or on PATH (pip install mpich)"
    return None


pytestmark = [pytest.mark.mpi, pytest.mark.timeout(3 * JOB_SECONDS),
              pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason()))]


def job_environment(**extra):
    environ = dict(os.environ, MPIEXEC_TIMEOUT=str(JOB_SECONDS), OMP_NUM_THREADS="1",
                   OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1", GPUNN_BACKEND="numpy")
    environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), environ.get("PYTHONPATH")]))
    environ.update(extra)
    return environ


def run(command, environ=None):
    """Run a command in its own process group; on a timeout kill the whole group and fail."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=environ or job_environment(), start_new_session=True)
    started = time.monotonic()
    try:
        stdout, stderr = process.communicate(timeout=JOB_SECONDS + 30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail(f"{' '.join(command)} did not end within {JOB_SECONDS + 30} s")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr), time.monotonic() - started


def mpirun(ranks, *arguments, environ=None):
    return run([_mpiexec(), "-n", str(ranks), sys.executable, *map(str, arguments)], environ)


def test_collectives_nccl_pieces_and_root_only_helpers(tmp_path):
    result, _ = mpirun(2, WORKER, "collectives", tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "collectives.json").read_text())
    assert (report["size"], report["local_size"], report["transport"]) == (2, 2, "mpi")
    assert result.stdout.count("printed by rank") == 1 and "printed by rank 0" in result.stdout
    if report["nccl_reason"] is None:  # NCCL loads (the CI's cuda extra): the error is the communicator's
        assert "could not join the NCCL communicator" in report["communicator_error"]
    else:  # NCCL missing: the same clear error on every rank, naming the fix
        assert "NCCL is not usable" in report["communicator_error"]
        assert "nvidia-nccl" in report["communicator_error"]


def test_an_exception_on_one_rank_ends_the_job_within_seconds(tmp_path):
    result, seconds = mpirun(2, WORKER, "fail-on-one-rank", tmp_path)
    assert result.returncode != 0
    assert seconds < 10, f"the job took {seconds:.1f} s to end"
    assert "rank 1 fails on purpose" in result.stderr and "aborting the MPI job" in result.stderr
    assert not list(tmp_path.glob("rank*-passed-the-collective"))


def test_a_launcher_library_mismatch_is_refused(tmp_path):
    # What a foreign launcher looks like from inside: it says 3 processes, MPI's world has 1.
    result, _ = run([sys.executable, str(WORKER), "init", str(tmp_path)],
                    job_environment(OMPI_COMM_WORLD_SIZE="3"))
    assert result.returncode != 0
    assert "OMPI_COMM_WORLD_SIZE=3" in result.stderr and "world of 1" in result.stderr
