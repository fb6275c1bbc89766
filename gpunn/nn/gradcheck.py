"""Finite-difference gradient checks: the ground truth for every backward pass.

Run them in float64: central differences with a step of 1e-6 then agree with an exact
gradient to about 1e-8, so a wrong derivative cannot hide behind rounding.
"""

from __future__ import annotations

import contextlib


def numerical_gradient(function, array, eps: float = 1e-6):
    """d function() / d array by central differences, perturbing ``array`` in place."""
    flat = array.reshape(-1)
    gradient = [0.0] * flat.size
    for index in range(flat.size):
        original = float(flat[index])
        flat[index] = original + eps
        plus = function()
        flat[index] = original - eps
        minus = function()
        flat[index] = original
        gradient[index] = (plus - minus) / (2 * eps)
    return gradient


def _gradient_name(name: str) -> str:
    """"layer2.0.W" -> "layer2.0.dW"."""
    head, _, last = name.rpartition(".")
    return f"{head}.d{last}"


def gradcheck(model, loss, X, T, eps: float = 1e-6, rtol: float = 1e-5, atol: float = 1e-8) -> dict:
    """Compare every analytic gradient of ``loss(model(X), T)`` with central differences.

    Checks each parameter of every layer and dL/dX; a model in training mode keeps one dropout mask
    for the whole check (``Dropout.fixed_mask``). Returns the largest absolute error per
    checked array; raises AssertionError naming the first array that disagrees.
    """
    if str(model.dtype) != "float64":
        raise ValueError(f"gradcheck needs a float64 model, got {model.dtype}")
    x = model.as_input(X)
    x = x.copy()

    def value():
        return loss(model._forward(x), T)

    value()  # draws this check's dropout masks; every later forward reuses them
    with contextlib.ExitStack() as held:
        for layer in model.all_layers():
            if hasattr(layer, "fixed_mask"):
                held.enter_context(layer.fixed_mask())
        return _compare(model, loss, value, x, eps, rtol, atol)


def _compare(model, loss, value, x, eps, rtol, atol) -> dict:
    backend = model.backend
    model.zero_grad()
    analytic = {"dX": backend.to_numpy(model.backward(loss.backward())).copy()}
    named = [(_gradient_name(name), parameter) for name, parameter in model.named_parameters()]
    for name, parameter in named:
        analytic[name] = backend.to_numpy(parameter.grad).copy()

    errors = {}
    targets = [("dX", x)] + [(name, parameter.value) for name, parameter in named]
    for name, array in targets:
        numeric = numerical_gradient(value, array, eps)
        exact = analytic[name].reshape(-1).tolist()
        worst = 0.0
        for position, (a, b) in enumerate(zip(exact, numeric)):
            error = abs(a - b)
            worst = max(worst, error)
            if error > atol + rtol * abs(b):
                raise AssertionError(f"gradcheck: {name}[{position}] analytic {a:.10g} vs numeric "
                                     f"{b:.10g} (|diff| {error:.3g})")
        errors[name] = worst
    return errors
