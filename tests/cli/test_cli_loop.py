"""gpunn train's loop features: --class-weight balanced (sklearn's formula over the training rows, handed
to fit, kept in the run's settings; runs recorded before the option resume unweighted) and history.csv."""

import json

import numpy as np
import pytest

import gpunn as gn
import gpunn.train.fit
from gpunn.cli.main import main


def train(capsys, out, *options):
    code = main(["train", "--backend", "numpy", "--quiet", "--out", str(out), *options])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def imbalanced(tmp_path):
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], [120, 30, 10])
    x = rng.normal(size=(160, 3)) + y[:, None]
    np.savez(tmp_path / "data.npz", X=x, y=y)
    return str(tmp_path / "data.npz")


def test_balanced_weights_are_sklearns_formula_over_the_training_rows(capsys, tmp_path, monkeypatch, imbalanced):
    seen = []
    real_fit = gpunn.train.fit.fit

    def spy(model, X, T, **options):
        seen.append((np.asarray(T), options.get("class_weight")))
        return real_fit(model, X, T, **options)

    monkeypatch.setattr(gpunn.train.fit, "fit", spy)
    assert train(capsys, tmp_path / "weighted", "--data", imbalanced, "--epochs", "2", "--class-weight",
                 "balanced")[0] == 0
    labels, weights = seen[-1]
    counts = np.bincount(labels)
    assert weights == pytest.approx({c: len(labels) / (3 * counts[c]) for c in range(3)})
    assert weights[2] > weights[1] > 1 > weights[0]
    assert train(capsys, tmp_path / "plain", "--data", imbalanced, "--epochs", "2")[0] == 0
    assert seen[-1][1] is None
    weighted, plain = (gn.load(tmp_path / name / "last.npz") for name in ("weighted", "plain"))
    assert not np.array_equal(weighted.flat.values, plain.flat.values)
    assert json.loads(str(weighted.extras["run"]))["args"]["class_weight"] == "balanced"
    assert train(capsys, tmp_path / "weighted", "--resume", str(tmp_path / "weighted"), "--epochs", "3")[0] == 0
    assert seen[-1][1] == weights  # the resumed run weighs as it did


def test_a_run_recorded_before_the_option_resumes_unweighted(capsys, tmp_path, imbalanced):
    run = tmp_path / "run"
    assert train(capsys, run, "--data", imbalanced, "--epochs", "1")[0] == 0
    model = gn.load(run / "last.npz")
    optimizer = gn.load_optimizer(run / "last.npz", model)
    record = json.loads(str(model.extras["run"]))
    del record["args"]["class_weight"]
    model.save(run / "last.npz", extras={**model.extras, "run": np.array(json.dumps(record))}, optimizer=optimizer)
    code, _, err = train(capsys, run, "--resume", str(run), "--epochs", "2")
    assert code == 0, err


def test_class_weight_refuses_regression(capsys, tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3))
    np.savez(tmp_path / "data.npz", X=x, y=x[:, 0] * 3.7)
    code, _, err = train(capsys, tmp_path / "run", "--data", str(tmp_path / "data.npz"), "--task", "regress",
                         "--class-weight", "balanced")
    assert code == 2 and "--task regress has none" in err and "Traceback" not in err


def read_csv(path):
    import csv

    with open(path, newline="") as file:
        return list(csv.reader(file))


def test_the_run_folder_gets_history_csv_that_a_resume_continues(capsys, tmp_path, imbalanced):
    run = tmp_path / "run"
    assert train(capsys, run, "--data", imbalanced, "--epochs", "2")[0] == 0
    table = read_csv(run / "history.csv")
    assert table[0] == ["epoch", "accuracy", "loss", "val_accuracy", "val_loss"] and len(table) == 3
    history = json.loads(str(gn.load(run / "last.npz").extras["run"]))["history"]
    assert [float(row[2]) for row in table[1:]] == history["loss"]
    assert train(capsys, run, "--resume", str(run), "--epochs", "3")[0] == 0
    assert [row[0] for row in read_csv(run / "history.csv")] == ["epoch", "1", "2", "3"]
