"""The command line end to end: train, predict, info, and one clear line for every user error."""

import re
import subprocess
import sys

import numpy as np

import gpunn as gn
from gpunn import cli
from gpunn.extras import install_command


def run(capsys, *argv):
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def train_digits(capsys, tmp_path, *extra):
    return run(capsys, "train", "--backend", "numpy", "--epochs", "3", "--out", str(tmp_path), *extra)


def test_train_on_digits(capsys, tmp_path):
    code, out, err = train_digits(capsys, tmp_path)
    assert code == 0, err
    accuracy = float(out.split("test accuracy: ")[1].split()[0])
    assert accuracy > 0.9  # ten classes: chance is 0.1
    assert "epoch   3/3" in out + err and "wall time:" in out
    model = gn.load(tmp_path / "last.npz")
    assert [layer.out_features for layer in model.layers[::2]] == [128, 64, 10]
    assert (tmp_path / "curves.png").stat().st_size > 1000


def test_same_seed_same_numbers(capsys, tmp_path):
    runs = [train_digits(capsys, tmp_path / str(i), "--seed", "7", "--quiet")[1] for i in range(2)]
    other = train_digits(capsys, tmp_path / "other", "--seed", "8", "--quiet")[1]

    def numbers(out):
        return [line for line in out.splitlines() if line.startswith("test accuracy")]

    assert numbers(runs[0]) == numbers(runs[1])
    first, second = (np.load(tmp_path / str(i) / "last.npz")["layer0.W"] for i in range(2))
    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first, np.load(tmp_path / "other" / "last.npz")["layer0.W"])
    assert other


def write_csv(path, rows=60, seed=0, label="species"):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 3)).round(5)
    names = np.where(x[:, 0] + x[:, 1] > 0, "big", "small")
    with open(path, "w") as file:
        file.write(f"a,b,{label},c\n")
        for row, name in zip(x, names):
            file.write(f"{row[0]:.5f},{row[1]:.5f},{name},{row[2]:.5f}\n")
    return x, names


def test_train_on_a_csv_then_predict(capsys, tmp_path):
    x, names = write_csv(tmp_path / "data.csv")
    code, out, err = run(capsys, "train", "--backend", "numpy", "--data", str(tmp_path / "data.csv"),
                         "--label", "species", "--hidden", "8", "--epochs", "60", "--optimizer", "sgd", "--out", str(tmp_path / "run"),
                         "--quiet")
    assert code == 0, err
    code, out, err = run(capsys, "predict", str(tmp_path / "run" / "last.npz"), str(tmp_path / "data.csv"),
                         "--label", "species", "--backend", "numpy")
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[0] == "prediction,p_big,p_small" and len(lines) == 61
    predicted = np.array([line.split(",")[0] for line in lines[1:]])
    assert np.mean(predicted == names) > 0.9
    probabilities = np.array([[float(v) for v in line.split(",")[1:]] for line in lines[1:]])
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    np.savez(tmp_path / "x.npz", X=x)
    code, _, err = run(capsys, "predict", str(tmp_path / "run" / "last.npz"), str(tmp_path / "x.npz"),
                       "--out", str(tmp_path / "p.csv"))
    assert code == 0, err
    assert (tmp_path / "p.csv").read_text().splitlines()[1:] == lines[1:]


def user_error(capsys, *argv):
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    return err


def test_user_errors_print_one_line(capsys, tmp_path):
    write_csv(tmp_path / "data.csv")
    assert "no such file" in user_error(capsys, "train", "--data", str(tmp_path / "missing.csv"))
    (tmp_path / "ragged.csv").write_text("a,b,label\n1,2,0\n3,4\n")
    assert "rows have" in user_error(capsys, "train", "--data", str(tmp_path / "ragged.csv"))
    (tmp_path / "binary.csv").write_bytes(b"\xff\xfe\x00garbage\x81")
    assert "unreadable CSV" in user_error(capsys, "train", "--data", str(tmp_path / "binary.csv"))
    assert "is the label column named something other than 'label'" in user_error(
        capsys, "train", "--data", str(tmp_path / "data.csv"))
    assert "invalid choice: 'swish'" in user_error(capsys, "train", "--activation", "swish")
    assert "expected a positive int" in user_error(capsys, "train", "--epochs", "0")
    assert "expected a number in [0, 1), got '1.5'" in user_error(capsys, "train", "--momentum", "1.5")
    assert "expected a number in (0, 1), got '0'" in user_error(capsys, "train", "--test-fraction", "0")
    assert "expected sizes like 128,64" in user_error(capsys, "train", "--hidden", "12,x")
    (tmp_path / "data.txt").write_text("a,b\n")
    assert "unknown file type" in user_error(capsys, "train", "--data", str(tmp_path / "data.txt"))
    assert "--graph needs the cupy backend" in user_error(capsys, "train", "--backend", "numpy", "--graph")


def test_predict_errors(capsys, tmp_path):
    write_csv(tmp_path / "data.csv")
    assert run(capsys, "train", "--backend", "numpy", "--data", str(tmp_path / "data.csv"), "--label", "species",
               "--epochs", "1", "--out", str(tmp_path / "run"), "--quiet")[0] == 0
    checkpoint = str(tmp_path / "run" / "last.npz")
    np.savez(tmp_path / "wide.npz", X=np.ones((2, 5)))
    assert "5 features, but the checkpoint expects 3" in user_error(
        capsys, "predict", checkpoint, str(tmp_path / "wide.npz"))
    assert "no such checkpoint" in user_error(capsys, "predict", str(tmp_path / "nope.npz"), str(tmp_path / "wide.npz"))
    model = gn.load(checkpoint)
    from gpunn.io import model_file

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(model_file, "FORMAT_VERSION", 99)  # a future gpunn, which reads what it writes
        patch.setattr(model_file, "READABLE_VERSIONS", (1, 2, 99))
        model.save(tmp_path / "future.npz")
    assert "format version 99" in user_error(capsys, "predict", str(tmp_path / "future.npz"), str(tmp_path / "wide.npz"))
    gn.Sequential(gn.Dense(3, 2)).save(tmp_path / "bare.npz")
    assert "not a checkpoint written by 'gpunn train'" in user_error(
        capsys, "predict", str(tmp_path / "bare.npz"), str(tmp_path / "wide.npz"))


def test_without_scikit_learn_train_says_how_to_install(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    assert install_command("data") in user_error(capsys, "train", "--out", str(tmp_path))


def test_entry_point_runs_as_a_module():
    result = subprocess.run([sys.executable, "-m", "gpunn", "info"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "backends available: numpy" in result.stdout and "cupy" in result.stdout
    help_text = subprocess.run([sys.executable, "-m", "gpunn", "train", "--help"], capture_output=True, text=True).stdout
    for option in ("--backend", "--hidden", "--activation", "--loss", "--epochs", "--batch-size", "--lr",
                   "--momentum", "--dtype", "--seed", "--out", "--data", "--quiet"):
        assert option in help_text


def test_without_matplotlib_train_says_how_to_get_curves(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code, out, err = train_digits(capsys, tmp_path, "--epochs", "1", "--quiet")
    assert code == 0, err
    assert f"curves: not drawn ({install_command('plot')} for a PNG)" in out
    assert not (tmp_path / "curves.png").exists()


def test_train_a_modern_mlp(capsys, tmp_path):
    code, out, err = train_digits(capsys, tmp_path, "--activation", "gelu", "--dropout", "0.1", "--layer-norm",
                                  "--residual", "--hidden", "32,32", "--quiet")
    assert code == 0, err
    assert float(out.split("test accuracy: ")[1].split()[0]) > 0.9
    model = gn.load(tmp_path / "last.npz")
    assert [type(layer).__name__ for layer in model.layers] == ["Dense", "LayerNorm", "GELU", "Dropout", "Residual", "Dense"]
    assert [type(layer).__name__ for layer in model.layers[4].layers] == ["Dense", "LayerNorm", "GELU", "Dropout"]


def test_other_new_activations_and_a_residual_without_equal_widths(capsys, tmp_path):
    for activation in ("silu", "leaky-relu"):
        code, _, err = train_digits(capsys, tmp_path / activation, "--activation", activation, "--hidden", "16",
                                    "--quiet")
        assert code == 0, err
    code, _, err = train_digits(capsys, tmp_path / "r", "--residual", "--hidden", "16,8")
    assert code == 2 and "--residual needs two consecutive hidden layers of the same size" in err
    code, _, err = train_digits(capsys, tmp_path / "d", "--dropout", "1.5")
    assert code == 2 and "expected a number in [0, 1)" in err


# --- issue 14: columns by name, labels as written, regression, one line for every user error -
import csv  # noqa: E402
import io  # noqa: E402
import os  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def rows_of(text):
    return list(csv.reader(io.StringIO(text)))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A checkpoint trained on write_csv's data (columns a, b, species, c), and that data."""
    folder = tmp_path_factory.mktemp("trained")
    x, names = write_csv(folder / "data.csv")
    code = cli.main(["train", "--backend", "numpy", "--data", str(folder / "data.csv"), "--label", "species",
                     "--hidden", "8", "--epochs", "40", "--out", str(folder / "run"), "--quiet"])
    assert code == 0
    return folder, str(folder / "run" / "last.npz"), x, names


def write_columns(path, columns: dict):
    names = list(columns)
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(names)
        writer.writerows(zip(*(columns[name] for name in names)))
    return str(path)


def test_predict_matches_columns_by_name_and_needs_no_label(capsys, trained):
    folder, checkpoint, x, names = trained
    code, original, err = run(capsys, "predict", checkpoint, str(folder / "data.csv"), "--backend", "numpy")
    assert code == 0, err
    shuffled = write_columns(folder / "shuffled.csv", {"c": x[:, 2], "species": names, "a": x[:, 0], "b": x[:, 1]})
    code, out, err = run(capsys, "predict", checkpoint, shuffled, "--backend", "numpy")
    assert code == 0, err
    assert out == original
    no_label = write_columns(folder / "nolabel.csv", {"b": x[:, 1], "c": x[:, 2], "a": x[:, 0]})
    assert run(capsys, "predict", checkpoint, no_label, "--backend", "numpy")[1] == original


def test_predict_refuses_missing_and_unexpected_columns(capsys, trained):
    folder, checkpoint, x, _ = trained
    missing = write_columns(folder / "missing.csv", {"a": x[:, 0], "b": x[:, 1]})
    assert "missing column(s) 'c'" in user_error(capsys, "predict", checkpoint, missing)
    extra = write_columns(folder / "extra.csv", {"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "d": x[:, 2]})
    assert "unexpected column(s) 'd'" in user_error(capsys, "predict", checkpoint, extra)
    renamed = write_columns(folder / "renamed.csv", {"a": x[:, 0], "B": x[:, 1], "c": x[:, 2]})
    err = user_error(capsys, "predict", checkpoint, renamed)
    assert "missing column(s) 'b'" in err and "unexpected column(s) 'B'" in err


def test_class_names_with_commas_and_quotes_survive_the_csv(capsys, tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 2))
    labels = np.where(x[:, 0] > 0, 'big, "really"', "small\nthing")
    data = write_columns(tmp_path / "d.csv", {"a": x[:, 0], "b": x[:, 1], "label": labels})
    assert run(capsys, "train", "--backend", "numpy", "--data", data, "--epochs", "30", "--hidden", "4",
               "--out", str(tmp_path / "run"), "--quiet")[0] == 0
    code, out, err = run(capsys, "predict", str(tmp_path / "run" / "last.npz"), data)
    assert code == 0, err
    table = rows_of(out)
    assert table[0] == ["prediction", 'p_big, "really"', "p_small\nthing"]
    assert len(table) == 41 and {row[0] for row in table[1:]} <= {'big, "really"', "small\nthing"}


def test_regression_end_to_end(capsys, tmp_path):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(200, 3))
    price = 1000 + 300 * x[:, 0] - 200 * x[:, 1] + 50 * x[:, 2]
    data = write_columns(tmp_path / "houses.csv", {"a": x[:, 0], "b": x[:, 1], "price": price, "c": x[:, 2]})
    assert "--task regress" in user_error(capsys, "train", "--backend", "numpy", "--data", data, "--label", "price",
                                          "--out", str(tmp_path / "refused"))
    code, out, err = run(capsys, "train", "--backend", "numpy", "--data", data, "--label", "price", "--task",
                         "regress", "--hidden", "16", "--epochs", "40", "--lr", "0.01",
                         "--out", str(tmp_path / "run"), "--quiet")
    assert code == 0, err
    rmse, r2 = float(out.split("test RMSE: ")[1].split()[0]), float(out.split("test R²: ")[1].split()[0])
    assert r2 > 0.95 and rmse < 0.25 * price.std()
    code, out, err = run(capsys, "predict", str(tmp_path / "run" / "last.npz"), data)
    assert code == 0, err
    table = rows_of(out)
    assert table[0] == ["prediction"]
    predicted = np.array([float(row[0]) for row in table[1:]])
    assert np.sqrt(np.mean((predicted - price) ** 2)) < 0.25 * price.std()
    assert "--task regress trains with --loss mse" in user_error(
        capsys, "train", "--data", data, "--label", "price", "--task", "regress", "--loss", "softmax-ce")


def forged(tmp_path, checkpoint, name, change):
    """A copy of the checkpoint with its extras changed by ``change(extras)``."""
    model = gn.load(checkpoint)
    change(model.extras)
    model.save(tmp_path / name)
    return str(tmp_path / name)


@pytest.mark.parametrize("change,message", [
    (lambda e: e.update(classes=e["classes"][:1]), "names 1 classes .* but the model has 2 outputs"),
    (lambda e: e.update(classes=np.array(["x", "x"])), "1 distinct"),
    (lambda e: e.pop("std"), "no feature scaler"),
    (lambda e: e.pop("classes"), "no class names"),
    (lambda e: e.update(std=np.ones(2)), "'std' has shape \\(2,\\)"),
    (lambda e: e.update(std=np.zeros(3)), "holds zeros"),
    (lambda e: e.update(task=np.array("cluster")), "unknown task 'cluster'"),
    (lambda e: e.update(task=np.array("regress")), "needs one output"),
    (lambda e: e.update(features=np.array(["a", "b"])), "names 2 features"),
])
def test_a_checkpoint_that_does_not_fit_its_model_is_refused(capsys, tmp_path, trained, change, message):
    folder, checkpoint, _, _ = trained
    path = forged(tmp_path, checkpoint, "forged.npz", change)
    err = user_error(capsys, "predict", path, str(folder / "data.csv"))
    assert re.search(message, err), err


def test_predict_never_prints_nan(capsys, tmp_path, trained):
    folder, checkpoint, _, _ = trained
    huge = write_columns(tmp_path / "huge.csv", {"a": [1.0, 1e300], "b": [0.0, 0.0], "c": [0.0, 0.0]})
    assert "row 2 holds values too far outside the training data" in user_error(capsys, "predict", checkpoint, huge)


def test_tracebacks_became_one_line(capsys, tmp_path, trained, monkeypatch):
    folder, checkpoint, x, _ = trained
    data = str(folder / "data.csv")
    (tmp_path / "afile").write_text("")
    cases = [
        (["train", "--data", data, "--label", "species", "--out", str(tmp_path / "afile")], "--out"),
        (["train", "--data", data, "--label", "species", "--out", str(tmp_path / "afile" / "sub")], "--out"),
        (["train", "--lr", "nan"], "expected a positive float (finite), got 'nan'"),
        (["train", "--lr", "inf"], "got 'inf'"),
        (["train", "--seed", "-1"], "expected an int >= 0, got '-1'"),
        (["train", "--hidden", "128,,64"], "expected sizes like 128,64"),
        (["train", "--hidden", ","], "expected sizes like 128,64"),
        (["bench", "--peers", "bogus"], "unknown peer(s) 'bogus'"),
        (["bench", "--max-time", "nan"], "got 'nan'"),
        (["predict", checkpoint, data, "--out", str(tmp_path / "missing" / "p.csv")],
         f"cannot write {tmp_path / 'missing' / 'p.csv'}: the folder"),
        (["predict", checkpoint, data, "--out", str(tmp_path)], "it is a folder"),
        (["predict", checkpoint, data, "--out", checkpoint], "is the checkpoint or the input"),
        (["predict", checkpoint, data, "--out", data], "is the checkpoint or the input"),
        (["predict", checkpoint, "/dev/null"], "not a regular file"),
        (["train", "--data", data, "--label", "species", "--out", str(tmp_path / "r"), "--hidden", "100000000,100000000"],
         "out of memory for a 3-100000000-100000000-2 MLP"),
        (["train", "--data", data, "--label", "species", "--out", str(tmp_path / "r"), "--lr", "1e300"],
         "the loss became"),  # and no RuntimeWarnings: user_error checks that stderr is one line
    ]
    for argv, message in cases:
        err = user_error(capsys, *argv)
        assert message in err, (argv, err)
        assert ".partial" not in err
    np.save(tmp_path / "x.npy", np.ones((3, 3)))
    os.rename(tmp_path / "x.npy", tmp_path / "x.npz")
    assert "renamed .npz" in user_error(capsys, "train", "--data", str(tmp_path / "x.npz"))
    assert "not a readable gpunn model file" in user_error(capsys, "predict", str(tmp_path / "x.npz"), data)
    (tmp_path / "labels.csv").write_text("label\na\nb\n")
    assert "no feature columns" in user_error(capsys, "train", "--data", str(tmp_path / "labels.csv"))
    (tmp_path / "empty.csv").write_text("a,label\n")
    assert "at least one data row" in user_error(capsys, "train", "--data", str(tmp_path / "empty.csv"))
    monkeypatch.setenv("GPUNN_BACKEND", "bogus")
    assert "GPUNN_BACKEND='bogus' is not a backend" in user_error(capsys, "predict", checkpoint, data)


def test_the_cli_default_backend_honours_gpunn_backend(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("GPUNN_BACKEND", "cupy")  # not usable here: the run must say so, not train on numpy
    if "cupy" in gn.available_backends():
        pytest.skip("cupy is usable here; the refusal cannot be shown")
    assert "the cupy backend cannot run here" in user_error(capsys, "train", "--epochs", "1", "--out", str(tmp_path))
    monkeypatch.setenv("GPUNN_BACKEND", "numpy")
    code, out, err = train_digits(capsys, tmp_path, "--epochs", "1", "--quiet")
    assert code == 0, err
    assert "for 1 epoch on numpy" in out  # and one epoch is singular


def test_predict_help_describes_backend():
    help_text = subprocess.run([sys.executable, "-m", "gpunn", "predict", "--help"], capture_output=True, text=True,
                               env=dict(os.environ, PYTHONPATH=str(ROOT))).stdout
    assert "array backend (default: $GPUNN_BACKEND" in " ".join(help_text.split())


def test_user_errors_from_a_real_process_are_one_line(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for argv in (["predict", str(tmp_path / "m.npz"), str(tmp_path / "x.csv")],
                 ["bench", "--peers", "bogus"], ["train", "--seed", "-1"]):
        result = subprocess.run([sys.executable, "-m", "gpunn", *argv], capture_output=True, text=True, env=env)
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "Traceback" not in result.stderr


def test_a_resaved_cli_checkpoint_still_predicts(capsys, tmp_path, trained):
    folder, checkpoint, _, _ = trained
    gn.load(checkpoint).save(tmp_path / "again.npz")  # extras kept by default
    assert run(capsys, "predict", str(tmp_path / "again.npz"), str(folder / "data.csv"))[0] == 0


def test_interrupts_broken_pipes_and_folders_are_one_line(capsys, tmp_path, trained, monkeypatch):
    folder, checkpoint, x, names = trained
    (tmp_path / "afile").write_text("")
    assert "--out" in user_error(capsys, "bench", "--peers", "gpunn-numpy", "--out", str(tmp_path / "afile"))
    assert "a folder, not a data file" in user_error(capsys, "train", "--data", str(tmp_path))
    from gpunn.cli import checkpoint as checkpoint_module

    def interrupted(path):
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint_module.Checkpoint, "read", interrupted)
    code, _, err = run(capsys, "predict", checkpoint, str(folder / "data.csv"))
    assert code == 130 and err.strip() == "gpunn: interrupted"


CLOSED_PIPE = """
import os, sys
reader, writer = os.pipe()
os.close(reader)
os.dup2(writer, 1)  # stdout: a pipe whose reader has left, as in `gpunn predict ... | head -1`
from gpunn.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_predict_into_a_closed_pipe(tmp_path, trained):
    folder, checkpoint, _, _ = trained
    result = subprocess.run([sys.executable, "-c", CLOSED_PIPE, "predict", checkpoint, str(folder / "data.csv")],
                            capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert result.returncode == 141 and result.stderr == "", result.stderr
