"""A self-contained HTML report of a fit's result folder.

:func:`write_report` reads ``posterior.nc`` and ``run.json`` (and ``shrinkage.csv``
when the fit wrote one), draws the figures of :mod:`bayes_pfl.plots` into
``DIR/figures/``, and writes ``DIR/report.html`` with the figures embedded (base64),
so the file can be mailed or opened anywhere. Sections: the run, diagnostics (naming
the clients that failed or were rejected, from ``run.json``'s history), shrinkage (plot
and table) and per-client posteriors with the population band, both one panel per term
of a vector client variable (a GLM's varying coefficients), the federated run's
convergence, calibration on held-out rows (binary targets), and PSIS-LOO per client.
"""

from __future__ import annotations

import base64
import html
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bayes_pfl import inspection, plots
from bayes_pfl.diagnostics import diagnostics
from bayes_pfl.plots.terms import table_terms
from bayes_pfl.results import load_posterior

__all__ = [
    "SHRINKAGE_ROWS",
    "population_pair",
    "read_shrinkage",
    "shrinkage_for_fit",
    "write_report",
]

SHRINKAGE_ROWS = 40
"""Rows of the shrinkage table shown whole in the report; a longer one is summarized by term."""

_POPULATION = {"alpha": ("mu_alpha", "sigma_alpha"), "theta": ("mu", "tau"), "b": ("mu", "tau")}

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.6rem; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2rem; }
table { border-collapse: collapse; font-size: .85rem; margin: .5rem 0 1rem; }
th, td { border: 1px solid #ddd; padding: .2rem .5rem; text-align: right; }
th { background: #f4f4f4; } img { max-width: 100%; border: 1px solid #eee; }
.caption { font-size: .85rem; color: #555; margin-top: .2rem; }
.warn { background: #fff4e5; border-left: 4px solid #f0a000; padding: .4rem .8rem; }
.ok { background: #eef8ee; border-left: 4px solid #3a3; padding: .4rem .8rem; }
"""


def population_pair(dt, var: str) -> tuple[str, str] | None:
    """The population location and scale variables of a client variable, when present."""
    pair = _POPULATION.get(var)
    if pair and all(p in dt.posterior for p in pair):
        return pair
    return None


def read_shrinkage(path: str | Path) -> pd.DataFrame:
    """A ``shrinkage.csv`` back as :func:`~bayes_pfl.inspection.shrinkage_table` wrote it:
    indexed by ``client``, or by ``(client, term)`` (``(client, element)``) for a vector
    client variable."""
    table = pd.read_csv(path)
    keys = [c for c in ("client", inspection.TERM, "element") if c in table.columns]
    if not keys:  # an index without a name: its first column
        return table.set_index(table.columns[0])
    table["client"] = table["client"].astype(str)
    return table.set_index(keys)


def _population_of(dt, var: str) -> tuple[str | None, str] | None:
    """``population_pair``, or ``(None, scale)`` for terms that vary around 0 (no mean)."""
    pair = population_pair(dt, var)
    if pair is None and var in _POPULATION and _POPULATION[var][1] in dt.posterior:
        return None, _POPULATION[var][1]
    return pair


def _shrinkage_by_term(table: pd.DataFrame) -> pd.DataFrame:
    level = inspection.TERM if inspection.TERM in table.index.names else "element"
    grouped = table.groupby(level=level, sort=False)
    return pd.DataFrame(
        {
            "clients": grouped.size(),
            "pooled_mean": grouped["pooled_mean"].mean(),
            "personal_mean (min)": grouped["personal_mean"].min(),
            "personal_mean (max)": grouped["personal_mean"].max(),
            "shrinkage (median)": grouped["shrinkage"].median(),
            "shrinkage (min)": grouped["shrinkage"].min(),
            "shrinkage (max)": grouped["shrinkage"].max(),
        }
    )


def shrinkage_for_fit(dt, data) -> pd.DataFrame | None:
    """The shrinkage table, or ``None`` when this model has no built-in local estimate."""
    try:
        return inspection.shrinkage_table(dt, data)
    except NotImplementedError:
        return None


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def _table(df: pd.DataFrame, digits: int = 3) -> str:
    return df.round(digits).to_html(border=0, na_rep="")


def _client_var(dt) -> str | None:
    try:
        return inspection.default_client_var(dt.posterior.to_dataset())
    except ValueError:
        return None


def write_report(fit_dir: str | Path, *, data=None) -> Path:
    """Write ``fit_dir/report.html`` (and ``fit_dir/figures/*.png``) for a saved fit.

    Parameters
    ----------
    fit_dir : path
        A folder written by :func:`bayes_pfl.results.save_fit` / ``bayes-pfl fit``.
    data : FederatedData, optional
        The fit's data, to compute the shrinkage table when the folder has no
        ``shrinkage.csv``.

    Returns
    -------
    Path
        The HTML file.
    """
    fit_dir = Path(fit_dir)
    for name in ("posterior.nc", "run.json"):
        if not (fit_dir / name).is_file():
            raise FileNotFoundError(f"{fit_dir} has no {name}: is it a `bayes-pfl fit` folder?")
    dt = load_posterior(fit_dir / "posterior.nc")
    run = json.loads((fit_dir / "run.json").read_text())
    figures = fit_dir / "figures"
    figures.mkdir(exist_ok=True)
    sections: list[str] = []

    # --- run
    info = {
        k: run.get(k)
        for k in ("method", "model", "dataset", "clients", "num_chains", "num_draws", "seed")
    }
    if run.get("model_description"):
        info["model description"] = run["model_description"]
    info["wall time (s)"] = round(float(run.get("wall_time_s", float("nan"))), 2)
    if run.get("history"):
        info["rounds"] = len(run["history"])
        info["converged"] = run.get("converged")
        info["bytes up / down per client per round"] = (
            f"{run['history'][-1].get('bytes_up_per_client')} / "
            f"{run['history'][-1].get('bytes_down_per_client')}"
        )
    sections.append("<h2>Run</h2>" + _table(pd.DataFrame({"value": info}).astype(str)))

    # --- diagnostics
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        diag = diagnostics(dt, history=run.get("history") or None)  # names the clients
    messages = [str(w.message) for w in caught]
    summary = {k: diag.get(k) for k in ("max_r_hat", "min_ess_bulk", "min_ess_tail", "divergences")}
    body = _table(pd.DataFrame({"value": summary}))
    if messages:
        body += "".join(f'<p class="warn">{html.escape(m)}</p>' for m in messages)
    else:
        body += '<p class="ok">No diagnostic warnings.</p>'
    sections.append("<h2>Diagnostics</h2>" + body)

    var = _client_var(dt)
    # --- shrinkage
    table = None
    if (fit_dir / "shrinkage.csv").is_file():
        table = read_shrinkage(fit_dir / "shrinkage.csv")
    elif data is not None and var is not None:
        table = shrinkage_for_fit(dt, data)
    if table is not None:
        res = plots.plot_shrinkage_terms(table, var=var, path=figures / "shrinkage.png")
        if len(table) <= SHRINKAGE_ROWS:
            shown = _table(table)
        else:
            by_term = table_terms(table) is not None
            shown = (
                f"<p>{len(table)} rows: "
                + ("a summary per term" if by_term else f"the first {SHRINKAGE_ROWS}")
                + " here; every row is in <code>shrinkage.csv</code>.</p>"
                + _table(_shrinkage_by_term(table) if by_term else table.head(SHRINKAGE_ROWS))
            )
        sections.append(
            "<h2>Shrinkage</h2><p>Each client's local (no pooling) estimate, its personalized "
            "posterior (partial pooling) and the population mean, one panel per term; "
            "<em>shrinkage</em> is how far the estimate moved from local toward the "
            "population (0 = none, 1 = all).</p>" + _img(res.path) + shown
        )
    # --- per-client posteriors
    if var is not None:
        res = plots.plot_forest_terms(
            dt, var, population=_population_of(dt, var), path=figures / f"forest_{var}.png"
        )
        caption = (
            "Each client's posterior mean and 90% interval, sorted; the band is the "
            "population's 90% range around its mean (per term). " + res.extra["caption"]
        )
        sections.append(
            f"<h2>Per-client {html.escape(var)}</h2>"
            + _img(res.path)
            + f'<p class="caption">{html.escape(caption)}</p>'
        )
    # --- conflict
    if (fit_dir / "conflict.csv").is_file():
        sections.append(_conflict(fit_dir, run, figures))
    # --- convergence
    if "fit_history" in dt.children and "mean_change" in dt["fit_history"]:
        res = plots.plot_convergence(dt, path=figures / "convergence.png")
        sections.append("<h2>Federated rounds</h2>" + _img(res.path) + _table(res.data))
    # --- calibration
    calib = _calibration(dt, figures)
    if calib is not None:
        sections.append(calib)
    # --- LOO
    if "log_likelihood" in dt.children:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            loo = inspection.loo_by_client(dt)
        text = "".join(
            f'<p class="warn">{html.escape(str(w.message))}</p>'
            for w in caught
            if isinstance(w.message, inspection.ParetoKWarning)
        )
        sections.append(
            f"<h2>PSIS-LOO per client</h2><p>Total elpd_loo {loo.total.elpd:.2f} "
            f"(se {loo.total.se:.2f}).</p>" + text + _table(loo.table)
        )
    elif (fit_dir / "loo.csv").is_file() and run.get("loo"):  # computed when the fit was saved
        saved = run["loo"]
        text = "".join(f'<p class="warn">{html.escape(m)}</p>' for m in saved.get("warnings", []))
        sections.append(
            f"<h2>PSIS-LOO per client</h2><p>Total elpd_loo {saved['elpd_loo']:.2f} "
            f"(se {saved['se']:.2f}).</p>"
            + text
            + _table(pd.read_csv(fit_dir / "loo.csv", index_col=0))
        )
    title = f"bayes-pfl report: {run.get('model')} ({run.get('method')})"
    page = (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>" + "\n".join(sections) + "</body></html>"
    )
    out = fit_dir / "report.html"
    out.write_text(page, encoding="utf-8")
    return out


def _conflict(fit_dir: Path, run: dict, figures: Path) -> str:
    """The conflict section: every client's score against the threshold, and who stands out."""
    table = pd.read_csv(fit_dir / "conflict.csv", index_col=0)
    table.index = table.index.astype(str)
    alpha = float((run.get("conflict") or {}).get("alpha", 0.05))
    res = plots.plot_conflict(table, alpha=alpha, path=figures / "conflict.png")
    k = len(table)
    text = (
        "<p>How surprising each client's site is given every other client (its "
        "leave-one-client-out cavity; <code>bayes_pfl.conflict</code>): a client is flagged "
        f"when its p-value is below {alpha:g} / {k} (Bonferroni: with no outlying client, "
        f"the chance that any is flagged is at most {alpha:g}). Diamonds: a site identical "
        "to another client's (a copy); squares: a site the precision cap reduced.</p>"
    )
    odd = table[table["flagged"] | table.get("duplicate", False) | table.get("capped", False)]
    if len(odd):
        text += '<p class="warn">Check these clients\' data, or refit without them:</p>'
        text += _table(odd)
    else:
        text += '<p class="ok">No client stands apart.</p>'
    return "<h2>Client conflict</h2>" + _img(res.path) + text


def _calibration(dt, figures: Path) -> str | None:
    """Reliability diagram on held-out rows for a binary target (posterior predictive mean)."""
    if "posterior_predictive" not in dt.children:
        return None
    pp = dt["posterior_predictive"].to_dataset()
    name = next(iter(pp.data_vars))
    observed: Any = dt["observed_data"].to_dataset().get(f"{name}_test")
    if observed is None:
        return None
    y = np.asarray(observed)
    if not np.isin(np.unique(y), [0, 1]).all():
        return None
    p = pp[name].mean(("chain", "draw")).to_numpy()
    res = plots.plot_calibration(p, y, path=figures / "calibration.png")
    return (
        f"<h2>Calibration on held-out rows</h2><p>Expected calibration error "
        f"{res.extra['ece']:.3f} over {res.extra['n']} rows.</p>" + _img(res.path)
    )
