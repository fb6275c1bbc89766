"""A default dtype as torch.set_default_dtype and keras.config.set_floatx have it, Keras's summary(),
and the model as a Python sequence of its layers (issue 23)."""

import threading

import numpy as np
import pytest

import gpunn as gn


@pytest.fixture(autouse=True)
def float32_after():
    yield
    gn.set_default_dtype("float32")


def test_every_layer_built_without_dtype_takes_the_default():
    assert gn.get_default_dtype() == "float32"
    gn.set_default_dtype("float64")
    model = gn.Sequential(gn.Dense(3, 4), gn.LayerNorm(4), gn.Tanh(), gn.Dense(4, 2))
    assert model.dtype == np.float64 and all(p.value.dtype == np.float64 for p in model.parameters())
    assert gn.Sequential().dtype == np.float64  # a model of activations only, too
    assert gn.Dense(3, 4, dtype="float32").dtype == np.float32  # an explicit dtype wins
    assert gn.Dense(3, 4, dtype=None).dtype == np.float64  # None means the default (it was float64 by accident)


def test_the_context_form_restores_the_default_it_replaced():
    with gn.default_dtype("float64") as dtype:
        assert dtype == "float64" and gn.Dense(2, 2).dtype == np.float64
        with gn.default_dtype(np.float16):
            assert gn.Dense(2, 2).dtype == np.float16
        assert gn.get_default_dtype() == "float64"
    assert gn.get_default_dtype() == "float32" and gn.Dense(2, 2).dtype == np.float32


def test_a_model_of_the_default_dtype_trains_without_a_mixed_dtype_error(rng):
    x, labels = rng.normal(size=(40, 3)), rng.integers(0, 2, size=40)
    with gn.default_dtype("float64"):
        model = gn.Sequential(gn.Dense(3, 8, seed=0), gn.LayerNorm(8), gn.GELU(), gn.Dense(8, 2, seed=1))
    history = model.fit(x, labels, loss=gn.SoftmaxCrossEntropyLoss(), optimizer=gn.Adam(lr=0.01), epochs=3,
                        verbose=0, seed=0)
    assert np.isfinite(history["loss"]).all() and model.predict(x).dtype == np.float64


@pytest.mark.parametrize("bad,error", [("int32", ValueError), ("complex128", ValueError), (None, TypeError),
                                       ("float", None), ("bogus", TypeError)])
def test_a_dtype_no_backend_trains_in_is_refused(bad, error):
    if error is None:  # "float" is numpy's name for float64: accepted as float64
        gn.set_default_dtype(bad)
        assert gn.get_default_dtype() == "float64"
        return
    with pytest.raises(error):
        gn.set_default_dtype(bad)
    assert gn.get_default_dtype() == "float32"


def test_the_default_is_kept_per_thread_as_the_backend_is():
    gn.set_default_dtype("float64")
    seen = []
    worker = threading.Thread(target=lambda: seen.append(gn.get_default_dtype()))
    worker.start()
    worker.join()
    assert seen == ["float32"] and gn.get_default_dtype() == "float64"


def test_summary_is_kerass_table():
    model = gn.Sequential(gn.Dense(64, 128, seed=0), gn.ReLU(), gn.Residual(gn.Dense(128, 128, seed=1), gn.Tanh()),
                          gn.Dropout(0.1, seed=0), gn.LayerNorm(128), gn.Dense(128, 10, seed=2))
    lines = []
    model.summary(print_fn=lines.append)
    text = "\n".join(lines)
    assert lines[0] == "Model: Sequential, float32 on numpy"
    assert "0 Dense" in text and "(None, 128)" in text and "8,320" in text  # 64·128 + 128
    assert "2 Residual" in text and "16,512" in text  # the branch's Dense: 128·128 + 128
    assert "5 Dense" in text and "(None, 10)" in text and "1,290" in text
    total = 8320 + 16512 + 256 + 1290
    assert f"Total params: {total:,}" in lines and f"Trainable params: {total:,}" in lines
    assert "Non-trainable params: 0" in lines
    assert total == sum(p.value.size for p in model.parameters())


def test_the_model_is_a_sequence_of_its_layers():
    first, activation, last = gn.Dense(3, 4), gn.Tanh(), gn.Dense(4, 2)
    model = gn.Sequential(first, activation, last)
    assert len(model) == 3 and list(model) == [first, activation, last]
    assert model[0] is first and model[-1] is last and model[1:] == [activation, last]
    with pytest.raises(IndexError, match="out of range for a model of 3 layers"):
        model[3]
    for bad in ("0", 1.0, True):
        with pytest.raises(TypeError, match="indices must be ints or slices"):
            model[bad]


def test_summary_counts_frozen_parameters_as_non_trainable():
    model = gn.Sequential(gn.Dense(4, 8, seed=0), gn.Tanh(), gn.Residual(gn.Dense(8, 8, seed=1), gn.ReLU()),
                          gn.Dense(8, 2, seed=2))
    model.freeze(0)
    model[2].trainable = False
    lines = []
    model.summary(print_fn=lines.append)
    frozen = 4 * 8 + 8 + 8 * 8 + 8
    assert f"Non-trainable params: {frozen:,}" in lines and f"Trainable params: {8 * 2 + 2:,}" in lines
