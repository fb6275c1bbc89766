"""gpunn's optimizers, clipping and schedules follow torch.optim step for step (float64, 50 steps).

The reference is tests/golden/trajectories.npz, written by tests/golden/torch_trajectories.py
with PyTorch; where PyTorch is installed the same cases also run live against it.
"""

import numpy as np
import pytest

import gpunn as gn
from gpunn.optim import schedules

from golden.torch_trajectories import CASES, GOLDEN, problem, torch_schedule_values, torch_trajectory

RTOL = 1e-10


def gpunn_trajectory(backend, name, graph=False):
    kind, arguments, schedule, max_norm, decay_biases = CASES[name]
    weights, biases, batches = problem()
    with gn.use_backend(backend):
        model = gn.Sequential(gn.Dense(5, 7, weight=weights[0], bias=biases[0], dtype="float64"), gn.Tanh(),
                              gn.Dense(7, 3, weight=weights[1], bias=biases[1], dtype="float64"))
    options = dict(arguments)
    if schedule is not None:
        options["lr"] = getattr(schedules, schedule[0])(**schedule[1])
    optimizer = getattr(gn, kind)(max_grad_norm=max_norm, decay_biases=decay_biases, **options)
    step = gn.TrainStep(model, gn.MSELoss(), optimizer, graph=graph)
    losses = []
    for x, t in batches:
        losses.append(float(step(*step.prepare(x, t))))
    dense = [model.layers[0], model.layers[2]]
    return (np.array(losses), [model.backend.to_numpy(layer.W) for layer in dense],
            [model.backend.to_numpy(layer.b) for layer in dense])


def assert_same_trajectory(got, expected):
    losses, weights, biases = got
    expected_losses, expected_weights, expected_biases = expected
    np.testing.assert_allclose(losses, expected_losses, rtol=RTOL, atol=0)
    for actual, wanted in zip(weights + biases, expected_weights + expected_biases):
        np.testing.assert_allclose(actual, wanted, rtol=RTOL, atol=1e-13)


def golden(name):
    with np.load(GOLDEN) as archive:
        return (archive[f"{name}.losses"], [archive[f"{name}.W0"], archive[f"{name}.W1"]],
                [archive[f"{name}.b0"], archive[f"{name}.b1"]])


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_torch_golden(backend, name):
    assert_same_trajectory(gpunn_trajectory(backend, name), golden(name))


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_live_torch(name):
    pytest.importorskip("torch", reason="PyTorch is not installed; the golden file covers this comparison")
    assert_same_trajectory(gpunn_trajectory("numpy", name), torch_trajectory(name))


@pytest.mark.parametrize("name", sorted(n for n, case in CASES.items() if case[2] is not None))
def test_schedule_values_match_torch(name):
    kind, arguments = CASES[name][2]
    with np.load(GOLDEN) as archive:
        expected = archive[f"{name}.schedule"]
    schedule = getattr(schedules, kind)(**arguments)
    np.testing.assert_allclose([schedule(step) for step in range(expected.size)], expected, rtol=1e-12)
    try:
        import torch  # noqa: F401
    except ImportError:
        return
    np.testing.assert_allclose(expected, torch_schedule_values(kind, arguments, expected.size), rtol=1e-12)


def test_golden_file_is_not_stale():
    """Every case has its golden trajectory (rerun tests/golden/torch_trajectories.py after adding one)."""
    with np.load(GOLDEN) as archive:
        names = {key.split(".")[0] for key in archive.files if "." in key}
    assert names == set(CASES)
