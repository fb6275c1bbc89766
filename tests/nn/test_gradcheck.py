"""Finite-difference checks in float64 of every layer and loss, at several shapes."""

import numpy as np
import pytest

import gpunn as gn

SHAPES = [(1, 3, 2), (5, 4, 7), (8, 6, 1)]  # (batch, in_features, out_features): batch 1, non-square
ACTIVATION_LAYERS = [gn.Sigmoid, gn.Tanh, gn.ReLU, gn.Identity]


def targets_for(loss, rng, batch, outputs):
    if isinstance(loss, gn.SoftmaxCrossEntropyLoss):
        return rng.integers(0, outputs, size=batch)
    if isinstance(loss, (gn.BCELoss, gn.BCEWithLogitsLoss)):
        return rng.uniform(0.05, 0.95, size=(batch, outputs))
    return rng.normal(size=(batch, outputs))


def relu_safe_input(rng, shape):
    """Inputs whose pre-activations stay away from ReLU's kink at 0 by more than the FD step."""
    x = rng.normal(size=shape)
    return np.where(np.abs(x) < 1e-3, 0.1, x)


@pytest.mark.parametrize("batch,inputs,outputs", SHAPES)
@pytest.mark.parametrize("activation", ACTIVATION_LAYERS, ids=lambda cls: cls.__name__)
def test_dense_then_activation(backend, rng, batch, inputs, outputs, activation):
    model = gn.Sequential(gn.Dense(inputs, outputs, init="he", dtype="float64", seed=int(rng.integers(1 << 30))),
                          activation())
    bias = rng.normal(size=outputs)
    model.layers[0].bias.value[...] = backend.asarray(bias, "float64")
    x = relu_safe_input(rng, (batch, inputs))
    if activation is gn.ReLU:  # keep every pre-activation clear of the kink
        z = x @ backend.to_numpy(model.layers[0].W) + bias
        if np.min(np.abs(z)) < 1e-4:
            pytest.skip("random draw put a pre-activation on ReLU's kink")
    errors = gn.gradcheck(model, gn.MSELoss(), x, rng.normal(size=(batch, outputs)))
    assert set(errors) == {"dX", "layer0.dW", "layer0.db"}


@pytest.mark.parametrize("activation", ACTIVATION_LAYERS, ids=lambda cls: cls.__name__)
def test_standalone_activation(backend, rng, activation):
    """An activation that follows no Dense runs unfused; its dX is checked on its own."""
    model = gn.Sequential(activation(), gn.Dense(4, 3, dtype="float64", seed=5))
    errors = gn.gradcheck(model, gn.MSELoss(), relu_safe_input(rng, (3, 4)), rng.normal(size=(3, 3)))
    assert "dX" in errors


LOSSES = [gn.MSELoss, gn.BCELoss, gn.BCEWithLogitsLoss, gn.SoftmaxCrossEntropyLoss]


@pytest.mark.parametrize("batch,outputs", [(1, 1), (4, 3), (7, 5)])
@pytest.mark.parametrize("loss_class", LOSSES, ids=lambda cls: cls.__name__)
def test_losses(backend, rng, batch, outputs, loss_class):
    loss = loss_class()
    inputs = 3
    layers = [gn.Dense(inputs, outputs, dtype="float64", seed=6)]
    if loss_class is gn.BCELoss:
        layers.append(gn.Sigmoid())  # BCE takes probabilities
    model = gn.Sequential(*layers)
    if loss_class is gn.SoftmaxCrossEntropyLoss and outputs == 1:  # a softmax over one output trains nothing
        with pytest.raises(ValueError, match="one column"):
            gn.gradcheck(model, loss, rng.normal(size=(batch, inputs)), targets_for(loss, rng, batch, outputs))
        return
    errors = gn.gradcheck(model, loss, rng.normal(size=(batch, inputs)),
                          targets_for(loss, rng, batch, outputs))
    assert errors["dX"] < 1e-6


@pytest.mark.parametrize("rate", [0.3, 0.5])
def test_a_model_with_dropout_in_training_mode_checks_with_one_held_mask(backend, rng, rate):
    """Each forward of a training-mode Dropout draws a new mask; gradcheck holds the first for the check
    (it failed every model with Dropout), and the mask moves on afterwards."""
    model = gn.Sequential(gn.Dense(4, 6, dtype="float64", seed=1), gn.Tanh(), gn.Dropout(rate, seed=2),
                          gn.Dense(6, 3, dtype="float64", seed=3), gn.Dropout(rate, seed=4))
    errors = gn.gradcheck(model, gn.MSELoss(), rng.normal(size=(5, 4)), rng.normal(size=(5, 3)))
    assert set(errors) == {"dX", "layer0.dW", "layer0.db", "layer3.dW", "layer3.db"}
    assert [model.layers[i].step for i in (2, 4)] == [1, 1]


def test_deep_network(backend, rng):
    model = gn.Sequential(gn.Dense(5, 6, dtype="float64", seed=7), gn.Tanh(),
                          gn.Dense(6, 4, dtype="float64", seed=8), gn.Sigmoid(),
                          gn.Dense(4, 3, dtype="float64", seed=9))
    errors = gn.gradcheck(model, gn.SoftmaxCrossEntropyLoss(), rng.normal(size=(6, 5)),
                          rng.integers(0, 3, size=6))
    assert len(errors) == 7


def test_softmax_accepts_one_hot(backend, rng):
    model = gn.Sequential(gn.Dense(3, 4, dtype="float64", seed=10))
    labels = rng.integers(0, 4, size=5)
    x = rng.normal(size=(5, 3))
    by_label, by_one_hot = gn.SoftmaxCrossEntropyLoss(), gn.SoftmaxCrossEntropyLoss()
    value = by_label(model.forward(x), labels)
    assert by_one_hot(model.forward(x), np.eye(4)[labels]) == pytest.approx(value)
    logits = x @ backend.to_numpy(model.layers[0].W)
    expected = np.mean(np.log(np.exp(logits).sum(axis=1)) - logits[np.arange(5), labels])
    assert value == pytest.approx(expected, rel=1e-12)


def test_gradcheck_catches_a_wrong_gradient(backend, rng):
    """The helper must fail when backward is wrong, or it proves nothing."""
    model = gn.Sequential(gn.Dense(3, 2, dtype="float64", seed=11), gn.Tanh())
    wrong = gn.MSELoss()
    original = wrong._backward
    wrong._backward = lambda loss_scale: original(loss_scale) * 1.01
    with pytest.raises(AssertionError, match="analytic"):
        gn.gradcheck(model, wrong, rng.normal(size=(2, 3)), rng.normal(size=(2, 2)))


def test_gradcheck_needs_float64(backend):
    with pytest.raises(ValueError, match="float64"):
        gn.gradcheck(gn.Sequential(gn.Dense(2, 2)), gn.MSELoss(), [[1.0, 2.0]], [[0.0, 1.0]])
