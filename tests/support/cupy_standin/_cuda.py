"""``cupy.cuda``: the machine's devices, streams and events, stream capture into a graph,
memory pools that count bytes.

Streams and events order work as the device's model says (``_device.Device``); a capture records
the launches queued on the captured stream, and its graph replays them in order on the same
buffers, on the stream it is launched on (ordered there like any launch). Capture follows relaxed
mode (CuPy's default), plus one rule of the stand-in: an allocation from another pool than the
capture's fails. Memory pools are ``_pool.py``'s model of CuPy's.
"""

from __future__ import annotations

import contextlib
import itertools
import types

from support.cupy_standin import _nccl, _pool, _streams
from support.cupy_standin._device import Capture, StandinViolation, current

_pointers = itertools.count(0x5000)


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
        machine = current()
        machine.refuse_during_capture("cudaDeviceSynchronize")
        machine.synchronize_all()

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
    """What ``Stream.end_capture`` returns: the recorded launches, replayed in order on the stream
    it is launched on, as one launch that reads and writes what they read and write."""

    def __init__(self, recorded: list):
        self.recorded = recorded

    def launch(self, stream=None) -> None:
        machine = current()
        ptr = (stream or get_current_stream()).ptr
        reads = [host for *_, launch_reads, _ in self.recorded for host in launch_reads]
        writes = [host for *_, launch_writes in self.recorded for host in launch_writes]
        machine.launches.append(("graph", f"graph of {len(self.recorded)} launches"))
        machine.run_on(ptr, self._replay, reads, writes, "a graph launch")

    def _replay(self) -> None:
        for _, _, replay, _, _ in self.recorded:
            replay()

    def upload(self, stream=None) -> None:
        return None


class Event:
    """``cupy.cuda.Event``: ``record`` marks the work queued so far on a stream; waiting for it
    (``Stream.wait_event``) orders a later launch of another stream after that work, and
    ``synchronize``/``query`` tell the host it is complete."""

    def __init__(self, block=False, disable_timing=False, interprocess=False):
        self.ptr, self._mark = next(_pointers), None
        self.covers, self.stream_ptr, self.when = [], None, -1  # the queued copies it covers (_streams.py)

    def record(self, stream=None) -> None:
        stream = stream or get_current_stream()
        self._mark = (stream.ptr, current().issued.get(stream.ptr, 0))
        _streams.recorded(self, stream.ptr)

    def synchronize(self) -> None:
        if self._mark is not None:
            machine = current()
            machine.refuse_during_capture("cudaEventSynchronize", self._mark[0])
            machine.completed[self._mark[0]] = max(machine.completed.get(self._mark[0], 0), self._mark[1])
        _streams.completed(self)

    def query(self) -> bool:
        """Done: the stand-in ran the work at its launch, so a query finds it complete."""
        self.synchronize()
        return True

    done = property(query)


class Stream:
    """``cupy.cuda.Stream``: a context that makes itself current (per device, as CuPy keeps one
    current stream per device); captures on request. ``null`` is the legacy default stream."""

    null = None

    def __init__(self, null=False, non_blocking=False, ptds=False):
        self.ptr = 0 if null else next(_pointers)
        self.non_blocking = non_blocking
        self._capturing = False

    def _register(self, machine) -> None:
        machine.blocking.setdefault(self.ptr, not self.non_blocking)

    def __enter__(self):
        machine = current()
        self._register(machine)
        machine.stream_stack.append(self)
        return self

    def __exit__(self, *exc_info):
        current().stream_stack.pop()

    def use(self):
        self.__enter__()
        return self

    def synchronize(self) -> None:
        machine = current()
        machine.refuse_during_capture("cudaStreamSynchronize of the capturing stream", self.ptr)
        machine.synchronize_stream(self.ptr)
        _streams.synchronize(self.ptr)

    @property
    def done(self) -> bool:
        self.synchronize()
        return True

    def record(self, event=None) -> Event:
        event = event or Event()
        event.record(self)
        return event

    def wait_event(self, event) -> None:
        """cudaStreamWaitEvent: this stream's later work runs after the event's."""
        if event._mark is not None:
            machine, (source, number) = current(), event._mark
            key = (self.ptr, source)
            machine.waits[key] = max(machine.waits.get(key, 0), number)
        _streams.waited(self.ptr, event)

    def begin_capture(self, mode=None) -> None:
        """stream.pyx, Stream.begin_capture: never the legacy stream; relaxed mode."""
        machine = current()
        if self.ptr in (0, 1):
            raise RuntimeError("cannot capture on the default (legacy) stream")
        if machine.capture is not None:
            raise StandinViolation("a stream is already being captured")
        self._register(machine)
        machine.capture = Capture(self.ptr, machine.allocators[-1] if machine.allocators else None)
        self._capturing = True

    def is_capturing(self) -> bool:
        return self._capturing

    def end_capture(self) -> Graph:
        machine = current()
        if not self._capturing:
            raise StandinViolation("end_capture on a stream that is not capturing")
        capture, machine.capture, self._capturing = machine.capture, None, False
        return Graph(capture.launches)


Stream.null = Stream(null=True)


def get_current_stream(device_id=None) -> Stream:
    stack = current().stream_stack
    return stack[-1] if stack else Stream.null


class MemoryPool:
    """``cupy.cuda.MemoryPool``: ``_pool.py``'s model of CuPy's pool; its state outlives it."""

    def __init__(self, allocator=None):
        self._state = _pool.PoolState(current())
        _pool.watch(self, self._state)

    def malloc(self, size: int):
        raise StandinViolation("the stand-in allocates through arrays; pass pool.malloc to using_allocator")

    def used_bytes(self) -> int:
        return self._state.in_use

    def total_bytes(self) -> int:
        return self._state.total

    def free_bytes(self) -> int:
        return self._state.total - self._state.in_use

    def free_all_blocks(self, stream=None) -> None:
        self._state.free_all_blocks()


@contextlib.contextmanager
def using_allocator(allocator=None):
    """cupy.cuda.memory.using_allocator: arrays made inside take their memory from the pool whose
    ``malloc`` is given (the default pool for None or any other allocator)."""
    owner = getattr(allocator, "__self__", None)
    machine = current()
    machine.allocators.append(owner._state if isinstance(owner, MemoryPool) else machine.default_pool)
    try:
        yield
    finally:
        machine.allocators.pop()


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
    cuda.__dict__.update(Device=Device, Stream=Stream, ExternalStream=Stream, Graph=Graph, MemoryPool=MemoryPool, Event=Event,
                         get_current_stream=get_current_stream, using_allocator=using_allocator, runtime=runtime,
                         alloc_pinned_memory=_streams.alloc_pinned_memory,
                         is_available=lambda: True, nccl=_nccl.module())
    return cuda
