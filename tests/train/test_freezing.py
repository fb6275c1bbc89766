"""Freezing: layer.trainable = False and model.freeze keep parameters bit-identical through fit (weight
decay, momentum, clipping and float16 master weights included), inside the fused update, on every
backend and through a recorded graph; the rest trains exactly as an optimizer bound to it alone would."""

import numpy as np
import pytest
from support.replaying_backend import ReplayingBackend

import gpunn as gn
from gpunn.nn.freezing import parameter_counts


def mlp(backend=None, dtype="float64"):
    with gn.use_backend(backend or gn.get_backend()):
        return gn.Sequential(gn.Dense(5, 8, dtype=dtype, seed=0), gn.Tanh(), gn.Dense(8, 8, dtype=dtype, seed=1),
                             gn.ReLU(), gn.Dense(8, 3, dtype=dtype, seed=2))


@pytest.fixture
def data(rng):
    return rng.normal(size=(40, 5)), rng.integers(0, 3, size=40)


def train(model, data, optimizer, **options):
    x, labels = data
    options = {"epochs": 3, "batch_size": 16, "seed": 3, "verbose": 0, **options}
    return model.fit(x, labels, loss=gn.SoftmaxCrossEntropyLoss(), optimizer=optimizer, **options)


def values(model, backend):
    return [backend.to_numpy(p.value).copy() for p in model.parameters()]


@pytest.mark.parametrize("make_optimizer", [lambda: gn.AdamW(lr=0.01, weight_decay=0.1, max_grad_norm=0.5),
                                            lambda: gn.SGD(lr=0.1, momentum=0.9, weight_decay=0.01)])
def test_a_frozen_layer_stays_bit_identical_and_the_rest_trains_as_its_own_optimizer(backend, data, make_optimizer):
    model = mlp(backend)
    model.layers[2].trainable = False  # the middle Dense: its weights sit between the others' in the buffer
    before = values(model, backend)
    train(model, data, make_optimizer())
    after = values(model, backend)
    frozen = {id(p) for p in model.layers[2].parameters()}
    for parameter, old, new in zip(model.parameters(), before, after):
        assert np.array_equal(old, new) if id(parameter) in frozen else not np.array_equal(old, new)
    subset = mlp(backend)  # the same training with an optimizer bound to the trainable parameters only
    optimizer = make_optimizer().bind([p for layer in (subset.layers[0], subset.layers[4]) for p in layer.parameters()])
    train(subset, data, optimizer)
    for a, b in zip(after, values(subset, backend)):
        assert np.array_equal(a, b)


def test_freeze_and_unfreeze_by_index_or_layer(data):
    model = mlp("numpy")
    assert model.freeze(0, -1) is model
    assert [layer.trainable for layer in model.layers] == [False, True, True, True, False]  # no parameters: True
    assert parameter_counts(model) == (8 * 8 + 8, 5 * 8 + 8 + 8 * 3 + 3)
    model.unfreeze(model.layers[0])
    assert model.layers[0].trainable and not model.layers[4].trainable
    model.freeze()
    assert parameter_counts(model)[0] == 0
    model.unfreeze()
    assert all(p.trainable for p in model.parameters())


def test_unfreezing_takes_effect_at_the_next_step_and_frozen_state_is_left_alone(data):
    model, optimizer = mlp("numpy"), gn.Adam(lr=0.01)
    model.freeze(0)
    train(model, data, optimizer)
    state = optimizer.state_dict()["arrays"]
    first = model.layers[0].parameters()
    start = model.flat.offset(first[0])
    assert not state["exp_avg"][start:start + first[0].size].any()  # never touched while frozen
    before = model.layers[0].W.copy()
    model.unfreeze(0)
    train(model, data, optimizer, initial_epoch=3, epochs=4)
    assert not np.array_equal(model.layers[0].W, before)


def test_a_float16_frozen_layer_keeps_its_weights_and_master_weights(data):
    model = mlp("numpy", dtype="float16")
    model.layers[0].trainable = False
    before = values(model, model.backend)
    optimizer = gn.Adam(lr=0.01)
    train(model, data, optimizer)
    after = values(model, model.backend)
    assert np.array_equal(before[0], after[0]) and np.array_equal(before[1], after[1])  # W0 and b0
    assert not np.array_equal(before[2], after[2]) and not np.array_equal(before[3], after[3])
    master = optimizer.state_dict()["arrays"]["master"]  # float32 masters: the frozen ones hold the start
    start = model.flat.offset(model.layers[0].parameters()[0])
    assert np.array_equal(master[start:start + 40], before[0].reshape(-1).astype(np.float32))


def test_freezing_mid_fit_re_records_the_graph(data):
    """A recorded step baked which runs it updates: a freeze from a callback must take effect at the next step."""
    results = []
    for backend, graph in (("numpy", False), (ReplayingBackend(), True)):
        model = mlp(backend)
        snapshots = {}

        class FreezeAfterFirstEpoch(gn.Callback):
            def on_epoch_end(self, epoch, logs=None, snapshots=snapshots):
                if epoch == 0:
                    self.model.layers[0].trainable = False
                    snapshots["W"] = np.array(self.model.layers[0].W, copy=True)

        train(model, data, gn.SGD(lr=0.1, momentum=0.9), graph=graph, callbacks=[FreezeAfterFirstEpoch()])
        assert np.array_equal(np.asarray(model.layers[0].W), snapshots["W"])
        results.append(np.asarray(model.flat.values))
        if graph:  # recorded again once, after the freeze (a real graph baked the runs it updates)
            assert backend.recordings == 2
    np.testing.assert_allclose(results[1], results[0], rtol=1e-12, atol=1e-14)


def test_bad_freezing_is_refused(data):
    model = mlp("numpy")
    with pytest.raises(TypeError, match="trainable must be True or False"):
        model.layers[0].trainable = "no"
    with pytest.raises(ValueError, match="layer index 7 is out of range for a model of 5 layers"):
        model.freeze(7)
    with pytest.raises(TypeError, match="by index into model.layers or by the layer itself"):
        model.freeze("dense")
    with pytest.raises(ValueError, match="is not a layer of this model"):
        model.freeze(gn.Dense(2, 2))
    model.freeze()
    with pytest.raises(ValueError, match="every parameter the optimizer holds is frozen"):
        train(model, data, gn.SGD(lr=0.1))
