"""The seeds' worked numbers and training examples, through the public API, on every backend."""

import contextlib

import numpy as np
import pytest

import gpunn as gn


def to_host(backend, array):
    return backend.to_numpy(array)


def test_single_neuron(backend):
    # seed 001: w = [0, 1], b = 4, x = [2, 3] -> f(7) = 0.999
    neuron = gn.Sequential(gn.Dense(2, 1, weight=[[0], [1]], bias=[4]), gn.Sigmoid())
    assert neuron.predict([[2, 3]])[0, 0] == pytest.approx(0.999, abs=5e-4)


def test_feedforward_2_2_1(backend):
    # every neuron w = [0, 1], b = 0: h1 = h2 = f(3) = 0.9526, o1 = f(0.9526) = 0.7216
    hidden = gn.Dense(2, 2, weight=[[0, 0], [1, 1]], bias=[0, 0])
    model = gn.Sequential(hidden, gn.Sigmoid(), gn.Dense(2, 1, weight=[[0], [1]], bias=[0]), gn.Sigmoid())
    output = model.predict([[2, 3]])
    model.forward([[2, 3]])  # predict keeps its activations apart from forward's (which backward reads)
    np.testing.assert_allclose(to_host(backend, hidden.state.y), [[0.9526, 0.9526]], atol=5e-5)
    assert output[0, 0] == pytest.approx(0.7216, abs=5e-5)


def test_backprop_alice(backend):
    # all weights 1, biases 0, only Alice (x = [-2, -1], y = 1), MSE
    first = gn.Dense(2, 2, weight=np.ones((2, 2)), dtype="float64")
    second = gn.Dense(2, 1, weight=np.ones((2, 1)), dtype="float64")
    model = gn.Sequential(first, gn.Sigmoid(), second, gn.Sigmoid())
    loss = gn.MSELoss()
    y = model.forward([[-2, -1]])
    assert to_host(backend, y)[0, 0] == pytest.approx(0.524, abs=5e-4)
    loss(y, [[1]])
    model.backward(loss.backward())
    # w1 is the weight from x1 to h1: row 0 (input), column 0 (neuron) of W. The seed multiplies
    # factors rounded to 3 digits (0.0214 for the exact 0.021470), hence the 1e-4 tolerance.
    assert to_host(backend, first.dW)[0, 0] == pytest.approx(0.0214, abs=1e-4)
    assert to_host(backend, first.db)[0] == pytest.approx(-0.0107, abs=1e-4)
    assert to_host(backend, second.dW)[0, 0] == pytest.approx(-0.0113, abs=1e-4)


@pytest.mark.parametrize("head", ["logits", "probabilities"])
def test_logistic_regression_gradient(backend, rng, head):
    # seed 001: dJ/dw = x (h - y), dJ/db = h - y
    x, target = rng.normal(size=(1, 3)), float(rng.integers(0, 2))
    w, b = rng.normal(size=(3, 1)), rng.normal(size=1)
    dense = gn.Dense(3, 1, weight=w, bias=b, dtype="float64")
    if head == "logits":
        model, loss = gn.Sequential(dense), gn.BCEWithLogitsLoss()
    else:
        model, loss = gn.Sequential(dense, gn.Sigmoid()), gn.BCELoss()
    loss(model.forward(x), [[target]])
    model.backward(loss.backward())
    h = 1 / (1 + np.exp(-(x @ w + b)))
    np.testing.assert_allclose(to_host(backend, dense.dW), x.T * (h - target), rtol=1e-6)
    np.testing.assert_allclose(to_host(backend, dense.db), (h - target).ravel(), rtol=1e-6)


GENDER_X = np.array([[-2, -1], [25, 6], [17, 4], [-15, -6]], dtype=float)  # weight-135, height-66
GENDER_Y = np.array([[1], [0], [0], [1]], dtype=float)  # 1 = female


#: The seeds' training runs (4000 steps each) on the real backends; the stand-in, which runs the CuPy
#: backend's code a hundred times slower on the CPU, follows NumPy's trajectory in the test below.
TRAINING_BACKENDS = pytest.mark.parametrize("backend", ["numpy", "numpy-twins", "cupy"], indirect=True)


@TRAINING_BACKENDS
def test_gender_network_trains(backend):
    model = gn.Sequential(gn.Dense(2, 2, seed=1), gn.Sigmoid(), gn.Dense(2, 1, seed=2), gn.Sigmoid())
    history = model.fit(GENDER_X, GENDER_Y, loss=gn.MSELoss(), optimizer=gn.SGD(lr=0.1),
                        epochs=1000, batch_size=1, seed=0, verbose=0)
    assert history["loss"][-1] < history["loss"][0] / 10
    emily, frank = model.predict([[-7, -3], [20, 2]])[:, 0]
    assert emily > 0.9, f"Emily should be female (>0.9), got {emily}"
    assert frank < 0.1, f"Frank should be male (<0.1), got {frank}"


@TRAINING_BACKENDS
def test_xor_trains_with_tanh(backend):
    x = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=float)
    y = np.array([[0], [1], [1], [0]], dtype=float)
    model = gn.Sequential(gn.Dense(2, 3, seed=3), gn.Tanh(), gn.Dense(3, 1, seed=4), gn.Tanh())
    model.fit(x, y, loss=gn.MSELoss(), optimizer=gn.SGD(lr=0.1), epochs=1000, batch_size=1,
              seed=0, verbose=0)
    np.testing.assert_array_equal(model.predict(x).round(), y)


def test_the_cupy_backend_on_the_stand_in_follows_numpys_training_trajectory():
    """The seeds' gender network for 25 epochs (100 steps) on the stand-in and on NumPy: the same
    weights to float64 rounding, so the 1000-epoch runs above hold for the CuPy backend's code too."""
    from support import cupy_standin

    weights = {}
    for name in ("numpy", "cupy-standin"):
        context = cupy_standin.installed() if name == "cupy-standin" else contextlib.nullcontext()
        with context, gn.use_backend(name.split("-")[0]):
            model = gn.Sequential(gn.Dense(2, 2, seed=1, dtype="float64"), gn.Sigmoid(),
                                  gn.Dense(2, 1, seed=2, dtype="float64"), gn.Sigmoid())
            model.fit(GENDER_X, GENDER_Y, loss=gn.MSELoss(), optimizer=gn.SGD(lr=0.1), epochs=25, batch_size=1,
                      seed=0, verbose=0)
            weights[name] = model.backend.to_numpy(model.flat.values)
    assert not np.array_equal(weights["numpy"], np.zeros_like(weights["numpy"]))
    np.testing.assert_allclose(weights["cupy-standin"], weights["numpy"], rtol=1e-12, atol=1e-14)
