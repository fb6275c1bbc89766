"""Assigning to a parameter of a model: the value lands in the flat buffer the optimizer trains
(or a clear error), never a detached array that training silently ignores."""

import numpy as np
import pytest

import gpunn as gn


def model_and_optimizer(backend):
    with gn.use_backend(backend):
        model = gn.Sequential(gn.Dense(3, 4, dtype="float64", seed=0), gn.Tanh(), gn.LayerNorm(4, dtype="float64"),
                              gn.Dense(4, 2, dtype="float64", seed=1))
    return model, gn.SGD(model.parameters(), lr=0.5)


def step_with_gradient_one(model, optimizer):
    for parameter in model.parameters():
        parameter.grad = np.ones(parameter.shape)
    optimizer.step()


def test_assigning_an_array_to_a_layer_attribute_trains_what_was_assigned(backend):
    model, optimizer = model_and_optimizer(backend)
    first, norm, last = model.layers[0], model.layers[2], model.layers[3]
    first.W = np.full((3, 4), 2.0)     # was: AttributeError, W had no setter
    first.W *= 2                       # in place, then assigned back: was the same AttributeError
    last.weight = np.full((4, 2), 3.0)  # was: the Parameter replaced by a bare array
    norm.gain = [5.0] * 4
    last.b = np.arange(2.0)
    assert all(isinstance(p, gn.Parameter) for p in model.parameters())
    step_with_gradient_one(model, optimizer)  # p ← p − 0.5
    as_host = backend.to_numpy
    np.testing.assert_array_equal(as_host(first.W), np.full((3, 4), 3.5))
    np.testing.assert_array_equal(as_host(last.W), np.full((4, 2), 2.5))
    np.testing.assert_array_equal(as_host(norm.gain.value), np.full(4, 4.5))
    np.testing.assert_array_equal(as_host(last.b), [-0.5, 0.5])
    start = model.flat.offset(last.weight)
    np.testing.assert_array_equal(as_host(model.flat.values[start:start + 8]), np.full(8, 2.5))
    with pytest.raises(ValueError, match=r"Parameter W: cannot assign an array of shape \(4, 3\) to a parameter "
                                         r"of shape \(3, 4\)"):
        first.W = np.zeros((4, 3))
    with pytest.raises(ValueError, match="Parameter gain: cannot assign an array that cannot be read as a float64"):
        norm.gain = ["a"] * 4


def test_swapping_in_another_parameter_is_refused_once_a_model_holds_the_layer(backend):
    with gn.use_backend(backend):
        dense = gn.Dense(3, 2, dtype="float64")
        dense.weight = gn.Parameter(backend.zeros((3, 2), "float64"), "W", backend)  # no model yet: fine
        model = gn.Sequential(dense)
        with pytest.raises(ValueError, match=r"Dense.weight: cannot replace a Parameter that a model holds .* "
                                             r"layer.weight = new.value"):
            dense.weight = gn.Parameter(backend.zeros((3, 2), "float64"), "W", backend)
    assert model.parameters()[0] is dense.weight and dense.weight.owner is model.flat


def test_an_assigned_gradient_is_the_one_the_next_step_uses(backend):
    """As torch's ``p.grad = g`` before ``optimizer.step()``: was a detached array, and the step
    read the flat gradient buffer (or skipped the parameter as stale)."""
    model, optimizer = model_and_optimizer(backend)
    before = backend.to_numpy(model.flat.values).copy()
    weight = model.layers[0].weight
    weight.grad = np.full((3, 4), 2.0)
    optimizer.step()  # only the assigned gradient is fresh: only W moves, by −0.5·2
    after = backend.to_numpy(model.flat.values)
    start = model.flat.offset(weight)
    np.testing.assert_array_equal(after[start:start + 12], before[start:start + 12] - 1.0)
    np.testing.assert_array_equal(np.delete(after, np.s_[start:start + 12]), np.delete(before, np.s_[start:start + 12]))
    step_with_gradient_one(model, optimizer)
    weight.grad = None  # stale: the next step leaves W alone
    optimizer.step()
    np.testing.assert_array_equal(backend.to_numpy(weight.value), before[start:start + 12].reshape(3, 4) - 1.5)
    with pytest.raises(ValueError, match=r"Parameter W: cannot assign a gradient of shape \(4, 3\)"):
        weight.grad = np.zeros((4, 3))


def _pickled(model):
    import pickle

    return pickle.loads(pickle.dumps(model))


@pytest.mark.parametrize("duplicate", ["deepcopy", "pickle"])
def test_a_deep_copied_model_trains_its_own_flat_buffer(backend, rng, duplicate):
    """``copy.deepcopy(model)`` (a best-model snapshot, a teacher) and a pickle round trip (joblib,
    multiprocessing): a field-by-field copy left the copy's parameters detached from its flat
    buffer, and fit failed with a KeyError."""
    import copy

    x, labels = rng.normal(size=(24, 3)), rng.integers(0, 2, size=24)
    with gn.use_backend(backend):
        model = gn.Sequential(gn.Dense(3, 4, seed=0), gn.Residual(gn.Dense(4, 4, seed=1), gn.ReLU()),
                              gn.LayerNorm(4), gn.Dropout(0.25, seed=2), gn.Dense(4, 2, seed=3))
    model.extras["classes"] = [0, 1]
    twin = copy.deepcopy(model) if duplicate == "deepcopy" else _pickled(model)
    assert twin.backend is model.backend and twin.extras == model.extras and twin.extras is not model.extras
    histories = [m.fit(x, labels, loss=gn.SoftmaxCrossEntropyLoss(), optimizer=gn.Adam(lr=0.05), epochs=2, seed=1,
                       verbose=0)["loss"] for m in (model, twin)]
    assert histories[0] == histories[1]  # the same weights and dropout masks, trained apart
    np.testing.assert_array_equal(backend.to_numpy(twin.flat.values), backend.to_numpy(model.flat.values))
    twin.layers[0].W[...] = 0
    assert backend.to_numpy(model.layers[0].W).any()


# --- one rule for the constructor and for assignment (issue 22) --------------------------------
@pytest.mark.parametrize("what", ["W", "b", "weight", "grad", "unpacked grad"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, 1e5], ids=["nan", "inf", "overflows float16"])
def test_assigned_values_and_gradients_are_checked_as_the_constructor_checks_them(backend, what, bad):
    with gn.use_backend(backend):
        dense = gn.Dense(3, 2, dtype="float16", seed=0)
    if what != "unpacked grad":
        gn.Sequential(dense)
    with pytest.raises(ValueError, match=r"Dense: weight contains NaN or Inf|float16"):
        gn.Dense(3, 2, dtype="float16", weight=np.full((3, 2), bad))  # what the constructor says
    before = backend.to_numpy(dense.W).copy()
    with pytest.raises(ValueError, match=r"NaN or Inf \(or values too large for float16\)"):
        if what in ("W", "b", "weight"):
            setattr(dense, what, np.full(tuple(getattr(dense, "W" if what == "weight" else what).shape), bad))
        else:
            dense.weight.grad = np.full((3, 2), bad)
    np.testing.assert_array_equal(backend.to_numpy(dense.W), before)
    dense.weight.grad = np.full((3, 2), 0.5)  # finite: accepted, packed or not
    assert dense.weight.grad_valid


def test_a_parameter_swapped_in_before_any_model_holds_the_layer_follows_the_same_rule(backend):
    with gn.use_backend(backend):
        dense = gn.Dense(3, 2, dtype="float32", seed=0)
    with pytest.raises(ValueError, match="holding NaN or Inf"):
        dense.weight = gn.Parameter(backend.asarray(np.full((3, 2), np.nan), "float32"), "W", backend)
    with pytest.raises(ValueError, match=r"of shape \(2, 3\)"):
        dense.weight = gn.Parameter(backend.asarray(np.ones((2, 3)), "float32"), "W", backend)
    dense.weight = gn.Parameter(backend.asarray(np.ones((3, 2)), "float32"), "W", backend)
    assert float(backend.to_numpy(dense.W).sum()) == 6.0


def test_a_stale_gradient_reads_none_as_torch_after_zero_grad_or_grad_none(backend):
    """torch.optim's zero_grad() (set_to_none) and ``p.grad = None`` leave ``p.grad`` None, and the step
    skips that parameter: the gradient read back said an old value that the step was not going to use."""
    model, optimizer = model_and_optimizer(backend)
    weight, bias = model.layers[0].weight, model.layers[0].bias
    step_with_gradient_one(model, optimizer)
    assert weight.grad is not None and model.layers[0].dW is not None
    weight.grad = None
    assert weight.grad is None and model.layers[0].dW is None and bias.grad is not None
    optimizer.zero_grad()
    assert all(parameter.grad is None for parameter in model.parameters())
    weight.grad = np.full((3, 4), 2.0)
    np.testing.assert_array_equal(backend.to_numpy(weight.grad), np.full((3, 4), 2.0))
