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


def check_one_effect_t_log_z(pop, u, df: float, rtol: float) -> None:
    """``pop.log_z`` at ``u`` against adaptive quadrature over the one effect, for sites
    informative, vague, sharp and 40 population sds out: the Student-t population's
    integral ``∫ t_df(e | m, s) t_k(e) de`` (tests of the fixed and the learned df)."""
    import jax.numpy as jnp
    import numpy as np
    from scipy import integrate, stats

    from bayes_pfl.gaussian import GaussianFactor

    m, root = pop.moments(u)
    s, mu = float(root[0, 0]), float(m[0])
    far = 4.0 * (mu + 40.0 * s)  # a client 40 population sds out, precision 4
    for a, h in ((4.0, 3.0), (0.3, -0.2), (50.0, 100.0), (4.0, far)):
        prec = np.zeros((pop.z_dim, pop.z_dim))
        prec[0, 0] = a
        shift = np.zeros(pop.z_dim)
        shift[0] = h
        got = float(pop.log_z(u, GaussianFactor(jnp.asarray(prec), jnp.asarray(shift))))

        def f(e, a=a, h=h):  # the site over its peak value exp(h^2 / 2a)
            return stats.t.pdf(e, df, loc=mu, scale=s) * np.exp(-a * (e - h / a) ** 2 / 2)

        cut = sorted([mu, h / a])
        val = sum(
            integrate.quad(f, lo, hi, epsabs=0, epsrel=1e-12, limit=500)[0]
            for lo, hi in ((-np.inf, cut[0]), (cut[0], cut[1]), (cut[1], np.inf))
        )
        want = h**2 / (2 * a) + np.log(val)
        assert abs(got - want) < rtol * max(1.0, abs(want)), (a, h)


def first_effect_ep_step(model, data, label):
    """Client ``label``'s first EP step (sites over client effects) from the server's
    initial broadcast: ``(message, info)``."""
    import jax
    import jax.numpy as jnp

    from bayes_pfl.algorithms import effect_ep

    alg = effect_ep.build(model)
    bcast = alg.broadcast(alg.server_init(jax.random.key(0), len(data.clients)))
    k = data.clients.index(label)
    arr = data.train
    rows = (jnp.asarray(arr.x[k]), jnp.asarray(arr.y[k]), jnp.asarray(arr.mask[k]))
    one = jax.tree.map(lambda a: a[k], bcast)
    _, msg, info = jax.jit(alg.client_update)(None, one, alg.client_init(None, rows), rows)
    return msg, info
