"""Backend selection: which array library runs the model, chosen per thread or context.

``use_backend(name)`` switches for the rest of the context, or only inside a ``with`` block;
``GPUNN_BACKEND`` picks the starting backend; ``"auto"`` takes CuPy only when a GPU is
really usable. Asking for CuPy where it cannot work raises ``BackendUnavailableError``
with the reason: there is no silent fallback to the CPU.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import os

from gpunn.backends.base import Backend
from gpunn.extras import cuda_install_hint

logger = logging.getLogger("gpunn")

BACKEND_NAMES = ("numpy", "cupy")
_current: contextvars.ContextVar[Backend | None] = contextvars.ContextVar("gpunn_backend", default=None)


class BackendUnavailableError(RuntimeError):
    """The requested backend cannot run on this machine; the message says why."""


def cupy_unavailable_reason() -> str | None:
    """Why CuPy cannot be used here, or None when a CUDA device is usable."""
    try:
        import cupy
    except ImportError as error:
        return f"CuPy is not installed ({error}); {cuda_install_hint()}"
    except OSError as error:  # CuPy 14 creates its kernel cache folder at import (cupy/cuda/_compiler_cache.py)
        folder = os.environ.get("CUPY_CACHE_DIR") or os.path.expanduser("~/.cupy/kernel_cache")
        return (f"importing CuPy failed: it could not create its kernel cache folder {folder} ({error}); "
                "set CUPY_CACHE_DIR to a writable folder")
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as error:  # CUDARuntimeError, or a missing libcuda
        text = str(error)
        if "NoDevice" in text:
            return f"no CUDA device is visible ({text})"
        return f"no usable CUDA driver ({text})"
    if count == 0:
        return "no CUDA device is visible"
    return None


@functools.cache
def _instance(name: str) -> Backend:
    if name == "numpy":
        from gpunn.backends.numpy_backend import NumpyBackend

        return NumpyBackend()
    reason = cupy_unavailable_reason()
    if reason is not None:
        raise BackendUnavailableError(f"the cupy backend cannot run here: {reason}")
    from gpunn.backends.cupy_backend import CupyBackend

    return CupyBackend()


def resolve_backend(name: str | Backend) -> Backend:
    """The backend instance for a name (``"numpy"``, ``"cupy"``, ``"auto"``) or instance."""
    if isinstance(name, Backend):
        return name
    if not isinstance(name, str) or name.lower() not in BACKEND_NAMES + ("auto",):
        raise ValueError(f"unknown backend {name!r}; expected one of {BACKEND_NAMES + ('auto',)}")
    name = name.lower()
    if name != "auto":
        return _instance(name)
    reason = cupy_unavailable_reason()
    if reason is None:
        logger.info("gpunn: backend 'auto' chose cupy")
        return _instance("cupy")
    logger.info("gpunn: backend 'auto' chose numpy (cupy unusable: %s)", reason)
    return _instance("numpy")


def backend_of(array) -> Backend:
    """The backend whose device holds ``array`` (CuPy arrays carry a CUDA array interface)."""
    return _instance("cupy" if hasattr(array, "__cuda_array_interface__") else "numpy")


def available_backends() -> list[str]:
    """Names of the backends that can run on this machine now."""
    return [name for name in BACKEND_NAMES if name == "numpy" or cupy_unavailable_reason() is None]


def get_backend() -> Backend:
    """The backend of this context; the first call resolves ``GPUNN_BACKEND`` (default auto)."""
    backend = _current.get()
    if backend is None:
        backend = resolve_backend(os.environ.get("GPUNN_BACKEND", "auto"))
        _current.set(backend)
    return backend


#: The ``with use_backend(...)`` blocks open in this context, innermost last (their switches' tokens).
_blocks: contextvars.ContextVar[tuple] = contextvars.ContextVar("gpunn_backend_blocks", default=())


class use_backend:
    """Switch backend: ``use_backend("numpy")`` for the context, or ``with use_backend(...)``.

    Leaving a block brings back the backend that was current when the switch was made. Blocks nest:
    one left before a block opened inside it is a RuntimeError (nothing changes), and one object
    may be entered again (also inside itself), switching again each time."""

    def __init__(self, name: str | Backend):
        self.backend = resolve_backend(name)
        self._pending = _current.set(self.backend)  # the switch made now; the first ``with`` claims it
        self._tokens: list = []  # this object's open blocks, innermost last

    def __enter__(self) -> Backend:
        token, self._pending = self._pending or _current.set(self.backend), None
        self._tokens.append(token)
        _blocks.set(_blocks.get() + (token,))
        return self.backend

    def __exit__(self, *exc_info) -> None:
        blocks = _blocks.get()
        if not self._tokens:
            raise RuntimeError("use_backend: leaving a block that was never entered (or was left already)")
        if not blocks or blocks[-1] is not self._tokens[-1]:
            raise RuntimeError(f"use_backend({self.backend.name!r}): blocks must be left innermost first, and a "
                               "block opened inside this one is still open; leave it first (nothing was changed)")
        _blocks.set(blocks[:-1])
        _current.reset(self._tokens.pop())

