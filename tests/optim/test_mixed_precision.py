"""float16 training against torch.amp.GradScaler's behaviour, and a training loop of one's own."""

import numpy as np
import pytest

import gpunn as gn
from gpunn.optim.state import GOOD_STEPS, LOSS_SCALE


def half_model(backend):
    with gn.use_backend(backend):
        return gn.Sequential(gn.Dense(6, 8, dtype="float16", seed=1), gn.Tanh(), gn.Dense(8, 2, dtype="float16", seed=2))


def test_a_loop_of_ones_own_must_scale_the_loss_of_a_float16_model(backend, rng):
    """The README's loop, ``model.backward(loss.backward()); opt.step()``, on a float16 model: the
    update divides by the loss scale (2^16) gradients that never carried it, so the model barely
    moved, silently. Now a clear error; with the scale the loop trains as TrainStep does."""
    x, t = rng.normal(size=(16, 6)), rng.normal(size=(16, 2))
    model, loss = half_model(backend), gn.MSELoss()
    optimizer = gn.SGD(model.parameters(), lr=0.1)
    loss.forward(model.forward(x), t)
    model.backward(loss.backward())
    with pytest.raises(RuntimeError, match=r"SGD.step: a float16 model's gradients must be scaled .* "
                                           r"model.backward\(loss.backward\(optimizer.loss_scale\)\)"):
        optimizer.step()
    scale = optimizer.loss_scale  # fetched once, as a user may: it stays the device's current scale
    for _ in range(3):
        loss.forward(model.forward(x), t)
        model.zero_grad()
        model.backward(loss.backward(scale))
        optimizer.step()
    reference = half_model(backend)
    step = gn.TrainStep(reference, gn.MSELoss(), gn.SGD(lr=0.1))
    prepared = step.prepare(x, t)
    for _ in range(3):
        step(*prepared)
    np.testing.assert_array_equal(backend.to_numpy(model.flat.values), backend.to_numpy(reference.flat.values))


def test_an_overflow_skips_adam_entirely_and_2000_good_steps_double_the_scale(backend):
    """As GradScaler: a skipped step leaves weights, moments and Adam's step count alone (torch skips
    optimizer.step()), halves the scale and restarts the growth count; the schedule, stepped
    every iteration in torch's loop, advances."""
    model = half_model(backend)
    optimizer = gn.Adam(model.parameters(), lr=gn.schedules.ExponentialDecay(0.01, 0.5))
    optimizer.loss_scale  # the gradients below stand for scaled ones

    def step_on(gradient):
        model.flat.grads[...] = backend.asarray(gradient, "float16")
        for parameter in model.parameters():
            parameter.grad_valid = True
        optimizer.step()

    size = model.flat.grads.size
    step_on(np.linspace(-100, 100, size))
    before = optimizer.state_dict()["arrays"]
    step_on(np.full(size, np.inf))
    after = optimizer.state_dict()["arrays"]
    for name in ("exp_avg", "exp_avg_sq", "master"):
        np.testing.assert_array_equal(after[name], before[name])
    assert after["scalars"].tolist() == [1.0, 2.0, 2.0 ** 15, 0.0, 1.0]  # applied, attempted, scale, good, skipped
    assert optimizer.lr == 0.01 * 0.5 ** 2
    for _ in range(1999):
        step_on(np.ones(size))
    scalars = backend.to_numpy(optimizer.loss_scale)
    assert (float(scalars[0]), optimizer.state_dict()["arrays"]["scalars"][GOOD_STEPS]) == (2.0 ** 15, 1999.0)
    step_on(np.ones(size))
    assert optimizer.state_dict()["arrays"]["scalars"][[LOSS_SCALE, GOOD_STEPS]].tolist() == [2.0 ** 16, 0.0]
