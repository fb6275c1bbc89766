"""`gpunn train`'s training toolkit: optimizers, schedules, float16, validation, checkpoints,
early stopping and an exact --resume, through the CLI entry point on the bundled digits."""

import json
import shutil

import numpy as np
import pytest

import gpunn as gn
import gpunn.train.fit
from gpunn.cli.main import main

pytest.importorskip("sklearn", reason="the digits come with scikit-learn (pip install 'gpunn[data]')")


def train(capsys, out, *options):
    code = main(["train", "--backend", "numpy", "--quiet", "--out", str(out), *options])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def accuracies(text):
    last = float(text.split("test accuracy: ")[1].split()[0])
    best = float(text.split("test accuracy of the best validation epoch: ")[1].split()[0])
    return last, best


@pytest.mark.parametrize("options", [(), ("--dtype", "float16"),
                                     ("--optimizer", "adamw", "--schedule", "cosine", "--warmup-steps", "40",
                                      "--max-grad-norm", "1.0"),
                                     ("--optimizer", "sgd", "--schedule", "onecycle", "--lr", "0.1")])
def test_runs_reach_095_and_write_last_and_best(capsys, tmp_path, options):
    code, out, err = train(capsys, tmp_path, *options)
    assert code == 0, err
    last, best = accuracies(out)
    assert last >= 0.95 and best >= 0.95, out
    assert (tmp_path / "last.npz").is_file() and (tmp_path / "best.npz").is_file()
    run = json.loads(str(gn.load(tmp_path / "last.npz").extras["run"]))
    assert run["epoch"] == 30 and len(run["history"]["val_loss"]) == 30
    assert run["best_epoch"] == 1 + int(np.argmin(run["history"]["val_loss"]))
    if "float16" in options:
        assert gn.load(tmp_path / "last.npz").dtype == np.float16 and "skipped_steps" in run["history"]


def interrupt_after(monkeypatch, epochs):
    """Ctrl-C once ``epochs`` epochs are checkpointed (raised where fit checks the next one)."""
    seen = []
    check = gpunn.train.fit.check_divergence

    def check_then_interrupt(*arguments):
        seen.append(1)
        if len(seen) > epochs:
            raise KeyboardInterrupt
        return check(*arguments)

    monkeypatch.setattr(gpunn.train.fit, "check_divergence", check_then_interrupt)


def test_resume_continues_an_interrupted_run_exactly(capsys, tmp_path, monkeypatch):
    options = ("--epochs", "8", "--optimizer", "adamw", "--schedule", "cosine", "--warmup-steps", "20",
               "--dropout", "0.1", "--max-grad-norm", "2", "--early-stopping", "5")
    assert train(capsys, tmp_path / "straight", *options)[0] == 0
    with monkeypatch.context() as patch:
        interrupt_after(patch, 3)
        code, _, err = train(capsys, tmp_path / "cut", *options)
    assert code == 130 and "the checkpoint of epoch 3 is kept" in err and "--resume" in err
    code, out, err = main(["train", "--backend", "numpy", "--resume", str(tmp_path / "cut")]), *capsys.readouterr()
    assert code == 0, err
    assert "resuming after epoch 3" in out and "epoch   4/8" in out and "epoch   3/8" not in out
    straight, resumed = (gn.load(tmp_path / name / "last.npz") for name in ("straight", "cut"))
    np.testing.assert_array_equal(resumed.flat.values, straight.flat.values)
    histories = [json.loads(str(model.extras["run"]))["history"] for model in (straight, resumed)]
    assert histories[0] == histories[1]


def test_resume_can_extend_a_finished_run(capsys, tmp_path):
    assert train(capsys, tmp_path / "ten", "--epochs", "10")[0] == 0
    assert train(capsys, tmp_path / "five", "--epochs", "5")[0] == 0
    assert main(["train", "--backend", "numpy", "--quiet", "--resume", str(tmp_path / "five"), "--epochs", "10"]) == 0
    np.testing.assert_array_equal(gn.load(tmp_path / "five" / "last.npz").flat.values,
                                  gn.load(tmp_path / "ten" / "last.npz").flat.values)
    code, _, err = train(capsys, tmp_path / "x", "--resume", str(tmp_path / "five"), "--epochs", "10")
    assert code == 2 and "already trained 10 epochs" in err
    assert train(capsys, tmp_path / "cosine", "--epochs", "2", "--schedule", "cosine")[0] == 0
    code, _, err = train(capsys, tmp_path / "y", "--resume", str(tmp_path / "cosine"), "--epochs", "4")
    assert code == 2 and "cosine schedule was planned over 2 epochs" in err


def test_early_stopping_stops_and_reports(capsys, tmp_path):
    code, out, err = train(capsys, tmp_path, "--early-stopping", "1", "--epochs", "60", "--lr", "0.01")
    assert code == 0, err
    run = json.loads(str(gn.load(tmp_path / "last.npz").extras["run"]))
    assert run["epoch"] < 60 and "early stopping: no better validation loss for 1 epoch\n" in out


@pytest.mark.parametrize("options,message", [
    (("--early-stopping", "3", "--validation-fraction", "0"), "keep --validation-fraction above 0"),
    (("--warmup-steps", "10"), "--warmup-steps applies to --schedule cosine"),
    (("--weight-decay", "-1"), "expected a finite number >= 0"),
    (("--optimizer", "rmsprop"), "invalid choice: 'rmsprop'"),
    (("--resume", "/nonexistent-run"), "no last.npz there")])
def test_bad_options_are_one_line_errors(capsys, tmp_path, options, message):
    code, _, err = train(capsys, tmp_path, *options)
    assert code == 2 and message in err and "Traceback" not in err


def test_resume_right_before_early_stopping_stops_where_the_straight_run_stopped(capsys, tmp_path, monkeypatch):
    options = ("--early-stopping", "2", "--epochs", "60", "--lr", "0.01")
    assert train(capsys, tmp_path / "straight", *options)[0] == 0
    stopped = json.loads(str(gn.load(tmp_path / "straight" / "last.npz").extras["run"]))["epoch"]
    assert stopped < 60
    with monkeypatch.context() as patch:  # cut after the epoch before the stop: the stopper's count must be kept
        interrupt_after(patch, stopped - 1)
        assert train(capsys, tmp_path / "cut", *options)[0] == 130
    assert train(capsys, tmp_path / "cut", "--resume", str(tmp_path / "cut"))[0] == 0
    straight, resumed = (gn.load(tmp_path / name / "last.npz") for name in ("straight", "cut"))
    assert json.loads(str(resumed.extras["run"]))["epoch"] == stopped
    np.testing.assert_array_equal(resumed.flat.values, straight.flat.values)
    code, _, err = train(capsys, tmp_path / "straight", "--resume", str(tmp_path / "straight"), "--epochs", "70")
    assert code == 2 and f"the run stopped early after epoch {stopped}" in err


def test_resume_refuses_options_it_would_ignore_and_changed_data(capsys, tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 3))
    np.savez(tmp_path / "data.npz", X=x, y=(x[:, 0] > 0).astype(int))
    run = tmp_path / "run"
    assert train(capsys, run, "--data", str(tmp_path / "data.npz"), "--epochs", "1", "--hidden", "4")[0] == 0
    for options, message in ((("--dtype", "float64"), "--dtype float64 differs from the run's float32"),
                             (("--optimizer", "sgd"), "--optimizer sgd differs from the run's adam"),
                             (("--lr", "0.003"), "--lr 0.003 differs from the run's 0.002"),
                             (("--weight-decay", "0.1"), "--weight-decay 0.1 differs from the run's 0.0")):
        code, _, err = train(capsys, run, "--resume", str(run), "--epochs", "2", *options)
        assert code == 2 and message in err and "Traceback" not in err
    spelt_out = tmp_path / "spelt-out"  # the run's own (default) values, given explicitly: no conflict
    shutil.copytree(run, spelt_out)
    assert train(capsys, spelt_out, "--resume", str(spelt_out), "--epochs", "2", "--lr", "0.002",
                 "--weight-decay", "0", "--loss", "softmax-ce")[0] == 0
    np.savez(tmp_path / "data.npz", X=x * 10, y=(x[:, 0] > 0).astype(int))
    code, _, err = train(capsys, run, "--resume", str(run), "--epochs", "2")
    assert code == 2 and "the data is not the run's any more (its mean, std, train rows, validation rows, test rows changed)" in err
    assert json.loads(str(gn.load(run / "last.npz").extras["run"]))["epoch"] == 1
    model = gn.load(run / "last.npz")
    model.extras["run"] = np.array(json.dumps({"args": {}, "epoch": 1}))  # edited, or not ours
    model.save(run / "last.npz")
    code, _, err = train(capsys, run, "--resume", str(run), "--epochs", "2")
    assert code == 2 and "the run record in last.npz is damaged" in err and "Traceback" not in err


def test_a_run_record_in_gpunn_0_1s_form_resumes_exactly(capsys, tmp_path, monkeypatch):
    """Checkpoints written before the run record was typed keep the early-stopping count as a list
    [best, best_epoch, wait]; they resume to the same weights as a straight run."""
    options = ("--early-stopping", "3", "--epochs", "6", "--lr", "0.01")
    assert train(capsys, tmp_path / "straight", *options)[0] == 0
    with monkeypatch.context() as patch:
        interrupt_after(patch, 3)
        assert train(capsys, tmp_path / "old", *options)[0] == 130
    last = tmp_path / "old" / "last.npz"
    model, optimizer = gn.load(last), None
    optimizer = gn.load_optimizer(last, model)
    run = json.loads(str(model.extras["run"]))
    stopper = run["stopper"]
    run["stopper"] = [stopper["best"], stopper["best_epoch"], stopper["wait"]]
    model.save(last, extras={**model.extras, "run": np.array(json.dumps(run))}, optimizer=optimizer)
    assert train(capsys, tmp_path / "old", "--resume", str(tmp_path / "old"))[0] == 0
    straight, resumed = (gn.load(tmp_path / name / "last.npz") for name in ("straight", "old"))
    np.testing.assert_array_equal(resumed.flat.values, straight.flat.values)


def test_an_interrupt_names_the_epoch_that_is_on_disk(capsys, tmp_path, monkeypatch):
    """Ctrl-C while epoch 3's checkpoint is being written: last.npz still holds epoch 2, and so does
    the message (it used to name epoch 3)."""
    save = gn.Sequential.save
    calls = []

    def interrupted_save(self, path, *arguments, **options):
        if str(path).endswith("last.npz"):
            calls.append(path)
            if len(calls) == 3:
                raise KeyboardInterrupt
        return save(self, path, *arguments, **options)

    monkeypatch.setattr(gn.Sequential, "save", interrupted_save)
    code, _, err = train(capsys, tmp_path, "--epochs", "5")
    assert code == 130 and "the checkpoint of epoch 2 is kept" in err, err
    assert json.loads(str(gn.load(tmp_path / "last.npz").extras["run"]))["epoch"] == 2


def test_the_run_settings_come_from_the_parser():
    """No hand-kept list: every option of the "run settings" group is stored, and only those."""
    from gpunn.cli.parser import build_parser

    args = build_parser().parse_args(["train"])
    assert set(args.run_settings) >= {"hidden", "lr", "optimizer", "seed", "epochs", "early_stopping", "data"}
    assert not {"out", "resume", "backend", "quiet", "graph", "distributed"} & set(args.run_settings)
    assert args.run_settings["batch_size"] == 32 and args.run_settings["hidden"] == [128, 64]


def test_a_fresh_run_never_replaces_a_run_it_was_not_told_to(capsys, tmp_path):
    assert train(capsys, tmp_path / "run", "--epochs", "2")[0] == 0
    kept = (tmp_path / "run" / "last.npz").read_bytes()
    code, _, err = train(capsys, tmp_path / "run", "--epochs", "3", "--seed", "5")
    assert code == 2 and "already holds a run (last.npz); continue it with --resume" in err and "--overwrite" in err
    assert (tmp_path / "run" / "last.npz").read_bytes() == kept
    assert train(capsys, tmp_path / "run", "--epochs", "3", "--seed", "5", "--overwrite")[0] == 0
    assert json.loads(str(gn.load(tmp_path / "run" / "last.npz").extras["run"]))["epoch"] == 3


def test_resume_into_another_folder_leaves_the_run_it_resumed_as_it_was(capsys, tmp_path):
    """--resume RUN --out OTHER continues RUN's training into OTHER (it used to ignore --out and
    overwrite RUN); the continuation equals resuming in place."""
    assert train(capsys, tmp_path / "run", "--epochs", "2")[0] == 0
    original = (tmp_path / "run" / "last.npz").read_bytes()
    shutil.copytree(tmp_path / "run", tmp_path / "in-place")
    assert main(["train", "--backend", "numpy", "--quiet", "--resume", str(tmp_path / "run"),
                 "--out", str(tmp_path / "other"), "--epochs", "4"]) == 0
    assert (tmp_path / "run" / "last.npz").read_bytes() == original
    assert main(["train", "--backend", "numpy", "--quiet", "--resume", str(tmp_path / "in-place"), "--epochs", "4"]) == 0
    other, in_place = (gn.load(tmp_path / name / "last.npz") for name in ("other", "in-place"))
    np.testing.assert_array_equal(other.flat.values, in_place.flat.values)
    assert json.loads(str(other.extras["run"]))["epoch"] == 4
    # a second resume into OTHER, which now holds a run of its own, is refused
    capsys.readouterr()
    code = main(["train", "--backend", "numpy", "--quiet", "--resume", str(tmp_path / "run"), "--out",
                 str(tmp_path / "other"), "--epochs", "5"])
    assert code == 2 and "already holds a run" in capsys.readouterr().err


# --- issue 22: changed validation/test rows, a deleted best.npz, a run that blows up ----------
@pytest.mark.parametrize("part", ["validation", "test"])
def test_resume_notices_changed_validation_or_test_rows(capsys, tmp_path, part):
    """Only the scaler and class names were compared: an edited validation or test row, which leaves the
    training part's scaler as it was, resumed silently against other data."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 3))
    y = (x[:, 0] > 0).astype(int)
    np.savez(tmp_path / "data.npz", X=x, y=y)
    run = tmp_path / "run"
    assert train(capsys, run, "--data", str(tmp_path / "data.npz"), "--epochs", "1", "--hidden", "4")[0] == 0
    stored = gn.load(run / "last.npz").extras
    assert stored["data_digest"].shape == (3,)
    from gpunn.cli.train import split
    from gpunn.cli.parser import build_parser

    args = build_parser().parse_args(["train", "--data", str(tmp_path / "data.npz")])
    data = split(args)
    row = int((data.validation_rows if part == "validation" else data.test_rows)[0])
    edited = x.copy()
    edited[row] += 0.5
    np.savez(tmp_path / "data.npz", X=edited, y=y)
    from gpunn.cli.data import Standardizer

    assert np.array_equal(Standardizer.fit(edited[data.train_rows]).mean, data.scaler.mean)  # the scaler alone
    code, _, err = train(capsys, run, "--resume", str(run), "--epochs", "2")
    assert code == 2 and f"its {part} rows changed" in err and "Traceback" not in err
    np.savez(tmp_path / "data.npz", X=x, y=y)  # the run's data again: resumes
    assert train(capsys, run, "--resume", str(run), "--epochs", "2")[0] == 0


def test_a_run_of_a_gpunn_without_row_digests_still_resumes(capsys, tmp_path):
    run = tmp_path / "run"
    assert train(capsys, run, "--epochs", "1")[0] == 0
    model = gn.load(run / "last.npz")
    del model.extras["data_digest"]
    model.save(run / "last.npz", optimizer=gn.load_optimizer(run / "last.npz", model))
    assert train(capsys, run, "--resume", str(run), "--epochs", "2")[0] == 0


def test_a_resumed_run_whose_best_npz_was_deleted_finishes_and_says_so(capsys, tmp_path):
    """It crashed at the end with FileNotFoundError, loading best.npz for the test scores."""
    run = tmp_path / "run"
    assert train(capsys, run, "--epochs", "3", "--lr", "0.0001")[0] == 0
    (run / "best.npz").unlink()
    record = json.loads(str(gn.load(run / "last.npz").extras["run"]))
    model = gn.load(run / "last.npz")  # make sure no later epoch beats the recorded best
    record["best_val_loss"] = -1.0
    model.extras["run"] = np.array(json.dumps(record))
    model.save(run / "last.npz", optimizer=gn.load_optimizer(run / "last.npz", model))
    code, out, err = train(capsys, run, "--resume", str(run), "--epochs", "4")
    assert code == 0, err
    assert "best.npz (the best validation epoch" in out and "is gone" in out and "Traceback" not in err
    assert "test accuracy: " in out and "best validation epoch: " not in out.split("is gone")[1]


def test_a_run_that_blows_up_from_its_first_epoch_warns_even_when_quiet(capsys, tmp_path):
    """--lr 1e4: every epoch's loss is far above the loss before training, but never 100x the best
    epoch's, so fit said nothing and the run exited 0 silently."""
    code, out, err = train(capsys, tmp_path / "run", "--epochs", "2", "--lr", "1e4")
    assert code == 0
    assert err.count("gpunn train: warning: epoch") == 2 and "training is diverging: lower --lr" in err
    code, out, err = train(capsys, tmp_path / "calm", "--epochs", "2")
    assert code == 0 and "warning" not in err


def test_fits_own_divergence_warning_is_printed(capsys, tmp_path, monkeypatch):
    """fit's TrainingWarning (a loss 100x the best epoch's) went to the history, which the CLI never read."""
    def warn_then_check(model, epoch, logs, best_loss, history):
        import warnings

        warnings.warn(f"epoch {epoch + 1}: a test warning", gn.TrainingWarning)
        return best_loss

    monkeypatch.setattr(gpunn.train.fit, "check_divergence", warn_then_check)
    code, _, err = train(capsys, tmp_path / "run", "--epochs", "2")
    assert code == 0 and "gpunn train: warning: epoch 1: a test warning" in err and "epoch 2: a test" in err
