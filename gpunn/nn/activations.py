"""The activation layers: one registry entry each (gpunn/kernels/activations.py), fused into a
preceding Dense by the model's chain, or run alone."""

from __future__ import annotations

from gpunn.backends.selection import get_backend
from gpunn.kernels.activations import activation_function
from gpunn.nn.layer import Layer, register_layer


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
