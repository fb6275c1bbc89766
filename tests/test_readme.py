"""The README's commands are the ones that exist: CI runs exactly its test command."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def readme_commands():
    text = (ROOT / "README.md").read_text()
    block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line.split("#")[0].strip() for line in block.strip().splitlines()]


def test_ci_runs_the_readme_test_command():
    install_and_run, test_command = readme_commands()
    # the first command works from nothing: a fresh environment, the extra train needs, then train
    assert install_and_run.startswith("python3 -m venv .venv && . .venv/bin/activate && pip install")
    assert install_and_run.endswith('pip install ".[data]" && gpunn train')
    assert test_command in (ROOT / ".ci" / "run").read_text().splitlines()


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
