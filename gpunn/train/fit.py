"""The fit loop: shuffled mini-batches, validation, metrics, early stopping and exact resume.

Each epoch's order depends on ``(seed, epoch)`` alone, so 5 epochs, a checkpoint with the
optimizer, and 5 more from ``initial_epoch=5`` give the weights of 10 epochs straight. Losses
and metrics are summed on the device and read once per epoch.
"""

from __future__ import annotations

import contextlib
import math
import os

from gpunn import checks
from gpunn.data import BatchStream, is_streamed
from gpunn.data.stream import predict_streamed
from gpunn.data.dataset import Dataset, as_dataset
from gpunn.nn.losses import prepare_weights
from gpunn.train.callbacks import (Callback, CSVLogger, EarlyStopping, EpochFunction, Progress, check_divergence,
                                   overrides)
from gpunn.train.metrics import METRICS, check_metric_targets, check_metrics
from gpunn.train.step import TrainStep
from gpunn.train.weights import check_class_weight, check_loss_takes_weights, fit_weights


@contextlib.contextmanager
def evaluation_mode(model):
    """Layers that behave differently in training (dropout) run in evaluation mode inside."""
    switch = getattr(model, "evaluating", None)
    if switch is None:
        yield
    else:
        with switch():
            yield


def evaluate(model, X, T, loss, metrics=(), batch_size: int | None = 4096, sample_weight=None) -> dict:
    """``{"loss": mean loss, metric: value, ...}`` over (X, T), in evaluation mode (``Sequential.evaluate``);
    with ``sample_weight`` the loss is Σ wᵢ·lᵢ / rows (metrics stay unweighted, as Keras's ``metrics``)."""
    metrics = check_metrics(metrics)
    checks.batch_size("evaluate", batch_size)
    if is_streamed(X):
        return _evaluate_streamed(model, as_dataset(X, T, "evaluate"), loss, metrics, batch_size or 4096, sample_weight)
    x, t = TrainStep.prepare_data(model, loss, X, T)
    if x.shape[0] == 0:
        raise ValueError("evaluate: X has no rows")
    check_metric_targets(metrics, t, model.out_features)
    weights = fit_weights("evaluate", model.backend, t, model.dtype, sample_weight, None)
    return evaluate_prepared(model, x, t, loss, metrics, batch_size or x.shape[0], weights)


def _evaluate_streamed(model, dataset, loss, metrics, batch_size: int, sample_weight) -> dict:
    """evaluate over a Dataset read in order, a chunk at a time (gpunn.data)."""
    if dataset.t is None:
        raise ValueError("evaluate: the Dataset holds no targets T")
    if dataset.rows == 0:
        raise ValueError("evaluate: X has no rows")
    weights = None if sample_weight is None else prepare_weights(model.backend, sample_weight, dataset.rows,
                                                                 model.dtype, "evaluate")
    return evaluate_dataset(model, dataset, loss, metrics, batch_size, weights)


def evaluate_dataset(model, dataset, loss, metrics, batch_size: int = 4096, weights=None) -> dict:
    """``evaluate_prepared`` over a Dataset streamed in order: the same batches, the same sums, so the
    same numbers as over the rows in memory."""
    def batches():
        stream = BatchStream(dataset, batch_size, shuffle=False).batches(0, model.backend.host_buffer, model.dtype)
        for batch, x, t in checked_batches(model, loss, metrics, stream, "evaluate"):
            yield x, t, None if weights is None else weights[int(batch.rows[0]):int(batch.rows[-1]) + 1]

    return evaluate_batches(model, batches(), dataset.rows, loss, metrics)


def checked_batches(model, loss, metrics, batches, owner: str):
    """gpunn.data's streamed batches as ``(batch, x, t)`` on the device (``Backend.device_batches``),
    each checked as ``TrainStep.prepare_data`` checks data in memory (X's values in the reading
    thread); an error names the rows."""
    with contextlib.closing(model.backend.device_batches(batches)) as staged:
        while True:
            try:  # the reading thread's errors (a truncated file, X not finite) name the rows
                batch, x_device, t_device = next(staged)
            except StopIteration:
                return
            except ValueError as error:
                raise ValueError(f"{owner}: {error}") from None
            try:
                x, t = TrainStep.prepare_data(model, loss, x_device, t_device, check_finite=False)
                check_metric_targets(metrics, t, model.out_features)
            except (TypeError, ValueError) as error:
                rows = batch.rows
                raise type(error)(f"{owner}: rows {int(rows.min())}..{int(rows.max())} of the data set: "
                                  f"{error}") from None
            yield batch, x, t


def predict(model, X, batch_size: int | None = None):
    """``Sequential.predict``: the outputs as a new NumPy array; a Dataset or a memory-mapped X is read
    a chunk at a time and never held whole."""
    if not is_streamed(X):
        return model.backend.to_numpy(model._outputs(X, batch_size))
    checks.batch_size("predict", batch_size)
    return predict_streamed(model, as_dataset(X, None, "predict"), batch_size or 4096)


def evaluate_prepared(model, x, t, loss, metrics, batch_size: int = 4096, weights=None) -> dict:
    """Mean loss and metrics over prepared device arrays, in evaluation mode, in batches."""
    rows = x.shape[0]
    return evaluate_batches(model, ((x[start:start + batch_size], t[start:start + batch_size],
                                     None if weights is None else weights[start:start + batch_size])
                                    for start in range(0, rows, batch_size)), rows, loss, metrics)


def evaluate_batches(model, batches, rows: int, loss, metrics) -> dict:
    """Mean loss and metrics over ``(x, t, weights or None)`` device batches, in evaluation mode: sums
    on the device, read once."""
    import copy

    backend = model.backend
    probe = copy.copy(loss)  # the caller's loss keeps what its own backward needs
    sums = {"loss": backend.zeros((), "float64"), **{name: backend.zeros((), "float64") for name in metrics}}
    with evaluation_mode(model):
        for xb, tb, wb in batches:
            y = model._forward(xb)
            sums["loss"] += probe._forward(backend, y, tb, *([] if wb is None else [wb])) * xb.shape[0]
            for name in metrics:
                sums[name] += METRICS[name](y, tb, loss.takes_logits)
    return {name: float(total) / rows for name, total in sums.items()}


def fit(model, X, T, *, loss, optimizer, epochs: int = 1, batch_size: int = 32, shuffle: bool = True,
        seed=None, verbose: int = 1, callback=None, graph: bool = False, validation_data=None,
        metrics=(), early_stopping: EarlyStopping | None = None, initial_epoch: int = 0,
        distributed: bool = False, callbacks=(), sample_weight=None, class_weight=None,
        validation_split: float = 0.0) -> dict:
    """Train ``model`` on (X, T) from epoch ``initial_epoch`` up to ``epochs``; returns the history.

    Training runs in training mode (dropout on); the model's mode comes back afterwards.
    The history holds, per epoch, ``loss`` (the mean training loss), each metric (``accuracy``,
    ``mse``, ``mae``; training values are running means over the epoch's batches), ``val_loss``
    and ``val_<metric>`` with ``validation_data=(Xv, Tv)``, ``skipped_steps`` for float16 models
    (updates skipped because the scaled gradient overflowed), and ``warnings``. The data is checked
    and moved to the device once; the last batch may be smaller. ``callbacks`` (``gn.Callback`` instances,
    Keras's protocol) are called in order, after ``callback(epoch, logs)``, which runs after each
    epoch; both may add entries to ``logs``; ``early_stopping`` runs last. A callback that sets
    ``model.stop_training = True`` ends training after the epoch (after the batch, in a batch hook).
    ``sample_weight`` (one weight >= 0 per row) or ``class_weight`` (``{class: weight}``; a row's
    class is its label, the argmax of several target columns or one column rounded; classes not
    named weigh 1) weigh each row as Keras 3 does: a batch's loss is Σ wᵢ·lᵢ / rows, its gradient
    alike. Validation is unweighted unless ``validation_data`` holds a third array of weights.
    ``validation_split`` (in [0, 1)) holds out the last ``rows - floor(rows · (1 − split))`` rows,
    before any shuffling, as Keras does (with their sample weights); ``validation_data`` overrides it.
    A ``gn.data.Dataset`` or a memory-mapped X (and a Dataset as ``validation_data=(dataset, None)``) streams from disk (``gpunn.data``) instead of moving
    to the device whole. ``graph=True`` replays each full batch as a CUDA graph (see ``TrainStep``). NaN/Inf in the loss or the parameters raises TrainingDiverged;
    a loss a hundred times above the best epoch's warns (TrainingWarning, and in the history).

    ``distributed=True`` trains data-parallel over the MPI world (``gpunn.distributed.init``):
    every rank passes the same data and settings; ``batch_size`` is global, and each global batch
    is split into contiguous shards by rank (``gpunn.distributed.data_parallel``). Losses and metrics are
    global (validation runs whole on every rank); only rank 0 shows progress.
    """
    epochs = checks.count("fit", "epochs", epochs)
    batch_size = checks.count("fit", "batch_size", batch_size)
    initial_epoch = checks.count("fit", "initial_epoch", initial_epoch, minimum=0)
    if initial_epoch >= epochs:
        raise ValueError(f"fit: initial_epoch ({initial_epoch}) must be below epochs ({epochs}): epochs is the "
                         "number of the last epoch, as in Keras")
    if verbose not in (0, 1, 2):
        raise ValueError(f"fit: verbose must be 0, 1 or 2, got {verbose!r}")
    if callback is not None and not callable(callback):
        raise TypeError(f"fit: callback must be callable as callback(epoch, logs), got {type(callback).__name__}")
    if early_stopping is not None and not isinstance(early_stopping, EarlyStopping):
        raise TypeError(f"fit: early_stopping must be a gn.EarlyStopping, got {early_stopping!r}")
    callbacks = _check_callbacks(callbacks)
    validation_split = checks.number("fit", "validation_split", validation_split, low=0.0, high=1.0, high_open=True)
    metrics = check_metrics(metrics)
    seed = checks.seed("fit", seed)
    if seed is None:
        seed = int.from_bytes(os.urandom(8), "little") >> 1
    parallel = None
    if distributed:
        from gpunn.distributed.data_parallel import DataParallel
        from gpunn.distributed.world import check_model_device, init

        world = init(model.backend)  # selects this rank's GPU before fit allocates anything
        check_model_device(world, model)
        parallel = DataParallel(world, model)
        seed = parallel.world.broadcast_object(seed)  # seed=None: rank 0's draw, so all shuffle alike
    step = TrainStep(model, loss, optimizer, graph=graph, data_parallel=parallel)
    step.track(metrics)  # the loss and metrics are summed on the device by the step (in its graph too)
    if not any(parameter.trainable for parameter in optimizer.params):
        raise ValueError("fit: every parameter the optimizer holds is frozen (trainable=False), so nothing would "
                         "train; unfreeze some with model.unfreeze(...) or layer.trainable = True")
    if sample_weight is not None or class_weight is not None:
        check_loss_takes_weights("fit", loss)
    stream, x_all, t_all, weights_all, validation = _training_data(
        model, step, X, T, batch_size, seed, shuffle, distributed, validation_data, validation_split,
        sample_weight, class_weight)
    if stream is not None:
        class_weight = None if class_weight is None else check_class_weight("fit", class_weight)
    backend = model.backend
    xp, n = backend.xp, (x_all.shape[0] if stream is None else stream.dataset.rows)
    if n == 0:
        raise ValueError("fit: X has no rows")
    if stream is not None and stream.dataset.features != model.in_features:
        raise ValueError(f"fit: X has {stream.dataset.features} features but the model expects {model.in_features}")
    validation_rows = None if validation is None else (
        validation[0].rows if isinstance(validation[0], Dataset) else validation[0].shape[0])
    if validation_rows == 0:
        raise ValueError("fit: validation_data has no rows")
    try:
        in_memory_validation = validation is not None and not isinstance(validation[0], Dataset)
        for t in ([t_all] if stream is None else []) + ([validation[1]] if in_memory_validation else []):
            check_metric_targets(metrics, t, model.out_features)
    except ValueError as error:
        raise ValueError(f"fit: {error}") from None
    if parallel is not None:
        parallel.check_agreement(rows=n, epochs=epochs, initial_epoch=initial_epoch, batch_size=batch_size,
                                 shuffle=shuffle, seed=seed, graph=graph, metrics=metrics,
                                 frozen=[index for index, p in enumerate(optimizer.params) if not p.trainable],
                                 weighted=(sample_weight is not None, class_weight is not None),
                                 validation_rows=validation_rows)
        parallel.broadcast_state(optimizer)
        verbose = verbose if parallel.world.is_root else 0
    keys = {"loss", *metrics} | ({"val_loss", *(f"val_{name}" for name in metrics)} if validation else set())
    keys |= {"skipped_steps"} if optimizer.mixed_precision else set()
    extensible = callback is not None or any(not type(c).__module__.startswith("gpunn.") for c in callbacks)
    callbacks = ([EpochFunction(callback)] if callback is not None else []) + callbacks \
        + ([early_stopping] if early_stopping is not None else [])
    batches = -(-n // batch_size)
    optimizer.reserve_steps(batches * (epochs - initial_epoch))
    history: dict = {"loss": []}
    best_loss, skipped_before = math.inf, optimizer.skipped_steps
    progress = Progress(epochs, verbose)
    from gpunn.nn.dropout import Dropout

    dropouts = [layer for layer in model.all_layers() if isinstance(layer, Dropout)] if parallel else []
    batch_hooks = [c for c in callbacks if overrides(c, "on_train_batch_end")]
    batch_begin_hooks = [c for c in callbacks if overrides(c, "on_train_batch_begin")]
    params = {"epochs": epochs, "initial_epoch": initial_epoch, "steps": batches, "verbose": verbose,
              "keys": keys, "extensible": extensible, "root": parallel is None or parallel.world.is_root}
    for each in callbacks:
        each.set_model(model)
        each.optimizer = optimizer
        each.set_params(params)

    def in_memory(epoch):
        """(x, t, weights, rows, share, full batch?, rows done) of each batch on the
        device. With a graph the step gathers its batch (``rows``: in the graph, from the whole
        data set); otherwise the batch is a slice, or gathered here when shuffled."""
        order = backend.asarray(backend.random_generator((seed, epoch)).permutation(n)) if shuffle else None
        if order is None and graph:
            order = xp.arange(n)
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            first, last = (start, stop) if parallel is None else parallel.shard(start, stop)
            for dropout in dropouts:  # a shard draws its rows' masks of the global batch
                dropout.row_offset = first - start
            share, full = (last - first) / (stop - start), stop - start == batch_size
            if graph:
                yield x_all, t_all, weights_all, order[first:last], share, full, stop
                continue
            if order is None:
                xb, tb = x_all[first:last], t_all[first:last]
                wb = None if weights_all is None else weights_all[first:last]
            else:
                rows = order[first:last]
                xb, tb = xp.take(x_all, rows, axis=0), xp.take(t_all, rows, axis=0)
                wb = None if weights_all is None else xp.take(weights_all, rows, axis=0)
            yield xb, tb, wb, None, share, full, stop

    def streamed(epoch):
        """The same from a Dataset read in contiguous chunks by a background thread (gpunn.data), each
        batch gathered into a reused host buffer and copied to the device (``Backend.device_batches``)."""
        done = 0
        batches = stream.batches(epoch, backend.host_buffer, model.dtype)
        with contextlib.closing(checked_batches(model, loss, metrics, batches, "fit")) as checked:
            for batch, xb, tb in checked:
                rows = batch.rows
                if weights_all is not None:
                    wb = xp.take(weights_all, backend.asarray(rows), axis=0)
                else:
                    wb = fit_weights("fit", backend, tb, model.dtype, None, class_weight)
                for dropout in dropouts:  # a shard draws its rows' masks of the global batch
                    dropout.row_offset = batch.offset
                done += batch.batch_rows
                yield xb, tb, wb, None, len(rows) / batch.batch_rows, batch.batch_rows == batch_size, done

    model.stop_training = False
    was_training = model.training
    model.train()  # dropout on; the mode found comes back afterwards, also on an error
    try:
        for each in callbacks:
            each.on_train_begin()
        for epoch in range(initial_epoch, epochs):
            for each in callbacks:
                each.on_epoch_begin(epoch)
            progress.begin_epoch(epoch, batches)
            step.reset_sums()
            seen = 0
            source = in_memory(epoch) if stream is None else streamed(epoch)
            with contextlib.closing(source):  # a stream's reading thread ends here, also on a break or Ctrl-C
                for batch, (xb, tb, wb, rows, share, full, stop) in enumerate(source):
                    for each in batch_begin_hooks:
                        each.on_train_batch_begin(batch)
                    step.train(xb, tb, share, replay=full, weights=wb, rows=rows)
                    seen = stop
                    progress.batch_done()
                    if batch_hooks:  # reads the device: only when a callback asks for batch logs
                        total = step.sums[0]
                        running = float(total) if parallel is None else parallel.global_sums({"loss": total})["loss"]
                        for each in batch_hooks:
                            each.on_train_batch_end(batch, {"loss": running / seen})
                        if model.stop_training:
                            break
            names = ("loss", *metrics)
            if parallel is None:  # one read of the device per epoch
                sums = dict(zip(names, map(float, backend.to_numpy(step.sums))))
            else:
                sums = parallel.global_sums({name: step.sums[index] for index, name in enumerate(names)})
            logs = {name: value / seen for name, value in sums.items()}
            if validation is not None:
                weights = validation[2] if len(validation) == 3 else None
                scores = (evaluate_dataset(model, validation[0], loss, metrics, weights=weights)
                          if isinstance(validation[0], Dataset) else
                          evaluate_prepared(model, validation[0], validation[1], loss, metrics, weights=weights))
                logs.update({f"val_{k}": v for k, v in scores.items()})
            if optimizer.mixed_precision:
                skipped = optimizer.skipped_steps
                logs["skipped_steps"], skipped_before = skipped - skipped_before, skipped
            if not model.stop_training:  # a batch callback that stopped the fit (TerminateOnNaN) has seen it
                best_loss = check_divergence(model, epoch, logs, best_loss, history)
            history_logs = logs
            for each in callbacks:
                if each is early_stopping:  # after the history and the progress line, as it always ran
                    for key, value in history_logs.items():
                        history.setdefault(key, []).append(value)
                    progress.update(epoch, history_logs)
                    history_logs = None
                each.on_epoch_end(epoch, logs)
            if history_logs is not None:
                for key, value in logs.items():
                    history.setdefault(key, []).append(value)
                progress.update(epoch, logs)
            if model.stop_training:
                break
        for each in callbacks:
            each.on_train_end()
    finally:
        step.release()  # the graph's memory goes now, with nothing left holding its pool's blocks
        model.train(was_training)
        progress.close()
        for dropout in dropouts:  # a later single-process fit draws the whole batch's masks again
            dropout.row_offset = 0
        for each in callbacks:
            if isinstance(each, CSVLogger):  # its file, also when training fails
                each.close()
    return history


def _training_data(model, step, X, T, batch_size, seed, shuffle, distributed, validation_data, validation_split,
                   sample_weight, class_weight):
    """fit's data, checked: (stream or None, x, t, row weights, validation). In memory, x and t are on
    the device whole; a Dataset or memory-mapped X becomes a BatchStream (x and t None)."""
    stream = None
    if is_streamed(X):
        shard = None if not distributed else (step.data_parallel.world.rank, step.data_parallel.world.size)
        stream = BatchStream(as_dataset(X, T, "fit"), batch_size, seed, shuffle, shard=shard)
    try:
        x_all, t_all = step.prepare(X, T) if stream is None else (None, None)
        validation = None
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
                raise ValueError("validation_data must be a pair (X_val, T_val) or a triple (X_val, T_val, "
                                 "sample_weight_val)")
            if isinstance(validation_data[0], Dataset):  # streamed in order at each epoch's end, as validation_split's
                validation = (as_dataset(*validation_data[:2], "validation_data"), None)
                if validation[0].t is None or len(validation_data) == 3:
                    raise ValueError("validation_data: a Dataset needs its targets T, and takes no sample weights")
            else:
                try:
                    validation = step.prepare(*validation_data[:2])
                except (TypeError, ValueError) as error:  # "X has 4 features" would point at the training data
                    raise type(error)(f"validation_data: {error}") from error
    except (TypeError, ValueError) as error:
        raise type(error)(f"fit: {error}") from error
    if stream is None:
        weights_all = fit_weights("fit", model.backend, t_all, model.dtype, sample_weight, class_weight)
    else:
        if stream.dataset.t is None:
            raise ValueError("fit: the Dataset holds no targets T")
        if sample_weight is not None and class_weight is not None:
            raise ValueError("fit: pass sample_weight or class_weight, not both (as Keras refuses)")
        weights_all = None if sample_weight is None else prepare_weights(
            model.backend, sample_weight, stream.dataset.rows, model.dtype, "fit")
    if validation_split and validation is None:  # Keras: the last rows, before shuffling; validation_data wins
        rows = x_all.shape[0] if stream is None else stream.dataset.rows
        split_at = math.floor(rows * (1.0 - validation_split))
        if split_at == 0 or split_at == rows:
            raise ValueError(f"fit: {rows} rows cannot be split into training and validation rows with "
                             f"validation_split={validation_split:g}")
        if stream is None:
            validation = (x_all[split_at:], t_all[split_at:])
            x_all, t_all = x_all[:split_at], t_all[:split_at]
        else:  # both parts stay on disk: the validation rows stream in order, the training rows shuffled
            dataset = stream.dataset
            validation = (dataset.rows_between(split_at, rows), None)
            stream = BatchStream(dataset.rows_between(0, split_at), batch_size, seed, shuffle, shard=stream.shard)
        if sample_weight is not None:
            validation = (*validation, weights_all[split_at:])
        weights_all = None if weights_all is None else weights_all[:split_at]
    if validation_data is not None and len(validation_data) == 3:
        validation = (*validation, fit_weights("fit: validation_data", model.backend, validation[1], model.dtype,
                                               validation_data[2], None))
    return stream, x_all, t_all, weights_all, validation


def _check_callbacks(callbacks) -> list:
    """A list of ``gn.Callback`` instances (a class instead of an instance is the usual slip)."""
    if isinstance(callbacks, Callback):
        raise TypeError("fit: callbacks must be a list of gn.Callback, got a single callback: pass [callback]")
    try:
        callbacks = list(callbacks or ())
    except TypeError:
        raise TypeError(f"fit: callbacks must be a list of gn.Callback, got {type(callbacks).__name__}") from None
    for each in callbacks:
        if isinstance(each, type):
            raise TypeError(f"fit: callbacks holds the class {each.__name__} itself; pass an instance "
                            f"({each.__name__}(...))")
        if not isinstance(each, Callback):
            raise TypeError(f"fit: callbacks must hold gn.Callback instances, got {type(each).__name__} {each!r:.40}"
                            " (a function(epoch, logs) goes in callback=)")
    if len({id(each) for each in callbacks}) != len(callbacks):
        raise ValueError("fit: callbacks holds the same callback twice; each runs once per hook")
    return callbacks
