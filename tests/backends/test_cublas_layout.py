"""The row-major to column-major mapping of the CuPy backend's cuBLAS calls, checked on the CPU.

A NumPy model of cublasGemmEx (column-major operands with leading dimensions, the CuPy
stand-in's) runs the arguments that ``row_major_gemm`` chooses on the flat buffers of row-major
arrays; the result, read back row-major, must be the product that was asked for. The stand-in
feeds the backend's real calls to the same model (tests/backends/test_cupy_standin.py), and the GPU run
compares the real calls with NumPy (tests/backends/test_cupy_parity.py).
"""

import numpy as np
import pytest

from gpunn.backends.cublas import load_library, row_major_gemm
from support.cupy_standin import column_major_gemm

CASES = {"nn": lambda a, b: a @ b, "nt": lambda a, b: a @ b.T, "tn": lambda a, b: a.T @ b}


@pytest.mark.parametrize("kind", sorted(CASES))
@pytest.mark.parametrize("rows, inner, cols", [(1, 1, 1), (7, 5, 3), (3, 9, 1), (1, 4, 6), (128, 784, 512)])
def test_row_major_products_map_to_column_major_gemm(rng, kind, rows, inner, cols):
    a_shape = (inner, rows) if kind == "tn" else (rows, inner)
    b_shape = (cols, inner) if kind == "nt" else (inner, cols)
    a, b = rng.normal(size=a_shape), rng.normal(size=b_shape)
    out_shape, trans_first, trans_second, m, n, k, ld_first, ld_second, ldc = row_major_gemm(kind, a.shape, b.shape)
    assert out_shape == (rows, cols)
    out = np.full(rows * cols, np.nan)
    column_major_gemm(trans_first, trans_second, m, n, k, 1.0, b.ravel(), ld_first, a.ravel(), ld_second, 0.0,
                      out, ldc)
    np.testing.assert_allclose(out.reshape(out_shape), CASES[kind](a, b), rtol=1e-12, atol=1e-12)


def test_shapes_that_do_not_fit_are_named():
    with pytest.raises(ValueError, match=r"shapes \(3, 4\) and \(5, 2\) do not fit"):
        row_major_gemm("nn", (3, 4), (5, 2))
    with pytest.raises(ValueError, match="unknown product"):
        row_major_gemm("tt", (3, 4), (4, 3))


def test_library_loading_names_what_is_missing(monkeypatch):
    import ctypes

    def refuse(name, *args, **kwargs):
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(ctypes, "CDLL", refuse)
    with pytest.raises(OSError, match=r"cannot load libcublas\.so\.13 .*dlopen\(libcublas\.so\.13\)"):
        load_library(13)
