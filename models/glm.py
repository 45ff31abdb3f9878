"""Hierarchical generalized linear models on any features.

Every model here has the same parameter names, so that synthetic truths,
shrinkage tables and comparisons line up:

* ``mu`` (shape ``[D]``): population mean of the varying coefficients,
* ``tau`` (shape ``[D]``): population sd of the varying coefficients,
* ``beta`` (shape ``[P]``): shared slopes (only when ``varying="intercept"``),
* ``sigma_y``: noise scale (only for ``family="normal"``),
* per client ``b`` (shape ``[D]``): the client's coefficients; with the
  non-centered parameterization the client samples ``b_raw ~ N(0, 1)`` and
  ``b = mu + tau * b_raw`` is a deterministic site.

``D = 1`` with ``varying="intercept"`` (``b[0]`` is the client's intercept and
``eta = b[0] + x @ beta``), ``D = 1 + P`` with ``varying="slopes"``
(``eta = b[0] + x @ b[1:]``).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist

from bayes_pfl.spec import HierarchicalModel, ModelSpecError

FAMILIES = ("normal", "bernoulli", "poisson")
VARYING = ("intercept", "slopes")

__all__ = ["FAMILIES", "VARYING", "hierarchical_glm", "linear", "logistic", "poisson"]


def hierarchical_glm(
    family: str,
    n_features: int,
    *,
    varying: str = "intercept",
    centered: bool = False,
    coef_scale: float = 2.5,
    tau_scale: float = 1.0,
    sigma_scale: float = 1.0,
    name: str | None = None,
) -> HierarchicalModel:
    """A hierarchical GLM with client-varying intercepts (and optionally slopes).

    Parameters
    ----------
    family : {"normal", "bernoulli", "poisson"}
        Likelihood: Normal with identity link, Bernoulli with logit link,
        Poisson with log link.
    n_features : int
        Number of feature columns ``P``.
    varying : {"intercept", "slopes"}
        Which coefficients vary by client. ``"slopes"`` makes every coefficient
        client-specific (``D = 1 + P``).
    centered : bool
        Centered (``b ~ N(mu, tau)``) or non-centered (``b_raw ~ N(0, 1)``)
        parameterization; non-centered suits small clients.
    coef_scale, tau_scale, sigma_scale : float
        Prior scales: ``mu, beta ~ N(0, coef_scale)``, ``tau ~ HalfNormal(tau_scale)``,
        ``sigma_y ~ HalfNormal(sigma_scale)``.

    Examples
    --------
    >>> m = hierarchical_glm("bernoulli", 3, varying="slopes")
    >>> m.phi_dim, m.theta_dim
    (8, 4)
    """
    if family not in FAMILIES:
        raise ModelSpecError(f"unknown family {family!r}; choose one of {FAMILIES}")
    if varying not in VARYING:
        raise ModelSpecError(f"unknown varying={varying!r}; choose one of {VARYING}")
    if int(n_features) < 0:
        raise ModelSpecError("n_features must be >= 0")
    p = int(n_features)
    d = 1 if varying == "intercept" else 1 + p

    def hyperprior():
        numpyro.sample("mu", dist.Normal(0.0, coef_scale).expand([d]).to_event(1))
        numpyro.sample("tau", dist.HalfNormal(tau_scale).expand([d]).to_event(1))
        if varying == "intercept" and p > 0:
            numpyro.sample("beta", dist.Normal(0.0, coef_scale).expand([p]).to_event(1))
        if family == "normal":
            numpyro.sample("sigma_y", dist.HalfNormal(sigma_scale))

    def client_prior(phi):
        if centered:
            numpyro.sample("b", dist.Normal(phi["mu"], phi["tau"]).to_event(1))
        else:
            b_raw = numpyro.sample("b_raw", dist.Normal(0.0, 1.0).expand([d]).to_event(1))
            numpyro.deterministic("b", phi["mu"] + phi["tau"] * b_raw)

    def likelihood(theta, phi, x, y):
        b = theta["b"]
        if varying == "intercept":
            eta = b[0] + (x @ phi["beta"] if p > 0 else 0.0)
        else:
            eta = b[0] + x @ b[1:]
        if family == "normal":
            obs = dist.Normal(eta, phi["sigma_y"])
        elif family == "bernoulli":
            obs = dist.Bernoulli(logits=eta)
        else:
            obs = dist.Poisson(jnp.exp(eta))
        numpyro.sample("y", obs, obs=y)

    param = "centered" if centered else "noncentered"
    return HierarchicalModel(
        hyperprior,
        client_prior,
        likelihood,
        name=name or f"{family}_{varying}_{param}",
        n_features=p,
        family=family,
        description=(
            f"Hierarchical {family} GLM, client-varying {varying}, {param} parameterization."
        ),
    )


def linear(n_features: int, **kwargs) -> HierarchicalModel:
    """Hierarchical linear regression (Normal likelihood); see :func:`hierarchical_glm`."""
    return hierarchical_glm("normal", n_features, **kwargs)


def logistic(n_features: int, **kwargs) -> HierarchicalModel:
    """Hierarchical logistic regression (Bernoulli, logit link); see :func:`hierarchical_glm`."""
    return hierarchical_glm("bernoulli", n_features, **kwargs)


def poisson(n_features: int, **kwargs) -> HierarchicalModel:
    """Hierarchical Poisson regression (log link); see :func:`hierarchical_glm`."""
    return hierarchical_glm("poisson", n_features, **kwargs)
