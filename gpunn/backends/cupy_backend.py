"""The CuPy backend: cuBLAS for the matmuls, our kernels in ``kernels/`` for the rest.

Each fused op is an ElementwiseKernel whose operation calls a function from ``kernels/*.cuh``
(the file's text is the preamble). Kernels are built at first use, once per op and dtype,
and CuPy's on-disk cache keeps the compiled code between processes. float16 storage computes
in float32 (the kernels' compute type, and cuBLAS's accumulation type).
"""

from __future__ import annotations

import os
import sys
from typing import Callable, NamedTuple

import cupy
import numpy

from ..kernel_source import kernel_source
from ..optim.rules import RULES
from . import cublas, get_matmul_precision
from .activations import REGISTRY
from .base import Backend, as_activation_function, refuse_complex

# Storage dtype -> (compute dtype name for kernel signatures, C++ compute type).
_COMPUTE = {"float16": ("float32", "float"), "float32": ("float32", "float"), "float64": ("float64", "double")}


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


def _launch(kernel, *inputs, out=None):
    """Run ``kernel``, into ``out`` when given (CuPy allocates the output otherwise)."""
    return kernel(*inputs) if out is None else kernel(*inputs, out)


def _require_device(*arrays) -> None:
    for array in arrays:
        if isinstance(array, numpy.ndarray):
            raise TypeError("got a NumPy array where the cupy backend needs a CuPy array; move it "
                            "with backend.asarray() first (mixing host and device arrays in one call)")


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
        self._unit_scale = None
        self._no_step: dict = {}
        self._default_scratch: dict = {}

    # --- arrays -------------------------------------------------------------------------
    @property
    def xp(self):
        return cupy

    def is_array(self, x) -> bool:
        return isinstance(x, cupy.ndarray)

    def asarray(self, x, dtype=None):
        refuse_complex(x, dtype)
        return cupy.asarray(x, dtype=dtype)

    def to_numpy(self, x):
        return cupy.asnumpy(x)

    def zeros(self, shape, dtype):
        return cupy.zeros(shape, dtype=dtype)

    def empty(self, shape, dtype):
        return cupy.empty(shape, dtype=dtype)

    def synchronize(self) -> None:
        cupy.cuda.get_current_stream().synchronize()

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
    def _dropout_arguments(self, dropout, columns: int) -> tuple:
        """(step, key words, threshold, skip, scale) for a kernel; no dropout is threshold 0,
        scale 1; ``skip`` (the shard's first element in its global batch) offsets the index."""
        if dropout is None:
            device = cupy.cuda.Device().id
            step = self._no_step.get(device)
            if step is None:
                step = self._no_step[device] = cupy.zeros((1,), numpy.uint64)
            return step, numpy.uint64(0), numpy.uint64(0), numpy.uint64(0), numpy.uint64(0), 1.0
        _require_device(dropout.step)
        low, high = dropout.key_words
        return (dropout.step, numpy.uint64(low), numpy.uint64(high), numpy.uint64(dropout.threshold),
                numpy.uint64(dropout.skip(columns)), dropout.scale)

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
        arguments = (z, bias, *self._dropout_arguments(dropout, z.shape[-1]), *function.values)
        if saved is None:
            return _launch(self._kernel("bias_activation", z.dtype, function.name), *arguments, out=out)
        if out is None:
            out = cupy.empty_like(saved)
        self._kernel("bias_activation_saving", z.dtype, function.name)(*arguments, out, saved)
        return out

    def keeps(self, activation, dtype) -> bool:
        """Nothing: the fused kernels are bandwidth-bound, so recomputing erf is free where reading
        a kept buffer would cost a pass."""
        return False

    def activation_backward(self, dy, saved, activation, out=None, dropout=None, kept=None):
        function = as_activation_function(activation)
        _require_device(dy, saved)
        return _launch(self._kernel("activation_backward", dy.dtype, function.name), dy, saved,
                       *self._dropout_arguments(dropout, dy.shape[-1]), *function.values, out=out)

    # --- layer normalisation: row statistics by ReductionKernels, the rest elementwise ----------
    def layer_norm_forward(self, x, gain, bias, eps: float, out, mean, rstd):
        _require_device(x, gain, bias, out, mean, rstd)
        cols = x.shape[1]
        self._kernel("layer_norm_mean", x.dtype)(x, cols, mean, axis=1)
        self._kernel("layer_norm_rstd", x.dtype)(x, mean.reshape(-1, 1), cols, eps, rstd, axis=1)
        return self._kernel("layer_norm_forward", x.dtype)(x, mean.reshape(-1, 1), rstd.reshape(-1, 1),
                                                          gain, bias, out)

    def layer_norm_backward(self, dy, x, gain, mean, rstd, out=None):
        _require_device(dy, x, gain, mean, rstd)
        cols, mean, rstd = x.shape[1], mean.reshape(-1, 1), rstd.reshape(-1, 1)
        mean_g = self._kernel("layer_norm_mean_g", x.dtype)(dy, gain, cols, axis=1)
        mean_g_xhat = self._kernel("layer_norm_mean_g_xhat", x.dtype)(dy, x, gain, mean, rstd, cols, axis=1)
        return _launch(self._kernel("layer_norm_backward", x.dtype), dy, x, gain, mean, rstd,
                       mean_g.reshape(-1, 1), mean_g_xhat.reshape(-1, 1), out=out)

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
        return _OptimizerScratch(cupy.empty((GRID_MAX_BLOCKS,), compute_dtype), cupy.zeros((2,), "uint32"))

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

    def global_norm(self, x, out, scratch=None):
        """√Σx² in one launch: each block sums a grid-strided part, and the last block to finish
        adds the blocks' sums in a fixed order (deterministic), so the norm never waits for a
        second launch and the whole GPU streams the gradient."""
        _require_device(x, out)
        scratch = self._scratch(scratch, out.dtype)
        self._kernel("gradient_norm", x.dtype)(x, x.size, scratch.partials, out, scratch.tickets,
                                               size=self._grid_threads(x.size), block_size=GRID_BLOCK)
        return out

    def optimizer_update(self, rule, param, grad, states, master, scalars, lr_table, norm, hyper, flag,
                         weight_decay: float, decay_end: int, max_norm: float, dynamic_scale: bool,
                         advance: bool = True, growth_interval: float = 2000.0, scratch=None) -> None:
        _require_device(param, grad, scalars, lr_table, norm, *states)
        op = f"update_{rule.name}" + ("_master" if master is not None else "")
        outputs = ([] if master is None else [master]) + [param, *states]
        tickets = self._scratch(scratch, norm.dtype).tickets
        self._kernel(op, param.dtype)(grad, grad.size, lr_table, lr_table.size, norm, max_norm, dynamic_scale,
                                      weight_decay, decay_end, *hyper, flag, advance, growth_interval, *outputs,
                                      scalars, tickets, size=self._grid_threads(grad.size), block_size=GRID_BLOCK)

    def _loss_scale(self, loss_scale):
        if loss_scale is not None:
            return loss_scale
        if self._unit_scale is None:
            self._unit_scale = cupy.ones((1,), "float64")
        return self._unit_scale

    def mse_grad(self, y, t, scale: float, loss_scale=None, out=None):
        _require_device(y, t)
        return _launch(self._kernel("mse_grad", y.dtype), y, t, scale, self._loss_scale(loss_scale), out=out)

    def bce_with_logits_loss(self, z, t):
        _require_device(z, t)
        return self._kernel("bce_with_logits_loss", z.dtype)(z, t)

    def bce_with_logits_grad(self, z, t, scale: float, loss_scale=None, out=None):
        _require_device(z, t)
        return _launch(self._kernel("bce_with_logits_grad", z.dtype), z, t, scale, self._loss_scale(loss_scale),
                       out=out)

    def softmax_cross_entropy_grad(self, z, log_sum_exp, labels, scale: float, loss_scale=None, out=None):
        _require_device(z, log_sum_exp, labels)
        return _launch(self._kernel("softmax_cross_entropy_grad", z.dtype), z,
                       log_sum_exp.reshape(-1, 1).astype(_COMPUTE[z.dtype.name][0], copy=False), labels.reshape(-1, 1),
                       z.shape[1], scale, self._loss_scale(loss_scale), out=out)

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


DROPOUT_PARAMETERS = ("raw uint64 dropout_step, uint64 dropout_k0, uint64 dropout_k1, uint64 dropout_threshold, "
                      "uint64 dropout_skip")
DROPOUT_CALL = "dropout_skip + i, dropout_step[0], dropout_k0, dropout_k1, dropout_threshold, dropout_scale"

# Layer normalisation's row and column sums. Every ReductionKernel here takes two or more inputs,
# so CuPy never swaps in its CUB block reduction (cupy/_core/_cub_reduction.pyx,
# _can_use_cub_block_reduction: "1 input and 1 output" only), whose post-map rewrites
# _in_ind.size(); the plain kernel reduces each output with a block of threads
# (_reduction.pyx, _get_block_specs) and writes into the given ``out`` without allocating.
_LAYER_NORM_REDUCTIONS = {
    # op: (inputs, output, map expression, post-map expression)
    "layer_norm_mean": ("T x, int64 cols", "{cn} mean", "({c}) x", "mean = a / ({c}) cols"),
    "layer_norm_rstd": ("T x, {cn} mean, int64 cols, {cn} eps", "{cn} rstd",
                        "(({c}) x - mean) * (({c}) x - mean)", "rstd = gpunn_layer_norm_rstd(a, ({c}) cols, eps)"),
    "layer_norm_mean_g": ("T dy, T gain, int64 cols", "{cn} mean_g", "({c}) dy * ({c}) gain",
                          "mean_g = a / ({c}) cols"),
    "layer_norm_mean_g_xhat": ("T dy, T x, T gain, {cn} mean, {cn} rstd, int64 cols", "{cn} mean_g_xhat",
                               "({c}) dy * ({c}) gain * ((({c}) x - mean) * rstd)", "mean_g_xhat = a / ({c}) cols"),
    "layer_norm_gain_gradient": ("T dy, T x, {cn} mean, {cn} rstd", "T dgain",
                                 "({c}) dy * ((({c}) x - mean) * rstd)", "dgain = (T) a"),
}


class _OptimizerScratch(NamedTuple):
    partials: object
    tickets: object


#: The optimizer's launches (the norm and the update): blocks of GRID_BLOCK threads (a power of
#: two, as gpunn_block_sum needs), at most GRID_MAX_BLOCKS of them striding over the buffer; 2048
#: blocks of 128 threads fill an H100 (132 SMs, 2048 resident threads each) once over.
GRID_BLOCK, GRID_MAX_BLOCKS = 128, 2048


class Arg(NamedTuple):
    """One argument as gpunn passes it at launch: an array of the batch's shape (``"array"``), a
    vector broadcast over the rows (``"row"``, a bias) or the columns (``"column"``), a scalar,
    a 1-d ``"raw"`` array the operation indexes itself, or a reduction's 2-d input reduced along
    each row (``"matrix"``) into a 1-d output (``"rows"``)."""
    dtype: str
    kind: str = "array"


class KernelSpec(NamedTuple):
    """A kernel the backend builds, once per variant (an activation, or ``""``) and storage dtype.

    ``arguments(variant, dtype)`` lists the launch's inputs then outputs, so that a test can generate the
    source CuPy will compile and compile it with NVRTC (tests/test_nvrtc_compile.py)."""
    build: Callable[[str, str], object]  # (variant, storage dtype) -> cupy kernel
    arguments: Callable[[str, str], tuple]  # (variant, storage dtype) -> (Arg, ...)
    variants: tuple[str, ...] = ("",)
    dtypes: tuple[str, ...] = tuple(_COMPUTE)


def _elementwise(in_params, out_params, operation, name, *files, **code):
    """An ElementwiseKernel calling functions of ``files``; ``code``: CuPy's loop_prep/after_loop."""
    return cupy.ElementwiseKernel(in_params, out_params, operation, name, preamble=kernel_source(*files), **code)


def _bce_with_logits_loss(_, dtype):
    compute_name, compute = _COMPUTE[dtype]
    return cupy.ReductionKernel(
        "T z, T t", f"{compute_name} loss", f"gpunn_bce_with_logits(({compute}) z, ({compute}) t)",
        "a + b", f"loss = a / ({compute}) (_in_ind.size() / _out_ind.size())", "0",
        "gpunn_bce_with_logits_mean_kernel", preamble=kernel_source("losses.cuh"))


def _loss_gradient(function: str):
    """A loss head's gradient ``function(y, t, scale·loss_scale)``, in the compute type: the
    mean's small factor and the float16 loss scale meet before anything is rounded to storage."""
    def build(_, dtype):
        compute_name, compute = _COMPUTE[dtype]
        return _elementwise(f"T y, T t, {compute_name} scale, raw float64 loss_scale", "T grad",
                            f"grad = (T) {function}(({compute}) y, ({compute}) t, scale * ({compute}) loss_scale[0])",
                            f"{function}_kernel", "losses.cuh")

    return build


def _softmax_cross_entropy_grad(_, dtype):
    compute_name, compute = _COMPUTE[dtype]
    return _elementwise(f"T z, {compute_name} lse, I label, int64 columns, {compute_name} scale, raw float64 loss_scale",
                        "T grad", f"grad = (T) gpunn_softmax_xent_grad(({compute}) z, lse, "
                        f"label == (I) (i % columns), scale * ({compute}) loss_scale[0])",
                        "gpunn_softmax_xent_grad_kernel", "losses.cuh")


def _update(rule, with_master: bool):
    """One rule's fused update over flat buffers: the learning rate from the device's table, the
    step and loss scale from its counters, unscale and clip, the rule, float16 rounding of masters.

    A capped grid strides over the buffer (CupyBackend._grid_threads), so the last-block ticket
    that advances the counters is taken by at most GRID_MAX_BLOCKS blocks, whatever the size."""
    states = list(rule.states)
    # The counters and the ticket are outputs: the last block writes them (CuPy's raw inputs are const).
    outputs = (["raw C master"] if with_master else []) + ["raw T p"] + [f"raw C {name}" for name in states] + \
        ["raw float64 scalars", "raw uint32 tickets"]
    arguments = ", ".join([f"{name}[k]" for name in states] + ["unused"] * (2 - len(states)))
    # Every thread reads this step's counters before its loop; they change only after every block
    # has taken its ticket (after_loop).
    prologue = """const C norm_value = norm[0];
        const bool skip = dynamic && !gpunn_isfinite(norm_value);
        const long long attempted = (long long) scalars[1];
        const C lr = (C) lr_table[attempted < lr_length ? attempted : lr_length - 1];
        const C step = (C) (scalars[0] + 1.0);
        const C loss_scale = (C) scalars[2]"""
    # A float16 parameter written from outside (assignment, a restored best epoch) no longer
    # equals its rounded master weight: the written value wins, so training never ignores it.
    operation = f"""
        for (ptrdiff_t k = i; k < n && !skip; k += _ind.size()) {{
            C grad = gpunn_effective_grad((C) g[k], loss_scale, norm_value, max_norm);
            C param = {"((T) master[k] == p[k]) ? master[k] : (C) p[k]" if with_master else "(C) p[k]"};
            C unused = C(0);
            {rule.function}(param, {arguments}, grad, lr, step, k < decay_end ? weight_decay : C(0), h0, h1, h2, flag);
            {"master[k] = param;" if with_master else ""}
            p[k] = (T) param;
        }}"""
    # ``advance`` is False for all but the last launch of a step updating its parameters in pieces.
    counters = ("if (advance && gpunn_last_block(&tickets[1]) && threadIdx.x == 0) "
                "gpunn_after_update(&scalars[0], norm_value, dynamic, growth_interval)")

    def build(_, dtype):
        return _elementwise(
            "raw T g, int64 n, raw float64 lr_table, int64 lr_length, raw C norm, C max_norm, bool dynamic, "
            "C weight_decay, int64 decay_end, C h0, C h1, C h2, bool flag, bool advance, float64 growth_interval",
            ", ".join(outputs), operation, f"{rule.function}_kernel", "optim.cuh", "grid.cuh", loop_prep=prologue,
            after_loop=counters)

    def arguments_for(_, dtype):
        compute = _compute_name(dtype)
        scalar = Arg(compute, "scalar")
        return (Arg(dtype, "raw"), Arg("int64", "scalar"), Arg("float64", "raw"), Arg("int64", "scalar"),
                Arg(compute, "raw"), scalar, Arg("bool", "scalar"), scalar, Arg("int64", "scalar"), scalar, scalar,
                scalar, Arg("bool", "scalar"), Arg("bool", "scalar"), Arg("float64", "scalar"),
                *([Arg(compute, "raw")] if with_master else []), Arg(dtype, "raw"),
                *(Arg(compute, "raw") for _ in states), Arg("float64", "raw"), Arg("uint32", "raw"))

    return KernelSpec(build, arguments_for, dtypes=("float16",) if with_master else ("float32", "float64"))


def _gradient_norm(_, dtype):
    """√Σx² of a flat buffer in one launch (see CupyBackend.global_norm)."""
    return _elementwise(
        "raw T x, int64 n", "raw C partials, raw C norm, raw uint32 tickets",
        "for (ptrdiff_t k = i; k < n; k += _ind.size()) { C value = (C) x[k]; thread_sum += value * value; }",
        "gpunn_gradient_norm_kernel", "math.cuh", "grid.cuh", loop_prep="C thread_sum = C(0)",
        after_loop=f"""C block_sum = gpunn_block_sum<{GRID_BLOCK}>(thread_sum);
        if (threadIdx.x == 0) partials[blockIdx.x] = block_sum;
        if (gpunn_last_block(&tickets[0])) {{
            volatile C* sums = &partials[0];  // written by other blocks: read past this SM's L1
            C total = C(0);
            for (unsigned int b = threadIdx.x; b < gridDim.x; b += blockDim.x) total += sums[b];
            total = gpunn_block_sum<{GRID_BLOCK}>(total);
            if (threadIdx.x == 0) norm[0] = gpunn_sqrt(total);
        }}""")


def _build_activation(op: str, name: str, compute_name: str, compute: str):
    """An activation kernel from its registry entry: parameters become scalar arguments."""
    kind = REGISTRY[name]
    parameters = "".join(f", {compute_name} {parameter}" for parameter, _ in kind.parameters)
    values = [parameter for parameter, _ in kind.parameters]
    inputs = f"T {'dy, T saved' if op == 'activation_backward' else 'z, T b'}, {DROPOUT_PARAMETERS}, " \
             f"{compute_name} dropout_scale{parameters}"
    preamble = kernel_source("activations.cuh", "dropout.cuh")
    if op == "activation_backward":
        kept = f"gpunn_dropout(({compute}) dy, {DROPOUT_CALL})"
        return cupy.ElementwiseKernel(inputs, "T dz", f"dz = (T) {kind.backward_call(kept, f'({compute}) saved', values)}",
                                      f"gpunn_{name}_backward_kernel", preamble=preamble)
    forward = f"{compute} a = {kind.forward_call('pre', values)}; y = (T) gpunn_dropout(a, {DROPOUT_CALL});"
    if op == "bias_activation":
        return cupy.ElementwiseKernel(inputs, "T y", f"{compute} pre = ({compute}) z + ({compute}) b; {forward}",
                                      f"gpunn_bias_{name}_kernel", preamble=preamble)
    return cupy.ElementwiseKernel(
        inputs, "T y, T saved",
        f"{compute} pre = ({compute}) z + ({compute}) b; {forward} saved = (T) {'pre' if kind.reads_input else 'a'};",
        f"gpunn_bias_{name}_saving_kernel", preamble=preamble)


def _activation(op):
    def build(name, dtype):
        compute_name, compute = _COMPUTE[dtype]
        return _build_activation(op, name, compute_name, compute)

    def arguments(name, dtype):
        compute = _compute_name(dtype)
        parameters = tuple(Arg(compute, "scalar") for _ in REGISTRY[name].parameters)
        inputs = (Arg(dtype), Arg(dtype) if op == "activation_backward" else Arg(dtype, "row"),
                  Arg("uint64", "raw"), *(Arg("uint64", "scalar") for _ in range(4)), Arg(compute, "scalar"),
                  *parameters)
        return inputs + ((Arg(dtype), Arg(dtype)) if op == "bias_activation_saving" else (Arg(dtype),))

    return KernelSpec(build, arguments, tuple(REGISTRY))


def _layer_norm_reduction(op):
    def build(_, dtype):
        compute_name, compute = _COMPUTE[dtype]
        inputs, output, map_expression, post_map = (text.format(cn=compute_name, c=compute)
                                                    for text in _LAYER_NORM_REDUCTIONS[op])
        return cupy.ReductionKernel(inputs, output, map_expression, "a + b", post_map, "0", f"gpunn_{op}_kernel",
                                    reduce_type=compute, preamble=kernel_source("layer_norm.cuh"))

    def arguments(_, dtype):
        compute = _compute_name(dtype)
        kinds = {"T": lambda name: Arg(dtype, "row" if name == "gain" else "matrix"),
                 "{cn}": lambda name: Arg(compute, "column" if name in ("mean", "rstd") else "scalar"),
                 "int64": lambda name: Arg("int64", "scalar")}
        inputs, output = _LAYER_NORM_REDUCTIONS[op][:2]
        parsed = [kinds[kind](name) for kind, name in (item.split() for item in inputs.split(", "))]
        result_type = dtype if output.startswith("T ") else compute
        return (*parsed, Arg(result_type, "rows"))

    return KernelSpec(build, arguments)


def _layer_norm_forward(_, dtype):
    compute_name, compute = _COMPUTE[dtype]
    return _elementwise(f"T x, {compute_name} mean, {compute_name} rstd, T gain, T bias", "T y",
                        f"y = (T) gpunn_layer_norm_forward(({compute}) x, mean, rstd, ({compute}) gain, ({compute}) bias)",
                        "gpunn_layer_norm_forward_kernel", "layer_norm.cuh")


def _layer_norm_backward(_, dtype):
    compute_name, compute = _COMPUTE[dtype]
    return _elementwise(f"T dy, T x, T gain, {compute_name} mean, {compute_name} rstd, {compute_name} mean_g, "
                        f"{compute_name} mean_g_xhat", "T dx",
                        f"dx = (T) gpunn_layer_norm_backward(({compute}) dy, ({compute}) x, ({compute}) gain, mean, "
                        "rstd, mean_g, mean_g_xhat)", "gpunn_layer_norm_backward_kernel", "layer_norm.cuh")


def _compute_name(dtype):
    return _COMPUTE[dtype][0]


#: Every kernel the backend builds. A new fused op is one entry here (and its ``.cuh`` function):
#: the backend builds it through ``_build`` and the NVRTC test compiles every variant and dtype.
KERNELS: dict[str, KernelSpec] = {
    **{op: _activation(op) for op in ("bias_activation", "bias_activation_saving", "activation_backward")},
    **{op: _layer_norm_reduction(op) for op in _LAYER_NORM_REDUCTIONS},
    "layer_norm_forward": KernelSpec(_layer_norm_forward, lambda v, d: (
        Arg(d), Arg(_compute_name(d), "column"), Arg(_compute_name(d), "column"), Arg(d, "row"), Arg(d, "row"), Arg(d))),
    "layer_norm_backward": KernelSpec(_layer_norm_backward, lambda v, d: (
        Arg(d), Arg(d), Arg(d, "row"), *(Arg(_compute_name(d), "column") for _ in range(4)), Arg(d))),
    **{f"update_{name}{suffix}": _update(rule, bool(suffix)) for name, rule in RULES.items()
       for suffix in ("", "_master")},
    "gradient_norm": KernelSpec(_gradient_norm, lambda v, d: (
        Arg(d, "raw"), Arg("int64", "scalar"), Arg(_compute_name(d), "raw"), Arg(_compute_name(d), "raw"),
        Arg("uint32", "raw"))),
    "mse_grad": KernelSpec(_loss_gradient("gpunn_mse_grad"), lambda v, d: (Arg(d), Arg(d), Arg(_compute_name(d), "scalar"),
                                                 Arg("float64", "raw"), Arg(d))),
    "bce_with_logits_loss": KernelSpec(_bce_with_logits_loss, lambda v, d: (Arg(d), Arg(d), Arg(_compute_name(d)))),
    "bce_with_logits_grad": KernelSpec(
        _loss_gradient("gpunn_bce_with_logits_grad"), lambda v, d: (Arg(d), Arg(d), Arg(_compute_name(d), "scalar"), Arg("float64", "raw"),
                                          Arg(d))),
    "softmax_cross_entropy_grad": KernelSpec(
        _softmax_cross_entropy_grad, lambda v, d: (Arg(d), Arg(_compute_name(d), "column"), Arg("int64", "column"),
                                                Arg("int64", "scalar"), Arg(_compute_name(d), "scalar"),
                                                Arg("float64", "raw"), Arg(d))),
}


def kernel_catalogue():
    """``(op, variant, dtype)`` for every kernel the backend can build."""
    return [(op, variant, dtype) for op, spec in KERNELS.items() for variant in spec.variants for dtype in spec.dtypes]


def _build(op: str, variant: str, dtype: str):
    """One kernel for one op, variant and storage dtype; its operation calls a kernels/*.cuh function."""
    spec = KERNELS.get(op)
    if spec is None:
        raise ValueError(f"unknown kernel {op!r}; known: {sorted(KERNELS)}")
    return spec.build(variant, dtype)
