"""Helpers for testing gpunn without a GPU (the CuPy stand-in); never imported by the library."""


def whole_buffer(backend, size: int, applied: float = 0.0):
    """An update's segment table (kernels/optim.cuh) with one segment over ``size`` elements, updated
    this step, that has had ``applied`` updates: the ``segments, steps`` of ``backend.optimizer_update``."""
    return backend.asarray([0, size, 0, 1], "int64"), backend.asarray([float(applied)], "float64")
