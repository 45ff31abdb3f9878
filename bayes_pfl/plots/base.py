"""What every figure shares: :class:`PlotResult`, the panels to draw into, the PNG written.

Every plotting function of :mod:`bayes_pfl.plots` has the shape
``plot_xxx(..., *, ax=None, path=None)``: it gets its panels from :func:`make_axes`
(new ones on a :class:`matplotlib.figure.Figure`, or the caller's Axes) and ends with
:func:`finish_plot` (layout, and the PNG when ``path`` is given).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["DPI", "PlotResult", "finish_plot", "make_axes"]

DPI = 120


@dataclass
class PlotResult:
    """A drawn figure and the numbers it shows.

    Attributes
    ----------
    fig : matplotlib.figure.Figure
    axes : tuple of matplotlib.axes.Axes
        The panels drawn into (a twin axis included), in a fixed order given by
        each function.
    data : pandas.DataFrame
        Exactly what was drawn, one row per drawn item (client, round or bin).
    extra : dict
        Further drawn or computed values (the population band, the ECE, ...).
    path : pathlib.Path or None
        The PNG written, when ``path`` was given.
    """

    fig: Any
    axes: tuple
    data: pd.DataFrame
    extra: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


def _new_figure(nrows: int, ncols: int, figsize, **kw):
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, tuple(axes.ravel())


def make_axes(ax, n: int, figsize, **kw):
    """``(fig, axes, created)``: ``n`` new panels, or the ``n`` Axes the caller gave."""
    if ax is None:
        fig, axes = _new_figure(1, n, figsize, **kw)
        return fig, axes, True
    if n == 1 and not isinstance(ax, Sequence | np.ndarray):
        axes = (ax,)
    else:
        axes = tuple(np.ravel(np.asarray(ax, dtype=object)))
    if len(axes) != n or not all(hasattr(a, "figure") for a in axes):
        what = "an Axes" if n == 1 else f"a sequence of {n} Axes"
        raise ValueError(f"ax must be {what}, got {ax!r}")
    fig = axes[0].figure
    if any(a.figure is not fig for a in axes):
        raise ValueError("all Axes given in ax must belong to one figure")
    return fig, axes, False


def finish_plot(result: PlotResult, path, *, created: bool) -> PlotResult:
    """``result`` laid out (a figure made here) and, with ``path``, written as a PNG."""
    fig = result.fig
    if created and fig.get_layout_engine() is None:
        fig.tight_layout()
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=DPI, bbox_inches="tight")
        result.path = path
    return result
