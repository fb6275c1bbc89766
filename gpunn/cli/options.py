"""Option values for the command line: parsers that turn text into checked values (argparse
reports their errors as one line), and the backend choice."""

from __future__ import annotations

import argparse
import os

from gpunn import checks

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


def option_value(parse_text, check, expected: str):
    """An argparse type: the option's text read by ``parse_text``, then held to the rule of
    gpunn.checks that the library's own arguments meet (``check``), with one message: ``expected``."""
    def parse(text):
        try:
            return check(parse_text(text))
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None

    return parse


def _sizes(text: str) -> list[int]:
    return [checks.count("--hidden", "size", int(part.strip())) for part in text.split(",")]


hidden_sizes = option_value(_sizes, lambda sizes: sizes, "sizes like 128,64 (positive ints, no empty parts)")
seed = option_value(int, lambda value: checks.seed("option", value), "an int >= 0")
non_negative = option_value(float, lambda value: checks.number("option", "value", value, low=0.0),
                            "a finite number >= 0")


def positive(kind):
    if kind is int:
        return option_value(int, lambda value: checks.count("option", "value", value), "a positive int")
    return option_value(float, lambda value: checks.positive("option", "value", value), "a positive float (finite)")


def fraction(low_inclusive: bool):
    interval = "[0, 1)" if low_inclusive else "(0, 1)"
    return option_value(float, lambda value: checks.number("option", "value", value, low=0.0, high=1.0,
                                                           low_open=not low_inclusive, high_open=True),
                        f"a number in {interval}")


def use_backend_option(name: str | None):
    """The --backend choice, else $GPUNN_BACKEND, else auto; made current."""
    import gpunn as gn

    chosen = name or os.environ.get("GPUNN_BACKEND", "auto")
    if chosen.lower() not in BACKEND_CHOICES:
        raise UserError(f"gpunn: GPUNN_BACKEND={chosen!r} is not a backend; expected one of "
                        f"{', '.join(BACKEND_CHOICES)}")
    gn.use_backend(chosen)
    return gn.get_backend()


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
