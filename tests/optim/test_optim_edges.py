"""Edge cases of the optimizers and schedules where users meet torch.optim's behaviour: bad
hyperparameters and state, parameters that diverged, and the end of a schedule."""

import numpy as np
import pytest

import gpunn as gn
from gpunn.optim import schedules


def tiny_model(backend, seed=0):
    with gn.use_backend(backend):
        return gn.Sequential(gn.Dense(3, 2, dtype="float64", seed=seed), gn.Tanh(),
                             gn.Dense(2, 1, dtype="float64", seed=seed + 1))


def step_with(model, optimizer, gradients):
    """One optimizer step on the given host gradients (one array per parameter)."""
    for parameter, gradient in zip(model.parameters(), gradients):
        parameter.grad = gradient  # fresh, as torch's p.grad = g
    optimizer.step()


@pytest.mark.parametrize("make", [lambda ps: gn.SGD(ps, lr=0.1), lambda ps: gn.SGD(ps, lr=0.1, momentum=0.9),
                                  lambda ps: gn.Adam(ps, lr=0.1)])
def test_zero_weight_decay_leaves_a_diverged_parameter_infinite(backend, make):
    """torch.optim skips weight decay at 0; 0·Inf must not turn a diverged parameter into NaN."""
    model = tiny_model(backend)
    first = model.parameters()[0]
    first.value[...] = backend.asarray(np.full(first.shape, -np.inf), first.value.dtype)  # in place: assigning refuses Inf
    optimizer = make(model.parameters())
    step_with(model, optimizer, [np.ones(p.shape) for p in model.parameters()])
    assert (backend.to_numpy(first.value) == -np.inf).all()


# --- hyperparameters: wrong types and values, also when set after construction -----------------
@pytest.mark.parametrize("make,error,message", [
    (lambda: gn.SGD(lr="0.1"), TypeError, "lr must be a positive finite number or a gpunn.schedules schedule, got str"),
    (lambda: gn.SGD(momentum="0.9"), TypeError, "momentum must be a number, got str"),
    (lambda: gn.Adam(weight_decay=None), TypeError, "weight_decay must be a number, got NoneType"),
    (lambda: gn.SGD(max_grad_norm="1"), TypeError, "max_grad_norm must be a number"),
    (lambda: schedules.StepDecay(0.1, step_size=2.5), TypeError, "step_size must be an int >= 1, got float"),
    (lambda: schedules.CosineDecay(0.1, total_steps="100"), TypeError, "total_steps must be an int"),
    (lambda: schedules.OneCycle(0.1, 100, pct_start="0.3"), TypeError, "pct_start must be a number"),
    (lambda: schedules.Constant(0.1)(1.5), TypeError, "step must be an int >= 0"),
    (lambda: gn.SGD(max_grad_norm=float("inf")), ValueError, "max_grad_norm must be a positive finite number"),
    (lambda: gn.SGD(gn.Sequential(gn.Dense(2, 1)), lr=0.1), TypeError, "such as model.parameters\\(\\), got Sequential"),
])
def test_hyperparameters_of_the_wrong_type_are_type_errors(make, error, message):
    """torch.optim raises TypeError for a string learning rate; so does gpunn, naming the argument."""
    with pytest.raises(error, match=message):
        make()


def test_numpy_scalars_are_numbers():
    """An lr or a step count computed with NumPy works as in torch (np.float32 is no Python float)."""
    assert gn.Adam(lr=np.float32(0.5)).lr == 0.5
    assert gn.SGD(momentum=np.float32(0.5)).momentum == 0.5
    schedule = schedules.StepDecay(np.float32(1.0), step_size=np.int64(2), gamma=np.float64(0.5))
    assert schedule(np.int64(4)) == 0.25 and type(schedule.step_size) is int  # JSON-able in a checkpoint


@pytest.mark.parametrize("make,name,value", [
    (lambda: gn.SGD(lr=0.1), "weight_decay", -1.0), (lambda: gn.SGD(lr=0.1), "max_grad_norm", -1.0),
    (lambda: gn.SGD(lr=0.1), "max_grad_norm", float("nan")), (lambda: gn.Adam(), "eps", -1e-8),
    (lambda: gn.SGD(lr=0.1), "nesterov", True), (lambda: gn.SGD(lr=0.1, momentum=0.9, nesterov=True), "momentum", 0.0),
])
def test_hyperparameters_set_after_construction_are_checked(make, name, value):
    """Setting one after construction is checked as the constructor checks it (was: taken, or ignored)."""
    optimizer = make()
    before = getattr(optimizer, name)
    with pytest.raises(ValueError, match=name if name != "momentum" else "nesterov=True needs a momentum"):
        setattr(optimizer, name, value)
    assert getattr(optimizer, name) == before


def test_nesterov_set_after_construction_takes_effect(backend):
    gradients = [np.full(p.shape, 0.5) for p in tiny_model(backend).parameters()]
    results = []
    for late in (False, True):
        model = tiny_model(backend)
        optimizer = gn.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=not late)
        if late:
            optimizer.nesterov = True
        for _ in range(2):
            step_with(model, optimizer, gradients)
        results.append(backend.to_numpy(model.flat.values))
    np.testing.assert_array_equal(*results)


# --- state_dict / load_state_dict -------------------------------------------------------------
def trained_adam(backend, steps=3):
    model = tiny_model(backend)
    optimizer = gn.Adam(model.parameters(), lr=schedules.ExponentialDecay(0.1, 0.9), weight_decay=0.01)
    for _ in range(steps):
        step_with(model, optimizer, [np.full(p.shape, 0.3) for p in model.parameters()])
    return optimizer


def edited(state, change):
    state = {"config": dict(state["config"]), "arrays": {k: v.copy() for k, v in state["arrays"].items()}}
    change(state)
    return state


@pytest.mark.parametrize("change,message", [
    (lambda s: s["config"].pop("steps"), r"config lacks \['steps'\]"),
    (lambda s: s["config"].pop("weight_decay"), r"config lacks \['weight_decay'\]"),
    (lambda s: s["config"].pop("schedule"), r"config lacks \['schedule'\]"),
    (lambda s: s["config"].update(amsgrad=True), r"has unknown \['amsgrad'\]"),
    (lambda s: s["config"].update(steps=1), "do not fit steps=1"),
    (lambda s: s["config"].update(steps=-1), "steps must be an int >= 0"),
    (lambda s: s["config"].update(weight_decay=-0.5), "weight_decay must lie in"),
    (lambda s: s["arrays"]["scalars"].__setitem__(2, np.nan), "do not fit"),
    (lambda s: s["arrays"].update(exp_avg=s["arrays"]["exp_avg"].tolist()), "exp_avg must be an array of shape"),
    (lambda s: s["arrays"]["exp_avg_sq"].__setitem__(0, np.inf), "exp_avg_sq holds NaN or Inf"),  # froze training
    (lambda s: s["arrays"]["exp_avg"].__setitem__(1, np.nan), "exp_avg holds NaN or Inf"),
])
def test_a_modified_state_is_refused_and_changes_nothing(backend, change, message):
    source = trained_adam(backend)
    target = trained_adam(backend, steps=1)
    before = target.state_dict()
    with pytest.raises(ValueError, match=message):
        target.load_state_dict(edited(source.state_dict(), change))
    after = target.state_dict()
    assert after["config"] == before["config"]
    for name, array in before["arrays"].items():
        np.testing.assert_array_equal(after["arrays"][name], array)


# --- the end of a schedule ---------------------------------------------------------------------
def test_one_cycle_ends_as_torch_one_cycle_lr_does():
    """torch's OneCycleLR raises once stepped past total_steps; holding the last (tiny) rate
    instead would quietly stop training when total_steps undercounts the updates."""
    schedule = schedules.OneCycle(0.1, 10)
    assert schedule(10) == schedule(9) == 0.1 / 25 / 1e4
    with pytest.raises(ValueError, match=r"step 11 is past the schedule's end \(total_steps=10\)"):
        schedule(11)
    assert schedules.CosineDecay(0.1, 10, final_lr=0.01)(1000) == 0.01  # Keras's CosineDecay holds its end


def test_fit_past_the_end_of_one_cycle_fails_before_training(backend, rng):
    model = tiny_model(backend)
    before = backend.to_numpy(model.flat.values).copy()
    x, t = rng.normal(size=(40, 3)), rng.normal(size=(40, 1))
    with pytest.raises(ValueError, match="past the schedule's end"):  # 4 batches × 10 epochs > 30 + 1
        model.fit(x, t, loss=gn.MSELoss(), optimizer=gn.SGD(lr=schedules.OneCycle(0.1, 30)), epochs=10,
                  batch_size=10, verbose=0)
    np.testing.assert_array_equal(backend.to_numpy(model.flat.values), before)
    model.fit(x, t, loss=gn.MSELoss(), optimizer=gn.SGD(lr=schedules.OneCycle(0.1, 40)), epochs=10, batch_size=10,
              verbose=0)


# --- schedules: edits after binding, rates beyond the float range (issue 22) -------------------
def test_editing_a_bound_schedule_takes_effect_at_the_next_update(backend):
    """opt.lr showed the edited rate while the updates used the device's table of the old one."""
    model, twin = tiny_model(backend), tiny_model(backend)
    edited_schedule = schedules.StepDecay(0.5, step_size=1, gamma=0.5)
    optimizer = gn.SGD(model.parameters(), lr=edited_schedule)
    reference = gn.SGD(twin.parameters(), lr=schedules.StepDecay(0.5, step_size=1, gamma=0.5))
    gradients = [np.full(p.shape, 0.3) for p in model.parameters()]
    step_with(model, optimizer, gradients)
    step_with(twin, reference, gradients)
    edited_schedule.gamma = 0.1       # from the second update on
    reference.lr = schedules.StepDecay(0.5, step_size=1, gamma=0.1)  # assigned anew: the table follows
    assert optimizer.lr == reference.lr == pytest.approx(0.05)
    for _ in range(2):
        step_with(model, optimizer, gradients)
        step_with(twin, reference, gradients)
    for mine, theirs in zip(model.parameters(), twin.parameters()):
        np.testing.assert_array_equal(backend.to_numpy(mine.value), backend.to_numpy(theirs.value))


@pytest.mark.parametrize("make,name,value,error", [
    (lambda: schedules.StepDecay(0.1, step_size=2), "gamma", -1.0, ValueError),
    (lambda: schedules.StepDecay(0.1, step_size=2), "step_size", 2.5, TypeError),
    (lambda: schedules.CosineDecay(0.1, total_steps=10), "warmup_steps", 10, ValueError),
    (lambda: schedules.OneCycle(0.1, total_steps=10), "pct_start", 1.5, ValueError),
    (lambda: schedules.ExponentialDecay(0.1, 0.9), "gama", 0.5, AttributeError),
])
def test_a_schedule_edit_is_checked_as_the_constructor_checks_it(make, name, value, error):
    schedule = make()
    before = schedule.config()
    with pytest.raises(error):
        setattr(schedule, name, value)
    assert schedule.config() == before


@pytest.mark.parametrize("make", [lambda: schedules.ExponentialDecay(0.1, gamma=2.0),
                                  lambda: schedules.StepDecay(0.1, step_size=3, gamma=1e10)],
                         ids=["ExponentialDecay", "StepDecay"])
def test_gamma_above_one_beyond_the_float_range_is_a_value_error_not_an_overflow(backend, rng, make):
    """gamma > 1 raised a raw OverflowError, from the schedule and from fit."""
    schedule = make()
    with pytest.raises(ValueError, match="exceeds the float range; gamma > 1"):
        schedule(5000)
    assert schedule(3) > 0  # early steps are fine, and bind fills its table with inf beyond the range
    model = tiny_model(backend)
    X, T = rng.normal(size=(8, 3)), rng.normal(size=(8, 1))
    with pytest.raises(ValueError, match="exceeds the float range"):  # before the first update
        model.fit(X, T, loss=gn.MSELoss(), optimizer=gn.SGD(lr=schedule), epochs=2000, batch_size=1, verbose=0)
    model.fit(X, T, loss=gn.MSELoss(), optimizer=gn.SGD(lr=make()), epochs=1, batch_size=8, verbose=0)
