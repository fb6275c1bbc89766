"""Edge cases of the optimizers and schedules where users meet torch.optim's behaviour: bad
hyperparameters and state, parameters that diverged, and the end of a schedule."""

import numpy as np
import pytest

import gpunn as gn
from gpunn import schedules


def tiny_model(backend, seed=0):
    with gn.use_backend(backend):
        return gn.Sequential(gn.Dense(3, 2, dtype="float64", seed=seed), gn.Tanh(),
                             gn.Dense(2, 1, dtype="float64", seed=seed + 1))


def step_with(model, optimizer, gradients):
    """One optimizer step on the given host gradients (one array per parameter)."""
    for parameter, gradient in zip(model.parameters(), gradients):
        parameter.grad[...] = model.backend.asarray(gradient, "float64")
        parameter.grad_valid = True
    optimizer.step()


@pytest.mark.parametrize("make", [lambda ps: gn.SGD(ps, lr=0.1), lambda ps: gn.SGD(ps, lr=0.1, momentum=0.9),
                                  lambda ps: gn.Adam(ps, lr=0.1)])
def test_zero_weight_decay_leaves_a_diverged_parameter_infinite(backend, make):
    """torch.optim skips weight decay at 0; 0·Inf must not turn a diverged parameter into NaN."""
    model = tiny_model(backend)
    first = model.parameters()[0]
    first.value = np.full(first.shape, -np.inf)
    optimizer = make(model.parameters())
    step_with(model, optimizer, [np.ones(p.shape) for p in model.parameters()])
    assert (backend.to_numpy(first.value) == -np.inf).all()
