"""A ``gpunn train`` run as data: its settings, and the record of where it stands that each epoch
saves in ``last.npz`` (so ``--resume`` continues exactly)."""

from __future__ import annotations

import dataclasses
import inspect
import json

import numpy as np

import gpunn as gn
from gpunn.cli.options import DEFAULT_LR, OPTIMIZER_CHOICES


def setting_as_used(name: str, settings: dict):
    """A run setting as the run uses it (``settings``: the parsed options, or a run's stored ones):
    None stands for the default of the run's optimizer (lr, weight_decay) or task (loss)."""
    value = settings[name]
    if value is not None or name not in ("lr", "weight_decay", "loss"):
        return value
    if name == "loss":
        return "mse" if settings["task"] == "regress" else "softmax-ce"
    if name == "lr":
        return DEFAULT_LR[settings["optimizer"]]
    optimizer = getattr(gn, OPTIMIZER_CHOICES[settings["optimizer"]])
    return inspect.signature(optimizer).parameters["weight_decay"].default


@dataclasses.dataclass
class RunRecord:
    """Where a run stands after ``epoch`` epochs. Saved as JSON in the checkpoint's ``run`` extra
    under the keys runs have always used (``args`` holds the settings), so older runs resume too."""

    settings: dict  # every "run settings" option of gpunn train, by name, as given or stored
    planned_epochs: int  # the epochs its schedule was planned over
    epoch: int = 0
    history: dict = dataclasses.field(default_factory=dict)
    best_epoch: int | None = None
    best_val_loss: float | None = None
    stopper: dict | None = None  # EarlyStopping.state_dict() after ``epoch``
    stopped_early: bool = False

    def improve(self, epoch: int, logs: dict) -> bool:
        """Record an epoch's logs; True when its validation loss is the best so far."""
        for key, value in logs.items():
            self.history.setdefault(key, []).append(value)
        self.epoch = epoch + 1
        improved = "val_loss" in logs and (self.best_val_loss is None or logs["val_loss"] < self.best_val_loss)
        if improved:
            self.best_epoch, self.best_val_loss = epoch + 1, logs["val_loss"]
        return improved

    def to_extra(self) -> np.ndarray:
        fields = dataclasses.asdict(self)
        return np.array(json.dumps({"args": fields.pop("settings"), **fields}))

    @classmethod
    def from_extra(cls, value, names) -> "RunRecord":
        """The record in a checkpoint's ``run`` extra; ValueError when it is not one, or lacks a setting
        of ``names`` (the run settings of this gpunn)."""
        try:
            stored = json.loads(str(value))
            settings, epoch, history = stored["args"], stored["epoch"], stored["history"]
            for later in ("class_weight", "validation_data", "test_data", "impute", "stream"):  # options newer than a run
                if isinstance(settings, dict) and later in names:
                    settings.setdefault(later, None)
            stopper = stored.get("stopper")
            if isinstance(stopper, list):  # gpunn 0.1's form: [best, best_epoch, wait]
                stopper = dict(zip(("best", "best_epoch", "wait"), stopper), stopped_epoch=None)
            record = cls(settings=settings, planned_epochs=stored.get("planned_epochs", settings.get("epochs")),
                         epoch=epoch, history=history, best_epoch=stored.get("best_epoch"),
                         best_val_loss=stored.get("best_val_loss"), stopper=stopper,
                         stopped_early=bool(stored.get("stopped_early", False)))
        except (ValueError, TypeError, KeyError, AttributeError) as error:
            raise ValueError(f"not a run record ({error})") from None
        sound = (isinstance(settings, dict) and set(names) <= set(settings) and isinstance(epoch, int)
                 and not isinstance(epoch, bool) and epoch >= 0 and isinstance(history, dict)
                 and (stopper is None or isinstance(stopper, dict)))
        if not sound:
            raise ValueError("the run record lacks a setting or holds values of the wrong kind")
        return record
