"""Optimizers: they read the gradients that backward wrote and update the parameters."""

from __future__ import annotations

from .layers import Parameter


class SGD:
    """Stochastic gradient descent with optional momentum (``v = μ·v + g; p -= lr·v``).

    The gradients are already averaged over the mini-batch, because every loss is a mean.
    ``params`` may be left out and bound later (``fit`` binds the model's parameters).
    """

    def __init__(self, params=None, lr: float = 0.01, momentum: float = 0.0):
        if not (isinstance(lr, (int, float)) and lr > 0):
            raise ValueError(f"SGD: lr must be a positive number, got {lr!r}")
        if not (isinstance(momentum, (int, float)) and 0 <= momentum < 1):
            raise ValueError(f"SGD: momentum must lie in [0, 1), got {momentum!r}")
        self.lr, self.momentum = float(lr), float(momentum)
        self.params: list[Parameter] = []
        self._velocity: dict[int, object] = {}
        if params is not None:
            self.bind(params)

    def bind(self, params) -> "SGD":
        params = list(params)
        for index, parameter in enumerate(params):
            if not isinstance(parameter, Parameter):
                raise TypeError(f"SGD: parameter {index} is {type(parameter).__name__}, not a gpunn "
                                "Parameter (pass model.parameters())")
        self.params, self._velocity = params, {}
        return self

    def step(self) -> None:
        """Apply one update to every parameter that has a fresh gradient."""
        if not self.params:
            raise RuntimeError("SGD.step: no parameters bound; pass model.parameters()")
        for parameter in self.params:
            if not parameter.grad_valid:
                continue
            backend = parameter.backend
            velocity = None
            if self.momentum:
                velocity = self._velocity.get(id(parameter))
                if velocity is None:
                    velocity = self._velocity[id(parameter)] = backend.zeros(parameter.shape,
                                                                             parameter.value.dtype)
            backend.sgd_update(parameter.value, parameter.grad, velocity, self.lr, self.momentum)

    def state_arrays(self) -> list:
        """The arrays the update keeps from one step to the next (the velocities)."""
        return list(self._velocity.values())

    def zero_grad(self) -> None:
        for parameter in self.params:
            parameter.grad_valid = False

    def config(self) -> dict:
        return {"lr": self.lr, "momentum": self.momentum}

