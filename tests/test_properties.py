"""Property-based checks (hypothesis) over shapes, dtypes, activations, losses, model files and CSV
text: valid inputs never crash and stay finite; invalid ones raise the documented exception
types (ValueError/TypeError at the API, ModelFileError for model files, DataError for data
files), never anything else. Kept small: each property runs 100 examples (the damaged-file one
500); GPUNN_PROPERTY_EXAMPLES=2000 runs a thorough hunt."""

import io
import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import gpunn as gn
from gpunn.cli.data import DataError, Standardizer, load_files
from gpunn.cli.encoding import Encoding
from gpunn.nn.activations import ACTIVATION_LAYERS

EXAMPLES = int(os.environ.get("GPUNN_PROPERTY_EXAMPLES", 100))
FAST = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DTYPES = st.sampled_from(["float32", "float64"])
ACTIVATIONS = st.sampled_from(sorted(ACTIVATION_LAYERS))


@pytest.fixture(autouse=True)
def on_numpy():
    with gn.use_backend("numpy"):
        yield


def finite(low=-1e3, high=1e3):
    return st.floats(low, high, allow_nan=False, allow_infinity=False)


@st.composite
def models_and_inputs(draw):
    dtype, activation = draw(DTYPES), draw(ACTIVATIONS)
    widths = draw(st.lists(st.integers(1, 8), min_size=2, max_size=4))
    layers = []
    for index, (a, b) in enumerate(zip(widths, widths[1:])):
        layers.append(gn.Dense(a, b, dtype=dtype, seed=index, init="he" if activation == "relu" else "xavier"))
        if index < len(widths) - 2:
            layers.append(ACTIVATION_LAYERS[activation]())
    rows = draw(st.integers(1, 12))
    X = draw(hnp.arrays(np.float64, (rows, widths[0]), elements=finite()))
    return gn.Sequential(*layers), X, widths[-1]


@FAST
@given(models_and_inputs(), st.one_of(st.none(), st.integers(1, 13)))
def test_valid_inputs_give_finite_outputs_of_the_right_shape(case, batch_size):
    model, X, outputs = case
    y = model.predict(X, batch_size=batch_size)
    assert y.shape == (len(X), outputs) and y.dtype == model.dtype and np.all(np.isfinite(y))


@FAST
@given(models_and_inputs(), st.sampled_from(["nan", "inf", "complex", "3-D", "width", "text"]))
def test_invalid_inputs_raise_value_or_type_errors(case, defect):
    model, X, _ = case
    bad = {"nan": lambda: np.where(X == X.flat[0], np.nan, X), "inf": lambda: np.where(X == X.flat[0], -np.inf, X),
           "complex": lambda: X * 1j, "3-D": lambda: X[None], "width": lambda: np.hstack([X, X]),
           "text": lambda: X.astype(str).astype(object) + "x"}[defect]()
    with pytest.raises((ValueError, TypeError)):
        model.predict(bad)


LOSSES = st.sampled_from(["MSELoss", "BCELoss", "BCEWithLogitsLoss", "SoftmaxCrossEntropyLoss"])


@st.composite
def loss_cases(draw, valid=True):
    name, dtype = draw(LOSSES), draw(DTYPES)
    rows, columns = draw(st.integers(1, 8)), draw(st.integers(2 if name == "SoftmaxCrossEntropyLoss" else 1, 5))
    y = draw(hnp.arrays(np.float64, (rows, columns), elements=finite(-50, 50))).astype(dtype)
    if name == "SoftmaxCrossEntropyLoss":
        t = draw(hnp.arrays(np.int64, rows, elements=st.integers(0, columns - 1 if valid else 50)))
        assume(valid or t.max() >= columns)
    elif name == "MSELoss":
        t = draw(hnp.arrays(np.float64, (rows, columns), elements=finite() if valid else st.just(np.nan)))
    else:
        elements = st.floats(0, 1) if valid else st.one_of(finite(-1e3, -1e-3), finite(1.001, 1e3))
        t = draw(hnp.arrays(np.float64, (rows, columns), elements=elements))
    return getattr(gn, name)(), y, t


@FAST
@given(loss_cases())
def test_losses_on_valid_inputs_are_finite_and_non_negative(case):
    loss, y, t = case
    value = loss(y, t)
    gradient = loss.backward()
    assert np.isfinite(value) and value >= -1e-6
    assert gradient.shape == y.shape and np.all(np.isfinite(gradient))


@FAST
@given(loss_cases(valid=False))
def test_losses_on_invalid_targets_raise(case):
    loss, y, t = case
    with pytest.raises((ValueError, FloatingPointError)):  # MSE of NaN targets: FloatingPointError
        loss(y, t)


TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=8)  # NumPy strips trailing NULs
NAMES = st.from_regex(r"[A-Za-z_][A-Za-z0-9_.-]{0,20}", fullmatch=True)
EXTRA_VALUES = st.one_of(
    hnp.arrays(st.sampled_from([np.int64, np.float64, np.bool_, np.uint8]), hnp.array_shapes(min_dims=0, max_dims=2),
               elements=None).filter(lambda a: a.dtype.kind != "f" or np.all(np.isfinite(a))),
    hnp.arrays(np.dtype("<U8"), hnp.array_shapes(max_dims=1, max_side=4), elements=TEXT),
    st.lists(TEXT, max_size=3), st.integers(-2**62, 2**62))


def tiny_model():
    return gn.Sequential(gn.Dense(2, 2, seed=0), gn.Sigmoid())


@FAST
@given(st.dictionaries(NAMES, EXTRA_VALUES, max_size=4))
def test_any_valid_extras_round_trip(extras):
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "m.npz")
        tiny_model().save(path, extras=extras)
        loaded = gn.load(path).extras
    assert sorted(loaded) == sorted(extras)
    for name, value in extras.items():
        expected = np.asarray(value)
        assert loaded[name].shape == expected.shape
        assert loaded[name].tolist() == expected.tolist()


@FAST
@given(st.one_of(st.none(), st.complex_numbers(allow_nan=False), st.dictionaries(st.text(), st.integers()),
                 st.builds(object), st.lists(st.one_of(st.integers(), st.none()), min_size=1).filter(
                     lambda items: None in items)))
def test_unstorable_extras_raise_type_error_and_keep_the_old_file(value):
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "m.npz")
        tiny_model().save(path)
        before = Path(path).read_bytes()
        with pytest.raises(TypeError):
            tiny_model().save(path, extras={"x": value})
        assert Path(path).read_bytes() == before and os.listdir(folder) == ["m.npz"]


def saved_bytes():
    buffer = io.BytesIO()
    with tempfile.TemporaryDirectory() as folder:
        tiny_model().save(os.path.join(folder, "m.npz"), extras={"classes": np.array(["a", "b"])})
        buffer.write(Path(folder, "m.npz").read_bytes())
    return buffer.getvalue()


GOOD = saved_bytes()


def load_bytes(data: bytes):
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "m.npz")
        with open(path, "wb") as file:
            file.write(data)
        return gn.load(path)


@settings(max_examples=5 * EXAMPLES, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(GOOD) - 1), st.integers(0, 255)), min_size=1, max_size=8),
       st.integers(16, len(GOOD)))
def test_damaged_files_load_or_raise_model_file_error(edits, length):
    data = bytearray(GOOD[:length])
    for position, value in edits:
        if position < len(data):
            data[position] = value
    try:
        model = load_bytes(bytes(data))
    except gn.ModelFileError:
        return
    assert all(np.all(np.isfinite(p.value)) for p in model.parameters())


JSON = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=5)),
                    lambda children: st.one_of(st.lists(children, max_size=3),
                                               st.dictionaries(st.text(max_size=5), children, max_size=3)),
                    max_leaves=12)
LAYER_RECORDS = st.lists(st.one_of(JSON, st.fixed_dictionaries(
    {"type": st.sampled_from(["Dense", "Tanh", "ReLU", "Conv"])},
    optional={"in_features": st.one_of(st.integers(-2, 10**9), JSON), "out_features": st.one_of(st.integers(-2, 9), JSON),
              "init": st.one_of(st.sampled_from(["he", "xavier"]), JSON)})), max_size=3)


@FAST
@given(st.fixed_dictionaries({}, optional={
    "format": st.one_of(st.just("gpunn-model"), JSON), "format_version": st.one_of(st.sampled_from([1, 2]), JSON),
    "dtype": st.one_of(st.sampled_from(["float32", "float64", "int8", "float16"]), JSON),
    "layers": st.one_of(LAYER_RECORDS, JSON), "extras": st.one_of(st.lists(NAMES, max_size=2), JSON),
    "optimizer": JSON}))
def test_crafted_metadata_raises_model_file_error(meta):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        encoded = io.BytesIO()
        np.lib.format.write_array(encoded, np.frombuffer(json.dumps(meta).encode(), np.uint8))
        archive.writestr("__gpunn_meta__.npy", encoded.getvalue())
        for name in ("layer0.W", "layer0.b", "extra.a"):
            encoded = io.BytesIO()
            np.lib.format.write_array(encoded, np.ones((2, 2), np.float32) if name.endswith("W") else np.ones(2, np.float32))
            archive.writestr(f"{name}.npy", encoded.getvalue())
    try:
        model = load_bytes(buffer.getvalue())
    except gn.ModelFileError:
        return
    assert all(np.all(np.isfinite(p.value)) for p in model.parameters())


CSV_TEXT = st.text(alphabet=st.sampled_from(list("0123456789.,-e\n labxnNiIf\"\ufeff")), max_size=80)


@FAST
@given(st.one_of(CSV_TEXT, CSV_TEXT.map(lambda body: "label,a,b\n" + body)), st.sampled_from(["auto", "regress"]))
def test_any_csv_text_gives_finite_data_or_a_data_error(text, task):
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "d.csv")
        with open(path, "w", encoding="utf-8") as file:
            file.write(text)
        try:  # what gpunn train does with a --data file: read it, then encode its feature columns
            data = load_files(path, task=task)
            (_, table), = data.files
            X = Encoding.fit(table, np.arange(table.rows), None, path).encode(table, path)
        except DataError:
            return
    assert X.ndim == 2 and X.shape[1] > 0 and np.all(np.isfinite(X))
    assert len(data.y) == len(X)


@FAST
@given(hnp.arrays(np.float64, st.tuples(st.integers(1, 20), st.integers(1, 3)),
                  elements=st.floats(-1e307, 1e307, allow_nan=False)))
def test_standardizer_is_finite_for_any_finite_column(X):
    scaler = Standardizer.fit(X)
    assert np.all(np.isfinite(scaler.mean)) and np.all(np.isfinite(scaler.std)) and np.all(scaler.std > 0)
    with np.errstate(over="ignore"):  # |x - mean| can exceed float64 only for spreads near 1e308
        scaled = scaler(X)
    assert np.all(np.isfinite(scaled))
