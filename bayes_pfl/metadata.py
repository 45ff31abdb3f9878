r"""Client metadata as covariates of the population: one row per client, encoded once.

A client's metadata (its region, its device type, its size...) are not private: the
server knows them, or each client sends them once. :class:`MetadataEncoding` turns a
table with one row per client into the covariate matrix ``z [K, M]`` of a model with
client covariates (``HierarchicalModel(..., client_covariates=names)``, the zoo GLMs'
``client_covariates=``), where the population of client ``k`` is
``theta_k | phi ~ N(mu + z_k W, T)``:

* a *categorical* column (object, string, category or bool dtype) becomes one 0/1
  column per level but the first (the reference level, dropped; levels in sorted order,
  or a categorical dtype's own order), named ``"column=level"``;
* a *numeric* column is standardized with the mean and standard deviation (``ddof=0``)
  over the federation's clients, one value per client (scale 1 for a constant column).

The encoding is fixed by the training federation and reused for a new client
(:meth:`MetadataEncoding.encode_row`, the cold start): a category level not seen in
training, a missing value, a missing or unknown client are errors naming the column,
the level or the client.

Example
-------
>>> import pandas as pd
>>> meta = pd.DataFrame({"region": ["north", "south", "north"], "size": [1.0, 2.0, 3.0]},
...                     index=["a", "b", "c"])
>>> enc = MetadataEncoding.fit(meta, ["region", "size"])
>>> enc.names
('region=south', 'size')
>>> enc.encode(meta, ["c", "b"]).round(3).tolist()
[[0.0, 1.225], [1.0, 0.0]]
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from bayes_pfl._preprocess import DataError, absent, listing, readonly

__all__ = ["ClientMetadata", "MetadataColumn", "MetadataEncoding", "metadata_table"]


@dataclass(frozen=True)
class MetadataColumn:
    """How one metadata column is encoded.

    Attributes
    ----------
    name : hashable
        The column's name in the metadata table.
    levels : tuple or None
        A categorical column's levels, the first the (dropped) reference; ``None`` for a
        numeric column.
    mean, scale : float
        A numeric column's standardization (``(value - mean) / scale``).
    """

    name: Hashable
    levels: tuple | None = None
    mean: float = 0.0
    scale: float = 1.0

    @property
    def names(self) -> tuple[str, ...]:
        """The covariates this column gives: ``"column=level"`` per non-reference level,
        or the column's name."""
        if self.levels is None:
            return (str(self.name),)
        return tuple(f"{self.name}={level}" for level in self.levels[1:])

    def encode(self, values: pd.Series, clients: Sequence[Hashable]) -> np.ndarray:
        """The covariates ``[len(values), len(names)]`` of this column's values (one per
        client, ``clients`` naming them in errors)."""
        missing = pd.isna(values).to_numpy()
        if missing.any():
            who = [c for c, bad in zip(clients, missing, strict=True) if bad]
            raise DataError(
                f"metadata column {self.name!r} has missing values for client(s) "
                f"{listing(who)}; every client needs its metadata"
            )
        if self.levels is None:
            try:
                x = pd.to_numeric(values).to_numpy(dtype=float)
            except (TypeError, ValueError) as exc:
                raise DataError(
                    f"metadata column {self.name!r} is numeric in training; got "
                    f"non-numeric values {listing(list(values))}"
                ) from exc
            if not np.all(np.isfinite(x)):
                who = [c for c, v in zip(clients, x, strict=True) if not np.isfinite(v)]
                raise DataError(
                    f"metadata column {self.name!r} has infinite values for client(s) "
                    f"{listing(who)}"
                )
            return ((x - self.mean) / self.scale)[:, None]
        position = {level: j for j, level in enumerate(self.levels)}
        out = np.zeros((len(values), len(self.levels) - 1))
        for i, (client, value) in enumerate(zip(clients, values, strict=True)):
            j = position.get(_level(value))
            if j is None:
                raise DataError(
                    f"metadata column {self.name!r}: level {_level(value)!r} of client "
                    f"{client!r} was not seen in training (levels: {listing(self.levels)}); "
                    "the population knows nothing of it"
                )
            if j > 0:
                out[i, j - 1] = 1.0
        return out


def _level(value: Any) -> Any:
    """A level as a plain Python value (numpy scalars compare and print as Python's)."""
    return value.item() if isinstance(value, np.generic) else value


def _is_categorical(s: pd.Series) -> bool:
    return (
        isinstance(s.dtype, pd.CategoricalDtype)
        or pd.api.types.is_bool_dtype(s.dtype)
        or pd.api.types.is_object_dtype(s.dtype)
        or pd.api.types.is_string_dtype(s.dtype)
    )


@dataclass(frozen=True)
class MetadataEncoding:
    """The encoding of a metadata table into client covariates (see the module docstring).

    Build it with :meth:`fit` on the training federation's table; :meth:`encode` and
    :meth:`encode_row` apply it.
    """

    columns: tuple[MetadataColumn, ...]

    @property
    def names(self) -> tuple[str, ...]:
        """The covariates' names, in the order of ``z``'s columns."""
        return tuple(n for c in self.columns for n in c.names)

    @property
    def source_columns(self) -> tuple[Hashable, ...]:
        """The metadata table's columns the encoding reads."""
        return tuple(c.name for c in self.columns)

    @classmethod
    def fit(cls, table: pd.DataFrame, columns: Sequence[Hashable]) -> MetadataEncoding:
        """The encoding of ``table``'s ``columns`` (one row per client), fixed by its values."""
        if isinstance(columns, str) or not isinstance(columns, Sequence) or not len(columns):
            raise DataError(f"metadata_cols must be a non-empty list of columns, got {columns!r}")
        absent = [c for c in columns if c not in table.columns]
        if absent:
            raise DataError(
                f"metadata column(s) {listing(absent)} not in the metadata table (columns: "
                f"{listing(list(table.columns))})"
            )
        if len(set(columns)) != len(columns):
            raise DataError(f"metadata_cols repeat a column: {list(columns)}")
        clients = list(table.index)
        out = []
        for name in columns:
            values = table[name]
            if values.isna().any():
                who = [c for c, bad in zip(clients, values.isna(), strict=True) if bad]
                raise DataError(
                    f"metadata column {name!r} has missing values for client(s) "
                    f"{listing(who)}; every client needs its metadata"
                )
            if _is_categorical(values):
                if isinstance(values.dtype, pd.CategoricalDtype):
                    levels = tuple(_level(v) for v in values.cat.categories if (values == v).any())
                else:
                    levels = tuple(sorted({_level(v) for v in values}, key=str))
                if len(levels) < 2:
                    raise DataError(
                        f"metadata column {name!r} has a single level {listing(levels)} over "
                        "the federation: it says nothing about any client; leave it out"
                    )
                out.append(MetadataColumn(name, levels))
            else:
                x = pd.to_numeric(values).to_numpy(dtype=float)
                if not np.all(np.isfinite(x)):
                    raise DataError(f"metadata column {name!r} has infinite values")
                sd = float(np.std(x))
                out.append(MetadataColumn(name, None, float(np.mean(x)), sd if sd > 0 else 1.0))
        return cls(tuple(out))

    def encode(self, table: pd.DataFrame, clients: Sequence[Hashable]) -> np.ndarray:
        """The covariates ``z [len(clients), M]`` of ``clients`` (rows of ``table``, indexed by
        client label)."""
        absent = [c for c in self.source_columns if c not in table.columns]
        if absent:
            raise DataError(f"metadata column(s) {listing(absent)} not in the metadata table")
        blocks = [col.encode(table.loc[list(clients), col.name], clients) for col in self.columns]
        return np.concatenate(blocks, axis=1) if blocks else np.zeros((len(clients), 0))

    def encode_row(self, metadata: Mapping | pd.Series | pd.DataFrame) -> np.ndarray:
        """The covariates ``z [M]`` of one new client from its metadata (a mapping column ->
        value, a Series or a one-row DataFrame), with the training encoding."""
        if isinstance(metadata, pd.DataFrame):
            if len(metadata) != 1:
                raise DataError(
                    f"a new client's metadata must be one row, got {len(metadata)} rows"
                )
            metadata = metadata.iloc[0]
        if not isinstance(metadata, Mapping | pd.Series):
            raise DataError(
                "a new client's metadata must be a mapping column -> value, a Series or a "
                f"one-row DataFrame, got {type(metadata).__name__}"
            )
        absent = [c for c in self.source_columns if c not in metadata]
        if absent:
            raise DataError(
                f"the new client's metadata lacks column(s) {listing(absent)} "
                f"(the model reads {listing(list(self.source_columns))})"
            )
        table = pd.DataFrame(
            {
                c: pd.Series([metadata[c]], index=["new client"], dtype=object)
                for c in self.source_columns
            }
        )
        for col in self.columns:
            if col.levels is None:
                table[col.name] = pd.to_numeric(table[col.name], errors="coerce").where(
                    table[col.name].notna()
                )
        return self.encode(table, ["new client"])[0]


def metadata_table(
    metadata: pd.DataFrame, clients: Sequence[Hashable], client_col: Hashable
) -> pd.DataFrame:
    """The metadata table indexed by client label, rows in ``clients``' order, checked.

    The clients are the table's column ``client_col`` when it has one, else its index.
    A client of the federation without a row, a row of a client not in the federation,
    or a client with two rows is a :class:`~bayes_pfl.data.DataError` naming them.
    """
    if not isinstance(metadata, pd.DataFrame):
        raise DataError(
            f"metadata must be a pandas DataFrame (one row per client), got "
            f"{type(metadata).__name__}"
        )
    table = metadata.set_index(client_col) if client_col in metadata.columns else metadata
    labels = list(table.index)
    repeated = sorted({c for c in labels if labels.count(c) > 1}, key=str)
    if repeated:
        raise DataError(f"metadata: client(s) with more than one row: {listing(repeated)}")
    unknown = absent(labels, clients)
    if unknown:
        raise DataError(
            f"metadata: client(s) {listing(unknown)} are not in the federation "
            f"({listing(list(clients), limit=5)}); drop their rows (labels are compared "
            "with their type: 1 and '1' differ)"
        )
    lacking = absent(clients, labels)
    if lacking:
        raise DataError(f"metadata: no row for client(s) {listing(lacking)}")
    return table.loc[list(clients)]


class ClientMetadata(NamedTuple):
    """A federation's client metadata: the covariates ``[K, M]`` (row ``k`` for client ``k``,
    read-only) and the encoding that made them (it encodes a new client's metadata)."""

    covariates: np.ndarray
    encoding: MetadataEncoding

    @property
    def names(self) -> tuple[str, ...]:
        """The covariates' names, one per column of ``covariates``."""
        return self.encoding.names

    def take(self, positions: np.ndarray) -> ClientMetadata:
        """The metadata of the clients at ``positions``, in that order."""
        return ClientMetadata(readonly(self.covariates[positions]), self.encoding)

    @classmethod
    def encode(
        cls,
        metadata: pd.DataFrame | None,
        columns: Sequence[Hashable] | str | None,
        clients: Sequence[Hashable],
        client_col: Hashable,
    ) -> ClientMetadata | None:
        """The metadata of ``clients`` from a table with one row per client (``None`` without
        a table); ``columns`` a list or a comma-separated string (default: every column)."""
        if metadata is None:
            if columns is not None:
                raise DataError("metadata_cols given without metadata")
            return None
        table = metadata_table(metadata, clients, client_col)
        if columns is None:
            columns = list(table.columns)
        elif isinstance(columns, str):
            columns = [c.strip() for c in columns.split(",")]
        encoding = MetadataEncoding.fit(table, list(columns))
        return cls(readonly(encoding.encode(table, clients)), encoding)
