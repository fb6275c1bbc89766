"""``gpunn train --stream``: a data file larger than memory, never loaded whole.

The parts are contiguous, not stratified: the test part is the last ``--test-fraction`` of the rows and
the validation part the ``--validation-fraction`` of the rest before it (``floor`` cuts, as Keras's
``validation_split`` takes the last rows), or the ``--validation-data``/``--test-data`` files. A file
sorted by label would put whole classes in one part, so the run prints each part's class counts.

One pass over every part, a chunk of rows at a time, before training: the training rows' mean and std
(float64, Chan's merge of chunk moments, each chunk divided by the largest magnitude seen so far as
``Standardizer.fit`` divides by the column's), the classes (a whole-number label column), the rows
of each class in each part, the finiteness of every input, and a SHA-256 of each part's rows (what
``--resume`` compares: exact, and it never holds the file). Training then reads the rows through a
``StandardizedDataset``. Number columns only: text columns are refused (the in-memory path's one-hot
encoding takes its categories from the whole column), and missing cells unless ``--impute mean``,
whose fills are the pass's means of each column's training cells (a median needs them sorted).
"""

from __future__ import annotations

import hashlib
import math
import os

import numpy as np

import gpunn as gn
from gpunn.cli.data import MAX_AUTO_CLASSES, SPLIT_PARTS, DataError, Standardizer, _label_text
from gpunn.cli.encoding import Column, Encoding
from gpunn.data import Dataset, TableDataset
from gpunn.data.rows import from_npy
from gpunn.data.dataset import Layout
from gpunn.data.scaled import StandardizedDataset
from gpunn.train.weights import balanced_from_counts

#: Bytes of inputs the statistics pass reads at a time (its float64 temporaries are a few times this).
SCAN_BYTES = 8 * 2**20
STREAM_FIX = ("--stream takes a number in every cell: encode text columns and labels as numbers and fill missing "
              "cells in the file beforehand, or drop --stream (gpunn train then loads the file, one-hot encodes text "
              "columns, reads text labels, and --impute fills missing cells)")


class LastColumnTarget(Dataset):
    """A 2-D ``.npy`` whose last column is the target: whole rows read with ``os.pread`` (``gpunn.data.rows``),
    then split into features and target."""

    def __init__(self, path):
        self.rows_source = from_npy(path, "X")
        shape = self.rows_source.shape
        if len(shape) != 2 or shape[1] < 2 or self.rows_source.dtype.kind not in "biuf":
            raise ValueError(f"an .npy must be a 2-D array of numbers (rows, features + the target as the last "
                             f"column), got shape {shape} of {self.rows_source.dtype}")
        self.x = Layout((shape[0], shape[1] - 1), self.rows_source.dtype)
        self.t = Layout((shape[0],), self.rows_source.dtype)
        self.first = 0

    def read(self, start: int, stop: int, out=(None, None)):
        block = self.rows_source.read(self.first + start, self.first + stop)
        return block[:, :-1], block[:, -1].copy()

    def gather(self, rows, out=(None, None)):
        block = self.rows_source.gather(self.first + np.asarray(rows, dtype=np.int64))
        return block[:, :-1], block[:, -1].copy()

    def rows_between(self, start: int, stop: int) -> LastColumnTarget:
        part = LastColumnTarget.__new__(LastColumnTarget)
        part.rows_source, part.first = self.rows_source, self.first + start
        part.x = Layout((stop - start, self.x.shape[1]), self.x.dtype)
        part.t = Layout((stop - start,), self.t.dtype)
        return part

    def close(self) -> None:
        self.rows_source.close()


def open_rows(path, label: str, missing: bool = False) -> tuple[Dataset, list[str] | None]:
    """(the file's rows as a Dataset with targets, its feature names or None), nothing read but headers;
    ``missing``: a table's missing feature cells read as NaN (``--impute mean``)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"{path}: {'a folder, not a data file' if os.path.isdir(path) else 'no such file'}")
    kind = os.path.splitext(path)[1].lower()
    try:
        if kind == ".npy":
            return LastColumnTarget(path), None
        if kind == ".npz":
            return Dataset.from_npz(path), None
        if kind in (".csv", ".parquet"):
            dataset = TableDataset(path, target=label, missing=missing)
            return dataset, dataset.x.names
    except ImportError as error:
        raise DataError(f"{path}: {error}") from None
    except (ValueError, OSError) as error:  # a table's text or missing cells: STREAM_FIX; a file's layout: its own fix
        fix = STREAM_FIX if kind in (".csv", ".parquet") else "or drop --stream to load it whole"
        raise DataError(f"{path}: {error}".replace(f"{path}: {path}: ", f"{path}: ") + f" ({fix})") from None
    raise DataError(f"{path}: unknown file type for --stream; use .npy (the target as the last column), .npz "
                    "(arrays X and y, saved with np.savez), .parquet or .csv")


class Moments:
    """Per-column count, mean and sum of squared deviations of float64 rows added a block at a time
    (Chan, Golub and LeVeque's pairwise merge), of the values divided by the largest magnitude seen:
    ``standardizer()`` equals ``Standardizer.fit`` of all the rows to rounding. NaN cells are left out
    of a column's moments but counted as rows: the moments of the column filled with its mean
    (``--impute mean``), whose cells add nothing to the squared deviations."""

    def __init__(self, columns: int):
        self.rows, self.count, self.scale = 0, np.zeros(columns), np.ones(columns)
        self.mean, self.m2 = np.zeros(columns), np.zeros(columns)

    def add(self, block: np.ndarray) -> None:
        if not len(block):
            return
        block = np.asarray(block, dtype=np.float64)
        known = ~np.isnan(block)
        magnitude = np.where(known, np.abs(block), 0.0).max(axis=0)
        scale = np.maximum(self.scale, np.where(magnitude > 0, magnitude, 1.0))
        shrink = self.scale / scale  # earlier moments in the new, larger unit
        self.mean *= shrink
        self.m2 *= shrink * shrink
        self.scale = scale
        scaled = np.where(known, block / scale, 0.0)
        rows = known.sum(axis=0)
        mean = scaled.sum(axis=0) / np.maximum(rows, 1)
        m2 = (np.where(known, scaled - mean, 0.0) ** 2).sum(axis=0)
        total = self.count + rows
        delta = mean - self.mean
        self.mean += delta * (rows / np.maximum(total, 1))
        self.m2 += m2 + delta * delta * (self.count * rows / np.maximum(total, 1))
        self.count, self.rows = total, self.rows + len(block)

    def standardizer(self) -> Standardizer:
        std = np.sqrt(self.m2 / self.rows) * self.scale
        return Standardizer(self.mean * self.scale, np.where(std > 0, std, 1.0))


def part_bounds(rows: int, test_fraction: float, validation_fraction: float, has_validation: bool,
                has_test: bool) -> list[tuple[int, int]]:
    """The contiguous [start, stop) of train, validation and test in the ``--data`` file: the test part
    its last rows (Keras's ``floor(rows · (1 − fraction))`` cut), the validation part the last rows before
    it; an empty range where a separate file is that part."""
    test_at = rows if has_test else math.floor(rows * (1 - test_fraction))
    validation_at = test_at if has_validation or not validation_fraction else math.floor(
        test_at * (1 - validation_fraction))
    return [(0, validation_at), (validation_at, test_at), (test_at, rows)]


class StreamedSplit:
    """A ``--stream`` run's data: the raw parts on disk, the training rows' scalers, the classes, each
    part's class counts and digest; ``part(name, loss)`` is (a StandardizedDataset, None) for fit."""

    def __init__(self, args):
        if args.impute == "median":
            raise DataError("--impute median needs each column's training cells sorted, which one pass over a file "
                            "larger than memory cannot do; use --impute mean, fill the file beforehand, or drop --stream")
        self.regress, self.impute = args.task == "regress", args.impute == "mean"
        source, self.feature_names = open_rows(args.data, args.label, self.impute)
        self.name = os.path.basename(args.data)
        self.bounds = part_bounds(source.rows, args.test_fraction, args.validation_fraction,
                                  bool(args.validation_data), bool(args.test_data))
        self.sources = {name: (args.data, source.rows_between(*bounds))
                        for name, bounds in zip(SPLIT_PARTS, self.bounds)}
        for name, path in (("validation", args.validation_data), ("test", args.test_data)):
            if path:
                other, names = open_rows(path, args.label, self.impute)
                if other.features != source.features or (names or None) != (self.feature_names or None):
                    raise DataError(f"{path}: its columns ({names or other.features}) are not those of --data "
                                    f"{args.data} ({self.feature_names or source.features}); with --stream the files "
                                    "must have the same columns in the same order")
                self.sources[name] = (path, other)
        if self.rows("train") == 0 or self.rows("test") == 0:
            raise DataError(f"{self.name}: too few rows for a train/test split")
        self.width = source.features
        self._scan(args)

    def rows(self, name: str) -> int:
        return self.sources[name][1].rows

    def _scan(self, args) -> None:
        """The one pass over every part (see the module's docstring)."""
        moments, targets = Moments(self.width), Moments(1)
        self.counts, self.part_digests, self.target_spread = {}, [], None
        for name in SPLIT_PARTS:
            path, dataset = self.sources[name]
            digest, counts = hashlib.sha256(), {}
            part_targets = Moments(1)
            chunk = max(1, SCAN_BYTES // max(1, dataset.x.row_bytes))
            first = self.bounds[SPLIT_PARTS.index(name)][0] if path == args.data else 0
            for start in range(0, dataset.rows, chunk):
                stop = min(start + chunk, dataset.rows)
                try:
                    x, t = dataset.read(start, stop)
                except (ValueError, OSError) as error:
                    raise DataError(f"{path}: {error}".replace(f"{path}: {path}: ", f"{path}: ") + f" ({STREAM_FIX})") from None
                self._check(x, t, path, first + start, args.label, self.impute)
                for piece in (np.ascontiguousarray(x), str(t.dtype).encode(), np.ascontiguousarray(t)):
                    digest.update(piece)  # read in place: no bytes copy of the chunk
                if name == "train":
                    moments.add(x)
                if self.regress:
                    (targets if name == "train" else part_targets).add(t[:, None])
                else:
                    values, seen = np.unique(t, return_counts=True)
                    for value, count in zip(values.tolist(), seen.tolist()):
                        counts[value] = counts.get(value, 0) + count
            digest.update(f"{name} {first} {dataset.rows}".encode())
            self.part_digests.append(digest.hexdigest())
            self.counts[name] = counts
            if name == "test" and self.regress:
                self.target_spread = part_targets
        self.scaler, self.encoding = moments.standardizer(), None
        if self.impute:  # the mean of each column's training cells, as Encoding.fit takes it
            names = self.feature_names or [f"column {index + 1}" for index in range(self.width)]
            empty = [name for name, count in zip(names, moments.count) if count == 0]
            if empty:
                raise DataError(f"{args.data}: column {empty[0]!r} has no value in the training rows to --impute from")
            self.encoding = Encoding([Column(name, fill=float(mean)) for name, mean in zip(names, self.scaler.mean)],
                                     "mean")
        self.target = targets.standardizer() if self.regress else None
        if self.regress:
            if not targets.m2[0] > 0:
                raise DataError(f"{args.data}: every training target is the same; there is nothing to learn")
            self.classes, self.values = None, None
        else:
            self._classes(args)

    @staticmethod
    def _check(x, t, path, first: int, label, impute: bool) -> None:
        finite = np.isfinite(x) | (np.isnan(x) if impute else False)
        if not finite.all():
            row, column = (int(i) for i in np.argwhere(~finite)[0])
            raise DataError(f"{path}: feature column {column + 1} holds {x[row, column]} in data row {first + row + 1}; "
                            f"{STREAM_FIX}")
        if not np.all(np.isfinite(t)):
            row = int(np.flatnonzero(~np.isfinite(t))[0])
            raise DataError(f"{path}: the label {label!r} is missing or not finite in data row {first + row + 1}; "
                            "fill or drop such rows")

    def _classes(self, args) -> None:
        """The classes of the ``--data`` file's rows (all its parts, as the in-memory path takes them)."""
        own = [name for name in SPLIT_PARTS if self.sources[name][0] == args.data]
        values = np.array(sorted({value for name in own for value in self.counts[name]}))
        if args.task == "auto":
            rows = sum(sum(self.counts[name].values()) for name in own)
            if not np.all(values == np.round(values)) or (len(values) > MAX_AUTO_CLASSES and len(values) > rows / 2):
                raise DataError(f"{args.data}: the label column {args.label!r} holds {len(values)} distinct numbers in "
                                f"{rows} rows, which looks like a quantity, not classes: use --task regress, or "
                                "--task classify if they really are class codes")
        if len(values) < 2:
            raise DataError(f"{args.data}: labels hold {len(values)} class; at least 2 are needed to train")
        for name in SPLIT_PARTS:
            path = self.sources[name][0]
            foreign = sorted(set(self.counts[name]) - set(values.tolist()))
            if foreign:
                raise DataError(f"{path}: label(s) {foreign[:5]} are no class of --data {args.data}")
        self.values = values
        self.classes = _label_text(values, args.data)

    def describe(self) -> list[str]:
        """Where each part lies, and its rows of each class (a file sorted by label shows here)."""
        data = self.sources["train"][0]
        lines = ["--stream: parts by position, not stratified (shuffle a file sorted by label first): "
                 + ", ".join(f"{name} rows {start + 1}..{stop}" if self.sources[name][0] == data else
                             f"{name}: {self.sources[name][0]}" for name, (start, stop) in zip(SPLIT_PARTS, self.bounds)
                             if self.rows(name))]
        if self.classes is not None:
            for name in SPLIT_PARTS:
                if self.rows(name):
                    counts = self.counts[name]
                    lines.append(f"  {name} rows per class: " + ", ".join(
                        f"{label} {counts.get(value, 0)}" for label, value in zip(self.classes, self.values.tolist())))
        return lines

    def warnings(self) -> list[str]:
        """A part with rows but without some class: what a file sorted by label gives."""
        if self.classes is None:
            return []
        found = []
        for name in SPLIT_PARTS:
            absent = [label for label, value in zip(self.classes, self.values.tolist())
                      if self.rows(name) and not self.counts[name].get(value)]
            if absent:
                found.append(f"--stream: the {name} part (rows by position) has no rows of class(es) "
                             f"{', '.join(absent[:10])}; is the file sorted by label? shuffle it first")
        return found

    def _targets(self, loss_name: str):
        """(function of a block of raw targets, trailing shape, dtype): what the model trains on."""
        if self.regress:
            return (lambda t: self.target(np.asarray(t, dtype=np.float64)[:, None])), (1,), np.float64
        if loss_name == "mse":
            return (lambda t: np.eye(len(self.values))[np.searchsorted(self.values, t)]), (len(self.values),), np.float64
        return (lambda t: np.searchsorted(self.values, t)), (), np.int64

    def part(self, name: str, loss_name: str):
        """(the part's rows standardised as they are read, None) for fit and evaluate, or None if empty."""
        dataset = self.sources[name][1]
        if dataset.rows == 0:
            return None
        targets, shape, dtype = self._targets(loss_name)
        return StandardizedDataset(dataset, self.scaler.mean, self.scaler.std, targets, shape, dtype,
                                   self.scaler.mean if self.impute else None), None

    def test_scores(self, model):
        """(RMSE in the target's units, R²) of a regression, else the accuracy, on the test part: evaluated
        as it streams, on the standardised scale (``report.regression_scores``'s numbers)."""
        if self.regress:
            error = model.evaluate(*self.part("test", "mse"), gn.MSELoss(), metrics=("mse",))["mse"]
            test = self.target_spread
            spread = (test.m2[0] * test.scale[0] ** 2 / test.rows if test.rows > 1 else 0.0) / self.target.std[0] ** 2
            return math.sqrt(error) * float(self.target.std[0]), (1 - error / spread if spread > 0 else float("nan"))
        return model.evaluate(*self.part("test", "softmax-ce"), gn.SoftmaxCrossEntropyLoss(),
                              metrics=("accuracy",))["accuracy"]

    def class_weight(self) -> dict:
        index = {value: position for position, value in enumerate(self.values.tolist())}
        return balanced_from_counts({index[value]: count for value, count in self.counts["train"].items()})

    def digests(self) -> np.ndarray:
        return np.array(self.part_digests, dtype=str)

    def split_rows(self) -> np.ndarray:
        return np.array(self.bounds, dtype=np.int64)
