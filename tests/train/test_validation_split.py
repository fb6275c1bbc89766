"""validation_split as Keras has it (the last rows, before shuffling; validation_data overrides it), and
the progress bar over an epoch's batches."""

import io

import numpy as np
import pytest

import gpunn as gn
from gpunn.train import callbacks


def mlp():
    with gn.use_backend("numpy"):
        return gn.Sequential(gn.Dense(4, 6, dtype="float64", seed=0), gn.Tanh(), gn.Dense(6, 2, dtype="float64", seed=1))


def fit(model, x, t, **options):
    options = {"optimizer": gn.SGD(lr=0.1), "epochs": 3, "batch_size": 8, "seed": 5, "verbose": 0, **options}
    return model.fit(x, t, loss=gn.MSELoss(), **options)


@pytest.mark.parametrize("split, held", [(0.2, 10), (0.33, 17), (0.01, 1)])
def test_validation_split_holds_out_the_last_rows_before_shuffling(rng, split, held):
    x, t = rng.normal(size=(50, 4)), rng.normal(size=(50, 2))
    # Keras: split_at = floor(rows · (1 − split)); the rows from there on validate
    assert 50 - int(np.floor(50 * (1 - split))) == held
    by_split, by_hand = mlp(), mlp()
    first = fit(by_split, x, t, validation_split=split)
    second = fit(by_hand, x[:-held], t[:-held], validation_data=(x[-held:], t[-held:]))
    assert first == second
    assert np.array_equal(by_split.flat.values, by_hand.flat.values)


def test_validation_split_carries_the_sample_weights_and_validation_data_overrides_it(rng):
    x, t, w = rng.normal(size=(40, 4)), rng.normal(size=(40, 2)), rng.uniform(0, 2, size=40)
    first = fit(mlp(), x, t, validation_split=0.25, sample_weight=w)
    second = fit(mlp(), x[:30], t[:30], sample_weight=w[:30], validation_data=(x[30:], t[30:], w[30:]))
    assert first == second
    overridden = fit(mlp(), x, t, validation_split=0.25, validation_data=(x[:5], t[:5]))
    assert overridden == fit(mlp(), x, t, validation_data=(x[:5], t[:5]))


def test_bad_validation_splits_are_refused(rng):
    x, t = rng.normal(size=(3, 4)), rng.normal(size=(3, 2))
    with pytest.raises(ValueError, match=r"validation_split must lie in \[0, 1\)"):
        fit(mlp(), x, t, validation_split=1.0)
    with pytest.raises(TypeError, match="validation_split must be a number"):
        fit(mlp(), x, t, validation_split="0.1")
    with pytest.raises(ValueError, match="3 rows cannot be split into training and validation rows"):
        fit(mlp(), x, t, validation_split=0.7)  # floor(3 · 0.3) = 0 training rows


def test_a_long_epoch_shows_a_bar_over_its_batches(rng, monkeypatch):
    tqdm_auto = pytest.importorskip("tqdm.auto")
    closed = []

    class Recording(tqdm_auto.tqdm):
        def close(self):
            closed.append((self.unit, self.desc, self.n, self.total))
            super().close()

    monkeypatch.setattr(tqdm_auto, "tqdm", Recording)
    stderr = io.StringIO()
    stderr.isatty = lambda: True
    monkeypatch.setattr(callbacks.sys, "stderr", stderr)
    x, t = rng.normal(size=(40, 4)), rng.normal(size=(40, 2))
    monkeypatch.setattr(callbacks, "BATCH_BAR_DELAY", 0.0)  # every epoch counts as long
    fit(mlp(), x, t, verbose=1, epochs=2)
    assert ("batch", "epoch 1", 5, 5) in closed and ("batch", "epoch 2", 5, 5) in closed  # 5 batches of 8
    assert "0/5 [" in stderr.getvalue() and closed[-1][0] == "epoch"
    closed.clear()
    stderr.seek(0)
    stderr.truncate()
    monkeypatch.setattr(callbacks, "BATCH_BAR_DELAY", 60.0)  # short epochs: only the epoch bar is drawn
    fit(mlp(), x, t, verbose=1, epochs=2)
    assert "batch" not in stderr.getvalue() and "2/2 [" in stderr.getvalue() and closed[-1] == ("epoch", "", 2, 2)
