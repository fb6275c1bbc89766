"""Contiguous rows of one array, read into buffers of the caller's: from a ``.npy`` file or a member
of an uncompressed ``.npz`` (with ``os.pread``, so the process never maps, and never holds, the file's
pages), from a memory-mapped array (its file, likewise), or from an array in memory."""

from __future__ import annotations

import mmap
import os
import struct
import zipfile

import numpy as np

#: Rows closer than this in a file are read together (a page is read whole anyway).
PAGE_BYTES = 4096


class RowSource:
    """Rows ``[start, stop)`` of a C-ordered array: ``read(start, stop)`` returns them as a new array."""

    def __init__(self, array=None, path=None, offset=0, shape=None, dtype=None, name="X"):
        self.name, self.array, self.path, self.offset = name, array, path, offset
        self.shape = tuple(shape if array is None else array.shape)
        self.dtype = np.dtype(dtype if array is None else array.dtype)
        if len(self.shape) == 0:
            raise ValueError(f"{name} must have one row per sample, got a 0-d array")
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        self._fd = None

    @property
    def rows(self) -> int:
        return self.shape[0]

    def read(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """Rows ``[start, stop)`` in ``out`` (C-contiguous, of this dtype) or a new array."""
        if out is None:
            out = np.empty((stop - start, *self.shape[1:]), self.dtype)
        if self.path is None:
            np.copyto(out, self.array[start:stop])
        else:
            self._read_into(out, start)
        return out

    def gather(self, rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """The rows at sorted, distinct indices ``rows``, and no others, in ``out`` or a new array: a
        file is read in runs of nearby rows (one read covers rows less than a 4 KB page apart, which
        the kernel would read whole anyway), each run into a scratch block from which its rows are taken."""
        if out is None:
            out = np.empty((len(rows), *self.shape[1:]), self.dtype)
        if self.path is None:
            np.take(self.array, rows, axis=0, out=out)
            return out
        if not len(rows):
            return out
        near = max(1, PAGE_BYTES // max(1, self.row_bytes))
        splits = np.flatnonzero(np.diff(rows) > near) + 1
        for first, last in zip([0, *splits], [*splits, len(rows)]):
            run = rows[first:last]
            if run[-1] - run[0] + 1 == len(run):  # consecutive rows: straight into place
                self._read_into(out[first:last], int(run[0]))
            else:
                block = np.empty((int(run[-1] - run[0]) + 1, *self.shape[1:]), self.dtype)
                self._read_into(block, int(run[0]))
                np.take(block, run - run[0], axis=0, out=out[first:last], mode="clip")
        return out

    def _read_into(self, out: np.ndarray, start: int) -> None:
        """Fill ``out`` (C-contiguous) with the file's rows from ``start`` on."""
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        stop = start + len(out)
        view, position = memoryview(out.reshape(-1).view(np.uint8)), self.offset + start * self.row_bytes
        while len(view):  # pread may return less than asked
            count = os.preadv(self._fd, [view], position)
            if count <= 0:
                raise OSError(f"{self.path}: the file ended before row {stop} of {self.name} (truncated?)")
            view, position = view[count:], position + count

    def rows_between(self, start: int, stop: int) -> RowSource:
        """Rows ``[start, stop)`` as a source of their own (nothing is read or copied)."""
        if self.path is None:
            return RowSource(array=self.array[start:stop], name=self.name)
        return RowSource(path=self.path, offset=self.offset + start * self.row_bytes,
                         shape=(stop - start, *self.shape[1:]), dtype=self.dtype, name=self.name)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self):
        self.close()


def _npy_header(file, where: str):
    """(shape, dtype, data offset) of the .npy whose header starts at the file's position."""
    try:
        version = np.lib.format.read_magic(file)
        shape, fortran, dtype = (np.lib.format.read_array_header_1_0(file) if version == (1, 0)
                                 else np.lib.format.read_array_header_2_0(file))
    except ValueError as error:
        raise ValueError(f"{where} is not a .npy array: {error}") from None
    if fortran and len(shape) > 1:
        raise ValueError(f"{where} is stored in Fortran order; rows are not contiguous there: save "
                         "np.ascontiguousarray(array) to stream it")
    if dtype.hasobject:
        raise ValueError(f"{where} holds Python objects, not numbers")
    return shape, dtype, file.tell()


def from_npy(path, name: str) -> RowSource:
    with open(path, "rb") as file:
        shape, dtype, offset = _npy_header(file, f"{name} ({os.fspath(path)})")
    return RowSource(path=os.fspath(path), offset=offset, shape=shape, dtype=dtype, name=name)


def from_npz(path, member: str, name: str) -> RowSource:
    """A member of an .npz written by np.savez (stored, not compressed): its rows read in place."""
    path = os.fspath(path)
    with zipfile.ZipFile(path) as archive:
        names = [entry.removesuffix(".npy") for entry in archive.namelist()]
        if member not in names:
            raise ValueError(f"{path} holds no array {member!r} (it holds {sorted(names)})")
        info = archive.getinfo(archive.namelist()[names.index(member)])
    if info.compress_type != zipfile.ZIP_STORED:
        raise ValueError(f"{path}: array {member!r} is compressed (np.savez_compressed), so its rows cannot be "
                         "read in place; save it with np.savez, or load it into memory")
    with open(path, "rb") as file:
        file.seek(info.header_offset)
        local = file.read(30)
        name_length, extra_length = struct.unpack("<HH", local[26:30])
        file.seek(info.header_offset + 30 + name_length + extra_length)
        shape, dtype, offset = _npy_header(file, f"{name} ({path}:{member})")
    return RowSource(path=path, offset=offset, shape=shape, dtype=dtype, name=name)


def from_array(array, name: str) -> RowSource:
    """A memory-mapped array is read from its file (so its pages are never held); others in place."""
    root = array
    while isinstance(root, np.memmap) and not isinstance(root.base, mmap.mmap) and isinstance(root.base, np.ndarray):
        root = root.base
    if isinstance(array, np.memmap) and isinstance(root.base, mmap.mmap) and array.flags.c_contiguous \
            and root.filename is not None:
        offset = root.offset + (array.ctypes.data - root.ctypes.data)  # a slice's own start in the file
        return RowSource(path=root.filename, offset=offset, shape=array.shape, dtype=array.dtype, name=name)
    return RowSource(array=np.asarray(array) if not hasattr(array, "shape") else array, name=name)
