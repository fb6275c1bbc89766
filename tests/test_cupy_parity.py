"""CuPy against NumPy: every op, many shapes and dtypes, a whole fit, memory behaviour.

On a GPU (``benchmarks/gpu_check.sh``) the real CuPy runs; elsewhere, as on CI, the CPU stand-in
(gpunn/testing/cupy_standin) runs the CuPy backend's code instead. The tests of what only a GPU
can show (memory pools, TF32, allocation hooks, the largest shapes) skip there with the reason.
"""

import numpy as np
import pytest

import gpunn as gn
from gpunn.backends import resolve_backend
from gpunn.backends.base import ACTIVATIONS

from gpunn.testing import cupy_standin

from conftest import tolerance

ON_GPU = gn.cupy_unavailable_reason() is None
#: What the stand-in cannot show (memory pools, allocation hooks, TF32) or has no time for (4096³).
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
        pytest.skip("needs a GPU: the CPU stand-in has no memory pool, allocation hook or TF32")


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
def test_matmuls(cp_backend, np_backend, rng, shape, dtype):
    n, k, m = shape
    x, w, dy = (rng.normal(size=s).astype(dtype) for s in ((n, k), (k, m), (n, m)))
    ref = reference(dtype)
    X, W, dY = (cp_backend.asarray(a) for a in (x, w, dy))
    scale = np.sqrt(k) if dtype == "float16" else 1.0  # float16 rounding grows with the sum length
    rtol, atol = tolerance(dtype)
    for got, expected in ((cp_backend.matmul(X, W), x.astype(ref) @ w.astype(ref)),
                          (cp_backend.matmul_nt(dY, W), dy.astype(ref) @ w.astype(ref).T),
                          (cp_backend.matmul_tn(X, dY), x.astype(ref).T @ dy.astype(ref))):
        np.testing.assert_allclose(cp_backend.to_numpy(got).astype(float), expected, rtol=rtol * scale * 10,
                                   atol=atol * scale * max(1.0, np.sqrt(k)))


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


@pytest.mark.parametrize("dtype", DTYPES)
def test_sgd_and_loss_heads(cp_backend, np_backend, rng, dtype):
    ref = reference(dtype)
    p, g, v = (rng.normal(size=(17, 5)).astype(dtype) for _ in range(3))
    P, G, V = (cp_backend.asarray(a.copy()) for a in (p, g, v))
    p_ref, v_ref = p.astype(ref), v.astype(ref)
    np_backend.sgd_update(p_ref, g.astype(ref), v_ref, 0.1, 0.9)
    cp_backend.sgd_update(P, G, V, 0.1, 0.9)
    compare(cp_backend, P, p_ref, dtype)
    compare(cp_backend, V, v_ref, dtype)
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


@pytest.mark.usefixtures("on_gpu_only")
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


@pytest.mark.usefixtures("on_gpu_only")
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


def test_cli_trains_with_graphs(tmp_path, capsys):
    from gpunn.cli import main

    assert main(["train", "--backend", "cupy", "--graph", "--epochs", "5", "--quiet", "--out", str(tmp_path)]) == 0
    accuracy = float(capsys.readouterr().out.split("test accuracy:")[1].split()[0])
    assert accuracy > 0.9
