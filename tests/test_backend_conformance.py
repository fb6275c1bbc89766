"""Every backend computes every op of the interface like a float64 NumPy reference.

Parametrised over the backends, so the CuPy backend inherits the whole suite on a GPU.
"""

import inspect
import math

import numpy as np
import pytest

from gpunn.backends import resolve_backend
from gpunn.backends.activations import REGISTRY
from gpunn.backends.base import ACTIVATIONS, Backend
from gpunn.backends.numpy_backend import NumpyBackend

from conftest import tolerance

DTYPES = ["float32", "float64"]


erf = np.vectorize(math.erf)
SQRT_2_OVER_PI = math.sqrt(2 / math.pi)


def reference_forward(activation, z):
    """Closed forms in float64, written independently of the backends (default parameters)."""
    sigmoid = 1 / (1 + np.exp(-z))
    inner = SQRT_2_OVER_PI * (z + 0.044715 * z ** 3)
    return {"sigmoid": lambda: sigmoid, "tanh": lambda: np.tanh(z), "relu": lambda: np.maximum(z, 0),
            "identity": lambda: z, "gelu": lambda: z * 0.5 * (1 + erf(z / math.sqrt(2))),
            "gelu_tanh": lambda: 0.5 * z * (1 + np.tanh(inner)), "silu": lambda: z * sigmoid,
            "leaky_relu": lambda: np.where(z > 0, z, 0.01 * z),
            "softplus": lambda: np.where(z > 20, z, np.log1p(np.exp(np.minimum(z, 20))))}[activation]()


def reference_slope(activation, z):
    """f'(z) in closed form, from the pre-activation z."""
    y, sigmoid = reference_forward(activation, z), 1 / (1 + np.exp(-z))
    inner = SQRT_2_OVER_PI * (z + 0.044715 * z ** 3)
    return {"sigmoid": lambda: y * (1 - y), "tanh": lambda: 1 - y * y, "relu": lambda: (z > 0).astype(float),
            "identity": lambda: np.ones_like(z),
            "gelu": lambda: 0.5 * (1 + erf(z / math.sqrt(2))) + z * np.exp(-z * z / 2) / math.sqrt(2 * math.pi),
            "gelu_tanh": lambda: 0.5 * (1 + np.tanh(inner)) + 0.5 * z * (1 - np.tanh(inner) ** 2) * SQRT_2_OVER_PI
            * (1 + 3 * 0.044715 * z * z),
            "silu": lambda: sigmoid * (1 + z * (1 - sigmoid)), "leaky_relu": lambda: np.where(z > 0, 1.0, 0.01),
            "softplus": lambda: np.where(z > 20, 1.0, sigmoid)}[activation]()


def close(backend, actual, expected, dtype):
    rtol, atol = tolerance(dtype)
    np.testing.assert_allclose(backend.to_numpy(actual).astype(float), expected, rtol=rtol, atol=atol)


def backend_classes():
    classes = [NumpyBackend]
    try:
        from gpunn.backends.cupy_backend import CupyBackend
    except ImportError:
        return classes
    return classes + [CupyBackend]


@pytest.mark.parametrize("cls", backend_classes(), ids=lambda cls: cls.__name__)
def test_backend_implements_exactly_the_interface(cls):
    abstract = {name for name, member in vars(Backend).items() if getattr(member, "__isabstractmethod__", False)}
    public = {name for name, member in vars(cls).items() if not name.startswith("_") and
              (callable(member) or isinstance(member, property))}
    assert public == abstract, f"{cls.__name__} differs from Backend: {sorted(public ^ abstract)}"
    for name in abstract:
        interface, implementation = getattr(Backend, name), getattr(cls, name)
        if callable(interface):
            assert inspect.signature(implementation) == inspect.signature(interface), name
    assert not getattr(cls, "__abstractmethods__", None)


@pytest.mark.parametrize("dtype", DTYPES)
def test_matmuls(backend, rng, dtype):
    x, w, dy = rng.normal(size=(7, 5)), rng.normal(size=(5, 3)), rng.normal(size=(7, 3))
    X, W, dY = (backend.asarray(a, dtype) for a in (x, w, dy))
    close(backend, backend.matmul(X, W), x @ w, dtype)
    close(backend, backend.matmul_nt(dY, W), dy @ w.T, dtype)
    close(backend, backend.matmul_tn(X, dY), x.T @ dy, dtype)
    out = backend.empty((7, 3), dtype)
    assert backend.matmul(X, W, out=out) is out
    close(backend, out, x @ w, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_bias_activation_and_backward(backend, rng, dtype, activation):
    z, b, dy = rng.normal(size=(6, 9)) * 3, rng.normal(size=9), rng.normal(size=(6, 9))
    Z, B, dY = (backend.asarray(a.copy(), dtype) for a in (z, b, dy))  # Z is overwritten below
    y = reference_forward(activation, z + b)
    close(backend, backend.bias_activation(Z, B, activation), y, dtype)
    in_place = backend.bias_activation(Z, B, activation, out=Z)
    assert in_place is Z
    close(backend, Z, y, dtype)
    saved = backend.asarray(z + b if REGISTRY[activation].reads_input else y, dtype)
    close(backend, backend.activation_backward(dY, saved, activation), dy * reference_slope(activation, z + b), dtype)
    # With ``saved``, the same pass also writes what backward reads.
    out, kept = backend.empty((6, 9), dtype), backend.asarray(z.copy(), dtype)
    backend.bias_activation(kept, B, activation, out=out, saved=kept)
    close(backend, out, y, dtype)
    close(backend, kept, z + b if REGISTRY[activation].reads_input else y, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_never_overflows(backend, dtype):
    z = backend.asarray([[-1000.0, -50.0, 0.0, 50.0, 1000.0]], dtype)
    with np.errstate(all="raise"):
        y = backend.to_numpy(backend.bias_activation(z, 0, "sigmoid"))
    assert np.all(np.isfinite(y))
    assert y[0, 0] == 0.0 and y[0, -1] == 1.0 and y[0, 2] == 0.5


def test_unknown_activation_is_an_error(backend):
    z = backend.asarray([[1.0]], "float32")
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        backend.bias_activation(z, 0, "swish")


@pytest.mark.parametrize("dtype", DTYPES)
def test_bias_gradient(backend, rng, dtype):
    dz = rng.normal(size=(11, 4))
    close(backend, backend.bias_gradient(backend.asarray(dz, dtype)), dz.sum(axis=0), dtype)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("dtype", DTYPES)
def test_sgd_update(backend, rng, dtype, momentum):
    p, g, v = rng.normal(size=(3, 4)), rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    P, G = backend.asarray(p.copy(), dtype), backend.asarray(g, dtype)  # the update is in place
    V = backend.asarray(v.copy(), dtype) if momentum else None
    backend.sgd_update(P, G, V, 0.05, momentum)
    if momentum:
        v = momentum * v + g
        close(backend, V, v, dtype)
        close(backend, P, p - 0.05 * v, dtype)
    else:
        close(backend, P, p - 0.05 * g, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_bce_with_logits(backend, rng, dtype):
    z, t = rng.normal(size=(5, 3)) * 4, rng.uniform(size=(5, 3))
    Z, T = backend.asarray(z, dtype), backend.asarray(t, dtype)
    p = 1 / (1 + np.exp(-z))
    expected = np.mean(-(t * np.log(p) + (1 - t) * np.log(1 - p)))
    assert float(backend.bce_with_logits_loss(Z, T)) == pytest.approx(expected, rel=tolerance(dtype)[0] * 10)
    close(backend, backend.bce_with_logits_grad(Z, T, 0.5), (p - t) * 0.5, dtype)
    huge = backend.asarray([[1000.0, -1000.0]], dtype)
    assert np.isfinite(float(backend.bce_with_logits_loss(huge, backend.asarray([[0.0, 1.0]], dtype))))


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_cross_entropy_grad(backend, rng, dtype):
    z, labels = rng.normal(size=(6, 4)) * 3, rng.integers(0, 4, size=6)
    lse = np.log(np.exp(z).sum(axis=1))
    expected = (np.exp(z - lse[:, None]) - np.eye(4)[labels]) / 6
    got = backend.softmax_cross_entropy_grad(backend.asarray(z, dtype), backend.asarray(lse, dtype),
                                             backend.asarray(labels), 1 / 6)
    close(backend, got, expected, dtype)


def test_random_generator_is_seeded_and_backend_independent(backend):
    first = backend.to_numpy(backend.random_generator(42).normal((3, 2), 1.0, "float64"))
    again = backend.to_numpy(backend.random_generator(42).normal((3, 2), 1.0, "float64"))
    on_numpy = resolve_backend("numpy").random_generator(42).normal((3, 2), 1.0, "float64")
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(first, on_numpy)
    assert sorted(backend.random_generator(1).permutation(10)) == list(range(10))


def test_arrays_round_trip(backend, rng):
    host = rng.normal(size=(2, 3))
    device = backend.asarray(host, "float32")
    assert backend.is_array(device) and device.dtype == np.float32
    np.testing.assert_allclose(backend.to_numpy(device), host, rtol=1e-6)
    assert backend.to_numpy(backend.zeros((2, 2), "float64")).tolist() == [[0, 0], [0, 0]]
    assert backend.empty((4, 1), "float32").shape == (4, 1)
    backend.synchronize()

