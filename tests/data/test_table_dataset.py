"""gn.data.TableDataset: the rows of a CSV (through a byte index of its rows) or Parquet file (by row
group), read through PyArrow a block at a time; fit, evaluate and predict stream it as they stream .npy."""

import sys

import numpy as np
import pandas as pd
import pytest

import gpunn as gn
from gpunn.data import Dataset, TableDataset, stream, table
from gpunn.extras import install_command

from tests.data.test_streaming import assert_resumes_exactly, build, train


@pytest.fixture
def frame(rng):
    x = rng.normal(size=(300, 6)).round(6)
    return pd.DataFrame({**{f"f{i}": x[:, i] for i in range(6)}, "label": rng.integers(0, 3, size=300)})


@pytest.fixture(params=["csv", "parquet"])
def path(request, tmp_path, frame, monkeypatch):
    monkeypatch.setattr(table, "INDEX_EVERY", 7)  # index blocks far smaller than a read: reads cross them
    monkeypatch.setattr(table, "_SCAN_BYTES", 1000)  # and the index's pass reads the file in many blocks
    path = tmp_path / f"d.{request.param}"
    if request.param == "csv":
        frame.to_csv(path, index=False, float_format="%.17g")
    else:
        frame.to_parquet(path, row_group_size=64)
    return path


def arrays(frame):
    return frame[[f"f{i}" for i in range(6)]].to_numpy(), frame["label"].to_numpy()


def test_reads_any_row_range_of_csv_and_parquet(path, frame):
    data = TableDataset(path, target="label")
    x, t = arrays(frame)
    assert (data.rows, data.features, data.t.dtype) == (300, 6, np.int64)
    for start, stop in [(0, 300), (0, 1), (6, 8), (63, 130), (290, 300), (299, 300)]:
        block_x, block_t = data.read(start, stop)
        assert np.array_equal(block_x, x[start:stop]) and np.array_equal(block_t, t[start:stop]), (start, stop)
    chosen = TableDataset(path, target="f0", features=["f2", "label"])
    assert chosen.t.dtype == np.float64 and np.array_equal(chosen.read(3, 9)[0][:, 1], t[3:9])


def test_fit_evaluate_predict_stream_a_table_as_they_stream_npy(path, frame, tmp_path, monkeypatch):
    x, t = arrays(frame)
    in_memory, streamed = build(), build()
    assert train(in_memory, x, t) == train(streamed, TableDataset(path, target="label"), None)
    assert np.array_equal(in_memory.flat.values, streamed.flat.values)  # one chunk: the in-memory shuffle
    monkeypatch.setattr(stream, "CHUNK_BYTES", 64 * 6 * 8)  # 64-row chunks: the shuffle crosses chunks and blocks
    np.save(tmp_path / "x.npy", np.ascontiguousarray(x))
    from_npy, from_table = build(), build()
    assert train(from_npy, Dataset(tmp_path / "x.npy", t), None, epochs=2) == \
        train(from_table, TableDataset(path, target="label"), None, epochs=2)
    assert np.array_equal(from_npy.flat.values, from_table.flat.values)
    loss = gn.SoftmaxCrossEntropyLoss()
    assert from_table.evaluate(TableDataset(path, target="label"), None, loss, batch_size=50) == \
        from_table.evaluate(x, t, loss, batch_size=50)
    features = TableDataset(path, features=[f"f{i}" for i in range(6)])  # no target: predict's
    assert np.array_equal(from_table.predict(features, batch_size=50), from_table.predict(x, batch_size=50))


@pytest.mark.parametrize("scan_bytes", [1, 2, 5, 2**24])  # the index's pass reads blocks: rows cross them
def test_csv_layouts_pyarrow_reads_are_indexed_alike(tmp_path, monkeypatch, scan_bytes):
    monkeypatch.setattr(table, "INDEX_EVERY", 1)
    monkeypatch.setattr(table, "_SCAN_BYTES", scan_bytes)
    path = tmp_path / "odd.csv"  # blank lines, CRLF, a quoted newline (also in the header), a doubled quote, no last newline
    path.write_bytes(b'\r\nx,"na\nme",y\r\n\r\n1,"a\r\n""b""",2\r\n3,c,4\n\n5,d,6')
    data = TableDataset(path, target="y", features=["x"])
    assert data.rows == 3
    assert [data.read(row, row + 1)[1].tolist() for row in range(3)] == [[2], [4], [6]]
    assert data.read(0, 3)[0].tolist() == [[1.0], [3.0], [5.0]]


def test_a_csv_the_index_misreads_is_refused_not_read_shifted(tmp_path, monkeypatch):
    monkeypatch.setattr(table, "INDEX_EVERY", 2)
    path = tmp_path / "q.csv"
    path.write_text('a,b\n5"3,1\n4,2\n7"8,3\n1,1\n')  # PyArrow reads the mid-cell quotes as text: 4 rows
    with pytest.raises(ValueError, match="parse as 4 rows; a quote inside an unquoted cell"):
        TableDataset(path, target="b")


def test_missing_cells_and_text_are_named(tmp_path):
    (tmp_path / "m.csv").write_text("a,b,label\n1,2,0\n3,,1\n5,6,0\n")
    data = TableDataset(tmp_path / "m.csv", target="label")
    with pytest.raises(ValueError, match="column 'b' has a missing value in data row 2; fill or drop such rows$"):
        data.read(0, 3)
    (tmp_path / "t.csv").write_text("a,b,label\n1,2,0\n3,red,1\n")
    with pytest.raises(ValueError, match="column 'b' holds 'red' in data row 2, not a number"):
        TableDataset(tmp_path / "t.csv", target="label").read(0, 2)
    with pytest.raises(ValueError, match="has no column 'y'"):
        TableDataset(tmp_path / "t.csv", target="y")
    with pytest.raises(ValueError, match="neither .csv nor .parquet"):
        TableDataset(tmp_path / "t.txt")


def test_without_pyarrow_the_message_says_how_to_install_it(tmp_path, monkeypatch):
    (tmp_path / "d.csv").write_text("a,label\n1,0\n")
    for name in [name for name in sys.modules if name == "pyarrow" or name.startswith("pyarrow.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow raises ImportError
    with pytest.raises(ImportError, match=f"needs PyArrow: {install_command('data')}".replace("[", "\\[").replace(".", "\\.")):
        TableDataset(tmp_path / "d.csv", target="label")


def test_training_on_a_table_resumes_exactly(path, tmp_path, monkeypatch):
    monkeypatch.setattr(stream, "CHUNK_BYTES", 64 * 6 * 8)  # the shuffle crosses chunks
    assert_resumes_exactly(TableDataset(path, target="label"), tmp_path)


def test_a_table_streams_with_validation_split_and_in_shards_as_npy_does(path, frame):
    """validation_split's parts are views of the file (rows_between), and a data-parallel rank's shard
    is gathered from it (gather): the numbers of the in-memory fit and of the arrays' rows."""
    x, t = arrays(frame)
    data = TableDataset(path, target="label")
    in_memory, streamed = build(), build()
    expected = train(in_memory, x, t, validation_split=0.3, metrics=("accuracy",))
    assert train(streamed, data, None, validation_split=0.3, metrics=("accuracy",)) == expected
    assert np.array_equal(in_memory.flat.values, streamed.flat.values)
    tail = data.rows_between(210, 300)
    assert tail.rows == 90 and np.array_equal(tail.read(5, 17)[0], x[215:227])
    rows = np.array([0, 3, 4, 40, 89])
    out = (np.empty((5, 6)), np.empty(5, np.int64))
    got_x, got_t = tail.gather(rows, out)
    assert got_x is out[0] and np.array_equal(got_x, x[210 + rows]) and np.array_equal(got_t, t[210 + rows])


def test_a_csv_with_an_unnamed_or_repeated_column_is_refused_as_gpunn_train_refuses_it(tmp_path, frame):
    """DataFrame.to_csv without index=False writes the index as a first column with no name: streamed,
    it was a feature (the row number) without a word; gpunn train already refused such a header."""
    frame.to_csv(tmp_path / "indexed.csv")
    with pytest.raises(ValueError, match=r"column\(s\) 1 have no name.*index=False"):
        TableDataset(tmp_path / "indexed.csv", target="label")
    (tmp_path / "trailing.csv").write_text("a,b,label,\n1,2,0,\n3,4,1,\n")
    with pytest.raises(ValueError, match=r"column\(s\) 4 have no name \(a comma at the end of each line"):
        TableDataset(tmp_path / "trailing.csv", target="label")
    (tmp_path / "twice.csv").write_text("a,a,label\n1,2,0\n3,4,1\n")
    with pytest.raises(ValueError, match="names 'a' more than once"):
        TableDataset(tmp_path / "twice.csv", target="label")


def test_a_csv_changed_after_it_was_indexed_is_refused_not_read_at_old_offsets(tmp_path, frame):
    """The row index holds byte offsets: a file edited (a value of another length shifts every row after
    it) or replaced since is refused, never parsed from offsets that now fall mid-row."""
    frame.to_csv(tmp_path / "d.csv", index=False, float_format="%.17g")
    data = TableDataset(tmp_path / "d.csv", target="label")
    edited = frame.copy()
    edited.loc[0, "f0"] = 123456.5
    edited.to_csv(tmp_path / "d.csv", index=False, float_format="%.17g")
    with pytest.raises(ValueError, match="changed since"):
        data.read(0, 300)
    with pytest.raises(ValueError, match="changed since"):
        train(build(), data, None, epochs=1)
