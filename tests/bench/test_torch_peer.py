"""The torch-cuda-graph peer builds optimizers torch lets it capture (issue 21, item 2).

torch refuses to capture ``step()`` of an optimizer whose param_groups are not all
``capturable`` (torch/optim/optimizer.py, ``_cuda_graph_capture_health_check``); the check only
runs while a CUDA stream captures, so the CPU test asserts the condition it tests."""

import inspect

import pytest

torch = pytest.importorskip("torch")

from gpunn.bench.suite.peers import OPTIMIZERS, torch_optimizer  # noqa: E402


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_graph_capture_gets_capturable_optimizers_and_eager_keeps_the_default(name):
    parameters = [torch.nn.Parameter(torch.ones(3))]
    kind = getattr(torch.optim, OPTIMIZERS[name][1][0])
    captured = torch_optimizer(torch, parameters, name, graph=True)
    eager = torch_optimizer(torch, parameters, name, graph=False)
    assert type(captured) is kind and type(eager) is kind
    if "capturable" in inspect.signature(kind).parameters:  # what torch's capture health check asks
        assert all(group["capturable"] for group in captured.param_groups)
        assert not any(group["capturable"] for group in eager.param_groups)
    for key, value in OPTIMIZERS[name][1][1].items():  # the same settings as gpunn's side otherwise
        assert captured.param_groups[0][key] == value == eager.param_groups[0][key]


def test_adam_and_adamw_are_among_the_capturable_ones():
    for name in ("adam", "adamw"):
        optimizer = torch_optimizer(torch, [torch.nn.Parameter(torch.ones(2))], name, graph=True)
        assert optimizer.param_groups[0]["capturable"] is True
