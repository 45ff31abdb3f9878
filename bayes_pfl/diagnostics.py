"""Convergence diagnostics of a fit: R-hat, bulk ESS, divergences and the federated rounds.

:func:`diagnostics` takes the ArviZ 1.x :class:`xarray.DataTree` of a fit (or the
:class:`~bayes_pfl.results.FitResult`) and returns the figures, warning
(:class:`DiagnosticsWarning`) with words that name what failed: parameters over the
R-hat bound or under the ESS bound, divergences, EP/VI rounds that did not converge,
clients whose messages were rejected or whose local inference failed. The command
line prints every warning and ``--strict`` turns them into exit code 3.

Examples
--------
>>> dt = fit_ep(model, data).to_datatree(data)  # doctest: +SKIP
>>> diagnostics(dt)["max_r_hat"]  # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from bayes_pfl.inspection import CLIENT_DIM, as_datatree, posterior_group
from bayes_pfl.results import FitResult

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["DiagnosticsWarning", "TILTED_ESS_MIN", "diagnostics"]


class DiagnosticsWarning(UserWarning):
    """A fit fails a convergence check (:func:`diagnostics`)."""


def _finite_max(values) -> float:
    a = np.asarray(values, float)
    return float(np.max(a[np.isfinite(a)])) if np.isfinite(a).any() else float("nan")


TILTED_ESS_MIN = 100


def _effect_sites(keys) -> bool:
    """Whether a history (its keys) is EP's or VI's over client effects."""
    return "global_mean_change" in keys


def _effect_summary(rounds: int, col) -> dict[str, Any]:
    """What an effects history adds: the global posterior's changes, the tilted importance
    sampling's effective sizes and Laplace fallbacks, the server's leave-one-out weights
    and divergences (``col(name)``: a per-round array, NaN where not recorded)."""
    fallback = col("client_laplace_fallback_count")
    div = col("server_divergences")
    rnums = np.arange(1, rounds + 1)
    return {
        "sites": "effects",
        "last_global_mean_change": float(col("global_mean_change")[-1]) if rounds else np.nan,
        "last_global_sd_change": float(col("global_sd_change")[-1]) if rounds else np.nan,
        "tilted_is_ess_min": -_finite_max(-col("client_ess_min")),
        "laplace_fallbacks": {
            int(r): int(n) for r, n in zip(rnums, fallback, strict=True) if np.isfinite(n) and n
        },
        "min_loo_ess": -_finite_max(-col("min_loo_ess")),
        "server_divergences": int(np.nansum(div)) if np.isfinite(div).any() else None,
        # no NUTS runs on the clients
        "tilted_rhat_max": float("nan"),
        "tilted_ess_min": float("nan"),
    }


def _float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _history_from_result(history: list[dict[str, Any]], n_clients: int) -> dict[str, Any]:
    rounds = len(history)
    failed: dict[str, list[int]] = {}
    rejected: dict[str, list[int]] = {}
    for r, h in enumerate(history, start=1):
        for lab in h.get("failed", []) or []:
            failed.setdefault(str(lab), []).append(r)
        for lab in h.get("rejected", []) or []:
            rejected.setdefault(str(lab), []).append(r)
    last = history[-1]
    rhat = [h.get("client_rhat_max", np.nan) for h in history]
    ess = [h.get("client_ess_min", np.nan) for h in history]
    out = {
        "sites": "global",
        "tilted_rhat_max": _finite_max(rhat),
        "tilted_ess_min": -_finite_max(-np.asarray(ess, float)),
        "rounds": rounds,
        "last_mean_change": float(last.get("mean_change", np.nan)),
        "last_sd_change": float(last.get("sd_change", np.nan)),
        "converged": bool(last.get("converged", False)),
        "rounds_with_rejected": sorted({r for rs in rejected.values() for r in rs}),
        "rounds_with_failed": sorted({r for rs in failed.values() for r in rs}),
        "rejected_clients": rejected,
        "failed_clients": failed,
    }
    if any(h.get("sites") == "effects" or _effect_sites(h) for h in history):

        def col(name):
            return np.asarray([_float(h.get(name)) for h in history], float)

        out.update(_effect_summary(rounds, col))
    return out


def _history_from_group(ds: xr.Dataset, n_clients: int) -> dict[str, Any]:
    rounds = int(ds.sizes.get("round", 0))

    def col(name):
        return np.asarray(ds[name].values, float) if name in ds else np.full(rounds, np.nan)

    n_rej = col("n_rejected")
    ok = col("client_ok_count")
    rnums = np.arange(1, rounds + 1)
    out = {
        "sites": "global",
        "tilted_rhat_max": _finite_max(col("client_rhat_max")),
        "tilted_ess_min": -_finite_max(-col("client_ess_min")),
        "rounds": rounds,
        "last_mean_change": float(col("mean_change")[-1]) if rounds else np.nan,
        "last_sd_change": float(col("sd_change")[-1]) if rounds else np.nan,
        "converged": bool(rounds and col("converged")[-1] == 1),
        "rounds_with_rejected": [int(r) for r in rnums[n_rej > 0]],
        # without the FitResult only counts are known: a client whose local inference did
        # not succeed (rejected ones included)
        "rounds_with_failed": [int(r) for r in rnums[ok < n_clients]],
        "rejected_clients": {},
        "failed_clients": {},
    }
    if _effect_sites(ds.data_vars):
        out.update(_effect_summary(rounds, col))
    return out


def diagnostics(
    fit,
    *,
    r_hat_max: float = 1.01,
    ess_min: float = 400,
    history: list[dict[str, Any]] | None = None,
    summary: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """Convergence checks of a fit, with a warning for each check that fails.

    Parameters
    ----------
    fit : xarray.DataTree or FitResult
        The fit. Pass the :class:`~bayes_pfl.results.FitResult` of a federated
        fit to have the clients whose local inference failed named: the
        DataTree's ``fit_history`` keeps only numeric columns (counts).
    r_hat_max : float
        A parameter element fails when its rank-normalized split R-hat exceeds this.
    ess_min : float
        ... or when its bulk effective sample size is below this.
    history : list of dict, optional
        The fit's round history (``FitResult.history``, or ``run.json``'s
        ``"history"`` of a saved fit) when ``fit`` is a DataTree: it names the
        clients that failed or were rejected, which the DataTree does not keep.
    summary : pandas.DataFrame, optional
        The fit's ArviZ summary of the posterior group (columns ``r_hat``, ``ess_bulk``,
        ``ess_tail``; e.g. a saved fit's ``summary.csv``), used instead of computing it
        again: on a large federation the summary is most of this function's time.

    Returns
    -------
    dict
        ``max_r_hat``, ``min_ess_bulk``, ``min_ess_tail``; ``divergences`` (sum of
        ``sample_stats.diverging``, ``None`` without it); ``failing``: the parameter
        elements (``theta[A]``) failing a threshold; ``history`` (``None`` for a fit
        without rounds): ``rounds``, ``last_mean_change``, ``last_sd_change``,
        ``converged``, ``rounds_with_rejected``, ``rounds_with_failed``,
        ``tilted_rhat_max`` and ``tilted_ess_min`` (the worst split R-hat and ESS of the
        clients' tilted NUTS runs over all rounds; NaN for Laplace), ``sites``
        (``"effects"`` or ``"global"``), and (from a FitResult) ``rejected_clients`` and
        ``failed_clients``, each ``{label: [rounds]}`` (rounds numbered 1, 2, ... over
        the whole history). With sites over client effects, also
        ``last_global_mean_change`` and ``last_global_sd_change`` (the global
        posterior's; ``last_mean_change``/``last_sd_change`` are the clients'
        marginals'), ``tilted_is_ess_min`` (the smallest effective size of the clients'
        tilted importance sampling), ``laplace_fallbacks`` (``{round: clients}`` whose
        tilted moments fell back to the Laplace approximation), ``min_loo_ess`` (of the
        server's leave-one-client-out weights) and ``server_divergences`` (of the
        server's NUTS runs over the rounds); ``conflict`` (a FitResult with sites over
        client effects; else ``None``): :func:`bayes_pfl.conflict.client_conflict`'s
        table; ``capped``: the clients whose site the precision cap reduced in their last
        used round (EP with ``precision_cap``; else empty); ``duplicates``: clients whose
        sites are identical (copies, or identical rows) (:func:`bayes_pfl.conflict.duplicate_sites`);
        ``ok``: whether nothing was flagged.

    Warns
    -----
    DiagnosticsWarning
        Naming the failing parameters; the number of divergent transitions; EP
        (or VI over client effects) that did not converge; clients whose messages
        were rejected; clients whose local inference failed in a round after the
        first, or in every round (a failure in round 1 alone is expected of clients
        without a local mode, e.g. a single row, and is then made good by later
        rounds); with sites over client effects, divergent transitions of the
        server's NUTS runs, and clients whose tilted moments fell back to the
        Laplace approximation in the last round; clients whose data conflict with the
        rest (:mod:`bayes_pfl.conflict`); clients whose sites the precision cap bound.
    """
    import arviz as az

    history_list = fit.history if isinstance(fit, FitResult) else history
    dt = as_datatree(fit)
    post = posterior_group(dt)
    n_clients = int(post.sizes.get(CLIENT_DIM, 0))
    summ = az.summary(dt, kind="diagnostics", round_to="none") if summary is None else summary
    missing = {"r_hat", "ess_bulk", "ess_tail"} - set(summ.columns)
    if missing:
        raise ValueError(f"summary lacks the column(s) {sorted(missing)} diagnostics reads")
    r_hat = summ["r_hat"].to_numpy(float)
    ess_bulk = summ["ess_bulk"].to_numpy(float)
    bad = (r_hat > r_hat_max) | (ess_bulk < ess_min)
    failing = [str(i) for i in summ.index[bad]]
    divergences = None
    if "sample_stats" in dt.children and "diverging" in dt["sample_stats"].data_vars:
        divergences = int(np.asarray(dt["sample_stats"]["diverging"].values).sum())

    history = None
    if history_list:
        history = _history_from_result(history_list, n_clients)
    elif "fit_history" in dt.children:
        history = _history_from_group(dt["fit_history"].to_dataset(), n_clients)

    def _nan_or(f, a):
        return float(f(a)) if np.isfinite(a).any() else float("nan")

    out = {
        "max_r_hat": _nan_or(np.nanmax, r_hat),
        "min_ess_bulk": _nan_or(np.nanmin, ess_bulk),
        "min_ess_tail": _nan_or(np.nanmin, summ["ess_tail"].to_numpy(float)),
        "divergences": divergences,
        "failing": failing,
        "r_hat_max": r_hat_max,
        "ess_min": ess_min,
        "history": history,
    }

    messages = []
    if failing:
        worst = summ.loc[bad].assign(
            score=lambda d: np.maximum(d["r_hat"] / r_hat_max, ess_min / d["ess_bulk"])
        )
        shown = ", ".join(
            f"{i} (r_hat {row.r_hat:.3f}, ess_bulk {row.ess_bulk:.0f})"
            for i, row in worst.sort_values("score", ascending=False).head(10).iterrows()
        )
        more = f", ... ({len(failing) - 10} more)" if len(failing) > 10 else ""
        messages.append(
            f"{len(failing)} parameter(s) fail r_hat <= {r_hat_max} or ess_bulk >= {ess_min}: "
            f"{shown}{more}; run longer chains or reparameterize"
        )
    if divergences:
        messages.append(
            f"{divergences} divergent transition(s); raise target_accept_prob or reparameterize"
        )
    if history is not None:
        method = str(dt.attrs.get("method", ""))
        effects = history["sites"] == "effects"
        if effects and method in ("ep", "vi") and not history["converged"]:
            messages.append(
                f"{method.upper()} did not converge in {history['rounds']} round(s) (last "
                f"change of the clients' marginals: mean {history['last_mean_change']:.3g} "
                f"sd, log sd {history['last_sd_change']:.3g}; of the global posterior: "
                f"mean {history['last_global_mean_change']:.3g} sd, log sd "
                f"{history['last_global_sd_change']:.3g}); raise rounds or lower damping"
            )
        elif method == "ep" and not history["converged"]:
            messages.append(
                f"EP did not converge in {history['rounds']} round(s) (last mean change "
                f"{history['last_mean_change']:.3g}); raise rounds or lower damping"
            )
        if effects and history["server_divergences"]:
            messages.append(
                f"{history['server_divergences']} divergent transition(s) in the server's "
                "NUTS runs over the rounds: the cavities may be off; raise its warm-up "
                "(fit_ep's effect_options={'server_warmup': ...})"
            )
        last_fallbacks = history.get("laplace_fallbacks", {}).get(history["rounds"], 0)
        if effects and method != "vi" and last_fallbacks:
            messages.append(
                f"the tilted moments of {last_fallbacks} client(s) fell back to the Laplace "
                f"approximation in the last round (importance weights too uneven: smallest "
                f"effective size {history['tilted_is_ess_min']:.0f}); raise the points "
                "(fit_ep's effect_options={'tilted_points': ...})"
            )
        if history["tilted_rhat_max"] > r_hat_max or history["tilted_ess_min"] < TILTED_ESS_MIN:
            messages.append(
                f"clients' tilted NUTS runs: max split R-hat {history['tilted_rhat_max']:.3f}, "
                f"min ESS {history['tilted_ess_min']:.0f} (want <= {r_hat_max} and >= "
                f"{TILTED_ESS_MIN}); raise nuts_warmup/nuts_samples"
            )
        if history["rejected_clients"]:
            messages.append(
                "messages rejected from client(s) "
                + ", ".join(
                    f"{lab!r} (rounds {r})" for lab, r in history["rejected_clients"].items()
                )
            )
        elif history["rounds_with_rejected"]:
            messages.append(f"messages rejected in rounds {history['rounds_with_rejected']}")
        flagged = {
            lab: r
            for lab, r in history["failed_clients"].items()
            if any(x > 1 for x in r) or len(r) == history["rounds"]
        }
        if flagged:
            messages.append(
                "local inference failed on client(s) "
                + ", ".join(f"{lab!r} (rounds {r})" for lab, r in flagged.items())
                + "; their previous contribution was kept (none if it failed in every round)"
            )
        elif not history["failed_clients"] and [r for r in history["rounds_with_failed"] if r > 1]:
            messages.append(
                "local inference failed on some client(s) in rounds "
                f"{[r for r in history['rounds_with_failed'] if r > 1]}; pass the FitResult to "
                "diagnostics() (or history=, run.json's) to have them named"
            )
    out["capped"] = []
    if isinstance(fit, FitResult) and fit.state.get("capped") is not None:
        capped = np.asarray(fit.state["capped"], bool)
        out["capped"] = [c for c, hit in zip(fit.clients, capped, strict=True) if hit]
        if out["capped"]:
            messages.append(
                "the precision cap bound on the site(s) of client(s) "
                + ", ".join(repr(c) for c in out["capped"])
                + ": they claimed more information than their declared rows could carry "
                "(precision_cap); their sites were reduced to the cap"
            )
    out["conflict"] = None
    out["duplicates"] = []
    if isinstance(fit, FitResult) and hasattr(fit.state.get("sites"), "precision"):
        from bayes_pfl.conflict import client_conflict, duplicate_sites

        table = client_conflict(fit, warn=False)
        out["conflict"] = table
        out["duplicates"] = duplicate_sites(fit)
        if out["duplicates"]:
            messages.append(
                "client(s) sent identical sites: "
                + ", ".join(repr(c) for c in out["duplicates"])
                + " (copies of one another, one client's data counted more than once, or "
                "clients whose rows are identical: likely only for clients with a few rows "
                "of discrete features; check before leaving any out)"
            )
        if table["flagged"].any():
            messages.append(
                "client(s) whose data conflict with the rest of the federation (leave-one-"
                f"client-out p-value below 0.05/{len(table)}): "
                + ", ".join(
                    f"{c!r} (p {r.p_value:.2g})" for c, r in table[table.flagged].iterrows()
                )
                + "; check their data (bayes_pfl.conflict.client_conflict)"
            )
    for msg in messages:
        warnings.warn(msg, DiagnosticsWarning, stacklevel=2)
    out["ok"] = not messages
    return out


# ---------------------------------------------------------------------------
# LOO by client
