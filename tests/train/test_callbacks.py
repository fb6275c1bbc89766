"""Callbacks with Keras's protocol: the hooks and their order, stop_training, and each built-in
callback against Keras's documented semantics (worked out by hand here: Keras is not installed)."""

import csv
import math
import os

import numpy as np
import pytest

import gpunn as gn


def mlp(seed=0):
    return gn.Sequential(gn.Dense(4, 8, dtype="float64", seed=seed), gn.Tanh(),
                         gn.Dense(8, 2, dtype="float64", seed=seed + 1))


@pytest.fixture
def data(rng):
    x = rng.normal(size=(40, 4))
    return x, np.tanh(x[:, :2] + x[:, 2:]), rng.normal(size=(12, 4)), rng.normal(size=(12, 2))


def fit(model, data, **options):
    x, t, _, _ = data
    options = {"optimizer": gn.SGD(lr=0.1), "epochs": 4, "batch_size": 10, "seed": 1, "verbose": 0, **options}
    return model.fit(x, t, loss=gn.MSELoss(), **options)


class Recorder(gn.Callback):
    def __init__(self):
        self.calls = []

    def on_train_begin(self, logs=None):
        self.calls.append(("train_begin",))

    def on_epoch_begin(self, epoch, logs=None):
        self.calls.append(("epoch_begin", epoch))

    def on_train_batch_begin(self, batch, logs=None):
        self.calls.append(("batch_begin", batch))

    def on_train_batch_end(self, batch, logs=None):
        self.calls.append(("batch_end", batch, logs["loss"]))

    def on_epoch_end(self, epoch, logs=None):
        self.calls.append(("epoch_end", epoch))
        logs["mine"] = 10.0 * epoch  # a callback may add entries to the history

    def on_train_end(self, logs=None):
        self.calls.append(("train_end",))


def test_hooks_run_in_keras_order_with_model_optimizer_and_params(data):
    recorder, model, optimizer = Recorder(), mlp(), gn.SGD(lr=0.1)
    history = fit(model, data, optimizer=optimizer, epochs=3, initial_epoch=1, callbacks=[recorder])
    names = [call[:2] for call in recorder.calls]
    expected = [("train_begin",)]
    for epoch in (1, 2):
        expected += [("epoch_begin", epoch)] + [call for b in range(4) for call in (("batch_begin", b), ("batch_end", b))]
        expected += [("epoch_end", epoch)]
    assert names == expected + [("train_end",)]
    assert recorder.model is model and recorder.optimizer is optimizer
    assert recorder.params["epochs"] == 3 and recorder.params["initial_epoch"] == 1 and recorder.params["steps"] == 4
    assert history["mine"] == [10.0, 20.0]
    # the batch logs' loss is the running mean of the epoch: the last batch's equals the epoch's loss
    last_batches = [call[2] for call in recorder.calls if call[:2] == ("batch_end", 3)]
    assert last_batches == pytest.approx(history["loss"], rel=1e-12)


def test_stop_training_set_at_an_epoch_end_stops_after_that_epoch(data):
    class StopAt(gn.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 2:
                self.model.stop_training = True

    recorder = Recorder()
    history = fit(mlp(), data, epochs=10, callbacks=[StopAt(), recorder])
    assert len(history["loss"]) == 3
    assert recorder.calls[-1] == ("train_end",)
    assert ("epoch_end", 2) in recorder.calls  # the later callbacks still see the epoch


def test_stop_training_set_in_a_batch_hook_stops_after_that_batch(data):
    class StopAtBatch(gn.Callback):
        def on_train_batch_end(self, batch, logs=None):
            self.batches = getattr(self, "batches", 0) + 1
            if batch == 1:
                self.model.stop_training = True

    stopper = StopAtBatch()
    history = fit(mlp(), data, epochs=10, callbacks=[stopper])
    assert stopper.batches == 2 and len(history["loss"]) == 1  # the epoch of two batches is still recorded


def test_the_per_epoch_function_and_early_stopping_argument_keep_working_beside_callbacks(data):
    seen = []
    stopper = gn.EarlyStopping(monitor="loss", patience=0, min_delta=1e9, restore_best=False)
    history = fit(mlp(), data, epochs=10, callback=lambda epoch, logs: seen.append(epoch),
                  callbacks=[Recorder()], early_stopping=stopper)
    assert seen == [0, 1] and len(history["loss"]) == 2 and stopper.stopped_epoch == 1
    # an EarlyStopping in callbacks=[...] stops at the same epoch, with the same weights restored
    first, second = mlp(), mlp()
    fit(first, data, epochs=10, early_stopping=gn.EarlyStopping(monitor="loss", patience=3, min_delta=0.05))
    fit(second, data, epochs=10, callbacks=[gn.EarlyStopping(monitor="loss", patience=3, min_delta=0.05)])
    assert np.array_equal(first.flat.values, second.flat.values)


def test_early_stopping_in_callbacks_refuses_a_missing_monitor_before_training(data):
    model = mlp()
    before = model.flat.values.copy()
    with pytest.raises(ValueError, match="monitor 'val_loss' is not in the history"):
        fit(model, data, callbacks=[gn.EarlyStopping()])
    assert np.array_equal(model.flat.values, before)


def test_model_checkpoint_saves_each_epoch_under_its_number(data, tmp_path):
    snapshots = []

    class Snapshot(gn.Callback):
        def on_epoch_end(self, epoch, logs=None):
            snapshots.append(self.model.flat.values.copy())

    model, optimizer = mlp(), gn.Adam(lr=0.01)
    checkpoint = gn.ModelCheckpoint(tmp_path / "ckpt-{epoch:02d}-{loss:.5f}.npz", monitor="loss")
    history = fit(model, data, optimizer=optimizer, epochs=3, callbacks=[checkpoint, Snapshot()])
    names = sorted(os.listdir(tmp_path))
    assert names == [f"ckpt-{e + 1:02d}-{history['loss'][e]:.5f}.npz" for e in range(3)]  # Keras counts from 1
    for epoch, name in enumerate(names):
        loaded = gn.load(tmp_path / name)
        assert np.array_equal(loaded.flat.values, snapshots[epoch])
    assert gn.load_optimizer(tmp_path / names[-1], gn.load(tmp_path / names[-1])).steps_issued == 12
    assert checkpoint.last_path == str(tmp_path / names[-1])


def test_model_checkpoint_save_best_only_writes_only_improving_epochs(data, tmp_path):
    written = []

    class Watch(gn.Callback):  # after the checkpoint: which epochs changed the file
        def on_epoch_end(self, epoch, logs=None):
            path = tmp_path / "best.npz"
            stamp = os.stat(path).st_mtime_ns if path.exists() else None
            if stamp is not None and stamp != getattr(self, "stamp", None):
                written.append(epoch)
            self.stamp = stamp

    _, _, xv, tv = data
    checkpoint = gn.ModelCheckpoint(tmp_path / "best.npz", monitor="val_loss", save_best_only=True)
    history = fit(mlp(), data, optimizer=gn.SGD(lr=0.5), epochs=12, validation_data=(xv, tv),
                  callbacks=[checkpoint, Watch()])
    best, improving = math.inf, []
    for epoch, value in enumerate(history["val_loss"]):  # Keras: save when monitor < best so far
        if value < best:
            best, improving = value, improving + [epoch]
    assert written == improving and len(improving) < 12
    assert checkpoint.best == min(history["val_loss"])
    assert os.listdir(tmp_path) == ["best.npz"]  # saved atomically: no temporary left


def test_model_checkpoint_refuses_bad_settings(data, tmp_path):
    with pytest.raises(ValueError, match="monitor 'val_loss' is not in the history"):
        fit(mlp(), data, callbacks=[gn.ModelCheckpoint(tmp_path / "m.npz", save_best_only=True)])
    with pytest.raises(ValueError, match="names a field"):
        fit(mlp(), data, callbacks=[gn.ModelCheckpoint(tmp_path / "m-{val_accuracy}.npz", monitor="loss")])
    with pytest.raises(TypeError, match="path must be a file name"):
        gn.ModelCheckpoint(3)
    with pytest.raises(ValueError, match="mode must be"):
        gn.ModelCheckpoint("m.npz", mode="best")


def rows(path):
    with open(path, newline="") as file:
        return list(csv.reader(file))


def test_csv_logger_writes_one_flushed_row_per_epoch_and_appends_as_keras(data, tmp_path):
    path = tmp_path / "history.csv"
    read_during = []

    class ReadBack(gn.Callback):  # after the logger: the row is already on disk
        def on_epoch_end(self, epoch, logs=None):
            read_during.append(len(rows(path)))

    _, _, xv, tv = data
    history = fit(mlp(), data, epochs=3, validation_data=(xv, tv), callbacks=[gn.CSVLogger(path), ReadBack()])
    table = rows(path)
    assert table[0] == ["epoch", "loss", "val_loss"] and read_during == [2, 3, 4]
    for epoch, row in enumerate(table[1:]):
        assert int(row[0]) == epoch  # Keras's CSV counts epochs from 0
        assert float(row[1]) == history["loss"][epoch] and float(row[2]) == history["val_loss"][epoch]
    model = mlp()
    fit(model, data, epochs=5, initial_epoch=3, validation_data=(xv, tv), callbacks=[gn.CSVLogger(path, append=True)])
    table = rows(path)
    assert [row[0] for row in table] == ["epoch", "0", "1", "2", "3", "4"]  # one header
    fit(mlp(), data, epochs=1, validation_data=(xv, tv), callbacks=[gn.CSVLogger(path, separator=";")])
    assert [line.split(";")[0] for line in path.read_text().splitlines()] == ["epoch", "0"]  # afresh


def test_csv_logger_closes_its_file_when_training_fails(data, tmp_path):
    logger = gn.CSVLogger(tmp_path / "h.csv")

    class Fail(gn.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fit(mlp(), data, callbacks=[logger, Fail()])
    assert logger._file is None and rows(tmp_path / "h.csv")[0] == ["epoch", "loss"]


def manual_training(data, rates, batch_size=40):
    """Full-batch SGD epochs by hand, with each epoch's rate set beforehand."""
    x, t, _, _ = data
    model, optimizer = mlp(), gn.SGD(lr=rates[0])
    step = gn.TrainStep(model, gn.MSELoss(), optimizer)
    xd, td = step.prepare(x, t)
    for rate in rates:
        optimizer.lr = rate
        step(xd, td)
    return model


@pytest.mark.parametrize("min_lr, expected", [
    (0.0, [0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025, 0.025, 0.025]),
    (0.03, [0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.03, 0.03, 0.03]),
])
def test_reduce_lr_on_plateau_counts_patience_and_cooldown_as_keras_and_changes_the_update(data, min_lr, expected):
    """monitor never improves by min_delta=10 after epoch 0 (best = inf there): with patience=2 the
    rate halves at epochs 2, 5 and 8, the cooldown of 2 resetting the count in between; each epoch's
    logged rate is the rate it trained with (Keras logs it before reducing)."""
    reduce = gn.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=2, cooldown=2, min_delta=10.0, min_lr=min_lr)
    model = mlp()
    history = fit(model, data, epochs=9, batch_size=40, shuffle=False, callbacks=[reduce])
    assert history["learning_rate"] == pytest.approx(expected, rel=1e-15)
    assert np.array_equal(model.flat.values, manual_training(data, expected).flat.values)
    assert reduce.state_dict() == {"best": history["loss"][0], "wait": 0 if min_lr == 0 else 2,
                                   "cooldown_counter": 2 if min_lr == 0 else 0}


def test_rate_callbacks_reach_the_device_table_on_every_backend(backend, rng):
    """The rate a callback sets is the rate the fused update uses, on each backend (the CuPy backend's
    code on the stand-in too): the plateau's cut and the same rates from a scheduler give the same
    weights, and they differ from the weights of the constant rate."""
    x = rng.normal(size=(32, 4)).astype("float32")
    t = x[:, :2] * 0.5
    weights = []
    for callbacks in ([gn.ReduceLROnPlateau(monitor="loss", factor=0.25, patience=1, min_delta=1e3)],
                      [gn.LearningRateScheduler(lambda epoch, lr: [0.2, 0.2, 0.05][epoch])], []):
        model = gn.Sequential(gn.Dense(4, 2, seed=0))
        history = model.fit(x, t, loss=gn.MSELoss(), optimizer=gn.SGD(lr=0.2), epochs=3, batch_size=32,
                            shuffle=False, verbose=0, callbacks=callbacks)
        if callbacks:
            assert history["learning_rate"] == pytest.approx([0.2, 0.2, 0.05])
        weights.append(backend.to_numpy(model.flat.values))
    assert np.array_equal(weights[0], weights[1])
    assert not np.array_equal(weights[0], weights[2])


def test_learning_rate_scheduler_sets_each_epochs_rate_as_keras(data):
    schedule_calls = []

    def halve_after_one(epoch, lr):
        schedule_calls.append((epoch, lr))
        return lr if epoch < 2 else lr / 2

    model = mlp()
    history = fit(model, data, epochs=4, batch_size=40, shuffle=False,
                  callbacks=[gn.LearningRateScheduler(halve_after_one)])
    assert schedule_calls == [(0, 0.1), (1, 0.1), (2, 0.1), (3, 0.05)]
    assert history["learning_rate"] == [0.1, 0.1, 0.05, 0.025]
    assert np.array_equal(model.flat.values, manual_training(data, [0.1, 0.1, 0.05, 0.025]).flat.values)
    one_argument = fit(mlp(), data, epochs=2, callbacks=[gn.LearningRateScheduler(lambda epoch: 0.01 * (epoch + 1))])
    assert one_argument["learning_rate"] == [0.01, 0.02]


def test_rate_callbacks_refuse_a_schedule_and_bad_rates(data):
    for callback in (gn.ReduceLROnPlateau(monitor="loss"), gn.LearningRateScheduler(lambda e, lr: lr)):
        cosine = gn.SGD(lr=gn.schedules.CosineDecay(0.1, total_steps=100))
        with pytest.raises(TypeError, match="learning rate is a schedule"):
            fit(mlp(), data, optimizer=cosine, callbacks=[callback])
    with pytest.raises(ValueError, match="LearningRateScheduler: schedule"):
        fit(mlp(), data, callbacks=[gn.LearningRateScheduler(lambda e, lr: -1.0)])
    with pytest.raises(ValueError, match="factor must lie in"):
        gn.ReduceLROnPlateau(factor=1.0)
    with pytest.raises(TypeError, match="schedule must be callable"):
        gn.LearningRateScheduler(0.1)


def test_terminate_on_nan_stops_after_the_bad_batch_without_raising(data):
    terminate = gn.TerminateOnNaN()
    model = mlp()
    model.flat.values[0] = np.nan  # the first batch's loss is NaN
    history = fit(model, data, epochs=5, callbacks=[terminate])
    assert terminate.stopped_batch == 0 and len(history["loss"]) == 1 and math.isnan(history["loss"][0])
    model = mlp()
    model.flat.values[0] = np.nan
    with pytest.raises(gn.TrainingDiverged):  # without it, divergence is still an error
        fit(model, data, epochs=5)


def test_fit_refuses_callbacks_that_are_not_a_list_of_instances(data):
    for bad, kind, message in ((gn.TerminateOnNaN(), TypeError, "single callback"),
                               ([gn.TerminateOnNaN], TypeError, "the class TerminateOnNaN itself"),
                               ([lambda epoch, logs: None], TypeError, "callback="),
                               (3, TypeError, "list of gn.Callback")):
        with pytest.raises(kind, match=message):
            fit(mlp(), data, callbacks=bad)
    same = gn.TerminateOnNaN()
    with pytest.raises(ValueError, match="same callback twice"):
        fit(mlp(), data, callbacks=[same, same])
