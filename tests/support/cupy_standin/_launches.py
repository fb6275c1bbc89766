"""How many launches CuPy 14.2 makes for each of its routines that gpunn calls, read from its source
(tag v14.2.0; the file and function in each comment), so that the stand-in's launch counts are
CuPy's and not one per routine call.

``launches(name, args, kwargs, result)`` gives the (kind, label) of each device operation a routine
makes: a "kernel", or a "memory" operation (cudaMemsetAsync, cudaMemcpyAsync). CuPy's default
accelerator is CUB (``cupy/_core/_accelerator.pyx``, ``_set_default_accelerators``: CUPY_ACCELERATORS
defaults to "cub"), so sums, means, maxima and minima of contiguous arrays go through CUB.
"""

from __future__ import annotations

import numpy as np

#: The items one CUB DeviceReduce pass handles in its single-tile kernel. CUB runs one kernel when
#: the input fits one tile and two (per-block partials, then a single tile) otherwise
#: (cub/device/dispatch/dispatch_reduce.cuh, ``DispatchReduce::InvokePasses``). The tile size
#: depends on CUB's tuning policy for the GPU and dtype: this figure (256 threads × 16 items) is an
#: assumption of the stand-in, not read from CUB's policy tables.
CUB_SINGLE_TILE_ITEMS = 256 * 16

#: cupy/cuda/cub.pyx: CUB_sum_support_dtype (with half) and CUB_support_dtype.
_CUB_SUM = {np.dtype(t) for t in ("int64", "uint64", "float16", "float32", "float64", "complex64", "complex128")}
_CUB_OTHER = {np.dtype(t) for t in ("int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
                                    "float16", "float32", "float64", "complex64", "complex128")}

KERNEL, MEMORY = "kernel", "memory"


def _axes(axis, ndim):
    if axis is None:
        return tuple(range(ndim))
    axis = axis if isinstance(axis, (tuple, list)) else (axis,)
    return tuple(sorted(a % ndim for a in axis))


def _cub_reduction(host: np.ndarray, op: str, axis, dtype) -> list | None:
    """cupy/cuda/cub.pyx, ``cub_reduction``: None where CUB does not apply (CuPy then launches its
    own reduction kernel). A full reduction is DeviceReduce (``can_use_device_reduce``), a reduction
    over the trailing axes of a C-contiguous array (leading of an F-contiguous one) is
    DeviceSegmentedReduce, one kernel (``_cub_device_segmented_reduce_axis_compatible``); argmax has
    no segmented form."""
    if op == "argmax" and dtype is not None:
        return None
    if dtype is not None and np.dtype(dtype) != host.dtype:  # ``_cub_reduce_dtype_compatible``: no casts
        return None
    if host.dtype not in (_CUB_SUM if op == "sum" and dtype is None else _CUB_OTHER):
        return None
    if not (host.flags.c_contiguous or host.flags.f_contiguous):
        return None
    reduce_axes = _axes(axis, host.ndim)
    if len(reduce_axes) == host.ndim:
        passes = 1 if host.size <= CUB_SINGLE_TILE_ITEMS else 2
        return [(KERNEL, f"CUB DeviceReduce {op}")] * passes
    if op == "argmax":
        return None
    ndim = host.ndim
    trailing = reduce_axes == tuple(range(ndim - len(reduce_axes), ndim))
    leading = reduce_axes == tuple(range(len(reduce_axes)))
    if (host.flags.c_contiguous and trailing) or (not host.flags.c_contiguous and leading):
        return [(KERNEL, f"CUB DeviceSegmentedReduce {op}")]
    return None


def _reduction(host, op, kwargs) -> list:
    """_routines_math.pyx ``_ndarray_sum``, _routines_statistics.pyx ``_ndarray_max``/``_ndarray_min``/
    ``_ndarray_argmax``: CUB first, else CuPy's reduction kernel (one launch)."""
    return _cub_reduction(host, op, kwargs.get("axis"), kwargs.get("dtype")) or [(KERNEL, f"cupy_{op}")]


def _mean(host, kwargs) -> list:
    """_routines_statistics.pyx, ``_ndarray_mean``: a CUB sum then ``true_divide`` in place, else
    CuPy's ``_mean`` reduction; float16 input sums in float32 and ends with ``astype(float16)``."""
    dtype_sum = kwargs.get("dtype") or ("float32" if host.dtype == np.float16 else None)
    if host.dtype.kind in "iub" and kwargs.get("dtype") is None:
        dtype_sum = "float64"
    cub = _cub_reduction(host, "sum", kwargs.get("axis"), dtype_sum) if host.size else None
    steps = cub + [(KERNEL, "true_divide")] if cub else [(KERNEL, "cupy_mean")]
    if host.dtype == np.float16 and kwargs.get("dtype") is None and kwargs.get("out") is None:
        steps.append((KERNEL, "astype float16"))
    return steps


def _copyto(dst, src) -> list:
    """cupy/_manipulation/basic.py, ``copyto``: one cudaMemcpyAsync where ``_can_memcpy`` (both C- or
    both F-contiguous, one dtype, one size), else ``elementwise_copy`` (a kernel)."""
    if not isinstance(src, np.ndarray):
        return [(KERNEL, "elementwise_copy")]
    if dst.size == 0:
        return []
    same_layout = (dst.flags.c_contiguous and src.flags.c_contiguous) or (dst.flags.f_contiguous
                                                                          and src.flags.f_contiguous)
    if same_layout and dst.dtype == src.dtype and dst.size == src.size:
        return [(MEMORY, "memcpy device-to-device")]
    return [(KERNEL, "elementwise_copy")]


def _fill(host, value) -> list:
    """cupy/_core/core.pyx, ``ndarray.fill``: cudaMemsetAsync for zero into a C-contiguous array,
    else the ``cupy_fill`` kernel."""
    if np.all(np.asarray(value) == 0) and host.flags.c_contiguous:
        return [(MEMORY, "memset")]
    return [(KERNEL, "cupy_fill")]


def _setitem(host, key, value) -> list:
    """_routines_indexing.pyx, ``_scatter_op`` (op 'update') on a basic index: a device array of the
    same shape and strides into a C-contiguous target of its dtype is one cudaMemcpyAsync, another
    device array one ``elementwise_copy``, a host scalar ``fill``. An advanced index scatters (one
    kernel, after its index preparation: counted as one, a lower bound)."""
    target = host[key] if _basic(key) else None
    if target is None:
        return [(KERNEL, "cupy_scatter_update")]
    if isinstance(value, np.ndarray):
        if target.shape == value.shape and target.strides == value.strides:
            if target.__array_interface__["data"][0] == value.__array_interface__["data"][0]:
                return []
            if target.flags.c_contiguous and target.dtype == value.dtype:
                return [(MEMORY, "memcpy device-to-device")]
        return [(KERNEL, "elementwise_copy")]
    return _fill(target, value)


def _basic(key) -> bool:
    key = key if isinstance(key, tuple) else (key,)
    return all(k is None or k is Ellipsis or isinstance(k, (int, np.integer, slice)) for k in key)


def _take_along_axis(host, indices) -> list:
    """cupy/_indexing/indexing.py, ``take_along_axis``: one ``cupy.arange`` per other axis, then
    ``a[tuple(fancy_index)]`` (_routines_indexing.pyx, ``_getitem_multiple`` →
    ``_prepare_multiple_array_indexing``: ``reduced_idx.fill(0)``, a cudaMemsetAsync of an int64
    array, and one ``_prepare_array_indexing`` kernel per index array; then ``_take``'s kernel)."""
    ndim = host.ndim
    return ([(KERNEL, "cupy_arange")] * (ndim - 1) + [(MEMORY, "memset")]
            + [(KERNEL, "cupy_prepare_array_indexing")] * ndim + [(KERNEL, "cupy_take")])


def _getitem(host, key) -> list:
    """_routines_indexing.pyx, ``_ndarray_getitem``: one integer array is ``take`` (one kernel); a
    boolean mask (``_getitem_mask_single``: a scan of the mask, then a kernel) and several arrays
    take more: counted as one, a lower bound."""
    return [(KERNEL, "cupy_take")]


def launches(name: str, args, kwargs, host_args) -> list | None:
    """The launches of routine ``name`` called with host buffers ``host_args`` (None: not a
    routine this table knows; the caller counts one kernel, a ufunc's count)."""
    routine = name.rpartition(".")[2]
    first = host_args[0] if host_args else None
    if routine in ("sum", "max", "min", "argmax", "mean") and len(host_args) > 1:
        kwargs = {"axis": host_args[1], **kwargs}  # a.sum(1) as a.sum(axis=1)
    if routine in ("sum", "max", "min", "argmax") and isinstance(first, np.ndarray):
        return _reduction(first, routine, kwargs)
    if routine == "mean" and isinstance(first, np.ndarray):
        return _mean(first, kwargs)
    if routine == "copyto":
        return _copyto(host_args[0], host_args[1])
    if routine == "fill":
        return _fill(first, host_args[1])
    if routine == "__setitem__":
        return _setitem(first, host_args[1], host_args[2])
    if routine == "__getitem__":
        return _getitem(first, host_args[1])
    if routine == "take_along_axis":
        return _take_along_axis(first, host_args[1])
    if routine in ("copy", "astype", "ascontiguousarray"):
        return [(KERNEL, "elementwise_copy")]  # core.pyx, ``_astype`` → ``elementwise_copy``
    if routine == "ones":
        return [(KERNEL, "cupy_fill")]  # cupy/_creation/basic.py, ``ones``: ``empty`` then ``fill(1)``
    if routine == "take":
        return [(KERNEL, "cupy_take")]  # _routines_indexing.pyx, ``_take`` → ``_take_kernel``
    return None
