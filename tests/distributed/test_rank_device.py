"""Each rank trains on its own GPU (issue 21, item 1), seen on the CuPy stand-in with two devices.

One process plays rank 1 of a two-rank job on one node through a fake MPI world: its peer (rank
0) holds the same values, except its GPU's PCI bus id. The stand-in's arrays remember their
device, and its kernels, cuBLAS model and NCCL communicator refuse another device's memory, so a
model left on device 0 while the rank works on device 1 cannot go unnoticed.
"""

import sys
import types

import numpy as np
import pytest

import gpunn as gn
from gpunn.distributed import world as distributed
from support import cupy_standin
from support.models import mlp


class FakeComm:
    """mpi4py's communicator for rank ``rank`` of ``size`` on one node; the other ranks
    answer what this one says, except for their GPU's PCI bus id and rank 0's NCCL id."""

    def __init__(self, rank=1, size=2):
        self.rank, self.size = rank, size

    def Get_rank(self):
        return self.rank

    def Get_size(self):
        return self.size

    def Split_type(self, kind):
        return self

    def allgather(self, value):
        if isinstance(value, str) and value.startswith("0000:"):  # a pci_bus_id: each rank its own GPU
            return [f"0000:{0x18 + 0x10 * rank:02X}:00.0" for rank in range(self.size)]
        return [value] * self.size

    def bcast(self, value, root=0):
        if value == (None, None) and self.rank != root:  # nccl_unique_id: rank 0 made the id
            return bytes(128), None
        return value

    def Barrier(self):
        pass

    def Abort(self, code=1):
        raise SystemExit(code)


@pytest.fixture
def rank_one(monkeypatch):
    """The stand-in with two GPUs, the CuPy backend, and ``init()`` joining the fake world as rank 1."""
    # THREAD_SINGLE: no exit watcher thread (it needs MPI_THREAD_MULTIPLE), as under an MPI built without it
    fake_mpi = types.SimpleNamespace(COMM_WORLD=FakeComm(), COMM_TYPE_SHARED=0, THREAD_SINGLE=0, THREAD_MULTIPLE=3,
                                     Query_thread=lambda: 0)
    monkeypatch.setattr(distributed, "_import_mpi", lambda: fake_mpi)
    monkeypatch.setattr(distributed, "_world", [])
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # init installs its abort hook
    with cupy_standin.installed(devices=2) as standin, gn.use_backend("cupy") as backend:
        yield standin, backend


def data(rows=16):
    rng = np.random.default_rng(3)
    return rng.normal(size=(rows, 6)), rng.integers(0, 3, size=rows)


def test_init_selects_the_rank_gpu_and_a_model_built_afterwards_trains_there(rank_one):
    standin, backend = rank_one
    world = gn.distributed.init()
    assert world.device == 1 and standin.cupy.cuda.Device().id == 1
    model, (X, T) = mlp(backend, "float32"), data()
    assert model.flat.values.device.id == 1
    optimizer = gn.Adam(lr=1e-2)
    model.fit(X, T, loss=gn.SoftmaxCrossEntropyLoss(), optimizer=optimizer, epochs=2, batch_size=8, seed=0,
              verbose=0, distributed=True)
    assert set(standin.device.bytes_per_device()) == {1}  # nothing of this rank on device 0
    assert [handle["device"] for handle in standin.cublas.handles.values()] == [1]
    communicator = world.transport.communicator
    assert communicator.device == 1 and ("allReduce", model.flat.grads.size, 7) in communicator.calls


def test_fit_refuses_a_model_left_on_another_gpu_and_says_how_to_fix_it(rank_one):
    standin, backend = rank_one
    model, (X, T) = mlp(backend, "float32"), data()  # built before init: on device 0
    assert model.flat.values.device.id == 0
    with pytest.raises(ValueError, match=r"rank 1 trains on GPU 1.*parameters are on GPU 0.*"
                                         r"gpunn.distributed.init\(\) before building the model"):
        model.fit(X, T, loss=gn.SoftmaxCrossEntropyLoss(), optimizer=gn.SGD(lr=0.1), epochs=1, batch_size=8,
                  verbose=0, distributed=True)
    assert standin.cupy.cuda.Device().id == 1  # fit selected the rank's GPU first


def test_the_standin_would_catch_the_mixup_without_the_check(rank_one, monkeypatch):
    """Without fit's check the first launch that mixes the devices fails, as CuPy's peer check
    (or cuBLAS, or NCCL) would on a GPU: the stand-in sees the defect itself."""
    standin, backend = rank_one
    monkeypatch.setattr(distributed, "check_model_device", lambda world, model: None)
    model, (X, T) = mlp(backend, "float32"), data()
    with pytest.raises((ValueError, cupy_standin.StandinViolation), match="device") as caught:
        model.fit(X, T, loss=gn.SoftmaxCrossEntropyLoss(), optimizer=gn.SGD(lr=0.1), epochs=1, batch_size=8,
                  verbose=0, distributed=True)
    assert "rank 1 trains" not in str(caught.value)
