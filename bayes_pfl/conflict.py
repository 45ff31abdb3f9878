r"""Which clients stand apart: a leave-one-client-out conflict score for every client.

For a federated fit with sites over client effects (EP, one-shot, VI), client ``k``'s
site ``t_k(z) ∝ exp(-z'Λz/2 + η'z)`` summarizes its own data about its effects ``z``
(and the shared parameters its likelihood reads), and its *cavity* ``N(m_c, C_c)`` is
what every other client says about ``z`` through the population: the server's global
draws reweighted by ``1 / Z_k(phi)`` (:func:`bayes_pfl.algorithms.effect_ep.cavities`).
If the client belongs to the population, its data's estimate ``Λ⁻¹η`` is a draw from
``N(m_c, C_c + Λ⁻¹)``; in natural parameters, whatever the rank of ``Λ``,

.. math::

    s = η - Λ m_c \sim \mathcal N(0,\ Λ C_c Λ + Λ), \qquad
    X^2 = s' (Λ C_c Λ + Λ)^{+} s \sim \chi^2_{\operatorname{rank} Λ},

the cross-validatory mixed predictive check of Marshall & Spiegelhalter (2007) and the
conflict p-value of Presanis et al. (2013), with Gaussian summaries in place of their
samples. A small p-value says the client's data are surprising given everyone else's:
a faulty or dishonest client, or one whose data really come from elsewhere.

**Threshold.** A client is flagged when its p-value is below ``alpha / K`` (Bonferroni,
``alpha = 0.05`` by default): with ``K`` clients that all belong, the chance that any is
flagged is at most ``alpha``. The score ranks clients whatever the threshold.

The score is as good as the Gaussian summaries: a site fitted to few binary rows is an
approximation of the client's evidence, so p-values of such clients are approximate.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

__all__ = [
    "ConflictWarning",
    "client_conflict",
    "conflict_scores",
    "conflict_table",
    "duplicate_sites",
    "flagged_clients",
    "refit_without_flagged",
]


class ConflictWarning(UserWarning):
    """Clients whose data conflict with the rest of the federation."""


def conflict_scores(
    site_precision: np.ndarray,
    site_shift: np.ndarray,
    cavity_mean: np.ndarray,
    cavity_cov: np.ndarray,
    *,
    rtol: float = 1e-9,
) -> tuple[np.ndarray, np.ndarray]:
    """``(X^2 [K], degrees of freedom [K])`` of sites ``(Λ_k, η_k)`` against cavities
    ``N(m_k, C_k)`` (arrays with a leading client axis); see the module docstring."""
    lam = np.asarray(site_precision, float)
    eta = np.asarray(site_shift, float)
    m = np.asarray(cavity_mean, float)
    c = np.asarray(cavity_cov, float)
    chi2 = np.empty(lam.shape[0])
    dof = np.empty(lam.shape[0], dtype=int)
    for k in range(lam.shape[0]):
        s = eta[k] - lam[k] @ m[k]
        v = lam[k] @ c[k] @ lam[k] + lam[k]
        v = 0.5 * (v + v.T)
        w, vec = np.linalg.eigh(v)
        keep = w > rtol * max(float(w.max()), 0.0)
        proj = vec[:, keep].T @ s
        chi2[k] = float(np.sum(proj**2 / w[keep]))
        dof[k] = int(keep.sum())
    return chi2, dof


def client_conflict(result, *, alpha: float = 0.05, warn: bool = True) -> pd.DataFrame:
    """Conflict score of every client of a federated fit with sites over client effects.

    Parameters
    ----------
    result : FitResult
        From :func:`~bayes_pfl.federated.fit_ep`, ``fit_one_shot`` or
        :func:`~bayes_pfl.federated_vi.fit_vi` (sites over client effects, the default).
    alpha : float
        Family-wise level of the flag: a client is flagged when its p-value is below
        ``alpha / K``.
    warn : bool
        Warn (:class:`ConflictWarning`) naming the flagged clients.

    Returns
    -------
    pandas.DataFrame
        Index ``client`` (the user's labels); columns ``chi2``, ``df``, ``p_value``,
        ``flagged``; sorted as the clients are.

    Raises
    ------
    ValueError
        The fit has no sites over client effects (NUTS, or sites over global parameters).
    """
    from scipy.stats import chi2 as chi2_dist

    from bayes_pfl import gaussian as gf
    from bayes_pfl.algorithms.effect_ep import cavities
    from bayes_pfl.population import gaussian_population

    state = getattr(result, "state", {}) or {}
    sites = state.get("sites")
    draws = state.get("u_draws")
    if sites is None or draws is None or not hasattr(sites, "precision"):
        raise ValueError(
            f"conflict scores need a federated fit with sites over client effects (EP, "
            f"one-shot or VI, sites='effects'); this is {getattr(result, 'method', result)!r}"
        )
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    pop = gaussian_population(result.model)
    flat = np.asarray(draws).reshape(-1, np.asarray(draws).shape[-1])
    cav, _ = cavities(pop, flat, sites, state.get("covariates"))  # own population (#18)
    mean, cov = gf.to_moments(cav)
    chi2, dof = conflict_scores(sites.precision, sites.shift, mean, cov)
    p = np.where(dof > 0, chi2_dist.sf(chi2, np.maximum(dof, 1)), 1.0)
    k = len(result.clients)
    table = pd.DataFrame(
        {"chi2": chi2, "df": dof, "p_value": p, "flagged": p < alpha / k},
        index=pd.Index(list(result.clients), name="client"),
    )
    if warn and table["flagged"].any():
        named = ", ".join(
            f"{c!r} (p {row.p_value:.2g})" for c, row in table[table.flagged].iterrows()
        )
        warnings.warn(
            f"client(s) whose data conflict with the rest of the federation (leave-one-client-"
            f"out p-value below {alpha}/{k}): {named}; check their data, or refit without them",
            ConflictWarning,
            stacklevel=2,
        )
    return table


def duplicate_sites(result, *, rtol: float = 1e-6) -> list:
    """Clients whose sites are identical (to ``rtol``) to another client's: copies, or
    identical rows.

    Two clients with different rows do not produce the same site to six digits; a
    client that sends another's site (a sybil counting one client's data twice) does.
    The conflict score cannot see a copy of an ordinary client, this check can. So do
    two honest clients whose rows are identical, which is likely where clients hold a
    few rows of discrete features (two communities of the bundled ``guimmun`` data, two
    children each, send the same site): the server cannot tell these apart from a copy,
    so a group found here is a reason to check, not proof of a sybil. Returns the labels
    of every client in a group of two or more identical sites (the server cannot tell the
    original from the copies), in client order.
    """
    state = getattr(result, "state", {}) or {}
    sites = state.get("sites")
    if sites is None or not hasattr(sites, "precision"):
        raise ValueError(
            "duplicate sites need a federated fit with sites over client effects (EP, "
            f"one-shot or VI, sites='effects'); this is {getattr(result, 'method', result)!r}"
        )
    k = np.asarray(sites.shift).shape[0]
    flat = np.concatenate(
        [np.asarray(sites.precision).reshape(k, -1), np.asarray(sites.shift).reshape(k, -1)],
        axis=1,
    )
    scale = np.maximum(np.abs(flat).max(axis=1, keepdims=True), 1e-300)
    dup = np.zeros(k, bool)
    for i in range(k):
        diff = np.abs(flat[i + 1 :] - flat[i]).max(axis=1) <= rtol * np.maximum(
            scale[i, 0], scale[i + 1 :, 0]
        )
        if diff.any():
            dup[i] = True
            dup[i + 1 :] |= diff
    return [c for c, d in zip(result.clients, dup, strict=True) if d]


def conflict_table(result, *, alpha: float = 0.05) -> pd.DataFrame:
    """Everything the server can say about each client's message, one row per client.

    :func:`client_conflict`'s columns (``chi2``, ``df``, ``p_value``, ``flagged``), and
    ``duplicate`` (:func:`duplicate_sites`) and ``capped`` (the precision cap reduced the
    client's site; ``fit_ep(precision_cap=...)``). What ``bayes-pfl fit`` saves as
    ``conflict.csv`` and ``bayes-pfl report`` plots.
    """
    table = client_conflict(result, alpha=alpha, warn=False)
    dup = set(duplicate_sites(result))
    table["duplicate"] = [c in dup for c in table.index]
    capped = result.state.get("capped")
    table["capped"] = np.asarray(capped, bool) if capped is not None else np.zeros(len(table), bool)
    return table


def flagged_clients(result, *, alpha: float = 0.05) -> list:
    """The clients a server has reason to leave out: flagged by the conflict score, sending
    a copy of another's site, or capped (claiming more than their rows could carry).

    The remedy they call for is to fit again without them (``data.subset``); their own
    rows still give them a personalized posterior from the refitted population
    (:func:`bayes_pfl.posterior.cold_start` with their rows). Flag under the Gaussian
    population: it is the null the score tests, and a Student-t population, which by
    design finds outliers less surprising, hides them from it.
    """
    table = conflict_table(result, alpha=alpha)
    odd = table["flagged"] | table["duplicate"] | table["capped"]
    return [c for c, hit in zip(table.index, odd, strict=True) if hit]


def refit_without_flagged(result, data, fit, *, alpha: float = 0.05):
    """Fit again without the clients :func:`flagged_clients` names in ``result``.

    Parameters
    ----------
    result : FitResult
        A federated fit with sites over client effects; flag under the Gaussian
        population (see :func:`flagged_clients`).
    data : FederatedData
        The data ``result`` was fitted to.
    fit : callable
        ``fit(data) -> FitResult``, e.g. ``lambda d: fit_ep(model.with_population(4), d,
        precision_cap=10)``.

    Returns
    -------
    (FitResult, FederatedData, list)
        The refit (``result`` itself when nobody is flagged), the data it used, and the
        excluded clients (also in the refit's ``info["excluded_clients"]``). An excluded
        client still gets a personalized posterior from its own rows:
        ``cold_start(refit, x_k, y_k)``.
    """
    flagged = flagged_clients(result, alpha=alpha)
    if not flagged:
        return result, data, []
    keep = [c for c in data.clients if c not in set(flagged)]
    if len(keep) < 2:
        raise ValueError(
            f"{len(flagged)} of {len(data.clients)} clients are flagged; fewer than two "
            "would remain: check the data before excluding anyone"
        )
    data = data.subset(keep)
    refit = fit(data)
    refit.info["excluded_clients"] = [str(c) for c in flagged]
    return refit, data, flagged
