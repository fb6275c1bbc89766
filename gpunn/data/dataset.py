"""A data set that stays on disk: inputs and targets read a contiguous block of rows at a time."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from gpunn.data.rows import RowSource, from_array, from_npy, from_npz


def _source(value, name: str) -> RowSource:
    if isinstance(value, (str, os.PathLike)):
        path = os.fspath(value)
        if not path.endswith(".npy"):
            raise ValueError(f"Dataset: {name} as a file must be a .npy (use Dataset.from_npz for an .npz), got {path!r}")
        return from_npy(path, name)
    if isinstance(value, (bytes, bool)) or not hasattr(value, "__len__"):
        raise TypeError(f"Dataset: {name} must be a .npy path, a memory-mapped array (np.load(path, "
                        f"mmap_mode='r')) or an array, got {type(value).__name__} {value!r:.40}")
    return from_array(value if hasattr(value, "shape") else np.asarray(value), name)


@dataclass
class Layout:
    """The shape and dtype of the rows a Dataset's ``x`` or ``t`` hands out, where no single array holds
    them (a table's columns, a view): what BatchStream sizes its buffers by."""

    shape: tuple
    dtype: np.dtype

    @property
    def rows(self) -> int:
        return self.shape[0]

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize

    def close(self) -> None:
        """Nothing is held."""


class Dataset:
    """Inputs ``X`` and targets ``T`` read in contiguous blocks of rows, never whole: each a ``.npy``
    path, a memory-mapped array (``np.load(path, mmap_mode="r")``, read from its file) or an array in
    memory (small targets, say). ``Dataset.from_npz(path)`` reads arrays ``X`` and ``y`` of an
    ``.npz`` saved with ``np.savez``. ``fit``, ``evaluate`` and ``predict`` stream one (``T`` may be
    None for ``predict``).
    """

    def __init__(self, X, T=None):
        self.x = _source(X, "X")
        self.t = None if T is None else _source(T, "T")
        if len(self.x.shape) != 2:
            raise ValueError(f"Dataset: X must be 2-D (rows, features), got shape {self.x.shape}")
        if self.t is not None and self.t.rows != self.x.rows:
            raise ValueError(f"Dataset: X has {self.x.rows} rows but T has {self.t.rows}")

    @classmethod
    def from_npz(cls, path, x: str = "X", t: str | None = "y") -> Dataset:
        dataset = cls.__new__(cls)
        dataset.x = from_npz(path, x, "X")
        dataset.t = None if t is None else from_npz(path, t, "T")
        if len(dataset.x.shape) != 2:
            raise ValueError(f"Dataset: X must be 2-D (rows, features), got shape {dataset.x.shape}")
        if dataset.t is not None and dataset.t.rows != dataset.x.rows:
            raise ValueError(f"Dataset: X has {dataset.x.rows} rows but T has {dataset.t.rows}")
        return dataset

    @property
    def rows(self) -> int:
        return self.x.rows

    @property
    def features(self) -> int:
        return self.x.shape[1]

    def read(self, start: int, stop: int, out=(None, None)):
        """Rows ``[start, stop)``: (X block, T block or None), in ``out``'s arrays where given (a
        reused chunk buffer), else new host arrays."""
        return self.x.read(start, stop, out[0]), None if self.t is None else self.t.read(start, stop, out[1])

    def gather(self, rows, out=(None, None)):
        """The rows at sorted, distinct indices ``rows`` (a rank's shard of a chunk): (X, T or None), read
        without the rows between them (``RowSource.gather``), in ``out``'s arrays where given."""
        return self.x.gather(rows, out[0]), None if self.t is None else self.t.gather(rows, out[1])

    def rows_between(self, start: int, stop: int) -> Dataset:
        """Rows ``[start, stop)`` as a Dataset of their own, still on disk (``validation_split``'s parts)."""
        part = Dataset.__new__(Dataset)
        part.x = self.x.rows_between(start, stop)
        part.t = None if self.t is None else self.t.rows_between(start, stop)
        return part

    def close(self) -> None:
        self.x.close()
        if self.t is not None:
            self.t.close()

    def __repr__(self) -> str:
        return f"Dataset(rows={self.rows}, features={self.features}, X={self.x.path or 'in memory'})"


def is_streamed(X) -> bool:
    """Whether fit/evaluate/predict stream ``X`` rather than move it to the device whole: a Dataset or a
    memory-mapped array."""
    return isinstance(X, (Dataset, np.memmap))


def as_dataset(X, T, owner: str) -> Dataset:
    if isinstance(X, Dataset):
        if T is not None:
            raise ValueError(f"{owner}: a Dataset holds its targets; pass T=None (or build Dataset(X, T))")
        return X
    try:
        return Dataset(X, T)
    except (TypeError, ValueError) as error:
        raise type(error)(f"{owner}: {str(error).removeprefix('Dataset: ')}") from None
