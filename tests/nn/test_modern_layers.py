"""GELU, SiLU, LeakyReLU, Softplus, Dropout, LayerNorm and Residual: gradients by finite differences
(through gn.gradcheck and through an independent check below), values against torch and closed forms,
dropout statistics, modes, and the errors a user meets."""

import math

import numpy as np
import pytest

import gpunn as gn

NEW_ACTIVATIONS = [gn.GELU, lambda: gn.GELU(approximate="tanh"), gn.SiLU, lambda: gn.LeakyReLU(0.2),
                   lambda: gn.Softplus(beta=2.0, threshold=3.0)]
ACTIVATION_IDS = ["gelu", "gelu_tanh", "silu", "leaky_relu", "softplus"]
SHAPES = [(1, 3, 2), (5, 4, 7)]  # batch 1, non-square


def dense(rng, inputs, outputs):
    layer = gn.Dense(inputs, outputs, dtype="float64", seed=int(rng.integers(1 << 30)))
    layer.bias.value[...] = layer.backend.asarray(rng.normal(size=outputs), "float64")
    return layer


def kink_free(rng, shape):
    """Inputs away from LeakyReLU's kink and Softplus's threshold by more than the FD step."""
    x = rng.normal(size=shape)
    return np.where(np.abs(x) < 1e-3, 0.1, x)


def independent_check(model, x, rng, eps=1e-6):
    """dL/dθ and dL/dX of L = Σ R ⊙ model(x), by central differences, against backward; written
    apart from gn.gradcheck so that a shared mistake cannot hide."""
    backend = model.backend
    x = backend.asarray(x, "float64").copy()
    projection = rng.normal(size=(x.shape[0], model.out_features))

    def loss():
        return float(np.sum(backend.to_numpy(model._forward(x)) * projection))

    loss()
    model.zero_grad()
    dx = backend.to_numpy(model.backward(backend.asarray(projection, "float64"))).copy()
    pairs = [(x, dx)] + [(p.value, backend.to_numpy(p.grad).copy()) for p in model.parameters()]
    for array, analytic in pairs:
        flat = array.reshape(-1)
        for index in range(flat.size):
            original = float(flat[index])
            flat[index] = original + eps
            plus = loss()
            flat[index] = original - eps
            minus = loss()
            flat[index] = original
            numeric = (plus - minus) / (2 * eps)
            assert abs(numeric - analytic.reshape(-1)[index]) <= 1e-7 + 1e-5 * abs(numeric), \
                (index, numeric, analytic.reshape(-1)[index])


@pytest.mark.parametrize("batch,inputs,outputs", SHAPES)
@pytest.mark.parametrize("make", NEW_ACTIVATIONS, ids=ACTIVATION_IDS)
def test_fused_activation_gradients(backend, rng, batch, inputs, outputs, make):
    model = gn.Sequential(dense(rng, inputs, outputs), make())
    x = kink_free(rng, (batch, inputs))
    assert set(gn.gradcheck(model, gn.MSELoss(), x, rng.normal(size=(batch, outputs)))) == {"dX", "layer0.dW", "layer0.db"}
    independent_check(model, x, rng)


@pytest.mark.parametrize("make", NEW_ACTIVATIONS, ids=ACTIVATION_IDS)
def test_standalone_activation_gradients(backend, rng, make):
    """Not after a Dense: the layer keeps its input, and its dX is checked on its own."""
    model = gn.Sequential(make(), dense(rng, 4, 3))
    x = kink_free(rng, (3, 4))
    gn.gradcheck(model, gn.MSELoss(), x, rng.normal(size=(3, 3)))
    independent_check(model, x, rng)


def test_only_input_reading_activations_keep_the_pre_activation(backend, rng):
    x = rng.normal(size=(3, 4))
    for make, keeps in ((gn.Tanh, False), (gn.GELU, True)):
        layer = dense(rng, 4, 5)
        gn.Sequential(layer, make()).forward(x)
        assert ("saved" in layer.state.buffers) is keeps


@pytest.mark.parametrize("batch", [1, 6])
def test_layer_norm_gradients(backend, rng, batch):
    norm = gn.LayerNorm(5, dtype="float64")
    norm.gain.value[...] = backend.asarray(rng.normal(size=5), "float64")
    norm.bias.value[...] = backend.asarray(rng.normal(size=5), "float64")
    model = gn.Sequential(dense(rng, 3, 5), norm, gn.Dense(5, 2, dtype="float64", seed=1))
    x = rng.normal(size=(batch, 3))
    errors = gn.gradcheck(model, gn.MSELoss(), x, rng.normal(size=(batch, 2)))
    assert {"layer1.dgain", "layer1.dbias"} <= set(errors)
    independent_check(model, x, rng)


def test_residual_gradients_flow_through_both_branches(backend, rng):
    model = gn.Sequential(dense(rng, 3, 4), gn.Residual(dense(rng, 4, 6), gn.GELU(), dense(rng, 6, 4)),
                          gn.Dense(4, 2, dtype="float64", seed=2))
    x = rng.normal(size=(5, 3))
    errors = gn.gradcheck(model, gn.SoftmaxCrossEntropyLoss(), x, rng.integers(0, 2, size=5))
    assert {"layer1.0.dW", "layer1.2.db"} <= set(errors)
    independent_check(model, x, rng)


@pytest.mark.parametrize("batch", [1, 4])
def test_whole_modern_stack_with_a_fixed_dropout_mask(backend, rng, batch):
    drop_inner, drop_outer = gn.Dropout(0.3, seed=11), gn.Dropout(0.5, seed=12)
    model = gn.Sequential(dense(rng, 3, 6), gn.SiLU(), drop_outer,
                          gn.Residual(gn.LayerNorm(6, dtype="float64"), dense(rng, 6, 6), gn.Softplus(), drop_inner),
                          gn.LeakyReLU(), gn.Dense(6, 2, dtype="float64", seed=3))
    x = kink_free(rng, (batch, 3))
    model.forward(x)  # step 1: a mask exists, then every forward below reuses it
    with drop_inner.fixed_mask(), drop_outer.fixed_mask():
        gn.gradcheck(model, gn.MSELoss(), x, rng.normal(size=(batch, 2)))
        independent_check(model, x, rng)


# --- values against torch.nn.functional and closed forms ----------------------------------
TORCH_CASES = {  # (layer, torch function)
    "gelu": (gn.GELU, lambda F, t: F.gelu(t)),
    "gelu_tanh": (lambda: gn.GELU(approximate="tanh"), lambda F, t: F.gelu(t, approximate="tanh")),
    "silu": (gn.SiLU, lambda F, t: F.silu(t)),
    "leaky_relu": (lambda: gn.LeakyReLU(0.1), lambda F, t: F.leaky_relu(t, 0.1)),
    "softplus": (lambda: gn.Softplus(beta=1.5, threshold=10.0), lambda F, t: F.softplus(t, beta=1.5, threshold=10.0)),
}


def extremes(rng):
    x = rng.normal(size=(8, 25)) * 5
    x.flat[:9] = [1000.0, -1000.0, 0.0, -0.0, 30.0, -30.0, 6.7, -6.7, 1e-3]
    return x


@pytest.mark.parametrize("name", TORCH_CASES)
def test_matches_torch_to_float64_rounding(rng, name):
    torch = pytest.importorskip("torch")
    make, reference = TORCH_CASES[name]
    x = extremes(rng)
    with gn.use_backend("numpy"):
        layer = make()
        y = layer.forward(x.copy())
        dy = rng.normal(size=x.shape)
        dx = layer.backward(dy)
    t = torch.tensor(x, requires_grad=True)
    out = reference(torch.nn.functional, t)
    out.backward(torch.tensor(dy))
    # erf's last-bit differences grow where 1 + erf cancels: bound the error by |x|·ε, not |y|·ε.
    scale = 4 * np.finfo(np.float64).eps * (np.abs(x) + 1)
    assert np.all(np.abs(y - out.detach().numpy()) <= scale + 1e-15 * np.abs(y))
    assert np.all(np.abs(dx - t.grad.numpy()) <= scale * np.abs(dy) * 4 + 1e-15)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", TORCH_CASES)
def test_stable_at_extremes_and_nan_passes(backend, dtype, name):
    layer = TORCH_CASES[name][0]()
    x = backend.asarray([[1000.0, -1000.0, np.nan, 0.0]], dtype)
    with np.errstate(all="raise"):
        y = backend.to_numpy(layer.forward(x))
        dx = backend.to_numpy(layer.backward(backend.asarray([[1.0, 1.0, np.nan, 1.0]], dtype)))
    assert y[0, 0] == 1000.0 and abs(y[0, 1]) <= 1000 * 0.1 and np.isnan(y[0, 2])
    assert np.all(np.isfinite(dx[0, [0, 1, 3]])) and np.isnan(dx[0, 2])
    assert dx[0, 0] == 1.0


def test_closed_form_values(backend):
    """Known values, no torch needed: GELU(1) = Φ(1), SiLU(1) = σ(1), Softplus(0) = log 2."""
    x = backend.asarray([[1.0, -2.0, 0.0]], "float64")
    phi = 0.5 * (1 + math.erf(1 / math.sqrt(2)))
    assert backend.to_numpy(gn.GELU().forward(x))[0, 0] == pytest.approx(phi, rel=1e-15)
    assert backend.to_numpy(gn.SiLU().forward(x))[0, 0] == pytest.approx(1 / (1 + math.exp(-1)), rel=1e-15)
    assert backend.to_numpy(gn.Softplus().forward(x))[0, 2] == pytest.approx(math.log(2), rel=1e-15)
    assert backend.to_numpy(gn.LeakyReLU(0.25).forward(x))[0, 1] == -0.5
    tanh_gelu = 0.5 * (1 + math.tanh(math.sqrt(2 / math.pi) * (1 + 0.044715)))
    assert backend.to_numpy(gn.GELU(approximate="tanh").forward(x))[0, 0] == pytest.approx(tanh_gelu, rel=1e-15)


def test_layer_norm_matches_torch(rng):
    torch = pytest.importorskip("torch")
    x, dy = rng.normal(size=(7, 9)) * 3 + 2, rng.normal(size=(7, 9))
    gain, bias = rng.normal(size=9), rng.normal(size=9)
    with gn.use_backend("numpy"):
        norm = gn.LayerNorm(9, eps=1e-3, dtype="float64")
        norm.gain.value[...] = gain
        norm.bias.value[...] = bias
        y = norm.forward(x).copy()
        norm.gain.grad_valid = norm.bias.grad_valid = False
        dx = norm.backward(dy)
    reference = torch.nn.LayerNorm(9, eps=1e-3, dtype=torch.float64)
    with torch.no_grad():
        reference.weight.copy_(torch.tensor(gain))
        reference.bias.copy_(torch.tensor(bias))
    t = torch.tensor(x, requires_grad=True)
    out = reference(t)
    out.backward(torch.tensor(dy))
    np.testing.assert_allclose(y, out.detach().numpy(), rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(dx, t.grad.numpy(), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(norm.gain.grad, reference.weight.grad.numpy(), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(norm.bias.grad, reference.bias.grad.numpy(), rtol=1e-13)


def test_layer_norm_rows_are_normalised_without_torch(backend, rng):
    x = rng.normal(size=(4, 6)) * 10 + 5
    y = backend.to_numpy(gn.LayerNorm(6, eps=1e-12, dtype="float64").forward(backend.asarray(x, "float64")))
    np.testing.assert_allclose(y.mean(axis=1), 0, atol=1e-14)
    np.testing.assert_allclose(y.std(axis=1), 1, rtol=1e-12)


# --- dropout ----------------------------------------------------------------------------------
@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_dropout_zeroes_the_right_fraction_and_scales_survivors(backend, rate):
    layer = gn.Dropout(rate, seed=2024)
    layer.backend = backend
    x = backend.asarray(np.ones((1000, 1000)), "float32")
    y = backend.to_numpy(layer.forward(x))
    zeroed = np.mean(y == 0)
    sigma = math.sqrt(rate * (1 - rate) / y.size)
    assert abs(zeroed - rate) < 4 * sigma
    np.testing.assert_allclose(y[y != 0], 1 / (1 - rate), rtol=1e-6)


def contract_mask(seed: int, rate: float, step: int, size: int) -> np.ndarray:
    """The documented contract (DropoutMask), element by element from numpy.random.Philox: element n
    at step s is slot j = ⌊n/32⌋ mod 16 of group q = ⌊n/512⌋·32 + n mod 32 and keeps its value
    when bits 16·(j mod 4)… of word ⌊j/4⌋ of Philox(key=seed, counter=s·2^64 + q − 1)'s first block
    are at least ⌊rate·2^16⌋."""
    keep = np.empty(size, bool)
    for n in range(size):
        group, slot = n // 512 * 32 + n % 32, n // 32 % 16
        word = int(np.random.Philox(key=seed, counter=(step << 64) + group - 1).random_raw(4)[slot // 4])
        keep[n] = (word >> 16 * (slot % 4)) & 0xFFFF >= int(rate * 2 ** 16)
    return keep


def test_dropout_mask_is_numpy_philox_stream(backend):
    """3 × 300 elements (two tiles of the mask) at step 1 keep what the contract says."""
    layer = gn.Dropout(0.3, seed=(7 << 64) + 99)
    layer.backend = backend
    y = backend.to_numpy(layer.forward(backend.asarray(np.ones((3, 300)), "float64")))
    np.testing.assert_array_equal(y != 0, contract_mask((7 << 64) + 99, 0.3, 1, 900).reshape(3, 300))


def test_a_checkpoint_of_the_old_mask_resumes_with_the_grouped_stream_from_its_step(backend, tmp_path):
    """A model file keeps a Dropout's (rate, seed, step); files written before issue 21 (one Philox
    block per element) have the same fields. Loading one continues from its step with the grouped
    stream: the decided behaviour (docs/layers.md), not the old code's continuation."""
    model = gn.Sequential(gn.Dense(4, 6, seed=1), gn.Dropout(0.4, seed=77, step=12))
    model.save(tmp_path / "old.npz")
    with gn.use_backend(backend):
        loaded = gn.load(tmp_path / "old.npz")
    dropout = loaded.layers[1]
    assert dropout.step == 12
    dropout.backend = backend
    y = backend.to_numpy(dropout.forward(backend.asarray(np.ones((2, 300)), "float32")))
    assert dropout.step == 13
    np.testing.assert_array_equal(y != 0, contract_mask(77, 0.4, 13, 600).reshape(2, 300))


def test_dropout_keeps_independently_across_groups_slots_tiles_and_steps(backend):
    """A 16-bit slice per element: neighbours in a warp (other groups), in a group (other slices of
    one block), in the next tile and at the next step keep independently (correlation within 5σ of
    zero over 2^20 elements), and a rate below the mask's 2^-16 resolution drops nothing."""
    layer = gn.Dropout(0.25, seed=31)
    layer.backend = backend
    x = backend.asarray(np.ones((1024, 1024)), "float32")
    first = backend.to_numpy(layer.forward(x)).reshape(-1) != 0
    second = backend.to_numpy(layer.forward(x)).reshape(-1) != 0
    bound = 5 / math.sqrt(first.size)
    for shift in (1, 32, 512):  # the next lane's group, the next slot of the same block, the next tile
        assert abs(np.corrcoef(first[:-shift], first[shift:])[0, 1]) < bound, shift
    assert abs(np.corrcoef(first, second)[0, 1]) < bound
    tiny = gn.Dropout(2.0 ** -17, seed=31)
    tiny.backend = backend
    np.testing.assert_array_equal(backend.to_numpy(tiny.forward(x)), 1.0)
    assert tiny.step == 0  # it drew no mask


def test_dropout_same_seed_same_mask_and_steps_differ(backend):
    x = backend.asarray(np.ones((20, 30)), "float32")
    first, second = gn.Dropout(0.5, seed=5), gn.Dropout(0.5, seed=5)
    first.backend = second.backend = backend
    a, b = (backend.to_numpy(layer.forward(x)).copy() for layer in (first, second))
    np.testing.assert_array_equal(a, b)
    assert first.step == 1
    np.testing.assert_array_equal(a, np.ones_like(a) * 2 * (a != 0))
    later = backend.to_numpy(first.forward(x))
    assert first.step == 2 and not np.array_equal(later, a)
    other = gn.Dropout(0.5, seed=6)
    other.backend = backend
    assert not np.array_equal(backend.to_numpy(other.forward(x)), a)


def test_dropout_backward_uses_the_forward_mask(backend, rng):
    model = gn.Sequential(gn.Dense(4, 8, dtype="float64", seed=1), gn.ReLU(), gn.Dropout(0.5, seed=3))
    y = backend.to_numpy(model.forward(rng.normal(size=(3, 4)))).copy()
    model.zero_grad()
    dy = model.backward(backend.asarray(np.ones((3, 8)), "float64"))
    assert dy is not None
    dense = model.layers[0]
    hidden = backend.to_numpy(dense.state.saved)  # relu output before dropout
    expected_dz = np.where(y != 0, 2.0, 0.0) * (hidden > 0)
    np.testing.assert_allclose(backend.to_numpy(dense.db), expected_dz.sum(axis=0))


def test_eval_mode_is_identity_and_predict_evaluates(backend, rng):
    model = gn.Sequential(gn.Dense(4, 6, dtype="float64", seed=1), gn.Tanh(), gn.Dropout(0.5, seed=1),
                          gn.Dense(6, 2, dtype="float64", seed=2))
    x = rng.normal(size=(5, 4))
    with model.evaluating():
        assert not model.training and not model.layers[2].training
        plain = backend.to_numpy(model.forward(x)).copy()
    assert model.training
    w0, b0, w1, b1 = (backend.to_numpy(p.value) for p in model.parameters())
    np.testing.assert_allclose(plain, np.tanh(x @ w0 + b0) @ w1 + b1, rtol=1e-12)
    np.testing.assert_array_equal(model.predict(x), plain)
    assert model.layers[2].step == 0, "predict must not advance the dropout step"
    assert not np.allclose(backend.to_numpy(model.forward(x)), plain)
    model.eval()
    np.testing.assert_array_equal(backend.to_numpy(model.forward(x)), plain)
    model.train()
    assert model.layers[2].training


def test_fit_trains_in_training_mode_and_restores_the_mode(backend, rng):
    model = gn.Sequential(gn.Dense(4, 6, seed=1), gn.Tanh(), gn.Dropout(0.5, seed=1), gn.Dense(6, 3, seed=2))
    model.eval()
    model.fit(rng.normal(size=(8, 4)), rng.integers(0, 3, size=8), loss=gn.SoftmaxCrossEntropyLoss(),
              optimizer=gn.SGD(lr=0.1), epochs=2, batch_size=4, verbose=0)
    assert not model.training and model.layers[2].step == 4


# --- structure: Residual, duplicates, errors, save/load --------------------------------------
def test_residual_adds_its_input(backend, rng):
    inner = gn.Dense(3, 3, dtype="float64", seed=1)
    block = gn.Sequential(gn.Residual(inner, gn.ReLU()))
    x = rng.normal(size=(2, 3))
    w, b = backend.to_numpy(inner.W), backend.to_numpy(inner.b)
    np.testing.assert_allclose(backend.to_numpy(block.forward(x)), x + np.maximum(x @ w + b, 0), rtol=1e-12)


def test_residual_width_mismatch_names_the_widths(backend):
    with pytest.raises(ValueError, match="takes 4 features but gives 3"):
        gn.Residual(gn.Dense(4, 3), gn.ReLU())
    with pytest.raises(ValueError, match="layer 0 gives 5 features but layer 1 expects 6"):
        gn.Residual(gn.Dense(4, 5), gn.Dense(6, 4))
    with pytest.raises(ValueError, match="layer 0 gives 8 features but layer 1 expects 4"):
        gn.Sequential(gn.Dense(2, 8), gn.Residual(gn.Dense(4, 4)))


def test_a_layer_used_twice_is_an_error(backend):
    shared = gn.Dense(4, 4)
    with pytest.raises(ValueError, match="same Dense object is at positions 0 and 2"):
        gn.Sequential(shared, gn.ReLU(), shared)
    with pytest.raises(ValueError, match="positions 0 and 1.0"):
        gn.Sequential(shared, gn.Residual(shared))
    activation = gn.GELU()
    with pytest.raises(ValueError, match="same GELU object"):
        gn.Residual(gn.Dense(4, 4), activation, gn.Dense(4, 4), activation)


@pytest.mark.parametrize("bad,message", [
    (lambda: gn.Dropout(1.0), "rate must lie in \\[0, 1\\)"),
    (lambda: gn.Dropout(0.1, seed=-1), "seed must be None, an int >= 0"),
    (lambda: gn.GELU(approximate="fast"), "approximate must be 'none' or 'tanh'"),
    (lambda: gn.LeakyReLU(float("nan")), "negative_slope must be a finite number"),
    (lambda: gn.Softplus(beta=0), "beta must not be 0"),
    (lambda: gn.LayerNorm(0), "features must be an int >= 1"),
    (lambda: gn.LayerNorm(3, eps=0), "eps must be a positive finite number"),
    (lambda: gn.Residual(), "give the branch's layers"),
])
def test_bad_arguments_are_clear_errors(backend, bad, message):
    with pytest.raises(ValueError, match=message):
        bad()


def test_parameters_of_nested_layers_in_a_stable_order(backend):
    model = gn.Sequential(gn.Dense(2, 3), gn.Residual(gn.LayerNorm(3), gn.Dense(3, 3)), gn.Dense(3, 1))
    names = [name for name, _ in model.named_parameters()]
    assert names == ["layer0.W", "layer0.b", "layer1.0.gain", "layer1.0.bias", "layer1.1.W", "layer1.1.b",
                     "layer2.W", "layer2.b"]
    assert [id(p) for p in model.parameters()] == [id(p) for _, p in model.named_parameters()]


def test_save_and_load_every_layer_type(backend, tmp_path, rng):
    model = gn.Sequential(gn.Dense(3, 6, seed=1), gn.GELU(approximate="tanh"), gn.Dropout(0.2, seed=4),
                          gn.Residual(gn.LayerNorm(6, eps=1e-3), gn.Dense(6, 6, seed=2), gn.SiLU(),
                                      gn.Residual(gn.Dense(6, 6, seed=3), gn.LeakyReLU(0.3))),
                          gn.Softplus(beta=2.0, threshold=5.0), gn.GELU(), gn.Sigmoid(), gn.Tanh(), gn.ReLU(),
                          gn.Identity(), gn.Dense(6, 2, seed=5))
    model.fit(rng.normal(size=(8, 3)), rng.integers(0, 2, size=8), loss=gn.SoftmaxCrossEntropyLoss(),
              optimizer=gn.SGD(lr=0.1), epochs=1, verbose=0)
    model.save(tmp_path / "m.npz")
    loaded = gn.load(tmp_path / "m.npz")
    assert repr(loaded) == repr(model)
    x = rng.normal(size=(4, 3))
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    assert loaded.layers[2].seed == 4 and loaded.layers[3].layers[3].layers[1].negative_slope == 0.3


def test_a_shard_draws_its_rows_of_the_global_mask(backend, rng):
    """Data parallelism: rank r's rows [a, b) of a global batch get the mask that one process
    training the whole batch gives those rows (row_offset), not a copy of rank 0's rows."""
    from gpunn.backends.base import DropoutMask

    step = backend.asarray(np.array([3], np.uint64))
    z = backend.asarray(np.ones((10, 70)), "float64")  # 700 elements: two tiles of the mask
    whole = backend.to_numpy(backend.bias_activation(z, 0, "identity", dropout=DropoutMask(99, 1 << 15, 2.0, step)))
    for first, last in ((0, 4), (4, 7), (7, 10), (5, 6)):
        shard = backend.bias_activation(z[first:last], 0, "identity", dropout=DropoutMask(99, 1 << 15, 2.0, step, first))
        np.testing.assert_array_equal(backend.to_numpy(shard), whole[first:last])
    assert not np.array_equal(whole[4:8], whole[0:4])
