"""The fit loop: shuffled mini-batches, one SGD step each, the mean loss per epoch."""

from __future__ import annotations

import math
import sys


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
    """

    def __init__(self, model, loss, optimizer):
        if model.out_features is None:
            raise ValueError("TrainStep: the model has no Dense layer to train")
        self.model, self.loss, self.optimizer = model, loss, optimizer
        if not optimizer.params:
            optimizer.bind(model.parameters())

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

    def __call__(self, x, t):
        """Train on one prepared batch; returns the batch's mean loss as a 0-d device array."""
        model, loss = self.model, self.loss
        value = loss._forward(model.backend, model._forward(x), t)
        model.zero_grad()
        model.backward(loss.backward(), input_gradient=False)
        self.optimizer.step()
        return value


def fit(model, X, T, *, loss, optimizer, epochs: int = 1, batch_size: int = 32,
        shuffle: bool = True, seed=None, verbose: int = 1, callback=None) -> dict:
    """Train ``model`` on (X, T) and return ``{"loss": [mean loss per epoch], ...}``.

    The data is checked once (shapes, NaN/Inf) and moved to the device once. Each epoch draws
    a fresh order from ``seed``; the last batch may be smaller. ``callback(epoch, logs)`` runs
    after each epoch and may add entries to ``logs`` (they are kept in the history). Progress
    shows with tqdm on a terminal unless ``verbose=0``.
    """
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"fit: {name} must be a positive int, got {value!r}")
    step = TrainStep(model, loss, optimizer)
    try:
        x_all, t_all = step.prepare(X, T)
    except ValueError as error:
        raise type(error)(f"fit: {error}") from error
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
