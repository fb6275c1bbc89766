"""How to install one of gpunn's extras, said in the form that works for the way gpunn was installed.

``pip install "gpunn[cuda13]"`` asks a package index for gpunn, which is right only where gpunn came
from one. A user who installed from a checkout (``pip install .``, as the README's first command does)
needs ``pip install ".[cuda13]"`` from that folder; one who installed a wheel file needs that file.
pip records where a distribution came from in ``direct_url.json`` (PEP 610); this module reads it.
"""

from __future__ import annotations

import json
import os
from importlib import metadata
from pathlib import Path
from urllib.parse import unquote, urlparse


def _origin() -> tuple[str, str | None, bool]:
    """("index" | "folder" | "file" | "vcs" | "source", path or URL, editable)."""
    try:
        distribution = metadata.distribution("gpunn")
    except metadata.PackageNotFoundError:  # imported from a source tree that was never installed
        return "source", str(Path(__file__).resolve().parent.parent), False
    try:
        record = json.loads(distribution.read_text("direct_url.json") or "null")
    except ValueError:
        record = None
    if not isinstance(record, dict) or not isinstance(record.get("url"), str):
        return "index", None, False
    url = record["url"]
    if "vcs_info" in record:
        return "vcs", f"{record['vcs_info'].get('vcs', 'git')}+{url}", False
    location = unquote(urlparse(url).path) if url.startswith("file:") else url
    if "dir_info" in record:
        return "folder", location, bool(record["dir_info"].get("editable"))
    return "file", location, False


def cuda_install_hint() -> str:
    """The two GPU installs: the extra that matches the CUDA major version of the machine's driver."""
    return f"{install_command('cuda13')} for a CUDA 13 driver, or {install_command('cuda12')} for CUDA 12"


def install_command(extra: str) -> str:
    """The pip command that adds ``extra`` (``"cuda13"``, ``"mpi"``, …) to this installation."""
    kind, where, editable = _origin()
    if kind == "index":
        return f'pip install "gpunn[{extra}]"'
    if kind == "vcs":
        return f'pip install "gpunn[{extra}] @ {where}"'
    if kind in ("folder", "source"):
        here = os.path.abspath(os.getcwd())
        shown = "." if os.path.abspath(where) == here else where
        return f'pip install {"-e " if editable else ""}"{shown}[{extra}]"'
    if "://" in where:  # a wheel or sdist fetched from a URL
        return f'pip install "gpunn[{extra}] @ {where}"'
    return f'pip install "{where}[{extra}]"'  # a wheel or sdist file on this machine
