"""The data-parallel step: each rank trains on its shard of a global batch, and one SUM
all-reduce of the gradient, each rank's scaled by its share of the batch, gives every rank the
exact global mean gradient, also when shards are uneven or empty. Every rank then runs the same
update on the same numbers, so parameters stay bit-identical without being sent again.
"""

from __future__ import annotations

import json

from gpunn.distributed.world import shard_bounds
from gpunn.nn.layer import layer_record


def gradient_buffers(model) -> list:
    """The arrays that hold the model's gradients: its one flat gradient buffer (gpunn.nn.flat), so
    the all-reduce is one call per step."""
    return [model.flat.grads]


def state_buffers(model, optimizer) -> list:
    """Everything rank 0 sends before training: the flat parameters, then the optimizer's
    device arrays (its state, counters, loss scale and table of rates)."""
    return [model.flat.values] + list(optimizer.device_arrays())


def training_description(model, optimizer) -> dict:
    """What must agree across ranks, as JSON-able data: the layers' records without what rank 0's
    broadcast overwrites anyway (initialisation) or what may differ (a dropout seed drawn per rank
    changes the masks, not the shapes), the dtype, the bound parameters, the optimizer's settings."""
    def architecture(record):
        kept = {key: value for key, value in record.items() if key not in ("init", "seed", "layers")}
        if "layers" in record:
            kept["layers"] = [architecture(inner) for inner in record["layers"]]
        return kept

    config = optimizer.config()
    return {"layers": [architecture(layer_record(layer)) for layer in model.layers],
            "dtype": str(model.dtype),
            "optimizer type": config.pop("type"),
            "learning-rate schedules": config.pop("schedule"),
            "optimizer settings": config,
            "optimizer steps": optimizer.steps_issued,
            "optimized parameters": [model.named_parameters()[index][0] for index, parameter
                                     in enumerate(model.parameters()) if any(parameter is bound for bound in
                                                                             optimizer.params)]}


class DataParallel:
    """One rank's part in data-parallel training of ``model`` over ``world``."""

    def __init__(self, world, model):
        if not world.serves(model.backend):
            raise ValueError(f"fit: the distributed world runs on the {world.backend.name} backend but the "
                             f"model lives on {model.backend.name}")
        self.world, self.model = world, model

    def check_agreement(self, **settings) -> None:
        """Every rank must run the same number of steps, or the collectives would wait forever."""
        everyone = self.world.allgather(settings)
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

    def check_model_and_optimizer(self, optimizer) -> None:
        """Every rank must train the same architecture (layer types, widths, activations, dropout),
        dtype and optimizer (type, hyperparameters, clipping, schedule, step count): rank 0's state is
        broadcast into each rank's buffers, and one update rule runs on the same numbers everywhere.
        Else ranks trained apart without a word, or died inside MPI ("message sizes do not match")."""
        mine = training_description(self.model, optimizer)
        everyone = self.world.allgather(mine)
        for key in mine:
            views = [view.get(key) for view in everyone]
            if any(view != views[0] for view in views):
                differing = "; ".join(f"rank {rank}: {json.dumps(view, default=str)[:200]}"
                                      for rank, view in enumerate(views) if view != views[0] or rank == 0)
                raise ValueError(f"fit: every rank must train the same model with the same optimizer, but they differ in "
                                 f"their {key} ({differing}); build them from the same code and settings")

    def broadcast_state(self, optimizer) -> None:
        """Every rank starts from rank 0's parameters and optimizer state, once every rank is checked to
        train the same model with the same optimizer (``check_model_and_optimizer``)."""
        self.check_model_and_optimizer(optimizer)
        for buffer in state_buffers(self.model, optimizer):
            self.world.broadcast(buffer)

    def empty_shard_gradients(self) -> None:
        """A rank without rows contributes zero (it still joins the all-reduce and the update)."""
        self.model.flat.grads[...] = 0
        for parameter in self.model.parameters():
            parameter.grad_valid = True

    def reduce_gradients(self, share: float) -> None:
        """Scale this rank's mean gradient by its share of the global batch, then sum over ranks."""
        for buffer in gradient_buffers(self.model):
            if share != 1.0:
                buffer *= share
            self.world.allreduce_sum(buffer)

    def global_sums(self, local: dict) -> dict:
        """Per-epoch sums (loss, metrics) added over ranks in one collective."""
        names = list(local)  # the same order on every rank: the same metrics
        return dict(zip(names, self.world.sum_floats([float(local[name]) for name in names])))
