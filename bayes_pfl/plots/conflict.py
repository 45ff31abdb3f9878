"""Which clients stand apart: the conflict score of every client against its threshold."""

from __future__ import annotations

import numpy as np
import pandas as pd

from bayes_pfl.plots.base import PlotResult, finish_plot, make_axes

__all__ = ["CONFLICT_COLUMNS", "plot_conflict"]

CONFLICT_COLUMNS = ("chi2", "df", "p_value", "flagged")
"""Columns :func:`plot_conflict` reads (:func:`bayes_pfl.conflict.client_conflict`'s table)."""


def plot_conflict(
    table: pd.DataFrame, *, alpha: float = 0.05, max_labels: int = 40, ax=None, path=None
) -> PlotResult:
    """``-log10 p`` of every client's leave-one-client-out conflict, with the threshold.

    Parameters
    ----------
    table : pandas.DataFrame
        One row per client (index: its label) with the columns of
        :func:`bayes_pfl.conflict.client_conflict` (``chi2``, ``df``, ``p_value``,
        ``flagged``); optional boolean columns ``duplicate`` and ``capped`` mark clients
        whose site copies another's and whose site the precision cap reduced.
    alpha : float
        Family-wise level: the dashed line is ``-log10(alpha / K)`` (Bonferroni), above
        which a client is flagged.
    max_labels : int
        Clients named on the axis (the most surprising first); all are drawn.

    Returns
    -------
    PlotResult
        ``data``: the clients sorted by score, with ``neg_log10_p``; ``extra``:
        ``threshold`` (in ``-log10 p``) and ``flagged`` (the labels above it).
    """
    missing = [c for c in CONFLICT_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"the conflict table lacks column(s) {missing}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    k = len(table)
    data = table.copy()
    data["neg_log10_p"] = -np.log10(np.clip(data["p_value"].to_numpy(float), 1e-300, 1.0))
    data = data.sort_values("neg_log10_p", ascending=False)
    threshold = -np.log10(alpha / max(k, 1))
    fig, axes, created = make_axes(ax, 1, (7.0, max(3.0, 0.16 * min(k, max_labels) + 1.5)))
    (a,) = axes
    y = np.arange(k)[::-1]
    colors = np.where(data["flagged"].to_numpy(bool), "tab:red", "tab:blue")
    a.barh(y, data["neg_log10_p"].to_numpy(float), color=colors, height=0.7)
    a.axvline(threshold, color="k", ls="--", lw=1, label=f"threshold: p = {alpha:g} / {k}")
    for col, marker, label in (("duplicate", "D", "copied site"), ("capped", "s", "capped")):
        if col in data and data[col].to_numpy(bool).any():
            hit = data[col].to_numpy(bool)
            a.scatter(
                data["neg_log10_p"].to_numpy(float)[hit], y[hit], marker=marker,
                facecolors="none", edgecolors="k", zorder=3, label=label,
            )  # fmt: skip
    shown = min(k, max_labels)
    a.set_yticks(y[:shown], [str(c) for c in data.index[:shown]], fontsize=7)
    a.set_xlabel("conflict with the other clients, -log10 p")
    a.set_ylabel("client")
    a.legend(loc="lower right", fontsize=8)
    res = PlotResult(
        fig,
        (a,),
        data,
        {"threshold": threshold, "flagged": [str(c) for c in data.index[data["flagged"]]]},
    )
    return finish_plot(res, path, created=created)
