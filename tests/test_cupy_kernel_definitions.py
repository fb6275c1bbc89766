"""The CuPy kernels' definitions, checked without a GPU: CuPy parses every signature when a
kernel is constructed (compilation waits for the first launch), and every function an operation
calls must be defined in its preamble, the text of kernels/*.cuh."""

import re

import pytest

from gpunn.backends.base import ACTIVATIONS

cupy_backend = pytest.importorskip("gpunn.backends.cupy_backend", reason="CuPy is not installed")

OPS = [("bias_activation", a) for a in ACTIVATIONS] + [("activation_backward", a) for a in ACTIVATIONS] + [
    (op, "") for op in ("update_sgd", "update_sgd_master", "update_adam", "update_adam_master",
                        "optimizer_counters", "norm_of_partials", "mse_grad", "bce_with_logits_loss",
                        "bce_with_logits_grad", "softmax_cross_entropy_grad")]
#: Kernels whose operation is a plain expression, calling no kernels/*.cuh function.
PLAIN = {"sum_of_squares"}
OPS.append(("sum_of_squares", ""))


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize("op,activation", OPS)
def test_kernel_is_well_formed(op, activation, dtype):
    kernel = cupy_backend._build(op, activation, dtype)
    operation = getattr(kernel, "operation", None) or f"{kernel.map_expr}; {kernel.post_map_expr}"
    called = set(re.findall(r"\b(gpunn_\w+)\s*\(", operation))
    assert called or op in PLAIN, operation
    defined = set(re.findall(r"\b(gpunn_\w+)\s*\(", kernel.preamble))
    assert called <= defined, f"{op}: {called - defined} not defined in the preamble"
    assert "#include" not in kernel.preamble


def test_unknown_kernel_is_an_error():
    with pytest.raises(ValueError, match="unknown kernel"):
        cupy_backend._build("softplus", "", "float32")
