"""Residual blocks: ``x + f(x)``, the shape that keeps deep MLPs trainable."""

from __future__ import annotations

from gpunn.nn.chain import Chain, check_layers
from gpunn.nn.layer import Layer, register_layer


@register_layer
class Residual(Layer):
    """``x + f(x)`` where ``f`` is ``layers`` in order (fused as in Sequential). The branch must
    give as many features as it takes; gradients flow through both the branch and the skip."""

    def __init__(self, *layers: Layer):
        super().__init__()
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        if not layers:
            raise ValueError("Residual: give the branch's layers, e.g. Residual(Dense(64, 64), ReLU())")
        first, width_in, width_out = check_layers(layers, "Residual")
        if width_in != width_out:
            raise ValueError(f"Residual: the branch takes {width_in} features but gives {width_out}; "
                             "x + f(x) needs the same width in and out")
        self.in_features = self.out_features = width_in
        if first is not None:
            self.backend, self.dtype = first.backend, first.dtype
        self.layers = list(layers)
        self._chain = Chain(self.layers)

    def sublayers(self) -> tuple:
        return tuple(self.layers)

    def parameters(self):
        return [parameter for layer in self.layers for parameter in layer.parameters()]

    def named_parameters(self, prefix: str):
        return [pair for index, layer in enumerate(self.layers) for pair in layer.named_parameters(f"{prefix}.{index}")]

    @classmethod
    def from_config(cls, config: dict, dtype, sublayers: list):
        return cls(*sublayers)

    def forward(self, x):
        branch = self._chain.forward(x)
        y = self._buffer("y", x.shape, self.backend, x.dtype)
        return self.backend.xp.add(x, branch, out=y)

    def backward(self, dy, input_gradient: bool = True):
        branch = self._chain.backward(dy, input_gradient=input_gradient)
        if not input_gradient:
            return None
        dx = self._buffer("dx", dy.shape, self.backend, dy.dtype)
        return self.backend.xp.add(dy, branch, out=dx)

    def __repr__(self) -> str:
        inner = ", ".join(repr(layer) for layer in self.layers)
        return f"Residual({inner})"
