"""``gpunn.schedules``, kept importable for code written before schedules moved to ``gpunn.optim.schedules``."""

from gpunn.optim.schedules import Constant, CosineDecay, ExponentialDecay, OneCycle, Schedule, StepDecay, as_schedule

__all__ = ["Constant", "CosineDecay", "ExponentialDecay", "OneCycle", "Schedule", "StepDecay", "as_schedule"]
