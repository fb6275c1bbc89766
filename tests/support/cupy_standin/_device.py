"""The stand-in's machine: its GPUs (``devices`` of them, one current), their allocations (each a
chunk of a memory pool: ``_pool.py``), the launch log, the streams and the stream-capture state.

Every array the stand-in hands out is host memory registered here with the device that was
current when it was allocated, so that a raw pointer (what gpunn passes to cuBLAS and NCCL) can
be resolved to the allocation and the device it lies in, and an access beyond an allocation, or
to another device's memory, fails loudly, as an illegal address would on a GPU.
"""

from __future__ import annotations

import bisect
import ctypes
import weakref
from collections import Counter

import numpy as np

from support.cupy_standin._pool import PoolState

#: Launch kinds: a CUDA kernel (user kernels and CuPy's own ops), a cuBLAS call, a memset or
#: memcpy on the stream, and a CUDA-graph launch.
KINDS = ("kernel", "cublas", "memory", "graph")


class StandinViolation(RuntimeError):
    """gpunn did something a real GPU would not allow (or would silently get wrong)."""


def peer_access_refused(array_device: int, current_device: int) -> ValueError:
    """What CuPy raises when a kernel gets an array of another device and the two devices have no
    peer access (cupy/_core/_kernel.pyx, ``_check_peer_access``, called for every ndarray argument
    by ``_preprocess_arg``). The stand-in's devices have no peer access: where a machine has it,
    CuPy warns (PerformanceWarning) and reads across the bus, which is as wrong for gpunn."""
    return ValueError(f"The device where the array resides ({array_device}) is different from the current "
                      f"device ({current_device}). Peer access is unavailable between these devices.")


class Capture:
    """A stream capture in progress: its stream, the pool its allocations must come from, and the
    launches recorded (kind, name, run, reads, writes)."""

    def __init__(self, stream: int, pool):
        self.stream, self.pool, self.launches = stream, pool, []


class Device:
    """The fake machine: ``devices`` GPUs, of which ``current_id`` is current (``cupy.cuda.Device.use``).
    ``installed()`` makes a fresh one current for its duration.

    Streams (CUDA programming guide, "Streams"; CuPy 14.2 ``cupy/cuda/stream.pyx``): every launch is
    queued on the current stream (``with stream:``) and numbered there; each allocation remembers the
    stream and number of the launch that last wrote it. Work on a stream completes only when the host
    waits for it: ``Stream.synchronize``, ``Device.synchronize``, ``Event.synchronize``/``query`` after
    ``record``, or a blocking ``get()``/``asnumpy`` (CuPy's ``ndarray.get``: a copy on the current stream,
    then that stream's ``synchronize``: ``cupy/_core/core.pyx``). A launch on stream B that reads or
    writes memory last written on stream A is unordered, a ``StandinViolation``, unless A's write has
    completed, B waited (``wait_event``) on an event recorded on A after it, or one of them is the
    legacy default stream and the other a blocking stream (the legacy stream's implicit
    synchronisation). Launches still run at once, in order: the stand-in finds the missing order, it
    does not reproduce the race."""

    def __init__(self, block_threads: bool = False, devices: int = 1):
        #: Whether a kernel whose threads cooperate runs CuPy's blocks of threads as host threads
        #: (slow, exact), or blocks of one thread (fast; see _kernels.ElementwiseKernel._source).
        self.block_threads = block_threads
        self.devices, self.current_id = devices, 0
        self._starts: list[int] = []
        # start: (bytes, owner, device, pool chunk or None, pool state)
        self._allocations: dict[int, tuple] = {}
        self.launches: list[tuple[str, str]] = []  # (kind, name), in launch order
        self.capture: Capture | None = None
        # --- streams ---
        self.stream_stack: list = []  # the `with stream:` blocks (cupy.cuda.Stream objects)
        self.blocking: dict[int, bool] = {0: True}  # stream ptr: blocking (synchronises with the legacy stream)
        self.issued: dict[int, int] = {}  # stream ptr: number of its last launch
        self.completed: dict[int, int] = {}  # stream ptr: number up to which the host has seen it complete
        self.waits: dict[tuple[int, int], int] = {}  # (waiting stream, recorded stream): number waited for
        self._writers: dict[int, tuple[int, int]] = {}  # allocation start: (stream, number) of its last write
        # --- memory pools ---
        self.held: set = set()  # cudaMalloc'd allocations not freed (_pool.Allocation)
        self.default_pool = PoolState(self)
        self.allocators: list = []  # pool states of `cupy.cuda.using_allocator(pool.malloc)` blocks

    # --- allocations ---------------------------------------------------------------------
    def register(self, host: np.ndarray) -> int:
        """Remember the allocation that ``host`` (any view) lives in; a new one belongs to the
        current device and takes a chunk of the current allocator's pool. Returns its device."""
        owner = host
        while isinstance(owner.base, np.ndarray):
            owner = owner.base
        start = owner.__array_interface__["data"][0]
        known = self._allocations.get(start)
        if known is not None and known[1]() is owner:
            return known[2]
        pool = self.allocators[-1] if self.allocators else self.default_pool
        if self.capture is not None and pool is not self.capture.pool:
            raise StandinViolation(
                f"an allocation of {owner.nbytes} bytes from {'the default pool' if pool is self.default_pool else 'another pool'} "
                "during stream capture: the graph bakes in an address that pool hands out again once the "
                "array dies (allocate before capturing, or from the capture's own pool: using_allocator)")
        if known is None:
            bisect.insort(self._starts, start)
        chunk = pool.malloc(owner.nbytes, self.current_id, self.current_stream())
        self._allocations[start] = (owner.nbytes, weakref.ref(owner, lambda _, s=start: self._forget(s)),
                                    self.current_id, chunk, pool)
        self._writers.pop(start, None)
        return self.current_id

    def bytes_per_device(self) -> dict:
        """{device: bytes of its live allocations}."""
        totals: dict = {}
        for size, owner, device, *_ in self._allocations.values():
            if owner() is not None:
                totals[device] = totals.get(device, 0) + size
        return totals

    def held_bytes(self) -> int:
        """Device memory cudaMalloc'd and never freed: live pools' blocks and what dropped pools leak."""
        return sum(allocation.size for allocation in self.held)

    def bytes_of_dropped_pools(self) -> int:
        """Bytes of live arrays whose pool was dropped: memory a dropped graph's pool cannot free
        while they live, and keeps for ever where their block was split (``_pool.py``)."""
        return sum(size for size, owner, _, chunk, pool in self._allocations.values()
                   if chunk is not None and not pool.alive and owner() is not None)

    def check_peer(self, host: np.ndarray) -> None:
        """CuPy's peer check for one array argument of a kernel or routine on the current device."""
        device = self.register(host)
        if device != self.current_id:
            raise peer_access_refused(device, self.current_id)
        _touch(host)

    def _forget(self, start: int) -> None:
        entry = self._allocations.get(start)
        if entry is not None and entry[1]() is None:
            del self._allocations[start]
            self._starts.remove(start)
            self._writers.pop(start, None)
            if entry[3] is not None:
                entry[4].free(entry[3])

    def _start(self, host: np.ndarray) -> int | None:
        """The start of the allocation ``host`` lies in (None for an empty or unknown array)."""
        if not host.size:
            return None
        pointer = host.__array_interface__["data"][0]
        index = bisect.bisect_right(self._starts, pointer) - 1
        return self._starts[index] if index >= 0 else None

    def memory(self, pointer: int, nbytes: int, dtype, device: int | None = None) -> np.ndarray:
        """The ``nbytes`` at device address ``pointer`` as a flat array (shares the memory), read
        by a library bound to ``device`` (default: the current one)."""
        device = self.current_id if device is None else device
        index = bisect.bisect_right(self._starts, pointer) - 1
        if index < 0 or pointer < 0:
            raise StandinViolation(f"address {pointer:#x} is not in any allocation of this device")
        start = self._starts[index]
        size, owner, home, *_ = self._allocations[start]
        if owner() is None or pointer + nbytes > start + size:
            raise StandinViolation(f"{nbytes} bytes at {pointer:#x} run past the allocation at {start:#x} "
                                   f"({size} bytes): an out-of-bounds access")
        if home != device:
            raise StandinViolation(f"address {pointer:#x} is memory of device {home}, read by a library call "
                                   f"bound to device {device}: " + str(peer_access_refused(home, device)))
        if not nbytes:
            return np.empty(0, dtype)
        buffer = (ctypes.c_char * nbytes).from_address(pointer)
        buffer.owner = owner()  # the view keeps the allocation alive, as a graph keeps its memory
        flat = np.frombuffer(buffer, dtype=dtype)
        _touch(flat)
        return flat

    # --- streams -------------------------------------------------------------------------
    def current_stream(self) -> int:
        return self.stream_stack[-1].ptr if self.stream_stack else 0

    def _ordered(self, stream: int, writer: tuple[int, int]) -> bool:
        source, number = writer
        if source == stream or self.completed.get(source, 0) >= number:
            return True
        if self.waits.get((stream, source), 0) >= number:
            return True
        legacy = 0 in (source, stream)
        return legacy and self.blocking.get(source, True) and self.blocking.get(stream, True)

    def _check_order(self, stream: int, arrays, what: str) -> None:
        for host in arrays:
            start = self._start(host)
            writer = self._writers.get(start) if start is not None else None
            if writer is not None and not self._ordered(stream, writer):
                raise StandinViolation(
                    f"{what} on stream {stream:#x} of memory last written on stream {writer[0]:#x} (its launch "
                    f"{writer[1]}, not complete), without an event between them: on a GPU it may run before "
                    "that write (record an event on the writing stream and wait for it, or synchronize)")

    def synchronize_stream(self, stream: int) -> None:
        self.completed[stream] = self.issued.get(stream, 0)

    def synchronize_all(self) -> None:
        self.completed.update(self.issued)

    # --- launches ------------------------------------------------------------------------
    def launch(self, kind: str, name: str, run, reads=(), writes=()) -> None:
        """One device operation on the current stream: ``run()`` does its device work, reading
        ``reads`` and writing ``writes`` (host arrays). While the current stream is captured the work
        is recorded, not done (a captured kernel runs only when the graph is launched)."""
        self.launches.append((kind, name))
        stream = self.current_stream()
        if self.capture is not None and stream == self.capture.stream:
            self.capture.launches.append((kind, name, run, tuple(reads), tuple(writes)))
            return
        self.run_on(stream, run, reads, writes, f"{kind} {name}")

    def run_on(self, stream: int, run, reads, writes, what: str) -> None:
        """Do one launch's work on ``stream``, after checking that it is ordered after the last
        writes of what it touches; then its writes belong to the stream's new launch."""
        self._check_order(stream, reads, f"{what} reads")
        self._check_order(stream, writes, f"{what} writes")
        number = self.issued[stream] = self.issued.get(stream, 0) + 1
        run()
        for host in writes:
            start = self._start(host)
            if start is not None:
                self._writers[start] = (stream, number)

    def host_read(self, host: np.ndarray, what: str, stream: int | None = None, blocking: bool = True) -> None:
        """CuPy's ``ndarray.get`` (cupy/_core/core.pyx): a device-to-host copy on ``stream`` (default:
        the current one), then, when ``blocking``, that stream's synchronisation; the data must be
        ordered on that stream. (``blocking=False`` leaves the copy pending: the stand-in cannot see
        the host read the array too early; pinned memory and its events are not modelled here.)"""
        stream = self.current_stream() if stream is None else stream
        self.refuse_during_capture(what, stream)
        self.launches.append(("memory", "memcpy device-to-host"))
        self.run_on(stream, lambda: None, (host,), (), "memory memcpy device-to-host")
        if blocking:
            self.synchronize_stream(stream)

    def refuse_during_capture(self, what: str, stream: int | None = None) -> None:
        """Relaxed capture mode (CuPy's default: ``Stream.begin_capture``) refuses what conflicts with
        the capture: a device-wide synchronisation (``stream`` None), or work on the captured stream
        that needs the host (a synchronisation, a blocking copy: CuPy raises for those itself)."""
        if self.capture is not None and (stream is None or stream == self.capture.stream):
            raise StandinViolation(f"{what} during stream capture: CUDA invalidates the capture "
                                   "(cudaErrorStreamCaptureUnsupported)")

    def count(self, since: int = 0) -> Counter:
        """Launches per kind after position ``since`` of the log."""
        return Counter(kind for kind, _ in self.launches[since:])


_current: list[Device] = [Device()]


def _touch(host: np.ndarray) -> None:
    """A launch reaches ``host``: copies queued on streams decide whether it may (``_streams.py``)."""
    from support.cupy_standin import _streams

    _streams.touch(host)


def current() -> Device:
    """The device of the active installation (a spare one when none is active)."""
    return _current[-1]
