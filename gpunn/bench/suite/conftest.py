"""Benchmark options and the per-run setup: thread counts fixed and recorded, peers filtered.

Run through ``gpunn bench`` (which also writes the report), or directly:
``python -m pytest benchmarks --quick --benchmark-json=out.json``.
"""

import os

import numpy as np
import pytest
from peers import PEERS


def pytest_addoption(parser):
    group = parser.getgroup("gpunn benchmarks")
    group.addoption("--quick", action="store_true", help="small sizes (on 2 CPU cores: about a minute without PyTorch, 3 to 5 with it)")
    group.addoption("--peers", default=",".join(PEERS), help="comma-separated peers to run")
    group.addoption("--threads", type=int, default=None, help="CPU threads for NumPy's BLAS and PyTorch (default: all)")


def pytest_configure(config):
    threads = config.getoption("--threads") or os.cpu_count()
    config.gpunn_threads = threads
    try:
        from threadpoolctl import threadpool_limits

        config.gpunn_thread_limits = threadpool_limits(limits=threads, user_api="blas")
    except ImportError:
        pass  # OMP/OPENBLAS_NUM_THREADS, set by `gpunn bench`, then hold the count
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:
        pass


@pytest.fixture(scope="session")
def quick(request):
    return request.config.getoption("--quick")


@pytest.fixture(scope="session")
def threads(request):
    return request.config.gpunn_threads


@pytest.fixture
def rng():
    return np.random.default_rng(0)  # the same data for every peer: comparable work


@pytest.fixture
def peer(request):
    """The peer named by the test's parameter, or a skip that says why not."""
    name = request.param
    wanted = request.config.getoption("--peers").split(",")
    if name not in wanted:
        pytest.skip(f"{name} not in --peers")
    chosen = PEERS[name]
    reason = chosen.unavailable()
    if reason:
        pytest.skip(f"{name}: {reason}")
    return chosen
