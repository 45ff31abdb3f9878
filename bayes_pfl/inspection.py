"""Look inside a fit: shrinkage per client, fit-to-fit agreement, diagnostics, LOO per client.

Every function takes the ArviZ 1.x :class:`xarray.DataTree` of a fit
(:meth:`~bayes_pfl.results.FitResult.to_datatree`) or the
:class:`~bayes_pfl.results.FitResult` itself:

* :func:`shrinkage_table`: for every client, the no-pooling (local) estimate of
  its parameter, the partially pooled (personalized) posterior and the
  population mean, and how far partial pooling moved the estimate from local
  toward global (:func:`local_estimates` computes the no-pooling estimates);
* :func:`agreement`: element-wise agreement of two fits of the same model and data
  (a federated fit against the centralized NUTS reference):
  ``z = |mean_other - mean_ref| / sd_ref`` and ``sd_other / sd_ref``;
* :func:`loo_by_client`: PSIS-LOO of each client's observations.

:func:`as_datatree`, :func:`posterior_group`, :func:`client_vars` and
:func:`default_client_var` are the small accessors these share (and
:mod:`bayes_pfl.plots` and :mod:`bayes_pfl.report` use).

Examples
--------
>>> from bayes_pfl import FederatedData, fit_nuts, load  # doctest: +SKIP
>>> from bayes_pfl.models import eight_schools  # doctest: +SKIP
>>> data = FederatedData.from_pandas(load("eight_schools"), client_col="school",
...                                  target="y", features=["sigma"])  # doctest: +SKIP
>>> dt = fit_nuts(eight_schools(), data).to_datatree(data)  # doctest: +SKIP
>>> shrinkage_table(dt, data)  # doctest: +SKIP
>>> loo_by_client(dt).table  # doctest: +SKIP
"""

from __future__ import annotations

import math
import warnings
from statistics import NormalDist
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import xarray as xr

from bayes_pfl.models import INTERCEPT
from bayes_pfl.results import TERM_SUFFIX, FitResult

__all__ = [
    "ClientLoo",
    "ParetoKWarning",
    "agreement",
    "as_datatree",
    "client_vars",
    "default_client_var",
    "local_estimates",
    "loo_by_client",
    "population_means",
    "posterior_group",
    "shrinkage_table",
    "term_labels",
]

SAMPLE_DIMS = ("chain", "draw")
CLIENT_DIM = "client"
TERM = "term"
"""The level of the shrinkage table naming a labelled coefficient (``Intercept``, ``age``)."""

# names of a non-centered client variable's standard-normal companion: ``alpha_raw`` -> ``alpha``
_RAW_SUFFIXES = ("_raw", "_trans", "_tilde", "_std", "_z", "_offset")
_SECONDARY = ("x_raw", "x_m", "x_lsd", "g", "log_sigma_y")
"""Client variables of a GLM's covariate distributions, missingness effects and noise
(:mod:`bayes_pfl.models.covariates`): the default client variable is the coefficients."""
# Pareto-k messages of arviz that loo_by_client replaces by one naming the clients
_ARVIZ_LOO_WARNINGS = (
    "Estimated shape parameter of Pareto distribution",
    "The point-wise LOO is the same with the sum LOO",
)


class ParetoKWarning(UserWarning):
    """PSIS-LOO is unreliable for some clients' observations (:func:`loo_by_client`)."""


# ---------------------------------------------------------------------------
# the fit's posterior and its client variables (also used by bayes_pfl.plots and report)


def as_datatree(fit, data=None, *, log_likelihood: bool = False) -> xr.DataTree:
    """The DataTree of ``fit`` (a DataTree, or a FitResult converted on the fly)."""
    if isinstance(fit, FitResult):
        return fit.to_datatree(data, log_likelihood=log_likelihood)
    if isinstance(fit, xr.DataTree):
        return fit
    raise TypeError(f"expected an xarray.DataTree or a FitResult, got {type(fit).__name__}")


def posterior_group(dt: xr.DataTree) -> xr.Dataset:
    """The ``posterior`` group of ``dt`` as a Dataset (ValueError without one)."""
    if "posterior" not in dt.children:
        raise ValueError("the DataTree has no posterior group")
    return dt["posterior"].to_dataset()


def client_vars(post: xr.Dataset) -> list[str]:
    """Names of the posterior's client variables (those with a ``client`` dimension)."""
    return [str(n) for n, v in post.data_vars.items() if CLIENT_DIM in v.dims]


def default_client_var(post: xr.Dataset) -> str:
    """The centered client variable: the one without a ``_raw``-style companion."""
    names = client_vars(post)
    if not names:
        raise ValueError("the posterior has no client variable (no 'client' dimension)")
    if len(names) == 1:
        return names[0]
    raw = {n for n in names for s in _RAW_SUFFIXES if n.endswith(s) and n[: -len(s)] in names}
    left = [n for n in names if n not in raw]
    if len(left) > 1:
        left = [n for n in left if n not in _SECONDARY] or left
    if len(left) == 1:
        return left[0]
    raise ValueError(f"several client variables {names}: choose one with var=")


def _population_var(post: xr.Dataset, var: str) -> str:
    for name in (f"mu_{var}", "mu"):
        if name in post.data_vars and CLIENT_DIM not in post[name].dims:
            return name
    raise ValueError(
        f"no population mean found for {var!r} (looked for 'mu_{var}' and 'mu'); "
        "pass population= (a variable name or a number)"
    )


def _labels(post: xr.Dataset) -> list:
    return [v.item() if isinstance(v, np.generic) else v for v in post[CLIENT_DIM].values]


def _element_dims(da: xr.DataArray) -> list[str]:
    return [d for d in da.dims if d not in (*SAMPLE_DIMS, CLIENT_DIM)]


def _client_draws(post: xr.Dataset, var: str) -> np.ndarray:
    """Draws of client variable ``var`` as ``(S, K, E)`` (E elements per client)."""
    if var not in post.data_vars:
        raise ValueError(f"variable {var!r} is not in the posterior ({list(post.data_vars)})")
    da = post[var]
    if CLIENT_DIM not in da.dims:
        raise ValueError(f"{var!r} is not a client variable (no 'client' dimension)")
    da = da.transpose(*SAMPLE_DIMS, CLIENT_DIM, *_element_dims(da))
    vals = np.asarray(da.values, dtype=float)
    s = vals.shape[0] * vals.shape[1]
    return vals.reshape(s, vals.shape[2], -1)


def _table_index(post: xr.Dataset, var: str) -> pd.Index:
    """Client labels, or ``(client, term)`` pairs for a labelled vector client variable
    (``(client, element)`` for an unlabelled one)."""
    da = post[var]
    clients = _labels(post)
    edims = _element_dims(da)
    if not edims:
        return pd.Index(clients, name=CLIENT_DIM)
    coords = [
        [v.item() if isinstance(v, np.generic) else v for v in da[d].values]
        if d in da.coords
        else list(range(da.sizes[d]))
        for d in edims
    ]
    elements = coords[0] if len(coords) == 1 else list(pd.MultiIndex.from_product(coords))
    level = TERM if _term_labels(da) is not None else "element"
    return pd.MultiIndex.from_product([clients, elements], names=[CLIENT_DIM, level])


def _term_labels(da: xr.DataArray) -> list[str] | None:
    """The labels of ``da``'s one element dimension when the model labels it (``b_term``)."""
    edims = _element_dims(da)
    if len(edims) == 1 and edims[0].endswith(TERM_SUFFIX) and edims[0] in da.coords:
        return [str(v) for v in da[edims[0]].values]
    return None


def term_labels(fit, var: str) -> list[str] | None:
    """The term labels of a client variable (``["Intercept", "age"]`` for a GLM's ``b``),
    ``None`` when it is a scalar or its entries are not labelled."""
    post = posterior_group(as_datatree(fit))
    if var not in post.data_vars:
        raise ValueError(f"variable {var!r} is not in the posterior ({list(post.data_vars)})")
    return _term_labels(post[var])


def population_means(post: xr.Dataset, var: str, population: str) -> np.ndarray:
    """Posterior means of ``population`` for each element of client variable ``var``.

    Labelled variables are matched term by term: a term of ``var`` that ``population``
    does not label has population mean 0 (a term that varies around 0, without a
    common effect: lme4's ``(0 + x | g)``). Otherwise ``population`` is used as is (a
    scalar, or one entry per element).
    """
    pop = _posterior_mean(post, population)
    terms = _term_labels(post[var]) if var in post.data_vars else None
    pop_terms = _term_labels(post[population])
    if terms is None or pop_terms is None:
        return np.atleast_1d(pop).ravel()
    means = dict(zip(pop_terms, np.atleast_1d(pop).ravel(), strict=True))
    return np.asarray([means.get(t, 0.0) for t in terms], dtype=float)


def _check_clients(post: xr.Dataset, data) -> None:
    fit_labels = [str(c) for c in _labels(post)]
    data_labels = [str(c) for c in data.clients]
    if fit_labels != data_labels:
        raise ValueError(
            f"the fit's clients ({len(fit_labels)}: {fit_labels[:5]}...) are not the data's "
            f"clients ({len(data_labels)}: {data_labels[:5]}...) in the same order"
        )


def _posterior_mean(post: xr.Dataset, name: str) -> np.ndarray:
    if name not in post.data_vars:
        raise ValueError(f"variable {name!r} is not in the posterior ({list(post.data_vars)})")
    return np.asarray(post[name].mean(dim=list(SAMPLE_DIMS)).values, dtype=float)


def _train_rows(data, k: int) -> tuple[np.ndarray, np.ndarray]:
    arr = data.train
    mask = np.asarray(arr.mask[k], bool)
    return np.asarray(arr.x[k], float)[mask], np.asarray(arr.y[k], float)[mask]


# ---------------------------------------------------------------------------
# shrinkage


def _local_arrays(dt: xr.DataTree, data, var: str) -> tuple[np.ndarray, np.ndarray, str]:
    """No-pooling means and standard errors ``(K, E)`` of ``var`` and a description."""
    post = posterior_group(dt)
    _check_clients(post, data)
    model = str(dt.attrs.get("model", ""))
    n_el = _client_draws(post, var).shape[2]
    K = len(data.clients)
    mean = np.full((K, n_el), np.nan)
    se = np.full((K, n_el), np.nan)

    if model == "eight_schools" and var == "theta":
        # y_i ~ N(theta_k, sd_i) with the known sd in the one feature
        for k in range(K):
            x, y = _train_rows(data, k)
            w = 1.0 / x[:, 0] ** 2
            mean[k, 0] = np.sum(w * y) / np.sum(w)
            se[k, 0] = 1.0 / math.sqrt(np.sum(w))
        return mean, se, "precision-weighted mean of y with the known sd (x[:, 0])"

    radon = var == "alpha" and (model == "radon_intercept" or "mu_alpha" in post.data_vars)
    glm = var == "b" and "mu" in post.data_vars
    design = _term_design(post, var, data) if var == "b" else None
    if design is not None and "sigma_y" in post.data_vars:
        return _glm_least_squares(post, data, *design)
    if (radon or glm) and "sigma_y" in post.data_vars:
        sigma = float(_posterior_mean(post, "sigma_y"))
        beta = _posterior_mean(post, "beta") if "beta" in post.data_vars else None
        p = data.n_features
        if beta is not None or n_el == 1:
            if n_el != 1:
                raise NotImplementedError(
                    f"local estimates of a {n_el}-element {var!r} with shared slopes are not "
                    "implemented; pass local="
                )
            for k in range(K):
                x, y = _train_rows(data, k)
                resid = y - (x @ beta if beta is not None else 0.0)
                mean[k, 0] = resid.mean()
                se[k, 0] = sigma / math.sqrt(len(y))
            how = "mean of y - x @ E[beta]" if beta is not None else "mean of y"
            return mean, se, f"{how}, se = E[sigma_y] / sqrt(n)"
        if n_el == 1 + p:
            # varying intercept and slopes: least squares on [1, x] per client
            for k in range(K):
                x, y = _train_rows(data, k)
                fitted = _least_squares(np.column_stack([np.ones(len(y)), x]), y, sigma)
                if fitted is not None:  # else not identified from this client alone: NaN
                    mean[k], se[k] = fitted
            return mean, se, "least squares on [1, x], se from E[sigma_y]"
    raise NotImplementedError(
        f"no built-in no-pooling estimate of {var!r} for model {model or '(unnamed)'!r}: "
        "local estimates are implemented for radon_intercept (alpha), eight_schools (theta) "
        "and the normal GLM (b); pass local= (a DataFrame with columns local_mean and "
        "local_se, indexed like the table)"
    )


def _term_columns(terms: list[str], features: list[str]) -> list[int | None] | None:
    """Column of ``x`` of each term (``None``: the intercept); ``None`` if a term is unknown."""
    cols = {f: j for j, f in enumerate(features)}
    if not all(t == INTERCEPT or t in cols for t in terms):
        return None
    return [None if t == INTERCEPT else cols[t] for t in terms]


def _term_design(post: xr.Dataset, var: str, data):
    """``(varying columns, shared columns, E[beta])`` of a labelled normal GLM, else ``None``."""
    terms = _term_labels(post[var])
    if terms is None:
        return None
    features = [str(f) for f in data.features]
    varying = _term_columns(terms, features)
    if varying is None:
        return None
    shared, beta = [], None
    if "beta" in post.data_vars:
        shared_terms = _term_labels(post["beta"])
        shared = _term_columns(shared_terms, features) if shared_terms is not None else None
        if shared is None:
            return None
        beta = np.atleast_1d(_posterior_mean(post, "beta"))
    return varying, shared, beta


def _columns(x: np.ndarray, cols: list[int | None]) -> np.ndarray:
    return np.column_stack([np.ones(len(x)) if j is None else x[:, j] for j in cols])


def _least_squares(design: np.ndarray, y: np.ndarray, sigma: float):
    """``(coefficients, se)`` of ``y`` on ``design`` with noise sd ``sigma``; ``None`` where
    the client's rows do not identify every coefficient."""
    d = design.shape[1]
    xtx = design.T @ design
    if len(y) < d or np.linalg.matrix_rank(xtx) < d:
        return None
    cov = np.linalg.inv(xtx)
    return cov @ design.T @ y, sigma * np.sqrt(np.diag(cov))


def _glm_least_squares(post, data, varying, shared, beta):
    """No-pooling estimates of a normal GLM's varying coefficients, term by term."""
    sigma = float(_posterior_mean(post, "sigma_y"))
    K, d = len(data.clients), len(varying)
    mean, se = np.full((K, d), np.nan), np.full((K, d), np.nan)
    for k in range(K):
        x, y = _train_rows(data, k)
        if shared:
            y = y - _columns(x, shared) @ beta
        fitted = _least_squares(_columns(x, varying), y, sigma)
        if fitted is not None:  # else not identified from this client alone: NaN
            mean[k], se[k] = fitted
    how = "least squares on the varying terms' columns"
    if shared:
        how += " of y - (common terms) @ E[beta]"
    return mean, se, how + ", se from E[sigma_y]"


def local_estimates(fit, data, var: str | None = None) -> pd.DataFrame:
    """No-pooling estimates of each client's parameter, from the client's rows alone.

    The shared parameters (slopes, the noise sd) are fixed at their posterior means
    under ``fit``; the client's parameter is then estimated from its own training
    rows by least squares:

    ``radon_intercept`` (``alpha``)
        ``mean(log_radon - x @ E[beta])`` over the county's rows,
        standard error ``E[sigma_y] / sqrt(n)``;
    ``eight_schools`` (``theta``)
        ``y`` with standard error the known ``sigma`` (precision-weighted mean of
        the rows when a school has several);
    normal GLM (``b``)
        least squares of ``y - X_common @ E[beta]`` on the varying terms' columns
        ``X`` (a column of ones for ``Intercept``, the feature for the others, matched
        by the terms' labels), standard errors ``E[sigma_y] sqrt(diag((X'X)^-1))``
        (NaN where the client's rows do not identify the coefficients); a varying
        intercept alone gives ``mean(y - x @ E[beta])`` with ``E[sigma_y] / sqrt(n)``.

    Parameters
    ----------
    fit : xarray.DataTree or FitResult
        A fit of one of these models.
    data : FederatedData
        The data it was fitted to (training rows).
    var : str, optional
        The client variable (default: the centered client variable, see
        :func:`shrinkage_table`).

    Returns
    -------
    pandas.DataFrame
        Columns ``local_mean`` and ``local_se``, indexed like :func:`shrinkage_table`.

    Raises
    ------
    NotImplementedError
        For other models or variables; give :func:`shrinkage_table` your own
        estimates with ``local=``.
    """
    dt = as_datatree(fit)
    post = posterior_group(dt)
    var = default_client_var(post) if var is None else var
    mean, se, how = _local_arrays(dt, data, var)
    out = pd.DataFrame(
        {"local_mean": mean.ravel(), "local_se": se.ravel()}, index=_table_index(post, var)
    )
    out.attrs["method"] = how
    return out


def _given_local(local, index: pd.Index, z: float) -> tuple[np.ndarray, ...]:
    if isinstance(local, pd.Series):
        local = local.to_frame("local_mean")
    if not isinstance(local, pd.DataFrame):
        raise TypeError(f"local= must be a pandas DataFrame, got {type(local).__name__}")
    if "local_mean" not in local.columns:
        raise ValueError(f"local= needs a column 'local_mean'; it has {list(local.columns)}")
    missing = index.difference(local.index)
    if len(missing):
        raise ValueError(
            f"local= lacks {len(missing)} row(s) of the table, e.g. {list(missing[:5])}"
        )
    local = local.reindex(index)
    m = local["local_mean"].to_numpy(float)
    if "local_se" in local.columns:
        se = local["local_se"].to_numpy(float)
        return m, m - z * se, m + z * se
    if {"local_lo", "local_hi"} <= set(local.columns):
        return m, local["local_lo"].to_numpy(float), local["local_hi"].to_numpy(float)
    nan = np.full_like(m, np.nan)
    return m, nan, nan


def shrinkage_table(
    fit,
    data,
    *,
    var: str | None = None,
    population: str | float | None = None,
    local: pd.DataFrame | None = None,
    ci_prob: float = 0.9,
) -> pd.DataFrame:
    """How far partial pooling moved each client's estimate from local toward global.

    Parameters
    ----------
    fit : xarray.DataTree or FitResult
        The hierarchical fit (any method).
    data : FederatedData
        The data it was fitted to; ``n`` counts each client's training rows.
    var : str, optional
        Client variable to tabulate. Default: the model's centered client
        variable, i.e. the only client variable, or the one whose non-centered
        companion (``alpha_raw``, ``theta_trans``, ``b_raw``) is also in the
        posterior: ``alpha`` (radon), ``theta`` (eight schools), ``b`` (GLMs).
    population : str or float, optional
        The population mean the clients are pooled toward: a posterior variable
        (its posterior mean is used; a labelled vector is matched to ``var``'s terms
        by label, an unlabelled one must have one entry per element of ``var``) or a
        number. Default: ``mu_<var>`` if present, else ``mu``
        (``mu_alpha`` for radon, ``mu`` for eight schools and the GLMs).
    local : pandas.DataFrame, optional
        Your own no-pooling estimates, indexed like the result, with column
        ``local_mean`` and either ``local_se`` (intervals ``mean ± z se``) or
        ``local_lo`` and ``local_hi``. Default: :func:`local_estimates`.
    ci_prob : float
        Probability of the intervals: equal-tailed posterior quantiles for the
        personalized posterior, normal quantiles ``mean ± z se`` for the local
        estimate.

    Returns
    -------
    pandas.DataFrame
        One row per client (index ``client``, the client labels), or per
        ``(client, term)`` for a vector client variable whose entries the model labels
        (every varying coefficient of a GLM: ``("cleveland", "age")``; ``(client,
        element)`` with positions for an unlabelled one), with columns

        ``n``
            the client's training rows;
        ``local_mean``, ``local_lo``, ``local_hi``
            the no-pooling estimate and its interval;
        ``personal_mean``, ``personal_lo``, ``personal_hi``
            the partially pooled posterior of ``var``: mean and interval;
        ``pooled_mean``
            the population mean (complete pooling), term by term (0 for a term
            that varies around 0, without a mean in ``population``);
        ``shrinkage``
            ``(local_mean - personal_mean) / (local_mean - pooled_mean)``: 0 for no
            pooling, 1 for complete pooling; NaN when ``local_mean == pooled_mean``.

        ``attrs`` records ``var``, ``population``, ``ci_prob`` and how the local
        estimates were made.

    Notes
    -----
    In the Normal-Normal model ``y_ki ~ N(theta_k, sigma)``,
    ``theta_k ~ N(mu, tau)`` with known ``mu``, ``tau`` and ``sigma``, the
    posterior mean is ``(1 - B_k) ybar_k + B_k mu`` with
    ``B_k = (sigma^2 / n_k) / (sigma^2 / n_k + tau^2)``, so ``shrinkage`` is
    exactly ``B_k``: it grows as the client has fewer rows.
    """
    if not 0.0 < ci_prob < 1.0:
        raise ValueError(f"ci_prob must be in (0, 1), got {ci_prob!r}")
    dt = as_datatree(fit)
    post = posterior_group(dt)
    _check_clients(post, data)
    var = default_client_var(post) if var is None else var
    draws = _client_draws(post, var)  # (S, K, E)
    _, K, E = draws.shape
    index = _table_index(post, var)
    z = NormalDist().inv_cdf(0.5 + ci_prob / 2)

    if local is None:
        mean, se, how = _local_arrays(dt, data, var)
        l_mean, l_se = mean.ravel(), se.ravel()
        l_lo, l_hi = l_mean - z * l_se, l_mean + z * l_se
    else:
        l_mean, l_lo, l_hi = _given_local(local, index, z)
        how = "given (local=)"

    if population is None:
        population = _population_var(post, var)
    if isinstance(population, str):
        pop = population_means(post, var, population)
    else:
        pop = np.atleast_1d(np.asarray(population, dtype=float)).ravel()
    if pop.size not in (1, E):
        raise ValueError(
            f"population has {pop.size} elements; {var!r} has {E} per client (give 1 or {E})"
        )
    pooled = np.broadcast_to(pop, (K, E)).ravel()

    q = np.quantile(draws, [0.5 - ci_prob / 2, 0.5 + ci_prob / 2], axis=0)
    p_mean = draws.mean(axis=0).ravel()
    denom = l_mean - pooled
    with np.errstate(divide="ignore", invalid="ignore"):
        shrink = np.where(denom == 0, np.nan, (l_mean - p_mean) / denom)
    out = pd.DataFrame(
        {
            "n": np.repeat(np.asarray(data.n_rows(), dtype=np.int64), E),
            "local_mean": l_mean,
            "local_lo": l_lo,
            "local_hi": l_hi,
            "personal_mean": p_mean,
            "personal_lo": q[0].ravel(),
            "personal_hi": q[1].ravel(),
            "pooled_mean": pooled,
            "shrinkage": shrink,
        },
        index=index,
    )
    out.attrs.update(
        {"var": var, "population": population, "ci_prob": ci_prob, "local_method": how}
    )
    return out


# ---------------------------------------------------------------------------
# fit against fit


def agreement(reference, other, *, var_names: list[str] | None = None) -> pd.DataFrame:
    """Element-wise agreement of two fits of the same model and data.

    Parameters
    ----------
    reference : xarray.DataTree or FitResult
        The reference fit (typically centralized NUTS).
    other : xarray.DataTree or FitResult
        The fit to check (e.g. federated EP).
    var_names : list of str, optional
        Posterior variables to compare. Default: all; then both fits must have
        the same variables.

    Returns
    -------
    pandas.DataFrame
        One row per parameter element, named as in :func:`arviz.summary`
        (``alpha[AITKIN]``, ``beta[0]``), with columns ``mean_ref``, ``sd_ref``,
        ``mean_other``, ``sd_other``, ``z = |mean_other - mean_ref| / sd_ref``,
        ``sd_ratio = sd_other / sd_ref`` and ``mcse_ref`` (Monte Carlo standard
        error of the reference mean). These are the figures of the federated
        accuracy benchmark: ``z`` that Monte Carlo error alone produces is about
        ``sqrt(mcse_ref^2 + mcse_other^2) / sd_ref``.

    Raises
    ------
    ValueError
        When variables are present in only one fit (named in the message) and
        ``var_names`` does not leave them out, or the elements differ (other
        clients, other shapes).
    """
    import arviz as az

    ref_dt, oth_dt = as_datatree(reference), as_datatree(other)
    ref_vars = set(map(str, posterior_group(ref_dt).data_vars))
    oth_vars = set(map(str, posterior_group(oth_dt).data_vars))
    if var_names is None:
        only_ref, only_oth = sorted(ref_vars - oth_vars), sorted(oth_vars - ref_vars)
        if only_ref or only_oth:
            raise ValueError(
                f"the fits have different variables: only in reference {only_ref}, only in "
                f"other {only_oth}; restrict the comparison with var_names="
            )
        var_names = [str(v) for v in posterior_group(ref_dt).data_vars]
    else:
        var_names = [var_names] if isinstance(var_names, str) else list(var_names)
        absent = {
            "reference": [v for v in var_names if v not in ref_vars],
            "other": [v for v in var_names if v not in oth_vars],
        }
        if absent["reference"] or absent["other"]:
            raise ValueError(
                f"var_names not in both fits: missing in reference {absent['reference']}, "
                f"missing in other {absent['other']}"
            )
    ref = az.summary(ref_dt, var_names=var_names, kind="all", round_to="none")
    oth = az.summary(oth_dt, var_names=var_names, kind="stats", round_to="none")
    if list(ref.index) != list(oth.index):
        diff = sorted(set(ref.index) ^ set(oth.index))
        raise ValueError(
            "the fits' parameter elements differ (other clients or shapes?)"
            + (f": {diff[:10]}" if diff else ": same elements in another order")
        )
    m_ref, s_ref = ref["mean"].to_numpy(float), ref["sd"].to_numpy(float)
    m_oth, s_oth = oth["mean"].to_numpy(float), oth["sd"].to_numpy(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.abs(m_oth - m_ref) / s_ref
        ratio = s_oth / s_ref
    return pd.DataFrame(
        {
            "mean_ref": m_ref,
            "sd_ref": s_ref,
            "mean_other": m_oth,
            "sd_other": s_oth,
            "z": z,
            "sd_ratio": ratio,
            "mcse_ref": ref["mcse_mean"].to_numpy(float),
        },
        index=pd.Index([str(i) for i in ref.index], name="parameter"),
    )


# ---------------------------------------------------------------------------
# diagnostics


class ClientLoo(NamedTuple):
    """Result of :func:`loo_by_client`."""

    table: pd.DataFrame
    """One row per client: elpd_loo, se, p_loo, n_obs, max_pareto_k, n_bad_k."""
    total: Any
    """``arviz.loo`` of all observations (an ``ELPDData``), with pointwise values."""


def _reff(post: xr.Dataset, n_samples: int) -> float:
    """Relative efficiency as ``arviz.loo`` computes it by default (mean ESS / draws)."""
    if post.sizes["chain"] == 1:
        return 1.0
    ess = post.azstats.ess(method="mean")
    return float(np.hstack([np.ravel(ess[v].values) for v in ess.data_vars]).mean() / n_samples)


def loo_by_client(fit, *, var_name: str | None = None, k_threshold: float = 0.7) -> ClientLoo:
    """PSIS-LOO of each client's observations, and of all of them.

    LOO leaves out one observation at a time, so the elpd of all observations is
    the sum of the clients' elpds (the same relative efficiency ``reff`` is used
    for every client). A client with a single observation gets the LOO of that
    row (``se`` 0).

    Parameters
    ----------
    fit : xarray.DataTree
        A fit with a ``log_likelihood`` group whose observations carry the
        coordinate ``obs_client``: ``result.to_datatree(data)``.
    var_name : str, optional
        The log-likelihood variable (default: the only one).
    k_threshold : float
        Pareto k above which an observation's LOO estimate is unreliable.

    Returns
    -------
    ClientLoo
        ``table``: one row per client (index ``client``) with columns ``elpd_loo``,
        ``se``, ``p_loo``, ``n_obs``, ``max_pareto_k`` and ``n_bad_k`` (observations
        with k above ``k_threshold``); ``total``: ``arviz.loo`` of all observations.

    Warns
    -----
    ParetoKWarning
        Naming the clients with observations whose Pareto k exceeds ``k_threshold``.
    """
    import arviz as az

    if isinstance(fit, FitResult):
        raise TypeError("loo_by_client needs the log-likelihood: pass result.to_datatree(data)")
    dt = as_datatree(fit)
    if "log_likelihood" not in dt.children:
        raise ValueError(
            "the DataTree has no log_likelihood group: build it with to_datatree(data)"
        )
    ll = dt["log_likelihood"].to_dataset()
    if var_name is None:
        names = list(ll.data_vars)
        if len(names) != 1:
            raise ValueError(f"several log-likelihood variables {names}: choose one with var_name=")
        var_name = str(names[0])
    da = ll[var_name]
    if "obs_client" not in da.coords:
        raise ValueError("the log_likelihood group has no 'obs_client' coordinate")
    obs_dim = da["obs_client"].dims[0]
    post = posterior_group(dt)
    n_samples = int(np.prod([da.sizes[d] for d in SAMPLE_DIMS]))
    reff = _reff(post, n_samples)
    obs_client = np.asarray(da["obs_client"].values)
    labels = _labels(post) if CLIENT_DIM in post.dims else list(pd.unique(obs_client))
    base = xr.DataTree.from_dict({"/log_likelihood": ll[[var_name]]})

    with warnings.catch_warnings():
        for msg in _ARVIZ_LOO_WARNINGS:
            warnings.filterwarnings("ignore", message=msg)
        total = az.loo(base, pointwise=True, var_name=var_name, reff=reff)
        rows = []
        for lab in labels:
            idx = np.flatnonzero(obs_client == np.asarray(lab).astype(obs_client.dtype))
            if idx.size == 0:
                rows.append((np.nan, np.nan, np.nan, 0, np.nan, 0))
                continue
            res = az.loo(base.isel({obs_dim: idx}), pointwise=True, var_name=var_name, reff=reff)
            k = np.asarray(res.pareto_k.values, float)
            rows.append(
                (res.elpd, res.se, res.p, idx.size, float(np.max(k)), int((k > k_threshold).sum()))
            )
    table = pd.DataFrame(
        rows,
        columns=["elpd_loo", "se", "p_loo", "n_obs", "max_pareto_k", "n_bad_k"],
        index=pd.Index(labels, name=CLIENT_DIM),
    )
    table["n_obs"] = table["n_obs"].astype(np.int64)
    table["n_bad_k"] = table["n_bad_k"].astype(np.int64)
    bad = table[table["n_bad_k"] > 0]
    if len(bad):
        shown = ", ".join(
            f"{lab!r} ({int(r.n_bad_k)} of {int(r.n_obs)}, max k {r.max_pareto_k:.2f})"
            for lab, r in bad.head(20).iterrows()
        )
        more = f", ... ({len(bad) - 20} more)" if len(bad) > 20 else ""
        warnings.warn(
            f"Pareto k > {k_threshold} for observations of {len(bad)} client(s): {shown}{more}; "
            "their LOO estimates are unreliable (influential rows: consider K-fold by client)",
            ParetoKWarning,
            stacklevel=2,
        )
    return ClientLoo(table, total)
