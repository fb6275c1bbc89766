"""A Dataset's rows standardised as they are read, so a file larger than memory trains on
standardised inputs without a standardised copy of it anywhere (``gpunn train --stream``)."""

from __future__ import annotations

import numpy as np

from gpunn.data.dataset import Dataset, Layout


class StandardizedDataset(Dataset):
    """``dataset``'s inputs as float64 ``(x − mean) / std`` (the same operations as
    ``Standardizer.__call__`` on the rows in memory, so the same numbers bit for bit), and its targets
    through ``targets`` (a function of a block of targets, returning rows of ``target_shape`` and
    ``target_dtype``: class values → indices, a regression's scaler), or as read where None. With
    ``fill`` (a value per feature), a NaN input is that value before it is standardised (an imputation)."""

    def __init__(self, dataset: Dataset, mean, std, targets=None, target_shape: tuple = (),
                 target_dtype=None, fill=None):
        self.inner, self.mean, self.std, self.targets = dataset, np.asarray(mean), np.asarray(std), targets
        self.fill = None if fill is None else np.asarray(fill, dtype=np.float64)
        if self.mean.shape != (dataset.features,) or self.std.shape != (dataset.features,):
            raise ValueError(f"StandardizedDataset: mean and std need {dataset.features} values, one per feature")
        self.x = Layout((dataset.rows, dataset.features), np.dtype(np.float64))
        self.t = None
        if dataset.t is not None:
            self.t = (dataset.t if targets is None else
                      Layout((dataset.rows, *target_shape), np.dtype(target_dtype or dataset.t.dtype)))

    def _convert(self, x, t, out):
        x_out = out[0] if out[0] is not None else np.empty(x.shape, np.float64)
        if self.fill is not None:
            x = np.where(np.isnan(x), self.fill, x)
        np.subtract(x, self.mean, out=x_out)
        x_out /= self.std
        if t is None or self.targets is None:
            return x_out, t
        converted = self.targets(t)
        if out[1] is None:
            return x_out, converted
        out[1][...] = converted
        return x_out, out[1]

    def read(self, start: int, stop: int, out=(None, None)):
        x, t = self.inner.read(start, stop)
        return self._convert(x, t, out)

    def gather(self, rows, out=(None, None)):
        x, t = self.inner.gather(rows)
        return self._convert(x, t, out)

    def rows_between(self, start: int, stop: int) -> StandardizedDataset:
        part = StandardizedDataset.__new__(StandardizedDataset)
        part.__dict__.update(self.__dict__)
        part.inner = self.inner.rows_between(start, stop)
        part.x = Layout((stop - start, *self.x.shape[1:]), self.x.dtype)
        if self.t is not None:
            part.t = (part.inner.t if self.targets is None else
                      Layout((stop - start, *self.t.shape[1:]), self.t.dtype))
        return part

    def close(self) -> None:
        self.inner.close()

    def __repr__(self) -> str:
        return f"StandardizedDataset({self.inner!r})"
