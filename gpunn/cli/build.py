"""The model and the optimizer that ``gpunn train``'s options describe."""

from __future__ import annotations

import math
import os

import numpy as np

import gpunn as gn
from gpunn.cli.options import ACTIVATION_CHOICES, OPTIMIZER_CHOICES, UserError
from gpunn.cli.run import setting_as_used
from gpunn.optim import schedules


def build_model(features: int, hidden: list[int], classes: int, activation: str, dtype: str, seed: int,
                dropout: float = 0.0, layer_norm: bool = False, residual: bool = False):
    """Dense [→ LayerNorm] → activation [→ Dropout] per hidden layer; with ``residual``, a hidden
    layer as wide as the one before it becomes x + f(x)."""

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


def _host_memory() -> float:
    """Bytes of physical memory (inf where the system does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return math.inf


def model_for(args, features: int, outputs, backend):
    """The model, refused before allocating when its weights cannot fit in memory."""
    sizes = [features, *args.hidden, outputs]
    weights = sum(a * b for a, b in zip(sizes, sizes[1:]))
    too_big = UserError(f"gpunn train: out of memory for a {'-'.join(map(str, sizes))} MLP ({weights:,} weights, "
                        f"{weights * np.dtype(args.dtype).itemsize / 2**30:,.1f} GiB each for weights, gradients "
                        "and optimizer state); use smaller --hidden sizes")
    if backend.host_resident and 4 * weights * np.dtype(args.dtype).itemsize > _host_memory():
        raise too_big  # before allocating: a failed build could take minutes and all the RAM first
    try:
        return build_model(features, args.hidden, outputs, args.activation, args.dtype, args.seed,
                           args.dropout, args.layer_norm, args.residual)
    except MemoryError:
        raise too_big from None
