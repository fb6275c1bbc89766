"""Rows of a CSV or Parquet file, read through PyArrow (an optional dependency, imported at first use).

``TableDataset`` is a ``Dataset`` whose ``read(start, stop)`` parses only the rows asked for: a Parquet
file by its row groups' row counts, a CSV file by an index of where every ``INDEX_EVERY``-th data row
starts, made by one pass over its bytes. ``BatchStream`` then shuffles and prefetches it as it does a
``.npy`` file, with the same ``(seed, epoch)`` order and exact resume.
"""

from __future__ import annotations

import os
import copy
from dataclasses import dataclass, field, replace

import numpy as np

from gpunn.data.dataset import Dataset, Layout
from gpunn.extras import install_command

#: A CSV's index keeps the byte offset of every this many data rows (8 bytes per this many rows).
INDEX_EVERY = 1024
_SCAN_BYTES = 16 * 2**20


def arrow():
    """The pyarrow package with its csv, parquet and compute modules loaded; an ImportError that says
    how to install it where it is missing."""
    try:
        import pyarrow
        import pyarrow.compute  # noqa: F401  (loaded for pyarrow.compute below)
        import pyarrow.csv  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError as error:
        raise ImportError(f"reading .csv and .parquet files needs PyArrow: {install_command('data')}") from error
    return pyarrow


def csv_options(names: list[str] | None = None, text: list[str] = (), nulls: bool = True):
    """(read, parse, convert) options: quoted cells may hold newlines; the columns in ``text`` stay text;
    with ``nulls``, empty cells, NA and the like are nulls (in text columns too). ``names``: a block
    without a header."""
    pa = arrow()
    read = pa.csv.ReadOptions(column_names=names) if names else pa.csv.ReadOptions()
    convert = pa.csv.ConvertOptions(column_types={name: pa.string() for name in text}, strings_can_be_null=nulls)
    return read, pa.csv.ParseOptions(newlines_in_values=True), convert


def csv_header(path) -> list[str]:
    """A CSV file's column names (its first block parsed, not the file); a ValueError for UTF-16 text,
    which PyArrow would parse as one column of odd bytes."""
    pa = arrow()
    with open(path, "rb") as file:
        if file.read(2) in (b"\xff\xfe", b"\xfe\xff"):
            raise ValueError(f"{os.fspath(path)}: unreadable CSV: it begins with a UTF-16 byte order mark; save it "
                             "as UTF-8 (gpunn reads CSV files in UTF-8)")
    read, parse, convert = csv_options()
    with pa.csv.open_csv(os.fspath(path), read_options=read, parse_options=parse, convert_options=convert) as reader:
        return list(reader.schema.names)


def read_csv(path, text: list[str] = ()):
    """A whole CSV file as a pyarrow Table. PyArrow infers each column's type from all its cells (numbers,
    else text; an empty or NA cell is a null in a number column and stays as written in a text one);
    the columns in ``text`` stay text."""
    pa = arrow()
    read, parse, convert = csv_options(text=text, nulls=False)
    return pa.csv.read_csv(os.fspath(path), read_options=read, parse_options=parse, convert_options=convert)


def check_names(path, header) -> None:
    """A ValueError unless every column has a name of its own (an unnamed first column is the index
    DataFrame.to_csv writes without index=False: a row number, no feature)."""
    unnamed = [str(i + 1) for i, name in enumerate(header) if not name]
    if unnamed:
        raise ValueError(f"{path}: header column(s) {', '.join(unnamed)} have no name"
                         + (" (a pandas index? write the file with DataFrame.to_csv(path, index=False))"
                            if unnamed == ["1"] else
                            " (a comma at the end of each line? remove it)" if unnamed == [str(len(header))] else ""))
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise ValueError(f"{path}: the header names {', '.join(map(repr, repeated))} more than once; "
                         "column names must be unique")


def pandas_index_columns(schema) -> list[str]:
    """The columns DataFrame.to_parquet stored from the frame's index (``__index_level_0__`` for a
    filtered frame, or the index's name): pandas.read_parquet makes them the index again, no data."""
    try:
        metadata = schema.pandas_metadata or {}
    except ValueError:  # metadata that is not pandas' JSON: no index columns
        return []
    return [name for name in metadata.get("index_columns", []) if isinstance(name, str)]


def numbers(column, name: str, where: str, first_row: int = 0) -> np.ndarray:
    """A pyarrow column as float64 (NaN where a cell is missing): text is read as numbers (a ValueError
    names the first cell that is not one, counting data rows from ``first_row`` + 1), booleans as 0 and 1,
    integers past 2^53 and decimals rounded to the nearest float64, as NumPy's astype(float64) and float() round
    (PyArrow's default safe cast refuses them, naming neither the file nor the column)."""
    pa = arrow()
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    if pa.types.is_decimal(column.type):  # through its text: Arrow's decimal-to-double cast is not correctly rounded
        column = pa.compute.cast(column, pa.string())
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        column = pa.compute.utf8_trim_whitespace(column)
        try:
            column = pa.compute.cast(column, pa.float64())
        except pa.ArrowInvalid:
            bad = next(row for row, cell in enumerate(column.to_pylist()) if cell is not None and not is_number(cell))
            raise ValueError(f"{where}: column {name!r} holds {column[bad].as_py()!r} in data row {first_row + bad + 1}, not a "
                             "number") from None
    elif pa.types.is_binary(column.type):  # what PyArrow's CSV reader makes of text that is not UTF-8
        raise ValueError(f"{where}: column {name!r} is not UTF-8 text (a file in Latin-1 or another encoding?); "
                         "save it as UTF-8")
    elif not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)
              or pa.types.is_boolean(column.type) or pa.types.is_null(column.type)):
        raise ValueError(f"{where}: column {name!r} holds {column.type} values; use numbers or text")
    return _float64(pa.compute.cast(column, pa.float64(), safe=False))


def _float64(array) -> np.ndarray:
    """A float64 Arrow array as NumPy, NaN where null, read from its buffers: Arrow's own to_numpy (and
    fill_null) import pandas for nulls, which costs a third of a second and 50 MiB the first time."""
    validity, data = array.buffers()
    if data is None:
        return np.full(len(array), np.nan)
    values = np.frombuffer(data, np.float64, count=len(array), offset=array.offset * 8)  # read-only, in place
    if array.null_count and validity is not None:
        valid = np.unpackbits(np.frombuffer(validity, np.uint8), bitorder="little")[array.offset:array.offset + len(array)]
        values = np.where(valid == 1, values, np.nan)
    return values


def is_number(text: str) -> bool:
    """Whether Python reads the text as a float (the cell that a failed cast names)."""
    try:
        float(text)
    except ValueError:
        return False
    return True


def csv_row_starts(path, every: int) -> tuple[np.ndarray, int]:
    """(byte offsets of data rows 0, every, 2·every, … then of the end of the last row, data rows).

    A row ends at a newline outside quotes: the count of quotes before it is even (an escaped ``""``
    adds two). Empty lines are no rows (PyArrow skips them), and the first row is the header. The
    rows a block of the index parses to are counted again when it is read, so a file this scan
    misreads is refused, never read shifted."""
    starts, rows, quotes, previous_end, last_byte = [], -1, 0, -1, b""
    path = os.fspath(path)
    size = os.path.getsize(path)
    with open(path, "rb") as file:
        position = 0
        while True:
            block = file.read(_SCAN_BYTES)
            if not block:
                break
            data = np.frombuffer(block, np.uint8)
            quoted = np.bitwise_xor.accumulate((data == ord('"')).view(np.uint8)) ^ quotes  # 1 inside quotes
            quotes = int(quoted[-1])
            ends = np.flatnonzero((data == ord("\n")) & (quoted == 0)) + position
            if position + len(block) == size and (data[-1] != ord("\n") or quoted[-1]):
                ends = np.append(ends, size)  # a last row without a newline
            if len(ends) == 0:  # a row longer than the block goes on
                position, last_byte = position + len(block), block[-1:]
                continue
            begins = np.concatenate([[previous_end + 1], ends[:-1] + 1])
            lengths = ends - begins
            context = np.frombuffer(last_byte + block, np.uint8)  # the byte before this block, for a \r line
            one = lengths == 1
            carriage = np.zeros(len(ends), bool)
            carriage[one] = context[begins[one] - position + len(last_byte)] == ord("\r")
            kept = begins[(lengths > 0) & ~carriage]
            numbered = np.arange(rows, rows + len(kept))  # -1 is the header
            starts.append(kept[(numbered >= 0) & (numbered % every == 0)])
            rows += len(kept)
            previous_end = int(ends[-1])
            position, last_byte = position + len(block), block[-1:]
    rows = max(rows, 0)
    end = previous_end + 1 if previous_end >= 0 else size
    return np.concatenate([*starts, [end]]).astype(np.int64), rows


def _stamp(status) -> tuple:
    """What tells a file changed: which file it is, its size and its modification time."""
    return status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns


def _into(values: np.ndarray, out: np.ndarray | None) -> np.ndarray:
    if out is None:
        return values
    out[...] = values
    return out


@dataclass
class Columns(Layout):
    """Which columns of the file make ``X`` (or ``T``), with the shape and dtype of the array they read as.
    The file is opened per read: nothing is held."""

    path: str = ""
    names: list[str] = field(default_factory=list)
    name: str = "X"


class TableDataset(Dataset):
    """Feature columns (numbers) and a ``target`` column of a ``.csv`` (with a header row) or ``.parquet``
    file, read ``read(start, stop)`` rows at a time, never whole. ``features``: the columns of ``X``, in
    order (default: every column but the target, and but the index pandas stored in a Parquet file). A
    missing cell or a column of text is a ValueError naming the column (``gpunn train`` one-hot encodes
    text and imputes; this reads numbers), unless ``missing``: then a missing feature cell reads as NaN,
    for the caller to fill.
    A whole-number target reads as int64 class indices, any other as float64."""

    def __init__(self, path, target: str | None = None, features: list[str] | None = None, missing: bool = False):
        pa = arrow()
        self.missing = missing  # missing feature cells read as NaN (for a caller that fills them) instead of an error
        self.path = os.fspath(path)
        kind = os.path.splitext(self.path)[1].lower()
        if kind not in (".csv", ".parquet"):
            compressed = kind in (".gz", ".bz2", ".zst", ".xz") and self.path.lower()[:-len(kind)].endswith(".csv")
            raise ValueError(f"TableDataset: {self.path!r} is neither .csv nor .parquet" + (
                " (a compressed CSV has no rows to read in place: decompress it, or convert it to Parquet)"
                if compressed else ""))
        if kind == ".parquet":
            self._parquet = pa.parquet.ParquetFile(self.path)
            index = pandas_index_columns(self._parquet.schema_arrow)
            names = list(self._parquet.schema_arrow.names)
            metadata = self._parquet.metadata
            counts = [metadata.row_group(group).num_rows for group in range(metadata.num_row_groups)]
            self._group_starts = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
            rows = int(self._group_starts[-1])
        else:
            self._parquet, index = None, []
            self._stamp = _stamp(os.stat(self.path))  # the index's offsets hold for this file as it is now
            names = csv_header(self.path)
            check_names(f"TableDataset: {self.path}", [name.strip() for name in names])
            self._every = INDEX_EVERY
            self._starts, rows = csv_row_starts(self.path, self._every)
            self._names = names
        if target is not None and target not in names:
            raise ValueError(f"TableDataset: {self.path} has no column {target!r} (it has {names})")
        features = [name for name in names if name not in (target, *index)] if features is None else list(features)
        absent = [name for name in features if name not in names]
        if absent or not features:
            raise ValueError(f"TableDataset: {self.path} has no feature column(s) {absent} (it has {names})")
        self._first, self._file_rows = 0, rows  # this view's rows begin at _first of the file's (rows_between)
        self.x = Columns((rows, len(features)), np.dtype(np.float64), self.path, features)
        self.t = None
        if target is not None:
            self.t = Columns((rows,), np.dtype(np.float64), self.path, [target], "T")
            if rows:
                self.t.dtype = self._target_dtype()

    def _target_dtype(self) -> np.dtype:
        """int64 when every target is a whole number (class indices), else float64: one pass over the column."""
        whole = True
        for start in range(0, self.rows, 2**20):
            values = self._matrix(self._rows(start, min(start + 2**20, self.rows), self.t.names), self.t.names, start)
            whole = whole and bool(np.all(values == np.round(values)))
        return np.dtype(np.int64 if whole else np.float64)

    def _rows(self, start: int, stop: int, names: list[str]):
        """The named columns of rows [start, stop) as a pyarrow Table."""
        pa = arrow()
        if self._parquet is not None:
            pieces, groups = [], self._group_starts
            for group in range(int(np.searchsorted(groups, start, "right")) - 1, len(groups) - 1):
                first = int(groups[group])
                if first >= stop:
                    break
                for batch in self._parquet.iter_batches(batch_size=65536, row_groups=[group], columns=names):
                    low, high = max(start, first), min(stop, first + len(batch))
                    if low < high:
                        pieces.append(batch.slice(low - first, high - low))
                    first += len(batch)
                    if first >= stop:
                        break
            schema = pa.schema([self._parquet.schema_arrow.field(name) for name in names])
            return pa.Table.from_batches(pieces, schema=schema) if pieces else schema.empty_table()
        every = self._every
        first, last = start // every, -(-stop // every)
        low, high = int(self._starts[first]), int(self._starts[min(last, len(self._starts) - 1)])
        with open(self.path, "rb") as file:
            if _stamp(os.fstat(file.fileno())) != self._stamp:
                raise ValueError(f"{self.path}: the file changed since this TableDataset indexed its rows (another "
                                 "size, time or file); make a new TableDataset to read it as it is now")
            file.seek(low)
            block = file.read(high - low)
        read, parse, convert = csv_options(self._names, text=names)
        convert.include_columns = names
        table = pa.csv.read_csv(pa.BufferReader(block), read_options=read, parse_options=parse,
                                convert_options=convert)
        expected = min(last * every, self._file_rows) - first * every
        if table.num_rows != expected:
            raise ValueError(f"{self.path}: rows {first * every + 1}..{first * every + expected} parse as "
                             f"{table.num_rows} rows; a quote inside an unquoted cell or a bare \\r line end? "
                             "(quote such cells, use \\n or \\r\\n line ends) or convert the file to Parquet")
        return table.slice(start - first * every, stop - start)

    def _matrix(self, table, names: list[str], start: int, missing_allowed: bool = False) -> np.ndarray:
        out = np.empty((table.num_rows, len(names)))
        for index, name in enumerate(names):
            out[:, index] = numbers(table.column(name), name, self.path, start)
            missing = np.flatnonzero(np.isnan(out[:, index]))
            if len(missing) and not missing_allowed:
                raise ValueError(f"{self.path}: column {name!r} has a missing value in data row {start + missing[0] + 1}; "
                                 "fill or drop such rows")
        return out

    def read(self, start: int, stop: int, out=(None, None)):
        """Rows ``[start, stop)`` (of this view: ``rows_between``) as (X, T or None), in ``out``'s
        arrays where given (BatchStream's reused chunk buffers)."""
        start, stop = start + self._first, stop + self._first
        names = self.x.names + ([] if self.t is None else self.t.names)
        table = self._rows(start, stop, list(dict.fromkeys(names)))
        x = _into(self._matrix(table, self.x.names, start, self.missing), out[0])
        if self.t is None:
            return x, None
        return x, _into(self._matrix(table, self.t.names, start)[:, 0].astype(self.t.dtype), out[1])

    def gather(self, rows, out=(None, None)):
        """The rows at sorted, distinct indices ``rows`` (a rank's shard of a chunk): the span they
        cover is parsed (a CSV has no row offsets finer than its index), then picked."""
        rows = np.asarray(rows, dtype=np.int64)
        if not len(rows):
            return self.read(0, 0, out)
        x, t = self.read(int(rows[0]), int(rows[-1]) + 1)
        picked = rows - rows[0]
        return _into(x[picked], out[0]), None if t is None else _into(t[picked], out[1])

    def rows_between(self, start: int, stop: int) -> TableDataset:
        """Rows ``[start, stop)`` as a TableDataset of their own, still in the file (``validation_split``)."""
        part = copy.copy(self)
        part._first = self._first + start
        part.x = replace(self.x, shape=(stop - start, *self.x.shape[1:]))
        part.t = None if self.t is None else replace(self.t, shape=(stop - start, *self.t.shape[1:]))
        return part

    def __repr__(self) -> str:
        return f"TableDataset(rows={self.rows}, features={self.features}, path={self.path!r})"
