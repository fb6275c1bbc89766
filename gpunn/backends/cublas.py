"""cuBLAS GEMMs through ctypes, for the CuPy backend.

CuPy 14 refuses its own cuBLAS wrappers while a stream is being captured into a CUDA graph
("calling cuBLAS API during stream capture is currently unsupported"), although cuBLAS itself
supports capture. So the CuPy backend calls ``cublasGemmEx`` here, on a handle of its own: the
same matmul code runs eagerly and inside a captured training step, and the compute type is
chosen per call (float32 strict or TF32; float16 storage accumulates in float32).

float32 accumulation of float16 GEMMs: ``CUBLAS_COMPUTE_32F`` makes each dot product accumulate
in float32, but under the default math mode cuBLAS may still sum split-K partial results in the
output type (float16). Every handle here therefore runs in ``CUBLAS_DEFAULT_MATH |
CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION`` (cublas_api.h, CUDA 13: the flag forces "any
reductions to use the accumulator type and not output type in case of mixed precision routines
with lower size output type"; it changes nothing for float32 or float64 outputs), so a float16
GEMM rounds to float16 once, at the end.

A row-major array is the column-major transpose of itself, so the row-major product
``C = op(A)·op(B)`` is the column-major product ``Cᵀ = op(B)ᵀ·op(A)ᵀ``: cuBLAS gets B as its
first operand and A as its second, and no data moves. This module imports no array library.
"""

from __future__ import annotations

import ctypes

from gpunn.extras import install_command

OP_N, OP_T = 0, 1
DATA_TYPES = {"float16": 2, "float32": 0, "float64": 1}  # cudaDataType: CUDA_R_16F, _32F, _64F
COMPUTE_32F, COMPUTE_32F_FAST_TF32, COMPUTE_64F = 68, 77, 70  # cublasComputeType_t
_GEMM_DEFAULT = -1
# cublasMath_t (cublas_api.h, CUDA 13): CUBLAS_DEFAULT_MATH = 0, and the flag
# CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION = 16.
DEFAULT_MATH, DISALLOW_REDUCED_PRECISION_REDUCTION = 0, 16
MATH_MODE = DEFAULT_MATH | DISALLOW_REDUCED_PRECISION_REDUCTION
#: The workspace cuBLAS gets for its kernels: NVIDIA's recommendation for Hopper GPUs.
WORKSPACE_BYTES = 32 * 1024 * 1024

_ONE32, _ZERO32 = ctypes.c_float(1.0), ctypes.c_float(0.0)
_ONE64, _ZERO64 = ctypes.c_double(1.0), ctypes.c_double(0.0)


class CublasError(RuntimeError):
    """cuBLAS returned an error status."""


def row_major_gemm(kind: str, a_shape, b_shape):
    """``(out_shape, trans_first, trans_second, m, n, k, ld_first, ld_second, ldc)``: the
    cublasGemmEx arguments for the row-major product ``kind`` of C-contiguous ``a`` and ``b``,
    where cuBLAS's first operand is ``b`` and its second is ``a``. ``"nn"`` is a·b, ``"nt"``
    is a·bᵀ, ``"tn"`` is aᵀ·b."""
    if kind not in ("nn", "nt", "tn"):
        raise ValueError(f"unknown product {kind!r}")
    rows, inner = (a_shape[1], a_shape[0]) if kind[0] == "t" else (a_shape[0], a_shape[1])
    inner_b, cols = (b_shape[1], b_shape[0]) if kind[1] == "t" else (b_shape[0], b_shape[1])
    if inner != inner_b:
        raise ValueError(f"matmul: shapes {tuple(a_shape)} and {tuple(b_shape)} do not fit for "
                         f"{'aᵀ·b' if kind == 'tn' else 'a·bᵀ' if kind == 'nt' else 'a·b'}")
    trans_first = OP_T if kind[1] == "t" else OP_N
    trans_second = OP_T if kind[0] == "t" else OP_N
    return ((rows, cols), trans_first, trans_second, cols, rows, inner,
            max(b_shape[1], 1), max(a_shape[1], 1), max(cols, 1))


def _find_with_pathfinder(major: int, tried: list) -> str | None:
    """Where ``cuda.pathfinder`` finds cuBLAS, the way CuPy 14 loads it for its own wrappers
    (``cupy_backends/cuda/libs/__init__.py``): NVIDIA's wheels, conda, then the system loader.
    It may return another major's cuBLAS; that one is refused here."""
    try:
        from cuda import pathfinder
    except ImportError as error:
        tried.append(f"cuda.pathfinder: not installed ({error})")
        return None
    try:
        path = pathfinder.load_nvidia_dynamic_lib("cublas").abs_path
    except Exception as error:  # DynamicLibNotFoundError and friends
        tried.append(f"cuda.pathfinder: {error}".strip())
        return None
    if path is None or not path.rsplit("/", 1)[-1].startswith(f"libcublas.so.{major}"):
        tried.append(f"cuda.pathfinder found {path}, not the cuBLAS {major} that CuPy's CUDA {major} needs")
        return None
    return path


def load_library(runtime_major: int):
    """cuBLAS for CUDA ``runtime_major`` (CuPy's ``runtimeGetVersion() // 1000``).

    First as CuPy finds it (``cuda.pathfinder``), then by soname through the system loader
    (``LD_LIBRARY_PATH``, ``ldconfig``); the error lists every place tried.
    """
    tried: list[str] = []
    soname = f"libcublas.so.{runtime_major}"
    for candidate in (_find_with_pathfinder(runtime_major, tried), soname):
        if candidate is None:
            continue
        try:
            library = ctypes.CDLL(candidate)
        except OSError as error:
            tried.append(f"dlopen({candidate}): {error}")
            continue
        _declare(library)
        library.gpunn_path = candidate
        return library
    raise OSError(f"cannot load {soname} for CuPy's CUDA {runtime_major} runtime; tried: " + "; ".join(tried)
                  + f". Install it with {install_command(f'cuda{runtime_major}')}, or put a CUDA "
                  f"{runtime_major} toolkit's lib64 on LD_LIBRARY_PATH")


def _declare(library) -> None:
    """The argument and result types of the cuBLAS calls gpunn makes."""
    void_p, c_int = ctypes.c_void_p, ctypes.c_int
    library.cublasCreate_v2.argtypes = [ctypes.POINTER(void_p)]
    library.cublasSetStream_v2.argtypes = [void_p, void_p]
    library.cublasSetWorkspace_v2.argtypes = [void_p, void_p, ctypes.c_size_t]
    library.cublasSetMathMode.argtypes = [void_p, c_int]  # cublasSetMathMode(cublasHandle_t, cublasMath_t)
    library.cublasGemmEx.argtypes = [void_p, c_int, c_int, c_int, c_int, c_int, void_p,
                                     void_p, c_int, c_int, void_p, c_int, c_int, void_p,
                                     void_p, c_int, c_int, c_int, c_int]
    library.cublasGetStatusString.restype = ctypes.c_char_p
    for name in ("cublasCreate_v2", "cublasSetStream_v2", "cublasSetWorkspace_v2", "cublasSetMathMode",
                 "cublasGemmEx"):
        getattr(library, name).restype = c_int


class CublasHandle:
    """A cuBLAS handle of our own on the current device, with a fixed workspace and the math
    mode that keeps float16 reductions in float32 (``MATH_MODE``).

    ``cublasSetStream`` resets the workspace, so both are set again whenever the stream changes.
    """

    def __init__(self, library, workspace_pointer: int, workspace_bytes: int):
        self._library = library
        handle = ctypes.c_void_p()
        self._check(library.cublasCreate_v2(ctypes.byref(handle)), "cublasCreate")
        self._handle = handle
        self._check(library.cublasSetMathMode(handle, MATH_MODE), "cublasSetMathMode")
        self._workspace = (workspace_pointer, workspace_bytes)
        self._stream = None

    def _check(self, status: int, call: str) -> None:
        if status:
            text = self._library.cublasGetStatusString(status)
            raise CublasError(f"{call} failed: {text.decode() if text else status}")

    def forget_stream(self, stream: int) -> None:
        """Point the handle back at the default stream if it holds ``stream``, which may be destroyed."""
        if self._stream == stream:
            self._check(self._library.cublasSetStream_v2(self._handle, None), "cublasSetStream")
            self._stream = None

    def gemm(self, layout, a_pointer: int, b_pointer: int, out_pointer: int, data_type: int,
             compute_type: int, stream: int) -> None:
        """``out = op(a)·op(b)`` for row-major device arrays, ``layout`` from ``row_major_gemm``."""
        library = self._library
        if stream != self._stream:
            self._check(library.cublasSetStream_v2(self._handle, stream), "cublasSetStream")
            self._check(library.cublasSetWorkspace_v2(self._handle, *self._workspace), "cublasSetWorkspace")
            self._stream = stream
        _, trans_first, trans_second, m, n, k, ld_first, ld_second, ldc = layout
        one, zero = (_ONE64, _ZERO64) if compute_type == COMPUTE_64F else (_ONE32, _ZERO32)
        self._check(library.cublasGemmEx(self._handle, trans_first, trans_second, m, n, k, ctypes.byref(one),
                                         b_pointer, data_type, ld_first, a_pointer, data_type, ld_second,
                                         ctypes.byref(zero), out_pointer, data_type, ldc, compute_type,
                                         _GEMM_DEFAULT),
                    "cublasGemmEx")
