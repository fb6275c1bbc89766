"""Datasets for the command line: scikit-learn's bundled digits, and a user's .csv, .parquet, .npz or .npy.

CSV and Parquet files are read whole by PyArrow (C++; a CSV's cells are parsed in place, not as a
Python string each), .npy files memory-mapped. Feature columns stay as they were read (numbers with
NaN where a cell is missing, or text) until ``gpunn.cli.encoding`` turns them into the model's
inputs. Everything here works on the host with NumPy; the model moves batches to its device. Labels
are read as text (a code above 2^53 or with leading zeros stays itself); a numeric label
column that looks like a measured quantity is refused for classification, with the advice
to train a regression (``--task regress``) instead.
"""

from __future__ import annotations

import hashlib
import os
import dataclasses
from dataclasses import dataclass

import numpy as np

from gpunn.data import table as table_io
from gpunn.extras import install_command

TASKS = ("auto", "classify", "regress")
# A numeric label column with more distinct values than this, and more than half the rows
# distinct, is almost surely a quantity to regress rather than classes ("auto" refuses it).
MAX_AUTO_CLASSES = 20
#: Cells of a feature column that mean "missing" (PyArrow's list: empty, NA, N/A, NaN, null, #N/A, ...).
MISSING_TEXT = ["", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "N/A", "NA",
                "NULL", "NaN", "n/a", "nan", "null"]


#: Signs around a number that make a CSV cell text: currencies, percent, spaces (',' goes too, inside).
DECORATION = " $€£¥%"


class DataError(ValueError):
    """A user's data file cannot be used; the message says which file and why."""


@dataclass
class Table:
    """What a data file holds: its feature columns as read, the raw label column (if any), and the
    feature column names (None for .npz and .npy, whose columns go by position)."""

    columns: list[np.ndarray]  # float64 (NaN where a cell is missing), or text: object arrays (None where missing)
    labels: np.ndarray | None  # (samples,), text from a CSV, the stored values from Parquet, .npz and .npy
    features: list[str] | None

    @property
    def rows(self) -> int:
        return len(self.columns[0]) if self.columns else 0

    @property
    def names(self) -> list[str]:
        return self.features if self.features is not None else [f"column {i + 1}" for i in range(len(self.columns))]

    def select(self, names: list[str]) -> "Table":
        return Table([self.columns[self.names.index(name)] for name in names], self.labels, list(names))


@dataclass
class Dataset:
    X: np.ndarray | None  # (samples, features), float64: for files, the encoded columns (train.split encodes them)
    y: np.ndarray  # (samples,): int class indices, or float64 targets for a regression
    classes: np.ndarray | None  # class label of each index, as strings; None for a regression
    name: str
    features: list[str] | None = None
    files: list = dataclasses.field(default_factory=list)  # [(path, Table)]: --data, then the validation and test files


def load_digits() -> Dataset:
    """The 1797 8×8 handwritten digits that ship inside scikit-learn (no download)."""
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError as error:
        raise DataError(f"the digits dataset needs scikit-learn: {install_command('data')} "
                        "(or pass --data with your own .npz or .csv)") from error
    bunch = sklearn_digits()
    return Dataset(bunch.data.astype(np.float64), bunch.target.astype(np.int64),
                   np.array([str(c) for c in bunch.target_names]), "digits")


# --- labels -------------------------------------------------------------------------------
def _label_text(raw, path) -> np.ndarray:
    """The label column as stripped text; numbers from an .npz become their exact text."""
    raw = np.asarray(raw)
    if raw.ndim == 2 and raw.shape[1] > 1 and raw.dtype.kind in "biuf" and np.all((raw == 0) | (raw == 1)) \
            and np.all(raw.sum(axis=1) == 1):
        raise DataError(f"{path}: labels of shape {raw.shape} look one-hot; save the class of each row instead "
                        "(y.argmax(axis=1))")
    if raw.ndim != 1:
        raise DataError(f"{path}: labels must be one column, got shape {raw.shape}")
    if raw.dtype.kind == "f":
        _check_finite(raw, path)
        return np.array([repr(int(v)) if v == int(v) else repr(float(v)) for v in raw.tolist()], dtype=str)
    if raw.dtype.kind in "biu":
        return raw.astype(str)
    if raw.dtype.kind == "U":
        return np.char.strip(raw)
    raise DataError(f"{path}: labels have dtype {raw.dtype}; use numbers or strings")


def _check_finite(numbers: np.ndarray, path) -> None:
    bad = np.flatnonzero(~np.isfinite(numbers))
    if len(bad):
        raise DataError(f"{path}: labels contain NaN or Inf ({len(bad)} rows, first: data row {bad[0] + 1})")


def _as_numbers(text: np.ndarray):
    """The labels as float64 if every one is a number, else None."""
    try:
        return text.astype(np.float64)
    except ValueError:
        return None


def _check_present(text: np.ndarray, path, label) -> None:
    empty = np.flatnonzero(text == "")
    if len(empty):
        raise DataError(f"{path}: {len(empty)} rows have an empty label (first: data row {empty[0] + 1}); "
                        f"fill or drop them (label column {label!r})")


def encode_labels(raw, path, label="label", task: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """(class index per row, class names) for classification.

    ``task="auto"`` refuses a numeric column that looks like a quantity (non-integers, or many
    distinct integers) and suggests ``--task regress``; ``"classify"`` takes any column as classes.
    """
    text = _label_text(raw, path)
    _check_present(text, path, label)
    numbers = _as_numbers(text)
    if numbers is not None:
        _check_finite(numbers, path)
    classes = np.unique(text)
    if task == "auto" and numbers is not None:
        fractional = numbers != np.round(numbers)
        if fractional.any():
            raise DataError(f"{path}: the label column {label!r} holds non-integer numbers (e.g. "
                            f"{text[fractional][0]}): to predict a number use --task regress; to treat "
                            "them as class names anyway use --task classify")
        if len(classes) > MAX_AUTO_CLASSES and len(classes) > len(text) / 2:
            raise DataError(f"{path}: the label column {label!r} holds {len(classes)} distinct numbers in "
                            f"{len(text)} rows, which looks like a quantity, not classes: use --task "
                            "regress, or --task classify if they really are class codes")
    if len(classes) < 2:
        raise DataError(f"{path}: labels hold {len(classes)} class; at least 2 are needed to train")
    if numbers is not None and np.all(numbers == np.round(numbers)):  # 2 before 10, by value
        classes = np.array(sorted(classes, key=lambda name: (float(name), name)), dtype=str)
    index = {name: position for position, name in enumerate(classes.tolist())}
    return np.array([index[name] for name in text.tolist()], dtype=np.int64), classes


def regression_targets(raw, path, label="label") -> np.ndarray:
    """The label column as finite float64 targets, or a DataError naming the first bad cell."""
    raw = np.asarray(raw)
    if raw.dtype.kind in "biuf" and raw.ndim == 1:
        numbers = raw.astype(np.float64)
    else:
        text = _label_text(raw, path)
        _check_present(text, path, label)
        numbers = _as_numbers(text)
        if numbers is None:
            row, bad = next((row, cell) for row, cell in enumerate(text.tolist()) if not table_io.is_number(cell))
            raise DataError(f"{path}: --task regress needs numbers in the label column {label!r}, "
                            f"found {bad!r} (data row {row + 1})")
    _check_finite(numbers, path)
    if np.ptp(numbers) == 0:
        raise DataError(f"{path}: every target is {numbers[0]:g}; there is nothing to learn")
    return numbers


# --- files --------------------------------------------------------------------------------
FORMATS = (".csv (a header row; also .csv.gz or .csv.bz2), .parquet, .npz (arrays X and y) or .npy (the target as "
           "its last column)")
COMPRESSED = (".gz", ".bz2")


def read_table(path, label: str | None = "label", need_labels: bool = True, target_last: bool = True,
               text=()) -> Table:
    """A Table from a .csv (read by PyArrow) or .parquet file, an .npz (arrays X and y) or an .npy
    (memory-mapped; its last column is the target when ``target_last``, else all are features). The
    CSV columns named in ``text`` (the categories of a run) stay text whatever their cells look like:
    True and False, or 1 and 2, are categories there, not the booleans or numbers PyArrow would infer."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        kind = ("a folder, not a data file" if os.path.isdir(path) else
                "not a regular file" if os.path.exists(path) else "no such file")
        raise DataError(f"{path}: {kind}")
    kind = os.path.splitext(path)[1].lower()
    if kind in COMPRESSED and path.lower()[:-len(kind)].endswith(".csv"):  # PyArrow decompresses by the extension
        kind = ".csv"
    if kind in (".npz", ".npy"):
        X, y = _read_npz(path) if kind == ".npz" else _read_npy(path, target_last)
        table = Table(_array_columns(X, path, label), y, None)
    elif kind in (".csv", ".parquet"):
        table = _read_arrow(path, label, kind, set(text))
    else:
        raise DataError(f"{path}: unknown file type; use {FORMATS}")
    if need_labels and table.labels is None:
        if table.features is None:
            raise DataError(f"{path}: no labels (an .npz needs an array y beside X)")
        shown = ", ".join(map(repr, table.features[:10])) + (", ..." if len(table.features) > 10 else "")
        separator = next((c for c in ";\t|" if len(table.features) == 1 and c in table.features[0]), None)
        if separator is not None:
            raise DataError(f"{path}: its header is one column, {table.features[0][:60]!r}: the file looks "
                            f"separated by {separator!r}; gpunn reads CSV separated by commas (save it with commas)")
        raise DataError(f"{path}: no label column {label!r} (its columns: {shown}); is the label column named "
                        f"something other than {label!r}? name it with --label")
    if not table.columns:
        raise DataError(f"{path}: no feature columns (only the label {label!r}); a model needs inputs")
    if table.labels is not None and len(table.labels) != table.rows:
        raise DataError(f"{path}: {table.rows} rows of features but {len(table.labels)} labels")
    return table


def _array_columns(X, path, label) -> list[np.ndarray]:
    X = np.asarray(X) if not isinstance(X, np.memmap) else X
    if X.dtype.kind == "c":
        raise DataError(f"{path}: features are complex numbers; pass their real parts or magnitudes")
    if X.dtype.kind not in "biuf":
        raise DataError(f"{path}: features have dtype {X.dtype}; use numbers (text columns belong in a .csv or "
                        ".parquet file, which gpunn train one-hot encodes)")
    if X.ndim != 2 or X.shape[0] == 0:
        raise DataError(f"{path}: features must be a non-empty 2-D table, got shape {X.shape}")
    return [X[:, index] for index in range(X.shape[1])]


def _read_npz(path):
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise DataError(f"{path}: not a readable .npz file ({error})") from error
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: a single .npy array renamed .npz; save with np.savez(path, X=features, y=labels)")
    with archive:
        if "X" not in archive.files:
            raise DataError(f"{path}: an .npz needs an array named X (found {archive.files})")
        try:
            y = archive["y"] if "y" in archive.files else None
            return archive["X"], (y[:, 0] if y is not None and y.ndim == 2 and y.shape[1] == 1 else y)  # a column
        except (ValueError, OSError, EOFError) as error:
            raise DataError(f"{path}: not a readable .npz file ({error})") from error


def _read_npy(path, target_last: bool):
    """A 2-D .npy, memory-mapped: (features, the last column or None)."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise DataError(f"{path}: not a readable .npy file ({error})") from error
    if array.ndim != 2 or array.shape[1] < (2 if target_last else 1):
        raise DataError(f"{path}: an .npy must be 2-D (rows, features{' + the target as the last column' if target_last else ''}), "
                        f"got shape {array.shape}")
    return (array[:, :-1], array[:, -1]) if target_last else (array, None)


def _read_arrow(path, label, kind, text=frozenset()) -> Table:
    """A CSV or Parquet file through PyArrow: number columns as float64 (NaN where a cell is empty or
    NA), text columns as text (None where empty), the label column as text (CSV) or as stored."""
    try:
        pa = table_io.arrow()
    except ImportError as error:
        raise DataError(f"{path}: {error}") from None
    try:
        if kind == ".csv":
            header = table_io.csv_header(path)
            names = [name.strip() for name in header]
            _check_names(path, names)
            texts = [raw for raw, name in zip(header, names) if name == label or name in text]
            data = table_io.read_csv(path, text=texts).rename_columns(names)
        else:
            data = pa.parquet.read_table(path)
            index = [name for name in table_io.pandas_index_columns(data.schema) if name != label]
            data = data.drop_columns(index)  # pandas' index, as pandas.read_parquet reads it: no feature
            names = [str(name) for name in data.column_names]
            _check_names(path, names)
    except (pa.ArrowException, OSError) as error:
        if kind == ".csv" and "Expected" in str(error) and "columns" in str(error):
            raise DataError(f"{path}: rows have another number of cells than the header ({error})") from None
        what = "CSV" if kind == ".csv" else "Parquet file"
        raise DataError(f"{path}: unreadable {what} ({error})") from None
    except ValueError as error:  # a CSV in UTF-16 (csv_header)
        raise DataError(str(error)) from None
    if data.num_rows == 0:
        raise DataError(f"{path}: a CSV needs a header row and at least one data row" if kind == ".csv" else
                        f"{path}: the Parquet file holds no rows")
    labels = None
    if label is not None and label in names:
        column = data.column(label)
        if pa.types.is_dictionary(column.type):
            column = column.combine_chunks().dictionary_decode()
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            labels = np.array(["" if cell is None else cell for cell in column.to_pylist()], dtype=str)
        elif column.null_count:
            empty = np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))
            raise DataError(f"{path}: {len(empty)} rows have an empty label (first: data row {empty[0] + 1}); "
                            f"fill or drop them (label column {label!r})")
        else:
            labels = np.array(column.to_pylist())  # Arrow's to_numpy would import pandas
        data = data.drop_columns([label])
    features = [name for name in names if name != label] if labels is not None else names
    return Table([_feature_column(data.column(index), name, path, name in text) for index, name in enumerate(features)],
                 labels, features)


def _feature_column(column, name, path, text: bool = False) -> np.ndarray:
    """Numbers (float64, NaN where missing) if every present cell is one, else (or when ``text``) text
    (None where missing); a column of numbers with a stray word is refused, naming the cell."""
    pa = table_io.arrow()
    if pa.types.is_dictionary(column.type):
        column = column.combine_chunks().dictionary_decode()
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        try:
            return table_io.numbers(column, name, path)
        except ValueError as error:
            raise DataError(str(error)) from None
    trimmed = pa.compute.utf8_trim_whitespace(column)
    trimmed = pa.compute.if_else(pa.compute.is_in(trimmed, value_set=pa.array(MISSING_TEXT)), None, trimmed)
    if text:
        return np.array(trimmed.to_pylist(), dtype=object)
    try:
        return table_io.numbers(trimmed, name, path)
    except ValueError as error:
        cells = trimmed.to_pylist()
        words = sum(cell is not None and not table_io.is_number(cell) for cell in cells)
        present = sum(cell is not None for cell in cells)
        if words < present:  # numbers and words: a stray word in a number column, or categories partly numbers
            raise DataError(f"{error} ({words} of its {present} cells are text, the rest numbers): for a number column, "
                            "fix or empty the text cells; for categories, make every value text (e.g. 'grade 1' "
                            "for 1)") from None
    decorated = [cell for cell in cells if cell is not None]
    if decorated and all(table_io.is_number(cell.strip(DECORATION).replace(",", "")) for cell in decorated):
        raise DataError(f"{path}: column {name!r} holds numbers written with separators or signs (e.g. "
                        f"{decorated[0]!r}); write them as plain numbers (1234.5) to use them as numbers: read as "
                        "text, each distinct value would be a category of its own")
    return np.array(cells, dtype=object)


def _check_names(path, header) -> None:
    try:
        table_io.check_names(path, header)
    except ValueError as error:
        raise DataError(str(error)) from None


def load_files(data, label: str = "label", task: str = "auto", validation=None, test=None) -> Dataset:
    """A user's labelled data for training: the ``data`` file's rows, then those of the ``validation`` and
    ``test`` files, whose columns must be its own; classes (of the data file), or float targets for
    ``task="regress"``."""
    first = read_table(data, label, need_labels=True)
    text = [name for name, values in zip(first.names, first.columns) if values.dtype == object]
    files = [(os.fspath(data), first)] + [(os.fspath(path), read_table(path, label, need_labels=True, text=text))
                                          for path in (validation, test) if path]
    first_path = files[0][0]
    for index, (path, table) in enumerate(files[1:], 1):
        if table.features is None or first.features is None:
            if len(table.columns) != len(first.columns):
                raise DataError(f"{path}: {len(table.columns)} feature columns, but --data {first_path} has "
                                f"{len(first.columns)}; the files must have the same columns")
        else:
            missing = [name for name in first.features if name not in table.features]
            unexpected = [name for name in table.features if name not in first.features]
            if missing or unexpected:
                raise DataError(f"{path}: its columns are not those of --data {first_path}: "
                                + "; ".join(([f"missing {', '.join(map(repr, missing))}"] if missing else [])
                                            + ([f"unexpected {', '.join(map(repr, unexpected))}"] if unexpected else []))
                                + f" (label column {label!r})")
            files[index] = (path, table.select(first.features))
    name = os.path.basename(first_path)
    if len(files) == 1:
        raw = first.labels
    else:
        texts = [_label_text(table.labels, path) for path, table in files]
        for (path, _), text in zip(files, texts):
            _check_present(text, path, label)
        raw = np.concatenate(texts)
    if task == "regress":
        return Dataset(None, regression_targets(raw, first_path, label), None, name, first.features, files)
    y, classes = encode_labels(raw, first_path, label, task)
    own = y[:first.rows]
    at = first.rows
    for path, table in files[1:]:
        foreign = np.setdiff1d(y[at:at + table.rows], own)
        if len(foreign):
            raise DataError(f"{path}: label(s) {', '.join(map(repr, classes[foreign][:5].tolist()))} are no class of "
                            f"--data {first_path} (its classes: {', '.join(classes[np.unique(own)][:10].tolist())})")
        at += table.rows
    return Dataset(None, y, classes, name, first.features, files)


def stratified_split(y, test_fraction: float, seed: int):
    """Train and test indices with each class split in the same proportion."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for cls in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == cls))
        cut = int(round(len(members) * test_fraction))
        if len(members) > 1:
            cut = min(max(cut, 1), len(members) - 1)
        test.append(members[:cut])
        train.append(members[cut:])
    return rng.permutation(np.concatenate(train)), np.sort(np.concatenate(test))


def random_split(rows: int, test_fraction: float, seed: int):
    """Train and test indices for a regression: a shuffled cut."""
    order = np.random.default_rng(seed).permutation(rows)
    cut = min(max(int(round(rows * test_fraction)), 1), rows - 1) if rows > 1 else 0
    return order[cut:], np.sort(order[:cut])


SPLIT_PARTS = ("train", "validation", "test")


def split_digests(X, y, parts) -> np.ndarray:
    """A SHA-256 of each part's rows (their indices, features and labels), in ``SPLIT_PARTS`` order: what
    ``--resume`` compares, since a changed validation or test row leaves the scaler as it was."""
    digests = []
    for rows in parts:
        digest = hashlib.sha256(np.ascontiguousarray(rows, dtype=np.int64).tobytes())
        digest.update(np.ascontiguousarray(X[rows], dtype=np.float64).tobytes())
        labels = np.asarray(y[rows])
        digest.update(str(labels.dtype).encode() + np.ascontiguousarray(labels).tobytes())
        digests.append(digest.hexdigest())
    return np.array(digests, dtype=str)


@dataclass
class Standardizer:
    """Per-feature (x − mean) / std, fitted on the training part only.

    Moments are taken of each column divided by its largest magnitude, so a column of values
    near 1e200 gets its true std instead of an overflowed one (which would turn it into zeros).
    A constant column keeps std 1.
    """

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, X):
        X = np.asarray(X, dtype=np.float64)
        magnitude = np.abs(X).max(axis=0)
        magnitude = np.where(magnitude > 0, magnitude, 1.0)
        scaled = X / magnitude
        std = scaled.std(axis=0) * magnitude
        return cls(scaled.mean(axis=0) * magnitude, np.where(std > 0, std, 1.0))

    def __call__(self, X):
        return (X - self.mean) / self.std
