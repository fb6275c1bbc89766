"""What ``gpunn train`` stores beside the model, and the checks ``gpunn predict`` makes on it.

A checkpoint is a model file whose extras hold the task, the feature encoding (one-hot categories,
--impute's fills), the feature scaler, the feature and label column names, and the class names
(classification) or the target scaler (regression), and for a ``--stream`` run each part's rows of the
``--data`` file (``split_rows``).
Reading one back checks that every piece is there and fits the model, so ``predict`` never
pairs a model with the wrong classes or scaler.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import numpy as np

from gpunn.cli.data import DataError, Standardizer, Table
from gpunn.cli.encoding import Encoding
from gpunn.cli.options import UserError
from gpunn.io.model_file import ModelFileError


def checkpoint_path(source: str, command: str) -> str:
    """A run folder's best.npz, else its last.npz (with a note: no validation epoch was best), or the file."""
    if not os.path.isdir(source):
        return source
    best, last = os.path.join(source, "best.npz"), os.path.join(source, "last.npz")
    if os.path.isfile(best):
        return best
    if os.path.isfile(last):
        print(f"gpunn {command}: note: {source} has no best.npz (the run had no validation rows), so its last.npz "
              "is used", file=sys.stderr)
        return last
    raise UserError(f"gpunn {command}: {source} holds neither best.npz nor last.npz (is it a gpunn train --out "
                    "folder?)")


@dataclass
class Checkpoint:
    model: object
    task: str  # "classify" | "regress"
    scaler: Standardizer
    classes: np.ndarray | None = None  # classification: the name of each output
    target_scaler: Standardizer | None = None  # regression: outputs are standardised targets
    features: list[str] | None = None  # the training file's feature columns, in the model's order
    label: str | None = None  # the training file's label column
    data_digest: np.ndarray | None = None  # gpunn train: a digest of the train, validation and test rows
    encoding: Encoding | None = None  # the feature columns → the model's inputs; None: numbers, as they are
    split_rows: np.ndarray | None = None  # --stream: [start, stop) of train, validation and test in the --data file

    def extras(self) -> dict:
        extras = {"task": np.array(self.task), "mean": self.scaler.mean, "std": self.scaler.std}
        if self.encoding is not None and (self.encoding.categorical or self.encoding.impute):  # else: numbers as they are
            extras["encoding"] = self.encoding.to_extra()
        if self.classes is not None:
            extras["classes"] = np.asarray(self.classes, dtype=str)
        if self.target_scaler is not None:
            extras["target_mean"], extras["target_std"] = self.target_scaler.mean, self.target_scaler.std
        if self.features is not None:
            extras["features"] = np.array(self.features, dtype=str)
        if self.label is not None:
            extras["label"] = np.array(self.label)
        if self.data_digest is not None:
            extras["data_digest"] = np.asarray(self.data_digest, dtype=str)
        if self.split_rows is not None:
            extras["split_rows"] = np.asarray(self.split_rows, dtype=np.int64)
        return extras

    @classmethod
    def read(cls, path) -> "Checkpoint":
        """The checkpoint at ``path`` on the current backend; ModelFileError if a piece is missing
        or does not fit the model (scaler width, class count, output count)."""
        from gpunn.io.model_file import load

        try:
            model = load(path)
        except FileNotFoundError:
            raise DataError(f"{path}: no such checkpoint") from None
        extras = model.extras

        def fail(message):
            return ModelFileError(f"{path}: {message}")

        def text(name, ndim):
            value = extras.get(name)
            if value is None:
                return None
            if value.dtype.kind != "U" or value.ndim != ndim:
                raise fail(f"the checkpoint's {name!r} must be {'a string' if ndim == 0 else 'strings'}")
            return str(value) if ndim == 0 else [str(v) for v in value]

        if "mean" not in extras or "std" not in extras:
            raise fail("not a checkpoint written by 'gpunn train' (no feature scaler: extras 'mean' and "
                       "'std'); load it with gpunn.load in Python instead")
        task = text("task", 0) or "classify"  # version-1 checkpoints were all classifiers
        if task not in ("classify", "regress"):
            raise fail(f"unknown task {task!r} in the checkpoint")
        width = model.in_features
        scaler = Standardizer(extras["mean"], extras["std"])
        for name, value in (("mean", scaler.mean), ("std", scaler.std)):
            if value.dtype.kind not in "iuf" or value.shape != (width,):
                raise fail(f"the feature scaler's {name!r} has shape {value.shape}; the model takes {width} features")
        if not np.all(scaler.std > 0):
            raise fail("the feature scaler's 'std' holds zeros or negatives")
        checkpoint = cls(model, task, scaler, features=text("features", 1), label=text("label", 0))
        if "encoding" in extras:
            try:
                checkpoint.encoding = Encoding.from_extra(extras["encoding"])
            except ValueError as error:
                raise fail(f"the checkpoint's feature encoding is damaged ({error})") from None
            if checkpoint.encoding.width != width:
                raise fail(f"the checkpoint's feature encoding makes {checkpoint.encoding.width} inputs but the model "
                           f"takes {width}")
        columns = width if checkpoint.encoding is None else len(checkpoint.encoding.columns)
        if checkpoint.features is not None and (len(checkpoint.features) != columns
                                                or len(set(checkpoint.features)) != columns):
            raise fail(f"the checkpoint names {len(checkpoint.features)} features (unique: "
                       f"{len(set(checkpoint.features))}) but the model takes {columns}")
        outputs = model.out_features
        if task == "classify":
            classes = text("classes", 1)
            if classes is None:
                raise fail("not a checkpoint written by 'gpunn train' (no class names)")
            if len(classes) != outputs or len(set(classes)) != len(classes):
                raise fail(f"the checkpoint names {len(classes)} classes ({len(set(classes))} distinct) "
                           f"but the model has {outputs} outputs")
            checkpoint.classes = np.array(classes, dtype=str)
        else:
            if outputs != 1 or "target_mean" not in extras or "target_std" not in extras:
                raise fail("a regression checkpoint needs one output and its target scaler "
                           "('target_mean', 'target_std')")
            target = Standardizer(extras["target_mean"], extras["target_std"])
            if target.mean.shape != (1,) or target.std.shape != (1,) or not target.std[0] > 0:
                raise fail("the checkpoint's target scaler is damaged")
            checkpoint.target_scaler = target
        return checkpoint

    def inputs(self, table: Table, source) -> np.ndarray:
        """The table's features in the model's column order, encoded and standardised. Columns are
        matched by name when both sides have names (a missing or unexpected column is an error), else
        by position (an .npy one column wider than the features has its target last: it is dropped)."""
        encoding = self.encoding
        if encoding is None:
            encoding = Encoding.numeric(self.features or [f"column {i + 1}" for i in range(self.model.in_features)])
        columns = len(encoding.columns)
        if self.features is not None and table.features is not None:
            missing = [name for name in self.features if name not in table.features]
            unexpected = [name for name in table.features if name not in self.features]
            if missing or unexpected:
                parts = ([f"missing column(s) {', '.join(map(repr, missing))}"] if missing else []) + \
                        ([f"unexpected column(s) {', '.join(map(repr, unexpected))}"] if unexpected else [])
                raise DataError(f"{source}: {'; '.join(parts)}; the model was trained on "
                                f"{', '.join(map(repr, self.features))} (label column {self.label!r})")
            table = table.select(self.features)
        elif len(table.columns) != columns and not (str(source).endswith(".npy") and len(table.columns) == columns + 1):
            raise DataError(f"{source}: {len(table.columns)} features, but the checkpoint expects {columns}")
        X = encoding.encode(Table(table.columns[:columns], None, None), source)
        with np.errstate(over="ignore", invalid="ignore"):
            scaled = self.scaler(X)
            too_large = ~np.isfinite(scaled.astype(self.model.dtype))
        if too_large.any():
            row = int(np.flatnonzero(too_large.any(axis=1))[0])
            raise DataError(f"{source}: row {row + 1} holds values too far outside the training data for "
                            f"a {self.model.dtype} model")
        return scaled

    def predictions(self, X, source) -> tuple[list[str], list[list[str]]]:
        """(CSV header, CSV rows): class and probabilities, or the predicted value."""
        scores = self.model.predict(X).astype(np.float64)
        if self.task == "regress":
            with np.errstate(over="ignore", invalid="ignore"):
                scores = scores * self.target_scaler.std[0] + self.target_scaler.mean[0]
        broken = ~np.all(np.isfinite(scores), axis=1)
        if broken.any():
            raise DataError(f"{source}: the model's outputs are NaN or Inf for {int(broken.sum())} rows "
                            f"(first: row {int(np.flatnonzero(broken)[0]) + 1}); these inputs lie far "
                            "outside the training data")
        if self.task == "regress":
            return ["prediction"], [[f"{value:.8g}"] for value in scores[:, 0]]
        shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
        probabilities = shifted / shifted.sum(axis=1, keepdims=True)
        classes = [str(c) for c in self.classes]
        rows = [[classes[int(row.argmax())]] + [f"{p:.6f}" for p in row] for row in probabilities]
        return ["prediction"] + [f"p_{c}" for c in classes], rows
