"""sample_weight and class_weight with Keras 3's semantics: a batch's loss is Σ wᵢ·lᵢ / rows (lᵢ: row i's
loss, the mean over its outputs for MSE and BCE), in every loss, on every backend (the CuPy backend's
code on the CPU stand-in too), with gradients checked against float64 finite differences and a closed form."""

import numpy as np
import pytest
from support.replaying_backend import ReplayingBackend

import gpunn as gn
from gpunn.train.weights import balanced_class_weight


def row_losses(name, y, t):
    """Each row's loss in float64, written out from the definitions."""
    if name == "MSELoss":
        return ((y - t) ** 2).mean(axis=1)
    if name == "BCELoss":
        p = np.clip(y, 1e-12, 1 - 1e-12)
        return -(t * np.log(p) + (1 - t) * np.log(1 - p)).mean(axis=1)
    if name == "BCEWithLogitsLoss":
        return (np.maximum(y, 0) - y * t + np.log1p(np.exp(-np.abs(y)))).mean(axis=1)
    shifted = y - y.max(axis=1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return -log_softmax[np.arange(len(t)), t]


def case(name, rng, rows=7, columns=3):
    y = rng.normal(size=(rows, columns))
    if name == "BCELoss":
        y = 1 / (1 + np.exp(-y))
    if name == "SoftmaxCrossEntropyLoss":
        t = rng.integers(0, columns, size=rows)
    elif name == "MSELoss":
        t = rng.normal(size=(rows, columns))
    else:
        t = rng.integers(0, 2, size=(rows, columns)).astype(float)
    return y, t, rng.uniform(0, 3, size=rows)


LOSS_NAMES = ["MSELoss", "BCELoss", "BCEWithLogitsLoss", "SoftmaxCrossEntropyLoss"]


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_weighted_loss_and_gradient_match_the_closed_form_and_finite_differences(name, rng):
    y, t, w = case(name, rng)
    loss = getattr(gn, name)()
    with gn.use_backend("numpy"):
        value = loss(y, t, sample_weight=w)
        grad = loss.backward()
    assert value == pytest.approx((w * row_losses(name, y, t)).sum() / len(y), rel=1e-12)
    numeric, step = np.zeros_like(y), 1e-6
    for index in np.ndindex(y.shape):
        up, down = y.copy(), y.copy()
        up[index] += step
        down[index] -= step
        numeric[index] = ((w * row_losses(name, up, t)).sum() - (w * row_losses(name, down, t)).sum()) / (
            2 * step * len(y))
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-9)
    with gn.use_backend("numpy"):  # unit weights: the unweighted loss
        assert loss(y, t, sample_weight=np.ones(len(y))) == pytest.approx(loss(y, t), rel=1e-14)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_weighted_losses_agree_on_every_backend(backend, name, rng):
    y, t, w = case(name, rng, rows=33, columns=4)
    loss = getattr(gn, name)()
    with gn.use_backend("numpy"):
        expected_value, expected_grad = loss(y, t, sample_weight=w), loss.backward()
    for dtype, tolerance in (("float64", 1e-12), ("float32", 2e-5)):
        device_y = backend.asarray(y, dtype)
        value = loss(device_y, t, sample_weight=w)
        grad = backend.to_numpy(loss.backward())
        assert grad.dtype == dtype
        assert value == pytest.approx(expected_value, rel=tolerance)
        np.testing.assert_allclose(grad, expected_grad, rtol=tolerance * 10, atol=tolerance * 1e-2)


def test_a_float16_weighted_gradient_keeps_the_loss_scale(rng):
    y, t, w = case("SoftmaxCrossEntropyLoss", rng, rows=16, columns=4)
    loss = gn.SoftmaxCrossEntropyLoss()
    with gn.use_backend("numpy") as backend:
        loss(y.astype("float16"), t, sample_weight=w)
        scaled = loss.backward(backend.asarray([1024.0], "float64"))
        loss(y, t, sample_weight=w)
        reference = loss.backward() * 1024
    assert scaled.dtype == np.float16
    np.testing.assert_allclose(scaled.astype(float), reference, rtol=2e-2, atol=1e-2)


def linear_step_closed_form(x, t, w, lr, W, b):
    """One SGD step of y = xW + b on MSE weighted as Keras: dL/dy = 2·wᵢ·(y − t) / (rows·outputs)."""
    dy = 2 * w[:, None] * (x @ W + b - t) / t.size
    return W - lr * x.T @ dy, b - lr * dy.sum(axis=0)


def test_a_weighted_fit_step_is_the_closed_form(rng):
    x, t, w = rng.normal(size=(12, 4)), rng.normal(size=(12, 2)), rng.uniform(0, 2, size=12)
    with gn.use_backend("numpy"):
        dense = gn.Dense(4, 2, dtype="float64", seed=0)
        model = gn.Sequential(dense)
        W, b = dense.W.copy(), dense.b.copy()
        history = model.fit(x, t, loss=gn.MSELoss(), optimizer=gn.SGD(lr=0.1), epochs=1, batch_size=12,
                            shuffle=False, verbose=0, sample_weight=w)
    expected_W, expected_b = linear_step_closed_form(x, t, w, 0.1, W, b)
    np.testing.assert_allclose(dense.W, expected_W, rtol=1e-13)
    np.testing.assert_allclose(dense.b, expected_b, rtol=1e-13)
    assert history["loss"][0] == pytest.approx((w * ((x @ W + b - t) ** 2).mean(axis=1)).sum() / 12, rel=1e-13)


def mlp(backend="numpy"):
    with gn.use_backend(backend):
        return gn.Sequential(gn.Dense(5, 8, dtype="float64", seed=0), gn.Tanh(), gn.Dense(8, 3, dtype="float64", seed=1))


def test_class_weight_is_the_sample_weight_of_each_rows_class(rng):
    x, labels = rng.normal(size=(50, 5)), rng.integers(0, 3, size=50)
    weights = {0: 0.5, 2: 4.0}  # class 1 is not named: it weighs 1, as in Keras
    options = {"loss": gn.SoftmaxCrossEntropyLoss(), "epochs": 3, "batch_size": 16, "seed": 4, "verbose": 0}
    by_class, by_row = mlp(), mlp()
    first = by_class.fit(x, labels, optimizer=gn.Adam(lr=0.01), class_weight=weights, **options)
    second = by_row.fit(x, labels, optimizer=gn.Adam(lr=0.01),
                        sample_weight=np.array([weights.get(int(c), 1.0) for c in labels]), **options)
    assert first == second
    assert np.array_equal(by_class.flat.values, by_row.flat.values)
    one_hot = mlp()  # one-hot targets: the class is the argmax
    one_hot.fit(x, np.eye(3)[labels], optimizer=gn.Adam(lr=0.01), class_weight=weights, **options)
    assert np.array_equal(one_hot.flat.values, by_class.flat.values)
    unweighted = mlp()
    unweighted.fit(x, labels, optimizer=gn.Adam(lr=0.01), **options)
    assert not np.allclose(unweighted.flat.values, by_class.flat.values)


def test_class_weight_of_one_binary_output_rounds_the_target(rng):
    x, t = rng.normal(size=(30, 5)), rng.integers(0, 2, size=30).astype(float)
    options = {"loss": gn.BCEWithLogitsLoss(), "epochs": 2, "batch_size": 10, "seed": 1, "verbose": 0}
    models = [gn.Sequential(gn.Dense(5, 1, dtype="float64", seed=0)) for _ in range(2)]
    models[0].fit(x, t, optimizer=gn.SGD(lr=0.1), class_weight={1: 3.0}, **options)
    models[1].fit(x, t, optimizer=gn.SGD(lr=0.1), sample_weight=np.where(t == 1, 3.0, 1.0), **options)
    assert np.array_equal(models[0].flat.values, models[1].flat.values)


def test_weights_reach_the_recorded_graph(rng):
    x, labels, w = rng.normal(size=(48, 5)), rng.integers(0, 3, size=48), rng.uniform(0, 2, size=48)
    results = []
    for backend, graph in (("numpy", False), (ReplayingBackend(), True)):
        model = mlp(backend)
        model.fit(x, labels, loss=gn.SoftmaxCrossEntropyLoss(), optimizer=gn.SGD(lr=0.1, momentum=0.9), epochs=3,
                  batch_size=16, seed=2, verbose=0, graph=graph, sample_weight=w)
        results.append(np.asarray(model.flat.values))
    np.testing.assert_allclose(results[1], results[0], rtol=1e-12, atol=1e-14)


def test_weighted_validation_and_evaluate(rng):
    x, labels, w = rng.normal(size=(40, 5)), rng.integers(0, 3, size=40), rng.uniform(0, 2, size=40)
    model = mlp()
    history = model.fit(x, labels, loss=gn.SoftmaxCrossEntropyLoss(), optimizer=gn.SGD(lr=0.1), epochs=1,
                        batch_size=8, verbose=0, validation_data=(x, labels, w))
    weighted = model.evaluate(x, labels, gn.SoftmaxCrossEntropyLoss(), sample_weight=w, batch_size=7)
    with gn.use_backend("numpy"):
        logits = model.predict(x)
    assert weighted["loss"] == pytest.approx((w * row_losses("Softmax", logits, labels)).sum() / 40, rel=1e-12)
    assert history["val_loss"][0] == pytest.approx(weighted["loss"], rel=1e-12)


def test_bad_weights_are_refused_before_training(rng):
    x, labels = rng.normal(size=(10, 5)), rng.integers(0, 3, size=10)
    model = mlp()
    before = model.flat.values.copy()
    cases = [({"sample_weight": np.ones(9)}, ValueError, r"one weight per row, shape \(10,\)"),
             ({"sample_weight": -np.ones(10)}, ValueError, "finite and >= 0"),
             ({"sample_weight": np.full(10, np.nan)}, ValueError, "finite and >= 0"),
             ({"sample_weight": 2.0}, TypeError, "an array of one weight per row"),
             ({"sample_weight": np.ones(10), "class_weight": {0: 1.0}}, ValueError, "not both"),
             ({"class_weight": [1.0, 2.0]}, TypeError, "class_weight must be a dict"),
             ({"class_weight": {"a": 1.0}}, ValueError, "class indices"),
             ({"class_weight": {0: -1.0}}, ValueError, r"class_weight\[0\] must be a finite number >= 0")]
    for options, kind, message in cases:
        with pytest.raises(kind, match=message):
            model.fit(x, labels, loss=gn.SoftmaxCrossEntropyLoss(), optimizer=gn.SGD(lr=0.1), verbose=0, **options)
    assert np.array_equal(model.flat.values, before)
    with pytest.raises(ValueError, match="validation_data: sample_weight must hold one weight per row"):
        model.fit(x, labels, loss=gn.SoftmaxCrossEntropyLoss(), optimizer=gn.SGD(lr=0.1), verbose=0,
                  validation_data=(x, labels, np.ones(3)))


def test_balanced_class_weight_is_sklearns_formula():
    labels = [0, 0, 0, 0, 0, 0, 1, 1, 2, 2, 2, 2]
    # n_rows / (n_classes · count): 12/(3·6), 12/(3·2), 12/(3·4)
    assert balanced_class_weight(labels) == {0: 12 / 18, 1: 12 / 6, 2: 12 / 12}
    sklearn = pytest.importorskip("sklearn.utils.class_weight")
    values = np.array(labels)
    assert list(balanced_class_weight(labels).values()) == pytest.approx(
        sklearn.compute_class_weight("balanced", classes=np.unique(values), y=values))


def test_a_loss_of_the_users_without_weights_still_trains(rng):
    """A Loss subclass written before weights (``_forward(backend, y, t)``) trains unweighted as before."""

    class HalfMSE(gn.MSELoss):
        def _forward(self, backend, y, t):
            return super()._forward(backend, y, t) / 2

        def _backward(self, loss_scale):
            return super()._backward(loss_scale) / 2

    x, t = rng.normal(size=(16, 5)), rng.normal(size=(16, 3))
    model = mlp()
    history = model.fit(x, t, loss=HalfMSE(), optimizer=gn.SGD(lr=0.1), epochs=1, batch_size=8, verbose=0)
    assert np.isfinite(history["loss"][0])
    with pytest.raises(TypeError, match=r"HalfMSE._forward\(backend, y, t\) takes no row weights"):
        mlp().fit(x, t, loss=HalfMSE(), optimizer=gn.SGD(lr=0.1), epochs=1, verbose=0, sample_weight=np.ones(16))
