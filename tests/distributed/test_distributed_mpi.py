"""Real MPI jobs (mpiexec -n 2 and -n 3) running tests/distributed/mpi_worker.py, each bounded three ways:
MPIEXEC_TIMEOUT for the job, a subprocess timeout for mpiexec, pytest-timeout for the test.
A few runs check many things each, so the whole file stays within seconds on 2 cores."""

import collections
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # mpi_worker: the model, data and reference
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
    environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), str(ROOT / "tests"), environ.get("PYTHONPATH")]))
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


def single_process_full_batch(X, labels, seed):
    from mpi_worker import EPOCHS, LR, MOMENTUM, flat_parameters, make_model

    import gpunn as gn

    model, snapshots = make_model(), []
    history = model.fit(X, labels, loss=gn.SoftmaxCrossEntropyLoss(), optimizer=gn.SGD(lr=LR, momentum=MOMENTUM),
                        epochs=EPOCHS, batch_size=len(X), seed=seed, verbose=0, metrics=("accuracy",),
                        validation_data=(X[:7], labels[:7]),
                        callback=lambda epoch, logs: snapshots.append(flat_parameters(model)))
    return history, np.array(snapshots)


@pytest.mark.parametrize("ranks", [2, 3])
def test_data_parallel_training_equals_one_process(ranks, tmp_path, rng):
    """Uneven shards with a partial last batch, empty shards and the full batch, on 2 and 3 ranks.
    The worker asserts bit-identical parameters and histories on every rank after every epoch, that
    a run resumed from rank 0's checkpoint (model and Adam state) equals an uninterrupted one, and
    that CUDA-graph replays (the stand-in) decided from the global batch train exactly like eager steps."""
    from mpi_worker import data

    seed = int(rng.integers(2**31))
    result, _ = mpirun(ranks, WORKER, "training", tmp_path, seed)
    assert result.returncode == 0, result.stderr
    got = np.load(tmp_path / "training.npz")
    for case in ("uneven", "empty"):  # against one process looping over the same shards in rank order
        if ranks == 2:  # a + b is the same in any order: bit for bit
            np.testing.assert_array_equal(got[f"{case}_params"], got[f"{case}_ref_params"])
            np.testing.assert_array_equal(got[f"{case}_loss"], got[f"{case}_ref_loss"])
        else:  # MPI may associate three terms differently
            np.testing.assert_allclose(got[f"{case}_params"], got[f"{case}_ref_params"], rtol=1e-12, atol=1e-14)
            np.testing.assert_allclose(got[f"{case}_loss"], got[f"{case}_ref_loss"], rtol=1e-12)
    history, params = single_process_full_batch(*data(seed), seed)
    np.testing.assert_allclose(got["full_params"], params, rtol=1e-12, atol=1e-14)
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):  # global losses and metrics
        np.testing.assert_allclose(got[f"full_{key}"], history[key], rtol=1e-12, err_msg=key)
    # 3 epochs x 4 full global batches of 5: the first eager, the second recorded, 10 replays.
    assert tuple(got["graph_counts"]) == (1, 10)


def test_dropout_shards_draw_the_global_batch_masks(tmp_path, rng):
    from mpi_worker import DROPOUT_BATCH, DROPOUT_ROWS, EPOCHS, LR, MOMENTUM, data, dropout_model, flat_parameters

    import gpunn as gn

    seed = int(rng.integers(2**31))
    result, _ = mpirun(3, WORKER, "dropout", tmp_path, seed)
    assert result.returncode == 0, result.stderr
    X, labels = data(seed, rows=DROPOUT_ROWS)
    model, snapshots = dropout_model(), []
    model.fit(X, labels, loss=gn.SoftmaxCrossEntropyLoss(), optimizer=gn.SGD(lr=LR, momentum=MOMENTUM), epochs=EPOCHS,
              batch_size=DROPOUT_BATCH, seed=seed, verbose=0, callback=lambda epoch, logs: snapshots.append(flat_parameters(model)))
    np.testing.assert_allclose(np.load(tmp_path / "dropout.npy"), np.array(snapshots), rtol=1e-12, atol=1e-14)


def test_command_line_prints_and_checkpoints_on_rank_zero_only(tmp_path, rng):
    np.savez(tmp_path / "data.npz", X=rng.normal(size=(50, 4)), y=rng.integers(0, 3, size=50))
    result, _ = mpirun(2, WORKER, "cli", tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("data-parallel over 2 ranks (global batch 15)") == 2  # the run and its resume
    assert result.stdout.count("test accuracy:") == 2 and result.stdout.count("epoch   2/2") == 1
    assert result.stdout.count("resuming after epoch 2") == 1 and result.stdout.count("epoch   3/3") == 1
    saves = [json.loads((tmp_path / f"saves-rank{rank}.json").read_text()) for rank in (0, 1)]
    last, best = str(tmp_path / "run" / "last.npz"), str(tmp_path / "run" / "best.npz")
    assert saves[0].count(last) == 2 and set(saves[0]) <= {last, best} and saves[1] == []
    assert (tmp_path / "run" / "last.npz").is_file()


def test_command_line_streams_data_parallel_as_one_process_trains(tmp_path, rng):
    """`gpunn train --distributed --stream` on 2 ranks trains the model one streaming process trains
    (that each rank reads only its shard is checked by the library's streamed data-parallel test)."""
    import gpunn as gn
    from gpunn import cli

    np.save(tmp_path / "data.npy", np.column_stack([rng.normal(size=(200, 4)), rng.integers(0, 3, size=200)]))
    result, _ = mpirun(2, WORKER, "cli-stream", tmp_path)
    assert result.returncode == 0, result.stderr
    assert cli.main(["train", "--stream", "--data", str(tmp_path / "data.npy"), "--hidden", "8", "--epochs", "2",
                     "--batch-size", "16", "--backend", "numpy", "--quiet", "--out", str(tmp_path / "single")]) == 0
    parallel, single = gn.load(tmp_path / "run" / "last.npz"), gn.load(tmp_path / "single" / "last.npz")
    for a, b in zip(parallel.parameters(), single.parameters()):  # float32, summed in another order
        np.testing.assert_allclose(a.value, b.value, rtol=1e-5, atol=1e-5 * np.abs(b.value).max())


@pytest.mark.parametrize("code", [-1, 0, 3], ids=["sys.exit()", "sys.exit(0)", "sys.exit(3)"])
def test_sys_exit_on_one_rank_ends_the_job_within_seconds(tmp_path, code):
    """SystemExit bypasses the excepthook: the other ranks waited in their collective (and the leaving
    rank in MPI_Finalize) until the launcher's timeout."""
    result, seconds = mpirun(2, WORKER, "exit-on-one-rank", tmp_path, code)
    assert result.returncode != 0
    assert seconds < 15, f"the job took {seconds:.1f} s to end"
    assert "rank 1 of 2 exited while rank 0 still needs it in a collective" in result.stderr
    assert not list(tmp_path.glob("rank*-passed-the-collective"))


def test_ranks_whose_models_or_optimizers_differ_are_refused_before_the_first_step(tmp_path, rng):
    """Data, batch and fit settings were compared across ranks, the model and optimizer not: ranks
    trained apart without a word, or died inside MPICH ("message sizes do not match")."""
    from mpi_worker import MISMATCHES

    result, _ = mpirun(2, WORKER, "mismatches", tmp_path, int(rng.integers(2**31)))
    assert result.returncode == 0, result.stderr
    everyone = json.loads((tmp_path / "mismatches.json").read_text())
    for case, part in MISMATCHES.items():
        messages = [rank_messages[case] for rank_messages in everyone]
        assert messages[0] is not None and messages[0] == messages[1], (case, messages)
        assert f"every rank must train the same model with the same optimizer, but they differ in their {part} (" \
            in messages[0], (case, messages[0])


def test_frozen_layers_and_sample_weights_train_data_parallel(tmp_path, rng):
    """Every rank must freeze the same parameters (refused otherwise, on every rank); a frozen layer and
    sample weights, sharded with their rows, train as one process does on the full batch."""
    from mpi_worker import EPOCHS, LR, MOMENTUM, data, flat_parameters, make_model

    import gpunn as gn

    seed = int(rng.integers(2**31))
    result, _ = mpirun(2, WORKER, "loop", tmp_path, seed)
    assert result.returncode == 0, result.stderr
    for rank in (0, 1):
        assert "they differ in frozen" in (tmp_path / f"rank{rank}-refused.txt").read_text()
    X, labels = data(seed)
    weights = np.random.default_rng(seed + 1).uniform(0, 2, size=len(X))
    model, snapshots = make_model().freeze(0), []
    model.fit(X, labels, loss=gn.SoftmaxCrossEntropyLoss(), optimizer=gn.SGD(lr=LR, momentum=MOMENTUM),
              epochs=EPOCHS, batch_size=len(X), seed=seed, verbose=0, sample_weight=weights,
              callback=lambda epoch, logs: snapshots.append(flat_parameters(model)))
    got = np.load(tmp_path / "loop.npy")
    np.testing.assert_allclose(got, np.array(snapshots), rtol=1e-12, atol=1e-14)
    assert np.array_equal(got[-1][:model.layers[0].W.size], np.asarray(make_model().layers[0].W).ravel())  # frozen


def test_streamed_data_parallel_training_reads_each_ranks_shard_and_equals_memory(tmp_path, rng):
    """2 ranks on a memory-mapped .npy (dropout, uneven shards, a partial last batch): bit for bit the
    in-memory data-parallel run, resumed exactly, and over several chunks the one-process streamed run;
    each rank gathered only its own rows (the two sets are disjoint and cover every row each epoch)."""
    from mpi_worker import DROPOUT_BATCH, DROPOUT_ROWS, EPOCHS, LR, MOMENTUM, data, dropout_model, flat_parameters

    import gpunn as gn
    from gpunn.data import stream

    seed = int(rng.integers(2**31))
    result, _ = mpirun(2, WORKER, "streamed", tmp_path, seed)
    assert result.returncode == 0, result.stderr
    got = np.load(tmp_path / "streamed.npz")
    np.testing.assert_array_equal(got["streamed"], got["memory"])
    np.testing.assert_array_equal(got["resumed"][-1], got["streamed"][-1])
    epochs = EPOCHS + 2 + 1 + EPOCHS  # every streamed epoch of the worker
    mine, theirs = got["gathered0"].tolist(), got["gathered1"].tolist()
    assert (len(mine), len(theirs)) == (16 * epochs, 15 * epochs)  # 31 rows in batches of 10: shards 5+5, 5+5, 5+5, 1+0
    assert collections.Counter(mine + theirs) == {row: epochs for row in range(DROPOUT_ROWS)}
    X, labels = data(seed, rows=DROPOUT_ROWS)
    np.save(tmp_path / "one.npy", X)
    model, snapshots = dropout_model(), []
    chunk_bytes, stream.CHUNK_BYTES = stream.CHUNK_BYTES, 2 * DROPOUT_BATCH * 5 * 8
    try:
        model.fit(np.load(tmp_path / "one.npy", mmap_mode="r"), labels, loss=gn.SoftmaxCrossEntropyLoss(),
                  optimizer=gn.SGD(lr=LR, momentum=MOMENTUM), epochs=EPOCHS, batch_size=DROPOUT_BATCH, seed=seed,
                  verbose=0, callback=lambda epoch, logs: snapshots.append(flat_parameters(model)))
    finally:
        stream.CHUNK_BYTES = chunk_bytes
    np.testing.assert_allclose(got["chunks"], np.array(snapshots), rtol=1e-12, atol=1e-14)
