"""A Student-t population with a learned df (issue #19): ``with_population("learn")``."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from _helpers import check_one_effect_t_log_z, run_cli
from numpyro.infer.util import log_density
from scipy import stats

from bayes_pfl import FederatedData, load
from bayes_pfl.federated import fit_ep, fit_one_shot
from bayes_pfl.models import eight_schools, hierarchical_glm
from bayes_pfl.population import gaussian_population, learned_scale_mixture
from bayes_pfl.spec import ModelSpecError
from bayes_pfl.student_t import df_prior


def _df_prior_logpdf(df):
    """``df = 2 + G``, ``G ~ Gamma(2, rate 0.1)``, written out."""
    return stats.gamma.logpdf(df - 2.0, 2.0, scale=10.0)


def _u_at_df(model, u, df):
    """``u`` with the learned df's coordinate (the last, ``log(df - 2)``) at ``df``."""
    assert model.phi_space.names[-1] == "population_df"
    return jnp.asarray(u).at[-1].set(np.log(df - 2.0))


def test_learned_df_is_a_site_of_phi_with_its_prior():
    model = eight_schools().with_population("learn")
    assert model.population_df == "learn"
    assert model.phi_space.names == ("mu", "tau", "population_df")
    assert "population_df=learned" in repr(model)
    # the prior: 2 + Gamma(2, rate 0.1)
    d = df_prior()
    for df in (2.5, 4.0, 30.0, 200.0):
        assert abs(float(d.log_prob(df)) - _df_prior_logpdf(df)) < 1e-10
    # the hyper-prior's density in unconstrained coordinates: the declared one, the df
    # prior and the Jacobian of df = 2 + exp(u)
    gauss = eight_schools()
    u = jnp.asarray([0.3, -0.2, np.log(5.0)])
    want = float(gauss.log_hyperprior(u[:2])) + _df_prior_logpdf(7.0) + np.log(5.0)
    assert abs(float(model.log_hyperprior(u)) - want) < 1e-10
    # back to a fixed df or Gaussian: the site goes
    assert model.with_population(None).phi_space.names == ("mu", "tau")
    assert model.with_population(4.0).phi_space.names == ("mu", "tau")
    assert model.with_population(4.0).with_population("learn").phi_space.names[-1] == (
        "population_df"
    )


def test_population_df_values_are_checked():
    model = eight_schools()
    for bad in ("learned", "4", "", 0, -1.0, float("nan"), float("inf"), True, [4.0]):
        with pytest.raises(ModelSpecError, match="population_df"):
            model.with_population(bad)
    with pytest.raises(ModelSpecError, match="'learn'"):
        model.with_population("t")


def test_centralized_density_equals_a_direct_computation(schools):
    """The pooled numpyro model's log density at a point: the declared Gaussian prior,
    the Student-t correction at the point's df, the df prior and the likelihood."""
    model = eight_schools().with_population("learn")
    arr = schools.train
    x, y, mask = jnp.asarray(arr.x), jnp.asarray(arr.y), jnp.asarray(arr.mask)
    rng = np.random.default_rng(4)
    w = 1.5 * rng.standard_normal(8)
    for mu, tau, df in ((1.0, 3.0, 3.5), (5.0, 8.0, 40.0)):
        params = {"mu": mu, "tau": tau, "population_df": df, "theta_trans": jnp.asarray(w)}
        got, _ = log_density(model.centralized_model, (x, y, mask), {}, params)
        theta = mu + tau * w
        want = (
            stats.norm.logpdf(mu, 0, 5)
            + stats.halfcauchy.logpdf(tau, scale=5)
            + _df_prior_logpdf(df)
            + np.sum(stats.t.logpdf(w, df))  # one effect per school: a t_1
            + np.sum(stats.norm.logpdf(np.asarray(y)[:, 0], theta, np.asarray(x)[:, 0, 0]))
        )
        np.testing.assert_allclose(float(got), want, rtol=1e-10)


def test_client_prior_and_cold_start_read_the_draws_df():
    model = hierarchical_glm("bernoulli", feature_names=("x",), varying="slopes")
    model = model.with_population("learn")
    rng = np.random.default_rng(1)
    u_phi = _u_at_df(model, 0.3 * rng.standard_normal(model.phi_dim), 5.0)
    w = jnp.asarray(2.0 * rng.standard_normal(model.theta_dim))  # non-centered sites
    want = stats.multivariate_t(loc=np.zeros(2), shape=np.eye(2), df=5.0).logpdf(w)
    np.testing.assert_allclose(float(model.log_client_prior(w, u_phi)), want, rtol=1e-10)
    # the prior's gradient in the df coordinate is finite (NUTS samples it)
    grad = jax.grad(lambda u: model.log_client_prior(w, u))(u_phi)
    assert np.all(np.isfinite(np.asarray(grad))) and float(grad[-1]) != 0.0
    # cold start: |w|^2 / D ~ F(D, df) at the draw's df (KS on 3,000 draws, fixed seed)
    phi = model.phi_values(u_phi)
    keys = jax.random.split(jax.random.key(3), 3000)
    draws = np.asarray(jax.vmap(lambda k: model.sample_theta(k, phi))(keys))
    d = draws.shape[1]
    assert stats.kstest(np.sum(draws**2, 1) / d, stats.f(d, 5.0).cdf).pvalue > 1e-3
    assert stats.kstest(np.sum(draws**2, 1) / d, stats.f(d, 50.0).cdf).pvalue < 1e-6


@pytest.mark.parametrize("df", [3.0, 10.0, 100.0])
def test_learned_population_integral_equals_numerical_integration(df):
    """The server's ``Z_k`` with the learned df's fixed grid, at the draw's df, against
    adaptive quadrature over the effect (informative, vague and far-outlying sites: a
    client 40 population sds out), as for a fixed df (tests/test_robust.py)."""
    rng = np.random.default_rng(0)
    model = hierarchical_glm("bernoulli", feature_names=("x",)).with_population("learn")
    pop = gaussian_population(model)
    u = _u_at_df(model, 0.5 * rng.standard_normal(model.phi_dim), df)
    assert abs(float(pop.df_at(u)) - df) < 1e-10
    assert abs(float(pop.cov_factor_at(u)) - df / (df - 2.0)) < 1e-10
    check_one_effect_t_log_z(pop, u, df, 1e-6)


def test_learned_mixture_weights_are_the_gamma_prior_and_differentiable():
    """The weights integrate ``λ`` (mean 1) and ``1/λ`` (``E[1/λ] = df / (df - 2)``; its
    integrand ``λ^{df/2 - 1}`` decays too slowly towards 0 below ``df = 4`` for the grid's
    end at ``λ = 2e-9``, where ``Z_k``'s has the extra ``λ^{r/2}``) and their gradient in df is
    right (the server's NUTS moves df). At ``df = 300`` the error is the docstring's
    ``exp(-13)``."""
    for df in (2.5, 4.0, 30.0, 300.0):
        lam, log_w = learned_scale_mixture(jnp.asarray(df))
        w, lam = np.exp(np.asarray(log_w)), np.asarray(lam)
        assert abs(w.sum() - 1.0) < 1e-12
        assert abs(w @ lam - 1.0) < 1e-5
        if df >= 4:
            assert abs(w @ (1.0 / lam) - df / (df - 2.0)) < 1e-5 * df / (df - 2.0)

    def inv_mean(df):
        lam, log_w = learned_scale_mixture(df)
        return jnp.sum(jnp.exp(log_w) / lam)

    g = float(jax.grad(inv_mean)(jnp.asarray(6.0)))
    assert abs(g - (-2.0 / 4.0**2)) < 1e-5  # d/df df / (df - 2) = -2 / (df - 2)^2


@pytest.mark.slow  # two one-shot fits of 13 schools (about 30 s): the default suite's budget
def test_one_shot_learns_a_smaller_df_with_an_outlier(schools_outlier):
    """Twelve schools like eight schools and a thirteenth: school X, 60 points off, or
    school M, like the others. The learned df's posterior is far lower with X than with M
    (where it stays near the prior, mean 22, median 19). Seed 0, two server chains of 250
    draws: mean 9.7 (median 6.1) with X, 22.0 (median 18.6) with M. (Outside this test,
    four chains of 500 draws: 22.6 without X or M, EP 22.2; 11.0 with X, EP 11.1.)"""
    model = eight_schools().with_population("learn")
    extra = pd.DataFrame(
        {
            "school": list("IJKLM"),
            "y": [4.0, 10.0, 1.0, 6.0, 5.0],
            "sigma": [10.0, 12.0, 9.0, 11.0, 10.0],
        }
    )
    clean = FederatedData.from_pandas(
        pd.concat([load("eight_schools"), extra], ignore_index=True), client_col="school",
        target="y", features=["sigma"],
    )  # fmt: skip
    small = {"num_chains": 2, "num_warmup": 300, "num_samples": 250, "mh_steps": 1}
    with_x = fit_one_shot(model, schools_outlier, progress=False, seed=0, **small)
    without = fit_one_shot(model, clean, progress=False, seed=0, **small)
    df_x = np.ravel(with_x.phi["population_df"])
    df_clean = np.ravel(without.phi["population_df"])
    assert np.mean(df_x) < 0.7 * np.mean(df_clean)
    assert np.median(df_x) < np.median(df_clean)
    assert np.all(df_x > 2.0)
    tree = with_x.to_datatree(log_likelihood=False)  # ArviZ carries the site
    assert tree.attrs["population_df"] == "learned"
    assert tree["posterior"]["population_df"].size == df_x.size


@pytest.mark.slow  # a NUTS reference at target_accept_prob 0.99 and 2,000 one-shot draws
def test_nuts_and_one_shot_agree_on_the_learned_df(schools_outlier):
    """Eight schools' likelihoods are Gaussian, so one-shot is exact up to the server's
    quadrature and Monte Carlo: its posterior of df (and of mu, tau) matches centralized
    NUTS of the same model. Measured (seed 0): df mean 11.03 (sd 10.8, median 6.88) by NUTS,
    10.99 (sd 10.8, median 6.82) by one-shot; the tolerance, a tenth of the posterior sd,
    is several times both chains' Monte Carlo errors of the mean (about 0.25 and 0.5 for df,
    whose posterior is skewed), as for a fixed df in tests/test_robust.py."""
    from _helpers import nuts

    model = eight_schools().with_population("learn")
    ref = nuts(model, schools_outlier, warmup=1000, samples=2000, target_accept_prob=0.99)
    assert int(np.sum(ref.sample_stats["diverging"])) == 0
    fed = fit_one_shot(model, schools_outlier, num_samples=2000, progress=False, seed=0)
    for name in ("mu", "tau", "population_df"):
        a, b = np.ravel(ref.phi[name]), np.ravel(fed.phi[name])
        assert abs(a.mean() - b.mean()) < 0.1 * a.std(), name
    a, b = np.ravel(ref.phi["population_df"]), np.ravel(fed.phi["population_df"])
    assert abs(np.median(a) - np.median(b)) < 0.1 * np.median(a)


def test_particle_summary_refuses_a_learned_df(schools):
    with pytest.raises(ValueError, match="population_df=learned"):
        fit_ep(eight_schools().with_population("learn"), schools, summary="particles")


def test_flower_settings_take_a_learned_df():
    from bayes_pfl.flower.config import LEARNED_DF_SENTINEL, FlowerSettings

    settings = FlowerSettings(
        data="eight_schools", model="eight_schools", method="ep", population_df=-1.0
    )
    assert LEARNED_DF_SENTINEL == -1.0
    assert settings.hierarchical_model.population_df == "learn"
    bad = FlowerSettings(data="eight_schools", model="eight_schools", population_df=-2.0)
    with pytest.raises(ValueError, match="population-df"):
        _ = bad.hierarchical_model


@pytest.mark.slow  # a command-line fit in a subprocess (about 20 s)
def test_cli_fits_a_learned_df(tmp_path):
    out = tmp_path / "learned"
    r = run_cli(
        "fit", "--data", "eight_schools", "--method", "one-shot", "--population-df", "learn",
        "--samples", "200", "--out", str(out),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    run = json.loads((out / "run.json").read_text())
    assert run["population"] == {"student_t_df": "learned"}
    assert run["conflict"]["flagged"] == []  # the cavities at each draw's df
    summary = pd.read_csv(out / "summary.csv", index_col=0)
    assert "population_df" in summary.index
    assert summary.loc["population_df", "mean"] > 2.0
    r = run_cli(
        "fit", "--data", "eight_schools", "--population-df", "many", "--out", str(tmp_path / "x")
    )
    assert r.returncode == 2 and "'learn'" in r.stderr
