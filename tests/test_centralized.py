"""The centralized NUTS reference."""

import json

import numpy as np
import pytest
import xarray as xr
from _helpers import federation_data, nuts
from scipy import stats

from bayes_pfl import FederatedData, load, load_posterior, save_fit, summarize
from bayes_pfl.models import eight_schools, hierarchical_glm, radon_intercept
from bayes_pfl.spec import ModelSpecError
from bayes_pfl.synthetic import make_federation


@pytest.fixture(scope="module")
def schools_fit(schools):
    return nuts(eight_schools(), schools, chains=4, warmup=1000, samples=2000, seed=1)


def test_eight_schools_matches_posteriordb(schools, schools_fit):
    """posteriordb's reference posterior: mu ≈ 4.4, tau ≈ 3.6 (given to 0.1).

    Tolerance: 4 Monte Carlo standard errors of our estimate plus 0.05 for the rounding
    of the reference values.
    """
    dt = schools_fit.to_datatree(schools)
    s = summarize(dt, var_names=["mu", "tau"])
    for name, ref in (("mu", 4.4), ("tau", 3.6)):
        tol = 4 * s.loc[name, "mcse_mean"] + 0.05
        assert abs(s.loc[name, "mean"] - ref) <= tol, (name, s.loc[name, "mean"], tol)
    assert s["r_hat"].max() <= 1.01


def test_datatree_layout(schools, schools_fit):
    dt = schools_fit.to_datatree(schools)
    assert set(dt.children) >= {"posterior", "sample_stats", "observed_data", "log_likelihood"}
    post = dt.posterior
    assert list(post["theta"].dims) == ["chain", "draw", "client"]
    assert list(post.client.values) == list("ABCDEFGH")
    assert post.sizes["chain"] == 4 and post.sizes["draw"] == 2000
    for stat in ("diverging", "tree_depth", "n_steps", "acceptance_rate", "energy", "lp"):
        assert stat in dt.sample_stats
    assert dt.log_likelihood["y"].shape == (4, 2000, 8)
    assert list(dt.log_likelihood.obs_client.values) == list("ABCDEFGH")
    # deterministic theta equals mu + tau * theta_trans draw by draw
    np.testing.assert_allclose(
        post["theta"], post["mu"] + post["tau"] * post["theta_trans"], rtol=1e-10, atol=1e-12
    )


def test_save_and_load_round_trip(tmp_path, schools, schools_fit):
    paths = save_fit(schools_fit, schools, tmp_path, dataset="eight_schools")
    assert {p.name for p in tmp_path.iterdir()} == {"posterior.nc", "summary.csv", "run.json"}
    dt = xr.open_datatree(paths["posterior"])
    assert list(dt.posterior.client.values) == list("ABCDEFGH")
    back = load_posterior(paths["posterior"])
    np.testing.assert_array_equal(back.posterior["mu"], schools_fit.phi["mu"])
    run = json.loads(paths["run"].read_text())
    assert run["method"] == "nuts" and run["dataset"] == "eight_schools"
    assert {"jax", "numpyro", "arviz", "python"} <= set(run["versions"])
    assert run["diagnostics"]["max_r_hat"] <= 1.01


@pytest.mark.slow
def test_nuts_intervals_cover_truth():
    """90% intervals of theta_k on a synthetic federation with known truth.

    Truth comes from the model itself (normal GLM, varying intercepts), so the
    coverage count over 60 clients should look like Binomial(60, 0.9): we accept the
    central 99.8% range of that law.
    """
    fed = make_federation(
        family="normal",
        n_clients=60,
        n_features=1,
        sizes="lognormal",
        median_size=8,
        sigma_y=1.0,
        seed=3,
    )
    data = federation_data(fed)
    fit = nuts(hierarchical_glm("normal", 1), data, chains=2, warmup=500, samples=1000, seed=0)
    b = fit.theta["b"][..., 0].reshape(-1, 60)
    lo, hi = np.quantile(b, [0.05, 0.95], axis=0)
    truth = fed.theta["b"][:, 0]
    covered = int(np.sum((truth >= lo) & (truth <= hi)))
    lo_ok, hi_ok = stats.binom.ppf([0.001, 0.999], 60, 0.9)
    assert lo_ok <= covered <= hi_ok, covered


def test_model_data_mismatch_is_named(schools):
    with pytest.raises(ModelSpecError, match="log_uppm"):
        nuts(radon_intercept(), schools, chains=1, warmup=5, samples=5)


@pytest.mark.slow
def test_posterior_predictive_for_held_out_rows(tmp_path):
    df = load("radon")
    data = FederatedData.from_pandas(
        df,
        client_col="county",
        target="log_radon",
        features=["log_uppm", "floor"],
        test_size=0.2,
        seed=0,
    )
    fit = nuts(radon_intercept(), data, chains=2, warmup=300, samples=300)
    dt = fit.to_datatree(data)
    n_test = int(np.asarray(data.test.mask).sum())
    pp = dt.posterior_predictive["log_radon"]
    assert pp.shape == (2, 300, n_test)
    assert dt.observed_data["log_radon_test"].shape == (n_test,)
    # each draw's mean is alpha[client] + beta . x; the predictive mean must match the
    # posterior mean of that within Monte Carlo error (sigma_y / sqrt(600) per row)
    post = dt.posterior
    clients = dt.posterior_predictive.test_obs_client.values
    x = np.asarray(data.test.x)[np.asarray(data.test.mask)]
    mu = (
        post["alpha"].sel(client=xr.DataArray(clients, dims="test_obs"))
        + post["beta"].sel(beta_term="log_uppm") * xr.DataArray(x[:, 0], dims="test_obs")
        + post["beta"].sel(beta_term="floor") * xr.DataArray(x[:, 1], dims="test_obs")
    ).mean(("chain", "draw"))
    sd = float(post["sigma_y"].mean())
    z = (pp.mean(("chain", "draw")) - mu) / (sd / np.sqrt(600))
    assert float(np.abs(z).max()) < 5
    paths = save_fit(fit, data, tmp_path)
    back = load_posterior(paths["posterior"])
    assert list(back.posterior_predictive.test_obs_client.values) == list(clients)


def test_kernel_options_reach_the_nuts_kernel(schools):
    """``kernel_options`` are numpyro's NUTS options: a start at chosen values with a step
    size of 1e-9 and no warmup leaves the one draw there (numpyro's default start, a uniform
    draw in (-2, 2) for mu, could not give mu = 7.5); ``median_start`` names two of them."""
    from numpyro.infer import init_to_value

    from bayes_pfl.centralized import fit_nuts, median_start

    start = {"init_strategy": init_to_value(values={"mu": 7.5}), "step_size": 1e-9,
             "adapt_step_size": False}  # fmt: skip
    fit = fit_nuts(eight_schools(), schools, num_chains=1, num_warmup=0, num_samples=1,
                   progress_bar=False, kernel_options=start)  # fmt: skip
    assert float(np.asarray(fit.phi["mu"]).ravel()[0]) == pytest.approx(7.5, abs=1e-6)
    assert set(median_start()) == {"init_strategy", "find_heuristic_step_size"}


def test_parallel_chains_run_in_calls_of_a_few_iterations(schools, monkeypatch):
    """Parallel chains run ``CHUNK`` iterations per call (memory held during a call grows
    with its iterations; see ``centralized.CHUNK``): with calls of 7 iterations that end
    off the warmup's and the run's boundaries (20 warmup, 16 draws), the draws and sampler
    statistics are numpyro's ``MCMC`` with the same keys, to round-off (1e-11 measured)."""
    import jax
    import jax.numpy as jnp
    from numpyro.infer import MCMC, NUTS

    from bayes_pfl import centralized

    monkeypatch.setattr(centralized, "CHUNK", 7)
    model = eight_schools()
    fit = centralized.fit_nuts(model, schools, num_warmup=20, num_samples=16, seed=3,
                               progress_bar=False, chain_method="parallel")  # fmt: skip
    assert fit.info["settings"]["chain_method"] == "parallel"
    arr = schools.train
    mcmc = MCMC(NUTS(model.centralized_model, target_accept_prob=0.9), num_warmup=20,
                num_samples=16, num_chains=4, chain_method="parallel", progress_bar=False)  # fmt: skip
    mcmc.run(jax.random.key(3), jnp.asarray(arr.x), jnp.asarray(arr.y), jnp.asarray(arr.mask),
             None, extra_fields=("num_steps", "diverging"))  # fmt: skip
    ref = mcmc.get_samples(group_by_chain=True)
    for name in ("mu", "tau"):
        assert fit.phi[name].shape == (4, 16)
        np.testing.assert_allclose(fit.phi[name], np.asarray(ref[name]), rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(fit.theta["theta"], np.asarray(ref["theta"]), rtol=1e-8, atol=1e-8)
    extra = mcmc.get_extra_fields(group_by_chain=True)
    np.testing.assert_array_equal(fit.sample_stats["n_steps"], np.asarray(extra["num_steps"]))
    np.testing.assert_array_equal(fit.sample_stats["diverging"], np.asarray(extra["diverging"]))


@pytest.mark.parametrize("option", [{"num_samples": 0}, {"num_warmup": -1}, {"num_chains": 0}])
def test_sampler_sizes_are_checked(schools, option):
    from bayes_pfl.centralized import fit_nuts

    with pytest.raises(ValueError, match=next(iter(option))):
        fit_nuts(eight_schools(), schools, progress_bar=False, **option)


def test_parallel_chains_beyond_the_devices_run_one_after_another(schools):
    """5 parallel chains on 4 devices: numpyro's warning, and the chains run sequentially."""
    from bayes_pfl.centralized import fit_nuts

    with pytest.warns(UserWarning, match="not enough devices"):
        fit = fit_nuts(eight_schools(), schools, num_chains=5, num_warmup=20, num_samples=10,
                       progress_bar=False, chain_method="parallel")  # fmt: skip
    assert fit.phi["mu"].shape == (5, 10)
