"""Layers and the Sequential model: the maths of the seeds, written against the backend.

A layer's ``forward`` saves what its ``backward`` needs; ``backward`` fills the parameters'
gradients and returns the gradient of its input. Updating the parameters is the optimizer's
job, never backward's. Outputs live in per-layer buffers that are reused from one call to
the next, so a training step allocates nothing once the batch shape is known.
"""

from __future__ import annotations

import math

from .backends import Backend, get_backend


class Parameter:
    """A trainable array and its gradient; ``grad_valid`` is False until a backward writes it."""

    def __init__(self, value, name: str, backend: Backend):
        self.value = value
        self.backend = backend
        self.grad = None
        self.grad_valid = False
        self.name = name

    @property
    def shape(self):
        return self.value.shape

    def accept_gradient(self, compute):
        """Store ``compute(out)``: written straight into the buffer, or added when zero_grad was skipped."""
        backend = self.backend
        if self.grad is None:
            self.grad = backend.empty(self.value.shape, self.value.dtype)
        if self.grad_valid:  # accumulate, as with several backward calls between steps
            self.grad += compute(None)
        else:
            compute(self.grad)
            self.grad_valid = True


class Layer:
    """Base of every layer. Subclasses set ``backend`` and ``dtype`` when they hold arrays."""

    backend: Backend | None = None
    dtype = None

    def __init__(self):
        self._buffers: dict = {}

    def parameters(self) -> list[Parameter]:
        return []

    def config(self) -> dict:
        """The constructor arguments (without arrays) that rebuild this layer."""
        return {}

    def _buffer(self, name: str, shape, backend: Backend, dtype):
        """A workspace array reused across calls while shape and dtype stay the same."""
        held = self._buffers.get(name)
        if held is None or held.shape != tuple(shape) or held.dtype != dtype:
            held = backend.empty(shape, dtype)
            self._buffers[name] = held
        return held

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"


def _initial_weight(init: str, in_features: int, out_features: int, generator, dtype):
    if init in ("xavier", "glorot"):
        limit = math.sqrt(6.0 / (in_features + out_features))
        return generator.uniform((in_features, out_features), -limit, limit, dtype)
    if init == "he":
        return generator.normal((in_features, out_features), math.sqrt(2.0 / in_features), dtype)
    raise ValueError(f"init: unknown initializer {init!r}; expected 'xavier', 'glorot' or 'he'")


class Dense(Layer):
    """``Y = X·W + b`` with W of shape (in_features, out_features).

    xavier/glorot suits sigmoid and tanh, he suits relu; biases start at zero. ``weight=`` and
    ``bias=`` take arrays for hand-set networks such as the seeds' worked examples.
    """

    def __init__(self, in_features: int, out_features: int, weight=None, bias=None,
                 init: str = "xavier", dtype="float32", seed=None):
        super().__init__()
        for argument, value in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"Dense: {argument} must be a positive int, got {value!r}")
        self.backend = backend = get_backend()
        self.dtype = backend.check_dtype(dtype)
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
        self._x = self._y = None

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

    W = property(lambda self: self.weight.value, doc="The weight matrix (in_features, out_features).")
    b = property(lambda self: self.bias.value, doc="The bias vector (out_features,).")
    dW = property(lambda self: self.weight.grad, doc="dL/dW after backward.")
    db = property(lambda self: self.bias.grad, doc="dL/db after backward.")

    def parameters(self) -> list[Parameter]:
        return [self.weight, self.bias]

    def config(self) -> dict:
        return {"in_features": self.in_features, "out_features": self.out_features, "init": self.init}

    def forward(self, x, activation: str = "identity"):
        """``f(X·W + b)``; with an activation, the bias add and f run as one fused pass."""
        backend = self.backend
        y = self._buffer("y", (x.shape[0], self.out_features), backend, self.dtype)
        backend.matmul(x, self.weight.value, out=y)
        backend.bias_activation(y, self.bias.value, activation, out=y)
        self._x, self._y = x, y
        return y

    def backward(self, dy, activation: str = "identity", input_gradient: bool = True):
        """Fill dW and db from dL/dY; return dL/dX (None when ``input_gradient`` is False)."""
        if self._x is None:
            raise RuntimeError("Dense.backward called before forward")
        backend = self.backend
        dz = dy
        if activation != "identity":
            dz = backend.activation_backward(dy, self._y, activation,
                                             out=self._buffer("dz", dy.shape, backend, self.dtype))
        x = self._x
        self.weight.accept_gradient(lambda out: backend.matmul_tn(x, dz, out=out))
        self.bias.accept_gradient(lambda out: backend.bias_gradient(dz, out=out))
        if not input_gradient:
            return None
        dx = self._buffer("dx", x.shape, backend, self.dtype)
        return backend.matmul_nt(dz, self.weight.value, out=dx)


class Activation(Layer):
    """An elementwise nonlinearity; backward uses the saved output (σ' = y(1−y), tanh' = 1−y²)."""

    activation = "identity"

    def forward(self, x):
        backend = self.backend = get_backend() if self.backend is None else self.backend
        y = self._buffer("y", x.shape, backend, x.dtype)
        self._y = backend.bias_activation(x, 0, self.activation, out=y)
        return self._y

    def backward(self, dy, input_gradient: bool = True):
        backend = self.backend
        dx = self._buffer("dx", dy.shape, backend, dy.dtype)
        return backend.activation_backward(dy, self._y, self.activation, out=dx)


class Sigmoid(Activation):
    activation = "sigmoid"


class Tanh(Activation):
    activation = "tanh"


class ReLU(Activation):
    activation = "relu"


class Identity(Activation):
    activation = "identity"


ACTIVATION_LAYERS = {cls.activation: cls for cls in (Sigmoid, Tanh, ReLU, Identity)}
