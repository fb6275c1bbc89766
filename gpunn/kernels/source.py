"""Reading the CUDA source beside this module: the one place the fused maths lives.

``kernel_source`` inlines the files' ``#include "…"`` lines so that the text can
be handed to CuPy as an ElementwiseKernel preamble, which NVRTC compiles with no include path.
"""

from __future__ import annotations

import re
from pathlib import Path

_INCLUDE = re.compile(r'^\s*#include\s+"([^"]+)"\s*$', re.MULTILINE)


def kernel_dir() -> Path:
    """The folder holding the ``*.cuh`` files: this package's own folder."""
    return Path(__file__).resolve().parent


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
