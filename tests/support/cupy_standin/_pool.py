"""CuPy's memory pool, modelled block by block: what a pool keeps, what it frees, what a dropped
pool leaks (CuPy 14.2, ``cupy/cuda/memory.pyx``; the class and method named in each comment).

* ``SingleDeviceMemoryPool._malloc``: a request rounded up to 512 bytes (``_round_size``) takes the
  smallest free chunk that fits from the arena of the current stream (``_Arena.get_chunk``: a
  ``std::set`` ordered by (size, address), ``lower_bound``), splitting off the rest as a free chunk
  (``_Chunk.split``); with none, a new cudaMalloc of exactly the rounded size.
* ``SingleDeviceMemoryPool.free`` (a ``PooledMemory`` released): the chunk goes back to its arena,
  merged with free neighbours of the same allocation (``_Arena.insert_chunk``, ``try_merge_chunk``).
* ``free_all_blocks`` → ``_Arena.free_all``: frees (cudaFree) the free chunks that are whole
  allocations; a chunk with a neighbour (``prev``/``next``: a part of its allocation is in use) stays.
* A dropped pool: ``PooledMemory.free`` finds the pool's weak reference dead and returns (the
  chunk never goes back). The arena's free chunks hold references the garbage collector cannot see
  (``Py_INCREF`` into a C++ set) and each chunk holds its arena, so they and their allocations are
  never freed; an allocation whose chunks were all in use is freed when the last one dies (its
  ``Memory.__dealloc__``). So a pool dropped without ``free_all_blocks`` leaks every cached block,
  and one dropped with blocks split by arrays still alive leaks those allocations (cupy PR #9437).

``Device.held_bytes()`` is the device memory cudaMalloc'd and not freed: what ``nvidia-smi`` shows.
"""

from __future__ import annotations

import bisect
import weakref

#: cupy/cuda/memory.pyx, ALLOCATION_UNIT_SIZE.
ALLOCATION_UNIT = 512


def round_size(size: int) -> int:
    """memory.pyx, _round_size."""
    return -(-size // ALLOCATION_UNIT) * ALLOCATION_UNIT


class Allocation:
    """One cudaMalloc: held until freed; ``leaked`` once no code can ever free it."""

    def __init__(self, size: int, device):
        self.size, self.device, self.freed, self.leaked = size, device, False, False
        device.held.add(self)

    def free(self) -> None:
        self.freed = True
        self.device.held.discard(self)


class Chunk:
    """memory.pyx, _Chunk: a part of an allocation, linked to its neighbours."""

    def __init__(self, allocation: Allocation, offset: int, size: int, arena):
        self.allocation, self.offset, self.size, self.arena = allocation, offset, size, arena
        self.prev = self.next = None
        self.in_use = False

    def key(self):
        return (self.size, id(self))

    def split(self, size: int):
        """_Chunk.split: keep ``size`` bytes, return the rest as a new chunk (or None)."""
        if self.size == size:
            return None
        rest = Chunk(self.allocation, self.offset + size, self.size - size, self.arena)
        rest.next, self.size = self.next, size
        if rest.next is not None:
            rest.next.prev = rest
        self.next, rest.prev = rest, self
        return rest

    def merge_next(self) -> None:
        """_Chunk.merge_next."""
        self.size += self.next.size
        self.next = self.next.next
        if self.next is not None:
            self.next.prev = self


class Arena:
    """memory.pyx, _Arena: the free chunks of one stream, best fit first."""

    def __init__(self):
        self.index: list = []  # sorted (size, id) keys
        self.chunks: dict = {}

    def insert(self, chunk: Chunk, merge: bool = True) -> None:
        if merge:  # _Arena.try_merge_chunk
            while chunk.next is not None and self.remove(chunk.next):
                chunk.merge_next()
            while chunk.prev is not None and self.remove(chunk.prev):
                chunk = chunk.prev
                chunk.merge_next()
        bisect.insort(self.index, chunk.key())
        self.chunks[chunk.key()] = chunk

    def remove(self, chunk: Chunk) -> bool:
        key = chunk.key()
        if key not in self.chunks:
            return False
        self.index.remove(key)
        del self.chunks[key]
        return True

    def get(self, size: int):
        """_Arena.get_chunk: the smallest free chunk of at least ``size`` bytes, split to size."""
        position = bisect.bisect_left(self.index, (size, 0))
        if position == len(self.index):
            return None
        chunk = self.chunks.pop(self.index.pop(position))
        rest = chunk.split(size)
        if rest is not None:
            self.insert(rest, merge=False)
        return chunk

    def free_all(self) -> int:
        """_Arena.free_all: free the chunks that are whole allocations; split ones stay."""
        freed = 0
        for key in list(self.index):
            chunk = self.chunks[key]
            if chunk.prev is None and chunk.next is None:
                self.remove(chunk)
                chunk.allocation.free()
                freed += chunk.size
        return freed


class PoolState:
    """The bookkeeping of one ``cupy.cuda.MemoryPool`` (all devices): it outlives the pool object,
    as CuPy's arenas and chunks outlive a dropped pool."""

    def __init__(self, device):
        self.device = device
        self.arenas: dict = {}  # (device id, stream ptr): Arena
        self.in_use = self.total = 0
        self.alive = True

    def malloc(self, size: int, device_id: int, stream: int) -> Chunk | None:
        """SingleDeviceMemoryPool._malloc (a zero-byte request takes no chunk)."""
        if size == 0:
            return None
        size = round_size(size)
        arena = self.arenas.setdefault((device_id, stream), Arena())
        chunk = arena.get(size)
        if chunk is None:
            chunk = Chunk(Allocation(size, self.device), 0, size, arena)
            self.total += size
        chunk.in_use = True
        self.in_use += chunk.size
        return chunk

    def free(self, chunk: Chunk) -> None:
        """PooledMemory.free → SingleDeviceMemoryPool.free, or nothing once the pool is gone."""
        chunk.in_use = False
        if self.alive:
            self.in_use -= chunk.size
            chunk.arena.insert(chunk)
            return
        # The pool is gone: the chunk is dropped. Its allocation is freed when none of its parts
        # is in use or held by the dead pool's arena.
        if not chunk.allocation.leaked and not _parts_held(chunk):
            chunk.allocation.free()

    def free_all_blocks(self) -> None:
        """SingleDeviceMemoryPool.free_all_blocks, every arena."""
        for arena in self.arenas.values():
            self.total -= arena.free_all()

    def dropped(self) -> None:
        """The pool object died: every cached chunk, and its allocation, is kept forever."""
        self.alive = False
        for arena in self.arenas.values():
            for chunk in arena.chunks.values():
                chunk.allocation.leaked = True


def _parts_held(chunk: Chunk) -> bool:
    """Whether another part of ``chunk``'s allocation is still in use (walks the neighbours)."""
    for direction in ("prev", "next"):
        other = getattr(chunk, direction)
        while other is not None:
            if other.in_use:
                return True
            other = getattr(other, direction)
    return False


def watch(pool_object, state: PoolState) -> None:
    """Mark ``state`` dropped when the pool object is garbage collected."""
    weakref.finalize(pool_object, state.dropped)
