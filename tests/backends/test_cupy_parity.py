"""CuPy against NumPy: every op, many shapes and dtypes, a whole fit, memory behaviour.

On a GPU (``benchmarks/gpu_check.sh``) the real CuPy runs; elsewhere, as on CI, the CPU stand-in
(tests/support/cupy_standin) runs the CuPy backend's code instead. The tests of what only a GPU
can show (memory pools, TF32, allocation hooks, the largest shapes) skip there with the reason.
"""

import numpy as np
import pytest

import gpunn as gn
from gpunn.backends.selection import resolve_backend
from gpunn.backends.base import ACTIVATIONS

from support import cupy_standin, whole_buffer

from conftest import matmul_error_bound, tolerance

ON_GPU = gn.cupy_unavailable_reason() is None
#: What the stand-in cannot show (allocation hooks, TF32) or has no time for (4096³). Its memory pools
#: are CuPy's bookkeeping (tests/support/cupy_standin/_pool.py): the pool tests run on it too.
GPU_ONLY = [pytest.mark.gpu, pytest.mark.skipif(not ON_GPU, reason="needs a GPU (beyond the CPU stand-in)")]


@pytest.fixture(autouse=True)
def cupy_device():
    """The real CuPy on a GPU, else the CPU stand-in for the test's duration."""
    if ON_GPU:
        yield None
        return
    with cupy_standin.installed() as standin:
        yield standin

@pytest.fixture
def on_gpu_only():
    if not ON_GPU:
        pytest.skip("needs a GPU: the CPU stand-in has no allocation hook or TF32")


SHAPES = [(1, 1), (1, 7), (333, 129), (64, 1000)]
DTYPES = ["float16", "float32", "float64"]


@pytest.fixture
def cp_backend():
    with gn.use_backend("cupy") as backend:
        yield backend


@pytest.fixture
def np_backend():
    return resolve_backend("numpy")


def compare(cp_backend, got, expected, dtype):
    rtol, atol = tolerance(dtype)
    np.testing.assert_allclose(cp_backend.to_numpy(got).astype(np.float64), expected.astype(np.float64),
                               rtol=rtol, atol=atol, equal_nan=True)


def compare_cancelling(cp_backend, got, expected, scale, dtype):
    """As ``compare``, and also within a few roundings of ``scale`` where a formula cancels (GELU's
    1 + tanh or 1 + erf in the far negative tail amplifies the last bit of the compute type)."""
    rtol, atol = tolerance(dtype)
    got = cp_backend.to_numpy(got).astype(np.float64)
    bound = rtol * np.abs(expected) + atol + 8 * np.finfo(reference(dtype)).eps * scale
    with np.errstate(invalid="ignore"):
        assert np.all((np.abs(got - expected) <= bound) | (np.isnan(got) & np.isnan(expected))), (got, expected)


def reference(dtype):
    """The dtype of the NumPy reference: float16 storage computes in float32, like the kernels."""
    return "float32" if dtype == "float16" else dtype


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_activation_ops(cp_backend, np_backend, rng, shape, dtype, activation):
    z, b, dy = rng.normal(size=shape) * 3, rng.normal(size=shape[1]), rng.normal(size=shape)
    ref = reference(dtype)
    zs, bs, dys = (a.astype(dtype) for a in (z, b, dy))
    y_ref = np_backend.bias_activation(zs.astype(ref), bs.astype(ref), activation)
    y = cp_backend.bias_activation(cp_backend.asarray(zs), cp_backend.asarray(bs), activation)
    compare(cp_backend, y, y_ref, dtype)
    ys = y_ref.astype(dtype)
    grad_ref = np_backend.activation_backward(dys.astype(ref), ys.astype(ref), activation)
    compare(cp_backend, cp_backend.activation_backward(cp_backend.asarray(dys), cp_backend.asarray(ys), activation),
            grad_ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_extremes_on_gpu(cp_backend, dtype):
    z = cp_backend.asarray([[-1000.0, -0.0, 0.0, 1000.0, np.nan]], dtype)
    y = cp_backend.to_numpy(cp_backend.bias_activation(z, 0, "sigmoid"))
    assert y[0, 0] == 0 and y[0, 3] == 1 and y[0, 1] == 0.5 and np.isnan(y[0, 4])


@pytest.mark.parametrize("shape", [(1, 7, 3), (333, 129, 65), pytest.param((4096, 4096, 4096), marks=GPU_ONLY)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_matmuls(cp_backend, rng, shape, dtype):
    n, k, m = shape
    x, w, dy = (rng.normal(size=s).astype(dtype) for s in ((n, k), (k, m), (n, m)))
    X, W, dY = (cp_backend.asarray(v) for v in (x, w, dy))
    x64, w64, dy64 = (v.astype(np.float64) for v in (x, w, dy))
    for got, a, b in ((cp_backend.matmul(X, W), x64, w64), (cp_backend.matmul_nt(dY, W), dy64, w64.T),
                      (cp_backend.matmul_tn(X, dY), x64.T, dy64)):
        error = np.abs(cp_backend.to_numpy(got).astype(np.float64) - a @ b)
        bound = matmul_error_bound(a, b, dtype)
        worst = np.unravel_index(np.argmax(error - bound), error.shape)
        assert (error <= bound).all(), f"error {error[worst]:.3g} > bound {bound[worst]:.3g} at {worst}"


def test_non_contiguous_inputs(cp_backend, np_backend, rng):
    z = rng.normal(size=(40, 30))
    b = rng.normal(size=15)
    Z = cp_backend.asarray(z)[::2, ::2]  # strided view
    compare(cp_backend, cp_backend.bias_activation(Z, cp_backend.asarray(b), "tanh"),
            np_backend.bias_activation(z[::2, ::2], b, "tanh"), "float64")
    w = rng.normal(size=(15, 8))
    compare(cp_backend, cp_backend.matmul(Z, cp_backend.asarray(w)), z[::2, ::2] @ w, "float64")


@pytest.mark.usefixtures("on_gpu_only")
def test_matmuls_make_no_copies(cp_backend, rng):
    import cupy

    class CountAllocations(cupy.cuda.MemoryHook):
        name = "count"

        def __init__(self):
            self.count = 0

        def malloc_preprocess(self, **kwargs):
            self.count += 1

    X, W, dY = (cp_backend.asarray(rng.normal(size=s), "float32") for s in ((256, 128), (128, 64), (256, 64)))
    outs = [cp_backend.empty(s, "float32") for s in ((256, 64), (256, 128), (128, 64))]
    cp_backend.matmul(X, W, out=outs[0])  # warm up cuBLAS
    hook = CountAllocations()
    with hook:
        cp_backend.matmul(X, W, out=outs[0])
        cp_backend.matmul_nt(dY, W, out=outs[1])
        cp_backend.matmul_tn(X, dY, out=outs[2])
    assert hook.count == 0, "a transposed operand was copied"


@pytest.mark.usefixtures("on_gpu_only")
def test_tf32_switches_at_any_time(cp_backend, rng):
    x, w = rng.normal(size=(512, 512)), rng.normal(size=(512, 512))
    exact = x @ w
    X, W = cp_backend.asarray(x, "float32"), cp_backend.asarray(w, "float32")

    def error():
        return np.linalg.norm(cp_backend.to_numpy(cp_backend.matmul(X, W)) - exact) / np.linalg.norm(exact)

    strict = error()
    gn.set_matmul_precision("tf32")
    try:
        tf32 = error()
    finally:
        gn.set_matmul_precision("highest")
    assert strict < 1e-5 and 1e-5 < tf32 < 1e-2
    assert error() == pytest.approx(strict)


@pytest.mark.parametrize("rule,hyper,flag", [("sgd", (0.9, 0.0, 0.0), True), ("adam", (0.9, 0.999, 1e-8), True)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_updates_match_numpy(cp_backend, np_backend, rng, dtype, rule, hyper, flag):
    """One fused update over a flat buffer, clipping and loss scale included (float16: master weights)."""
    from gpunn.kernels.update_rules import RULES

    compute = reference(dtype)
    n = 3 * 1024
    p, g = rng.normal(size=n).astype(dtype), (rng.normal(size=n) * 4).astype(dtype)
    states = [rng.uniform(0.1, 1, size=n).astype(compute) for _ in RULES[rule].states]
    results = []
    for backend in (np_backend, cp_backend):
        P, G = backend.asarray(p.copy()), backend.asarray(g)
        S = [backend.asarray(state.copy()) for state in states]
        master = backend.asarray(p.astype(compute)) if dtype == "float16" else None
        scalars = backend.asarray([4.0, 4.0, 4.0, 0.0, 0.0], "float64")
        norm = backend.zeros((1,), compute)
        backend.global_norm(G, out=norm)
        backend.optimizer_update(RULES[rule], P, G, S, master, scalars, backend.asarray([0.1, 0.05], "float64"),
                                 norm, hyper, flag, 0.01, n // 2, 1.0, dtype == "float16", *whole_buffer(backend, n, 4.0))
        results.append([backend.to_numpy(a) for a in (P, *S, scalars, norm)])
    for expected, got in zip(*results):
        np.testing.assert_allclose(got.astype(float), expected.astype(float), rtol=tolerance(dtype)[0],
                                   atol=tolerance(dtype)[1])


@pytest.mark.parametrize("dtype", DTYPES)
def test_loss_heads(cp_backend, np_backend, rng, dtype):
    ref = reference(dtype)
    z, t = (rng.normal(size=(9, 4)) * 3).astype(dtype), rng.uniform(size=(9, 4)).astype(dtype)
    Z, T = cp_backend.asarray(z), cp_backend.asarray(t)
    assert float(cp_backend.bce_with_logits_loss(Z, T)) == pytest.approx(
        float(np_backend.bce_with_logits_loss(z.astype(ref), t.astype(ref))), rel=tolerance(dtype)[0] * 10)
    compare(cp_backend, cp_backend.bce_with_logits_grad(Z, T, 0.5),
            np_backend.bce_with_logits_grad(z.astype(ref), t.astype(ref), 0.5), dtype)
    labels = rng.integers(0, 4, size=9)
    lse = np.log(np.exp(z.astype(ref)).sum(axis=1))
    compare(cp_backend, cp_backend.softmax_cross_entropy_grad(Z, cp_backend.asarray(lse.astype(dtype)),
                                                              cp_backend.asarray(labels), 1 / 9),
            np_backend.softmax_cross_entropy_grad(z.astype(ref), lse, labels, 1 / 9), dtype)


def test_whole_fit_matches_numpy(rng):
    x, labels = rng.normal(size=(200, 12)), rng.integers(0, 4, size=200)
    results = {}
    for name in ("numpy", "cupy"):
        with gn.use_backend(name):
            model = gn.Sequential(gn.Dense(12, 32, dtype="float64", seed=1), gn.Tanh(),
                                  gn.Dense(32, 4, dtype="float64", seed=2))
            history = model.fit(x, labels, loss=gn.SoftmaxCrossEntropyLoss(),
                                optimizer=gn.SGD(lr=0.1, momentum=0.9), epochs=5, batch_size=16, seed=3, verbose=0)
            results[name] = (history["loss"], model.predict(x))
    np.testing.assert_allclose(results["cupy"][0], results["numpy"][0], rtol=1e-9)
    np.testing.assert_allclose(results["cupy"][1], results["numpy"][1], rtol=1e-9, atol=1e-12)


def test_no_new_memory_after_warm_up(cp_backend, rng):
    import cupy

    model = gn.Sequential(gn.Dense(64, 128, seed=1), gn.ReLU(), gn.Dense(128, 10, seed=2))
    loss, optimizer = gn.SoftmaxCrossEntropyLoss(), gn.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = cp_backend.asarray(rng.normal(size=(32, 64)), "float32")
    labels = cp_backend.asarray(rng.integers(0, 10, size=32))
    pool = cupy.get_default_memory_pool()
    used = []
    for _ in range(6):
        loss.forward(model.forward(x), labels)
        model.zero_grad()
        model.backward(loss.backward(), input_gradient=False)
        optimizer.step()
        cp_backend.synchronize()
        used.append(pool.used_bytes())
    assert len(set(used[2:])) == 1, f"pool used bytes changed across steps: {used}"


def test_mixing_host_and_device_arrays_is_a_clear_error(cp_backend):
    with pytest.raises(TypeError, match="NumPy array where the cupy backend needs a CuPy array"):
        cp_backend.matmul(np.ones((2, 2), np.float32), cp_backend.asarray(np.ones((2, 2)), "float32"))


def test_device_input_of_another_dtype_is_refused(cp_backend):
    model = gn.Sequential(gn.Dense(2, 1))
    with pytest.raises(TypeError, match="X has dtype float64 but the model holds float32"):
        model.forward(cp_backend.asarray(np.ones((3, 2)), "float64"))


def test_unwritable_kernel_cache_names_the_variable(monkeypatch, tmp_path):
    from gpunn.backends.cupy_backend import CupyBackend

    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    monkeypatch.setenv("CUPY_CACHE_DIR", str(blocked / "cache"))
    backend = CupyBackend()
    with pytest.raises(RuntimeError, match="CUPY_CACHE_DIR"):
        backend.bias_activation(backend.asarray(np.ones((2, 2)), "float32"), 0, "relu")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_graph_training_matches_eager_training(rng, dtype):
    """A recorded step replays the same maths: whole fits with and without graphs agree, through a
    smaller last batch (eager) and a learning-rate change (recorded again)."""
    x, labels = rng.normal(size=(70, 12)), rng.integers(0, 4, size=70)
    results = {}
    for graph in (False, True):
        with gn.use_backend("cupy"):
            model = gn.Sequential(gn.Dense(12, 32, dtype=dtype, seed=1), gn.Tanh(),
                                  gn.Dense(32, 4, dtype=dtype, seed=2))
            optimizer = gn.SGD(lr=0.1, momentum=0.9)

            def halve_rate(epoch, logs, optimizer=optimizer):
                optimizer.lr /= 2

            history = model.fit(x, labels, loss=gn.SoftmaxCrossEntropyLoss(), optimizer=optimizer, epochs=4,
                                batch_size=16, seed=3, verbose=0, callback=halve_rate, graph=graph)
            results[graph] = (history["loss"], model.predict(x))
    rtol = 1e-12 if dtype == "float64" else 1e-5
    np.testing.assert_allclose(results[True][0], results[False][0], rtol=rtol)
    np.testing.assert_allclose(results[True][1], results[False][1], rtol=rtol, atol=rtol)


def test_graph_replays_allocate_nothing(cp_backend, rng):
    import cupy

    model = gn.Sequential(gn.Dense(64, 128, seed=1), gn.ReLU(), gn.Dense(128, 10, seed=2))
    step = gn.TrainStep(model, gn.SoftmaxCrossEntropyLoss(), gn.SGD(lr=0.01, momentum=0.9), graph=True)
    x, t = step.prepare(rng.normal(size=(32, 64)), rng.integers(0, 10, size=32))
    pool = cupy.get_default_memory_pool()
    used = []
    for _ in range(6):
        step(x, t)
        cp_backend.synchronize()
        used.append(pool.used_bytes())
    assert step._recorded.graph is not None
    assert len(set(used[2:])) == 1, f"pool used bytes changed across replays: {used}"


def test_re_recording_reuses_one_pool_and_frees_it(cp_backend, rng):
    """A new momentum records again into the same private pool (no growth), and dropping the
    TrainStep frees the pool's cached blocks (CuPy 14.1+ keeps a dropped pool's blocks forever)."""
    import gc

    model = gn.Sequential(gn.Dense(64, 128, seed=1), gn.ReLU(), gn.Dense(128, 10, seed=2))
    optimizer = gn.SGD(lr=0.01, momentum=0.9)
    step = gn.TrainStep(model, gn.MSELoss(), optimizer, graph=True)
    x, t = step.prepare(rng.normal(size=(32, 64)), rng.normal(size=(32, 10)))
    step(x, t), step(x, t)  # eager, then recorded
    memory = step._recorded.graph._memory
    cp_backend.synchronize()
    recorded = memory.pool.total_bytes()
    assert recorded > 0
    for momentum in (0.8, 0.7, 0.6):
        optimizer.momentum = momentum
        step(x, t), step(x, t)  # recorded again, then replayed
        assert step._recorded.graph._memory is memory
    cp_backend.synchronize()
    assert memory.pool.total_bytes() == recorded, "re-recording grew the private pool"
    del step
    gc.collect()
    assert memory.pool.total_bytes() == memory.pool.used_bytes(), "the dropped graph's free blocks were kept"


def test_cli_trains_with_graphs(tmp_path, capsys):
    from gpunn.cli.main import main

    assert main(["train", "--backend", "cupy", "--graph", "--epochs", "5", "--quiet", "--out", str(tmp_path)]) == 0
    accuracy = float(capsys.readouterr().out.split("test accuracy:")[1].split()[0])
    assert accuracy > 0.9


# --- the layers of issue 12 -----------------------------------------------------------------
@pytest.mark.parametrize("dropout", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_saving_forward_and_dropout_backward(cp_backend, np_backend, rng, dtype, activation, dropout):
    """The fused forward with ``saved`` and dropout, and its backward: the same numbers and, for
    a seed and step, the same mask as NumPy."""
    from gpunn.backends.base import DropoutMask

    ref = reference(dtype)
    z, b, dy = (rng.normal(size=(37, 29)) * 3).astype(dtype), rng.normal(size=29).astype(dtype), \
        rng.normal(size=(37, 29)).astype(dtype)
    masks = [DropoutMask(987654321, DropoutMask.threshold_of(0.3), 1 / 0.7, backend.asarray(np.array([5], np.uint64)))
             if dropout else None for backend in (np_backend, cp_backend)]
    saved_ref = np.empty(z.shape, ref)
    y_ref = np_backend.bias_activation(z.astype(ref), b.astype(ref), activation, saved=saved_ref, dropout=masks[0])
    saved = cp_backend.empty(z.shape, dtype)
    y = cp_backend.bias_activation(cp_backend.asarray(z), cp_backend.asarray(b), activation, saved=saved,
                                   dropout=masks[1])
    pre = np.abs(z.astype(ref) + b.astype(ref)) + 1
    compare_cancelling(cp_backend, y, y_ref, pre * 2, dtype)
    compare(cp_backend, saved, saved_ref, dtype)
    # The dropped elements agree; where the reference is within rounding of 0 (GELU's far tail, float16
    # underflow) the kernel may round to 0 as well.
    visible = np.abs(y_ref) > tolerance(dtype)[1]
    np.testing.assert_array_equal((cp_backend.to_numpy(y) == 0)[visible], (y_ref == 0)[visible])
    plain = np_backend.bias_activation(z.astype(ref), b.astype(ref), activation) != 0
    assert not dropout or 0.2 < np.mean(y_ref[plain] == 0) < 0.4  # a mask that drops about 30 %, not all or none
    grad_ref = np_backend.activation_backward(dy.astype(ref), saved_ref.astype(dtype).astype(ref), activation,
                                              dropout=masks[0])
    grad = cp_backend.activation_backward(cp_backend.asarray(dy), saved, activation, dropout=masks[1])
    compare_cancelling(cp_backend, grad, grad_ref, pre * 2 * np.abs(dy.astype(ref)), dtype)


@pytest.mark.parametrize("layout", ["transposed", "1-d", "3-d", "strided out", "scalar bias"])
def test_group_kernels_take_any_layout(cp_backend, np_backend, rng, layout):
    """The fused kernels index flat raw arrays (one thread per dropout group): a transposed or 1-d
    or 3-d input, an ``out`` that is a strided view, and a scalar bias give NumPy's numbers and mask."""
    from gpunn.backends.base import DropoutMask

    z = rng.normal(size=(40, 30))
    if layout == "transposed":
        z = z.T
    elif layout == "1-d":
        z = z.reshape(-1)
    elif layout == "3-d":
        z = z.reshape(4, 10, 30)
    bias = 0.5 if layout == "scalar bias" else rng.normal(size=z.shape[-1])
    dy = rng.normal(size=z.shape)
    masks = [DropoutMask(4321, DropoutMask.threshold_of(0.4), 1 / 0.6, backend.asarray(np.array([9], np.uint64)), 2)
             for backend in (np_backend, cp_backend)]
    expected = np_backend.bias_activation(z, bias, "tanh", dropout=masks[0])
    cp_bias = bias if layout == "scalar bias" else cp_backend.asarray(bias)
    if layout == "strided out":
        out = cp_backend.empty((40, 60), "float64")[:, ::2]
        got = cp_backend.bias_activation(cp_backend.asarray(z), cp_bias, "tanh", out=out, dropout=masks[1])
        assert got is out
    else:
        got = cp_backend.bias_activation(cp_backend.asarray(z), cp_bias, "tanh", dropout=masks[1])
    np.testing.assert_allclose(cp_backend.to_numpy(got), expected, rtol=1e-13, atol=1e-15)
    saved = np.tanh(z + bias)
    grad = cp_backend.activation_backward(cp_backend.asarray(dy), cp_backend.asarray(saved), "tanh", dropout=masks[1])
    np.testing.assert_allclose(cp_backend.to_numpy(grad), np_backend.activation_backward(dy, saved, "tanh",
                                                                                         dropout=masks[0]),
                               rtol=1e-13, atol=1e-15)


#: (shape, the shard's first row, {buffer: elements it starts off alignment}, a scalar bias) and the
#: vector width the forward and the backward must run with (4: "_quads", 2: "_pairs", 1: a thread
#: per dropout group).
VECTOR_CASES = {"columns a multiple of 4": ((37, 36), 3, {}, False, 4, 4),
                "even columns": ((37, 30), 3, {}, False, 2, 2),
                "even columns, a count of 4": ((38, 30), 2, {}, False, 2, 4),
                "a count of 2 mod 4, a start of 0 mod 4": ((3, 6), 2, {}, False, 2, 2),
                "odd columns, even count": ((36, 29), 0, {}, False, 1, 4),
                "odd shard start": ((37, 29), 1, {}, False, 1, 1),
                "even count, odd start": ((2, 3), 1, {}, False, 1, 1),
                "a scalar bias": ((37, 36), 1, {}, True, 4, 4),
                "a scalar bias, odd columns": ((5, 7), 0, {}, True, 1, 1),
                "input two elements off": ((37, 36), 0, {"z": 2}, False, 2, 4),
                "input one element off": ((37, 36), 0, {"z": 1}, False, 1, 4),
                "bias one element off": ((37, 36), 0, {"bias": 1}, False, 1, 4),
                "out two elements off": ((37, 36), 0, {"out": 2}, False, 2, 4),
                "saved one element off": ((37, 36), 0, {"saved": 1}, False, 1, 1),
                "dy two elements off": ((37, 36), 0, {"dy": 2}, False, 4, 2)}


@pytest.mark.parametrize("case,dtype", [(case, dtype) for case in VECTOR_CASES for dtype in ("float16", "float32")]
                         + [("columns a multiple of 4", "float64"), ("a scalar bias", "float64")])
def test_vector_kernels_run_where_aligned_and_draw_the_same_mask(cp_backend, np_backend, rng, monkeypatch, case,
                                                                  dtype):
    """The fused kernels' vector builds (two or four neighbouring dropout groups per thread) run
    exactly where no vector can straddle a row, the shard's edge or its alignment, whichever buffer
    is off (in float16 and float32: float64 keeps a thread per group), and give NumPy's numbers and
    mask there and in the fallbacks alike. The stand-in stops on a misaligned vector access, as a
    GPU faults."""
    from gpunn.backends.base import DropoutMask
    from gpunn.backends.cupy_kernels import VECTOR_WIDTHS

    shape, row_offset, offsets, scalar_bias, forward, backward = VECTOR_CASES[case]
    launched = []
    build = cp_backend._kernel
    monkeypatch.setattr(cp_backend, "_kernel", lambda op, *rest: launched.append(op) or build(op, *rest))

    def placed(values, name):
        """``values`` on the device, starting ``offsets[name]`` elements into a larger buffer."""
        offset = offsets.get(name, 0)
        flat = np.concatenate([np.zeros(offset, dtype), np.asarray(values, dtype).reshape(-1)])
        return cp_backend.asarray(flat)[offset:].reshape(np.shape(values))

    ref = reference(dtype)
    z, dy = (rng.normal(size=shape) * 2).astype(dtype), rng.normal(size=shape).astype(dtype)
    b = np.asarray(0.25, dtype) if scalar_bias else rng.normal(size=shape[1]).astype(dtype)
    masks = [DropoutMask(2024, DropoutMask.threshold_of(0.5), 2.0, backend.asarray(np.array([7], np.uint64)),
                         row_offset) for backend in (np_backend, cp_backend)]
    saved, out = placed(np.zeros(shape), "saved"), placed(np.zeros(shape), "out")
    y = cp_backend.bias_activation(placed(z, "z"), 0.25 if scalar_bias else placed(b, "bias"), "gelu", out=out,
                                   saved=saved, dropout=masks[1])
    assert y is out
    saved_ref = np.empty(shape, ref)
    y_ref = np_backend.bias_activation(z.astype(ref), b.astype(ref), "gelu", saved=saved_ref, dropout=masks[0])
    compare_cancelling(cp_backend, y, y_ref, np.abs(z.astype(ref) + b.astype(ref)) + 1, dtype)
    visible = np.abs(y_ref) > tolerance(dtype)[1]
    np.testing.assert_array_equal((cp_backend.to_numpy(y) == 0)[visible], (y_ref == 0)[visible])
    assert z.size < 100 or 0.3 < np.mean(y_ref == 0) < 0.7  # a mask that drops about half, not all or none
    grad = cp_backend.activation_backward(placed(dy, "dy"), saved, "gelu", dropout=masks[1])
    grad_ref = np_backend.activation_backward(dy.astype(ref), saved_ref.astype(dtype).astype(ref), "gelu",
                                              dropout=masks[0])
    compare_cancelling(cp_backend, grad, grad_ref, (np.abs(z.astype(ref)) + 2) * np.abs(dy.astype(ref)), dtype)
    if dtype == "float64":
        forward = backward = 1
    assert launched == ["bias_activation_saving" + VECTOR_WIDTHS.get(forward, ""),
                        "activation_backward" + VECTOR_WIDTHS.get(backward, "")]


def test_a_dropout_mask_threshold_outside_sixteen_bits_is_refused():
    """The old 64-bit threshold (⌊rate·2^64⌋) would drop every element of the 16-bit mask, and a
    threshold of 0 (drop nothing) is no mask at all: both are refused where the mask is made."""
    from gpunn.backends.base import DropoutMask

    for threshold in (int(0.3 * 2 ** 64), 1 << 16, 0, -1):
        with pytest.raises(ValueError, match="threshold must lie in"):
            DropoutMask(1, threshold, 2.0, np.zeros(1, np.uint64))
    assert DropoutMask(1, DropoutMask.threshold_of(0.3), 1 / 0.7, np.zeros(1, np.uint64)).threshold == 19660


def test_group_kernels_refuse_arrays_they_would_index_past_their_end(cp_backend):
    """Raw flat indexing has no broadcasting check: a wrong-shaped out, saved or bias is refused
    before the launch (CuPy's broadcasting refused it before the kernels went raw)."""
    z, small = cp_backend.asarray(np.ones((4, 6))), cp_backend.asarray(np.ones((3, 6)))
    bias = cp_backend.asarray(np.ones(6))
    with pytest.raises(ValueError, match="out has shape"):
        cp_backend.bias_activation(z, bias, "relu", out=small)
    with pytest.raises(ValueError, match="saved has shape"):
        cp_backend.bias_activation(z, bias, "relu", saved=small)
    with pytest.raises(ValueError, match="bias has shape"):
        cp_backend.bias_activation(z, cp_backend.asarray(np.ones(4)), "relu")
    with pytest.raises(ValueError, match="saved has shape"):
        cp_backend.activation_backward(z, small, "relu")


@pytest.mark.parametrize("shape", [(1, 7), (333, 129), (64, 1000)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_layer_norm_ops(cp_backend, np_backend, rng, shape, dtype):
    ref = reference(dtype)
    x = (rng.normal(size=shape) * 3 + 1).astype(dtype)
    gain, bias, dy = (rng.normal(size=s).astype(dtype) for s in (shape[1], shape[1], shape))
    stats = "float32" if dtype == "float16" else dtype
    mean, rstd = np.empty(shape[0], ref), np.empty(shape[0], ref)
    y_ref = np_backend.layer_norm_forward(x.astype(ref), gain.astype(ref), bias.astype(ref), 1e-5,
                                          np.empty(shape, ref), mean, rstd)
    X, G, B, dY = (cp_backend.asarray(a) for a in (x, gain, bias, dy))
    Mean, Rstd = cp_backend.empty((shape[0],), stats), cp_backend.empty((shape[0],), stats)
    terms = np.abs((x.astype(ref) - mean[:, None]) * rstd[:, None] * gain.astype(ref)) + np.abs(bias.astype(ref))
    compare_cancelling(cp_backend, cp_backend.layer_norm_forward(X, G, B, 1e-5, cp_backend.empty(shape, dtype), Mean,
                                                                 Rstd), y_ref, terms, dtype)
    compare(cp_backend, Rstd, rstd, stats)
    dx_ref = np_backend.layer_norm_backward(dy.astype(ref), x.astype(ref), gain.astype(ref), mean, rstd)
    # dx = rstd·(g − mean(g) − x̂·mean(g·x̂)) cancels: its error scales with the terms, not the result.
    terms = np.abs(dy.astype(ref) * gain.astype(ref)).max() * rstd.max() * np.sqrt(shape[1])
    compare_cancelling(cp_backend, cp_backend.layer_norm_backward(dY, X, G, Mean, Rstd), dx_ref, terms, dtype)
    scale = np.sqrt(shape[0]) if dtype == "float16" else 1.0
    rtol, atol = tolerance(dtype)
    np.testing.assert_allclose(cp_backend.to_numpy(cp_backend.layer_norm_gain_gradient(dY, X, Mean, Rstd)).astype(float),
                               np_backend.layer_norm_gain_gradient(dy.astype(ref), x.astype(ref), mean, rstd),
                               rtol=rtol * scale * 10, atol=atol * scale * 10)


@pytest.mark.parametrize("columns", [513, 514])
def test_row_kernels_stride_down_the_rows_and_refuse_wrong_shapes(cp_backend, np_backend, rng, columns):
    """LayerNorm's and the softmax gradient's kernels (cupy_kernels._rows_kernel) keep one column
    (or, with even columns, two) per thread and step down the rows: 600 × 513 elements exceed the
    capped grid (262,144 threads), so threads take several rows; a transposed input and a strided
    ``out`` go through contiguous copies; a gain or a row statistic of the wrong length is refused,
    not read past its end."""
    shape = (600, columns)
    x, dy = rng.normal(size=shape), rng.normal(size=shape)
    gain, bias = rng.normal(size=shape[1]), rng.normal(size=shape[1])
    mean, rstd = np.empty(shape[0]), np.empty(shape[0])
    y_ref = np_backend.layer_norm_forward(x, gain, bias, 1e-5, np.empty(shape), mean, rstd)
    X, G, B = cp_backend.asarray(np.ascontiguousarray(x.T)).T, cp_backend.asarray(gain), cp_backend.asarray(bias)
    Mean, Rstd = cp_backend.empty((shape[0],), "float64"), cp_backend.empty((shape[0],), "float64")
    out = cp_backend.empty((shape[1], shape[0]), "float64").T  # not C-contiguous
    y = cp_backend.layer_norm_forward(X, G, B, 1e-5, out, Mean, Rstd)
    assert y is out
    np.testing.assert_allclose(cp_backend.to_numpy(y), y_ref, rtol=1e-12, atol=1e-12)
    dx = cp_backend.layer_norm_backward(cp_backend.asarray(dy), X, G, Mean, Rstd)
    np.testing.assert_allclose(cp_backend.to_numpy(dx), np_backend.layer_norm_backward(dy, x, gain, mean, rstd),
                               rtol=1e-10, atol=1e-10)
    labels = rng.integers(0, shape[1], size=shape[0])
    lse = np.log(np.exp(x).sum(axis=1))
    grad = cp_backend.softmax_cross_entropy_grad(X, cp_backend.asarray(lse), cp_backend.asarray(labels), 1 / 600)
    expected = np_backend.softmax_cross_entropy_grad(x, lse, labels, 1 / 600)
    np.testing.assert_allclose(cp_backend.to_numpy(grad), expected, rtol=1e-12, atol=1e-15)
    assert (("layer_norm_forward", "pairs", "float64") in cp_backend._kernels) == (columns % 2 == 0)
    # A buffer one element off the pairs' alignment falls back to one column per thread.
    unaligned = cp_backend.asarray(np.concatenate([[0.0], dy.reshape(-1)]))[1:].reshape(shape)
    np.testing.assert_allclose(cp_backend.to_numpy(cp_backend.layer_norm_backward(unaligned, X, G, Mean, Rstd)),
                               np_backend.layer_norm_backward(dy, x, gain, mean, rstd), rtol=1e-10, atol=1e-10)
    assert ("layer_norm_backward", "", "float64") in cp_backend._kernels
    with pytest.raises(ValueError, match="argument 3 has shape"):
        cp_backend.layer_norm_forward(X, G[:-1], B, 1e-5, out, Mean, Rstd)
    with pytest.raises(ValueError):  # the row reductions refuse it first
        cp_backend.layer_norm_backward(cp_backend.asarray(dy), X, G, Mean[:-1], Rstd)
    with pytest.raises(ValueError, match="argument 2 has shape"):
        cp_backend.softmax_cross_entropy_grad(X, cp_backend.asarray(lse), cp_backend.asarray(labels[:-1]), 1.0)
    with pytest.raises(ValueError, match="argument 6 has shape"):  # the gain, after the row statistics
        cp_backend._rows_launch("layer_norm_backward", X, (X, X, Mean, Rstd, Mean, Rstd, G[:-1]), "aarrrrc", None)


@pytest.mark.parametrize("shape", [(), (7,), (3, 4, 6), (5, 3)])
def test_loss_gradients_walk_rows_of_the_last_axis(cp_backend, np_backend, rng, shape):
    """The MSE and BCE gradient kernels run over rows of the last axis (cupy_kernels._rows_kernel):
    any number of dimensions, a strided ``out`` (written through a contiguous buffer), a target
    that broadcasts, and the device's loss scale read once per thread."""
    y, t = rng.normal(size=shape), rng.normal(size=shape[-1:] if shape else ())
    loss_scale = cp_backend.asarray(np.array([8.0]))
    for name in ("mse_grad", "bce_with_logits_grad"):
        # (the NumPy backend's in-place passes want arrays: a 0-d case is computed as one element)
        expected = getattr(np_backend, name)(np.atleast_1d(y), np.atleast_1d(np.broadcast_to(t, shape)).copy(), 0.25,
                                             np.array([8.0])).reshape(shape)
        out = cp_backend.empty(shape[::-1], "float64").T if len(shape) > 1 else None
        got = getattr(cp_backend, name)(cp_backend.asarray(y), cp_backend.asarray(t), 0.25, loss_scale, out=out)
        assert out is None or got is out
        np.testing.assert_allclose(cp_backend.to_numpy(got), expected, rtol=1e-13, atol=1e-15)


def test_modern_fit_matches_numpy_and_graphs_replay_dropout(rng):
    """A whole fit with GELU, LayerNorm, Residual and Dropout agrees across backends (same seed,
    same masks), also when each step replays a CUDA graph (the dropout step advances on the device)."""
    x, labels = rng.normal(size=(64, 12)), rng.integers(0, 4, size=64)
    results = {}
    for name, graph in (("numpy", False), ("cupy", False), ("cupy", True)):
        with gn.use_backend(name):
            model = gn.Sequential(gn.Dense(12, 16, dtype="float64", seed=1), gn.GELU(), gn.Dropout(0.2, seed=7),
                                  gn.Residual(gn.LayerNorm(16, dtype="float64"), gn.Dense(16, 16, dtype="float64", seed=2),
                                              gn.SiLU(), gn.Dropout(0.1, seed=8)),
                                  gn.Dense(16, 4, dtype="float64", seed=3))
            history = model.fit(x, labels, loss=gn.SoftmaxCrossEntropyLoss(), optimizer=gn.SGD(lr=0.1, momentum=0.9),
                                epochs=3, batch_size=16, seed=3, verbose=0, graph=graph)
            results[(name, graph)] = (history["loss"], model.predict(x), model.layers[2].step)
    for key in (("cupy", False), ("cupy", True)):
        np.testing.assert_allclose(results[key][0], results[("numpy", False)][0], rtol=1e-9)
        np.testing.assert_allclose(results[key][1], results[("numpy", False)][1], rtol=1e-9, atol=1e-12)
        assert results[key][2] == 12
