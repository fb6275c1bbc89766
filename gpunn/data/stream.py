"""Batches of a Dataset, shuffled and prefetched: a shuffle that reads contiguous chunks.

An epoch's order depends on ``(seed, epoch)`` alone (exact resume): the chunks of ``chunk_rows`` rows
are visited in a random order and each chunk's rows are permuted, so every read is one contiguous
block. A background thread reads the next chunk and gathers its batches while the current ones train
(file reads and NumPy's copies release the GIL).
"""

from __future__ import annotations

import queue
import threading

import numpy as np

#: The bytes of inputs read at a time: a chunk is this big, rounded to whole batches.
CHUNK_BYTES = 64 * 2**20
_DONE = object()


class BatchStream:
    """Iterate ``epoch(e)`` for ``(rows, x, t)``: the batch's row indices and its host arrays."""

    def __init__(self, dataset, batch_size: int, seed: int = 0, shuffle: bool = True, chunk_rows: int | None = None,
                 prefetch: int = 4):
        self.dataset, self.batch_size, self.seed, self.shuffle = dataset, batch_size, seed, shuffle
        if chunk_rows is None:
            row_bytes = max(1, dataset.x.row_bytes)
            chunk_rows = max(1, CHUNK_BYTES // row_bytes // batch_size) * batch_size
        self.chunk_rows, self.prefetch = chunk_rows, prefetch

    def order(self, epoch: int):
        """[(chunk start, chunk stop, permutation of the chunk's rows or None)] in reading order."""
        rows = self.dataset.rows
        chunks = [(start, min(start + self.chunk_rows, rows)) for start in range(0, rows, self.chunk_rows)]
        if not self.shuffle:
            return [(start, stop, None) for start, stop in chunks]
        generator = np.random.default_rng([self.seed, epoch])
        return [(chunks[index][0], chunks[index][1], generator.permutation(chunks[index][1] - chunks[index][0]))
                for index in generator.permutation(len(chunks))]

    def _batches(self, epoch: int):
        for start, stop, permutation in self.order(epoch):
            x, t = self.dataset.read(start, stop)
            for first in range(0, stop - start, self.batch_size):
                if permutation is None:
                    picked = slice(first, first + self.batch_size)
                    rows = np.arange(start + first, min(start + first + self.batch_size, stop))
                else:
                    picked = permutation[first:first + self.batch_size]
                    rows = start + picked
                yield rows, x[picked], None if t is None else t[picked]

    def epoch(self, epoch: int):
        """The epoch's batches, read ahead by a background thread."""
        ahead: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()

        def produce():
            try:
                for batch in self._batches(epoch):
                    while not stop.is_set():
                        try:
                            ahead.put(batch, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
                ahead.put(_DONE)
            except BaseException as error:  # noqa: BLE001  (handed to the consumer, which raises it)
                ahead.put(error)  # the queue has room: the consumer drains it until this thread ends

        thread = threading.Thread(target=produce, name="gpunn-prefetch", daemon=True)
        thread.start()
        try:
            while True:
                item = ahead.get()
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            while thread.is_alive():  # drain, so a producer blocked on a full queue finishes
                try:
                    ahead.get_nowait()
                except queue.Empty:
                    thread.join(0.01)


def predict_streamed(model, dataset, batch_size: int) -> np.ndarray:
    """A model's outputs over a Dataset read in order a chunk at a time, as one host array."""
    if dataset.rows == 0:
        raise ValueError("predict: X has no rows")
    result = None
    for rows, x, _ in BatchStream(dataset, batch_size, shuffle=False).epoch(0):
        outputs = model.backend.to_numpy(model._outputs(x, None))
        if result is None:
            result = np.empty((dataset.rows, outputs.shape[1]), outputs.dtype)
        result[int(rows[0]):int(rows[-1]) + 1] = outputs
    return result
