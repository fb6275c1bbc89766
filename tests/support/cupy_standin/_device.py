"""The stand-in's one device: its allocations, its launch log and its stream-capture state.

Every array the stand-in hands out is host memory registered here, so that a raw pointer (what
gpunn passes to cuBLAS) can be resolved to the allocation it lies in, and an access beyond an
allocation fails loudly, as an illegal address would on a GPU.
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


class Device:
    """One fake GPU. ``installed()`` makes a fresh one current for its duration."""

    def __init__(self, block_threads: bool = False):
        #: Whether a kernel whose threads cooperate runs CuPy's blocks of threads as host threads
        #: (slow, exact), or blocks of one thread (fast; see _kernels.ElementwiseKernel._source).
        self.block_threads = block_threads
        self._starts: list[int] = []
        self._allocations: dict[int, tuple[int, weakref.ref]] = {}
        self.launches: list[tuple[str, str]] = []  # (kind, name), in launch order
        self.capture: list | None = None  # replay closures while a stream is being captured

    # --- allocations ---------------------------------------------------------------------
    def register(self, host: np.ndarray) -> None:
        """Remember the allocation that ``host`` (any view) lives in."""
        owner = host
        while isinstance(owner.base, np.ndarray):
            owner = owner.base
        start = owner.__array_interface__["data"][0]
        known = self._allocations.get(start)
        if known is not None and known[1]() is owner:
            return
        if known is None:
            bisect.insort(self._starts, start)
        self._allocations[start] = (owner.nbytes, weakref.ref(owner, lambda _, s=start: self._forget(s)))

    def _forget(self, start: int) -> None:
        entry = self._allocations.get(start)
        if entry is not None and entry[1]() is None:
            del self._allocations[start]
            self._starts.remove(start)

    def memory(self, pointer: int, nbytes: int, dtype) -> np.ndarray:
        """The ``nbytes`` at device address ``pointer`` as a flat array (shares the memory)."""
        index = bisect.bisect_right(self._starts, pointer) - 1
        if index < 0 or pointer < 0:
            raise StandinViolation(f"address {pointer:#x} is not in any allocation of this device")
        start = self._starts[index]
        size, owner = self._allocations[start]
        if owner() is None or pointer + nbytes > start + size:
            raise StandinViolation(f"{nbytes} bytes at {pointer:#x} run past the allocation at {start:#x} "
                                   f"({size} bytes): an out-of-bounds access")
        if not nbytes:
            return np.empty(0, dtype)
        buffer = (ctypes.c_char * nbytes).from_address(pointer)
        buffer.owner = owner()  # the view keeps the allocation alive, as a graph keeps its memory
        return np.frombuffer(buffer, dtype=dtype)

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


def current() -> Device:
    """The device of the active installation (a spare one when none is active)."""
    return _current[-1]
