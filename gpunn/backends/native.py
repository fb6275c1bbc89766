"""The native host build: the maths of ``gpunn/kernels/*.cuh`` compiled as host C++ for the NumPy
backend, from the very functions the GPU kernels call. The optimizer rules (``optim.cuh``) become one
vectorised pass over the flat buffers instead of a dozen NumPy passes; the activations
(``activations.cuh``) one pass each for the fused bias + activation and its backward instead of a few
(tanh) to about twenty-five (GELU's erf) NumPy passes.

One switch: ``GPUNN_HOST_KERNELS=0`` turns it off, and wherever a build cannot be had (no compiler, a
compiler that hangs, no vector maths library, an unwritable cache) the NumPy backend runs the NumPy
twins (``numpy_activations``, ``kernels/update_rules.py``), which are the reference the tests compare
this build with; ``gpunn info`` says which runs and why.

Builds are made at first use, as CuPy builds kernels for the GPU with NVRTC: the host compiler ($CXX,
else g++, else c++), for this machine's instruction set (-march=native), keeping IEEE rounding (no FMA
contraction, no fast-math). A build is cached in a folder shared by the machine's processes, keyed by
the hash of the source, the command, the compiler's version and the CPU, renamed into place atomically
beside a stamp (its size and SHA-256); a cached library whose stamp does not match, or that lacks a
function, is built again rather than loaded. The compiler runs under a time limit.

Vectorising the activations takes vector versions of exp, tanh, log1p and erf: glibc's libmvec
(x86-64, glibc 2.35 or newer; within 4 ulp, NaN and ±∞ kept) supplies them, declared SIMD below as
glibc's own headers do under -ffast-math, which these builds do not use.
"""

from __future__ import annotations

import ctypes
import functools
import getpass
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from gpunn.kernels.activations import REGISTRY
from gpunn.kernels.source import kernel_source
from gpunn.kernels.update_rules import RULES

logger = logging.getLogger("gpunn")

#: The compute types host kernels are built for: dtype → (C type, ctypes scalar). Keyed by the dtype
#: object, not its name: dtype.name is a slow property, and the lookup is made several times a step.
HOST_TYPES = {np.dtype("float32"): ("float", ctypes.c_float), np.dtype("float64"): ("double", ctypes.c_double)}
#: What a kernels/*.cuh file needs before it to compile as plain host C++.
HOST_PRELUDE = "#include <cmath>\n#define __host__\n#define __device__\n"


class HostCompilerError(RuntimeError):
    """No host C++ compiler, or a source it refused."""


def time_limit() -> float:
    """Seconds a compiler run may take (``GPUNN_HOST_COMPILE_TIMEOUT``, default 300): a compiler that
    hangs must not hang the first training step or ``gpunn info``."""
    try:
        return max(0.1, float(os.environ.get("GPUNN_HOST_COMPILE_TIMEOUT", "300")))
    except ValueError:
        return 300.0


def _run(command: list[str], what: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=time_limit())
    except subprocess.TimeoutExpired:
        raise HostCompilerError(f"{what} did not finish in {time_limit():g} s (GPUNN_HOST_COMPILE_TIMEOUT): "
                                f"{' '.join(command[:1])}") from None


@functools.cache
def _compiler() -> tuple[str, str] | HostCompilerError:
    for candidate in (os.environ.get("CXX"), "g++", "c++"):
        if candidate and shutil.which(candidate):
            path = shutil.which(candidate)
            try:
                version = _run([path, "--version"], "the host compiler's --version").stdout
            except HostCompilerError as error:
                return error
            return path, version.split("\n", 1)[0]
    return HostCompilerError("no host C++ compiler found: install g++ or set CXX")


def compiler() -> tuple[str, str]:
    """The host C++ compiler's path and its version line (part of the cache key); asked once per process."""
    found = _compiler()
    if isinstance(found, HostCompilerError):
        raise found
    return found


def cache_dir(variable: str, name: str) -> Path:
    """``$variable``, else a folder ``name`` in the temp dir, per user."""
    folder = os.environ.get(variable) or Path(tempfile.gettempdir()) / f"{name}-{getpass.getuser()}"
    Path(folder).mkdir(parents=True, exist_ok=True)
    return Path(folder)


@functools.cache
def cpu_signature() -> str:
    """What -march=native compiles for, as a cache key: a folder shared by machines with other CPUs
    must not hand one of them code for the other's instruction set."""
    try:
        with open("/proc/cpuinfo") as info:
            lines = [line for line in info if line.startswith(("model name", "flags", "Features", "CPU part"))]
        return " ".join(dict.fromkeys(line.strip() for line in lines))
    except OSError:
        return f"{platform.machine()} {platform.processor()}"


_loaded: dict[str, ctypes.CDLL] = {}


def _stamp(path: Path) -> str:
    """The size and SHA-256 of a built library: what its stamp file records."""
    data = path.read_bytes()
    return f"{len(data)} {hashlib.sha256(data).hexdigest()}"


def _intact(target: Path) -> bool:
    """The cached library is whole: its stamp exists and matches. A truncated or overwritten .so,
    loaded as it is, can kill the process with SIGBUS, so it is checked before dlopen sees it."""
    stamp = target.with_suffix(".stamp")
    try:
        return target.is_file() and stamp.read_text() == _stamp(target)
    except OSError:
        return False


def _compile(command: list[str], source: str, target: Path) -> ctypes.CDLL:
    """Build ``target`` and load it. It is loaded under its temporary name: the dynamic loader hands
    back an object it already mapped under the same path, so loading ``target`` after replacing a
    damaged one would return the damaged one."""
    unit = target.with_name(f"{target.stem}-{os.getpid()}.cpp")
    unit.write_text(source)
    partial = target.with_name(f"{target.stem}-{os.getpid()}.so")
    result = _run(command + [str(unit), "-o", str(partial)], "compiling the host kernels")
    if result.returncode:
        raise HostCompilerError(f"the source did not compile as host C++ (kept in {unit}):\n{result.stderr}")
    unit.unlink()
    library = ctypes.CDLL(str(partial))
    stamp = target.with_name(f"{target.stem}-{os.getpid()}.stamp")
    stamp.write_text(_stamp(partial))
    os.replace(stamp, target.with_suffix(".stamp"))  # atomic: another process may build the same source
    os.replace(partial, target)
    return library


def build(source: str, flags: tuple[str, ...], folder: Path, symbols: tuple[str, ...] = ()) -> ctypes.CDLL:
    """``source`` compiled with ``flags`` into a shared object in ``folder`` (once), checked, loaded.
    A cached build that is damaged or lacks one of ``symbols`` is built again."""
    path, version = compiler()
    command = [path, *flags, "-shared", "-fPIC"]
    native = [cpu_signature()] if "-march=native" in flags else []
    key = hashlib.sha256("\0".join(command + [version, *native, source]).encode()).hexdigest()[:24]
    library = _loaded.get(key)
    if library is not None:
        return library
    target = folder / f"{key}.so"
    for _ in ("cached", "rebuilt"):
        if _intact(target):
            library = ctypes.CDLL(str(target))
        else:
            if target.exists():
                logger.warning("gpunn: the cached host kernels %s are damaged; building them again", target)
            library = _compile(command, source, target)
        missing = [name for name in symbols if not hasattr(library, name)]
        if not missing:
            _loaded[key] = library
            return library
        logger.warning("gpunn: %s lacks %s; building it again", target, ", ".join(missing[:3]))
        target.with_suffix(".stamp").unlink(missing_ok=True)
    raise HostCompilerError(f"{target} lacks {', '.join(missing[:3])} even when built afresh")


class HostBuild:
    """A source built at first use for the NumPy backend: the library, or why there is none (so
    that ``gpunn info`` can say it). ``GPUNN_HOST_KERNELS=0`` turns every such build off."""

    def __init__(self, make_source, flags: tuple[str, ...], symbols, requirement=lambda: None):
        self._make_source, self._flags, self._requirement = make_source, flags, requirement
        self._symbols = symbols  # () -> the function names the library must hold

    @functools.cached_property
    def _result(self):
        if os.environ.get("GPUNN_HOST_KERNELS", "1") == "0":
            return None, "off (GPUNN_HOST_KERNELS=0)"
        missing = self._requirement()
        if missing:
            return None, missing
        try:
            folder = cache_dir("GPUNN_HOST_KERNEL_CACHE", "gpunn-host-kernels")
            return build(self._make_source(), self._flags, folder, tuple(self._symbols())), None
        except (HostCompilerError, OSError) as error:  # no compiler, a hang, a refused flag, an unwritable cache
            reason = str(error).split("\n", 1)[0]
            logger.warning("gpunn: the NumPy backend runs its NumPy twins: %s", reason)
            return None, reason

    @property
    def library(self):
        return self._result[0]

    def status(self, built: str) -> str:
        """``built``, or the NumPy twins and why."""
        library, reason = self._result
        return built if library is not None else f"NumPy passes ({reason})"


# --- the optimizer rules of optim.cuh ------------------------------------------------------
UPDATE_FLAGS = ("-std=c++17", "-O3", "-march=native", "-fno-math-errno", "-ffp-contract=off")


def _loop(rule, c_type: str) -> str:
    states = [f"s{index}[i]" for index in range(len(rule.states))] + ["unused"] * (2 - len(rule.states))
    return f"""
extern "C" void {rule.function}_host_{c_type}({c_type}* __restrict__ p, {c_type}* __restrict__ s0,
        {c_type}* __restrict__ s1, const {c_type}* __restrict__ g, long n, {c_type} lr, {c_type} step,
        {c_type} weight_decay, long decay_end, {c_type} h0, {c_type} h1, {c_type} h2, int flag,
        double loss_scale, {c_type} norm, {c_type} max_norm) {{
    const gpunn_unscale<{c_type}> unscale(loss_scale, norm, max_norm);
    const {rule.function}<{c_type}> rule(lr, step, h0, h1, h2, flag != 0);
    for (long i = 0; i < n; ++i) {{
        {c_type} unused = 0;
        rule(p[i], {", ".join(states)}, unscale(g[i]), i < decay_end ? weight_decay : {c_type}(0));
    }}
}}"""


def update_source() -> str:
    loops = "".join(_loop(rule, c_type) for rule in RULES.values() for c_type, _ in HOST_TYPES.values())
    return f"{HOST_PRELUDE}{kernel_source('optim.cuh')}\n{loops}\n"


UPDATE_BUILD = HostBuild(update_source, UPDATE_FLAGS, lambda: [
    f"{rule.function}_host_{c_type}" for rule in RULES.values() for c_type, _ in HOST_TYPES.values()])


def update_status() -> str:
    """One line for ``gpunn info``."""
    return UPDATE_BUILD.status("compiled .cuh rules (one pass)")


@functools.cache
def _update_function(rule_name: str, dtype):
    library = UPDATE_BUILD.library
    if library is None:
        return None
    c_type, scalar = HOST_TYPES[dtype]
    function = getattr(library, f"{RULES[rule_name].function}_host_{c_type}")
    function.argtypes = ([ctypes.c_void_p] * 4 + [ctypes.c_long, scalar, scalar, scalar, ctypes.c_long]
                         + [scalar] * 3 + [ctypes.c_int, ctypes.c_double] + [scalar] * 2)
    function.restype = None
    return function


def update(rule, param, states, grad, lr, step, weight_decay, decay_end, hyper, flag, loss_scale, norm,
           max_norm) -> bool:
    """Run ``rule`` over contiguous float32/float64 buffers in one compiled pass; False (nothing
    done) where it cannot, and the caller runs the NumPy twin."""
    dtype = param.dtype
    arrays = [param, grad, *states]
    if dtype not in HOST_TYPES or any(a.dtype != param.dtype or not a.flags.c_contiguous for a in arrays):
        return False
    function = _update_function(rule.name, dtype)
    if function is None:
        return False
    pointers = [a.ctypes.data for a in states] + [0] * (2 - len(states))
    function(param.ctypes.data, *pointers, grad.ctypes.data, param.size, lr, step, weight_decay, decay_end,
             *hyper, int(flag), loss_scale, norm, max_norm)
    return True


# --- the activations of activations.cuh ----------------------------------------------------
_VECTOR_MATH = ("exp", "tanh", "log1p", "erf")
ACTIVATION_FLAGS = ("-std=c++17", "-O3", "-march=native", "-fno-math-errno", "-ffp-contract=off", "-lmvec", "-Wl,-z,defs")


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


def activation_source() -> str:
    loops = "".join(_loops(kind, c_type) for kind in REGISTRY.values() for c_type, _ in HOST_TYPES.values())
    return f"{HOST_PRELUDE}{_declarations()}{kernel_source('activations.cuh')}\n{loops}\n"


def _vector_math_missing():
    """Why libmvec is not at hand, or None."""
    library, version = platform.libc_ver()
    parts = tuple(int(part) for part in version.split(".")[:2] if part.isdigit())
    if platform.machine() not in ("x86_64", "AMD64") or library != "glibc" or parts < (2, 35):
        return f"no vector maths library: needs glibc 2.35+ on x86-64, this is {library or '?'} {version} " \
               f"on {platform.machine()}"
    return None


ACTIVATION_BUILD = HostBuild(activation_source, ACTIVATION_FLAGS, lambda: [
    f"gpunn_{kind.name}{part}_host_{c_type}" for kind in REGISTRY.values() for part in ("", "_backward")
    for c_type, _ in HOST_TYPES.values()], _vector_math_missing)


def activation_status() -> str:
    """One line for ``gpunn info``."""
    return ACTIVATION_BUILD.status("compiled .cuh activations (one pass, libmvec)")


def activations_available(dtype) -> bool:
    return dtype in HOST_TYPES and ACTIVATION_BUILD.library is not None


@functools.cache
def _functions(name: str, dtype):
    c_type, scalar = HOST_TYPES[dtype]
    pointer = ctypes.c_void_p
    forward = getattr(ACTIVATION_BUILD.library, f"gpunn_{name}_host_{c_type}")
    forward.argtypes, forward.restype = [pointer] * 4 + [ctypes.c_long] * 2 + [pointer], None
    backward = getattr(ACTIVATION_BUILD.library, f"gpunn_{name}_backward_host_{c_type}")
    backward.argtypes, backward.restype = [pointer] * 3 + [ctypes.c_long, pointer], None
    return forward, backward


def _fits(*arrays) -> bool:
    first = arrays[0]
    return activations_available(first.dtype) and all(a.dtype == first.dtype and a.flags.c_contiguous for a in arrays)


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
