"""The seam: the only code that imports an array library. ``selection`` picks the backend; ``base`` is
the interface both backends implement; ``numpy_backend`` and ``cupy_backend`` implement it."""

from gpunn.backends.base import Backend
from gpunn.backends.precision import MATMUL_PRECISIONS, get_matmul_precision, set_matmul_precision
from gpunn.backends.selection import (BACKEND_NAMES, BackendUnavailableError, available_backends, backend_of,
                                      cupy_unavailable_reason, get_backend, resolve_backend, use_backend)

__all__ = ["BACKEND_NAMES", "MATMUL_PRECISIONS", "Backend", "BackendUnavailableError", "available_backends",
           "backend_of", "cupy_unavailable_reason", "get_backend", "get_matmul_precision", "resolve_backend",
           "set_matmul_precision", "use_backend"]
