"""gpunn: a small, fast backend for training multilayer perceptrons on NumPy or CuPy."""

__version__ = "0.1.0"

from .backends import (
    BackendUnavailableError,
    available_backends,
    cupy_unavailable_reason,
    get_backend,
    get_matmul_precision,
    set_matmul_precision,
    use_backend,
)
from . import distributed
from .gradcheck import gradcheck
from .io import ModelFileError, load, load_optimizer
from .dropout import Dropout
from .layers import GELU, Dense, Identity, LeakyReLU, Parameter, ReLU, Sigmoid, SiLU, Softplus, Tanh
from .normalization import LayerNorm
from .residual import Residual
from .losses import BCELoss, BCEWithLogitsLoss, MSELoss, SoftmaxCrossEntropyLoss
from .model import Sequential
from .optim import SGD, Adam, AdamW, Optimizer
from .fit import EarlyStopping, TrainingWarning
from .training import TrainingDiverged, TrainStep
from . import schedules

__all__ = [
    "Adam", "AdamW", "EarlyStopping", "Optimizer", "TrainingWarning", "load_optimizer", "schedules",
    "BCELoss", "BCEWithLogitsLoss", "BackendUnavailableError", "Dense", "Dropout", "GELU", "Identity",
    "LayerNorm", "LeakyReLU", "MSELoss", "ModelFileError", "Parameter", "ReLU", "Residual", "SGD", "Sequential",
    "SiLU", "Sigmoid", "Softplus", "SoftmaxCrossEntropyLoss", "Tanh", "TrainStep", "TrainingDiverged", "available_backends", "cupy_unavailable_reason", "get_backend",
    "get_matmul_precision", "gradcheck", "load", "set_matmul_precision", "use_backend",
]
