"""Where a gpunn-numpy training step goes: forward, loss, backward and update timed separately.

    python benchmarks/phases.py CPU         # a train-step case of the suite
    python benchmarks/phases.py CPU-adam    # with Adam instead of SGD
"""

import sys
from pathlib import Path

import numpy as np

sys.path[:0] = [str(Path(__file__).resolve().parent),  # interleave
                str(Path(__file__).resolve().parent.parent / "gpunn" / "bench" / "suite")]  # peers
from interleave import median_ms
from peers import GpunnPeer, train_case


def main(case="CPU"):
    config, dtype, _, optimizer = train_case(case)
    train_step, x, t = GpunnPeer("numpy").build_train_step(config, dtype, np.random.default_rng(0), optimizer)
    model, loss, optimizer = train_step.model, train_step.loss, train_step.optimizer
    train_step(x, t)  # every buffer exists
    y = model._forward(x)
    loss._forward(model.backend, y, t)
    grad = loss.backward()

    def backward():
        model.zero_grad()
        model.backward(grad, input_gradient=False)

    phases = {"forward": lambda: model._forward(x), "loss": lambda: loss._forward(model.backend, y, t),
              "backward": backward, "update": optimizer.step, "whole step": lambda: train_step(x, t)}
    print("  ".join(f"{name} {median_ms(phase):.2f} ms" for name, phase in phases.items()))


if __name__ == "__main__":
    main(*sys.argv[1:2])
