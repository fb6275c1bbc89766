"""One training step as an object, eager or replayed as a CUDA graph."""

from __future__ import annotations

from gpunn.backends.precision import get_matmul_precision
from gpunn.optim import Optimizer


class TrainingDiverged(FloatingPointError):
    """The loss or the parameters became NaN or Inf."""


def _loss_type():
    from gpunn.nn.losses import Loss

    return Loss


def _check_instance(argument: str, value, kind, example: str) -> None:
    """A TypeError that names the fix for the usual slips: a class for an instance, a string."""
    if isinstance(value, kind):
        return
    if isinstance(value, type):
        raise TypeError(f"{argument} must be an instance such as {example}, got the class {value.__name__} itself "
                        "(add the parentheses)")
    raise TypeError(f"{argument} must be a gpunn {argument} such as {example}, got {type(value).__name__} "
                    f"{value!r:.40}")


class TrainStep:
    """One optimizer step on a batch: forward, loss, backward, update; the loss comes back on the device.

    ``prepare(X, T)`` checks a data set once (shapes, dtypes, NaN/Inf) and moves it to the
    device; calling the step on prepared arrays (or slices of them) then does no checks that
    would wait for the device, so steps queue back to back.

    With ``graph=True`` (a backend that captures CUDA graphs: cupy) the whole step is recorded
    once and replayed, one launch instead of one per kernel. The batch shape of the first call
    is the graph's: its first two steps run eagerly (the second one while recording), later
    steps of that shape replay the graph, and batches of any other shape (a smaller last batch)
    run eagerly. The learning rate (a number or a schedule), Adam's step count and the float16
    loss scale live on the device and never force a new recording; changing another
    hyperparameter (momentum, betas, weight decay, clipping), the matmul precision, the
    model's mode (``train()``/``eval()``), a dropout rate, ``Dropout.fixed_mask()``, LayerNorm's
    eps or the arrays behind the parameters records the graph again.
    """

    def __init__(self, model, loss, optimizer, graph: bool = False, data_parallel=None):
        _check_instance("loss", loss, _loss_type(), "gn.MSELoss()")
        _check_instance("optimizer", optimizer, Optimizer, "gn.Adam()")
        if model.out_features is None:
            raise ValueError("TrainStep: the model has no Dense layer to train")
        if graph and not model.backend.supports_graphs:
            raise ValueError(f"TrainStep: graph=True needs a backend that captures CUDA graphs (cupy); "
                             f"the {model.backend.name} backend runs every step eagerly, so pass graph=False")
        if optimizer.params:
            optimizer.check_model(model)
        else:
            optimizer.bind(model.parameters())
        self.model, self.loss, self.optimizer, self.graph = model, loss, optimizer, graph
        self.data_parallel, self._share = data_parallel, 1.0
        self._recorded = None
        #: The model's outputs of the last step (its output buffer), for metrics.
        self.outputs = None

    def prepare(self, X, T):
        """(x, t) on the model's device: inputs as ``model.as_input``, targets as the loss wants them."""
        return self.prepare_data(self.model, self.loss, X, T)

    @staticmethod
    def prepare_data(model, loss, X, T, check_finite: bool = True):
        """``check_finite=False``: X's values were checked already, on the host (a stream checks them as it reads)."""
        _check_instance("loss", loss, _loss_type(), "gn.MSELoss()")
        x = model.as_input(X, "X", check_finite)
        if hasattr(T, "__dlpack__") and not model.backend.is_array(T):  # another library's array: read in place
            T = model.backend.asarray(T)
        if not hasattr(T, "__len__") or getattr(T, "ndim", 1) == 0 or isinstance(T, (str, bytes)):
            raise ValueError(f"T must hold one target per row of X, got {type(T).__name__} {T!r:.40}")
        rows = T.shape[0] if hasattr(T, "shape") else len(T)
        if rows != x.shape[0]:
            raise ValueError(f"X has {x.shape[0]} rows but T has {rows}")
        t = loss.prepare_targets(model.backend, T, (x.shape[0], model.out_features), model.dtype)
        if t.dtype.kind == "f" and not bool(model.backend.xp.isfinite(t).all()):
            raise ValueError("T contains NaN or Inf")
        return x, t

    def __call__(self, x, t, share: float = 1.0, replay: bool = True, weights=None):
        """Train on one prepared batch; returns the batch's mean loss as a new 0-d device array.
        ``weights``: one weight per row on the device (the loss is Σ wᵢ·lᵢ / rows), or None.

        Data parallel: ``x, t`` are this rank's shard, ``share`` its fraction of the global
        batch, and ``replay`` (the same on every rank: is the global batch full?) allows the graph.
        """
        self.optimizer.reserve_steps(1)  # outside any recording: the table of rates may grow here
        self._share = share
        if not self.graph or not replay:
            return self._step(x, t, weights)
        recorded = self._recorded
        if recorded is None:
            recorded = self._recorded = _RecordedStep(self, x, t, weights)
        elif not recorded.fits(x, t, weights):
            return self._step(x, t, weights)
        return recorded.run(x, t, weights)

    def _step(self, x, t, weights=None):
        model, loss, optimizer, parallel = self.model, self.loss, self.optimizer, self.data_parallel
        loss_scale = optimizer.loss_scale  # an empty shard's zero gradient is scaled too
        if parallel is not None and x.shape[0] == 0:  # an empty shard: no loss, zero gradient
            self.outputs = model.backend.empty((0, model.out_features), model.dtype)
            value = model.backend.zeros((), model.dtype)
            parallel.empty_shard_gradients()
            _advance_dropout(model)  # its step counters stay with the ranks that had rows
        else:
            self.outputs = model._forward(x)
            value = loss._forward(model.backend, self.outputs, t, *([] if weights is None else [weights]))
            model.zero_grad()
            model.backward(loss.backward(loss_scale), input_gradient=False)
        if parallel is not None:
            parallel.reduce_gradients(self._share)
        optimizer.step()
        return value


def _advance_dropout(model) -> None:
    """Advance every training-mode Dropout's mask step as a forward would."""
    from gpunn.nn.dropout import Dropout

    for layer in model.all_layers():
        if isinstance(layer, Dropout):
            layer.forward_mask()


class _RecordedStep:
    """A TrainStep's graph: static input buffers, the graph, and what it must keep alive."""

    def __init__(self, train_step: TrainStep, x, t, weights=None):
        backend = train_step.model.backend
        self.train_step = train_step
        self.x, self.t = backend.empty(x.shape, x.dtype), backend.empty(t.shape, t.dtype)
        self.weights = None if weights is None else backend.empty(weights.shape, weights.dtype)
        self.graph = self.key = self.keep_alive = self.outputs = None

    def fits(self, x, t, weights=None) -> bool:
        same_weights = (weights is None and self.weights is None) or (
            weights is not None and self.weights is not None and weights.shape == self.weights.shape)
        return x.shape == self.x.shape and t.shape == self.t.shape and t.dtype == self.t.dtype and same_weights

    def _arrays(self) -> list:
        """Every lasting array the recorded kernels read or write, besides the inputs."""
        train_step = self.train_step
        model = train_step.model
        return ([model.flat.values, model.flat.grads] + train_step.optimizer.device_arrays()
                + train_step.optimizer.scratch_arrays()
                + [array for layer in model.all_layers() for array in layer.state.buffers.values()])

    def _key(self):
        """What the recording baked in: hyperparameters passed as kernel arguments, the precision,
        each layer's launch settings (train/eval mode, dropout's rate and whether ``fixed_mask()``
        holds its step, LayerNorm's eps: a graph replays the recorded kernels with the recorded
        arguments, so dropout recorded in training would go on after ``model.eval()``), and which
        arrays (the learning rate and the counters are read on the device)."""
        train_step = self.train_step
        optimizer, flat = train_step.optimizer, train_step.model.flat
        layers = tuple((getattr(layer, "row_offset", 0), layer.training, getattr(layer, "rate", None),
                        getattr(layer, "_advance", None), getattr(layer, "eps", None))
                       for layer in train_step.model.all_layers())
        frozen = tuple(not parameter.trainable for parameter in optimizer.params)  # the segments updated
        return (layers, frozen, repr(optimizer.hyperparameters()), get_matmul_precision(), train_step._share,
                id(flat.values), id(flat.grads),
                tuple(id(array) for array in optimizer.device_arrays()))

    def run(self, x, t, weights=None):
        train_step = self.train_step
        xp = train_step.model.backend.xp
        xp.copyto(self.x, x)
        xp.copyto(self.t, t)
        if weights is not None:
            xp.copyto(self.weights, weights)
        key = self._key()
        if self.key is None:  # the first step runs eagerly, so that every lasting array exists
            self.key = key
            return train_step._step(self.x, self.t, self.weights)
        if self.graph is None or key != self.key:
            previous, self.graph, self.keep_alive = self.graph, None, None  # one pool per step, reused
            optimizer = train_step.optimizer
            optimizer.reserve_steps(2)  # before recording: the capture runs the step twice
            steps = optimizer.steps_issued
            value, self.graph = train_step.model.backend.capture(lambda: train_step._step(self.x, self.t, self.weights), previous)
            optimizer.steps_issued = steps + 1  # capture ran the step once; the recorded run did not execute
            self.key = key
            # An eager batch of another shape may replace layer buffers; the graph keeps its own.
            self.keep_alive = self._arrays()
            self.outputs = train_step.outputs  # the recorded forward's output buffer
            return value.copy()
        optimizer = train_step.optimizer
        steps = optimizer.steps_issued
        self.graph.replay()
        train_step.outputs = self.outputs  # replays write the recorded buffers, not the last eager ones
        optimizer.steps_issued = steps + 1  # the replay ran one update on the device
        for parameter in train_step.model.parameters():
            parameter.grad_valid = True
        return self.graph.output.copy()
