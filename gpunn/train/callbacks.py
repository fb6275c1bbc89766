"""What watches an epoch loop: callbacks with Keras's protocol (``Callback`` and the built-in
ones, with public state), the progress display and the divergence check."""

from __future__ import annotations

import csv
import math
import os
import sys
import warnings

from gpunn import checks
from gpunn.train.metrics import METRICS
from gpunn.train.step import TrainingDiverged

#: A finite loss this many times above the best epoch's is reported as divergence.
DIVERGENCE_FACTOR = 100.0


class TrainingWarning(UserWarning):
    """Training goes wrong in a way that may still recover (the loss grows by orders of magnitude)."""


class Callback:
    """Keras's callback protocol: override any of the hooks; ``fit(callbacks=[...])`` calls them in order.

    ``fit`` sets ``self.model``, ``self.optimizer`` and ``self.params`` (``epochs``, ``initial_epoch``,
    ``steps`` per epoch, ``verbose``, ``keys``: the entries the history will hold, ``root``: False on
    the ranks of a data-parallel job other than 0) before ``on_train_begin``. ``logs`` of
    ``on_epoch_end`` is the epoch's entry of the history: a callback may add entries to it. Setting
    ``self.model.stop_training = True`` ends training after the current epoch (in a batch hook:
    after the current batch, then the epoch's end is still reported, as in Keras 3). ``logs`` of
    ``on_train_batch_end`` holds ``loss``, the epoch's running mean so far; fit reads it from the
    device only when some callback overrides that hook.
    """

    model = optimizer = None
    params: dict = {}  # noqa: RUF012  (replaced, never mutated: fit sets a dict per fit)

    def set_model(self, model) -> None:
        self.model = model

    def set_params(self, params: dict) -> None:
        self.params = params

    def on_train_begin(self, logs=None) -> None:
        pass

    def on_train_end(self, logs=None) -> None:
        pass

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        pass

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        pass

    def on_train_batch_begin(self, batch: int, logs=None) -> None:
        pass

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        pass


def overrides(callback: Callback, hook: str) -> bool:
    """Whether ``callback`` does something in ``hook`` (so fit need not read the device for it)."""
    return getattr(type(callback), hook) is not getattr(Callback, hook)


class EpochFunction(Callback):
    """fit's ``callback=`` argument: ``function(epoch, logs)`` after each epoch."""

    def __init__(self, function):
        self.function = function

    def on_epoch_end(self, epoch, logs=None):
        self.function(epoch, logs)


def auto_mode(owner: str, monitor, mode: str) -> str:
    """``mode`` "min" or "max"; "auto" picks "min" for names containing "loss", "mse" or "mae"."""
    if not isinstance(monitor, str) or not monitor:
        raise ValueError(f"{owner}: monitor must name a history entry such as 'val_loss', got {monitor!r}")
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"{owner}: mode must be 'auto', 'min' or 'max', got {mode!r}")
    if mode == "auto":
        mode = "min" if any(word in monitor for word in ("loss", "mse", "mae")) else "max"
    return mode


def check_monitor(owner: str, name: str, keys, extensible: bool) -> None:
    """Refuse, before training, a monitor the history will not hold: loss and metric names always;
    other names only when no callback could add them to the logs (``extensible``)."""
    base = name.removeprefix("val_")
    if name not in keys and (not extensible or base == "loss" or base in METRICS):
        fix = ("pass validation_data=(X_val, T_val) or validation_split" if name.startswith("val_")
               and "val_loss" not in keys else f"add {base!r} to metrics" if base in METRICS
               else "monitor one of these")
        raise ValueError(f"{owner}: monitor {name!r} is not in the history this fit makes {sorted(keys)}: {fix}")


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved by more than ``min_delta`` for ``patience`` epochs
    (as Keras counts: ``patience=2`` trains two epochs past the best one; 0 and 1 both stop at
    the first epoch without improvement).

    ``mode`` "min" suits losses, "max" accuracies; "auto" picks "min" for names containing
    "loss", "mse" or "mae". With ``restore_best`` the model ends with the weights of the best
    epoch (the optimizer's state is not rewound, as in Keras). A fit from epoch 0 starts the count
    afresh (Keras's ``on_train_begin``); a resumed fit (``initial_epoch`` > 0, also of the model
    loaded from a checkpoint) carries on from it. Pass it as ``fit(callbacks=[...])`` or, as before,
    ``fit(early_stopping=...)`` (which runs after the other callbacks).
    """

    def __init__(self, monitor: str = "val_loss", patience: int = 5, min_delta: float = 0.0,
                 restore_best: bool = True, mode: str = "auto"):
        mode = auto_mode("EarlyStopping", monitor, mode)
        patience = checks.count("EarlyStopping", "patience", patience, minimum=0)
        min_delta = checks.number("EarlyStopping", "min_delta", min_delta, low=0.0)
        restore_best = checks.flag("EarlyStopping", "restore_best", restore_best)
        self.monitor, self.patience, self.min_delta = monitor, int(patience), float(min_delta)
        self.restore_best, self.mode = bool(restore_best), mode
        self._reset()

    def _reset(self) -> None:
        self.best = self.best_epoch = self.stopped_epoch = None
        self.wait, self._best_values = 0, None

    def state_dict(self) -> dict:
        """Where the count stands (``best``, ``best_epoch``, ``wait``, ``stopped_epoch``): plain numbers,
        saved in a run's checkpoint so a resumed run stops where an uninterrupted one would."""
        return {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait, "stopped_epoch": self.stopped_epoch}

    def load_state_dict(self, state: dict) -> None:
        """Continue the count of ``state_dict()`` (the best weights themselves are not part of it)."""
        if not isinstance(state, dict) or set(state) != {"best", "best_epoch", "wait", "stopped_epoch"}:
            raise ValueError(f"EarlyStopping: a state_dict holds best, best_epoch, wait and stopped_epoch, got {state!r}")
        best = None if state["best"] is None else checks.real("EarlyStopping", "best", state["best"])
        epochs = [None if state[key] is None else checks.count("EarlyStopping", key, state[key], minimum=0)
                  for key in ("best_epoch", "stopped_epoch")]
        self.wait = checks.count("EarlyStopping", "wait", state["wait"], minimum=0)
        self.best, (self.best_epoch, self.stopped_epoch) = best, epochs

    def begin(self, initial_epoch: int, keys, callback) -> None:
        """Before training: refuse a monitor the history will not hold (rather than after an
        epoch), and start afresh unless this resumes a run. ``callback``: something that may add
        entries to the logs (a per-epoch function or a callback of the user's), or None."""
        check_monitor("EarlyStopping", self.monitor, keys, callback is not None)
        if initial_epoch == 0:
            self._reset()
        self.stopped_epoch = None

    def on_train_begin(self, logs=None) -> None:
        self.begin(self.params["initial_epoch"], self.params["keys"], self.params.get("extensible") or None)

    def on_epoch_end(self, epoch, logs=None) -> None:
        if self.update(epoch, logs, self.model):
            self.model.stop_training = True

    def on_train_end(self, logs=None) -> None:
        self.restore(self.model)

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
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best:
                self._best_values = model.flat.values.copy()
            return False
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            return True
        return False

    def restore(self, model) -> None:
        if self.restore_best and self._best_values is not None:
            model.flat.values[...] = self._best_values


class ModelCheckpoint(Callback):
    """Save the model (with the optimizer's state) at the end of each epoch through ``model.save``, so
    each file is written atomically: Keras's ``ModelCheckpoint`` for gpunn's ``.npz`` files.

    ``path`` may hold ``{epoch}`` (counted from 1, as Keras names files) and any history entry
    (``"ckpt-{epoch:02d}-{val_loss:.3f}.npz"``). With ``save_best_only`` a file is written only in an
    epoch whose ``monitor`` beats every earlier one by more than ``min_delta`` (Keras compares with the
    best so far, starting from ``initial_value_threshold`` when given); ``mode`` as in EarlyStopping.
    In a data-parallel job only rank 0 writes. ``best`` is the best value seen, ``last_path`` the last
    file written.
    """

    def __init__(self, path, monitor: str = "val_loss", save_best_only: bool = False, mode: str = "auto",
                 save_optimizer: bool = True, initial_value_threshold=None, verbose: int = 0):
        if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
            raise TypeError(f"ModelCheckpoint: path must be a file name (str or os.PathLike), got {path!r}")
        self.path = os.fspath(path)
        self.mode = auto_mode("ModelCheckpoint", monitor, mode)
        self.monitor = monitor
        self.save_best_only = checks.flag("ModelCheckpoint", "save_best_only", save_best_only)
        self.save_optimizer = checks.flag("ModelCheckpoint", "save_optimizer", save_optimizer)
        self.initial_value_threshold = None if initial_value_threshold is None else checks.number(
            "ModelCheckpoint", "initial_value_threshold", initial_value_threshold)
        self.verbose = checks.count("ModelCheckpoint", "verbose", verbose, minimum=0)
        self.best, self.last_path = self.initial_value_threshold, None

    def on_train_begin(self, logs=None) -> None:
        if self.save_best_only:
            check_monitor("ModelCheckpoint", self.monitor, self.params["keys"], self.params.get("extensible", False))

    def file_for(self, epoch: int, logs: dict) -> str:
        """The file name of ``epoch`` (from 0, as hooks count): ``path`` with its fields filled in."""
        try:
            return self.path.format(epoch=epoch + 1, **logs)
        except (KeyError, IndexError, ValueError) as error:
            raise ValueError(f"ModelCheckpoint: path {self.path!r} names a field that this epoch's logs "
                             f"{sorted(logs)} cannot fill ({error!r}); use {{epoch}} or a history entry") from None

    def on_epoch_end(self, epoch, logs=None) -> None:
        logs = logs or {}
        if self.save_best_only:
            if self.monitor not in logs:
                raise ValueError(f"ModelCheckpoint: monitor {self.monitor!r} is not in the logs {sorted(logs)}")
            value = logs[self.monitor]
            better = (self.best is None or (value < self.best if self.mode == "min" else value > self.best))
            if not (better and math.isfinite(value)):
                return
            self.best = value
        path = self.file_for(epoch, logs)
        if self.params.get("root", True):
            self.model.save(path, optimizer=self.optimizer if self.save_optimizer else None)
            if self.verbose:
                print(f"epoch {epoch + 1}: saved {path}", file=sys.stderr, flush=True)
        self.last_path = path

    def state_dict(self) -> dict:
        return {"best": self.best}

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict) or set(state) != {"best"}:
            raise ValueError(f"ModelCheckpoint: a state_dict holds best, got {state!r}")
        self.best = None if state["best"] is None else checks.real("ModelCheckpoint", "best", state["best"])


class CSVLogger(Callback):
    """Write the history to ``path`` as CSV, one row per epoch, as Keras's ``CSVLogger`` does: the
    columns ``epoch`` (from 0) and the first epoch's log entries sorted by name; each row is flushed as
    it is written, so a run cut short leaves every finished epoch. ``append=True`` continues an
    existing file (a resumed run) without a second header; otherwise the file starts afresh. In a
    data-parallel job only rank 0 writes."""

    def __init__(self, path, separator: str = ",", append: bool = False):
        if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
            raise TypeError(f"CSVLogger: path must be a file name (str or os.PathLike), got {path!r}")
        if not isinstance(separator, str) or len(separator) != 1:
            raise ValueError(f"CSVLogger: separator must be one character, got {separator!r}")
        self.path, self.separator = os.fspath(path), separator
        self.append = checks.flag("CSVLogger", "append", append)
        self.keys, self._file, self._writer = None, None, None

    def on_train_begin(self, logs=None) -> None:
        self.keys, self._writer = None, None
        if not self.params.get("root", True):
            return
        write_header = True
        if self.append and os.path.exists(self.path):
            with open(self.path, encoding="utf-8") as existing:
                write_header = not existing.readline()
        self._file = open(self.path, "a" if self.append else "w", newline="", encoding="utf-8")  # noqa: SIM115
        self._write_header = write_header

    def on_epoch_end(self, epoch, logs=None) -> None:
        logs = logs or {}
        if self.keys is None:
            self.keys = sorted(logs)
        if self._file is None:
            return
        if self._writer is None:
            self._writer = csv.writer(self._file, delimiter=self.separator, lineterminator="\n")
            if self._write_header:
                self._writer.writerow(["epoch", *self.keys])
        self._writer.writerow([epoch, *(logs.get(key, "NA") for key in self.keys)])
        self._file.flush()

    def on_train_end(self, logs=None) -> None:
        self.close()

    def close(self) -> None:
        """Close the file (fit does, also when training fails)."""
        if self._file is not None:
            self._file.close()
        self._file = self._writer = None


def _constant_rate(owner: str, optimizer) -> float:
    """The optimizer's rate, refusing a schedule: a callback that sets the rate would replace it."""
    if type(optimizer.schedule).__name__ != "Constant":
        raise TypeError(f"{owner}: the optimizer's learning rate is a schedule ({optimizer.schedule!r}); "
                        f"{owner} sets the rate itself, so give the optimizer a number (lr=...) instead")
    return float(optimizer.lr)


class ReduceLROnPlateau(Callback):
    """Multiply the learning rate by ``factor`` when ``monitor`` has not improved by more than
    ``min_delta`` for ``patience`` epochs, then wait ``cooldown`` epochs before counting again; never
    below ``min_lr`` (Keras's parameters and counting). The new rate is written to the optimizer's
    device table in place, so the next fused update (and a recorded CUDA graph) uses it. Each epoch's
    rate goes into the logs as ``learning_rate``. The optimizer's rate must be a number, not a schedule.
    """

    def __init__(self, monitor: str = "val_loss", factor: float = 0.1, patience: int = 10, verbose: int = 0,
                 mode: str = "auto", min_delta: float = 1e-4, cooldown: int = 0, min_lr: float = 0.0):
        self.mode = auto_mode("ReduceLROnPlateau", monitor, mode)
        self.monitor = monitor
        self.factor = checks.number("ReduceLROnPlateau", "factor", factor, low=0.0, high=1.0,
                                    low_open=True, high_open=True)
        self.patience = checks.count("ReduceLROnPlateau", "patience", patience, minimum=0)
        self.verbose = checks.count("ReduceLROnPlateau", "verbose", verbose, minimum=0)
        self.min_delta = checks.number("ReduceLROnPlateau", "min_delta", min_delta, low=0.0)
        self.cooldown = checks.count("ReduceLROnPlateau", "cooldown", cooldown, minimum=0)
        self.min_lr = checks.number("ReduceLROnPlateau", "min_lr", min_lr, low=0.0)
        self._reset()

    def _reset(self) -> None:
        self.best = math.inf if self.mode == "min" else -math.inf
        self.wait = self.cooldown_counter = 0

    def on_train_begin(self, logs=None) -> None:
        _constant_rate("ReduceLROnPlateau", self.optimizer)
        check_monitor("ReduceLROnPlateau", self.monitor, self.params["keys"], self.params.get("extensible", False))
        if self.params.get("initial_epoch", 0) == 0:
            self._reset()

    def _improved(self, value: float) -> bool:
        return value < self.best - self.min_delta if self.mode == "min" else value > self.best + self.min_delta

    def on_epoch_end(self, epoch, logs=None) -> None:
        logs = logs if logs is not None else {}
        logs["learning_rate"] = float(self.optimizer.lr)
        if self.monitor not in logs:
            raise ValueError(f"ReduceLROnPlateau: monitor {self.monitor!r} is not in the logs {sorted(logs)}")
        value = logs[self.monitor]
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if self._improved(value):
            self.best, self.wait = value, 0
        elif self.cooldown_counter == 0:
            self.wait += 1
            if self.wait >= self.patience:
                old = float(self.optimizer.lr)
                if old > self.min_lr:
                    new = max(old * self.factor, self.min_lr)
                    self.optimizer.lr = new  # rewrites the device's table of rates in place
                    if self.verbose:
                        print(f"epoch {epoch + 1}: ReduceLROnPlateau: learning rate {old:.4g} -> {new:.4g}",
                              file=sys.stderr, flush=True)
                    self.cooldown_counter, self.wait = self.cooldown, 0

    def state_dict(self) -> dict:
        return {"best": self.best, "wait": self.wait, "cooldown_counter": self.cooldown_counter}

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict) or set(state) != {"best", "wait", "cooldown_counter"}:
            raise ValueError(f"ReduceLROnPlateau: a state_dict holds best, wait and cooldown_counter, got {state!r}")
        self.best = checks.real("ReduceLROnPlateau", "best", state["best"])
        self.wait = checks.count("ReduceLROnPlateau", "wait", state["wait"], minimum=0)
        self.cooldown_counter = checks.count("ReduceLROnPlateau", "cooldown_counter", state["cooldown_counter"],
                                             minimum=0)


class LearningRateScheduler(Callback):
    """Set the learning rate at the start of each epoch to ``schedule(epoch, lr)`` (or
    ``schedule(epoch)``), epoch counted from 0 and ``lr`` the current rate, as Keras does; the rate
    goes into the logs as ``learning_rate``. The optimizer's rate must be a number (for a rate that
    changes every update, give the optimizer a ``gpunn.schedules`` schedule instead)."""

    def __init__(self, schedule, verbose: int = 0):
        if not callable(schedule):
            raise TypeError(f"LearningRateScheduler: schedule must be callable as schedule(epoch, lr), "
                            f"got {type(schedule).__name__}")
        self.schedule = schedule
        self.verbose = checks.count("LearningRateScheduler", "verbose", verbose, minimum=0)

    def on_train_begin(self, logs=None) -> None:
        _constant_rate("LearningRateScheduler", self.optimizer)

    def on_epoch_begin(self, epoch, logs=None) -> None:
        lr = float(self.optimizer.lr)
        try:
            new = self.schedule(epoch, lr)
        except TypeError:  # Keras's older one-argument form
            new = self.schedule(epoch)
        new = checks.positive("LearningRateScheduler", f"schedule({epoch}, {lr:g})", new)
        self.optimizer.lr = new
        if self.verbose:
            print(f"epoch {epoch + 1}: LearningRateScheduler: learning rate {new:.4g}", file=sys.stderr, flush=True)

    def on_epoch_end(self, epoch, logs=None) -> None:
        if logs is not None:
            logs["learning_rate"] = float(self.optimizer.lr)


class TerminateOnNaN(Callback):
    """Stop training after the first batch whose running loss is NaN or Inf, as Keras's does: the epoch
    is still recorded (its loss NaN) and fit returns the history instead of raising TrainingDiverged.
    It reads the loss from the device after every batch."""

    def __init__(self):
        self.stopped_batch = None

    def on_train_batch_end(self, batch, logs=None) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            print(f"batch {batch}: invalid loss, terminating training", file=sys.stderr, flush=True)
            self.stopped_batch = batch
            self.model.stop_training = True


#: Seconds an epoch runs before its bar over batches appears: short epochs show the epoch bar only.
BATCH_BAR_DELAY = 2.0


class Progress:
    """Per-epoch progress for ``verbose``: 0 nothing; 1 a tqdm bar where one renders (a terminal
    or a notebook, with tqdm installed), else one plain line per epoch on stderr; 2 a plain line
    per epoch always. With the tqdm bar, an epoch that runs longer than ``BATCH_BAR_DELAY`` seconds
    also shows a bar over its batches (which reads nothing from the device)."""

    def __init__(self, epochs: int, verbose: int):
        self.epochs, self.verbose, self.bar, self.batch_bar, self._tqdm = epochs, verbose, None, None, None
        if verbose == 1 and (sys.stderr.isatty() or in_notebook()):  # noqa: SIM102
            try:
                from tqdm.auto import tqdm
            except ImportError:
                pass
            else:
                self._tqdm = tqdm
                self.bar = tqdm(total=epochs, unit="epoch", file=sys.stderr)

    def begin_epoch(self, epoch: int, batches: int) -> None:
        if self._tqdm is not None:
            self.batch_bar = self._tqdm(total=batches, unit="batch", desc=f"epoch {epoch + 1}", leave=False,
                                        delay=BATCH_BAR_DELAY, file=sys.stderr)

    def batch_done(self) -> None:
        if self.batch_bar is not None:
            self.batch_bar.update(1)

    def update(self, epoch: int, logs: dict) -> None:
        self._close_batch_bar()
        if self.bar is not None:
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in logs.items()}, refresh=False)
            self.bar.update(1)
        elif self.verbose:
            print(f"epoch {epoch + 1}/{self.epochs} " + " ".join(f"{k}={v:.4g}" for k, v in logs.items()),
                  file=sys.stderr, flush=True)

    def _close_batch_bar(self) -> None:
        if self.batch_bar is not None:
            self.batch_bar.close()
            self.batch_bar = None

    def close(self) -> None:
        self._close_batch_bar()
        if self.bar is not None:
            self.bar.close()


def in_notebook() -> bool:
    """True inside a Jupyter kernel, where tqdm.auto draws a widget although stderr is no terminal."""
    shell = sys.modules.get("IPython")
    try:
        return type(shell.get_ipython()).__name__ == "ZMQInteractiveShell"
    except AttributeError:
        return False


def check_divergence(model, epoch: int, logs: dict, best_loss: float, history: dict) -> float:
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
