"""Optimizer trajectories from torch.optim, the reference gpunn's optimizers must reproduce.

``python tests/golden/torch_trajectories.py`` (with PyTorch installed) writes
``tests/golden/trajectories.npz``; tests/optim/test_optim_trajectories.py compares gpunn with that file
on every run, and with live PyTorch too where it is installed. Each case trains the same float64
5-7-3 tanh MLP on fixed batches for 50 steps under MSE and records the loss of every step and the
final parameters.
"""

from pathlib import Path

import numpy as np

STEPS, SHAPES = 50, ((5, 7), (7, 3))
GOLDEN = Path(__file__).with_name("trajectories.npz")

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


def torch_trajectory(name):
    """(losses per step, final weights, final biases) of one case under torch.optim."""
    import torch

    kind, arguments, schedule, max_norm, decay_biases = CASES[name]
    weights, biases, batches = problem()
    first, second = (torch.nn.Linear(*shape).double() for shape in SHAPES)
    with torch.no_grad():
        for layer, weight, bias in zip((first, second), weights, biases):
            layer.weight.copy_(torch.from_numpy(weight.T))
            layer.bias.copy_(torch.from_numpy(bias))
    model = torch.nn.Sequential(first, torch.nn.Tanh(), second)
    if decay_biases:
        groups = model.parameters()
    else:
        groups = [{"params": [first.weight, second.weight]},
                  {"params": [first.bias, second.bias], "weight_decay": 0.0}]
    optimizer = getattr(torch.optim, kind)(groups, foreach=False, **arguments)
    scheduler = _torch_scheduler(torch, optimizer, schedule)
    losses = []
    for x, t in batches:
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(torch.from_numpy(x)), torch.from_numpy(t))
        loss.backward()
        if max_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        losses.append(loss.item())
    return (np.array(losses), [layer.weight.detach().numpy().T.copy() for layer in (first, second)],
            [layer.bias.detach().numpy().copy() for layer in (first, second)])


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


def main():
    import torch

    arrays = {"torch_version": np.array(torch.__version__)}
    for name in CASES:
        losses, weights, biases = torch_trajectory(name)
        arrays[f"{name}.losses"] = losses
        for index, (weight, bias) in enumerate(zip(weights, biases)):
            arrays[f"{name}.W{index}"], arrays[f"{name}.b{index}"] = weight, bias
    for name, (_, _, schedule, _, _) in CASES.items():
        if schedule is not None:
            arrays[f"{name}.schedule"] = torch_schedule_values(*schedule, 3 * STEPS // 2 if schedule[0] in
                                                               ("StepDecay", "ExponentialDecay") else STEPS)
    np.savez(GOLDEN, **arrays)
    print(f"wrote {GOLDEN} from torch {torch.__version__}")


if __name__ == "__main__":
    main()
