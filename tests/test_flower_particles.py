"""EP's particle exchange on Flower: the run config's ``summary`` resolved as the in-process
fit resolves it, the registry's phases ending with the particle phase, and a Flower run
equal to ``fit_ep(summary="auto")``."""

import dataclasses
import json
import logging
import warnings

import jax
import numpy as np
import pytest

pytest.importorskip("flwr")

from flwr.app import Array  # noqa: E402

from bayes_pfl.federated import fit_ep, resolve_summary  # noqa: E402
from bayes_pfl.flower.app import client_app, run_from_settings  # noqa: E402
from bayes_pfl.flower.config import FlowerSettings, build_phases  # noqa: E402
from bayes_pfl.methods import get_method  # noqa: E402
from bayes_pfl.models import get_model, radon_intercept  # noqa: E402
from bayes_pfl.privacy import DPBudget  # noqa: E402
from bayes_pfl.results import load_posterior  # noqa: E402
from bayes_pfl.synthetic import make_federation  # noqa: E402
from tests.test_flower import FakeGrid, csv_run_config, node_like_steps  # noqa: E402, F401

SIZES = np.array([3, 4, 5, 6, 8, 400])  # tiny binary clients, and one large one


def _glm(**kw):
    """A logistic GLM whose intercept and slope vary by client: particles apply."""
    return get_model("logistic", 1, varying="slopes", **kw)


def test_resolve_summary_default_is_auto_where_particles_apply():
    """``summary=None`` (the default) on a GLM whose effects are all the likelihood reads:
    ``"auto"``, silently; a named summary is kept (and checked)."""
    glm = _glm()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_summary(glm, None, "effects") == "auto"
        assert resolve_summary(glm, "gaussian", "effects") == "gaussian"
        assert resolve_summary(glm, "particles", "effects") == "particles"
    with pytest.raises(ValueError, match="sites='effects'"):
        resolve_summary(glm, "particles", "global")
    with pytest.raises(ValueError, match="summary must be one of"):
        resolve_summary(glm, "particle", "effects")


def test_resolve_summary_default_falls_back_to_gaussian_silently():
    """Where particles do not apply the default is ``"gaussian"`` without a warning: shared
    likelihood parameters (radon's ``beta``), a Student-t population, differential
    privacy, sites over the global parameters; a named ``"auto"`` keeps
    ``particle_summary``'s warning and errors."""
    radon, glm, robust = radon_intercept(), _glm(), _glm().with_population(4.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_summary(radon, None, "effects") == "gaussian"
        assert resolve_summary(robust, None, "effects") == "gaussian"
        assert resolve_summary(glm, None, "effects", dp=DPBudget(2.0)) == "gaussian"
        assert resolve_summary(glm, None, "global") == "gaussian"
    with pytest.warns(UserWarning, match="keeps Gaussian sites"):
        assert resolve_summary(radon, "auto", "effects") == "gaussian"
    with pytest.raises(ValueError, match="Gaussian population"):
        resolve_summary(robust, "auto", "effects")


def test_registry_phases_of_ep_end_with_the_particle_exchange():
    """What Flower runs: EP's phases with summary auto (or unset: resolved) end with the
    one-round particle phase, warm-started; one-shot and VI keep Gaussian sites."""
    ep = get_method("ep")
    for summary in (None, "auto"):
        gauss, extra = ep.phases(model=_glm(), summary=summary)
        assert gauss.algorithm.name == "ep-effects" and not gauss.warm_start
        assert extra.algorithm.name == "ep-particles" and extra.warm_start
        assert extra.rounds == 1 and dict(extra.tag)["summary"] == "auto"
    (only,) = ep.phases(model=_glm(), summary="gaussian")
    assert only.algorithm.name == "ep-effects"
    for name in ("one-shot", "vi"):
        assert len(get_method(name).phases(model=_glm())) == 1
    # the run config: summary auto by default, resolved once for the server and the nodes
    settings = FlowerSettings(
        data="fed.csv", target="y", features="x0", model="logistic", varying="slopes"
    )
    assert settings.summary == "auto" and settings.n_particles == 256
    assert [p.algorithm.name for p in build_phases(settings)] == ["ep-effects", "ep-particles"]
    assert settings.settings_record()["summary"] == "auto"
    assert settings.settings_record()["n_particles"] == 256
    one_shot = dataclasses.replace(settings, method="one-shot")
    assert [p.algorithm.name for p in build_phases(one_shot)] == ["ep-effects"]


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"summary": "particle"}, "summary must be one of"),
        ({"summary": "particles", "method": "one-shot"}, "applies to method ep"),
        ({"summary": "particles", "sites": "global"}, "applies to method ep"),
        ({"summary": "particles", "dp-epsilon": 1.0, "standardize": False}, "summary gaussian"),
        ({"n-particles": 0}, "n-particles must be >= 1"),
    ],
)
def test_bad_summary_settings_are_refused(extra, message):
    config = {"data": "fed.csv", "target": "y", "features": "x0", "model": "logistic", **extra}
    with pytest.raises(ValueError, match=message):
        FlowerSettings.from_run_config(config)


# ------------------------------------------------------------- runs over Flower


@pytest.fixture(scope="module")
def binary(tmp_path_factory):
    """Six clients of a logistic GLM with varying slopes: five tiny ones (particles) and
    one of 400 rows (its Gaussian site is good: it keeps it), as a CSV."""
    fed = make_federation(
        family="bernoulli", n_clients=6, n_features=1, varying="slopes", sizes=SIZES, seed=1
    )
    return csv_run_config(
        fed,
        tmp_path_factory.mktemp("binary"),
        "logistic",
        **{
            "varying": "slopes",
            "num-chains": 2,
            "num-samples": 100,
            "round-timeout-s": 60.0,
        },
    )


def _grid(run_config, **kw):
    nodes = [{"partition-id": i} for i in range(len(SIZES))]
    return FakeGrid(client_app(), nodes, run_config, **kw)


def _reference(settings):
    """``fit_ep(summary="auto")`` in process on the rows the nodes hold."""
    from bayes_pfl.flower.config import _federated_data

    data = _federated_data(settings)
    return data, fit_ep(
        settings.hierarchical_model,
        data,
        rounds=settings.rounds,
        num_chains=settings.num_chains,
        num_samples=settings.num_samples,
        summary="auto",
        progress=False,
    )


@pytest.mark.slow  # two EP fits with particles (one over Flower's ServerApp and ClientApps)
def test_particle_run_equals_fit_ep_auto(binary, tmp_path, node_like_steps):  # noqa: F811
    """The ServerApp's whole path with the run config's default summary: the Gaussian rounds,
    the particle exchange, the corrected global draws and each node's personalization
    equal ``fit_ep(summary="auto")`` with the same seed (its client step run as the nodes
    run it, ``node_like_steps``); the history and ``run.json`` name the particle clients."""
    run_config = {**binary, "out": str(tmp_path / "fit")}
    settings = FlowerSettings.from_run_config(run_config)
    result = run_from_settings(_grid(run_config), settings)
    data, ref = _reference(settings)
    assert result.clients == ref.clients
    post = load_posterior(tmp_path / "fit" / "posterior.nc").posterior
    for name, v in {**ref.phi, **ref.theta}.items():
        np.testing.assert_allclose(post[name].values, v, rtol=1e-6, atol=1e-9, err_msg=name)
    # the history: the in-process entries' keys and values (wall-clock times aside), the
    # particle exchange last
    assert len(result.history) == len(ref.history)
    for ours, theirs in zip(result.history, ref.history, strict=True):
        assert {k: v for k, v in theirs.items() if k != "wall_time_s"}.items() <= ours.items()
    last = result.history[-1]
    assert last["summary"] == "auto" and last["n_particle_clients"] > 0
    used = np.asarray(result.state["particle_clients"])
    np.testing.assert_array_equal(used, ref.state["particle_clients"])
    assert not used[-1]  # the large client keeps its Gaussian site
    run = json.loads((tmp_path / "fit" / "run.json").read_text())
    named = [c for c, u in zip(data.clients, used, strict=True) if u]
    assert run["particle_clients"] == ref.info["particle_clients"] == named
    assert run["history"][-1]["n_particle_clients"] == len(named)
    assert run["settings"] == {k: v for k, v in ref.info["settings"].items() if k != "mh_steps"}


@pytest.mark.slow  # a Gaussian round in process, then the exchange over Flower twice
def test_malformed_particle_messages_are_rejected_and_the_phase_resumes(
    binary,
    tmp_path,
    caplog,
    node_like_steps,  # noqa: F811
):
    """Over Flower the particle phase decodes each reply against the structure its client
    step returns: a node sending points of another shape, and one sending a non-finite
    ``log r``, are left out and named (their ``Z_k`` keeps the Gaussian site); the others'
    particles give the in-process exchange without those two. Its checkpoint holds the
    particle state, and a resumed run reads it back."""
    from bayes_pfl.federated import effect_algorithm, particle_algorithm
    from bayes_pfl.flower.config import _federated_data
    from bayes_pfl.flower.server import discover, run_server
    from bayes_pfl.simulation import run_rounds

    settings = FlowerSettings.from_run_config(binary)
    model, data = settings.hierarchical_model, _federated_data(settings)
    # a cheap Gaussian round in process (the nodes' particle step does not read it)
    effect = effect_algorithm(model, damping=1.0, tol=0.05, server_warmup=50, server_samples=50)
    alg = particle_algorithm(model, effect, mode="auto", n_particles=settings.n_particles)
    assert alg.name == build_phases(settings)[-1].algorithm.name
    gauss = run_rounds(effect, data.train, rounds=1, labels=data.clients, progress=False)

    def tamper(node, reply):
        rec = reply.content.array_records.get("message")
        if rec is not None and node == 1000:
            rec[".points"] = Array(np.zeros((3, 2)))
        if rec is not None and node == 1001:
            rec[".log_ratio"] = Array(np.full(rec[".log_ratio"].shape, np.nan))
        return reply

    def run(resume):
        grid = _grid(binary, tamper=tamper)
        federation = discover(grid, n_clients=len(SIZES), node_wait_s=5, timeout_s=30)
        return run_server(
            grid,
            alg,
            federation,
            rounds=1,
            init_server_state=gauss.server_state,
            fresh_clients=False,
            accepted=np.ones(len(SIZES), bool),
            checkpoint=tmp_path / "ckpt",
            resume=resume,
            phase="1:ep-particles",
            bucket_rows=True,
            timeout_s=60,
        )

    with (
        caplog.at_level(logging.INFO, logger="bayes_pfl.flower"),
        pytest.warns(UserWarning, match="rejected messages from 1 client"),
    ):
        res = run(resume=False)
    a, b = data.clients[:2]
    assert f"node 1000 ({a!r}) left out: malformed message" in caplog.text
    assert f"node 1001 ({b!r}) left out: non-finite particle log-likelihood ratios" in caplog.text
    assert sorted(res.history[0]["rejected"]) == sorted([a, b])
    use = np.asarray(res.server_state.particles.use)
    assert not use[:2].any() and use[2:5].all()
    participating = np.arange(len(SIZES)) >= 2
    ref = run_rounds(
        alg,
        data.train,
        rounds=1,
        labels=data.clients,
        progress=False,
        participating=participating,
        init=(gauss.server_state, gauss.client_states),
        bucket_rows=True,
    )
    # the same state, but for what the left-out clients sent (kept, never used: in process
    # a non-participating client's message is computed all the same)
    ours, theirs = res.server_state, ref.server_state
    for x, y in zip(jax.tree.leaves(ours.ep), jax.tree.leaves(theirs.ep), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    rest = (ours.particles, *ours[2:]), (theirs.particles, *theirs[2:])
    for x, y in zip(*map(jax.tree.leaves, rest), strict=True):
        np.testing.assert_allclose(np.asarray(x)[2:], np.asarray(y)[2:], rtol=1e-6, atol=1e-9)
    resumed = run(resume=True)  # the checkpoint's round is done: its state, read back
    assert resumed.history == json.loads(json.dumps(res.history))
    pairs = zip(jax.tree.leaves(resumed.server_state), jax.tree.leaves(ours), strict=True)
    for x, y in pairs:
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.slow
def test_flower_simulation_with_particles_equals_in_process(
    binary,
    tmp_path,
    node_like_steps,  # noqa: F811
):
    """``flwr run`` in Flower's simulation runtime with the app's default summary (auto):
    the particle exchange runs over Flower's transport, in the app processes, and the
    posteriors equal ``fit_ep(summary="auto")`` run in this process with the nodes' client
    step. The app processes get this process's host device count, so that the server's
    chains run as the in-process readout runs them; no JAX cache folder, so that each
    node jit-compiles its step as ``node_like_steps`` does (NUTS turns last-bit
    differences into other draws: see ``node_like_steps``)."""
    import os

    from _helpers import APP_ENV

    from bayes_pfl.flower.launch import LocalFederation
    from tests.test_flower import APP_DIR, _check_result

    out = tmp_path / "fit"
    run_config = {**binary, "out": str(out)}
    env = {**APP_ENV, "XLA_FLAGS": os.environ.get("XLA_FLAGS", "")}
    with LocalFederation(tmp_path / "flwr-home", simulation=True, env=env) as fed:
        run_id = fed.run(APP_DIR, run_config, num_supernodes=len(SIZES))
        status = fed.wait(run_id, timeout_s=900)
        logs = fed.logs(run_id) if status != "finished:completed" else ""
    run = _check_result(out)
    assert status == "finished:completed", (status, logs[-3000:])
    assert run["runtime"] == "flower" and run["left_out"] == {}
    data, ref = _reference(FlowerSettings.from_run_config(run_config))
    post = load_posterior(out / "posterior.nc").posterior
    assert list(post["client"].values) == list(data.clients)
    for name, v in {**ref.phi, **ref.theta}.items():
        np.testing.assert_allclose(post[name].values, v, rtol=1e-6, atol=1e-9, err_msg=name)
    assert run["history"][-1]["summary"] == "auto"
    assert run["particle_clients"] == ref.info["particle_clients"] != []
    assert run["settings"]["summary"] == "auto" and run["settings"]["n_particles"] == 256
