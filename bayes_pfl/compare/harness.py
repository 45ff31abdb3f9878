"""The harness: fit and score every method on identical splits, for every seed.

:func:`compare` checks its input (methods, seeds, buckets, the family against the
target), fits each method per seed (tuning a grid on the validation rows, then
refitting on training and validation rows), checks and scores its predictions of
every client's test rows, and returns a :class:`~bayes_pfl.compare.result.ComparisonResult`.
:func:`size_bucket` labels clients by their training rows.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd

from bayes_pfl import metrics as M
from bayes_pfl.compare.families import (
    ComparisonError,
    check_family,
    check_targets,
    infer_family,
)
from bayes_pfl.compare.methods import Method, make_method
from bayes_pfl.compare.predictions import Prediction
from bayes_pfl.compare.result import (
    CLASSIFICATION_METRICS,
    REGRESSION_METRICS,
    ComparisonResult,
)
from bayes_pfl.data import ClientArrays, FederatedData

__all__ = ["DEFAULT_BUCKETS", "compare", "size_bucket"]

DEFAULT_BUCKETS = (10, 50)


# ---------------------------------------------------------------------------
# input checks


def _check_methods(methods, family: str) -> list[Method]:
    if isinstance(methods, Method | str):
        methods = [methods]
    out = []
    for m in methods:
        if isinstance(m, str):
            m = make_method(m, family=family)
        if not isinstance(m, Method):
            raise ComparisonError(
                f"methods must be Method objects or method names, got {type(m).__name__}"
            )
        if m.family is not None and m.family != family:
            raise ComparisonError(
                f"method {m.name!r} predicts family {m.family!r} but the comparison is for "
                f"family {family!r}"
            )
        out.append(m)
    if not out:
        raise ComparisonError("no methods to compare")
    names = [m.name for m in out]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ComparisonError(f"method names must be unique; repeated: {repeated}")
    return out


def _check_seeds(seeds) -> tuple[int, ...]:
    if isinstance(seeds, int | np.integer) and not isinstance(seeds, bool):
        seeds = (int(seeds),)
    seeds = tuple(seeds)
    if not seeds:
        raise ComparisonError("seeds is empty")
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, int | np.integer) or s < 0:
            raise ComparisonError(f"seeds must be non-negative integers, got {s!r}")
    if len(set(seeds)) != len(seeds):
        raise ComparisonError(f"seeds must be distinct, got {list(seeds)}")
    return tuple(int(s) for s in seeds)


def _check_buckets(buckets) -> tuple[int, ...]:
    edges = tuple(int(b) for b in buckets)
    if not edges or any(b < 0 for b in edges) or list(edges) != sorted(set(edges)):
        raise ComparisonError(f"buckets must be increasing non-negative edges, got {buckets!r}")
    return edges


def _check_prediction(pred, arrays: ClientArrays, name: str, family: str) -> Prediction:
    if not isinstance(pred, Prediction):
        raise ComparisonError(
            f"method {name!r}: predict() must return a Prediction, got {type(pred).__name__}"
        )
    shape = np.asarray(arrays.mask).shape
    for fld in ("log_density", "mean", "lower", "upper"):
        v = getattr(pred, fld)
        if v is not None and np.shape(v) != shape:
            raise ComparisonError(
                f"method {name!r}: prediction {fld} has shape {np.shape(v)}, expected {shape}"
            )
    if family == "categorical" and pred.probs is None:
        raise ComparisonError(f"method {name!r}: categorical predictions need probs")
    mask = np.asarray(arrays.mask)
    if not np.all(np.isfinite(np.asarray(pred.log_density)[mask])):
        raise ComparisonError(f"method {name!r}: non-finite log predictive density")
    return pred


# ---------------------------------------------------------------------------
# buckets, merging splits, scoring


def size_bucket(n_train, edges: Sequence[int] = DEFAULT_BUCKETS) -> pd.Categorical:
    """Client-size bucket labels of training-row counts.

    Edges ``(10, 50)`` give the buckets ``"<=10"``, ``"11-50"`` and ``">50"``
    (an ordered categorical).

    Examples
    --------
    >>> list(size_bucket([3, 10, 11, 50, 51]))
    ['<=10', '<=10', '11-50', '11-50', '>50']
    """
    edges = _check_buckets(edges)
    labels = [f"<={edges[0]}"]
    labels += [f"{lo + 1}-{hi}" for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
    labels.append(f">{edges[-1]}")
    n = np.asarray(n_train)
    idx = np.searchsorted(np.asarray(edges), n, side="left")
    return pd.Categorical.from_codes(idx, categories=labels, ordered=True)


def _merge_train_val(data: FederatedData) -> FederatedData:
    """Training and validation rows together as the training split (validation emptied)."""
    tr, va = data.train, data.val
    if va is None:
        return data
    counts = tr.n + va.n
    n_max = int(counts.max())
    k, p = tr.x.shape[0], tr.x.shape[2]
    x = np.zeros((k, n_max, p), dtype=tr.x.dtype)
    y = np.zeros((k, n_max), dtype=tr.y.dtype)
    for j in range(k):
        a, b = int(tr.n[j]), int(va.n[j])
        x[j, :a], y[j, :a] = tr.x[j, :a], tr.y[j, :a]
        x[j, a : a + b], y[j, a : a + b] = va.x[j, :b], va.y[j, :b]
    mask = np.arange(n_max) < counts[:, None]
    for a in (x, y, mask):
        a.flags.writeable = False
    index = dict(data.row_index)
    if "train" in index and "val" in index:
        tb = np.concatenate([[0], np.cumsum(tr.n)])
        vb = np.concatenate([[0], np.cumsum(va.n)])
        parts = []
        for j in range(k):
            parts.append(index["train"][tb[j] : tb[j + 1]])
            parts.append(index["val"][vb[j] : vb[j + 1]])
        index["train"] = parts[0].append(parts[1:])
        index.pop("val")
    return replace(data, train=ClientArrays(x, y, mask), val=None, row_index=index)


def _without_test(data: FederatedData) -> FederatedData:
    return replace(data, test=None)


def _score(pred: Prediction, arrays: ClientArrays, family: str, n_bins: int) -> dict:
    y, mask = np.asarray(arrays.y, dtype=np.float64), np.asarray(arrays.mask, dtype=bool)
    out = {"lpd": M.log_predictive_density(pred.log_density, mask)}
    if family in ("bernoulli", "categorical"):
        p = pred.probs if family == "categorical" else pred.mean
        out["log_loss"] = -out["lpd"]
        out["accuracy"] = M.accuracy(p, y, mask)
        out["brier"] = M.brier_score(p, y, mask)
        out["ece"] = M.expected_calibration_error(p, y, mask, n_bins=n_bins)
    else:
        out["rmse"] = M.rmse(pred.mean, y, mask)
        if pred.lower is not None and pred.upper is not None:
            out["coverage90"] = M.interval_coverage(pred.lower, pred.upper, y, mask)
        else:
            out["coverage90"] = np.full(mask.shape[0], np.nan)
    return out


def _validation_score(pred: Prediction, arrays: ClientArrays) -> float:
    lpd = M.log_predictive_density(pred.log_density, np.asarray(arrays.mask))
    return float(np.nanmean(lpd))


# ---------------------------------------------------------------------------
# the harness


def _data_for_seed(data, seed: int) -> FederatedData:
    d = data(seed) if callable(data) and not isinstance(data, FederatedData) else data
    if not isinstance(d, FederatedData):
        raise ComparisonError(
            "data must be a FederatedData or a function seed -> FederatedData, got "
            f"{type(d).__name__}"
        )
    if d.test is None or not np.asarray(d.test.mask).any():
        raise ComparisonError(
            "the data have no test rows: build them with FederatedData.from_pandas(..., "
            "test_size=...)"
        )
    return d


def _progress(enabled: bool, msg: str) -> None:
    if enabled:
        print(msg, file=sys.stderr, flush=True)


def compare(
    data: FederatedData | Callable[[int], FederatedData],
    methods: Sequence[Method | str],
    *,
    seeds: Sequence[int] | int = (0,),
    family: str | None = None,
    buckets: Sequence[int] = DEFAULT_BUCKETS,
    refit: bool = True,
    n_bins: int = 10,
    progress: bool = False,
) -> ComparisonResult:
    """Fit and score every method on identical splits, for every seed.

    Parameters
    ----------
    data : FederatedData or callable
        Data with a test split, or ``seed -> FederatedData`` for one split per
        seed (e.g. ``lambda s: FederatedData.from_pandas(df, ..., seed=s)``).
    methods : sequence of Method or str
        Methods (see :func:`make_method` for names).
    seeds : sequence of int or int
        Seeds; each method is fitted once per seed (plus once per grid
        candidate when tuned).
    family : {"bernoulli", "categorical", "normal", "poisson"}, optional
        The outcome family; inferred as ``bernoulli`` for a 0/1 target and
        required otherwise.
    buckets : sequence of int
        Edges of the client-size buckets (training rows), see :func:`size_bucket`.
    refit : bool
        Fit the final models on training plus validation rows (default) or on
        the training rows only. Candidates of a grid are always fitted on the
        training rows and scored on the validation rows.
    n_bins : int
        Bins of the expected calibration error.
    progress : bool
        Print one line per fit to stderr.

    Returns
    -------
    ComparisonResult

    Raises
    ------
    ComparisonError
        Unknown method names, repeated names, a method of another family, a
        target that does not fit the family, no test rows, a grid without
        validation rows, bad seeds or buckets, malformed predictions.
    """
    seeds = _check_seeds(seeds)
    edges = _check_buckets(buckets)
    first = _data_for_seed(data, seeds[0])
    family = infer_family(first) if family is None else check_family(family)
    methods = _check_methods(methods, family)

    rows, tuning, predictions = [], [], {}
    data_desc: dict[str, Any] = {}
    for seed in seeds:
        d = first if seed == seeds[0] else _data_for_seed(data, seed)
        check_targets(d, family)
        train_data = _without_test(d)
        final_data = _merge_train_val(train_data) if refit else train_data
        n_train = final_data.n_rows("train")
        n_test = d.n_rows("test")
        bucket = size_bucket(n_train, edges)
        if not data_desc:
            data_desc = {
                "clients": d.n_clients,
                "train rows": int(n_train.sum()),
                "test rows": int(n_test.sum()),
                "median client train rows": float(np.median(n_train)),
            }
        for m in methods:
            hparams: dict[str, Any] = {}
            if len(m.grid) > 1:
                if d.val is None or not np.asarray(d.val.mask).any():
                    raise ComparisonError(
                        f"method {m.name!r} has a grid of {len(m.grid)} candidates but the "
                        "data have no validation rows (use val_size=...)"
                    )
                scores = []
                for cand in m.grid:
                    t0 = time.perf_counter()
                    fitted = m.fit_fn(train_data, seed, **cand)
                    pred = _check_prediction(fitted.predict(d.val), d.val, m.name, family)
                    scores.append(_validation_score(pred, d.val))
                    _progress(
                        progress,
                        f"[seed {seed}] {m.name} {cand}: val lpd {scores[-1]:.4f} "
                        f"({time.perf_counter() - t0:.1f}s)",
                    )
                best = int(np.nanargmax(scores)) if np.isfinite(scores).any() else 0
                hparams = dict(m.grid[best])
                for i, (cand, sc) in enumerate(zip(m.grid, scores, strict=True)):
                    tuning.append(
                        {
                            "method": m.name,
                            "seed": seed,
                            "hparams": json.dumps(cand, sort_keys=True, default=str),
                            "val_lpd": sc,
                            "chosen": i == best,
                        }
                    )
            elif len(m.grid) == 1:
                hparams = dict(m.grid[0])
            t0 = time.perf_counter()
            fitted = m.fit_fn(final_data, seed, **hparams)
            pred = _check_prediction(fitted.predict(d.test), d.test, m.name, family)
            elapsed = time.perf_counter() - t0
            scores = _score(pred, d.test, family, n_bins)
            predictions[(m.name, seed)] = (pred, d.test)
            _progress(
                progress,
                f"[seed {seed}] {m.name}: test lpd {np.nanmean(scores['lpd']):.4f} "
                f"({elapsed:.1f}s)",
            )
            for k, client in enumerate(d.clients):
                row = {
                    "method": m.name,
                    "seed": seed,
                    "client": client,
                    "n_train": int(n_train[k]),
                    "n_test": int(n_test[k]),
                    "bucket": bucket[k],
                }
                row.update({name: float(v[k]) for name, v in scores.items()})
                row["fit_time_s"] = elapsed
                row["hparams"] = json.dumps(hparams, sort_keys=True, default=str)
                rows.append(row)

    metric_names = CLASSIFICATION_METRICS if family in ("bernoulli", "categorical") else None
    metric_names = metric_names or REGRESSION_METRICS
    table = pd.DataFrame(rows)
    table["bucket"] = pd.Categorical(
        table["bucket"], categories=list(size_bucket([0], edges).categories), ordered=True
    )
    cols = ["method", "seed", "client", "n_train", "n_test", "bucket", *metric_names]
    table = table[[*cols, "fit_time_s", "hparams"]]
    return ComparisonResult(
        table=table,
        family=family,
        metrics=tuple(metric_names),
        seeds=seeds,
        methods=tuple(m.name for m in methods),
        predictions=predictions,
        tuning=pd.DataFrame(tuning),
        info={"buckets": edges, "refit": refit, "n_bins": n_bins, "data": data_desc},
    )
