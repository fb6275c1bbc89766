"""Dense: ``f(X·W + b)``, with the bias, the activation and dropout fused into one pass."""

from __future__ import annotations

import math

from gpunn import checks
from gpunn.backends.selection import get_backend
from gpunn.kernels.activations import IDENTITY
from gpunn.nn import dtype as dtype_setting
from gpunn.nn.layer import Layer, register_layer
from gpunn.nn.parameter import Parameter, ParameterAttribute


def _initial_weight(init: str, in_features: int, out_features: int, generator, dtype):
    if init in ("xavier", "glorot"):
        limit = math.sqrt(6.0 / (in_features + out_features))
        return generator.uniform((in_features, out_features), -limit, limit, dtype)
    if init == "he":
        return generator.normal((in_features, out_features), math.sqrt(2.0 / in_features), dtype)
    raise ValueError(f"init: unknown initializer {init!r}; expected 'xavier', 'glorot' or 'he'")


@register_layer
class Dense(Layer):
    """``Y = X·W + b`` with W of shape (in_features, out_features).

    xavier/glorot suits sigmoid and tanh, he suits relu; biases start at zero. ``weight=`` and
    ``bias=`` take arrays for hand-set networks such as the seeds' worked examples.
    """

    def __init__(self, in_features: int, out_features: int, weight=None, bias=None,
                 init: str = "xavier", dtype=None, seed=None):
        super().__init__()
        in_features = checks.count("Dense", "in_features", in_features)
        out_features = checks.count("Dense", "out_features", out_features)
        self.backend = backend = get_backend()
        self.dtype = backend.check_dtype(dtype_setting.resolve(dtype))
        self.in_features, self.out_features, self.init = in_features, out_features, init
        if weight is None:
            try:
                generator = backend.random_generator(seed)
            except ValueError as error:
                raise ValueError(f"Dense: {error}") from None
            weight = _initial_weight(init, in_features, out_features, generator, self.dtype)
        weight = self._own_array(weight, (in_features, out_features), "weight")
        bias = backend.zeros((out_features,), self.dtype) if bias is None else \
            self._own_array(bias, (out_features,), "bias")
        self.weight = Parameter(weight, "W", backend)
        self.bias = Parameter(bias, "b", backend)

    def _own_array(self, array, shape, argument):
        try:
            converted = self.backend.asarray(array, self.dtype)
        except (TypeError, ValueError) as error:
            raise type(error)(f"Dense: {argument} cannot be read as a {self.dtype} array: {error}") from None
        if tuple(converted.shape) != shape:
            raise ValueError(f"Dense: {argument} must have shape {shape}, got {tuple(converted.shape)}")
        if not bool(self.backend.xp.isfinite(converted).all()):
            raise ValueError(f"Dense: {argument} contains NaN or Inf (or values too large for {self.dtype})")
        return converted.copy()

    weight, bias = ParameterAttribute(), ParameterAttribute()
    # Assigning (``layer.W = a``, and ``layer.W *= 2``, which assigns the result) copies into the parameter.
    W = property(lambda self: self.weight.value, lambda self, array: setattr(self.weight, "value", array),
                 doc="The weight matrix (in_features, out_features).")
    b = property(lambda self: self.bias.value, lambda self, array: setattr(self.bias, "value", array),
                 doc="The bias vector (out_features,).")
    dW = property(lambda self: self.weight.grad, doc="dL/dW after backward.")
    db = property(lambda self: self.bias.grad, doc="dL/db after backward.")

    def parameters(self) -> list[Parameter]:
        return [self.weight, self.bias]

    def config(self) -> dict:
        return {"in_features": self.in_features, "out_features": self.out_features, "init": self.init}

    @classmethod
    def from_config(cls, config: dict, dtype, sublayers: list):
        return cls(**config, dtype=dtype)

    def forward(self, x, activation=IDENTITY, dropout=None):
        """``dropout(f(X·W + b))``; the bias add, f and dropout run as one fused pass, which also
        keeps what backward reads (the output, or the pre-activation where f needs it)."""
        backend = self.backend
        shape = (x.shape[0], self.out_features)
        y = self._buffer("y", shape, backend, self.dtype)
        mask = dropout.forward_mask() if dropout is not None else None
        kept = None
        if mask is None and not activation.reads_input:
            backend.matmul(x, self.weight.value, out=y)
            backend.bias_activation(y, self.bias.value, activation, out=y)
            saved = y
        else:
            saved = self._buffer("saved", shape, backend, self.dtype)
            if backend.keeps(activation, self.dtype):
                kept = self._buffer("kept", shape, backend, self.dtype)
            backend.matmul(x, self.weight.value, out=saved)
            backend.bias_activation(saved, self.bias.value, activation, out=y, saved=saved, dropout=mask, kept=kept)
        state = self.state
        state.x, state.y, state.saved, state.kept, state.mask = x, y, saved, kept, mask
        return y

    def backward(self, dy, activation=IDENTITY, dropout=None, input_gradient: bool = True):
        """Fill dW and db from dL/dY; return dL/dX (None when ``input_gradient`` is False)."""
        state = self.state
        if state.x is None:
            raise RuntimeError("Dense.backward called before forward")
        backend = self.backend
        dz = dy
        if activation.name != "identity" or state.mask is not None:
            dz = backend.activation_backward(dy, state.saved, activation, dropout=state.mask, kept=state.kept,
                                             out=self._buffer("dz", dy.shape, backend, self.dtype))
        x = state.x
        self.weight.accept_gradient(lambda out: backend.matmul_tn(x, dz, out=out))
        self.bias.accept_gradient(lambda out: backend.bias_gradient(dz, out=out))
        if not input_gradient:
            return None
        dx = self._buffer("dx", x.shape, backend, self.dtype)
        return backend.matmul_nt(dz, self.weight.value, out=dx)
