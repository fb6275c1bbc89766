"""ONNX export, checked with ONNX Runtime on the CPU against predict, and the CLI's export against
gpunn predict (issue 23)."""

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gpunn as gn
from gpunn import cli

onnx = pytest.importorskip("onnx", reason="the [onnx] extra: pip install '.[onnx]'")
ort = pytest.importorskip("onnxruntime", reason="the [onnx] extra: pip install '.[onnx]'")
ROOT = Path(__file__).resolve().parents[2]


def every_layer(dtype):
    """Each layer type and activation of gpunn once, parameters at values other than the defaults."""
    return gn.Sequential(
        gn.Dense(5, 8, seed=0, dtype=dtype), gn.GELU(), gn.Dense(8, 8, seed=1, dtype=dtype), gn.LayerNorm(8, eps=1e-3, dtype=dtype),
        gn.Residual(gn.Dense(8, 8, seed=2, dtype=dtype), gn.Softplus(beta=2.0, threshold=3.0)), gn.Dropout(0.3, seed=0),
        gn.SiLU(), gn.Dense(8, 8, seed=3, dtype=dtype), gn.GELU(approximate="tanh"), gn.LeakyReLU(0.1),
        gn.Dense(8, 8, seed=4, dtype=dtype), gn.Tanh(), gn.Dense(8, 8, seed=5, dtype=dtype), gn.ReLU(), gn.Identity(),
        gn.Dense(8, 3, seed=6, dtype=dtype), gn.Sigmoid())


def run(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})


@pytest.mark.parametrize("dtype,rtol,atol", [("float32", 2e-5, 2e-6), ("float16", 2e-3, 1e-3)])
def test_every_layer_type_matches_predict_to_the_dtypes_rounding(tmp_path, rng, dtype, rtol, atol):
    model = every_layer(dtype)
    model.fit(rng.normal(size=(64, 5)), rng.uniform(size=(64, 3)), loss=gn.MSELoss(), optimizer=gn.Adam(lr=0.01),
              epochs=2, batch_size=16, verbose=0, seed=0)  # trained: LayerNorm's gain and bias are no longer 1 and 0
    gn.export_onnx(model, tmp_path / "m.onnx", metadata={"note": "every layer"})
    for rows in (1, 33):  # the batch dimension is dynamic
        x = rng.normal(size=(rows, 5)).astype(dtype)
        output, = run(tmp_path / "m.onnx", x)
        assert output.dtype == np.dtype(dtype) and output.shape == (rows, 3)
        np.testing.assert_allclose(output.astype(np.float64), model.predict(x).astype(np.float64), rtol=rtol, atol=atol)
    exported = onnx.load(tmp_path / "m.onnx")
    onnx.checker.check_model(exported, full_check=True)
    assert {prop.key: prop.value for prop in exported.metadata_props} == {"note": "every layer"}
    assert exported.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


def test_a_float64_model_keeps_float64(tmp_path, rng):
    """ONNX Runtime has no double Erf: exact GELU in float64 is valid ONNX it cannot run; the rest can."""
    model = gn.Sequential(gn.Dense(4, 6, seed=0, dtype="float64"), gn.Tanh(), gn.LayerNorm(6, dtype="float64"),
                          gn.Dense(6, 2, seed=1, dtype="float64"))
    gn.export_onnx(model, tmp_path / "m.onnx")
    x = rng.normal(size=(9, 4))
    output, = run(tmp_path / "m.onnx", x)
    assert output.dtype == np.float64
    np.testing.assert_allclose(output, model.predict(x), rtol=1e-10, atol=1e-10)


def predictions(text):
    rows = list(csv.reader(io.StringIO(text)))
    return rows[0], rows[1:]


def test_the_cli_export_of_a_run_serves_raw_rows_as_gpunn_predict_does(tmp_path, capsys):
    pytest.importorskip("sklearn", reason="the digits come with scikit-learn")
    from sklearn.datasets import load_digits

    assert cli.main(["train", "--backend", "numpy", "--quiet", "--epochs", "3", "--out", str(tmp_path / "run")]) == 0
    assert cli.main(["export", str(tmp_path / "run"), str(tmp_path / "digits.onnx")]) == 0
    assert "best.npz" in capsys.readouterr().out
    X = load_digits().data[:40]
    with open(tmp_path / "rows.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow([f"pixel_{row}_{column}" for row in range(8) for column in range(8)])
        writer.writerows(X.tolist())
    assert cli.main(["predict", str(tmp_path / "run" / "best.npz"), str(tmp_path / "rows.csv")]) == 0
    header, rows = predictions(capsys.readouterr().out)
    probabilities, index = run(tmp_path / "digits.onnx", X.astype(np.float32))
    exported = onnx.load(tmp_path / "digits.onnx")
    metadata = {prop.key: prop.value for prop in exported.metadata_props}
    classes = json.loads(metadata["classes"])
    assert metadata["task"] == "classify" and json.loads(metadata["features"]) is None  # the digits have no names
    assert [classes[i] for i in index] == [row[0] for row in rows]
    np.testing.assert_allclose(probabilities, np.array([row[1:] for row in rows], dtype=float), atol=2e-6)


def test_the_cli_export_of_a_regression_gives_the_value_in_the_targets_units(tmp_path, capsys, rng):
    X = rng.normal(size=(120, 3)) * [1, 100, 0.01]
    y = 1000 + 50 * X[:, 0] - 0.3 * X[:, 1] + 2000 * X[:, 2]
    with open(tmp_path / "train.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["a", "b", "c", "price"])
        writer.writerows(np.column_stack([X, y]).tolist())
    assert cli.main(["train", "--backend", "numpy", "--quiet", "--data", str(tmp_path / "train.csv"), "--label", "price",
                     "--task", "regress", "--epochs", "5", "--out", str(tmp_path / "run")]) == 0
    assert cli.main(["export", str(tmp_path / "run" / "last.npz"), str(tmp_path / "price.onnx")]) == 0
    assert cli.main(["predict", str(tmp_path / "run" / "last.npz"), str(tmp_path / "train.csv")]) == 0
    capsys.readouterr()  # the export's line
    assert cli.main(["predict", str(tmp_path / "run" / "last.npz"), str(tmp_path / "train.csv")]) == 0
    _, rows = predictions(capsys.readouterr().out)
    value, = run(tmp_path / "price.onnx", X.astype(np.float32))
    metadata = {prop.key: prop.value for prop in onnx.load(tmp_path / "price.onnx").metadata_props}
    assert metadata["task"] == "regress" and json.loads(metadata["features"]) == ["a", "b", "c"]
    np.testing.assert_allclose(value[:, 0], [float(row[0]) for row in rows], rtol=1e-5)


def test_exporting_what_is_no_checkpoint_is_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert cli.main(["export", str(tmp_path / "empty"), str(tmp_path / "m.onnx")]) == 2
    assert "holds neither best.npz nor last.npz" in capsys.readouterr().err
    gn.Sequential(gn.Dense(2, 2)).save(tmp_path / "bare.npz")
    assert cli.main(["export", str(tmp_path / "bare.npz"), str(tmp_path / "m.onnx")]) == 2
    assert "not a checkpoint written by 'gpunn train'" in capsys.readouterr().err


def test_without_the_onnx_package_the_error_names_the_install(tmp_path):
    script = ("import sys; sys.modules['onnx'] = None\nimport gpunn as gn\n"
              "try:\n    gn.export_onnx(gn.Sequential(gn.Dense(2, 2)), 'm.onnx')\n"
              "except ImportError as error:\n    print(error)\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path,
                         env={"PYTHONPATH": str(ROOT), "PATH": ""}).stdout
    assert "ONNX export needs the onnx package" in out and "[onnx]" in out


def test_the_export_of_an_imputing_run_fills_nan_inputs_and_a_one_hot_run_is_refused(tmp_path, capsys, rng):
    X = rng.normal(size=(80, 2))
    label = np.where(X[:, 0] > X[:, 1], "up", "down")
    X[::7, 1] = np.nan
    with open(tmp_path / "train.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["a", "b", "label"])
        writer.writerows([["" if np.isnan(v) else v for v in row] + [name] for row, name in zip(X.tolist(), label)])
    assert cli.main(["train", "--backend", "numpy", "--quiet", "--data", str(tmp_path / "train.csv"), "--impute", "mean",
                     "--epochs", "3", "--hidden", "8", "--out", str(tmp_path / "run")]) == 0
    assert cli.main(["export", str(tmp_path / "run"), str(tmp_path / "m.onnx")]) == 0
    capsys.readouterr()
    assert cli.main(["predict", str(tmp_path / "run"), str(tmp_path / "train.csv")]) == 0
    _, rows = predictions(capsys.readouterr().out)
    probabilities, _ = run(tmp_path / "m.onnx", X.astype(np.float32))  # NaN where the CSV's cells are empty
    np.testing.assert_allclose(probabilities, np.array([row[1:] for row in rows], dtype=float), atol=2e-6)
    with open(tmp_path / "colours.csv", "w") as file:
        file.write("a,colour,label\n" + "".join(f"{i},{'red' if i % 2 else 'blue'},{i % 3 == 0}\n" for i in range(30)))
    assert cli.main(["train", "--backend", "numpy", "--quiet", "--data", str(tmp_path / "colours.csv"), "--epochs", "1",
                     "--hidden", "4", "--out", str(tmp_path / "colours")]) == 0
    assert cli.main(["export", str(tmp_path / "colours"), str(tmp_path / "c.onnx")]) == 2
    assert "one-hot encodes the text column(s) 'colour'" in capsys.readouterr().err
