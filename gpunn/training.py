"""The fit loop: shuffled mini-batches, one SGD step each, the mean loss per epoch."""

from __future__ import annotations

import math
import sys

from .backends import get_matmul_precision
from .losses import Loss


class TrainingDiverged(FloatingPointError):
    """The epoch's loss became NaN or Inf."""


class _Progress:
    """Per-epoch progress for ``verbose``: 0 nothing; 1 a tqdm bar where one renders (a terminal
    or a notebook, with tqdm installed), else one plain line per epoch on stderr; 2 a plain line
    per epoch always."""

    def __init__(self, epochs: int, verbose: int):
        self.epochs, self.verbose, self.bar = epochs, verbose, None
        if verbose == 1 and (sys.stderr.isatty() or _in_notebook()):
            try:
                from tqdm.auto import tqdm
            except ImportError:
                pass
            else:
                self.bar = tqdm(total=epochs, unit="epoch", file=sys.stderr)

    def update(self, epoch: int, logs: dict) -> None:
        if self.bar is not None:
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in logs.items()}, refresh=False)
            self.bar.update(1)
        elif self.verbose:
            print(f"epoch {epoch + 1}/{self.epochs} " + " ".join(f"{k}={v:.4g}" for k, v in logs.items()),
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _in_notebook() -> bool:
    """True inside a Jupyter kernel, where tqdm.auto draws a widget although stderr is no terminal."""
    shell = sys.modules.get("IPython")
    try:
        return type(shell.get_ipython()).__name__ == "ZMQInteractiveShell"
    except AttributeError:
        return False


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

    def __init__(self, model, loss, optimizer, graph: bool = False):
        if model.out_features is None:
            raise ValueError("TrainStep: the model has no Dense layer to train")
        for argument, value, example in (("loss", loss, "gn.MSELoss()"), ("optimizer", optimizer, "gn.SGD(lr=0.1)")):
            if isinstance(value, type):
                raise TypeError(f"{argument} must be an instance such as {example}, got the class "
                                f"{value.__name__} itself (add the parentheses)")
        if not isinstance(loss, Loss):
            raise TypeError(f"loss must be a gpunn loss such as gn.MSELoss(), got {type(loss).__name__} {loss!r:.40}")
        if not callable(getattr(optimizer, "step", None)):
            raise TypeError(f"optimizer must be a gpunn optimizer such as gn.SGD(lr=0.1), got "
                            f"{type(optimizer).__name__} {optimizer!r:.40}")
        if graph and not model.backend.supports_graphs:
            raise ValueError(f"TrainStep: graph=True needs a backend that captures CUDA graphs (cupy); "
                             f"the {model.backend.name} backend runs every step eagerly, so pass graph=False")
        self.model, self.loss, self.optimizer, self.graph = model, loss, optimizer, graph
        if not optimizer.params:
            optimizer.bind(model.parameters())
        self._recorded = None

    def prepare(self, X, T):
        """(x, t) on the model's device: inputs as ``model.as_input``, targets as the loss wants them."""
        model = self.model
        x = model.as_input(X, "X")
        if not hasattr(T, "__len__") or getattr(T, "ndim", 1) == 0 or isinstance(T, (str, bytes)):
            raise ValueError(f"T must hold one target per row of X, got {type(T).__name__} {T!r:.40}")
        rows = T.shape[0] if hasattr(T, "shape") else len(T)
        if rows != x.shape[0]:
            raise ValueError(f"X has {x.shape[0]} rows but T has {rows}")
        t = self.loss.prepare_targets(model.backend, T, (x.shape[0], model.out_features), model.dtype)
        if t.dtype.kind == "f" and not bool(model.backend.xp.isfinite(t).all()):
            raise ValueError("T contains NaN or Inf")
        return x, t

    def __call__(self, x, t):
        """Train on one prepared batch; returns the batch's mean loss as a new 0-d device array."""
        if not self.graph:
            return self._step(x, t)
        recorded = self._recorded
        if recorded is None:
            recorded = self._recorded = _RecordedStep(self, x, t)
        elif not recorded.fits(x, t):
            return self._step(x, t)
        return recorded.run(x, t)

    def _step(self, x, t):
        model, loss = self.model, self.loss
        value = loss._forward(model.backend, model._forward(x), t)
        model.zero_grad()
        model.backward(loss.backward(), input_gradient=False)
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
        return (tuple(sorted(train_step.optimizer.config().items())), get_matmul_precision(),
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
        shuffle: bool = True, seed=None, verbose: int = 1, callback=None, graph: bool = False) -> dict:
    """Train ``model`` on (X, T) and return ``{"loss": [mean loss per epoch], ...}``.

    The data is checked once (shapes, NaN/Inf) and moved to the device once. Each epoch draws
    a fresh order from ``seed``; the last batch may be smaller. ``callback(epoch, logs)`` runs
    after each epoch and may add entries to ``logs`` (they are kept in the history). ``verbose``:
    0 silent; 1 a tqdm bar on a terminal or in a notebook, else a line per epoch on stderr; 2 a
    line per epoch always. ``graph=True`` replays each full batch
    as a CUDA graph (see ``TrainStep``); the smaller last batch runs eagerly.
    """
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"fit: {name} must be a positive int, got {value!r}")
    if verbose not in (0, 1, 2):
        raise ValueError(f"fit: verbose must be 0, 1 or 2, got {verbose!r}")
    if callback is not None and not callable(callback):
        raise TypeError(f"fit: callback must be callable as callback(epoch, logs), got {type(callback).__name__}")
    step = TrainStep(model, loss, optimizer, graph=graph)
    try:
        x_all, t_all = step.prepare(X, T)
    except ValueError as error:
        raise type(error)(f"fit: {error}") from error
    backend = model.backend
    xp, n = backend.xp, x_all.shape[0]
    if n == 0:
        raise ValueError("fit: X has no rows; there is nothing to train on")
    generator = backend.random_generator(seed)
    history: dict = {"loss": []}
    progress = _Progress(epochs, verbose)
    try:
        for epoch in range(epochs):
            order = backend.asarray(generator.permutation(n)) if shuffle else None
            total = backend.zeros((), model.dtype)
            for start in range(0, n, batch_size):
                stop = min(start + batch_size, n)
                if order is None:
                    xb, tb = x_all[start:stop], t_all[start:stop]
                else:
                    rows = order[start:stop]
                    xb, tb = xp.take(x_all, rows, axis=0), xp.take(t_all, rows, axis=0)
                total += step(xb, tb) * (stop - start)
            mean = float(total) / n
            if not math.isfinite(mean):
                raise TrainingDiverged(f"fit: the loss became {mean} in epoch {epoch + 1}; "
                                       "lower the learning rate or check the data")
            logs = {"loss": mean}
            if callback is not None:
                callback(epoch, logs)
            for key, value in logs.items():
                history.setdefault(key, []).append(value)
            progress.update(epoch, logs)
    finally:
        progress.close()
    return history
