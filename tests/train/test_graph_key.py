"""A recorded step records again when a launch setting changes (issue 21, item 5).

``ReplayingBackend`` replays the recorded launches with their recorded scalar arguments, as a
CUDA graph does; each test runs the same hand-written TrainStep loop eagerly on NumPy and
graphed on the double, changes one setting after the graph exists, and expects the same
numbers (and a second recording)."""

import numpy as np
import pytest

import gpunn as gn
from gpunn.backends.numpy_backend import NumpyBackend
from support.replaying_backend import ReplayingBackend


def make_model(backend):
    with gn.use_backend(backend):
        return gn.Sequential(gn.Dense(6, 16, dtype="float64", seed=1), gn.LayerNorm(16, dtype="float64"),
                             gn.Tanh(), gn.Dropout(0.25, seed=7), gn.Dense(16, 3, dtype="float64", seed=2))


def run(backend, graph, change, steps_before=4, steps_after=3):
    """Losses of a TrainStep loop; ``change(model)`` runs after ``steps_before`` steps and may
    return a context manager that stays open for the rest of the loop."""
    rng = np.random.default_rng(11)
    model = make_model(backend)
    step = gn.TrainStep(model, gn.SoftmaxCrossEntropyLoss(), gn.SGD(lr=0.1, momentum=0.9), graph=graph)
    x, t = step.prepare(rng.normal(size=(8, 6)), rng.integers(0, 3, size=8))
    losses = [float(step(x, t)) for _ in range(steps_before)]
    context = change(model)
    if context is not None:
        with context:
            losses += [float(step(x, t)) for _ in range(steps_after)]
    else:
        losses += [float(step(x, t)) for _ in range(steps_after)]
    return losses, model.predict(np.ones((2, 6)))


def dropout_of(model):
    return next(layer for layer in model.all_layers() if isinstance(layer, gn.Dropout))


def layer_norm_of(model):
    return next(layer for layer in model.all_layers() if isinstance(layer, gn.LayerNorm))


def set_eps(model, eps):
    layer_norm_of(model).eps = eps


def evaluation(model):
    model.eval()  # a hand-written loop that switches dropout off


CHANGES = {
    "eval": evaluation,
    "dropout-rate": lambda model: setattr(dropout_of(model), "rate", 0.5),
    "fixed-mask": lambda model: dropout_of(model).fixed_mask(),
    "layer-norm-eps": lambda model: set_eps(model, 1e-1),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_a_changed_launch_setting_records_again_and_trains_like_eager(change):
    replaying = ReplayingBackend()
    eager = run(NumpyBackend(), False, CHANGES[change])
    graphed = run(replaying, True, CHANGES[change])
    np.testing.assert_array_equal(graphed[0], eager[0])
    np.testing.assert_array_equal(graphed[1], eager[1])
    assert replaying.recordings == 2  # once before the change, once after


def test_nothing_changed_records_once():
    replaying = ReplayingBackend()
    eager = run(NumpyBackend(), False, lambda model: None)
    graphed = run(replaying, True, lambda model: None)
    np.testing.assert_array_equal(graphed[0], eager[0])
    assert (replaying.recordings, replaying.replays) == (1, 5)
