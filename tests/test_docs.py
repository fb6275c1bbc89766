"""The docs pages' snippets run as they stand, every page is reachable from the README, and no
relative link points nowhere.

Every ```python block of docs/*.md runs in a fresh scope, in its own temporary folder, under the
backend a user's session starts on. A block whose fence reads ```python no-run: REASON is skipped with
that reason (for code that cannot run on a CPU-only machine; keep them rare); shell commands belong in
```bash blocks, which are not run.
"""

import contextvars
import re
import sys
from pathlib import Path

import pytest

import gpunn as gn

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))

FENCE = re.compile(r"^```python([^\n]*)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def snippets():
    for page in PAGES:
        for index, match in enumerate(FENCE.finditer(page.read_text())):
            info, code = match.group(1).strip(), match.group(2)
            marks = ()
            if info.startswith("no-run"):
                reason = info[len("no-run"):].lstrip(":").strip() or "marked no-run"
                marks = (pytest.mark.skip(reason=f"{page.name} block {index}: {reason}"),)
            yield pytest.param(page, index, code, id=f"{page.stem}:{index}", marks=marks)


def test_there_are_pages_and_snippets():
    assert {page.name for page in PAGES} >= {"training.md", "layers.md", "backends.md", "distributed.md",
                                             "cli.md", "benchmarks.md", "gpu.md"}
    assert sum(1 for _ in snippets()) >= len(PAGES)


#: Libraries a snippet may show gpunn beside that no extra installs (PyPI's torch is a CUDA build of
#: several GB): such a snippet runs where the library is installed and skips, saying so, where not.
PEERS = ("torch", "jax")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("page, index, code", list(snippets()))
def test_snippet_runs(page, index, code, tmp_path, monkeypatch):
    if "distributed" in code:  # an MPI world of one: needs mpi4py (the test and mpi extras)
        pytest.importorskip("mpi4py")
    for peer in PEERS:
        if re.search(rf"^\s*(import|from) {peer}\b", code, re.MULTILINE):
            pytest.importorskip(peer, reason=f"{page.name} block {index} shows gpunn beside {peer}, not installed")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # gpunn.distributed.init may install one
    precision = gn.get_matmul_precision()
    scope = {"__name__": f"docs_{page.stem}_{index}"}
    try:
        # a copy of the context: a snippet's gn.use_backend(...) ends with it
        contextvars.copy_context().run(exec, compile(code, f"{page.relative_to(ROOT)} block {index}", "exec"), scope)
    finally:
        gn.set_matmul_precision(precision)


def slug(heading):
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path):
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.MULTILINE | re.DOTALL)
    return {slug(line.lstrip("#")) for line in text.splitlines() if re.match(r"#{1,6} ", line)}


def links(path):
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.MULTILINE | re.DOTALL)
    return [target for target in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", target)]


@pytest.mark.parametrize("path", [ROOT / "README.md", *PAGES], ids=lambda path: path.name)
def test_relative_links_point_to_files_and_headings(path):
    for target in links(path):
        file, _, anchor = target.partition("#")
        destination = (path.parent / file).resolve() if file else path
        assert destination.exists(), f"{path.relative_to(ROOT)}: {target} does not exist"
        if anchor and destination.suffix == ".md":
            assert anchor in anchors(destination), f"{path.relative_to(ROOT)}: no heading for #{anchor}"


def test_the_readme_links_every_docs_page():
    linked = {(ROOT / target.partition("#")[0]).resolve() for target in links(ROOT / "README.md")}
    missing = [page.name for page in PAGES if page.resolve() not in linked]
    assert not missing, f"README.md does not link {missing}"
