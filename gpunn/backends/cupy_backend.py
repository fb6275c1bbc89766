"""The CuPy backend: cuBLAS for the matmuls, our kernels in ``kernels/`` for the rest.

Each fused op is an ElementwiseKernel whose operation calls a function from ``kernels/*.cuh``
(the file's text is the preamble). Kernels are built at first use, once per op and dtype,
and CuPy's on-disk cache keeps the compiled code between processes. float16 storage computes
in float32 (the kernels' compute type, and cuBLAS's accumulation type).
"""

from __future__ import annotations

import os
import sys
from typing import NamedTuple

import cupy
import numpy

from gpunn.backends import cublas, cupy_staging
from gpunn.backends.base import (DLPACK_CPU, DLPACK_CUDA, DLPACK_CUDA_MANAGED, DROPOUT_LANES, DROPOUT_TILE, Backend,
                                as_activation_function, device_name, dlpack_device, host_view, refuse_complex)
from gpunn.backends.cupy_kernels import _COMPUTE, GRID_BLOCK, GRID_MAX_BLOCKS, VECTOR_DTYPES, VECTOR_WIDTHS, _build
from gpunn.backends.precision import get_matmul_precision
from gpunn.kernels.update_rules import SEGMENT_FIELDS


def _check_cache_dir() -> None:
    """CuPy writes compiled kernels to its cache; say so clearly when it cannot."""
    folder = os.environ.get("CUPY_CACHE_DIR") or os.path.expanduser("~/.cupy/kernel_cache")
    try:
        os.makedirs(folder, exist_ok=True)
        probe = os.path.join(folder, f".gpunn-write-test-{os.getpid()}")
        with open(probe, "w"):
            pass
        os.unlink(probe)
    except OSError as error:
        raise RuntimeError(f"CuPy's kernel cache directory {folder} is not writable ({error}); "
                           "set CUPY_CACHE_DIR to a writable directory") from error


def _require_shape(shape, **arrays) -> None:
    """The group kernels index flat raw arrays: one of another shape would be read or written
    past its end, where CuPy's broadcasting refused it."""
    for name, array in arrays.items():
        if array is not None and array.shape != shape:
            raise ValueError(f"{name} has shape {array.shape}, expected {shape}")


def _require_device(*arrays) -> None:
    for array in arrays:
        if isinstance(array, numpy.ndarray):
            raise TypeError("got a NumPy array where the cupy backend needs a CuPy array; move it "
                            "with backend.asarray() first (mixing host and device arrays in one call)")


class _OptimizerScratch(NamedTuple):
    partials: object
    tickets: object
    #: The segment table of a norm over a whole buffer: passed with a count of 0, never read.
    no_segments: object


def _aligned(width: int, *arrays) -> bool:
    """Whether every array starts on a ``width``-element boundary, as a vector load of ``width``
    elements (kernels/vector.cuh) needs: a GPU faults on a misaligned one."""
    return all(array.data.ptr % (width * array.itemsize) == 0 for array in arrays)


class CupyBackend(Backend):
    name = "cupy"
    supported_dtypes = ("float16", "float32", "float64")

    supports_graphs = True

    def __init__(self):
        self._kernels: dict = {}
        self._cache_checked = False
        self._tf32_capable = None
        self._cublas_library = None
        self._cublas_handles: dict = {}
        self._workspaces: dict = {}
        self._ones: dict = {}
        self._unit_scales: dict = {}
        self._no_step: dict = {}
        self._scalar_bias: dict = {}
        self._default_scratch: dict = {}

    # --- arrays -------------------------------------------------------------------------
    @property
    def xp(self):
        return cupy

    def is_array(self, x) -> bool:
        return isinstance(x, cupy.ndarray)

    def asarray(self, x, dtype=None):
        device = dlpack_device(x)
        if device is not None and not isinstance(x, cupy.ndarray):
            x = self._from_dlpack(x, device)
        refuse_complex(x, dtype)
        return cupy.asarray(x, dtype=dtype)

    @staticmethod
    def _from_dlpack(x, device):
        """A foreign array (PyTorch, JAX) on this device as a CuPy array sharing its memory; a CPU one as a
        NumPy view, copied to the device as NumPy input is. cupy.from_dlpack (CuPy 14.2,
        cupy/_core/dlpack.pyx) takes CUDA and managed memory and hands the producer CuPy's current
        stream; it refuses CPU memory, and would switch devices for memory on another GPU."""
        if device[0] == DLPACK_CPU:
            return host_view(x)
        if device[0] not in (DLPACK_CUDA, DLPACK_CUDA_MANAGED):
            raise ValueError(f"the array is on {device_name(device)}, which the cupy backend cannot read: move it "
                             "to the GPU or the CPU first")
        here = cupy.cuda.Device().id
        if device[1] != here:
            raise ValueError(f"the array is on {device_name(device)} but the model is on cuda:{here}: move it "
                             f"(PyTorch: .to('cuda:{here}')) or build the model under cupy.cuda.Device({device[1]})")
        return cupy.from_dlpack(x)

    def to_numpy(self, x):
        return cupy.asnumpy(x)

    def zeros(self, shape, dtype):
        return cupy.zeros(shape, dtype=dtype)

    def empty(self, shape, dtype):
        return cupy.empty(shape, dtype=dtype)

    def synchronize(self) -> None:
        cupy.cuda.get_current_stream().synchronize()

    def host_buffer(self, shape, dtype):
        return cupy_staging.pinned_empty(shape, dtype)

    def device_batches(self, batches):
        return cupy_staging.device_batches(batches)

    # --- matmuls: our own cuBLAS calls (capturable), transposes as flags, no copies ---------
    def _cublas(self):
        """This device's cuBLAS handle, made at first use with its workspace."""
        device = cupy.cuda.Device().id
        handle = self._cublas_handles.get(device)
        if handle is None:
            if self._cublas_library is None:
                self._cublas_library = cublas.load_library(cupy.cuda.runtime.runtimeGetVersion() // 1000)
            workspace = cupy.empty(cublas.WORKSPACE_BYTES, dtype=numpy.uint8)
            handle = cublas.CublasHandle(self._cublas_library, workspace.data.ptr, workspace.nbytes)
            self._cublas_handles[device] = handle
            self._workspaces[device] = workspace
        return handle

    def _compute_type(self, dtype) -> int:
        if dtype == numpy.float64:
            return cublas.COMPUTE_64F
        if dtype == numpy.float32 and get_matmul_precision() == "tf32":
            if self._tf32_capable is None:
                capability = int(cupy.cuda.Device().compute_capability)
                if capability < 80:
                    raise ValueError(f"matmul precision 'tf32' needs compute capability 8.0 or newer; "
                                     f"this GPU has {capability / 10:.1f}")
                self._tf32_capable = True
            return cublas.COMPUTE_32F_FAST_TF32
        return cublas.COMPUTE_32F  # float32, and float16 storage with float32 accumulation

    def _gemm(self, kind: str, a, b, out):
        _require_device(a, b)
        if a.dtype != b.dtype:
            raise TypeError(f"matmul: operands have dtypes {a.dtype} and {b.dtype}; a model holds one dtype")
        if a.dtype.name not in cublas.DATA_TYPES:
            raise TypeError(f"matmul: dtype {a.dtype} is not supported; expected one of {tuple(cublas.DATA_TYPES)}")
        a, b = cupy.ascontiguousarray(a), cupy.ascontiguousarray(b)
        layout = cublas.row_major_gemm(kind, a.shape, b.shape)
        shape = layout[0]
        if out is None:
            out = cupy.empty(shape, a.dtype)
        elif out.shape != shape or out.dtype != a.dtype or not out.flags.c_contiguous:
            raise ValueError(f"matmul: out must be a C-contiguous {a.dtype} array of shape {shape}, got "
                             f"{out.dtype} {out.shape}{'' if out.flags.c_contiguous else ' (not contiguous)'}")
        if out.size:
            self._cublas().gemm(layout, a.data.ptr, b.data.ptr, out.data.ptr, cublas.DATA_TYPES[a.dtype.name],
                                self._compute_type(a.dtype), cupy.cuda.get_current_stream().ptr)
        return out

    def matmul(self, a, b, out=None):
        return self._gemm("nn", a, b, out)

    def matmul_nt(self, a, b, out=None):
        return self._gemm("nt", a, b, out)

    def matmul_tn(self, a, b, out=None):
        return self._gemm("tn", a, b, out)

    # --- kernels ------------------------------------------------------------------------
    def _dropout_arguments(self, dropout, shape) -> tuple:
        """(groups, first group, n, step, key words, threshold, skip, scale) for a group kernel
        (kernels/dropout.cuh): the dropout groups of the tiles that hold this launch's elements
        [skip, skip + n); no dropout is threshold 0, scale 1."""
        n = int(numpy.prod(shape))
        skip = dropout.skip(shape[-1] if shape else 1) if dropout is not None else 0
        first_tile, last_tile = skip // DROPOUT_TILE, (skip + n - 1) // DROPOUT_TILE
        groups = (last_tile - first_tile + 1) * DROPOUT_LANES
        head = (groups, numpy.uint64(first_tile * DROPOUT_LANES), numpy.uint64(n))
        if dropout is None:
            device = cupy.cuda.Device().id
            step = self._no_step.get(device)
            if step is None:
                step = self._no_step[device] = cupy.zeros((1,), numpy.uint64)
            return (*head, step, numpy.uint64(0), numpy.uint64(0), numpy.uint32(0), numpy.uint64(0), 1.0)
        _require_device(dropout.step)
        low, high = dropout.key_words
        return (*head, dropout.step, numpy.uint64(low), numpy.uint64(high), numpy.uint32(dropout.threshold),
                numpy.uint64(skip), dropout.scale)

    def _bias_row(self, bias, z):
        """The bias as a flat device array and the column count the kernel reads it by. A scalar (the
        Dropout and activation layers pass 0) is a row of four copies read as four columns: every
        element's column holds the value, and the vector builds, which need the column count to
        be a multiple of their width, can run."""
        if isinstance(bias, cupy.ndarray):
            if bias.dtype != z.dtype:
                raise TypeError(f"bias_activation: bias dtype {bias.dtype} differs from the input's {z.dtype}")
            return cupy.ascontiguousarray(bias).reshape(-1), bias.size
        device = cupy.cuda.Device().id
        key = (device, z.dtype.name, float(bias))
        row = self._scalar_bias.get(key)
        if row is None:
            row = self._scalar_bias[key] = cupy.full((4,), bias, z.dtype)
        return row, 4

    def _kernel(self, op: str, dtype, activation: str = ""):
        key = (op, activation, numpy.dtype(dtype).name)
        kernel = self._kernels.get(key)
        if kernel is None:
            if not self._cache_checked:
                _check_cache_dir()
                self._cache_checked = True
            kernel = self._kernels[key] = _build(op, activation, numpy.dtype(dtype).name)
        return kernel

    def bias_activation(self, z, bias, activation, out=None, saved=None, dropout=None, kept=None):
        function = as_activation_function(activation)
        _require_device(z, bias)
        _require_shape(z.shape, out=out, saved=saved)
        if isinstance(bias, cupy.ndarray) and bias.size not in (1, z.shape[-1] if z.ndim else 1):
            raise ValueError(f"bias has shape {bias.shape}; it must broadcast over the rows of {z.shape}")
        z = cupy.ascontiguousarray(z)
        if z.size == 0:
            return cupy.empty_like(z) if out is None else out
        row, columns = self._bias_row(bias, z)
        groups, *launch = self._dropout_arguments(dropout, z.shape)
        arguments = (z.reshape(-1), row, numpy.uint32(columns), numpy.uint32(DROPOUT_LANES % columns), *launch,
                     *function.values)
        results = [out if out is not None else cupy.empty_like(z)] + ([] if saved is None else [saved])
        flat = [result if result.flags.c_contiguous else cupy.empty_like(z) for result in results]
        op = "bias_activation" if saved is None else "bias_activation_saving"
        self._activation_launch(op, function.name, groups, launch, (z, row, *flat), arguments,
                                tuple(a.reshape(-1) for a in flat), columns)
        for result, written in zip(results, flat):
            if result is not written:
                result[...] = written
        return results[0]

    def _activation_launch(self, op, activation, groups, launch, vectors, inputs, outputs, columns=None):
        """Launch a fused activation kernel (cupy_kernels._build_activation) over its dropout
        ``groups``: its widest vector build (``_quads``, a thread per four neighbouring groups, or
        ``_pairs``, two) whose width divides the launch's element count, its first element's global
        index (skip) and the number of ``columns`` whose values it reads (the forward's bias), and
        to whose width every element and column buffer in ``vectors`` is aligned, so that no vector
        straddles the launch's edge or a row's end; else (and for float64: cupy_kernels.VECTOR_DTYPES)
        a thread per group."""
        n, skip, dtype = int(launch[1]), int(launch[6]), vectors[0].dtype
        fits = [width for width in VECTOR_WIDTHS if dtype.name in VECTOR_DTYPES and n % width == skip % width == 0
                and (columns is None or columns % width == 0)
                and _aligned(width, *vectors)]
        width = max(fits, default=1)
        self._kernel(op + VECTOR_WIDTHS.get(width, ""), dtype, activation)(*inputs, *outputs, size=groups // width)

    def keeps(self, activation, dtype) -> bool:
        """Nothing: the fused kernels are bandwidth-bound, so recomputing erf is free where reading
        a kept buffer would cost a pass."""
        return False

    def activation_backward(self, dy, saved, activation, out=None, dropout=None, kept=None):
        function = as_activation_function(activation)
        _require_device(dy, saved)
        _require_shape(dy.shape, saved=saved, out=out)
        dy, saved = cupy.ascontiguousarray(dy), cupy.ascontiguousarray(saved)
        result = cupy.empty_like(dy) if out is None else out
        if dy.size == 0:
            return result
        written = result if result.flags.c_contiguous else cupy.empty_like(dy)
        groups, *launch = self._dropout_arguments(dropout, dy.shape)
        self._activation_launch("activation_backward", function.name, groups, launch, (dy, saved, written),
                                (dy.reshape(-1), saved.reshape(-1), *launch, *function.values), (written.reshape(-1),))
        if written is not result:
            result[...] = written
        return result

    # --- layer normalisation: row statistics by ReductionKernels, the rest elementwise ----------
    def layer_norm_forward(self, x, gain, bias, eps: float, out, mean, rstd):
        _require_device(x, gain, bias, out, mean, rstd)
        cols = x.shape[1]
        self._kernel("layer_norm_mean", x.dtype)(x, cols, mean, axis=1)
        self._kernel("layer_norm_rstd", x.dtype)(x, mean.reshape(-1, 1), cols, eps, rstd, axis=1)
        return self._rows_launch("layer_norm_forward", x, (x, mean, rstd, gain, bias), "arrcc", out)

    def layer_norm_backward(self, dy, x, gain, mean, rstd, out=None):
        _require_device(dy, x, gain, mean, rstd)
        cols, mean2, rstd2 = x.shape[1], mean.reshape(-1, 1), rstd.reshape(-1, 1)
        mean_g = self._kernel("layer_norm_mean_g", x.dtype)(dy, gain, cols, axis=1)
        mean_g_xhat = self._kernel("layer_norm_mean_g_xhat", x.dtype)(dy, x, gain, mean2, rstd2, cols, axis=1)
        return self._rows_launch("layer_norm_backward", x, (dy, x, mean, rstd, mean_g, mean_g_xhat, gain),
                                 "aarrrrc", out)

    def layer_norm_gain_gradient(self, dy, x, mean, rstd, out=None):
        _require_device(dy, x, mean, rstd)
        kernel = self._kernel("layer_norm_gain_gradient", x.dtype)
        return kernel(dy, x, mean.reshape(-1, 1), rstd.reshape(-1, 1), axis=0, out=out)

    def bias_gradient(self, dz, out=None):
        """dzᵀ·1 as a cuBLAS matrix-vector product: coalesced, and float32 accumulation for float16."""
        _require_device(dz)
        key = (cupy.cuda.Device().id, dz.shape[0], dz.dtype.name)
        ones = self._ones.get(key)
        if ones is None:
            ones = self._ones[key] = cupy.ones((dz.shape[0], 1), dz.dtype)
        if out is None:
            out = cupy.empty((dz.shape[1],), dz.dtype)
        self._gemm("tn", dz, ones, out.reshape(-1, 1))
        return out

    # --- optimizers -----------------------------------------------------------------------
    def optimizer_scratch(self, compute_dtype):
        """Per optimizer: the norm kernel's partial sums (one per block) and two tickets, the
        norm's and the update's, for their last blocks (kernels/grid.cuh)."""
        return _OptimizerScratch(cupy.empty((GRID_MAX_BLOCKS,), compute_dtype), cupy.zeros((2,), "uint32"),
                                 cupy.zeros((SEGMENT_FIELDS,), "int64"))

    def _scratch(self, scratch, compute_dtype):
        """The caller's scratch, or one kept per device and dtype: never freed, so a graph that
        records a launch with it stays valid (an optimizer always passes its own)."""
        if scratch is not None:
            return scratch
        key = (cupy.cuda.Device().id, numpy.dtype(compute_dtype).name)
        if key not in self._default_scratch:
            self._default_scratch[key] = self.optimizer_scratch(compute_dtype)
        return self._default_scratch[key]

    @staticmethod
    def _grid_threads(size: int) -> int:
        """Threads of a grid-strided launch over ``size`` elements: whole GRID_BLOCK-thread blocks
        (at least one, so an empty buffer still gets its result), at most GRID_MAX_BLOCKS."""
        return GRID_BLOCK * max(1, min(GRID_MAX_BLOCKS, -(-size // GRID_BLOCK)))

    def global_norm(self, x, out, scratch=None, segments=None):
        """√Σx² in one launch: each block sums a grid-strided part, and the last block to finish
        adds the blocks' sums in a fixed order (deterministic), so the norm never waits for a
        second launch and the whole GPU streams the gradient."""
        _require_device(x, out)
        scratch = self._scratch(scratch, out.dtype)
        if segments is None:  # every element
            segments, count = scratch.no_segments, 0
        else:
            _require_device(segments)
            count = segments.size // SEGMENT_FIELDS
        # float16 in pairs where x is aligned to two elements (cupy_kernels._NORM_PAIRS)
        pairs = x.dtype.name == "float16" and _aligned(2, x)
        self._kernel("gradient_norm_pairs" if pairs else "gradient_norm", x.dtype)(
            x, x.size, segments, count, scratch.partials, out, scratch.tickets,
            size=self._grid_threads(-(-x.size // 2) if pairs else x.size), block_size=GRID_BLOCK)
        return out

    def optimizer_update(self, rule, param, grad, states, master, scalars, lr_table, norm, hyper, flag,
                         weight_decay: float, decay_end: int, max_norm: float, dynamic_scale: bool, segments, steps,
                         growth_interval: float = 2000.0, scratch=None) -> None:
        _require_device(param, grad, scalars, lr_table, norm, segments, steps, *states)
        op = f"update_{rule.name}" + ("_master" if master is not None else "")
        outputs = ([] if master is None else [master]) + [param, *states]
        tickets = self._scratch(scratch, norm.dtype).tickets
        self._kernel(op, param.dtype)(grad, grad.size, lr_table, lr_table.size, norm, max_norm, dynamic_scale,
                                      weight_decay, decay_end, *hyper, flag, segments, steps.size, growth_interval,
                                      *outputs, scalars, steps, tickets, size=self._grid_threads(grad.size),
                                      block_size=GRID_BLOCK)

    def _loss_scale(self, loss_scale):
        if loss_scale is not None:
            return loss_scale
        device = cupy.cuda.Device().id  # one per device: a kernel refuses another device's array
        if device not in self._unit_scales:
            self._unit_scales[device] = cupy.ones((1,), "float64")
        return self._unit_scales[device]

    def mse_grad(self, y, t, scale: float, loss_scale=None, out=None):
        _require_device(y, t)
        return self._loss_gradient("mse_grad", y, t, scale, loss_scale, out)

    def bce_with_logits_loss(self, z, t):
        _require_device(z, t)
        return self._kernel("bce_with_logits_loss", z.dtype)(z, t)

    def bce_with_logits_grad(self, z, t, scale: float, loss_scale=None, out=None):
        _require_device(z, t)
        return self._loss_gradient("bce_with_logits_grad", z, t, scale, loss_scale, out)

    def _loss_gradient(self, op, y, t, scale, loss_scale, out):
        """An elementwise loss gradient as a rows kernel over rows of the last axis (a target that
        broadcasts to ``y`` is expanded first, as CuPy's broadcasting did)."""
        _require_shape(y.shape, out=out)
        result = cupy.empty_like(y) if out is None else out
        if y.size == 0:
            return result
        t = t if t.shape == y.shape else cupy.broadcast_to(t, y.shape)
        matrix = (-1, y.shape[-1]) if y.ndim else (1, 1)
        into = result.reshape(matrix) if result.flags.c_contiguous else None
        rows = cupy.ascontiguousarray(y).reshape(matrix)
        written = self._rows_launch(op, rows, (rows, t.reshape(matrix), scale, self._loss_scale(loss_scale)), "aa..",
                                    into)
        if into is None:
            result[...] = written.reshape(y.shape)
        return result

    def softmax_cross_entropy_grad(self, z, log_sum_exp, labels, scale: float, loss_scale=None, out=None):
        _require_device(z, log_sum_exp, labels)
        return self._rows_launch("softmax_cross_entropy_grad", z,
                                 (z, log_sum_exp.astype(_COMPUTE[z.dtype.name][0], copy=False), labels, scale,
                                  self._loss_scale(loss_scale)), "arr..", out)

    def _rows_launch(self, op, like, inputs, layout, out):
        """A kernel of cupy_kernels._rows_kernel over the 2-d ``like``: ``inputs`` as flat C-contiguous
        arrays, each checked against its letter in ``layout`` (``a``: ``like``'s shape, ``r``: one
        value per row, ``c``: one per column, ``.``: a scalar or a device scalar, passed as it is),
        since the kernel indexes them raw where CuPy's broadcasting refused a wrong shape. The result
        goes to ``out`` (through a contiguous buffer if ``out`` is not). With an even number of
        columns and every per-element and per-column buffer aligned to two elements, the "pairs"
        variant moves two neighbouring elements per load and store."""
        rows, columns = like.shape
        if max(rows, columns) >= 2 ** 31:
            raise ValueError(f"{op}: shape {like.shape} has 2**31 rows or columns or more; the kernel counts them in "
                             "32 bits: split the batch")
        flat = []
        for position, (array, letter) in enumerate(zip(inputs, layout)):
            if letter != ".":
                wanted = {"a": like.shape, "r": (rows,), "c": (columns,)}[letter]
                if (array.shape if letter == "a" else (array.size,)) != wanted:
                    raise ValueError(f"{op}: argument {position} has shape {array.shape}, expected {wanted}")
                array = cupy.ascontiguousarray(array).reshape(-1)
            flat.append(array)
        _require_shape(like.shape, out=out)
        result = cupy.empty_like(like) if out is None else out
        if like.size == 0:
            return result
        written = result if result.flags.c_contiguous else cupy.empty_like(like)
        vectors = [array for array, letter in zip(flat, layout) if letter in "ac"] + [written]
        pairs = columns % 2 == 0 and _aligned(2, *vectors)
        per_row = columns // 2 if pairs else columns
        threads = per_row * max(1, min(rows, GRID_BLOCK * GRID_MAX_BLOCKS // per_row))
        self._kernel(op, like.dtype, "pairs" if pairs else "")(*flat, numpy.uint32(rows), numpy.uint32(columns),
                                                               written.reshape(-1), size=threads, block_size=GRID_BLOCK)
        if written is not result:
            result[...] = written
        return result

    # --- whole-step capture ------------------------------------------------------------------
    def capture(self, step, previous=None):
        """Run ``step`` once on a private stream and memory pool, then record it as a CUDA graph.

        ``previous`` (a graph this backend recorded, now stale) hands over its stream and pool and
        can no longer replay: its blocks serve the new recording, so recording again allocates no
        new device memory. A graph's blocks are freed when it is dropped: CuPy 14.1+ never frees
        the cached blocks of a dropped MemoryPool (cupy PR #9437; cupy/cuda/memory.pyx, _Arena).

        Allocations while recording (the loss heads' temporaries) come from the private pool, which
        the eager run filled with blocks of the same sizes; the recorded kernels keep their
        addresses, and no other code draws from that pool while the graph lives.
        """
        self._cublas()  # the handle and its workspace outlive every graph: made outside the pool
        memory = previous.take_memory() if previous is not None else _GraphMemory()
        cupy.cuda.Device().synchronize()  # work queued on other streams (the inputs) is done
        try:
            with cupy.cuda.using_allocator(memory.pool.malloc), memory.stream:
                result = step()
                memory.stream.begin_capture()
                _Graph.capturing = True
                try:
                    try:
                        output = step()
                    except BaseException as error:
                        try:
                            memory.stream.end_capture()
                        except Exception:  # a failed step often invalidates the capture: its error is the one to see
                            pass
                        raise error
                    graph = memory.stream.end_capture()
                finally:
                    _Graph.capturing = False
            memory.stream.synchronize()
        except BaseException:
            memory.release()
            raise
        finally:
            for handle in self._cublas_handles.values():  # cuBLAS keeps the last stream it was given
                handle.forget_stream(memory.stream.ptr)
            while _Graph.deferred:
                _Graph.deferred.pop().release()
        return result, _Graph(graph, memory, output)


class _GraphMemory:
    """A private stream and memory pool: one per recorded step, reused by each of its recordings."""

    def __init__(self):
        self.stream, self.pool = cupy.cuda.Stream(non_blocking=True), cupy.cuda.MemoryPool()

    def release(self) -> None:
        """Free the pool's cached blocks once no queued replay can still use them."""
        cupy.cuda.Device().synchronize()
        self.pool.free_all_blocks()


class _Graph:
    """A captured step: replaying it queues the recorded kernels on the current stream.

    A graph dropped while another step is being captured (garbage collection runs anywhere) may not
    free its pool then: that synchronises the device, which invalidates the capture. Its memory
    waits in ``deferred`` until the capture ends."""

    capturing = False
    deferred: list = []

    def __init__(self, graph, memory, output):
        self._graph, self._memory, self.output = graph, memory, output

    def replay(self) -> None:
        self._graph.launch(cupy.cuda.get_current_stream())

    def take_memory(self) -> _GraphMemory:
        """Give this graph's stream and pool to a new recording; this graph is dropped."""
        memory, self._memory = self._memory, None
        self._graph = self.output = None  # the output's block goes back to the pool
        return memory

    def __del__(self):
        memory = getattr(self, "_memory", None)
        if memory is not None and not sys.is_finalizing():
            self._graph = self.output = None
            if _Graph.capturing:
                _Graph.deferred.append(memory)
            else:
                memory.release()

