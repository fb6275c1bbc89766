"""The optimizer rules of ``kernels/optim.cuh`` built as host code for the NumPy backend: one
vectorised pass over the flat buffers instead of a dozen NumPy passes, with the same maths as the
GPU kernel (gpunn_effective_grad, then the rule). Built with the host compiler at first use and
cached (gpunn.host_compiler), for this machine's instruction set (-march=native), keeping IEEE
rounding (no FMA contraction, no fast-math). Where no compiler works, or ``GPUNN_HOST_KERNELS=0``,
the NumPy backend runs the rules' NumPy twins instead; ``gpunn info`` says which.
"""

from __future__ import annotations

import ctypes
import functools

from gpunn.backends.host_compiler import HOST_PRELUDE, HOST_TYPES as _TYPES, HostBuild
from gpunn.kernels.source import kernel_source
from gpunn.kernels.update_rules import RULES

FLAGS = ("-std=c++17", "-O3", "-march=native", "-fno-math-errno", "-ffp-contract=off")


def _loop(rule, c_type: str) -> str:
    states = [f"s{index}[i]" for index in range(len(rule.states))] + ["unused"] * (2 - len(rule.states))
    return f"""
extern "C" void {rule.function}_host_{c_type}({c_type}* __restrict__ p, {c_type}* __restrict__ s0,
        {c_type}* __restrict__ s1, const {c_type}* __restrict__ g, long n, {c_type} lr, {c_type} step,
        {c_type} weight_decay, long decay_end, {c_type} h0, {c_type} h1, {c_type} h2, int flag,
        {c_type} loss_scale, {c_type} norm, {c_type} max_norm) {{
    for (long i = 0; i < n; ++i) {{
        {c_type} unused = 0;
        {c_type} grad = gpunn_effective_grad(g[i], loss_scale, norm, max_norm);
        {rule.function}(p[i], {", ".join(states)}, grad, lr, step, i < decay_end ? weight_decay : {c_type}(0),
                        h0, h1, h2, flag != 0);
    }}
}}"""


def source() -> str:
    loops = "".join(_loop(rule, c_type) for rule in RULES.values() for c_type, _ in _TYPES.values())
    return f"{HOST_PRELUDE}{kernel_source('optim.cuh')}\n{loops}\n"


BUILD = HostBuild(source, FLAGS)


def status() -> str:
    """One line for ``gpunn info``."""
    return BUILD.status("compiled .cuh rules (one pass)")


@functools.cache
def _function(rule_name: str, dtype):
    library = BUILD.library
    if library is None:
        return None
    c_type, scalar = _TYPES[dtype]
    function = getattr(library, f"{RULES[rule_name].function}_host_{c_type}")
    function.argtypes = ([ctypes.c_void_p] * 4 + [ctypes.c_long, scalar, scalar, scalar, ctypes.c_long]
                         + [scalar] * 3 + [ctypes.c_int] + [scalar] * 3)
    function.restype = None
    return function


def update(rule, param, states, grad, lr, step, weight_decay, decay_end, hyper, flag, loss_scale, norm,
           max_norm) -> bool:
    """Run ``rule`` over contiguous float32/float64 buffers in one compiled pass; False (nothing
    done) where it cannot, and the caller runs the NumPy twin."""
    dtype = param.dtype
    arrays = [param, grad, *states]
    if dtype not in _TYPES or any(a.dtype != param.dtype or not a.flags.c_contiguous for a in arrays):
        return False
    function = _function(rule.name, dtype)
    if function is None:
        return False
    pointers = [a.ctypes.data for a in states] + [0] * (2 - len(states))
    function(param.ctypes.data, *pointers, grad.ctypes.data, param.size, lr, step, weight_decay, decay_end,
             *hyper, int(flag), loss_scale, norm, max_norm)
    return True


__all__ = ["FLAGS", "source", "status", "update"]
