"""Bad input fails early with an error that names the problem."""

import numpy as np
import pytest

import gpunn as gn


@pytest.fixture
def model(backend):
    return gn.Sequential(gn.Dense(3, 4, seed=0), gn.Tanh(), gn.Dense(4, 2, seed=1))


def test_wrong_feature_count(model):
    with pytest.raises(ValueError, match="X has 5 features but the model expects 3"):
        model.forward(np.ones((2, 5)))


def test_input_must_be_two_dimensional(model):
    with pytest.raises(ValueError, match=r"X must be 2-D \(batch, features\), got shape \(3,\)"):
        model.forward(np.ones(3))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_in_inputs(model, bad):
    x = np.ones((2, 3))
    x[1, 2] = bad
    with pytest.raises(ValueError, match="X contains NaN or Inf"):
        model.forward(x)
    with pytest.raises(ValueError, match="X contains NaN or Inf"):
        model.fit(x, [0, 1], loss=gn.SoftmaxCrossEntropyLoss(), optimizer=gn.SGD(lr=0.1), verbose=0)


def test_nan_in_targets(model):
    with pytest.raises(ValueError, match="T contains NaN or Inf"):
        model.fit(np.ones((2, 3)), [[0, np.nan], [1, 0]], loss=gn.MSELoss(), optimizer=gn.SGD(lr=0.1), verbose=0)


def test_non_numeric_input(model):
    with pytest.raises(ValueError, match="X cannot be read as a float32 array"):
        model.forward([["a", "b", "c"]])


def test_wrong_label_shape(model):
    y = model.forward(np.ones((4, 3)))
    with pytest.raises(ValueError, match=r"labels must have shape \(4,\) or \(4, 2\), got \(3,\)"):
        gn.SoftmaxCrossEntropyLoss()(y, [0, 1, 1])
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\), got 0..5"):
        gn.SoftmaxCrossEntropyLoss()(y, [0, 1, 5, 1])
    with pytest.raises(ValueError, match=r"targets have shape \(4, 3\) but the outputs have shape \(4, 2\)"):
        gn.MSELoss()(y, np.ones((4, 3)))
    with pytest.raises(ValueError, match="X has 4 rows but T has 3"):
        model.fit(np.ones((4, 3)), np.ones((3, 2)), loss=gn.MSELoss(), optimizer=gn.SGD(lr=0.1), verbose=0)


def test_nan_loss_is_reported(model):
    y = model.forward(np.ones((2, 3)))
    with pytest.raises(FloatingPointError, match="MSELoss is nan"):
        gn.MSELoss()(y, [[np.nan, 0], [0, 0]])


@pytest.mark.filterwarnings("ignore:overflow encountered")
def test_diverging_training_is_reported(backend):
    x = np.random.default_rng(0).normal(size=(16, 3)) * 1e3
    model = gn.Sequential(gn.Dense(3, 1, seed=0))
    with pytest.raises(gn.TrainingDiverged, match="the loss became (nan|inf) in epoch"), \
            pytest.warns(gn.TrainingWarning, match="over 100x the best epoch's"):  # warned before it broke
        model.fit(x, x[:, :1] * 1e3, loss=gn.MSELoss(), optimizer=gn.SGD(lr=10.0), epochs=50, verbose=0)


def test_mixed_dtypes_in_one_model(backend):
    with pytest.raises(TypeError, match="mixed dtypes: layer 0 holds float32, layer 2 holds float64"):
        gn.Sequential(gn.Dense(2, 3), gn.Tanh(), gn.Dense(3, 1, dtype="float64"))


def test_layer_sizes_must_chain(backend):
    with pytest.raises(ValueError, match="layer 0 gives 3 features but layer 1 expects 4"):
        gn.Sequential(gn.Dense(2, 3), gn.Dense(4, 1))


def test_bad_constructor_arguments(backend):
    with pytest.raises(ValueError, match="in_features must be an int >= 1, got 0"):
        gn.Dense(0, 3)
    with pytest.raises(ValueError, match=r"weight must have shape \(2, 3\), got \(3, 2\)"):
        gn.Dense(2, 3, weight=np.ones((3, 2)))
    with pytest.raises(ValueError, match="unknown initializer 'lecun'"):
        gn.Dense(2, 3, init="lecun")
    with pytest.raises(ValueError, match="dtype int32 is not supported on the numpy backend|dtype int32 is not supported"):
        gn.Dense(2, 3, dtype="int32")
    with pytest.raises(TypeError, match="layer 1 is str, not a gpunn Layer"):
        gn.Sequential(gn.Dense(2, 3), "tanh")
    with pytest.raises(ValueError, match="lr must be a positive finite number"):
        gn.SGD(lr=-1)
    with pytest.raises(ValueError, match=r"momentum must lie in \[0, 1\)"):
        gn.SGD(lr=0.1, momentum=1.5)



def test_cupy_array_on_numpy_backend_is_named():
    class FakeDeviceArray:
        __cuda_array_interface__ = {}

    with gn.use_backend("numpy") as backend:
        with pytest.raises(TypeError, match="array .* on the numpy backend"):
            backend.asarray(FakeDeviceArray())


def test_backward_before_forward(backend):
    with pytest.raises(RuntimeError, match="backward called before"):
        gn.MSELoss().backward()
    with pytest.raises(RuntimeError, match="Dense.backward called before forward"):
        gn.Dense(2, 2).backward(None)
    with pytest.raises(RuntimeError, match="no parameters bound"):
        gn.SGD(lr=0.1).step()
