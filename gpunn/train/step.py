"""One training step as an object, eager or replayed as a CUDA graph."""

from __future__ import annotations

from gpunn.backends.precision import get_matmul_precision
from gpunn.optim import Optimizer
from gpunn.train.metrics import METRICS


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

    ``track(metrics)`` makes every step add its loss (times its rows) and each metric's sum into
    ``sums`` on the device, inside the graph too; and a step given ``rows`` (row indices on the
    device) gathers its batch from whole data sets itself. So a replayed step of ``fit`` is one
    copy of the batch's row indices and the graph launch, with nothing read back until the epoch ends.
    ``release()`` drops the graph and frees its memory (``fit`` calls it at its end).
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
        #: What ``track`` asked for: the metrics summed, and [Σ loss·rows, Σ metric, ...] on the device.
        self.metrics, self.sums = (), None

    def track(self, metrics=()) -> None:
        """Sum the loss (times the batch's rows) and ``metrics`` on the device at every step from now."""
        self.metrics = tuple(metrics)
        self.sums = self.model.backend.zeros((1 + len(self.metrics),), "float64")

    def reset_sums(self) -> None:
        self.sums.fill(0)

    def release(self) -> None:
        """Drop the recorded graph, and every reference into its private memory pool first (the
        loss's saved arrays, the outputs): its blocks are then all free and freed with it. A pool
        dropped while arrays of it live can never free their blocks where they were split (CuPy
        14.2, cupy/cuda/memory.pyx: ``PooledMemory.free`` of a dead pool returns nothing), so every
        ``fit(graph=True)`` would keep some memory. Later steps record again."""
        if self._recorded is not None:
            self.loss.forget()
            self.outputs = None
            self._recorded = None  # the graph goes last: its pool frees what is free when it does

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

    def __call__(self, x, t, share: float = 1.0, replay: bool = True, weights=None, rows=None):
        """Train on one prepared batch; returns the batch's mean loss as a new 0-d device array.
        ``weights``: one weight per row on the device (the loss is Σ wᵢ·lᵢ / rows), or None.
        ``rows``: the batch's row indices (a device integer array); ``x``, ``t`` and ``weights``
        are then whole data sets, gathered by the step (inside its graph).

        Data parallel: ``x, t`` are this rank's shard, ``share`` its fraction of the global
        batch, and ``replay`` (the same on every rank: is the global batch full?) allows the graph.
        """
        value = self.train(x, t, share, replay, weights, rows)
        return value.copy() if self.graph else value  # not an array of a graph's private pool

    def train(self, x, t, share: float = 1.0, replay: bool = True, weights=None, rows=None):
        """``__call__`` without its copy: the loss returned may be a graph's own buffer, which the
        next replay overwrites and which is freed with the graph (``fit`` reads ``sums`` instead)."""
        if rows is not None:
            _check_rows(self.model.backend, rows, x, t)
        self.optimizer.reserve_steps(1)  # outside any recording: the table of rates may grow here
        self._share = share
        if not self.graph or not replay:
            return self._gathered_step(x, t, weights, rows)
        recorded = self._recorded
        if recorded is None:
            recorded = self._recorded = _RecordedStep(self, x, t, weights, rows)
        elif not recorded.fits(x, t, weights, rows):
            return self._gathered_step(x, t, weights, rows)
        return recorded.run(x, t, weights, rows)

    def _gathered_step(self, x, t, weights, rows):
        if rows is not None:
            take = self.model.backend.xp.take
            x, t = take(x, rows, axis=0), take(t, rows, axis=0)
            weights = None if weights is None else take(weights, rows, axis=0)
        return self._step(x, t, weights)

    def _accumulate(self, value, t) -> None:
        """Add the step's loss times its rows, and its metrics' sums, into ``sums`` (on the device)."""
        if self.sums is None:
            return
        add, sums = self.model.backend.xp.add, self.sums
        parts = [value.astype(sums.dtype) * self.outputs.shape[0]] + [
            METRICS[name](self.outputs, t, self.loss.takes_logits) for name in self.metrics]
        for index, part in enumerate(parts):
            total = sums[index:index + 1]  # a view (NumPy's sums[index] would be a copy)
            add(total, part, out=total)

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
        self._accumulate(value, t)
        return value


def _check_rows(backend, rows, x, t) -> None:
    """``rows`` indexes the data sets ``x`` and ``t``: a 1-D integer array on the model's device."""
    if not backend.is_array(rows) or rows.ndim != 1 or rows.dtype.kind not in "iu":
        raise TypeError(f"rows must be a 1-D integer {backend.name} array of row indices, got "
                        f"{type(rows).__name__} {getattr(rows, 'dtype', '')} {getattr(rows, 'shape', '')}")
    if x.shape[0] != t.shape[0]:
        raise ValueError(f"with rows, x and t are whole data sets of equal length; got {x.shape[0]} and "
                         f"{t.shape[0]} rows")


def _advance_dropout(model) -> None:
    """Advance every training-mode Dropout's mask step as a forward would."""
    from gpunn.nn.dropout import Dropout

    for layer in model.all_layers():
        if isinstance(layer, Dropout):
            layer.forward_mask()


class _RecordedStep:
    """A TrainStep's graph: static input buffers, the graph, and what it must keep alive.

    Given ``rows``, the static input is the row indices: the graph gathers the batch from the
    data sets it was recorded with (a step on other data sets records again)."""

    def __init__(self, train_step: TrainStep, x, t, weights=None, rows=None):
        backend = train_step.model.backend
        self.train_step = train_step
        self.rows = None if rows is None else backend.empty(rows.shape, rows.dtype)
        batch = (lambda a: a.shape) if rows is None else (lambda a: rows.shape + a.shape[1:])
        self.x, self.t = backend.empty(batch(x), x.dtype), backend.empty(batch(t), t.dtype)
        self.weights = None if weights is None else backend.empty(batch(weights), weights.dtype)
        self.sources = None
        self.graph = self.key = self.keep_alive = self.outputs = None

    def fits(self, x, t, weights=None, rows=None) -> bool:
        if (rows is None) != (self.rows is None):
            return False
        if rows is not None:
            return rows.shape == self.rows.shape and rows.dtype == self.rows.dtype and \
                (weights is None) == (self.weights is None)
        same_weights = (weights is None and self.weights is None) or (
            weights is not None and self.weights is not None and weights.shape == self.weights.shape)
        return x.shape == self.x.shape and t.shape == self.t.shape and t.dtype == self.t.dtype and same_weights

    def _arrays(self) -> list:
        """Every lasting array the recorded kernels read or write, besides the inputs."""
        train_step = self.train_step
        model = train_step.model
        return ([model.flat.values, model.flat.grads] + train_step.optimizer.device_arrays()
                + train_step.optimizer.scratch_arrays()
                + [array for layer in model.all_layers() for array in layer.state.buffers.values()]
                + ([] if train_step.sums is None else [train_step.sums]) + list(self.sources or ()))

    def _key(self):
        """What the recording baked in: hyperparameters passed as kernel arguments, the precision,
        each layer's launch settings (train/eval mode, dropout's rate and whether ``fixed_mask()``
        holds its step, LayerNorm's eps: a graph replays the recorded kernels with the recorded
        arguments, so dropout recorded in training would go on after ``model.eval()``), which
        arrays (the learning rate and the counters are read on the device), the sums and metrics
        tracked, and the data sets gathered from."""
        train_step = self.train_step
        optimizer, flat = train_step.optimizer, train_step.model.flat
        layers = tuple((getattr(layer, "row_offset", 0), layer.training, getattr(layer, "rate", None),
                        getattr(layer, "_advance", None), getattr(layer, "eps", None))
                       for layer in train_step.model.all_layers())
        # Which parameters the update's segment table marks frozen: step() writes the table, a replay does not run it.
        frozen = tuple(not parameter.trainable for parameter in optimizer.params)
        return (layers, frozen, repr(optimizer.hyperparameters()), get_matmul_precision(), train_step._share,
                id(flat.values), id(flat.grads),
                tuple(id(array) for array in optimizer.device_arrays()),
                id(train_step.sums), train_step.metrics, tuple(id(array) for array in self.sources or ()))

    def _load(self, x, t, weights, rows):
        """The batch into the static inputs: its row indices (one copy), or the rows themselves."""
        xp = self.train_step.model.backend.xp
        if rows is not None:
            xp.copyto(self.rows, rows)
            self.sources = (x, t) + (() if weights is None else (weights,))
            return
        xp.copyto(self.x, x)
        xp.copyto(self.t, t)
        if weights is not None:
            xp.copyto(self.weights, weights)

    def _gather(self) -> None:
        """The batch from the data sets into the static buffers (recorded in the graph)."""
        if self.rows is None:
            return
        take = self.train_step.model.backend.xp.take
        for source, static in zip(self.sources, (self.x, self.t, self.weights)):
            take(source, self.rows, axis=0, out=static)

    def _recorded_step(self):
        self._gather()
        return self.train_step._step(self.x, self.t, self.weights)

    def run(self, x, t, weights=None, rows=None):
        train_step = self.train_step
        self._load(x, t, weights, rows)
        key = self._key()
        if self.key is None:  # the first step runs eagerly, so that every lasting array exists
            self.key = key
            return self._recorded_step()
        if self.graph is None or key != self.key:
            previous, self.graph, self.keep_alive = self.graph, None, None  # one pool per step, reused
            train_step.outputs = self.outputs = None  # the previous graph's output buffer goes with it
            optimizer = train_step.optimizer
            optimizer.reserve_steps(2)  # before recording: the capture runs the step twice
            steps = optimizer.steps_issued
            value, self.graph = train_step.model.backend.capture(self._recorded_step, previous)
            optimizer.steps_issued = steps + 1  # capture ran the step once; the recorded run did not execute
            self.key = key
            # An eager batch of another shape may replace layer buffers; the graph keeps its own.
            self.keep_alive = self._arrays()
            self.outputs = train_step.outputs  # the recorded forward's output buffer
            return value
        optimizer = train_step.optimizer
        steps = optimizer.steps_issued
        self.graph.replay()
        train_step.outputs = self.outputs  # replays write the recorded buffers, not the last eager ones
        optimizer.steps_issued = steps + 1  # the replay ran one update on the device
        for parameter in train_step.model.parameters():
            parameter.grad_valid = True
        return self.graph.output
