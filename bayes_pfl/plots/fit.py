"""Figures of a hierarchical fit: shrinkage, forest, fit against fit, federated rounds."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from bayes_pfl.inspection import as_datatree, client_vars, posterior_group
from bayes_pfl.plots.base import PlotResult, finish_plot, make_axes

__all__ = [
    "CLIENT_DIM",
    "HISTORY_COLUMNS",
    "SAMPLE_DIMS",
    "SHRINKAGE_COLUMNS",
    "plot_compare",
    "plot_convergence",
    "plot_forest",
    "plot_shrinkage",
]

CLIENT_DIM = "client"
SAMPLE_DIMS = ("chain", "draw")
_MAX_LABELLED = 30  # clients named next to the shrinkage arrows up to this many
_REF_COLOR, _OTHER_COLOR = "C0", "C1"


# ---------------------------------------------------------------------------
# helpers


def _check_prob(ci_prob: float) -> float:
    if not 0.0 < float(ci_prob) < 1.0:
        raise ValueError(f"ci_prob must be in (0, 1), got {ci_prob!r}")
    return float(ci_prob)


def _select_element(da: xr.DataArray, element, var: str, keep: Sequence[str]) -> xr.DataArray:
    """``da`` reduced to the dims in ``keep``: other (element) dims indexed by ``element``."""
    edims = [d for d in da.dims if d not in keep]
    if not edims:
        return da
    if element is None:
        if all(da.sizes[d] == 1 for d in edims):
            return da.isel({d: 0 for d in edims})
        shape = {d: da.sizes[d] for d in edims}
        raise ValueError(
            f"{var!r} has element dimensions {shape}: pick one with element= "
            "(an int, a tuple of ints, or a dict of dim to index)"
        )
    if isinstance(element, str) and len(edims) == 1:  # a term's label: b[..., "age"]
        if edims[0] not in da.coords or element not in set(map(str, da[edims[0]].values)):
            raise ValueError(f"element={element!r} does not index {var!r}: no such label")
        return da.sel({edims[0]: element})
    if isinstance(element, Mapping):
        sel = dict(element)
    else:
        idx = element if isinstance(element, tuple) else (element,)
        if len(idx) != len(edims):
            raise ValueError(
                f"{var!r} has {len(edims)} element dimension(s) {edims}, got element={element!r}"
            )
        sel = dict(zip(edims, idx, strict=True))
    try:
        out = da.isel(sel)
    except (IndexError, ValueError, KeyError) as err:
        raise ValueError(f"element={element!r} does not index {var!r}: {err}") from err
    left = [d for d in out.dims if d not in keep]
    if left:
        raise ValueError(f"element={element!r} leaves dimensions {left} of {var!r}")
    return out


def _client_draws(post: xr.Dataset, var: str, element=None) -> xr.DataArray:
    if var not in post.data_vars:
        raise ValueError(
            f"unknown variable {var!r}; client variables in the posterior: {client_vars(post)}"
        )
    da = post[var]
    if CLIENT_DIM not in da.dims:
        raise ValueError(
            f"{var!r} has no {CLIENT_DIM!r} dimension (it is global); "
            f"client variables: {client_vars(post)}"
        )
    da = _select_element(da, element, var, (*SAMPLE_DIMS, CLIENT_DIM))
    return da.transpose(*SAMPLE_DIMS, CLIENT_DIM)


def _global_mean(post: xr.Dataset, var: str, element=None) -> float:
    if var not in post.data_vars:
        global_vars = [str(v) for v in post.data_vars if str(v) not in client_vars(post)]
        raise ValueError(f"unknown population variable {var!r}; global variables: {global_vars}")
    da = post[var]
    if CLIENT_DIM in da.dims:
        raise ValueError(f"population variable {var!r} is a client variable, not a global one")
    da = _select_element(da, element, var, SAMPLE_DIMS)
    return float(da.mean(SAMPLE_DIMS))


def _interval_table(draws: xr.DataArray, ci_prob: float) -> pd.DataFrame:
    """Per-client mean and equal-tailed ``ci_prob`` interval (as :func:`arviz.eti`)."""
    x = draws.values.reshape(-1, draws.sizes[CLIENT_DIM])
    lo, hi = np.quantile(x, [0.5 - ci_prob / 2, 0.5 + ci_prob / 2], axis=0)
    return pd.DataFrame(
        {
            CLIENT_DIM: [str(c) for c in draws[CLIENT_DIM].values],
            "mean": x.mean(axis=0),
            "lo": lo,
            "hi": hi,
        }
    )


def _draw_intervals(ax, y, t: pd.DataFrame, color, label=None, size=18):
    ax.hlines(y, t["lo"], t["hi"], color=color, lw=1.5, label=label)
    ax.scatter(t["mean"], y, s=size, color=color, zorder=3)


# ---------------------------------------------------------------------------
# shrinkage

SHRINKAGE_COLUMNS = ("n", "local_mean", "personal_mean", "pooled_mean")


def plot_shrinkage(
    table: pd.DataFrame,
    *,
    title: str | None = None,
    element=None,
    ax=None,
    path=None,
) -> PlotResult:
    """The shrinkage plot: each client's estimate moved from local to partially pooled.

    For each client an arrow runs from its local (no-pooling) estimate at
    ``x = 0`` ("local") to its personalized posterior mean at ``x = 1``
    ("partial pooling"); a dashed horizontal line marks the population mean
    (complete pooling). Marker area is proportional to the client's size ``n``:
    small clients move the most.

    Parameters
    ----------
    table : pandas.DataFrame
        One row per client, as :func:`bayes_pfl.inspection.shrinkage_table` returns:
        columns ``n`` (client rows), ``local_mean``, ``personal_mean`` and
        ``pooled_mean`` are used (``local_lo/hi``, ``personal_lo/hi`` and
        ``shrinkage`` may be present and are ignored). Client labels are the
        ``client`` column if there is one, else the index (its ``client`` level
        for a ``(client, element)`` MultiIndex).
    title : str, optional
        Default: from ``table.attrs["var"]`` when present.
    element : optional
        For a ``(client, term)`` or ``(client, element)`` table (a vector client
        variable): the term (``"age"``) or element to draw
        (:func:`~bayes_pfl.plots.plot_shrinkage_terms` draws every term).
    ax : matplotlib Axes, optional
    path : str or Path, optional
        Write the figure as a PNG there.

    Returns
    -------
    PlotResult
        ``data``: one row per drawn client, columns ``client``, ``local``,
        ``personal``, ``pooled``, ``n`` and ``marker_size`` (points², same at both
        ends). ``extra``: ``pooled_line`` (the y of the dashed line, the mean of
        ``pooled_mean``) and ``skipped`` (clients with a non-finite estimate,
        not drawn). ``axes``: the one panel.

    Raises
    ------
    ValueError
        Missing columns, an empty table, or a ``(client, element)`` table without
        ``element``.
    """
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"table must be a pandas DataFrame, got {type(table).__name__}")
    missing = [c for c in SHRINKAGE_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(
            f"shrinkage table is missing column(s) {missing}; needs {list(SHRINKAGE_COLUMNS)} "
            "(as bayes_pfl.inspection.shrinkage_table returns)"
        )
    t = table
    level = next(
        (lv for lv in ("term", "element") if isinstance(t.index, pd.MultiIndex)
         and lv in t.index.names),
        None,
    )  # fmt: skip
    if level is not None:
        elements = t.index.get_level_values(level).unique()
        if element is None and len(elements) > 1:
            raise ValueError(
                f"the table has several elements per client {list(elements)}: pick one "
                "with element="
            )
        chosen = elements[0] if element is None else element
        if chosen not in set(elements):
            raise ValueError(f"element {chosen!r} not in the table's elements {list(elements)}")
        t = t.xs(chosen, level=level)
    if CLIENT_DIM in t.columns:
        clients = t[CLIENT_DIM].astype(str).to_numpy()
    elif isinstance(t.index, pd.MultiIndex) and CLIENT_DIM in t.index.names:
        clients = t.index.get_level_values(CLIENT_DIM).astype(str).to_numpy()
    else:
        clients = t.index.astype(str).to_numpy()
    if len(t) == 0:
        raise ValueError("shrinkage table is empty")

    df = pd.DataFrame(
        {
            CLIENT_DIM: clients,
            "local": t["local_mean"].to_numpy(dtype=float),
            "personal": t["personal_mean"].to_numpy(dtype=float),
            "pooled": t["pooled_mean"].to_numpy(dtype=float),
            "n": t["n"].to_numpy(dtype=float),
        }
    )
    ok = np.isfinite(df[["local", "personal", "n"]]).all(axis=1).to_numpy()
    skipped = df.loc[~ok, CLIENT_DIM].tolist()
    df = df.loc[ok].reset_index(drop=True)
    if df.empty:
        raise ValueError("no client has finite local and personalized estimates")
    if (df["n"] < 0).any():
        raise ValueError("client sizes n must be non-negative")
    n_max = max(float(df["n"].max()), 1.0)
    df["marker_size"] = 12.0 + 108.0 * df["n"] / n_max
    pooled_line = float(np.nanmean(df["pooled"]))

    n_clients = len(df)
    fig, (axis,), created = make_axes(ax, 1, (5.5, 4.5 if n_clients <= 20 else 6.0))
    alpha = 0.9 if n_clients <= 20 else 0.45
    for row in df.itertuples(index=False):
        axis.annotate(
            "",
            xy=(1.0, row.personal),
            xytext=(0.0, row.local),
            arrowprops={"arrowstyle": "->", "color": "0.35", "lw": 0.8, "alpha": alpha},
        )
    for x, column, color, label in (
        (0.0, "local", "C3", "local (no pooling)"),
        (1.0, "personal", "C0", "personalized (partial pooling)"),
    ):
        axis.scatter(
            np.full(n_clients, x),
            df[column],
            s=df["marker_size"],
            color=color,
            alpha=alpha,
            label=label,
            zorder=3,
        )
    axis.axhline(pooled_line, ls="--", color="k", lw=1, label="population mean")
    if n_clients <= _MAX_LABELLED:  # named at the local end, where estimates spread most
        for row in df.itertuples(index=False):
            axis.annotate(
                str(getattr(row, CLIENT_DIM)),
                (0.0, row.local),
                xytext=(-9, 0),
                textcoords="offset points",
                ha="right",
                va="center",
                fontsize=8,
            )
    axis.set_xticks([0, 1], ["local", "partial pooling"])
    axis.set_xlim(-0.35, 1.2)
    var = table.attrs.get("var")
    axis.set_ylabel(f"{var} (posterior mean)" if var else "estimate")
    if title is None:
        title = f"Shrinkage of {var} toward the population mean" if var else "Shrinkage"
    axis.set_title(title)
    axis.legend(fontsize=7, loc="best")
    res = PlotResult(fig, (axis,), df, {"pooled_line": pooled_line, "skipped": skipped})
    return finish_plot(res, path, created=created)


# ---------------------------------------------------------------------------
# forest


def plot_forest(
    dt,
    var: str,
    *,
    population: tuple[str, str] | None = None,
    ci_prob: float = 0.9,
    element=None,
    title: str | None = None,
    ax=None,
    path=None,
) -> PlotResult:
    """Per-client posterior intervals of ``var``, sorted by mean, over the population band.

    Drawn by :func:`arviz.plot_forest` (50% and ``ci_prob`` equal-tailed intervals,
    posterior mean; first client on top) when ``ax`` is not given, by matplotlib
    into ``ax`` otherwise (``ci_prob`` interval and mean). With ``population``
    the population distribution ``N(loc, scale)`` at the posterior means of
    ``loc`` and ``scale`` is drawn as a shaded band over its central ``ci_prob``
    range, ``loc ± z scale`` (``z = 1.645`` for 90%), with a line at ``loc``.

    Parameters
    ----------
    dt : xarray.DataTree or FitResult
        A fit (``posterior`` group with a ``client`` dimension).
    var : str
        A client variable (``theta``, ``alpha``, ``b``).
    population : (str, str), optional
        Global variables of the population location and scale, e.g.
        ``("mu_alpha", "sigma_alpha")`` or ``("mu", "tau")``.
    ci_prob : float
        Probability of the intervals and of the band.
    element : str, int, tuple or dict, optional
        For a vector client variable (GLM ``b``): which term (its label, ``"age"``) or
        element (position) to draw; the same element of vector ``population``
        variables is used (:func:`~bayes_pfl.plots.plot_forest_terms` draws every
        term, each over its own population).
    title : str, optional
    ax : matplotlib Axes, optional
    path : str or Path, optional

    Returns
    -------
    PlotResult
        ``data``: one row per client in drawn order (ascending mean), columns
        ``client``, ``mean``, ``lo``, ``hi`` (the ``ci_prob`` interval) and ``y``
        (its vertical position). ``extra``: ``band`` ``(lo, hi)``, ``pop_loc``,
        ``pop_scale`` and ``z`` when ``population`` is given, and
        ``plot_collection`` (the ArviZ PlotCollection) when ArviZ drew it.
        ``axes``: the interval panel first (ArviZ's label panel second).

    Raises
    ------
    ValueError
        Unknown or global ``var``, unknown population variables, a non-positive
        scale, ``ci_prob`` outside (0, 1).
    """
    ci_prob = _check_prob(ci_prob)
    post = posterior_group(as_datatree(dt))
    draws = _client_draws(post, var, element)
    table = _interval_table(draws, ci_prob)
    order = np.argsort(table["mean"].to_numpy(), kind="stable")
    table = table.iloc[order].reset_index(drop=True)
    sorted_draws = draws.isel({CLIENT_DIM: order})

    extra: dict[str, Any] = {}
    if population is not None:
        if isinstance(population, str) or len(population) != 2:
            raise ValueError(
                f"population must be a (location, scale) pair of variable names, got {population!r}"
            )
        loc = _global_mean(post, population[0], element)
        scale = _global_mean(post, population[1], element)
        if not scale > 0:
            raise ValueError(f"population scale {population[1]!r} has posterior mean {scale}")
        z = NormalDist().inv_cdf(0.5 + ci_prob / 2)
        extra.update(
            {"pop_loc": loc, "pop_scale": scale, "z": z, "band": (loc - z * scale, loc + z * scale)}
        )
    pct = f"{100 * ci_prob:g}%"
    name = var if element is None else f"{var}[{element}]"  # b[age]: which term is drawn
    xlabel = f"{name} (posterior mean, {pct} interval)"
    if title is None:
        title = f"Per-client {name}"

    if ax is None:
        fig, axes, data, pc = _forest_arviz(sorted_draws, var, ci_prob)
        extra["plot_collection"] = pc
        created = True
    else:
        fig, axes, created = make_axes(ax, 1, None)
        n = len(table)
        data = table.assign(y=np.arange(n)[::-1].astype(float))
        _draw_intervals(axes[0], data["y"], data, "C0", label=f"{pct} interval")
        axes[0].set_yticks(data["y"], data[CLIENT_DIM])
        axes[0].set_ylim(-0.7, n - 0.3)
    forest_ax = axes[0]
    if population is not None:
        lo, hi = extra["band"]
        forest_ax.axvspan(
            lo, hi, color="0.6", alpha=0.25, lw=0, zorder=0, label=f"population {pct} range"
        )
        forest_ax.axvline(extra["pop_loc"], color="0.3", ls="--", lw=1, label="population mean")
        forest_ax.legend(fontsize=7, loc="lower left", bbox_to_anchor=(1.01, 0.0))
    forest_ax.set_xlabel(xlabel)
    if created:
        fig.suptitle(title)
    else:
        forest_ax.set_title(title)
    res = PlotResult(fig, axes, data, extra)
    finish_plot(res, path, created=created)
    if created:  # ArviZ made it with pyplot: release it from pyplot's registry
        import matplotlib.pyplot as plt

        plt.close(fig)
    return res


def _forest_arviz(sorted_draws: xr.DataArray, var: str, ci_prob: float):
    """ArviZ's forest plot of the sorted draws; the drawn numbers are read back from its artists."""
    import arviz as az

    ds = xr.Dataset(
        {
            var: sorted_draws.drop_vars(
                [c for c in sorted_draws.coords if c not in sorted_draws.dims]
            )
        }
    )
    n = sorted_draws.sizes[CLIENT_DIM]
    pc = az.plot_forest(
        xr.DataTree.from_dict({"posterior": ds}),
        var_names=[var],
        combined=True,
        point_estimate="mean",
        ci_kind="eti",
        ci_probs=(min(0.5, ci_prob), ci_prob),
        labels=[CLIENT_DIM],  # the clients only: no variable name beside the first one
        backend="matplotlib",
        figure_kwargs={"figsize": (7.0, max(3.0, 0.3 * n + 1.2))},
    )
    viz = pc.viz
    plots = viz["plot"]
    forest_ax = plots.sel(column="forest").item()
    label_ax = plots.sel(column="labels").item()
    twig = viz["twig"][var]
    point = viz["point_estimate"][var]
    rows = []
    for client in twig[CLIENT_DIM].values:
        line = twig.sel({CLIENT_DIM: client}).item()
        offsets = np.asarray(point.sel({CLIENT_DIM: client}).item().get_offsets())
        xs, ys = line.get_xdata(), line.get_ydata()
        rows.append(
            {
                CLIENT_DIM: str(client),
                "mean": float(offsets[0, 0]),
                "lo": float(np.min(xs)),
                "hi": float(np.max(xs)),
                "y": float(ys[0]),
            }
        )
    data = pd.DataFrame(rows)
    fig = forest_ax.figure
    return fig, (forest_ax, label_ax), data, pc


# ---------------------------------------------------------------------------
# fit against fit


def plot_compare(
    ref_dt,
    other_dt,
    var: str,
    *,
    labels: tuple[str, str] = ("reference", "federated"),
    ci_prob: float = 0.9,
    element=None,
    title: str | None = None,
    ax=None,
    path=None,
) -> PlotResult:
    """One client variable from two fits: dodged intervals, and means against means.

    Left panel: for each client (sorted by the reference mean, first on top) the
    reference interval just above the other fit's. Right panel: posterior mean
    of the other fit against the reference's, with ``ci_prob`` error bars both
    ways and the line ``y = x``; points on the line agree.

    Parameters
    ----------
    ref_dt, other_dt : xarray.DataTree or FitResult
        Two fits with the same clients (e.g. NUTS and EP).
    var : str
        A client variable present in both.
    labels : (str, str)
        Names of the two fits in the legend and axis labels.
    ci_prob : float
    element : optional
        For a vector client variable: which element (see :func:`plot_forest`).
    title : str, optional
    ax : sequence of two matplotlib Axes, optional
    path : str or Path, optional

    Returns
    -------
    PlotResult
        ``data``: one row per client in drawn order, columns ``client``,
        ``mean_ref``, ``lo_ref``, ``hi_ref``, ``mean_other``, ``lo_other``,
        ``hi_other`` and ``y`` (the client's row in the left panel).
        ``extra``: ``labels`` and ``max_abs_diff`` (largest ``|mean_other - mean_ref|``).
        ``axes``: (intervals, scatter).

    Raises
    ------
    ValueError
        ``var`` unknown or global in either fit, or the fits' clients differ.
    """
    ci_prob = _check_prob(ci_prob)
    if len(labels) != 2:
        raise ValueError(f"labels must be two names, got {labels!r}")
    tables = []
    for which, fit in (("reference", ref_dt), ("other", other_dt)):
        try:
            draws = _client_draws(posterior_group(as_datatree(fit)), var, element)
        except ValueError as err:
            raise ValueError(f"{which} fit: {err}") from err
        tables.append(_interval_table(draws, ci_prob).set_index(CLIENT_DIM))
    ref, oth = tables
    if set(ref.index) != set(oth.index) or len(ref) != len(oth):
        only_ref = sorted(set(ref.index) - set(oth.index))[:10]
        only_oth = sorted(set(oth.index) - set(ref.index))[:10]
        raise ValueError(
            f"the fits have different clients: only in {labels[0]} {only_ref}, "
            f"only in {labels[1]} {only_oth}"
        )
    oth = oth.loc[ref.index]
    data = pd.concat([ref.add_suffix("_ref"), oth.add_suffix("_other")], axis=1)
    data = data.sort_values("mean_ref", kind="stable").reset_index()
    n = len(data)
    data["y"] = np.arange(n)[::-1].astype(float)

    fig, (a_int, a_sc), created = make_axes(ax, 2, (10.0, max(3.5, 0.3 * n + 1.5)))
    dodge = 0.15
    for suffix, color, lab, dy in (
        ("_ref", _REF_COLOR, labels[0], dodge),
        ("_other", _OTHER_COLOR, labels[1], -dodge),
    ):
        t = data[["mean" + suffix, "lo" + suffix, "hi" + suffix]]
        t.columns = ["mean", "lo", "hi"]
        _draw_intervals(a_int, data["y"] + dy, t, color, label=lab, size=14)
    a_int.set_yticks(data["y"], data[CLIENT_DIM], fontsize=8 if n <= 40 else 5)
    a_int.set_ylim(-0.7, n - 0.3)
    pct = f"{100 * ci_prob:g}%"
    a_int.set_xlabel(f"{var} (posterior mean, {pct} interval)")
    a_int.legend(fontsize=7, loc="best")

    a_sc.errorbar(
        data["mean_ref"],
        data["mean_other"],
        xerr=[data["mean_ref"] - data["lo_ref"], data["hi_ref"] - data["mean_ref"]],
        yerr=[data["mean_other"] - data["lo_other"], data["hi_other"] - data["mean_other"]],
        fmt="o",
        ms=4,
        color=_OTHER_COLOR,
        ecolor="0.85",
        elinewidth=0.8,
    )
    vals = data[["lo_ref", "hi_ref", "lo_other", "hi_other"]].to_numpy()
    lim = (float(np.min(vals)), float(np.max(vals)))
    a_sc.plot(lim, lim, ls="--", color="k", lw=1, label="y = x")
    a_sc.set_xlabel(f"{var}: {labels[0]} mean")
    a_sc.set_ylabel(f"{var}: {labels[1]} mean")
    a_sc.legend(fontsize=7, loc="upper left")
    a_sc.set_aspect("equal", adjustable="datalim")
    if title is None:
        title = f"{var}: {labels[1]} against {labels[0]}"
    if created:
        fig.suptitle(title)
    else:
        a_int.set_title(title)
    diff = float(np.max(np.abs(data["mean_other"] - data["mean_ref"])))
    res = PlotResult(fig, (a_int, a_sc), data, {"labels": tuple(labels), "max_abs_diff": diff})
    return finish_plot(res, path, created=created)


# ---------------------------------------------------------------------------
# federated rounds

HISTORY_COLUMNS = ("mean_change", "sd_change")


def _history_frame(history) -> pd.DataFrame:
    if hasattr(history, "history") and hasattr(history, "to_datatree"):  # a FitResult
        history = history.history
    if isinstance(history, xr.DataTree):
        if "fit_history" in history.children:
            history = history["fit_history"].to_dataset()
        elif all(c in history.to_dataset().data_vars for c in HISTORY_COLUMNS):
            history = history.to_dataset()
        else:
            raise ValueError(
                "the DataTree has no fit_history group (centralized fits have no rounds)"
            )
    if isinstance(history, xr.Dataset):
        df = history.to_dataframe().reset_index()
    elif isinstance(history, pd.DataFrame):
        df = history.copy()
    elif isinstance(history, Sequence) and not isinstance(history, str):
        if not all(isinstance(h, Mapping) for h in history):
            raise ValueError("history must be a list of dicts, one per round")
        df = pd.DataFrame(list(history))
    else:
        raise TypeError(
            "history must be a FitResult, its .history list, a DataTree with a fit_history "
            f"group, an xarray Dataset or a DataFrame; got {type(history).__name__}"
        )
    if df.empty:
        raise ValueError("the history has no rounds (centralized fits have none)")
    missing = [c for c in HISTORY_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"the history has no {missing} (columns: {list(df.columns)})")
    if "round" not in df.columns:
        df["round"] = np.arange(1, len(df) + 1)
    return df


def plot_convergence(
    history, *, tol: float | None = None, title: str | None = None, ax=None, path=None
) -> PlotResult:
    """A federated fit's rounds: changes of the global summary (log scale) and damping.

    Parameters
    ----------
    history : FitResult, list of dict, xarray.DataTree, xarray.Dataset or DataFrame
        ``FitResult.history``, or a DataTree with its ``fit_history`` group (or
        that group itself): per round ``mean_change`` (max change of the global
        mode in posterior sds) and ``sd_change`` (max change of log sd), and
        ``damping`` when recorded.
    tol : float, optional
        Convergence tolerance, drawn as a horizontal line.
    title : str, optional
    ax : sequence of two matplotlib Axes, optional
    path : str or Path, optional

    Returns
    -------
    PlotResult
        ``data``: one row per round, columns ``round``, ``mean_change``,
        ``sd_change`` and ``damping`` (NaN where not recorded). ``extra``: ``tol``.
        ``axes``: (changes, damping).

    Raises
    ------
    ValueError
        An empty history or one without ``mean_change``/``sd_change``.
    """
    df = _history_frame(history)
    data = pd.DataFrame(
        {
            "round": df["round"].to_numpy(dtype=int),
            "mean_change": df["mean_change"].to_numpy(dtype=float),
            "sd_change": df["sd_change"].to_numpy(dtype=float),
            "damping": (
                df["damping"].to_numpy(dtype=float) if "damping" in df else np.full(len(df), np.nan)
            ),
        }
    )
    fig, (a_ch, a_d), created = make_axes(ax, 2, (9.0, 3.6))
    a_ch.plot(data["round"], data["mean_change"], "o-", label="mean change (sd units)")
    a_ch.plot(data["round"], data["sd_change"], "s-", label="sd change (log ratio)")
    a_ch.set_yscale("log")
    if tol is not None:
        a_ch.axhline(tol, ls="--", color="k", lw=1, label=f"tol = {tol:g}")
    a_ch.set_xlabel("round")
    a_ch.set_ylabel("change of the global summary")
    a_ch.legend(fontsize=7, loc="best")
    if data["damping"].notna().any():
        a_d.step(data["round"], data["damping"], where="mid", color="C2")
        a_d.plot(data["round"], data["damping"], "o", color="C2", ms=4)
    else:
        a_d.text(0.5, 0.5, "no damping recorded", ha="center", va="center", transform=a_d.transAxes)
    a_d.set_ylim(0, 1.05)
    a_d.set_xlabel("round")
    a_d.set_ylabel("damping")
    for a in (a_ch, a_d):
        a.xaxis.get_major_locator().set_params(integer=True)
    if title is None:
        title = f"Federated rounds ({len(data)})"
    if created:
        fig.suptitle(title)
    else:
        a_ch.set_title(title)
    res = PlotResult(fig, (a_ch, a_d), data, {"tol": tol})
    return finish_plot(res, path, created=created)
