"""A parameter: a value and its gradient, views into the model's flat buffers once a model holds it."""

from __future__ import annotations

from gpunn.backends.selection import Backend


class Parameter:
    """A trainable array and its gradient; ``grad_valid`` is False until a backward writes it.

    Inside a model both arrays are views into the model's flat buffers (``gpunn.nn.flat``), so one
    fused update and one all-reduce cover every parameter. Writing into ``value`` in place works
    as usual; assigning a new array copies it into the same storage (after checking its shape), so
    training always sees what was assigned. The same holds for ``grad`` inside a model: an assigned
    gradient is copied into the flat gradient buffer and counts as fresh (as torch's ``p.grad = g``
    is used by the next step), and ``grad = None`` marks it stale (it reads None until a backward). Assigned arrays are checked as a
    layer's constructor checks its arrays: the shape, and finite values that fit the dtype.
    """

    def __init__(self, value, name: str, backend: Backend):
        self._value = value
        self.backend = backend
        self._grad = None
        self.grad_valid = False
        self.name = name
        #: The FlatBuffers holding this parameter once a model packs it, else None.
        self.owner = None
        #: False: the optimizer leaves it (and its state) as it is (``gpunn.nn.freezing``).
        self.trainable = True

    @property
    def value(self):
        return self._value

    @value.setter
    def value(self, array):
        self._copy_into(self._value, array, "an array")

    @property
    def grad(self):
        """The gradient the next step uses, or None when it is stale (before a backward, after
        ``optimizer.zero_grad()`` or ``grad = None``), as torch's ``p.grad`` after zero_grad()."""
        return self._grad if self.grad_valid else None

    @grad.setter
    def grad(self, array):
        if array is None:
            if self.owner is None:
                self._grad = None
            self.grad_valid = False
        elif self.owner is None:  # not packed yet: nothing else holds the gradient
            self._grad = self._checked(array, self._value, "a gradient").copy()
            self.grad_valid = True
        else:
            self._copy_into(self._grad, array, "a gradient")
            self.grad_valid = True

    def _checked(self, array, target, what: str):
        """``array`` as ``target``'s dtype and shape, finite: what a layer's constructor checks of
        ``weight=``/``bias=``, checked of every assignment too (a NaN, or a value that overflows
        float16, is refused here as there)."""
        try:
            converted = self.backend.asarray(array, target.dtype)
        except (TypeError, ValueError) as error:
            raise type(error)(f"Parameter {self.name}: cannot assign {what} that cannot be read as a {target.dtype} "
                              f"array: {error}") from None
        if tuple(converted.shape) != tuple(target.shape):
            raise ValueError(f"Parameter {self.name}: cannot assign {what} of shape {tuple(converted.shape)} "
                             f"to a parameter of shape {tuple(target.shape)}")
        if not bool(self.backend.xp.isfinite(converted).all()):
            raise ValueError(f"Parameter {self.name}: cannot assign {what} holding NaN or Inf (or values too "
                             f"large for {target.dtype})")
        return converted

    def _copy_into(self, target, array, what: str) -> None:
        """Copy ``array`` into ``target`` in place (a view of the flat buffer stays that view)."""
        target[...] = self._checked(array, target, what)

    @property
    def shape(self):
        return self._value.shape

    @property
    def size(self) -> int:
        return int(self._value.size)

    def accept_gradient(self, compute):
        """Store ``compute(out)``: written straight into the buffer, or added when zero_grad was skipped."""
        backend = self.backend
        if self._grad is None:
            self._grad = backend.zeros(self._value.shape, self._value.dtype)
        if self.grad_valid:  # accumulate, as with several backward calls between steps
            self._grad += compute(None)
        else:
            compute(self._grad)
            self.grad_valid = True

    def __repr__(self) -> str:
        return f"Parameter({self.name}, shape={tuple(self.shape)}, dtype={self._value.dtype})"


class ParameterAttribute:
    """A layer attribute holding a Parameter (``weight = ParameterAttribute()`` in the class body).

    ``layer.weight = array`` copies the array into the parameter, so its flat-buffer view stays
    what the model and its optimizer train; swapping in another Parameter once a model holds this
    one is refused, since the model and optimizer would go on training the old one. Reads go
    straight to the instance (no ``__get__``), so the layers' hot paths pay nothing."""

    def __set_name__(self, owner, name):
        self.name = name

    def __set__(self, layer, value):
        held = layer.__dict__.get(self.name)
        if held is not None and value is not held:
            if not isinstance(value, Parameter):
                held.value = value
                return
            if held.owner is not None:
                raise ValueError(f"{type(layer).__name__}.{self.name}: cannot replace a Parameter that a model "
                                 f"holds (its flat buffers and optimizer would keep the old one); assign its "
                                 f"array instead: layer.{self.name} = new.value")
            held._checked(value.value, held.value, "a Parameter")  # the same rule as assigning its array
        layer.__dict__[self.name] = value
