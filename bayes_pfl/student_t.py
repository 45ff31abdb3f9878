r"""A Student-t population of the client effects: its density correction and a learned ``df``.

:class:`~bayes_pfl.spec.HierarchicalModel` ``(..., population_df=ν)`` scales every
client's standardized Normal client-prior sites ``w_k`` by one mixing weight,
``w_k | λ_k ~ N(0, I / λ_k)``, ``λ_k ~ Gamma(ν/2, rate ν/2)``: a multivariate Student-t
population with ``ν`` degrees of freedom. ``ν`` is fixed (a positive number) or
*learned* (``population_df="learn"``): the hyper-prior then gains one global site,
``population_df``, with the prior

.. math::

    \nu = 2 + G, \qquad G \sim \mathrm{Gamma}(2, \mathrm{rate}\ 0.1),

the Gamma(2, 0.1) of Juárez & Steel (2010) shifted so that ``ν > 2``: the federated
methods need a finite population variance (their cavities' population predictive
covariance is ``C ν / (ν - 2)``). Its mean is ``2 + 20 = 22`` and its mode ``12``: a
population that looks Gaussian keeps ``ν`` large, one with clients far out pulls it
towards 2. NUTS, the server's sampler and every output carry the site like any other.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpyro
from numpyro import distributions as dist
from numpyro.distributions import constraints
from numpyro.distributions.transforms import AffineTransform

Array = jax.Array

__all__ = [
    "DF_PRIOR_RATE",
    "DF_PRIOR_SHAPE",
    "DF_SITE",
    "LEARNED_DF",
    "check_population_df",
    "df_label",
    "df_record",
    "df_prior",
    "learned_df_hyperprior",
    "student_t_correction",
]

LEARNED_DF = "learn"
"""The value of ``population_df`` that learns the degrees of freedom."""

DF_SITE = "population_df"
"""The name of the hyper-prior site of a learned ``df``."""

DF_PRIOR_SHAPE = 2.0
DF_PRIOR_RATE = 0.1
"""``df = 2 + G``, ``G ~ Gamma(DF_PRIOR_SHAPE, rate DF_PRIOR_RATE)`` (Juárez & Steel 2010)."""


def df_prior() -> dist.Distribution:
    """The prior of a learned ``df``: ``2 + Gamma(2, rate 0.1)`` (support ``df > 2``)."""
    # the transform's domain declared, so that the support is df > 2 (numpyro's default
    # domain, the real line, would give a real support and an unconstrained df)
    shift = AffineTransform(2.0, 1.0, domain=constraints.positive)
    return dist.TransformedDistribution(dist.Gamma(DF_PRIOR_SHAPE, DF_PRIOR_RATE), shift)


def learned_df_hyperprior(hyperprior):
    """``hyperprior`` with one more site, :data:`DF_SITE` ``~`` :func:`df_prior`.

    The site is sampled after the declared ones, so ``phi``'s unconstrained vector keeps
    the declared sites first and the learned ``df`` last.
    """

    def wrapped():
        out = hyperprior()
        numpyro.sample(DF_SITE, df_prior())
        return out

    return wrapped


def check_population_df(value):
    """``value`` as a model's ``population_df``: ``None``, a float ``> 0`` or :data:`LEARNED_DF`.

    Raises
    ------
    ModelSpecError
        For anything else (a bool, a string other than ``"learn"``, zero, a negative,
        infinite or NaN number).
    """
    from bayes_pfl.spec import ModelSpecError  # spec imports this module

    if value is None or value == LEARNED_DF:
        return value
    if isinstance(value, bool) or not (isinstance(value, int | float) and math.isfinite(value)):
        raise ModelSpecError(
            f"population_df must be a positive number, {LEARNED_DF!r} (a learned df) or None, "
            f"got {value!r}"
        )
    if value <= 0:
        raise ModelSpecError(f"population_df must be positive, got {value!r}")
    return float(value)


def df_label(df) -> str:
    """``df`` for messages and reports: ``"4"``, ``"learned"``."""
    return "learned" if df == LEARNED_DF else f"{df:g}"


def df_record(df):
    """``df`` as results record it (ArviZ attributes, ``run.json``): the number, or
    ``"learned"``."""
    return "learned" if df == LEARNED_DF else df


def student_t_correction(w: Array, df) -> Array:
    r"""``log t_D(w; df) - log N(w; 0, I)`` per row of ``w [..., D]``.

    Added to a Gaussian client prior's density (whose Normal sites have standardized
    values ``w``), it turns the prior into the scale mixture
    ``w | λ ~ N(0, I / λ)``, ``λ ~ Gamma(df / 2, rate df / 2)``: a multivariate Student-t
    with ``df`` degrees of freedom for the client's effects (one mixing weight per
    client, so an outlying client is pooled less as a whole). ``df`` may be a traced
    array (a learned ``df``).
    """
    d = w.shape[-1]
    sq = jnp.sum(w**2, axis=-1)
    log_t = (
        jax.scipy.special.gammaln(0.5 * (df + d))
        - jax.scipy.special.gammaln(0.5 * df)
        - 0.5 * d * jnp.log(df * jnp.pi)
        - 0.5 * (df + d) * jnp.log1p(sq / df)
    )
    log_n = -0.5 * d * jnp.log(2 * jnp.pi) - 0.5 * sq
    return log_t - log_n
