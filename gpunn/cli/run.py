"""A ``gpunn train`` run as data: its settings as the run uses them."""

from __future__ import annotations

import inspect

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
