"""Reliability diagram of binary predictions, with the expected calibration error."""

from __future__ import annotations

import numpy as np
import pandas as pd

from bayes_pfl.plots.base import PlotResult, finish_plot, make_axes

__all__ = ["plot_calibration"]


def plot_calibration(
    p, y, *, n_bins: int = 10, title: str | None = None, ax=None, path=None
) -> PlotResult:
    """Reliability diagram of binary predictions, with the expected calibration error.

    Predictions are binned on ``n_bins`` equal-width bins of [0, 1] (each
    ``[lo, hi)``, the last one closed); for each non-empty bin the observed
    frequency of ``y = 1`` is drawn against the mean predicted probability, over
    the diagonal of perfect calibration, with the bin counts as bars (right axis).

    ``ECE = sum_b (count_b / N) * |frac_pos_b - mean_pred_b|``.

    Parameters
    ----------
    p : array-like
        Predicted probabilities of ``y = 1``, in [0, 1].
    y : array-like
        Observed outcomes, 0/1 or bool, same length.
    n_bins : int
    title : str, optional
    ax : matplotlib Axes, optional
    path : str or Path, optional

    Returns
    -------
    PlotResult
        ``data``: one row per non-empty bin, columns ``bin`` (0-based),
        ``bin_lo``, ``bin_hi``, ``mean_pred``, ``frac_pos`` and ``count``.
        ``extra``: ``ece`` and ``n``. ``axes``: (reliability, counts twin axis).

    Raises
    ------
    ValueError
        Lengths differ, no predictions, ``p`` outside [0, 1] or not finite,
        ``y`` not binary, ``n_bins < 1``.
    """
    p = np.asarray(p, dtype=float).ravel()
    y_arr = np.asarray(y).ravel()
    if p.size == 0:
        raise ValueError("no predictions")
    if p.shape != y_arr.shape:
        raise ValueError(f"p and y differ in length: {p.size} and {y_arr.size}")
    if not np.all(np.isfinite(p)) or p.min() < 0 or p.max() > 1:
        raise ValueError("p must be finite probabilities in [0, 1]")
    try:
        y_f = y_arr.astype(float)
    except (TypeError, ValueError) as err:
        raise ValueError("y must be binary (0/1 or bool)") from err
    if not np.all((y_f == 0) | (y_f == 1)):
        raise ValueError(f"y must be binary (0/1 or bool), got values {np.unique(y_arr)[:5]}")
    if int(n_bins) != n_bins or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    n_bins = int(n_bins)

    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    used = np.flatnonzero(count)
    sum_p = np.bincount(idx, weights=p, minlength=n_bins)
    sum_y = np.bincount(idx, weights=y_f, minlength=n_bins)
    data = pd.DataFrame(
        {
            "bin": used,
            "bin_lo": edges[used],
            "bin_hi": edges[used + 1],
            "mean_pred": sum_p[used] / count[used],
            "frac_pos": sum_y[used] / count[used],
            "count": count[used],
        }
    )
    n = int(p.size)
    ece = float(np.sum(data["count"] / n * np.abs(data["frac_pos"] - data["mean_pred"])))

    fig, (axis,), created = make_axes(ax, 1, (5.5, 4.5))
    a_cnt = axis.twinx()
    a_cnt.bar(
        (data["bin_lo"] + data["bin_hi"]) / 2,
        data["count"],
        width=1.0 / n_bins,
        color="0.8",
        edgecolor="0.6",
        lw=0.5,
    )
    a_cnt.set_ylabel("count")
    a_cnt.set_ylim(0, 1.1 * float(data["count"].max()) * 3)  # bars in the lower third
    axis.set_zorder(a_cnt.get_zorder() + 1)
    axis.patch.set_visible(False)
    axis.plot([0, 1], [0, 1], ls="--", color="k", lw=1, label="perfect calibration")
    axis.plot(data["mean_pred"], data["frac_pos"], "o-", color="C0", label="observed")
    axis.set_xlim(0, 1)
    axis.set_ylim(-0.02, 1.02)
    axis.set_xlabel("predicted probability (bin mean)")
    axis.set_ylabel("observed frequency of y = 1")
    axis.legend(fontsize=7, loc="upper left")
    axis.set_title(title if title is not None else f"Calibration (ECE = {ece:.3f}, N = {n})")
    res = PlotResult(fig, (axis, a_cnt), data, {"ece": ece, "n": n})
    return finish_plot(res, path, created=created)
