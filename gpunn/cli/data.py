"""Datasets for the command line: scikit-learn's bundled digits, and a user's .npz or .csv.

Everything here works on the host with NumPy; the model moves batches to its device. Labels
are read as text (a code above 2^53 or with leading zeros stays itself); a numeric label
column that looks like a measured quantity is refused for classification, with the advice
to train a regression (``--task regress``) instead.
"""

from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import dataclass

import numpy as np

from gpunn.extras import install_command

TASKS = ("auto", "classify", "regress")
# A numeric label column with more distinct values than this, and more than half the rows
# distinct, is almost surely a quantity to regress rather than classes ("auto" refuses it).
MAX_AUTO_CLASSES = 20


class DataError(ValueError):
    """A user's data file cannot be used; the message says which file and why."""


@dataclass
class Table:
    """What a data file holds: features, the raw label column (if any), feature names (CSV)."""

    X: np.ndarray  # (samples, features), float64, finite
    labels: np.ndarray | None  # (samples,), text from a CSV, the array y from an .npz
    features: list[str] | None  # the CSV's feature column names; None for an .npz


@dataclass
class Dataset:
    X: np.ndarray  # (samples, features), float64
    y: np.ndarray  # (samples,): int class indices, or float64 targets for a regression
    classes: np.ndarray | None  # class label of each index, as strings; None for a regression
    name: str
    features: list[str] | None = None


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
    if raw.ndim != 1:
        raise DataError(f"{path}: labels must be one column, got shape {raw.shape}")
    if raw.dtype.kind == "f":
        if not np.all(np.isfinite(raw)):
            raise DataError(f"{path}: labels contain NaN or Inf")
        return np.array([repr(int(v)) if v == int(v) else repr(float(v)) for v in raw.tolist()], dtype=str)
    if raw.dtype.kind in "biu":
        return raw.astype(str)
    if raw.dtype.kind == "U":
        return np.char.strip(raw)
    raise DataError(f"{path}: labels have dtype {raw.dtype}; use numbers or strings")


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
    if numbers is not None and not np.all(np.isfinite(numbers)):
        raise DataError(f"{path}: labels contain NaN or Inf")
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
            bad = next(cell for cell in text.tolist() if _as_numbers(np.array([cell])) is None)
            raise DataError(f"{path}: --task regress needs numbers in the label column {label!r}, "
                            f"found {bad!r}")
    if not np.all(np.isfinite(numbers)):
        raise DataError(f"{path}: labels contain NaN or Inf")
    if np.ptp(numbers) == 0:
        raise DataError(f"{path}: every target is {numbers[0]:g}; there is nothing to learn")
    return numbers


# --- files --------------------------------------------------------------------------------
def read_features(path, label: str | None = "label", need_labels: bool = True) -> Table:
    """A Table from an .npz (arrays X and y) or a .csv with a header row."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        kind = ("a folder, not a data file" if os.path.isdir(path) else
                "not a regular file" if os.path.exists(path) else "no such file")
        raise DataError(f"{path}: {kind}")
    if path.lower().endswith(".npz"):
        X, y, features = *_read_npz(path), None
    elif path.lower().endswith(".csv"):
        X, y, features = _read_csv(path, label)
    else:
        raise DataError(f"{path}: unknown file type; use .npz (arrays X, y) or .csv (a header row)")
    if need_labels and y is None:
        raise DataError(f"{path}: no labels (an array y in .npz, a column {label!r} in .csv)")
    X = np.asarray(X)
    if X.dtype.kind == "c":
        raise DataError(f"{path}: features are complex numbers; pass their real parts or magnitudes")
    try:
        X = X.astype(np.float64)
    except (TypeError, ValueError) as error:
        raise DataError(f"{path}: features are not all numbers ({error})") from error
    if X.ndim != 2 or X.shape[0] == 0:
        raise DataError(f"{path}: features must be a non-empty 2-D table, got shape {X.shape}")
    if X.shape[1] == 0:
        raise DataError(f"{path}: no feature columns (only the label {label!r}); a model needs inputs")
    if not np.all(np.isfinite(X)):
        raise DataError(f"{path}: features contain NaN, Inf or empty cells")
    if y is not None and len(y) != len(X):
        raise DataError(f"{path}: {len(X)} rows of features but {len(y)} labels")
    return Table(X, y, features)


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
            return archive["X"], (archive["y"] if "y" in archive.files else None)
        except (ValueError, OSError, EOFError) as error:
            raise DataError(f"{path}: not a readable .npz file ({error})") from error


def _read_csv(path, label):
    try:  # utf-8-sig: a byte-order mark must not become part of the first column's name
        with open(path, newline="", encoding="utf-8-sig") as file:
            rows = [row for row in csv.reader(file) if row]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"{path}: unreadable CSV ({error})") from error
    if len(rows) < 2:
        raise DataError(f"{path}: a CSV needs a header row and at least one data row")
    header, body = [name.strip() for name in rows[0]], rows[1:]
    unnamed = [str(i + 1) for i, name in enumerate(header) if not name]
    if unnamed:
        raise DataError(f"{path}: header column(s) {', '.join(unnamed)} have no name")
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise DataError(f"{path}: the header names {', '.join(map(repr, repeated))} more than once; "
                        "column names must be unique")
    widths = {len(row) for row in body}
    if widths != {len(header)}:
        raise DataError(f"{path}: rows have {sorted(widths)} cells but the header has {len(header)}")
    table = np.char.strip(np.array(body, dtype=str))
    y = None
    if label is not None and label in header:
        column = header.index(label)
        y, table = table[:, column], np.delete(table, column, axis=1)
        header = header[:column] + header[column + 1:]
    try:
        X = table.astype(np.float64)
    except ValueError:
        row, column = next((r, c) for r, line in enumerate(table.tolist()) for c, cell in enumerate(line)
                           if _as_numbers(np.array([cell])) is None)
        raise DataError(f"{path}: feature column {header[column]!r} holds {str(table[row, column])!r} in data "
                        f"row {row + 1}, not a number; is the label column named something other than "
                        f"{label!r}? (--label)") from None
    return X, y, header


def load_table(path, label: str = "label", task: str = "auto") -> Dataset:
    """A user's labelled data set for training: classes, or float targets for ``task="regress"``."""
    table = read_features(path, label, need_labels=True)
    name = os.path.basename(os.fspath(path))
    if task == "regress":
        return Dataset(table.X, regression_targets(table.labels, path, label), None, name, table.features)
    y, classes = encode_labels(table.labels, path, label, task)
    return Dataset(table.X, y, classes, name, table.features)


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
