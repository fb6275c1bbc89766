"""Every backend computes every op of the interface like a float64 NumPy reference.

Parametrised over the backends, so the CuPy backend inherits the whole suite on a GPU.
"""

import inspect
import math

import numpy as np
import pytest

from gpunn.backends.selection import resolve_backend
from gpunn.kernels.activations import REGISTRY
from gpunn.backends.base import ACTIVATIONS, Backend
from gpunn.backends.numpy_backend import NumpyBackend

from conftest import tolerance
from support import whole_buffer

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


def close(backend, actual, expected, dtype, scale=None):
    """Within the dtype's tolerance; with ``scale``, also within a few roundings of it where a
    formula cancels (GELU's 1 + tanh or 1 + erf in the far negative tail)."""
    rtol, atol = tolerance(dtype)
    got = backend.to_numpy(actual).astype(float)
    if scale is None:
        np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol)
        return
    bound = rtol * np.abs(expected) + atol + 8 * np.finfo(dtype).eps * scale
    assert np.all(np.abs(got - expected) <= bound), (got, expected)


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
    pre = np.abs(z + b) + 1
    close(backend, backend.bias_activation(Z, B, activation), y, dtype, pre)
    in_place = backend.bias_activation(Z, B, activation, out=Z)
    assert in_place is Z
    close(backend, Z, y, dtype, pre)
    saved = backend.asarray(z + b if REGISTRY[activation].reads_input else y, dtype)
    close(backend, backend.activation_backward(dY, saved, activation), dy * reference_slope(activation, z + b), dtype,
          np.abs(dy) * pre ** 3)
    # With ``saved``, the same pass also writes what backward reads.
    out, kept = backend.empty((6, 9), dtype), backend.asarray(z.copy(), dtype)
    backend.bias_activation(kept, B, activation, out=out, saved=kept)
    close(backend, out, y, dtype)
    close(backend, kept, z + b if REGISTRY[activation].reads_input else y, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", [name for name in ACTIVATIONS if name != "identity"])
def test_kept_part_of_the_slope(backend, rng, dtype, activation):
    """Where a backend keeps part of the slope from the forward (``keeps``), forward and backward
    through the ``kept`` buffer give the closed forms, as recomputing does."""
    if not backend.keeps(activation, dtype):
        pytest.skip(f"the {backend.name} backend keeps nothing for {activation} in {dtype}")
    z, b, dy = rng.normal(size=(6, 9)) * 3, rng.normal(size=9), rng.normal(size=(6, 9))
    saved, B, dY = (backend.asarray(a.copy(), dtype) for a in (z, b, dy))  # saved is overwritten
    out, kept = backend.empty((6, 9), dtype), backend.empty((6, 9), dtype)
    backend.bias_activation(saved, B, activation, out=out, saved=saved, kept=kept)
    pre = np.abs(z + b) + 1
    close(backend, out, reference_forward(activation, z + b), dtype, pre)
    close(backend, backend.activation_backward(dY, saved, activation, kept=kept),
          dy * reference_slope(activation, z + b), dtype, np.abs(dy) * pre ** 3)


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


def reference_update(rule, p, g, states, lr, step, wd, decay_end, hyper, flag):
    """torch.optim's formulas in float64, written out independently of optim.rules."""
    p, g, states = p.copy(), g.copy(), [s.copy() for s in states]
    mask = np.arange(p.size) < decay_end
    if rule == "sgd":
        momentum = hyper[0]
        g = g + wd * p * mask
        if momentum:
            states[0] = momentum * states[0] + g
            g = g + momentum * states[0] if flag else states[0]
        return p - lr * g, states
    beta1, beta2, eps = hyper
    if flag:
        p = p * np.where(mask, 1 - lr * wd, 1.0)
    else:
        g = g + wd * p * mask
    states[0] = beta1 * states[0] + (1 - beta1) * g
    states[1] = beta2 * states[1] + (1 - beta2) * g * g
    denominator = np.sqrt(states[1]) / np.sqrt(1 - beta2 ** step) + eps
    return p - lr / (1 - beta1 ** step) * states[0] / denominator, states


UPDATE_CASES = [("sgd", (0.0, 0, 0), False), ("sgd", (0.9, 0, 0), False), ("sgd", (0.9, 0, 0), True),
                ("adam", (0.9, 0.999, 1e-8), False), ("adam", (0.8, 0.99, 1e-6), True)]


@pytest.mark.parametrize("rule,hyper,flag", UPDATE_CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_optimizer_update(backend, rng, dtype, rule, hyper, flag):
    """One fused update over a flat buffer: the learning rate from the table, the step from the
    counters, the loss scale undone, weight decay only before decay_end, clipping by the norm."""
    from gpunn.kernels.update_rules import RULES

    n, decay_end, lr_table = 37, 20, np.array([0.5, 0.1, 0.05])
    p, g = rng.normal(size=n), rng.normal(size=n)
    states = [rng.uniform(0.1, 1.0, size=n) for _ in RULES[rule].states]
    scalars = np.array([2.0, 1.0, 4.0, 0.0, 0.0])  # 2 updates applied, 1 attempted, loss scale 4
    P, G = backend.asarray(p.copy(), dtype), backend.asarray(g * 4, dtype)  # updated in place
    S = [backend.asarray(s.copy(), dtype) for s in states]
    norm = backend.asarray([np.linalg.norm(g * 4)], dtype)
    max_norm = 0.5 * np.linalg.norm(g)
    backend.optimizer_update(RULES[rule], P, G, S, None, backend.asarray(scalars, "float64"),
                             backend.asarray(lr_table, "float64"), norm, hyper, flag, 0.01, decay_end, max_norm, False,
                             *whole_buffer(backend, n, applied=2.0))
    clipped = g * max_norm / (np.linalg.norm(g) + 1e-6)
    expected_p, expected_states = reference_update(rule, p, clipped, states, 0.1, 3.0, 0.01, decay_end, hyper, flag)
    close(backend, P, expected_p, dtype)
    for got, expected in zip(S, expected_states):
        close(backend, got, expected, dtype)


@pytest.mark.parametrize("rule,hyper,flag", UPDATE_CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_optimizer_update_leaves_the_gradient_alone(backend, rng, dtype, rule, hyper, flag):
    """No loss scale, clipping or decay: the NumPy rules read the gradient in place; it stays as it was."""
    from gpunn.kernels.update_rules import RULES

    n = 37
    p, g = rng.normal(size=n), rng.normal(size=n)
    states = [rng.uniform(0.1, 1.0, size=n) for _ in RULES[rule].states]
    P, G = backend.asarray(p.copy(), dtype), backend.asarray(g.copy(), dtype)
    S = [backend.asarray(s.copy(), dtype) for s in states]
    backend.optimizer_update(RULES[rule], P, G, S, None, backend.asarray([0.0, 0.0, 1.0, 0.0, 0.0], "float64"),
                             backend.asarray([0.1], "float64"), backend.asarray([np.linalg.norm(g)], dtype), hyper,
                             flag, 0.0, n, 0.0, False, *whole_buffer(backend, n))
    expected_p, expected_states = reference_update(rule, p, g, states, 0.1, 1.0, 0.0, n, hyper, flag)
    np.testing.assert_array_equal(backend.to_numpy(G), backend.to_numpy(backend.asarray(g, dtype)))
    close(backend, P, expected_p, dtype)
    for got, expected in zip(S, expected_states):
        close(backend, got, expected, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_optimizer_update_with_master_weights_and_skip(backend, rng, dtype):
    """float16 storage: the float32 master is updated and rounded into the parameters; a
    non-finite norm under dynamic loss scaling leaves everything untouched."""
    from gpunn.kernels.update_rules import RULES

    if "float16" not in backend.supported_dtypes:
        pytest.skip(f"{backend.name} has no float16")
    p, g = rng.normal(size=40), rng.normal(size=40)
    master = backend.asarray(p.copy(), "float32")
    P = backend.asarray(p.astype(np.float32).astype(np.float16))  # a float16 model holds its rounded masters
    scalars, table = backend.asarray([0.0, 0.0, 8.0, 0.0, 0.0], "float64"), backend.asarray([0.1], "float64")
    G = backend.asarray(g * 8, "float16")
    norm = backend.zeros((1,), "float32")
    backend.global_norm(G, out=norm)
    backend.optimizer_update(RULES["sgd"], P, G, [backend.zeros((40,), "float32")], master, scalars, table, norm,
                             (0.0, 0.0, 0.0), False, 0.0, 0, 0.0, True, *whole_buffer(backend, 40))
    expected = p - 0.1 * (g * 8).astype(np.float16).astype(np.float64) / 8
    np.testing.assert_allclose(backend.to_numpy(master), expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(backend.to_numpy(P), backend.to_numpy(master).astype(np.float16))
    before = backend.to_numpy(master).copy()
    norm[...] = backend.asarray([np.inf], "float32")
    backend.optimizer_update(RULES["sgd"], P, G, [backend.zeros((40,), "float32")], master, scalars, table, norm,
                             (0.0, 0.0, 0.0), False, 0.0, 0, 0.0, True, *whole_buffer(backend, 40))
    np.testing.assert_array_equal(backend.to_numpy(master), before)


@pytest.mark.parametrize("n", [300, 2 ** 20 + 3])  # 3 blocks; on a GPU, 2048 blocks striding over them
def test_the_update_advances_the_counters_after_every_element_read_them(backend, n):
    """The update's own launch advances the counters once (applied and attempted updates; a
    non-finite norm halves the loss scale and counts a skip; growth_interval good steps double it,
    torch.cuda.amp.GradScaler's rule) and the segment's step count (not on a skipped step), after
    every element has read this step's learning rate, step and scale."""
    from gpunn.kernels.update_rules import RULES

    rates = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0]
    P, G = backend.zeros((n,), "float32"), backend.asarray(np.ones(n), "float32")
    scalars, table = backend.asarray([0.0, 0.0, 16.0, 0.0, 0.0], "float64"), backend.asarray(rates, "float64")
    segments, steps = whole_buffer(backend, n)
    expected, scale = 0.0, 16.0
    for attempt, norm in enumerate([1.0, 1.0, np.inf, 1.0, 1.0, 1.0]):
        backend.optimizer_update(RULES["sgd"], P, G, [backend.zeros((n,), "float32")], None, scalars, table,
                                 backend.asarray([norm], "float32"), (0.0, 0.0, 0.0), False, 0.0, 0, 0.0, True,
                                 segments, steps, growth_interval=3.0, scratch=backend.optimizer_scratch("float32"))
        if np.isfinite(norm):
            expected -= rates[attempt] / scale
        scale = {2: 8.0, 5: 16.0}.get(attempt, scale)
        np.testing.assert_array_equal(backend.to_numpy(P), np.full(n, expected, np.float32))
    np.testing.assert_array_equal(backend.to_numpy(scalars), [5, 6, 16, 0, 1])  # 16 → 8 → 16 after 3 good
    np.testing.assert_array_equal(backend.to_numpy(steps), [5])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [300, 2 ** 18 + 3])  # on the stand-in, threads that stride over several segments
def test_the_update_follows_its_segment_table(backend, rng, dtype, n):
    """Per parameter segment: its own step count for Adam's bias correction, its state where the table
    says, nothing at all (value, state, count) where it is not updated this step or lies between
    segments; the norm covers the updated segments only. One call, whatever the table."""
    from gpunn.kernels.update_rules import RULES

    hyper, lr, wd = (0.9, 0.999, 1e-8), 0.01, 0.05
    cut = [0, n // 5, n // 5 + 7, n // 2, n // 2 + 1, (3 * n) // 4, n]  # a gap at [cut[4], cut[5])
    rows = [(cut[0], cut[1], 1, 3.0), (cut[1], cut[2], 0, 1.0), (cut[2], cut[3], 1, 0.0), (cut[3], cut[4], 1, 3.0),
            (cut[5], cut[6], 1, 7.0)]
    state_starts = np.cumsum([0] + [stop - start for start, stop, _, _ in rows])
    table = [v for (start, stop, updated, _), state in zip(rows, state_starts) for v in (start, stop, state, updated)]
    p, g = rng.normal(size=n), rng.normal(size=n)
    states = [rng.uniform(0.1, 1.0, size=state_starts[-1]) for _ in range(2)]
    P, G = backend.asarray(p.copy(), dtype), backend.asarray(g, dtype)
    S = [backend.asarray(s.copy(), dtype) for s in states]
    segments, steps = backend.asarray(table, "int64"), backend.asarray([r[3] for r in rows], "float64")
    norm = backend.zeros((1,), "float64" if dtype == "float64" else "float32")
    backend.global_norm(G, out=norm, segments=segments)
    updated = [(start, stop) for start, stop, flag, _ in rows if flag]
    close(backend, norm, [np.sqrt(sum(np.sum(g[a:b] ** 2) for a, b in updated))], dtype)
    backend.optimizer_update(RULES["adam"], P, G, S, None, backend.asarray([7.0, 9.0, 1.0, 0.0, 0.0], "float64"),
                             backend.asarray([lr], "float64"), norm, hyper, False, wd, n // 3, 0.0, False, segments,
                             steps)
    expected_p, expected_states = p.copy(), [s.copy() for s in states]
    for (start, stop, flag, count), state in zip(rows, state_starts):
        if flag:
            where = slice(state, state + stop - start)
            decay_end = max(0, min(n // 3 - start, stop - start))
            expected_p[start:stop], (expected_states[0][where], expected_states[1][where]) = reference_update(
                "adam", p[start:stop], g[start:stop], [s[where] for s in states], lr, count + 1, wd, decay_end,
                hyper, False)
    close(backend, P, expected_p, dtype)
    for got, expected in zip(S, expected_states):
        close(backend, got, expected, dtype)
    untouched = np.ones(n, bool)
    for start, stop in updated:
        untouched[start:stop] = False
    np.testing.assert_array_equal(backend.to_numpy(P)[untouched], backend.to_numpy(backend.asarray(p, dtype))[untouched])
    np.testing.assert_array_equal(backend.to_numpy(steps), [4.0, 1.0, 1.0, 4.0, 8.0])


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_global_norm(backend, rng, dtype):
    if dtype not in backend.supported_dtypes:
        pytest.skip(f"{backend.name} has no {dtype}")
    compute = "float64" if dtype == "float64" else "float32"
    scratch = backend.optimizer_scratch(compute)  # reused: each launch leaves its ticket at 0
    # Sizes around the norm kernel's block (128 threads) and past its 1024-block grid, where threads stride.
    for size in (1, 127, 128, 1000, 1024, 3 * 1024, 128 * 1024 + 5):
        x = rng.normal(size=size).astype(dtype)
        out = backend.zeros((1,), compute)
        backend.global_norm(backend.asarray(x), out=out, scratch=scratch)
        np.testing.assert_allclose(backend.to_numpy(out)[0], np.linalg.norm(x.astype(np.float64)),
                                   rtol=1e-5 if compute == "float32" else 1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_mse_grad_scales_in_the_compute_dtype(backend, rng, dtype):
    y, t = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    scale = backend.asarray([64.0], "float64")
    got = backend.mse_grad(backend.asarray(y, dtype), backend.asarray(t, dtype), 2 / 12, scale)
    close(backend, got, (y - t) * 2 / 12 * 64, dtype)
    close(backend, backend.mse_grad(backend.asarray(y, dtype), backend.asarray(t, dtype), 0.5), (y - t) * 0.5, dtype)


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

