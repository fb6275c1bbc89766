"""The NumPy backend: the CPU reference every other backend is compared against."""

from __future__ import annotations

import numpy as np

from .base import Backend, as_activation_function
from .numpy_activations import TWINS, _sigmoid_inplace


def dropout_keep(mask, shape):
    """Which elements survive: numpy.random.Philox itself, started one block before
    (0, step, 0, 0), yields word i mod 4 of block (⌊i/4⌋, step) as its i-th raw draw, the very
    stream kernels/dropout.cuh computes per element."""
    counter = (int(mask.step[0]) << 64) - 1
    generator = np.random.Philox(key=mask.key, counter=counter % (1 << 256))
    size = int(np.prod(shape))
    return (generator.random_raw(size) >= np.uint64(mask.threshold)).reshape(shape)


def _apply_dropout(values, mask):
    """``values ⊙ keep · scale`` in place; nothing when ``mask`` is None."""
    if mask is not None and mask.threshold:
        keep = dropout_keep(mask, values.shape)
        with np.errstate(invalid="ignore"):  # a dropped ∞ becomes NaN, as in the kernel and torch
            np.multiply(values, keep, out=values)
        values *= values.dtype.type(mask.scale)
    return values


def _saturating(function):
    """Run a twin where exp over- and underflowing to ∞ and 0 are the intended limits, not events
    (and ±∞ inputs give what the kernels give, NaN where torch's formula does)."""
    def run(*arguments):
        with np.errstate(over="ignore", under="ignore", invalid="ignore"):
            return function(*arguments)

    return run


def _copy(source, out):
    if out is None:
        return source.copy()
    np.copyto(out, source)
    return out


def _foreign_array_error(x, backend_name):
    return TypeError(
        f"got a {type(x).__module__.split('.')[0]} array ({type(x).__name__}) on the "
        f"{backend_name} backend; move it with the owning backend's to_numpy() or asarray() first"
    )


class NumpyBackend(Backend):
    name = "numpy"
    host_resident = True

    @property
    def xp(self):
        return np

    def is_array(self, x) -> bool:
        return isinstance(x, np.ndarray)

    def asarray(self, x, dtype=None):
        if hasattr(x, "__cuda_array_interface__"):
            raise _foreign_array_error(x, self.name)
        return np.asarray(x, dtype=dtype)

    def to_numpy(self, x):
        if hasattr(x, "__cuda_array_interface__"):
            raise _foreign_array_error(x, self.name)
        return np.asarray(x)

    def zeros(self, shape, dtype):
        return np.zeros(shape, dtype=dtype)

    def empty(self, shape, dtype):
        return np.empty(shape, dtype=dtype)

    def synchronize(self) -> None:
        return None

    def matmul(self, a, b, out=None):
        return np.matmul(a, b, out=out)

    def matmul_nt(self, a, b, out=None):
        return np.matmul(a, b.T, out=out)

    def matmul_tn(self, a, b, out=None):
        return np.matmul(a.T, b, out=out)

    def bias_activation(self, z, bias, activation, out=None, saved=None, dropout=None):
        function = as_activation_function(activation)
        forward = _saturating(TWINS[function.name][0])
        if saved is None:
            out = np.add(z, bias, out=out)
            forward(out, *function.values)
            return _apply_dropout(out, dropout)
        np.add(z, bias, out=saved)
        if function.reads_input:
            out = _copy(saved, out)
            forward(out, *function.values)
        else:
            forward(saved, *function.values)
            out = _copy(saved, out)
        return _apply_dropout(out, dropout)

    def activation_backward(self, dy, saved, activation, out=None, dropout=None):
        function = as_activation_function(activation)
        if out is None:
            out = np.empty_like(dy)
        if function.name == "identity":
            np.copyto(out, dy)
            return _apply_dropout(out, dropout)
        # The slope is built in ``out`` when that aliases neither input, else in a temporary.
        aliased = np.may_share_memory(out, dy) or np.may_share_memory(out, saved)
        slope = _saturating(TWINS[function.name][1])(saved, np.empty_like(dy) if aliased else out, *function.values)
        np.multiply(dy, slope, out=out)
        return _apply_dropout(out, dropout)

    def layer_norm_forward(self, x, gain, bias, eps: float, out, mean, rstd):
        np.mean(x, axis=1, out=mean)
        centered = x - mean[:, None]
        variance = np.mean(np.square(centered), axis=1)
        variance += eps
        np.sqrt(variance, out=variance)
        np.divide(1, variance, out=rstd)
        np.multiply(centered, rstd[:, None], out=out)
        out *= gain
        out += bias
        return out

    def layer_norm_backward(self, dy, x, gain, mean, rstd, out=None):
        xhat = (x - mean[:, None]) * rstd[:, None]
        scaled = dy * gain
        mean_scaled = scaled.mean(axis=1, keepdims=True)
        mean_scaled_xhat = np.mean(scaled * xhat, axis=1, keepdims=True)
        xhat *= mean_scaled_xhat
        out = np.subtract(scaled, mean_scaled, out=out)
        out -= xhat
        out *= rstd[:, None]
        return out

    def layer_norm_gain_gradient(self, dy, x, mean, rstd, out=None):
        xhat = (x - mean[:, None]) * rstd[:, None]
        xhat *= dy
        return np.sum(xhat, axis=0, out=out)

    def bias_gradient(self, dz, out=None):
        return np.sum(dz, axis=0, out=out)

    def sgd_update(self, param, grad, velocity, lr: float, momentum: float) -> None:
        if velocity is None:
            param -= lr * grad
            return
        velocity *= momentum
        velocity += grad
        param -= lr * velocity

    def bce_with_logits_loss(self, z, t):
        with np.errstate(under="ignore"):
            elementwise = np.maximum(z, 0) - z * t + np.log1p(np.exp(-np.abs(z)))
        return np.asarray(elementwise.mean())

    def bce_with_logits_grad(self, z, t, scale: float, out=None):
        if out is None:
            out = z.copy()
        else:
            np.copyto(out, z)
        _sigmoid_inplace(out)
        out -= t
        out *= scale
        return out

    def softmax_cross_entropy_grad(self, z, log_sum_exp, labels, scale: float, out=None):
        out = np.subtract(z, log_sum_exp.reshape(-1, 1), out=out)
        np.exp(out, out=out)
        out[np.arange(out.shape[0]), labels] -= 1
        out *= scale
        return out

    def capture(self, step):
        raise NotImplementedError("the numpy backend cannot capture graphs: NumPy runs every step "
                                  "eagerly (use the cupy backend, or graph=False)")
