"""``gpunn.layers``, kept importable for code written before the layers moved to ``gpunn.nn.layers``."""

from gpunn.nn.layers import (ACTIVATION_LAYERS, GELU, LAYER_TYPES, Activation, Dense, Identity, Layer, LeakyReLU,
                             Parameter, ReLU, Sigmoid, SiLU, Softplus, Tanh, register_layer)

__all__ = ["ACTIVATION_LAYERS", "GELU", "LAYER_TYPES", "Activation", "Dense", "Identity", "Layer", "LeakyReLU",
           "Parameter", "ReLU", "Sigmoid", "SiLU", "Softplus", "Tanh", "register_layer"]
