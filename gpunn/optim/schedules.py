"""Learning-rate schedules: ``schedule(step) -> lr``, where ``step`` counts the updates done before
this one (0 for the first update). A float16 step skipped for overflow counts too, as torch's loop
calls ``scheduler.step()`` after every ``scaler.step(optimizer)``.

An optimizer's ``lr=`` takes a number or a schedule. The optimizer writes the schedule's values
into a table on the device that its update kernel indexes with the step counter kept there, so a
schedule never forces a CUDA graph to be recorded again.
"""

from __future__ import annotations

import inspect
import math
import numbers

from gpunn import checks


class RateOverflow(ValueError):
    """The rate of a step lies beyond the float range (a decay schedule with gamma > 1)."""


def _decayed(owner: str, lr: float, gamma: float, exponent: int, step: int) -> float:
    """lr · gamma^exponent, or RateOverflow naming the step where it leaves the float range."""
    try:
        value = lr * gamma ** exponent
    except OverflowError:
        value = math.inf
    if not math.isfinite(value):
        raise RateOverflow(f"{owner}: the learning rate at step {step} (lr={lr} × gamma={gamma} ** {exponent}) "
                           "exceeds the float range; gamma > 1 grows the rate without bound: use gamma <= 1 or "
                           "fewer steps")
    return value


class Schedule:
    """Base class: subclasses define ``_lr(step)`` and keep their arguments as attributes."""

    #: The last step whose rate the device's table needs: a schedule that ends (OneCycle) or holds
    #: its rate from there on (CosineDecay); None where the rate keeps changing.
    last_step = None

    def __call__(self, step: int) -> float:
        return self._lr(checks.count(type(self).__name__, "step", step, minimum=0))

    def __setattr__(self, name, value) -> None:
        """A setting edited after construction is checked as the constructor checks it, and an
        optimizer the schedule is bound to uses it from its next update on."""
        if name in self.__dict__:
            settings = inspect.signature(type(self)).parameters
            if name not in settings:
                raise AttributeError(f"{type(self).__name__}.{name} cannot be set")
            value = getattr(type(self)(**{**vars(self), name: value}), name)
        elif name not in inspect.signature(type(self)).parameters:
            raise AttributeError(f"{type(self).__name__} has no setting {name!r}; its settings are "
                                 f"{', '.join(inspect.signature(type(self)).parameters)}")
        object.__setattr__(self, name, value)

    def table(self, length: int) -> list:
        """The rates of steps 0 .. length − 1 for the device's table; a rate beyond the float range
        (gamma > 1, far ahead) is stored as inf there, and the host raises before any step uses it."""
        values = []
        for step in range(length):
            try:
                values.append(self(step))
            except RateOverflow:
                values.extend([math.inf] * (length - step))
                break
        return values

    def config(self) -> dict:
        return {"type": type(self).__name__, **vars(self)}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"

    def __eq__(self, other) -> bool:
        return type(other) is type(self) and vars(other) == vars(self)


class Constant(Schedule):
    """lr(step) = lr."""

    def __init__(self, lr: float):
        self.lr = checks.positive("Constant", "lr", lr)

    def _lr(self, step):
        return self.lr


class StepDecay(Schedule):
    """lr(step) = lr · gamma^⌊step / step_size⌋ (torch's StepLR, stepped once per update)."""

    def __init__(self, lr: float, step_size: int, gamma: float = 0.1):
        self.lr = checks.positive("StepDecay", "lr", lr)
        self.step_size = checks.count("StepDecay", "step_size", step_size)
        self.gamma = checks.positive("StepDecay", "gamma", gamma)

    def _lr(self, step):
        return _decayed("StepDecay", self.lr, self.gamma, step // self.step_size, step)


class ExponentialDecay(Schedule):
    """lr(step) = lr · gamma^step (torch's ExponentialLR, stepped once per update)."""

    def __init__(self, lr: float, gamma: float):
        self.lr = checks.positive("ExponentialDecay", "lr", lr)
        self.gamma = checks.positive("ExponentialDecay", "gamma", gamma)

    def _lr(self, step):
        return _decayed("ExponentialDecay", self.lr, self.gamma, step, step)


class CosineDecay(Schedule):
    """Linear warmup, then half a cosine from ``lr`` down to ``final_lr``.

    lr(step) = lr · (step + 1) / warmup_steps while step < warmup_steps; then, with
    p = (step − warmup_steps) / (total_steps − warmup_steps) capped at 1,
    lr(step) = final_lr + (lr − final_lr) · (1 + cos(π·p)) / 2. This is torch's
    LinearLR(start_factor=1/warmup_steps, total_iters=warmup_steps − 1) followed by
    CosineAnnealingLR(T_max=total_steps − warmup_steps, eta_min=final_lr).
    """

    def __init__(self, lr: float, total_steps: int, final_lr: float = 0.0, warmup_steps: int = 0):
        self.lr = checks.positive("CosineDecay", "lr", lr)
        self.total_steps = checks.count("CosineDecay", "total_steps", total_steps)
        self.final_lr = checks.real("CosineDecay", "final_lr", final_lr)
        if not 0 <= self.final_lr <= self.lr:
            raise ValueError(f"CosineDecay: final_lr must lie in [0, lr={lr}], got {final_lr!r}")
        self.warmup_steps = checks.count("CosineDecay", "warmup_steps", warmup_steps, minimum=0)
        if self.warmup_steps >= self.total_steps:
            raise ValueError(f"CosineDecay: warmup_steps ({warmup_steps}) must be below total_steps ({total_steps})")

    @property
    def last_step(self) -> int:
        return self.total_steps  # final_lr from here on

    def _lr(self, step):
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / (self.total_steps - self.warmup_steps))
        return self.final_lr + (self.lr - self.final_lr) * (1 + math.cos(math.pi * progress)) / 2


class OneCycle(Schedule):
    """torch's OneCycleLR (cosine annealing, two phases) for the learning rate alone.

    From max_lr/div_factor up to max_lr over the first pct_start·total_steps − 1 steps, then down
    to max_lr/(div_factor·final_div_factor) at step total_steps − 1, each phase along
    end + (start − end)·(1 + cos(π·p))/2. Momentum is not cycled (torch's cycle_momentum=False).
    Step total_steps keeps the final rate (torch too allows that one update more); a later step
    is a ValueError, as torch's OneCycleLR raises: total_steps must count every update.
    """

    def __init__(self, max_lr: float, total_steps: int, pct_start: float = 0.3, div_factor: float = 25.0,
                 final_div_factor: float = 1e4):
        self.max_lr = checks.positive("OneCycle", "max_lr", max_lr)
        self.total_steps = checks.count("OneCycle", "total_steps", total_steps, minimum=2)
        self.pct_start = checks.real("OneCycle", "pct_start", pct_start)
        if not 0 < self.pct_start < 1:
            raise ValueError(f"OneCycle: pct_start must lie in (0, 1), got {pct_start!r}")
        self.div_factor = checks.positive("OneCycle", "div_factor", div_factor)
        self.final_div_factor = checks.positive("OneCycle", "final_div_factor", final_div_factor)
        if self.pct_start * self.total_steps - 1 <= 0:
            raise ValueError(f"OneCycle: pct_start·total_steps must exceed 1 (got {pct_start}·{total_steps})")

    @property
    def last_step(self) -> int:
        return self.total_steps

    def _lr(self, step):
        if step > self.total_steps:
            raise ValueError(f"OneCycle: step {step} is past the schedule's end (total_steps={self.total_steps}); make total_steps "
                             "the number of updates of the run (epochs × batches per epoch)")
        initial = self.max_lr / self.div_factor
        minimum = initial / self.final_div_factor
        peak_step = self.pct_start * self.total_steps - 1
        last_step = self.total_steps - 1
        if step <= peak_step:
            start, end, progress = initial, self.max_lr, step / peak_step
        else:
            start, end, progress = self.max_lr, minimum, min(1.0, (step - peak_step) / (last_step - peak_step))
        return end + (start - end) / 2 * (math.cos(math.pi * progress) + 1)


SCHEDULES = {cls.__name__: cls for cls in (Constant, StepDecay, ExponentialDecay, CosineDecay, OneCycle)}


def as_schedule(owner: str, lr) -> Schedule:
    """A number becomes Constant(lr); a schedule stays; anything else is a clear error."""
    if isinstance(lr, Schedule):
        return lr
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real):
        raise TypeError(f"{owner}: lr must be a positive finite number or a gpunn.schedules schedule, "
                        f"got {type(lr).__name__} {lr!r}")
    if not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"{owner}: lr must be a positive finite number or a gpunn.schedules schedule, got {lr!r}")
    return Constant(float(lr))


def from_config(config: dict) -> Schedule:
    """Rebuild a schedule from ``schedule.config()`` (as stored in a checkpoint)."""
    config = dict(config)
    kind = config.pop("type", None)
    if kind not in SCHEDULES:
        raise ValueError(f"unknown schedule type {kind!r}; expected one of {sorted(SCHEDULES)}")
    return SCHEDULES[kind](**config)
