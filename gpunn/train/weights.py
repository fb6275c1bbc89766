"""Row weights for fit and evaluate, as Keras 3 makes them: ``sample_weight`` as given, or
``class_weight`` looked up by each row's class; and sklearn's "balanced" class weights."""

from __future__ import annotations

import inspect
import math
import numbers

from gpunn.nn.losses import prepare_weights, weight_dtype


def check_class_weight(owner: str, class_weight) -> dict:
    """A dict {class index (int >= 0): weight (a finite number >= 0)}."""
    if not isinstance(class_weight, dict):
        raise TypeError(f"{owner}: class_weight must be a dict {{class index: weight}} such as {{0: 1.0, 1: 5.0}}, "
                        f"got {type(class_weight).__name__} {class_weight!r:.40}")
    checked = {}
    for key, value in class_weight.items():
        if isinstance(key, bool) or not isinstance(key, numbers.Integral) or key < 0:
            raise ValueError(f"{owner}: class_weight's keys must be class indices (ints >= 0), got {key!r}")
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{owner}: class_weight[{key}] must be a finite number >= 0, got {value!r}")
        checked[int(key)] = float(value)
    return checked


def row_classes(backend, t):
    """Each row's class as Keras reads it from prepared targets: labels as they are, several columns
    by their argmax, one column rounded."""
    xp = backend.xp
    if t.ndim == 2 and t.shape[1] > 1:
        return xp.argmax(t, axis=1)
    return xp.rint(t.reshape(-1)).astype("int64")


def fit_weights(owner: str, backend, t, dtype, sample_weight, class_weight):
    """The device vector of row weights for prepared targets ``t``, or None (every row weighs 1)."""
    if sample_weight is not None and class_weight is not None:
        raise ValueError(f"{owner}: pass sample_weight or class_weight, not both (as Keras refuses); fold the "
                         "class weights into sample_weight yourself")
    if sample_weight is not None:
        return prepare_weights(backend, sample_weight, t.shape[0], dtype, owner)
    if class_weight is None:
        return None
    class_weight = check_class_weight(owner, class_weight)
    classes = row_classes(backend, t)
    weights = backend.xp.ones((t.shape[0],), dtype=weight_dtype(dtype))
    for label, weight in class_weight.items():  # classes missing from the dict weigh 1, as in Keras
        weights[classes == label] = weight
    return weights


def balanced_class_weight(labels) -> dict:
    """sklearn's ``compute_class_weight("balanced")``: n_rows / (n_classes · rows of the class), over the
    classes present in ``labels`` (a sequence of ints)."""
    counts: dict = {}
    for label in labels:
        counts[int(label)] = counts.get(int(label), 0) + 1
    return balanced_from_counts(counts)


def balanced_from_counts(counts: dict) -> dict:
    """``balanced_class_weight`` from ``{class: rows of it}`` (``gpunn train --stream`` counts as it reads)."""
    rows = sum(counts.values())
    return {label: rows / (len(counts) * count) for label, count in sorted(counts.items())}


def check_loss_takes_weights(owner: str, loss) -> None:
    """A Loss subclass whose ``_forward(backend, y, t)`` predates weights cannot weigh rows: say so early."""
    if len(inspect.signature(loss._forward).parameters) < 4:
        raise TypeError(f"{owner}: {type(loss).__name__}._forward(backend, y, t) takes no row weights; give it a "
                        "fourth argument weights=None (see gpunn.nn.losses) to train with sample_weight or "
                        "class_weight")
