"""Each parameter keeps its own step count, as torch.optim's state["step"] (issue 22): a parameter that
misses steps (its layer frozen, or its gradient set to None) is left out of them entirely, value, state
and count, and its bias correction later counts only its own updates. One fused launch per step
whatever is frozen (issue 24); the counts are saved, loaded and converted from one-count states.

Compared with live PyTorch in float64 where it is installed (skipped otherwise); the torch-free
checks below pin the same behaviour by its first update after unfreezing."""

import numpy as np
import pytest
from support.replaying_backend import ReplayingBackend

import gpunn as gn

from golden.torch_trajectories import SHAPES, problem

STEPS = 30
#: name -> per step, the (Dense index, parameter name) pairs left without an update that step.
SCENARIOS = {
    # layer 0 frozen for the first third, then trained: its first update is its own step 1
    "frozen_then_unfrozen": lambda step: {(0, "W"), (0, "b")} if step < 10 else set(),
    # the reverse: layer 1 trained, frozen for a third, trained again (its count resumes at 11)
    "frozen_in_the_middle": lambda step: {(1, "W"), (1, "b")} if 10 <= step < 20 else set(),
    # the output bias's gradient set to None every third step (torch: p.grad = None)
    "gradient_none": lambda step: {(1, "b")} if step % 3 == 0 else set(),
    # issue 22's case: layer 0 frozen for LONG_FREEZE steps, then trained
    "frozen_long": lambda step: {(0, "W"), (0, "b")} if step < LONG_FREEZE else set(),
}
LONG_FREEZE = 830
OPTIMIZERS = {
    "adam": ("Adam", {"lr": 0.01}, None),
    "adam_l2": ("Adam", {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.02}, None),
    "adamw": ("AdamW", {"lr": 0.01, "weight_decay": 0.1}, None),
    "adamw_clipped": ("AdamW", {"lr": 0.02, "weight_decay": 0.1}, 0.2),  # the norm of the updated gradients
    "sgd_momentum": ("SGD", {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.05}, None),  # no step term: a check
}


def gpunn_trajectory(backend, scenario, optimizer_name, graph=False, steps=STEPS):
    """Final (W0, b0, W1, b1) of the 5-7-3 tanh MLP of the golden trajectories: frozen layers via
    ``trainable``, a gradient set to None via ``Parameter.grad``."""
    kind, arguments, max_norm = OPTIMIZERS[optimizer_name]
    weights, biases, batches = problem()
    with gn.use_backend(backend):
        model = gn.Sequential(gn.Dense(5, 7, weight=weights[0], bias=biases[0], dtype="float64"), gn.Tanh(),
                              gn.Dense(7, 3, weight=weights[1], bias=biases[1], dtype="float64"))
    optimizer = getattr(gn, kind)(max_grad_norm=max_norm, **arguments)
    dense = [model.layers[0], model.layers[2]]
    if graph:  # the recorded step; a freeze records it again, the counts go on on the device
        step = gn.TrainStep(model, gn.MSELoss(), optimizer, graph=True)
    else:
        optimizer.bind(model.parameters())
    loss = gn.MSELoss()
    for index in range(steps):
        x, t = batches[index % len(batches)]
        missing = SCENARIOS[scenario](index)
        for layer_index, layer in enumerate(dense):
            layer.trainable = not {(layer_index, "W"), (layer_index, "b")} <= missing
        if graph:
            step(*step.prepare(x, t))
            continue
        optimizer.zero_grad()
        loss(model(x), t)
        model.backward(loss.backward())
        for layer_index, name in missing:
            if dense[layer_index].trainable:  # a gradient set to None, the layer itself trainable
                getattr(dense[layer_index], {"W": "weight", "b": "bias"}[name]).grad = None
        optimizer.step()
    return model, optimizer, [model.backend.to_numpy(getattr(layer, name)) for layer in dense for name in "Wb"]


def torch_trajectory(scenario, optimizer_name, steps=STEPS):
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    kind, arguments, max_norm = OPTIMIZERS[optimizer_name]
    weights, biases, batches = problem()
    layers = [torch.nn.Linear(*shape).double() for shape in SHAPES]
    with torch.no_grad():
        for layer, weight, bias in zip(layers, weights, biases):
            layer.weight.copy_(torch.from_numpy(weight.T))
            layer.bias.copy_(torch.from_numpy(bias))
    model = torch.nn.Sequential(layers[0], torch.nn.Tanh(), layers[1])
    optimizer = getattr(torch.optim, kind)(model.parameters(), foreach=False, **arguments)
    for index in range(steps):
        x, t = batches[index % len(batches)]
        missing = SCENARIOS[scenario](index)
        for layer_index, layer in enumerate(layers):  # frozen: requires_grad False, so its grad stays None
            layer.requires_grad_(not {(layer_index, "W"), (layer_index, "b")} <= missing)
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.mse_loss(model(torch.from_numpy(x)), torch.from_numpy(t)).backward()
        for layer_index, name in missing:
            getattr(layers[layer_index], {"W": "weight", "b": "bias"}[name]).grad = None
        if max_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)  # over the parameters with a grad
        optimizer.step()
    return [value for layer in layers for value in (layer.weight.detach().numpy().T, layer.bias.detach().numpy())]


def assert_same(got, expected):
    for actual, wanted in zip(got, expected):
        np.testing.assert_allclose(actual, wanted, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("optimizer_name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("scenario", sorted(set(SCENARIOS) - {"frozen_long"}))
def test_matches_torch_when_parameters_miss_steps(backend, scenario, optimizer_name):
    assert_same(gpunn_trajectory(backend, scenario, optimizer_name)[2], torch_trajectory(scenario, optimizer_name))


@pytest.mark.parametrize("scenario", ["frozen_then_unfrozen", "frozen_in_the_middle"])
def test_a_recorded_step_keeps_the_counts_across_freezes(scenario):
    """A recorded graph (replayed on the CPU) records again at a freeze; the counts live on the device."""
    assert_same(gpunn_trajectory(ReplayingBackend(), scenario, "adamw", graph=True)[2],
                gpunn_trajectory("numpy", scenario, "adamw")[2])


@pytest.mark.parametrize("optimizer_name", ["adam", "adamw"])
def test_the_case_one_count_per_model_put_137_percent_apart(optimizer_name):
    """Issue 22's case: a layer frozen for 830 steps, then updated once. One count per model corrected
    that first update as step 831, lr·(1−β1)/(1−β1⁸³¹) · √(1−β2⁸³¹)/√(1−β2) ≈ 2.37·lr instead of lr: its
    move was 137 % (AdamW) and 138 % (Adam) off torch's, measured on the tree before per-parameter
    counts. Now torch's, to 1e-12."""
    steps = LONG_FREEZE + 1
    start = problem()[0][0]
    moved = gpunn_trajectory("numpy", "frozen_long", optimizer_name, steps=steps)[2][0] - start
    wanted = torch_trajectory("frozen_long", optimizer_name, steps=steps)[0] - start
    assert np.max(np.abs(moved - wanted)) <= 1e-12 * np.max(np.abs(wanted)), \
        f"{np.linalg.norm(moved - wanted) / np.linalg.norm(wanted):.0%} apart"


@pytest.mark.parametrize("kind", ["Adam", "AdamW"])
def test_the_first_update_after_unfreezing_is_the_parameters_own_first(backend, kind):
    """Without torch: Adam's first update of a parameter moves each element by lr·|g|/(|g| + eps) ≈ lr
    (after AdamW's decay p·(1 − lr·wd)) whatever the model's count, and the parameter's count
    (state_dict()["arrays"]["step"], flat order W0, W1, b0, b1) is its own. One count per model
    corrected it as step 11: a move of about 0.33·lr."""
    lr, decay = 0.01, 1 - 0.01 * 0.1 if kind == "AdamW" else 1.0
    _, optimizer, before = gpunn_trajectory(backend, "frozen_then_unfrozen", kind.lower(), steps=10)
    np.testing.assert_array_equal(optimizer.state_dict()["arrays"]["step"], [0, 10, 0, 10])
    _, optimizer, after = gpunn_trajectory(backend, "frozen_then_unfrozen", kind.lower(), steps=11)
    for index in (0, 1):  # W0, b0: frozen for 10 steps, then updated once
        np.testing.assert_allclose(np.abs(after[index] - decay * before[index]), lr, rtol=1e-3)
    np.testing.assert_array_equal(optimizer.state_dict()["arrays"]["step"], [1, 11, 1, 11])


def test_the_first_update_after_a_long_freeze_is_the_parameters_own_first():
    """Issue 22's case without torch: after 830 frozen steps the first move is lr, not 2.37·lr."""
    before = problem()[0][0]
    after = gpunn_trajectory("numpy", "frozen_long", "adam", steps=LONG_FREEZE + 1)[2][0]
    np.testing.assert_allclose(np.abs(after - before), 0.01, rtol=1e-3)


def test_parity_numpy_and_cupy_standin_with_frozen_layers_and_none_gradients():
    """The segment table in the CuPy kernel (on the CPU stand-in) and in the NumPy runs agree."""
    from support import cupy_standin

    for scenario in set(SCENARIOS) - {"frozen_long"}:
        expected = gpunn_trajectory("numpy", scenario, "adamw_clipped")[2]
        with cupy_standin.installed():
            got = gpunn_trajectory("cupy", scenario, "adamw_clipped")[2]
        assert_same(got, expected)


# --- the counts in optimizer state ------------------------------------------------------------------------
def test_state_dict_round_trips_the_counts_and_training_goes_on_the_same(backend, tmp_path):
    model, optimizer, _ = gpunn_trajectory(backend, "frozen_then_unfrozen", "adam", steps=12)
    state = optimizer.state_dict()
    np.testing.assert_array_equal(state["arrays"]["step"], [2, 12, 2, 12])
    model.save(tmp_path / "m.npz", optimizer=optimizer)
    loaded = gn.load(tmp_path / "m.npz", backend=backend)
    restored = gn.load_optimizer(tmp_path / "m.npz", loaded)
    np.testing.assert_array_equal(restored.state_dict()["arrays"]["step"], [2, 12, 2, 12])
    x, t = problem()[2][12]
    for net, opt in ((model, optimizer), (loaded, restored)):
        loss = gn.MSELoss()
        opt.zero_grad()
        loss(net(x), t)
        net.backward(loss.backward())
        opt.step()
    for a, b in zip(model.parameters(), loaded.parameters()):
        np.testing.assert_array_equal(model.backend.to_numpy(a.value), loaded.backend.to_numpy(b.value))


def test_a_state_with_one_count_for_the_model_loads_as_that_count_for_every_parameter():
    """What gpunn wrote before per-parameter counts (no "step" array) gave every update the model's
    count: loading it gives every parameter that count, so a resumed run updates as it would have."""
    model, optimizer, _ = gpunn_trajectory("numpy", "frozen_then_unfrozen", "adam", steps=4)
    state = optimizer.state_dict()
    del state["arrays"]["step"]
    twin = gpunn_trajectory("numpy", "frozen_then_unfrozen", "adam", steps=0)[1]
    twin.load_state_dict(state)
    np.testing.assert_array_equal(twin.state_dict()["arrays"]["step"], [4, 4, 4, 4])


@pytest.mark.parametrize("steps,message", [([1.5, 4, 4, 4], "whole numbers"), ([5, 4, 4, 4], "whole numbers from 0"),
                                           ([-1, 4, 4, 4], "whole numbers"), ([4, 4, 4], "shape"),
                                           ([np.nan, 4, 4, 4], "whole numbers")])
def test_bad_counts_are_refused_and_leave_the_optimizer_as_it_was(steps, message):
    model, optimizer, _ = gpunn_trajectory("numpy", "frozen_then_unfrozen", "adam", steps=4)
    state = optimizer.state_dict()
    state["arrays"]["step"] = np.array(steps, float)
    before = optimizer.state_dict()
    with pytest.raises(ValueError, match=message):
        optimizer.load_state_dict(state)
    after = optimizer.state_dict()
    for name in before["arrays"]:
        np.testing.assert_array_equal(after["arrays"][name], before["arrays"][name])
