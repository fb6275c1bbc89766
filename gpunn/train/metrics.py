"""Metrics for fit's history and ``model.evaluate``: each sums over rows on the device, so a
training epoch accumulates them without waiting for the device after every batch."""

from __future__ import annotations


def _predicted_and_true(y, t, logits: bool):
    if y.shape[1] > 1:
        return y.argmax(axis=1), (t if t.ndim == 1 else t.argmax(axis=1))
    threshold = 0.0 if logits else 0.5
    return y[:, 0] > threshold, t.reshape(-1) > 0.5


def accuracy(y, t, logits: bool):
    """Rows whose predicted class equals the target: argmax over several outputs, and a 0.5
    probability threshold (0 for logits) for one output."""
    predicted, true = _predicted_and_true(y, t, logits)
    return (predicted == true).sum()


def mse(y, t, logits: bool):
    """Squared error summed over each row's outputs (divided by rows·outputs at the end)."""
    difference = y.astype("float64") - t.reshape(y.shape).astype("float64")
    return (difference * difference).sum() / y.shape[1]


def mae(y, t, logits: bool):
    difference = y.astype("float64") - t.reshape(y.shape).astype("float64")
    return abs(difference).sum() / y.shape[1]


METRICS = {"accuracy": accuracy, "mse": mse, "mae": mae}


def check_metrics(metrics) -> tuple[str, ...]:
    if isinstance(metrics, str):
        metrics = (metrics,)
    try:
        names = tuple(metrics)
    except TypeError:
        raise TypeError(f"metrics must be a sequence of names from {sorted(METRICS)}, got {metrics!r}") from None
    for name in names:
        if name not in METRICS:
            raise ValueError(f"unknown metric {name!r}; expected one of {sorted(METRICS)}")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:  # each metric has one history key: counted twice it would be summed twice
        raise ValueError(f"metrics lists {', '.join(map(repr, repeated))} more than once; name each metric once")
    return names


def check_metric_targets(metrics, t, outputs: int) -> None:
    """mse and mae compare each output with a target of its own; class labels (one per row for
    several outputs, as a softmax cross-entropy takes even one-hot targets) have none."""
    for name in metrics:
        if name in ("mse", "mae") and t.ndim == 1 and outputs > 1:
            raise ValueError(f"metric {name!r} compares each of the {outputs} outputs with a target, but the "
                             "loss takes the targets as class labels (one per row); use 'accuracy'")
