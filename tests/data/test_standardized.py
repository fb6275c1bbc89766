"""StandardizedDataset: a Dataset's rows standardised as they are read (gpunn train --stream), and
fit's validation_data given as a Dataset."""

import numpy as np
import pytest

import gpunn as gn
from gpunn.data import BatchStream, Dataset, stream
from gpunn.data.scaled import StandardizedDataset


@pytest.fixture
def rows(tmp_path):
    rng = np.random.default_rng(3)
    x = (rng.normal(size=(200, 4)) * [1, 10, 100, 1e-3] + 5).astype(np.float32)
    t = rng.integers(0, 3, size=200) * 2 + 1  # class codes 1, 3, 5
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "t.npy", t)
    mean, std = x.astype(np.float64).mean(axis=0), x.astype(np.float64).std(axis=0)
    return tmp_path, x, t, mean, std


def test_reads_gathers_and_parts_are_the_standardised_rows_bit_for_bit(rows):
    folder, x, t, mean, std = rows
    view = StandardizedDataset(Dataset(folder / "x.npy", folder / "t.npy"), mean, std,
                               lambda codes: (codes - 1) // 2, (), np.int64)
    expected_x, expected_t = (x - mean) / std, (t - 1) // 2
    assert (view.x.dtype, view.t.dtype, view.rows, view.features) == (np.float64, np.int64, 200, 4)
    got_x, got_t = view.read(20, 70)
    assert np.array_equal(got_x, expected_x[20:70]) and np.array_equal(got_t, expected_t[20:70])
    picked = np.array([3, 4, 90, 150])
    out = (np.empty((4, 4)), np.empty(4, np.int64))
    got_x, got_t = view.gather(picked, out)
    assert got_x is out[0] and np.array_equal(got_x, expected_x[picked]) and np.array_equal(got_t, expected_t[picked])
    part = view.rows_between(150, 200)
    assert part.rows == 50 and np.array_equal(part.read(0, 50)[0], expected_x[150:])
    streamed = [(r, bx, bt) for r, bx, bt in BatchStream(view, 32, seed=4, chunk_rows=64).epoch(0)]
    in_memory = [(r, bx, bt) for r, bx, bt in BatchStream(Dataset(expected_x, expected_t), 32, seed=4,
                                                          chunk_rows=64).epoch(0)]
    for (r1, x1, t1), (r2, x2, t2) in zip(streamed, in_memory, strict=True):
        assert np.array_equal(r1, r2) and np.array_equal(x1, x2) and np.array_equal(t1, t2)
    with pytest.raises(ValueError, match="one per feature"):
        StandardizedDataset(Dataset(x, t), mean[:3], std)


def test_fit_streams_a_dataset_given_as_validation_data(rows, monkeypatch):
    folder, x, t, mean, std = rows
    monkeypatch.setattr(stream, "CHUNK_BYTES", 32 * 4 * 8)  # several chunks
    classes = (t - 1) // 2

    def fit(validation):
        with gn.use_backend("numpy"):
            model = gn.Sequential(gn.Dense(4, 8, seed=0), gn.Tanh(), gn.Dense(8, 3, seed=1))
        history = model.fit((x[:150] - mean) / std, classes[:150], loss=gn.SoftmaxCrossEntropyLoss(),
                            optimizer=gn.Adam(lr=0.01), epochs=2, batch_size=16, seed=0, verbose=0,
                            metrics=("accuracy",), validation_data=validation)
        return history, model.flat.values

    view = StandardizedDataset(Dataset(folder / "x.npy", folder / "t.npy"), mean, std, lambda c: (c - 1) // 2,
                               (), np.int64).rows_between(150, 200)
    streamed, in_memory = fit((view, None)), fit(((x[150:] - mean) / std, classes[150:]))
    assert streamed[0] == in_memory[0] and "val_loss" in streamed[0]
    assert np.array_equal(streamed[1], in_memory[1])
    with pytest.raises(ValueError, match="needs its targets"):
        fit((Dataset(x[150:]), None))
