"""Data larger than memory: a ``Dataset`` reads contiguous rows of ``.npy``/``.npz`` files (or of a
memory-mapped array) without holding them, and ``BatchStream`` shuffles and prefetches its batches."""

from gpunn.data.dataset import Dataset, is_streamed
from gpunn.data.stream import BatchStream

__all__ = ["BatchStream", "Dataset", "is_streamed"]
