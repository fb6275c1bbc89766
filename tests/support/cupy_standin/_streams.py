"""Pinned host memory, events and host-to-device copies queued on a stream: the part of CUDA's stream
semantics that gpunn's streamed batches rely on (gpunn/backends/cupy_staging.py), modelled so that
the two races of double buffering fail a test instead of passing by luck.

The model (launches still run at once, in order; only these copies wait):
  * ``ndarray.set(pinned, stream=s)`` from pinned memory (``cuda.alloc_pinned_memory``) is queued on
    ``s``, with a snapshot of the pinned bytes; from pageable memory it is done at once, as CUDA
    stages pageable copies before returning.
  * A queued copy delivers its bytes when a launch of a stream that waited (``wait_event``) for an
    event recorded after it touches its destination, and counts as complete only once the host waited
    for it (``Event.synchronize``/``done`` of such an event, ``Stream.synchronize``): until then its
    pinned source must not change (checked at every launch and at completion).
  * Failures (``StandinViolation``): a launch touches a copy's destination from a stream that has not
    waited for an event recorded after the copy (the compute stream read the batch before the copy
    was ordered before it); the pinned bytes changed between the copy's issue and its completion (the
    buffer was refilled before its copy's event completed); a copy into a buffer that a stream read
    after the last event of that stream the copying stream waited for (the copy may overwrite a batch
    the step still reads).
"""

from __future__ import annotations

import itertools

import numpy as np

from support.cupy_standin._device import StandinViolation, current

_order = itertools.count()  # one clock for reads, records and copies


class _Copy:
    def __init__(self, stream_ptr: int, destination: np.ndarray, source: np.ndarray):
        self.stream_ptr, self.destination, self.source = stream_ptr, destination, source
        self.snapshot, self.waited_by, self.delivered = source.copy(), set(), False

    def check(self) -> None:
        """Until the host has waited for it, a copy may still be reading its pinned source."""
        if not np.array_equal(self.source.view(np.uint8), self.snapshot.view(np.uint8)):
            raise StandinViolation("a pinned host buffer was refilled before its copy to the device completed "
                                   "(wait for the event recorded after the copy before reusing the buffer)")

    def deliver(self) -> None:
        """The copy's bytes reach the device (once; a later launch may read them)."""
        if not self.delivered:
            self.check()
            np.copyto(self.destination, self.snapshot)
            self.delivered = True

    def complete(self, state) -> None:
        """The host waited for the copy (an event's or its stream's synchronize)."""
        self.deliver()
        state["pending"].remove(self)


def _state() -> dict:
    """This installation's copies in flight, pinned ranges and buffer reads (kept on its device)."""
    device = current()
    if not hasattr(device, "streams_state"):
        device.streams_state = {"pending": [], "pinned": [], "reads": {}, "destinations": [], "waits": {}}
    return device.streams_state


def _current_ptr() -> int:
    from support.cupy_standin._cuda import get_current_stream

    return get_current_stream().ptr


def alloc_pinned_memory(nbytes: int) -> bytearray:
    """``cupy.cuda.alloc_pinned_memory``: host memory a NumPy array wraps (``cupyx.empty_pinned``),
    remembered as pinned."""
    memory = bytearray(max(1, int(nbytes)))
    _state()["pinned"].append(memory)
    return memory


def _is_pinned(host: np.ndarray) -> bool:
    return any(np.shares_memory(host, np.frombuffer(memory, np.uint8)) for memory in _state()["pinned"])


def copy_from_host(destination: np.ndarray, source: np.ndarray, stream=None) -> None:
    """``ndarray.set(source, stream)``: queued from pinned memory, done at once otherwise."""
    state = _state()
    stream_ptr = _current_ptr() if stream is None else stream.ptr
    base = destination.base if destination.base is not None else destination
    if not any(base is known for known in state["destinations"]):
        state["destinations"].append(base)
    for (reader, buffer), when in state["reads"].items():
        if buffer == id(base) and reader != stream_ptr and state["waits"].get((stream_ptr, reader), -1) < when:
            raise StandinViolation("a copy into a device buffer that another stream read after the last event of "
                                   "that stream this one waited for: it may overwrite a batch a step still reads")
    if not _is_pinned(source):
        np.copyto(destination, source)
        return
    state["pending"].append(_Copy(stream_ptr, destination, source))


def touch(host: np.ndarray) -> None:
    """A launch on the current stream reads or writes ``host`` (a device array's memory)."""
    if not hasattr(current(), "streams_state"):
        return
    state, stream_ptr = _state(), _current_ptr()
    for copy in state["pending"]:
        copy.check()  # the GPU may still be reading any pinned source the host has not waited for
        if np.shares_memory(host, copy.destination):
            if stream_ptr != copy.stream_ptr and stream_ptr not in copy.waited_by:
                raise StandinViolation("a launch read a device buffer before its stream waited for the event "
                                       "recorded after the copy into it (Stream.wait_event)")
            copy.deliver()
    for base in state["destinations"]:
        if np.shares_memory(host, base):
            state["reads"][(stream_ptr, id(base))] = next(_order)


def recorded(event, stream_ptr: int) -> None:
    """``Event.record`` on a stream: the event covers the copies queued there so far."""
    state = _state()
    event.stream_ptr, event.when = stream_ptr, next(_order)
    event.covers = [copy for copy in state["pending"] if copy.stream_ptr == stream_ptr]


def completed(event) -> None:
    """``Event.synchronize``/``done``: the host waited for the copies the event covers."""
    state = _state()
    for copy in list(event.covers):
        if copy in state["pending"]:
            copy.complete(state)


def waited(stream_ptr: int, event) -> None:
    """``Stream.wait_event``: later work on the stream comes after what ``event`` covers."""
    for copy in event.covers:
        copy.waited_by.add(stream_ptr)
    waits, key = _state()["waits"], (stream_ptr, event.stream_ptr)
    waits[key] = max(waits.get(key, -1), event.when)


def synchronize(stream_ptr: int) -> None:
    """``Stream.synchronize``: the copies queued on the stream are complete."""
    state = _state()
    for copy in [copy for copy in state["pending"] if copy.stream_ptr == stream_ptr]:
        copy.complete(state)
