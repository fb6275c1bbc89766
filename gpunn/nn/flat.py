"""One flat buffer for a model's parameters and one for their gradients.

Every ``Parameter.value`` and ``.grad`` of a model is a view into these two contiguous arrays,
so an optimizer updates the whole model in one fused pass, clipping reads one norm, and data
parallelism all-reduces one array. Parameters of two or more dimensions (weights) come first and
one-dimensional ones (biases, normalisation gains) last, so "decay the weights only" is a single
boundary index rather than a mask.
"""

from __future__ import annotations

#: Flat buffers are padded with zeros to a multiple of this many elements, so a backend can
#: reduce them in equal blocks (the CuPy gradient norm does).
PADDING = 1024


class FlatBuffers:
    """The flat storage of an ordered list of parameters on one backend and dtype."""

    def __init__(self, parameters, backend, dtype):
        parameters = list(parameters)
        for parameter in parameters:
            if parameter.owner is not None:
                raise ValueError(f"{parameter!r} already belongs to another model; build each model "
                                 "from its own layers (copy weights with load or by assignment)")
        self.backend, self.dtype = backend, dtype
        ordered = [p for p in parameters if len(p.shape) >= 2] + [p for p in parameters if len(p.shape) < 2]
        self.parameters = ordered
        self.offsets: dict[int, int] = {}
        total = 0
        for parameter in ordered:
            self.offsets[id(parameter)] = total
            total += parameter.size
        #: Elements [0, decay_end) belong to parameters of two or more dimensions.
        self.decay_end = sum(p.size for p in ordered if len(p.shape) >= 2)
        self.size = total
        padded = -(-total // PADDING) * PADDING
        self.values = backend.zeros((padded,), dtype)
        self.grads = backend.zeros((padded,), dtype)
        for parameter in ordered:
            start = self.offsets[id(parameter)]
            view = self.values[start:start + parameter.size].reshape(parameter.shape)
            view[...] = parameter.value
            gradient = self.grads[start:start + parameter.size].reshape(parameter.shape)
            if parameter.grad is not None and parameter.grad_valid:
                gradient[...] = parameter.grad
            parameter._value, parameter._grad, parameter.owner = view, gradient, self

    def offset(self, parameter) -> int:
        return self.offsets[id(parameter)]

    def decay_end_for(self, decay_biases: bool) -> int:
        """Where weight decay stops in the flat order: everything, or the weights only."""
        return self.values.size if decay_biases else self.decay_end
