"""One family of argument validators: numbers, intervals, counts, seeds, flags and batch sizes.

Layers, optimizers, schedules, fit and the callbacks check their arguments here, so each rule and
its message are written once. As in torch.optim, a value of the wrong type is a ``TypeError`` and a
value of the right type out of range a ``ValueError``; NumPy scalars count as numbers (a rate computed
with NumPy is a number too), booleans do not. Every message names the owner, the argument, what is
expected and what was given.
"""

from __future__ import annotations

import math
import numbers


def real(owner: str, name: str, value) -> float:
    """``value`` as a float: any real number, NumPy's included, but not a bool or a string."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{owner}: {name} must be a number, got {type(value).__name__} {value!r}")
    return float(value)


def _interval(low: float, high: float, low_open: bool, high_open: bool) -> str:
    closing = ")" if high_open or high == math.inf else "]"
    opening = "(" if low_open or low == -math.inf else "["
    return f"{opening}{low:g}, {high:g}{closing}"


def number(owner: str, name: str, value, low: float = -math.inf, high: float = math.inf,
           low_open: bool = False, high_open: bool = False) -> float:
    """A finite real number in the interval from ``low`` to ``high`` (each end closed unless ``*_open``)."""
    result = real(owner, name, value)
    inside = (math.isfinite(result) and (result > low if low_open else result >= low)
              and (result < high if high_open else result <= high))
    if not inside:
        where = "be a finite number" if (low, high) == (-math.inf, math.inf) else \
            f"lie in {_interval(low, high, low_open, high_open)} (a finite number)"
        raise ValueError(f"{owner}: {name} must {where}, got {value!r}")
    return result


def positive(owner: str, name: str, value) -> float:
    """A finite number above 0."""
    result = real(owner, name, value)
    if not (math.isfinite(result) and result > 0):
        raise ValueError(f"{owner}: {name} must be a positive finite number, got {value!r}")
    return result


def count(owner: str, name: str, value, minimum: int = 1) -> int:
    """An int (NumPy's too, not a bool) of at least ``minimum``."""
    wanted = f"an int >= {minimum}"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{owner}: {name} must be {wanted}, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{owner}: {name} must be {wanted}, got {value!r}")
    return int(value)


def flag(owner: str, name: str, value) -> bool:
    """True or False (NumPy's bool too): a string such as "False" would read as true."""
    numpy_bool = getattr(value, "dtype", None) is not None and value.dtype.kind == "b" and value.ndim == 0
    if not isinstance(value, bool) and not numpy_bool:
        raise TypeError(f"{owner}: {name} must be True or False, got {type(value).__name__} {value!r}")
    return bool(value)


def seed(owner: str, value, name: str = "seed", below: int | None = None) -> int | None:
    """None (fresh entropy) or an int >= 0 (and below ``below`` where the generator needs it).

    Seeds are refused with ``ValueError`` whatever is wrong with them: a seed is an identity, not a
    quantity, and ``seed=1.5`` is as wrong as ``seed=-1``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0 or (
            below is not None and value >= below):
        limit = f" below {below:#x}" if below is not None else ""
        raise ValueError(f"{owner}: {name} must be None, an int >= 0{limit}, got {value!r}")
    return int(value)


def batch_size(owner: str, value) -> int | None:
    """None (every row at once) or an int >= 1: a negative size would silently skip every row."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1):
        raise ValueError(f"{owner}: batch_size must be a positive int or None, got {value!r}")
    return None if value is None else int(value)
