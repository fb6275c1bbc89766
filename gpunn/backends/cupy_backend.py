"""The CuPy backend: cuBLAS for the matmuls, our kernels in ``kernels/`` for the rest.

Each fused op is an ElementwiseKernel whose operation calls a function from ``kernels/*.cuh``
(the file's text is the preamble). Kernels are built at first use, once per op and dtype,
and CuPy's on-disk cache keeps the compiled code between processes. float16 storage computes
in float32 (the kernels' compute type, and cuBLAS's accumulation type).
"""

from __future__ import annotations

import os

import cupy
import numpy

from ..kernel_source import kernel_source
from . import cublas, get_matmul_precision
from .activations import REGISTRY
from .base import Backend, as_activation_function

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
        self._no_step: dict = {}

    # --- arrays -------------------------------------------------------------------------
    @property
    def xp(self):
        return cupy

    def is_array(self, x) -> bool:
        return isinstance(x, cupy.ndarray)

    def asarray(self, x, dtype=None):
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
                self._cublas_library = cublas.load_library()
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
    def _dropout_arguments(self, dropout) -> tuple:
        """(step, key words, threshold, scale) for a kernel; no dropout is threshold 0, scale 1."""
        if dropout is None:
            device = cupy.cuda.Device().id
            step = self._no_step.get(device)
            if step is None:
                step = self._no_step[device] = cupy.zeros((1,), numpy.uint64)
            return step, numpy.uint64(0), numpy.uint64(0), numpy.uint64(0), 1.0
        _require_device(dropout.step)
        low, high = dropout.key_words
        return (dropout.step, numpy.uint64(low), numpy.uint64(high), numpy.uint64(dropout.threshold),
                dropout.scale)

    def _kernel(self, op: str, dtype, activation: str = ""):
        key = (op, activation, numpy.dtype(dtype).name)
        kernel = self._kernels.get(key)
        if kernel is None:
            if not self._cache_checked:
                _check_cache_dir()
                self._cache_checked = True
            kernel = self._kernels[key] = _build(op, activation, numpy.dtype(dtype).name)
        return kernel

    def bias_activation(self, z, bias, activation, out=None, saved=None, dropout=None):
        function = as_activation_function(activation)
        _require_device(z, bias)
        arguments = (z, bias, *self._dropout_arguments(dropout), *function.values)
        if saved is None:
            return _launch(self._kernel("bias_activation", z.dtype, function.name), *arguments, out=out)
        if out is None:
            out = cupy.empty_like(saved)
        self._kernel("bias_activation_saving", z.dtype, function.name)(*arguments, out, saved)
        return out

    def activation_backward(self, dy, saved, activation, out=None, dropout=None):
        function = as_activation_function(activation)
        _require_device(dy, saved)
        return _launch(self._kernel("activation_backward", dy.dtype, function.name), dy, saved,
                       *self._dropout_arguments(dropout), *function.values, out=out)

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

    def sgd_update(self, param, grad, velocity, lr: float, momentum: float) -> None:
        _require_device(param, grad)
        if velocity is None:
            self._kernel("sgd", param.dtype)(grad, lr, param)
        else:
            self._kernel("sgd_momentum", param.dtype)(grad, lr, momentum, param, velocity)

    def bce_with_logits_loss(self, z, t):
        _require_device(z, t)
        return self._kernel("bce_with_logits_loss", z.dtype)(z, t)

    def bce_with_logits_grad(self, z, t, scale: float, out=None):
        _require_device(z, t)
        return _launch(self._kernel("bce_with_logits_grad", z.dtype), z, t, scale, out=out)

    def softmax_cross_entropy_grad(self, z, log_sum_exp, labels, scale: float, out=None):
        _require_device(z, log_sum_exp, labels)
        return _launch(self._kernel("softmax_cross_entropy_grad", z.dtype), z,
                       log_sum_exp.reshape(-1, 1).astype(z.dtype, copy=False), labels.reshape(-1, 1),
                       z.shape[1], scale, out=out)

    # --- whole-step capture ------------------------------------------------------------------
    def capture(self, step):
        """Run ``step`` once on a private stream and memory pool, then record it as a CUDA graph.

        The eager run fills the private pool with the step's temporaries, so recording allocates
        nothing new, and no other code ever draws from that pool: the addresses baked into the
        graph stay the graph's for as long as it lives.
        """
        stream, pool = cupy.cuda.Stream(non_blocking=True), cupy.cuda.MemoryPool()
        cupy.cuda.Device().synchronize()  # work queued on other streams (the inputs) is done
        with cupy.cuda.using_allocator(pool.malloc), stream:
            result = step()
            stream.begin_capture()
            try:
                output = step()
            except BaseException:
                stream.end_capture()
                raise
            graph = stream.end_capture()
        stream.synchronize()
        return result, _Graph(graph, pool, output)


class _Graph:
    """A captured step: replaying it queues the recorded kernels on the current stream."""

    def __init__(self, graph, pool, output):
        self._graph, self._pool, self.output = graph, pool, output

    def replay(self) -> None:
        self._graph.launch(cupy.cuda.get_current_stream())


DROPOUT_PARAMETERS = "raw uint64 dropout_step, uint64 dropout_k0, uint64 dropout_k1, uint64 dropout_threshold"
DROPOUT_CALL = "i, dropout_step[0], dropout_k0, dropout_k1, dropout_threshold, dropout_scale"

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


def kernel_catalogue() -> list[tuple[str, str]]:
    """Every (op, activation) that ``_build`` makes: the kernel-definition tests walk it."""
    per_activation = [(op, name) for op in ("bias_activation", "bias_activation_saving", "activation_backward")
                      for name in REGISTRY]
    plain = ["sgd", "sgd_momentum", "bce_with_logits_loss", "bce_with_logits_grad", "softmax_cross_entropy_grad",
             "layer_norm_forward", "layer_norm_backward", *_LAYER_NORM_REDUCTIONS]
    return per_activation + [(op, "") for op in plain]


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
                                      f"gpunn_{name}_backward", preamble=preamble)
    forward = f"{compute} a = {kind.forward_call('pre', values)}; y = (T) gpunn_dropout(a, {DROPOUT_CALL});"
    if op == "bias_activation":
        return cupy.ElementwiseKernel(inputs, "T y", f"{compute} pre = ({compute}) z + ({compute}) b; {forward}",
                                      f"gpunn_bias_{name}", preamble=preamble)
    return cupy.ElementwiseKernel(
        inputs, "T y, T saved",
        f"{compute} pre = ({compute}) z + ({compute}) b; {forward} saved = (T) {'pre' if kind.reads_input else 'a'};",
        f"gpunn_bias_{name}_saving", preamble=preamble)


def _build(op: str, activation: str, dtype: str):
    """One kernel for one op and storage dtype; its operation calls a kernels/*.cuh function."""
    compute_name, compute = _COMPUTE[dtype]
    if op in ("bias_activation", "bias_activation_saving", "activation_backward"):
        return _build_activation(op, activation, compute_name, compute)
    if op in _LAYER_NORM_REDUCTIONS:
        inputs, output, map_expression, post_map = (text.format(cn=compute_name, c=compute)
                                                    for text in _LAYER_NORM_REDUCTIONS[op])
        return cupy.ReductionKernel(inputs, output, map_expression, "a + b", post_map, "0", f"gpunn_{op}",
                                    reduce_type=compute, preamble=kernel_source("layer_norm.cuh"))
    if op == "layer_norm_forward":
        return cupy.ElementwiseKernel(
            f"T x, {compute_name} mean, {compute_name} rstd, T gain, T bias", "T y",
            f"y = (T) gpunn_layer_norm_forward(({compute}) x, mean, rstd, ({compute}) gain, ({compute}) bias)",
            "gpunn_layer_norm_forward", preamble=kernel_source("layer_norm.cuh"))
    if op == "layer_norm_backward":
        return cupy.ElementwiseKernel(
            f"T dy, T x, T gain, {compute_name} mean, {compute_name} rstd, {compute_name} mean_g, "
            f"{compute_name} mean_g_xhat", "T dx",
            f"dx = (T) gpunn_layer_norm_backward(({compute}) dy, ({compute}) x, ({compute}) gain, mean, rstd, "
            "mean_g, mean_g_xhat)", "gpunn_layer_norm_backward", preamble=kernel_source("layer_norm.cuh"))
    if op == "sgd":
        return cupy.ElementwiseKernel(
            f"T g, {compute_name} lr", "T p", f"p = (T) gpunn_sgd_step(({compute}) p, ({compute}) g, lr)",
            "gpunn_sgd_step", preamble=kernel_source("sgd.cuh"))
    if op == "sgd_momentum":
        return cupy.ElementwiseKernel(
            f"T g, {compute_name} lr, {compute_name} momentum", "T p, T v",
            f"{compute} pc = p, vc = v; gpunn_sgd_momentum_step(pc, vc, ({compute}) g, lr, momentum); "
            "p = (T) pc; v = (T) vc;",
            "gpunn_sgd_momentum_step", preamble=kernel_source("sgd.cuh"))
    if op == "bce_with_logits_loss":
        return cupy.ReductionKernel(
            "T z, T t", f"{compute_name} loss", f"gpunn_bce_with_logits(({compute}) z, ({compute}) t)",
            "a + b", f"loss = a / ({compute}) (_in_ind.size() / _out_ind.size())", "0",
            "gpunn_bce_with_logits_mean", preamble=kernel_source("losses.cuh"))
    if op == "bce_with_logits_grad":
        return cupy.ElementwiseKernel(
            f"T z, T t, {compute_name} scale", "T grad",
            f"grad = (T) gpunn_bce_with_logits_grad(({compute}) z, ({compute}) t, scale)",
            "gpunn_bce_with_logits_grad", preamble=kernel_source("losses.cuh"))
    if op == "softmax_cross_entropy_grad":
        return cupy.ElementwiseKernel(
            f"T z, T lse, I label, int64 columns, {compute_name} scale", "T grad",
            f"grad = (T) gpunn_softmax_xent_grad(({compute}) z, ({compute}) lse, "
            "label == (I) (i % columns), scale)",
            "gpunn_softmax_xent_grad", preamble=kernel_source("losses.cuh"))
    raise ValueError(f"unknown kernel {op!r}")
