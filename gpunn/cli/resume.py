"""``gpunn train --resume RUN_DIR``: the run's own settings from its ``last.npz``, and the refusals
that keep a resume exact (a finished run, options that would be ignored, data that changed)."""

from __future__ import annotations

import json
import os

import numpy as np

from gpunn.cli.options import UserError
from gpunn.cli.parser import build_parser
from gpunn.cli.run import setting_as_used

#: The settings a resumed run takes from its checkpoint rather than from the command line.
RUN_SETTINGS = ("data", "label", "task", "hidden", "activation", "dropout", "layer_norm", "residual", "loss", "batch_size",
                "optimizer", "lr", "momentum", "weight_decay", "schedule", "warmup_steps", "max_grad_norm", "dtype",
                "seed", "test_fraction", "validation_fraction", "early_stopping", "epochs")


def resume_settings(args) -> dict:
    """Take the run's settings from RUN_DIR/last.npz, refusing a finished run; returns what the
    run stored."""
    import gpunn as gn

    path = os.path.join(args.resume, "last.npz")
    if not os.path.isfile(path):
        raise UserError(f"gpunn train: --resume {args.resume}: no last.npz there (is it a gpunn train --out folder?)")
    extras = gn.load(path, backend="numpy").extras
    if "run" not in extras:
        raise UserError(f"gpunn train: --resume {args.resume}: last.npz holds no run settings "
                        "(written by an older gpunn?)")
    try:  # a file that is not ours or was edited: one line, not a traceback
        run = json.loads(str(extras["run"]))
        sound = (set(RUN_SETTINGS) <= set(run["args"]) and isinstance(run["epoch"], int)
                 and isinstance(run["history"], dict))
    except (ValueError, TypeError, KeyError):
        sound = False
    if not sound:
        raise UserError(f"gpunn train: --resume {args.resume}: the run record in last.npz is damaged")
    refuse_conflicting_options(args, run["args"])
    epochs = args.epochs
    for name in RUN_SETTINGS:
        setattr(args, name, run["args"][name])
    planned = run.get("planned_epochs", args.epochs)  # the epochs the schedule was made for
    if epochs is not None and epochs > planned and args.schedule != "constant":
        raise UserError(f"gpunn train: --resume: the run's {args.schedule} schedule was planned over {planned} "
                        f"epochs and does not continue as planned past them. Resume up to --epochs {planned}, or "
                        "start a new run (the schedule is planned over the whole run)")
    if epochs is not None:
        args.epochs = epochs
    args.out = args.resume
    if run.get("stopped_early"):
        patience = args.early_stopping
        raise UserError(f"gpunn train: --resume: the run stopped early after epoch {run['epoch']} (no better "
                        f"validation loss for {patience} epoch{'' if patience == 1 else 's'}); it is finished")
    if args.epochs is not None and args.epochs <= run["epoch"]:
        raise UserError(f"gpunn train: --resume: the run already trained {run['epoch']} epochs; pass "
                        f"--epochs above {run['epoch']} to continue it")
    return run


def refuse_conflicting_options(args, stored: dict) -> None:
    """A resumed run keeps its stored settings; an option given with another value (told apart
    from the option's default) would be ignored silently, so it is refused. The run's own value,
    spelt out (``--lr 0.002`` for a run that took Adam's default rate), is no conflict."""
    defaults = vars(build_parser().parse_args(["train"]))
    for name in RUN_SETTINGS:
        value, used = getattr(args, name), setting_as_used(name, stored)
        if name != "epochs" and value not in (defaults[name], stored[name], used):
            option = "--" + name.replace("_", "-")
            raise UserError(f"gpunn train: --resume {args.resume} continues the run with its own settings, but "
                            f"{option} {value} differs from the run's {used}; drop {option}, or start a "
                            "new run with another --out")


def refuse_changed_data(args, checkpoint, model) -> None:
    """The scaler and classes come from the data again on resume: they must be the run's."""
    changed = [name for name, value in checkpoint.extras().items()
               if name not in model.extras or not np.array_equal(model.extras[name], value)]
    if changed:
        raise UserError(f"gpunn train: --resume {args.resume}: the data is not the run's any more (its "
                        f"{', '.join(changed)} changed); resume with the run's data, or start a new run")
