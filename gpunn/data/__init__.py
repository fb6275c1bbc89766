"""Data larger than memory: a ``Dataset`` reads contiguous rows of ``.npy``/``.npz`` files (or of a
memory-mapped array) without holding them, a ``TableDataset`` the rows of a CSV or Parquet file (through
PyArrow), and ``BatchStream`` shuffles and prefetches their batches."""

from gpunn.data.dataset import Dataset, is_streamed
from gpunn.data.stream import BatchStream
from gpunn.data.table import TableDataset

__all__ = ["BatchStream", "Dataset", "TableDataset", "is_streamed"]
