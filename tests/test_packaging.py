"""What users install is what the source tree holds: the sdist, and the wheel built from it as pip
builds one for PyPI users, carry every package, every kernel source and the benchmark suite, and
nothing that only the tests use. (CI also installs the README's way, non-editable, into a fresh
venv and trains: `.ci/run`.)"""

import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "gpunn"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(sdist names, wheel names, wheel metadata text): ``python -m build`` makes the sdist, then the
    wheel from the unpacked sdist, each in an isolated environment with pyproject's setuptools."""
    pytest.importorskip("build", reason="the test extra installs `build` (pip install -e '.[test]')")
    out, tree = tmp_path_factory.mktemp("dist"), tmp_path_factory.mktemp("tree") / "gpunn"
    # From a copy without the outputs of earlier builds (build/, *.egg-info), which setuptools would reuse.
    shutil.copytree(ROOT, tree, ignore=shutil.ignore_patterns("build", "dist", "*.egg-info", ".venv", ".git",
                                                              "__pycache__", ".pytest_cache", "gpunn-run"))
    result = subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), str(tree)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    sdist, = out.glob("gpunn-*.tar.gz")
    wheel, = out.glob("gpunn-*.whl")
    with tarfile.open(sdist) as archive:
        sdist_names = archive.getnames()
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = {name.rsplit("/", 1)[1]: archive.read(name).decode() for name in names
                    if ".dist-info/" in name and name.endswith(("METADATA", "entry_points.txt"))}
    return sdist_names, names, metadata


def source_files(pattern):
    return sorted(path.relative_to(ROOT).as_posix() for path in PACKAGE.rglob(pattern)
                  if "__pycache__" not in path.parts)


def test_the_wheel_carries_every_module_of_the_source_tree(built):
    _, names, _ = built
    missing = [path for path in source_files("*.py") if path not in names]
    assert not missing, f"the wheel users install lacks {missing}: 'pip install .' (not -e) would break"
    packages = {path.rsplit("/", 1)[0] for path in source_files("*.py")} - {"gpunn/bench/suite"}
    assert all(f"{package}/__init__.py" in names for package in packages)


def test_the_wheel_carries_the_kernel_sources_it_compiles(built):
    _, names, _ = built
    kernels = source_files("*.cuh")
    assert kernels and all(path in names for path in kernels)


def test_the_wheel_carries_nothing_only_the_tests_use(built):
    _, names, _ = built
    assert not [name for name in names if name.startswith(("tests/", "support/", "benchmarks/"))
                or "cupy_standin" in name or name.endswith(".cu")]


def test_the_wheel_declares_the_command_and_the_extras(built):
    _, _, metadata = built
    assert "gpunn = gpunn.cli:main" in metadata["entry_points.txt"]
    extras = {line.split(": ", 1)[1] for line in metadata["METADATA"].splitlines()
              if line.startswith("Provides-Extra: ")}
    assert {"data", "cuda12", "cuda13", "mpi", "bench", "test"} <= extras
    from gpunn.version import __version__

    assert f"\nVersion: {__version__}\n" in metadata["METADATA"]


def test_the_sdist_builds_the_same_wheel(built):
    sdist_names, _, _ = built
    top = sdist_names[0].split("/", 1)[0]
    assert all(f"{top}/{path}" in sdist_names for path in source_files("*.py") + source_files("*.cuh"))
