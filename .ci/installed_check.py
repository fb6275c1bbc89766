"""Run by .ci/run from the venv of the README's first command, outside any checkout: the gpunn
that pip installed (not a source folder) imports whole, finds its kernel sources and benchmark
suite, and has every public name that the README and docs/ use. Arguments: the checkout's folder."""

import importlib
import pkgutil
import re
import sys
from pathlib import Path

import gpunn
from gpunn.bench.report import suite_dir
from gpunn.kernels.source import kernel_dir, kernel_source

checkout = Path(sys.argv[1])
assert "site-packages" in gpunn.__file__, f"imported {gpunn.__file__}, not the installed wheel"
modules = [info.name for info in pkgutil.walk_packages(gpunn.__path__, "gpunn.") if info.name != "gpunn.__main__"]
optional = {}
for name in modules:
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as error:  # an extra's library (cupy, mpi4py, pytest) is fine; a gpunn module is not
        if error.name is None or error.name.split(".")[0] == "gpunn":
            raise
        optional[name] = error.name
cuh = sorted(path.name for path in kernel_dir().glob("*.cuh"))
assert cuh == sorted(path.name for path in (checkout / "gpunn" / "kernels").glob("*.cuh")), cuh
kernel_source(*cuh)
assert (suite_dir() / "test_benchmarks.py").is_file() and (suite_dir() / "conftest.py").is_file()
pages = [checkout / "README.md", *sorted((checkout / "docs").glob("*.md"))]
code = "\n".join(block for page in pages for block in re.findall(r"```(?:python|bash)[^\n]*\n(.*?)```",
                                                                      page.read_text(), re.S))
names = sorted(set(re.findall(r"\bgn\.([A-Za-z_]\w*)", code)))
missing = [name for name in names if not hasattr(gpunn, name)]
assert not missing, f"the README or docs use gn.{missing}, which the installed gpunn lacks"
print(f"installed gpunn {gpunn.__version__} at {Path(gpunn.__file__).parent}: {len(modules) - len(optional)} modules "
      f"import ({', '.join(f'{name} needs {needs}' for name, needs in sorted(optional.items())) or 'all'}), "
      f"{len(cuh)} kernel sources, the benchmark suite, and the {len(names)} public names the README and docs use")
