"""The data-parallel step: each rank trains on its shard of a global batch, and one SUM
all-reduce of the gradient, each rank's scaled by its share of the batch, gives every rank the
exact global mean gradient, also when shards are uneven or empty. Every rank then runs the same
update on the same numbers, so parameters stay bit-identical without being sent again.
"""

from __future__ import annotations

from .distributed import shard_bounds


def gradient_buffers(model) -> list:
    """The arrays that hold the model's gradients, in a fixed order.

    The one place that knows how gradients are stored: one array per parameter today, one flat
    buffer once the model packs its parameters (issue 11), and then the all-reduce is one call.
    """
    backend = model.backend
    buffers = []
    for parameter in model.parameters():
        if parameter.grad is None:
            parameter.grad = backend.zeros(parameter.shape, parameter.value.dtype)
        buffers.append(parameter.grad)
    return buffers


def state_buffers(model, optimizer) -> list:
    """Everything rank 0 sends before training: parameters, then the optimizer's state."""
    return [parameter.value for parameter in model.parameters()] + list(optimizer.state_arrays())


class DataParallel:
    """One rank's part in data-parallel training of ``model`` over ``world``."""

    def __init__(self, world, model):
        if not world.serves(model.backend):
            raise ValueError(f"fit: the distributed world runs on the {world.backend.name} backend but the "
                             f"model lives on {model.backend.name}")
        self.world, self.model = world, model

    def check_agreement(self, **settings) -> None:
        """Every rank must run the same number of steps, or the collectives would wait forever."""
        everyone = self.world.comm.allgather(settings)
        differing = sorted(key for key in settings if any(other[key] != settings[key] for other in everyone))
        if differing:
            views = "; ".join(f"rank {rank}: " + ", ".join(f"{key}={view[key]!r}" for key in differing)
                              for rank, view in enumerate(everyone))
            raise ValueError(f"fit: every rank must pass the same data and settings, but they differ in "
                             f"{', '.join(differing)} ({views})")

    def shard(self, start: int, stop: int) -> tuple[int, int]:
        """This rank's [start, stop) of the global batch [start, stop)."""
        low, high = shard_bounds(stop - start, self.world.rank, self.world.size)
        return start + low, start + high

    def broadcast_state(self, optimizer) -> None:
        """Every rank starts from rank 0's parameters and optimizer state."""
        for buffer in state_buffers(self.model, optimizer):
            self.world.broadcast(buffer)

    def empty_shard_gradients(self) -> None:
        """A rank without rows contributes zero (it still joins the all-reduce and the update)."""
        for parameter in self.model.parameters():
            if parameter.grad is None:
                parameter.grad = self.model.backend.zeros(parameter.shape, parameter.value.dtype)
            else:
                parameter.grad[...] = 0
            parameter.grad_valid = True

    def reduce_gradients(self, share: float) -> None:
        """Scale this rank's mean gradient by its share of the global batch, then sum over ranks."""
        for buffer in gradient_buffers(self.model):
            if share != 1.0:
                buffer *= share
            self.world.allreduce_sum(buffer)

    def global_loss_total(self, local_total: float) -> float:
        return self.world.sum_scalar(local_total)
