"""Preparing a long-format frame for :class:`~bayes_pfl.data.FederatedData`.

The errors of :mod:`bayes_pfl.data` and the row-level steps of
:meth:`~bayes_pfl.data.FederatedData.from_pandas` and
:meth:`~bayes_pfl.data.FederatedData.encode`: checks of the arguments and of the
frame's columns with messages that name the offending column or client, client
codes, missing and infinite values, the per-client train/test/validation split
and the pooled standardization. Packing rows into
:class:`~bayes_pfl.data.ClientArrays` stays in :mod:`bayes_pfl.data`.

Plain numpy and pandas; import the public names from :mod:`bayes_pfl.data`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Hashable, Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

_MAX_LISTED = 10  # how many labels / columns an error message spells out


class DataError(ValueError):
    """Invalid input data; the message names the offending column or client."""


class UnknownClientError(DataError, KeyError):
    """A client label that is not part of the federation.

    A :class:`DataError` (hence a :class:`ValueError`) and a :class:`KeyError`,
    so either can be caught. The message lists a few of the known labels.
    """

    def __str__(self) -> str:  # KeyError would quote the message
        return Exception.__str__(self)


# public under bayes_pfl.data, where they are documented: tracebacks and pickles say so
DataError.__module__ = UnknownClientError.__module__ = "bayes_pfl.data"


# ---------------------------------------------------------------------------
# checks of the arguments and the frame, client codes, missing values


def readonly(a: np.ndarray | None) -> np.ndarray | None:
    """``a`` made read-only (in place), for the arrays of immutable data objects."""
    if a is not None:
        a.flags.writeable = False
    return a


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def listing(items: Sequence, limit: int = _MAX_LISTED) -> str:
    shown = ", ".join(repr(i) for i in list(items)[:limit])
    if len(items) > limit:
        shown += f", ... ({len(items) - limit} more)"
    return shown


def count_listing(counts: dict, prefix: str = "", limit: int = _MAX_LISTED) -> str:
    items = list(counts.items())
    shown = ", ".join(f"{prefix}{key!r}: {n}" for key, n in items[:limit])
    if len(items) > limit:
        shown += f", ... ({len(items) - limit} more)"
    return shown


def absent(items: Sequence, reference) -> list:
    """The ``items`` not in ``reference``, in their order (labels compared with their type)."""
    known = set(reference)
    return [item for item in items if item not in known]


def duplicates(items: Sequence) -> list:
    seen: set = set()
    repeated: list = []
    for item in items:
        if item in seen and item not in repeated:
            repeated.append(item)
        seen.add(item)
    return repeated


def _as_label(value: Any) -> Hashable:
    """A numpy scalar as the matching Python scalar; anything else unchanged."""
    return value.item() if isinstance(value, np.generic) else value


def label_list(labels: Any) -> list:
    if isinstance(labels, (str, bytes)) or not isinstance(labels, Iterable):
        return [_as_label(labels)]
    return [_as_label(v) for v in labels]


def check_fraction(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise DataError(f"{name} must be a number in [0, 1), got {value!r}")
    value = float(value)
    if not (0.0 <= value < 1.0):
        raise DataError(f"{name} must be in [0, 1), got {value!r}")
    return value


def check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise DataError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def check_dtype(dtype: Any) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError as err:
        raise DataError(f"dtype must be a numpy float dtype, got {dtype!r}") from err
    if dt.kind != "f":
        raise DataError(f"dtype must be a numpy float dtype, got {dt}")
    return dt


def _is_numeric(s: pd.Series) -> bool:
    dt = s.dtype
    if pd.api.types.is_bool_dtype(dt):
        return True
    return pd.api.types.is_numeric_dtype(dt) and not pd.api.types.is_complex_dtype(dt)


def numeric(s: pd.Series) -> np.ndarray:
    return s.to_numpy(dtype=np.float64, na_value=np.nan)


def check_frame(
    df: Any,
    *,
    client_col: Hashable,
    target: Hashable,
    features: Sequence[Hashable] | str,
    require_target: bool,
) -> tuple[Hashable, ...]:
    """Check the frame's columns; return the features as a tuple."""
    if not isinstance(df, pd.DataFrame):
        raise DataError(f"expected a pandas DataFrame, got {type(df).__name__}")
    if isinstance(features, (str, bytes)) or not isinstance(features, Iterable):
        features = (features,)
    features = tuple(features)
    if not features:
        raise DataError("features is empty: give at least one feature column")
    repeated = duplicates(features)
    if repeated:
        raise DataError(f"feature column(s) listed more than once: {listing(repeated)}")
    if client_col == target:
        raise DataError(f"client_col and target are the same column {target!r}")
    for role, name in (("client column", client_col), ("target column", target)):
        if name in features:
            raise DataError(f"the {role} {name!r} is also listed in features")

    needed = [client_col, *features] + ([target] if require_target else [])
    absent = [c for c in needed if c not in df.columns]
    if absent:
        raise DataError(
            f"column(s) not in the data frame: {listing(absent, limit=len(absent))}; "
            f"available: {listing(list(df.columns))}"
        )
    present = needed + ([target] if not require_target and target in df.columns else [])
    doubled = [c for c in present if int((df.columns == c).sum()) > 1]
    if doubled:
        raise DataError(f"column(s) appearing more than once in the data frame: {doubled!r}")

    bad = [c for c in features if not _is_numeric(df[c])]
    if bad:
        raise DataError(
            "non-numeric feature column(s): "
            + ", ".join(f"{c!r} ({df[c].dtype})" for c in bad)
            + "; encode them as numbers (bool columns are accepted as 0/1)"
        )
    if target in df.columns and not _is_numeric(df[target]):
        raise DataError(f"non-numeric target column {target!r} ({df[target].dtype})")
    return features


def client_codes(
    col: pd.Series,
    client_col: Hashable,
    clients: Sequence[Hashable] | None,
    *,
    check_unused: bool = True,
) -> tuple[list, np.ndarray]:
    """Client labels and each row's client position (int64)."""
    na = pd.isna(col).to_numpy()
    if na.any():
        where = list(col.index[na][:5])
        raise DataError(
            f"client column {client_col!r} has {plural(int(na.sum()), 'missing value')} "
            f"(rows {listing(where)}{', ...' if na.sum() > 5 else ''}); "
            "every row must belong to a client"
        )
    codes, uniques = pd.factorize(col, sort=False)
    found = [_as_label(u) for u in uniques]

    if clients is None:
        if check_unused and isinstance(col.dtype, pd.CategoricalDtype):
            unused = [_as_label(c) for c in col.cat.categories if c not in set(found)]
            if unused:
                raise DataError(
                    f"client column {client_col!r} is categorical with unused categories "
                    f"{listing(unused)}: these would be clients with zero rows; drop them "
                    "with .cat.remove_unused_categories() or pass clients="
                )
        return found, codes.astype(np.int64)

    if isinstance(clients, (str, bytes)) or not isinstance(clients, Iterable):
        raise DataError(f"clients must be a sequence of client labels, got {clients!r}")
    labels = [_as_label(c) for c in clients]
    repeated = duplicates(labels)
    if repeated:
        raise DataError(f"clients: label(s) listed more than once: {listing(repeated)}")
    position = {label: k for k, label in enumerate(labels)}
    extra = absent(found, position)
    if extra:
        raise DataError(
            f"client column {client_col!r} has label(s) not in clients=: {listing(extra)}; "
            "filter the data frame first (rows are never dropped silently)"
        )
    empty = absent(labels, found)
    if empty:
        raise DataError(f"client(s) in clients= without rows in the data frame: {listing(empty)}")
    remap = np.array([position[u] for u in found], dtype=np.int64)
    return labels, remap[codes]


def feature_matrix(df: pd.DataFrame, features: Sequence[Hashable]) -> np.ndarray:
    x = np.empty((len(df), len(features)), dtype=np.float64)
    for j, name in enumerate(features):
        x[:, j] = numeric(df[name])
    return x


def _per_client(bad: np.ndarray, codes: np.ndarray, labels: Sequence) -> dict:
    counts = np.bincount(codes[bad], minlength=len(labels))
    return {labels[k]: int(n) for k, n in enumerate(counts) if n}


def _per_column(bad: np.ndarray, features: Sequence[Hashable]) -> dict:
    return {features[j]: int(n) for j, n in enumerate(bad.sum(axis=0)) if n}


def check_infinite(
    x: np.ndarray,
    y: np.ndarray,
    features: Sequence[Hashable],
    target: Hashable,
    codes: np.ndarray,
    labels: Sequence,
) -> None:
    bad_y = np.isinf(y)
    if bad_y.any():
        raise DataError(
            f"target column {target!r} has {plural(int(bad_y.sum()), 'infinite value')}: "
            f"{count_listing(_per_client(bad_y, codes, labels), 'client ')}"
        )
    bad_x = np.isinf(x)
    if bad_x.any():
        rows = bad_x.any(axis=1)
        raise DataError(
            f"infinite values in feature column(s) {count_listing(_per_column(bad_x, features))} "
            f"({count_listing(_per_client(rows, codes, labels), 'client ')})"
        )


def raise_missing_target(
    y: np.ndarray,
    target: Hashable,
    codes: np.ndarray,
    labels: Sequence,
    prefix: str = "",
    suffix: str = "",
) -> None:
    bad = np.isnan(y)
    if bad.any():
        raise DataError(
            f"{prefix}target column {target!r} has {plural(int(bad.sum()), 'missing value')}: "
            f"{count_listing(_per_client(bad, codes, labels), 'client ')}; "
            "pass missing='drop' to drop these rows" + suffix
        )


def raise_missing_features(x: np.ndarray, features: Sequence[Hashable], prefix: str = "") -> None:
    bad = np.isnan(x)
    if bad.any():
        raise DataError(
            f"{prefix}missing values in feature column(s) "
            f"{count_listing(_per_column(bad, features))} "
            f"({plural(int(bad.any(axis=1).sum()), 'row')}); pass missing='drop' to drop "
            "these rows or missing='keep' to keep NaN in x"
        )


def handle_missing(
    x: np.ndarray,
    y: np.ndarray,
    features: Sequence[Hashable],
    target: Hashable,
    codes: np.ndarray,
    labels: Sequence,
    missing: str,
) -> tuple[np.ndarray, dict]:
    """Rows to keep and per-client counts of dropped rows."""
    if missing == "drop":
        drop = np.isnan(y) | np.isnan(x).any(axis=1)
        return ~drop, _per_client(drop, codes, labels)
    note = " (missing='keep' keeps NaN in features only)" if missing == "keep" else ""
    raise_missing_target(y, target, codes, labels, suffix=note)
    if missing == "error":
        raise_missing_features(x, features)
    return np.ones(len(y), dtype=bool), {}


# ---------------------------------------------------------------------------
# splitting and standardization


def _round_half_up(value: float) -> int:
    return int(math.floor(value + 0.5 + 1e-9))


def _split_sizes(n: int, test_size: float, val_size: float) -> tuple[int, int]:
    """Test and validation sizes of a client with ``n`` rows (>= 1 train row)."""
    n_test = _round_half_up(test_size * n)
    n_val = _round_half_up(val_size * n)
    excess = n_test + n_val - (n - 1)
    if excess > 0:
        cut = min(excess, n_val)
        n_val -= cut
        n_test -= excess - cut
    return n_test, n_val


def _allocate(total: int, sizes: Sequence[int]) -> np.ndarray:
    """Share ``total`` over groups proportionally to ``sizes`` (largest remainder)."""
    sizes = np.asarray(sizes, dtype=np.int64)
    whole = sizes.sum()
    if total == 0 or whole == 0:
        return np.zeros(len(sizes), dtype=np.int64)
    share, remainder = np.divmod(total * sizes, whole)
    left = total - int(share.sum())
    share[np.argsort(-remainder, kind="stable")[:left]] += 1
    return share


def split_client(
    rows: np.ndarray,
    y: np.ndarray,
    test_size: float,
    val_size: float,
    stratify: bool,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n_test, n_val = _split_sizes(len(rows), test_size, val_size)
    if n_test + n_val == 0:
        empty = rows[:0]
        return rows, empty, empty
    groups = [rows[y == 0], rows[y == 1]] if stratify else [rows]
    sizes = np.array([len(g) for g in groups])
    test_counts = _allocate(n_test, sizes)
    val_counts = _allocate(n_val, sizes - test_counts)
    train, test, val = [], [], []
    for group, t, v in zip(groups, test_counts, val_counts, strict=True):
        shuffled = rng.permutation(group)
        test.append(shuffled[:t])
        val.append(shuffled[t : t + v])
        train.append(shuffled[t + v :])
    return tuple(np.sort(np.concatenate(part)) for part in (train, test, val))


def standardization(x_train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pooled training mean and sd (ddof=0); binary columns get (0, 1)."""
    n_features = x_train.shape[1]
    mean = np.zeros(n_features)
    scale = np.ones(n_features)
    for j in range(n_features):
        col = x_train[:, j]
        col = col[~np.isnan(col)]
        if col.size == 0 or np.all((col == 0) | (col == 1)):
            continue
        m = col.mean()
        sd = np.sqrt(np.mean((col - m) ** 2))
        mean[j] = m
        if sd > 1e-12 * max(1.0, abs(m)):
            scale[j] = sd
    return mean, scale
