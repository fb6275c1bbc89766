"""Each parameter keeps its own step count, as torch.optim's state["step"] (issue 22): a parameter that
misses steps (its layer frozen, or its gradient set to None) is left out of them entirely, value, state
and count, and its bias correction later counts only its own updates. One fused launch per step
whatever is frozen (issue 24); the counts are saved, loaded and converted from one-count states.

The reference is tests/golden/missed_steps.npz, written by tests/golden/torch_trajectories.py with
PyTorch (float64: the loss of every step and the final parameters); where PyTorch is installed the
same runs also go live against it. The checks below the comparisons pin the same behaviour by its
first update after unfreezing."""

import numpy as np
import pytest
from support.replaying_backend import ReplayingBackend

import gpunn as gn

from golden.torch_trajectories import (LONG_FREEZE, MISSED_STEPS, MISSED_STEPS_GOLDEN, MISSED_STEPS_RUNS, OPTIMIZERS,
                                       SCENARIOS, problem, torch_missed_steps)


def gpunn_trajectory(backend, scenario, optimizer_name, graph=False, steps=MISSED_STEPS):
    """(model, optimizer, final (W0, b0, W1, b1), losses per step) of the 5-7-3 tanh MLP of the golden
    trajectories: frozen layers via ``trainable``, a gradient set to None via ``Parameter.grad``."""
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
    losses = []
    for index in range(steps):
        x, t = batches[index % len(batches)]
        missing = SCENARIOS[scenario](index)
        for layer_index, layer in enumerate(dense):
            layer.trainable = not {(layer_index, "W"), (layer_index, "b")} <= missing
        if graph:
            losses.append(float(step(*step.prepare(x, t))))
            continue
        optimizer.zero_grad()
        losses.append(loss(model(x), t))
        model.backward(loss.backward())
        for layer_index, name in missing:
            if dense[layer_index].trainable:  # a gradient set to None, the layer itself trainable
                getattr(dense[layer_index], {"W": "weight", "b": "bias"}[name]).grad = None
        optimizer.step()
    values = [model.backend.to_numpy(getattr(layer, name)) for layer in dense for name in "Wb"]
    return model, optimizer, values, np.array(losses)


def golden(scenario, optimizer_name):
    """The recorded torch run: (final (W0, b0, W1, b1), losses per step)."""
    prefix = f"{scenario}.{optimizer_name}"
    with np.load(MISSED_STEPS_GOLDEN) as archive:
        return ([archive[f"{prefix}.{name}{index}"] for index in (0, 1) for name in "Wb"],
                archive[f"{prefix}.losses"])


def torch_trajectory(scenario, optimizer_name, steps=MISSED_STEPS):
    """The live torch run, as golden() gives it (skipped without PyTorch)."""
    pytest.importorskip("torch", reason="PyTorch is not installed; the golden file covers this comparison")
    losses, weights, biases = torch_missed_steps(scenario, optimizer_name, steps)
    return [value for pair in zip(weights, biases) for value in pair], losses


def assert_same(got, expected):
    for actual, wanted in zip(got, expected):
        np.testing.assert_allclose(actual, wanted, rtol=1e-12, atol=1e-13)


def assert_same_run(got, expected):
    _, _, values, losses = got
    expected_values, expected_losses = expected
    np.testing.assert_allclose(losses, expected_losses, rtol=1e-12, atol=0)
    assert_same(values, expected_values)


SHORT_RUNS = [(scenario, name) for scenario, name, steps in MISSED_STEPS_RUNS if steps == MISSED_STEPS]


@pytest.mark.parametrize("scenario,optimizer_name", SHORT_RUNS)
def test_matches_torch_golden_when_parameters_miss_steps(backend, scenario, optimizer_name):
    assert_same_run(gpunn_trajectory(backend, scenario, optimizer_name), golden(scenario, optimizer_name))


@pytest.mark.parametrize("scenario,optimizer_name", SHORT_RUNS)
def test_matches_live_torch_when_parameters_miss_steps(scenario, optimizer_name):
    assert_same_run(gpunn_trajectory("numpy", scenario, optimizer_name), torch_trajectory(scenario, optimizer_name))


def test_golden_file_is_not_stale():
    """Every run has its recorded torch run (rerun tests/golden/torch_trajectories.py after adding one)."""
    with np.load(MISSED_STEPS_GOLDEN) as archive:
        recorded = {key.rsplit(".", 1)[0] for key in archive.files if "." in key}
        for scenario, name, steps in MISSED_STEPS_RUNS:
            assert archive[f"{scenario}.{name}.losses"].size == steps, (scenario, name)
    assert recorded == {f"{scenario}.{name}" for scenario, name, _ in MISSED_STEPS_RUNS}


@pytest.mark.parametrize("scenario", ["frozen_then_unfrozen", "frozen_in_the_middle"])
def test_a_recorded_step_keeps_the_counts_across_freezes(scenario):
    """A recorded graph (replayed on the CPU) records again at a freeze; the counts live on the device."""
    assert_same_run(gpunn_trajectory(ReplayingBackend(), scenario, "adamw", graph=True), golden(scenario, "adamw"))


LONG_RUNS = [name for scenario, name, _ in MISSED_STEPS_RUNS if scenario == "frozen_long"]


def assert_first_move_matches(optimizer_name, expected):
    """Issue 22's case: a layer frozen for 830 steps, then updated once. One count per model corrected
    that first update as step 831, lr·(1−β1)/(1−β1⁸³¹) · √(1−β2⁸³¹)/√(1−β2) ≈ 2.37·lr instead of lr: its
    move was 137 % (AdamW) and 138 % (Adam) off torch's, measured on the tree before per-parameter
    counts. Now torch's, to 1e-12; and the 831 losses (layer 1 trained all along) are torch's too."""
    start = problem()[0][0]
    _, _, values, losses = gpunn_trajectory("numpy", "frozen_long", optimizer_name, steps=LONG_FREEZE + 1)
    moved, wanted = values[0] - start, expected[0][0] - start
    assert np.max(np.abs(moved - wanted)) <= 1e-12 * np.max(np.abs(wanted)), \
        f"{np.linalg.norm(moved - wanted) / np.linalg.norm(wanted):.0%} apart"
    np.testing.assert_allclose(losses, expected[1], rtol=1e-12, atol=0)


@pytest.mark.parametrize("optimizer_name", LONG_RUNS)
def test_the_case_one_count_per_model_put_137_percent_apart(optimizer_name):
    assert_first_move_matches(optimizer_name, golden("frozen_long", optimizer_name))


@pytest.mark.parametrize("optimizer_name", LONG_RUNS)
def test_the_case_one_count_per_model_put_137_percent_apart_live(optimizer_name):
    assert_first_move_matches(optimizer_name, torch_trajectory("frozen_long", optimizer_name, LONG_FREEZE + 1))


@pytest.mark.parametrize("kind", ["Adam", "AdamW"])
def test_the_first_update_after_unfreezing_is_the_parameters_own_first(backend, kind):
    """Without torch: Adam's first update of a parameter moves each element by lr·|g|/(|g| + eps) ≈ lr
    (after AdamW's decay p·(1 − lr·wd)) whatever the model's count, and the parameter's count
    (state_dict()["arrays"]["step"], flat order W0, W1, b0, b1) is its own. One count per model
    corrected it as step 11: a move of about 0.33·lr."""
    lr, decay = 0.01, 1 - 0.01 * 0.1 if kind == "AdamW" else 1.0
    _, optimizer, before, _ = gpunn_trajectory(backend, "frozen_then_unfrozen", kind.lower(), steps=10)
    np.testing.assert_array_equal(optimizer.state_dict()["arrays"]["step"], [0, 10, 0, 10])
    _, optimizer, after, _ = gpunn_trajectory(backend, "frozen_then_unfrozen", kind.lower(), steps=11)
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
    model, optimizer, _, _ = gpunn_trajectory(backend, "frozen_then_unfrozen", "adam", steps=12)
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
    _, optimizer, _, _ = gpunn_trajectory("numpy", "frozen_then_unfrozen", "adam", steps=4)
    state = optimizer.state_dict()
    del state["arrays"]["step"]
    twin = gpunn_trajectory("numpy", "frozen_then_unfrozen", "adam", steps=0)[1]
    twin.load_state_dict(state)
    np.testing.assert_array_equal(twin.state_dict()["arrays"]["step"], [4, 4, 4, 4])


@pytest.mark.parametrize("steps,message", [([1.5, 4, 4, 4], "whole numbers"), ([5, 4, 4, 4], "whole numbers from 0"),
                                           ([-1, 4, 4, 4], "whole numbers"), ([4, 4, 4], "shape"),
                                           ([np.nan, 4, 4, 4], "whole numbers")])
def test_bad_counts_are_refused_and_leave_the_optimizer_as_it_was(steps, message):
    _, optimizer, _, _ = gpunn_trajectory("numpy", "frozen_then_unfrozen", "adam", steps=4)
    state = optimizer.state_dict()
    state["arrays"]["step"] = np.array(steps, float)
    before = optimizer.state_dict()
    with pytest.raises(ValueError, match=message):
        optimizer.load_state_dict(state)
    after = optimizer.state_dict()
    for name in before["arrays"]:
        np.testing.assert_array_equal(after["arrays"][name], before["arrays"][name])
