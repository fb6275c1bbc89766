"""Optimizer trajectories from torch.optim, the reference gpunn's optimizers must reproduce.

Regenerate with ``python tests/golden/torch_trajectories.py`` (PyTorch installed; rerunning it with the
same torch writes the same bytes). It writes two files, which the tests compare gpunn with on every run
(CI has no PyTorch), and with live PyTorch too where it is installed:

- ``trajectories.npz`` (tests/optim/test_optim_trajectories.py): each case of CASES trains the same
  float64 5-7-3 tanh MLP on fixed batches for 50 steps under MSE;
- ``missed_steps.npz`` (tests/optim/test_per_parameter_steps.py, issue 22): each optimizer of
  OPTIMIZERS trains it while parameters miss steps (SCENARIOS: layers frozen, a gradient set to None).

Both record the loss of every step and the final parameters.
"""

from pathlib import Path

import numpy as np

STEPS, SHAPES = 50, ((5, 7), (7, 3))
GOLDEN = Path(__file__).with_name("trajectories.npz")
MISSED_STEPS_GOLDEN = Path(__file__).with_name("missed_steps.npz")

#: name -> (optimizer, its arguments, schedule or None, max_grad_norm or None, decay_biases)
CASES = {
    "sgd": ("SGD", {"lr": 0.1}, None, None, True),
    "sgd_momentum": ("SGD", {"lr": 0.05, "momentum": 0.9}, None, None, True),
    "sgd_nesterov": ("SGD", {"lr": 0.05, "momentum": 0.9, "nesterov": True}, None, None, True),
    "sgd_weight_decay": ("SGD", {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.05}, None, None, True),
    "sgd_decay_weights_only": ("SGD", {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.05}, None, None, False),
    "sgd_clipped": ("SGD", {"lr": 0.2, "momentum": 0.5}, None, 0.3, True),
    "adam": ("Adam", {"lr": 0.01}, None, None, True),
    "adam_l2": ("Adam", {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.02}, None, None, True),
    "adamw": ("AdamW", {"lr": 0.01, "weight_decay": 0.1}, None, None, True),
    "adamw_clipped_weights_only": ("AdamW", {"lr": 0.02, "weight_decay": 0.1}, None, 0.2, False),
    "step_decay": ("SGD", {"lr": 0.1, "momentum": 0.9}, ("StepDecay", {"lr": 0.1, "step_size": 10, "gamma": 0.5}),
                   None, True),
    "exponential_decay": ("Adam", {"lr": 0.02}, ("ExponentialDecay", {"lr": 0.02, "gamma": 0.95}), None, True),
    "cosine_warmup": ("AdamW", {"lr": 0.02}, ("CosineDecay", {"lr": 0.02, "total_steps": STEPS, "final_lr": 0.001,
                                                             "warmup_steps": 5}), None, True),
    "one_cycle": ("SGD", {"lr": 0.1, "momentum": 0.9}, ("OneCycle", {"max_lr": 0.1, "total_steps": STEPS}), None, True),
}


MISSED_STEPS, LONG_FREEZE = 30, 830
#: name -> per step, the (Dense index, "W" or "b") pairs left without an update that step.
SCENARIOS = {
    # layer 0 frozen for the first third, then trained: its first update is its own step 1
    "frozen_then_unfrozen": lambda step: {(0, "W"), (0, "b")} if step < 10 else set(),
    # the reverse: layer 1 trained, frozen for a third, trained again (its count resumes at 11)
    "frozen_in_the_middle": lambda step: {(1, "W"), (1, "b")} if 10 <= step < 20 else set(),
    # the output bias's gradient set to None every third step (torch: p.grad = None)
    "gradient_none": lambda step: {(1, "b")} if step % 3 == 0 else set(),
    # issue 22's case: layer 0 frozen for LONG_FREEZE steps, then trained (run for LONG_FREEZE + 1 steps)
    "frozen_long": lambda step: {(0, "W"), (0, "b")} if step < LONG_FREEZE else set(),
}
#: name -> (optimizer, its arguments, max_grad_norm or None), each run through every scenario
OPTIMIZERS = {
    "adam": ("Adam", {"lr": 0.01}, None),
    "adam_l2": ("Adam", {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.02}, None),
    "adamw": ("AdamW", {"lr": 0.01, "weight_decay": 0.1}, None),
    "adamw_clipped": ("AdamW", {"lr": 0.02, "weight_decay": 0.1}, 0.2),  # the norm of the updated gradients
    "sgd_momentum": ("SGD", {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.05}, None),  # no step term: a check
}
#: (scenario, optimizer, steps) recorded in missed_steps.npz
MISSED_STEPS_RUNS = ([(scenario, name, MISSED_STEPS) for scenario in sorted(set(SCENARIOS) - {"frozen_long"})
                      for name in sorted(OPTIMIZERS)]
                     + [("frozen_long", name, LONG_FREEZE + 1) for name in ("adam", "adamw")])


def problem():
    """Initial weights (in, out) and biases, and STEPS batches of (X, T), all float64."""
    rng = np.random.default_rng(20261122)
    weights = [rng.normal(0, 0.5, size=shape) for shape in SHAPES]
    biases = [rng.normal(0, 0.1, size=shape[1]) for shape in SHAPES]
    batches = [(rng.normal(size=(16, 5)), rng.normal(size=(16, 3))) for _ in range(STEPS)]
    return weights, biases, batches


def _torch_scheduler(torch, optimizer, schedule):
    if schedule is None:
        return None
    kind, arguments = schedule
    lr_scheduler = torch.optim.lr_scheduler
    if kind == "StepDecay":
        return lr_scheduler.StepLR(optimizer, step_size=arguments["step_size"], gamma=arguments["gamma"])
    if kind == "ExponentialDecay":
        return lr_scheduler.ExponentialLR(optimizer, gamma=arguments["gamma"])
    if kind == "CosineDecay":
        warmup, total = arguments["warmup_steps"], arguments["total_steps"]
        return lr_scheduler.SequentialLR(optimizer, [
            lr_scheduler.LinearLR(optimizer, start_factor=1 / warmup, total_iters=warmup - 1),
            lr_scheduler.CosineAnnealingLR(optimizer, T_max=total - warmup, eta_min=arguments["final_lr"])],
            milestones=[warmup])
    if kind == "OneCycle":
        return lr_scheduler.OneCycleLR(optimizer, max_lr=arguments["max_lr"], total_steps=arguments["total_steps"],
                                       cycle_momentum=False)
    raise ValueError(kind)


def torch_run(kind, arguments, schedule=None, max_norm=None, decay_biases=True, steps=STEPS,
              missing=lambda step: set()):
    """(losses per step, final weights, final biases) of the MLP under torch.optim: ``steps`` steps over
    the batches in turn; ``missing(step)`` names the (layer, "W" or "b") pairs without an update that
    step: a layer with both frozen (``requires_grad`` False, so its grad stays None), else that grad set
    to None after the backward."""
    import torch

    weights, biases, batches = problem()
    layers = [torch.nn.Linear(*shape).double() for shape in SHAPES]
    with torch.no_grad():
        for layer, weight, bias in zip(layers, weights, biases):
            layer.weight.copy_(torch.from_numpy(weight.T))
            layer.bias.copy_(torch.from_numpy(bias))
    model = torch.nn.Sequential(layers[0], torch.nn.Tanh(), layers[1])
    if decay_biases:
        groups = model.parameters()
    else:
        groups = [{"params": [layer.weight for layer in layers]},
                  {"params": [layer.bias for layer in layers], "weight_decay": 0.0}]
    optimizer = getattr(torch.optim, kind)(groups, foreach=False, **arguments)
    scheduler = _torch_scheduler(torch, optimizer, schedule)
    losses = []
    for step in range(steps):
        x, t = batches[step % len(batches)]
        left_out = missing(step)
        for index, layer in enumerate(layers):
            layer.requires_grad_(not {(index, "W"), (index, "b")} <= left_out)
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(model(torch.from_numpy(x)), torch.from_numpy(t))
        loss.backward()
        for index, name in left_out:
            getattr(layers[index], {"W": "weight", "b": "bias"}[name]).grad = None
        if max_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)  # over the parameters with a grad
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        losses.append(loss.item())
    return (np.array(losses), [layer.weight.detach().numpy().T.copy() for layer in layers],
            [layer.bias.detach().numpy().copy() for layer in layers])


def torch_trajectory(name):
    """(losses per step, final weights, final biases) of one case of CASES under torch.optim."""
    kind, arguments, schedule, max_norm, decay_biases = CASES[name]
    return torch_run(kind, arguments, schedule, max_norm, decay_biases)


def torch_missed_steps(scenario, optimizer_name, steps=MISSED_STEPS):
    """(losses per step, final weights, final biases) of one optimizer of OPTIMIZERS through a scenario."""
    kind, arguments, max_norm = OPTIMIZERS[optimizer_name]
    return torch_run(kind, arguments, max_norm=max_norm, steps=steps, missing=SCENARIOS[scenario])


def torch_schedule_values(kind, arguments, steps):
    """The learning rate torch's counterpart scheduler gives at steps 0..steps−1."""
    import torch

    parameter = torch.nn.Parameter(torch.zeros(1))
    lr = arguments.get("lr", arguments.get("max_lr"))
    optimizer = torch.optim.SGD([parameter], lr=lr)
    scheduler = _torch_scheduler(torch, optimizer, (kind, arguments))
    values = []
    for _ in range(steps):
        values.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return np.array(values)


def _arrays(prefix, trajectory):
    losses, weights, biases = trajectory
    arrays = {f"{prefix}.losses": losses}
    for index, (weight, bias) in enumerate(zip(weights, biases)):
        arrays[f"{prefix}.W{index}"], arrays[f"{prefix}.b{index}"] = weight, bias
    return arrays


def main():
    import torch

    version = {"torch_version": np.array(torch.__version__)}
    arrays = dict(version)
    for name in CASES:
        arrays.update(_arrays(name, torch_trajectory(name)))
    for name, (_, _, schedule, _, _) in CASES.items():
        if schedule is not None:
            arrays[f"{name}.schedule"] = torch_schedule_values(*schedule, 3 * STEPS // 2 if schedule[0] in
                                                               ("StepDecay", "ExponentialDecay") else STEPS)
    np.savez(GOLDEN, **arrays)
    missed = dict(version)
    for scenario, name, steps in MISSED_STEPS_RUNS:
        missed.update(_arrays(f"{scenario}.{name}", torch_missed_steps(scenario, name, steps)))
    np.savez(MISSED_STEPS_GOLDEN, **missed)
    print(f"wrote {GOLDEN} and {MISSED_STEPS_GOLDEN} from torch {torch.__version__}")


if __name__ == "__main__":
    main()
