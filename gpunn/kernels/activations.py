"""The activation registry: adding an activation is one entry here plus its forward/backward
pair ``gpunn_<name>_forward(z, params…)`` / ``gpunn_<name>_backward(dy, saved, params…)`` in
``kernels/activations.cuh`` (and the NumPy twin beside the NumPy backend).

An entry says what backward reads: the output (sigmoid, tanh, relu: their slopes are functions
of the output, so nothing else is kept) or the input, the pre-activation (GELU, SiLU, …: the fused
forward then also writes it). Sequential's fusion plan, both backends and the host harness read
this table; nothing else branches on an activation's name.
"""

from __future__ import annotations

from dataclasses import dataclass

from gpunn import checks


@dataclass(frozen=True)
class ActivationKind:
    """One registry entry: the kernel name, what backward reads, the parameters and defaults."""

    name: str
    backward_reads: str  # "output" or "input"
    parameters: tuple = ()  # ((name, default), ...) in the order the .cuh functions take them

    @property
    def reads_input(self) -> bool:
        return self.backward_reads == "input"

    def forward_call(self, z: str, values) -> str:
        """The C expression of the forward, e.g. ``gpunn_leaky_relu_forward(z, negative_slope)``."""
        return f"gpunn_{self.name}_forward({', '.join([z, *values])})"

    def backward_call(self, dy: str, saved: str, values) -> str:
        return f"gpunn_{self.name}_backward({', '.join([dy, saved, *values])})"


REGISTRY = {kind.name: kind for kind in (
    ActivationKind("identity", "output"),
    ActivationKind("sigmoid", "output"),
    ActivationKind("tanh", "output"),
    ActivationKind("relu", "output"),
    ActivationKind("gelu", "input"),
    ActivationKind("gelu_tanh", "input"),
    ActivationKind("silu", "input"),
    ActivationKind("leaky_relu", "input", (("negative_slope", 0.01),)),
    ActivationKind("softplus", "input", (("beta", 1.0), ("threshold", 20.0))),
)}

ACTIVATIONS = tuple(REGISTRY)


@dataclass(frozen=True)
class ActivationFunction:
    """A registry entry with its parameter values: what a backend's fused ops are given."""

    kind: ActivationKind
    values: tuple = ()

    @property
    def name(self) -> str:
        return self.kind.name

    @property
    def reads_input(self) -> bool:
        return self.kind.reads_input


def activation_function(name: str, **parameters) -> ActivationFunction:
    """The activation ``name`` with ``parameters`` (defaults for the rest), checked."""
    kind = REGISTRY.get(name)
    if kind is None:
        raise ValueError(f"unknown activation {name!r}; expected one of {ACTIVATIONS}")
    known = dict(kind.parameters)
    unknown = set(parameters) - set(known)
    if unknown:
        raise TypeError(f"activation {name!r} takes parameters {tuple(known)}, got {sorted(unknown)}")
    values = []
    for parameter, default in kind.parameters:
        values.append(checks.number(name, parameter, parameters.get(parameter, default)))
    return ActivationFunction(kind, tuple(values))


def as_activation_function(activation) -> ActivationFunction:
    """Accept an ActivationFunction, or a registry name (its parameters at their defaults)."""
    if isinstance(activation, ActivationFunction):
        return activation
    if not isinstance(activation, str):
        raise TypeError(f"activation must be a name or an ActivationFunction, got {type(activation).__name__}")
    return activation_function(activation)


IDENTITY = activation_function("identity")
