"""Hierarchical logistic regression for multi-hospital clinical data, missing features modelled.

The UCI heart-disease hospitals (and clinical federations like them) differ in two
ways a pooled model gets wrong: their base rates differ a lot (46% disease in
Cleveland, 93% in Switzerland), and they record different things (Switzerland
never measured cholesterol; a quarter of VA's patients miss the exercise test).
:func:`missing_logistic` handles both:

* every coefficient varies by hospital with partial pooling (``b_k ~ N(mu, tau)``,
  non-centered), with a wider prior on the spread of the intercepts than on the
  spread of the slopes, since base rates differ more between hospitals than the
  physiology behind a feature's effect;
* missing feature values (``NaN`` in ``x``, see
  ``FederatedData.from_pandas(..., missing="keep")``) are imputed by the pooled
  training mean (0 for standardized features) and, for the features listed in
  ``missing``, a per-hospital *missingness* coefficient enters the linear
  predictor: ``eta = b0 + sum_j b_j x_j [x_j observed] + sum_m g_m [x_m missing]``.
  The ``g`` are partially pooled like the other coefficients, so a hospital where
  a value is rarely missing borrows the effect of missingness from the others,
  and a hospital where it is always missing (Switzerland's cholesterol) folds it
  into its intercept.

Parameter names follow :mod:`bayes_pfl.models.glm` (``mu``, ``tau``, per client
``b``), with ``b = [intercept, slopes (P), missingness effects (M)]``.

References: Gelman & Hill (2007), ch. 25 (missing-data indicators in regression);
Ogier du Terrail et al. (2022), FLamby (the Fed-Heart-Disease split).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

from bayes_pfl.spec import HierarchicalModel, ModelSpecError

__all__ = ["missing_logistic", "missing_logistic_for"]


def missing_logistic(
    n_features: int,
    *,
    missing: Sequence[int] = (),
    coef_scale: float = 2.5,
    intercept_tau_scale: float = 2.0,
    tau_scale: float = 1.0,
    name: str | None = None,
) -> HierarchicalModel:
    """Hierarchical logistic regression, client-varying slopes, missing features modelled.

    Parameters
    ----------
    n_features : int
        Number of feature columns ``P``.
    missing : sequence of int
        Feature columns whose missingness gets a (client-varying) coefficient.
        Missing values of other columns are imputed by 0 without one.
    coef_scale : float
        ``mu ~ N(0, coef_scale)``.
    intercept_tau_scale, tau_scale : float
        ``tau[0] ~ HalfNormal(intercept_tau_scale)`` (spread of the clients'
        intercepts), ``tau[1:] ~ HalfNormal(tau_scale)`` (spread of slopes and
        missingness effects).
    name : str, optional

    Examples
    --------
    >>> m = missing_logistic(3, missing=[1])
    >>> m.phi_dim, m.theta_dim       # mu, tau of [intercept, 3 slopes, 1 missingness]
    (10, 5)
    """
    p = int(n_features)
    if p < 1:
        raise ModelSpecError("missing_logistic needs at least one feature")
    miss = tuple(int(j) for j in missing)
    if any(j < 0 or j >= p for j in miss) or len(set(miss)) != len(miss):
        raise ModelSpecError(f"missing must list distinct feature columns in [0, {p}), got {miss}")
    d = 1 + p + len(miss)
    miss_idx = np.asarray(miss, dtype=np.int64)
    tau_scales = np.concatenate([[intercept_tau_scale], np.full(d - 1, tau_scale)])

    def hyperprior():
        numpyro.sample("mu", dist.Normal(0.0, coef_scale).expand([d]).to_event(1))
        numpyro.sample("tau", dist.HalfNormal(jnp.asarray(tau_scales)).to_event(1))

    def client_prior(phi):
        b_raw = numpyro.sample("b_raw", dist.Normal(0.0, 1.0).expand([d]).to_event(1))
        numpyro.deterministic("b", phi["mu"] + phi["tau"] * b_raw)

    def likelihood(theta, phi, x, y):
        b = theta["b"]
        isnan = jnp.isnan(x)
        filled = jnp.where(isnan, 0.0, x)
        eta = b[0] + filled @ b[1 : 1 + p]
        if miss:
            eta = eta + isnan[:, miss_idx].astype(filled.dtype) @ b[1 + p :]
        numpyro.sample("y", dist.Bernoulli(logits=eta), obs=y)

    return HierarchicalModel(
        hyperprior,
        client_prior,
        likelihood,
        name=name or f"bernoulli_missing{len(miss)}_slopes",
        n_features=p,
        family="bernoulli",
        description=(
            "Hierarchical logistic regression with client-varying intercepts, slopes and "
            f"effects of missingness for {len(miss)} feature(s); missing values imputed by 0."
        ),
    )


def missing_logistic_for(data, **kwargs) -> HierarchicalModel:
    """:func:`missing_logistic` for a :class:`~bayes_pfl.data.FederatedData`.

    A missingness coefficient is given to every feature with a missing value in
    the training rows (a count each client can share).
    """
    tr = data.train
    x = np.asarray(tr.x, dtype=float)[np.asarray(tr.mask)]
    missing = np.flatnonzero(np.isnan(x).any(axis=0)).tolist()
    return missing_logistic(data.n_features, missing=missing, **kwargs)
