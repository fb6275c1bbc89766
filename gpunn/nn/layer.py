"""The layer protocol: the ``Layer`` base, the state a layer keeps between forward and backward, and
the registry that turns a saved record back into a layer.

A layer's ``forward`` saves what its ``backward`` needs; ``backward`` fills the parameters'
gradients and returns the gradient of its input. Updating the parameters is the optimizer's
job, never backward's. Outputs live in per-layer buffers that are reused from one call to
the next, so the layers allocate nothing once the batch shape is known; the loss heads' small
temporaries come from the array library's allocator (on CuPy, cached blocks of its memory pool).
"""

from __future__ import annotations

from gpunn.backends.selection import Backend
from gpunn.nn.freezing import is_trainable, set_trainable
from gpunn.nn.parameter import Parameter

LAYER_TYPES: dict = {}
"""Every layer class by name: how ``load`` turns a saved record back into a layer."""


def register_layer(cls):
    """Class decorator: make ``cls`` loadable by its name."""
    LAYER_TYPES[cls.__name__] = cls
    return cls


def layer_record(layer) -> dict:
    """A layer's type and config; a residual block's branch nests as its "layers"."""
    record = {"type": type(layer).__name__, **layer.config()}
    if layer.sublayers():
        record["layers"] = [layer_record(inner) for inner in layer.sublayers()]
    return record


def build_layer(record: dict, dtype):
    """A layer from its metadata record (``type``, its ``config()`` and a residual block's nested
    ``layers``), parameters not yet filled: ``load`` then fills each from the file. Layer types
    come from the registry ``LAYER_TYPES`` (``@register_layer``)."""
    if not isinstance(record, dict) or not isinstance(record.get("type"), str):
        raise ValueError("a layer record must be an object with a 'type'")
    cls = LAYER_TYPES.get(record["type"])
    if cls is None:
        raise LookupError(f"unknown layer type {record['type'][:50]!r}")
    nested = record.get("layers", [])
    if not isinstance(nested, list):
        raise ValueError("'layers' of a layer record must be a list")
    config = {key: value for key, value in record.items() if key not in ("type", "layers")}
    return cls.from_config(config, dtype, [build_layer(inner, dtype) for inner in nested])


def walk_layers(layer):
    """``layer`` and every layer it holds, depth first."""
    yield layer
    for inner in layer.sublayers():
        yield from walk_layers(inner)


class LayerState:
    """What a layer keeps from its forward for its backward (its input ``x``, output ``y``, what the
    activation's backward reads ``saved``, the kept pre-dropout values ``kept``, the dropout ``mask``,
    LayerNorm's ``mean`` and ``rstd``), and the workspace arrays it reuses across calls.

    A model owns two for each of its layers, one for training and one for ``predict``, and points the
    layer at one or the other: a predict between forward and backward leaves backward's state alone.
    """

    def __init__(self):
        self.buffers: dict = {}
        self.x = self.y = self.saved = self.kept = self.mask = self.mean = self.rstd = None

    def buffer(self, name: str, shape, backend: Backend, dtype):
        """A workspace array reused across calls while shape and dtype stay the same."""
        held = self.buffers.get(name)
        if held is None or held.shape != tuple(shape) or held.dtype != dtype:
            held = backend.empty(shape, dtype)
            self.buffers[name] = held
        return held


class Layer:
    """Base of every layer. Subclasses set ``backend`` and ``dtype`` when they hold arrays.

    ``in_features``/``out_features`` are None for layers that keep any width (activations,
    dropout); ``training`` is switched by the model's ``train()``/``eval()``.
    """

    backend: Backend | None = None
    dtype = None
    in_features: int | None = None
    out_features: int | None = None
    #: Whether a model holds this layer: a layer belongs to one model (Sequential refuses a second).
    in_model: bool = False

    def __init__(self):
        self.state = LayerState()
        self.training = True

    def parameters(self) -> list[Parameter]:
        return []

    @property
    def trainable(self) -> bool:
        """False keeps this layer's parameters (nested layers' too) out of the update; see ``gpunn.nn.freezing``."""
        return is_trainable(self)

    @trainable.setter
    def trainable(self, value) -> None:
        set_trainable([self], value, type(self).__name__)

    def named_parameters(self, prefix: str) -> list[tuple[str, Parameter]]:
        """(``prefix.name``, parameter) pairs, in the order of ``parameters()``."""
        return [(f"{prefix}.{parameter.name}", parameter) for parameter in self.parameters()]

    def sublayers(self) -> tuple:
        """The layers this one holds (a residual block's branch); none for a plain layer."""
        return ()

    def config(self) -> dict:
        """The constructor arguments (without arrays) that rebuild this layer."""
        return {}

    @classmethod
    def from_config(cls, config: dict, dtype, sublayers: list):
        """The layer a saved ``config`` describes (its arrays are copied in by ``load``)."""
        return cls(**config)

    def backward(self, dy, input_gradient: bool = True):
        raise NotImplementedError

    def _buffer(self, name: str, shape, backend: Backend, dtype):
        return self.state.buffer(name, shape, backend, dtype)

    def __deepcopy__(self, memo) -> "Layer":
        """``copy.deepcopy(layer)``: the layer rebuilt from its record on the same backend, with copies of
        its weights, in no model (the torch idiom of stacking copies of a block). A field-by-field copy
        would copy the backend itself and the parameters' ties to the original's model."""
        from gpunn.backends.selection import get_backend, use_backend

        with use_backend(self.backend if self.backend is not None else get_backend()):
            twin = build_layer(layer_record(self), self.dtype)
        for (_, mine), (_, theirs) in zip(self.named_parameters("layer"), twin.named_parameters("layer")):
            theirs.value[...] = mine.value
        for inner, copied in zip(walk_layers(self), walk_layers(twin)):
            copied.training = inner.training
        memo[id(self)] = twin
        return twin

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"
