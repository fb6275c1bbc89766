"""Sequential: layers in order, with each Dense+activation pair run as one fused step."""

from __future__ import annotations

import contextlib

from .layers import Activation, Dense, Layer, Parameter


def _plan(layers):
    """Pair every Dense with the activation after it, so bias add and activation fuse."""
    steps, i = [], 0
    while i < len(layers):
        layer = layers[i]
        if isinstance(layer, Dense) and i + 1 < len(layers) and isinstance(layers[i + 1], Activation):
            steps.append((layer, layers[i + 1].activation))
            i += 2
        else:
            steps.append((layer, None))
            i += 1
    return steps


class Sequential:
    """A feed-forward network. ``forward`` returns the last layer's output buffer, which the
    next forward call reuses; ``predict`` returns an independent NumPy array."""

    def __init__(self, *layers: Layer):
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        for index, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"Sequential: layer {index} is {type(layer).__name__}, not a gpunn Layer")
        dense = [(i, layer) for i, layer in enumerate(layers) if isinstance(layer, Dense)]
        for i, layer in dense[1:]:
            first_index, first = dense[0]
            if layer.dtype != first.dtype:
                raise TypeError(f"Sequential: mixed dtypes: layer {first_index} holds {first.dtype}, "
                                f"layer {i} holds {layer.dtype}; a model holds one dtype")
            if layer.backend is not first.backend:
                raise ValueError(f"Sequential: layer {first_index} lives on the {first.backend.name} "
                                 f"backend, layer {i} on {layer.backend.name}")
        for (i, layer), (j, following) in zip(dense, dense[1:]):
            if layer.out_features != following.in_features:
                raise ValueError(f"Sequential: layer {i} gives {layer.out_features} features but "
                                 f"layer {j} expects {following.in_features}")
        self.layers = list(layers)
        if dense:
            self.backend, self.dtype = dense[0][1].backend, dense[0][1].dtype
        else:
            from .backends import get_backend

            self.backend = get_backend()
            self.dtype = self.backend.check_dtype("float32")
        for layer in self.layers:
            if isinstance(layer, Activation):
                layer.backend = self.backend
        self._steps = _plan(self.layers)
        self.extras: dict = {}

    @property
    def in_features(self) -> int | None:
        dense = [layer for layer in self.layers if isinstance(layer, Dense)]
        return dense[0].in_features if dense else None

    @property
    def out_features(self) -> int | None:
        dense = [layer for layer in self.layers if isinstance(layer, Dense)]
        return dense[-1].out_features if dense else None

    def parameters(self) -> list[Parameter]:
        return [p for layer in self.layers for p in layer.parameters()]

    def zero_grad(self) -> None:
        """Mark every gradient stale: the next backward overwrites instead of adding."""
        for parameter in self.parameters():
            parameter.grad_valid = False

    def as_input(self, X, name: str = "X", check_finite: bool = True):
        """``X`` on the model's backend and dtype, or a clear error naming what is wrong."""
        backend = self.backend
        if backend.is_array(X) and X.dtype == self.dtype:
            array = X
        elif backend.is_array(X) and not backend.host_resident:
            raise TypeError(f"{name} has dtype {X.dtype} but the model holds {self.dtype}; convert "
                            f"it with .astype({str(self.dtype)!r}) first (host data converts itself)")
        else:  # host data: converted, and moved to the device, at the boundary
            try:
                array = backend.asarray(X, self.dtype)
            except (TypeError, ValueError) as error:
                raise type(error)(f"{name} cannot be read as a {self.dtype} array: {error}") from error
        if array.ndim != 2:
            raise ValueError(f"{name} must be 2-D (batch, features), got shape {tuple(array.shape)}")
        if self.in_features is not None and array.shape[1] != self.in_features:
            raise ValueError(f"{name} has {array.shape[1]} features but the model expects "
                             f"{self.in_features}")
        if check_finite and not bool(backend.xp.isfinite(array).all()):
            raise ValueError(f"{name} contains NaN or Inf (or values too large for {self.dtype})")
        return array

    def forward(self, X):
        """The network's output for a batch ``X`` (batch, features), on the backend."""
        return self._forward(self.as_input(X))

    __call__ = forward

    def _forward(self, x):
        for layer, activation in self._steps:
            x = layer.forward(x, activation) if activation else layer.forward(x)
        return x

    def backward(self, grad_output, input_gradient: bool = True):
        """Fill every layer's gradients from dL/dY; return dL/dX (None if not asked for)."""
        for index in range(len(self._steps) - 1, -1, -1):
            layer, activation = self._steps[index]
            wanted = input_gradient or index > 0
            if activation:
                grad_output = layer.backward(grad_output, activation, input_gradient=wanted)
            else:
                grad_output = layer.backward(grad_output, input_gradient=wanted)
        return grad_output

    def predict(self, X, batch_size: int | None = None):
        """The outputs for ``X`` as a new NumPy array on the host, ``batch_size`` rows at a time.

        Runs on buffers of its own, so a predict between ``forward`` and ``backward`` leaves
        what backward needs untouched.
        """
        if batch_size is not None and (not isinstance(batch_size, int) or isinstance(batch_size, bool)
                                       or batch_size < 1):
            raise ValueError(f"predict: batch_size must be a positive int or None, got {batch_size!r}")
        x = self.as_input(X)
        with self._inference_state():
            if batch_size is None or batch_size >= x.shape[0]:
                return self.backend.to_numpy(self._forward(x).copy())
            width = self.out_features if self.out_features is not None else x.shape[1]  # activations only
            result = self.backend.empty((x.shape[0], width), self.dtype)
            for start in range(0, x.shape[0], batch_size):
                result[start:start + batch_size] = self._forward(x[start:start + batch_size])
            return self.backend.to_numpy(result)

    @contextlib.contextmanager
    def _inference_state(self):
        """Swap every layer's saved state (buffers, saved inputs and outputs) for a separate
        set while inside, and put the training state back after."""
        saved = [dict(vars(layer)) for layer in self.layers]
        for layer in self.layers:
            layer._buffers = layer.__dict__.get("_inference_buffers", {})
        try:
            yield
        finally:
            for layer, state in zip(self.layers, saved):
                inference = layer._buffers
                vars(layer).clear()
                vars(layer).update(state, _inference_buffers=inference)

    def fit(self, X, T, *, loss, optimizer, **options):
        """Train with mini-batch SGD; see ``gpunn.training.fit`` for the options."""
        from .training import fit

        return fit(self, X, T, loss=loss, optimizer=optimizer, **options)

    def save(self, path, extras: dict | None = None, optimizer=None) -> None:
        """Write architecture, weights and host ``extras`` (default: ``self.extras``) to ``path``
        atomically; see ``gpunn.io.save``."""
        from .io import save

        save(self, path, extras=extras, optimizer=optimizer)

    def __repr__(self) -> str:
        inner = ",\n  ".join(repr(layer) for layer in self.layers)
        return f"Sequential(\n  {inner}\n)"
