"""gpunn.sklearn's estimators against scikit-learn's own checks and in its pipelines (issue 23)."""

import pickle
import warnings

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn", reason="the [sklearn] extra: pip install '.[sklearn]'")
from sklearn.base import clone  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.exceptions import ConvergenceWarning, NotFittedError  # noqa: E402
from sklearn.model_selection import GridSearchCV, train_test_split  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import check_estimator  # noqa: E402

from gpunn.sklearn import MLPClassifier, MLPRegressor  # noqa: E402


@pytest.fixture(autouse=True)
def quiet_convergence():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        yield


@pytest.mark.parametrize("estimator", [MLPClassifier(), MLPRegressor()], ids=["classifier", "regressor"])
def test_scikit_learns_estimator_suite_passes_whole(estimator):
    """Every check, no expected failures (check_array_api_input skips itself unless SCIPY_ARRAY_API=1)."""
    results = check_estimator(estimator, on_fail=None)
    failed = [(result["check_name"], str(result["exception"])[:200]) for result in results
              if result["status"] == "failed"]
    assert not failed
    assert len(results) > 50


def test_digits_through_a_pipeline_and_a_grid_search_reach_095():
    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)
    pipeline = make_pipeline(StandardScaler(), MLPClassifier(max_iter=60, random_state=0, dtype="float32"))
    search = GridSearchCV(pipeline, {"mlpclassifier__hidden_layer_sizes": [(32,), (64,)],
                                     "mlpclassifier__alpha": [1e-4, 1e-2]}, cv=3)
    search.fit(X_train, y_train)
    assert search.score(X_test, y_test) >= 0.95
    assert set(search.best_params_) == {"mlpclassifier__hidden_layer_sizes", "mlpclassifier__alpha"}


def blobs(rng, rows=120):
    centers = np.array([[0, 4], [4, 0], [-4, -4]])
    labels = rng.integers(0, 3, size=rows)
    return centers[labels] + rng.normal(size=(rows, 2)), np.array(["cat", "dog", "eel"])[labels]


def test_the_fitted_attributes_and_string_labels(rng):
    X, y = blobs(rng)
    model = MLPClassifier(hidden_layer_sizes=(16,), max_iter=60, learning_rate_init=0.02, random_state=1).fit(X, y)
    assert list(model.classes_) == ["cat", "dog", "eel"] and model.n_features_in_ == 2
    assert model.n_iter_ == len(model.loss_curve_) <= 60 and model.loss_curve_[-1] < model.loss_curve_[0]
    probabilities = model.predict_proba(X)
    assert probabilities.shape == (120, 3) and np.allclose(probabilities.sum(axis=1), 1)
    assert model.score(X, y) > 0.9 and set(model.predict(X)) <= {"cat", "dog", "eel"}


def test_clone_pickle_and_partial_fit_after_unpickling(rng):
    X, y = blobs(rng)
    model = MLPClassifier(hidden_layer_sizes=(8,), max_iter=5, random_state=0, solver="sgd")
    assert clone(model).get_params() == model.get_params()
    model.fit(X, y)
    again = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(again.predict_proba(X), model.predict_proba(X))
    model.partial_fit(X, y)
    again.partial_fit(X, y)  # the optimizer's state travelled with it: the same next epoch
    np.testing.assert_allclose(again.predict_proba(X), model.predict_proba(X), rtol=1e-12)
    assert again.n_iter_ == 6


def test_partial_fit_needs_the_classes_first_and_refuses_new_labels(rng):
    X, y = blobs(rng)
    model = MLPClassifier(hidden_layer_sizes=(8,), random_state=0)
    with pytest.raises(ValueError, match="classes must be passed on the first call"):
        model.partial_fit(X, y)
    for epoch in range(3):
        model.partial_fit(X, y, classes=["cat", "dog", "eel"])
    assert model.n_iter_ == 3 and model.loss_curve_[2] < model.loss_curve_[0]
    with pytest.raises(ValueError, match=r"labels \['fox'\] that are not in classes"):
        model.partial_fit(X[:2], ["cat", "fox"])


def test_alpha_is_an_l2_penalty_on_the_weights_only(rng):
    X, y = blobs(rng)
    norms = {}
    for alpha in (0.0, 10.0):
        model = MLPClassifier(hidden_layer_sizes=(16,), alpha=alpha, max_iter=100, learning_rate_init=0.01,
                              tol=0.0, random_state=0).fit(X, y)
        weights = [layer.W for layer in model.model_ if hasattr(layer, "W")]
        norms[alpha] = sum(float(np.sum(w ** 2)) for w in weights)
    assert norms[10.0] < 0.75 * norms[0.0]


def test_early_stopping_watches_a_held_out_part_and_restores_its_best(rng):
    X = rng.normal(size=(200, 4))
    y = rng.integers(0, 2, size=200)  # noise: the validation loss stops improving soon
    model = MLPClassifier(hidden_layer_sizes=(32,), early_stopping=True, n_iter_no_change=3, max_iter=200,
                          learning_rate_init=0.01, random_state=0).fit(X, y)
    assert model.n_iter_ < 200 and len(model.validation_scores_) == model.n_iter_
    assert model.best_loss_ is None  # as sklearn: best_loss_ only without early_stopping


def test_regression_with_one_and_several_targets(rng):
    X = rng.normal(size=(150, 3))
    y = X @ np.array([1.0, -2.0, 0.5])
    model = MLPRegressor(hidden_layer_sizes=(32,), max_iter=150, learning_rate_init=0.01, random_state=0).fit(X, y)
    assert model.predict(X).shape == (150,) and model.predict(X).dtype == np.float64 and model.score(X, y) > 0.9
    Y = np.stack([y, -y], axis=1)
    both = MLPRegressor(hidden_layer_sizes=(32,), max_iter=150, learning_rate_init=0.01, random_state=0).fit(X, Y)
    assert both.predict(X).shape == (150, 2) and both.n_outputs_ == 2


@pytest.mark.parametrize("parameters,message", [
    ({"activation": "softsign"}, "activation must be one of"), ({"solver": "lbfgs"}, "solver must be one of"),
    ({"hidden_layer_sizes": (10, 0)}, "hidden_layer_sizes must hold positive ints"),
    ({"batch_size": 0}, "batch_size must be 'auto' or a positive int"),
    ({"validation_fraction": 1.0}, r"validation_fraction must lie in \(0, 1\)"),
])
def test_bad_parameters_are_refused_at_fit_as_sklearn_does(rng, parameters, message):
    X, y = blobs(rng)
    model = MLPClassifier(**parameters)  # __init__ only stores, as sklearn's check requires
    with pytest.raises(ValueError, match=message):
        model.fit(X, y)


def test_predict_before_fit_and_a_single_class():
    with pytest.raises(NotFittedError):
        MLPRegressor().predict(np.ones((2, 3)))
    with pytest.raises(ValueError, match="y has 1 class"):
        MLPClassifier().fit(np.ones((4, 2)), [1, 1, 1, 1])
