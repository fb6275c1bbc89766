"""``cupy.cuda``: the machine's devices, streams, a graph recorder, memory pools that count bytes.

These fakes keep gpunn's code paths running; they prove nothing about the real objects. A
"captured" stream keeps every launch made while it captures and a graph replays them in order
on the same buffers, so a captured step that depends on host work between launches, or that
copies to or from the host while capturing, is caught; real graph semantics (stream ordering,
pool addresses, instantiation errors) are not modelled.
"""

from __future__ import annotations

import contextlib
import itertools
import types

from support.cupy_standin import _nccl, _streams
from support.cupy_standin._device import StandinViolation, current

_pointers = itertools.count(0x5000)
_stream_stack: list = []


class CUDARuntimeError(RuntimeError):
    pass


class Device:
    """``cupy.cuda.Device`` (cupy/cuda/device.pyx): ``Device()`` is the current device;
    ``use()`` makes one current (cudaSetDevice, refused for a device the machine lacks, as
    cudaErrorInvalidDevice); ``with Device(n):`` makes it current inside and restores the
    previous one. Each has an H100's compute capability and its own PCI bus id."""

    def __init__(self, device=None):
        machine = current()
        self.id = machine.current_id if device is None else int(device)
        self._previous: list[int] = []

    compute_capability = "90"

    @property
    def pci_bus_id(self) -> str:
        return f"0000:{0x18 + 0x10 * self.id:02X}:00.0"

    def use(self) -> None:
        machine = current()
        if not 0 <= self.id < machine.devices:
            raise CUDARuntimeError(f"cudaErrorInvalidDevice: invalid device ordinal {self.id} (the stand-in "
                                   f"has {machine.devices} devices)")
        machine.current_id = self.id

    def synchronize(self) -> None:
        current().refuse_during_capture("cudaDeviceSynchronize")

    def __enter__(self):
        self._previous.append(current().current_id)
        self.use()
        return self

    def __exit__(self, *exc_info):
        current().current_id = self._previous.pop()

    def __eq__(self, other):
        return isinstance(other, Device) and other.id == self.id

    def __hash__(self):
        return hash(self.id)

    def __repr__(self):
        return f"<CUDA Device {self.id}>"


class Graph:
    """What ``Stream.end_capture`` returns: the recorded launches, replayed in order."""

    def __init__(self, recorded: list):
        self.recorded = recorded

    def launch(self, stream=None) -> None:
        current().launch("graph", f"graph of {len(self.recorded)} launches", self._replay)

    def _replay(self) -> None:
        for _, _, replay in self.recorded:
            replay()

    def upload(self, stream=None) -> None:
        return None


class Stream:
    """``cupy.cuda.Stream``: a context that makes itself current; captures on request."""

    null = None

    def __init__(self, null=False, non_blocking=False, ptds=False):
        self.ptr = 0 if null else next(_pointers)
        self._capturing = False

    def __enter__(self):
        _stream_stack.append(self)
        return self

    def __exit__(self, *exc_info):
        _stream_stack.pop()

    def synchronize(self) -> None:
        current().refuse_during_capture("cudaStreamSynchronize")
        _streams.synchronize(self)

    record, wait_event = _streams.record, _streams.wait_event  # events and queued copies: _streams.py

    def begin_capture(self, mode=None) -> None:
        device = current()
        if device.capture is not None:
            raise StandinViolation("a stream is already being captured")
        device.capture, self._capturing = [], True

    def is_capturing(self) -> bool:
        return self._capturing

    def end_capture(self) -> Graph:
        device = current()
        if not self._capturing:
            raise StandinViolation("end_capture on a stream that is not capturing")
        recorded, device.capture, self._capturing = device.capture, None, False
        return Graph(recorded)


Stream.null = Stream(null=True)


def get_current_stream(device_id=None) -> Stream:
    return _stream_stack[-1] if _stream_stack else Stream.null


class MemoryPool:
    """``cupy.cuda.MemoryPool``: counts the bytes allocated through it (no reuse is modelled)."""

    def __init__(self, allocator=None):
        self._used = 0

    def malloc(self, size: int):
        self._used += size
        return None

    def used_bytes(self) -> int:
        return self._used

    def total_bytes(self) -> int:
        return self._used

    def free_all_blocks(self, stream=None) -> None:
        self._used = 0


@contextlib.contextmanager
def using_allocator(allocator=None):
    yield


def _runtime() -> types.SimpleNamespace:
    """``cupy.cuda.runtime``: the machine's devices, CUDA 13.0's version numbers."""
    return types.SimpleNamespace(
        getDeviceCount=lambda: current().devices, runtimeGetVersion=lambda: 13000, driverGetVersion=lambda: 13000,
        getDeviceProperties=lambda device: {"name": b"CuPy stand-in (host C++)", "major": 9, "minor": 0,
                                            "totalGlobalMem": 80 * 2 ** 30},
        getDevice=lambda: current().current_id, deviceSynchronize=lambda: Device().synchronize(), CUDARuntimeError=CUDARuntimeError,
        is_hip=False)


def namespace() -> types.ModuleType:
    cuda = types.ModuleType("cupy.cuda")
    runtime = types.ModuleType("cupy.cuda.runtime")
    runtime.__dict__.update(vars(_runtime()))
    cuda.__dict__.update(Device=Device, Stream=Stream, ExternalStream=Stream, Graph=Graph, MemoryPool=MemoryPool,
                         get_current_stream=get_current_stream, using_allocator=using_allocator, runtime=runtime,
                         Event=_streams.Event, alloc_pinned_memory=_streams.alloc_pinned_memory,
                         is_available=lambda: True, nccl=_nccl.module())
    return cuda
