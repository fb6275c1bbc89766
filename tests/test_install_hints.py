"""Install hints name a command that works for the way gpunn was installed (PEP 610's
direct_url.json says where pip took it from): a checkout, an editable checkout, a wheel file, a
git URL, a package index, or a source tree that was never installed."""

import json
import os
from importlib import metadata

import pytest

from gpunn import extras


class Installed:
    def __init__(self, direct_url):
        self.direct_url = direct_url

    def read_text(self, name):
        assert name == "direct_url.json"
        return None if self.direct_url is None else json.dumps(self.direct_url)


def installed(monkeypatch, direct_url):
    monkeypatch.setattr(extras.metadata, "distribution", lambda name: Installed(direct_url))


@pytest.mark.parametrize("direct_url,expected", [
    (None, 'pip install "gpunn[cuda13]"'),  # from an index: the only case the PyPI form fits
    ({"url": "file:///home/ada/gpunn", "dir_info": {}}, 'pip install "/home/ada/gpunn[cuda13]"'),
    ({"url": "file:///home/ada/gpunn", "dir_info": {"editable": True}}, 'pip install -e "/home/ada/gpunn[cuda13]"'),
    ({"url": "file:///tmp/w/gpunn-0.1.0-py3-none-any.whl", "archive_info": {}},
     'pip install "/tmp/w/gpunn-0.1.0-py3-none-any.whl[cuda13]"'),
    ({"url": "https://example.org/gpunn-0.1.0.tar.gz", "archive_info": {}},
     'pip install "gpunn[cuda13] @ https://example.org/gpunn-0.1.0.tar.gz"'),
    ({"url": "https://example.org/gpunn.git", "vcs_info": {"vcs": "git", "commit_id": "abc"}},
     'pip install "gpunn[cuda13] @ git+https://example.org/gpunn.git"'),
    ({"url": "file:///home/my%20work/gpunn", "dir_info": {}}, 'pip install "/home/my work/gpunn[cuda13]"'),
])
def test_the_hint_fits_where_gpunn_came_from(monkeypatch, tmp_path, direct_url, expected):
    monkeypatch.chdir(tmp_path)
    installed(monkeypatch, direct_url)
    assert extras.install_command("cuda13") == expected


def test_from_inside_the_checkout_it_was_installed_from_the_readme_form(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    installed(monkeypatch, {"url": tmp_path.as_uri(), "dir_info": {}})
    assert extras.install_command("data") == 'pip install ".[data]"'


def test_a_source_tree_never_installed_points_at_itself(monkeypatch, tmp_path):
    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(extras.metadata, "distribution", missing)
    root = os.path.dirname(os.path.dirname(os.path.abspath(extras.__file__)))
    assert extras.install_command("mpi") == f'pip install "{root}[mpi]"'


def test_a_damaged_record_falls_back_to_the_index_form(monkeypatch):
    monkeypatch.setattr(extras.metadata, "distribution", lambda name: type("D", (), {
        "read_text": lambda self, name: "{not json"})())
    assert extras.install_command("bench") == 'pip install "gpunn[bench]"'


def test_every_hint_in_the_library_goes_through_it(monkeypatch):
    """No message hard-codes the PyPI form: a user who installed from a checkout would be sent to an
    index that may not have gpunn at all."""
    from pathlib import Path

    package = Path(extras.__file__).resolve().parent
    offenders = [f"{path.relative_to(package)}:{number}" for path in package.rglob("*.py")
                 for number, line in enumerate(path.read_text().splitlines(), 1)
                 if "gpunn[" in line and path.name != "extras.py"]
    assert not offenders


def test_the_cupy_reason_names_both_gpu_installs(monkeypatch):
    installed(monkeypatch, None)
    hint = extras.cuda_install_hint()
    assert 'pip install "gpunn[cuda13]"' in hint and 'pip install "gpunn[cuda12]"' in hint
