"""Layers run in order, with fusion: what Sequential and a residual branch both are.

The plan fuses each Dense with the activation and the dropout right after it into the Dense's
one elementwise pass; every other layer runs on its own.
"""

from __future__ import annotations

from gpunn.nn.activations import Activation
from gpunn.nn.dense import Dense
from gpunn.nn.dropout import Dropout
from gpunn.nn.layer import Layer


def plan(layers) -> list[tuple[Layer, dict]]:
    """(layer, fused options) steps: Dense [+ Activation] [+ Dropout] fuse into one."""
    steps, index = [], 0
    while index < len(layers):
        layer, options = layers[index], {}
        index += 1
        if isinstance(layer, Dense):
            if index < len(layers) and isinstance(layers[index], Activation):
                options["activation"] = layers[index].function
                index += 1
            if index < len(layers) and isinstance(layers[index], Dropout):
                options["dropout"] = layers[index]
                index += 1
        steps.append((layer, options))
    return steps


def walk(layers, prefix: str = ""):
    """(position, layer) for every layer, nested ones too, depth first: "2", "2.0", …"""
    for index, layer in enumerate(layers):
        position = f"{prefix}{index}"
        yield position, layer
        yield from walk(layer.sublayers(), position + ".")


def check_layers(layers, owner: str):
    """Layers are gpunn layers, each object used once, one dtype and backend, widths that chain.

    Returns (first layer that holds arrays or None, input width, output width)."""
    for index, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            raise TypeError(f"{owner}: layer {index} is {type(layer).__name__}, not a gpunn Layer")
    seen = {}
    for position, layer in walk(layers):
        if id(layer) in seen:
            raise ValueError(f"{owner}: the same {type(layer).__name__} object is at positions "
                             f"{seen[id(layer)]} and {position}; a layer can appear once in a model "
                             "(create a new layer for each place)")
        seen[id(layer)] = position
    holding = [(index, layer) for index, layer in enumerate(layers) if layer.dtype is not None]
    for index, layer in holding[1:]:
        first_index, first = holding[0]
        if layer.dtype != first.dtype:
            raise TypeError(f"{owner}: mixed dtypes: layer {first_index} holds {first.dtype}, "
                            f"layer {index} holds {layer.dtype}; a model holds one dtype")
        if layer.backend is not first.backend:
            raise ValueError(f"{owner}: layer {first_index} lives on the {first.backend.name} "
                             f"backend, layer {index} on {layer.backend.name}")
    width = source = first_width = None
    for index, layer in enumerate(layers):
        if layer.in_features is not None:
            if width is not None and layer.in_features != width:
                raise ValueError(f"{owner}: layer {source} gives {width} features but layer {index} "
                                 f"expects {layer.in_features}")
            if first_width is None and width is None:
                first_width = layer.in_features
        if layer.out_features is not None:
            width, source = layer.out_features, index
    return (holding[0][1] if holding else None), first_width, width


class Chain:
    """Forward and backward through a list of layers, following the fusion plan."""

    def __init__(self, layers):
        self.layers = list(layers)
        self.steps = plan(self.layers)

    def forward(self, x):
        for layer, options in self.steps:
            x = layer.forward(x, **options)
        return x

    def backward(self, dy, input_gradient: bool = True):
        for index in range(len(self.steps) - 1, -1, -1):
            layer, options = self.steps[index]
            dy = layer.backward(dy, input_gradient=input_gradient or index > 0, **options)
        return dy
