"""The CuPy kernels' definitions, checked without a GPU: CuPy parses every signature when a
kernel is constructed (compilation waits for the first launch), and every function an operation
calls must be defined in its preamble, the text of kernels/*.cuh."""

import re

import pytest

cupy_backend = pytest.importorskip("gpunn.backends.cupy_backend", reason="CuPy is not installed")

#: Kernels whose operation is a plain expression, calling no kernels/*.cuh function.
PLAIN = {"sum_of_squares"}


@pytest.mark.parametrize("op,variant,dtype", cupy_backend.kernel_catalogue())
def test_kernel_is_well_formed(op, variant, dtype):
    kernel = cupy_backend._build(op, variant, dtype)
    operation = getattr(kernel, "operation", None) or f"{kernel.map_expr}; {kernel.post_map_expr}"
    called = set(re.findall(r"\b(gpunn_\w+)\s*\(", operation))
    assert called or op in PLAIN, operation
    defined = set(re.findall(r"\b(gpunn_\w+)\s*\(", kernel.preamble))
    assert called <= defined, f"{op}: {called - defined} not defined in the preamble"
    assert kernel.name not in defined, f"kernel {kernel.name} has the name of a preamble function"
    assert "#include" not in kernel.preamble
    spec = cupy_backend.KERNELS[op]
    assert len(spec.arguments(dtype)) == len(kernel.in_params) + len(kernel.out_params)


def test_catalogue_covers_every_op_activation_and_dtype():
    from gpunn.backends.base import ACTIVATIONS

    catalogue = set(cupy_backend.kernel_catalogue())
    for dtype in cupy_backend.CupyBackend.supported_dtypes:
        assert {("bias_activation", a, dtype) for a in ACTIVATIONS} <= catalogue
        assert {("activation_backward", a, dtype) for a in ACTIVATIONS} <= catalogue
    kernel_names = [cupy_backend._build(*entry).name for entry in catalogue if entry[2] == "float32"]
    assert len(set(kernel_names)) == len(kernel_names), "two kernels share a name"


def test_unknown_kernel_is_an_error():
    with pytest.raises(ValueError, match="unknown kernel"):
        cupy_backend._build("softplus", "", "float32")
