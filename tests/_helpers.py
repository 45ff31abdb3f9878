"""Helpers shared by test modules: ``from _helpers import ...`` (tests/ has no __init__.py, so
pytest puts it on sys.path). Fixtures shared by modules live in conftest.py."""

import os
import subprocess
import sys

import numpyro
import numpyro.distributions as dist

from bayes_pfl import FederatedData, fit_nuts
from bayes_pfl.spec import HierarchicalModel

CLI = [sys.executable, "-m", "bayes_pfl.cli"]


def cli_env():
    """The environment the command line runs in: unbuffered, without the tests' XLA flags."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("XLA_FLAGS", None)
    env.pop("BAYES_PFL_NO_COMPILATION_CACHE", None)  # set for the test processes only
    return env


# Flower app processes keep JAX's persistent cache as users have it (conftest turns it off
# in the test processes only): an empty value counts as unset, and LocalFederation's env wins
APP_ENV = {"BAYES_PFL_NO_COMPILATION_CACHE": ""}


def run_cli(*args, timeout=600):
    """``bayes-pfl *args`` in a subprocess, as users run it."""
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=timeout, env=cli_env()
    )


def nuts(model, data, *, chains=4, warmup=1000, samples=1000, seed=0, **kw):
    """``fit_nuts`` without a progress bar; the defaults are ``fit_nuts``'s own."""
    return fit_nuts(
        model,
        data,
        num_chains=chains,
        num_warmup=warmup,
        num_samples=samples,
        seed=seed,
        progress_bar=False,
        **kw,
    )


def federation_data(fed, **kw):
    """The ``FederatedData`` of a ``make_federation`` result (clients, target y, its features)."""
    return FederatedData.from_pandas(
        fed.data, client_col="client", target="y", features=list(fed.features), **kw
    )


def normal_normal_parts(m0, s0, tau, sigma):
    """The three functions of mu ~ N(m0, s0); theta_k ~ N(mu, tau); y ~ N(theta_k, sigma)."""

    def hyperprior():
        numpyro.sample("mu", dist.Normal(m0, s0))

    def client_prior(phi):
        numpyro.sample("theta", dist.Normal(phi["mu"], tau))

    def likelihood(theta, phi, x, y):
        numpyro.sample("y", dist.Normal(theta["theta"], sigma), obs=y)

    return hyperprior, client_prior, likelihood


def normal_normal(m0, s0, tau, sigma, **kw) -> HierarchicalModel:
    """The Normal-Normal model of ``normal_normal_parts``; ``kw`` go to ``HierarchicalModel``."""
    return HierarchicalModel(*normal_normal_parts(m0, s0, tau, sigma), **kw)
