"""A stand-in for the CuPy that gpunn's CuPy backend uses, so that the backend's own Python code
runs on a machine without a GPU (every CI run).

``with installed() as standin:`` makes ``import cupy`` return the stand-in, re-imports
``gpunn.backends.cupy_backend`` on it, hands gpunn's cuBLAS loader a NumPy model of the library,
and restores everything afterwards (nothing leaks into other tests).

What it runs for real:
  * ``ElementwiseKernel`` / ``ReductionKernel``: the operation, preamble and typedefs that CuPy
    would compile, compiled as host C++ (g++, or $CXX) and run over the arrays' memory, with
    CuPy 14.2's argument rules ported from its source (``_kernels.py`` cites the lines);
  * the ``cublasGemmEx`` calls gpunn makes, received argument by argument as ctypes passes them
    and computed by a column-major NumPy BLAS through the raw pointers (``_blas.py``);
  * CuPy's generic routines (ufuncs, reductions, indexing, copies) through NumPy, behind CuPy's
    device wall: no implicit conversion to NumPy, NumPy arrays refused as device operands.
Every device operation is logged (kernel, cuBLAS call, memset/memcpy, graph launch), which gives
the launch counts of a training step (``Standin.count``).

  * several devices (``installed(devices=N)``): each array remembers its device, and a kernel, a
    routine, a cuBLAS call or an NCCL collective that gets another device's memory fails
    (``_nccl.py`` models one rank's communicator, bound to the device current at its creation).
  * streams (``_device.py``): launches queue on the current stream and memory remembers the stream
    that last wrote it; an access from another stream without an event after that write, or a host
    read of work another stream has not finished, fails (``StandinViolation``);
  * stream capture in CuPy's relaxed mode (``_cuda.py``): a device or captured-stream
    synchronisation, a blocking copy, or an allocation outside the capture's pool fails; the graph
    replays the recorded launches in order on the stream it is launched on;
  * memory pools (``_pool.py``): CuPy 14.2's pool block by block (best fit, split, merge, what
    ``free_all_blocks`` frees and what a dropped pool keeps); ``device.held_bytes()``;
  * launch counts per CuPy routine as CuPy's source launches them (``_launches.py``).
What it cannot show (the GPU run, ``benchmarks/gpu_check.sh``, still owes these):
  * races and overlap: launches still run one at a time, in order (inside a launch,
    ``installed(block_threads=True)`` runs each block's threads as host threads, so a block's
    barriers and shared memory are real; blocks run in turn); the stand-in finds missing order, it
    does not reproduce what a race would compute. The one exception is host-to-device copies from
    pinned memory (``_streams.py``): queued on their stream until a launch ordered after them by an
    event reads their destination, failing a launch that reads one before its stream waited for it,
    a pinned source changed before the host waited for its copy, or a copy over a buffer another
    stream may still read;
  * CUDA graphs themselves: instantiation errors, graph memory addresses, upload; and a recorded
    launch keeps its arrays alive here (its host memory must stay valid), where a CUDA graph keeps
    nothing: an array gpunn forgot to keep alive for its graph goes unnoticed;
  * the driver's allocator: cudaMalloc's fragmentation, the async allocator, how pinned host memory
    is allocated;
  * cuBLAS itself: its kernels, TF32 rounding (``COMPUTE_32F_FAST_TF32`` computes in float32
    here), workspace use and the library loading (the model replaces ``load_library``);
  * the device compiler: NVRTC's parsing, device-only intrinsics, FMA contraction (the GPU may
    fuse a·b+c; the host build does not), float16 arithmetic of ``__half`` intrinsics;
  * performance: nothing here is timed; the launch counts feed a model, not a measurement.
"""

from __future__ import annotations

import contextlib
import gc
import sys
from collections import Counter

from support.cupy_standin import _device
from support.cupy_standin._blas import CublasLibrary, column_major, column_major_gemm
from support.cupy_standin._device import KINDS, Device, StandinViolation
from support.cupy_standin._namespace import module

#: The backend's modules that import CuPy: re-imported on the stand-in, restored afterwards.
BACKEND_MODULES = ("gpunn.backends.cupy_backend", "gpunn.backends.cupy_kernels", "gpunn.backends.cupy_staging")
_MODULES = ("cupy", "cupy.cuda", "cupy.cuda.runtime", "cupy.cuda.nccl")


class Standin:
    """The installed stand-in: its device (launch log) and its cuBLAS model (call log)."""

    def __init__(self, device: Device, cublas: CublasLibrary):
        self.device, self.cublas, self.cupy = device, cublas, module

    def count(self, work) -> Counter:
        """Run ``work()`` and return its device operations per kind (see ``KINDS``)."""
        start = len(self.device.launches)
        work()
        return self.device.count(start)


def _forget_nccl_probe() -> None:
    """gpunn caches whether NCCL loads (once per process); the stand-in's NCCL comes and goes."""
    transports = sys.modules.get("gpunn.distributed.transports")
    if transports is not None:
        transports.nccl_unavailable_reason.cache_clear()


@contextlib.contextmanager
def installed(block_threads: bool = False, devices: int = 1):
    """Run the block with the stand-in as ``cupy`` and gpunn's CuPy backend imported on it.

    The machine has ``devices`` GPUs, device 0 current: arrays remember the device they were
    allocated on, and kernels, CuPy's routines, the cuBLAS model and the NCCL stand-in refuse an
    array or pointer of another device than theirs (CuPy's ``_check_peer_access``).

    A kernel whose threads work together (code around its loop: kernels/grid.cuh) runs on CuPy's
    grid of blocks; with ``block_threads`` each block has CuPy's threads, as host threads meeting
    at every ``__syncthreads`` (exact, and slow: for tests of that code), otherwise one thread."""
    import gpunn.backends as package  # a re-import of a submodule rebinds the package's attribute of that name
    from gpunn.backends import cublas
    from gpunn.backends import selection as backends

    saved = {name: sys.modules.get(name) for name in _MODULES + BACKEND_MODULES}
    attributes = [name.rpartition(".")[2] for name in BACKEND_MODULES]
    saved_attributes = {name: package.__dict__.get(name) for name in attributes}
    saved_loader = cublas.load_library
    saved_backend = backends._current.get()  # a `use_backend(...)` without `with` inside must not leak
    device, library = Device(block_threads, devices), CublasLibrary()
    sys.modules.update({"cupy": module, "cupy.cuda": module.cuda, "cupy.cuda.runtime": module.cuda.runtime,
                        "cupy.cuda.nccl": module.cuda.nccl})
    _forget_nccl_probe()
    for name in BACKEND_MODULES:  # imported afresh on the stand-in, by `import` and `from ... import` alike
        sys.modules.pop(name, None)
    for name in attributes:
        package.__dict__.pop(name, None)
    cublas.load_library = lambda runtime_major: library  # the wheel search is tests/backends/test_cublas_loading.py's
    _device._current.append(device)
    backends._instance.cache_clear()  # the cached "cupy" backend must be built on the stand-in
    try:
        yield Standin(device, library)
    finally:
        # What died inside the block (a dropped graph frees its pool) goes now, on this device,
        # not later inside another installation's stream capture.
        gc.collect()
        _device._current.pop()
        _forget_nccl_probe()
        cublas.load_library = saved_loader
        for name, value in saved.items():
            if value is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = value
        for name, value in saved_attributes.items():
            if value is None:
                package.__dict__.pop(name, None)
            else:
                setattr(package, name, value)
        backends._instance.cache_clear()
        backends._current.set(saved_backend)


__all__ = ["KINDS", "CublasLibrary", "Standin", "StandinViolation", "column_major", "column_major_gemm",
           "installed"]
