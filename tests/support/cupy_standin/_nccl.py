"""``cupy.cuda.nccl``: a communicator bound to the device that was current when it was made.

NCCL ties each rank to "a CUDA device, which has to be set before calling ncclCommInitRank"
(nccl.h, NCCL 2.32.6 from the nvidia-nccl wheel); the communicator then reads and writes that
device's memory only. The stand-in runs one process, so it models one rank of ``nranks`` whose
peers hold the same buffer (an all-reduce multiplies by ``nranks``, a broadcast keeps the
bits): enough for one rank's code path and its device, nothing about NCCL's transport. Type and
operation codes are nccl.h's (ncclSum = 0, ncclFloat16 = 6, ncclFloat32 = 7, ncclFloat64 = 8), as
CuPy's nccl.pxd re-exports them.
"""

from __future__ import annotations

import types

import numpy as np

from support.cupy_standin._device import StandinViolation, current

NCCL_SUM = 0
NCCL_FLOAT16, NCCL_FLOAT32, NCCL_FLOAT64 = 6, 7, 8
_DTYPES = {NCCL_FLOAT16: np.float16, NCCL_FLOAT32: np.float32, NCCL_FLOAT64: np.float64}
VERSION_CODE = 23206  # nccl.h: NCCL_VERSION_CODE of the wheel


class NcclError(RuntimeError):
    pass


class NcclCommunicator:
    """``NcclCommunicator(ndev, commId, rank)`` (cupy_backends/cuda/libs/nccl.pyx)."""

    def __init__(self, ndev: int, comm_id: bytes, rank: int):
        if not isinstance(comm_id, bytes) or len(comm_id) != 128:
            raise NcclError("NCCL_ERROR_INVALID_ARGUMENT: the unique id must be 128 bytes")
        if not 0 <= rank < ndev:
            raise NcclError(f"NCCL_ERROR_INVALID_ARGUMENT: rank {rank} of {ndev}")
        self.nranks, self.rank = ndev, rank
        self.device = current().current_id  # the device current at ncclCommInitRank
        self.calls: list[tuple] = []

    def device_id(self) -> int:
        return self.device

    def _buffer(self, pointer: int, count: int, datatype: int) -> np.ndarray:
        machine = current()
        if machine.current_id != self.device:
            raise StandinViolation(f"an NCCL collective on device {machine.current_id} through a communicator of "
                                   f"device {self.device}: NCCL would launch on the communicator's device and "
                                   "order nothing with the current stream")
        dtype = _DTYPES.get(datatype)
        if dtype is None:
            raise NcclError(f"NCCL_ERROR_INVALID_ARGUMENT: datatype {datatype}")
        return machine.memory(pointer, count * np.dtype(dtype).itemsize, dtype, device=self.device)

    def allReduce(self, sendbuf: int, recvbuf: int, count: int, datatype: int, op: int, stream: int) -> None:
        if op != NCCL_SUM:
            raise NcclError(f"the stand-in models ncclSum only, got op {op}")
        source, target = self._buffer(sendbuf, count, datatype), self._buffer(recvbuf, count, datatype)
        self.calls.append(("allReduce", count, datatype))
        nranks = self.nranks
        current().launch("kernel", "ncclAllReduce", lambda: np.multiply(source, nranks, out=target),
                         reads=(source,), writes=(target,))

    def bcast(self, buff: int, count: int, datatype: int, root: int, stream: int) -> None:
        buffer = self._buffer(buff, count, datatype)
        self.calls.append(("bcast", count, datatype))
        current().launch("kernel", "ncclBroadcast", lambda: None, reads=(buffer,), writes=(buffer,))


def module() -> types.ModuleType:
    nccl = types.ModuleType("cupy.cuda.nccl")
    nccl.__dict__.update(available=True, get_version=lambda: VERSION_CODE, get_unique_id=lambda: bytes(128),
                         NcclCommunicator=NcclCommunicator, NcclError=NcclError, NCCL_SUM=NCCL_SUM,
                         NCCL_FLOAT16=NCCL_FLOAT16, NCCL_FLOAT32=NCCL_FLOAT32, NCCL_FLOAT64=NCCL_FLOAT64)
    return nccl
