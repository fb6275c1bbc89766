"""The house keeps its plan: imports point down the floors of the code map and never circle.

Every import is read, lazy ones inside functions too. A floor may import the floors below it; the
one exception is ``Sequential``'s public delegates (``fit``, ``evaluate``, ``save``), one-line entry
points into ``train`` and ``io``.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "gpunn"

#: The floors of README.md's code map, lowest first. A module may import its own floor and those below.
#: The public API (``gpunn``) sits above the library and below its users, the command line and the benchmarks.
FLOORS = [("gpunn.version", "gpunn.extras", "gpunn.checks", "gpunn.kernels"), ("gpunn.backends",), ("gpunn.nn",), ("gpunn.optim",),
          ("gpunn.distributed",), ("gpunn.data",), ("gpunn.train", "gpunn.io"),
          ("gpunn", "gpunn.layers", "gpunn.schedules"), ("gpunn.cli", "gpunn.bench", "gpunn.sklearn"), ("gpunn.__main__",)]
DELEGATES = {("gpunn.nn.sequential", "Sequential.fit"), ("gpunn.nn.sequential", "Sequential.evaluate"),
             ("gpunn.nn.sequential", "Sequential.save"), ("gpunn.nn.sequential", "Sequential.predict")}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py") if "suite" not in path.parts}


def imports(name: str):
    """(imported module, enclosing function) for every gpunn import in ``name``."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []

    def visit(node, where):
        for child in ast.iter_child_nodes(node):
            inner = f"{where}.{child.name}" if where and isinstance(child, (ast.FunctionDef, ast.ClassDef)) else (
                child.name if isinstance(child, (ast.FunctionDef, ast.ClassDef)) else where)
            if isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parts = package.split(".")[:len(package.split(".")) - child.level + 1]
                    base = ".".join(parts + ([child.module] if child.module else []))
                if base == "gpunn" or base.startswith("gpunn."):
                    for alias in child.names:
                        target = f"{base}.{alias.name}"
                        found.append((target if target in MODULES else base, where))
            elif isinstance(child, ast.Import):
                found.extend((alias.name, where) for alias in child.names if alias.name.startswith("gpunn"))
            visit(child, inner)

    visit(ast.parse(path.read_text()), "")
    return found


def floor(name: str) -> int:
    best = max((prefix for level in FLOORS for prefix in level if name == prefix or name.startswith(prefix + ".")),
               key=len)
    return next(index for index, level in enumerate(FLOORS) if best in level)


def test_every_module_has_a_floor():
    for name in MODULES:
        floor(name)


def test_no_import_points_up():
    upward = [f"{name} ({where or 'module level'}) imports {target}"
              for name in MODULES for target, where in imports(name)
              if floor(target) > floor(name) and (name, where) not in DELEGATES]
    assert not upward, "\n".join(upward)


def test_no_import_circles():
    graph = {name: {target for target, where in imports(name) if target != name and (name, where) not in DELEGATES}
             for name in MODULES}
    state, cycles = {}, []

    def walk(node, stack):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                walk(nxt, stack + [nxt])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            walk(name, [name])
    assert not cycles, "\n".join(cycles)


def test_backends_never_read_the_optimizers():
    """Registries go down: the update rules live in gpunn.kernels, which both floors read."""
    offenders = [name for name in MODULES if name.startswith("gpunn.backends")
                 for target, _ in imports(name) if target.startswith("gpunn.optim")]
    assert not offenders


@pytest.mark.parametrize("suite_only", ["conftest.py", "peers.py", "test_benchmarks.py"])
def test_the_benchmark_suite_imports_only_the_public_library(suite_only):
    """`gpunn bench` runs the suite from an installed wheel: it must not reach into the tests."""
    text = (PACKAGE / "bench" / "suite" / suite_only).read_text()
    assert "support" not in {node.names[0].name.split(".")[0] for node in ast.walk(ast.parse(text))
                             if isinstance(node, ast.Import)}
    assert "from support" not in text
