"""Differential privacy of what clients send: accounting, sensitivity, sites, the fit."""

import argparse
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _helpers import federation_data, run_cli

from bayes_pfl import gaussian as gf
from bayes_pfl import privacy
from bayes_pfl.algorithms.effect_ep import EffectBroadcast
from bayes_pfl.cli.common import dp_budget
from bayes_pfl.data import DataError
from bayes_pfl.federated import effect_algorithm, fit_ep
from bayes_pfl.models import hierarchical_glm
from bayes_pfl.population import gaussian_population
from bayes_pfl.privacy import DPBudget
from bayes_pfl.synthetic import make_federation

dp_accounting = pytest.importorskip("dp_accounting")


def _model():
    return hierarchical_glm("bernoulli", 2, varying="slopes")


@pytest.fixture(scope="module")
def small_data():
    fed = make_federation(
        family="bernoulli",
        n_clients=3,
        n_features=2,
        varying="slopes",
        sizes=np.array([30, 50, 80]),
        seed=5,
    )
    return federation_data(fed)


FAST = dict(
    num_chains=1,
    num_warmup=50,
    num_samples=50,
    progress=False,
    effect_options={"server_chains": 1, "server_warmup": 50, "server_samples": 50},
)


# --------------------------------------------------------------------------- accounting


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
@pytest.mark.parametrize(("sigma", "rounds"), [(1.3, 1), (3.0, 5), (6.5, 20)])
def test_reported_epsilon_is_dp_accountings(accountant, sigma, rounds):
    """The same mechanism composed event by event in dp-accounting gives the same epsilon."""
    from dp_accounting import pld, rdp

    acc = rdp.RdpAccountant() if accountant == "rdp" else pld.PLDAccountant()
    for _ in range(rounds):
        acc.compose(dp_accounting.GaussianDpEvent(sigma))
    want = acc.get_epsilon(1e-5)
    got = privacy.epsilon_spent(sigma, rounds, 1e-5, accountant)
    assert got == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize(("epsilon", "rounds"), [(0.5, 3), (2.0, 6), (8.0, 10)])
def test_calibrated_noise_is_the_smallest_within_budget(epsilon, rounds):
    sigma = privacy.calibrate_noise(epsilon, 1e-5, rounds)
    assert privacy.epsilon_spent(sigma, rounds, 1e-5) <= epsilon
    assert privacy.epsilon_spent(0.995 * sigma, rounds, 1e-5) > epsilon
    # more rounds for the same budget need more noise
    assert privacy.calibrate_noise(epsilon, 1e-5, rounds + 5) > sigma


# --------------------------------------------------------------------------- the mechanism


def _points(J, n=64, seed=0):
    return jax.random.normal(jax.random.key(seed), (n, J))


def test_clipped_contribution_bounded_for_adversarial_rows():
    """Extreme feature values: each row's clipped vector has norm <= C, padded rows are
    zero, and adding the adversarial row moves the clipped sum by at most C."""
    pop = gaussian_population(_model())
    J = pop.z_dim
    rng = np.random.default_rng(0)
    x = rng.standard_normal((12, 2))
    x[3] = [1e6, -1e6]  # adversarial rows
    x[7] = [1e30, 0.0]
    y = (rng.uniform(size=12) < 0.5).astype(float)
    mask = np.ones(12, bool)
    mask[-2:] = False  # padding
    clip = 1.5
    v = privacy.row_statistics(pop, _points(J), jnp.asarray(x), jnp.asarray(y), jnp.asarray(mask))
    assert v.shape == (12, privacy.vech_dim(J))
    assert np.all(np.isfinite(np.asarray(v)))
    raw_norms = np.linalg.norm(np.asarray(v, np.float64), axis=1)
    assert raw_norms[3] > 100 * clip  # the adversarial row would dominate unclipped
    clipped = np.asarray(privacy.clip_rows(v, clip))
    norms = np.linalg.norm(clipped, axis=1)
    assert np.all(norms <= clip * (1 + 1e-6))
    assert np.all(clipped[-2:] == 0.0)
    without = np.delete(clipped, 3, axis=0).sum(0)
    assert np.linalg.norm(clipped.sum(0) - without) <= clip * (1 + 1e-6)
    # clipping scales a row (tempering), it does not turn it
    small = raw_norms < clip
    assert np.allclose(clipped[small], np.asarray(v)[small])


def test_noisy_site_is_psd_and_noise_aware_keeps_its_mean():
    J = 4
    mean = jnp.arange(J, dtype=jnp.float32) / 3.0
    total = jnp.zeros(privacy.vech_dim(J))  # all noise: a random symmetric "precision"
    for seed in range(20):
        site = privacy.noisy_site(jax.random.key(seed), total, mean, 5.0)
        assert np.allclose(site.precision, site.precision.T, atol=1e-5)
        lam = np.linalg.eigvalsh(np.asarray(site.precision))
        assert lam.min() >= -1e-5 * max(1.0, lam.max())
        aware = privacy.noise_aware(site, 25.0)
        lam_a = np.linalg.eigvalsh(np.asarray(aware.precision))
        assert lam_a.min() >= -1e-5 * max(1.0, lam_a.max())
        assert np.all(lam_a <= lam.max() + 1e-4)  # less precise, never more
    # a proper site keeps its mean; each eigenvalue lam becomes lam^2 / (lam + s2)
    prec = jnp.diag(jnp.array([4.0, 1.0]))
    site = gf.GaussianFactor(prec, prec @ jnp.array([1.0, -2.0]))
    aware = privacy.noise_aware(site, 2.0)
    assert np.allclose(np.diag(aware.precision), [16 / 6, 1 / 3], rtol=1e-5)
    assert np.allclose(jnp.linalg.solve(aware.precision, aware.shift), [1.0, -2.0], rtol=1e-5)


# --------------------------------------------------------------------------- the fit


@pytest.mark.slow
def test_dp_fit_records_the_spend(small_data, tmp_path):
    budget = DPBudget(2.0, delta=1e-5)
    res = fit_ep(_model(), small_data, rounds=2, dp=budget, tol=0.0, **FAST)
    rec = res.info["privacy"]
    assert rec["rounds_run"] == res.info["rounds"] == 2
    want = privacy.epsilon_spent(rec["noise_multiplier"], 2, 1e-5)
    assert rec["epsilon_spent"] == pytest.approx(want)
    assert rec["epsilon_spent"] <= 2.0
    assert rec["noise_multiplier"] == pytest.approx(privacy.calibrate_noise(2.0, 1e-5, 2))
    assert rec["clip"] == pytest.approx(math.sqrt(gaussian_population(_model()).z_dim))
    assert set(rec["spent"]) == {str(c) for c in small_data.clients}
    assert all(v == {"epsilon": rec["epsilon_spent"], "delta": 1e-5} for v in rec["spent"].values())
    assert all(h["dp"] for h in res.history)
    attrs = res.to_datatree().attrs
    assert attrs["dp_epsilon_spent"] == rec["epsilon_spent"]
    assert json.loads(attrs["dp_spent_per_client"]) == rec["spent"]
    # finite posterior
    assert all(np.all(np.isfinite(v)) for v in res.phi.values())
    assert all(np.all(np.isfinite(v)) for v in res.theta.values())


@pytest.mark.slow
def test_dp_fit_stopping_early_spends_only_the_rounds_run(small_data):
    """Noise calibrated for 4 rounds; converged (huge tol) after 1: one round spent."""
    budget = DPBudget(1.0, clip=2.0)
    res = fit_ep(_model(), small_data, rounds=4, dp=budget, tol=1e9, **FAST)
    rec = res.info["privacy"]
    assert rec["rounds_run"] == 1 and rec["rounds_planned"] == 4
    sigma = privacy.calibrate_noise(1.0, 1e-5, 4)
    assert rec["epsilon_spent"] == pytest.approx(privacy.epsilon_spent(sigma, 1, 1e-5))
    assert rec["epsilon_spent"] < 1.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"epsilon": 0.0}, "epsilon must be a finite number > 0"),
        ({"epsilon": -1.0}, "epsilon must be a finite number > 0"),
        ({"epsilon": float("nan")}, "epsilon must be a finite number > 0"),
        ({"epsilon": True}, "epsilon must be a number"),
        ({"epsilon": 1.0, "delta": 0.0}, r"delta must be a number in \(0, 1\)"),
        ({"epsilon": 1.0, "delta": 1.0}, r"delta must be a number in \(0, 1\)"),
        ({"epsilon": 1.0, "delta": -0.1}, r"delta must be a number in \(0, 1\)"),
        ({"epsilon": 1.0, "clip": 0.0}, "clip must be a finite number > 0"),
        ({"epsilon": 1.0, "clip": -2.0}, "clip must be a finite number > 0"),
        ({"epsilon": 1.0, "accountant": "moments"}, "accountant must be one of"),
    ],
)
def test_bad_budget_is_a_clear_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DPBudget(**kwargs)


def test_dp_with_options_it_does_not_support_is_an_error(small_data):
    model = _model()
    with pytest.raises(ValueError, match="dp needs sites='effects'"):
        fit_ep(model, small_data, sites="global", dp=DPBudget(1.0), progress=False)
    with pytest.raises(ValueError, match="dp needs sites='effects' and summary='gaussian'"):
        fit_ep(model, small_data, summary="particles", dp=DPBudget(1.0), progress=False)
    with pytest.raises(TypeError, match="DPBudget"):
        fit_ep(model, small_data, dp={"epsilon": 1.0}, progress=False)
    with pytest.raises(ValueError, match="which dp replaces"):
        fit_ep(model, small_data, dp=DPBudget(1.0), effect_options={"local": "vi"})


def _args(**kw):
    base = dict(method="ep", sites="effects", resume=False, dp_epsilon=None)
    return argparse.Namespace(**{**base, "dp_delta": None, "dp_clip": None, **kw})


def test_cli_dp_options():
    assert dp_budget(_args()) is None
    b = dp_budget(_args(dp_epsilon=2.0, dp_clip=3.0))
    assert b == DPBudget(2.0, 1e-5, 3.0)
    with pytest.raises(DataError, match="--dp-delta need --dp-epsilon"):
        dp_budget(_args(dp_delta=1e-6))
    with pytest.raises(DataError, match="--dp-epsilon applies to --method ep"):
        dp_budget(_args(method="nuts", dp_epsilon=1.0))
    with pytest.raises(DataError, match="--dp-epsilon must be a finite number > 0"):
        dp_budget(_args(dp_epsilon=0.0))
    with pytest.raises(DataError, match=r"--dp-delta must be a number in \(0, 1\)"):
        dp_budget(_args(dp_epsilon=1.0, dp_delta=2.0))
    with pytest.raises(DataError, match="--dp-clip must be a finite number > 0"):
        dp_budget(_args(dp_epsilon=1.0, dp_clip=-1.0))


def test_flower_settings_build_the_private_phases():
    """A Flower run config with dp-epsilon runs the in-process fit's DP phases (the
    equality of the two runs: tests/test_flower_private.py)."""
    pytest.importorskip("flwr")
    from bayes_pfl.flower.config import FlowerSettings, build_phases

    settings = FlowerSettings.from_run_config({"dp-epsilon": 1.0, "standardize": False})
    (phase,) = build_phases(settings)
    assert phase.algorithm.name.endswith("-dp") and settings.dp_budget.epsilon == 1.0
    with pytest.raises(ValueError, match="standardize"):
        FlowerSettings.from_run_config({"dp-epsilon": 1.0})


# --------------------------------------------------------------------------- empirical audit


def _release_fn(noise_multiplier, clip):
    """One client's first-round DP message, as a function of (key, data)."""
    model = _model()
    base = effect_algorithm(model, damping=1.0, tol=0.05)
    alg = privacy.private_algorithm(model, base, noise_multiplier, clip)
    J = gaussian_population(model).z_dim
    cavity = gf.from_moments(jnp.zeros(J), 4.0 * jnp.eye(J))

    def release(key, x, y, mask):
        state = alg.client_init(key, (x, y, mask))
        _, msg, _ = alg.client_update(key, EffectBroadcast(cavity), state, (x, y, mask))
        return jnp.concatenate([msg.site.precision.reshape(-1), msg.site.shift])

    return jax.jit(jax.vmap(release, in_axes=(0, None, None, None)))


def test_audit_lower_bound_of_a_gaussian_mechanism():
    """The audit's bound on N(0, 1) vs N(1 / sigma, 1) draws: below the mechanism's epsilon,
    and 0 for identical distributions."""
    rng = np.random.default_rng(0)
    sigma, n = 0.5, 20_000
    a, b = rng.normal(1.0 / sigma, 1.0, n), rng.normal(0.0, 1.0, n)
    lb = privacy.audit_epsilon(a, b, 1e-5)
    assert 1.0 < lb <= privacy.epsilon_spent(sigma, 1, 1e-5, "pld")
    assert privacy.audit_epsilon(rng.normal(size=n), rng.normal(size=n), 1e-5) < 0.1


@pytest.mark.slow
def test_empirical_audit_stays_below_the_claimed_epsilon():
    """Membership inference on one small client's released site, with vs without one
    extreme row, over many noise draws: the empirical epsilon lower bound of the best
    threshold test (on held-out draws) does not exceed the claimed epsilon, and the test
    has power (it detects the row when the noise is too small for the claim)."""
    epsilon, delta, clip = 1.0, 1e-5, 1.0
    sigma = privacy.calibrate_noise(epsilon, delta, 1)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((8, 2))
    y = (rng.uniform(size=8) < 0.5).astype(float)
    x_in = np.vstack([x, [[30.0, -30.0]]])
    y_in = np.append(y, 1.0)
    mask_out = np.append(np.ones(8, bool), False)  # the row padded out
    n = 40_000

    def lower_bound(noise):
        release = _release_fn(noise, clip)
        keys = jax.random.split(jax.random.key(0), 2 * n)
        with_row = np.asarray(release(keys[:n], x_in, y_in, np.ones(9, bool)))
        without = np.asarray(release(keys[n:], x_in, y_in, mask_out))
        half = n // 2
        direction = with_row[:half].mean(0) - without[:half].mean(0)
        return privacy.audit_epsilon(with_row[half:] @ direction, without[half:] @ direction, delta)

    assert lower_bound(sigma) <= epsilon
    assert lower_bound(sigma / 8) > epsilon  # an under-noised release is caught


# --------------------------------------------------------------------------- command line


def test_cli_refuses_bad_dp_options_before_reading_data(tmp_path):
    r = run_cli("fit", "--data", "eight_schools", "--method", "ep", "--dp-epsilon", "-1",
                "--out", str(tmp_path / "o"), timeout=120)  # fmt: skip
    assert r.returncode == 2
    assert "--dp-epsilon must be a finite number > 0, got -1.0" in r.stderr
    r = run_cli("fit", "--data", "eight_schools", "--dp-epsilon", "1",
                "--out", str(tmp_path / "o"), timeout=120)  # fmt: skip
    assert r.returncode == 2 and "--dp-epsilon applies to --method ep" in r.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_cli_dp_fit_writes_the_spend(tmp_path):
    out = tmp_path / "dp"
    r = run_cli("fit", "--data", "eight_schools", "--method", "ep", "--rounds", "2",
                "--dp-epsilon", "2", "--dp-clip", "3", "--chains", "1", "--warmup", "100",
                "--samples", "100", "--out", str(out), "--no-progress", timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    run = json.loads((out / "run.json").read_text())
    rec = run["privacy"]
    assert rec["clip"] == 3.0 and rec["rounds_run"] <= 2
    assert rec["epsilon_spent"] <= 2.0
    assert rec["epsilon_spent"] == pytest.approx(
        privacy.epsilon_spent(rec["noise_multiplier"], rec["rounds_run"], 1e-5)
    )
    assert run["settings"]["dp_epsilon"] == 2.0
    import xarray as xr

    dt = xr.open_datatree(out / "posterior.nc")
    assert dt.attrs["dp_epsilon_spent"] == pytest.approx(rec["epsilon_spent"])
