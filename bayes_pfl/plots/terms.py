"""Figures over every varying coefficient: one panel per term, each with its own population.

A GLM with varying slopes has a client variable ``b[client, term]`` whose terms
(``Intercept``, ``age``, ...) live on different scales and have different population
means ``mu[term]``: one axis and one "population mean" line for all of them would mix
them. These figures draw one panel per term:

* :func:`plot_shrinkage_terms`: the shrinkage arrows of :func:`~bayes_pfl.plots.plot_shrinkage`,
  per term;
* :func:`plot_forest_terms`: the per-client intervals of :func:`~bayes_pfl.plots.plot_forest`,
  per term, over the term's population band ``mu[term] ± z tau[term]`` (a term that
  varies around 0, without a ``mu``, is centred on 0).

With many clients (more than ``max_labels``) only the extremes of each panel are named
(the lowest and highest means); the caption in ``extra["caption"]`` says so.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd

from bayes_pfl.inspection import (
    TERM,
    as_datatree,
    population_means,
    posterior_group,
    term_labels,
)
from bayes_pfl.plots.base import PlotResult, finish_plot, make_axes
from bayes_pfl.plots.fit import CLIENT_DIM, SAMPLE_DIMS, plot_shrinkage

__all__ = ["MAX_LABELS", "plot_forest_terms", "plot_shrinkage_terms", "table_terms"]

MAX_LABELS = 40
"""Clients named on a panel up to this many; beyond, only the extremes are."""
_PANELS_PER_ROW = 2  # a report page (1100 px) shows two panels at full size


def table_terms(table: pd.DataFrame) -> list | None:
    """The terms of a ``(client, term)`` shrinkage table (``None`` for a one-row-per-client one)."""
    if isinstance(table.index, pd.MultiIndex):
        for level in (TERM, "element"):
            if level in table.index.names:
                return list(table.index.get_level_values(level).unique())
    return None


def _grid(n: int, width: float, height: float, ax):
    ncols = min(n, _PANELS_PER_ROW)
    nrows = math.ceil(n / ncols)
    if ax is not None:
        fig, axes, created = make_axes(ax, n, None)
        return fig, axes, created
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height * nrows))
    grid = fig.subplots(nrows, ncols, squeeze=False)
    axes = tuple(grid.ravel())
    for extra_ax in axes[n:]:
        extra_ax.set_visible(False)
    return fig, axes[:n], True


def _extremes(n: int, max_labels: int) -> np.ndarray:
    """Positions (in ascending order of mean) named on a panel: all, or both ends."""
    if n <= max_labels:
        return np.arange(n)
    half = max_labels // 2
    return np.r_[np.arange(half), np.arange(n - half, n)]


def _caption(n: int, max_labels: int) -> str:
    if n <= max_labels:
        return ""
    half = max_labels // 2
    return (
        f"{n} clients: only the {half} lowest and {half} highest of each panel are named "
        "(every client is in the tables and files)"
    )


def plot_shrinkage_terms(
    table: pd.DataFrame,
    *,
    var: str | None = None,
    title: str | None = None,
    ax=None,
    path=None,
) -> PlotResult:
    """The shrinkage plot of every term of a ``(client, term)`` table, one panel per term.

    Each panel has its own population-mean line (the term's ``pooled_mean``). A table
    with one row per client is drawn as one panel (:func:`plot_shrinkage`).

    Returns
    -------
    PlotResult
        ``data``: the drawn rows of every panel with a ``term`` column; ``extra``:
        ``pooled_line`` (by term) and ``skipped`` (by term); ``axes``: one per term.
    """
    terms = table_terms(table)
    var = var or table.attrs.get("var")
    if terms is None:
        return plot_shrinkage(table, title=title, ax=ax, path=path)
    fig, axes, created = _grid(len(terms), 4.2, 4.2, ax)
    frames, lines, skipped = [], {}, {}
    for term, axis in zip(terms, axes, strict=True):
        res = plot_shrinkage(table, element=term, ax=axis, title=f"{var}[{term}]" if var else term)
        axis.set_ylabel("posterior mean" if axis is axes[0] else "")
        if axis.get_legend() is not None:
            axis.get_legend().remove()
        frames.append(res.data.assign(**{TERM: term}))
        lines[term] = res.extra["pooled_line"]
        skipped[term] = res.extra["skipped"]
    handles, labels = axes[0].get_legend_handles_labels()
    if created:  # one legend for every panel, below them: none covers a client
        fig.legend(handles, labels, loc="outside lower center", ncols=3, fontsize=8)
        what = f" of {var}" if var else ""
        fig.suptitle(title or f"Shrinkage{what} toward each term's population mean")
        fig.set_layout_engine("constrained")
    else:
        axes[0].legend(handles, labels, fontsize=7, loc="best")
    res = PlotResult(
        fig,
        tuple(axes),
        pd.concat(frames, ignore_index=True),
        {"pooled_line": lines, "skipped": skipped},
    )
    return finish_plot(res, path, created=created)


def _intervals(da, ci_prob: float) -> pd.DataFrame:
    x = np.asarray(da.transpose(*SAMPLE_DIMS, CLIENT_DIM).values, float)
    x = x.reshape(-1, x.shape[-1])
    lo, hi = np.quantile(x, [0.5 - ci_prob / 2, 0.5 + ci_prob / 2], axis=0)
    t = pd.DataFrame(
        {
            CLIENT_DIM: [str(c) for c in da[CLIENT_DIM].values],
            "mean": x.mean(axis=0),
            "lo": lo,
            "hi": hi,
        }
    )
    return t.sort_values("mean", kind="stable").reset_index(drop=True)


def plot_forest_terms(
    dt,
    var: str,
    *,
    population: tuple[str, str] | None = None,
    ci_prob: float = 0.9,
    max_labels: int = MAX_LABELS,
    title: str | None = None,
    ax=None,
    path=None,
) -> PlotResult:
    """Per-client intervals of every term of ``var``, one panel per term.

    Each panel sorts the clients by their posterior mean (lowest at the bottom) and,
    with ``population`` (``("mu", "tau")``), shades the term's population range
    ``loc ± z scale`` at the posterior means of ``loc[term]`` (0 for a term without
    one: it varies around 0) and ``scale[term]``, with a line at ``loc[term]``.

    Parameters
    ----------
    dt : xarray.DataTree or FitResult
    var : str
        A client variable; a scalar one is drawn as one panel.
    population : (str or None, str), optional
        Global location and scale variables, matched to ``var``'s terms by label
        (location ``None``: every term varies around 0).
    ci_prob : float
    max_labels : int
        Clients named per panel; with more, the ``max_labels // 2`` lowest and highest
        are named and ``extra["caption"]`` says so.
    title : str, optional
    ax : sequence of Axes (one per term), optional
    path : str or Path, optional

    Returns
    -------
    PlotResult
        ``data``: one row per (term, client) in drawn order: ``term``, ``client``,
        ``mean``, ``lo``, ``hi``, ``y`` and ``named``. ``extra``: ``pop_loc`` and
        ``pop_scale`` by term (with ``population``), ``caption``, ``terms``.
    """
    if not 0.0 < float(ci_prob) < 1.0:
        raise ValueError(f"ci_prob must be in (0, 1), got {ci_prob!r}")
    post = posterior_group(as_datatree(dt))
    if var not in post.data_vars or CLIENT_DIM not in post[var].dims:
        raise ValueError(f"{var!r} is not a client variable of the posterior")
    da = post[var]
    terms = term_labels(dt, var)
    edims = [d for d in da.dims if d not in (*SAMPLE_DIMS, CLIENT_DIM)]
    if terms is None and edims:
        if len(edims) != 1:
            raise ValueError(f"{var!r} has element dimensions {edims}: one at most is drawn")
        terms = list(range(da.sizes[edims[0]]))
    panels = [None] if terms is None else list(terms)
    z = NormalDist().inv_cdf(0.5 + ci_prob / 2)
    locs = scales = None
    if population is not None:
        scales = population_means(post, var, population[1])
        locs = (
            np.zeros(len(scales))  # no location: the terms vary around 0
            if population[0] is None
            else population_means(post, var, population[0])
        )
        if len(locs) == 1 and len(panels) > 1:
            locs = np.repeat(locs, len(panels))
        if len(locs) != len(panels) or len(scales) != len(panels):
            raise ValueError(
                f"population {population} does not match the {len(panels)} term(s) of {var!r}"
            )
    n = int(da.sizes[CLIENT_DIM])
    named = _extremes(n, max_labels)
    shown_rows = min(n, max_labels)
    height = max(3.0, 0.17 * shown_rows + 0.04 * (n - shown_rows) + 1.4)
    fig, axes, created = _grid(len(panels), 5.2, height, ax)
    pct = f"{100 * ci_prob:g}%"
    frames = []
    extra: dict[str, Any] = {"terms": panels, "caption": _caption(n, max_labels)}
    if population is not None:
        extra["pop_loc"], extra["pop_scale"] = {}, {}
    for i, (term, axis) in enumerate(zip(panels, axes, strict=True)):
        sub = da if term is None else da.isel({edims[0]: i})
        t = _intervals(sub, ci_prob)
        t["y"] = np.arange(n, dtype=float)
        t["named"] = np.isin(np.arange(n), named)
        t.insert(0, TERM, term if term is not None else "")
        if population is not None:
            loc, scale = float(locs[i]), float(scales[i])
            axis.axvspan(loc - z * scale, loc + z * scale, color="0.6", alpha=0.25, lw=0, zorder=0,
                         label=f"population {pct} range")  # fmt: skip
            axis.axvline(loc, color="0.3", ls="--", lw=1, label="population mean")
            extra["pop_loc"][term], extra["pop_scale"][term] = loc, scale
        axis.hlines(t["y"], t["lo"], t["hi"], color="C0", lw=1.2 if n <= 60 else 0.8)
        axis.scatter(t["mean"], t["y"], s=14 if n <= 60 else 6, color="C0", zorder=3)
        shown = t[t["named"]]
        ticks, labels = list(shown["y"]), list(shown[CLIENT_DIM])
        if n > max_labels:  # the unnamed middle: one tick saying how many
            half = max_labels // 2
            ticks.insert(half, (n - 1) / 2)
            labels.insert(half, f"({n - 2 * half} more)")
        axis.set_yticks(ticks, labels, fontsize=8 if len(shown) <= 30 else 7)
        axis.set_ylim(-0.8, n - 0.2)
        axis.set_title(var if term is None else f"{var}[{term}]", fontsize=10)
        axis.set_xlabel(f"posterior mean, {pct} interval", fontsize=8)
        axis.tick_params(axis="x", labelsize=8)
        frames.append(t)
    if population is not None:
        axes[0].legend(fontsize=7, loc="lower right")
    if created:
        what = ", every term" if len(panels) > 1 else ""
        fig.suptitle(title or f"Per-client {var}{what}, sorted by posterior mean")
        fig.set_layout_engine("constrained")
    res = PlotResult(fig, tuple(axes), pd.concat(frames, ignore_index=True), extra)
    return finish_plot(res, path, created=created)
