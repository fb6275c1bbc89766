"""Data parallelism: the MPI world and one all-reduce of one flat buffer (its transports: gpunn/transports.py).

The ChainerMN shape: MPI starts the processes and hands out NCCL's unique id; every rank holds
the same model and a contiguous shard of every batch; each step sums one flat gradient buffer
across ranks. mpi4py is imported by ``init()`` and the probes here, never by ``import gpunn``.

The MPI world is process-wide by nature (MPI initialises once per process), so ``init()`` keeps
the one ``World`` it made and returns it again on later calls.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import threading
import time

from gpunn.distributed.transports import (DistributedError, HostStagedTransport, MpiTransport, NcclTransport,
                                          nccl_communicator, nccl_unavailable_reason, nccl_version)
from gpunn.extras import install_command


def mpi_install_hint() -> str:
    return f"{install_command('mpi')} (mpi4py and MPICH)"
# What each launcher sets to the number of processes it started. Slurm's SLURM_NTASKS is left
# out on purpose: a batch script sees the allocation's task count even when it runs a plain
# ``python`` (one process), while SLURM_STEP_NUM_TASKS belongs to the srun step itself.
LAUNCHER_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS", "SLURM_STEP_NUM_TASKS")
TRANSPORTS = ("mpi", "nccl", "host")


def _import_mpi():
    """mpi4py's MPI module (this initialises MPI), or a DistributedError saying how to get it."""
    try:
        from mpi4py import MPI
    except ImportError as error:
        raise DistributedError(f"mpi4py is not installed ({error}); {mpi_install_hint()}") from error
    except RuntimeError as error:  # mpi4py present, but no MPI library it can load
        raise DistributedError(f"mpi4py cannot load an MPI library ({error}); {mpi_install_hint()}") from error
    return MPI


def launcher_size(environ=None) -> tuple[str, int] | None:
    """(variable, N) for the first launcher variable that says N > 1 processes were started."""
    environ = os.environ if environ is None else environ
    for name in LAUNCHER_SIZE_VARIABLES:
        try:
            size = int(environ.get(name, ""))
        except ValueError:
            continue
        if size > 1:
            return name, size
    return None


def check_launcher(world_size: int, environ=None) -> None:
    """Refuse N one-rank jobs: mpi4py built for one MPI under another MPI's launcher."""
    said = launcher_size(environ)
    if said is not None and world_size == 1:
        name, size = said
        raise DistributedError(
            f"the launcher started {size} processes ({name}={size}) but MPI sees a world of 1: mpi4py "
            f"uses a different MPI library than the mpiexec that started this job, so each process would "
            f"train alone. Use the mpiexec of the environment gpunn is installed in "
            f"({os.path.join(os.path.dirname(sys.executable), 'mpiexec')}), or 'srun --mpi=pmi2' under Slurm")


_EXIT_TAG = 0x67706E  # the exit notices' tag, on a communicator of their own
#: A moment for the launcher to forward what a failing rank printed before MPI_Abort tears the job down
#: (without it MPICH's hydra lost the end of the traceback in about one job of five).
_FORWARD_SECONDS = 0.3
_EXIT_GRACE = 2.0  # seconds a collective that was under way when a rank left may take to return


class _ExitWatch:
    """Ends the job when one rank leaves while the others still need it: ``sys.exit()`` (or the
    script's end) on one rank bypasses the excepthook, and the others waited in their next collective
    until the launcher's timeout (the leaving rank too, in MPI_Finalize).

    At exit each rank sends a notice to every other rank on a communicator of its own, then waits for
    theirs (all ranks leaving is the normal end of a job, however late rank 0 finishes its own work).
    A listener thread receives the notices: one that arrives while this rank is inside a gpunn
    collective, or a collective started after one arrived, aborts the job with a message naming the
    rank that left. Needs MPI_THREAD_MULTIPLE (mpi4py's default); without it only the excepthook acts."""

    def __init__(self, comm, MPI):
        self.comm, self.rank, self.size = comm.Dup(), comm.Get_rank(), comm.Get_size()
        self.MPI, self.departed, self.collectives, self.entered, self.done = MPI, [], 0, 0, False
        self.listener = threading.Thread(target=self._listen, name="gpunn-exit-watch", daemon=True)
        self.listener.start()
        atexit.register(self.leave)

    def _listen(self) -> None:
        while len(self.departed) < self.size - 1:
            status = self.MPI.Status()
            self.comm.recv(source=self.MPI.ANY_SOURCE, tag=_EXIT_TAG, status=status)
            self.departed.append(status.Get_source())
            entered, waited = self.entered, 0.0
            while self.collectives and self.entered == entered and waited < _EXIT_GRACE:  # a last collective
                time.sleep(0.02)  # of the leaving rank may still be returning here: give it a moment
                waited += 0.02
            if self.collectives and self.entered == entered and not self.done:
                self.abort()

    def abort(self) -> None:
        print(f"gpunn: rank {self.departed[0]} of {self.size} exited while rank {self.rank} still needs it in a "
              "collective (sys.exit() on one rank, or one rank leaving its training early); aborting the MPI job",
              file=sys.stderr, flush=True)
        sys.stdout.flush()
        time.sleep(_FORWARD_SECONDS)
        self.comm.Abort(1)

    @contextlib.contextmanager
    def collective(self):
        """Around each blocking collective of gpunn: a rank that has left aborts the job."""
        if self.departed and not self.done:
            self.abort()
        self.collectives += 1
        self.entered += 1
        try:
            yield
        finally:
            self.collectives -= 1

    def leave(self) -> None:
        """At exit: tell every other rank, then wait for theirs (their notices, or their abort)."""
        requests = [self.comm.issend(None, dest=rank, tag=_EXIT_TAG) for rank in range(self.size) if rank != self.rank]
        self.listener.join()
        self.done = True
        self.MPI.Request.Waitall(requests)


def _install_abort_hook(comm) -> None:
    """An exception that reaches the top of one rank ends the whole job, not only that rank:
    without this the other ranks wait forever in their next collective."""
    previous = sys.excepthook

    def abort_job(kind, value, traceback):
        try:
            previous(kind, value, traceback)
            print(f"gpunn: rank {comm.Get_rank()} of {comm.Get_size()} failed; aborting the MPI job",
                  file=sys.stderr)
            sys.stdout.flush()
            sys.stderr.flush()
            time.sleep(_FORWARD_SECONDS)
        finally:
            comm.Abort(1)

    sys.excepthook = abort_job


# --- the world ------------------------------------------------------------------------------
def shard_bounds(rows: int, rank: int, size: int) -> tuple[int, int]:
    """[start, stop) of ``rank``'s contiguous shard of ``rows``: the first ``rows % size`` ranks
    take one row more; when rows < size the last ranks get an empty shard."""
    base, extra = divmod(rows, size)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


class World:
    """The processes of one data-parallel job: rank, size, and the collectives gpunn uses."""

    def __init__(self, comm, backend, transport, local_rank: int, local_size: int, exit_watch=None,
                 device: int | None = None):
        self.comm, self.backend, self.transport = comm, backend, transport
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.local_rank, self.local_size = local_rank, local_size
        self.exit_watch = exit_watch
        #: The CUDA device this rank selected (``init`` made it current), or None on the host.
        self.device = device

    def _collective(self):
        return self.exit_watch.collective() if self.exit_watch is not None else contextlib.nullcontext()

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def serves(self, backend) -> bool:
        """True when this world's transport can sum ``backend``'s arrays: its own backend, or
        any host-resident backend when the transport is MPI on host memory."""
        return backend is self.backend or (backend.host_resident and self.transport.name == "mpi")

    def allreduce_sum(self, buffer):
        """Sum ``buffer`` (one contiguous array on the backend's device) over all ranks, in place."""
        if self.size > 1:
            with self._collective():
                self.transport.allreduce_sum(buffer)
        return buffer

    def broadcast(self, buffer, root: int = 0):
        """Overwrite ``buffer`` on every rank with ``root``'s, in place."""
        if self.size > 1:
            with self._collective():
                self.transport.broadcast(buffer, root)
        return buffer

    def allgather(self, value) -> list:
        """Every rank's ``value`` (a host object), in rank order."""
        if self.size == 1:
            return [value]
        with self._collective():
            return self.comm.allgather(value)

    def sum_floats(self, values) -> list[float]:
        """Host numbers summed over all ranks, in rank order, so every rank gets the same bits
        (epoch totals; not for the step's hot path)."""
        values = [float(value) for value in values]
        everyone = self.allgather(values)
        return [sum(rank_values[index] for rank_values in everyone) for index in range(len(values))]

    def broadcast_object(self, value, root: int = 0):
        if self.size == 1:
            return value
        with self._collective():
            return self.comm.bcast(value, root=root)

    def barrier(self) -> None:
        if self.size > 1:
            with self._collective():
                self.comm.Barrier()

    def abort(self, code: int = 1) -> None:
        """End every rank of the job now (after a failure the other ranks cannot see)."""
        sys.stdout.flush()
        sys.stderr.flush()
        time.sleep(_FORWARD_SECONDS)
        self.comm.Abort(code)

    def print(self, *args, **kwargs) -> None:
        """``print`` on rank 0 only."""
        if self.is_root:
            print(*args, **kwargs)

    def save(self, model, path, **options) -> None:
        """Rank 0 writes the checkpoint; every rank returns once it is on disk."""
        if self.is_root:
            model.save(path, **options)
        self.barrier()

    def __repr__(self) -> str:
        return (f"World(rank={self.rank}, size={self.size}, local_rank={self.local_rank}, "
                f"transport={self.transport.name!r}, backend={self.backend.name!r})")


_world: list[World] = []  # the one world of this process (see the module docstring)


def _select_device(comm, local_comm) -> int:
    """Each rank of a node takes its own GPU: device ``local_rank``, or device 0 when the
    scheduler shows each rank one GPU (CUDA_VISIBLE_DEVICES per task); returns its id. (CuPy 14.2,
    cupy/cuda/device.pyx: ``Device.use()`` makes it current for this thread; ``pci_bus_id`` is
    runtime.deviceGetPCIBusId, which tells two ranks on one physical GPU apart from two GPUs.)
    ``init`` calls it before the transport exists, so the NCCL communicator, and everything
    allocated after ``init``, lives on this device."""
    import cupy

    count = cupy.cuda.runtime.getDeviceCount()
    local_rank, local_size = local_comm.Get_rank(), local_comm.Get_size()
    if count < local_size and count != 1:
        raise DistributedError(f"{local_size} ranks run on this node but it has {count} CUDA devices; "
                               "start at most one rank per GPU")
    device = cupy.cuda.Device(local_rank if count >= local_size else 0)
    device.use()
    buses = local_comm.allgather(device.pci_bus_id)
    if len(set(buses)) != len(buses):
        raise DistributedError(f"ranks on this node share a GPU (PCI bus ids {buses}); give each rank its "
                               "own GPU (NCCL refuses two ranks on one device)")
    return device.id


def check_model_device(world: World, model) -> None:
    """Refuse a model whose parameters live on another GPU than this rank's: made before
    ``gpunn.distributed.init()`` selected the rank's device, it sits on device 0 while the
    optimizer state, the cuBLAS handle and the NCCL communicator would sit on the rank's.
    (CuPy 14.2: ``ndarray.device`` is the device of the array's memory.)"""
    if world.device is None:
        return
    where = getattr(model.flat.values, "device", None)
    found = getattr(where, "id", world.device)
    if found != world.device:
        raise ValueError(
            f"fit: rank {world.rank} trains on GPU {world.device} (its node-local rank's device), but the model's "
            f"parameters are on GPU {found}. Call gpunn.distributed.init() before building the model, so that "
            f"it is made on this rank's GPU (or build it inside `with cupy.cuda.Device({world.device}):`)")


def _transport_for(backend, transport: str | None, comm):
    if transport is None:
        if backend.host_resident:
            transport = "mpi"
        elif backend.name == "cupy":
            transport = "nccl"
        else:
            raise DistributedError(f"the {backend.name} backend has no default transport; pass "
                                   f"transport= one of {TRANSPORTS}")
    if transport == "mpi":
        if not backend.host_resident:
            raise DistributedError(f"transport 'mpi' sums host arrays, but the {backend.name} backend keeps "
                                   "its arrays on a device; use 'nccl'")
        return MpiTransport(comm)
    if transport == "nccl":
        return NcclTransport(nccl_communicator(comm))
    if transport == "host":
        return HostStagedTransport(comm, backend)
    raise ValueError(f"init: unknown transport {transport!r}; expected one of {TRANSPORTS}")


def init(backend=None, transport: str | None = None) -> World:
    """Join the MPI world of this job and return it (the same World on every later call).

    Checks that the launcher and mpi4py agree on the number of processes, installs a hook
    that aborts the whole job when an exception ends one rank, and on CuPy selects this
    rank's GPU by node-local rank and builds the NCCL communicator. On CuPy call it before
    building the model: what is allocated afterwards lands on the rank's GPU. ``transport`` defaults
    to 'mpi' on NumPy and 'nccl' on CuPy; 'host' (device -> host -> MPI -> device) must be
    asked for by name.
    """
    from gpunn.backends.selection import get_backend, resolve_backend

    backend = get_backend() if backend is None else resolve_backend(backend)
    if _world:
        world = _world[0]
        if not world.serves(backend):
            raise DistributedError(f"the distributed world was initialised for the {world.backend.name} "
                                   f"backend; it cannot also run on {backend.name}")
        return world
    MPI = _import_mpi()
    comm = MPI.COMM_WORLD
    check_launcher(comm.Get_size())
    exit_watch = None
    if comm.Get_size() > 1:
        _install_abort_hook(comm)
        if MPI.Query_thread() == MPI.THREAD_MULTIPLE:
            exit_watch = _ExitWatch(comm, MPI)
    local_comm = comm.Split_type(MPI.COMM_TYPE_SHARED)
    device = None
    if backend.name == "cupy" and not backend.host_resident and transport != "host":
        device = _select_device(comm, local_comm)  # before anything of this rank is allocated
    world = World(comm, backend, _transport_for(backend, transport, comm),
                  local_comm.Get_rank(), local_comm.Get_size(), exit_watch, device)
    _world.append(world)
    return world


def current_world() -> World | None:
    """The World made by ``init()`` in this process, or None."""
    return _world[0] if _world else None


def mpi_report() -> str:
    """One line for ``gpunn info``: mpi4py, the MPI library, and this process's world."""
    try:
        import mpi4py
    except ImportError:
        return f"mpi: unavailable: mpi4py is not installed; {mpi_install_hint()}"
    try:
        MPI = _import_mpi()
    except DistributedError as error:
        return f"mpi: unavailable: {error}"
    library = MPI.Get_library_version().strip().splitlines()[0].strip()
    library = " ".join(library.replace("Version:", "").split())
    world = MPI.COMM_WORLD
    return f"mpi: mpi4py {mpi4py.__version__}, {library}; this process: rank {world.Get_rank()} of {world.Get_size()}"


def nccl_report() -> str:
    """One line for ``gpunn info``: NCCL's version, or why it cannot be used."""
    reason = nccl_unavailable_reason()
    if reason is not None:
        return f"nccl: unavailable: {reason}"
    return f"nccl: {nccl_version()} (the all-reduce of data-parallel training on CuPy)"
