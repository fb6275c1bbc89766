"""Batches of a Dataset, shuffled and prefetched: a shuffle that reads contiguous chunks.

An epoch's order depends on ``(seed, epoch)`` alone (exact resume): the chunks of ``chunk_rows`` rows
(whole batches) are visited in a random order and each chunk's rows are permuted, so every read is one
contiguous block. Data parallel (``shard=(rank, size)``), each global batch is split as the in-memory
path splits it (``shard_bounds``) and a rank reads only its rows of each chunk (``Dataset.gather``).
A background thread reads the next chunk into the second of two chunk buffers (one large read that
releases the GIL, and a check that its inputs are finite) while the batches of the current one are
gathered, as they are asked for, into a ring of reused host buffers (pinned ones for the GPU:
``Backend.host_buffer``), and train.
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
#: Batch buffers in the ring: one being filled, one whose copy to the device may be in flight, one spare.
RING = 3


class Batch(NamedTuple):
    """One rank's part of a global batch, in a ring buffer of the stream's: valid until ``release()``."""

    rows: np.ndarray  # the data set's row of each of its rows
    x: np.ndarray
    t: np.ndarray | None
    batch_rows: int  # the rows of the global batch (all ranks)
    offset: int  # where this rank's part starts in the global batch
    release: object  # hands the buffers back to the ring


class _Chunk(NamedTuple):
    """A chunk read by the reading thread: its buffers and what to gather from them."""

    start: int
    plan: list  # [(positions in the chunk, positions in the buffers, batch rows, offset)]
    x: np.ndarray
    t: np.ndarray | None
    buffers: list  # handed back to the thread once every batch is gathered


class _Claims:
    """An epoch's chunks, handed out in order to whoever reads next: the reading thread, or the training
    thread itself when the one it needs has not been begun (so a thread kept off the cores by a busy
    machine costs at most a read done in line, never a wait)."""

    def __init__(self):
        self.next, self.ready, self.error = 0, {}, None
        self.changed = threading.Condition()

    def claim(self, chunks: int) -> int | None:
        with self.changed:
            if self.next == chunks:
                return None
            self.next += 1
            return self.next - 1

    def done(self, index: int, chunk: _Chunk) -> None:
        with self.changed:
            self.ready[index] = chunk
            self.changed.notify_all()

    def fail(self, error: BaseException) -> None:
        with self.changed:
            self.error = error
            self.changed.notify_all()

    def take(self, index: int, free_chunks: queue.Queue):
        """(chunk ``index``, None) once read, or (None, a free chunk buffer) for the caller to read it."""
        with self.changed:
            while index not in self.ready:
                if self.error is not None:
                    raise self.error
                if self.next == index:
                    try:
                        buffers = free_chunks.get_nowait()
                    except queue.Empty:
                        pass
                    else:
                        self.next += 1
                        return None, buffers
                self.changed.wait(0.05)
            return self.ready.pop(index), None


class BatchStream:
    """``epoch(e)``: ``(rows, x, t)`` per batch, arrays of their own; ``batches(e)``: ``Batch`` views of
    reused buffers (fit, evaluate and predict), each handed back with ``release()``."""

    def __init__(self, dataset, batch_size: int, seed: int = 0, shuffle: bool = True, chunk_rows: int | None = None,
                 shard: tuple[int, int] | None = None):
        self.dataset, self.batch_size, self.seed, self.shuffle = dataset, batch_size, seed, shuffle
        if chunk_rows is None:
            row_bytes = max(1, dataset.x.row_bytes)
            chunk_rows = max(1, CHUNK_BYTES // row_bytes // batch_size) * batch_size
        self.chunk_rows, self.shard = chunk_rows, shard
        self._chunk_buffers, self._reading = None, False

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
        """This rank's part of each global batch of a chunk, and the chunk's rows it reads: ([(positions in
        the chunk, positions in what is read, batch rows, offset)], positions read)."""
        plan = []
        for first in range(0, stop - start, self.batch_size):
            batch_rows = min(self.batch_size, stop - start - first)
            low, high = (0, batch_rows) if self.shard is None else shard_bounds(batch_rows, *self.shard)
            picked = (np.arange(first + low, first + high) if permutation is None
                      else permutation[first + low:first + high])
            plan.append((picked, batch_rows, low))
        if self.shard is None:
            return [(picked, picked, rows, low) for picked, rows, low in plan], None
        wanted = np.unique(np.concatenate([picked for picked, _, _ in plan]))  # sorted: reads run forwards
        return [(picked, np.searchsorted(wanted, picked), rows, low) for picked, rows, low in plan], wanted

    def _read(self, entry, buffers, check_x: bool) -> _Chunk:
        """One chunk (data parallel: only this rank's rows of it) into ``buffers``, its inputs checked."""
        start, stop, permutation = entry
        plan, wanted = self._plan(start, stop, permutation)
        count = stop - start if wanted is None else len(wanted)
        out = [None if buffer is None else buffer[:count] for buffer in buffers]
        x, t = self.dataset.read(start, stop, out) if wanted is None else self.dataset.gather(start + wanted, out)
        if check_x:
            _check_finite(x, start + (np.arange(count) if wanted is None else wanted))
        return _Chunk(start, plan, x, t, buffers)

    def batches(self, epoch: int, allocate=np.empty, x_dtype=None):
        """The epoch's batches (``Batch``), gathered as they are asked for into a ring of ``RING``
        buffers from ``allocate(shape, dtype)`` (another is made while all are held), inputs in
        ``x_dtype`` (default: the file's) and checked to be finite; a buffer is reused only after
        its ``release()``. A background thread reads the next chunk meanwhile; it never outlives the
        iteration (closing it, an error or Ctrl-C stop and join it), and its errors are raised here."""
        x_source, t_source = self.dataset.x, self.dataset.t
        x_dtype = np.dtype(x_dtype or x_source.dtype)
        rows = max(1, min(self.batch_size, self.dataset.rows))
        chunk_rows = max(1, min(self.chunk_rows, self.dataset.rows))

        def new_slot():
            return (allocate((rows, *x_source.shape[1:]), x_dtype),
                    None if t_source is None else allocate((rows, *t_source.shape[1:]), t_source.dtype))

        ring, free_slots = [new_slot() for _ in range(RING)], list(range(RING))
        free_chunks: queue.Queue = queue.Queue()
        if self._reading:
            raise RuntimeError("BatchStream: one epoch at a time (its chunk buffers are shared); finish or close "
                               "the other iteration first, or make a BatchStream per iteration")
        if self._chunk_buffers is None:  # kept for the next epochs: no 64 MB of fresh pages to fault in again
            chunks = -(-self.dataset.rows // self.chunk_rows)
            self._chunk_buffers = [[None if source is None else np.empty((chunk_rows, *source.shape[1:]), source.dtype)
                                    for source in (x_source, t_source)]
                                   for _ in range(min(2, chunks))]  # the chunk gathered from, the next one read
        for buffers in self._chunk_buffers:
            free_chunks.put(buffers)
        order, check_x = self.order(epoch), x_dtype == x_source.dtype
        claims = _Claims()
        stop = threading.Event()

        def free():
            while not stop.is_set():
                try:
                    return free_chunks.get(timeout=0.05)
                except queue.Empty:
                    continue
            return None

        def produce():
            try:
                while True:
                    buffers = free()
                    index = None if buffers is None else claims.claim(len(order))
                    if index is None:
                        return
                    claims.done(index, self._read(order[index], buffers, check_x))
            except BaseException as error:  # noqa: BLE001  (handed to the consumer, which raises it)
                claims.fail(error)

        thread = threading.Thread(target=produce, name="gpunn-prefetch", daemon=True)
        self._reading = True
        thread.start()
        try:
            for index in range(len(order)):
                chunk, buffers = claims.take(index, free_chunks)
                if chunk is None:  # the thread has not begun it (no core for it): read it here
                    chunk = self._read(order[index], buffers, check_x)
                for picked, inside, batch_rows, low in chunk.plan:
                    if not free_slots:  # the consumer holds every buffer: one more
                        ring.append(new_slot())
                        free_slots.append(len(ring) - 1)
                    slot = free_slots.pop()
                    bx, bt = ring[slot]
                    count, rows_read = len(picked), chunk.start + picked
                    _take(chunk.x, inside, bx[:count])
                    if not check_x:  # converted: checked as the model will see it
                        _check_finite(bx[:count], rows_read)
                    if chunk.t is not None:
                        _take(chunk.t, inside, bt[:count])
                    yield Batch(rows_read, bx[:count], None if chunk.t is None else bt[:count], batch_rows, low,
                                lambda slot=slot: free_slots.append(slot))
                free_chunks.put(chunk.buffers)
        finally:
            stop.set()
            thread.join()  # it waits on nothing but a free chunk buffer, which it gives up once stop is set
            self._reading = False

    def epoch(self, epoch: int):
        """The epoch's ``(rows, x, t)``, arrays of their own, read ahead by a background thread."""
        for batch in self.batches(epoch):
            yield batch.rows, batch.x.copy(), None if batch.t is None else batch.t.copy()
            batch.release()


def _check_finite(x: np.ndarray, rows: np.ndarray) -> None:
    """Inputs must be finite in the model's dtype: checked on the host (in the reading thread, a chunk
    at a time, unless they are converted as each batch is gathered), not on the device while the
    step waits; the error names the first row that is not."""
    if x.dtype.kind != "f":
        return
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow here is only a reason to look closer
        if np.isfinite(x.sum(dtype=np.float64)):  # NaN and Inf reach the sum; no temporary
            return
    finite = np.isfinite(x.reshape(len(x), -1)).all(axis=1)  # the sum of huge float64 values can overflow
    if not finite.all():
        bad = int(rows[np.flatnonzero(~finite)[0]])
        raise ValueError(f"row {bad} of the data set: X contains NaN or Inf (or values too large for {x.dtype})")


def _take(source: np.ndarray, picked: np.ndarray, out: np.ndarray) -> None:
    """``out[:] = source[picked]`` without a temporary where the dtypes agree."""
    if source.dtype == out.dtype:  # mode="clip": the rows are in range, and "raise" would copy through a temporary
        np.take(source, picked, axis=0, out=out, mode="clip")
    else:
        out[...] = source[picked]


def predict_streamed(model, dataset, batch_size: int) -> np.ndarray:
    """A model's outputs over a Dataset read in order a chunk at a time, as one host array (no rows:
    none, of the outputs' width, as predict in memory gives)."""
    backend, result = model.backend, None
    if dataset.rows == 0:
        return backend.to_numpy(model._outputs(np.zeros((0, dataset.features), model.dtype), None))
    batches = BatchStream(dataset, batch_size, shuffle=False).batches(0, backend.host_buffer, model.dtype)
    with contextlib.closing(backend.device_batches(batches)) as staged:
        for batch, x, _ in staged:
            outputs = backend.to_numpy(model._outputs(x, None, check_finite=False))  # checked as read
            if result is None:
                result = np.empty((dataset.rows, outputs.shape[1]), outputs.dtype)
            result[int(batch.rows[0]):int(batch.rows[-1]) + 1] = outputs
    return result
