"""How one flat buffer is summed and broadcast across ranks: MPI on host buffers, NCCL on CuPy
buffers (on the current stream, so a CUDA graph records it), or through the host for the CPU
stand-in of CuPy; and NCCL's own setup (version check, unique id over MPI, communicator)."""

from __future__ import annotations

import functools
import warnings

NCCL_INSTALL_HINT = "pip install nvidia-nccl-cu13 (CUDA 13) or nvidia-nccl-cu12 (CUDA 12)"
NCCL_MIN_VERSION = (2, 9, 0)  # collectives recorded into CUDA graphs (stream capture)


class DistributedError(RuntimeError):
    """Data-parallel training cannot start or go on; the message says why and what to do."""


def _nccl_module():
    """CuPy's NCCL module, or a DistributedError with the reason it cannot load."""
    reason = nccl_unavailable_reason()
    if reason is not None:
        raise DistributedError(f"NCCL is not usable: {reason}")
    from cupy.cuda import nccl

    return nccl


def _version_text(code: int) -> str:
    """NCCL's version code as 'major.minor.patch' (the code changed layout at 2.9)."""
    if code >= 20900:
        return f"{code // 10000}.{code % 10000 // 100}.{code % 100}"
    return f"{code // 1000}.{code % 1000 // 100}.{code % 100}"


@functools.cache  # CuPy warns with the reason at the first import only
def nccl_unavailable_reason() -> str | None:
    """Why NCCL cannot carry gpunn's all-reduce here, or None when it can."""
    from gpunn.backends.selection import cupy_unavailable_reason

    try:
        import cupy  # noqa: F401
    except (ImportError, OSError):  # not installed, or its kernel cache folder could not be made
        return cupy_unavailable_reason()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from cupy.cuda import nccl
    if not nccl.available:
        reasons = [line.strip() for warning in caught for line in str(warning.message).splitlines()
                   if line.strip().startswith("Reason:")]
        detail = reasons[0][len("Reason:"):].strip() if reasons else "libnccl.so.2 could not be loaded"
        return f"the NCCL library cannot be loaded ({detail}); {NCCL_INSTALL_HINT}"
    version = _version_text(nccl.get_version())
    if tuple(int(part) for part in version.split(".")) < NCCL_MIN_VERSION:
        return (f"NCCL {version} is older than {'.'.join(map(str, NCCL_MIN_VERSION))}, which gpunn needs to "
                f"record the all-reduce in CUDA graphs; {NCCL_INSTALL_HINT}")
    return None


def nccl_version() -> str | None:
    """The loaded NCCL's version, or None when NCCL cannot load."""
    if nccl_unavailable_reason() is not None:
        return None
    from cupy.cuda import nccl

    return _version_text(nccl.get_version())


def nccl_unique_id(comm) -> bytes:
    """NCCL's unique id, made on rank 0 and broadcast over MPI.

    Collective: if rank 0 cannot make the id, every rank raises the same error instead of
    the others waiting for an id that never comes. (CuPy 14.2,
    cupy_backends/cuda/libs/nccl.pyx: ``get_unique_id()`` returns the 128 bytes as ``bytes``.)
    """
    unique_id, failure = None, None
    if comm.Get_rank() == 0:
        try:
            unique_id = _nccl_module().get_unique_id()
        except Exception as error:  # DistributedError, or NcclError from ncclGetUniqueId
            failure = str(error)
    unique_id, failure = comm.bcast((unique_id, failure), root=0)
    if failure is not None:
        raise DistributedError(f"rank 0 could not make NCCL's unique id: {failure}")
    return unique_id


def nccl_communicator(comm):
    """One NCCL communicator over the MPI world, each rank on its current CUDA device.

    (CuPy 14.2, cupy_backends/cuda/libs/nccl.pyx: ``NcclCommunicator(ndev, commId: bytes,
    rank)`` calls ncclCommInitRankConfig and raises NcclError on failure.)
    """
    unique_id = nccl_unique_id(comm)
    nccl = _nccl_module()
    try:
        return nccl.NcclCommunicator(comm.Get_size(), unique_id, comm.Get_rank())
    except Exception as error:  # NcclError: no CUDA device, two ranks on one GPU, network...
        raise DistributedError(
            f"rank {comm.Get_rank()} could not join the NCCL communicator ({error}); each rank needs its "
            "own CUDA device; NCCL_DEBUG=INFO shows NCCL's own account") from error


class MpiTransport:
    """Host (NumPy) buffers, summed in place by MPI."""

    name = "mpi"

    def __init__(self, comm):
        self.comm = comm

    def allreduce_sum(self, buffer) -> None:
        from mpi4py import MPI

        self.comm.Allreduce(MPI.IN_PLACE, buffer, op=MPI.SUM)

    def broadcast(self, buffer, root: int = 0) -> None:
        self.comm.Bcast(buffer, root=root)


class NcclTransport:
    """CuPy buffers, summed by NCCL on the current stream, so a CUDA graph being captured on
    that stream records the all-reduce (NCCL >= 2.9). Never run on a GPU by gpunn's CI.

    (CuPy 14.2, cupy_backends/cuda/libs/nccl.pyx: ``allReduce(sendbuf, recvbuf, count,
    datatype, op, stream)`` and ``bcast(buff, count, datatype, root, stream)`` take raw
    pointers; sendbuf == recvbuf is NCCL's in-place form. Type codes from nccl.pxd.)
    """

    name = "nccl"

    def __init__(self, communicator):
        from cupy.cuda import nccl

        self.communicator = communicator
        self._types = {"float16": nccl.NCCL_FLOAT16, "float32": nccl.NCCL_FLOAT32,
                       "float64": nccl.NCCL_FLOAT64}
        self._sum = nccl.NCCL_SUM

    def _pointer_and_type(self, buffer):
        if not buffer.flags.c_contiguous:
            raise ValueError("the NCCL all-reduce needs one contiguous buffer")
        kind = self._types.get(buffer.dtype.name)
        if kind is None:
            raise TypeError(f"NCCL cannot reduce {buffer.dtype} buffers; expected one of {tuple(self._types)}")
        return buffer.data.ptr, kind

    def allreduce_sum(self, buffer) -> None:
        import cupy

        pointer, kind = self._pointer_and_type(buffer)
        self.communicator.allReduce(pointer, pointer, buffer.size, kind, self._sum,
                                    cupy.cuda.get_current_stream().ptr)

    def broadcast(self, buffer, root: int = 0) -> None:
        import cupy

        pointer, kind = self._pointer_and_type(buffer)
        self.communicator.bcast(pointer, buffer.size, kind, root, cupy.cuda.get_current_stream().ptr)


class HostStagedTransport:
    """Device buffers copied to the host, summed by MPI, copied back.

    Only for a backend that stands in for CuPy on the CPU in tests (and, chosen explicitly,
    for debugging): it waits for the device at every step and cannot be recorded in a CUDA
    graph, so ``init`` never picks it by itself.
    """

    name = "host"

    def __init__(self, comm, backend):
        self.mpi, self.backend = MpiTransport(comm), backend

    def _through_host(self, buffer, operation) -> None:
        host = self.backend.to_numpy(buffer).copy()
        operation(host)
        self.backend.xp.copyto(buffer, self.backend.asarray(host))

    def allreduce_sum(self, buffer) -> None:
        self._through_host(buffer, self.mpi.allreduce_sum)

    def broadcast(self, buffer, root: int = 0) -> None:
        self._through_host(buffer, lambda host: self.mpi.broadcast(host, root))
