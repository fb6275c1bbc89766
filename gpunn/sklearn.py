"""scikit-learn estimators over gpunn: ``MLPClassifier`` and ``MLPRegressor``, drop-in for
``sklearn.neural_network``'s where the parameters mean the same, so a gpunn MLP goes into a
``Pipeline``, ``GridSearchCV`` or ``cross_val_score``. Needs scikit-learn: ``pip install ".[sklearn]"``.

Where the two differ, on purpose:
- ``alpha`` is sklearn's L2 penalty on the weights (not the biases): with ``adam`` and ``sgd`` it is the
  optimizer's coupled weight decay ``alpha / batch_size`` (sklearn divides the penalty by each batch's
  rows), with ``adamw`` the decoupled weight decay ``alpha``;
- a binary classifier ends in two softmax outputs, not one logistic output (the probabilities agree in
  form: ``predict_proba`` has a column per class);
- ``loss_curve_`` holds the data loss of each epoch, without the penalty term;
- ``dtype`` (float64, as sklearn computes, by default), ``backend``, ``dropout`` and ``layer_norm`` are
  gpunn's own; ``model_`` is the trained ``gpunn.Sequential``.
"""

from __future__ import annotations

import warnings
from numbers import Integral

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets, unique_labels
from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data

import gpunn as gn

ACTIVATIONS = {"relu": gn.ReLU, "tanh": gn.Tanh, "logistic": gn.Sigmoid, "identity": gn.Identity, "gelu": gn.GELU,
               "silu": gn.SiLU}
SOLVERS = ("adam", "sgd", "adamw")


class _MLP(BaseEstimator):
    """What both estimators share: the parameters, the network, the optimizer and the training loop."""

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam", alpha=0.0001,
                 batch_size="auto", learning_rate_init=0.001, max_iter=200, shuffle=True, random_state=None,
                 tol=1e-4, verbose=False, momentum=0.9, nesterovs_momentum=True, early_stopping=False,
                 validation_fraction=0.1, beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10,
                 dropout=0.0, layer_norm=False, dtype="float64", backend="numpy"):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate_init = learning_rate_init
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.dropout = dropout
        self.layer_norm = layer_norm
        self.dtype = dtype
        self.backend = backend

    # --- checks of the parameters (at fit, as sklearn does: __init__ only stores) --------------
    def _hidden_sizes(self) -> list[int]:
        sizes = self.hidden_layer_sizes
        sizes = [sizes] if isinstance(sizes, Integral) else list(sizes)
        if any(isinstance(size, bool) or not isinstance(size, Integral) or size < 1 for size in sizes):
            raise ValueError(f"hidden_layer_sizes must hold positive ints, got {self.hidden_layer_sizes!r}")
        return [int(size) for size in sizes]

    def _check_parameters(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}")
        if self.solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {self.solver!r}")
        if self.batch_size != "auto" and (isinstance(self.batch_size, bool) or not isinstance(self.batch_size, Integral)
                                          or self.batch_size < 1):
            raise ValueError(f"batch_size must be 'auto' or a positive int, got {self.batch_size!r}")
        if not 0 < self.validation_fraction < 1:
            raise ValueError(f"validation_fraction must lie in (0, 1), got {self.validation_fraction!r}")
        for name in ("max_iter", "n_iter_no_change"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not self.alpha >= 0 or not self.tol >= 0:
            raise ValueError(f"alpha and tol must be >= 0, got alpha={self.alpha!r}, tol={self.tol!r}")
        self._hidden_sizes()

    def _rows_per_batch(self, rows: int) -> int:
        return min(200, rows) if self.batch_size == "auto" else min(self.batch_size, rows)

    # --- the network and its optimizer ------------------------------------------------------
    def _build(self, features: int, outputs: int, seeds) -> None:
        with gn.use_backend(self.backend):
            layers, width = [], features
            for index, size in enumerate(self._hidden_sizes()):
                layers.append(gn.Dense(width, size, dtype=self.dtype, seed=int(seeds.randint(2**31)),
                                       init="he" if self.activation == "relu" else "xavier"))
                layers += [gn.LayerNorm(size, dtype=self.dtype)] if self.layer_norm else []
                layers.append(ACTIVATIONS[self.activation]())
                layers += [gn.Dropout(self.dropout, seed=int(seeds.randint(2**31)))] if self.dropout else []
                width = size
            layers.append(gn.Dense(width, outputs, dtype=self.dtype, seed=int(seeds.randint(2**31))))
            self.model_ = gn.Sequential(*layers)

    def _make_optimizer(self, batch: int):
        common = {"lr": self.learning_rate_init, "decay_biases": False}
        if self.solver == "sgd":
            return gn.SGD(self.model_.parameters(), momentum=self.momentum,
                          nesterov=bool(self.nesterovs_momentum) and self.momentum > 0,
                          weight_decay=self.alpha / batch, **common)
        rule = gn.Adam if self.solver == "adam" else gn.AdamW
        decay = self.alpha / batch if self.solver == "adam" else self.alpha
        return rule(self.model_.parameters(), betas=(self.beta_1, self.beta_2), eps=self.epsilon,
                    weight_decay=decay, **common)

    # --- training ---------------------------------------------------------------------------
    def _train(self, X, targets, epochs: int, seeds, stopper=None, validation=None) -> dict:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", gn.TrainingWarning)  # a rising loss is the user's to judge
            return self.model_.fit(X, targets, loss=self._loss(), optimizer=self._optimizer, epochs=epochs,
                                   batch_size=self._rows_per_batch(X.shape[0]), shuffle=bool(self.shuffle),
                                   seed=int(seeds.randint(2**31)), verbose=2 if self.verbose else 0,
                                   validation_data=validation, early_stopping=stopper)

    def _fit(self, X, targets, stratify, validation_score):
        """A fresh network trained for up to ``max_iter`` epochs, stopped as sklearn stops: when the
        training loss (or, with ``early_stopping``, the validation score) has not improved by ``tol``
        for ``n_iter_no_change`` epochs."""
        self._check_parameters()
        seeds = check_random_state(self.random_state)
        validation = None
        if self.early_stopping:
            X, X_val, targets, y_val = train_test_split(X, targets, test_size=self.validation_fraction,
                                                        random_state=seeds.randint(2**31), stratify=stratify)
            validation = (X_val, y_val)
        self._build(X.shape[1], self._outputs(), seeds)
        self._optimizer = self._make_optimizer(self._rows_per_batch(X.shape[0]))
        monitor, min_delta = ("val_loss", validation_score(validation)) if validation else ("loss", self.tol)
        stopper = gn.EarlyStopping(monitor, patience=self.n_iter_no_change, min_delta=min_delta,
                                   restore_best=bool(self.early_stopping), mode="min")
        history = self._train(X, targets, self.max_iter, seeds, stopper, validation)
        self.loss_curve_ = list(history["loss"])
        self.n_iter_ = len(self.loss_curve_)
        self.best_loss_ = None if validation else min(self.loss_curve_)
        if validation:
            self.validation_scores_ = list(history["val_loss"])
        if stopper.stopped_epoch is None:
            warnings.warn(f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) reached and the optimization "
                          "hasn't converged yet.", ConvergenceWarning)
        self._seeds = seeds
        return self

    def _partial_fit(self, X, targets):
        """One more epoch over ``X``: on the network and optimizer of the last ``fit``/``partial_fit``."""
        if not hasattr(self, "model_"):
            self._check_parameters()
            self._seeds = check_random_state(self.random_state)
            self._build(X.shape[1], self._outputs(), self._seeds)
            self._optimizer, self.loss_curve_, self.n_iter_ = self._make_optimizer(self._rows_per_batch(X.shape[0])), [], 0
        history = self._train(X, targets, 1, self._seeds)
        self.loss_curve_.append(history["loss"][-1])
        self.n_iter_ += 1
        return self

    # --- pickling: the optimizer is bound to the model's buffers, so it travels as its state ---------
    def __getstate__(self):
        state = dict(super().__getstate__())  # a copy: object.__getstate__ hands out the live __dict__
        optimizer = state.pop("_optimizer", None)
        if optimizer is not None:
            state["_optimizer_state"] = optimizer.state_dict()
        return state

    def __setstate__(self, state):
        optimizer_state = state.pop("_optimizer_state", None)
        super().__setstate__(state)
        if optimizer_state is not None:
            self._optimizer = self._make_optimizer(1)
            self._optimizer.load_state_dict(optimizer_state)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        tags.input_tags.sparse = False
        return tags


class MLPClassifier(ClassifierMixin, _MLP):
    """A multilayer perceptron classifier trained by gpunn (softmax cross-entropy over the classes)."""

    def _outputs(self) -> int:
        return len(self.classes_)

    def _loss(self):
        return gn.SoftmaxCrossEntropyLoss()

    def _labels(self, y, classes=None):
        y = column_or_1d(y, warn=True)
        check_classification_targets(y)
        if classes is None:
            self.classes_ = unique_labels(y)
        elif not set(np.unique(y)) <= set(self.classes_):
            raise ValueError(f"y holds labels {sorted(set(np.unique(y).tolist()) - set(self.classes_.tolist()))} that "
                             f"are not in classes {self.classes_.tolist()}")
        if len(self.classes_) < 2:
            raise ValueError(f"y has 1 class ({self.classes_[0]!r}); MLPClassifier needs at least 2 classes")
        return np.searchsorted(self.classes_, y)

    def fit(self, X, y):
        """Train a fresh network on (X, y) for up to ``max_iter`` epochs."""
        X, y = validate_data(self, X, y, reset=True, dtype=[np.float64, np.float32], y_numeric=False,
                             multi_output=False)
        labels = self._labels(y)
        for name in ("model_", "_optimizer"):
            self.__dict__.pop(name, None)
        return self._fit(X, labels, labels, lambda validation: self.tol)

    def partial_fit(self, X, y, classes=None):
        """One epoch over (X, y); the first call needs ``classes``, every label the estimator will see."""
        first = not hasattr(self, "model_")
        X, y = validate_data(self, X, y, reset=first, dtype=[np.float64, np.float32])
        if first:
            if classes is None:
                raise ValueError("classes must be passed on the first call to partial_fit")
            self.classes_ = unique_labels(np.asarray(classes))
        elif classes is not None and not np.array_equal(unique_labels(np.asarray(classes)), self.classes_):
            raise ValueError(f"classes {list(classes)} differ from the first call's {self.classes_.tolist()}")
        return self._partial_fit(X, self._labels(y, self.classes_))

    def predict_proba(self, X):
        """One column per class (``classes_``), each row summing to 1."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        return self.model_.predict_proba(X).astype(np.float64)

    def predict_log_proba(self, X):
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))

    def predict(self, X):
        probabilities = self.predict_proba(X)  # checks that the estimator is fitted
        return self.classes_[np.argmax(probabilities, axis=1)]


class MLPRegressor(RegressorMixin, _MLP):
    """A multilayer perceptron regressor trained by gpunn (mean squared error), one or several targets."""

    def _outputs(self) -> int:
        return self.n_outputs_

    def _loss(self):
        return gn.MSELoss()

    def _targets(self, y):
        y = np.asarray(y, dtype=np.float64)
        return y[:, None] if y.ndim == 1 else y

    def fit(self, X, y):
        """Train a fresh network on (X, y) for up to ``max_iter`` epochs."""
        X, y = validate_data(self, X, y, reset=True, dtype=[np.float64, np.float32], y_numeric=True,
                             multi_output=True)
        self._one_target = y.ndim == 1
        targets = self._targets(y)
        self.n_outputs_ = targets.shape[1]
        for name in ("model_", "_optimizer"):
            self.__dict__.pop(name, None)
        # sklearn stops when the validation R² improves by less than tol: on a fixed validation set
        # that is an MSE decrease of less than tol times the targets' variance
        return self._fit(X, targets, None, lambda validation: self.tol * float(np.mean(np.var(validation[1], axis=0))))

    def partial_fit(self, X, y):
        """One epoch over (X, y)."""
        first = not hasattr(self, "model_")
        X, y = validate_data(self, X, y, reset=first, dtype=[np.float64, np.float32], y_numeric=True,
                             multi_output=True)
        targets = self._targets(y)
        if first:
            self._one_target, self.n_outputs_ = y.ndim == 1, targets.shape[1]
        elif targets.shape[1] != self.n_outputs_:
            raise ValueError(f"y has {targets.shape[1]} targets but the estimator was fitted with {self.n_outputs_}")
        return self._partial_fit(X, targets)

    def predict(self, X):
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        y = self.model_.predict(X).astype(np.float64)
        return y[:, 0] if self._one_target else y

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags


__all__ = ["MLPClassifier", "MLPRegressor"]
