"""``gpunn train --resume RUN_DIR``: the run's own settings from its ``last.npz``, and the refusals
that keep a resume exact (a finished run, options that would be ignored, data that changed)."""

from __future__ import annotations

import os

import numpy as np

import gpunn as gn
from gpunn.cli.data import SPLIT_PARTS
from gpunn.cli.options import UserError
from gpunn.cli.run import RunRecord, setting_as_used

#: Run settings that say where the rows are, not what they are: a resume may name a file's new place
#: (the digest of its rows decides whether the data is the run's, as for any resume).
DATA_FILES = ("data", "validation_data", "test_data")


def resume_settings(args) -> RunRecord:
    """Take the run's settings from RUN_DIR/last.npz, refusing a finished run; returns its record."""
    path = os.path.join(args.resume, "last.npz")
    if not os.path.isfile(path):
        raise UserError(f"gpunn train: --resume {args.resume}: no last.npz there (is it a gpunn train --out folder?)")
    extras = gn.load(path, backend="numpy").extras
    if "run" not in extras:
        raise UserError(f"gpunn train: --resume {args.resume}: last.npz holds no run settings "
                        "(written by an older gpunn?)")
    try:  # a file that is not ours or was edited: one line, not a traceback
        record = RunRecord.from_extra(extras["run"], args.run_settings)
    except ValueError:
        raise UserError(f"gpunn train: --resume {args.resume}: the run record in last.npz is damaged") from None
    refuse_conflicting_options(args, record.settings)
    epochs = args.epochs
    for name in DATA_FILES:  # a file named now is where the run's rows are now, for this and later resumes
        if getattr(args, name, None) is not None and record.settings.get(name) is not None:
            record.settings[name] = getattr(args, name)
    for name in args.run_settings:
        setattr(args, name, record.settings[name])
    for name in DATA_FILES:
        path = getattr(args, name, None)
        if path is not None and not os.path.exists(path):
            option = "--" + name.replace("_", "-")
            raise UserError(f"gpunn train: --resume {args.resume}: the run's {option} {path} is not there any more "
                            f"(moved or deleted?); pass {option} with where it is now (its rows are checked to be "
                            "the run's)")
    planned = record.planned_epochs  # the epochs the schedule was made for
    if epochs is not None and epochs > planned and args.schedule != "constant":
        raise UserError(f"gpunn train: --resume: the run's {args.schedule} schedule was planned over {planned} "
                        f"epochs and does not continue as planned past them. Resume up to --epochs {planned}, or "
                        "start a new run (the schedule is planned over the whole run)")
    if epochs is not None:
        args.epochs = epochs
    if record.stopped_early:
        patience = args.early_stopping
        raise UserError(f"gpunn train: --resume: the run stopped early after epoch {record.epoch} (no better "
                        f"validation loss for {patience} epoch{'' if patience == 1 else 's'}); it is finished")
    if args.epochs is not None and args.epochs <= record.epoch:
        raise UserError(f"gpunn train: --resume: the run already trained {record.epoch} epochs; pass "
                        f"--epochs above {record.epoch} to continue it")
    return record


def refuse_conflicting_options(args, stored: dict) -> None:
    """A resumed run keeps its stored settings; an option given with another value (told apart
    from the option's default) would be ignored silently, so it is refused. The run's own value,
    spelt out (``--lr 0.002`` for a run that took Adam's default rate), is no conflict."""
    for name, default in args.run_settings.items():
        value, used = getattr(args, name), setting_as_used(name, stored)
        if name != "epochs" and value not in (default, stored[name], used) and \
                not (name in DATA_FILES and stored[name] is not None):
            option = "--" + name.replace("_", "-")
            raise UserError(f"gpunn train: --resume {args.resume} continues the run with its own settings, but "
                            f"{option} {value} differs from the run's {used}; drop {option}, or start a "
                            "new run with another --out")


def refuse_changed_data(args, checkpoint, model) -> None:
    """The scaler, the classes and the rows of each part come from the data again on resume: they must
    be the run's. (A run of a gpunn that stored no digest of its rows is compared by the rest.)"""
    stored = model.extras
    changed = [name for name, value in checkpoint.extras().items() if name != "data_digest"
               and (name not in stored or not np.array_equal(stored[name], value))]
    now = checkpoint.extras().get("data_digest")
    if now is not None and "data_digest" in stored:
        before = stored["data_digest"]
        if before.shape != now.shape:
            changed.append("rows")
        else:
            changed += [f"{part} rows" for part, old, new in zip(SPLIT_PARTS, before.tolist(), now.tolist())
                        if old != new]
    if changed:
        raise UserError(f"gpunn train: --resume {args.resume}: the data is not the run's any more (its "
                        f"{', '.join(changed)} changed); resume with the run's data, or start a new run")
