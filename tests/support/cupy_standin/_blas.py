"""A NumPy model of the cuBLAS library object that ``gpunn.backends.cublas`` calls through ctypes.

It receives exactly what gpunn passes to ``cublasGemmEx`` (converted as ctypes converts them for
the C prototypes of ``cublas_api.h``, CUDA 13), checks what cuBLAS checks (handle, operations,
leading dimensions, the supported type combinations of the cublasGemmEx documentation) and what
it cannot check but a GPU would punish (alpha and beta of the compute type's scalar type,
operands inside their allocations, the handle on the current stream and the current device, operands in that device's memory),
then computes the column-major product through the pointers. It says nothing about cuBLAS's own
kernels, except one freedom cuBLAS takes: under the default math mode a float16-output GEMM may
reduce split-K partial sums in float16 (cublas_api.h, CUDA 13: ``CUBLAS_MATH_DISALLOW_REDUCED_
PRECISION_REDUCTION = 16`` forces "any reductions to use the accumulator type and not output type
in case of mixed precision routines with lower size output type"). The model takes that freedom
whenever the handle's math mode allows it, so that a float16 GEMM without the flag is visibly
less exact than one with it.
"""

from __future__ import annotations

import ctypes

import numpy as np
from numpy.lib.stride_tricks import as_strided

from support.cupy_standin._device import StandinViolation, current

OP_N, OP_T, OP_C = 0, 1, 2
STATUS_SUCCESS, STATUS_NOT_INITIALIZED, STATUS_INVALID_VALUE, STATUS_NOT_SUPPORTED = 0, 1, 7, 15
DATA_TYPES = {2: np.float16, 0: np.float32, 1: np.float64}  # library_types.h: CUDA_R_16F, _32F, _64F
# cublasGemmEx's table of supported (computeType, Atype/Btype, Ctype) combinations, and the
# scalar type of alpha and beta for each compute type (cuBLAS documentation, cublasGemmEx).
SUPPORTED = {(68, 2, 2): np.float32, (68, 2, 0): np.float32, (68, 0, 0): np.float32,
             (77, 0, 0): np.float32, (70, 1, 1): np.float64}
_SCALAR_CTYPES = {np.float32: ctypes.c_float, np.float64: ctypes.c_double}
# cublas_api.h (CUDA 13), cublasMath_t: the modes (low bits) and the one flag.
MATH_MODES = {0, 1, 2, 3, 4, 8}
DISALLOW_REDUCED_PRECISION_REDUCTION = 16
#: The model's split-K factor when it reduces in float16 (cuBLAS picks its own, per shape).
SPLIT_K = 4


def column_major(flat, rows: int, cols: int, ld: int):
    """The rows×cols column-major matrix with leading dimension ``ld`` stored in ``flat``."""
    if ld < max(rows, 1) or (cols - 1) * ld + rows > flat.size:
        raise StandinViolation(f"a {rows}x{cols} matrix with leading dimension {ld} does not fit in "
                               f"{flat.size} elements")
    return as_strided(flat, shape=(rows, cols), strides=(flat.itemsize, ld * flat.itemsize), writeable=False)


def column_major_gemm(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, compute=np.float64,
                      reduce_in=None):
    """C = alpha·op(A)·op(B) + beta·C on flat column-major buffers, as BLAS defines it.
    ``reduce_in``: the type split-K partial products are summed in (default: ``compute``)."""
    first = column_major(a, k, m, lda).T if trans_a != OP_N else column_major(a, m, k, lda)
    second = column_major(b, n, k, ldb).T if trans_b != OP_N else column_major(b, k, n, ldb)
    with np.errstate(over="ignore", invalid="ignore"):  # a GPU raises nothing for Inf/NaN either
        if reduce_in is None or k < SPLIT_K:
            product = compute(alpha) * (first.astype(compute) @ second.astype(compute))
        else:  # each split's partial GEMM in the compute type, stored and summed in ``reduce_in``
            bounds = np.linspace(0, k, SPLIT_K + 1).astype(int)
            product = np.zeros((m, n), reduce_in)
            for low, high in zip(bounds, bounds[1:]):
                part = compute(alpha) * (first[:, low:high].astype(compute) @ second[low:high].astype(compute))
                product = (product + part.astype(reduce_in)).astype(reduce_in)
            product = product.astype(compute)
        target = as_strided(c, shape=(m, n), strides=(c.itemsize, ldc * c.itemsize))
        if beta:  # with beta = 0, C is not read (it may hold NaN)
            product += compute(beta) * target.astype(compute)
        target[...] = product


class _Function:
    """A foreign function: arguments converted by its argtypes, as ctypes does."""

    def __init__(self, implementation, argtypes, restype=ctypes.c_int):
        self._implementation, self.argtypes, self.restype = implementation, argtypes, restype

    def __call__(self, *args):
        if len(args) != len(self.argtypes):
            raise TypeError(f"this function takes {len(self.argtypes)} arguments ({len(args)} given)")
        for index, (argtype, value) in enumerate(zip(self.argtypes, args)):
            try:
                argtype.from_param(value)
            except (TypeError, ValueError) as error:
                raise ctypes.ArgumentError(f"argument {index + 1}: {error}") from error
            if argtype is ctypes.c_int and not isinstance(value, ctypes.c_int) and not -2**31 <= value < 2**31:
                raise StandinViolation(f"argument {index + 1}: {value} does not fit a C int")
        return self._implementation(*args)


def _address(value) -> int:
    if isinstance(value, ctypes.c_void_p):
        return value.value or 0
    return value or 0


def _scalar(reference, compute, name):
    referenced = getattr(reference, "_obj", None)
    expected = _SCALAR_CTYPES[compute]
    if type(referenced) is not expected:
        raise StandinViolation(f"cublasGemmEx reads {name} as a {expected.__name__} for this compute type, "
                               f"but gpunn passed {type(referenced).__name__ if referenced is not None else reference!r}")
    return referenced.value


class CublasLibrary:
    """What ``cublas.load_library()`` returns: the six functions gpunn calls."""

    def __init__(self):
        void_p, c_int = ctypes.c_void_p, ctypes.c_int
        self.handles: dict[int, dict] = {}
        self.calls: list[tuple] = []  # every cublasGemmEx call, with its arguments as received
        self.cublasCreate_v2 = _Function(self._create, [ctypes.POINTER(void_p)])
        self.cublasSetStream_v2 = _Function(self._set_stream, [void_p, void_p])
        self.cublasSetWorkspace_v2 = _Function(self._set_workspace, [void_p, void_p, ctypes.c_size_t])
        self.cublasGemmEx = _Function(self._gemm, [void_p, c_int, c_int, c_int, c_int, c_int, void_p, void_p,
                                                   c_int, c_int, void_p, c_int, c_int, void_p, void_p, c_int,
                                                   c_int, c_int, c_int])
        self.cublasSetMathMode = _Function(self._set_math_mode, [void_p, c_int])
        self.cublasGetStatusString = _Function(lambda status: f"CUBLAS_STATUS {status}".encode(), [c_int],
                                               ctypes.c_char_p)

    def _create(self, pointer):
        handle = 0x7000 + len(self.handles)
        # cuBLAS documentation, "cuBLAS context": the device current at cublasCreate is the handle's
        # for its whole life; another device needs another handle.
        self.handles[handle] = {"stream": 0, "workspace": None, "device": current().current_id, "math_mode": 0}
        pointer._obj.value = handle
        return STATUS_SUCCESS

    def _state(self, handle):
        return self.handles.get(_address(handle))

    def _set_stream(self, handle, stream):
        state = self._state(handle)
        if state is None:
            return STATUS_NOT_INITIALIZED
        state["stream"] = _address(stream)
        return STATUS_SUCCESS

    def _set_math_mode(self, handle, mode):
        state = self._state(handle)
        if state is None:
            return STATUS_NOT_INITIALIZED
        if mode & ~DISALLOW_REDUCED_PRECISION_REDUCTION not in MATH_MODES:
            return STATUS_INVALID_VALUE
        state["math_mode"] = mode
        return STATUS_SUCCESS

    def _set_workspace(self, handle, pointer, size):
        state = self._state(handle)
        if state is None:
            return STATUS_NOT_INITIALIZED
        current().memory(_address(pointer), size, np.uint8, device=state["device"])  # device memory of that size
        state["workspace"] = (_address(pointer), size)
        return STATUS_SUCCESS

    def _gemm(self, handle, trans_a, trans_b, m, n, k, alpha, a, a_type, lda, b, b_type, ldb, beta, c, c_type,
              ldc, compute_type, algo):
        from support.cupy_standin import _cuda

        self.calls.append((trans_a, trans_b, m, n, k, a_type, lda, b_type, ldb, c_type, ldc, compute_type, algo))
        state = self._state(handle)
        if state is None:
            return STATUS_NOT_INITIALIZED
        if (trans_a not in (OP_N, OP_T, OP_C) or trans_b not in (OP_N, OP_T, OP_C) or min(m, n, k) < 0
                or lda < max(1, m if trans_a == OP_N else k) or ldb < max(1, k if trans_b == OP_N else n)
                or ldc < max(1, m)):
            return STATUS_INVALID_VALUE
        compute = SUPPORTED.get((compute_type, a_type, c_type))
        if compute is None or a_type != b_type:
            return STATUS_NOT_SUPPORTED
        if state["stream"] != _cuda.get_current_stream().ptr:
            raise StandinViolation(f"the cuBLAS handle runs on stream {state['stream']:#x}, CuPy's current stream "
                                   f"is {_cuda.get_current_stream().ptr:#x}: the GEMM would be unordered")
        if current().current_id != state["device"]:
            raise StandinViolation(f"a cuBLAS handle made on device {state['device']} used while device "
                                   f"{current().current_id} is current: a handle belongs to the device of its "
                                   "cublasCreate (cuBLAS documentation, 'cuBLAS context')")
        alpha_value, beta_value = _scalar(alpha, compute, "alpha"), _scalar(beta, compute, "beta")
        if m == 0 or n == 0:
            return STATUS_SUCCESS
        device, storage, c_storage = current(), DATA_TYPES[a_type], DATA_TYPES[c_type]
        reduce_in = None
        if c_storage == np.float16 and compute == np.float32 \
                and not state["math_mode"] & DISALLOW_REDUCED_PRECISION_REDUCTION:
            reduce_in = np.float16  # allowed by the default math mode (see the module docstring)

        def operand(pointer, rows, cols, ld, dtype):
            count = (cols - 1) * ld + rows if rows and cols else 0
            return device.memory(_address(pointer), count * np.dtype(dtype).itemsize, dtype, device=state["device"])

        first = operand(a, *((m, k) if trans_a == OP_N else (k, m)), lda, storage)
        second = operand(b, *((k, n) if trans_b == OP_N else (n, k)), ldb, storage)
        out = operand(c, m, n, ldc, c_storage)
        device.launch("cublas", "cublasGemmEx", lambda: column_major_gemm(
            trans_a, trans_b, m, n, k, alpha_value, first, lda, second, ldb, beta_value, out, ldc, compute,
            reduce_in), reads=(first, second, out), writes=(out,))
        return STATUS_SUCCESS
