"""fit, evaluate and predict_proba as a Keras or PyTorch user expects them: early stopping's
patience and state, monitors checked before training, metrics that fit the targets, batch
sizes, and probabilities of huge logits."""

import warnings

import numpy as np
import pytest

import gpunn as gn


def mlp(seed=0, widths=(6, 12, 3)):
    with gn.use_backend("numpy"):
        return gn.Sequential(gn.Dense(widths[0], widths[1], dtype="float64", seed=seed), gn.Tanh(),
                             gn.Dense(widths[1], widths[2], dtype="float64", seed=seed + 1))


@pytest.fixture
def data(rng):
    x = rng.normal(size=(60, 6))
    noise = rng.integers(0, 3, size=30)  # validation labels unrelated to x: it stops improving soon
    return x, (x[:, 0] > 0).astype(int), rng.normal(size=(30, 6)), noise


def fit(model, data, **options):
    x, labels, xv, tv = data
    options = {"optimizer": gn.Adam(lr=0.05), "epochs": 200, "batch_size": 16, "seed": 2, "validation_data": (xv, tv),
               **options}
    return model.fit(x, labels, loss=gn.SoftmaxCrossEntropyLoss(), verbose=0, **options)


@pytest.mark.parametrize("patience", [0, 1, 2, 3])
def test_patience_counts_epochs_without_improvement_as_keras_does(data, patience):
    stopper = gn.EarlyStopping(patience=patience)
    history = fit(mlp(), data, early_stopping=stopper)
    assert stopper.stopped_epoch == len(history["loss"]) - 1 < 199
    assert stopper.best_epoch == int(np.argmin(history["val_loss"]))
    assert stopper.stopped_epoch - stopper.best_epoch == max(patience, 1)


@pytest.mark.parametrize("monitor,options,fix", [
    ("val_loss", {"validation_data": None}, "pass validation_data"),
    ("val_accuracy", {}, "add 'accuracy' to metrics"),
    ("val_los", {}, "monitor one of these")])
def test_a_monitor_the_history_will_not_hold_is_refused_before_training(data, monitor, options, fix):
    model = mlp()
    before = model.flat.values.copy()
    with pytest.raises(ValueError, match=f"monitor '{monitor}' is not in the history.*{fix}"):
        fit(model, data, early_stopping=gn.EarlyStopping(monitor), **options)
    np.testing.assert_array_equal(model.flat.values, before)


def test_an_early_stopping_reused_for_a_new_fit_starts_afresh(data):
    stopper = gn.EarlyStopping(patience=5)
    first = mlp(seed=0)
    fit(first, data, early_stopping=stopper)
    second = mlp(seed=5)  # measured against its own epochs, not the first model's best
    history = fit(second, data, optimizer=gn.SGD(lr=1e-3), epochs=3, early_stopping=stopper)
    assert len(history["loss"]) == 3 and stopper.stopped_epoch is None
    assert stopper.best == min(history["val_loss"])
    assert not np.array_equal(second.flat.values, first.flat.values)  # not the first model's best weights


def test_a_resumed_fit_of_the_same_model_keeps_the_count(data):
    stopper = gn.EarlyStopping(patience=3, min_delta=10.0)  # only the first epoch counts as an improvement
    model = mlp()
    fit(model, data, epochs=1, early_stopping=stopper)
    best = stopper.best
    history = fit(model, data, epochs=10, initial_epoch=1, early_stopping=stopper)
    assert stopper.best == best and stopper.best_epoch == 0 and stopper.stopped_epoch == 3
    assert len(history["loss"]) == 3


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, True])
def test_evaluate_refuses_a_batch_size_that_is_not_a_positive_int(data, batch_size):
    x, labels, _, _ = data
    with pytest.raises(ValueError, match="evaluate: batch_size must be a positive int or None"):
        mlp().evaluate(x, labels, gn.SoftmaxCrossEntropyLoss(), batch_size=batch_size)


def test_evaluate_in_batches_and_at_once_agree(data):
    x, labels, _, _ = data
    model, loss = mlp(), gn.SoftmaxCrossEntropyLoss()
    whole = model.evaluate(x, labels, loss, metrics=("accuracy",), batch_size=None)
    batched = model.evaluate(x, labels, loss, metrics=("accuracy",), batch_size=7)
    assert batched == pytest.approx(whole, rel=1e-12)


@pytest.mark.parametrize("metric", ["mse", "mae"])
def test_mse_of_class_labels_is_a_clear_error(data, metric):
    x, labels, _, _ = data
    with pytest.raises(ValueError, match=f"metric '{metric}' compares each of the 3 outputs.*class labels"):
        mlp().evaluate(x, np.eye(3)[labels], gn.SoftmaxCrossEntropyLoss(), metrics=(metric,))  # taken as labels
    with pytest.raises(ValueError, match=f"metric '{metric}' compares"):
        mlp().evaluate(x, labels, gn.SoftmaxCrossEntropyLoss(), metrics=(metric,))
    with pytest.raises(ValueError, match=f"fit: metric '{metric}'"):
        fit(mlp(), data, epochs=1, metrics=(metric,))


def test_validation_data_errors_name_the_validation_data(data):
    x, labels, xv, tv = data
    with pytest.raises(ValueError, match="fit: validation_data: X has 4 features"):
        fit(mlp(), data, validation_data=(xv[:, :4], tv))
    with pytest.raises(ValueError, match="fit: validation_data: X has 30 rows but T has 10"):
        fit(mlp(), data, validation_data=(xv, tv[:10]))


def test_predict_proba_of_huge_logits_is_exact_and_quiet():
    with gn.use_backend("numpy"):
        model = gn.Sequential(gn.Dense(1, 1, dtype="float64"))
    model.layers[0].W[...], model.layers[0].b[...] = 1.0, 0.0
    x = np.array([[1000.0], [-1000.0], [0.0], [-3.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p = model.predict_proba(x)
    expected = 1 / (1 + np.exp(3.0))
    np.testing.assert_allclose(p, [[0, 1], [1, 0], [0.5, 0.5], [1 - expected, expected]], rtol=1e-15, atol=0)


def test_early_stopping_carries_over_a_resume_from_a_checkpoint(data, tmp_path):
    """10 epochs straight, or 5, save, load, and on from epoch 5 with the same stopper: the same
    stop and the same restored best weights."""
    x, labels, xv, tv = data
    options = {"loss": gn.SoftmaxCrossEntropyLoss(), "batch_size": 16, "seed": 2, "verbose": 0,
               "validation_data": (xv, tv)}
    straight, stopper = mlp(), gn.EarlyStopping(patience=2)
    history = straight.fit(x, labels, optimizer=gn.Adam(lr=0.05), epochs=60, early_stopping=stopper, **options)
    cut = min(5, len(history["loss"]) - 1)
    model, optimizer, resumed_stopper = mlp(), gn.Adam(lr=0.05), gn.EarlyStopping(patience=2)
    model.fit(x, labels, optimizer=optimizer, epochs=cut, early_stopping=resumed_stopper, **options)
    model.save(tmp_path / "cut.npz", optimizer=optimizer)
    model = gn.load(tmp_path / "cut.npz")
    rest = model.fit(x, labels, optimizer=gn.load_optimizer(tmp_path / "cut.npz", model), epochs=60,
                     initial_epoch=cut, early_stopping=resumed_stopper, **options)
    assert cut + len(rest["loss"]) == len(history["loss"]) and resumed_stopper.best_epoch == stopper.best_epoch
    np.testing.assert_array_equal(model.flat.values, straight.flat.values)


def test_numpy_integers_count_as_ints(data):
    """epochs=np.int64(3) is what a NumPy user passes (Keras takes it); same run as with ints."""
    x, labels, xv, tv = data
    runs = []
    for kind in (int, np.int64):
        model = mlp()
        history = fit(model, data, epochs=kind(3), batch_size=kind(16), seed=kind(2),
                      early_stopping=gn.EarlyStopping(patience=kind(2)))
        runs.append((history, model.evaluate(xv, tv, gn.SoftmaxCrossEntropyLoss(), batch_size=kind(7))))
    assert runs[0] == runs[1]


def test_early_stopping_state_is_public_and_round_trips(data):
    """``best``, ``best_epoch``, ``wait`` and ``stopped_epoch`` are public, and ``state_dict()`` /
    ``load_state_dict()`` carry them (plain numbers: JSON), so a resumed count goes on where it was."""
    import json

    stopper = gn.EarlyStopping(patience=50)
    fit(mlp(), data, epochs=6, early_stopping=stopper)
    state = stopper.state_dict()
    assert state == json.loads(json.dumps(state)) and state["wait"] == stopper.wait
    assert state["best_epoch"] == stopper.best_epoch and state["best"] == stopper.best
    again = gn.EarlyStopping(patience=50)
    again.load_state_dict(state)
    assert again.state_dict() == state
    for bad in ({"best": 1.0}, {**state, "wait": -1}, {**state, "best": "low"}, [1, 2, 3]):
        with pytest.raises((ValueError, TypeError), match="EarlyStopping"):
            gn.EarlyStopping().load_state_dict(bad)


@pytest.mark.parametrize("metrics", [("accuracy", "accuracy"), ["mse", "accuracy", "mse"]])
def test_a_metric_listed_twice_is_an_error(rng, metrics):
    """("accuracy", "accuracy") was summed twice into one key: an accuracy of 1.45."""
    model = mlp()
    X, labels = rng.normal(size=(12, 6)), rng.integers(0, 3, size=12)
    with pytest.raises(ValueError, match="more than once"):
        model.fit(X, labels, loss=gn.SoftmaxCrossEntropyLoss(), optimizer=gn.SGD(), metrics=metrics, verbose=0)
    with pytest.raises(ValueError, match="more than once"):
        model.evaluate(X, labels, gn.SoftmaxCrossEntropyLoss(), metrics=metrics)
