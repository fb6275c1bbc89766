"""The dtype a layer takes when it is built without ``dtype=``: float32 unless set, as
``torch.set_default_dtype`` and ``keras.config.set_floatx`` do. Kept per thread or context, as the
current backend is: ``set_default_dtype`` changes it for the rest of the context, ``with
default_dtype("float64"):`` only inside the block."""

from __future__ import annotations

import contextvars

from gpunn.backends.selection import get_backend

_current: contextvars.ContextVar[str] = contextvars.ContextVar("gpunn_default_dtype", default="float32")


def _checked(dtype) -> str:
    """The dtype's name, if the current backend supports it (float16, float32, float64)."""
    if dtype is None:
        raise TypeError("default dtype: give a float dtype such as 'float64', not None")
    return get_backend().check_dtype(dtype).name


def set_default_dtype(dtype) -> None:
    """Every layer built from now on without ``dtype=`` (in this thread or context) holds ``dtype``."""
    _current.set(_checked(dtype))


def get_default_dtype() -> str:
    """The dtype a layer built without ``dtype=`` holds: ``"float32"`` unless set."""
    return _current.get()


class default_dtype:
    """``with gn.default_dtype("float64"):`` builds float64 layers inside the block; the default it
    replaced comes back after."""

    def __init__(self, dtype):
        self.dtype = _checked(dtype)
        self._token = None

    def __enter__(self) -> str:
        if self._token is not None:
            raise RuntimeError("default_dtype: this block is already active; make a new default_dtype(...)")
        self._token = _current.set(self.dtype)
        return self.dtype

    def __exit__(self, *exc_info) -> None:
        _current.reset(self._token)
        self._token = None


def resolve(dtype):
    """``dtype`` as given, or the default when it is None (a layer's ``dtype=None``)."""
    return get_default_dtype() if dtype is None else dtype
