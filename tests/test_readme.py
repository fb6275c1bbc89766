"""The README's commands are the ones that exist: CI runs exactly its test command."""

import re

import numpy as np
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def readme_commands():
    text = (ROOT / "README.md").read_text()
    block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line.split("#")[0].strip() for line in block.strip().splitlines()]


def test_ci_runs_both_readme_commands_as_written():
    install_and_run, test_command = readme_commands()
    # the first command works from nothing: a fresh environment, a non-editable install, then train
    assert install_and_run.startswith("python3 -m venv .venv && . .venv/bin/activate && pip install")
    assert install_and_run.endswith('pip install ".[data]" && gpunn train') and " -e " not in install_and_run
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert install_and_run in ci and test_command in ci
    # the first runs in a fresh clone, the second where CI stands; the benchmark run is a step of its own
    assert ci.index(install_and_run) < ci.index(test_command) < ci.index("python -m pytest -m benchmark_run")
    assert any(line.startswith('git clone -q "$checkout"') for line in ci)


def test_the_first_commands_extra_has_everything_train_uses():
    line = next(line for line in (ROOT / "pyproject.toml").read_text().splitlines() if line.startswith("data = ["))
    names = set(re.findall(r'"([A-Za-z0-9_.-]+)[<>=!~]', line))  # tomllib needs Python 3.11
    assert {"scikit-learn", "tqdm", "matplotlib"} <= names  # digits, progress, curves.png


def test_readme_api_example_runs(tmp_path, monkeypatch):
    text = (ROOT / "README.md").read_text()
    example = text.split("## The API in ten lines\n\n```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(compile(example, "README", "exec"), scope)
    assert scope["probs"][0, 0] > 0.9 and scope["probs"][1, 0] < 0.1
    assert (tmp_path / "m.npz").exists()


def test_readme_bridges_example_runs(tmp_path, monkeypatch):
    for module in ("sklearn", "onnx", "onnxruntime"):
        __import__("pytest").importorskip(module, reason=f"the bridges snippet uses {module}")
    text = (ROOT / "README.md").read_text()
    example = text.split("## Bridges to other libraries\n\n```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(compile(example, "README", "exec"), scope)
    np.testing.assert_allclose(scope["served"], scope["clf"].model_.predict(scope["X"]), rtol=1e-5, atol=1e-6)
