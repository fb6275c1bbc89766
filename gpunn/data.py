"""Datasets for the command line: scikit-learn's bundled digits, and a user's .npz or .csv.

Everything here works on the host with NumPy; the model moves batches to its device.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass

import numpy as np


class DataError(ValueError):
    """A user's data file cannot be used; the message says which file and why."""


@dataclass
class Dataset:
    X: np.ndarray  # (samples, features), float64
    y: np.ndarray  # (samples,), int class indices
    classes: np.ndarray  # class label of each index, as strings
    name: str


def load_digits() -> Dataset:
    """The 1797 8×8 handwritten digits that ship inside scikit-learn (no download)."""
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError as error:
        raise DataError("the digits dataset needs scikit-learn: pip install 'gpunn[data]' "
                        "(or pass --data with your own .npz or .csv)") from error
    bunch = sklearn_digits()
    return Dataset(bunch.data.astype(np.float64), bunch.target.astype(np.int64),
                   np.array([str(c) for c in bunch.target_names]), "digits")


def _encode_labels(raw, path) -> tuple[np.ndarray, np.ndarray]:
    raw = np.asarray(raw)
    if raw.ndim != 1:
        raise DataError(f"{path}: labels must be one column, got shape {raw.shape}")
    if raw.dtype.kind == "f" and not np.all(np.isfinite(raw)):
        raise DataError(f"{path}: labels contain NaN or Inf")
    classes, index = np.unique(raw.astype(str) if raw.dtype.kind in "USO" else raw, return_inverse=True)
    if len(classes) < 2:
        raise DataError(f"{path}: labels hold {len(classes)} class; at least 2 are needed to train")
    return index.astype(np.int64), np.array([str(c) for c in classes])


def read_features(path, label: str | None = "label", need_labels: bool = True):
    """(X, raw labels or None) from an .npz (arrays X and y) or a .csv with a header row."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file")
    if path.endswith(".npz"):
        try:
            with np.load(path, allow_pickle=False) as archive:
                if "X" not in archive.files:
                    raise DataError(f"{path}: an .npz needs an array named X (found {archive.files})")
                X = archive["X"]
                y = archive["y"] if "y" in archive.files else None
        except (ValueError, OSError, EOFError) as error:
            if isinstance(error, DataError):
                raise
            raise DataError(f"{path}: not a readable .npz file ({error})") from error
    elif path.endswith(".csv"):
        X, y = _read_csv(path, label)
    else:
        raise DataError(f"{path}: unknown file type; use .npz (arrays X, y) or .csv (a header row)")
    if need_labels and y is None:
        raise DataError(f"{path}: no labels (an array y in .npz, a column {label!r} in .csv)")
    try:
        X = np.asarray(X, dtype=np.float64)
    except ValueError as error:
        raise DataError(f"{path}: features are not all numbers ({error})") from error
    if X.ndim != 2 or X.shape[0] == 0:
        raise DataError(f"{path}: features must be a non-empty 2-D table, got shape {X.shape}")
    if not np.all(np.isfinite(X)):
        raise DataError(f"{path}: features contain NaN, Inf or empty cells")
    if y is not None and len(y) != len(X):
        raise DataError(f"{path}: {len(X)} rows of features but {len(y)} labels")
    return X, y


def _read_csv(path, label):
    try:
        with open(path, newline="") as file:
            rows = list(csv.reader(file))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"{path}: unreadable CSV ({error})") from error
    if len(rows) < 2:
        raise DataError(f"{path}: a CSV needs a header row and at least one data row")
    header, body = [name.strip() for name in rows[0]], rows[1:]
    widths = {len(row) for row in body}
    if widths != {len(header)}:
        raise DataError(f"{path}: rows have {sorted(widths)} cells but the header has {len(header)}")
    table = np.array(body, dtype=str)
    y = None
    if label is not None and label in header:
        column = header.index(label)
        y = np.char.strip(table[:, column])
        table = np.delete(table, column, axis=1)
        try:
            y = y.astype(np.float64)
            if np.all(y == np.round(y)):
                y = y.astype(np.int64)
        except ValueError:
            pass  # class names stay strings
    try:
        X = np.char.strip(table).astype(np.float64)
    except ValueError as error:
        raise DataError(f"{path}: feature cells must be numbers ({error}); is the label column "
                        f"named something other than {label!r}? (--label)") from error
    return X, y


def load_table(path, label: str = "label") -> Dataset:
    """A user's labelled data set for training."""
    X, raw = read_features(path, label, need_labels=True)
    y, classes = _encode_labels(raw, path)
    return Dataset(X, y, classes, os.path.basename(os.fspath(path)))


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


@dataclass
class Standardizer:
    """Per-feature (x − mean) / std, fitted on the training part only."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, X):
        std = X.std(axis=0)
        return cls(X.mean(axis=0), np.where(std > 0, std, 1.0))

    def __call__(self, X):
        return (X - self.mean) / self.std
