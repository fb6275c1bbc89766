"""The stand-in's machine: its GPUs (``devices`` of them, one current), their allocations, the
launch log and the stream-capture state.

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


class Device:
    """The fake machine: ``devices`` GPUs, of which ``current_id`` is current (``cupy.cuda.Device.use``).
    ``installed()`` makes a fresh one current for its duration."""

    def __init__(self, block_threads: bool = False, devices: int = 1):
        #: Whether a kernel whose threads cooperate runs CuPy's blocks of threads as host threads
        #: (slow, exact), or blocks of one thread (fast; see _kernels.ElementwiseKernel._source).
        self.block_threads = block_threads
        self.devices, self.current_id = devices, 0
        self._starts: list[int] = []
        self._allocations: dict[int, tuple[int, weakref.ref, int]] = {}  # start: (bytes, owner, device)
        self.launches: list[tuple[str, str]] = []  # (kind, name), in launch order
        self.capture: list | None = None  # replay closures while a stream is being captured

    # --- allocations ---------------------------------------------------------------------
    def register(self, host: np.ndarray) -> int:
        """Remember the allocation that ``host`` (any view) lives in; a new one belongs to the
        current device. Returns the allocation's device."""
        owner = host
        while isinstance(owner.base, np.ndarray):
            owner = owner.base
        start = owner.__array_interface__["data"][0]
        known = self._allocations.get(start)
        if known is not None and known[1]() is owner:
            return known[2]
        if known is None:
            bisect.insort(self._starts, start)
        self._allocations[start] = (owner.nbytes, weakref.ref(owner, lambda _, s=start: self._forget(s)),
                                    self.current_id)
        return self.current_id

    def bytes_per_device(self) -> dict:
        """{device: bytes of its live allocations}."""
        totals: dict = {}
        for size, owner, device in self._allocations.values():
            if owner() is not None:
                totals[device] = totals.get(device, 0) + size
        return totals

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

    def memory(self, pointer: int, nbytes: int, dtype, device: int | None = None) -> np.ndarray:
        """The ``nbytes`` at device address ``pointer`` as a flat array (shares the memory), read
        by a library bound to ``device`` (default: the current one)."""
        device = self.current_id if device is None else device
        index = bisect.bisect_right(self._starts, pointer) - 1
        if index < 0 or pointer < 0:
            raise StandinViolation(f"address {pointer:#x} is not in any allocation of this device")
        start = self._starts[index]
        size, owner, home = self._allocations[start]
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

    # --- launches ------------------------------------------------------------------------
    def launch(self, kind: str, name: str, run) -> None:
        """One device operation: ``run()`` does its device work. While a stream is captured the
        work is recorded, not done (a captured kernel runs only when the graph is launched)."""
        self.launches.append((kind, name))
        if self.capture is not None:
            self.capture.append((kind, name, run))
        else:
            run()

    def refuse_during_capture(self, what: str) -> None:
        if self.capture is not None:
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
