"""The API never answers bad input silently wrong: each case raises a named exception that says
what is wrong (issue 14). The catalogue of cases and behaviours is tests/README.md."""

import numpy as np
import pytest

import gpunn as gn


def make_model(seed=0, dtype="float64"):
    return gn.Sequential(gn.Dense(3, 4, seed=seed, dtype=dtype), gn.Tanh(), gn.Dense(4, 2, seed=seed + 1, dtype=dtype))


def gradients(model):
    return [np.array(model.backend.to_numpy(p.grad)) for p in model.parameters()]


def test_predict_between_forward_and_backward_leaves_backward_intact(backend, rng):
    x, labels, other = rng.normal(size=(5, 3)), rng.integers(0, 2, size=5), rng.normal(size=(7, 3))
    results = []
    for interleave in (False, True):
        model, loss = make_model(), gn.SoftmaxCrossEntropyLoss()
        loss(model.forward(x), labels)
        if interleave:
            model.predict(other)
            model.predict(other, batch_size=3)
        model.zero_grad()
        dx = model.backward(loss.backward())
        results.append((gradients(model), backend.to_numpy(dx).copy()))
    for first, second in zip(results[0][0] + [results[0][1]], results[1][0] + [results[1][1]]):
        np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize("batch_size", [0, -1, 1.5, True, "2"])
def test_predict_batch_size_must_be_a_positive_int(backend, batch_size):
    with pytest.raises(ValueError, match="batch_size must be a positive int or None"):
        make_model().predict(np.ones((4, 3)), batch_size=batch_size)


def test_predict_in_batches_equals_predict_at_once(backend, rng):
    x = rng.normal(size=(7, 3))
    model = make_model()
    np.testing.assert_allclose(model.predict(x, batch_size=3), model.predict(x), rtol=1e-12)


@pytest.mark.parametrize("argument", ["weight", "bias"])
@pytest.mark.filterwarnings("ignore:overflow encountered")
@pytest.mark.parametrize("bad", [np.nan, np.inf, 1e39])  # 1e39 overflows float32 to inf
def test_dense_refuses_non_finite_weights(backend, argument, bad):
    value = np.ones((2, 3)) if argument == "weight" else np.ones(3)
    value.flat[0] = bad
    with pytest.raises(ValueError, match=f"Dense: {argument} contains NaN or Inf"):
        gn.Dense(2, 3, **{argument: value})


@pytest.mark.parametrize("seed", [-1, 1.5, "a", (1, -2)])
def test_seeds_are_checked(backend, seed):
    with pytest.raises(ValueError, match="Dense: seed must be None, an int >= 0"):
        gn.Dense(2, 3, seed=seed)
    with pytest.raises(ValueError, match="seed must be None, an int >= 0"):
        make_model().fit(np.ones((2, 3)), [0, 1], loss=gn.SoftmaxCrossEntropyLoss(), optimizer=gn.SGD(lr=0.1),
                         seed=seed, verbose=0)


def test_complex_data_is_refused_not_truncated(backend):
    model = make_model()
    with pytest.raises(TypeError, match="complex values cannot become float64"):
        model.predict(np.ones((2, 3)) * (1 + 1j))
    with pytest.raises(TypeError, match="complex values"):
        model.fit(np.ones((2, 3)), np.ones((2, 2)) * 1j, loss=gn.MSELoss(), optimizer=gn.SGD(lr=0.1), verbose=0)
    with pytest.raises(TypeError, match="Dense: weight cannot be read .* complex"):
        gn.Dense(2, 1, weight=np.ones((2, 1)) * 1j)
    with pytest.raises(TypeError, match="complex"):
        gn.MSELoss()(model.forward(np.ones((2, 3))), [[1j, 0], [0, 0]])


@pytest.mark.parametrize("what", ["loss", "optimizer"])
def test_a_class_instead_of_an_instance(backend, what):
    arguments = {"loss": gn.MSELoss(), "optimizer": gn.SGD(lr=0.1)}
    arguments[what] = {"loss": gn.MSELoss, "optimizer": gn.SGD}[what]
    with pytest.raises(TypeError, match=f"{what} must be an instance .*add the parentheses"):
        make_model().fit(np.ones((2, 3)), np.ones((2, 2)), verbose=0, **arguments)


@pytest.mark.parametrize("targets", [5, None, 2.0, np.float64(1)])
def test_targets_that_are_not_one_per_row(backend, targets):
    with pytest.raises(ValueError, match="T must hold one target per row of X"):
        make_model().fit(np.ones((2, 3)), targets, loss=gn.MSELoss(), optimizer=gn.SGD(lr=0.1), verbose=0)


def test_zero_rows(backend):
    model = make_model()
    with pytest.raises(ValueError, match="X has no rows"):
        model.fit(np.ones((0, 3)), np.ones((0, 2)), loss=gn.MSELoss(), optimizer=gn.SGD(lr=0.1), verbose=0)
    empty = model.forward(np.ones((0, 3)))
    for loss in (gn.MSELoss(), gn.BCELoss(), gn.BCEWithLogitsLoss(), gn.SoftmaxCrossEntropyLoss()):
        with pytest.raises(ValueError, match="at least one row"):
            loss(empty, np.ones((0, 2)))
    assert model.predict(np.ones((0, 3))).shape == (0, 2)


def test_mse_on_integer_outputs_is_refused(backend):
    outputs = backend.asarray(np.array([[1, 2]]), "int64")
    with pytest.raises(TypeError, match="outputs must be floating point, got dtype int64"):
        gn.MSELoss()(outputs, [[1.7, 2.2]])


@pytest.mark.parametrize("loss", [gn.BCELoss, gn.BCEWithLogitsLoss])
@pytest.mark.parametrize("bad", [-0.5, 1.5, 2.0])
def test_binary_cross_entropy_targets_must_lie_in_0_1(backend, loss, bad):
    model = gn.Sequential(gn.Dense(3, 1, seed=0), gn.Sigmoid())
    targets = np.array([[0.0], [bad]])
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 1\]"):
        loss()(model.forward(np.ones((2, 3))), targets)
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 1\]"):
        model.fit(np.ones((2, 3)), targets, loss=loss(), optimizer=gn.SGD(lr=0.1), verbose=0)


@pytest.mark.parametrize("eps", [0, -1e-7, 0.6, 0.5, float("nan"), float("inf")])
def test_bce_eps_range(eps):
    with pytest.raises(ValueError, match=r"BCELoss: eps must lie in \(0, 0.1\] \(a finite number\)"):
        gn.BCELoss(eps=eps)


@pytest.mark.parametrize("eps", [True, "1e-7", [1e-7]])
def test_bce_eps_of_another_type(eps):
    with pytest.raises(TypeError, match="BCELoss: eps must be a number"):
        gn.BCELoss(eps=eps)


def test_bce_eps_too_small_for_the_dtype(backend):
    model = gn.Sequential(gn.Dense(3, 1, seed=0), gn.Sigmoid())
    with pytest.raises(ValueError, match="vanishes next to 1 in float32"):
        gn.BCELoss(eps=1e-12)(model.forward(np.ones((2, 3))), [[0.0], [1.0]])
    assert np.isfinite(gn.BCELoss(eps=1e-3)(model.forward(np.ones((2, 3))), [[0.0], [1.0]]))


def test_an_activation_only_model_predicts_in_batches(backend):
    model = gn.Sequential(gn.Tanh())
    np.testing.assert_allclose(model.predict(np.ones((5, 3)), batch_size=2), np.tanh(np.ones((5, 3))), rtol=1e-6)


@pytest.mark.parametrize("argument,value,message", [
    ("loss", "mse", "loss must be a gpunn loss"), ("optimizer", "sgd", "optimizer must be a gpunn optimizer"),
    ("callback", 5, "callback must be callable"), ("verbose", -1, "verbose must be 0, 1 or 2")])
def test_fit_arguments_of_the_wrong_kind(backend, argument, value, message):
    arguments = {"loss": gn.MSELoss(), "optimizer": gn.SGD(lr=0.1), "verbose": 0, argument: value}
    with pytest.raises((TypeError, ValueError), match=message):
        make_model().fit(np.ones((2, 3)), np.ones((2, 2)), **arguments)


def test_text_targets_are_not_one_per_row(backend):
    with pytest.raises(ValueError, match="T must hold one target per row of X, got str"):
        make_model().fit(np.ones((3, 3)), "abc", loss=gn.MSELoss(), optimizer=gn.SGD(lr=0.1), verbose=0)


def test_softmax_cross_entropy_over_one_output_is_refused(rng):
    """Its softmax is always 1: the loss was 0 and nothing trained, without a word. torch accepts it;
    gpunn refuses (a documented stricter-than-PyTorch refusal)."""
    model = gn.Sequential(gn.Dense(3, 1, seed=0))
    X, labels = rng.normal(size=(6, 3)), np.zeros(6, dtype=int)
    for call in (lambda: gn.SoftmaxCrossEntropyLoss()(model.forward(X), labels),
                 lambda: model.fit(X, labels, loss=gn.SoftmaxCrossEntropyLoss(), optimizer=gn.SGD(), verbose=0)):
        with pytest.raises(ValueError, match="one column, whose softmax is always 1.*BCEWithLogitsLoss"):
            call()


@pytest.mark.parametrize("bad,message", [(np.inf, "NaN or Inf"), (-np.inf, "NaN or Inf"), (np.nan, "NaN or Inf"),
                                         (1e30, r"got 0\.\.1e\+30"), (-1e19, r"got -1e\+19\.\.")])
def test_infinite_or_huge_float_labels_are_named_as_they_are(rng, bad, message):
    """They were cast to int64 first and reported as -9223372036854775808."""
    model = gn.Sequential(gn.Dense(3, 3, seed=0))
    labels = np.array([0.0, 1.0, 2.0, bad])
    for call in (lambda: gn.SoftmaxCrossEntropyLoss()(model.forward(rng.normal(size=(4, 3))), labels),
                 lambda: model.fit(rng.normal(size=(4, 3)), labels, loss=gn.SoftmaxCrossEntropyLoss(),
                                   optimizer=gn.SGD(), verbose=0)):
        with pytest.raises(ValueError, match=message) as caught:
            call()
        assert "9223372036854775808" not in str(caught.value)
