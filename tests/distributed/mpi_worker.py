"""What each rank runs in tests/distributed/test_distributed_mpi.py: ``mpiexec -n N python mpi_worker.py SCENARIO OUT``.

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
from gpunn.distributed import transports
from gpunn.backends.numpy_backend import NumpyBackend
from support.replaying_backend import ReplayingBackend  # CUDA graphs on the CPU: a replay runs the recorded step again


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
    assert world.sum_floats([rank + 0.5, -rank]) == [sum(r + 0.5 for r in range(size)), -sum(range(size))]

    staged = transports.HostStagedTransport(comm, DeviceStandIn())
    buffer = np.full(3, rank + 1.0)
    staged.allreduce_sum(buffer)
    assert np.array_equal(buffer, np.full(3, size * (size + 1) / 2))
    buffer = np.full(3, rank + 1.0)
    staged.broadcast(buffer, root=size - 1)
    assert np.array_equal(buffer, np.full(3, float(size)))

    reason = transports.nccl_unavailable_reason()
    report["nccl_reason"] = reason
    if reason is None:  # NCCL loads: the id is made on rank 0 and every rank receives the same 128 bytes
        unique_id = transports.nccl_unique_id(comm)
        assert isinstance(unique_id, bytes) and len(unique_id) == 128
        assert same_everywhere(comm, np.frombuffer(unique_id, np.uint8))
    try:
        transports.nccl_communicator(comm)
    except transports.DistributedError as error:
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


def exit_on_one_rank(out: Path, code: int):
    """Rank 1 calls sys.exit(code) while the others wait in a collective: SystemExit bypasses the
    excepthook, so the exit hook must end the whole job."""
    world = gn.distributed.init("numpy")
    if world.rank == 1:
        time.sleep(0.2)
        sys.exit(code if code >= 0 else None)
    world.allreduce_sum(np.zeros(1))  # never completes: rank 1 is gone
    (out / f"rank{world.rank}-passed-the-collective").write_text("")


def init_only(out: Path):
    gn.distributed.init("numpy")


# --- training ---------------------------------------------------------------------------------
LR, MOMENTUM, EPOCHS = 0.2, 0.9, 3


def make_model(backend="numpy"):
    with gn.use_backend(backend):
        return gn.Sequential(gn.Dense(5, 8, dtype="float64", seed=1), gn.Tanh(),
                             gn.Dense(8, 3, dtype="float64", seed=2))


def data(seed, rows=23):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(rows, 5)), rng.integers(0, 3, size=rows)


def flat_parameters(model):
    return np.concatenate([np.asarray(p.value).ravel() for p in model.parameters()])


def shard_loop_reference(X, labels, ranks, batch_size, seed, epochs=EPOCHS):
    """One process doing what `ranks` ranks do together, written without fit or gpunn.distributed:
    each global batch split with np.array_split, each shard's mean gradient scaled by its share,
    the contributions summed in rank order, then one SGD step. Returns (losses, params per epoch)."""
    model = make_model()
    parameters = model.parameters()
    optimizer = gn.SGD(parameters, lr=LR, momentum=MOMENTUM)
    loss = gn.SoftmaxCrossEntropyLoss()
    losses, snapshots = [], []
    for epoch in range(epochs):  # fit's shuffle: epoch e's order depends on (seed, e) alone
        order, totals = np.random.default_rng((seed, epoch)).permutation(len(X)), [0.0] * ranks
        for start in range(0, len(X), batch_size):
            batch = order[start:start + batch_size]
            summed = None
            for rank, part in enumerate(np.array_split(batch, ranks)):
                if len(part):
                    totals[rank] += loss(model.forward(X[part]), labels[part]) * len(part)
                    model.zero_grad()
                    model.backward(loss.backward())
                    contribution = [np.asarray(p.grad) * (len(part) / len(batch)) for p in parameters]
                else:
                    contribution = [np.zeros(p.shape) for p in parameters]
                summed = contribution if summed is None else [a + b for a, b in zip(summed, contribution)]
            for parameter, gradient in zip(parameters, summed):
                parameter.grad = gradient  # fresh, as torch's p.grad = g
            optimizer.step()
        losses.append(sum(totals) / len(X))
        snapshots.append(flat_parameters(model))
    return np.array(losses), np.array(snapshots)


def distributed_fit(world, X, labels, batch_size, seed, backend="numpy", graph=False, epochs=EPOCHS,
                    model=None, optimizer=None, **options):
    """fit(distributed=True); after every epoch every rank must hold the same bits."""
    model = make_model(backend) if model is None else model
    optimizer = gn.SGD(lr=LR, momentum=MOMENTUM) if optimizer is None else optimizer
    snapshots = []

    def after_epoch(epoch, logs):
        parameters = flat_parameters(model)
        assert same_everywhere(world.comm, parameters), f"parameters differ across ranks after epoch {epoch}"
        snapshots.append(parameters)

    history = model.fit(X, labels, loss=gn.SoftmaxCrossEntropyLoss(), optimizer=optimizer, epochs=epochs,
                        batch_size=batch_size, seed=seed, verbose=0, callback=after_epoch, graph=graph,
                        distributed=True, **options)
    for values in history.values():
        assert same_everywhere(world.comm, np.array(values)), history
    return np.array(history["loss"]), np.array(snapshots), history


def training(out: Path, seed: int):
    """Uneven shards with a partial last batch, empty shards, full batch; graphs in the stand-in."""
    world = gn.distributed.init("numpy")
    X, labels = data(seed)
    results = {}
    # 23 rows: batch 5 gives uneven shards and a last batch of 3; batch size-1 leaves the last rank empty.
    for name, batch_size in (("uneven", 5), ("empty", world.size - 1)):
        results[f"{name}_loss"], results[f"{name}_params"], _ = distributed_fit(world, X, labels, batch_size, seed)
        if world.is_root:
            results[f"{name}_ref_loss"], results[f"{name}_ref_params"] = shard_loop_reference(
                X, labels, world.size, batch_size, seed)

    # Full batch, with global metrics and validation (every rank evaluates the whole validation set).
    results["full_loss"], results["full_params"], history = distributed_fit(
        world, X, labels, len(X), seed, metrics=("accuracy",), validation_data=(X[:7], labels[:7]))
    results.update({f"full_{key}": np.array(value) for key, value in history.items()})

    # Resume: 2 epochs, rank 0 writes model and Adam's state, every rank loads them, 2 more epochs.
    _, straight, _ = distributed_fit(world, X, labels, 5, seed, epochs=4, optimizer=gn.Adam(lr=0.01))
    model, optimizer = make_model(), gn.Adam(lr=0.01)
    distributed_fit(world, X, labels, 5, seed, epochs=2, model=model, optimizer=optimizer)
    world.save(model, out / "resume.npz", optimizer=optimizer)
    model = gn.load(out / "resume.npz", backend="numpy")
    _, resumed, _ = distributed_fit(world, X, labels, 5, seed, epochs=4, model=model, initial_epoch=2,
                                    optimizer=gn.load_optimizer(out / "resume.npz", model))
    assert np.array_equal(resumed[-1], straight[-1]), "a resumed run differs from an uninterrupted one"

    replaying = ReplayingBackend()
    graph_loss, graph_params, _ = distributed_fit(world, X, labels, 5, seed, backend=replaying, graph=True)
    assert np.array_equal(graph_loss, results["uneven_loss"]) and np.array_equal(graph_params, results["uneven_params"])
    # 4 full global batches an epoch: the first eager, the second recorded, then replays; the last batch eager.
    counts = (replaying.recordings, replaying.replays)
    assert same_everywhere(world.comm, np.array(counts)), counts
    results["graph_counts"] = np.array(counts)
    if world.is_root:
        np.savez(out / "training.npz", **results)


def command_line(out: Path):
    """`gpunn train --distributed` on every rank; which ranks write checkpoints is recorded."""
    from gpunn import cli

    saves = []
    save = gn.Sequential.save
    gn.Sequential.save = lambda model, path, **options: (saves.append(str(path)), save(model, path, **options))
    status = cli.main(["train", "--distributed", "--data", str(out / "data.npz"), "--hidden", "8", "--epochs", "2",
                       "--batch-size", "15", "--backend", "numpy", "--out", str(out / "run")])
    world = gn.distributed.current_world()
    (out / f"saves-rank{world.rank}.json").write_text(json.dumps(saves))
    if status == 0:  # --resume under MPI: every rank reads rank 0's last.npz and continues
        world.comm.Barrier()
        status = cli.main(["train", "--distributed", "--resume", str(out / "run"), "--epochs", "3", "--backend", "numpy"])
    sys.exit(status)


def streamed_command_line(out: Path):
    """`gpunn train --distributed --stream`: each rank streams its shard of every global batch."""
    from gpunn import cli

    sys.exit(cli.main(["train", "--distributed", "--stream", "--data", str(out / "data.npy"), "--hidden", "8",
                       "--epochs", "2", "--batch-size", "16", "--backend", "numpy", "--quiet", "--out", str(out / "run")]))


#: The last global batch has one row: on 3 ranks two shards are empty.
DROPOUT_ROWS, DROPOUT_BATCH = 31, 10


def dropout_model():
    return gn.Sequential(gn.Dense(5, 8, dtype="float64", seed=1), gn.Tanh(), gn.Dropout(0.4, seed=9),
                         gn.Dense(8, 3, dtype="float64", seed=2))


def dropout_training(out: Path, seed: int):
    """A model with dropout: each rank draws its rows' masks of the global batch (and a rank whose
    shard is empty still advances the mask's step), so the run equals one process."""
    world = gn.distributed.init("numpy")
    X, labels = data(seed, rows=DROPOUT_ROWS)
    model = dropout_model()
    _, snapshots, _ = distributed_fit(world, X, labels, DROPOUT_BATCH, seed, model=model)
    if world.is_root:
        np.save(out / "dropout.npy", snapshots)


def mismatched_model(rank, case):
    """Rank 1's model or optimizer differs from rank 0's in one way (``case``)."""
    odd = rank == 1
    width = 9 if odd and case == "width" else 8
    activation = gn.ReLU() if odd and case == "activation" else gn.Tanh()
    dtype = "float32" if odd and case == "dtype" else "float64"
    layers = [gn.Dense(5, width, dtype=dtype, seed=1), activation]
    if case == "dropout":
        layers.append(gn.Dropout(0.5 if odd else 0.4, seed=9))
    model = gn.Sequential(*layers, gn.Dense(width, 3, dtype=dtype, seed=2))
    settings = {"lr": LR, "momentum": MOMENTUM}
    if odd and case == "momentum":
        settings["momentum"] = 0.5
    if odd and case == "weight decay":
        settings["weight_decay"] = 0.01
    if odd and case == "clipping":
        settings["max_grad_norm"] = 1.0
    optimizer = gn.Adam(lr=LR) if odd and case == "optimizer type" else gn.SGD(**settings)
    return model, optimizer


MISMATCHES = {"width": "layers", "activation": "layers", "dropout": "layers", "dtype": "dtype",
              "optimizer type": "optimizer type", "momentum": "optimizer settings",
              "weight decay": "optimizer settings", "clipping": "optimizer settings"}


def mismatches(out: Path, seed: int):
    """Each case: every rank gets the same gpunn ValueError before the first step (no MPI error, no
    silent training apart); then matching ranks train as usual."""
    world = gn.distributed.init("numpy")
    X, labels = data(seed)
    messages = {}
    for case in MISMATCHES:
        model, optimizer = mismatched_model(world.rank, case)
        try:
            model.fit(X, labels, loss=gn.SoftmaxCrossEntropyLoss(), optimizer=optimizer, epochs=1, batch_size=8,
                      seed=seed, verbose=0, distributed=True)
        except ValueError as error:
            messages[case] = str(error)
        else:
            messages[case] = None
    model, optimizer = mismatched_model(world.rank, "none")
    model.fit(X, labels, loss=gn.SoftmaxCrossEntropyLoss(), optimizer=optimizer, epochs=1, batch_size=8, seed=seed,
              verbose=0, distributed=True)
    everyone = world.allgather(messages)
    if world.is_root:
        (out / "mismatches.json").write_text(json.dumps(everyone))


def loop_features(out: Path, seed: int):
    """Ranks that freeze different layers are refused; frozen layers and sample weights train data-parallel."""
    world = gn.distributed.init("numpy")
    X, labels = data(seed)
    model = make_model()
    if world.rank == 1:
        model.freeze(0)
    try:
        distributed_fit(world, X, labels, 8, seed, model=model)
    except ValueError as error:
        (out / f"rank{world.rank}-refused.txt").write_text(str(error))
    model = make_model().freeze(0)
    weights = np.random.default_rng(seed + 1).uniform(0, 2, size=len(X))
    _, snapshots, _ = distributed_fit(world, X, labels, len(X), seed, model=model, sample_weight=weights)
    if world.is_root:
        np.save(out / "loop.npy", snapshots)


def streamed_training(out: Path, seed: int):
    """fit(distributed=True) on a memory map: each rank gathers only its rows, and the run equals the
    in-memory data-parallel run (one chunk: the same order) bit for bit; resumed, it equals a straight run."""
    from gpunn.data import Dataset, stream

    world = gn.distributed.init("numpy")
    X, labels = data(seed, rows=DROPOUT_ROWS)
    np.save(out / f"x{world.rank}.npy", X)
    mapped = np.load(out / f"x{world.rank}.npy", mmap_mode="r")
    gathered, gather = [], Dataset.gather
    Dataset.gather = lambda self, rows, *out: gathered.extend(rows.tolist()) or gather(self, rows, *out)
    results = {}
    for name, source in (("memory", X), ("streamed", mapped)):
        results[name] = distributed_fit(world, source, labels, DROPOUT_BATCH, seed, model=dropout_model())[1]
    model, optimizer = dropout_model(), gn.SGD(lr=LR, momentum=MOMENTUM)
    distributed_fit(world, mapped, labels, DROPOUT_BATCH, seed, model=model, optimizer=optimizer, epochs=2)
    world.save(model, out / "half.npz", optimizer=optimizer)
    world.barrier()
    resumed = gn.load(out / "half.npz")
    results["resumed"] = distributed_fit(world, mapped, labels, DROPOUT_BATCH, seed, model=resumed,
                                         optimizer=gn.load_optimizer(out / "half.npz", resumed), initial_epoch=2)[1]
    stream.CHUNK_BYTES = 2 * DROPOUT_BATCH * 5 * 8  # chunks of two batches: the shuffle crosses chunks
    results["chunks"] = distributed_fit(world, mapped, labels, DROPOUT_BATCH, seed, model=dropout_model())[1]
    everyone = world.allgather(gathered)
    if world.is_root:
        np.savez(out / "streamed.npz", **results, **{f"gathered{rank}": rows for rank, rows in enumerate(everyone)})


SCENARIOS = {"streamed": streamed_training, "mismatches": mismatches, "loop": loop_features, "cli": command_line,
             "cli-stream": streamed_command_line, "collectives": collectives,
             "fail-on-one-rank": fail_on_one_rank, "init": init_only, "exit-on-one-rank": exit_on_one_rank,
             "training": training, "dropout": dropout_training}

if __name__ == "__main__":
    SCENARIOS[sys.argv[1]](Path(sys.argv[2]), *map(int, sys.argv[3:]))
