"""The CuPy kernels' definitions, checked without a GPU: CuPy parses every signature when a
kernel is constructed (compilation waits for the first launch), and every function an operation
calls must be defined in its preamble, the text of kernels/*.cuh. The list is the backend's own
catalogue, so a new kernel (or a new registry activation) is checked without an entry here."""

import re

import pytest

cupy_backend = pytest.importorskip("gpunn.backends.cupy_backend", reason="CuPy is not installed")
from gpunn.backends import cupy_kernels  # noqa: E402 (after the skip: it imports CuPy)
from gpunn.kernels.activations import REGISTRY  # noqa: E402


def expressions(kernel) -> str:
    """The C code a kernel runs: an ElementwiseKernel's operation and the code around its loop,
    a ReductionKernel's maps."""
    if hasattr(kernel, "operation"):
        return " ".join((kernel.kwargs.get("loop_prep", ""), kernel.operation, kernel.kwargs.get("after_loop", "")))
    return " ".join((kernel.map_expr, kernel.reduce_expr, kernel.post_map_expr))


@pytest.mark.parametrize("op,variant,dtype", cupy_kernels.kernel_catalogue())
def test_kernel_is_well_formed(op, variant, dtype):
    kernel = cupy_kernels._build(op, variant, dtype)
    called = set(re.findall(r"\b(gpunn_\w+)\s*(?:<[^<>()]*>)?\s*\(", expressions(kernel)))  # templates too
    if hasattr(kernel, "operation"):  # every elementwise op calls the .cuh; a plain sum need not
        assert called, expressions(kernel)
    defined = set(re.findall(r"\b(gpunn_\w+)\s*\(", kernel.preamble))
    assert called <= defined, f"{op}: {called - defined} not defined in the preamble"
    assert kernel.name not in defined, f"kernel {kernel.name} has the name of a preamble function"
    assert "#include" not in kernel.preamble
    spec = cupy_kernels.KERNELS[op]
    assert len(spec.arguments(variant, dtype)) == len(kernel.in_params) + len(kernel.out_params)


def test_catalogue_covers_every_op_activation_and_dtype():
    from gpunn.backends.base import ACTIVATIONS

    catalogue = set(cupy_kernels.kernel_catalogue())
    for dtype in cupy_backend.CupyBackend.supported_dtypes:
        assert {("bias_activation", a, dtype) for a in ACTIVATIONS} <= catalogue
        assert {("activation_backward", a, dtype) for a in ACTIVATIONS} <= catalogue
    kernel_names = [cupy_kernels._build(*entry).name for entry in catalogue if entry[2] == "float32"]
    assert len(set(kernel_names)) == len(kernel_names), "two kernels share a name"


def test_catalogue_covers_every_registered_activation():
    catalogue = set(cupy_kernels.kernel_catalogue())
    for name in REGISTRY:
        for op in ("bias_activation", "bias_activation_saving", "activation_backward"):
            assert {(op, name, dtype) for dtype in ("float16", "float32", "float64")} <= catalogue


def test_activation_parameters_become_kernel_arguments():
    kernel = cupy_kernels._build("activation_backward", "softplus", "float32")
    assert [param.name for param in kernel.in_params[-2:]] == ["beta", "threshold"]
    assert "gpunn_softplus_backward(gpunn_dropout((float) dy" in kernel.operation
    assert "beta, threshold)" in kernel.operation


def test_unknown_kernel_is_an_error():
    with pytest.raises(ValueError, match="unknown kernel"):
        cupy_kernels._build("softmax", "", "float32")
