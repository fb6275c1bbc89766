"""Layers and the Sequential model: the maths of the seeds, written against the backend.

A layer's ``forward`` saves what its ``backward`` needs; ``backward`` fills the parameters'
gradients and returns the gradient of its input. Updating the parameters is the optimizer's
job, never backward's. Outputs live in per-layer buffers that are reused from one call to
the next, so the layers allocate nothing once the batch shape is known; the loss heads' small
temporaries come from the array library's allocator (on CuPy, cached blocks of its memory pool).
"""

from __future__ import annotations

import math

from gpunn import checks
from gpunn.backends.selection import Backend, get_backend
from gpunn.kernels.activations import IDENTITY, activation_function

LAYER_TYPES: dict = {}
"""Every layer class by name: how ``load`` turns a saved record back into a layer."""


def register_layer(cls):
    """Class decorator: make ``cls`` loadable by its name."""
    LAYER_TYPES[cls.__name__] = cls
    return cls


def layer_record(layer) -> dict:
    """A layer's type and config; a residual block's branch nests as its "layers"."""
    record = {"type": type(layer).__name__, **layer.config()}
    if layer.sublayers():
        record["layers"] = [layer_record(inner) for inner in layer.sublayers()]
    return record


def build_layer(record: dict, dtype):
    """A layer from its metadata record (``type``, its ``config()`` and a residual block's nested
    ``layers``), parameters not yet filled: ``load`` then fills each from the file. Layer types
    come from the registry ``LAYER_TYPES`` (``@register_layer``)."""
    if not isinstance(record, dict) or not isinstance(record.get("type"), str):
        raise ValueError("a layer record must be an object with a 'type'")
    cls = LAYER_TYPES.get(record["type"])
    if cls is None:
        raise LookupError(f"unknown layer type {record['type'][:50]!r}")
    nested = record.get("layers", [])
    if not isinstance(nested, list):
        raise ValueError("'layers' of a layer record must be a list")
    config = {key: value for key, value in record.items() if key not in ("type", "layers")}
    return cls.from_config(config, dtype, [build_layer(inner, dtype) for inner in nested])


class Parameter:
    """A trainable array and its gradient; ``grad_valid`` is False until a backward writes it.

    Inside a model both arrays are views into the model's flat buffers (``gpunn.nn.flat``), so one
    fused update and one all-reduce cover every parameter. Writing into ``value`` in place works
    as usual; assigning a new array copies it into the same storage (after checking its shape), so
    training always sees what was assigned. The same holds for ``grad`` inside a model: an assigned
    gradient is copied into the flat gradient buffer and counts as fresh (as torch's ``p.grad = g``
    is used by the next step), and ``grad = None`` marks it stale.
    """

    def __init__(self, value, name: str, backend: Backend):
        self._value = value
        self.backend = backend
        self._grad = None
        self.grad_valid = False
        self.name = name
        #: The FlatBuffers holding this parameter once a model packs it, else None.
        self.owner = None

    @property
    def value(self):
        return self._value

    @value.setter
    def value(self, array):
        self._copy_into(self._value, array, "an array")

    @property
    def grad(self):
        return self._grad

    @grad.setter
    def grad(self, array):
        if self.owner is None:  # not packed yet: nothing else holds the gradient
            self._grad = array
        elif array is None:
            self.grad_valid = False
        else:
            self._copy_into(self._grad, array, "a gradient")
            self.grad_valid = True

    def _copy_into(self, target, array, what: str) -> None:
        """Copy ``array`` into ``target`` in place (a view of the flat buffer stays that view)."""
        try:
            converted = self.backend.asarray(array, target.dtype)
        except (TypeError, ValueError) as error:
            raise type(error)(f"Parameter {self.name}: cannot assign {what} that cannot be read as a {target.dtype} "
                              f"array: {error}") from None
        if tuple(converted.shape) != tuple(target.shape):
            raise ValueError(f"Parameter {self.name}: cannot assign {what} of shape {tuple(converted.shape)} "
                             f"to a parameter of shape {tuple(target.shape)}")
        target[...] = converted

    @property
    def shape(self):
        return self._value.shape

    @property
    def size(self) -> int:
        return int(self._value.size)

    def accept_gradient(self, compute):
        """Store ``compute(out)``: written straight into the buffer, or added when zero_grad was skipped."""
        backend = self.backend
        if self._grad is None:
            self._grad = backend.zeros(self._value.shape, self._value.dtype)
        if self.grad_valid:  # accumulate, as with several backward calls between steps
            self._grad += compute(None)
        else:
            compute(self._grad)
            self.grad_valid = True

    def __repr__(self) -> str:
        return f"Parameter({self.name}, shape={tuple(self.shape)}, dtype={self._value.dtype})"


class ParameterAttribute:
    """A layer attribute holding a Parameter (``weight = ParameterAttribute()`` in the class body).

    ``layer.weight = array`` copies the array into the parameter, so its flat-buffer view stays
    what the model and its optimizer train; swapping in another Parameter once a model holds this
    one is refused, since the model and optimizer would go on training the old one. Reads go
    straight to the instance (no ``__get__``), so the layers' hot paths pay nothing."""

    def __set_name__(self, owner, name):
        self.name = name

    def __set__(self, layer, value):
        held = layer.__dict__.get(self.name)
        if held is not None and value is not held:
            if not isinstance(value, Parameter):
                held.value = value
                return
            if held.owner is not None:
                raise ValueError(f"{type(layer).__name__}.{self.name}: cannot replace a Parameter that a model "
                                 f"holds (its flat buffers and optimizer would keep the old one); assign its "
                                 f"array instead: layer.{self.name} = new.value")
        layer.__dict__[self.name] = value


class LayerState:
    """What a layer keeps from its forward for its backward (its input ``x``, output ``y``, what the
    activation's backward reads ``saved``, the kept pre-dropout values ``kept``, the dropout ``mask``,
    LayerNorm's ``mean`` and ``rstd``), and the workspace arrays it reuses across calls.

    A model owns two for each of its layers, one for training and one for ``predict``, and points the
    layer at one or the other: a predict between forward and backward leaves backward's state alone.
    """

    def __init__(self):
        self.buffers: dict = {}
        self.x = self.y = self.saved = self.kept = self.mask = self.mean = self.rstd = None

    def buffer(self, name: str, shape, backend: Backend, dtype):
        """A workspace array reused across calls while shape and dtype stay the same."""
        held = self.buffers.get(name)
        if held is None or held.shape != tuple(shape) or held.dtype != dtype:
            held = backend.empty(shape, dtype)
            self.buffers[name] = held
        return held


class Layer:
    """Base of every layer. Subclasses set ``backend`` and ``dtype`` when they hold arrays.

    ``in_features``/``out_features`` are None for layers that keep any width (activations,
    dropout); ``training`` is switched by the model's ``train()``/``eval()``.
    """

    backend: Backend | None = None
    dtype = None
    in_features: int | None = None
    out_features: int | None = None

    def __init__(self):
        self.state = LayerState()
        self.training = True

    def parameters(self) -> list[Parameter]:
        return []

    def named_parameters(self, prefix: str) -> list[tuple[str, Parameter]]:
        """(``prefix.name``, parameter) pairs, in the order of ``parameters()``."""
        return [(f"{prefix}.{parameter.name}", parameter) for parameter in self.parameters()]

    def sublayers(self) -> tuple:
        """The layers this one holds (a residual block's branch); none for a plain layer."""
        return ()

    def config(self) -> dict:
        """The constructor arguments (without arrays) that rebuild this layer."""
        return {}

    @classmethod
    def from_config(cls, config: dict, dtype, sublayers: list):
        """The layer a saved ``config`` describes (its arrays are copied in by ``load``)."""
        return cls(**config)

    def backward(self, dy, input_gradient: bool = True):
        raise NotImplementedError

    def _buffer(self, name: str, shape, backend: Backend, dtype):
        return self.state.buffer(name, shape, backend, dtype)

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


@register_layer
class Dense(Layer):
    """``Y = X·W + b`` with W of shape (in_features, out_features).

    xavier/glorot suits sigmoid and tanh, he suits relu; biases start at zero. ``weight=`` and
    ``bias=`` take arrays for hand-set networks such as the seeds' worked examples.
    """

    def __init__(self, in_features: int, out_features: int, weight=None, bias=None,
                 init: str = "xavier", dtype="float32", seed=None):
        super().__init__()
        in_features = checks.count("Dense", "in_features", in_features)
        out_features = checks.count("Dense", "out_features", out_features)
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


class Activation(Layer):
    """An elementwise nonlinearity from the activation registry (gpunn/kernels/activations.py).

    After a Dense it fuses into the Dense's pass; alone it keeps what its backward reads: its
    output (sigmoid, tanh, relu) or its input (the others).
    """

    activation = "identity"

    def __init__(self, **parameters):
        super().__init__()
        self.function = activation_function(self.activation, **parameters)

    def forward(self, x):
        backend = self.backend = get_backend() if self.backend is None else self.backend
        y = self._buffer("y", x.shape, backend, x.dtype)
        backend.bias_activation(x, 0, self.function, out=y)
        self.state.saved = x if self.function.reads_input else y
        return y

    def backward(self, dy, input_gradient: bool = True):
        backend = self.backend
        dx = self._buffer("dx", dy.shape, backend, dy.dtype)
        return backend.activation_backward(dy, self.state.saved, self.function, out=dx)


@register_layer
class Sigmoid(Activation):
    activation = "sigmoid"


@register_layer
class Tanh(Activation):
    activation = "tanh"


@register_layer
class ReLU(Activation):
    activation = "relu"


@register_layer
class Identity(Activation):
    activation = "identity"


@register_layer
class GELU(Activation):
    """x·Φ(x), exactly with erf (``approximate="none"``) or with torch's tanh approximation."""

    def __init__(self, approximate: str = "none"):
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU: approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate
        self.activation = "gelu" if approximate == "none" else "gelu_tanh"
        super().__init__()

    def config(self) -> dict:
        return {"approximate": self.approximate}


@register_layer
class SiLU(Activation):
    """x·σ(x) (also called swish)."""

    activation = "silu"


@register_layer
class LeakyReLU(Activation):
    """x for x > 0, ``negative_slope``·x otherwise."""

    activation = "leaky_relu"

    def __init__(self, negative_slope: float = 0.01):
        super().__init__(negative_slope=negative_slope)
        self.negative_slope = negative_slope

    def config(self) -> dict:
        return {"negative_slope": self.negative_slope}


@register_layer
class Softplus(Activation):
    """log(1 + exp(β·x))/β, and x itself where β·x exceeds ``threshold`` (torch's definition)."""

    activation = "softplus"

    def __init__(self, beta: float = 1.0, threshold: float = 20.0):
        super().__init__(beta=beta, threshold=threshold)
        if beta == 0:
            raise ValueError("Softplus: beta must not be 0")
        self.beta, self.threshold = beta, threshold

    def config(self) -> dict:
        return {"beta": self.beta, "threshold": self.threshold}


ACTIVATION_LAYERS = {cls.activation: cls for cls in (Sigmoid, Tanh, ReLU, Identity, SiLU, LeakyReLU, Softplus)}
ACTIVATION_LAYERS.update(gelu=GELU, gelu_tanh=lambda: GELU(approximate="tanh"))
