"""Robust options (issue #19): a Student-t population, the precision cap, copied sites."""

import json
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from _helpers import check_one_effect_t_log_z, run_cli
from scipy import integrate, stats

from bayes_pfl import federated, load
from bayes_pfl.algorithms.effect_ep import cap_precision
from bayes_pfl.conflict import (
    client_conflict,
    duplicate_sites,
    flagged_clients,
    refit_without_flagged,
)
from bayes_pfl.diagnostics import DiagnosticsWarning, diagnostics
from bayes_pfl.federated import fit_ep, fit_one_shot
from bayes_pfl.gaussian import GaussianFactor
from bayes_pfl.models import eight_schools, hierarchical_glm
from bayes_pfl.population import gaussian_population
from bayes_pfl.spec import ModelSpecError


# ------------------------------------------------------------------ Student-t population
@pytest.mark.parametrize("df", [3.0, 4.0, 10.0])
def test_student_t_population_integral_equals_numerical_integration(df):
    """The server's ``Z_k = ∫ t_df(e | m, C) t_k(e) de`` (quadrature over the mixing
    weight) against adaptive quadrature over ``e``: one effect (a varying intercept;
    informative, vague and far-outlying sites) and two (intercept and slope, a correlated
    site)."""
    rng = np.random.default_rng(0)
    one = hierarchical_glm("bernoulli", feature_names=("x",)).with_population(df)
    pop = gaussian_population(one)
    u = jnp.asarray(0.5 * rng.standard_normal(one.phi_dim))
    check_one_effect_t_log_z(pop, u, df, 1e-5)

    two = hierarchical_glm("bernoulli", feature_names=("x",), varying="slopes")
    two = two.with_population(df)
    pop = gaussian_population(two)
    u = jnp.asarray(0.5 * rng.standard_normal(two.phi_dim))
    m, root = pop.moments(u)
    target = stats.multivariate_t(loc=np.asarray(m), shape=np.asarray(root @ root.T), df=df)
    a = np.array([[6.0, 1.5], [1.5, 3.0]])
    h = np.array([2.0, -1.0])
    got = float(pop.log_z(u, GaussianFactor(jnp.asarray(a), jnp.asarray(h))))
    val, _ = integrate.dblquad(
        lambda b, e: target.pdf([e, b]) * np.exp(-0.5 * np.array([e, b]) @ a @ [e, b] + h @ [e, b]),
        -15, 15, -15, 15, epsabs=1e-12, epsrel=1e-10,
    )  # fmt: skip
    assert abs(got - np.log(val)) < 1e-5


def test_client_prior_is_a_multivariate_student_t():
    """The client prior's density over the standardized sites is ``t_D(0, I, df)``, one
    mixing weight per client (not a t per coordinate)."""
    model = hierarchical_glm("bernoulli", feature_names=("x", "z"), varying="slopes")
    model = model.with_population(5.0)
    rng = np.random.default_rng(1)
    u_phi = jnp.asarray(0.3 * rng.standard_normal(model.phi_dim))
    for _ in range(3):
        w = jnp.asarray(2.0 * rng.standard_normal(model.theta_dim))  # b_raw, non-centered
        want = stats.multivariate_t(loc=np.zeros(3), shape=np.eye(3), df=5.0).logpdf(w)
        np.testing.assert_allclose(float(model.log_client_prior(w, u_phi)), want, rtol=1e-10)


def test_sampled_clients_follow_the_student_t_population():
    """``sample_theta`` (cold start without rows) draws ``w ~ t_D(0, I, df)``: ``|w|^2 / D``
    follows ``F(D, df)`` (Kolmogorov-Smirnov on 4,000 draws, fixed seed)."""
    model = hierarchical_glm("bernoulli", feature_names=("x",), varying="slopes")
    model = model.with_population(4.0)
    phi = model.phi_values(jnp.zeros(model.phi_dim))
    keys = jax.random.split(jax.random.key(3), 4000)
    w = np.asarray(jax.vmap(lambda k: model.sample_theta(k, phi))(keys))
    d = w.shape[1]
    assert stats.kstest(np.sum(w**2, 1) / d, stats.f(d, 4.0).cdf).pvalue > 1e-3
    # the Gaussian population's draws do not pass the same test
    gauss = np.asarray(jax.vmap(lambda k: model.with_population(None).sample_theta(k, phi))(keys))
    assert stats.kstest(np.sum(gauss**2, 1) / d, stats.f(d, 4.0).cdf).pvalue < 1e-6


def test_population_df_is_checked():
    model = eight_schools()
    for bad in (0, -1.0, float("nan"), True, "4"):
        with pytest.raises(ModelSpecError, match="population_df"):
            model.with_population(bad)
    with pytest.raises(ModelSpecError, match="population_df > 2"):
        gaussian_population(model.with_population(2.0))
    assert "population_df=4" in repr(model.with_population(4))
    assert model.with_population(4).with_population(None).population_df is None


def _t_conditional_moments(log_lik, loc, scale, df):
    """Mean and sd of ``t_df((b - loc) / scale) exp(log_lik(b))`` by quadrature."""

    def dens(b):
        return stats.t.pdf((b - loc) / scale, df) * np.exp(log_lik(b))

    lo, hi = loc - 60 * scale, loc + 60 * scale
    z = integrate.quad(dens, lo, hi, limit=400, points=[loc])[0]
    mean = integrate.quad(lambda b: b * dens(b), lo, hi, limit=400, points=[loc])[0] / z
    var = integrate.quad(lambda b: (b - mean) ** 2 * dens(b), lo, hi, limit=400, points=[loc])[0]
    return mean, np.sqrt(var / z)


@pytest.mark.slow
def test_personalization_under_a_student_t_population_is_exact():
    """A client's personalized draws given phi under a Student-t population (df 4) match
    the exact conditional by quadrature: a Gaussian likelihood with its exact site (the
    mixture proposal is the conditional: every step accepted; and so with df learned, at a
    draw whose df is 4), and five binary rows with
    a poor site (the exact likelihood corrects the proposal). 20,000 draws: the mean's
    Monte Carlo se is sd/141; the bounds are 4 se (the binary case's draws come from
    a 20-step chain started from a proposal, nearly independent at its acceptance)."""
    from bayes_pfl.algorithms.effect_ep import personalize_client

    n = 20_000
    # eight schools: school effect ~ t_4(mu, tau); y ~ N(theta, sigma); a school 5 sds out
    model = eight_schools().with_population(4.0)
    pop = gaussian_population(model)
    u = jnp.asarray([1.0, np.log(5.0)])  # mu 1, tau 5
    y, sigma = 28.0, 5.0
    site = GaussianFactor(jnp.asarray([[sigma**-2]]), jnp.asarray([y * sigma**-2]))
    draws, acc = personalize_client(
        jax.random.key(0), pop, site, jnp.tile(u, (n, 1)), jnp.asarray([[sigma]]),
        jnp.asarray([y]), jnp.asarray([True]), mh_steps=5,
    )  # fmt: skip
    theta = np.asarray(jax.vmap(lambda t: pop.z_of(t, u))(draws))[:, 0]
    mean, sd = _t_conditional_moments(lambda b: stats.norm.logpdf(y, b, sigma), 1.0, 5.0, 4)
    assert acc > 0.999
    assert abs(theta.mean() - mean) < 4 * sd / np.sqrt(n) and abs(theta.std() / sd - 1) < 0.02
    # the same with df learned, at a draw whose df is 4 (its own quadrature weights)
    learned = eight_schools().with_population("learn")
    pop_l = gaussian_population(learned)
    u_l = learned.phi_space.flatten(
        {"mu": jnp.asarray(1.0), "tau": jnp.asarray(5.0), "population_df": jnp.asarray(4.0)}
    )
    draws, acc = personalize_client(
        jax.random.key(2), pop_l, site, jnp.tile(u_l, (n, 1)), jnp.asarray([[sigma]]),
        jnp.asarray([y]), jnp.asarray([True]), mh_steps=5,
    )  # fmt: skip
    theta = np.asarray(jax.vmap(lambda t: pop_l.z_of(t, u_l))(draws))[:, 0]
    assert acc > 0.999
    assert abs(theta.mean() - mean) < 4 * sd / np.sqrt(n) and abs(theta.std() / sd - 1) < 0.02

    # a varying intercept, a global slope; five rows, four of them y = 1 at x = 2
    glm = hierarchical_glm("bernoulli", feature_names=("x",), varying="intercept")
    glm = glm.with_population(4.0)
    pop = gaussian_population(glm)
    assert pop.e_dim == 1 and pop.q_dim == 1
    u = glm.phi_space.flatten({"mu": jnp.asarray([-1.0]), "tau": jnp.asarray([0.5]),
                               "beta": jnp.asarray([0.5])})  # fmt: skip
    x = jnp.asarray([[2.0], [2.0], [2.0], [2.0], [-1.0]])
    yy = jnp.asarray([1.0, 1.0, 1.0, 1.0, 0.0])
    bad_site = GaussianFactor(jnp.eye(2), jnp.zeros(2))  # nothing like the likelihood
    draws, acc = personalize_client(
        jax.random.key(1), pop, bad_site, jnp.tile(u, (n, 1)), x, yy, jnp.ones(5, bool),
        mh_steps=20,
    )  # fmt: skip
    b = np.asarray(jax.vmap(lambda t: pop.z_of(t, u))(draws))[:, 0]

    def log_lik(b0):
        eta = b0 + 0.5 * np.asarray(x)[:, 0]
        return float(np.sum(np.asarray(yy) * eta - np.logaddexp(0.0, eta)))

    mean, sd = _t_conditional_moments(log_lik, -1.0, 0.5, 4)
    assert 0.2 < acc < 0.999
    assert abs(b.mean() - mean) < 4 * sd / np.sqrt(n) and abs(b.std() / sd - 1) < 0.03


@pytest.mark.slow  # a NUTS reference at target_accept_prob 0.99 (about a minute)
def test_student_t_population_nuts_and_one_shot_agree_and_pool_the_outlier_less(
    schools_outlier,
):
    """Eight schools' likelihoods are Gaussian, so one-shot with a Student-t population is
    exact up to the server's quadrature and Monte Carlo: it matches centralized NUTS of the
    same model (which samples the marginal t) within Monte Carlo error; and the t
    population pools the outlying school less and lets it move ``mu`` less than the
    Gaussian one does."""
    from _helpers import nuts

    robust = eight_schools().with_population(4.0)
    ref = nuts(robust, schools_outlier, warmup=1000, samples=2000, target_accept_prob=0.99)
    assert int(np.sum(ref.sample_stats["diverging"])) == 0
    fed = fit_one_shot(robust, schools_outlier, num_samples=2000, progress=False)
    for name in ("mu", "tau"):
        a, b = np.ravel(ref.phi[name]), np.ravel(fed.phi[name])
        # both chains' Monte Carlo errors; tau's heavy tail: 10% of the sd
        assert abs(a.mean() - b.mean()) < 0.1 * a.std(), name
        assert abs(a.std() - b.std()) < 0.15 * a.std(), name
    # every school's personalized posterior too (the generic sampler's Laplace proposal
    # had made them too narrow under the t: sd ratios down to 0.37 on a larger federation)
    a = np.asarray(ref.theta["theta"]).reshape(-1, len(schools_outlier.clients))
    b = np.asarray(fed.theta["theta"]).reshape(-1, len(schools_outlier.clients))
    assert np.all(np.abs(a.mean(0) - b.mean(0)) < 0.1 * a.std(0))
    assert np.all(np.abs(b.std(0) / a.std(0) - 1) < 0.1), b.std(0) / a.std(0)
    x = list(schools_outlier.clients).index("X")
    gauss = fit_one_shot(eight_schools(), schools_outlier, num_samples=2000, progress=False)
    theta_t = np.asarray(fed.theta["theta"])[..., x].mean()
    theta_g = np.asarray(gauss.theta["theta"])[..., x].mean()
    assert abs(theta_t - 70.0) < abs(theta_g - 70.0)  # pooled less toward the others
    assert np.mean(fed.phi["mu"]) < np.mean(gauss.phi["mu"])  # pulled up less by X


@pytest.mark.slow
def test_refit_without_the_flagged_client(schools_outlier):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first = fit_one_shot(eight_schools(), schools_outlier, num_samples=300, progress=False)
        robust = eight_schools().with_population(4.0)
        refit, data, flagged = refit_without_flagged(
            first,
            schools_outlier,
            lambda d: fit_one_shot(robust, d, num_samples=300, progress=False),
        )
    assert flagged == ["X"] and refit.info["excluded_clients"] == ["X"]
    assert "X" not in refit.clients and list(refit.clients) == list(data.clients)
    assert len(refit.clients) == len(schools_outlier.clients) - 1


@pytest.mark.slow  # three CLI processes, two fits
def test_cli_leaves_flagged_clients_out(tmp_path):
    df = load("eight_schools")
    extra = pd.DataFrame({"school": ["I", "J", "X"], "y": [4.0, 10.0, 70.0],
                          "sigma": [10.0, 12.0, 8.0]})  # fmt: skip
    csv = tmp_path / "schools.csv"
    pd.concat([df, extra], ignore_index=True).to_csv(csv, index=False)
    out = tmp_path / "out"
    r = run_cli(
        "fit", "--data", str(csv), "--client-col", "school", "--target", "y",
        "--features", "sigma", "--model", "eight_schools", "--method", "one-shot",
        "--population-df", "4", "--exclude-flagged", "--samples", "200", "--out", str(out),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "leaving out 1 flagged client(s) and fitting again: 'X'" in r.stderr
    run = json.loads((out / "run.json").read_text())
    assert run["excluded_clients"] == ["X"] and run["clients"] == 10
    r = run_cli(
        "fit", "--data", "eight_schools", "--method", "nuts", "--exclude-flagged",
        "--out", str(tmp_path / "bad"),
    )  # fmt: skip
    assert r.returncode == 2 and "--exclude-flagged needs a federated method" in r.stderr


def test_student_t_population_is_refused_where_particles_are_asked_for(schools):
    with pytest.raises(ValueError, match="Student-t population"):
        fit_ep(eight_schools().with_population(4.0), schools, summary="particles")


# ------------------------------------------------------------------ precision cap
def test_cap_bounds_each_sites_information_by_its_rows_and_keeps_its_mean():
    rng = np.random.default_rng(2)
    k, j = 7, 2
    n = np.array([10, 20, 30, 40, 50, 60, 70], float)
    per_row = np.array([[1.0, 0.3], [0.3, 0.5]])
    prec = np.stack([n_k * per_row for n_k in n])
    means = rng.standard_normal((k, j))
    prec[3] *= 1000.0  # one client claims a thousand times what its rows carry
    shift = np.einsum("kij,kj->ki", prec, means)
    sites = GaussianFactor(jnp.asarray(prec), jnp.asarray(shift))
    accept = jnp.ones(k, bool)
    out, capped, bound = cap_precision(sites, jnp.asarray(n), accept, 10.0, None)
    assert np.asarray(capped).tolist() == [i == 3 for i in range(k)]
    lam_max = np.linalg.eigvalsh(per_row).max()
    np.testing.assert_allclose(float(bound), 10 * lam_max, rtol=1e-10)
    assert np.linalg.eigvalsh(np.asarray(out.precision[3])).max() <= n[3] * float(bound) * (
        1 + 1e-10
    )
    # the capped site says the same thing (its mean), with less confidence
    np.testing.assert_allclose(np.linalg.solve(out.precision[3], out.shift[3]), means[3])
    keep = np.arange(k) != 3
    np.testing.assert_array_equal(np.asarray(out.precision)[keep], prec[keep])
    np.testing.assert_array_equal(np.asarray(out.shift)[keep], shift[keep])
    # a client that declares a million rows is held to the server's policy
    n_lie = n.copy()
    n_lie[3] = 1e6
    _, capped, _ = cap_precision(sites, jnp.asarray(n_lie), accept, 10.0, None)
    assert not bool(capped[3])
    _, capped, _ = cap_precision(sites, jnp.asarray(n_lie), accept, 10.0, 100.0)
    assert bool(capped[3])


def _forging(monkeypatch, forge):
    """The server receives ``forge(site)`` instead of the clients' sites (as an attacker
    between client and server, or a lying client, would send)."""
    orig = federated.effect_algorithm

    def patched(model, **options):
        alg = orig(model, **options)

        def server_update(rng_key, state, messages, accept):
            forged = messages._replace(site=forge(messages.site))
            return alg.server_update(rng_key, state, forged, accept)

        return alg._replace(server_update=server_update)

    monkeypatch.setattr(federated, "effect_algorithm", patched)


@pytest.mark.slow
def test_a_crafted_site_is_capped_and_named_in_diagnostics(monkeypatch, schools):
    """School A sends a site of precision 1e6 centred at 80: the cap bounds it, the
    diagnostics name A as capped and as conflicting with the rest."""

    def forge(site):
        prec = site.precision.at[0].set(1e6 * jnp.eye(site.shift.shape[-1]))
        return GaussianFactor(prec, site.shift.at[0].set(1e6 * 80.0))

    _forging(monkeypatch, forge)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = fit_one_shot(eight_schools(), schools, precision_cap=10.0, num_samples=300,
                           progress=False)  # fmt: skip
        assert fit.info["settings"]["precision_cap"] == 10.0
        diag = diagnostics(fit)
    assert diag["capped"] == ["A"]
    assert not diag["ok"]
    table = client_conflict(fit, warn=False)
    assert table["chi2"].idxmax() == "A" and table.loc["A", "flagged"]
    assert flagged_clients(fit) == ["A"]


@pytest.mark.slow
def test_a_copied_site_is_named(monkeypatch, schools):
    """School B sends school C's site (a sybil): the conflict score cannot see a copy of an
    ordinary school, the duplicate check names both."""

    def forge(site):
        return GaussianFactor(site.precision.at[1].set(site.precision[2]),
                              site.shift.at[1].set(site.shift[2]))  # fmt: skip

    _forging(monkeypatch, forge)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = fit_one_shot(eight_schools(), schools, num_samples=300, progress=False)
        diag = diagnostics(fit)
    assert duplicate_sites(fit) == ["B", "C"] == diag["duplicates"] == flagged_clients(fit)
    assert not diag["ok"]


@pytest.mark.slow
def test_honest_clients_with_identical_rows_are_named_without_an_accusation():
    """Two honest schools with the same row send the same site (as two two-child
    communities of ``guimmun`` do): the server cannot tell them from a copy, so they are
    named, and the warning says identical rows are a possible cause."""
    from bayes_pfl import FederatedData

    frame = load("eight_schools")
    twin = frame[frame["school"] == "C"].assign(school="C2")
    data = FederatedData.from_pandas(
        pd.concat([frame, twin]), client_col="school", target="y", features=["sigma"]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = fit_one_shot(eight_schools(), data, num_samples=300, progress=False)
    with pytest.warns(DiagnosticsWarning, match="identical sites") as rec:
        diag = diagnostics(fit)
    assert diag["duplicates"] == ["C", "C2"] == duplicate_sites(fit)
    assert any("rows are identical" in str(w.message) for w in rec)


@pytest.mark.slow
def test_no_cap_binds_and_no_copy_is_seen_on_honest_clients(schools):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = fit_one_shot(eight_schools(), schools, precision_cap=10.0, num_samples=300,
                           progress=False)  # fmt: skip
        diag = diagnostics(fit)
    assert diag["capped"] == [] and diag["duplicates"] == []


def test_precision_cap_is_checked(schools):
    for bad in (0.5, -1, True, "10"):
        with pytest.raises(ValueError, match="precision_cap"):
            fit_one_shot(eight_schools(), schools, precision_cap=bad)
    with pytest.raises(ValueError, match="sites='effects'"):
        fit_ep(eight_schools(), schools, sites="global", precision_cap=10.0)
    from bayes_pfl.privacy import DPBudget

    with pytest.raises(ValueError, match="not private"):
        fit_ep(eight_schools(), schools, precision_cap=10.0, dp=DPBudget(2.0))


# ------------------------------------------------------------------ front ends
@pytest.mark.slow
def test_cli_fits_a_robust_model(tmp_path):
    out = tmp_path / "robust"
    r = run_cli(
        "fit", "--data", "eight_schools", "--method", "one-shot", "--population-df", "4",
        "--precision-cap", "10", "--samples", "200", "--out", str(out),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    run = json.loads((out / "run.json").read_text())
    assert run["population"] == {"student_t_df": 4.0}
    assert run["settings"]["precision_cap"] == 10.0
    assert run["conflict"]["flagged"] == [] and run["conflict"]["threshold_p"] == 0.05 / 8
    table = pd.read_csv(out / "conflict.csv", index_col=0)
    assert list(table.columns) == ["chi2", "df", "p_value", "flagged", "duplicate", "capped"]
    assert len(table) == 8
    r = run_cli("report", str(out))
    assert r.returncode == 0, r.stderr
    page = (out / "report.html").read_text()
    assert "Client conflict" in page and (out / "figures" / "conflict.png").is_file()
    r = run_cli(
        "fit", "--data", "eight_schools", "--method", "ep", "--population-df", "2",
        "--out", str(tmp_path / "bad"),
    )  # fmt: skip
    assert r.returncode == 2 and "population_df > 2" in r.stderr


def test_flower_settings_carry_the_robust_options():
    from bayes_pfl.flower.config import FlowerSettings, build_phases

    settings = FlowerSettings(
        data="eight_schools", model="eight_schools", method="ep", population_df=4.0,
        precision_cap=10.0,
    )  # fmt: skip
    assert settings.hierarchical_model.population_df == 4.0
    (phase,) = build_phases(settings)
    want = federated.effect_algorithm(
        settings.hierarchical_model, damping=1.0, tol=0.05, precision_cap=10.0
    )
    assert phase.algorithm is want


def test_conflict_plot_draws_every_client_against_the_threshold():
    from bayes_pfl.plots import plot_conflict

    table = pd.DataFrame(
        {
            "chi2": [1.0, 30.0, 2.0, 0.5],
            "df": [1, 1, 1, 1],
            "p_value": [0.3, 1e-7, 0.15, 0.5],
            "flagged": [False, True, False, False],
            "duplicate": [False, False, True, True],
        },
        index=pd.Index(["a", "b", "c", "d"], name="client"),
    )
    res = plot_conflict(table)
    assert res.data.index.tolist() == ["b", "c", "a", "d"]  # most surprising first
    np.testing.assert_allclose(res.extra["threshold"], -np.log10(0.05 / 4))
    assert res.extra["flagged"] == ["b"]
    assert len(res.axes[0].patches) == 4
    with pytest.raises(ValueError, match="p_value"):
        plot_conflict(table.drop(columns="p_value"))
