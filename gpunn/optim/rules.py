"""The registry of update rules: each is one ``kernels/optim.cuh`` function and its host twin.

A rule names its state buffers and hyperparameters; the CuPy backend builds one ElementwiseKernel
per rule from that (``gpunn_<name>_update``), the NumPy backend calls the host twin, which
updates whole flat buffers in a few passes with the same order of operations. Adding an
optimizer means one ``.cuh`` function, one twin and one entry here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class UpdateRule:
    name: str
    #: Names of the flat state buffers (momentum, Adam moments), at most two.
    states: tuple[str, ...]
    #: Names of the three numeric hyperparameters h0..h2 of the .cuh signature ("" = unused).
    numbers: tuple[str, str, str]
    #: Name of the boolean hyperparameter of the .cuh signature ("" = unused).
    flag: str
    #: host(param, states, grad, work, lr, step, weight_decay, decay_end, h0, h1, h2, flag):
    #: updates ``param`` and ``states`` in place; ``grad`` and ``work`` are scratch buffers.
    host: Callable

    @property
    def function(self) -> str:
        return f"gpunn_{self.name}_update"


def _decay_l2(param, grad, weight_decay, decay_end):
    if weight_decay:
        head = grad[:decay_end]
        head += weight_decay * param[:decay_end]


def sgd_host(param, states, grad, work, lr, step, weight_decay, decay_end, momentum, _h1, _h2, nesterov):
    _decay_l2(param, grad, weight_decay, decay_end)
    if momentum:
        velocity = states[0]
        velocity *= momentum
        velocity += grad
        if nesterov:
            work[...] = velocity
            work *= momentum
            grad += work
        else:
            grad[...] = velocity
    grad *= lr
    param -= grad


def adam_host(param, states, grad, work, lr, step, weight_decay, decay_end, beta1, beta2, eps, decoupled):
    exp_avg, exp_avg_sq = states
    if decoupled:
        if weight_decay:
            param[:decay_end] *= 1 - lr * weight_decay
    else:
        _decay_l2(param, grad, weight_decay, decay_end)
    work[...] = grad
    work -= exp_avg
    work *= 1 - beta1
    exp_avg += work
    exp_avg_sq *= beta2
    work[...] = grad
    work *= 1 - beta2
    work *= grad
    exp_avg_sq += work
    step_size = lr / (1 - beta1 ** step)
    work[...] = exp_avg_sq
    work **= 0.5
    work /= (1 - beta2 ** step) ** 0.5
    work += eps
    grad[...] = exp_avg
    grad *= step_size
    grad /= work
    param -= grad


RULES = {
    rule.name: rule for rule in (
        UpdateRule("sgd", ("velocity",), ("momentum", "", ""), "nesterov", sgd_host),
        UpdateRule("adam", ("exp_avg", "exp_avg_sq"), ("beta1", "beta2", "eps"), "decoupled", adam_host),
    )
}
