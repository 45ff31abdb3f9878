"""Models from posteriordb, with their parameter names and priors.

* :func:`radon_intercept`: ``radon_mn-radon_hierarchical_intercept_noncentered``;
* :func:`eight_schools`: ``eight_schools-eight_schools_noncentered``.
"""

from __future__ import annotations

import numpyro
import numpyro.distributions as dist

from bayes_pfl.spec import HierarchicalModel

__all__ = ["eight_schools", "radon_intercept"]


def radon_intercept() -> HierarchicalModel:
    """Minnesota radon, varying intercepts by county, non-centered (posteriordb).

    ``log_radon ~ Normal(alpha[county] + beta[0] * log_uppm + beta[1] * floor, sigma_y)``,
    ``alpha = mu_alpha + sigma_alpha * alpha_raw``, ``alpha_raw ~ N(0, 1)``,
    ``beta ~ N(0, 10)``, ``mu_alpha ~ N(0, 10)``, ``sigma_alpha, sigma_y ~ HalfNormal(1)``.
    Each county is a client; features must be ``("log_uppm", "floor")`` in that order.

    References
    ----------
    Gelman & Hill (2007), *Data Analysis Using Regression and Multilevel/Hierarchical
    Models*; posteriordb (stan-dev/posteriordb).
    """

    def hyperprior():
        numpyro.sample("mu_alpha", dist.Normal(0.0, 10.0))
        numpyro.sample("sigma_alpha", dist.HalfNormal(1.0))
        numpyro.sample("beta", dist.Normal(0.0, 10.0).expand([2]).to_event(1))
        numpyro.sample("sigma_y", dist.HalfNormal(1.0))

    def client_prior(phi):
        alpha_raw = numpyro.sample("alpha_raw", dist.Normal(0.0, 1.0))
        numpyro.deterministic("alpha", phi["mu_alpha"] + phi["sigma_alpha"] * alpha_raw)

    def likelihood(theta, phi, x, y):
        mu = theta["alpha"] + x @ phi["beta"]
        numpyro.sample("log_radon", dist.Normal(mu, phi["sigma_y"]), obs=y)

    return HierarchicalModel(
        hyperprior,
        client_prior,
        likelihood,
        name="radon_intercept",
        feature_names=("log_uppm", "floor"),
        family="normal",
        coords={"beta": ("log_uppm", "floor")},
        description="posteriordb radon_mn-radon_hierarchical_intercept_noncentered",
    )


def eight_schools() -> HierarchicalModel:
    """Rubin's eight schools, non-centered (posteriordb ``eight_schools_noncentered``).

    ``theta = mu + tau * theta_trans``, ``theta_trans ~ N(0, 1)``, ``mu ~ N(0, 5)``,
    ``tau ~ HalfCauchy(5)``, ``y_j ~ N(theta_j, sigma_j)``. Each school is a client
    holding one row; its one feature is the known standard error ``sigma``.

    References
    ----------
    Rubin (1981), *Estimation in parallel randomized experiments*; posteriordb.
    """

    def hyperprior():
        numpyro.sample("mu", dist.Normal(0.0, 5.0))
        numpyro.sample("tau", dist.HalfCauchy(5.0))

    def client_prior(phi):
        theta_trans = numpyro.sample("theta_trans", dist.Normal(0.0, 1.0))
        numpyro.deterministic("theta", phi["mu"] + phi["tau"] * theta_trans)

    def likelihood(theta, phi, x, y):
        numpyro.sample("y", dist.Normal(theta["theta"], x[:, 0]), obs=y)

    return HierarchicalModel(
        hyperprior,
        client_prior,
        likelihood,
        name="eight_schools",
        feature_names=("sigma",),
        family="normal",
        description="posteriordb eight_schools-eight_schools_noncentered",
    )
