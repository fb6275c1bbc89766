"""The memory order of the last-block kernels (kernels/grid.cuh, the gradient norm and the update's
counters), which a host run cannot show by itself: x86 orders stores more strongly than a GPU.

* The fences are checked as the stand-in runs the kernel (tests/support/cupy_standin/_host.py): a
  ticket taken without a release ``__threadfence()`` before it, or a last ticket without an
  acquire fence before the block's next barrier, makes the launch fail. The tests delete each
  fence from the source CuPy would compile and expect that failure.
* The volatile read is checked in the code CuPy generates for the gradient norm: once it is the
  last block, it reads the other blocks' partial sums only through a ``volatile`` pointer (a
  plain load may hit a stale line of its SM's L1: CUDA's threadFenceReduction sample and the
  programming guide's memory fence functions). The test removes ``volatile`` and expects the
  check to fail.
"""

import re
import sys

import numpy as np
import pytest

import gpunn as gn
from gpunn.backends.selection import resolve_backend
from support import cupy_standin
from support.cupy_standin import StandinViolation
from support.models import mlp

RELEASE = "__threadfence();  // release"
ACQUIRE = "if (last) __threadfence();"
FENCE_DELETIONS = {"release": (RELEASE, ";  // release"), "acquire": (ACQUIRE, "if (last) {}")}


@pytest.fixture
def standin():
    with cupy_standin.installed() as installed:
        yield installed, resolve_backend("cupy")


def gradient_norm(backend, rng):
    x = rng.normal(size=1000).astype("float32")
    out = backend.zeros((1,), "float32")
    backend.global_norm(backend.asarray(x), out=out, scratch=backend.optimizer_scratch("float32"))
    np.testing.assert_allclose(backend.to_numpy(out)[0], np.linalg.norm(x), rtol=1e-5)


def adam_steps(backend, rng):
    """Adam without clipping (no norm kernel): its update takes the counters' ticket each step."""
    model = mlp(backend, "float32")
    model.fit(rng.normal(size=(16, 6)), rng.integers(0, 3, size=16), loss=gn.SoftmaxCrossEntropyLoss(),
              optimizer=gn.Adam(lr=1e-3), epochs=2, batch_size=8, verbose=0, seed=0)


KERNELS = {"gradient-norm": gradient_norm, "update": adam_steps}


@pytest.mark.parametrize("kernel", sorted(KERNELS))
def test_the_kernels_as_written_keep_both_fences(standin, rng, kernel):
    _, backend = standin
    KERNELS[kernel](backend, rng)


@pytest.mark.parametrize("kernel", sorted(KERNELS))
@pytest.mark.parametrize("fence", sorted(FENCE_DELETIONS))
def test_deleting_a_fence_fails_the_launch(standin, monkeypatch, rng, fence, kernel):
    _, backend = standin
    kernels = sys.modules["gpunn.backends.cupy_kernels"]
    original, (present, replacement) = kernels.kernel_source, FENCE_DELETIONS[fence]

    def without_fence(*files):
        text = original(*files)
        if "grid.cuh" in files:
            assert present in text, f"kernels/grid.cuh changed: update this test's {fence} fence"
            text = text.replace(present, replacement)
        return text

    monkeypatch.setattr(kernels, "kernel_source", without_fence)
    with pytest.raises(StandinViolation, match=f"without its {fence} __threadfence"):
        KERNELS[kernel](backend, rng)


def generated_sources(monkeypatch):
    """Every kernel source the stand-in compiles from now on (what CuPy would compile)."""
    from support.cupy_standin import _host

    sources, original = [], _host.load
    monkeypatch.setattr(_host, "load", lambda source: sources.append(source) or original(source))
    return sources


def last_block_reads_are_volatile(source: str) -> bool:
    """After ``gpunn_last_block``, ``partials`` is read only through a volatile pointer to it."""
    after = source[source.index("if (gpunn_last_block(&tickets[0]))"):]
    pointers = re.findall(r"volatile\s+\w+\s*\*\s*(\w+)\s*=\s*&partials\[0\]", after)
    plain_reads = re.findall(r"(?<![&\w])partials\[", after)
    return bool(pointers) and not plain_reads and all(re.search(rf"\b{name}\[b\]", after) for name in pointers)


def test_the_gradient_norm_reads_the_blocks_sums_through_volatile(standin, monkeypatch, rng):
    _, backend = standin
    sources = generated_sources(monkeypatch)
    backend.global_norm(backend.asarray(rng.normal(size=300).astype("float32")), out=backend.zeros((1,), "float32"))
    (source,) = [text for text in sources if "gpunn_gradient_norm_kernel" in text]
    assert last_block_reads_are_volatile(source)


def test_removing_volatile_from_the_generated_code_is_caught(standin, monkeypatch, rng):
    _, backend = standin
    kernels = sys.modules["gpunn.backends.cupy_kernels"]
    original = kernels._elementwise

    def without_volatile(*arguments, **code):
        if "after_loop" in code:
            code["after_loop"] = code["after_loop"].replace("volatile C* sums", "C* sums")
        return original(*arguments, **code)

    monkeypatch.setattr(kernels, "_elementwise", without_volatile)
    sources = generated_sources(monkeypatch)
    backend.global_norm(backend.asarray(rng.normal(size=300).astype("float32")), out=backend.zeros((1,), "float32"))
    (source,) = [text for text in sources if "gpunn_gradient_norm_kernel" in text]
    assert not last_block_reads_are_volatile(source)
