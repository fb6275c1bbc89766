"""``gpunn train``: the run (validation, checkpoints, early stopping) and exact resume.

Each epoch writes ``last.npz`` (model, optimizer state, scaler, classes and the run's settings) and
``history.csv``, and the epoch with the best validation loss writes ``best.npz``; ``--resume RUN_DIR`` continues
from ``last.npz`` exactly as if the run had not stopped. The test part is never used to choose
anything: validation rows are carved from the training part. ``--stream`` reads a file larger than
memory instead of loading it (``gpunn.cli.streaming``); ``Split`` and ``StreamedSplit`` answer the same
questions (rows, parts, digests, test scores), so the run below does not ask which it has.
"""

from __future__ import annotations

import copy
import csv
import io
import os
import sys
import time
import warnings
from dataclasses import dataclass

import numpy as np

import gpunn as gn
from gpunn.cli import report
from gpunn.cli.build import describe_optimizer, make_optimizer, model_for
from gpunn.cli.checkpoint import Checkpoint
from gpunn.cli.data import (DataError, Standardizer, load_digits, load_files, random_split, split_digests,
                            stratified_split)
from gpunn.cli.encoding import Encoding
from gpunn.cli.options import EXIT_INTERRUPTED, LOSS_CHOICES, UserError, say, use_backend_option
from gpunn.cli.resume import refuse_changed_data, resume_settings
from gpunn.cli.streaming import StreamedSplit
from gpunn.cli.run import RunRecord, setting_as_used
from gpunn.io.atomic import atomic_write
from gpunn.train.step import TrainingDiverged
from gpunn.train.weights import balanced_class_weight


@dataclass
class Split:
    """The run's data: its rows in three parts, standardised with the training part's scalers."""

    dataset: object
    train_rows: np.ndarray
    validation_rows: np.ndarray
    test_rows: np.ndarray
    scaler: Standardizer
    target: Standardizer | None  # regression: the targets' scaler
    encoding: Encoding | None = None  # a data file's columns → the model's inputs (None: the digits)

    def features(self, rows):
        return self.scaler(self.dataset.X[rows])

    def targets(self, rows, loss_name: str):
        y = self.dataset.y[rows]
        if self.target is not None:
            return self.target(y[:, None])
        return np.eye(len(self.dataset.classes))[y] if loss_name == "mse" else y

    # what command_train asks of its data, here and of a --stream run's (gpunn.cli.streaming.StreamedSplit)
    @property
    def name(self) -> str:
        return self.dataset.name

    @property
    def width(self) -> int:
        return self.dataset.X.shape[1]

    @property
    def classes(self):
        return self.dataset.classes

    @property
    def feature_names(self):
        return self.dataset.features

    def rows(self, name: str) -> int:
        return len(getattr(self, f"{name}_rows"))

    def part(self, name: str, loss_name: str):
        """(inputs, targets) of a part in memory, or None if it has no rows."""
        rows = getattr(self, f"{name}_rows")
        return (self.features(rows), self.targets(rows, loss_name)) if len(rows) else None

    def class_weight(self) -> dict:
        return balanced_class_weight(self.dataset.y[self.train_rows])

    def digests(self) -> np.ndarray:
        return split_digests(self.dataset.X, self.dataset.y, (self.train_rows, self.validation_rows, self.test_rows))

    def describe(self) -> list[str]:
        return []

    def warnings(self) -> list[str]:
        return []

    def test_scores(self, model):
        """(RMSE, R²) of a regression, else the accuracy, on the test part."""
        x_test, y_test = self.features(self.test_rows), self.dataset.y[self.test_rows]
        if self.target is not None:
            return report.regression_scores(model, x_test, y_test, self.target)
        return float(np.mean(model.predict(x_test).argmax(axis=1) == y_test))


def split(args) -> Split | StreamedSplit:
    """The data of ``--data`` (or the digits) split into train, validation and test rows; a
    ``--validation-data`` or ``--test-data`` file is that part instead of rows carved from ``--data``.
    With ``--stream``, the file's contiguous parts on disk (``gpunn.cli.streaming``)."""
    regress = args.task == "regress"
    if regress and not args.data:
        raise UserError("gpunn train: --task regress needs --data with a numeric label column")
    if not args.data and (args.validation_data or args.test_data or args.impute or args.stream):
        raise UserError("gpunn train: --validation-data, --test-data, --impute and --stream apply to --data")
    for part in ("validation", "test"):
        fraction = f"{part}_fraction"
        if getattr(args, f"{part}_data") and getattr(args, fraction) != args.run_settings[fraction]:
            raise UserError(f"gpunn train: --{part}-data is the {part} part, so --{part}-fraction would be ignored; "
                            "drop one of them")
    if args.stream:
        return StreamedSplit(args)
    dataset = (load_files(args.data, args.label, args.task, args.validation_data, args.test_data) if args.data
               else load_digits())
    sizes = [table.rows for _, table in dataset.files] or [len(dataset.y)]
    own = sizes[0]  # the --data file's rows come first, then the validation file's, then the test file's
    if args.test_data:
        train_rows, test_rows = np.arange(own), np.arange(len(dataset.y) - sizes[-1], len(dataset.y))
    elif regress:
        train_rows, test_rows = random_split(own, args.test_fraction, args.seed)
    else:
        train_rows, test_rows = stratified_split(dataset.y[:own], args.test_fraction, args.seed)
    validation_rows = np.array([], dtype=np.int64)
    if args.validation_data:
        validation_rows = np.arange(own, own + sizes[1])
    elif args.validation_fraction and len(train_rows) > 1:
        keep, held = (random_split(len(train_rows), args.validation_fraction, args.seed + 1) if regress else
                      stratified_split(dataset.y[train_rows], args.validation_fraction, args.seed + 1))
        train_rows, validation_rows = train_rows[keep], train_rows[held]
    if len(test_rows) == 0 or len(train_rows) == 0:
        raise DataError(f"{dataset.name}: too few rows for a train/test split")
    encoding = None
    if dataset.files:
        path, table = dataset.files[0]
        encoding = Encoding.fit(table, train_rows, args.impute, path)
        dataset.X = np.concatenate([encoding.encode(table, path) for path, table in dataset.files])
    scaler = Standardizer.fit(dataset.X[train_rows])
    target = Standardizer.fit(dataset.y[train_rows, None]) if regress else None
    return Split(dataset, train_rows, validation_rows, test_rows, scaler, target, encoding)


def check_options(args) -> str:
    """Refuse option combinations that cannot run; return the loss as used."""
    if args.epochs is None:
        args.epochs = 30
    if args.early_stopping and not (args.validation_fraction or args.validation_data):
        raise UserError("gpunn train: --early-stopping watches the validation loss: keep --validation-fraction above 0 "
                        "(or pass --validation-data)")
    loss_name = setting_as_used("loss", vars(args))
    if args.task == "regress" and loss_name != "mse":
        raise UserError("gpunn train: --task regress trains with --loss mse")
    if args.class_weight and args.task == "regress":
        raise UserError("gpunn train: --class-weight weighs classes; --task regress has none")
    return loss_name


def out_folder(args, resumed: bool) -> str:
    """Where the run writes: --out, else the resumed run's folder, else gpunn-run. A folder that holds
    another run is never replaced unless the user says so (--overwrite): --resume RUN --out OTHER
    continues RUN into OTHER and leaves RUN as it was."""
    out = args.out or (args.resume if resumed else "gpunn-run")
    continuing = resumed and os.path.abspath(out) == os.path.abspath(args.resume)
    if not continuing and not args.overwrite and os.path.exists(os.path.join(out, "last.npz")):
        fix = f"continue it with --resume {out}" if not resumed else "pick another --out"
        raise UserError(f"gpunn train: --out {out} already holds a run (last.npz); {fix}, or pass --overwrite to "
                        "replace it")
    return out


class RunWriter:
    """The per-epoch callback of ``fit``: records the epoch, writes last.npz (and best.npz when the
    validation loss improved) on rank 0, and prints the epoch's line."""

    def __init__(self, args, model, optimizer, checkpoint, record, stopper, root: bool, quiet: bool):
        self.args, self.model, self.optimizer, self.checkpoint = args, model, optimizer, checkpoint
        self.record, self.stopper, self.root, self.quiet = record, stopper, root, quiet
        self.last, self.best = (os.path.join(args.out, name) for name in ("last.npz", "best.npz"))
        self.on_disk = record.epoch  # the epoch last.npz holds: what an interrupt reports
        self.loss_before = None  # the training loss before this run's first epoch (the divergence check's)
        self.caught: list = []  # the warnings fit issued (a TrainingWarning is printed with its epoch)
        self.warned = 0

    def save(self, path, **options) -> None:
        try:
            self.model.save(path, extras={**self.checkpoint.extras(), **options.pop("extras", {})}, **options)
        except OSError as error:
            raise UserError(f"gpunn train: {error.strerror or error}") from None
        except ValueError as error:  # non-finite weights: the run diverged
            raise TrainingDiverged(f"gpunn train: epoch {self.record.epoch}: {error}") from None

    def write_history(self) -> None:
        """history.csv: the run's history as last.npz holds it, one row per epoch (epoch counted from 1),
        written atomically after it, so a resumed run's file never repeats or misses an epoch."""
        history = self.record.history
        keys = sorted(key for key, values in history.items() if isinstance(values, list)
                      and len(values) == self.record.epoch and key != "warnings")

        def write(file):
            text = io.TextIOWrapper(file, encoding="utf-8", newline="")
            table = csv.writer(text, lineterminator="\n")
            table.writerow(["epoch", *keys])
            for index in range(self.record.epoch):
                table.writerow([index + 1, *(history[key][index] for key in keys)])
            text.flush()
            text.detach()

        try:
            atomic_write(os.path.join(self.args.out, "history.csv"), write)
        except OSError as error:
            raise UserError(f"gpunn train: {error.strerror or error}") from None

    def __call__(self, epoch: int, logs: dict) -> None:
        record = self.record
        improved = record.improve(epoch, logs)
        if self.root:
            if self.stopper:  # its state after this epoch: fit updates the stopper only after this callback
                after = copy.copy(self.stopper)
                record.stopped_early = after.update(epoch, logs, self.model)
                record.stopper = after.state_dict()
            self.save(self.last, extras={"run": record.to_extra()}, optimizer=self.optimizer)
            self.on_disk = record.epoch
            self.write_history()
            if improved:
                self.save(self.best)
        for line in report.epoch_lines(epoch, self.args.epochs, logs, self.args.task == "regress"):
            say(line, self.quiet)
        issued = [str(caught.message) for caught in self.caught[self.warned:]]
        self.warned = len(self.caught)
        own = report.divergence(epoch, logs["loss"], self.loss_before)
        if self.root:  # warnings print with --quiet too, as errors do
            for message in issued + ([own] if own and not any("diverging" in m for m in issued) else []):
                print(f"gpunn train: warning: {message}", file=sys.stderr, flush=True)


def command_train(args) -> int:
    resumed = resume_settings(args) if args.resume else None
    loss_name = check_options(args)
    args.out = out_folder(args, resumed is not None)
    data = split(args)
    regress = args.task == "regress"
    outputs = 1 if regress else len(data.classes)
    validation = data.part("validation", loss_name)

    backend = use_backend_option(args.backend)
    if args.graph and not backend.supports_graphs:
        raise UserError(f"gpunn train: --graph needs the cupy backend (CUDA graphs); the {backend.name} "
                        "backend runs every step eagerly")
    world = gn.distributed.init(backend) if args.distributed else None
    root = world is None or world.is_root  # only rank 0 prints and writes checkpoints
    if resumed is None:
        model = model_for(args, data.width, outputs, backend)
        optimizer = make_optimizer(args, -(-data.rows("train") // args.batch_size))
    else:
        model = gn.load(os.path.join(args.resume, "last.npz"))
        optimizer = gn.load_optimizer(os.path.join(args.resume, "last.npz"), model)
    if root:
        try:
            os.makedirs(args.out, exist_ok=True)
        except OSError as error:
            raise UserError(f"gpunn train: --out {args.out}: cannot create the folder "
                            f"({error.strerror or error})") from None
    checkpoint = Checkpoint(model, "regress" if regress else "classify", data.scaler, data.classes,
                            data.target, data.feature_names, args.label if args.data else None,
                            data.digests(), getattr(data, "encoding", None),
                            data.split_rows() if args.stream else None)
    if resumed is not None:
        refuse_changed_data(args, checkpoint, model)
    record = resumed or RunRecord(settings={name: getattr(args, name) for name in args.run_settings},
                                  planned_epochs=args.epochs)
    stopper = None
    if args.early_stopping:
        stopper = gn.EarlyStopping("val_loss", patience=args.early_stopping, restore_best=False)
        if record.stopper:
            stopper.load_state_dict(record.stopper)
    quiet = args.quiet or not root
    writer = RunWriter(args, model, optimizer, checkpoint, record, stopper, root, quiet)
    say(report.header(args, data, outputs, loss_name, describe_optimizer(args), backend, world,
                      record.epoch if resumed else None), quiet)
    for line in data.describe():
        say(line, quiet)
    for message in data.warnings() if root else []:
        print(f"gpunn train: warning: {message}", file=sys.stderr, flush=True)

    metric = "mse" if regress else "accuracy"
    class_weight = data.class_weight() if args.class_weight else None
    train_x, train_t = data.part("train", loss_name)
    started = time.perf_counter()
    try:
        with warnings.catch_warnings(record=True) as writer.caught, np.errstate(over="ignore", invalid="ignore"):
            warnings.simplefilter("always", gn.TrainingWarning)  # printed with their epoch by the writer
            writer.loss_before = model.evaluate(train_x, train_t, getattr(gn, LOSS_CHOICES[loss_name])())["loss"]
            history = model.fit(train_x, train_t,
                                loss=getattr(gn, LOSS_CHOICES[loss_name])(), optimizer=optimizer, epochs=args.epochs,
                                initial_epoch=record.epoch, batch_size=args.batch_size, seed=args.seed,
                                verbose=1 if sys.stderr.isatty() and not args.quiet else 0,  # a bar only
                                callback=writer, graph=args.graph, distributed=args.distributed, metrics=(metric,),
                                validation_data=validation, early_stopping=stopper, class_weight=class_weight)
    except MemoryError:
        raise UserError("gpunn train: out of memory while training; use a smaller --batch-size or --hidden") from None
    except KeyboardInterrupt:
        kept = (f"the checkpoint of epoch {writer.on_disk} is kept at {writer.last} (continue with --resume "
                f"{args.out})" if writer.on_disk else "no epoch finished, so no checkpoint was written")
        print(f"gpunn train: interrupted; {kept}", file=sys.stderr)
        return EXIT_INTERRUPTED
    backend.synchronize()
    if root:
        report.results(args, model, writer, data, stopper, len(history["loss"]), time.perf_counter() - started,
                       backend, metric)
    return 0
