"""What watches an epoch loop: early stopping (Keras's semantics, with public state), the progress
display and the divergence check."""

from __future__ import annotations

import math
import sys
import warnings

from gpunn import checks
from gpunn.train.metrics import METRICS
from gpunn.train.step import TrainingDiverged

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


class Progress:
    """Per-epoch progress for ``verbose``: 0 nothing; 1 a tqdm bar where one renders (a terminal
    or a notebook, with tqdm installed), else one plain line per epoch on stderr; 2 a plain line
    per epoch always."""

    def __init__(self, epochs: int, verbose: int):
        self.epochs, self.verbose, self.bar = epochs, verbose, None
        if verbose == 1 and (sys.stderr.isatty() or in_notebook()):  # noqa: SIM102
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
