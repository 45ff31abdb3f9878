"""EP with sites over client effects: the exact population integral, exactness for Gaussian
likelihoods, the EP fixed point, and rejection of malformed sites."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pandas as pd
import pytest

from bayes_pfl import FederatedData
from bayes_pfl.algorithms import effect_ep
from bayes_pfl.gaussian import GaussianFactor
from bayes_pfl.models import eight_schools, hierarchical_glm, logistic, radon_intercept
from bayes_pfl.population import Population, gaussian_population
from bayes_pfl.simulation import run_rounds
from bayes_pfl.spec import HierarchicalModel, ModelSpecError

Y8 = np.array([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
S8 = np.array([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])


def _schools():
    df = pd.DataFrame({"school": list("ABCDEFGH"), "y": Y8, "sigma": S8})
    return FederatedData.from_pandas(df, client_col="school", target="y", features=["sigma"])


def _assert_exact_sites(site):
    """Each school's site is its exact likelihood N(y; e, sigma): precision 1/S8^2, shift Y8/S8^2."""
    np.testing.assert_allclose(site.precision[:, 0, 0], 1 / S8**2, rtol=1e-9)
    np.testing.assert_allclose(site.shift[:, 0], Y8 / S8**2, rtol=1e-9)


def _client_sites(alg, cav, train):
    """Every client's step from the cavity ``cav`` (key 0, no earlier state): each must succeed;
    the sites they send."""
    k, d = cav.shift.shape
    _, msg, info = jax.vmap(alg.client_update)(
        jax.random.split(jax.random.key(0), k),
        effect_ep.EffectBroadcast(cav),
        effect_ep.EffectClientState(jnp.full((k, d), jnp.nan)),
        train,
    )
    assert bool(jnp.all(info.ok))
    return msg.site


def test_population_structure_of_zoo_models():
    pop = gaussian_population(radon_intercept())
    assert pop.effect_sites == (("alpha", ()),)
    assert pop.labels == ["alpha", "beta[0]", "beta[1]", "log(sigma_y)"]
    assert pop.z_dim == 4
    pop = gaussian_population(logistic(3, varying="slopes"))
    assert pop.effect_sites == (("b", (4,)),) and pop.q_dim == 0
    # centered and non-centered give the same population N(mu, diag(tau^2))
    u = jnp.asarray(np.random.default_rng(0).normal(size=5))
    for centered in (False, True):
        model = hierarchical_glm("normal", 1, varying="slopes", centered=centered)
        m, root = gaussian_population(model).moments(u)
        np.testing.assert_allclose(m, u[:2], rtol=1e-12)
        np.testing.assert_allclose(root @ root.T, np.diag(np.exp(2 * u[2:4])), rtol=1e-12)


def test_non_gaussian_population_is_a_clear_error():
    def hyperprior():
        numpyro.sample("rate", dist.HalfNormal(1.0))

    def client_prior(phi):
        numpyro.sample("lam", dist.Gamma(2.0, phi["rate"]))

    def likelihood(theta, phi, x, y):
        numpyro.sample("y", dist.Poisson(theta["lam"] * jnp.ones(x.shape[0])), obs=y)

    model = HierarchicalModel(hyperprior, client_prior, likelihood, name="gamma_poisson")
    with pytest.raises(ModelSpecError, match="Gaussian population"):
        Population(model)


@pytest.mark.parametrize("u", [(1.0, 2.0), (-3.0, -2.0), (0.5, 4.0)])
def test_log_z_equals_numerical_integral(u):
    """One client, a proper site over (e, log sigma_y)-like shared coordinate: quadrature."""
    model = hierarchical_glm("normal", 0, varying="intercept")  # e = b[0], shared log(sigma_y)
    pop = gaussian_population(model)
    assert pop.labels == ["b[0]", "log(sigma_y)"]
    rng = np.random.default_rng(1)
    a = rng.normal(size=(2, 2))
    prec = jnp.asarray(a @ a.T + np.eye(2))
    shift = jnp.asarray(rng.normal(size=2))
    site = GaussianFactor(prec, shift)
    u_phi = jnp.asarray([u[0], u[1], 0.3])  # mu, log tau, log sigma_y
    mu, tau, us = u[0], np.exp(u[1]), 0.3
    e = np.linspace(mu - 12 * tau - 30, mu + 12 * tau + 30, 400_001)
    z = np.stack([e, np.full_like(e, us)], 1)
    log_t = -0.5 * np.einsum("ni,ij,nj->n", z, np.asarray(prec), z) + z @ np.asarray(shift)
    log_n = -0.5 * ((e - mu) / tau) ** 2 - np.log(tau * np.sqrt(2 * np.pi))
    f = log_n + log_t
    exact = f.max() + np.log(np.trapezoid(np.exp(f - f.max()), e))
    np.testing.assert_allclose(float(pop.log_z(u_phi, site)), exact, rtol=1e-7, atol=1e-7)


def test_log_z_flat_site_is_zero_and_conditional_is_population():
    pop = gaussian_population(logistic(2, varying="slopes"))
    u = jnp.asarray(np.random.default_rng(2).normal(size=6))
    flat = GaussianFactor(jnp.zeros((3, 3)), jnp.zeros(3))
    assert abs(float(pop.log_z(u, flat))) < 1e-12
    m, root = pop.moments(u)
    mean, cov = pop.conditional(m, root, jnp.zeros(0), flat)
    np.testing.assert_allclose(mean, m)
    np.testing.assert_allclose(cov, root @ root.T, atol=1e-12)


def _exact_schools_grid():
    mu = np.linspace(-30, 40, 281)
    lt = np.linspace(-8, 5, 261)
    M, LT = np.meshgrid(mu, lt, indexing="ij")
    T = np.exp(LT)
    # mu ~ N(0, 5), tau ~ HalfCauchy(5), in (mu, log tau) with the Jacobian
    lp = -0.5 * (M / 5) ** 2 + np.log(2 / (np.pi * 5 * (1 + (T / 5) ** 2))) + LT
    for y, s in zip(Y8, S8, strict=True):
        lp += -0.5 * (y - M) ** 2 / (T**2 + s**2) - 0.5 * np.log(T**2 + s**2)
    return M, LT, lp


@pytest.mark.slow
def test_one_exchange_gives_the_exact_eight_schools_posterior():
    """Gaussian likelihoods in the effects: one exchange, the server's density is exact
    (up to a constant) for every (mu, tau), whatever the cavity."""
    model = eight_schools()
    data = _schools()
    alg = effect_ep.build(model, damping=1.0, server_warmup=50, server_samples=50)
    out = run_rounds(alg, data.train, rounds=1, labels=data.clients, progress=False)
    sites = out.server_state.sites
    _assert_exact_sites(sites)
    M, LT, exact = _exact_schools_grid()
    pop = gaussian_population(model)
    grid = jnp.asarray(np.stack([M.ravel(), LT.ravel()], 1))
    got = jax.vmap(lambda u: effect_ep.server_log_density(pop, model.log_hyperprior, u, sites))(
        grid
    )
    diff = np.asarray(got).reshape(M.shape) - exact
    assert np.ptp(diff) < 1e-8


@pytest.mark.slow
def test_ep_fixed_point_on_a_conjugate_federation():
    """Normal likelihood with known noise: the sites are exact after one round and stay."""
    model = eight_schools()
    data = _schools()
    alg = effect_ep.build(model, damping=0.5, server_warmup=100, server_samples=100)
    out = run_rounds(alg, data.train, rounds=6, labels=data.clients, progress=False)
    # the first exchange is undamped: exact sites, and damped updates keep them
    assert len(out.history) == 2 and out.converged
    _assert_exact_sites(out.server_state.sites)
    # a client's proposal is the exact likelihood whatever its cavity
    for h in range(2):
        cav = GaussianFactor(jnp.full((8, 1, 1), 0.01 + h), jnp.full((8, 1), 0.3 * h))
        _assert_exact_sites(_client_sites(alg, cav, data.train))


@pytest.mark.slow
def test_malformed_sites_are_rejected_and_the_client_named():
    model = eight_schools()
    data = _schools()
    alg = effect_ep.build(model, damping=1.0, server_warmup=50, server_samples=50)

    def corrupt(key, bcast, state, arrays):
        state, msg, info = alg.client_update(key, bcast, state, arrays)
        bad = arrays[1][0] == Y8[2]  # school C sends NaN
        site = GaussianFactor(jnp.where(bad, jnp.nan, msg.site.precision), msg.site.shift)
        return state, msg._replace(site=site), info

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = run_rounds(
            alg._replace(client_update=corrupt),
            data.train,
            rounds=1,
            labels=data.clients,
            progress=False,
        )
    text = " ".join(str(w.message) for w in caught)
    assert "'C'" in text and "non-finite" in text
    assert out.history[0]["rejected"] == ["C"]
    sites = out.server_state.sites
    assert float(sites.precision[2, 0, 0]) == 0.0  # kept its (flat) site
    assert bool(jnp.all(jnp.isfinite(sites.precision)))


def test_vi_local_update_is_exact_for_gaussian_likelihoods():
    """Partitioned VI over effects: for a Gaussian likelihood the optimal q = c t has t = L."""
    model = eight_schools()
    data = _schools()
    alg = effect_ep.build(model, local="vi", server_warmup=50, server_samples=50)
    assert alg.name == "vi-effects"
    cav = GaussianFactor(jnp.full((8, 1, 1), 0.02), jnp.full((8, 1), 0.1))
    _assert_exact_sites(_client_sites(alg, cav, data.train))


@pytest.mark.slow
def test_vi_site_satisfies_the_gaussian_vi_stationarity_conditions():
    """A tiny binary client: q = c t must satisfy E_q[grad log L] = -grad log c(m_q) and
    Lambda_q = Lambda_c - E_q[hess log L] (the optimum of E_q[log L] - KL(q || c)),
    with the expectations by Gauss-Hermite quadrature; EP's site differs (tilted moments)."""
    df = pd.DataFrame({"c": ["a"] * 3 + ["b"] * 3, "x": 0.0, "y": [1, 1, 0, 0, 0, 1]})
    data = FederatedData.from_pandas(df, client_col="c", target="y", features=["x"])
    model = logistic(1)
    # cavity mean off 0: numpyro's Bernoulli(logits) log-mass has a kink at exactly logit 0
    # (its gradient there is a subgradient), which a start at 0 with x = 0 would sit on
    cav = GaussianFactor(jnp.broadcast_to(jnp.eye(2) * 0.5, (2, 2, 2)), jnp.full((2, 2), 0.1))
    sites = {}
    for local in ("ep", "vi"):
        alg = effect_ep.build(model, local=local, vi_iterations=30, tilted_points=512)
        sites[local] = _client_sites(alg, cav, data.train)
        assert np.all(np.linalg.eigvalsh(np.asarray(sites[local].precision)) >= -1e-12)
    # client a: rows y = 1, 1, 0 with x = 0, so only the intercept z[0] enters L
    prec_c, shift_c = np.asarray(cav.precision[0]), np.asarray(cav.shift[0])
    prec_q = prec_c + np.asarray(sites["vi"].precision[0])
    m_q = np.linalg.solve(prec_q, shift_c + np.asarray(sites["vi"].shift[0]))
    sd = np.sqrt(np.linalg.inv(prec_q)[0, 0])
    t, wt = np.polynomial.hermite_e.hermegauss(80)
    wt = wt / wt.sum()
    eta = m_q[0] + sd * t
    p = 1 / (1 + np.exp(-eta))
    grad = wt @ (2 - 3 * p)  # d/d eta of sum_i log Bernoulli(y_i | eta)
    hess = -3 * (wt @ (p * (1 - p)))
    np.testing.assert_allclose(grad, (prec_c @ m_q - shift_c)[0], atol=2e-3)
    np.testing.assert_allclose(prec_q[0, 0] - prec_c[0, 0], -hess, rtol=2e-2)
    # EP's site is another Gaussian (tilted moments, not the VI optimum)
    assert abs(float(sites["vi"].precision[0, 0, 0] - sites["ep"].precision[0, 0, 0])) > 1e-4


def test_server_density_sums_the_shared_blocks_once_with_the_same_value():
    """radon: three shared parameters; the summed-blocks density equals the per-client sum."""
    model = radon_intercept()
    pop = gaussian_population(model)
    rng = np.random.default_rng(3)
    k, j = 7, pop.z_dim
    a = rng.normal(size=(k, j, j))
    prec = jnp.asarray(a @ np.swapaxes(a, 1, 2) + np.eye(j))
    sites = GaussianFactor(prec, jnp.asarray(rng.normal(size=(k, j))))
    fast = jax.jit(effect_ep.server_density(pop, model.log_hyperprior, sites))
    for _ in range(3):
        u = jnp.asarray(rng.normal(size=model.phi_dim))
        m, root = pop.moments(u)
        slow = model.log_hyperprior(u) + jnp.sum(pop.log_z_at(m, root, u[pop.shared_index], sites))
        np.testing.assert_allclose(fast(u), slow, rtol=1e-12)


@pytest.mark.slow
def test_final_global_draws_compile_once_per_model_and_setting():
    """A second fit's final chains reuse the first's compiled sampler (a new jit wrapper of
    the hyperprior per call made every fit trace and compile them again)."""
    from bayes_pfl import posterior

    model = eight_schools()
    data = _schools()
    alg = effect_ep.build(model, damping=1.0, server_warmup=50, server_samples=50)
    state = run_rounds(alg, data.train, rounds=1, labels=data.clients, progress=False)
    state = state.server_state
    settings = dict(num_chains=2, num_warmup=20, num_samples=30)
    first, _ = posterior.effect_global_draws(jax.random.key(0), model, state, **settings)
    before = posterior._effect_sampler.cache_info()
    again, _ = posterior.effect_global_draws(jax.random.key(0), model, state, **settings)
    after = posterior._effect_sampler.cache_info()
    assert after.hits == before.hits + 1 and after.misses == before.misses
    np.testing.assert_array_equal(first, again)
