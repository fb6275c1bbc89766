"""The matmul precision: one process-wide setting, as cuBLAS's compute type is, read by the CuPy backend
at each matmul and by the CUDA graph's record key."""

MATMUL_PRECISIONS = ("highest", "tf32")
_matmul_precision = ["highest"]  # process-wide, as cuBLAS's compute type is


def set_matmul_precision(precision: str) -> None:
    """``"highest"`` (true float32) or ``"tf32"`` (float32 matmuls on TF32 tensor cores).

    Takes effect at the next matmul on any backend that has TF32 (CuPy on compute
    capability 8.0 or newer); the NumPy backend always computes in full precision.
    """
    if precision not in MATMUL_PRECISIONS:
        raise ValueError(f"unknown matmul precision {precision!r}; expected one of {MATMUL_PRECISIONS}")
    _matmul_precision[0] = precision


def get_matmul_precision() -> str:
    return _matmul_precision[0]
