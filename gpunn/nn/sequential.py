"""Sequential: layers in order, with each Dense+activation(+dropout) run as one fused step."""

from __future__ import annotations

import contextlib

from gpunn import checks
from gpunn.nn.chain import Chain, check_layers, walk
from gpunn.nn.dtype import get_default_dtype
from gpunn.nn.flat import FlatBuffers
from gpunn.nn.freezing import select_layers, set_trainable
from gpunn.nn.layer import Layer, LayerState, build_layer, layer_record
from gpunn.nn.parameter import Parameter


class Sequential:
    """A feed-forward network. ``forward`` returns the last layer's output buffer, which the
    next forward call reuses; ``model(X)`` returns a copy of it the user can keep, and ``predict``
    an independent NumPy array (in evaluation mode).

    A model starts in training mode (dropout active); ``eval()`` or ``with model.evaluating():``
    switch to evaluation, and ``predict`` always evaluates.
    """

    def __init__(self, *layers: Layer):
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        first, self.in_features, self.out_features = check_layers(layers, "Sequential")
        for position, layer in walk(layers):
            if layer.in_model:  # parameters or not: its buffers and saved state serve one model
                raise ValueError(f"Sequential: the {type(layer).__name__} at position {position} already belongs "
                                 "to another model; a layer belongs to one model, parameters or not (its saved "
                                 "forward state would be overwritten by the other's): create a new layer")
        self.layers = list(layers)
        if first is not None:
            self.backend, self.dtype = first.backend, first.dtype
        else:
            from gpunn.backends.selection import get_backend

            self.backend = get_backend()
            self.dtype = self.backend.check_dtype(get_default_dtype())
        for _, layer in walk(self.layers):
            if layer.dtype is None:
                layer.backend = self.backend
        self._chain = Chain(self.layers)
        self._steps = self._chain.steps
        #: Each layer's (training, inference) state: what forward keeps for backward, and the workspaces.
        self._states = [(LayerState(), LayerState()) for _ in self.all_layers()]
        for layer, (training, _) in zip(self.all_layers(), self._states):
            layer.state = training
        self.extras: dict = {}
        #: Every parameter's value and gradient are views into these two flat arrays.
        self.flat = FlatBuffers(self.parameters(), self.backend, self.dtype)
        for layer in self.all_layers():
            layer.in_model = True
        self.train()

    def all_layers(self) -> list[Layer]:
        """Every layer, nested ones (inside Residual) too, depth first."""
        return [layer for _, layer in walk(self.layers)]

    def parameters(self) -> list[Parameter]:
        return [p for layer in self.layers for p in layer.parameters()]

    def named_parameters(self) -> list[tuple[str, Parameter]]:
        """("layer2.0.W", parameter) pairs in the order of ``parameters()``: stable names for
        files and gradient checks (layer index, then the index inside a residual block)."""
        return [pair for index, layer in enumerate(self.layers) for pair in layer.named_parameters(f"layer{index}")]

    def freeze(self, *layers) -> "Sequential":
        """Keep the parameters of ``layers`` (indices into ``self.layers`` or layers; none: all) as they
        are through training; see ``gpunn.nn.freezing``."""
        set_trainable(select_layers(self, layers, "freeze"), False, "freeze")
        return self

    def unfreeze(self, *layers) -> "Sequential":
        """Train the parameters of ``layers`` (none: all) again."""
        set_trainable(select_layers(self, layers, "unfreeze"), True, "unfreeze")
        return self

    # --- training and evaluation modes ----------------------------------------------------
    @property
    def training(self) -> bool:
        return self._training

    def train(self, mode: bool = True) -> "Sequential":
        """Training mode (dropout active) or, with ``mode=False``, evaluation mode."""
        self._training = bool(mode)
        for layer in self.all_layers():
            layer.training = self._training
        return self

    def eval(self) -> "Sequential":
        return self.train(False)

    @contextlib.contextmanager
    def mode(self, training: bool):
        """Inside the block the model is in the given mode; the mode it had comes back after."""
        before = self._training
        self.train(training)
        try:
            yield self
        finally:
            self.train(before)

    def evaluating(self):
        """``with model.evaluating():`` runs the block in evaluation mode (dropout off)."""
        return self.mode(False)

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
        """The network's output for a batch ``X`` (batch, features), on the backend: the last layer's
        output buffer, which the next forward overwrites (the zero-allocation path of training loops)."""
        return self._forward(self.as_input(X))

    def __call__(self, X):
        """``model(X)``: ``forward``, returning an array of its own that the next call leaves alone (as
        a torch module's output); ``forward`` skips the copy."""
        return self.forward(X).copy()

    def _forward(self, x):
        return self._chain.forward(x)

    def backward(self, grad_output, input_gradient: bool = True):
        """Fill every layer's gradients from dL/dY; return dL/dX (None if not asked for)."""
        return self._chain.backward(grad_output, input_gradient=input_gradient)

    def _outputs(self, X, batch_size: int | None, check_finite: bool = True):
        """The outputs for ``X`` as a device array of their own, in evaluation mode, in batches
        (``check_finite=False``: X's values were checked on the host, as a stream reads them)."""
        checks.batch_size("predict", batch_size)
        x = self.as_input(X, check_finite=check_finite)
        # Evaluation mode, on buffers of its own: a predict between forward and backward leaves
        # what backward needs untouched.
        with self.evaluating(), self._inference_state():
            if batch_size is None or batch_size >= x.shape[0]:
                return self._forward(x).copy()
            width = self.out_features if self.out_features is not None else x.shape[1]  # activations only
            result = self.backend.empty((x.shape[0], width), self.dtype)
            for start in range(0, x.shape[0], batch_size):
                result[start:start + batch_size] = self._forward(x[start:start + batch_size])
            return result

    def predict(self, X, batch_size: int | None = None):
        """The outputs for ``X`` as a new NumPy array on the host (evaluation mode); see ``gpunn.train.fit.predict``."""
        from gpunn.train.fit import predict

        return predict(self, X, batch_size)

    def predict_proba(self, X, batch_size: int | None = None):
        """Class probabilities as a NumPy array whose rows sum to 1: the softmax of several
        outputs (logits), or [1 − p, p] for one output, p = σ(output) (or the output itself when
        the model ends in Sigmoid)."""
        from gpunn.nn.activations import Sigmoid

        xp = self.backend.xp
        y = self._outputs(X, batch_size).astype("float64")
        ends_in_sigmoid = bool(self.layers) and isinstance(self.layers[-1], Sigmoid)
        if y.shape[1] == 1:
            if ends_in_sigmoid:
                p = y
            else:  # exp of −|y| only: logits of ±1000 give 0 and 1 without an overflow warning
                e = xp.exp(-abs(y))
                p = xp.where(y >= 0, 1 / (1 + e), e / (1 + e))
            return self.backend.to_numpy(xp.concatenate([1 - p, p], axis=1))
        if ends_in_sigmoid:
            raise ValueError("predict_proba: the model ends in Sigmoid over several outputs (independent "
                             "labels), so its rows are not one distribution; use predict()")
        shifted = xp.exp(y - y.max(axis=1, keepdims=True))
        return self.backend.to_numpy(shifted / shifted.sum(axis=1, keepdims=True))

    def evaluate(self, X, T, loss, metrics=(), batch_size: int | None = 4096, sample_weight=None) -> dict:
        """``{"loss": mean loss, metric: value, ...}`` over (X, T), in evaluation mode; see ``gpunn.train.fit.evaluate``."""
        from gpunn.train.fit import evaluate

        return evaluate(self, X, T, loss, metrics, batch_size, sample_weight)

    @contextlib.contextmanager
    def _inference_state(self):
        """Inside, every layer (nested ones too) works in the model's inference state; the training
        state, which a pending backward reads, comes back after."""
        layers = self.all_layers()
        for layer, (_, inference) in zip(layers, self._states):
            layer.state = inference
        try:
            yield
        finally:
            for layer, (training, _) in zip(layers, self._states):
                layer.state = training

    def fit(self, X, T, *, loss, optimizer, **options):
        """Train; see ``gpunn.train.fit.fit`` for the options (validation, metrics, early stopping, resume)."""
        from gpunn.train.fit import fit

        return fit(self, X, T, loss=loss, optimizer=optimizer, **options)

    def save(self, path, extras: dict | None = None, optimizer=None) -> None:
        """Write architecture, weights, host ``extras`` (default: ``self.extras``) and the optimizer's
        state to ``path`` atomically; see ``gpunn.io.save``."""
        from gpunn.io.model_file import save

        save(self, path, extras=extras, optimizer=optimizer)

    def __deepcopy__(self, memo) -> "Sequential":
        """``copy.deepcopy(model)``: the same layers rebuilt from their records (as ``load`` does), on
        the same backend, with copies of the weights in a flat buffer of their own. A field-by-field
        copy would leave the copy's parameters detached from its flat buffer (and copy the backend)."""
        import copy

        twin = _rebuilt(self.backend, self._records(), self.dtype, self.flat.values, copy.deepcopy(self.extras, memo),
                        self._training)
        memo[id(self)] = twin
        return twin

    def __reduce__(self):
        """``pickle`` (and ``copy.copy``) rebuild the model as ``copy.deepcopy`` does, from host
        copies of the weights, on the backend of that name."""
        return _rebuilt, (self.backend.name, self._records(), self.dtype.name,
                          self.backend.to_numpy(self.flat.values).copy(), self.extras, self._training)

    def _records(self) -> list:
        return [layer_record(layer) for layer in self.layers]

    def __repr__(self) -> str:
        inner = ",\n  ".join(repr(layer) for layer in self.layers)
        return f"Sequential(\n  {inner}\n)"

    # --- the model as a sequence of layers ---------------------------------------------------
    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

    def __getitem__(self, index):
        """The layer at ``index`` (negative counts from the end); a slice gives a list of layers, not a
        new model, since a layer belongs to one model."""
        if isinstance(index, slice):
            return self.layers[index]
        if isinstance(index, bool) or not hasattr(index, "__index__"):
            raise TypeError(f"Sequential indices must be ints or slices, got {type(index).__name__}")
        try:
            return self.layers[index]
        except IndexError:
            raise IndexError(f"Sequential index {index} is out of range for a model of {len(self.layers)} "
                             "layers") from None

    def summary(self, print_fn=print) -> None:
        """Keras's table: each layer with its output shape and parameter count, then the totals
        (trainable, and frozen as non-trainable). ``print_fn`` receives each line."""
        rows, width = [], self.in_features
        for index, layer in enumerate(self.layers):
            width = layer.out_features if layer.out_features is not None else width
            count = sum(int(parameter.value.size) for parameter in layer.parameters())
            rows.append((f"{index} {type(layer).__name__}", f"(None, {width if width is not None else '?'})",
                         f"{count:,}"))
        trainable = sum(int(p.value.size) for p in self.parameters() if p.trainable)
        total = sum(int(parameter.value.size) for parameter in self.parameters())
        header = ("Layer (type)", "Output shape", "Param #")
        widths = [max(len(row[column]) for row in [header, *rows]) + 3 for column in range(3)]
        line = lambda cells: "".join(cell.ljust(size) for cell, size in zip(cells, widths)).rstrip()  # noqa: E731
        rule = "=" * sum(widths)
        for text in [f"Model: Sequential, {self.dtype} on {self.backend.name}", line(header), rule,
                     *(line(row) for row in rows), rule, f"Total params: {total:,}",
                     f"Trainable params: {trainable:,}", f"Non-trainable params: {total - trainable:,}"]:
            print_fn(text)


def _rebuilt(backend, records, dtype, values, extras, training) -> Sequential:
    """A model from its layer records and flat weights (``backend``: one, or its name)."""
    from gpunn.backends.selection import use_backend

    with use_backend(backend):
        model = Sequential(*[build_layer(record, dtype) for record in records])
        model.flat.values[...] = model.backend.asarray(values, model.dtype)
    model.extras = extras
    return model.train(training)
