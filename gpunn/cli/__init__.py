"""The ``gpunn`` command: ``main`` dispatches to train, predict, info and bench."""

from gpunn.cli.main import main

__all__ = ["main"]
