"""Data parallelism across processes: the MPI world (``world``), how gradients travel (``transports``)
and the per-step all-reduce of the flat gradient buffer (``data_parallel``)."""

from gpunn.distributed.transports import DistributedError
from gpunn.distributed.world import World, current_world, init, shard_bounds

__all__ = ["DistributedError", "World", "current_world", "init", "shard_bounds"]
