"""Optimizers with torch.optim's semantics, each one fused update over a model's flat buffers."""

from __future__ import annotations

from gpunn import checks
from gpunn.optim.optimizer import Optimizer
from gpunn.optim.state import optimizer_from_config


def _nesterov(nesterov, momentum: float) -> bool:
    nesterov = checks.flag("SGD", "nesterov", nesterov)
    if nesterov and momentum == 0:
        raise ValueError("SGD: nesterov=True needs a momentum above 0 (as in torch.optim.SGD)")
    return nesterov


class SGD(Optimizer):
    """Stochastic gradient descent as torch.optim.SGD (dampening 0).

    g ← g + wd·p; with momentum μ: v ← μ·v + g, then g ← g + μ·v (Nesterov) or g ← v; p ← p − lr·g.
    ``weight_decay`` applies to every parameter unless ``decay_biases=False`` (which exempts biases
    and every other one-dimensional parameter); ``max_grad_norm`` clips by the global L2 norm first.
    """

    rule_name = "sgd"

    def __init__(self, params=None, lr=0.01, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0, max_grad_norm=None, decay_biases: bool = True):
        momentum = checks.number("SGD", "momentum", momentum, low=0.0, high=1.0, high_open=True)
        super().__init__(params, lr, weight_decay, decay_biases, max_grad_norm, {"momentum": momentum},
                         _nesterov(nesterov, momentum))

    @property
    def momentum(self) -> float:
        return self.numbers["momentum"]

    @momentum.setter
    def momentum(self, value) -> None:
        """Takes effect at the next step (a recorded graph records again)."""
        value = checks.number("SGD", "momentum", value, low=0.0, high=1.0, high_open=True)
        _nesterov(self.flag, value)  # Nesterov needs a momentum
        self.numbers["momentum"] = value

    @property
    def nesterov(self) -> bool:
        return self.flag

    @nesterov.setter
    def nesterov(self, value) -> None:
        self.flag = _nesterov(value, self.momentum)

    def _rule_arguments(self) -> dict:
        return {"momentum": self.numbers["momentum"], "nesterov": self.flag}


class Adam(Optimizer):
    """Adam as torch.optim.Adam (L2 ``weight_decay`` added to the gradient, no amsgrad).

    m ← β1·m + (1−β1)·g; v ← β2·v + (1−β2)·g²; p ← p − lr/(1−β1ᵗ) · m / (√v/√(1−β2ᵗ) + ε), where
    t counts the updates applied to that parameter, as torch's per-parameter state["step"]: a step
    that leaves it out (frozen, or its gradient None) does not count, nor does a float16 step
    skipped for overflow.
    """

    rule_name = "adam"
    decoupled = False

    def __init__(self, params=None, lr=1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
                 max_grad_norm=None, decay_biases: bool = True):
        owner = type(self).__name__
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"{owner}: betas must be a pair (beta1, beta2), got {betas!r}")
        beta1, beta2 = (checks.number(owner, f"betas[{i}]", beta, low=0.0, high=1.0, high_open=True) for i, beta in enumerate(betas))
        eps = checks.number(owner, "eps", eps, low=0.0)
        super().__init__(params, lr, weight_decay, decay_biases, max_grad_norm,
                         {"beta1": beta1, "beta2": beta2, "eps": eps}, self.decoupled)

    @property
    def betas(self):
        return self.numbers["beta1"], self.numbers["beta2"]

    @betas.setter
    def betas(self, value) -> None:
        owner = type(self).__name__
        if not isinstance(value, (tuple, list)) or len(value) != 2:
            raise ValueError(f"{owner}: betas must be a pair (beta1, beta2), got {value!r}")
        self.numbers["beta1"], self.numbers["beta2"] = (
            checks.number(owner, f"betas[{i}]", beta, low=0.0, high=1.0, high_open=True) for i, beta in enumerate(value))

    @property
    def eps(self) -> float:
        return self.numbers["eps"]

    @eps.setter
    def eps(self, value) -> None:
        self.numbers["eps"] = checks.number(type(self).__name__, "eps", value, low=0.0)

    def _rule_arguments(self) -> dict:
        return {"betas": list(self.betas), "eps": self.numbers["eps"]}


class AdamW(Adam):
    """AdamW as torch.optim.AdamW: decoupled decay p ← p·(1 − lr·wd) before the Adam update."""

    decoupled = True

    def __init__(self, params=None, lr=1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.01,
                 max_grad_norm=None, decay_biases: bool = True):
        super().__init__(params, lr, betas, eps, weight_decay, max_grad_norm, decay_biases)


OPTIMIZERS = {cls.__name__: cls for cls in (SGD, Adam, AdamW)}


def load_optimizer_state(state: dict, model) -> Optimizer:
    """An optimizer for ``model`` restored from ``Optimizer.state_dict()`` output."""
    optimizer = optimizer_from_config(state["config"], OPTIMIZERS)
    optimizer.bind(model.parameters())
    optimizer.load_state_dict(state)
    return optimizer


__all__ = ["SGD", "Adam", "AdamW", "Optimizer", "OPTIMIZERS", "load_optimizer_state"]
