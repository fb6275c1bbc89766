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
    """Rows ``[start, stop)`` of a C-ordered array: ``read(start, stop)`` returns them as a new array.

    A file is identified by its (device, inode) when its layout is read: a file opened later at that
    path must be the same one, or the rows would be read with another file's layout."""

    def __init__(self, array=None, path=None, offset=0, shape=None, dtype=None, name="X", identity=None):
        self._fd = None  # first: __del__ runs also when a check below refuses the source
        self.name, self.array, self.path, self.offset = name, array, path, offset
        self.identity = identity if path is None or identity is not None else _identity(os.stat(path))
        self.shape = tuple(shape if array is None else array.shape)
        self.dtype = np.dtype(dtype if array is None else array.dtype)
        if len(self.shape) == 0:
            raise ValueError(f"{name} must have one row per sample, got a 0-d array")
        if self.dtype.kind == "c":  # as in memory (backends.base.refuse_complex): a cast would drop it with a warning
            raise TypeError(f"{name} holds complex values ({self.dtype}): the imaginary part would be lost; pass "
                            "x.real or abs(x) explicitly")
        if self.dtype.kind not in "biuf":
            raise TypeError(f"{name} holds {self.dtype} values, not numbers (booleans, integers or floats)")
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize

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
            fd = os.open(self.path, os.O_RDONLY)
            if _identity(os.fstat(fd)) != self.identity:
                os.close(fd)
                raise OSError(f"{self.path}: the file was replaced since {self.name}'s layout was read from it (another "
                              "file is at that path now); make a new Dataset (or np.load the array again) to read it")
            self._fd = fd
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
                         shape=(stop - start, *self.shape[1:]), dtype=self.dtype, name=self.name, identity=self.identity)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self):
        self.close()


def _identity(status) -> tuple[int, int]:
    return status.st_dev, status.st_ino


def _mapped_identity(address: int):
    """(device, inode) of the file mapped at ``address``, from /proc/self/maps (Linux; None elsewhere, and
    the file at the path is taken): a memory map keeps showing its own file after another replaced it
    at its path, so the rows must come from that one."""
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                span, _, _, device, inode = line.split(maxsplit=5)[:5]
                low, high = (int(end, 16) for end in span.split("-"))
                if low <= address < high:
                    major, minor = (int(part, 16) for part in device.split(":"))
                    return os.makedev(major, minor), int(inode)
    except (OSError, ValueError):
        pass
    return None


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
        identity = _identity(os.fstat(file.fileno()))
    return RowSource(path=os.fspath(path), offset=offset, shape=shape, dtype=dtype, name=name, identity=identity)


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
        identity = _identity(os.fstat(file.fileno()))
    return RowSource(path=path, offset=offset, shape=shape, dtype=dtype, name=name, identity=identity)


def from_array(array, name: str) -> RowSource:
    """A memory-mapped array is read from its file (so its pages are never held); others in place, and so
    are a copy-on-write map (mode "c"), whose edits live in memory only, and a map whose file another
    file has replaced at its path (the map still shows the old one)."""
    root = array
    while isinstance(root, np.memmap) and not isinstance(root.base, mmap.mmap) and isinstance(root.base, np.ndarray):
        root = root.base
    if isinstance(array, np.memmap) and isinstance(root.base, mmap.mmap) and array.flags.c_contiguous \
            and root.filename is not None and root.mode != "c":
        offset = root.offset + (array.ctypes.data - root.ctypes.data)  # a slice's own start in the file
        mapped = _mapped_identity(array.ctypes.data)
        try:
            current = _identity(os.stat(root.filename))
        except OSError:  # deleted since: the map alone still holds the rows
            current = None
        # Another file at the path: same device, another inode. (An overlay file system reports its own
        # device to stat and the real one in /proc/self/maps: there the path's file is taken, as before.)
        replaced = current is None or (mapped is not None and mapped[0] == current[0] and mapped != current)
        if not replaced:
            return RowSource(path=root.filename, offset=offset, shape=array.shape, dtype=array.dtype, name=name,
                             identity=current)
    return RowSource(array=np.asarray(array) if not hasattr(array, "shape") else array, name=name)
