"""Streamed batches to the GPU: gathered on the host into pinned buffers, copied on a side stream while
the previous step runs, double-buffered on the device.

Per batch ``i`` (device buffer ``k = i % 2``): the side stream waits until the step that last read
buffer ``k`` (batch ``i - 2``) is done with it (``used[k]``), copies the pinned rows into it and records
``copied[k]``; the compute stream (CuPy's current one) waits for ``copied[k]`` before the step reads
the batch. The pinned buffer of batch ``i - 1`` goes back to the stream's ring (to be refilled) only
once its copy's event has completed. CuPy 14.2's calls (cupy/cuda/stream.pyx, cupy/_core/core.pyx,
cupyx/_pinned_array.py): ``Stream(non_blocking=True)`` never waits for the legacy null stream (so
only our events order the two streams); ``Event.record(stream)`` is cudaEventRecord,
``Stream.wait_event`` cudaStreamWaitEvent (device-side: the host does not wait), ``Event.synchronize``
cudaEventSynchronize (the host waits); ``ndarray.set(host, stream=)`` is ``copy_from_host_async`` on
that stream, asynchronous only from pinned memory (as cupyx.empty_pinned allocates:
``cuda.alloc_pinned_memory`` wrapped in a NumPy array).
"""

from __future__ import annotations

import cupy
import numpy


def pinned_empty(shape, dtype) -> numpy.ndarray:
    """A NumPy array in page-locked memory, as ``cupyx.empty_pinned`` makes one (cupyx/_pinned_array.py):
    from CuPy's pinned memory pool, freed back to it with the array."""
    shape = tuple(int(size) for size in shape)
    nbytes = int(numpy.prod(shape, dtype=numpy.int64)) * numpy.dtype(dtype).itemsize
    return numpy.ndarray(shape, dtype=dtype, buffer=cupy.cuda.alloc_pinned_memory(nbytes))


class _DeviceBuffer:
    """One of the two device buffers: inputs and targets, and the events that order its use."""

    def __init__(self):
        self.x = self.t = None
        self.copied = cupy.cuda.Event(disable_timing=True)  # its last copy is on the device
        self.used = None  # recorded on the compute stream after the step that read it

    @staticmethod
    def sized(host, current):
        """A device array for ``host``'s rows: a view of this buffer, grown if too small. Dropping the old
        one is safe: its last copy (two batches ago) was waited for by the host at the previous batch,
        and CuPy's pool reuses a freed block in the order of the current (compute) stream, after the
        step that read it."""
        if current is None or current.shape[0] < host.shape[0] or current.shape[1:] != host.shape[1:] \
                or current.dtype != host.dtype:
            current = cupy.empty(host.shape, host.dtype)
        return current


def device_batches(batches):
    """``Backend.device_batches`` for CuPy: ``(batch, x, t)`` on the device, double-buffered (above)."""
    side = cupy.cuda.Stream(non_blocking=True)
    buffers = [_DeviceBuffer(), _DeviceBuffer()]
    waiting = None  # (event, batch): the last batch whose pinned buffers wait for their copy to complete
    try:
        for index, batch in enumerate(batches):
            buffer = buffers[index % 2]
            buffer.x = buffer.sized(batch.x, buffer.x)
            x = buffer.x[:batch.x.shape[0]]
            if batch.t is not None:
                buffer.t = buffer.sized(batch.t, buffer.t)
            t = None if batch.t is None else buffer.t[:batch.t.shape[0]]
            if buffer.used is not None:
                side.wait_event(buffer.used)  # the step of two batches ago has read this buffer
            x.set(batch.x, stream=side)
            if t is not None:
                t.set(batch.t, stream=side)
            buffer.copied.record(side)
            if waiting is not None:  # the previous batch's copy ran while its step was queued
                waiting[0].synchronize()
                waiting[1].release()
            waiting = (buffer.copied, batch)
            compute = cupy.cuda.get_current_stream()
            compute.wait_event(buffer.copied)
            yield batch, x, t
            buffer.used = compute.record(buffer.used)  # after everything queued on the batch
    finally:
        if waiting is not None:
            waiting[0].synchronize()
            waiting[1].release()
