"""The ``cupy`` module the stand-in installs: CuPy's names that gpunn and its tests use, made
from NumPy's (any NumPy routine becomes a device routine), plus the kernels and ``cupy.cuda``."""

from __future__ import annotations

import numpy as np

from support.cupy_standin import _cuda
from support.cupy_standin._array import Namespace, device_call, ndarray
from support.cupy_standin._device import current
from support.cupy_standin._kernels import ElementwiseKernel, ReductionKernel


def _host_to_device(value, dtype=None, order="C") -> ndarray:
    device = current()
    device.refuse_during_capture("a host-to-device copy", device.current_stream())
    host = np.array(value, dtype=dtype, order=order if order in ("C", "F") else "C")
    array = ndarray._of(host)
    device.launch("memory", "memcpy host-to-device", lambda: None, writes=(host,))
    return array


def asarray(a, dtype=None, order=None, *, blocking=False):
    """A device array of ``a``: the same array when nothing changes, else a copy (host data moves)."""
    if isinstance(a, ndarray):
        if dtype is None or np.dtype(dtype) == a.dtype:
            return a
        return a.astype(dtype)
    return _host_to_device(a, dtype, order or "C")


def array(obj, dtype=None, copy=True, order="K", ndmin=0, *, blocking=False):
    if isinstance(obj, ndarray):
        return obj.astype(dtype or obj.dtype, copy=True) if copy else asarray(obj, dtype)
    return _host_to_device(obj, dtype, order)


def asnumpy(a, stream=None, order="C", out=None, *, blocking=True):
    if isinstance(a, ndarray):  # cupy/_creation/from_data.py, asnumpy: a.get(stream, order, out, blocking)
        return a.get(stream=stream, order=order, out=out, blocking=blocking)
    return np.asarray(a, order=order)


def ascontiguousarray(a, dtype=None):
    if isinstance(a, ndarray) and a.flags.c_contiguous and (dtype is None or np.dtype(dtype) == a.dtype):
        return a
    return device_call("cupy.ascontiguousarray", np.ascontiguousarray, (a,), {"dtype": dtype})


def empty(shape, dtype=float, order="C"):
    return ndarray(shape, dtype, order)  # an allocation launches nothing


def empty_like(prototype, dtype=None, order="K", subok=None, shape=None):
    return ndarray(prototype.shape if shape is None else shape, dtype or prototype.dtype)


def _memset(array: ndarray) -> ndarray:
    host = array._host
    current().launch("memory", "memset", lambda: host.fill(0), writes=(host,))
    return array


def zeros(shape, dtype=float, order="C"):
    return _memset(ndarray(shape, dtype, order))  # CuPy: cudaMemsetAsync, not a kernel


def zeros_like(prototype, dtype=None, order="K", subok=None, shape=None):
    return _memset(empty_like(prototype, dtype, order, subok, shape))


def get_array_module(*args):
    return module


class _DefaultPool(_cuda.MemoryPool):
    """``cupy.get_default_memory_pool()``: the device's default pool (``_pool.py``)."""

    def __init__(self):
        self._state = current().default_pool


class _PinnedPool:
    """``cupy.get_default_pinned_memory_pool()``: host memory, not modelled."""

    def used_bytes(self) -> int:
        return 0

    def total_bytes(self) -> int:
        return 0

    def free_all_blocks(self) -> None:
        return None


def get_default_memory_pool():
    return _DefaultPool()


def get_default_pinned_memory_pool():
    return _PinnedPool()


def build() -> Namespace:
    """A fresh ``cupy`` module object and its ``cupy.cuda`` submodules."""
    cupy = Namespace("cupy", np)
    cupy.__dict__.update(
        __version__="14.2.0", __standin__=True, ndarray=ndarray, ElementwiseKernel=ElementwiseKernel,
        ReductionKernel=ReductionKernel, asarray=asarray, array=array, asnumpy=asnumpy,
        ascontiguousarray=ascontiguousarray, empty=empty, empty_like=empty_like, zeros=zeros,
        zeros_like=zeros_like, get_array_module=get_array_module, get_default_memory_pool=get_default_memory_pool,
        get_default_pinned_memory_pool=get_default_pinned_memory_pool, cuda=_cuda.namespace())
    return cupy


module = build()
