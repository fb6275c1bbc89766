"""The fit loop: shuffled mini-batches, one SGD step each, the mean loss per epoch."""

from __future__ import annotations

import math
import sys

from .backends import get_matmul_precision


class TrainingDiverged(FloatingPointError):
    """The epoch's loss became NaN or Inf."""


def _progress(epochs: int, verbose: int):
    """A tqdm bar over epochs on a terminal, plain epoch lines without tqdm, nothing when quiet."""
    if not verbose or not sys.stderr.isatty():
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=epochs, unit="epoch", file=sys.stderr)


class TrainStep:
    """One SGD step on a batch: forward, loss, backward, update; the loss comes back on the device.

    ``prepare(X, T)`` checks a data set once (shapes, dtypes, NaN/Inf) and moves it to the
    device; calling the step on prepared arrays (or slices of them) then does no checks that
    would wait for the device, so steps queue back to back.

    With ``graph=True`` (a backend that captures CUDA graphs: cupy) the whole step is recorded
    once and replayed, one launch instead of one per kernel. The batch shape of the first call
    is the graph's: its first two steps run eagerly (the second one while recording), later
    steps of that shape replay the graph, and batches of any other shape (a smaller last batch)
    run eagerly. Changing the learning rate, the momentum, the matmul precision or the
    parameters' arrays records the graph again.
    """

    def __init__(self, model, loss, optimizer, graph: bool = False, data_parallel=None):
        if model.out_features is None:
            raise ValueError("TrainStep: the model has no Dense layer to train")
        if graph and not model.backend.supports_graphs:
            raise ValueError(f"TrainStep: graph=True needs a backend that captures CUDA graphs (cupy); "
                             f"the {model.backend.name} backend runs every step eagerly, so pass graph=False")
        self.model, self.loss, self.optimizer, self.graph = model, loss, optimizer, graph
        self.data_parallel, self._share = data_parallel, 1.0
        if not optimizer.params:
            optimizer.bind(model.parameters())
        self._recorded = None

    def prepare(self, X, T):
        """(x, t) on the model's device: inputs as ``model.as_input``, targets as the loss wants them."""
        model = self.model
        x = model.as_input(X, "X")
        rows = T.shape[0] if hasattr(T, "shape") else len(T)
        if rows != x.shape[0]:
            raise ValueError(f"X has {x.shape[0]} rows but T has {rows}")
        t = self.loss.prepare_targets(model.backend, T, (x.shape[0], model.out_features), model.dtype)
        if t.dtype.kind == "f" and not bool(model.backend.xp.isfinite(t).all()):
            raise ValueError("T contains NaN or Inf")
        return x, t

    def __call__(self, x, t, share: float = 1.0, replay: bool = True):
        """Train on one prepared batch; returns the batch's mean loss as a new 0-d device array.

        Data parallel: ``x, t`` are this rank's shard, ``share`` its fraction of the global
        batch, and ``replay`` (the same on every rank: is the global batch full?) allows the graph.
        """
        self._share = share
        if not self.graph or not replay:
            return self._step(x, t)
        recorded = self._recorded
        if recorded is None:
            recorded = self._recorded = _RecordedStep(self, x, t)
        elif not recorded.fits(x, t):
            return self._step(x, t)
        return recorded.run(x, t)

    def _step(self, x, t):
        model, loss, parallel = self.model, self.loss, self.data_parallel
        if parallel is not None and x.shape[0] == 0:  # an empty shard: no loss, zero gradient
            value = model.backend.zeros((), model.dtype)
            parallel.empty_shard_gradients()
        else:
            value = loss._forward(model.backend, model._forward(x), t)
            model.zero_grad()
            model.backward(loss.backward(), input_gradient=False)
        if parallel is not None:
            parallel.reduce_gradients(self._share)
        self.optimizer.step()
        return value


class _RecordedStep:
    """A TrainStep's graph: static input buffers, the graph, and what it must keep alive."""

    def __init__(self, train_step: TrainStep, x, t):
        backend = train_step.model.backend
        self.train_step = train_step
        self.x, self.t = backend.empty(x.shape, x.dtype), backend.empty(t.shape, t.dtype)
        self.graph = self.key = self.keep_alive = None

    def fits(self, x, t) -> bool:
        return x.shape == self.x.shape and t.shape == self.t.shape and t.dtype == self.t.dtype

    def _arrays(self) -> list:
        """Every lasting array the recorded kernels read or write, besides the inputs."""
        train_step = self.train_step
        parameters = train_step.optimizer.params
        return ([parameter.value for parameter in parameters] + [parameter.grad for parameter in parameters]
                + train_step.optimizer.state_arrays()
                + [array for layer in train_step.model.layers for array in layer._buffers.values()])

    def _key(self):
        """What the recording baked in: the optimizer's numbers, the precision, which arrays."""
        train_step = self.train_step
        return (tuple(sorted(train_step.optimizer.config().items())), get_matmul_precision(), train_step._share,
                tuple(id(parameter.value) for parameter in train_step.optimizer.params),
                tuple(id(array) for array in train_step.optimizer.state_arrays()))

    def run(self, x, t):
        train_step = self.train_step
        xp = train_step.model.backend.xp
        xp.copyto(self.x, x)
        xp.copyto(self.t, t)
        key = self._key()
        if self.key is None:  # the first step runs eagerly, so that every lasting array exists
            self.key = key
            return train_step._step(self.x, self.t)
        if self.graph is None or key != self.key:
            self.graph = self.keep_alive = None
            value, self.graph = train_step.model.backend.capture(lambda: train_step._step(self.x, self.t))
            self.key = key
            # An eager batch of another shape may replace layer buffers; the graph keeps its own.
            self.keep_alive = self._arrays()
            return value.copy()
        self.graph.replay()
        return self.graph.output.copy()


def fit(model, X, T, *, loss, optimizer, epochs: int = 1, batch_size: int = 32,
        shuffle: bool = True, seed=None, verbose: int = 1, callback=None, graph: bool = False,
        distributed: bool = False) -> dict:
    """Train ``model`` on (X, T) and return ``{"loss": [mean loss per epoch], ...}``.

    The data is checked once (shapes, NaN/Inf) and moved to the device once. Each epoch draws
    a fresh order from ``seed``; the last batch may be smaller. ``callback(epoch, logs)`` runs
    after each epoch and may add entries to ``logs`` (they are kept in the history). Progress
    shows with tqdm on a terminal unless ``verbose=0``. ``graph=True`` replays each full batch
    as a CUDA graph (see ``TrainStep``); the smaller last batch runs eagerly.

    ``distributed=True`` trains data-parallel over the MPI world (``gpunn.distributed.init``):
    every rank passes the same data and settings; ``batch_size`` is global, and each global
    batch is split into contiguous shards by rank (``gpunn.data_parallel``). Losses are global;
    only rank 0 shows progress.
    """
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"fit: {name} must be a positive int, got {value!r}")
    parallel = None
    if distributed:
        from .data_parallel import DataParallel
        from .distributed import init

        parallel = DataParallel(init(model.backend), model)
    step = TrainStep(model, loss, optimizer, graph=graph, data_parallel=parallel)
    try:
        x_all, t_all = step.prepare(X, T)
    except ValueError as error:
        raise type(error)(f"fit: {error}") from error
    if parallel is not None:
        parallel.check_agreement(rows=x_all.shape[0], epochs=epochs, batch_size=batch_size, shuffle=shuffle,
                                 seed=seed, graph=graph)
        parallel.broadcast_state(optimizer)
        verbose = verbose if parallel.world.is_root else 0
    backend = model.backend
    xp, n = backend.xp, x_all.shape[0]
    generator = backend.random_generator(seed)
    history: dict = {"loss": []}
    bar = _progress(epochs, verbose)
    try:
        for epoch in range(epochs):
            order = backend.asarray(generator.permutation(n)) if shuffle else None
            total = backend.zeros((), model.dtype)
            for start in range(0, n, batch_size):
                stop = min(start + batch_size, n)
                first, last = (start, stop) if parallel is None else parallel.shard(start, stop)
                if order is None:
                    xb, tb = x_all[first:last], t_all[first:last]
                else:
                    rows = order[first:last]
                    xb, tb = xp.take(x_all, rows, axis=0), xp.take(t_all, rows, axis=0)
                share = (last - first) / (stop - start)
                total += step(xb, tb, share, replay=stop - start == batch_size) * (last - first)
            mean = (float(total) if parallel is None else parallel.global_loss_total(float(total))) / n
            if not math.isfinite(mean):
                raise TrainingDiverged(f"fit: the loss became {mean} in epoch {epoch + 1}; "
                                       "lower the learning rate or check the data")
            logs = {"loss": mean}
            if callback is not None:
                callback(epoch, logs)
            for key, value in logs.items():
                history.setdefault(key, []).append(value)
            if bar is not None:
                bar.set_postfix({k: f"{v:.4g}" for k, v in logs.items()}, refresh=False)
                bar.update(1)
            elif verbose and verbose > 1:
                print(f"epoch {epoch + 1}/{epochs} " + " ".join(f"{k}={v:.4g}" for k, v in logs.items()),
                      file=sys.stderr)
    finally:
        if bar is not None:
            bar.close()
    return history
