"""The CuPy kernels' definitions, checked without a GPU: CuPy parses every signature when a
kernel is constructed (compilation waits for the first launch), and every function an operation
calls must be defined in its preamble, the text of kernels/*.cuh. The list is the backend's own
catalogue, so a new kernel (or a new registry activation) is checked without an entry here."""

import re

import pytest

from gpunn.backends.activations import REGISTRY

cupy_backend = pytest.importorskip("gpunn.backends.cupy_backend", reason="CuPy is not installed")


def expressions(kernel) -> str:
    """The C code a kernel runs: an ElementwiseKernel's operation, a ReductionKernel's maps."""
    if hasattr(kernel, "operation"):
        return kernel.operation
    return " ".join((kernel.map_expr, kernel.reduce_expr, kernel.post_map_expr))


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize("op,activation", cupy_backend.kernel_catalogue())
def test_kernel_is_well_formed(op, activation, dtype):
    kernel = cupy_backend._build(op, activation, dtype)
    called = set(re.findall(r"\b(gpunn_\w+)\s*\(", expressions(kernel)))
    if hasattr(kernel, "operation"):  # every elementwise op calls the .cuh; a plain sum need not
        assert called, expressions(kernel)
    defined = set(re.findall(r"\b(gpunn_\w+)\s*\(", kernel.preamble))
    assert called <= defined, f"{op}: {called - defined} not defined in the preamble"
    assert "#include" not in kernel.preamble


def test_catalogue_covers_every_registered_activation():
    catalogue = cupy_backend.kernel_catalogue()
    for name in REGISTRY:
        assert {("bias_activation", name), ("bias_activation_saving", name), ("activation_backward", name)} <= set(catalogue)


def test_activation_parameters_become_kernel_arguments():
    kernel = cupy_backend._build("activation_backward", "softplus", "float32")
    assert [param.name for param in kernel.in_params[-2:]] == ["beta", "threshold"]
    assert "gpunn_softplus_backward(gpunn_dropout((float) dy" in kernel.operation
    assert "beta, threshold)" in kernel.operation


def test_unknown_kernel_is_an_error():
    with pytest.raises(ValueError, match="unknown kernel"):
        cupy_backend._build("softmax", "", "float32")
