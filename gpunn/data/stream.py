"""Batches of a Dataset, shuffled and prefetched: a shuffle that reads contiguous chunks.

An epoch's order depends on ``(seed, epoch)`` alone (exact resume): the chunks of ``chunk_rows`` rows
(whole batches) are visited in a random order and each chunk's rows are permuted, so every read is one
contiguous block. Data parallel (``shard=(rank, size)``), each global batch is split as the in-memory
path splits it (``shard_bounds``) and a rank reads only its rows of each chunk (``Dataset.gather``).
A background thread reads the next chunk and gathers its batches into a ring of reused host buffers
(pinned ones for the GPU: ``Backend.host_buffer``) while the current ones train; file reads and
NumPy's copies release the GIL.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from typing import NamedTuple

import numpy as np

from gpunn.distributed.world import shard_bounds

#: The bytes of inputs read at a time: a chunk is this big, rounded to whole batches.
CHUNK_BYTES = 64 * 2**20
_DONE = object()


class Batch(NamedTuple):
    """One rank's part of a global batch, in a ring buffer of the stream's: valid until ``release()``."""

    rows: np.ndarray  # the data set's row of each of its rows
    x: np.ndarray
    t: np.ndarray | None
    batch_rows: int  # the rows of the global batch (all ranks)
    offset: int  # where this rank's part starts in the global batch
    release: object  # hands the buffers back to the reading thread


class BatchStream:
    """``epoch(e)``: ``(rows, x, t)`` per batch, arrays of their own; ``batches(e)``: ``Batch`` views of
    reused buffers (fit, evaluate and predict), each handed back with ``release()``."""

    def __init__(self, dataset, batch_size: int, seed: int = 0, shuffle: bool = True, chunk_rows: int | None = None,
                 prefetch: int = 4, shard: tuple[int, int] | None = None):
        self.dataset, self.batch_size, self.seed, self.shuffle = dataset, batch_size, seed, shuffle
        if chunk_rows is None:
            row_bytes = max(1, dataset.x.row_bytes)
            chunk_rows = max(1, CHUNK_BYTES // row_bytes // batch_size) * batch_size
        self.chunk_rows, self.prefetch, self.shard = chunk_rows, prefetch, shard

    def order(self, epoch: int):
        """[(chunk start, chunk stop, permutation of the chunk's rows or None)] in reading order."""
        rows = self.dataset.rows
        chunks = [(start, min(start + self.chunk_rows, rows)) for start in range(0, rows, self.chunk_rows)]
        if not self.shuffle:
            return [(start, stop, None) for start, stop in chunks]
        generator = np.random.default_rng([self.seed, epoch])
        return [(chunks[index][0], chunks[index][1], generator.permutation(chunks[index][1] - chunks[index][0]))
                for index in generator.permutation(len(chunks))]

    def _plan(self, start: int, stop: int, permutation):
        """This rank's part of each global batch of a chunk: [(its positions in the chunk, batch rows, offset)]."""
        plan = []
        for first in range(0, stop - start, self.batch_size):
            batch_rows = min(self.batch_size, stop - start - first)
            low, high = (0, batch_rows) if self.shard is None else shard_bounds(batch_rows, *self.shard)
            picked = (np.arange(first + low, first + high) if permutation is None
                      else permutation[first + low:first + high])
            plan.append((picked, batch_rows, low))
        return plan

    def _fill(self, epoch: int, ring, slots, put) -> None:
        """The reading thread: each chunk read (data parallel: only this rank's rows of it, sorted, so
        the reads run forwards through the file), then each batch taken from it into a free ring slot
        (``slots()`` waits for one; None: stop), then handed on with ``put``."""
        sources, chunk = (self.dataset.x, self.dataset.t), None
        for start, stop, permutation in self.order(epoch):
            plan = self._plan(start, stop, permutation)
            wanted = np.arange(stop - start) if self.shard is None else np.unique(
                np.concatenate([picked for picked, _, _ in plan]))
            if chunk is None:  # one buffer for every chunk: no page faults and no freeing per chunk
                rows = min(self.chunk_rows, self.dataset.rows)
                chunk = [None if source is None else np.empty((rows, *source.shape[1:]), source.dtype)
                         for source in sources]
            out = [None if buffer is None else buffer[:len(wanted)] for buffer in chunk]
            x, t = (self.dataset.read(start, stop, out) if self.shard is None
                    else self.dataset.gather(start + wanted, out))
            for picked, batch_rows, low in plan:
                slot = slots()
                if slot is None:
                    return
                inside = picked if self.shard is None else np.searchsorted(wanted, picked)  # rows of the block read
                bx, bt = ring[slot]
                count = len(picked)
                _take(x, inside, bx[:count])
                _check_finite(bx[:count], start + picked)
                if t is not None:
                    _take(t, inside, bt[:count])
                put((slot, start + picked, bx[:count], None if t is None else bt[:count], batch_rows, low))

    def batches(self, epoch: int, allocate=np.empty, x_dtype=None):
        """The epoch's batches (``Batch``), gathered ahead by a background thread into a ring of
        ``prefetch + 2`` buffers from ``allocate(shape, dtype)``, inputs in ``x_dtype`` (default: the
        file's), each checked to be finite. A buffer is refilled only after its ``release()``; the
        thread never outlives the iteration (closing it, an error or Ctrl-C stop and join it), and its
        errors are raised here."""
        x_source, t_source = self.dataset.x, self.dataset.t
        rows = max(1, min(self.batch_size, self.dataset.rows))
        ring = [(allocate((rows, *x_source.shape[1:]), x_dtype or x_source.dtype),  # here: this thread's device
                 None if t_source is None else allocate((rows, *t_source.shape[1:]), t_source.dtype))
                for _ in range(self.prefetch + 2)]
        ahead: queue.Queue = queue.Queue()
        free: queue.Queue = queue.Queue()
        for slot in range(len(ring)):
            free.put(slot)
        stop = threading.Event()

        def slots():
            while not stop.is_set():
                try:
                    return free.get(timeout=0.05)
                except queue.Empty:
                    continue
            return None

        def produce():
            try:
                self._fill(epoch, ring, slots, ahead.put)
                ahead.put(_DONE)
            except BaseException as error:  # noqa: BLE001  (handed to the consumer, which raises it)
                ahead.put(error)

        thread = threading.Thread(target=produce, name="gpunn-prefetch", daemon=True)
        thread.start()
        try:
            while True:
                item = ahead.get()
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                slot, *fields = item
                yield Batch(*fields, release=lambda slot=slot: free.put(slot))
        finally:
            stop.set()
            thread.join()  # it waits on nothing but a free slot, which it gives up once stop is set

    def epoch(self, epoch: int):
        """The epoch's ``(rows, x, t)``, arrays of their own, read ahead by a background thread."""
        for batch in self.batches(epoch):
            yield batch.rows, batch.x.copy(), None if batch.t is None else batch.t.copy()
            batch.release()


def _check_finite(x: np.ndarray, rows: np.ndarray) -> None:
    """Inputs must be finite (in the model's dtype, after conversion): checked here, in the reading
    thread, rather than on the device while the step waits."""
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        bad = int(rows[np.flatnonzero(~np.isfinite(x.reshape(len(x), -1)).all(axis=1))[0]])
        raise ValueError(f"row {bad} of the data set: X contains NaN or Inf (or values too large for {x.dtype})")


def _take(source: np.ndarray, picked: np.ndarray, out: np.ndarray) -> None:
    """``out[:] = source[picked]`` without a temporary where the dtypes agree."""
    if source.dtype == out.dtype:
        np.take(source, picked, axis=0, out=out)
    else:
        out[...] = source[picked]


def predict_streamed(model, dataset, batch_size: int) -> np.ndarray:
    """A model's outputs over a Dataset read in order a chunk at a time, as one host array."""
    if dataset.rows == 0:
        raise ValueError("predict: X has no rows")
    backend, result = model.backend, None
    batches = BatchStream(dataset, batch_size, shuffle=False).batches(0, backend.host_buffer, model.dtype)
    with contextlib.closing(backend.device_batches(batches)) as staged:
        for batch, x, _ in staged:
            outputs = backend.to_numpy(model._outputs(x, None))
            if result is None:
                result = np.empty((dataset.rows, outputs.shape[1]), outputs.dtype)
            result[int(batch.rows[0]):int(batch.rows[-1]) + 1] = outputs
    return result
