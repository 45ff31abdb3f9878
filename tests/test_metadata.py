"""Clients known by their metadata (#18): client covariates in the population,
``theta_k ~ N(mu + z_k W, T)``, from the model declaration to EP, the data and the cold
start."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pandas as pd
import pytest

from bayes_pfl import DataError, FederatedData
from bayes_pfl.algorithms import effect_ep
from bayes_pfl.federated import cold_start, fit_ep
from bayes_pfl.gaussian import GaussianFactor
from bayes_pfl.metadata import MetadataEncoding
from bayes_pfl.models import hierarchical_glm
from bayes_pfl.population import gaussian_population
from bayes_pfl.results import summarize
from bayes_pfl.spec import HierarchicalModel, ModelSpecError

MU, SHIFT, TAU, BETA = -0.5, 1.5, 0.3, 0.8
"""The synthetic federation's truth: client intercepts ``b_k ~ N(MU + SHIFT [group_k = b],
TAU)``, a shared slope ``BETA``."""


def _federation(seed: int, n_clients: int = 16, n_rows: int = 30, prefix: str = "c"):
    """A logistic federation whose client intercepts depend on a binary metadata column:
    ``(rows, metadata)`` data frames."""
    rng = np.random.default_rng(seed)
    labels = [f"{prefix}{k:02d}" for k in range(n_clients)]
    group = np.array(["a", "b"] * (n_clients // 2))
    b = MU + SHIFT * (group == "b") + TAU * rng.standard_normal(n_clients)
    x = rng.standard_normal((n_clients, n_rows))
    y = rng.random((n_clients, n_rows)) < 1 / (1 + np.exp(-(b[:, None] + BETA * x)))
    rows = pd.DataFrame(
        {"client": np.repeat(labels, n_rows), "x": x.ravel(), "y": y.ravel().astype(float)}
    )
    return rows, pd.DataFrame({"client": labels, "group": group})


def _data(rows, meta):
    return FederatedData.from_pandas(
        rows, client_col="client", target="y", features=["x"], metadata=meta
    )


@pytest.fixture(scope="module")
def federation():
    return _data(*_federation(0))


@pytest.fixture(scope="module")
def meta_model(federation):
    return hierarchical_glm("bernoulli", 1, client_covariates=federation.metadata.names)


@pytest.fixture(scope="module")
def ep_fit(meta_model, federation):
    return fit_ep(meta_model, federation, rounds=8, progress=False)


# ------------------------------------------------------------------ the declaration
def test_glm_population_mean_moves_with_the_client_covariates():
    """``b ~ N(mu + z W, tau)``: the client prior's density is that Normal's; ``W`` is a
    hyper-prior site ``[M, D]``; a model with covariates needs ``z`` of the declared width
    and one without refuses it."""
    model = hierarchical_glm("normal", 1, varying="slopes", centered=True, client_covariates=3)
    assert model.client_covariates == ("z0", "z1", "z2") and model.n_covariates == 3
    assert model.phi_space.names == ("mu", "tau", "sigma_y", "W")
    rng = np.random.default_rng(1)
    u_phi = jnp.asarray(rng.normal(size=model.phi_dim))
    u_theta = jnp.asarray(rng.normal(size=2))
    z = jnp.asarray(rng.normal(size=3))
    phi = model.phi_values(u_phi)
    assert phi["W"].shape == (3, 2)
    from scipy.stats import norm

    mean = np.asarray(phi["mu"] + z @ phi["W"])
    want = norm.logpdf(np.asarray(u_theta), mean, np.asarray(phi["tau"])).sum()
    np.testing.assert_allclose(float(model.log_client_prior(u_theta, u_phi, z)), want, rtol=1e-12)
    # the population's mean for a client: mu + z W (varying slopes: E = D = 2)
    pop = gaussian_population(model)
    np.testing.assert_allclose(pop.client_means(u_phi, z[None])[0], mean, rtol=1e-12)
    # the Student-t population keeps the covariates
    assert model.with_population(4.0).client_covariates == model.client_covariates
    with pytest.raises(ModelSpecError, match="declares client covariates"):
        model.log_client_prior(u_theta, u_phi)
    with pytest.raises(ModelSpecError, match=r"shape \(3,\)"):
        model.log_client_prior(u_theta, u_phi, jnp.zeros(2))
    plain = hierarchical_glm("normal", 1)
    with pytest.raises(ModelSpecError, match="declares no client covariates"):
        plain.sample_theta(jax.random.key(0), plain.phi_values(jnp.zeros(plain.phi_dim)), z)
    with pytest.raises(ModelSpecError, match="sequence of names"):
        HierarchicalModel(*_normal_parts(), name="n", client_covariates="region")
    from _helpers import normal_normal_parts  # client_prior(phi): no z to take

    with pytest.raises(ModelSpecError, match=r"client_prior\(phi, z\) failed .* 2 were given"):
        HierarchicalModel(*normal_normal_parts(0, 1, 1, 1), name="n", client_covariates=["a"])


def test_covariates_may_shift_chosen_terms_only():
    """``covariate_terms=["Intercept"]``: ``W [M, 1]`` moves the intercept's mean only
    (the slope's is ``mu`` for every client), in the prior's density and the population's
    client means; naming every term is the default model; bad terms are named."""
    from scipy.stats import norm

    model = hierarchical_glm("normal", 1, varying="slopes", centered=True, client_covariates=3,
                             covariate_terms=["Intercept"])  # fmt: skip
    rng = np.random.default_rng(2)
    u_phi = jnp.asarray(rng.normal(size=model.phi_dim))
    u_theta, z = jnp.asarray(rng.normal(size=2)), jnp.asarray(rng.normal(size=3))
    phi = model.phi_values(u_phi)
    assert phi["W"].shape == (3, 1)
    mean = np.asarray(phi["mu"]) + np.array([float(z @ phi["W"][:, 0]), 0.0])
    want = norm.logpdf(np.asarray(u_theta), mean, np.asarray(phi["tau"])).sum()
    np.testing.assert_allclose(float(model.log_client_prior(u_theta, u_phi, z)), want, rtol=1e-12)
    pop = gaussian_population(model)
    np.testing.assert_allclose(pop.client_means(u_phi, z[None])[0], mean, rtol=1e-12)
    assert "(on Intercept)" in model.description
    every = hierarchical_glm("normal", 1, varying="slopes", centered=True, client_covariates=3,
                             covariate_terms=["Intercept", "x0"])  # fmt: skip
    plain = hierarchical_glm("normal", 1, varying="slopes", centered=True, client_covariates=3)
    u = jnp.asarray(rng.normal(size=plain.phi_dim))
    assert float(every.log_client_prior(u_theta, u, z)) == float(
        plain.log_client_prior(u_theta, u, z)
    )
    for bad, match in ((["x9"], r"\['x9'\] not varying"), (["x0", "x0"], "distinct"),
                       ([], "distinct")):  # fmt: skip
        with pytest.raises(ModelSpecError, match=match):
            hierarchical_glm("normal", 1, varying="slopes", client_covariates=3,
                             covariate_terms=bad)  # fmt: skip
    with pytest.raises(ModelSpecError, match="needs client_covariates"):
        hierarchical_glm("normal", 1, varying="slopes", covariate_terms=["Intercept"])


def _normal_parts():
    """``theta_k ~ N(mu + z_k w, tau)``, ``y ~ N(theta_k, sigma_k)``: sigma the feature."""

    def hyperprior():
        numpyro.sample("mu", dist.Normal(0.0, 5.0))
        numpyro.sample("tau", dist.HalfNormal(2.0))
        numpyro.sample("w", dist.Normal(0.0, 5.0).expand([2]).to_event(1))

    def client_prior(phi, z):
        numpyro.sample("theta", dist.Normal(phi["mu"] + z @ phi["w"], phi["tau"]))

    def likelihood(theta, phi, x, y):
        numpyro.sample("y", dist.Normal(theta["theta"], x[:, 0]), obs=y)

    return hyperprior, client_prior, likelihood


def test_server_integral_is_the_exact_marginal_with_covariates():
    """With Gaussian likelihoods the server's ``Σ_k log Z_k(phi)`` with client ``k``'s own
    mean ``mu + z_k w`` is the exact marginal ``Σ_k log N(y_k | mu + z_k w, tau² + s_k²)``
    up to a constant in ``phi`` (the sites' normalization); the batched means equal
    each client's own :meth:`Population.moments`."""
    model = HierarchicalModel(*_normal_parts(), name="normal_cov", client_covariates=("a", "b"))
    pop = gaussian_population(model)
    rng = np.random.default_rng(2)
    k = 6
    z = jnp.asarray(rng.normal(size=(k, 2)))
    y = rng.normal(size=k) * 3
    s = rng.uniform(1.0, 3.0, size=k)
    sites = GaussianFactor(jnp.asarray(1 / s**2)[:, None, None], jnp.asarray(y / s**2)[:, None])

    def exact(u):
        phi = model.phi_values(u)
        m = np.asarray(phi["mu"] + z @ phi["w"])
        var = float(phi["tau"]) ** 2 + s**2
        return np.sum(-0.5 * np.log(2 * np.pi * var) - 0.5 * (y - m) ** 2 / var)

    def server(u):
        return float(effect_ep.server_log_density(pop, model.log_hyperprior, u, sites, z))

    u0, u1 = (jnp.asarray(rng.normal(size=model.phi_dim)) for _ in range(2))
    got = server(u1) - server(u0) - float(model.log_hyperprior(u1) - model.log_hyperprior(u0))
    np.testing.assert_allclose(got, exact(u1) - exact(u0), rtol=1e-10)
    means = pop.client_means(u1, z)
    for j in range(k):
        np.testing.assert_allclose(means[j], pop.moments(u1, z[j])[0], rtol=1e-12)
    with pytest.raises(ValueError, match="needs every client's covariates"):
        effect_ep.server_log_density(pop, model.log_hyperprior, u1, sites)
    # a Student-t population: the batched integral is the sum of each client's own
    robust = model.with_population(5.0)
    pop_t = gaussian_population(robust)
    one_by_one = 0.0
    for j in range(k):
        m, root = pop_t.moments(u1, z[j])
        site = GaussianFactor(sites.precision[j], sites.shift[j])
        one_by_one += float(pop_t.log_z_at(m, root, u1[pop_t.shared_index], site))
    batched = effect_ep.server_log_density(pop_t, robust.log_hyperprior, u1, sites, z)
    np.testing.assert_allclose(float(batched - robust.log_hyperprior(u1)), one_by_one, rtol=1e-12)


def test_covariance_that_depends_on_the_covariates_is_refused():
    def hyperprior():
        numpyro.sample("mu", dist.Normal(0.0, 1.0))

    def client_prior(phi, z):
        numpyro.sample("theta", dist.Normal(phi["mu"], jnp.exp(z[..., 0])))

    def likelihood(theta, phi, x, y):
        numpyro.sample("y", dist.Normal(theta["theta"] * jnp.ones(x.shape[0]), 1.0), obs=y)

    model = HierarchicalModel(
        hyperprior, client_prior, likelihood, name="hetero", client_covariates=["s"]
    )
    with pytest.raises(ModelSpecError, match="covariance .* depends on the client covariates"):
        gaussian_population(model)


@pytest.mark.slow
def test_models_without_covariates_are_unchanged():
    """The code paths without client covariates are the ones before them: the server's
    density and gradient, the cavities, the personalization and a prior draw of a model
    without covariates equal the values recorded at b6d75c8 (before #18) to rounding."""
    model = hierarchical_glm("bernoulli", 1, varying="slopes")
    pop = gaussian_population(model)
    rng = np.random.default_rng(3)
    k, j = 4, pop.z_dim
    a = rng.normal(size=(k, j, j))
    sites = GaussianFactor(
        jnp.asarray(a @ a.transpose(0, 2, 1) + np.eye(j)), jnp.asarray(rng.normal(size=(k, j)))
    )
    draws = jnp.asarray(0.3 * rng.normal(size=(50, model.phi_dim)))

    def dens(u):
        return effect_ep.server_log_density(pop, model.log_hyperprior, u, sites)

    cav, ess = effect_ep.cavities(pop, draws, sites)
    x = jnp.asarray(rng.normal(size=(10, 1)))
    y = jnp.asarray((rng.random(10) < 0.5).astype(float))
    mask = jnp.ones(10, bool)
    site0 = GaussianFactor(sites.precision[0], sites.shift[0])
    th, _ = effect_ep.personalize_client(jax.random.key(0), pop, site0, draws, x, y, mask)
    theta = model.sample_theta(jax.random.key(1), model.phi_values(draws[0]))
    got = [
        float(dens(draws[0])),
        float(jnp.sum(jax.grad(dens)(draws[0]))),
        float(jnp.sum(cav.precision)),
        float(jnp.sum(cav.shift)),
        float(jnp.sum(ess)),
        float(jnp.sum(th)),
        float(jnp.sum(theta)),
        float(model.client_log_joint(theta, draws[1], x, y, mask)),
    ]
    before = [
        -11.908358133405912,
        -6.830268719038727,
        5.7319404768056685,
        0.004588284011956996,
        183.801766008524,
        -21.341142020114578,
        0.7554443271342841,
        -9.691315706826948,
    ]
    np.testing.assert_allclose(got, before, rtol=1e-12, atol=1e-15)


# ------------------------------------------------------------------ the data
def test_metadata_are_encoded_once_and_bad_metadata_named():
    rows, meta = _federation(5, n_clients=4, n_rows=3)
    meta["size"] = [10.0, 20.0, 30.0, 40.0]
    meta["device"] = pd.Categorical(["ios", "web", "android", "web"])
    data = _data(rows, meta.iloc[::-1])  # the table's row order does not matter
    assert data.metadata.names == ("group=b", "size", "device=ios", "device=web")
    sd = np.std([10.0, 20.0, 30.0, 40.0])
    np.testing.assert_allclose(
        data.metadata.covariates[:, 1], (np.array([10, 20, 30, 40]) - 25) / sd
    )
    np.testing.assert_array_equal(
        data.metadata.covariates[:, [0, 2, 3]], [[0, 1, 0], [1, 0, 1], [0, 0, 0], [1, 0, 1]]
    )
    sub = data.subset(["c03", "c00"])
    np.testing.assert_array_equal(sub.metadata.covariates, data.metadata.covariates[[3, 0]])
    enc = data.metadata.encoding
    np.testing.assert_allclose(
        enc.encode_row({"group": "b", "size": 25.0, "device": "android"}), [1, 0, 0, 0]
    )
    with pytest.raises(DataError, match="level 'tv' of client 'new client' was not seen"):
        enc.encode_row({"group": "b", "size": 25.0, "device": "tv"})
    with pytest.raises(DataError, match="lacks column.*'device'"):
        enc.encode_row({"group": "b", "size": 25.0})
    with pytest.raises(DataError, match="'size' has missing values for client.*'c02'"):
        _data(rows, meta.assign(size=[1.0, 2.0, np.nan, 4.0]))
    with pytest.raises(DataError, match="no row for client.*'c01'"):
        _data(rows, meta.drop(index=1))
    with pytest.raises(DataError, match="'zz' are not in the federation"):
        _data(rows, pd.concat([meta, meta.iloc[:1].assign(client="zz")]))
    with pytest.raises(DataError, match="more than one row: 'c00'"):
        _data(rows, pd.concat([meta, meta.iloc[:1]]))
    with pytest.raises(DataError, match="single level"):
        _data(rows, meta.assign(group="a"))
    with pytest.raises(DataError, match="not in the metadata table"):
        MetadataEncoding.fit(meta.set_index("client"), ["region"])
    # a model whose covariates the data do not have
    with pytest.raises(ModelSpecError, match="data have no client metadata"):
        fit_ep(hierarchical_glm("bernoulli", 1, client_covariates=["group=b"]), _data(rows, None))


# ------------------------------------------------------------------ inference
@pytest.mark.slow
def test_ep_with_metadata_matches_centralized_nuts(meta_model, federation, ep_fit):
    """EP with the population's mean moved by the metadata against centralized NUTS of the
    same model (0 divergences, R-hat <= 1.01), and ``W`` recovers the true shift.

    Tolerances: the NUTS means' Monte Carlo error is about 0.03 sd (4000 draws, ESS over
    1000); EP's global draws carry its server's Monte Carlo noise through the cavities
    (0.1 to 0.17 sd on ``tau`` at other seeds, ``benchmarks/ep_seed_spread.py``), and
    ``tau`` its Gaussian-site approximation: 0.25 sd for means, 0.4 sd for ``tau``.
    """
    from _helpers import nuts

    ref = nuts(meta_model, federation)
    assert int(np.sum(ref.sample_stats["diverging"])) == 0
    s = summarize(ref.to_datatree(federation), var_names=["mu", "tau", "W", "beta"])
    assert s["r_hat"].max() <= 1.01
    for name, tol in (("mu", 0.25), ("W", 0.25), ("beta", 0.25), ("tau", 0.4)):
        a, b = np.ravel(ref.phi[name]), np.ravel(ep_fit.phi[name])
        assert abs(a.mean() - b.mean()) < tol * a.std(), (name, a.mean(), b.mean(), a.std())
        assert abs(a.std() - b.std()) < 0.25 * a.std(), (name, a.std(), b.std())
    b_ref = np.asarray(ref.theta["b"]).mean(axis=(0, 1))
    b_ep = np.asarray(ep_fit.theta["b"]).mean(axis=(0, 1))
    sd_ref = np.asarray(ref.theta["b"]).std(axis=(0, 1))
    assert np.max(np.abs(b_ref - b_ep) / sd_ref) < 0.25
    # W recovers the true shift: within 2.5 posterior sds, and clearly positive
    w = np.ravel(ref.phi["W"])
    assert abs(w.mean() - SHIFT) < 2.5 * w.std()
    assert np.mean(w > 0) > 0.99
    w_ep = np.ravel(ep_fit.phi["W"])
    assert abs(w_ep.mean() - SHIFT) < 2.5 * w_ep.std()


def _log_loss(p: np.ndarray, y: np.ndarray) -> float:
    p = np.clip(p, 1e-12, 1 - 1e-12)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def _predict(cs, x: np.ndarray) -> np.ndarray:
    """Posterior predictive ``P(y = 1 | x)`` of a cold start's draws (intercept-only GLM)."""
    eta = cs.theta["b"][:, :1] + np.asarray(cs.phi["beta"])[:, :1] * x[None, :]
    return np.mean(1 / (1 + np.exp(-eta)), axis=0)


@pytest.mark.slow
def test_cold_start_from_metadata_beats_the_population_average(federation, ep_fit):
    """New clients of the same federation, unseen in training: their metadata alone give a
    better held-out log-loss than the population average (the model without metadata,
    fitted the same way: 0.598 against 0.643 per row at this seed), and with a few rows the
    metadata still move the client."""
    plain = fit_ep(hierarchical_glm("bernoulli", 1), federation, rounds=8, progress=False)
    rows, meta = _federation(7, n_clients=200, n_rows=30, prefix="new")
    by_group = {g: cold_start(ep_fit, metadata={"group": g}, seed=1) for g in ("a", "b")}
    average = cold_start(plain, seed=1)
    with_meta, without = [], []
    for label, group in zip(meta["client"], meta["group"], strict=True):
        mine = rows[rows["client"] == label]
        x, y = mine["x"].to_numpy(), mine["y"].to_numpy()
        with_meta.append(_log_loss(_predict(by_group[group], x), y))
        without.append(_log_loss(_predict(average, x), y))
    diff = np.asarray(without) - np.asarray(with_meta)
    # paired over 200 new clients (each its own intercept and 30 Bernoulli rows: the
    # per-client differences scatter by about 0.1): better by more than 3 standard errors
    assert diff.mean() > 3 * diff.std(ddof=1) / np.sqrt(len(diff)), (diff.mean(), diff.std())
    assert diff.mean() > 0.02
    # the cold start's population mean is mu + W for group b, mu for group a
    gap = by_group["b"].theta["b"].mean() - by_group["a"].theta["b"].mean()
    np.testing.assert_allclose(gap, np.mean(ep_fit.phi["W"]), atol=0.15)
    # with a few rows: the same rows, the metadata still say where the client sits
    x0 = rows["x"].to_numpy()[:5, None]
    y0 = rows["y"].to_numpy()[:5]
    few = {g: cold_start(ep_fit, x0, y0, metadata={"group": g}, seed=2) for g in ("a", "b")}
    assert few["b"].theta["b"].mean() - few["a"].theta["b"].mean() > 0.5 * SHIFT
    assert min(few["a"].ess, few["b"].ess) > 100
    with pytest.raises(DataError, match="level 'c' of client 'new client' was not seen"):
        cold_start(ep_fit, metadata={"group": "c"})
    with pytest.raises(ValueError, match="give the new client's metadata"):
        cold_start(ep_fit)


@pytest.mark.slow
def test_cold_start_of_another_client_compiles_nothing(ep_fit, caplog):
    """The cold start's kernels are made once per model: a second new client of the same
    row count (other rows, other metadata, another seed) reuses them (a closure per call
    compiled every time: 7 s a client, against 0.06 s once compiled). Six rows: no other
    test of this module's fit cold-starts a client of six rows, so the first client
    compiles here whichever tests ran before it in this process."""
    n = 6
    rows, meta = _federation(7, n_clients=2, n_rows=n, prefix="new")
    x, y = rows["x"].to_numpy()[:, None], rows["y"].to_numpy()
    for first in (True, False):
        k = 0 if first else 1
        xk, yk = x[n * k : n * (k + 1)], y[n * k : n * (k + 1)]
        caplog.clear()
        with caplog.at_level(logging.WARNING), jax.log_compiles(True):
            cold_start(ep_fit, metadata={"group": meta["group"][k]}, seed=k)
            cold_start(ep_fit, xk, yk, metadata={"group": meta["group"][k]}, seed=k)
        compiled = [r.getMessage() for r in caplog.records if "Compiling" in r.getMessage()]
        if first:
            assert compiled  # the log does show compilations
        else:
            assert not compiled, compiled
    with pytest.raises(ValueError, match="mh_steps must be a non-negative integer"):
        cold_start(ep_fit, xk, yk, metadata={"group": "a"}, mh_steps=-1)


# ------------------------------------------------------------------ command line
@pytest.mark.slow
def test_cli_fits_with_a_metadata_file_and_names_bad_metadata(tmp_path):
    """``bayes-pfl fit --metadata meta.csv --metadata-cols group``: the model's population
    mean moves with the metadata (``W`` in the summary); a column the file lacks and a
    model that takes no covariates are clear errors."""
    from _helpers import run_cli

    rows, meta = _federation(0, n_clients=8, n_rows=20)
    rows.to_csv(tmp_path / "rows.csv", index=False)
    meta.assign(size=np.arange(8.0)).to_csv(tmp_path / "meta.csv", index=False)
    common = ["fit", "--data", str(tmp_path / "rows.csv"), "--client-col", "client"]
    common += ["--target", "y", "--features", "x", "--metadata", str(tmp_path / "meta.csv")]
    sampling = ["--chains", "1", "--warmup", "200", "--samples", "100", "--no-progress"]
    out = tmp_path / "out"
    r = run_cli(
        *common, "--metadata-cols", "group", "--model", "logistic", *sampling, "--out", str(out)
    )
    assert r.returncode == 0, r.stderr
    summary = pd.read_csv(out / "summary.csv", index_col=0)
    assert "W[0, 0]" in summary.index and "group=b" in (out / "run.json").read_text()
    r = run_cli(*common, "--metadata-cols", "region", "--model", "logistic", "--out", str(out))
    assert r.returncode == 2 and "metadata column(s) 'region' not in the metadata table" in r.stderr
    r = run_cli(*common, "--model", "eight_schools", "--out", str(tmp_path / "o2"))
    assert r.returncode == 2 and "takes no client covariates" in r.stderr


@pytest.mark.slow
def test_cli_metadata_on_chosen_terms(tmp_path):
    """``--varying slopes --metadata-terms Intercept``: one column of ``W`` (the intercept's);
    an unknown term, and the flag without ``--metadata``, are clear errors."""
    from _helpers import run_cli

    rows, meta = _federation(0, n_clients=8, n_rows=20)
    rows.to_csv(tmp_path / "rows.csv", index=False)
    meta.to_csv(tmp_path / "meta.csv", index=False)
    common = ["fit", "--data", str(tmp_path / "rows.csv"), "--client-col", "client", "--target",
              "y", "--features", "x", "--model", "logistic", "--varying", "slopes"]  # fmt: skip
    with_meta = [*common, "--metadata", str(tmp_path / "meta.csv")]
    sampling = ["--chains", "1", "--warmup", "200", "--samples", "100", "--no-progress"]
    out = tmp_path / "out"
    r = run_cli(*with_meta, "--metadata-terms", "Intercept", *sampling, "--out", str(out))
    assert r.returncode == 0, r.stderr
    summary = pd.read_csv(out / "summary.csv", index_col=0)
    assert "W[0, 0]" in summary.index and "W[0, 1]" not in summary.index
    r = run_cli(*with_meta, "--metadata-terms", "age", "--out", str(tmp_path / "o2"))
    assert r.returncode == 2 and "['age'] not varying" in r.stderr, r.stderr
    r = run_cli(*common, "--metadata-terms", "Intercept", "--out", str(tmp_path / "o3"))
    assert r.returncode == 2 and "--metadata-terms needs --metadata" in r.stderr, r.stderr
