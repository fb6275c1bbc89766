"""The fit loop: shuffled mini-batches, validation, metrics, early stopping and exact resume.

Each epoch's order depends on ``(seed, epoch)`` alone, so 5 epochs, a checkpoint with the
optimizer, and 5 more from ``initial_epoch=5`` give the weights of 10 epochs straight. Losses
and metrics are summed on the device and read once per epoch.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import warnings

from gpunn import checks
from gpunn.train.metrics import METRICS, check_metric_targets, check_metrics
from gpunn.train.step import TrainingDiverged, TrainStep

#: A finite loss this many times above the best epoch's is reported as divergence.
DIVERGENCE_FACTOR = 100.0


class TrainingWarning(UserWarning):
    """Training goes wrong in a way that may still recover (the loss grows by orders of magnitude)."""


class EarlyStopping:
    """Stop when ``monitor`` has not improved by more than ``min_delta`` for ``patience`` epochs
    (as Keras counts: ``patience=2`` trains two epochs past the best one; 0 and 1 both stop at
    the first epoch without improvement).

    ``mode`` "min" suits losses, "max" accuracies; "auto" picks "min" for names containing
    "loss", "mse" or "mae". With ``restore_best`` the model ends with the weights of the best
    epoch (the optimizer's state is not rewound, as in Keras). A fit from epoch 0 starts the count
    afresh (Keras's ``on_train_begin``); a resumed fit (``initial_epoch`` > 0, also of the model
    loaded from a checkpoint) carries on from it.
    """

    def __init__(self, monitor: str = "val_loss", patience: int = 5, min_delta: float = 0.0,
                 restore_best: bool = True, mode: str = "auto"):
        if not isinstance(monitor, str) or not monitor:
            raise ValueError(f"EarlyStopping: monitor must name a history entry such as 'val_loss', got {monitor!r}")
        patience = checks.count("EarlyStopping", "patience", patience, minimum=0)
        min_delta = checks.number("EarlyStopping", "min_delta", min_delta, low=0.0)
        restore_best = checks.flag("EarlyStopping", "restore_best", restore_best)
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"EarlyStopping: mode must be 'auto', 'min' or 'max', got {mode!r}")
        if mode == "auto":
            mode = "min" if any(word in monitor for word in ("loss", "mse", "mae")) else "max"
        self.monitor, self.patience, self.min_delta = monitor, int(patience), float(min_delta)
        self.restore_best, self.mode = bool(restore_best), mode
        self._reset()

    def _reset(self) -> None:
        self.best = self.best_epoch = self.stopped_epoch = None
        self._wait, self._best_values = 0, None

    def begin(self, initial_epoch: int, keys, callback) -> None:
        """Before training: refuse a monitor the history will not hold (rather than after an
        epoch), and start afresh unless this resumes a run."""
        name = self.monitor
        base = name[len("val_"):] if name.startswith("val_") else name
        if name not in keys and (callback is None or base == "loss" or base in METRICS):
            fix = ("pass validation_data=(X_val, T_val)" if name.startswith("val_") and "val_loss" not in keys
                   else f"add {base!r} to metrics" if base in METRICS else "monitor one of these")
            raise ValueError(f"EarlyStopping: monitor {name!r} is not in the history this fit makes "
                             f"{sorted(keys)}: {fix}")
        if initial_epoch == 0:
            self._reset()
        self.stopped_epoch = None

    def _improved(self, value: float) -> bool:
        if self.best is None:
            return True
        return value < self.best - self.min_delta if self.mode == "min" else value > self.best + self.min_delta

    def update(self, epoch: int, logs: dict, model) -> bool:
        """Record an epoch; True when training should stop."""
        if self.monitor not in logs:
            raise ValueError(f"EarlyStopping: monitor {self.monitor!r} is not in the history "
                             f"{sorted(logs)} (val_* entries need validation_data)")
        value = logs[self.monitor]
        if self._improved(value):
            self.best, self.best_epoch, self._wait = value, epoch, 0
            if self.restore_best:
                self._best_values = model.flat.values.copy()
            return False
        self._wait += 1
        if self._wait >= self.patience:
            self.stopped_epoch = epoch
            return True
        return False

    def restore(self, model) -> None:
        if self.restore_best and self._best_values is not None:
            model.flat.values[...] = self._best_values


class _Progress:
    """Per-epoch progress for ``verbose``: 0 nothing; 1 a tqdm bar where one renders (a terminal
    or a notebook, with tqdm installed), else one plain line per epoch on stderr; 2 a plain line
    per epoch always."""

    def __init__(self, epochs: int, verbose: int):
        self.epochs, self.verbose, self.bar = epochs, verbose, None
        if verbose == 1 and (sys.stderr.isatty() or _in_notebook()):  # noqa: SIM102
            try:
                from tqdm.auto import tqdm
            except ImportError:
                pass
            else:
                self.bar = tqdm(total=epochs, unit="epoch", file=sys.stderr)

    def update(self, epoch: int, logs: dict) -> None:
        if self.bar is not None:
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in logs.items()}, refresh=False)
            self.bar.update(1)
        elif self.verbose:
            print(f"epoch {epoch + 1}/{self.epochs} " + " ".join(f"{k}={v:.4g}" for k, v in logs.items()),
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _in_notebook() -> bool:
    """True inside a Jupyter kernel, where tqdm.auto draws a widget although stderr is no terminal."""
    shell = sys.modules.get("IPython")
    try:
        return type(shell.get_ipython()).__name__ == "ZMQInteractiveShell"
    except AttributeError:
        return False


@contextlib.contextmanager
def evaluation_mode(model):
    """Layers that behave differently in training (dropout) run in evaluation mode inside."""
    switch = getattr(model, "evaluating", None)
    if switch is None:
        yield
    else:
        with switch():
            yield


def evaluate(model, X, T, loss, metrics=(), batch_size: int | None = 4096) -> dict:
    """``{"loss": mean loss, metric: value, ...}`` over (X, T), in evaluation mode (``Sequential.evaluate``)."""
    metrics = check_metrics(metrics)
    checks.batch_size("evaluate", batch_size)
    x, t = TrainStep.prepare_data(model, loss, X, T)
    if x.shape[0] == 0:
        raise ValueError("evaluate: X has no rows")
    check_metric_targets(metrics, t, model.out_features)
    return evaluate_prepared(model, x, t, loss, metrics, batch_size or x.shape[0])


def evaluate_prepared(model, x, t, loss, metrics, batch_size: int = 4096) -> dict:
    """Mean loss and metrics over prepared device arrays, in evaluation mode, in batches."""
    import copy

    backend, rows = model.backend, x.shape[0]
    probe = copy.copy(loss)  # the caller's loss keeps what its own backward needs
    sums = {"loss": backend.zeros((), "float64"), **{name: backend.zeros((), "float64") for name in metrics}}
    with evaluation_mode(model):
        for start in range(0, rows, batch_size):
            xb, tb = x[start:start + batch_size], t[start:start + batch_size]
            y = model._forward(xb)
            sums["loss"] += probe._forward(backend, y, tb) * xb.shape[0]
            for name in metrics:
                sums[name] += METRICS[name](y, tb, loss.takes_logits)
    return {name: float(total) / rows for name, total in sums.items()}


def fit(model, X, T, *, loss, optimizer, epochs: int = 1, batch_size: int = 32, shuffle: bool = True,
        seed=None, verbose: int = 1, callback=None, graph: bool = False, validation_data=None,
        metrics=(), early_stopping: EarlyStopping | None = None, initial_epoch: int = 0,
        distributed: bool = False) -> dict:
    """Train ``model`` on (X, T) from epoch ``initial_epoch`` up to ``epochs``; returns the history.

    Training runs in training mode (dropout on); the model's mode comes back afterwards.
    The history holds, per epoch, ``loss`` (the mean training loss), each metric (``accuracy``,
    ``mse``, ``mae``; training values are running means over the epoch's batches), ``val_loss``
    and ``val_<metric>`` with ``validation_data=(Xv, Tv)``, ``skipped_steps`` for float16 models
    (updates skipped because the scaled gradient overflowed), and ``warnings``. The data is checked
    and moved to the device once; the last batch may be smaller. ``callback(epoch, logs)`` runs
    after each epoch and may add entries to ``logs``. ``graph=True`` replays each full batch as a
    CUDA graph (see ``TrainStep``). NaN/Inf in the loss or the parameters raises TrainingDiverged;
    a loss a hundred times above the best epoch's warns (TrainingWarning, and in the history).

    ``distributed=True`` trains data-parallel over the MPI world (``gpunn.distributed.init``):
    every rank passes the same data and settings; ``batch_size`` is global, and each global batch
    is split into contiguous shards by rank (``gpunn.data_parallel``). Losses and metrics are
    global (validation runs whole on every rank); only rank 0 shows progress.
    """
    epochs = checks.count("fit", "epochs", epochs)
    batch_size = checks.count("fit", "batch_size", batch_size)
    initial_epoch = checks.count("fit", "initial_epoch", initial_epoch, minimum=0)
    if initial_epoch >= epochs:
        raise ValueError(f"fit: initial_epoch ({initial_epoch}) must be below epochs ({epochs}): epochs is the "
                         "number of the last epoch, as in Keras")
    if verbose not in (0, 1, 2):
        raise ValueError(f"fit: verbose must be 0, 1 or 2, got {verbose!r}")
    if callback is not None and not callable(callback):
        raise TypeError(f"fit: callback must be callable as callback(epoch, logs), got {type(callback).__name__}")
    if early_stopping is not None and not isinstance(early_stopping, EarlyStopping):
        raise TypeError(f"fit: early_stopping must be a gn.EarlyStopping, got {early_stopping!r}")
    metrics = check_metrics(metrics)
    seed = checks.seed("fit", seed)
    if seed is None:
        seed = int.from_bytes(os.urandom(8), "little") >> 1
    parallel = None
    if distributed:
        from gpunn.distributed.data_parallel import DataParallel
        from gpunn.distributed.world import init

        parallel = DataParallel(init(model.backend), model)
        seed = parallel.world.broadcast_object(seed)  # seed=None: rank 0's draw, so all shuffle alike
    step = TrainStep(model, loss, optimizer, graph=graph, data_parallel=parallel)
    try:
        x_all, t_all = step.prepare(X, T)
        validation = None
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
                raise ValueError("validation_data must be a pair (X_val, T_val)")
            try:
                validation = step.prepare(*validation_data)
            except (TypeError, ValueError) as error:  # "X has 4 features" would point at the training data
                raise type(error)(f"validation_data: {error}") from error
    except (TypeError, ValueError) as error:
        raise type(error)(f"fit: {error}") from error
    backend = model.backend
    xp, n = backend.xp, x_all.shape[0]
    if n == 0:
        raise ValueError("fit: X has no rows")
    if validation is not None and validation[0].shape[0] == 0:
        raise ValueError("fit: validation_data has no rows")
    try:
        for t in [t_all] + ([validation[1]] if validation is not None else []):
            check_metric_targets(metrics, t, model.out_features)
    except ValueError as error:
        raise ValueError(f"fit: {error}") from None
    if parallel is not None:
        parallel.check_agreement(rows=n, epochs=epochs, initial_epoch=initial_epoch, batch_size=batch_size,
                                 shuffle=shuffle, seed=seed, graph=graph, metrics=metrics,
                                 validation_rows=None if validation is None else validation[0].shape[0])
        parallel.broadcast_state(optimizer)
        verbose = verbose if parallel.world.is_root else 0
    if early_stopping is not None:
        keys = {"loss", *metrics} | ({"val_loss", *(f"val_{name}" for name in metrics)} if validation else set())
        early_stopping.begin(initial_epoch, keys | ({"skipped_steps"} if optimizer.mixed_precision else set()),
                             callback)
    accumulate = "float64" if model.dtype.name == "float64" else "float32"
    batches = -(-n // batch_size)
    optimizer.reserve_steps(batches * (epochs - initial_epoch))
    history: dict = {"loss": []}
    best_loss, skipped_before = math.inf, optimizer.skipped_steps
    progress = _Progress(epochs, verbose)
    from gpunn.nn.dropout import Dropout

    dropouts = [layer for layer in model.all_layers() if isinstance(layer, Dropout)] if parallel else []
    was_training = model.training
    model.train()  # dropout on; the mode found comes back afterwards, also on an error
    try:
        for epoch in range(initial_epoch, epochs):
            order = backend.asarray(backend.random_generator((seed, epoch)).permutation(n)) if shuffle else None
            total = backend.zeros((), accumulate)
            sums = {name: backend.zeros((), "float64") for name in metrics}
            for start in range(0, n, batch_size):
                stop = min(start + batch_size, n)
                first, last = (start, stop) if parallel is None else parallel.shard(start, stop)
                for dropout in dropouts:  # a shard draws its rows' masks of the global batch
                    dropout.row_offset = first - start
                if order is None:
                    xb, tb = x_all[first:last], t_all[first:last]
                else:
                    rows = order[first:last]
                    xb, tb = xp.take(x_all, rows, axis=0), xp.take(t_all, rows, axis=0)
                total += step(xb, tb, (last - first) / (stop - start), replay=stop - start == batch_size) \
                    * (last - first)
                for name in metrics:
                    sums[name] += METRICS[name](step.outputs, tb, loss.takes_logits)
            sums = {"loss": total, **sums}
            sums = ({name: float(value) for name, value in sums.items()} if parallel is None
                    else parallel.global_sums(sums))
            logs = {name: value / n for name, value in sums.items()}
            if validation is not None:
                logs.update({f"val_{k}": v for k, v in evaluate_prepared(model, *validation, loss, metrics).items()})
            if optimizer.mixed_precision:
                skipped = optimizer.skipped_steps
                logs["skipped_steps"], skipped_before = skipped - skipped_before, skipped
            best_loss = _check_divergence(model, epoch, logs, best_loss, history)
            if callback is not None:
                callback(epoch, logs)
            for key, value in logs.items():
                history.setdefault(key, []).append(value)
            progress.update(epoch, logs)
            if early_stopping is not None and early_stopping.update(epoch, logs, model):
                break
    finally:
        model.train(was_training)
        progress.close()
        for dropout in dropouts:  # a later single-process fit draws the whole batch's masks again
            dropout.row_offset = 0
    if early_stopping is not None:
        early_stopping.restore(model)
    return history


def _check_divergence(model, epoch: int, logs: dict, best_loss: float, history: dict) -> float:
    """NaN/Inf in the loss or the parameters ends training; a hundredfold loss warns."""
    mean = logs["loss"]
    if not math.isfinite(mean):
        raise TrainingDiverged(f"fit: the loss became {mean} in epoch {epoch + 1}; lower the learning rate "
                               "or check the data")
    if not bool(model.backend.xp.isfinite(model.flat.values).all()):
        raise TrainingDiverged(f"fit: the parameters became NaN or Inf in epoch {epoch + 1}; lower the "
                               "learning rate, clip gradients (max_grad_norm) or check the data")
    if mean > DIVERGENCE_FACTOR * best_loss:
        message = (f"epoch {epoch + 1}: the loss {mean:.4g} is over {DIVERGENCE_FACTOR:.0f}x the best epoch's "
                   f"({best_loss:.4g}); training is diverging: lower the learning rate")
        warnings.warn(message, TrainingWarning, stacklevel=4)
        history.setdefault("warnings", []).append(message)
    return min(best_loss, mean)
