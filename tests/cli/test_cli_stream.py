"""gpunn train --stream: a --data file never loaded whole (issue 24). The streamed statistics equal
the in-memory Standardizer's; every format trains the model that fit trains on the standardised rows
(bit for bit); text, missing cells and --impute are refused; resume is exact; predict works."""

import json
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest

import gpunn as gn
from gpunn.cli.build import build_model
from gpunn.cli.data import Standardizer
from gpunn.cli import streaming, train as train_command
from gpunn.cli.streaming import Moments, part_bounds
from gpunn.data import Dataset, stream
from gpunn.data.rows import RowSource
from support.cli import ok as ok_and_err, run, user_error as refused


def ok(capsys, *argv) -> str:
    return ok_and_err(capsys, *argv)[0]

FAST = ["--backend", "numpy", "--epochs", "2", "--hidden", "8", "--quiet", "--stream"]


def table(rows=150, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 3)).round(5) * [1.0, 50.0, 1e-3]
    labels = np.where(x[:, 0] + x[:, 1] / 50 > 0, 7, 3)  # class codes 3 and 7: indices 0 and 1
    return pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "label": labels})


def write_all(data, folder):
    x, y = np.ascontiguousarray(data[["a", "b", "c"]].to_numpy()), data["label"].to_numpy()  # pandas': Fortran order
    data.to_csv(folder / "d.csv", index=False)
    data.to_parquet(folder / "d.parquet")
    np.savez(folder / "d.npz", X=x, y=y)
    np.save(folder / "d.npy", np.ascontiguousarray(np.column_stack([x, y])))  # pandas' columns: Fortran order
    return x, y


def test_streamed_moments_equal_the_in_memory_standardizer():
    rng = np.random.default_rng(1)
    X = np.column_stack([rng.normal(3, 2, 1000), rng.normal(size=1000) * 1e200, np.full(1000, 5.0),
                         rng.normal(1e4, 1.0, 1000)])
    X[700:, 1] *= 10  # a larger magnitude arrives late: the earlier moments are rescaled
    moments = Moments(4)
    for start, stop in [(0, 1), (1, 250), (250, 700), (700, 1000)]:
        moments.add(X[start:stop])
    streamed, memory = moments.standardizer(), Standardizer.fit(X)
    np.testing.assert_allclose(streamed.mean, memory.mean, rtol=1e-12)
    np.testing.assert_allclose(streamed.std, memory.std, rtol=1e-12)
    assert streamed.std[2] == 1.0  # a constant column keeps std 1, as Standardizer's does
    # std/mean = 1e-9: float64 itself bounds both to ~1e-9 of the exact std (here, with fractions)
    column = rng.normal(1e6, 1e-3, 1000)
    exact_mean = sum(map(Fraction, column.tolist())) / 1000
    exact = sum((Fraction(v) - exact_mean) ** 2 for v in column.tolist()) / 1000
    moments = Moments(1)
    for start in range(0, 1000, 300):
        moments.add(column[start:start + 300, None])
    assert abs(moments.standardizer().std[0] - float(exact) ** 0.5) < 5e-9 * float(exact) ** 0.5


def test_parts_are_the_last_rows_as_keras_cuts_them():
    assert part_bounds(100, 0.2, 0.1, False, False) == [(0, 72), (72, 80), (80, 100)]
    assert part_bounds(100, 0.2, 0.0, False, False) == [(0, 80), (80, 80), (80, 100)]
    assert part_bounds(100, 0.2, 0.1, True, True) == [(0, 100), (100, 100), (100, 100)]


def reference_weights(x, y, train, validation, mean, std, epochs=2):
    """The model fit trains on the standardised rows held in memory, as Datasets (the same batches)."""
    def part(bounds):
        rows = slice(*bounds)
        return Dataset((x[rows] - mean) / std, np.searchsorted([3, 7], y[rows]))

    model = build_model(3, [8], 2, "tanh", "float32", 0)
    model.fit(part(train), None, loss=gn.SoftmaxCrossEntropyLoss(), optimizer=gn.Adam(lr=0.002), epochs=epochs,
              batch_size=32, seed=0, verbose=0, metrics=("accuracy",), validation_data=(part(validation), None))
    return model.flat.values


def test_every_format_streams_the_model_fit_trains_on_the_standardised_rows(capsys, tmp_path):
    data = table()
    x, y = write_all(data, tmp_path)
    weights = {}
    for kind in ("npy", "npz", "csv", "parquet"):
        ok(capsys, "train", "--data", tmp_path / f"d.{kind}", "--out", tmp_path / kind, *FAST)
        weights[kind] = gn.load(tmp_path / kind / "last.npz").flat.values
    stored = gn.load(tmp_path / "npy" / "last.npz").extras
    train, validation, test = part_bounds(150, 0.2, 0.1, False, False)
    assert stored["split_rows"].tolist() == [list(train), list(validation), list(test)]
    memory = Standardizer.fit(x[slice(*train)])
    np.testing.assert_allclose(stored["mean"], memory.mean, rtol=1e-12)
    np.testing.assert_allclose(stored["std"], memory.std, rtol=1e-12)
    assert stored["classes"].tolist() == ["3", "7"]
    expected = reference_weights(x, y, train, validation, stored["mean"], stored["std"])
    for kind, values in weights.items():
        np.testing.assert_array_equal(values, expected, err_msg=kind)


def test_the_file_is_read_in_chunks_and_never_through_the_in_memory_loader(capsys, tmp_path, monkeypatch):
    write_all(table(rows=10_000), tmp_path)

    def loaded(*args, **kwargs):
        raise AssertionError("--stream loaded the file whole")

    spans, read = [], RowSource.read

    def recorded(self, start, stop, out=None):
        spans.append(stop - start)
        return read(self, start, stop, out)

    monkeypatch.setattr(train_command, "load_files", loaded)
    monkeypatch.setattr(RowSource, "read", recorded)
    monkeypatch.setattr(streaming, "SCAN_BYTES", 500 * 3 * 8)  # the statistics pass: 500 rows at a time
    monkeypatch.setattr(stream, "CHUNK_BYTES", 256 * 3 * 8)  # training: one batch per chunk; evaluate: 4096 rows
    ok(capsys, "train", "--data", tmp_path / "d.npy", "--out", tmp_path / "run", *FAST, "--batch-size", "256")
    assert len(spans) > 50 and max(spans) <= 4096 < 7200  # never the training part (7200 rows) at once
    assert sum(span == 256 for span in spans) >= 2 * 7200 // 256  # each epoch's chunks


def test_the_run_prints_where_each_part_lies_and_its_rows_per_class(capsys, tmp_path):
    data = table().sort_values("label")  # sorted by label: the test part holds one class only
    write_all(data, tmp_path)
    out = ok(capsys, "train", "--data", tmp_path / "d.npy", "--out", tmp_path / "run",
             *[option for option in FAST if option != "--quiet"])
    assert "not stratified" in out and "train rows 1..108, validation rows 109..120, test rows 121..150" in out
    test_line = next(line for line in out.splitlines() if line.strip().startswith("test rows per class"))
    assert test_line.split(": ")[1] == "3 0, 7 30"
    code, out, err = run(capsys, "train", "--data", tmp_path / "d.npy", "--out", tmp_path / "quiet", *FAST)
    assert code == 0 and out.count("rows per class") == 0
    assert "warning: --stream: the test part (rows by position) has no rows of class(es) 3; is the file sorted" in err
    assert "validation part" in err and "train part" not in err


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_text_columns_and_missing_cells_are_refused_with_the_fix(capsys, tmp_path, kind):
    data = table()
    text = data.assign(b=np.where(data["b"] > 0, "up", "down"))
    missing = data.copy()
    missing.loc[120, "c"] = np.nan  # in the test part: every part is checked before training
    for name, frame in (("text", text), ("missing", missing)):
        path = tmp_path / f"{name}.{kind}"
        frame.to_csv(path, index=False) if kind == "csv" else frame.to_parquet(path)
        err = refused(capsys, "train", "--data", path, "--out", tmp_path / name, *FAST)
        assert ("'b'" if name == "text" else "'c'") in err and "drop --stream" in err, err


def test_nan_in_an_npy_impute_and_text_labels_are_refused(capsys, tmp_path):
    data = table()
    x, y = write_all(data, tmp_path)
    np.save(tmp_path / "fortran.npy", np.asfortranarray(np.column_stack([x, y])))
    err = refused(capsys, "train", "--data", tmp_path / "fortran.npy", "--out", tmp_path / "f", *FAST)
    assert "Fortran order" in err and "np.ascontiguousarray" in err and "drop --stream" in err
    x[5, 2] = np.nan
    np.save(tmp_path / "nan.npy", np.ascontiguousarray(np.column_stack([x, y])))
    err = refused(capsys, "train", "--data", tmp_path / "nan.npy", "--out", tmp_path / "a", *FAST)
    assert "column 3" in err and "data row 6" in err and "drop --stream" in err
    err = refused(capsys, "train", "--data", tmp_path / "d.npy", "--impute", "median", "--out", tmp_path / "b", *FAST)
    assert "--impute median needs each column's training cells sorted" in err and "drop --stream" in err
    data.assign(label=np.where(data["label"] == 7, "seven", "three")).to_csv(tmp_path / "words.csv", index=False)
    err = refused(capsys, "train", "--data", tmp_path / "words.csv", "--out", tmp_path / "c", *FAST)
    assert "'label'" in err and "drop --stream" in err
    assert "apply to --data" in refused(capsys, "train", "--stream", "--out", tmp_path / "d", "--backend", "numpy")


def test_impute_mean_fills_from_the_streaming_pass_as_the_in_memory_run_does(capsys, tmp_path):
    data = table()
    x, y = write_all(data, tmp_path)
    holes = x.copy()
    holes[[3, 50, 111, 140], [0, 2, 1, 2]] = np.nan  # training, validation and test rows
    np.save(tmp_path / "holes.npy", np.ascontiguousarray(np.column_stack([holes, y])))
    frame = data.copy()
    frame[["a", "b", "c"]] = holes
    frame.to_csv(tmp_path / "holes.csv", index=False)
    for kind in ("npy", "csv"):
        ok(capsys, "train", "--data", tmp_path / f"holes.{kind}", "--impute", "mean", "--out", tmp_path / kind, *FAST)
    train, validation, _ = part_bounds(150, 0.2, 0.1, False, False)
    fills = np.nanmean(holes[:108], axis=0)  # Encoding.fit's fills: the training rows' known cells
    filled = np.where(np.isnan(holes), fills, holes)
    memory = Standardizer.fit(filled[:108])
    run = gn.load(tmp_path / "npy" / "last.npz")
    stored = json.loads(str(run.extras["encoding"]))
    assert stored["impute"] == "mean"
    np.testing.assert_allclose([column["fill"] for column in stored["columns"]], fills, rtol=1e-12)
    np.testing.assert_allclose(run.extras["mean"], memory.mean, rtol=1e-12)
    np.testing.assert_allclose(run.extras["std"], memory.std, rtol=1e-12)
    own_fill = np.where(np.isnan(holes), run.extras["mean"], holes)  # the run's own fills, bit for bit
    expected = reference_weights(own_fill, y, train, validation, run.extras["mean"], run.extras["std"])
    np.testing.assert_array_equal(run.flat.values, expected)
    np.testing.assert_array_equal(gn.load(tmp_path / "csv" / "last.npz").flat.values, expected)
    lines = ok(capsys, "predict", tmp_path / "csv", tmp_path / "holes.csv").splitlines()
    assert len(lines) == 151 and "nan" not in "".join(lines)


def test_resume_of_a_streamed_run_equals_a_straight_run_and_refuses_changed_rows(capsys, tmp_path):
    data = table()
    x, y = write_all(data, tmp_path)
    ok(capsys, "train", "--data", tmp_path / "d.parquet", "--out", tmp_path / "straight", *FAST, "--epochs", "4")
    ok(capsys, "train", "--data", tmp_path / "d.parquet", "--out", tmp_path / "cut", *FAST)
    ok(capsys, "train", "--resume", tmp_path / "cut", "--epochs", "4", "--backend", "numpy", "--quiet")
    np.testing.assert_array_equal(gn.load(tmp_path / "cut" / "last.npz").flat.values,
                                  gn.load(tmp_path / "straight" / "last.npz").flat.values)
    assert gn.load(tmp_path / "cut" / "last.npz").extras["run"].item().count('"stream": true') == 1
    ok(capsys, "train", "--data", tmp_path / "d.npy", "--out", tmp_path / "npy", *FAST)
    x[140, 0] += 1  # one test row changes: the scaler does not, the digest does
    np.save(tmp_path / "d.npy", np.ascontiguousarray(np.column_stack([x, y])))
    err = refused(capsys, "train", "--resume", tmp_path / "npy", "--epochs", "3", "--backend", "numpy")
    assert "test rows changed" in err and "train rows" not in err


def test_predict_on_a_streamed_run(capsys, tmp_path):
    data = table()
    x, _ = write_all(data, tmp_path)
    ok(capsys, "train", "--data", tmp_path / "d.csv", "--out", tmp_path / "run", *FAST)
    checkpoint = gn.load(tmp_path / "run" / "best.npz")
    probabilities = checkpoint.predict((x[:5] - checkpoint.extras["mean"]) / checkpoint.extras["std"])
    probabilities = np.exp(probabilities - probabilities.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    for kind in ("csv", "npy"):
        lines = ok(capsys, "predict", tmp_path / "run", tmp_path / f"d.{kind}").splitlines()
        assert lines[0] == "prediction,p_3,p_7" and len(lines) == 151
        for line, row in zip(lines[1:6], probabilities):
            assert line.split(",")[0] == ["3", "7"][int(row.argmax())]
            np.testing.assert_allclose([float(p) for p in line.split(",")[1:]], row, atol=2e-6)


def test_a_streamed_regression_scales_its_targets_and_reports_the_test_scores(capsys, tmp_path):
    data = table()
    data["label"] = data["a"] * 3 + 100
    data.to_parquet(tmp_path / "r.parquet")
    out = ok(capsys, "train", "--data", tmp_path / "r.parquet", "--task", "regress", "--out", tmp_path / "run", *FAST)
    extras = gn.load(tmp_path / "run" / "last.npz").extras
    target = Standardizer.fit(data["label"].to_numpy()[:108, None])
    np.testing.assert_allclose(extras["target_mean"], target.mean, rtol=1e-12)
    np.testing.assert_allclose(extras["target_std"], target.std, rtol=1e-12)
    model = gn.load(tmp_path / "run" / "last.npz")
    x = (data[["a", "b", "c"]].to_numpy()[120:] - extras["mean"]) / extras["std"]
    predicted = model.predict(x)[:, 0].astype(np.float64) * target.std[0] + target.mean[0]
    truth = data["label"].to_numpy()[120:]
    rmse = np.sqrt(np.mean((predicted - truth) ** 2))
    r2 = 1 - np.mean((predicted - truth) ** 2) / np.var(truth)
    assert f"test RMSE: {rmse:.6g}  test R²: {r2:.4f}" in out


def test_a_streamed_run_on_cupy_trains_what_numpy_trains(capsys, tmp_path):
    from support import cupy_standin

    write_all(table(), tmp_path)
    options = [option for option in FAST if option not in ("--backend", "numpy")] + ["--dtype", "float64"]
    ok(capsys, "train", "--data", tmp_path / "d.parquet", "--out", tmp_path / "numpy", "--backend", "numpy", *options)
    with cupy_standin.installed() as standin:
        ok(capsys, "train", "--data", tmp_path / "d.parquet", "--out", tmp_path / "cupy", "--backend", "cupy", *options)
        assert standin.device.streams_state["pinned"]  # the batches went through pinned buffers to the device
    np.testing.assert_allclose(gn.load(tmp_path / "cupy" / "last.npz", backend="numpy").flat.values,
                               gn.load(tmp_path / "numpy" / "last.npz").flat.values, rtol=1e-10, atol=1e-12)
