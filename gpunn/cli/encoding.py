"""Feature columns as the model's inputs: text columns one-hot encoded, missing numbers refused or
imputed. The encoding is fitted when a run starts and stored in its checkpoints, so predict, resume and
the validation and test files encode their rows exactly as the training rows were.

The categories of a column are those of the ``--data`` file (all its rows, so that a rare category the
split put in the validation part is still known); the ``--impute`` statistics come from the training
rows alone. A category the ``--data`` file never had is an error wherever it appears (a validation or
test file, ``gpunn predict``): the model has no input for it, and an all-zero row would be a silent guess.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from gpunn.cli.data import DataError, Table

IMPUTE_CHOICES = ("mean", "median")
#: A text column with more categories than this is refused: an identifier, not a category.
MAX_CATEGORIES = 1000


@dataclass
class Column:
    name: str
    categories: list[str] | None = None  # a text column: its one-hot columns, in this order
    fill: float | None = None  # a number column under --impute: what a missing cell becomes

    @property
    def width(self) -> int:
        return 1 if self.categories is None else len(self.categories)


def _rows_text(rows: np.ndarray) -> str:
    return f"{len(rows)} row{'' if len(rows) == 1 else 's'}, first: data row {int(rows[0]) + 1}"


@dataclass
class Encoding:
    columns: list[Column]
    impute: str | None = None

    @property
    def width(self) -> int:
        return sum(column.width for column in self.columns)

    @property
    def categorical(self) -> list[str]:
        return [column.name for column in self.columns if column.categories is not None]

    @classmethod
    def numeric(cls, names: list[str]) -> "Encoding":
        """Number columns only, nothing imputed: what a checkpoint from before encodings meant."""
        return cls([Column(name) for name in names])

    @classmethod
    def fit(cls, table: Table, train_rows: np.ndarray, impute: str | None, source) -> "Encoding":
        """Categories from every row of ``table``, --impute's statistics from ``train_rows`` of it."""
        columns = []
        for name, values in zip(table.names, table.columns):
            if values.dtype == object:
                missing = np.flatnonzero(values == None)  # noqa: E711  (elementwise)
                if len(missing):
                    raise DataError(f"{source}: text column {name!r} has empty cells ({_rows_text(missing)}); "
                                    "--impute fills number columns only: fill them in the file or drop those rows")
                categories = np.unique(values.astype(str)).tolist()
                if len(categories) > MAX_CATEGORIES:
                    raise DataError(f"{source}: text column {name!r} holds {len(categories)} distinct values, too "
                                    f"many to one-hot encode (at most {MAX_CATEGORIES}); is it an identifier? drop "
                                    "it from the file")
                columns.append(Column(name, categories))
                continue
            column = Column(name)
            if impute is not None:
                known = np.asarray(values[train_rows], dtype=np.float64)
                known = known[~np.isnan(known)]
                if len(known) == 0:
                    raise DataError(f"{source}: column {name!r} has no value in the training rows to --impute from; "
                                    "drop the column from the file (it tells the model nothing)")
                column.fill = float(np.mean(known) if impute == "mean" else np.median(known))
            columns.append(column)
        return cls(columns, impute)

    def encode(self, table: Table, source) -> np.ndarray:
        """The table's columns (in this encoding's order) as one float64 matrix; a DataError for a
        missing cell that nothing fills, naming every such column, and for an unknown category."""
        X = np.empty((table.rows, self.width))
        at, missing = 0, []
        for column, values in zip(self.columns, table.columns):
            if column.categories is None:
                if values.dtype == object:
                    text = next(v for v in values if v is not None)
                    raise DataError(f"{source}: column {column.name!r} holds text ({text!r}) where the training "
                                    "data had numbers")
                block = np.asarray(values, dtype=np.float64)
                if column.fill is not None:
                    block = np.where(np.isnan(block), column.fill, block)
                empty = np.flatnonzero(np.isnan(block))
                if len(empty):
                    missing.append(f"{column.name!r} ({_rows_text(empty)})")
                X[:, at] = block
            else:
                X[:, at:at + column.width] = self._one_hot(column, values, source)
            at += column.width
        if missing:
            raise DataError(f"{source}: missing values in column{'s' if len(missing) > 1 else ''} {', '.join(missing)}; "
                            "fill them in the file, or pass --impute mean|median to gpunn train to fill them with "
                            "the training rows' mean or median")
        infinite = ~np.all(np.isfinite(X), axis=0)
        if infinite.any():
            raise DataError(f"{source}: features contain Inf (column {self.encoded_names()[int(np.flatnonzero(infinite)[0])]!r})")
        return X

    @staticmethod
    def _one_hot(column: Column, values: np.ndarray, source) -> np.ndarray:
        if values.dtype != object:
            raise DataError(f"{source}: column {column.name!r} holds numbers where the training data had the "
                            f"categories {column.categories[:5]}")
        absent = np.flatnonzero(values == None)  # noqa: E711
        if len(absent):
            raise DataError(f"{source}: text column {column.name!r} has empty cells ({_rows_text(absent)}); "
                            "fill them in the file or drop those rows")
        text = values.astype(str)
        known = np.array(column.categories, dtype=str)
        codes = np.minimum(np.searchsorted(known, text), len(known) - 1)
        unseen = np.flatnonzero(known[codes] != text)
        if len(unseen):
            shown = ", ".join(map(repr, column.categories[:10])) + (", ..." if len(known) > 10 else "")
            raise DataError(f"{source}: column {column.name!r} holds {str(text[unseen[0]])!r} in data row {unseen[0] + 1} "
                            f"({len(unseen)} such rows), a category the training data never had ({shown}); the model "
                            "has no input for it: drop those rows, or retrain with them in --data")
        return np.eye(len(known))[codes]

    def encoded_names(self) -> list[str]:
        return [name for column in self.columns for name in
                ([column.name] if column.categories is None else [f"{column.name}={c}" for c in column.categories])]

    def to_extra(self) -> np.ndarray:
        return np.array(json.dumps({"impute": self.impute, "columns": [vars(column) for column in self.columns]}))

    @classmethod
    def from_extra(cls, value) -> "Encoding":
        """The encoding a checkpoint stores; ValueError when it is not one."""
        try:
            stored = json.loads(str(value))
            columns = [Column(str(c["name"]), None if c["categories"] is None else [str(v) for v in c["categories"]],
                              None if c["fill"] is None else float(c["fill"])) for c in stored["columns"]]
            encoding = cls(columns, stored["impute"])
        except (ValueError, TypeError, KeyError) as error:
            raise ValueError(f"not a feature encoding ({error})") from None
        if encoding.impute not in (None, *IMPUTE_CHOICES) or any(
                c.categories is not None and (not c.categories or c.categories != sorted(set(c.categories)))
                for c in columns):
            raise ValueError("the feature encoding holds values of the wrong kind")
        return encoding
