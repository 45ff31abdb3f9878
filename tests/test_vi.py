"""Federated VI: exact conjugate answers, families, schedules, message shapes, faults, layout."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pandas as pd
import pytest
from _helpers import normal_normal_parts

from bayes_pfl import FederatedData
from bayes_pfl.algorithms import vi
from bayes_pfl.data import ClientArrays
from bayes_pfl.federated_vi import VIClientError, fit_vi
from bayes_pfl.simulation import run_rounds
from bayes_pfl.spec import HierarchicalModel

M0, S0, TAU, SIGMA = 0.5, 3.0, 0.7, 1.0
SIZES = [1, 2, 3, 5, 8, 20]
FAST = {"steps": 100, "first_steps": 300, "num_particles": 8}


def normal_normal(bad_x: float | None = None) -> HierarchicalModel:
    """mu ~ N(M0, S0); theta_k ~ N(mu, TAU); y ~ N(theta_k, SIGMA).

    With ``bad_x``, rows whose feature exceeds it give a NaN log-likelihood.
    """

    hyperprior, client_prior, _ = normal_normal_parts(M0, S0, TAU, SIGMA)

    def likelihood(theta, phi, x, y):
        loc = theta["theta"] + 0.0 * x[:, 0]
        if bad_x is not None:
            loc = jnp.where(x[:, 0] > bad_x, jnp.nan, loc)
        numpyro.sample("y", dist.Normal(loc, SIGMA), obs=y)

    return HierarchicalModel(hyperprior, client_prior, likelihood, name="nn", n_features=1)


def _data(sizes, seed=0, x=0.0):
    rng = np.random.default_rng(seed)
    theta = rng.normal(1.0, TAU, len(sizes))
    rows = [
        {"client": f"k{i}", "x": x if i == 0 else 0.0, "y": rng.normal(theta[i], SIGMA)}
        for i, n in enumerate(sizes)
        for _ in range(n)
    ]
    df = pd.DataFrame(rows)
    return df, FederatedData.from_pandas(df, client_col="client", target="y", features=["x"])


@pytest.fixture(scope="module")
def conjugate():
    df, data = _data(SIZES)
    ybar = df.groupby("client", sort=False)["y"].mean().to_numpy()
    n = np.asarray(SIZES, float)
    v = TAU**2 + SIGMA**2 / n  # Var(ybar_k | mu): client k's likelihood of mu
    post_prec = 1 / S0**2 + np.sum(1 / v)
    post_mean = (M0 / S0**2 + np.sum(ybar / v)) / post_prec
    a = (1 / TAU**2) / (1 / TAU**2 + n / SIGMA**2)
    cond_var = 1 / (1 / TAU**2 + n / SIGMA**2)
    exact = dict(
        mu_mean=post_mean,
        mu_var=1 / post_prec,
        theta_mean=a * post_mean + (n * ybar / SIGMA**2) * cond_var,
        theta_var=a**2 / post_prec + cond_var,
        site_precision=1 / v,
        site_shift=ybar / v,
        # mean-field VI of the joint Gaussian posterior keeps the means and takes the
        # diagonal of the joint precision: mu's is 1/S0^2 + K/TAU^2
        mf_mu_var=1 / (1 / S0**2 + len(SIZES) / TAU**2),
    )
    return data, exact


@pytest.fixture(scope="module")
def full_algorithm():
    return vi.build(normal_normal(), family="full", damping=1.0, **FAST)


@pytest.mark.parametrize("schedule", ["synchronous", "sequential"])
def test_full_rank_converges_to_exact_posterior(conjugate, full_algorithm, schedule):
    """Full-rank federated VI on a conjugate Normal-Normal hierarchy is exact.

    The client's log joint is quadratic, so the expected-curvature factor is exact for any
    q (the base draws have exact first and second moments): sites are each client's exact
    likelihood of mu and the server's p0 * G is the exact posterior. Each client's local
    q_k(mu, theta_k) is the exact tilted distribution, which at convergence is the exact
    joint posterior of (mu, theta_k); its accuracy is that of 100-300 Adam steps on a
    deterministic objective (relative error ~3e-4 with 100 warm steps, asserted at 2e-3).
    """
    data, exact = conjugate
    state, clients, history, converged, _ = run_rounds(
        full_algorithm,
        data.train,
        rounds=6,
        labels=data.clients,
        seed=0,
        blocks=3 if schedule == "sequential" else 1,
        on_rejected="raise",
        on_failed="raise",
        progress=False,
    )
    assert converged
    np.testing.assert_allclose(state.mode[0], exact["mu_mean"], rtol=1e-8)
    np.testing.assert_allclose(1 / state.precision[0, 0], exact["mu_var"], rtol=1e-8)
    np.testing.assert_allclose(state.sites.precision[:, 0, 0], exact["site_precision"], rtol=1e-8)
    np.testing.assert_allclose(state.sites.shift[:, 0], exact["site_shift"], rtol=1e-8)
    np.testing.assert_allclose(clients.mean[:, 0], exact["mu_mean"], rtol=2e-3)
    np.testing.assert_allclose(clients.cov[:, 0, 0], exact["mu_var"], rtol=2e-3)
    np.testing.assert_allclose(clients.mean[:, 1], exact["theta_mean"], rtol=2e-3)
    np.testing.assert_allclose(clients.cov[:, 1, 1], exact["theta_var"], rtol=2e-3)
    if schedule == "sequential":
        assert {h["group"] for h in history} == {0, 1, 2}


def test_fit_vi_exact_and_layout(conjugate):
    """fit_vi: server q* and personalized draws match the closed form; fit_ep's layout."""
    data, exact = conjugate
    fit = fit_vi(
        normal_normal(),
        data,
        sites="global",
        rounds=4,
        damping=1.0,
        num_samples=2000,
        progress=False,
        **FAST,
    )
    np.testing.assert_allclose(fit.state["q_mean"][0], exact["mu_mean"], rtol=2e-3)
    np.testing.assert_allclose(fit.state["q_cov"][0, 0], exact["mu_var"], rtol=2e-3)
    mu = fit.phi["mu"].ravel()
    theta = fit.theta["theta"].reshape(-1, data.n_clients)
    # independent Gaussian draws: 5 standard errors of a mean of 8000 draws
    n_draws = mu.size
    assert abs(mu.mean() - exact["mu_mean"]) < 5 * np.sqrt(exact["mu_var"] / n_draws)
    tol = 5 * np.sqrt(exact["theta_var"] / n_draws)
    assert np.all(np.abs(theta.mean(0) - exact["theta_mean"]) < tol)
    # variance: relative sd of a sample variance is sqrt(2 / n)
    np.testing.assert_allclose(theta.var(0), exact["theta_var"], rtol=5 * np.sqrt(2 / n_draws))
    # the same layout as fit_ep: (chain, draw[, client]) and the user's labels
    assert fit.method == "vi"
    assert fit.phi["mu"].shape == (4, 2000)
    assert fit.theta["theta"].shape == (4, 2000, data.n_clients)
    dt = fit.to_datatree(data)
    assert list(dt.posterior["theta"].dims) == ["chain", "draw", "client"]
    assert list(dt.posterior["client"].values) == list(data.clients)
    assert "log_likelihood" in dt.children
    assert fit.info["converged"] and fit.history[-1]["round"] == fit.info["rounds"]


def test_meanfield_converges_to_meanfield_optimum(conjugate):
    """Mean-field VI of a Gaussian posterior: exact means, precision = diagonal of the joint's.

    Its under-dispersion is the known one: var(mu) is 1/(1/S0^2 + K/TAU^2), not the
    exact marginal variance (the messages are diagonal, 2 numbers per coordinate).
    """
    data, exact = conjugate
    alg = vi.build(normal_normal(), family="meanfield", damping=1.0, **FAST)
    state, clients, history, _, _ = run_rounds(
        alg, data.train, rounds=12, labels=data.clients, seed=0, progress=False
    )
    assert history[-1]["bytes_up_per_client"] < 64  # diagonal factor: 2 floats (+ flag)
    np.testing.assert_allclose(1 / state.precision[0, 0], exact["mf_mu_var"], rtol=1e-6)
    np.testing.assert_allclose(state.mode[0], exact["mu_mean"], rtol=1e-3)
    assert 1 / state.precision[0, 0] < 0.7 * exact["mu_var"]


@pytest.mark.parametrize("family", vi.FAMILIES)
def test_message_shapes_do_not_depend_on_data_size(family):
    """A client's message has the same shapes whether it holds 1 row or 40 (any padding).

    Shapes are static in JAX, so tracing ``client_update`` (``jax.eval_shape``) shows them
    without compiling; a run on clients of 1 to 20 rows is in the tests above.
    """
    model = normal_normal()
    alg = vi.build(model, family=family, rank=1, steps=5, first_steps=5, num_particles=8)
    server = alg.server_init(jax.random.key(0), 2)
    bcast = jax.tree.map(lambda a: a[0], alg.broadcast(server))
    shapes = set()
    for n, n_max in ((1, 1), (1, 40), (40, 40), (7, 12)):
        mask = jnp.arange(n_max) < n
        data = ClientArrays(jnp.zeros((n_max, 1)), jnp.where(mask, 1.0, 0.0), mask)
        state = alg.client_init(jax.random.key(1), data)
        _, message, _ = jax.eval_shape(alg.client_update, jax.random.key(2), bcast, state, data)
        shapes.add(tuple(leaf.shape for leaf in jax.tree.leaves(message)))
    assert len(shapes) == 1
    prec_shape = next(iter(shapes))[0]
    assert prec_shape == ((1,) if family == "meanfield" else (1, 1))


def test_nan_loss_raises_naming_the_client():
    _, data = _data([3, 4, 5], x=1000.0)  # client k0's feature makes its likelihood NaN
    with pytest.raises(VIClientError, match=r"client 'k0'.*ELBO is not finite") as err:
        fit_vi(normal_normal(bad_x=100.0), data, sites="global", rounds=2, progress=False, **FAST)
    assert list(err.value.clients) == ["k0"] and err.value.round == 1


def test_exploding_factor_raises_or_is_kept():
    """A factor above max_site_precision is caught: an error naming the client, or kept out."""
    _, data = _data([2, 3, 400])  # k2's likelihood of mu has precision ~ 1/TAU^2 = 2
    alg = vi.build(normal_normal(), max_site_precision=1.9, **FAST)
    kw = dict(rounds=2, labels=data.clients, seed=0, progress=False)
    with pytest.raises(VIClientError, match=r"client 'k2'.*exploded"):
        run_rounds(alg, data.train, on_failed="raise", **kw)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        state, clients, _, _, _ = run_rounds(alg, data.train, on_failed="keep", **kw)
    assert any("'k2'" in str(w.message) and "exploded" in str(w.message) for w in caught)
    assert float(state.sites.precision[2, 0, 0]) == 0.0  # its factor stays flat
    assert np.all(np.asarray(state.sites.precision[:2, 0, 0]) > 0)
    assert int(clients.status[2]) == 3


def test_checkpoint_resume_matches_a_straight_run(conjugate, full_algorithm, tmp_path):
    data, _ = conjugate
    kw = dict(labels=data.clients, seed=0, progress=False, checkpoint=tmp_path / "ck")
    run_rounds(full_algorithm, data.train, rounds=1, **kw)
    s1, c1, h1, _, _ = run_rounds(full_algorithm, data.train, rounds=3, resume=True, **kw)
    s2, c2, h2, _, _ = run_rounds(
        full_algorithm, data.train, rounds=3, labels=data.clients, seed=0, progress=False
    )
    assert [h["round"] for h in h1] == [h["round"] for h in h2]
    np.testing.assert_allclose(s1.sites.shift, s2.sites.shift, rtol=1e-12)
    np.testing.assert_allclose(c1.mean, c2.mean, rtol=1e-12)


def test_base_draws_have_exact_moments():
    eps = vi.base_draws(jax.random.key(3), 16, 5)
    np.testing.assert_allclose(eps.mean(0), 0.0, atol=1e-12)
    np.testing.assert_allclose(eps.T @ eps / 16, np.eye(5), atol=1e-12)
    with pytest.raises(ValueError, match="twice the dimension"):
        vi.base_draws(jax.random.key(3), 8, 5)


def test_invalid_arguments():
    model = normal_normal()
    with pytest.raises(ValueError, match="family"):
        vi.build(model, family="diagonal")
    with pytest.raises(ValueError, match="rank"):
        vi.build(model, family="lowrank", rank=0)
    with pytest.raises(ValueError, match="damping"):
        vi.build(model, damping=0.0)
    with pytest.raises(ValueError, match="num_particles"):
        vi.build(model, num_particles=3)
    _, data = _data([2, 3])
    with pytest.raises(ValueError, match="schedule"):
        fit_vi(model, data, sites="global", schedule="async", progress=False)
    with pytest.raises(ValueError, match="global_method"):
        fit_vi(model, data, sites="global", global_method="exact", progress=False)


def test_local_personalization_conditional_and_empty_clients():
    """theta_k | u from q_k's Gaussian regression on u; a client without rows uses the prior."""
    from bayes_pfl.federated_vi import local_personalize

    model = normal_normal()
    mean = jnp.array([[1.0, 2.0], [0.0, 0.0]])
    cov = jnp.array([[[1.0, 0.5], [0.5, 1.0]], [[1.0, 0.0], [0.0, 1.0]]])
    states = vi.VIClientState(mean, cov, None, None, None, None)
    u = jnp.full((4000, 1), 3.0)
    theta = np.asarray(local_personalize(jax.random.key(0), model, u, states, [True, False]))
    assert theta.shape == (2, 4000, 1)
    # client 0: E[theta | u=3] = 2 + 0.5 (3 - 1) = 3, var 1 - 0.25; 5 standard errors
    assert abs(theta[0].mean() - 3.0) < 5 * np.sqrt(0.75 / 4000)
    np.testing.assert_allclose(theta[0].var(), 0.75, rtol=5 * np.sqrt(2 / 4000))
    # client 1 has no rows: theta ~ p(theta | mu = 3) = N(3, TAU^2)
    assert abs(theta[1].mean() - 3.0) < 5 * TAU / np.sqrt(4000)
    np.testing.assert_allclose(theta[1].std(), TAU, rtol=5 * np.sqrt(1 / 8000))
