"""Particles relative to the Gaussian site: exact where the site is, closer to the true
population integral where it is not, malformed messages rejected and named, the
per-client diagnostic."""

import json
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from bayes_pfl import FederatedData
from bayes_pfl.algorithms import effect_ep, particles
from bayes_pfl.federated import particle_summary, resolve_summary
from bayes_pfl.gaussian import GaussianFactor
from bayes_pfl.models import eight_schools, hierarchical_glm, logistic, radon_intercept
from bayes_pfl.population import gaussian_population
from bayes_pfl.simulation import run_rounds

Y8 = np.array([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
S8 = np.array([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])


def _schools():
    df = pd.DataFrame({"school": list("ABCDEFGH"), "y": Y8, "sigma": S8})
    return FederatedData.from_pandas(df, client_col="school", target="y", features=["sigma"])


def _exchange(
    model, data, mode, *, client_update=None, n_particles=64, run_options=None, **options
):
    """One Gaussian round, then the particle exchange warm-started from it (``run_options``:
    more arguments of its ``run_rounds``)."""
    effect = effect_ep.build(model, server_warmup=50, server_samples=50)
    gauss = run_rounds(effect, data.train, rounds=1, labels=data.clients, progress=False)
    alg = particles.build(model, effect, mode=mode, n_particles=n_particles, **options)
    if client_update is not None:
        alg = alg._replace(client_update=client_update(alg))
    out = run_rounds(
        alg,
        data.train,
        rounds=1,
        labels=data.clients,
        progress=False,
        init=(gauss.server_state, gauss.client_states),
        **(run_options or {}),
    )
    return gauss, out


@pytest.mark.slow
def test_particles_are_exact_where_the_site_is_gaussian_likelihood():
    """Eight schools: r = L/t is constant, so the corrected density equals the Gaussian
    one up to a constant for every (mu, tau), and "auto" sends no particles."""
    model = eight_schools()
    data = _schools()
    gauss, out = _exchange(model, data, "particles")
    state = out.server_state
    assert isinstance(state, particles.ParticleServerState)
    assert bool(jnp.all(state.particles.use))
    assert float(jnp.max(state.sd_log_ratio)) < 1e-8
    pop = gaussian_population(model)
    mu, lt = np.meshgrid(np.linspace(-20, 30, 11), np.linspace(-6, 4, 11), indexing="ij")
    grid = jnp.asarray(np.stack([mu.ravel(), lt.ravel()], 1))
    sites = state.ep.sites
    base = jax.vmap(effect_ep.server_density(pop, model.log_hyperprior, sites))(grid)
    corrected = jax.vmap(
        particles.corrected_density(pop, model.log_hyperprior, sites, state.particles)
    )(grid)
    diff = np.asarray(corrected - base)
    assert np.all(np.isfinite(diff)) and np.ptp(diff) < 1e-8
    # the diagnostic sees a flat ratio: no client sends particles, the history says so
    _, auto = _exchange(model, data, "auto")
    assert not bool(jnp.any(auto.server_state.particles.use))
    entry = auto.history[0]
    assert entry["n_particle_clients"] == 0
    assert entry["bytes_up_mean"] == entry["bytes_up_gaussian_client"]
    assert entry["bytes_up_particle_client"] == 18 + 64 * 3 * 8


def _logistic_client():
    """A varying-intercept logistic client with 3 rows, all successes (a likelihood
    far from Gaussian: monotone in the intercept)."""
    model = logistic(0, varying="intercept")
    pop = gaussian_population(model)
    assert pop.e_dim == 1 and pop.q_dim == 0
    x = jnp.zeros((3, 1))
    y = jnp.asarray([1.0, 1.0, 1.0])
    mask = jnp.ones(3, bool)
    return model, pop, (x, y, mask)


def _quadrature_log_z(pop, data, u_phi):
    m, root = pop.moments(u_phi)
    m, sd = float(m[0]), float(root[0, 0])
    e = np.linspace(m - 12 * sd, m + 12 * sd, 20_001)
    ll = np.asarray(jax.vmap(lambda v: pop.loglik(jnp.asarray([v]), *data))(jnp.asarray(e)))
    f = ll - 0.5 * ((e - m) / sd) ** 2 - np.log(sd * np.sqrt(2 * np.pi))
    return f.max() + np.log(np.trapezoid(np.exp(f - f.max()), e))


@pytest.mark.slow
def test_particle_log_z_matches_quadrature_on_a_tiny_binary_client():
    model, pop, data = _logistic_client()
    effect = effect_ep.build(model)
    # the client's own EP site against a broad cavity N(0, 2^2): moment-matched, Gaussian
    cavity = GaussianFactor(jnp.asarray([[0.25]]), jnp.asarray([0.0]))
    _, msg, info = effect.client_update(
        jax.random.key(0),
        effect_ep.EffectBroadcast(cavity),
        effect_ep.EffectClientState(jnp.full(1, jnp.nan)),
        data,
    )
    assert bool(info.ok)
    site = msg.site
    alg = particles.build(model, effect, mode="particles", n_particles=512)
    _, pmsg, pinfo = alg.client_update(
        jax.random.key(1),
        particles.ParticleBroadcast(cavity, site),
        effect_ep.EffectClientState(jnp.full(1, jnp.nan)),
        data,
    )
    assert bool(pinfo.use) and float(pinfo.sd_log_ratio) > 0.05
    batch = jax.tree.map(lambda a: jnp.asarray(a)[None], pmsg)
    ep_state = effect.server_init(jax.random.key(2), 1)._replace(
        sites=jax.tree.map(lambda a: a[None], site),
        cavity=jax.tree.map(lambda a: a[None], cavity),
    )
    state, sinfo = alg.server_update(jax.random.key(3), ep_state, batch, jnp.ones(1, bool))
    assert int(sinfo.n_particle_clients) == 1
    labels = model.phi_space.labels()
    assert len(labels) == 2  # an intercept location and log scale
    exact, gauss, corrected = [], [], []
    # the final sampler's density: its phi-dependent part in single precision
    sampler = particles.corrected_density(
        pop, model.log_hyperprior, state.ep.sites, state.particles
    )
    base = effect_ep.server_density(pop, model.log_hyperprior, state.ep.sites)
    for mu in (-1.0, 0.0, 1.0, 2.5):
        for tau in (0.3, 1.0, 2.0, 3.0):
            u = jnp.asarray([mu, np.log(tau)])
            m, root = pop.moments(u)
            lzg = float(pop.log_z_at(m, root, jnp.zeros(0), site))
            corr = float(particles.log_correction(pop, m, root, state.particles)[0])
            assert abs(float(sampler(u) - base(u)) - corr) < 1e-4, (mu, tau)
            exact.append(_quadrature_log_z(pop, data, u))
            gauss.append(lzg)
            corrected.append(lzg + corr)
    exact, gauss, corrected = map(np.asarray, (exact, gauss, corrected))
    # the particle estimate is absolute (r = L/t carries the constant); the Gaussian
    # site's is up to a constant: compare its best shift
    err_particles = np.max(np.abs(corrected - exact))
    g = gauss - exact
    err_gauss = np.max(np.abs(g - np.mean(g)))
    # where pi_phi is narrow and far from the particle cloud (mu = -1, tau = 0.3: the
    # weights' ESS below the trust ramp) the estimate leans on the Gaussian site
    assert err_particles < 0.07, (err_particles, corrected - exact)
    assert np.median(np.abs(corrected - exact)) < 0.01
    assert err_gauss > 4 * err_particles, (err_gauss, err_particles)


@pytest.mark.slow
def test_malformed_particle_messages_are_rejected_and_the_client_named():
    model = eight_schools()
    data = _schools()

    def corrupt(alg):
        def update(key, bcast, state, arrays):
            state, msg, info = alg.client_update(key, bcast, state, arrays)
            is_c = arrays[1][0] == Y8[2]  # school C: NaN positions
            is_d = arrays[1][0] == Y8[3]  # school D: infinite proposal densities
            points = jnp.where(is_c, jnp.nan, msg.points)
            log_g = jnp.where(is_d, jnp.inf, msg.log_proposal)
            return state, msg._replace(points=points, log_proposal=log_g), info

        return update

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, out = _exchange(model, data, "particles", client_update=corrupt)
    text = " ".join(str(w.message) for w in caught)
    assert "client 'C': non-finite particle positions" in text
    assert "client 'D': non-finite particle proposal densities" in text
    assert out.history[0]["rejected"] == ["C", "D"]
    use = np.asarray(out.server_state.particles.use)
    assert list(use) == [True, True, False, False, True, True, True, True]
    # a rejected client's Z_k stays its Gaussian site's: the density is still finite
    pop = gaussian_population(model)
    state = out.server_state
    logp = particles.corrected_density(pop, model.log_hyperprior, state.ep.sites, state.particles)
    assert np.isfinite(float(logp(jnp.asarray([3.0, 1.0]))))
    # a transport's per-client check: shapes and values, with the reason
    good = particles.ParticleMessage(
        np.zeros((8, 1)), np.zeros(8), np.zeros(8), 8.0, 0.1, True, True
    )
    assert particles.check_message(good, 8, 1) is None
    assert "shape (8, 2), expected (8, 1)" in particles.check_message(
        good._replace(points=np.zeros((8, 2))), 8, 1
    )
    assert "'log_ratio'" in particles.check_message(
        good._replace(log_ratio=np.full(8, np.nan)), 8, 1
    )
    assert "'log_proposal'" in particles.check_message(
        good._replace(log_proposal=np.full(8, -np.inf)), 8, 1
    )


@pytest.mark.slow
def test_the_diagnostic_switches_form_per_client():
    """Tiny binary clients send particles, a large one keeps its Gaussian site."""
    rng = np.random.default_rng(0)
    sizes = {"t0": 3, "t1": 3, "t2": 4, "big": 3000}
    rows = []
    for c, n in sizes.items():
        b = 2.0 if c.startswith("t") else 0.3
        p = 1 / (1 + np.exp(-b))
        rows += [{"c": c, "x": 0.0, "y": float(rng.random() < p)} for _ in range(n)]
    df = pd.DataFrame(rows)
    df.loc[df.c.str.startswith("t"), "y"] = 1.0
    data = FederatedData.from_pandas(df, client_col="c", target="y", features=["x"])
    model = logistic(0, varying="intercept")  # reads no feature: intercepts only
    _, out = _exchange(model, data, "auto", n_particles=256)
    state = out.server_state
    sent = dict(zip(data.clients, np.isfinite(np.asarray(state.signal)), strict=True))
    sd = dict(zip(data.clients, np.asarray(state.sd_log_ratio), strict=True))
    assert not sent["big"] and sd["big"] < 0.05
    assert all(sent[c] for c in ("t0", "t1", "t2")), sd
    entry = out.history[0]
    assert entry["n_particle_messages"] == 3 and entry["client_use_count"] == 3
    assert entry["min_particle_ess"] > 0.05 * 256
    # the server corrects every sender (no signal-to-noise gate by default) and reports how
    # much each correction varies over its draws against its Monte Carlo error
    assert list(np.asarray(state.particles.use)) == [sent[c] for c in data.clients]
    assert entry["n_particle_clients"] == 3
    got = np.asarray(state.signal)[[data.clients.index(c) for c in ("t0", "t1", "t2")]]
    assert np.all(np.isfinite(got)) and np.all(np.isfinite(np.asarray(state.noise)[:3]))


def test_particles_do_not_apply_with_shared_likelihood_parameters():
    pop = gaussian_population(radon_intercept())
    why = particles.applicable(pop)
    assert why is not None and "shared global parameters" in why
    with pytest.warns(UserWarning, match="keeps Gaussian sites"):
        assert particle_summary(radon_intercept(), "auto") == "gaussian"
    with pytest.raises(ValueError, match="summary must be one of"):
        particle_summary(eight_schools(), "particle")
    assert particle_summary(eight_schools(), "particles") == "particles"


@pytest.mark.slow
def test_fit_ep_with_particles_end_to_end(schools):
    """The fit's readout samples the corrected density: on eight schools (exact sites) the
    same posterior as Gaussian EP; the history and the result report the exchange."""
    from bayes_pfl.federated import fit_ep

    model = eight_schools()
    opts = dict(
        seed=0,
        progress=False,
        num_samples=300,
        num_warmup=100,
        effect_options={"server_warmup": 100, "server_samples": 100},
    )
    gauss = fit_ep(model, schools, summary="gaussian", **opts)
    fit = fit_ep(model, schools, summary="particles", n_particles=64, **opts)
    assert fit.info["settings"]["summary"] == "particles"
    assert fit.history[-1]["summary"] == "particles"
    assert fit.history[-1]["n_particle_clients"] == 8
    assert bool(np.all(fit.state["particle_clients"]))
    for name in ("mu", "tau"):
        a, b = np.asarray(gauss.phi[name]).ravel(), np.asarray(fit.phi[name]).ravel()
        assert abs(a.mean() - b.mean()) < 0.25 * a.std(), name
    theta = np.asarray(fit.theta["theta"])
    assert np.all(np.isfinite(theta))


def test_client_covariates_keep_gaussian_sites():
    """Particles' population is one mean for every client: with client covariates (mu + z
    W) the default summary is Gaussian and a named one an error, never a wrong fit (the
    other fallbacks: tests/test_flower_particles.py)."""
    with_meta = hierarchical_glm("bernoulli", 1, client_covariates=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_summary(with_meta, None, "effects") == "gaussian"
    for named in ("auto", "particles"):
        with pytest.raises(ValueError, match="client covariates"):
            resolve_summary(with_meta, named, "effects")


class _Pop:
    def __init__(self, diagonal_root):
        self.diagonal_root = diagonal_root


@pytest.mark.parametrize("diagonal", [True, False])
def test_the_samplers_correction_equals_its_log_sum_exp_definition(diagonal):
    """The final sampler's correction (one exponential per particle, constants hoisted)
    against the definition: self-normalized importance sampling by log-sum-exp."""
    rng = np.random.default_rng(3)
    k, n, e = 4, 64, 3
    pset = particles.ParticleSet(
        points=jnp.asarray(rng.normal(size=(k, n, e))),
        log_lik_over_proposal=jnp.asarray(rng.normal(size=(k, n)) * 3.0),
        log_site_over_proposal=jnp.asarray(rng.normal(size=(k, n))),
        level=jnp.asarray(rng.normal(size=k) * 0.1),
        use=jnp.asarray([True, True, False, True]),
    )
    m = jnp.asarray([0.3, -0.2, 0.1])
    root = jnp.diag(jnp.asarray([0.8, 1.3, 0.6]))
    if not diagonal:
        root = root.at[1, 0].set(0.4).at[2, 1].set(-0.3)
    chol = np.linalg.cholesky(np.asarray(root @ root.T))
    d = np.asarray(pset.points) - np.asarray(m)
    w = np.linalg.solve(chol, d.reshape(-1, e).T).T.reshape(d.shape)
    lw = -0.5 * np.sum(w**2, -1) + np.asarray(pset.log_site_over_proposal)
    log_r = np.asarray(pset.log_lik_over_proposal - pset.log_site_over_proposal)
    lse = jax.scipy.special.logsumexp
    est = np.asarray(lse(lw + log_r, -1) - lse(lw, -1))
    soft = np.exp(lw - lse(lw, -1, keepdims=True))
    ess = 1.0 / np.sum(soft**2, -1)
    level = np.asarray(pset.level)
    want = np.where(
        np.asarray(pset.use), level + np.asarray(particles.trust(ess)) * (est - level), 0
    )
    got = particles.log_correction(_Pop(diagonal), m, root, pset)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-5)
    trusted = np.asarray(particles.trust(ess))
    assert np.any((trusted > 0) & (trusted < 1))  # the ramp is exercised, not only its ends


@pytest.mark.slow
def test_particle_phase_resumes_from_its_checkpoint(tmp_path):
    """The exchange's checkpoint holds its own state (a ParticleServerState wrapping EP's),
    not the state it was warm-started from: a resumed run reads it back."""
    model, data = eight_schools(), _schools()
    runs = [
        _exchange(
            model,
            data,
            "particles",
            n_particles=16,
            run_options={"checkpoint": tmp_path / "ckpt", "resume": resume},
        )[1]
        for resume in (False, True)
    ]
    assert isinstance(runs[1].server_state, particles.ParticleServerState)
    assert runs[1].history == runs[0].history
    pairs = zip(*(jax.tree.leaves(r.server_state) for r in runs), strict=True)
    for a, b in pairs:
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.slow
def test_every_phase_checkpoints_and_resumes(tmp_path):
    """EP's default is two phases (Gaussian rounds, then the particle exchange): each
    writes its own checkpoint, and a resumed fit reads the rounds already done instead of
    running them again (their recorded wall times come back unchanged)."""
    from bayes_pfl.federated import ep_phases
    from bayes_pfl.simulation import phase_checkpoint, run_phases

    model, data = eight_schools(), _schools()
    small = (("server_samples", 50), ("server_warmup", 50))
    phases = ep_phases(model, rounds=3, effect_options=small, summary="auto", n_particles=16)
    assert len(phases) == 2
    ckpt = tmp_path / "fit"
    first = phase_checkpoint(ckpt, 0, len(phases))
    # a fit stopped after one Gaussian round: only the first phase's checkpoint exists
    run_rounds(
        phases[0].algorithm,
        data.train,
        rounds=1,
        labels=data.clients,
        progress=False,
        checkpoint=first,
    )
    stopped = json.loads(first.with_suffix(".json").read_text())
    done = run_phases(
        phases, data.train, labels=data.clients, progress=False, checkpoint=ckpt, resume=True
    )
    assert first.with_suffix(".npz").exists() and ckpt.with_suffix(".npz").exists()
    gauss = [h for h in done.history if "summary" not in h]
    assert gauss[0]["wall_time_s"] == stopped[0]["wall_time_s"]  # read, not rerun
    assert isinstance(done.server_state, particles.ParticleServerState)
    again = run_phases(
        phases, data.train, labels=data.clients, progress=False, checkpoint=ckpt, resume=True
    )
    assert [h["wall_time_s"] for h in again.history] == [h["wall_time_s"] for h in done.history]
