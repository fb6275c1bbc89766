"""The activations of ``kernels/activations.cuh`` built as host code for the NumPy backend: the
fused bias + activation and its backward in one vectorised pass each, from the very functions the
GPU kernels call, instead of a few (tanh) to about twenty-five (GELU's erf) NumPy passes.

Vectorising them takes vector versions of exp, tanh, log1p and erf: glibc's libmvec (x86-64,
glibc 2.35 or newer; within 4 ulp, NaN and ±∞ kept) supplies them, declared SIMD below as glibc's
own headers do under -ffast-math, which these builds do not use (IEEE rounding, NaN semantics and
signed zeros are kept). Elsewhere the NumPy twins run; ``gpunn info`` says which.
"""

from __future__ import annotations

import ctypes
import functools
import platform

import numpy as np

from gpunn.backends.host_compiler import HOST_PRELUDE, HOST_TYPES as _TYPES, HostBuild
from gpunn.kernels.source import kernel_source
from gpunn.kernels.activations import REGISTRY

_VECTOR_MATH = ("exp", "tanh", "log1p", "erf")
FLAGS = ("-std=c++17", "-O3", "-march=native", "-fno-math-errno", "-ffp-contract=off", "-lmvec", "-Wl,-z,defs")


def _declarations() -> str:
    lines = [f"{c_type} {name}{suffix}({c_type}) noexcept __attribute__((__simd__(\"notinbranch\")));"
             for name in _VECTOR_MATH for c_type, suffix in (("float", "f"), ("double", ""))]
    return 'extern "C" {\n' + "\n".join(lines) + "\n}\n"


def _loops(kind, c_type: str) -> str:
    values = [f"p[{index}]" for index in range(len(kind.parameters))]
    saved = "x" if kind.reads_input else "a"
    return f"""
extern "C" void gpunn_{kind.name}_host_{c_type}(const {c_type}* z, const {c_type}* b, {c_type}* y, {c_type}* saved,
        long rows, long cols, const {c_type}* p) {{
    for (long r = 0; r < rows; ++r) {{
        const {c_type}* zr = z + r * cols;
        {c_type}* yr = y + r * cols;
        {c_type}* sr = saved ? saved + r * cols : nullptr;
        for (long c = 0; c < cols; ++c) {{
            {c_type} x = zr[c] + b[c];
            {c_type} a = {kind.forward_call("x", values)};
            if (sr) sr[c] = {saved};
            yr[c] = a;
        }}
    }}
}}
extern "C" void gpunn_{kind.name}_backward_host_{c_type}(const {c_type}* dy, const {c_type}* s, {c_type}* dz, long n,
        const {c_type}* p) {{
    for (long i = 0; i < n; ++i) dz[i] = {kind.backward_call("dy[i]", "s[i]", values)};
}}"""


def source() -> str:
    loops = "".join(_loops(kind, c_type) for kind in REGISTRY.values() for c_type, _ in _TYPES.values())
    return f"{HOST_PRELUDE}{_declarations()}{kernel_source('activations.cuh')}\n{loops}\n"


def _vector_math_missing():
    """Why libmvec is not at hand, or None."""
    library, version = platform.libc_ver()
    parts = tuple(int(part) for part in version.split(".")[:2] if part.isdigit())
    if platform.machine() not in ("x86_64", "AMD64") or library != "glibc" or parts < (2, 35):
        return f"no vector maths library: needs glibc 2.35+ on x86-64, this is {library or '?'} {version} " \
               f"on {platform.machine()}"
    return None


BUILD = HostBuild(source, FLAGS, _vector_math_missing)


def status() -> str:
    return BUILD.status("compiled .cuh activations (one pass, libmvec)")


def available(dtype) -> bool:
    return dtype in _TYPES and BUILD.library is not None


@functools.cache
def _functions(name: str, dtype):
    c_type, scalar = _TYPES[dtype]
    pointer = ctypes.c_void_p
    forward = getattr(BUILD.library, f"gpunn_{name}_host_{c_type}")
    forward.argtypes, forward.restype = [pointer] * 4 + [ctypes.c_long] * 2 + [pointer], None
    backward = getattr(BUILD.library, f"gpunn_{name}_backward_host_{c_type}")
    backward.argtypes, backward.restype = [pointer] * 3 + [ctypes.c_long, pointer], None
    return forward, backward


def _fits(*arrays) -> bool:
    first = arrays[0]
    return available(first.dtype) and all(a.dtype == first.dtype and a.flags.c_contiguous for a in arrays)


@functools.cache
def _parameters(function, dtype):
    """The activation's parameters as the C array its loops read (made once per activation)."""
    return np.asarray(function.values or (0.0,), dtype)


def bias_activation(z, bias, function, out, saved) -> bool:
    """``out = f(z + bias)`` (and ``saved``: what backward reads) in one pass; False where it
    cannot (the caller runs the twin). ``out`` and ``saved`` are preallocated, ``z`` 2-d."""
    if isinstance(z, np.ndarray) and z.ndim == 2 and np.ndim(bias) == 0:  # a layer of its own: bias 0
        bias = np.full(z.shape[1], bias, z.dtype)
    arrays = [z, bias, out] + ([saved] if saved is not None else [])
    if not all(isinstance(a, np.ndarray) for a in arrays) or z.ndim != 2 or bias.shape != (z.shape[1],) \
            or out.shape != z.shape or not _fits(*arrays):
        return False
    if saved is not None and saved.shape != z.shape:
        return False
    forward, _ = _functions(function.name, z.dtype)
    parameters = _parameters(function, z.dtype)
    forward(z.ctypes.data, bias.ctypes.data, out.ctypes.data, None if saved is None else saved.ctypes.data,
            z.shape[0], z.shape[1], parameters.ctypes.data)
    return True


def activation_backward(dy, saved, function, out) -> bool:
    """``out = dy ⊙ f'(·)`` from ``saved`` in one pass; False where it cannot."""
    if not (all(isinstance(a, np.ndarray) for a in (dy, saved, out)) and dy.shape == saved.shape == out.shape
            and _fits(dy, saved, out)):
        return False
    _, backward = _functions(function.name, dy.dtype)
    parameters = _parameters(function, dy.dtype)
    backward(dy.ctypes.data, saved.ctypes.data, out.ctypes.data, dy.size, parameters.ctypes.data)
    return True
