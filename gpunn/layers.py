"""``gpunn.layers``, kept importable for code written before the layers moved into ``gpunn.nn``."""

from gpunn.nn.activations import (ACTIVATION_LAYERS, GELU, Activation, Identity, LeakyReLU, ReLU, Sigmoid, SiLU,
                                  Softplus, Tanh)
from gpunn.nn.dense import Dense
from gpunn.nn.layer import LAYER_TYPES, Layer, register_layer
from gpunn.nn.parameter import Parameter

__all__ = ["ACTIVATION_LAYERS", "GELU", "LAYER_TYPES", "Activation", "Dense", "Identity", "Layer", "LeakyReLU",
           "Parameter", "ReLU", "Sigmoid", "SiLU", "Softplus", "Tanh", "register_layer"]
