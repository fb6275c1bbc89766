"""Finding and reading the CUDA source in ``kernels/``: the one place the fused maths lives.

In a wheel the files sit in ``gpunn/kernels/``; in a source checkout, in ``kernels/`` beside
the package. ``kernel_source`` inlines the files' ``#include "…"`` lines so that the text can
be handed to CuPy as an ElementwiseKernel preamble, which NVRTC compiles with no include path.
"""

from __future__ import annotations

import re
from pathlib import Path

_INCLUDE = re.compile(r'^\s*#include\s+"([^"]+)"\s*$', re.MULTILINE)


def kernel_dir() -> Path:
    """The folder holding the ``*.cuh`` files, installed or in a source checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "kernels", here.parent / "kernels"):
        if (candidate / "activations.cuh").is_file():
            return candidate
    raise FileNotFoundError(f"gpunn's CUDA kernels are missing: looked in {here / 'kernels'} and "
                            f"{here.parent / 'kernels'}; reinstall gpunn")


def kernel_source(*names: str) -> str:
    """The text of the named ``.cuh`` files with their local includes inlined, each file once."""
    folder, seen, parts = kernel_dir(), set(), []

    def inline(name: str) -> None:
        if name in seen:
            return
        seen.add(name)
        text = (folder / name).read_text()
        for match in _INCLUDE.finditer(text):
            inline(match.group(1))
        parts.append(f"// ---- {name}\n" + _INCLUDE.sub("", text))

    for name in names:
        inline(name)
    return "\n".join(parts)
