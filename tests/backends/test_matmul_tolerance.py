"""The matmul parity tolerance of tests/backends/test_cupy_parity.py, checked on the CPU: a float64 reference
and a bound derived from k and the compute type's rounding, tight enough to fail a lower precision."""

import numpy as np

from conftest import matmul_error_bound


def test_matmul_error_bound_is_tight_enough_to_catch_a_lower_precision(rng):
    """The bound must reject float16 accumulation for float16 storage and TF32-like rounding of
    float32 operands, the mistakes a compute-type bug would make."""
    x, w = (rng.normal(size=s).astype("float16") for s in ((64, 2048), (2048, 64)))
    a, b = x.astype(np.float64), w.astype(np.float64)
    partial = np.zeros((64, 64), np.float16)
    for i in range(0, 2048, 64):  # float16 accumulation, blocked as a GEMM would
        partial = (partial.astype(np.float32) + (x[:, i:i + 64].astype(np.float32) @ w[i:i + 64].astype(np.float32))
                   ).astype(np.float16)
    assert (np.abs(partial - a @ b) > matmul_error_bound(a, b, "float16")).any()
    right = (x.astype(np.float32) @ w.astype(np.float32)).astype(np.float16)  # what cuBLAS is asked for
    assert (np.abs(right - a @ b) <= matmul_error_bound(a, b, "float16")).all()
    x32, w32 = (rng.normal(size=s).astype("float32") for s in ((64, 2048), (2048, 64)))
    tf32 = lambda m: (m.view(np.uint32) & np.uint32(0xFFFFE000)).view(np.float32)  # 10-bit mantissa
    a, b = x32.astype(np.float64), w32.astype(np.float64)
    got = tf32(x32).astype(np.float64) @ tf32(w32).astype(np.float64)
    assert (np.abs(got - a @ b) > matmul_error_bound(a, b, "float32")).any()
    exact32 = (x32 @ w32).astype(np.float64)
    assert (np.abs(exact32 - a @ b) <= matmul_error_bound(a, b, "float32")).all()
