"""The registry of update rules: each is one ``kernels/optim.cuh`` rule and its host twin.

A rule names its state buffers and hyperparameters; the CuPy backend builds one ElementwiseKernel
per rule from that (``gpunn_<name>_update``, a struct template: its constructor runs once per
parameter segment and keeps what the step count and hyperparameters fix, its call runs per
element), the NumPy backend calls the host twin, which updates whole flat buffers in a few passes
with the same order of operations. Adding an optimizer means one ``.cuh`` struct, one twin and one
entry here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

#: int64 numbers per parameter segment in an update's segment table (start, stop, state start,
#: updated this step): optim.cuh's GPUNN_SEGMENT_FIELDS, which gpunn/optim/segments.py fills.
SEGMENT_FIELDS = 4


@dataclass(frozen=True)
class UpdateRule:
    name: str
    #: Names of the flat state buffers (momentum, Adam moments), at most two.
    states: tuple[str, ...]
    #: Names of the three numeric hyperparameters h0..h2 of the .cuh constructor ("" = unused).
    numbers: tuple[str, str, str]
    #: Name of the boolean hyperparameter of the .cuh constructor ("" = unused).
    flag: str
    #: host(xp, param, states, grad, work, lr, step, weight_decay, decay_end, h0, h1, h2, flag):
    #: updates ``param`` and ``states`` in place with the array module ``xp``; ``work`` is scratch.
    #: ``grad`` is written only by L2 weight decay (a nonzero ``weight_decay``): otherwise it may
    #: be the model's own gradient, read in place.
    host: Callable

    @property
    def function(self) -> str:
        return f"gpunn_{self.name}_update"


def _decay_l2(xp, param, grad, work, weight_decay, decay_end):
    if weight_decay and decay_end:
        head = work[:decay_end]
        xp.multiply(param[:decay_end], weight_decay, out=head)
        grad[:decay_end] += head


def sgd_host(xp, param, states, grad, work, lr, step, weight_decay, decay_end, momentum, _h1, _h2, nesterov):
    _decay_l2(xp, param, grad, work, weight_decay, decay_end)
    if momentum:
        velocity = states[0]
        velocity *= momentum
        velocity += grad
        if nesterov:
            xp.multiply(velocity, momentum, out=work)
            work += grad
            grad = work
        else:
            grad = velocity
    xp.multiply(grad, lr, out=work)
    param -= work


def adam_host(xp, param, states, grad, work, lr, step, weight_decay, decay_end, beta1, beta2, eps, decoupled):
    exp_avg, exp_avg_sq = states
    if decoupled:
        if weight_decay and decay_end:
            param[:decay_end] *= 1 - lr * weight_decay
    else:
        _decay_l2(xp, param, grad, work, weight_decay, decay_end)
    xp.subtract(grad, exp_avg, out=work)
    work *= 1 - beta1
    exp_avg += work
    exp_avg_sq *= beta2
    xp.multiply(grad, 1 - beta2, out=work)  # (1−β2)·g·g, torch's addcmul order
    work *= grad
    exp_avg_sq += work
    xp.sqrt(exp_avg_sq, out=work)
    work *= 1 / (1 - beta2 ** step) ** 0.5  # times the reciprocal: NumPy divides by a scalar 4× slower
    work += eps
    if eps >= xp.finfo(param.dtype).tiny:  # a normal eps: the denominator is never 0
        xp.divide(exp_avg, work, out=work)
    else:  # eps = 0 (or subnormal): a zero denominator moves nothing, as in kernels/optim.cuh
        zero = work == 0
        work[zero] = 1
        xp.divide(exp_avg, work, out=work)
        work[zero] = 0
    work *= lr / (1 - beta1 ** step)
    param -= work


RULES = {
    rule.name: rule for rule in (
        UpdateRule("sgd", ("velocity",), ("momentum", "", ""), "nesterov", sgd_host),
        UpdateRule("adam", ("exp_avg", "exp_avg_sq"), ("beta1", "beta2", "eps"), "decoupled", adam_host),
    )
}
