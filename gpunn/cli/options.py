"""Option values for the command line: parsers that turn text into checked values (argparse
reports their errors as one line), and the backend choice."""

from __future__ import annotations

import argparse
import math
import os

BACKEND_CHOICES = ("auto", "numpy", "cupy")
BACKEND_HELP = "array backend (default: $GPUNN_BACKEND if set, else auto: the GPU when one is usable)"

EXIT_USER_ERROR, EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 2, 130, 141
LOSS_CHOICES = {"softmax-ce": "SoftmaxCrossEntropyLoss", "mse": "MSELoss"}
ACTIVATION_CHOICES = {"tanh": "Tanh", "relu": "ReLU", "sigmoid": "Sigmoid", "gelu": "GELU", "silu": "SiLU",
                      "leaky-relu": "LeakyReLU"}
OPTIMIZER_CHOICES = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW"}
DEFAULT_LR = {"sgd": 0.05, "adam": 2e-3, "adamw": 2e-3}
SCHEDULE_CHOICES = ("constant", "step", "cosine", "onecycle")


class UserError(Exception):
    """A mistake in what the user asked for; printed as one line, without a traceback."""


def hidden_sizes(text: str) -> list[int]:
    parts = [part.strip() for part in text.split(",")]
    try:
        sizes = [int(part) for part in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes like 128,64 (positive ints, no empty parts), got {text!r}") from None
    if min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected sizes like 128,64 (positive ints), got {text!r}")
    return sizes


def positive(kind):
    expected = f"expected a positive {kind.__name__}" + (" (finite)" if kind is float else "")

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{expected}, got {text!r}") from None
        if not value > 0 or not math.isfinite(value):  # also refuses nan and inf
            raise argparse.ArgumentTypeError(f"{expected}, got {text!r}")
        return value

    return parse


def seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an int >= 0, got {text!r}")
    return value


def fraction(low_inclusive: bool):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = -1.0
        if not (0 <= value < 1 if low_inclusive else 0 < value < 1):
            interval = "[0, 1)" if low_inclusive else "(0, 1)"
            raise argparse.ArgumentTypeError(f"expected a number in {interval}, got {text!r}")
        return value

    return parse


def use_backend_option(name: str | None):
    """The --backend choice, else $GPUNN_BACKEND, else auto; made current."""
    import gpunn as gn

    chosen = name or os.environ.get("GPUNN_BACKEND", "auto")
    if chosen.lower() not in BACKEND_CHOICES:
        raise UserError(f"gpunn: GPUNN_BACKEND={chosen!r} is not a backend; expected one of "
                        f"{', '.join(BACKEND_CHOICES)}")
    gn.use_backend(chosen)
    return gn.get_backend()


def non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (``UserError``), not argparse's usage block."""

    def error(self, message):  # one line, not argparse's usage block
        raise UserError(f"{self.prog}: {message}")


def say(line: str, quiet: bool = False) -> None:
    if quiet:
        return
    try:
        from tqdm.auto import tqdm
    except ImportError:
        print(line, flush=True)
    else:
        tqdm.write(line)
