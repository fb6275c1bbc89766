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
from . import get_matmul_precision
from .base import Backend, check_activation

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

    def __init__(self):
        self._kernels: dict = {}
        self._precision_applied = None
        self._cache_checked = False

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

    # --- matmuls: cupy.dot hands transposed views to cuBLAS as transpose flags, no copies ---
    def _apply_precision(self) -> None:
        precision = get_matmul_precision()
        if precision == self._precision_applied:
            return
        from cupy._core import _routines_linalg as linalg

        if precision == "tf32":
            capability = int(cupy.cuda.Device().compute_capability)
            if capability < 80:
                raise ValueError(f"matmul precision 'tf32' needs compute capability 8.0 or newer; "
                                 f"this GPU has {capability / 10:.1f}")
            linalg.set_compute_type(numpy.float32, linalg.COMPUTE_TYPE_TF32)
        else:
            linalg.set_compute_type(numpy.float32, linalg.COMPUTE_TYPE_DEFAULT)
        self._precision_applied = precision

    def matmul(self, a, b, out=None):
        _require_device(a, b)
        self._apply_precision()
        return cupy.dot(a, b, out=out)

    def matmul_nt(self, a, b, out=None):
        _require_device(a, b)
        self._apply_precision()
        return cupy.dot(a, b.T, out=out)

    def matmul_tn(self, a, b, out=None):
        _require_device(a, b)
        self._apply_precision()
        return cupy.dot(a.T, b, out=out)

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
        _require_device(dz)
        return cupy.sum(dz, axis=0, out=out)

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
