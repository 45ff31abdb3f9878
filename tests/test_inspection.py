"""Inspection of fits: shrinkage (against the Normal-Normal closed form), agreement,
diagnostics, LOO."""

import dataclasses
import warnings

import arviz as az
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from _helpers import federation_data, normal_normal, nuts

from bayes_pfl import FederatedData, load
from bayes_pfl.diagnostics import DiagnosticsWarning, diagnostics
from bayes_pfl.inspection import (
    ParetoKWarning,
    agreement,
    local_estimates,
    loo_by_client,
    shrinkage_table,
)
from bayes_pfl.models import Terms, eight_schools, hierarchical_glm, radon_intercept
from bayes_pfl.results import FitResult, summarize
from bayes_pfl.spec import HierarchicalModel
from bayes_pfl.synthetic import make_federation

COLUMNS = [
    "n",
    "local_mean",
    "local_lo",
    "local_hi",
    "personal_mean",
    "personal_lo",
    "personal_hi",
    "pooled_mean",
    "shrinkage",
]
Z90 = 1.6448536269514722  # Phi^-1(0.95)


def _record(fn, *args, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fn(*args, **kwargs)
    return out, list(caught)


def _warned_diagnostics(fit, **kw):
    """``diagnostics(fit, **kw)``, which must warn, and the messages of the warnings."""
    with pytest.warns(DiagnosticsWarning) as rec:
        diag = diagnostics(fit, **kw)
    return diag, [str(w.message) for w in rec]


# ---------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def schools_fit(schools):
    return nuts(eight_schools(), schools, seed=1, target_accept_prob=0.95)


@pytest.fixture(scope="module")
def schools_dt(schools, schools_fit):
    return schools_fit.to_datatree(schools)


@pytest.fixture(scope="module")
def radon():
    df = load("radon")
    counties = ["AITKIN", "ANOKA", "BLUE EARTH", "COOK", "MURRAY"]  # 4, 52, 14, 2, 1 homes
    data = FederatedData.from_pandas(
        df[df["county"].isin(counties)],
        client_col="county",
        target="log_radon",
        features=["log_uppm", "floor"],
    )
    fit = nuts(radon_intercept(), data, chains=2, warmup=500, samples=1000, seed=0)
    return data, fit, fit.to_datatree(data)


# Normal-Normal model with known scales and (effectively) known population mean
MU, TAU, SIGMA = 0.5, 0.7, 1.0
SIZES = [1, 2, 4, 8, 16]
OFFSETS = [2.0, -1.5, 1.5, -2.0, 1.0]  # ybar_k - MU, away from 0 so shrinkage is well defined


def known_scales() -> HierarchicalModel:
    """mu ~ N(MU, 1e-3) (mu is effectively known); theta_k ~ N(mu, TAU); y ~ N(theta_k, SIGMA)."""
    return normal_normal(MU, 1e-3, TAU, SIGMA, name="known", n_features=1)


@pytest.fixture(scope="module")
def conjugate():
    rng = np.random.default_rng(0)
    rows = []
    for k, (n, d) in enumerate(zip(SIZES, OFFSETS, strict=True)):
        e = rng.normal(0.0, SIGMA, n)
        y = MU + d + (e - e.mean())  # client mean exactly MU + d
        rows += [{"client": f"k{k}", "x": 0.0, "y": v} for v in y]
    data = FederatedData.from_pandas(
        pd.DataFrame(rows), client_col="client", target="y", features=["x"]
    )
    fit = nuts(known_scales(), data, chains=2, warmup=500, samples=1000, seed=0)
    n = np.asarray(SIZES, float)
    ybar = MU + np.asarray(OFFSETS)
    local = pd.DataFrame(
        {"local_mean": ybar, "local_se": SIGMA / np.sqrt(n)},
        index=pd.Index(data.clients, name="client"),
    )
    return data, fit, fit.to_datatree(data), local


# ---------------------------------------------------------------------------
# shrinkage


def test_shrinkage_matches_normal_normal_closed_form(conjugate):
    """shrinkage = B_k = (sigma^2/n_k) / (sigma^2/n_k + tau^2) when mu, tau, sigma are known.

    E[theta_k | y] = (1 - B_k) ybar_k + B_k mu, so (ybar_k - E[theta_k|y]) / (ybar_k - mu) = B_k.
    The table's shrinkage differs from B_k by the Monte Carlo error of the posterior mean
    divided by |ybar_k - mu| (mu's posterior mean moves by ~1e-5 only): we allow 4 of those
    Monte Carlo standard errors, the mcse from az.summary.
    """
    data, _, dt, local = conjugate
    table = shrinkage_table(dt, data, local=local)
    n = np.asarray(SIZES, float)
    ybar = MU + np.asarray(OFFSETS)
    B = (SIGMA**2 / n) / (SIGMA**2 / n + TAU**2)

    assert list(table.columns) == COLUMNS
    assert list(table.index) == list(data.clients)
    assert table.attrs["var"] == "theta" and table.attrs["population"] == "mu"
    np.testing.assert_array_equal(table["n"], SIZES)
    np.testing.assert_allclose(table["local_mean"], ybar, rtol=0, atol=1e-12)
    np.testing.assert_allclose(table["local_hi"] - table["local_lo"], 2 * Z90 * SIGMA / np.sqrt(n))
    np.testing.assert_allclose(table["pooled_mean"], MU, atol=1e-4)

    mcse = az.summary(dt, var_names=["theta"], round_to="none")["mcse_mean"].to_numpy()
    tol = 4 * mcse / np.abs(ybar - MU) + 1e-4
    assert np.all(tol < 0.05), tol  # the check is sharp
    np.testing.assert_array_less(np.abs(table["shrinkage"].to_numpy() - B), tol)
    assert np.all(np.diff(table["shrinkage"]) < 0)  # more rows, less pooling

    # a number for the population mean gives the same answer
    fixed = shrinkage_table(dt, data, local=local, population=MU)
    np.testing.assert_allclose(fixed["shrinkage"], table["shrinkage"], atol=1e-3)


def test_shrinkage_needs_local_for_other_models(conjugate):
    data, _, dt, local = conjugate
    with pytest.raises(NotImplementedError, match="local="):
        shrinkage_table(dt, data)
    with pytest.raises(ValueError, match="lacks 1 row"):
        shrinkage_table(dt, data, local=local.iloc[1:])
    with pytest.raises(ValueError, match="population"):
        shrinkage_table(dt, data, local=local, population=[0.0, 1.0])


def test_shrinkage_eight_schools(schools, schools_fit, schools_dt):
    table = shrinkage_table(schools_dt, schools)
    y = load("eight_schools").set_index("school")
    assert list(table.columns) == COLUMNS
    assert list(table.index) == list("ABCDEFGH") and table.index.name == "client"
    assert table.attrs["var"] == "theta" and table.attrs["population"] == "mu"
    assert (table["n"] == 1).all()
    np.testing.assert_allclose(table["local_mean"], y["y"].to_numpy())
    np.testing.assert_allclose(table["local_lo"], y["y"] - Z90 * y["sigma"])
    # partial pooling: narrower than the local intervals, moved toward mu but not past it
    personal_width = table["personal_hi"] - table["personal_lo"]
    assert (personal_width < table["local_hi"] - table["local_lo"]).all()
    assert ((table["shrinkage"] > 0) & (table["shrinkage"] <= 1)).all(), table["shrinkage"]
    mu = float(schools_dt.posterior["mu"].mean())
    np.testing.assert_allclose(table["pooled_mean"], mu)
    # the FitResult works as well as its DataTree
    assert list(local_estimates(schools_fit, schools)["local_se"]) == list(y["sigma"])
    pd.testing.assert_frame_equal(shrinkage_table(schools_fit, schools), table)


def test_local_estimates_radon(radon):
    """alpha's no-pooling estimate: mean of log_radon - x @ E[beta], se = E[sigma_y] / sqrt(n)."""
    data, fit, dt = radon
    est = local_estimates(dt, data)
    beta = fit.phi["beta"].reshape(-1, 2).mean(0)
    sigma = fit.phi["sigma_y"].mean()
    df = data.to_pandas()
    resid = df["log_radon"] - df[["log_uppm", "floor"]].to_numpy() @ beta
    expected = resid.groupby(df["county"]).mean().reindex(data.clients)
    np.testing.assert_allclose(est["local_mean"], expected.to_numpy(), rtol=1e-10)
    np.testing.assert_allclose(est["local_se"], sigma / np.sqrt(data.n_rows()))
    table = shrinkage_table(fit, data)
    assert table.attrs["var"] == "alpha" and table.attrs["population"] == "mu_alpha"
    assert table.loc["ANOKA", "shrinkage"] < table.loc["MURRAY", "shrinkage"]  # 52 homes vs 1


def test_shrinkage_vector_client_variable():
    """The normal GLM's b has one term per client: rows are (client, term)."""
    fed = make_federation(family="normal", n_clients=6, n_features=1, median_size=10, seed=1)
    data = federation_data(fed)
    fit = nuts(hierarchical_glm("normal", 1), data, chains=2, warmup=400, samples=500)
    table = shrinkage_table(fit, data)
    assert table.index.names == ["client", "term"]  # the model labels b's one entry
    assert list(table.index) == [(c, "Intercept") for c in data.clients]
    beta = fit.phi["beta"].reshape(-1, 1).mean(0)
    df = data.to_pandas()
    resid = df["y"] - df[list(data.features)].to_numpy() @ beta
    expected = resid.groupby(df["client"]).mean().reindex(data.clients)
    np.testing.assert_allclose(table["local_mean"], expected.to_numpy(), rtol=1e-10)
    np.testing.assert_allclose(table["pooled_mean"], fit.phi["mu"].mean())


def _fake_fit(model, data, seed=0):
    """A FitResult with random draws of every site (shapes and labels are what count)."""
    rng = np.random.default_rng(seed)
    K = len(data.clients)
    phi = {s.name: np.abs(rng.normal(size=(2, 50, *s.shape))) for s in model.phi_space.sites}
    theta = {s.name: rng.normal(size=(2, 50, K, *s.shape)) for s in model.theta_space.sites}
    for name in model.theta_deterministic:
        theta[name] = rng.normal(size=(2, 50, K, *np.shape(model.client_trace[name]["value"])))
    return FitResult("nuts", model, tuple(data.clients), phi, theta)


def test_shrinkage_has_every_varying_term():
    """Terms vary by client with a mean (Intercept, age) or around 0 (dose); bmi is common."""
    rng = np.random.default_rng(3)
    df = pd.DataFrame(rng.normal(size=(48, 3)), columns=["age", "bmi", "dose"])
    df["hospital"] = np.repeat(["h1", "h2", "h3", "h4"], 12)
    df["y"] = rng.normal(size=48)
    data = FederatedData.from_pandas(
        df, client_col="hospital", target="y", features=["age", "bmi", "dose"]
    )
    terms = Terms(
        ("age", "bmi", "dose"),
        varying=("Intercept", "age", "dose"),
        common=("Intercept", "age", "bmi"),
    )
    fit = _fake_fit(hierarchical_glm("normal", varying=terms), data)
    table = shrinkage_table(fit, data)
    assert table.index.names == ["client", "term"]
    assert list(table.index) == [
        (c, t) for c in ("h1", "h2", "h3", "h4") for t in ("Intercept", "age", "dose")
    ]
    mu = fit.phi["mu"].mean(axis=(0, 1))  # (Intercept, age); dose varies around 0
    np.testing.assert_allclose(table.xs("age", level="term")["pooled_mean"], mu[1])
    np.testing.assert_allclose(table.xs("dose", level="term")["pooled_mean"], 0.0)
    # local: least squares of y - bmi * E[beta] on [1, age, dose], client by client
    beta, sigma = fit.phi["beta"].mean(), fit.phi["sigma_y"].mean()
    rows = df[df["hospital"] == "h3"]
    x = np.column_stack([np.ones(12), rows["age"], rows["dose"]])
    coef = np.linalg.lstsq(x, rows["y"] - beta * rows["bmi"], rcond=None)[0]
    np.testing.assert_allclose(table.loc["h3", "local_mean"], coef, rtol=1e-8)
    se = sigma * np.sqrt(np.diag(np.linalg.inv(x.T @ x)))
    np.testing.assert_allclose(table.loc["h3", "local_hi"] - coef, Z90 * se, rtol=1e-8)
    np.testing.assert_allclose(
        table.loc[("h2", "dose"), "personal_mean"], fit.theta["b"][:, :, 1, 2].mean()
    )


# ---------------------------------------------------------------------------
# agreement


def test_agreement_with_itself(schools_fit, schools_dt):
    cmp = agreement(schools_dt, schools_fit)
    assert list(cmp.columns) == [
        "mean_ref",
        "sd_ref",
        "mean_other",
        "sd_other",
        "z",
        "sd_ratio",
        "mcse_ref",
    ]
    assert {"mu", "tau", "theta[A]", "theta_trans[H]"} <= set(cmp.index)
    assert len(cmp) == 2 + 2 * 8
    assert (cmp["z"] == 0).all() and (cmp["sd_ratio"] == 1).all()
    assert (cmp["mcse_ref"] > 0).all()


def test_agreement_two_seeds(schools, schools_dt):
    """Two NUTS runs agree up to Monte Carlo error: z ~ sqrt(mcse_ref^2 + mcse_other^2) / sd_ref."""
    other = nuts(eight_schools(), schools, seed=2, target_accept_prob=0.95)
    cmp = agreement(schools_dt, other)
    noise = np.sqrt(2) * cmp["mcse_ref"] / cmp["sd_ref"]
    assert (cmp["z"] < 5 * noise).all(), cmp[["z"]].assign(noise=noise)
    assert cmp["sd_ratio"].between(0.85, 1.15).all(), cmp["sd_ratio"]


def test_agreement_mismatched_variables(schools_dt):
    post = schools_dt["posterior"].to_dataset()
    fewer = xr.DataTree.from_dict({"posterior": post.drop_vars("theta_trans")})
    with pytest.raises(ValueError, match=r"only in reference \['theta_trans'\]"):
        agreement(schools_dt, fewer)
    with pytest.raises(ValueError, match="only in other"):
        agreement(fewer, schools_dt)
    with pytest.raises(ValueError, match="missing in other"):
        agreement(schools_dt, fewer, var_names=["mu", "theta_trans"])
    cmp = agreement(schools_dt, fewer, var_names=["mu", "theta"])
    assert list(cmp.index) == ["mu"] + [f"theta[{s}]" for s in "ABCDEFGH"]
    other_clients = xr.DataTree.from_dict(
        {"posterior": post.assign_coords(client=list("ABCDEFGZ"))}
    )
    with pytest.raises(ValueError, match="elements differ"):
        agreement(schools_dt, other_clients)


# ---------------------------------------------------------------------------
# diagnostics


def test_diagnostics_good_fit(schools_fit, schools_dt):
    diag, caught = _record(diagnostics, schools_dt)
    assert not [w for w in caught if issubclass(w.category, DiagnosticsWarning)]
    assert diag["ok"] and diag["failing"] == [] and diag["divergences"] == 0
    assert diag["max_r_hat"] <= 1.01 and diag["min_ess_bulk"] >= 400
    assert diag["history"] is None
    assert diagnostics(schools_fit)["max_r_hat"] == diag["max_r_hat"]


def test_diagnostics_short_fit_warns(schools):
    short = nuts(eight_schools(), schools, chains=2, warmup=5, samples=20, seed=3)
    with pytest.warns(DiagnosticsWarning, match=r"parameter\(s\) fail r_hat") as rec:
        diag = diagnostics(short)
    assert not diag["ok"] and diag["failing"]
    assert diag["max_r_hat"] > 1.01 or diag["min_ess_bulk"] < 400
    message = " ".join(str(w.message) for w in rec)
    assert diag["failing"][0] in message or len(diag["failing"]) > 10


def test_diagnostics_reads_a_given_summary(schools, tmp_path):
    """A saved ``summary.csv`` gives the same checks as computing the summary again (the
    command line passes it); one without the diagnostic columns is refused."""
    short = nuts(eight_schools(), schools, chains=2, warmup=5, samples=20, seed=3)
    summarize(short.to_datatree(schools)).to_csv(tmp_path / "summary.csv")
    saved = pd.read_csv(tmp_path / "summary.csv", index_col=0)
    with pytest.warns(DiagnosticsWarning):
        fresh = diagnostics(short)
    with pytest.warns(DiagnosticsWarning):
        given = diagnostics(short, summary=saved)
    keys = ("max_r_hat", "min_ess_bulk", "min_ess_tail", "failing")
    assert {k: given[k] for k in keys} == {k: fresh[k] for k in keys}
    assert fresh["failing"]
    with pytest.raises(ValueError, match="ess_tail"):
        diagnostics(short, summary=saved.drop(columns="ess_tail"))


def _history(entries):
    base = {
        "wall_time_s": 0.1,
        "n_rejected": 0,
        "rejected": [],
        "failed": [],
        "mean_change": 0.5,
        "sd_change": 0.5,
        "converged": False,
        "client_ok_count": 8,
    }
    return [{"round": r, **base, **e} for r, e in enumerate(entries, start=1)]


def test_diagnostics_history_names_clients(schools_fit):
    """Failures after round 1 and rejected messages are named; a round-1-only failure is not."""
    history = _history(
        [
            {"failed": ["A"], "client_ok_count": 6, "rejected": ["C"], "n_rejected": 1},
            {"failed": ["B"], "client_ok_count": 7},
            {"mean_change": 1e-4, "sd_change": 1e-4, "converged": True},
        ]
    )
    ep_fit = dataclasses.replace(schools_fit, method="ep", history=history)
    diag, msgs = _warned_diagnostics(ep_fit)
    assert any("local inference failed" in m and "'B'" in m and "'A'" not in m for m in msgs)
    assert any("rejected" in m and "'C'" in m for m in msgs)
    assert not any("did not converge" in m for m in msgs)
    h = diag["history"]
    assert h["rounds"] == 3 and h["converged"] and h["last_mean_change"] == 1e-4
    assert h["failed_clients"] == {"A": [1], "B": [2]} and h["rejected_clients"] == {"C": [1]}
    assert h["rounds_with_failed"] == [1, 2] and h["rounds_with_rejected"] == [1]

    # from the DataTree only counts survive: rounds are reported, clients cannot be named
    dt = ep_fit.to_datatree()
    diag_dt, msgs = _warned_diagnostics(dt)
    assert any("in rounds [2]; pass the FitResult" in m for m in msgs)
    assert "messages rejected in rounds [1]" in msgs
    assert diag_dt["history"]["rounds_with_failed"] == [1, 2]
    assert diag_dt["history"]["rounds_with_rejected"] == [1]
    # ... unless the history is given beside it (a saved fit's run.json holds it)
    diag_h, msgs = _warned_diagnostics(dt, history=ep_fit.history)
    assert any("local inference failed" in m and "'B'" in m and "'A'" not in m for m in msgs)
    assert any("rejected" in m and "'C'" in m for m in msgs)
    assert diag_h["history"]["failed_clients"] == {"A": [1], "B": [2]}

    # a one-shot fit whose client failed in its only round; EP that did not converge
    one = dataclasses.replace(schools_fit, method="one-shot", history=_history([{"failed": ["H"]}]))
    with pytest.warns(DiagnosticsWarning, match="'H'"):
        diagnostics(one)
    stuck = dataclasses.replace(schools_fit, method="ep", history=_history([{}, {}]))
    with pytest.warns(DiagnosticsWarning, match="did not converge in 2 round"):
        diagnostics(stuck)


def _effect_history(entries):
    """Rounds of EP over client effects (the keys ``run_rounds`` records for it)."""
    base = {
        "sites": "effects",
        "global_mean_change": 0.4,
        "global_sd_change": 0.2,
        "n_accepted": 8,
        "server_divergences": 0,
        "min_loo_ess": 150.0,
        "client_converged_count": 8,
        "client_iterations_max": 6.0,
        "client_ess_min": 60.0,  # importance sampling, not NUTS: no "tilted NUTS" warning
        "client_laplace_fallback_count": 0,
    }
    return _history([{**base, **e} for e in entries])


def test_diagnostics_effect_sites_history(schools_fit):
    """EP over client effects: convergence of the clients' marginals and of the global
    posterior, failed clients named, server divergences and Laplace fallbacks reported."""
    history = _effect_history(
        [
            {"failed": ["A"], "client_ok_count": 7, "client_laplace_fallback_count": 2},
            {"failed": ["B"], "client_ok_count": 7, "server_divergences": 3},
            {"mean_change": 0.2, "global_mean_change": 0.01, "client_laplace_fallback_count": 1},
        ]
    )
    ep_fit = dataclasses.replace(schools_fit, method="ep", history=history)
    diag, msgs = _warned_diagnostics(ep_fit)
    assert not any("tilted NUTS" in m for m in msgs)
    assert any("local inference failed" in m and "'B'" in m and "'A'" not in m for m in msgs)
    stuck = [m for m in msgs if "did not converge in 3 round" in m]
    assert len(stuck) == 1 and "mean 0.2 sd" in stuck[0] and "mean 0.01 sd" in stuck[0]
    assert any("3 divergent transition(s) in the server's NUTS runs" in m for m in msgs)
    assert any("1 client(s) fell back to the Laplace" in m and "size 60" in m for m in msgs)
    h = diag["history"]
    assert h["sites"] == "effects" and h["rounds"] == 3 and not h["converged"]
    assert h["last_mean_change"] == 0.2 and h["last_global_mean_change"] == 0.01
    assert h["last_global_sd_change"] == 0.2 and h["min_loo_ess"] == 150.0
    assert h["laplace_fallbacks"] == {1: 2, 3: 1} and h["server_divergences"] == 3
    assert h["tilted_is_ess_min"] == 60.0 and np.isnan(h["tilted_ess_min"])
    assert h["failed_clients"] == {"A": [1], "B": [2]}

    # the DataTree keeps the numeric columns: the same summary, clients by round only
    diag_dt, msgs = _warned_diagnostics(ep_fit.to_datatree())
    assert any("did not converge in 3 round" in m and "mean 0.01 sd" in m for m in msgs)
    h_dt = diag_dt["history"]
    assert h_dt["sites"] == "effects" and h_dt["rounds_with_failed"] == [1, 2]
    for key in ("laplace_fallbacks", "server_divergences", "min_loo_ess", "tilted_is_ess_min"):
        assert h_dt[key] == h[key], key

    # converged, no fallback in the last round, no divergences: nothing about the rounds
    fine = _effect_history([{"client_laplace_fallback_count": 2}, {"converged": True}])
    ok_fit = dataclasses.replace(schools_fit, method="ep", history=fine)
    diag, caught = _record(diagnostics, ok_fit)
    assert not [w for w in caught if issubclass(w.category, DiagnosticsWarning)]
    assert diag["ok"] and diag["history"]["converged"]
    # VI over client effects reports its convergence too; its sites use no importance weights
    vi = dataclasses.replace(schools_fit, method="vi", history=history)
    _, msgs = _warned_diagnostics(vi)
    assert any("VI did not converge in 3 round" in m for m in msgs)
    assert not any("fell back" in m for m in msgs)


# ---------------------------------------------------------------------------
# LOO by client


def test_loo_by_client_eight_schools(schools_dt):
    res, caught = _record(loo_by_client, schools_dt)
    table = res.table
    assert list(table.columns) == ["elpd_loo", "se", "p_loo", "n_obs", "max_pareto_k", "n_bad_k"]
    assert list(table.index) == list("ABCDEFGH")
    assert (table["n_obs"] == 1).all() and (table["se"] == 0).all()
    assert abs(table["elpd_loo"].sum() - res.total.elpd) < 1e-6
    assert abs(table["p_loo"].sum() - res.total.p) < 1e-6
    np.testing.assert_allclose(table["elpd_loo"], res.total.elpd_i.values, atol=1e-9)
    pareto = [w for w in caught if issubclass(w.category, ParetoKWarning)]
    assert bool(pareto) == bool((table["n_bad_k"] > 0).any())


def test_loo_by_client_radon(radon):
    data, _, dt = radon
    res, caught = _record(loo_by_client, dt)
    table = res.table
    assert list(table.index) == list(data.clients)
    np.testing.assert_array_equal(table["n_obs"], data.n_rows())
    assert abs(table["elpd_loo"].sum() - res.total.elpd) < 1e-6
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert abs(az.loo(dt).elpd - res.total.elpd) < 1e-6  # arviz's own total
    assert table.loc["MURRAY", "n_obs"] == 1 and np.isfinite(table.loc["MURRAY", "elpd_loo"])
    bad = table.index[table["n_bad_k"] > 0]
    pareto = [str(w.message) for w in caught if issubclass(w.category, ParetoKWarning)]
    assert all(any(repr(c) in m for m in pareto) for c in bad)
    assert bool(pareto) == bool(len(bad))


def test_loo_by_client_needs_log_likelihood(schools_fit):
    with pytest.raises(ValueError, match="log_likelihood"):
        loo_by_client(schools_fit.to_datatree())
    with pytest.raises(TypeError, match="to_datatree"):
        loo_by_client(schools_fit)
