"""``gpunn train``: the run (validation, checkpoints, early stopping) and exact resume.

Each epoch writes ``last.npz`` (model, optimizer state, scaler, classes and the run's settings),
and the epoch with the best validation loss writes ``best.npz``; ``--resume RUN_DIR`` continues
from ``last.npz`` exactly as if the run had not stopped. The test part is never used to choose
anything: validation rows are carved from the training part.
"""

from __future__ import annotations

import copy
import math
import os
import sys
import time

import numpy as np

from gpunn.cli.options import (ACTIVATION_CHOICES, EXIT_INTERRUPTED, LOSS_CHOICES, OPTIMIZER_CHOICES, UserError, say,
                               use_backend_option)
from gpunn.cli.resume import refuse_changed_data, resume_settings
from gpunn.cli.run import RunRecord, setting_as_used
from gpunn.extras import install_command

def build_model(features: int, hidden: list[int], classes: int, activation: str, dtype: str, seed: int,
                dropout: float = 0.0, layer_norm: bool = False, residual: bool = False):
    """Dense [→ LayerNorm] → activation [→ Dropout] per hidden layer; with ``residual``, a hidden
    layer as wide as the one before it becomes x + f(x)."""
    import gpunn as gn


    if residual and not any(a == b for a, b in zip(hidden, hidden[1:])):
        raise UserError(f"gpunn train: --residual needs two consecutive hidden layers of the same size "
                        f"(x + f(x)), e.g. --hidden 128,128; got --hidden {','.join(map(str, hidden))}")
    init = "he" if activation in ("relu", "leaky-relu") else "xavier"
    layers, width = [], features
    for index, size in enumerate(hidden):
        block = [gn.Dense(width, size, init=init, dtype=dtype, seed=(seed, index))]
        block += [gn.LayerNorm(size, dtype=dtype)] if layer_norm else []
        block.append(getattr(gn, ACTIVATION_CHOICES[activation])())
        block += [gn.Dropout(dropout, seed=seed * 1000 + index)] if dropout else []
        layers += [gn.Residual(*block)] if residual and size == width else block
        width = size
    layers.append(gn.Dense(width, classes, dtype=dtype, seed=(seed, len(hidden))))
    return gn.Sequential(*layers)


def make_optimizer(args, steps_per_epoch: int):
    """The optimizer and schedule the options describe, over the whole run's updates."""
    import gpunn as gn
    from gpunn.optim import schedules

    lr = setting_as_used("lr", vars(args))
    total = max(2, steps_per_epoch * args.epochs)
    if args.warmup_steps and args.schedule != "cosine":
        raise UserError("gpunn train: --warmup-steps applies to --schedule cosine (onecycle warms up by itself)")
    try:
        schedule = {"constant": lambda: lr,
                    "step": lambda: schedules.StepDecay(lr, step_size=max(1, total // 3), gamma=0.1),
                    "cosine": lambda: schedules.CosineDecay(lr, total, warmup_steps=args.warmup_steps),
                    "onecycle": lambda: schedules.OneCycle(lr, total)}[args.schedule]()
    except ValueError as error:
        raise UserError(f"gpunn train: --schedule {args.schedule}: {error}") from None
    options = {"lr": schedule, "max_grad_norm": args.max_grad_norm}
    if args.weight_decay is not None:
        options["weight_decay"] = args.weight_decay
    if args.optimizer == "sgd":
        options["momentum"] = args.momentum
    return getattr(gn, OPTIMIZER_CHOICES[args.optimizer])(**options)


def describe_optimizer(args) -> str:
    """One line for the run's header: optimizer, rate, schedule, decay, clipping."""
    lr = setting_as_used("lr", vars(args))
    parts = [f"{OPTIMIZER_CHOICES[args.optimizer]} lr={lr:g}"]
    if args.optimizer == "sgd":
        parts.append(f"momentum={args.momentum:g}")
    if args.schedule != "constant":
        parts.append(f"{args.schedule} schedule" + (f" after {args.warmup_steps} warmup steps" if args.warmup_steps else ""))
    if args.weight_decay:
        parts.append(f"weight decay {args.weight_decay:g}")
    if args.max_grad_norm:
        parts.append(f"clipped to norm {args.max_grad_norm:g}")
    return " ".join(parts[:1]) + "".join(f", {part}" for part in parts[1:])


def _save_plot(history: dict, path: str, metric: str) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    epochs = range(1, len(history["loss"]) + 1)
    for key in ("loss", "val_loss"):
        if key in history:
            left.plot(epochs, history[key], label=key.replace("_", " "))
    left.set(xlabel="epoch", ylabel="loss", title="loss")
    left.legend()
    for key in (metric, f"val_{metric}"):
        if key in history:
            right.plot(epochs, history[key], label=key.replace("_", " "))
    right.set(xlabel="epoch", ylabel=metric, title=metric)
    right.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _host_memory() -> float:
    """Bytes of physical memory (inf where the system does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return math.inf


def _regression_scores(model, X, y, target) -> tuple[float, float]:
    """(RMSE in the target's units, R²) of the model on (X, y), computed on the standardised
    scale so that targets near 1e300 do not overflow."""
    scaled = target(y[:, None])[:, 0]
    error = float(np.mean((model.predict(X)[:, 0].astype(np.float64) - scaled) ** 2))
    spread = float(np.mean((scaled - scaled.mean()) ** 2))
    return math.sqrt(error) * float(target.std[0]), (1 - error / spread if spread > 0 else float("nan"))


def _split(args):
    """(dataset, train, validation and test rows, feature scaler, target scaler or None)."""
    from gpunn.cli.data import DataError, Standardizer, load_digits, load_table, random_split, stratified_split

    regress = args.task == "regress"
    if regress and not args.data:
        raise UserError("gpunn train: --task regress needs --data with a numeric label column")
    dataset = load_table(args.data, args.label, args.task) if args.data else load_digits()
    if regress:
        train_rows, test_rows = random_split(len(dataset.y), args.test_fraction, args.seed)
    else:
        train_rows, test_rows = stratified_split(dataset.y, args.test_fraction, args.seed)
    validation_rows = np.array([], dtype=np.int64)
    if args.validation_fraction and len(train_rows) > 1:
        keep, held = (random_split(len(train_rows), args.validation_fraction, args.seed + 1) if regress else
                      stratified_split(dataset.y[train_rows], args.validation_fraction, args.seed + 1))
        train_rows, validation_rows = train_rows[keep], train_rows[held]
    if len(test_rows) == 0 or len(train_rows) == 0:
        raise DataError(f"{dataset.name}: too few rows for a train/test split")
    scaler = Standardizer.fit(dataset.X[train_rows])
    target = Standardizer.fit(dataset.y[train_rows, None]) if regress else None
    return dataset, train_rows, validation_rows, test_rows, scaler, target


def _targets(rows, dataset, loss_name, target):
    y = dataset.y[rows]
    if target is not None:
        return target(y[:, None])
    return np.eye(len(dataset.classes))[y] if loss_name == "mse" else y


def _build(args, dataset, outputs, backend):
    """The model, refused before allocating when its weights cannot fit in memory."""
    sizes = [dataset.X.shape[1], *args.hidden, outputs]
    weights = sum(a * b for a, b in zip(sizes, sizes[1:]))
    too_big = UserError(f"gpunn train: out of memory for a {'-'.join(map(str, sizes))} MLP ({weights:,} weights, "
                        f"{weights * np.dtype(args.dtype).itemsize / 2**30:,.1f} GiB each for weights, gradients "
                        "and optimizer state); use smaller --hidden sizes")
    if backend.host_resident and 4 * weights * np.dtype(args.dtype).itemsize > _host_memory():
        raise too_big  # before allocating: a failed build could take minutes and all the RAM first
    try:
        return build_model(dataset.X.shape[1], args.hidden, outputs, args.activation, args.dtype, args.seed,
                           args.dropout, args.layer_norm, args.residual)
    except MemoryError:
        raise too_big from None


def command_train(args) -> int:
    import gpunn as gn

    from gpunn.cli.checkpoint import Checkpoint
    from gpunn.train.step import TrainingDiverged

    resumed = resume_settings(args) if args.resume else None
    if args.epochs is None:
        args.epochs = 30
    if args.early_stopping and not args.validation_fraction:
        raise UserError("gpunn train: --early-stopping watches the validation loss: keep --validation-fraction above 0")
    regress = args.task == "regress"
    loss_name = setting_as_used("loss", vars(args))
    if regress and loss_name != "mse":
        raise UserError("gpunn train: --task regress trains with --loss mse")

    dataset, train_rows, validation_rows, test_rows, scaler, target = _split(args)
    x_train, x_test = scaler(dataset.X[train_rows]), scaler(dataset.X[test_rows])
    y_test = dataset.y[test_rows]
    outputs = 1 if regress else len(dataset.classes)
    targets = _targets(train_rows, dataset, loss_name, target)
    validation = None
    if len(validation_rows):
        validation = (scaler(dataset.X[validation_rows]), _targets(validation_rows, dataset, loss_name, target))

    backend = use_backend_option(args.backend)
    if args.graph and not backend.supports_graphs:
        raise UserError(f"gpunn train: --graph needs the cupy backend (CUDA graphs); the {backend.name} "
                        "backend runs every step eagerly")
    world = gn.distributed.init(backend) if args.distributed else None
    root = world is None or world.is_root  # only rank 0 prints and writes checkpoints
    steps_per_epoch = -(-len(train_rows) // args.batch_size)
    if resumed is None:
        model = _build(args, dataset, outputs, backend)
        optimizer = make_optimizer(args, steps_per_epoch)
    else:
        model = gn.load(os.path.join(args.out, "last.npz"))
        optimizer = gn.load_optimizer(os.path.join(args.out, "last.npz"), model)
    loss = getattr(gn, LOSS_CHOICES[loss_name])()
    if root:
        try:
            os.makedirs(args.out, exist_ok=True)
        except OSError as error:
            raise UserError(f"gpunn train: --out {args.out}: cannot create the folder "
                            f"({error.strerror or error})") from None
    last, best = os.path.join(args.out, "last.npz"), os.path.join(args.out, "best.npz")
    checkpoint = Checkpoint(model, "regress" if regress else "classify", scaler, dataset.classes, target,
                            dataset.features, args.label if args.data else None)
    if resumed is not None:
        refuse_changed_data(args, checkpoint, model)
    record = resumed or RunRecord(settings={name: getattr(args, name) for name in args.run_settings},
                                  planned_epochs=args.epochs)
    stopper = None
    if args.early_stopping:
        stopper = gn.EarlyStopping("val_loss", patience=args.early_stopping, restore_best=False)
        if record.stopper:
            stopper.load_state_dict(record.stopper)
    quiet = args.quiet or not root  # only rank 0 prints
    on_disk = [record.epoch]  # the epoch last.npz holds: what an interrupt reports
    metric = "mse" if regress else "accuracy"

    say(quiet=quiet, line=f"training on {dataset.name}: {len(train_rows)} train / {len(validation_rows)} validation / "
        f"{len(test_rows)} test rows, {dataset.X.shape[1]} features, "
        + ("a numeric target" if regress else f"{outputs} classes") + "; "
        f"{'-'.join(str(n) for n in [dataset.X.shape[1], *args.hidden, outputs])} {args.activation} MLP, "
        f"{loss_name}, {describe_optimizer(args)}, {args.dtype} on {backend.name}"
        + (f", data-parallel over {world.size} ranks (global batch {args.batch_size})" if world else "")
        + (f"; resuming after epoch {record.epoch}" if resumed else ""))

    def save(path, **options):
        try:
            model.save(path, extras={**checkpoint.extras(), **options.pop("extras", {})}, **options)
        except OSError as error:
            raise UserError(f"gpunn train: {error.strerror or error}") from None
        except ValueError as error:  # non-finite weights: the run diverged
            raise TrainingDiverged(f"gpunn train: epoch {record.epoch}: {error}") from None

    def after_epoch(epoch, logs):
        improved = record.improve(epoch, logs)
        if root:
            if stopper:  # its state after this epoch: fit updates the stopper only after this callback
                after = copy.copy(stopper)
                record.stopped_early = after.update(epoch, logs, model)
                record.stopper = after.state_dict()
            save(last, extras={"run": record.to_extra()}, optimizer=optimizer)
            on_disk[0] = record.epoch
            if improved:
                save(best)
        if regress:
            line = f"epoch {epoch + 1:3d}/{args.epochs}  loss {logs['loss']:.4f}"
        else:
            line = f"epoch {epoch + 1:3d}/{args.epochs}  loss {logs['loss']:.4f}  train acc {logs['accuracy']:.4f}"
        if "val_loss" in logs:
            line += f"  val loss {logs['val_loss']:.4f}" + ("" if regress else f"  val acc {logs['val_accuracy']:.4f}")
        if logs.get("skipped_steps"):
            line += f"  ({logs['skipped_steps']} float16 steps skipped: loss scale lowered)"
        say(line, quiet)
        for warning in logs.get("warnings", []):
            say(f"warning: {warning}", quiet)

    started = time.perf_counter()
    try:
        import warnings

        with warnings.catch_warnings(), np.errstate(over="ignore", invalid="ignore"):
            warnings.simplefilter("ignore", gn.TrainingWarning)  # printed per epoch instead
            fit_history = model.fit(x_train, targets, loss=loss, optimizer=optimizer, epochs=args.epochs,
                                    initial_epoch=record.epoch, batch_size=args.batch_size, seed=args.seed,
                                    verbose=1 if sys.stderr.isatty() and not args.quiet else 0,  # a bar only
                                    callback=after_epoch, graph=args.graph,
                                    distributed=args.distributed, metrics=(metric,),
                                    validation_data=validation, early_stopping=stopper)
    except MemoryError:
        raise UserError("gpunn train: out of memory while training; use a smaller --batch-size or --hidden") from None
    except KeyboardInterrupt:
        kept = (f"the checkpoint of epoch {on_disk[0]} is kept at {last} (continue with --resume {args.out})"
                if on_disk[0] else "no epoch finished, so no checkpoint was written")
        print(f"gpunn train: interrupted; {kept}", file=sys.stderr)
        return EXIT_INTERRUPTED
    backend.synchronize()
    seconds = time.perf_counter() - started
    if not root:
        return 0
    trained = len(fit_history["loss"])
    plot = _save_plot(record.history, os.path.join(args.out, "curves.png"), metric)
    final = {"last epoch": (model, f"{record.epoch}: last.npz")}
    if record.best_epoch is not None:
        final["best validation epoch"] = (gn.load(best), f"{record.best_epoch}: best.npz")
    for index, (name, (trained_model, where)) in enumerate(final.items()):
        label = "" if index == 0 else f" of the {name}"
        if regress:
            rmse, r2 = _regression_scores(trained_model, x_test, y_test, target)
            print(f"test RMSE{label}: {rmse:.6g}  test R²: {r2:.4f} ({where})")
        else:
            accuracy = float(np.mean(trained_model.predict(x_test).argmax(axis=1) == y_test))
            print(f"test accuracy{label}: {accuracy:.4f} ({name if index == 0 else 'epoch'} {where})")
    if stopper is not None and stopper.stopped_epoch is not None:
        print(f"early stopping: no better validation loss for {_plural(args.early_stopping, 'epoch')}")
    print(f"wall time: {seconds:.2f} s for {_plural(trained, 'epoch')} on {backend.name}")
    print(f"checkpoints: {last}" + (f", {best}" if record.best_epoch is not None else ""))
    print(f"curves: {plot}" if plot else f"curves: not drawn ({install_command('plot')} for a PNG)")
    return 0
