"""Flat buffers, optimizer binding and state, mixed precision, validation, metrics, early
stopping and exact resume: the training toolkit as a user drives it."""

import numpy as np
import pytest

import gpunn as gn
from support.models import mlp


def classification(rng, rows=90, features=6, classes=3):
    x = rng.normal(size=(rows, features))
    return x, (x[:, 0] + x[:, 1] > 0).astype(int) + (x[:, 2] > 1).astype(int)


# --- flat buffers ---------------------------------------------------------------------------
def test_parameters_are_views_of_one_flat_buffer(backend):
    model = mlp(backend)
    flat = model.flat
    assert flat.size == sum(p.size for p in model.parameters())
    model.layers[0].W[0, 0] = 123.0  # writing into a parameter writes into the flat buffer
    assert 123.0 in backend.to_numpy(flat.values)
    model.layers[2].bias.value = np.full(3, 7.0)  # assignment copies into the same storage
    assert backend.to_numpy(flat.values).tolist().count(7.0) == 3
    assert model.layers[2].b is not None and backend.to_numpy(model.layers[2].b).tolist() == [7.0] * 3
    with pytest.raises(ValueError, match=r"cannot assign an array of shape \(4,\) to a parameter of shape \(3,\)"):
        model.layers[2].bias.value = np.zeros(4)
    weights_first = flat.offset(model.layers[2].weight) < flat.offset(model.layers[0].bias)
    assert weights_first and flat.decay_end == 6 * 12 + 12 * 3


def test_a_layer_cannot_join_two_models(backend):
    dense = gn.Dense(2, 2)
    gn.Sequential(dense)
    with pytest.raises(ValueError, match="already belongs to another model"):
        gn.Sequential(dense)


def test_one_optimizer_per_model(backend, rng):
    first, second = mlp(backend, seed=1), mlp(backend, seed=2)
    optimizer = gn.Adam()
    x, labels = classification(rng)
    first.fit(x, labels, loss=gn.SoftmaxCrossEntropyLoss(), optimizer=optimizer, verbose=0)
    with pytest.raises(ValueError, match="bound to the parameters of another model"):
        second.fit(x, labels, loss=gn.SoftmaxCrossEntropyLoss(), optimizer=optimizer, verbose=0)
    with pytest.raises(ValueError, match="belongs to no model"):
        gn.SGD(gn.Dense(2, 2).parameters())
    with pytest.raises(ValueError, match="different models"):
        gn.SGD(first.parameters() + second.parameters())


def test_a_subset_of_parameters_trains_alone(backend, rng):
    model = mlp(backend, seed=3)
    frozen = backend.to_numpy(model.layers[0].W).copy()
    optimizer = gn.Adam(model.layers[2].parameters(), lr=0.05, weight_decay=0.1)
    x, labels = classification(rng)
    model.fit(x, labels, loss=gn.SoftmaxCrossEntropyLoss(), optimizer=optimizer, epochs=2, verbose=0)
    np.testing.assert_array_equal(backend.to_numpy(model.layers[0].W), frozen)
    assert not np.allclose(backend.to_numpy(model.layers[2].W), backend.to_numpy(mlp(backend, seed=3).layers[2].W))


def test_bad_hyperparameters_are_refused():
    for make, message in ((lambda: gn.SGD(lr=float("inf")), "lr must be a positive finite number"),
                          (lambda: gn.SGD(lr=float("nan")), "lr must be a positive finite number"),
                          (lambda: gn.Adam(betas=(0.9, 1.0)), r"betas\[1\] must lie in \[0, 1\)"),
                          (lambda: gn.Adam(eps=-1), "eps must lie in"),
                          (lambda: gn.AdamW(weight_decay=float("inf")), "weight_decay must lie in"),
                          (lambda: gn.SGD(max_grad_norm=0), "max_grad_norm must be a positive finite number"),
                          (lambda: gn.SGD(nesterov=True), "nesterov=True needs a momentum"),
                          (lambda: gn.schedules.CosineDecay(0.1, 10, warmup_steps=10), "warmup_steps"),
                          (lambda: gn.schedules.StepDecay(0.1, step_size=0), "step_size must be an int")):
        with pytest.raises(ValueError, match=message):
            make()
    with pytest.raises(TypeError, match="add the parentheses"):
        gn.TrainStep(gn.Sequential(gn.Dense(2, 1)), gn.MSELoss, gn.SGD())  # noqa: the class, not an instance


# --- optimizer state and resume ---------------------------------------------------------------
@pytest.mark.parametrize("make", [lambda: gn.SGD(lr=0.05, momentum=0.9, nesterov=True),
                                  lambda: gn.AdamW(lr=gn.schedules.CosineDecay(0.02, 60, warmup_steps=5),
                                                   max_grad_norm=1.0, decay_biases=False)])
def test_resume_from_a_checkpoint_is_exact(backend, rng, tmp_path, make):
    """10 epochs straight equal 5 epochs, save with the optimizer, load both, 5 more: bit for bit."""
    x, labels = classification(rng)
    loss = gn.SoftmaxCrossEntropyLoss()
    straight = mlp(backend, seed=4)
    history = straight.fit(x, labels, loss=loss, optimizer=make(), epochs=10, batch_size=16, seed=9, verbose=0)

    model, optimizer = mlp(backend, seed=4), make()
    first = model.fit(x, labels, loss=loss, optimizer=optimizer, epochs=5, batch_size=16, seed=9, verbose=0)
    model.save(tmp_path / "half.npz", optimizer=optimizer)
    resumed = gn.load(tmp_path / "half.npz")
    resumed_optimizer = gn.load_optimizer(tmp_path / "half.npz", resumed)
    second = resumed.fit(x, labels, loss=loss, optimizer=resumed_optimizer, epochs=10, initial_epoch=5,
                         batch_size=16, seed=9, verbose=0)
    assert first["loss"] + second["loss"] == history["loss"]
    np.testing.assert_array_equal(backend.to_numpy(resumed.flat.values), backend.to_numpy(straight.flat.values))


def test_state_dict_round_trip_and_mismatch(backend):
    model = mlp(backend)
    optimizer = gn.Adam(model.parameters(), lr=gn.schedules.ExponentialDecay(0.01, 0.9), betas=(0.8, 0.95))
    state = optimizer.state_dict()
    assert state["config"]["type"] == "Adam" and state["config"]["schedule"]["type"] == "ExponentialDecay"
    assert set(state["arrays"]) == {"scalars", "step", "exp_avg", "exp_avg_sq"}  # step: one count per parameter
    assert all(type(a).__module__ == "numpy" for a in state["arrays"].values())
    twin = gn.Adam(mlp(backend, seed=5).parameters())
    twin.load_state_dict(state)
    assert twin.betas == (0.8, 0.95) and twin.schedule == optimizer.schedule
    with pytest.raises(ValueError, match="state is of a 'Adam' optimizer"):
        gn.SGD(mlp(backend).parameters()).load_state_dict(state)
    with pytest.raises(ValueError, match="different model|do not match"):
        gn.Adam(mlp(backend, widths=(6, 4, 3)).parameters()).load_state_dict(state)


def test_checkpoint_without_optimizer_says_how(backend, tmp_path):
    model = mlp(backend)
    model.save(tmp_path / "m.npz")
    with pytest.raises(gn.ModelFileError, match="holds no optimizer state"):
        gn.load_optimizer(tmp_path / "m.npz", model)


# --- validation, metrics, early stopping, evaluate, predict_proba ------------------------------
def test_history_holds_validation_and_metrics(backend, rng):
    x, labels = classification(rng, rows=120)
    model = mlp(backend, seed=6)
    history = model.fit(x[:90], labels[:90], loss=gn.SoftmaxCrossEntropyLoss(), optimizer=gn.Adam(lr=0.02),
                        epochs=4, batch_size=32, seed=1, verbose=0, metrics=("accuracy",),
                        validation_data=(x[90:], labels[90:]))
    assert set(history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert all(len(values) == 4 for values in history.values())
    evaluated = model.evaluate(x[90:], labels[90:], gn.SoftmaxCrossEntropyLoss(), metrics=("accuracy",))
    assert evaluated["loss"] == pytest.approx(history["val_loss"][-1], rel=1e-12)
    predicted = model.predict(x[90:]).argmax(axis=1)
    assert evaluated["accuracy"] == pytest.approx(np.mean(predicted == labels[90:]))
    probabilities = model.predict_proba(x[90:])
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(probabilities.argmax(axis=1), predicted)


def test_predict_proba_for_one_output(backend, rng):
    logits_model = mlp(backend, widths=(6, 1))
    p = logits_model.predict_proba(rng.normal(size=(5, 6)))
    assert p.shape == (5, 2)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    with gn.use_backend(backend):
        sigmoid_model = gn.Sequential(gn.Dense(6, 1, dtype="float64"), gn.Sigmoid())
    x = rng.normal(size=(5, 6))
    np.testing.assert_allclose(sigmoid_model.predict_proba(x)[:, 1], sigmoid_model.predict(x)[:, 0])


def test_early_stopping_stops_and_restores_the_best_epoch(backend, rng):
    x, labels = classification(rng, rows=60)
    noise = rng.integers(0, 3, size=30)  # validation labels unrelated to x: it stops improving soon
    model = mlp(backend, seed=7)
    stopper = gn.EarlyStopping(monitor="val_loss", patience=2)
    history = model.fit(x, labels, loss=gn.SoftmaxCrossEntropyLoss(), optimizer=gn.Adam(lr=0.05), epochs=200,
                        batch_size=16, seed=2, verbose=0, validation_data=(rng.normal(size=(30, 6)), noise),
                        early_stopping=stopper)
    epochs = len(history["loss"])
    assert epochs < 200 and stopper.stopped_epoch == epochs - 1
    assert stopper.best_epoch == int(np.argmin(history["val_loss"])) == epochs - 3  # patience 2, as in Keras
    with pytest.raises(ValueError, match="monitor 'val_accuracy' is not in the history"):
        model.fit(x, labels, loss=gn.SoftmaxCrossEntropyLoss(), optimizer=gn.Adam(), verbose=0,
                  early_stopping=gn.EarlyStopping(monitor="val_accuracy"))


def test_early_stopping_restores_weights(backend, rng):
    x, labels = classification(rng, rows=60)
    xv, tv = rng.normal(size=(30, 6)), rng.integers(0, 3, size=30)
    model = mlp(backend, seed=8)
    stopper = gn.EarlyStopping(patience=1)
    model.fit(x, labels, loss=gn.SoftmaxCrossEntropyLoss(), optimizer=gn.Adam(lr=0.05), epochs=100, batch_size=16,
              seed=3, verbose=0, validation_data=(xv, tv), early_stopping=stopper)
    assert model.evaluate(xv, tv, gn.SoftmaxCrossEntropyLoss())["loss"] == pytest.approx(stopper.best, rel=1e-12)


def test_fit_arguments_are_checked(backend, rng):
    x, labels = classification(rng, rows=20)
    model = mlp(backend)
    for options, message in (({"initial_epoch": 3, "epochs": 3}, "initial_epoch"),
                             ({"metrics": ("f1",)}, "unknown metric 'f1'"),
                             ({"validation_data": x}, "validation_data must be a pair"),
                             ({"seed": -1}, "seed must be None, an int >= 0")):
        with pytest.raises(ValueError, match=message):
            model.fit(x, labels, loss=gn.SoftmaxCrossEntropyLoss(), optimizer=gn.SGD(), verbose=0, **options)
    with pytest.raises(ValueError, match="X has no rows"):
        model.fit(x[:0], labels[:0], loss=gn.SoftmaxCrossEntropyLoss(), optimizer=gn.SGD(), verbose=0)


# --- float16 -------------------------------------------------------------------------------
def test_float16_gradients_match_float32_on_scaled_down_large_shapes(backend, rng):
    """The L-fp16 case scaled down: MSE over 256 rows x 1024 outputs makes 2/size = 2^-17, which
    float16 stores only as a subnormal; the loss scale, applied in float32 inside the gradient
    kernel, keeps every gradient, so the unscaled float16 gradients match float32 ones."""
    x, t = rng.normal(size=(256, 64)), rng.normal(size=(256, 1024))
    gradients = {}
    for dtype in ("float16", "float32"):
        with gn.use_backend(backend):
            model = gn.Sequential(gn.Dense(64, 128, dtype=dtype, seed=1), gn.Tanh(),
                                  gn.Dense(128, 1024, dtype=dtype, seed=2))
        optimizer = gn.SGD(model.parameters(), lr=0.1)
        step = gn.TrainStep(model, gn.MSELoss(), optimizer)
        xs, ts = step.prepare(x, t)
        loss = step.loss
        loss._forward(model.backend, model._forward(xs), ts)
        model.zero_grad()
        model.backward(loss.backward(optimizer.loss_scale), input_gradient=False)
        scale = float(backend.to_numpy(optimizer.loss_scale)[0])
        gradients[dtype] = backend.to_numpy(model.flat.grads).astype(np.float64) / scale
    half, single = gradients["float16"], gradients["float32"]
    assert np.count_nonzero(single) > 0.99 * single.size
    # Without the scale float16 would lose nearly all of them; with it only a sum of 256 float16 terms
    # that cancels exactly can be zero (GPUNN_TEST_SEED=3929740227: one weight, |g| = 1.4e-7 ≪ max |g|).
    lost = (half == 0) & (single != 0)
    assert np.count_nonzero(lost) <= 1e-4 * single.size
    assert np.all(np.abs(single[lost]) < 1e-3 * np.abs(single).max())
    np.testing.assert_allclose(half, single, rtol=0.05, atol=1e-3 * np.abs(single).max())


def test_float16_overflow_skips_the_step_and_halves_the_scale(backend, rng):
    model = mlp(backend, dtype="float16", widths=(6, 4))
    optimizer = gn.Adam(lr=0.01)
    step = gn.TrainStep(model, gn.MSELoss(), optimizer)
    before = backend.to_numpy(model.flat.values).copy()
    x, t = step.prepare(rng.normal(size=(8, 6)) * 100, rng.normal(size=(8, 4)) * 1000)
    step(x, t)  # (y − t)·2/size·2^16 overflows float16: the step is skipped
    np.testing.assert_array_equal(backend.to_numpy(model.flat.values), before)
    assert optimizer.skipped_steps == 1 and float(backend.to_numpy(optimizer.loss_scale)[0]) == 2.0 ** 15
    # No draw overflows at 2^15: |y − t| < 1.5, so ∂L/∂y·scale < 1.5·2/32·2^15 = 3072 and Σ over 8 rows < 65504.
    x, t = step.prepare(rng.uniform(-0.1, 0.1, size=(8, 6)), rng.uniform(-0.5, 0.5, size=(8, 4)))
    step(x, t)
    assert optimizer.skipped_steps == 1
    assert not np.array_equal(backend.to_numpy(model.flat.values), before)
    assert optimizer.state_dict()["arrays"]["scalars"].tolist()[:2] == [1.0, 2.0]  # 1 applied, 2 attempted


def test_float16_model_trains_and_reports_skips(backend, rng):
    x, labels = classification(rng, rows=200)
    histories = {}
    for dtype in ("float16", "float32"):
        model = mlp(backend, dtype=dtype, seed=11)
        histories[dtype] = model.fit(x, labels, loss=gn.SoftmaxCrossEntropyLoss(), optimizer=gn.Adam(lr=0.01),
                                     epochs=8, batch_size=32, seed=4, verbose=0, metrics=("accuracy",))
    half, single = histories["float16"], histories["float32"]
    assert half["skipped_steps"] == [0] * 8 and "skipped_steps" not in single
    np.testing.assert_allclose(half["loss"], single["loss"], rtol=0.02)
    assert abs(half["accuracy"][-1] - single["accuracy"][-1]) <= 0.02


# --- divergence ----------------------------------------------------------------------------------
def test_non_finite_parameters_end_training(backend, rng):
    """The last update of an epoch overflows: the loss it saw was finite, the parameters are not."""
    x = rng.normal(size=(20, 6))
    model = mlp(backend)
    with pytest.raises(gn.TrainingDiverged, match="parameters became NaN or Inf in epoch 1"):
        model.fit(x, np.full((20, 3), 1e6), loss=gn.MSELoss(), optimizer=gn.SGD(lr=1e308), verbose=0)


# --- launches on the GPU, counted by the CuPy stand-in -------------------------------------------
@pytest.mark.parametrize("frozen", [(), (0,), (0, 6), (2,)])  # a frozen layer first, at both ends, between others
@pytest.mark.parametrize("make,dtype,expected", [
    (lambda: gn.SGD(lr=0.1, momentum=0.9), "float32", 1),           # one fused update, counters included
    (lambda: gn.AdamW(lr=1e-3), "float64", 1),
    (lambda: gn.Adam(lr=1e-3, max_grad_norm=1.0), "float32", 2),    # + the one-launch gradient norm
    (lambda: gn.Adam(lr=1e-3), "float16", 2),                       # float16: the overflow check's norm
])
def test_one_update_launch_for_the_whole_model(make, dtype, expected, frozen):
    """However many parameter arrays, and whichever layers are frozen, an optimizer step is one update
    kernel over the flat buffer, which also advances the counters (and one norm kernel when it needs
    the gradient norm); a freeze writes the segment table once, outside the steps."""
    from support import cupy_standin

    with cupy_standin.installed() as standin:
        model = mlp("cupy", dtype=dtype, widths=(6, 12, 8, 5, 3))  # 8 parameter arrays
        optimizer = make()
        step = gn.TrainStep(model, gn.MSELoss(), optimizer)
        x, t = step.prepare(np.ones((4, 6)), np.zeros((4, 3)))
        step(x, t)
        if frozen:
            model.freeze(*frozen)
        before = [np.array(model.backend.to_numpy(p.value)) for p in model.parameters()]
        step(x, t)  # the step that notices the freeze
        launches = standin.count(optimizer.step)
    assert dict(launches) == {"kernel": expected}, launches
    after = [model.backend.to_numpy(p.value) for p in model.parameters()]
    held = {id(p) for index in frozen for p in model.layers[index].parameters()}
    for parameter, old, new in zip(model.parameters(), before, after):
        assert np.array_equal(old, new) == (id(parameter) in held)


# --- regressions found in review ---------------------------------------------------------------
def test_float16_writes_to_parameters_are_not_undone_by_master_weights(backend, rng):
    """A float16 model's optimizer keeps float32 masters; a value written from outside (assignment,
    EarlyStopping's restore) must win over the stale master at the next update."""
    model = mlp(backend, dtype="float16", widths=(6, 4))
    optimizer = gn.SGD(lr=1e-6)
    step = gn.TrainStep(model, gn.MSELoss(), optimizer)
    x, t = step.prepare(rng.normal(size=(8, 6)), rng.normal(size=(8, 4)))
    step(x, t)
    model.layers[0].weight.value = np.zeros((6, 4))
    step(x, t)
    assert np.abs(backend.to_numpy(model.layers[0].W).astype(float)).max() < 1e-3


def test_float16_bce_with_logits_loss_stays_finite(backend, rng):
    model = mlp(backend, dtype="float16", widths=(6, 1))
    z = rng.normal(size=(5000, 6)) * 30
    result = model.evaluate(z, (rng.uniform(size=5000) > 0.5).astype(float), gn.BCEWithLogitsLoss(), batch_size=4096)
    assert np.isfinite(result["loss"])


def test_decay_biases_follows_a_loaded_state(backend):
    model = mlp(backend, widths=(3, 2))
    state = gn.AdamW(model.parameters(), lr=0.1, weight_decay=0.5, decay_biases=False).state_dict()
    other = mlp(backend, widths=(3, 2))
    other.layers[0].bias.value = np.ones(2)
    optimizer = gn.AdamW(other.parameters(), lr=0.1, weight_decay=0.5)
    optimizer.load_state_dict(state)
    for parameter in other.parameters():
        parameter.grad = np.zeros(parameter.shape)
    optimizer.step()
    assert backend.to_numpy(other.layers[0].b).tolist() == [1.0, 1.0]  # biases are not decayed
    assert not np.array_equal(backend.to_numpy(other.layers[0].W), backend.to_numpy(mlp(backend, widths=(3, 2)).layers[0].W))


def test_narrow_integer_labels_do_not_wrap(backend, rng):
    """uint8 labels over 300 classes: label 3 must not also match column 259 (3 + 256)."""
    with gn.use_backend(backend):
        model = gn.Sequential(gn.Dense(4, 300, dtype="float64", seed=1))
    loss = gn.SoftmaxCrossEntropyLoss()
    x = rng.normal(size=(2, 4))
    loss(model.forward(x), np.array([3, 5], dtype=np.uint8))
    grad = backend.to_numpy(loss.backward())
    assert grad[0, 3] < 0 and grad[0, 259] > 0 and grad[1, 5] < 0 and grad[1, 261] > 0


def test_graph_recording_counts_the_update_it_ran_once():
    """CuPy's capture runs the step eagerly and then records it without running it: the host's
    count of updates (the schedule's step) must match the device's."""
    from support import cupy_standin

    with cupy_standin.installed():
        model = mlp("cupy", widths=(6, 4))
        optimizer = gn.SGD(lr=gn.schedules.StepDecay(0.1, step_size=2, gamma=0.5))
        step = gn.TrainStep(model, gn.MSELoss(), optimizer, graph=True)
        x, t = step.prepare(np.ones((4, 6)), np.zeros((4, 4)))
        for _ in range(7):
            step(x, t)
        device = optimizer.state_dict()["arrays"]["scalars"]
        assert optimizer.steps_issued == device[1] == 7
        assert optimizer.lr == 0.1 * 0.5 ** 3


def test_float16_softmax_gradient_keeps_the_log_sum_exp_in_float32(rng):
    from support import cupy_standin

    with cupy_standin.installed():
        with gn.use_backend("cupy") as cupy_backend:
            z = cupy_backend.asarray(rng.normal(size=(4, 5)) + 40, "float16")
            loss = gn.SoftmaxCrossEntropyLoss()
            loss.forward(z, np.array([0, 1, 2, 3]))
            rows = cupy_backend.to_numpy(loss.backward()).astype(np.float64).sum(axis=1)
    assert np.abs(rows).max() < 2e-3  # rounding lse to float16 gave row sums up to 0.015
