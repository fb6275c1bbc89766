"""The command line end to end: train, predict, info, and one clear line for every user error."""

import subprocess
import sys

import numpy as np

import gpunn as gn
from gpunn import cli


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
    gn.io.FORMAT_VERSION, original = 99, gn.io.FORMAT_VERSION
    try:
        model.save(tmp_path / "future.npz", extras=model.extras)
    finally:
        gn.io.FORMAT_VERSION = original
    assert "format version 99" in user_error(capsys, "predict", str(tmp_path / "future.npz"), str(tmp_path / "wide.npz"))
    gn.Sequential(gn.Dense(3, 2)).save(tmp_path / "bare.npz")
    assert "not a checkpoint written by 'gpunn train'" in user_error(
        capsys, "predict", str(tmp_path / "bare.npz"), str(tmp_path / "wide.npz"))


def test_without_scikit_learn_train_says_how_to_install(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    assert "pip install 'gpunn[data]'" in user_error(capsys, "train", "--out", str(tmp_path))


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
    assert "curves: not drawn (pip install 'gpunn[plot]' for a PNG)" in out
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
