"""Every kernel the CuPy backend builds compiles as CuPy 14 will compile it on the GPU, with no GPU.

For each entry of ``cupy_kernels.KERNELS`` (every op, variant and storage dtype), the source comes
from CuPy's own code generator fed the argument types gpunn passes at launch
(``cupy._core._kernel._get_elementwise_kernel_code``, and for reductions
``cupy._core._reduction._ReductionKernel_get_cached_function_code``), behind CuPy's headers
(``core._cupy_header_list``), compiled by CuPy's NVRTC wrapper with CuPy's options
(``core.assemble_cupy_compiler_options``: bundled CCCL, ``--std=c++17``, CuPy's and CUDA's
include folders; then ``-ftz=true``, ``-arch=sm_XX`` and ``--device-as-default-execution-space``
as ``cupy/cuda/compiler.py`` adds them) into a cubin for sm_90 and sm_80. NVRTC needs no driver.

The internals used are CuPy 14.2's; if they move, these tests fail with a message naming the CuPy
version, so the generator is followed, never silently skipped.
"""

import concurrent.futures
import os

import numpy as np
import pytest

try:
    import cupy
except ImportError as error:  # the README's test command installs it: pip install -e ".[test,cuda13]"
    raise RuntimeError("the NVRTC compile check needs CuPy: pip install -e '.[test,cuda13]'") from error

from gpunn.backends import cupy_kernels
from gpunn.bench import cost_model
from gpunn.kernels.activations import REGISTRY

#: (architecture, 32-bit indexing): CuPy indexes with 64 bits for arrays of 2**31 elements or more.
TARGETS = [("90", True), ("90", False), ("80", True)]
#: The fused activation kernels (a build per activation, dtype and vector width, 0.4 s each to compile)
#: take 64-bit indexing for one activation per build: CuPy's indexer types reach only the operation's
#: loop, which is the same text for every activation (the activation is a preamble function the
#: operation calls), so another activation adds nothing to the 64-bit build but compile time. Softplus:
#: the one with two parameters and the most maths.
WIDE_INDEX_ACTIVATION = "softplus"


def targets(op, variant):
    """The (architecture, 32-bit indexing) pairs an entry is compiled for."""
    if variant in REGISTRY and variant != WIDE_INDEX_ACTIVATION:
        return [target for target in TARGETS if target[1]]
    return TARGETS


def internals():
    try:
        from cupy._core import _carray, _kernel, _reduction, _scalar, core
        from cupy.cuda import compiler

        return (_kernel, _reduction, core, compiler, _kernel._ArgInfo, _carray.Indexer, _scalar.CScalar,
                core.assemble_cupy_compiler_options, core._cupy_header_list, compiler._NVRTCProgram)
    except (ImportError, AttributeError) as error:
        pytest.fail(f"CuPy {cupy.__version__}: its kernel code generator is not where CuPy 14.2 keeps it "
                    f"({error}); update tests/kernels/test_nvrtc_compile.py to this CuPy's internals")


def generated_source(kernel, arguments, index_32_bits):
    """(source, options) exactly as CuPy builds them for this launch."""
    internals()  # a CuPy whose generator moved fails with the message above
    try:
        if isinstance(kernel, cupy.ElementwiseKernel):  # the cost model compiles from the same generator
            in_dtypes = tuple(np.dtype(a.dtype) if a.kind != "scalar" else None for a in arguments[:kernel.nin])
            out_dtypes = tuple(np.dtype(a.dtype) for a in arguments[kernel.nin:])
            in_types, _, _ = kernel._decide_params_type(in_dtypes, out_dtypes)
            for arg, decided in zip(arguments, in_types):  # CuPy casts a scalar to its parameter's type
                assert arg.kind != "scalar" or np.dtype(decided) == np.dtype(arg.dtype), (arg, decided)
            return cost_model.cupy_source(kernel, arguments, index_32_bits)
        return cost_model.cupy_reduction_source(kernel, arguments, index_32_bits)
    except (AttributeError, TypeError) as error:
        pytest.fail(f"CuPy {cupy.__version__}: its kernel code generator changed ({type(error).__name__}: {error}); "
                    "update tests/kernels/test_nvrtc_compile.py to this CuPy's internals")


def compile_for(kernel, source, options, arch):
    """The cubin NVRTC makes of ``source`` with the options CuPy's compile_with_cache passes."""
    internals()  # a CuPy whose compiler moved fails with the message above
    return cost_model.nvrtc_cubin(kernel.name, source, options, arch)


def compile_kernel(op, variant, dtype):
    """{(arch, 32-bit indexing): cubin} for one catalogue entry, or the exception it raised."""
    kernel = cupy_kernels._build(op, variant, dtype)
    arguments = cupy_kernels.KERNELS[op].arguments(variant, dtype)
    cubins = {}
    for arch, index_32_bits in targets(op, variant):
        source, options = generated_source(kernel, arguments, index_32_bits)
        assert f'extern "C" __global__ void {kernel.name}(' in source
        cubins[arch, index_32_bits] = compile_for(kernel, source, options, arch)
    return kernel.name, cubins


@pytest.fixture(scope="module")
def compiled():
    """Every catalogue entry compiled once, on all cores: NVRTC releases the GIL while it compiles."""
    internals()  # a CuPy whose generator moved fails here, once, with the message above

    def attempt(entry):
        try:
            return compile_kernel(*entry)
        except (Exception, pytest.fail.Exception) as error:  # reported by the entry's own test
            return error

    catalogue = cupy_kernels.kernel_catalogue()
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        return dict(zip(catalogue, pool.map(attempt, catalogue)))


@pytest.mark.parametrize("op,variant,dtype", cupy_kernels.kernel_catalogue())
def test_kernel_compiles_with_nvrtc_as_cupy_compiles_it(compiled, op, variant, dtype):
    result = compiled[op, variant, dtype]
    if isinstance(result, BaseException):
        raise result
    name, cubins = result
    assert set(cubins) == set(targets(op, variant))
    for target, cubin in cubins.items():
        assert cubin[:4] == b"\x7fELF" and name.encode() in cubin, target


def test_a_kernel_calling_an_undefined_function_fails_to_compile():
    """The check can fail: an operation calling what its preamble lacks is an NVRTC error."""
    from cupy.cuda.compiler import CompileException

    kernel = cupy.ElementwiseKernel("T z, T b", "T y", "y = gpunn_softplus_forward(z + b)", "gpunn_broken_kernel",
                                    preamble=cupy_kernels.kernel_source("activations.cuh"))
    arguments = (cupy_kernels.Arg("float32"), cupy_kernels.Arg("float32", "row"), cupy_kernels.Arg("float32"))
    source, options = generated_source(kernel, arguments, True)
    with pytest.raises(CompileException, match="gpunn_softplus_forward"):
        compile_for(kernel, source, options, "90")
