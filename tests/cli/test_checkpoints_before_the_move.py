"""Checkpoints written before the move into folders (gpunn 0.1 at commit 9aaf99d, by
`gpunn train --hidden 8 --epochs 3 --early-stopping 2 --backend numpy`) still load, predict, and
resume exactly: the resumed run ends with the weights the old tree's straight 5-epoch run wrote."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import gpunn as gn
from gpunn import cli

pytest.importorskip("sklearn", reason="the run trained on the digits, which come with scikit-learn")
GOLDEN = Path(__file__).resolve().parents[1] / "golden"


def test_a_pre_move_model_file_loads_with_its_optimizer_and_run_record():
    last = GOLDEN / "gpunn-0.1-run" / "last.npz"
    model = gn.load(last)
    optimizer = gn.load_optimizer(last, model)
    record = json.loads(str(model.extras["run"]))
    assert record["epoch"] == 3 and isinstance(record["stopper"], list)  # gpunn 0.1's form of the count
    assert model.in_features == 64 and model.out_features == 10 and type(optimizer).__name__ == "Adam"
    assert np.isfinite(model.predict(np.zeros((2, 64)))).all()


def test_a_pre_move_run_resumes_to_the_old_trees_straight_run(tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(GOLDEN / "gpunn-0.1-run", run)
    assert cli.main(["train", "--backend", "numpy", "--quiet", "--resume", str(run), "--epochs", "5"]) == 0, \
        capsys.readouterr().err
    resumed, straight = gn.load(run / "last.npz"), gn.load(GOLDEN / "gpunn-0.1-straight-5-epochs.npz")
    np.testing.assert_array_equal(resumed.flat.values, straight.flat.values)
