"""The NumPy backend: the CPU reference every other backend is compared against."""

from __future__ import annotations

import numpy as np

from .base import Backend, check_activation, refuse_complex


def _sigmoid_inplace(x):
    """Stable logistic, exp(min(x, 0)) / (1 + exp(−|x|)): nothing overflows, ±1000 gives 0 or 1,
    both tails keep full relative precision, NaN stays NaN. The same formula as the CUDA kernel."""
    denominator = np.abs(x)
    np.negative(denominator, out=denominator)
    with np.errstate(under="ignore"):  # exp(−1000) = 0 is the right answer, not an event
        np.exp(denominator, out=denominator)
        np.minimum(x, 0, out=x)
        np.exp(x, out=x)
    denominator += 1
    return np.divide(x, denominator, out=x)


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
        refuse_complex(x, dtype)
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

    def bias_activation(self, z, bias, activation: str, out=None):
        check_activation(activation)
        out = np.add(z, bias, out=out)
        if activation == "sigmoid":
            _sigmoid_inplace(out)
        elif activation == "tanh":
            np.tanh(out, out=out)
        elif activation == "relu":
            np.maximum(out, 0, out=out)
        return out

    def activation_backward(self, dy, y, activation: str, out=None):
        check_activation(activation)
        if out is None:
            out = np.empty_like(dy)
        if activation == "identity":
            np.copyto(out, dy)
            return out
        if activation == "relu":
            return np.multiply(dy, y > 0, out=out)
        # The slope is built in ``out`` when that aliases neither input, else in a temporary.
        slope = np.empty_like(dy) if np.may_share_memory(out, dy) or np.may_share_memory(out, y) else out
        if activation == "sigmoid":
            np.subtract(1, y, out=slope)
            slope *= y
        else:  # tanh
            np.multiply(y, y, out=slope)
            np.subtract(1, slope, out=slope)
        return np.multiply(dy, slope, out=out)

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
