"""Figures of a method comparison (:class:`bayes_pfl.compare.ComparisonResult`).

* :func:`plot_comparison`: every method's mean per-client metric, ± one sd across
  seeds, overall or per client-size bucket;
* :func:`plot_method_calibration`: the reliability diagram of one binary method's
  test predictions.

Both are re-exported by :mod:`bayes_pfl.compare`. This module imports the comparison
only inside its functions, never when it is imported (the comparison imports it on
first use of these names): no import circle, whichever is imported first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from bayes_pfl.plots.base import PlotResult, finish_plot, make_axes
from bayes_pfl.plots.calibration import plot_calibration

if TYPE_CHECKING:  # pragma: no cover
    from bayes_pfl.compare.result import ComparisonResult

__all__ = ["plot_comparison", "plot_method_calibration"]


def plot_comparison(
    result: ComparisonResult,
    metric: str | None = None,
    *,
    by: str = "method",
    ax=None,
    path=None,
):
    """Mean per-client ``metric`` of every method, with ± one sd across seeds.

    Parameters
    ----------
    result : ComparisonResult
    metric : str, optional
        A metric column (default: ``log_loss`` for classifiers, else ``lpd``).
    by : {"method", "bucket"}
        One point per method, or one group of points per client-size bucket.
    ax, path
        As in :mod:`bayes_pfl.plots`.

    Returns
    -------
    PlotResult
        ``data``: the plotted means and sds (``method``, ``bucket`` with
        ``by="bucket"``, ``mean``, ``sd``); ``extra``: ``metric``, ``best``.
    """
    from bayes_pfl.compare import METRICS, ComparisonError

    metric = metric or result.main_metric()
    if metric not in result.metrics:
        raise ComparisonError(f"unknown metric {metric!r}; have {list(result.metrics)}")
    if by not in ("method", "bucket"):
        raise ComparisonError(f"by must be 'method' or 'bucket', got {by!r}")
    fig, (axis,), created = make_axes(ax, 1, (6.5, 0.4 * len(result.methods) + 2.0))
    methods = list(result.methods)
    ypos = np.arange(len(methods))[::-1]
    if by == "method":
        s = result.summary()
        data = pd.DataFrame(
            {
                "method": methods,
                "mean": s[f"{metric}_mean"].to_numpy(),
                "sd": s[f"{metric}_sd"].fillna(0.0).to_numpy(),
            }
        )
        axis.errorbar(data["mean"], ypos, xerr=data["sd"], fmt="o", color="C0", capsize=3)
    else:
        b = result.by_bucket().reset_index()
        data = pd.DataFrame(
            {
                "method": b["method"],
                "bucket": b["bucket"].astype(str),
                "mean": b[f"{metric}_mean"],
                "sd": b[f"{metric}_sd"].fillna(0.0),
            }
        )
        buckets = list(dict.fromkeys(data["bucket"]))
        width = 0.7 / max(len(buckets), 1)
        for i, bk in enumerate(buckets):
            sub = data[data["bucket"] == bk]
            pos = [
                ypos[methods.index(mm)] + (i - (len(buckets) - 1) / 2) * width
                for mm in sub["method"]
            ]
            axis.errorbar(
                sub["mean"], pos, xerr=sub["sd"], fmt="o", color=f"C{i}", capsize=3, label=bk
            )
        axis.legend(title="training rows", fontsize=7)
    axis.set_yticks(ypos)
    axis.set_yticklabels(methods)
    axis.set_xlabel(f"mean per-client {metric} (± sd across seeds)")
    better = "higher" if METRICS[metric] else "lower"
    axis.set_title(f"{metric} ({better} is better), {len(result.seeds)} seed(s)")
    axis.grid(axis="x", alpha=0.3)
    res = PlotResult(fig, (axis,), data, {"metric": metric, "best": result.best(metric)})
    return finish_plot(res, path, created=created)


def plot_method_calibration(
    result: ComparisonResult,
    method: str,
    *,
    n_bins: int | None = None,
    ax=None,
    path=None,
):
    """Reliability diagram of one binary method's test predictions, all clients and seeds pooled.

    Draws with :func:`bayes_pfl.plots.plot_calibration` (its ``extra["ece"]`` is
    the pooled ECE, not the mean per-client ECE of the tables).
    """
    from bayes_pfl.compare import ComparisonError

    if result.family != "bernoulli":
        raise ComparisonError("calibration plots need binary (bernoulli) predictions")
    if method not in result.methods:
        raise ComparisonError(f"unknown method {method!r}; have {list(result.methods)}")
    ps, ys = [], []
    for seed in result.seeds:
        pred, arr = result.predictions[(method, seed)]
        mask = np.asarray(arr.mask)
        ps.append(np.asarray(pred.mean)[mask])
        ys.append(np.asarray(arr.y)[mask])
    p, y = np.concatenate(ps), np.concatenate(ys)
    return plot_calibration(
        p,
        y,
        n_bins=n_bins or result.info.get("n_bins", 10),
        title=f"{method}: calibration on test rows ({len(result.seeds)} seed(s) pooled)",
        ax=ax,
        path=path,
    )
