"""Data larger than memory: gn.data.Dataset reads contiguous rows of .npy/.npz files and memory-mapped
arrays; fit, evaluate and predict stream them (chunked shuffle, background prefetch) with exact resume."""

import threading

import numpy as np
import pytest

import gpunn as gn
from gpunn.data import BatchStream, Dataset, stream


@pytest.fixture
def files(tmp_path, rng):
    x = rng.normal(size=(300, 6)).astype(np.float32)
    t = rng.integers(0, 3, size=300)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "t.npy", t)
    return tmp_path, x, t


def build(seed=0):
    with gn.use_backend("numpy"):
        return gn.Sequential(gn.Dense(6, 12, seed=seed), gn.Tanh(), gn.Dropout(0.2, seed=5), gn.Dense(12, 3, seed=seed + 1))


def train(model, X, T, optimizer=None, **options):
    options = {"epochs": 3, "batch_size": 16, "seed": 9, "verbose": 0, **options}
    return model.fit(X, T, loss=gn.SoftmaxCrossEntropyLoss(), optimizer=optimizer or gn.Adam(lr=0.01), **options)


def test_a_dataset_reads_the_rows_of_npy_memmaps_slices_and_npz(files):
    folder, x, t = files
    mapped = np.load(folder / "x.npy", mmap_mode="r")
    for dataset in (Dataset(folder / "x.npy", folder / "t.npy"), Dataset(mapped, t), Dataset(x, t)):
        block_x, block_t = dataset.read(37, 81)
        assert np.array_equal(block_x, x[37:81]) and np.array_equal(block_t, t[37:81])
        assert (dataset.rows, dataset.features) == (300, 6)
    sliced = Dataset(mapped[100:250], t[100:250])  # a slice starts further into the file
    assert sliced.x.path is not None and np.array_equal(sliced.read(10, 20)[0], x[110:120])
    np.savez(folder / "d.npz", X=x, y=t)
    assert np.array_equal(Dataset.from_npz(folder / "d.npz").read(5, 9)[0], x[5:9])


def test_a_dataset_refuses_what_it_cannot_stream(files):
    folder, x, t = files
    np.savez_compressed(folder / "c.npz", X=x, y=t)
    with pytest.raises(ValueError, match="compressed .* save it with np.savez"):
        Dataset.from_npz(folder / "c.npz")
    np.savez(folder / "d.npz", X=x, y=t)
    with pytest.raises(ValueError, match=r"holds no array 'features' \(it holds \['X', 'y'\]\)"):
        Dataset.from_npz(folder / "d.npz", x="features")
    np.save(folder / "f.npy", np.asfortranarray(x))
    with pytest.raises(ValueError, match="Fortran order"):
        Dataset(folder / "f.npy")
    with pytest.raises(ValueError, match="X has 300 rows but T has 299"):
        Dataset(folder / "x.npy", t[:-1])
    with pytest.raises(ValueError, match="must be a .npy"):
        Dataset(str(folder / "x.csv"))
    with pytest.raises(TypeError, match="must be a .npy path, a memory-mapped array"):
        Dataset(3)
    with open(folder / "x.npy", "r+b") as file:  # truncated after the header was written
        file.truncate(2000)
    with pytest.raises(OSError, match="the file ended before row"):
        Dataset(folder / "x.npy").read(0, 300)


def test_an_epoch_reads_whole_chunks_in_a_seeded_order_and_visits_every_row_once(files, monkeypatch):
    folder, x, t = files
    dataset = Dataset(folder / "x.npy", t)
    reads = []
    read = dataset.read
    monkeypatch.setattr(dataset, "read", lambda start, stop, *out: reads.append((start, stop)) or read(start, stop, *out))
    batches = BatchStream(dataset, batch_size=16, seed=3, chunk_rows=64)
    first = [(rows, xb) for rows, xb, _ in batches.epoch(0)]
    assert sorted(reads) == [(0, 64), (64, 128), (128, 192), (192, 256), (256, 300)]  # contiguous reads
    rows = np.concatenate([r for r, _ in first])
    assert sorted(rows.tolist()) == list(range(300))
    for r, xb in first:
        assert np.array_equal(xb, x[r])
    again = np.concatenate([r for r, _, _ in batches.epoch(0)])
    other = np.concatenate([r for r, _, _ in batches.epoch(1)])
    assert np.array_equal(rows, again) and not np.array_equal(rows, other)  # (seed, epoch) alone
    ordered = np.concatenate([r for r, _, _ in BatchStream(dataset, 16, shuffle=False, chunk_rows=64).epoch(0)])
    assert np.array_equal(ordered, np.arange(300))


def test_fit_on_a_memory_map_equals_fit_in_memory_within_one_chunk(files):
    folder, x, t = files
    in_memory, streamed, dataset = build(), build(), build()
    first = train(in_memory, x, t)
    second = train(streamed, np.load(folder / "x.npy", mmap_mode="r"), t)
    third = train(dataset, Dataset(folder / "x.npy", folder / "t.npy"), None)
    assert first == second == third
    assert np.array_equal(in_memory.flat.values, streamed.flat.values)
    assert np.array_equal(in_memory.flat.values, dataset.flat.values)


def test_streamed_training_resumes_exactly(files, tmp_path, monkeypatch):
    folder, _, t = files
    monkeypatch.setattr(stream, "CHUNK_BYTES", 64 * 6 * 4)  # chunks of 64 rows: the shuffle crosses chunks
    assert_resumes_exactly(Dataset(folder / "x.npy", t), tmp_path)


def assert_resumes_exactly(data, folder):
    """Two epochs, a checkpoint, two more from it: the parameters of four epochs straight."""
    straight = build()
    train(straight, data, None, epochs=4)
    first, optimizer = build(), gn.Adam(lr=0.01)
    train(first, data, None, optimizer=optimizer, epochs=2)
    first.save(folder / "half.npz", optimizer=optimizer)
    resumed = gn.load(folder / "half.npz")
    train(resumed, data, None, optimizer=gn.load_optimizer(folder / "half.npz", resumed), initial_epoch=2, epochs=4)
    assert np.array_equal(resumed.flat.values, straight.flat.values)


def test_weights_stream_with_their_rows(files):
    folder, x, t = files
    w = np.random.default_rng(0).uniform(0, 2, size=300)
    mapped = np.load(folder / "x.npy", mmap_mode="r")
    for options in ({"sample_weight": w}, {"class_weight": {0: 0.5, 2: 3.0}}):
        models = build(), build()
        assert train(models[0], x, t, **options) == train(models[1], mapped, t, **options)
        assert np.array_equal(models[0].flat.values, models[1].flat.values)


def test_evaluate_and_predict_stream_a_memory_map(files):
    folder, x, t = files
    model = build()
    mapped = np.load(folder / "x.npy", mmap_mode="r")
    loss = gn.SoftmaxCrossEntropyLoss()
    expected = model.evaluate(x, t, loss, metrics=("accuracy",), batch_size=64)
    got = model.evaluate(mapped, t, loss, metrics=("accuracy",), batch_size=64)
    assert got == expected
    assert model.evaluate(Dataset(mapped, t), None, loss)["loss"] == model.evaluate(x, t, loss)["loss"]
    assert np.array_equal(model.predict(mapped, batch_size=50), model.predict(x, batch_size=50))


def test_a_stopped_or_failing_stream_ends_its_prefetch_thread(files):
    folder, _, t = files

    class StopEarly(gn.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 1:
                self.model.stop_training = True

    before = threading.active_count()
    train(build(), np.load(folder / "x.npy", mmap_mode="r"), t, callbacks=[StopEarly()])
    assert threading.active_count() == before
    bad = t.copy()
    bad[250] = 7  # a label out of range, found when its batch is read
    with pytest.raises(ValueError, match=r"fit: rows .* of the data set: .*labels must lie in \[0, 3\)"):
        train(build(), np.load(folder / "x.npy", mmap_mode="r"), bad, shuffle=False)
    assert threading.active_count() == before
    x = np.load(folder / "x.npy")
    x[250, 3] = np.nan  # found by the reading thread, which checks X as it gathers a batch
    np.save(folder / "nan.npy", x)
    with pytest.raises(ValueError, match=r"^fit: row 250 of the data set: X contains NaN or Inf"):
        train(build(), np.load(folder / "nan.npy", mmap_mode="r"), t)
    with pytest.raises(ValueError, match=r"^evaluate: row 250 of the data set: X contains NaN or Inf"):
        build().evaluate(np.load(folder / "nan.npy", mmap_mode="r"), t, gn.SoftmaxCrossEntropyLoss())
    with pytest.raises(ValueError, match=r"row 250 of the data set: X contains NaN or Inf"):
        build().predict(np.load(folder / "nan.npy", mmap_mode="r"))
    assert threading.active_count() == before


@pytest.mark.parametrize("split", [0.2, 0.33])
def test_validation_split_streams_the_last_rows_and_equals_the_in_memory_fit(files, monkeypatch, split):
    folder, x, t = files
    w = np.random.default_rng(1).uniform(0, 2, size=300)
    dataset = Dataset(folder / "x.npy", folder / "t.npy")
    split_at = int(np.floor(300 * (1 - split)))
    reads, read = [], stream.BatchStream.order

    def recorded(self, epoch):  # every chunk each stream reads, with its stream's rows
        chunks = read(self, epoch)
        reads.append((self.dataset.x.offset, [(start, stop) for start, stop, _ in chunks]))
        return chunks

    monkeypatch.setattr(stream.BatchStream, "order", recorded)
    for options in ({}, {"sample_weight": w}):
        in_memory, streamed = build(), build()
        expected = train(in_memory, x, t, validation_split=split, metrics=("accuracy",), **options)
        got = train(streamed, dataset, None, validation_split=split, metrics=("accuracy",), **options)
        assert got == expected and "val_loss" in got  # bit for bit: the same batches, the same sums
        assert np.array_equal(in_memory.flat.values, streamed.flat.values)
    header = dataset.x.offset
    training = [chunks for offset, chunks in reads if offset == header]
    validating = [chunks for offset, chunks in reads if offset == header + split_at * 6 * 4]
    assert training and validating and len(training) + len(validating) == len(reads)
    assert all(stop <= split_at for chunks in training for _, stop in chunks)  # its own rows, from the file
    assert all(stop <= 300 - split_at for chunks in validating for _, stop in chunks)


def test_evaluate_streamed_equals_evaluate_in_memory_bit_for_bit(files, monkeypatch):
    folder, x, t = files
    monkeypatch.setattr(stream, "CHUNK_BYTES", 64 * 6 * 4)  # several chunks, read in order
    model, loss = build(), gn.SoftmaxCrossEntropyLoss()
    w = np.random.default_rng(2).uniform(0, 2, size=300)
    for options in ({}, {"sample_weight": w}):
        expected = model.evaluate(x, t, loss, metrics=("accuracy",), batch_size=64, **options)
        assert model.evaluate(np.load(folder / "x.npy", mmap_mode="r"), t, loss, metrics=("accuracy",),
                              batch_size=64, **options) == expected


def test_the_reading_thread_ends_with_fit_on_ctrl_c_and_hands_its_errors_to_fit(files):
    folder, _, t = files

    class Interrupt(gn.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 2:
                raise KeyboardInterrupt

    before = threading.active_count()
    with pytest.raises(KeyboardInterrupt) as caught:  # its traceback holds fit's frame (as sys.last_traceback does)
        train(build(), np.load(folder / "x.npy", mmap_mode="r"), t, callbacks=[Interrupt()])
    assert threading.active_count() == before and caught.traceback
    np.save(folder / "short.npy", np.zeros((300, 6), np.float32))
    with open(folder / "short.npy", "r+b") as file:  # the file loses its tail after the Dataset read its header
        data = Dataset(folder / "short.npy", t)
        file.truncate(file.seek(0, 2) - 6 * 4 * 100)
    with pytest.raises(OSError, match="the file ended before row"):  # raised in the thread, re-raised by fit
        train(build(), data, None)
    assert threading.active_count() == before


def test_batches_reuse_a_ring_of_buffers_refilled_only_after_release(files):
    folder, x, t = files
    batches = BatchStream(Dataset(folder / "x.npy", t), batch_size=16, seed=3, chunk_rows=64)
    seen, buffers, held = [], set(), None
    for batch in batches.batches(0):  # each batch held until the next has been gathered, as CuPy's copies are
        if held is not None:
            assert np.array_equal(held.x, x[held.rows]), "a held batch was overwritten"
            held.release()
        assert np.array_equal(batch.x, x[batch.rows]) and np.array_equal(batch.t, t[batch.rows])
        seen.append(batch.rows)
        buffers.add(id(batch.x.base))
        held = batch
    assert sorted(np.concatenate(seen).tolist()) == list(range(300))
    assert len(buffers) == 2  # two buffers of the ring in turn: no allocation per batch
    kept = list(BatchStream(Dataset(folder / "x.npy", t), batch_size=16, seed=3, chunk_rows=64).batches(0))
    assert all(np.array_equal(batch.x, x[batch.rows]) for batch in kept)  # none released: the ring grows
    first = batches.batches(1)
    next(first)
    with pytest.raises(RuntimeError, match="one epoch at a time"):
        next(batches.batches(2))
    first.close()
    assert len(list(batches.epoch(2))) == 19  # closed: the stream reads again


def test_streaming_refuses_what_it_does_not_do(files):
    folder, _, t = files
    mapped = np.load(folder / "x.npy", mmap_mode="r")
    with pytest.raises(ValueError, match="300 rows cannot be split"):
        train(build(), mapped, t, validation_split=0.999)
    with pytest.raises(ValueError, match="the Dataset holds no targets"):
        train(build(), Dataset(mapped), None)
    with pytest.raises(ValueError, match="a Dataset holds its targets"):
        train(build(), Dataset(mapped, t), t)
    with pytest.raises(ValueError, match="X has 6 features but the model expects 4"):
        gn.Sequential(gn.Dense(4, 3)).fit(mapped, t, loss=gn.SoftmaxCrossEntropyLoss(), optimizer=gn.SGD(lr=0.1),
                                          verbose=0)


def test_finite_inputs_whose_sum_overflows_are_not_taken_for_inf(tmp_path):
    huge = np.full((40, 3), 1e308)  # finite, though their sum (the quick check) is inf
    np.save(tmp_path / "huge.npy", huge)
    got = [x for _, x, _ in BatchStream(Dataset(tmp_path / "huge.npy"), 16, shuffle=False).epoch(0)]
    assert np.array_equal(np.concatenate(got), huge)
    huge[33, 1] = np.inf
    np.save(tmp_path / "huge.npy", huge)
    with pytest.raises(ValueError, match="row 33 of the data set: X contains NaN or Inf"):
        list(BatchStream(Dataset(tmp_path / "huge.npy"), 16, shuffle=False).epoch(0))


def test_the_training_thread_reads_a_chunk_itself_when_the_reading_thread_has_not_begun_it(files, monkeypatch):
    folder, x, t = files
    dataset = Dataset(folder / "x.npy", t)
    readers, read, claim = [], dataset.read, stream._Claims.claim

    def slow_claim(self, chunks):  # a reading thread kept off the cores by a busy machine
        threading.Event().wait(0.1)
        return claim(self, chunks)

    monkeypatch.setattr(dataset, "read", lambda start, stop, *out: readers.append(threading.current_thread().name)
                        or read(start, stop, *out))
    expected = np.concatenate([rows for rows, _, _ in BatchStream(Dataset(folder / "x.npy", t), 16, seed=3,
                                                                   chunk_rows=32).epoch(0)])
    monkeypatch.setattr(stream._Claims, "claim", slow_claim)
    got = [(rows, xb) for rows, xb, _ in BatchStream(dataset, 16, seed=3, chunk_rows=32).epoch(0)]
    assert np.array_equal(np.concatenate([rows for rows, _ in got]), expected)  # the same order, every row once
    assert all(np.array_equal(xb, x[rows]) for rows, xb in got)
    assert "MainThread" in readers and len(readers) == 10  # each of the 10 chunks read once, some in line


def test_a_copy_on_write_memory_map_streams_its_own_edits_not_the_file(files):
    """np.load(mmap_mode="c") keeps edits in memory only (MAP_PRIVATE): streaming must read the array, as
    NumPy shows it, not its file (which still holds the rows before the edit: a silent wrong answer)."""
    folder, x, t = files
    mapped = np.load(folder / "x.npy", mmap_mode="c")
    mapped -= mapped.mean(axis=0)  # standardised in place, as one does with a private copy
    model = build()
    assert np.array_equal(Dataset(mapped, t).read(0, 300)[0], np.asarray(mapped))
    assert np.array_equal(model.predict(mapped), model.predict(np.array(mapped)))


def test_a_file_replaced_after_the_dataset_read_its_header_is_refused_not_read(files):
    """The header's shape and dtype describe the file the Dataset opened: another file moved to that path
    (a rewritten data set, saved to a temporary name and renamed) is refused by name, never read as
    rows of the old layout."""
    folder, x, t = files
    data = Dataset(folder / "x.npy", t)
    np.save(folder / "new.npy", np.ones((600, 6), np.float64))  # twice the bytes, another dtype
    (folder / "new.npy").replace(folder / "x.npy")
    with pytest.raises(OSError, match="replaced since"):
        data.read(0, 10)
    with pytest.raises(OSError, match="replaced since"):
        train(build(), data, None, epochs=1)


def test_a_memory_map_whose_file_was_replaced_or_deleted_streams_what_it_shows(files):
    """A map keeps showing its own file after another file took its path (or the path was deleted), as
    NumPy shows it: its rows are read through the map then, never from the file now at the path."""
    folder, x, t = files
    mapped = np.load(folder / "x.npy", mmap_mode="r")
    np.save(folder / "new.npy", np.zeros((300, 6), np.float32))
    (folder / "new.npy").replace(folder / "x.npy")
    model = build()
    assert np.array_equal(model.predict(mapped), model.predict(x))
    (folder / "x.npy").unlink()
    assert np.array_equal(model.predict(mapped[10:]), model.predict(x[10:]))


@pytest.mark.parametrize("dtype", ["complex64", "U3", "V4", "datetime64[s]"])
def test_a_stream_of_no_numbers_is_refused_when_the_dataset_is_made(tmp_path, dtype):
    """In memory, complex X is refused (the imaginary part would be lost); streamed, it was cast with a
    ComplexWarning, and text failed mid-epoch with NumPy's bare 'could not convert string to float'."""
    np.save(tmp_path / "x.npy", np.zeros((4, 3), dtype))
    for source in (tmp_path / "x.npy", np.load(tmp_path / "x.npy", mmap_mode="r")):
        with pytest.raises(TypeError, match=r"X holds .* not numbers|X holds complex values"):
            Dataset(source)
    model = build()
    with pytest.raises(TypeError, match=r"predict: X holds"):
        model.predict(np.load(tmp_path / "x.npy", mmap_mode="r"))
    with pytest.raises(TypeError, match=r"T holds"):
        Dataset(np.zeros((4, 6), np.float32), np.zeros(4, dtype))


def test_predict_over_no_rows_gives_no_rows_as_in_memory(tmp_path):
    """predict on a (0, features) array returns (0, outputs) in memory (as torch and NumPy do); streamed
    from an empty .npy it raised instead."""
    np.save(tmp_path / "x.npy", np.zeros((0, 6), np.float32))
    model = build()
    expected = model.predict(np.zeros((0, 6), np.float32))
    for source in (np.load(tmp_path / "x.npy", mmap_mode="r"), Dataset(tmp_path / "x.npy")):
        got = model.predict(source)
        assert got.shape == expected.shape == (0, 3) and got.dtype == expected.dtype
