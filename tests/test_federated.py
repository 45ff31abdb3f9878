"""Federated EP and one-shot exchange: exact answers, invariances, faults, cold start."""

import typing
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from _helpers import federation_data, nuts
from _helpers import normal_normal as normal_normal_model

from bayes_pfl import FederatedData
from bayes_pfl import gaussian as gf
from bayes_pfl.algorithms import ep
from bayes_pfl.data import ClientArrays
from bayes_pfl.federated import cold_start, fit_ep, fit_one_shot, personalize
from bayes_pfl.local import sample_conditional
from bayes_pfl.models import hierarchical_glm
from bayes_pfl.simulation import check_messages, run_rounds
from bayes_pfl.spec import HierarchicalModel
from bayes_pfl.synthetic import make_federation

M0, S0, TAU, SIGMA = 0.5, 3.0, 0.7, 1.0


def normal_normal() -> HierarchicalModel:
    """mu ~ N(M0, S0); theta_k ~ N(mu, TAU); y ~ N(theta_k, SIGMA): TAU, SIGMA known."""
    return normal_normal_model(M0, S0, TAU, SIGMA, name="nn", n_features=1)


def _rounds(alg, train, labels, rounds, **kw):
    """``run_rounds`` for exactly ``rounds`` rounds (no early stop), without a progress bar."""
    return run_rounds(
        alg,
        train,
        rounds=rounds,
        labels=labels,
        progress=False,
        stop_when_converged=False,
        **kw,
    )


@pytest.fixture(scope="module")
def conjugate():
    rng = np.random.default_rng(0)
    sizes = [1, 2, 3, 5, 8, 20]
    theta = rng.normal(1.0, TAU, len(sizes))
    rows = [
        {"client": f"k{i}", "x": 0.0, "y": rng.normal(theta[i], SIGMA)}
        for i, n in enumerate(sizes)
        for _ in range(n)
    ]
    df = pd.DataFrame(rows)
    data = FederatedData.from_pandas(df, client_col="client", target="y", features=["x"])
    # closed form
    ybar = df.groupby("client", sort=False)["y"].mean().to_numpy()
    n = np.asarray(sizes, float)
    v = TAU**2 + SIGMA**2 / n  # Var(ybar_k | mu)
    post_prec = 1 / S0**2 + np.sum(1 / v)
    post_mean = (M0 / S0**2 + np.sum(ybar / v)) / post_prec
    a = (1 / TAU**2) / (1 / TAU**2 + n / SIGMA**2)
    c = (n * ybar / SIGMA**2) / (1 / TAU**2 + n / SIGMA**2)
    cond_var = 1 / (1 / TAU**2 + n / SIGMA**2)
    theta_mean = a * post_mean + c
    theta_var = a**2 / post_prec + cond_var
    exact = dict(
        mu_mean=post_mean,
        mu_var=1 / post_prec,
        theta_mean=theta_mean,
        theta_var=theta_var,
        ybar=ybar,
        n=n,
    )
    return data, exact


@pytest.mark.parametrize("site_fit", ["taylor", "regression", "gradient"])
@pytest.mark.parametrize("rounds", [1, 12])
def test_conjugate_global_posterior_is_exact(conjugate, site_fit, rounds):
    """One-shot (1 round) and EP (12 damped rounds) recover the closed-form p(mu | D) to ~1e-5.

    Damping 0.8 leaves (1 - 0.8)^r of the first error after r rounds: 4e-9 after 12.
    """
    data, exact = conjugate
    model = normal_normal()
    alg = ep.build(model, site_fit=site_fit, damping=1.0 if rounds == 1 else 0.8)
    st = _rounds(alg, data.train, data.clients, rounds).server_state
    np.testing.assert_allclose(st.mode[0], exact["mu_mean"], rtol=1e-5)
    np.testing.assert_allclose(1 / st.precision[0, 0], exact["mu_var"], rtol=1e-5)
    # each site is client k's exact likelihood of mu: N(ybar_k; mu, TAU^2 + SIGMA^2/n_k)
    v = TAU**2 + SIGMA**2 / exact["n"]
    np.testing.assert_allclose(st.sites.precision[:, 0, 0], 1 / v, rtol=1e-5)
    np.testing.assert_allclose(st.sites.shift[:, 0], exact["ybar"] / v, rtol=1e-5)


@pytest.mark.slow
def test_conjugate_personalized_and_one_shot_fits(conjugate):
    data, exact = conjugate
    model = normal_normal()
    for fit in (
        fit_one_shot(model, data, progress=False, num_samples=2000, seed=1),
        fit_ep(model, data, rounds=5, progress=False, num_samples=2000, seed=2),
    ):
        mu = fit.phi["mu"].ravel()
        theta = fit.theta["theta"].reshape(-1, data.n_clients)
        n_draws = mu.size
        # Monte Carlo tolerance: 5 standard errors, with an effective size of a quarter of
        # the draws (server NUTS draws are autocorrelated; personalized draws are independent
        # given them).
        ess = n_draws / 4
        tol_mu = 5 * np.sqrt(exact["mu_var"] / ess)
        assert abs(mu.mean() - exact["mu_mean"]) < tol_mu
        tol_th = 5 * np.sqrt(exact["theta_var"] / ess)
        assert np.all(np.abs(theta.mean(0) - exact["theta_mean"]) < tol_th)
        # variance within 5 standard errors of a variance estimate (sqrt(2/ess) relative)
        rel = theta.var(0) / exact["theta_var"]
        assert np.all(np.abs(rel - 1) < 5 * np.sqrt(2 / ess)), rel
        assert fit.info["min_personalize_acceptance"] == 1.0  # Gaussian conditionals


def test_conditional_sampler_exact_on_gaussian():
    """Laplace + independence MH: exact draws and evidence for a Gaussian density."""
    mean, sd = jnp.array([1.0, -2.0]), jnp.array([0.5, 2.0])

    def logp(th):
        return jnp.sum(-0.5 * ((th - mean) / sd) ** 2)

    keys = jax.random.split(jax.random.key(0), 4000)
    res = jax.vmap(lambda k: sample_conditional(k, logp, jnp.zeros(2)))(keys)
    np.testing.assert_allclose(res.acceptance, 1.0)
    np.testing.assert_allclose(res.log_evidence, jnp.sum(jnp.log(jnp.sqrt(2 * jnp.pi) * sd)))
    z = (res.theta - mean) / sd
    assert np.all(np.abs(z.mean(0)) < 5 / np.sqrt(4000))
    assert np.all(np.abs(z.std(0) - 1) < 5 * np.sqrt(0.5 / 4000))


def _glm_federation(n_clients=12, seed=0):
    fed = make_federation(
        family="normal",
        n_clients=n_clients,
        n_features=1,
        sizes="lognormal",
        median_size=10,
        seed=seed,
    )
    return federation_data(fed), GLM


GLM = hierarchical_glm("normal", 1)
GLM_EP = ep.build(GLM)  # one algorithm object: its compiled client step is reused across tests


@pytest.mark.slow
def test_permuting_clients_permutes_results():
    data, model = _glm_federation()
    alg = GLM_EP
    a = _rounds(alg, data.train, data.clients, 4)
    perm = np.random.default_rng(1).permutation(data.n_clients)
    permuted = ClientArrays(*(np.asarray(v)[perm] for v in data.train))
    b = _rounds(alg, permuted, [data.clients[i] for i in perm], 4)
    np.testing.assert_allclose(a.server_state.mode, b.server_state.mode, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(a.server_state.precision, b.server_state.precision, rtol=1e-7)
    np.testing.assert_allclose(
        a.server_state.sites.precision[perm], b.server_state.sites.precision, rtol=1e-7, atol=1e-9
    )


def _with_empty_client(arr: ClientArrays) -> ClientArrays:
    x, y, m = (np.asarray(v) for v in arr)
    return ClientArrays(
        np.concatenate([x, np.zeros_like(x[:1])]),
        np.concatenate([y, np.zeros_like(y[:1])]),
        np.concatenate([m, np.zeros_like(m[:1])]),
    )


@pytest.mark.slow
def test_client_without_rows_or_weight_changes_nothing():
    data, model = _glm_federation()
    alg = GLM_EP
    base = _rounds(alg, data.train, data.clients, 3)
    empty = _rounds(alg, _with_empty_client(data.train), [*data.clients, "empty"], 3)
    np.testing.assert_allclose(empty.server_state.mode, base.server_state.mode, rtol=1e-10)
    np.testing.assert_allclose(empty.server_state.sites.precision[-1], 0.0)
    # a client that does not take part (zero weight) is the same as a client that is absent
    part = np.ones(data.n_clients, bool)
    part[0] = False
    skip = _rounds(alg, data.train, data.clients, 3, participating=part)
    without = _rounds(
        alg, ClientArrays(*(np.asarray(v)[1:] for v in data.train)), data.clients[1:], 3
    )
    np.testing.assert_allclose(skip.server_state.mode, without.server_state.mode, rtol=1e-10)
    np.testing.assert_allclose(skip.server_state.sites.shift[0], 0.0)


def test_faulty_client_is_rejected_by_name_and_does_not_corrupt_state():
    data, model = _glm_federation()
    alg = GLM_EP
    x, y, m = (np.array(v) for v in data.train)
    y[3, 0] = np.nan  # client 3 sends a non-finite summary
    bad = data.clients[3]
    with pytest.warns(UserWarning, match=f"local inference failed on 1 client.*'{bad}'"):
        out = _rounds(alg, ClientArrays(x, y, m), data.clients, 3)
    assert all(h["failed"] == [bad] for h in out.history)
    part = np.ones(data.n_clients, bool)
    part[3] = False
    ref = _rounds(alg, data.train, data.clients, 3, participating=part)
    np.testing.assert_allclose(out.server_state.mode, ref.server_state.mode, rtol=1e-10)
    assert np.all(np.isfinite(out.server_state.precision))


def test_bad_summaries_are_named():
    labels = ["a", "b", "c"]
    site = gf.flat(2, batch_shape=(3,))
    bad = gf.GaussianFactor(site.precision.at[1, 0, 0].set(jnp.nan), site.shift)
    ok, reasons = check_messages(ep.EPMessage(bad, jnp.ones(3, bool)), labels)
    assert list(ok) == [True, False, True] and set(reasons) == {"b"}
    indefinite = gf.GaussianFactor(jnp.stack([jnp.eye(2), -jnp.eye(2), jnp.eye(2)]), site.shift)
    with pytest.raises(gf.InvalidFactorError, match="client 'b'"):
        gf.validate_batch(indefinite, 2, labels, require_proper=True)
    with pytest.raises(gf.InvalidFactorError):
        gf.validate_batch(gf.GaussianFactor(jnp.ones((3, 3, 3)), site.shift), 2, labels)
    with pytest.raises(ValueError, match="leading axis"):
        check_messages(ep.EPMessage(gf.flat(2, batch_shape=(2,)), jnp.ones(2, bool)), labels)


def test_checkpoint_and_resume_give_the_same_run(tmp_path):
    data, model = _glm_federation()
    alg = GLM_EP
    straight = _rounds(alg, data.train, data.clients, 5)
    ckpt = tmp_path / "ep-state"
    _rounds(alg, data.train, data.clients, 2, checkpoint=ckpt)
    resumed = _rounds(alg, data.train, data.clients, 5, checkpoint=ckpt, resume=True)
    assert len(resumed.history) == 5
    np.testing.assert_allclose(resumed.server_state.mode, straight.server_state.mode, rtol=1e-12)
    np.testing.assert_allclose(resumed.server_state.precision, straight.server_state.precision)


def test_message_size_does_not_depend_on_rows():
    data, model = _glm_federation()
    out = run_rounds(GLM_EP, data.train, rounds=1, labels=data.clients, progress=False)
    p = model.phi_dim
    assert out.history[0]["bytes_up_per_client"] == (p * p + p) * 8 + 1  # site + ok flag
    assert out.history[0]["bytes_down_per_client"] == 2 * (p * p + p) * 8  # G and own site
    assert len(set(np.asarray(data.train.mask).sum(1))) > 1  # clients of different sizes


@pytest.mark.slow
def test_cold_start_conjugate(conjugate):
    data, exact = conjugate
    fit = fit_ep(normal_normal(), data, rounds=5, progress=False, num_samples=2000, seed=3)
    # no rows: population predictive theta_new ~ N(E mu, Var mu + TAU^2)
    cs = cold_start(fit, seed=0)
    th = cs.theta["theta"]
    var = exact["mu_var"] + TAU**2
    assert abs(th.mean() - exact["mu_mean"]) < 5 * np.sqrt(var / (th.size / 4))
    assert abs(th.var() / var - 1) < 5 * np.sqrt(2 / (th.size / 4))
    # a few rows: reweighted global draws, then theta | mu, rows
    y_new = np.array([3.0, 2.5, 3.5])
    cs = cold_start(fit, x=np.zeros((3, 1)), y=y_new, seed=1)
    v = TAU**2 + SIGMA**2 / 3
    prec = 1 / exact["mu_var"] + 1 / v
    mu_mean = (exact["mu_mean"] / exact["mu_var"] + y_new.mean() / v) / prec
    a = (1 / TAU**2) / (1 / TAU**2 + 3 / SIGMA**2)
    c = (3 * y_new.mean() / SIGMA**2) / (1 / TAU**2 + 3 / SIGMA**2)
    want_mean = a * mu_mean + c
    want_var = a**2 / prec + 1 / (1 / TAU**2 + 3 / SIGMA**2)
    th = cs.theta["theta"]
    assert cs.ess > 1000
    assert abs(th.mean() - want_mean) < 5 * np.sqrt(want_var / (cs.ess / 4))
    with pytest.raises(ValueError, match="x must be"):
        cold_start(fit, x=np.zeros(3), y=y_new)
    with pytest.raises(ValueError, match="federated FitResult"):
        cold_start(nuts(normal_normal(), data, chains=1, warmup=50, samples=50))


@pytest.mark.slow
def test_ep_agrees_with_centralized_nuts_on_a_small_model():
    """EP vs NUTS on a hierarchical linear model, 12 clients.

    Tolerance: 0.15 posterior sd for means and ±15% for sds: EP's approximation error
    (≤ 0.1 sd in benchmarks/federated_accuracy.py) plus Monte Carlo error of two
    runs of 4000 draws (≤ 0.05 sd each at ESS ≥ 400).
    """
    data, model = _glm_federation(seed=4)
    ref = nuts(model, data, chains=4, warmup=1000, samples=1000, seed=0)
    fit = fit_ep(model, data, rounds=10, progress=False, seed=0)
    for group in ("phi", "theta"):
        for name, r in getattr(ref, group).items():
            f = getattr(fit, group)[name]
            r2 = r.reshape(-1, int(np.prod(r.shape[2:])))
            f2 = f.reshape(-1, int(np.prod(f.shape[2:])))
            z = np.abs(f2.mean(0) - r2.mean(0)) / r2.std(0)
            ratio = f2.std(0) / r2.std(0)
            assert z.max() < 0.15, (name, z)
            assert np.all((ratio > 0.85) & (ratio < 1.15)), (name, ratio)


@pytest.mark.slow
def test_federated_result_has_the_centralized_layout(conjugate):
    data, _ = conjugate
    model = normal_normal()
    fed = fit_one_shot(model, data, progress=False, num_samples=200, num_warmup=200)
    ref = nuts(model, data, chains=2, warmup=200, samples=200)
    a, b = fed.to_datatree(data), ref.to_datatree(data)
    assert set(a.posterior.data_vars) == set(b.posterior.data_vars)
    for v in a.posterior.data_vars:
        assert a.posterior[v].dims[2:] == b.posterior[v].dims[2:]
    assert list(a.posterior.client.values) == list(b.posterior.client.values)
    assert "fit_history" in a.children and "log_likelihood" in a.children


def test_personalize_shapes_and_batching(conjugate):
    data, _ = conjugate
    model = normal_normal()
    u = jnp.linspace(-1, 1, 7)[:, None]
    th1, acc = personalize(jax.random.key(0), model, u, data.train, batch_size=1)
    th2, _ = personalize(jax.random.key(0), model, u, data.train, batch_size=4)
    assert th1.shape == (data.n_clients, 7, 1)
    np.testing.assert_allclose(th1, th2)
    np.testing.assert_allclose(acc, 1.0)
    for bad in (-1, 2.5, True, "5"):
        with pytest.raises(ValueError, match="mh_steps must be a non-negative integer"):
            personalize(jax.random.key(0), model, u, data.train, mh_steps=bad)
        with pytest.raises(ValueError, match="mh_steps"):
            fit_ep(model, data, mh_steps=bad, progress=False)
    with pytest.raises(ValueError, match="newton_iter"):
        personalize(jax.random.key(0), model, u, data.train, newton_iter=-2)


def test_default_batch_counts_the_client_parameters():
    """The per-draw Hessians scale with the client's parameters: 4000 draws (x 6 MH
    proposals) of 80-row clients with two features and 6 client parameters (a missing
    feature's effects) run one client a batch (0.78 GB of XLA temporaries each); before,
    5 a batch (3.9 GB), which ran a CI worker out of memory. One parameter, 50 rows: 8."""
    from bayes_pfl.posterior import default_batch

    assert default_batch(8, 24000, 80, 2, 6) == 1
    assert default_batch(8, 24000, 50, 2, 1) == 8
    assert default_batch(8, 24000, 50, 2, 2) == 4
    assert default_batch(3, 10, 10, 1, 1) == 3  # never more than the clients
    assert default_batch(1, 10**6, 10**4, 50, 50) == 1  # never fewer than one


def test_build_rejects_bad_options():
    model = normal_normal()
    with pytest.raises(ValueError, match="tilted"):
        ep.build(model, tilted="exact")
    with pytest.raises(ValueError, match="damping"):
        ep.build(model, damping=0.0)
    with pytest.raises(ValueError, match="site_fit"):
        ep.build(model, site_fit="cubic")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ep.build(model, damping=1.0)


def test_chain_diagnostics_match_arviz():
    import arviz as az

    from bayes_pfl.local import chain_diagnostics

    rng = np.random.default_rng(0)
    x = np.zeros((2000, 2))
    for t in range(1, 2000):
        x[t] = 0.8 * x[t - 1] + rng.normal(size=2)
    rhat, ess = chain_diagnostics(jnp.asarray(x))
    want = min(float(az.ess(x[None, :, 0])), float(az.ess(x[None, :, 1])))
    np.testing.assert_allclose(float(ess), want, rtol=0.05)
    assert 0.99 < float(rhat) < 1.02
    drift = np.linspace(0, 5, 1000)[:, None] + rng.normal(size=(1000, 1))
    assert float(chain_diagnostics(jnp.asarray(drift))[0]) > 1.1  # a drifting chain is caught


@pytest.mark.slow
def test_nuts_tilted_ep_records_chain_diagnostics(conjugate):
    from bayes_pfl.diagnostics import diagnostics

    data, exact = conjugate
    fit = fit_ep(
        normal_normal(),
        data,
        rounds=2,
        sites="global",
        tilted="nuts",
        progress=False,
        num_samples=300,
        num_warmup=300,
        num_chains=2,
    )
    nuts_rounds = [h for h in fit.history if h["tilted"] == "nuts"]
    assert nuts_rounds and all(np.isfinite(h["client_rhat_max"]) for h in nuts_rounds)
    assert all(h["client_ess_min"] > 50 for h in nuts_rounds)
    d = diagnostics(fit)
    assert d["history"]["tilted_rhat_max"] < 1.1
    # NUTS moments are Monte Carlo estimates: each of the 6 sites comes from a 300-draw run
    # (ESS ~ 100-300, so each tilted mean is off by ~0.1 of its sd, and site errors add up
    # over clients); the global mean is close to exact, not equal
    mu = fit.phi["mu"].ravel()
    assert abs(mu.mean() - exact["mu_mean"]) < 0.5 * np.sqrt(exact["mu_var"])


def test_row_buckets_ladder():
    from bayes_pfl.simulation import row_buckets

    equal = np.ones((6, 50), bool)
    assert [(list(i), r) for i, r in row_buckets(equal)] == [(list(range(6)), 50)]
    sizes = np.array([2, 3, 80, 5, 12, 4, 0, 6, 3, 19])
    mask = np.arange(80) < sizes[:, None]
    buckets = row_buckets(mask)
    assert [r for _, r in buckets] == [20, 80]  # 80 / 4; 20 / 4 = 5 is below min_rows
    assert sorted(np.concatenate([i for i, _ in buckets]).tolist()) == list(range(10))
    for idx, rows in buckets:
        assert np.all(sizes[idx] <= rows)
    assert buckets[1][0].tolist() == [2]
    # not worth a second compiled shape: one bucket
    assert len(row_buckets(np.arange(80) < np.array([70, 75, 80, 5])[:, None])) == 1


def _sums_algorithm():
    """A toy algorithm: each client sends its masked sums of x, y and rows; the server adds."""
    from typing import NamedTuple

    from bayes_pfl.algorithms import Algorithm

    class Info(NamedTuple):
        rows: jax.Array

    def client_update(key, bcast, state, data):
        x, y, mask = data
        stats = jnp.stack([jnp.sum(jnp.where(mask[:, None], x, 0.0)), jnp.sum(y * mask)])
        msg = jnp.concatenate([stats, jnp.sum(mask)[None] + 0.0, bcast])
        return state + stats, msg, Info(jnp.sum(mask))

    def server_update(key, state, msgs, accept):
        return state + jnp.sum(msgs[:, :2], 0), Info(jnp.sum(msgs[:, 2]))

    return Algorithm(
        server_init=lambda key, k: jnp.zeros(2),
        client_init=lambda key, data: jnp.zeros(2),
        client_update=client_update,
        server_update=server_update,
        broadcast=lambda state: jnp.broadcast_to(jnp.sum(state), (SIZES.size, 1)),
        name="sums",
    )


SIZES = np.array([2, 3, 80, 5, 12, 4, 1, 6, 3, 19])


@pytest.mark.slow
def test_ragged_clients_bucketed_equal_padded():
    """The driver's client steps and personalization on clients grouped by size equal the
    padded run, each client's result in its place; so do client steps run in chunks of
    3 clients (``client_batch``: 10 clients = 3 + 3 + 3 + 1, and per bucket)."""
    from bayes_pfl.posterior import _personalize_kernel

    data = federation_data(
        make_federation(family="normal", n_clients=10, n_features=1, sizes=SIZES, seed=4)
    )
    runs = [
        _rounds(_sums_algorithm(), data.train, data.clients, 2, bucket_rows=b, **chunks)
        for b in (False, True)
        for chunks in ({}, {"client_batch": np.int64(3)})  # a numpy integer is accepted
    ]
    for run in runs[1:]:
        np.testing.assert_allclose(run.server_state, runs[0].server_state, rtol=1e-12)
        np.testing.assert_allclose(run.client_states, runs[0].client_states, rtol=1e-12)
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="client_batch"):
            run_rounds(
                _sums_algorithm(), data.train, rounds=1, labels=data.clients, client_batch=bad
            )
    rows = np.asarray(data.train.mask).sum(axis=1)
    assert sorted(rows.tolist()) == sorted(SIZES.tolist())
    for run in runs:  # every client's rows counted, in the server's total and per client
        assert run.history[-1]["rows"] == rows.sum()
        assert run.history[-1]["client_rows_max"] == rows.max()
    u = 0.1 * jax.random.normal(jax.random.key(0), (40, GLM.phi_dim))
    theta, acc = personalize(jax.random.key(5), GLM, u, data.train)
    keys = jax.random.split(jax.random.key(5), data.n_clients)
    arrays = (jnp.asarray(a) for a in (data.train.x, data.train.y, data.train.mask))
    padded = _personalize_kernel(GLM, 5, 1, 10)(keys, u, None, *arrays)  # no covariates
    np.testing.assert_allclose(theta, padded[0], rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(acc, padded[1], rtol=1e-7, atol=1e-9)


class _Msg(typing.NamedTuple):
    value: jax.Array
    ok: jax.Array


class _Info(typing.NamedTuple):
    converged: jax.Array


def _failing_algorithm(min_rows):
    """Clients with fewer than ``min_rows`` rows report a failed local inference."""
    from bayes_pfl.algorithms import Algorithm

    def client_update(key, bcast, state, data):
        ok = jnp.sum(data[2]) >= min_rows
        return state, _Msg(jnp.sum(data[1] * data[2]), ok), _Info(jnp.asarray(False))

    def server_update(key, state, messages, accept):
        return state + jnp.where(accept & messages.ok, messages.value, 0.0), _Info(
            jnp.asarray(False)
        )

    return Algorithm(
        lambda key, k: jnp.zeros(k),
        lambda key, data: jnp.zeros(()),
        client_update,
        server_update,
        lambda state: state,
        name="toy",
    )


def test_a_run_where_no_client_ever_contributes_is_an_error_and_others_are_named():
    from bayes_pfl.simulation import NoClientContributed

    df = pd.DataFrame({"c": list("aabbbccc"), "x": np.arange(8.0), "y": np.ones(8)})
    data = FederatedData.from_pandas(df, client_col="c", target="y", features=["x"])
    with pytest.raises(NoClientContributed, match=r"every client in every round.*'a', 'b', 'c'"):
        run_rounds(
            _failing_algorithm(10), data.train, rounds=2, labels=data.clients, progress=False
        )
    with pytest.warns(UserWarning, match=r"1 client\(s\) never contributed.*'a'"):
        out = run_rounds(
            _failing_algorithm(3), data.train, rounds=2, labels=data.clients, progress=False
        )
    np.testing.assert_allclose(out.server_state, [0.0, 6.0, 6.0])  # a's rows never counted
