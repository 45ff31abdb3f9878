"""Federated data: each client's rows kept apart, padded to a common length.

:class:`FederatedData` turns a long-format :class:`pandas.DataFrame` (one row
per observation, one column naming the client that holds it) into per-client
arrays. The rows of client ``k`` never mix with another client's: they sit in
slice ``k`` of arrays of shape ``(n_clients, n_max, ...)``, padded with zeros
up to the largest client and flagged by a boolean ``mask``, so that JAX can
``vmap`` a per-client computation over the leading axis (see
:class:`ClientArrays`).

Everything here is plain numpy and pandas; JAX is not needed to build data.

Examples
--------
Eight schools: eight clients with one row each (the effect estimate ``y`` and
its standard error ``sigma``).

>>> import pandas as pd
>>> df = pd.DataFrame({
...     "school": list("ABCDEFGH"),
...     "y": [28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0],
...     "sigma": [15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0],
... })
>>> data = FederatedData.from_pandas(df, client_col="school", target="y", features=["sigma"])
>>> data.clients
('A', 'B', 'C', 'D', 'E', 'F', 'G', 'H')
>>> data.train.x.shape, data.train.y.shape, data.train.mask.shape
((8, 1, 1), (8, 1), (8, 1))

Ragged clients are padded and masked:

>>> df = pd.DataFrame({"c": [1, 1, 2, 1], "x": [0.5, 1.5, 2.5, 3.5], "y": [1.0, 2.0, 3.0, 4.0]})
>>> data = FederatedData.from_pandas(df, client_col="c", target="y", features=["x"])
>>> data.clients, data.n_rows().tolist()
((1, 2), [3, 1])
>>> data.train.mask
array([[ True,  True,  True],
       [ True, False, False]])
"""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, Literal, NamedTuple

import numpy as np
import pandas as pd

from bayes_pfl._preprocess import (
    DataError,
    UnknownClientError,
    check_dtype,
    check_fraction,
    check_frame,
    check_infinite,
    check_seed,
    client_codes,
    count_listing,
    duplicates,
    feature_matrix,
    handle_missing,
    label_list,
    listing,
    numeric,
    plural,
    raise_missing_features,
    raise_missing_target,
    readonly,
    split_client,
    standardization,
)
from bayes_pfl.metadata import ClientMetadata

__all__ = ["ClientArrays", "DataError", "FederatedData", "UnknownClientError"]

Split = Literal["train", "test", "val"]
Missing = Literal["error", "drop", "keep"]

_SPLITS: tuple[str, ...] = ("train", "test", "val")
_MISSING: tuple[str, ...] = ("error", "drop", "keep")


class ClientArrays(NamedTuple):
    """Padded per-client arrays; a JAX pytree whose leading axis is the client.

    Client ``k`` owns ``x[k]``, ``y[k]`` and ``mask[k]``; its real rows come
    first (in the order of the original frame), followed by padding rows that
    are zero in ``x`` and ``y`` and ``False`` in ``mask``.

    Attributes
    ----------
    x : numpy.ndarray
        Features, float, shape ``(n_clients, n_max, n_features)``.
    y : numpy.ndarray
        Target, float, shape ``(n_clients, n_max)``.
    mask : numpy.ndarray
        ``True`` for real rows, bool, shape ``(n_clients, n_max)``.

    Examples
    --------
    >>> import numpy as np
    >>> arr = ClientArrays(
    ...     x=np.zeros((2, 3, 1)), y=np.zeros((2, 3)),
    ...     mask=np.array([[True, True, True], [True, False, False]]),
    ... )
    >>> arr.n.tolist()
    [3, 1]
    >>> one = arr.client(1)
    >>> one.x.shape, int(one.n)
    ((3, 1), 1)
    """

    x: np.ndarray
    y: np.ndarray
    mask: np.ndarray

    @property
    def n(self) -> np.ndarray:
        """Number of real rows per client (``mask.sum(-1)``), int64."""
        return np.asarray(self.mask).sum(axis=-1).astype(np.int64)

    def client(self, k: int) -> ClientArrays:
        """Arrays of the client at position ``k``, without the client axis.

        Parameters
        ----------
        k : int
            Position of the client (see :meth:`FederatedData.index`).

        Returns
        -------
        ClientArrays
            ``x`` of shape ``(n_max, n_features)``, ``y`` and ``mask`` of
            shape ``(n_max,)``.
        """
        return ClientArrays(self.x[k], self.y[k], self.mask[k])


@dataclass(frozen=True, eq=False, repr=False)
class FederatedData:
    """Data of a federation of clients, one padded block of rows per client.

    Build it with :meth:`from_pandas`. The instance is immutable and its arrays
    are read-only.

    Attributes
    ----------
    clients : tuple
        Client labels exactly as they appear in the client column (strings
        stay strings, integers stay integers), in order of first appearance in
        the frame, or in the order of ``clients=`` when given. Position ``k``
        in every array belongs to ``clients[k]``.
    features : tuple
        Feature column names, in the column order of ``x``.
    target : str
        Target column name.
    client_col : str
        Client column name.
    train : ClientArrays
        Training rows.
    test : ClientArrays or None
        Test rows; ``None`` when ``test_size == 0``.
    val : ClientArrays or None
        Validation rows; ``None`` when ``val_size == 0``.
    feature_mean, feature_scale : numpy.ndarray or None
        Standardization statistics (float64, one per feature): ``x`` holds
        ``(raw - feature_mean) / feature_scale``. ``None`` without
        standardization.
    dropped_rows : dict
        Client label -> number of rows dropped for missing values
        (``missing="drop"``); clients with no dropped row are absent.
    seed : int
        Seed of the train/test/validation split.
    row_index : dict
        Split name -> :class:`pandas.Index` of the original frame's index
        labels of that split's rows, in the row order of :meth:`to_pandas`
        (client by client, frame order within a client). Use it to attach
        per-row results (e.g. predictions) back to the original frame.
    metadata : ClientMetadata or None
        The clients' metadata as covariates ``[n_clients, M]`` (:mod:`bayes_pfl.metadata`).

    Examples
    --------
    >>> import pandas as pd
    >>> df = pd.DataFrame({
    ...     "hospital": ["a"] * 4 + ["b"] * 2 + ["c"] * 3,
    ...     "age": [50, 61, 45, 70, 38, 55, 66, 49, 58],
    ...     "y": [1.2, 2.0, 0.7, 2.9, 0.1, 1.5, 2.2, 0.9, 1.8],
    ... })
    >>> data = FederatedData.from_pandas(
    ...     df, client_col="hospital", target="y", features=["age"],
    ...     test_size=0.25, seed=1, standardize=True,
    ... )
    >>> data.n_clients, data.n_features
    (3, 1)
    >>> data.summary().reset_index()
      hospital  n_train  n_test  n_val  dropped
    0        a        3       1      0        0
    1        b        1       1      0        0
    2        c        2       1      0        0
    """

    clients: tuple[Hashable, ...]
    features: tuple[Hashable, ...]
    target: Hashable
    client_col: Hashable
    train: ClientArrays
    test: ClientArrays | None
    val: ClientArrays | None
    feature_mean: np.ndarray | None
    feature_scale: np.ndarray | None
    dropped_rows: dict[Hashable, int]
    seed: int
    row_index: dict[str, pd.Index] = field(default_factory=dict)
    metadata: ClientMetadata | None = None

    # ------------------------------------------------------------------ build

    @classmethod
    def from_pandas(
        cls,
        df: pd.DataFrame,
        *,
        client_col: Hashable,
        target: Hashable,
        features: Sequence[Hashable] | str,
        clients: Sequence[Hashable] | None = None,
        test_size: float = 0.0,
        val_size: float = 0.0,
        seed: int = 0,
        standardize: bool = False,
        missing: Missing = "error",
        dtype: Any = np.float64,
        metadata: pd.DataFrame | None = None,
        metadata_cols: Sequence[Hashable] | None = None,
    ) -> FederatedData:
        """Build federated data from a long-format data frame.

        Parameters
        ----------
        df : pandas.DataFrame
            One row per observation.
        client_col : str
            Column with the label of the client holding each row. Must not
            contain missing values. A categorical column's unused categories
            count as clients without rows, which is an error.
        target : str
            Numeric (or bool) target column.
        features : sequence of str
            Numeric (or bool, converted to 0/1) feature columns, at least one.
        clients : sequence, optional
            The federation's client labels, in the order wanted. Every label
            of ``df[client_col]`` must be among them and every one of them
            must have rows. Default: the labels in order of first appearance.
        test_size, val_size : float, default 0.0
            Fraction of each client's rows held out for testing / validation,
            in ``[0, 1)`` with ``test_size + val_size < 1``. A client with
            ``n`` rows gets ``round(test_size * n)`` test rows and
            ``round(val_size * n)`` validation rows (halves rounded up), but
            always keeps at least one training row (validation rows are given
            up first): a client with a single row is all-train.
        seed : int, default 0
            Seed of the split (:func:`numpy.random.default_rng`). The same seed
            gives the same split. Client ``k`` draws from its own stream, child
            ``k`` of ``numpy.random.SeedSequence(seed)``.
        standardize : bool, default False
            Standardize the features with the mean and standard deviation
            (``ddof=0``) of all *training* rows of all clients pooled; test
            and validation rows use the same training statistics. These pooled
            statistics are exactly what a federation computes from per-client
            row counts, sums and sums of squares (e.g. by secure aggregation),
            so no row has to leave its client. Binary columns (training values
            only 0/1, including bool columns) are left untouched (mean 0,
            scale 1); constant columns get scale 1 (they are centred to 0).
        missing : {"error", "drop", "keep"}, default "error"
            Missing values (NaN / None / ``pd.NA``). ``"error"`` raises,
            ``"drop"`` drops the rows with a missing target or feature value,
            counts them in :attr:`dropped_rows` and warns (``UserWarning``)
            with the total and per-client counts; ``"keep"`` keeps NaN in the
            features ``x`` for models that handle missing values themselves
            (missing *targets* are then still an error). Infinite values are
            always an error.
        dtype : numpy float dtype, default numpy.float64
            Dtype of ``x`` and ``y``.
        metadata, metadata_cols : pandas.DataFrame, sequence of str, optional
            Client metadata, one row per client (label in ``client_col`` or the index), and
            the columns (default: all) to encode into :attr:`metadata` (covariates).

        Returns
        -------
        FederatedData

        Raises
        ------
        DataError
            For any invalid input; the message names the column or client.

        Notes
        -----
        If the target only takes the values 0 and 1, the split is stratified
        within each client: the client's test (and validation) rows are shared
        between the two classes in proportion to their sizes (largest
        remainder), and each class is shuffled separately. Inside each split,
        rows keep the order of the original frame.

        Examples
        --------
        >>> import pandas as pd
        >>> df = pd.DataFrame({
        ...     "client": ["u"] * 10 + ["v"] * 10,
        ...     "x": range(20),
        ...     "y": [0, 1] * 10,
        ... })
        >>> data = FederatedData.from_pandas(
        ...     df, client_col="client", target="y", features=["x"], test_size=0.2,
        ... )
        >>> data.n_rows("train").tolist(), data.n_rows("test").tolist()
        ([8, 8], [2, 2])
        >>> data.arrays("test").y.sum(axis=1).tolist()  # one of each class per client
        [1.0, 1.0]
        """
        if missing not in _MISSING:
            raise DataError(f"missing must be one of {_MISSING}, got {missing!r}")
        test_size = check_fraction("test_size", test_size)
        val_size = check_fraction("val_size", val_size)
        if test_size + val_size >= 1.0:
            raise DataError(
                f"test_size + val_size must be < 1 (some rows must stay for training), "
                f"got {test_size} + {val_size}"
            )
        seed = check_seed(seed)
        dtype = check_dtype(dtype)
        features = check_frame(
            df, client_col=client_col, target=target, features=features, require_target=True
        )

        labels, codes = client_codes(df[client_col], client_col, clients)
        if len(labels) < 2:
            raise DataError(
                f"a federation needs at least two clients; client column {client_col!r} "
                f"has {plural(len(labels), 'client')}: {listing(labels)}"
            )
        n_clients = len(labels)

        x = feature_matrix(df, features)
        y = numeric(df[target])
        check_infinite(x, y, features, target, codes, labels)

        keep, dropped = handle_missing(x, y, features, target, codes, labels, missing)
        if dropped:
            total = sum(dropped.values())
            warnings.warn(
                f"missing='drop': dropped {plural(total, 'row')} with missing values "
                f"({count_listing(dropped, 'client ')}); see FederatedData.dropped_rows",
                UserWarning,
                stacklevel=2,
            )

        kept = np.flatnonzero(keep)
        counts = np.bincount(codes[kept], minlength=n_clients)
        empty = [labels[k] for k in range(n_clients) if counts[k] == 0]
        if empty:
            raise DataError(
                f"client(s) with no rows left after dropping missing values: {listing(empty)}"
            )

        # rows of each client, in frame order
        order = kept[np.argsort(codes[kept], kind="stable")]
        per_client = np.split(order, np.cumsum(counts)[:-1])

        finite_y = y[kept]
        stratify = bool(np.all((finite_y == 0) | (finite_y == 1)))
        streams = np.random.SeedSequence(seed).spawn(n_clients)
        parts: dict[str, list[np.ndarray]] = {s: [] for s in _SPLITS}
        for rows, stream in zip(per_client, streams, strict=True):
            split = split_client(
                rows, y[rows], test_size, val_size, stratify, np.random.default_rng(stream)
            )
            for name, idx in zip(_SPLITS, split, strict=True):
                parts[name].append(idx)

        mean = scale = None
        if standardize:
            mean, scale = standardization(x[np.concatenate(parts["train"])])
            x = (x - mean) / scale

        sizes = {"train": 1.0, "test": test_size, "val": val_size}
        arrays = {
            name: _pack(x, y, parts[name], dtype) if sizes[name] > 0 else None for name in _SPLITS
        }
        row_index = {
            name: df.index.take(np.concatenate(parts[name]))
            for name in _SPLITS
            if arrays[name] is not None
        }
        return cls(
            clients=tuple(labels),
            features=features,
            target=target,
            client_col=client_col,
            train=arrays["train"],
            test=arrays["test"],
            val=arrays["val"],
            feature_mean=readonly(mean),
            feature_scale=readonly(scale),
            dropped_rows=dropped,
            seed=seed,
            row_index=row_index,
            metadata=ClientMetadata.encode(metadata, metadata_cols, labels, client_col),
        )

    # ------------------------------------------------------------- accessors

    @property
    def n_clients(self) -> int:
        """Number of clients."""
        return len(self.clients)

    @property
    def n_features(self) -> int:
        """Number of features (last axis of ``x``)."""
        return len(self.features)

    def n_rows(self, split: Split = "train") -> np.ndarray:
        """Rows per client in a split (zeros for a split that was not made).

        Parameters
        ----------
        split : {"train", "test", "val"}, default "train"

        Returns
        -------
        numpy.ndarray
            int64, shape ``(n_clients,)``.

        Examples
        --------
        >>> import pandas as pd
        >>> df = pd.DataFrame({"c": ["a", "a", "b"], "x": [1.0, 2.0, 3.0], "y": [0.0, 1.0, 2.0]})
        >>> data = FederatedData.from_pandas(df, client_col="c", target="y", features=["x"])
        >>> data.n_rows().tolist(), data.n_rows("test").tolist()
        ([2, 1], [0, 0])
        """
        arr = self._split(split)
        return np.zeros(self.n_clients, dtype=np.int64) if arr is None else arr.n

    def arrays(self, split: Split = "train") -> ClientArrays:
        """The padded arrays of a split.

        Parameters
        ----------
        split : {"train", "test", "val"}, default "train"

        Returns
        -------
        ClientArrays

        Raises
        ------
        DataError
            For an unknown split name, or a split that was not made
            (``test_size`` / ``val_size`` was 0).

        Examples
        --------
        >>> import pandas as pd
        >>> df = pd.DataFrame({"c": ["a", "a", "b"], "x": [1.0, 2.0, 3.0], "y": [0.0, 1.0, 2.0]})
        >>> data = FederatedData.from_pandas(df, client_col="c", target="y", features=["x"])
        >>> data.arrays("train").x.shape
        (2, 2, 1)
        >>> data.arrays("test")
        Traceback (most recent call last):
        ...
        bayes_pfl.data.DataError: no 'test' split: from_pandas was called with test_size=0
        """
        arr = self._split(split)
        if arr is None:
            raise DataError(f"no {split!r} split: from_pandas was called with {split}_size=0")
        return arr

    def index(self, labels: Hashable | Iterable[Hashable]) -> np.ndarray:
        """Positions of client labels in the federation.

        Parameters
        ----------
        labels : label or iterable of labels
            A single label (a string, a number...) or several.

        Returns
        -------
        numpy.ndarray
            int64 positions, one per label given.

        Raises
        ------
        UnknownClientError
            If a label is not a client of the federation.

        Examples
        --------
        >>> import pandas as pd
        >>> df = pd.DataFrame({"c": ["a", "b", "c"], "x": [1.0, 2.0, 3.0], "y": [0.0, 1.0, 2.0]})
        >>> data = FederatedData.from_pandas(df, client_col="c", target="y", features=["x"])
        >>> data.index(["c", "a"]).tolist(), data.index("b").tolist()
        ([2, 0], [1])
        """
        wanted = label_list(labels)
        positions = self._positions
        unknown = []
        for label in wanted:
            try:
                if label not in positions:
                    unknown.append(label)
            except TypeError:  # unhashable
                unknown.append(label)
        if unknown:
            raise UnknownClientError(self._unknown_message(unknown))
        return np.array([positions[label] for label in wanted], dtype=np.int64)

    def subset(self, labels: Iterable[Hashable]) -> FederatedData:
        """The federation restricted to some clients, in the order given.

        Arrays are trimmed to the largest selected client; standardization
        statistics, seed and splits are unchanged (no recomputation).

        Parameters
        ----------
        labels : iterable of labels
            At least two distinct known clients.

        Returns
        -------
        FederatedData

        Raises
        ------
        UnknownClientError
            For a label that is not a client.
        DataError
            For repeated labels or fewer than two clients (use
            ``data.arrays(split).client(k)`` for a single client).

        Examples
        --------
        >>> import pandas as pd
        >>> df = pd.DataFrame({"c": ["a", "b", "b", "c"], "x": [1.0, 2, 3, 4], "y": [0.0, 1, 2, 3]})
        >>> data = FederatedData.from_pandas(df, client_col="c", target="y", features=["x"])
        >>> sub = data.subset(["c", "a"])
        >>> sub.clients, sub.train.x.shape
        (('c', 'a'), (2, 1, 1))
        """
        wanted = label_list(labels)
        pos = self.index(wanted)
        repeated = duplicates(wanted)
        if repeated:
            raise DataError(f"subset: client(s) listed more than once: {listing(repeated)}")
        if len(pos) < 2:
            raise DataError(
                f"subset needs at least two clients, got {listing(wanted) or 'none'}; "
                "use data.arrays(split).client(k) for a single client"
            )
        new_index = {}
        for name, idx in self.row_index.items():
            bounds = np.concatenate([[0], np.cumsum(self.n_rows(name))])
            take = [np.arange(bounds[k], bounds[k + 1]) for k in pos]
            new_index[name] = idx.take(np.concatenate(take).astype(np.int64))
        chosen = tuple(self.clients[k] for k in pos)
        kept = set(chosen)
        return replace(
            self,
            clients=chosen,
            train=_take(self.train, pos),
            test=_take(self.test, pos),
            val=_take(self.val, pos),
            dropped_rows={c: n for c, n in self.dropped_rows.items() if c in kept},
            row_index=new_index,
            metadata=None if self.metadata is None else self.metadata.take(pos),
        )

    # ---------------------------------------------------------------- encode

    def encode(
        self, df: pd.DataFrame, *, missing: Literal["error", "keep"] = "error"
    ) -> tuple[ClientArrays, tuple[Hashable, ...]]:
        """Padded arrays for new rows of known clients (e.g. to predict).

        The columns are checked as in :meth:`from_pandas` and the features are
        transformed with the stored (training) standardization. The target
        column is optional: ``y`` is zero where it is absent.

        Parameters
        ----------
        df : pandas.DataFrame
            Rows of clients of this federation.
        missing : {"error", "keep"}, default "error"
            Missing feature (or target) values: raise, or keep them as NaN.
            Rows are never dropped here, so the output stays aligned with
            ``df``.

        Returns
        -------
        arrays : ClientArrays
            One slice per client label in ``labels``, rows in frame order:
            row ``i`` of ``arrays.x[k]`` is the ``i``-th row of ``df`` whose
            client is ``labels[k]``.
        labels : tuple
            The clients of ``df`` in order of first appearance; their
            positions in the federation are ``self.index(labels)``.

        Raises
        ------
        UnknownClientError
            For a client label that is not in the federation.
        DataError
            For any other invalid input.

        Examples
        --------
        >>> import pandas as pd
        >>> df = pd.DataFrame({"c": ["a", "a", "b"], "x": [1.0, 2.0, 3.0], "y": [0.0, 1.0, 2.0]})
        >>> data = FederatedData.from_pandas(df, client_col="c", target="y", features=["x"])
        >>> new = pd.DataFrame({"c": ["b", "b", "a"], "x": [5.0, 6.0, 7.0]})
        >>> arrays, labels = data.encode(new)
        >>> labels, data.index(labels).tolist()
        (('b', 'a'), [1, 0])
        >>> arrays.x[..., 0]
        array([[5., 6.],
               [7., 0.]])
        """
        if missing not in ("error", "keep"):
            raise DataError(f"encode: missing must be 'error' or 'keep', got {missing!r}")
        check_frame(
            df,
            client_col=self.client_col,
            target=self.target,
            features=self.features,
            require_target=False,
        )
        if len(df) == 0:
            raise DataError("encode: the data frame has no rows")
        labels, codes = client_codes(df[self.client_col], self.client_col, None, check_unused=False)
        self.index(labels)  # UnknownClientError for clients not in the federation
        x = feature_matrix(df, self.features)
        has_target = self.target in df.columns
        y = numeric(df[self.target]) if has_target else np.zeros(len(df))
        check_infinite(x, y, self.features, self.target, codes, labels)
        if missing == "error":
            raise_missing_target(y, self.target, codes, labels, "encode: ")
            raise_missing_features(x, self.features, "encode: ")
        if self.feature_mean is not None:
            x = (x - self.feature_mean) / self.feature_scale
        order = np.argsort(codes, kind="stable")
        counts = np.bincount(codes, minlength=len(labels))
        groups = np.split(order, np.cumsum(counts)[:-1])
        return _pack(x, y, groups, self.train.x.dtype), tuple(labels)

    # ------------------------------------------------------------- to pandas

    def to_pandas(self, split: Split = "train") -> pd.DataFrame:
        """A split in long format, features back in their original units.

        Parameters
        ----------
        split : {"train", "test", "val"}, default "train"

        Returns
        -------
        pandas.DataFrame
            Columns ``client_col``, the features (de-standardized) and the
            target; rows client by client, in frame order within a client,
            indexed by the original frame's index labels (:attr:`row_index`).

        Examples
        --------
        >>> import pandas as pd
        >>> df = pd.DataFrame({"c": ["a", "b", "a"], "x": [1.0, 2.0, 3.0], "y": [0.0, 1.0, 2.0]})
        >>> data = FederatedData.from_pandas(
        ...     df, client_col="c", target="y", features=["x"], standardize=True
        ... )
        >>> data.to_pandas()
           c    x    y
        0  a  1.0  0.0
        2  a  3.0  2.0
        1  b  2.0  1.0
        """
        arr = self.arrays(split)
        mask = np.asarray(arr.mask)
        x = np.asarray(arr.x)[mask].astype(np.float64)
        y = np.asarray(arr.y)[mask].astype(np.float64)
        if self.feature_mean is not None:
            x = x * self.feature_scale + self.feature_mean
        owner = np.repeat(np.arange(self.n_clients), arr.n)
        index = self.row_index.get(split)
        if index is None or len(index) != len(y):
            index = pd.RangeIndex(len(y))
        labels = pd.Series(list(self.clients)).take(owner).set_axis(index)
        columns: dict[Hashable, Any] = {self.client_col: labels}
        for j, name in enumerate(self.features):
            columns[name] = pd.Series(x[:, j], index=index)
        columns[self.target] = pd.Series(y, index=index)
        return pd.DataFrame(columns, index=index)

    def summary(self) -> pd.DataFrame:
        """Row counts per client.

        Returns
        -------
        pandas.DataFrame
            Indexed by client label (index named ``client_col``), columns
            ``n_train``, ``n_test``, ``n_val`` and ``dropped`` (rows dropped
            for missing values).

        Examples
        --------
        >>> import pandas as pd
        >>> df = pd.DataFrame({"c": ["a", "a", "b"], "x": [1.0, 2.0, 3.0], "y": [0.0, 1.0, 2.0]})
        >>> data = FederatedData.from_pandas(df, client_col="c", target="y", features=["x"])
        >>> data.summary().reset_index()
           c  n_train  n_test  n_val  dropped
        0  a        2       0      0        0
        1  b        1       0      0        0
        """
        return pd.DataFrame(
            {
                "n_train": self.n_rows("train"),
                "n_test": self.n_rows("test"),
                "n_val": self.n_rows("val"),
                "dropped": np.array(
                    [self.dropped_rows.get(c, 0) for c in self.clients], dtype=np.int64
                ),
            },
            index=pd.Index(list(self.clients), name=self.client_col),
        )

    # -------------------------------------------------------------- internal

    def __repr__(self) -> str:
        rows = ", ".join(
            f"{name}={int(self.n_rows(name).sum())}"
            for name in _SPLITS
            if self._split(name) is not None
        )
        return (
            f"FederatedData(n_clients={self.n_clients}, features={list(self.features)!r}, "
            f"target={self.target!r}, rows: {rows}, standardized={self.feature_mean is not None})"
        )

    @cached_property
    def _positions(self) -> dict[Hashable, int]:
        return {label: k for k, label in enumerate(self.clients)}

    def _split(self, split: str) -> ClientArrays | None:
        if split not in _SPLITS:
            raise DataError(f"split must be one of {_SPLITS}, got {split!r}")
        return getattr(self, split)

    def _unknown_message(self, unknown: list) -> str:
        msg = (
            f"unknown client(s) {listing(unknown)}: not in the federation of "
            f"{self.n_clients} clients ({listing(list(self.clients), limit=5)})"
        )
        known_str = {str(c) for c in self.clients}
        if any(str(u) in known_str for u in unknown):
            msg += "; note that labels are compared with their type (1 and '1' differ)"
        return msg


# ---------------------------------------------------------------------------
# packing


def _pack(
    x: np.ndarray, y: np.ndarray, groups: Sequence[np.ndarray], dtype: np.dtype
) -> ClientArrays:
    """Pad the rows ``groups[k]`` of ``x`` and ``y`` into client slice ``k``."""
    counts = np.array([len(g) for g in groups], dtype=np.int64)
    n_max = int(counts.max()) if len(counts) else 0
    xs = np.zeros((len(groups), n_max, x.shape[1]), dtype=dtype)
    ys = np.zeros((len(groups), n_max), dtype=dtype)
    mask = np.arange(n_max) < counts[:, None]
    for k, rows in enumerate(groups):
        xs[k, : len(rows)] = x[rows]
        ys[k, : len(rows)] = y[rows]
    return ClientArrays(readonly(xs), readonly(ys), readonly(mask))


def _take(arr: ClientArrays | None, pos: np.ndarray) -> ClientArrays | None:
    if arr is None:
        return None
    n_max = int(arr.n[pos].max()) if len(pos) else 0
    return ClientArrays(
        readonly(arr.x[pos, :n_max]),
        readonly(arr.y[pos, :n_max]),
        readonly(arr.mask[pos, :n_max]),
    )
