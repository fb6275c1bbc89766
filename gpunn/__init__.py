"""gpunn: a small, fast backend for training multilayer perceptrons on NumPy or CuPy.

This module holds the public names and nothing else; ``README.md``'s code map says where each lives.
"""

from gpunn import data, distributed, layers, schedules
from gpunn.backends import (BackendUnavailableError, available_backends, cupy_unavailable_reason, get_backend,
                            get_matmul_precision, set_matmul_precision, use_backend)
from gpunn.io import ModelFileError, load, load_optimizer
from gpunn.io.onnx_export import export_onnx
from gpunn.nn.activations import GELU, Identity, LeakyReLU, ReLU, Sigmoid, SiLU, Softplus, Tanh
from gpunn.nn.dense import Dense
from gpunn.nn.dropout import Dropout
from gpunn.nn.dtype import default_dtype, get_default_dtype, set_default_dtype
from gpunn.nn.gradcheck import gradcheck
from gpunn.nn.losses import BCELoss, BCEWithLogitsLoss, MSELoss, SoftmaxCrossEntropyLoss
from gpunn.nn.normalization import LayerNorm
from gpunn.nn.parameter import Parameter
from gpunn.nn.residual import Residual
from gpunn.nn.sequential import Sequential
from gpunn.optim import SGD, Adam, AdamW, Optimizer
from gpunn.train.callbacks import (CSVLogger, Callback, EarlyStopping, LearningRateScheduler, ModelCheckpoint,
                                   ReduceLROnPlateau, TerminateOnNaN, TrainingWarning)
from gpunn.train.step import TrainingDiverged, TrainStep
from gpunn.version import __version__  # noqa: F401  (gpunn.__version__)

__all__ = [
    "Adam", "AdamW", "BCELoss", "BCEWithLogitsLoss", "BackendUnavailableError", "CSVLogger", "Callback", "Dense",
    "Dropout", "EarlyStopping", "GELU", "Identity", "LayerNorm", "LeakyReLU", "LearningRateScheduler", "MSELoss",
    "ModelCheckpoint", "ModelFileError", "Optimizer", "Parameter", "ReLU", "ReduceLROnPlateau", "Residual", "SGD",
    "Sequential", "SiLU", "Sigmoid", "SoftmaxCrossEntropyLoss", "Softplus", "Tanh", "TerminateOnNaN", "TrainStep",
    "TrainingDiverged", "TrainingWarning", "available_backends", "cupy_unavailable_reason", "data",
    "default_dtype", "distributed", "export_onnx", "get_backend", "get_default_dtype", "get_matmul_precision",
    "gradcheck", "layers", "load", "load_optimizer", "schedules", "set_default_dtype", "set_matmul_precision",
    "use_backend",
]
