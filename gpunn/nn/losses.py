"""Losses: ``loss(y, t)`` gives a Python float and saves what ``backward()`` needs.

``forward`` returns the loss as a 0-d array on the device instead, so a training loop can
sum losses without waiting for the device after every batch. ``sample_weight`` weighs each row
as Keras 3 does: the loss is Σ wᵢ·lᵢ over the batch divided by the batch's rows, lᵢ being row i's
loss (the mean over its outputs for MSE and BCE), and the gradient is weighted alike.
"""

from __future__ import annotations

import math

from gpunn import checks
from gpunn.backends.selection import backend_of


class Loss:
    """Base class: subclasses implement ``_forward`` and ``_backward``."""

    #: True when the loss takes logits (so a metric thresholds outputs at 0, not 0.5).
    takes_logits = False

    def __init__(self):
        self._saved = None

    def __call__(self, y, t, sample_weight=None) -> float:
        value = float(self.forward(y, t, sample_weight))
        if not math.isfinite(value):
            raise FloatingPointError(f"{type(self).__name__} is {value}: the outputs or targets hold "
                                     "NaN/Inf, or training diverged (lower the learning rate)")
        return value

    def forward(self, y, t, sample_weight=None):
        """The loss as a 0-d device array; ``t`` (and ``sample_weight``, one weight >= 0 per row) is
        checked against ``y`` and moved beside it."""
        backend = backend_of(y)
        if not backend.is_array(y):
            raise TypeError(f"{type(self).__name__}: outputs must be a {backend.name} array (a model's "
                            f"forward output), got {type(y).__name__}")
        if y.dtype.kind != "f":
            raise TypeError(f"{type(self).__name__}: outputs must be floating point, got dtype {y.dtype} "
                            "(targets would be cast to it and truncated)")
        if y.ndim != 2 or y.shape[0] == 0 or y.shape[1] == 0:
            raise ValueError(f"{type(self).__name__}: outputs must be 2-D (batch, outputs) with at least "
                             f"one row and one column, got shape {tuple(y.shape)}")
        t = self.prepare_targets(backend, t, y.shape, y.dtype)
        weights = None if sample_weight is None else prepare_weights(backend, sample_weight, y.shape[0], y.dtype,
                                                                      type(self).__name__)
        return self._forward(backend, y, t, *([] if weights is None else [weights]))  # a subclass may take none

    def forget(self) -> None:
        """Let go of what the last forward saved for backward (a recorded graph's buffers, which
        would otherwise keep its memory pool's blocks after the graph is dropped)."""
        self._saved = None

    def backward(self, loss_scale=None):
        """dL/dy for the last forward, averaged over the batch as the loss is.

        ``loss_scale`` (a 1-element device array, from the optimizer of a float16 model) multiplies
        the gradient inside the same pass, in the compute dtype, so the mean's small factor never
        rounds to zero in float16.
        """
        if self._saved is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before the loss was computed")
        return self._backward(loss_scale)

    def prepare_targets(self, backend, t, output_shape, dtype):
        """Targets of the outputs' shape and dtype; (batch,) is accepted for one output."""
        t = backend.asarray(t, dtype)  # converts device arrays without a copy; refuses complex
        if t.ndim == 1 and output_shape[1] == 1:
            t = t.reshape(-1, 1)
        if tuple(t.shape) != tuple(output_shape):
            raise ValueError(f"{type(self).__name__}: targets have shape {tuple(t.shape)} but the "
                             f"outputs have shape {tuple(output_shape)}")
        return t

    def config(self) -> dict:
        return {}


def weight_dtype(dtype) -> str:
    """Weights are kept in the compute dtype: float32 for float16 models."""
    return "float32" if getattr(dtype, "name", dtype) == "float16" else getattr(dtype, "name", dtype)


def prepare_weights(backend, sample_weight, rows: int, dtype, owner: str = "fit"):
    """One finite weight >= 0 per row, as a device vector in the compute dtype."""
    if isinstance(sample_weight, (str, bytes)) or not hasattr(sample_weight, "__len__"):
        raise TypeError(f"{owner}: sample_weight must be an array of one weight per row, got "
                        f"{type(sample_weight).__name__} {sample_weight!r:.40}")
    weights = backend.asarray(sample_weight, weight_dtype(dtype))
    if weights.ndim == 2 and weights.shape[1] == 1:
        weights = weights.reshape(-1)
    if weights.ndim != 1 or weights.shape[0] != rows:
        raise ValueError(f"{owner}: sample_weight must hold one weight per row, shape ({rows},), got "
                         f"shape {tuple(weights.shape)}")
    if not bool(backend.xp.isfinite(weights).all()) or (rows and float(weights.min()) < 0):
        raise ValueError(f"{owner}: sample_weight must be finite and >= 0 (a row's weight multiplies its loss)")
    return weights


def _computed(array):
    """float16 storage computes in float32 (a float16 square or sum overflows at 65504)."""
    return array.astype("float32") if array.dtype.name == "float16" else array


def _weighted_mean(row_losses, weights):
    """Keras 3's sum_over_batch_size: Σ wᵢ·lᵢ / rows."""
    return (row_losses * weights).sum() / row_losses.shape[0]


def _weighted_gradient(grad, weights):
    """Each row's gradient times its weight (the weighted loss is linear in the rows' losses)."""
    if weights is not None:
        grad *= weights.reshape(-1, 1).astype(grad.dtype, copy=False)
    return grad


class MSELoss(Loss):
    """Mean squared error over all elements, as the seeds define it."""

    def _forward(self, backend, y, t, weights=None):
        self._saved = (backend, y, t, weights)
        difference = _computed(y) - _computed(t)
        if weights is None:
            return (difference * difference).mean()
        return _weighted_mean((difference * difference).mean(axis=1), weights)

    def _backward(self, loss_scale):
        backend, y, t, weights = self._saved
        return _weighted_gradient(backend.mse_grad(y, t, 2.0 / y.size, loss_scale), weights)


DEFAULT_BCE_EPS = {2: 1e-3, 4: 1e-7, 8: 1e-12}  # by itemsize: 1 - eps stays below 1 in each dtype


class _BinaryTargets(Loss):
    """Binary cross-entropy needs targets in [0, 1]: outside it the loss goes negative."""

    def prepare_targets(self, backend, t, output_shape, dtype):
        t = super().prepare_targets(backend, t, output_shape, dtype)
        if not bool(((t >= 0) & (t <= 1)).all()):
            raise ValueError(f"{type(self).__name__}: targets must lie in [0, 1] (probabilities or 0/1 "
                             f"labels), got {float(t.min()):g}..{float(t.max()):g}")
        return t


class BCELoss(_BinaryTargets):
    """Binary cross-entropy on probabilities, clipped to [eps, 1 − eps] so logs stay finite.

    ``eps`` defaults to 1e-3 (float16), 1e-7 (float32) or 1e-12 (float64); it must lie in (0, 0.1] and be large
    enough that 1 − eps differs from 1 in the outputs' dtype.
    """

    def __init__(self, eps: float | None = None):
        super().__init__()
        self.eps = None if eps is None else checks.number("BCELoss", "eps", eps, low=0.0,
                                                           high=0.1, low_open=True)

    def _forward(self, backend, y, t, weights=None):
        xp = backend.xp
        y_computed, t = _computed(y), _computed(t)
        eps = self.eps if self.eps is not None else DEFAULT_BCE_EPS[y.dtype.itemsize]
        if float(y_computed.dtype.type(1) - y_computed.dtype.type(eps)) == 1.0:
            raise ValueError(f"BCELoss: eps={eps:g} vanishes next to 1 in {y_computed.dtype} (1 - eps == 1, so "
                             "log(1 - p) can be -inf); use a larger eps")
        p = xp.clip(y_computed, eps, 1 - eps)
        self._saved = (y, y_computed, p, t, eps, weights)
        elements = -(t * xp.log(p) + (1 - t) * xp.log(1 - p))
        return elements.mean() if weights is None else _weighted_mean(elements.mean(axis=1), weights)

    def _backward(self, loss_scale):
        y, y_computed, p, t, eps, weights = self._saved
        inside = (y_computed > eps) & (y_computed < 1 - eps)  # the clipped function is flat outside
        factor = 1.0 / y.size
        grad = ((p - t) / (p * (1 - p))) * inside * factor
        if loss_scale is not None:
            grad *= loss_scale.astype(grad.dtype)
        return _weighted_gradient(grad, weights).astype(y.dtype, copy=False)


class BCEWithLogitsLoss(_BinaryTargets):
    """Binary cross-entropy on logits, stable for any logit; its gradient is σ(z) − y."""

    takes_logits = True

    def _forward(self, backend, z, t, weights=None):
        self._saved = (backend, z, t, weights)
        if weights is None:
            return backend.bce_with_logits_loss(z, t)
        xp, z, t = backend.xp, _computed(z), _computed(t)  # max(z,0) − z·t + log1p(exp(−|z|)), per element
        elements = xp.maximum(z, 0) - z * t + xp.log1p(xp.exp(-xp.abs(z)))
        return _weighted_mean(elements.mean(axis=1), weights)

    def _backward(self, loss_scale):
        backend, z, t, weights = self._saved
        return _weighted_gradient(backend.bce_with_logits_grad(z, t, 1.0 / z.size, loss_scale), weights)


class SoftmaxCrossEntropyLoss(Loss):
    """Softmax then cross-entropy on logits, from integer labels (batch,) or one-hot rows."""

    takes_logits = True

    def prepare_targets(self, backend, t, output_shape, dtype):
        xp = backend.xp
        t = t if backend.is_array(t) else backend.asarray(t)
        batch, classes = output_shape
        if classes == 1:  # torch trains nothing here without a word: stricter, on purpose
            raise ValueError("SoftmaxCrossEntropyLoss: the outputs have one column, whose softmax is always 1: the "
                             "loss is 0 and nothing trains. Give the last layer one output per class (2 or "
                             "more), or use BCEWithLogitsLoss for one output of two classes")
        if t.ndim == 2:
            if tuple(t.shape) != tuple(output_shape):
                raise ValueError(f"SoftmaxCrossEntropyLoss: one-hot targets have shape {tuple(t.shape)} "
                                 f"but the outputs have shape {tuple(output_shape)}")
            if not bool(((t == 0) | (t == 1)).all()) or not bool((t.sum(axis=1) == 1).all()):
                raise ValueError("SoftmaxCrossEntropyLoss: 2-D targets must be one-hot rows")
            return t.argmax(axis=1)
        if t.ndim != 1 or t.shape[0] != batch:
            raise ValueError(f"SoftmaxCrossEntropyLoss: labels must have shape ({batch},) or "
                             f"{tuple(output_shape)}, got {tuple(t.shape)}")
        if t.dtype.kind not in "iu":
            if t.dtype.kind == "f" and not bool(xp.isfinite(t).all()):
                raise ValueError("SoftmaxCrossEntropyLoss: labels contain NaN or Inf; they must be class indices")
            if t.dtype.kind != "f" or not bool((t == xp.floor(t)).all()):
                raise ValueError(f"SoftmaxCrossEntropyLoss: labels must be integers, got dtype {t.dtype}")
            if t.size and (float(t.min()) < 0 or float(t.max()) >= classes):  # before int64 wraps 1e30 around
                raise ValueError(f"SoftmaxCrossEntropyLoss: labels must lie in [0, {classes}), "
                                 f"got {float(t.min()):g}..{float(t.max()):g}")
        t = t.astype("int64", copy=False)  # a narrow type (uint8) would wrap when compared with column indices
        if t.size and (int(t.min()) < 0 or int(t.max()) >= classes):
            raise ValueError(f"SoftmaxCrossEntropyLoss: labels must lie in [0, {classes}), "
                             f"got {int(t.min())}..{int(t.max())}")
        return t

    def _forward(self, backend, z_stored, labels, weights=None):
        xp = backend.xp
        z = _computed(z_stored)
        row_max = z.max(axis=1)
        log_sum_exp = row_max + xp.log(xp.exp(z - row_max[:, None]).sum(axis=1))
        picked = xp.take_along_axis(z, labels.reshape(-1, 1), axis=1).reshape(-1)
        self._saved = (backend, z_stored, log_sum_exp, labels, weights)
        rows = log_sum_exp - picked
        return rows.mean() if weights is None else _weighted_mean(rows, weights)

    def _backward(self, loss_scale):
        backend, z, log_sum_exp, labels, weights = self._saved
        return _weighted_gradient(
            backend.softmax_cross_entropy_grad(z, log_sum_exp, labels, 1.0 / z.shape[0], loss_scale), weights)


LOSSES = {cls.__name__: cls for cls in (MSELoss, BCELoss, BCEWithLogitsLoss, SoftmaxCrossEntropyLoss)}
