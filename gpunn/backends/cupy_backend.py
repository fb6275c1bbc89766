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
from .base import Backend, check_activation, refuse_complex

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
    def _kernel(self, op: str, dtype, activation: str = ""):
        key = (op, activation, numpy.dtype(dtype).name)
        kernel = self._kernels.get(key)
        if kernel is None:
            if not self._cache_checked:
                _check_cache_dir()
                self._cache_checked = True
            kernel = self._kernels[key] = _build(op, activation, numpy.dtype(dtype).name)
        return kernel

    def bias_activation(self, z, bias, activation: str, out=None):
        check_activation(activation)
        _require_device(z, bias)
        return _launch(self._kernel("bias_activation", z.dtype, activation), z, bias, out=out)

    def activation_backward(self, dy, y, activation: str, out=None):
        check_activation(activation)
        _require_device(dy, y)
        return _launch(self._kernel("activation_backward", dy.dtype, activation), dy, y, out=out)

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


def _build(op: str, activation: str, dtype: str):
    """One kernel for one op and storage dtype; its operation calls a kernels/*.cuh function."""
    compute_name, compute = _COMPUTE[dtype]
    if op == "bias_activation":
        return cupy.ElementwiseKernel(
            "T z, T b", "T y", f"y = (T) gpunn_{activation}_forward(({compute}) z + ({compute}) b)",
            f"gpunn_bias_{activation}", preamble=kernel_source("activations.cuh"))
    if op == "activation_backward":
        return cupy.ElementwiseKernel(
            "T dy, T y", "T dz", f"dz = (T) gpunn_{activation}_backward(({compute}) dy, ({compute}) y)",
            f"gpunn_{activation}_backward", preamble=kernel_source("activations.cuh"))
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
