"""The segment table of an optimizer: which parts of the flat buffer one fused update covers,
where their state lives, which of them this step updates, and each one's own step count.

torch.optim keeps ``state["step"]`` per parameter and skips a parameter whose gradient is None (a
frozen one, or one no backward reached): its step, moments and value stay as they are, and its bias
correction later counts only its own updates. gpunn matches that inside one launch per step: every
bound parameter is a segment of the table ``kernels/optim.cuh`` reads (start, stop, state start,
updated-this-step), and ``steps`` holds each segment's count of updates applied.

Why this shape: the table lives on the device and is written again only when the set of updated
parameters changes (a freeze, an unfreeze, a gradient set to None), a copy of a few int64 per
parameter; a step that changes nothing uploads nothing. The step counts are advanced on the device
by the update's own last block, for the segments it updated and only when the update was applied
(a float16 overflow skips it, as GradScaler skips optimizer.step()). So a recorded CUDA graph
replays with nothing from the host, and a base step plus per-segment offsets (which the host would
have to rewrite at every step a segment sits out) is not needed.
"""

from __future__ import annotations



class Segments:
    """One segment per bound parameter (``params`` in flat order). The update launches over the whole
    flat buffer whichever parameters are bound or frozen, so its threads, and the gradient norm's
    order of summation, are the same for a frozen layer and for an optimizer bound without it."""

    def __init__(self, flat, params):
        backend = flat.backend
        rows, state_start = [], 0  # each row: SEGMENT_FIELDS numbers
        for parameter in params:
            start = flat.offset(parameter)
            rows.append([start, start + parameter.size, state_start, 1])
            state_start += parameter.size
        self._rows = rows
        #: Elements of optimizer state: a whole model's has the flat buffer's padding too (unused), as
        #: checkpoints have always held it.
        self.state_size = flat.values.size if len(params) == len(flat.parameters) else state_start
        self.count = len(rows)
        self.table = backend.asarray([value for row in rows for value in row], "int64")
        #: Each segment's updates applied (torch's state["step"]), advanced by the update on the device.
        self.steps = backend.zeros((len(rows),), "float64")
        self._updated = (True,) * len(rows)

    def state_range(self, index: int) -> tuple[int, int, int]:
        """(flat start, flat stop, state start) of segment ``index``."""
        return tuple(self._rows[index][:3])

    def select(self, updated, backend) -> None:
        """Mark which segments this step updates; the device's table is written only on a change."""
        updated = tuple(updated)
        if updated == self._updated:
            return
        for row, flag in zip(self._rows, updated):
            row[3] = int(flag)
        self.table[...] = backend.asarray([value for row in self._rows for value in row], "int64")
        self._updated = updated


__all__ = ["Segments"]
