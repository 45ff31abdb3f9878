"""Figures of a hierarchical fit: shrinkage, forest, fit-vs-fit, EP rounds, calibration.

Every function has the same shape, ``plot_xxx(..., *, ax=None, path=None)``, and
returns a :class:`PlotResult`: the figure, its axes, and a
:class:`pandas.DataFrame` of exactly what was drawn (so a result can be checked,
or re-plotted elsewhere, without looking at pixels). With ``path`` the figure is
also written as a PNG (120 dpi, tight bounding box).

Figures are made without pyplot's global state (:class:`matplotlib.figure.Figure`),
so they work headless and leak nothing; the forest plot, drawn by ArviZ, closes
its figure from pyplot once drawn. Pass ``ax`` (an Axes, or a sequence of two
Axes for the two-panel figures) to draw into a figure of your own.

* :func:`plot_shrinkage`: each client's arrow from its local (no-pooling) estimate
  to its personalized (partially pooled) one, toward the population mean;
* :func:`plot_forest`: per-client posterior intervals, sorted, over the population
  distribution;
* :func:`plot_shrinkage_terms`, :func:`plot_forest_terms`: the same for every term of
  a vector client variable (a GLM's varying coefficients), one panel per term, each
  over its own population mean;
* :func:`plot_compare`: the same client variable from two fits (EP against NUTS);
* :func:`plot_convergence`: the per-round changes and damping of a federated fit;
* :func:`plot_calibration`: reliability diagram of predicted probabilities, with ECE;
* :func:`plot_conflict`: each client's leave-one-client-out conflict score against the
  flagging threshold (:mod:`bayes_pfl.conflict`);
* :func:`plot_comparison`, :func:`plot_method_calibration`: figures of a method
  comparison (:mod:`bayes_pfl.compare`).

Modules: :mod:`~bayes_pfl.plots.base` (:class:`PlotResult` and what every figure
shares), :mod:`~bayes_pfl.plots.fit` (shrinkage, forest, fit against fit, rounds),
:mod:`~bayes_pfl.plots.terms` (one panel per term), :mod:`~bayes_pfl.plots.calibration`,
:mod:`~bayes_pfl.plots.comparison`.
"""

# ``X as X``: public constants of the former single module outside its ``__all__``,
# re-exported explicitly so that they stay importable from here
from bayes_pfl.plots.base import DPI as DPI
from bayes_pfl.plots.base import PlotResult
from bayes_pfl.plots.calibration import plot_calibration
from bayes_pfl.plots.comparison import plot_comparison, plot_method_calibration
from bayes_pfl.plots.conflict import plot_conflict
from bayes_pfl.plots.fit import CLIENT_DIM as CLIENT_DIM
from bayes_pfl.plots.fit import HISTORY_COLUMNS as HISTORY_COLUMNS
from bayes_pfl.plots.fit import SAMPLE_DIMS as SAMPLE_DIMS
from bayes_pfl.plots.fit import SHRINKAGE_COLUMNS as SHRINKAGE_COLUMNS
from bayes_pfl.plots.fit import plot_compare, plot_convergence, plot_forest, plot_shrinkage
from bayes_pfl.plots.terms import plot_forest_terms, plot_shrinkage_terms

__all__ = [
    "PlotResult",
    "plot_calibration",
    "plot_compare",
    "plot_comparison",
    "plot_conflict",
    "plot_convergence",
    "plot_forest",
    "plot_forest_terms",
    "plot_method_calibration",
    "plot_shrinkage",
    "plot_shrinkage_terms",
]
