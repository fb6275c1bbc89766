"""Sequential, fit, SGD and predict: behaviour beyond the maths of single ops."""

import re
import sys

import numpy as np
import pytest

import gpunn as gn


@pytest.mark.parametrize("activation", [gn.Sigmoid, gn.Tanh, gn.ReLU])
def test_fused_dense_activation_equals_unfused(backend, rng, activation):
    dense = gn.Dense(5, 4, dtype="float64", seed=1)
    dense.bias.value[...] = backend.asarray(rng.normal(size=4), "float64")
    fused = gn.Sequential(dense, activation())
    x, dy = rng.normal(size=(3, 5)), rng.normal(size=(3, 4))
    y_fused = backend.to_numpy(fused.forward(x)).copy()
    fused.zero_grad()
    dx_fused = backend.to_numpy(fused.backward(backend.asarray(dy, "float64"))).copy()
    dw_fused = backend.to_numpy(dense.dW).copy()

    separate = activation()
    separate.backend = backend
    y = separate.forward(dense.forward(backend.asarray(x, "float64")))
    dense.weight.grad_valid = dense.bias.grad_valid = False
    dx = dense.backward(separate.backward(backend.asarray(dy, "float64")))
    np.testing.assert_allclose(y_fused, backend.to_numpy(y), rtol=1e-14)
    np.testing.assert_allclose(dx_fused, backend.to_numpy(dx), rtol=1e-14)
    np.testing.assert_allclose(dw_fused, backend.to_numpy(dense.dW), rtol=1e-14)


def test_gradients_accumulate_until_zero_grad(backend, rng):
    model = gn.Sequential(gn.Dense(3, 2, dtype="float64", seed=2))
    loss, x, t = gn.MSELoss(), rng.normal(size=(4, 3)), rng.normal(size=(4, 2))
    loss(model.forward(x), t)
    model.zero_grad()
    model.backward(loss.backward())
    once = backend.to_numpy(model.layers[0].dW).copy()
    loss(model.forward(x), t)
    model.backward(loss.backward())
    np.testing.assert_allclose(backend.to_numpy(model.layers[0].dW), 2 * once)
    model.zero_grad()
    loss(model.forward(x), t)
    model.backward(loss.backward())
    np.testing.assert_allclose(backend.to_numpy(model.layers[0].dW), once)


def test_backward_does_not_update_and_sgd_does(backend, rng):
    model = gn.Sequential(gn.Dense(3, 2, dtype="float64", seed=3), gn.Tanh())
    before = backend.to_numpy(model.layers[0].W).copy()
    loss = gn.MSELoss()
    loss(model.forward(rng.normal(size=(4, 3))), rng.normal(size=(4, 2)))
    model.backward(loss.backward())
    np.testing.assert_array_equal(backend.to_numpy(model.layers[0].W), before)
    gradient = backend.to_numpy(model.layers[0].dW).copy()
    gn.SGD(model.parameters(), lr=0.5).step()
    np.testing.assert_allclose(backend.to_numpy(model.layers[0].W), before - 0.5 * gradient)


def test_momentum_follows_the_velocity_formula(backend, rng):
    model = gn.Sequential(gn.Dense(2, 1, dtype="float64", seed=4))
    optimizer = gn.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss, w, velocity = gn.MSELoss(), backend.to_numpy(model.layers[0].W).copy(), 0.0
    for _ in range(3):
        x, t = rng.normal(size=(5, 2)), rng.normal(size=(5, 1))
        loss(model.forward(x), t)
        model.zero_grad()
        model.backward(loss.backward())
        gradient = backend.to_numpy(model.layers[0].dW).copy()
        optimizer.step()
        velocity = 0.9 * velocity + gradient
        w = w - 0.1 * velocity
    np.testing.assert_allclose(backend.to_numpy(model.layers[0].W), w, rtol=1e-12)


def make_model(seed=0, dtype="float64"):
    return gn.Sequential(gn.Dense(4, 8, dtype=dtype, seed=seed), gn.Tanh(),
                         gn.Dense(8, 3, dtype=dtype, seed=seed + 1))


def test_fit_handles_a_last_partial_batch_and_records_history(backend, rng):
    x, labels = rng.normal(size=(10, 4)), rng.integers(0, 3, size=10)
    model = make_model()
    seen = []
    original = model._forward
    model._forward = lambda batch: seen.append(batch.shape[0]) or original(batch)
    history = model.fit(x, labels, loss=gn.SoftmaxCrossEntropyLoss(), optimizer=gn.SGD(lr=0.1),
                        epochs=3, batch_size=4, seed=0, verbose=0)
    assert seen == [4, 4, 2] * 3
    assert len(history["loss"]) == 3 and all(np.isfinite(history["loss"]))


def test_fit_loss_is_the_mean_over_the_epoch(backend, rng):
    x, t = rng.normal(size=(6, 4)), rng.normal(size=(6, 3))
    model = make_model()
    w = [backend.to_numpy(p.value).copy() for p in model.parameters()]
    history = model.fit(x, t, loss=gn.MSELoss(), optimizer=gn.SGD(lr=1e-9), epochs=1,
                        batch_size=6, shuffle=False, verbose=0)
    hidden = np.tanh(x @ w[0] + w[1])
    assert history["loss"][0] == pytest.approx(np.mean((hidden @ w[2] + w[3] - t) ** 2), rel=1e-9)


def test_fit_is_reproducible_with_a_seed(backend, rng):
    x, labels = rng.normal(size=(20, 4)), rng.integers(0, 3, size=20)
    runs = []
    for _ in range(2):
        model = make_model(seed=5)
        history = model.fit(x, labels, loss=gn.SoftmaxCrossEntropyLoss(), optimizer=gn.SGD(lr=0.1, momentum=0.5),
                            epochs=4, batch_size=3, seed=9, verbose=0)
        runs.append((history["loss"], model.predict(x)))
    assert runs[0][0] == runs[1][0]
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    other = make_model(seed=5).fit(x, labels, loss=gn.SoftmaxCrossEntropyLoss(), optimizer=gn.SGD(lr=0.1),
                                   epochs=4, batch_size=3, seed=10, verbose=0)
    assert other["loss"] != runs[0][0]


def test_fit_callback_adds_to_history(backend, rng):
    model = make_model()
    history = model.fit(rng.normal(size=(8, 4)), rng.integers(0, 3, size=8), loss=gn.SoftmaxCrossEntropyLoss(),
                        optimizer=gn.SGD(lr=0.1), epochs=2, verbose=0,
                        callback=lambda epoch, logs: logs.update(epoch_seen=epoch))
    assert history["epoch_seen"] == [0, 1]


def test_predict_returns_an_independent_host_array(backend, rng):
    model = make_model(dtype="float32")
    x = rng.normal(size=(5, 4))
    first = model.predict(x)
    assert isinstance(first, np.ndarray) and first.dtype == np.float32
    model.predict(rng.normal(size=(5, 4)))
    np.testing.assert_array_equal(first, model.predict(x))
    np.testing.assert_allclose(model.predict(x, batch_size=2), first, rtol=1e-5, atol=1e-6)


def test_float32_is_the_default_and_float64_is_kept(backend):
    assert gn.Dense(2, 2).W.dtype == np.float32
    assert gn.Sequential(gn.Dense(2, 2, dtype="float64")).dtype == np.float64


def test_he_and_xavier_initialisation_scales(backend):
    xavier = backend.to_numpy(gn.Dense(400, 600, seed=0).W)
    he = backend.to_numpy(gn.Dense(400, 600, init="he", seed=0).W)
    assert np.abs(xavier).max() <= np.sqrt(6 / 1000) + 1e-6
    assert he.std() == pytest.approx(np.sqrt(2 / 400), rel=0.02)
    assert backend.to_numpy(gn.Dense(3, 2).b).tolist() == [0, 0]


@pytest.mark.parametrize("verbose,on_terminal,shown", [(1, True, "bar"), (0, True, None), (0, False, None),
                                                       (1, False, "lines"), (2, True, "lines")])
def test_progress_bar_on_a_terminal_lines_elsewhere(backend, rng, capsys, monkeypatch, verbose, on_terminal, shown):
    pytest.importorskip("tqdm")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: on_terminal, raising=False)
    make_model().fit(rng.normal(size=(8, 4)), rng.integers(0, 3, size=8), loss=gn.SoftmaxCrossEntropyLoss(),
                     optimizer=gn.SGD(lr=0.1), epochs=2, verbose=verbose)
    err = capsys.readouterr().err
    assert ("2/2 [" in err) == (shown == "bar")  # tqdm's counter and timing
    assert (len(re.findall(r"^epoch \d/2 loss=\d", err, re.M)) == 2) == (shown == "lines")


def test_train_step_equals_the_manual_step(backend, rng):
    x, labels = rng.normal(size=(6, 4)), rng.integers(0, 3, size=6)
    manual, stepped = make_model(seed=2), make_model(seed=2)
    loss = gn.SoftmaxCrossEntropyLoss()
    value = loss(manual.forward(x), labels)
    manual.zero_grad()
    manual.backward(loss.backward())
    gn.SGD(manual.parameters(), lr=0.1).step()
    step = gn.TrainStep(stepped, gn.SoftmaxCrossEntropyLoss(), gn.SGD(lr=0.1))
    device_x, device_t = step.prepare(x, labels)
    assert float(step(device_x, device_t)) == pytest.approx(value)
    for a, b in zip(manual.parameters(), stepped.parameters()):
        np.testing.assert_allclose(backend.to_numpy(a.value), backend.to_numpy(b.value), rtol=1e-12)
    with pytest.raises(ValueError, match="X has 6 rows but T has 5"):
        step.prepare(x, labels[:5])


def test_progress_bar_in_a_notebook(monkeypatch):
    """In Jupyter stderr is no terminal, yet tqdm.auto draws there: verbose=1 shows the bar."""
    pytest.importorskip("tqdm")

    class ZMQInteractiveShell:  # what get_ipython() returns inside a Jupyter kernel
        pass

    fake_ipython = type(sys)("IPython")
    fake_ipython.get_ipython = ZMQInteractiveShell
    monkeypatch.setitem(sys.modules, "IPython", fake_ipython)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    from gpunn.train import callbacks

    assert callbacks.in_notebook()
    progress = callbacks.Progress(2, verbose=1)
    try:
        assert progress.bar is not None
    finally:
        progress.close()


# --- ownership, copies and what model(X) returns (issue 22) ------------------------------------
@pytest.mark.parametrize("make", [gn.ReLU, lambda: gn.Dropout(0.5, seed=1), gn.Tanh],
                         ids=["ReLU", "Dropout", "Tanh"])
def test_a_layer_without_parameters_belongs_to_one_model(backend, make):
    """Its saved forward state serves one model: the first model's gradients went wrong after the
    second's forward."""
    shared = make()
    gn.Sequential(gn.Dense(3, 4, seed=0), shared, gn.Dense(4, 2, seed=1))
    with pytest.raises(ValueError, match=r"at position 1 already belongs to another model"):
        gn.Sequential(gn.Dense(3, 4, seed=2), shared)
    with pytest.raises(ValueError, match=r"at position 0.0 already belongs to another model"):
        gn.Sequential(gn.Residual(shared), gn.Dense(4, 2, seed=3))
    loose = make()
    with pytest.raises(ValueError, match="positions 0 and 1"):  # a refused model claims nothing
        gn.Sequential(loose, loose)
    gn.Sequential(gn.Dense(3, 3, seed=4), loose)


def test_deepcopies_of_a_block_stack_into_one_model_and_train_apart(backend, rng):
    """copy.deepcopy copied the backend, so stacking copied blocks (the torch idiom) failed."""
    import copy

    block = gn.Residual(gn.Dense(4, 4, dtype="float64", seed=1), gn.Tanh(), gn.Dropout(0.2, seed=5))
    copies = [copy.deepcopy(block) for _ in range(3)]
    model = gn.Sequential(gn.Dense(3, 4, dtype="float64", seed=0), *copies)
    assert all(inner.backend is model.backend for inner in model.all_layers() if inner.backend is not None)
    for made in copies:
        np.testing.assert_array_equal(backend.to_numpy(made.layers[0].W), backend.to_numpy(block.layers[0].W))
    model.fit(rng.normal(size=(8, 3)), rng.normal(size=(8, 4)), loss=gn.MSELoss(), optimizer=gn.SGD(lr=0.1),
              epochs=1, verbose=0)
    weights = [backend.to_numpy(made.layers[0].W).copy() for made in copies]
    assert not np.array_equal(weights[0], backend.to_numpy(block.layers[0].W))  # trained: the original is not
    assert not np.array_equal(weights[0], weights[1])  # three blocks, three sets of weights
    twin = copy.deepcopy(model.layers[1])  # a copy of a layer in a model is in no model
    gn.Sequential(twin)


def test_model_call_returns_an_array_the_user_can_keep_and_forward_the_buffer(backend, rng):
    """``a = model(X1); b = model(X2)`` gave ``a is b``: a changed under the user."""
    model = gn.Sequential(gn.Dense(3, 2, dtype="float64", seed=0), gn.Tanh())
    x1, x2 = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    a = model(x1)
    kept = backend.to_numpy(a).copy()
    b = model(x2)
    assert a is not b
    np.testing.assert_array_equal(backend.to_numpy(a), kept)
    np.testing.assert_array_equal(backend.to_numpy(b), backend.to_numpy(model.forward(x2)))
    assert model.forward(x1) is model.forward(x2)  # the zero-allocation path reuses its buffer
