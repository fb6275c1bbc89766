"""C++ built for this machine at first use and cached, as CuPy builds kernels for the GPU with
NVRTC: the host compiler ($CXX, else g++, else c++) makes a shared object of a source text, kept
in a folder keyed by the hash of the source, the command and the compiler's version, shared by
every process of the machine (a build is renamed into place atomically). The NumPy backend's
fused optimizer update and the CuPy stand-in's kernels are built here."""

from __future__ import annotations

import ctypes
import functools
import getpass
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

#: The compute types host kernels are built for: dtype → (C type, ctypes scalar). Keyed by the dtype
#: object, not its name: dtype.name is a slow property, and the lookup is made several times a step.
HOST_TYPES = {np.dtype("float32"): ("float", ctypes.c_float), np.dtype("float64"): ("double", ctypes.c_double)}
#: What a kernels/*.cuh file needs before it to compile as plain host C++.
HOST_PRELUDE = "#include <cmath>\n#define __host__\n#define __device__\n"


class HostCompilerError(RuntimeError):
    """No host C++ compiler, or a source it refused."""


@functools.cache
def compiler() -> tuple[str, str]:
    """The host C++ compiler's path and its version line (part of the cache key)."""
    for candidate in (os.environ.get("CXX"), "g++", "c++"):
        if candidate and shutil.which(candidate):
            path = shutil.which(candidate)
            version = subprocess.run([path, "--version"], capture_output=True, text=True).stdout
            return path, version.split("\n", 1)[0]
    raise HostCompilerError("no host C++ compiler found: install g++ or set CXX")


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


def build(source: str, flags: tuple[str, ...], folder: Path) -> ctypes.CDLL:
    """``source`` compiled with ``flags`` into a shared object in ``folder`` (once), loaded."""
    path, version = compiler()
    command = [path, *flags, "-shared", "-fPIC"]
    native = [cpu_signature()] if "-march=native" in flags else []
    key = hashlib.sha256("\0".join(command + [version, *native, source]).encode()).hexdigest()[:24]
    library = _loaded.get(key)
    if library is not None:
        return library
    target = folder / f"{key}.so"
    if not target.is_file():
        unit = folder / f"{key}-{os.getpid()}.cpp"
        unit.write_text(source)
        partial = target.with_name(f"{key}-{os.getpid()}.so")
        result = subprocess.run(command + [str(unit), "-o", str(partial)], capture_output=True, text=True)
        if result.returncode:
            raise HostCompilerError(f"the source did not compile as host C++ (kept in {unit}):\n{result.stderr}")
        unit.unlink()
        os.replace(partial, target)  # atomic: another process may build the same source
    library = _loaded[key] = ctypes.CDLL(str(target))
    return library


class HostBuild:
    """A source built at first use for the NumPy backend: the library, or why there is none (so
    that ``gpunn info`` can say it). ``GPUNN_HOST_KERNELS=0`` turns every such build off."""

    def __init__(self, make_source, flags: tuple[str, ...], requirement=lambda: None):
        self._make_source, self._flags, self._requirement = make_source, flags, requirement

    @functools.cached_property
    def _result(self):
        if os.environ.get("GPUNN_HOST_KERNELS", "1") == "0":
            return None, "off (GPUNN_HOST_KERNELS=0)"
        missing = self._requirement()
        if missing:
            return None, missing
        try:
            return build(self._make_source(), self._flags, cache_dir("GPUNN_HOST_KERNEL_CACHE", "gpunn-host-kernels")), None
        except (HostCompilerError, OSError) as error:  # no compiler, a refused flag, an unwritable cache
            return None, str(error).split("\n", 1)[0]

    @property
    def library(self):
        return self._result[0]

    def status(self, built: str) -> str:
        """``built``, or the NumPy twins and why."""
        library, reason = self._result
        return built if library is not None else f"NumPy passes ({reason})"
