"""The figures ``bayes-pfl demo`` (and ``fit --plots``) writes beside a fit."""

from __future__ import annotations

from pathlib import Path

__all__ = ["demo_figures"]


def _size_jitter(n: np.ndarray) -> np.ndarray:  # noqa: F821
    """Multiplicative offsets spreading clients of equal size side by side on a log axis."""
    import numpy as np

    out = np.ones(len(n))
    for value in np.unique(n):
        idx = np.flatnonzero(n == value)
        if len(idx) > 1:
            out[idx] = np.exp(np.linspace(-0.12, 0.12, len(idx)))
    return out


def demo_figures(dt, var: str, table, out: Path) -> list[Path]:
    """The demo's figures: per-client intervals (every term) and estimates against client size,
    one panel per term, each with its population mean."""
    import matplotlib

    matplotlib.use("Agg")
    import numpy as np
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    from bayes_pfl.inspection import population_means
    from bayes_pfl.plots import plot_forest_terms
    from bayes_pfl.report import population_pair

    pair = population_pair(dt, var)
    forest = out / f"clients_{var}.png"
    plot_forest_terms(dt, var, population=pair, path=forest)

    post = dt.posterior.to_dataset()
    terms = table.index.get_level_values(1).unique() if table.index.nlevels > 1 else [None]
    locs = population_means(post, var, pair[0]) if pair is not None else None
    ncols = min(len(terms), 2)
    nrows = -(-len(terms) // ncols)
    fig = Figure(figsize=(5.5 * ncols, 4.0 * nrows))
    axes = np.ravel(fig.subplots(nrows, ncols, squeeze=False))
    for extra_ax in axes[len(terms) :]:
        extra_ax.set_visible(False)
    for i, (term, ax) in enumerate(zip(terms, axes[: len(terms)], strict=True)):
        t = table if term is None else table.xs(term, level=1)
        t = t.sort_values("n_train", kind="stable")
        n = t["n_train"].to_numpy(float)
        x = n * _size_jitter(n)
        ax.errorbar(
            x,
            t["mean"],
            yerr=[t["mean"] - t["q05"], t["q95"] - t["mean"]],
            fmt="o",
            ms=3,
            lw=0.7,
            alpha=0.55,
            color="C0",
        )
        if locs is not None:
            ax.axhline(
                float(locs[min(i, len(locs) - 1)]), color="0.3", ls="--", lw=1,
                label="population mean",
            )  # fmt: skip
            ax.legend(fontsize=7, loc="best")
        ax.set_xscale("log")
        sizes = np.unique(n)
        ticks = (
            sizes if len(sizes) <= 8 else np.unique(np.geomspace(sizes[0], sizes[-1], 6).round())
        )
        ax.set_xticks(ticks, [f"{v:g}" for v in ticks])  # plain numbers, no 3x10^0
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("rows in client (log scale; equal sizes spread apart)")
        ax.set_ylabel(var if term is None else f"{var}[{term}]")
    fig.suptitle("Small clients borrow strength: wider intervals, pulled to the population mean")
    fig.set_layout_engine("constrained")
    size = out / f"{var}_vs_client_size.png"
    fig.savefig(size, dpi=120)
    return [forest, size]
