"""What ``Optimizer.state_dict()`` holds besides the flat state arrays: the device counters'
layout, and the checks and conversions that turn a saved config back into an optimizer."""

from __future__ import annotations

import math

from gpunn.optim.schedules import from_config

#: Dynamic loss scaling for float16 models: torch.cuda.amp.GradScaler's defaults.
INITIAL_LOSS_SCALE, GROWTH_INTERVAL = 2.0 ** 16, 2000
#: The counters in ``scalars`` (see kernels/optim.cuh gpunn_after_update).
APPLIED, ATTEMPTED, LOSS_SCALE, GOOD_STEPS, SKIPPED = range(5)


def checked_counters(where: str, steps, scalars: list) -> int:
    """The step count, checked against the device counters it must agree with (the schedule's step
    and Adam's bias correction come from them): whole counts, a positive finite loss scale."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"{where}: steps must be an int >= 0, got {steps!r}")
    counts = [scalars[i] for i in (APPLIED, ATTEMPTED, GOOD_STEPS, SKIPPED)]
    if not all(math.isfinite(c) and c >= 0 and c == int(c) for c in counts) or scalars[ATTEMPTED] != steps \
            or scalars[APPLIED] > steps or not (math.isfinite(scalars[LOSS_SCALE]) and scalars[LOSS_SCALE] > 0):
        raise ValueError(f"{where}: the counters {scalars} do not fit steps={steps} (a modified state?)")
    return steps


def checked_parameter_steps(where: str, steps: list, applied: float) -> None:
    """Each parameter's step count: a whole number, at most the updates applied to the model."""
    if not all(math.isfinite(s) and 0 <= s <= applied and s == int(s) for s in steps):
        raise ValueError(f"{where}: the per-parameter step counts {steps} must be whole numbers from 0 to the "
                         f"{applied:g} updates applied (a modified state?)")


def constructor_arguments(config: dict) -> dict:
    arguments = {k: v for k, v in config.items() if k not in ("type", "schedule", "steps", "parameter_shapes")}
    if isinstance(config.get("schedule"), dict):
        arguments["lr"] = from_config(config["schedule"])
    elif "lr" in config:
        arguments["lr"] = config["lr"]
    else:
        raise ValueError(f"the optimizer config holds no schedule, got {config.get('schedule')!r}")
    if "betas" in arguments:
        arguments["betas"] = tuple(arguments["betas"])
    return arguments


def optimizer_from_config(config: dict, classes: dict):
    """An unbound optimizer rebuilt from ``config`` (``state_dict()["config"]``)."""
    kind = config.get("type")
    if kind not in classes:
        raise ValueError(f"unknown optimizer type {kind!r}; expected one of {sorted(classes)}")
    return classes[kind](None, **constructor_arguments(config))


__all__ = ["APPLIED", "ATTEMPTED", "GOOD_STEPS", "GROWTH_INTERVAL", "INITIAL_LOSS_SCALE", "LOSS_SCALE", "SKIPPED",
           "checked_counters", "checked_parameter_steps", "constructor_arguments", "optimizer_from_config"]
