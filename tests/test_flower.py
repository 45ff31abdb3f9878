"""The Flower backend: records, the round loop over a Grid, faults, and equality with the
in-process run, in Flower's simulation runtime and in a real SuperLink/SuperNode deployment."""

import json
import logging
import time
import uuid
from pathlib import Path

import jax
import numpy as np
import pandas as pd
import pytest

pytest.importorskip("flwr")

from _helpers import APP_ENV  # noqa: E402
from flwr.app import Context, RecordDict  # noqa: E402
from flwr.supercore.task_identity import TaskIdentity  # noqa: E402

from bayes_pfl.codec import CodecError  # noqa: E402
from bayes_pfl.data import FederatedData  # noqa: E402
from bayes_pfl.datasets import DATASETS, HEART_DISEASE_HOSPITALS, load  # noqa: E402
from bayes_pfl.federated import fit_ep, global_draws, personalize  # noqa: E402
from bayes_pfl.flower import records  # noqa: E402
from bayes_pfl.flower.app import client_app, run_from_settings  # noqa: E402
from bayes_pfl.flower.config import (  # noqa: E402
    FlowerSettings,
    build_phases,
    pooled_standardization,
    standardization_stats,
)
from bayes_pfl.flower.launch import LocalFederation  # noqa: E402
from bayes_pfl.flower.server import discover, run_server  # noqa: E402
from bayes_pfl.simulation import row_buckets, run_rounds  # noqa: E402
from bayes_pfl.synthetic import make_federation  # noqa: E402

APP_DIR = Path(__file__).resolve().parents[1] / "examples" / "flower_app"
HISTORY_KEYS = {"round", "wall_time_s", "bytes_up_per_client", "bytes_down_per_client"}
HISTORY_KEYS |= {"n_rejected", "rejected", "failed", "mean_change", "sd_change", "converged"}


class FakeGrid:
    """A synchronous in-process ``Grid``: node ``i`` is a ClientApp with its own ``Context``.

    ``silent`` nodes never answer a round; ``tamper(node, reply)`` may rewrite a reply.
    """

    def __init__(self, app, node_configs, run_config, *, silent=(), tamper=None):
        TaskIdentity.run_id = TaskIdentity.node_id = TaskIdentity.task_id = 1
        self.app = app
        self.contexts = {
            1000 + i: Context(1, 1000 + i, dict(cfg), RecordDict(), dict(run_config))
            for i, cfg in enumerate(node_configs)
        }
        self.silent, self.tamper = set(silent), tamper
        self.replies = {}

    def get_node_ids(self):
        return list(self.contexts)

    def push_messages(self, messages):
        ids = []
        for msg in messages:
            mid = str(uuid.uuid4())
            msg.metadata.__dict__["_message_id"] = mid
            ids.append(mid)
            node = msg.metadata.dst_node_id
            if node in self.silent and msg.metadata.message_type == "train":
                continue
            reply = self.app(msg, self.contexts[node])
            self.replies[mid] = self.tamper(node, reply) if self.tamper else reply
        return ids

    def pull_messages(self, ids):
        return [self.replies.pop(i) for i in list(ids) if i in self.replies]


# ------------------------------------------------------------------- records


def test_records_roundtrip_and_checks():
    tree = {"a": np.arange(6.0).reshape(2, 3), "ok": np.asarray(True), "n": np.int32(3)}
    rec = records.to_array_record(tree)
    assert sorted(rec) == ["['a']", "['n']", "['ok']"]  # key paths
    back = records.from_array_record(rec, tree)
    for k in tree:
        assert back[k].shape == np.shape(tree[k]) and back[k].dtype == np.asarray(tree[k]).dtype
        np.testing.assert_array_equal(back[k], tree[k])
    with pytest.raises(CodecError, match="shape"):
        records.from_array_record(rec, {**tree, "a": np.zeros((3, 2))})
    with pytest.raises(CodecError, match="dtype"):
        records.from_array_record(rec, {**tree, "a": np.zeros((2, 3), np.float32)})
    with pytest.raises(CodecError, match="missing"):
        records.from_array_record(rec, {**tree, "extra": np.zeros(1)})
    with pytest.raises(CodecError, match="pickle"):
        records.to_array_record({"x": np.array([object()])})
    m = records.metric_record({"a": np.float32(1.5), "b": np.int64(2)})
    assert type(m["a"]) is float and type(m["b"]) is int


def test_pooled_standardization_equals_pooled_rows():
    info = DATASETS["heart_disease"]
    df = load("heart_disease")
    data = FederatedData.from_pandas(
        df.dropna(subset=list(info.features)),
        client_col="hospital",
        target="target",
        features=list(info.features),
        standardize=True,
    )
    parts = [
        df[df.hospital == h][list(info.features)].dropna().to_numpy(float)
        for h in HEART_DISEASE_HOSPITALS
    ]
    mean, scale = pooled_standardization([standardization_stats(x) for x in parts])
    np.testing.assert_allclose(mean, data.feature_mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(scale, data.feature_scale, rtol=1e-12)


# -------------------------------------------------- round loop on an in-process grid


def csv_run_config(fed, folder, model: str, **more) -> dict:
    """A run config reading ``fed`` (one feature ``x0``) from a CSV written to ``folder``:
    three rounds, raw units, the server polling every 10 ms; ``more`` adds or replaces."""
    path = folder / "federation.csv"
    fed.data.to_csv(path, index=False)
    return {
        "data": str(path),
        "client-col": "client",
        "target": "y",
        "features": "x0",
        "model": model,
        "standardize": False,
        "rounds": 3,
        "poll-interval-s": 0.01,
        **more,
    }


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """Five clients of a hierarchical linear model, as a CSV the settings point to."""
    fed = make_federation(family="normal", n_clients=5, n_features=1, median_size=8, seed=3)
    run_config = csv_run_config(
        fed, tmp_path_factory.mktemp("small"), "linear", **{"round-timeout-s": 0.2}
    )
    settings = FlowerSettings.from_run_config(run_config)
    data = FederatedData.from_pandas(
        fed.data, client_col="client", target="y", features=["x0"], seed=0
    )
    return settings, run_config, data


@pytest.fixture
def node_like_steps(monkeypatch):
    """In-process references (``run_rounds``) whose client step runs client by client, each
    the single-client jitted step a node runs.

    EP over client effects samples the server's density with NUTS every round, and NUTS
    turns a last-bit difference in the clients' sites into other draws (and so other
    cavities). The vectorized step over all clients (``vmap``, or ``lax.map`` in chunks)
    is compiled differently from a node's step and differs from it in the last bits, so a
    reference of the Flower run must compute each client as a node does.
    """
    import jax.numpy as jnp

    from bayes_pfl import simulation
    from bayes_pfl.flower.client import _jit  # the nodes' jitted steps

    def per_client(client_update, batch):
        one = _jit(client_update)

        def step(keys, broadcast, states, data):
            outs = [
                one(
                    keys[i],
                    *(jax.tree.map(lambda a, i=i: a[i], t) for t in (broadcast, states, data)),
                )
                for i in range(keys.shape[0])
            ]
            return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)

        return step

    monkeypatch.setattr(simulation, "_compiled_client_step", per_client)


def _grid(run_config, n, **kw):
    return FakeGrid(client_app(), [{"partition-id": i} for i in range(n)], run_config, **kw)


def _discovered(run_config, n=5, **kw):
    """A fresh grid of ``n`` nodes (see :class:`FakeGrid` for ``kw``) and its federation."""
    grid = _grid(run_config, n, **kw)
    return grid, discover(grid, n_clients=n, node_wait_s=5, timeout_s=5)


def _in_process(phase, data, *, rounds, **kw):
    """The in-process driver's run of ``phase`` over the training rows (the reference)."""
    return run_rounds(
        phase.algorithm, data.train, rounds=rounds, labels=data.clients, progress=False, **kw
    )


def _assert_same_states(flower_state, in_process_state):
    """Every leaf of the Flower server's state equals the in-process driver's (last bits)."""
    pairs = zip(jax.tree.leaves(flower_state), jax.tree.leaves(in_process_state), strict=True)
    for a, b in pairs:
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-9)


@pytest.mark.slow
def test_faults_left_out_like_in_process_nonparticipants(small, caplog, node_like_steps):
    """A silent node and a node sending NaN are left out every round (and logged by node id);
    the result equals the in-process run in which those two clients do not participate."""
    settings, run_config, data = small

    def tamper(node, reply):
        if node == 1002 and "message" in reply.content.array_records:  # non-finite
            rec = reply.content.array_records["message"]
            rec[".site.shift"] = records.Array(np.full(rec[".site.shift"].shape, np.nan))
        return reply

    grid, federation = _discovered(run_config, silent={1004}, tamper=tamper)
    (phase,) = build_phases(settings)
    with caplog.at_level(logging.INFO, logger="bayes_pfl.flower"):
        res = run_server(
            grid, phase.algorithm, federation, rounds=3, timeout_s=0.2, stop_when_converged=False
        )
    assert "node 1002 ('c002') left out: non-finite" in caplog.text
    assert "node 1004 ('c004') left out: no reply" in caplog.text
    for h in res.history:
        assert h["rejected"] == ["c002"] and h["no_reply"] == ["c004"]
        assert HISTORY_KEYS <= set(h)
    participating = np.array([True, True, False, True, False])
    ref = _in_process(phase, data, rounds=3, participating=participating, stop_when_converged=False)
    assert set(ref.history[0]) <= set(res.history[0])
    _assert_same_states(res.server_state, ref.server_state)
    # the left-out clients keep their initial (flat) sites
    np.testing.assert_array_equal(np.asarray(res.server_state.sites.precision)[[2, 4]], 0.0)


@pytest.mark.slow
def test_nodes_pad_rows_like_the_in_process_row_buckets(small, tmp_path, node_like_steps):
    """With ``bucket_rows`` (EP's phases) each node pads its rows to its in-process row
    bucket: a round over a ragged federation equals ``run_rounds(bucket_rows=True)``."""
    settings, run_config, _ = small
    fed = make_federation(
        family="normal", n_clients=5, n_features=1, sizes=np.array([40, 5, 6, 7, 8]), seed=3
    )
    path = tmp_path / "ragged.csv"
    fed.data.to_csv(path, index=False)
    config = {**run_config, "data": str(path)}
    data = FederatedData.from_pandas(
        fed.data, client_col="client", target="y", features=["x0"], seed=0
    )
    grid, federation = _discovered(config)
    buckets = row_buckets(data.train.mask)
    assert len(buckets) == 2  # [40 rows], [the four small clients, 10 rows]
    expected = np.zeros(5, int)
    for idx, rows in buckets:
        expected[idx] = rows
    np.testing.assert_array_equal(federation.padded_rows(bucket_rows=True), expected)
    np.testing.assert_array_equal(federation.padded_rows(), 40)
    (phase,) = build_phases(settings)  # the small federation's model: the same algorithm
    assert phase.bucket_rows
    res = run_server(grid, phase.algorithm, federation, rounds=1, timeout_s=30, bucket_rows=True)
    ref = _in_process(phase, data, rounds=1, bucket_rows=True)
    _assert_same_states(res.server_state, ref.server_state)


def test_baseline_runs_over_flower_like_in_process(small, tmp_path):
    """FedProx (an optimization baseline) through the Flower server and ClientApps gives the
    in-process driver's states; its algorithm is the one ``fit_baseline`` runs."""
    import json

    from bayes_pfl.baselines import fit_baseline
    from bayes_pfl.baselines.fit import baseline_algorithm

    _, run_config, data = small
    options = {"mu": 0.1, "lr": 0.1}
    config = {**run_config, "method": "fedprox", "method-options": json.dumps(options)}
    settings = FlowerSettings.from_run_config(config)
    grid, federation = _discovered(config)
    (phase,) = build_phases(settings)
    res = run_server(
        grid, phase.algorithm, federation, rounds=3, timeout_s=5, stop_when_converged=False
    )
    ref = _in_process(phase, data, rounds=3, stop_when_converged=False)
    _assert_same_states(res.server_state, ref.server_state)
    # the same functions fit_baseline drives: same global model after 3 rounds
    fit = fit_baseline("fedprox", data, family="normal", rounds=3, seed=0, **options)
    base = baseline_algorithm("fedprox", 1, family="normal", seed=0, **options)
    params, _ = base.global_fn(res.server_state, ref.client_states)  # clients hold theirs
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(fit.global_params), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="unknown method"):
        build_phases(FlowerSettings.from_run_config({**run_config, "method": "fedsgd"}))
    # the ServerApp's result folder: the global model by key path and the run record
    from bayes_pfl.codec import decode

    out = tmp_path / "fedprox"
    config = {**config, "out": str(out)}
    assert run_from_settings(_grid(config, 5), FlowerSettings.from_run_config(config)) is None
    with np.load(out / "server_state.npz") as z:
        saved = decode(dict(z), ref.server_state)
    for a, b in zip(jax.tree.leaves(saved), jax.tree.leaves(ref.server_state), strict=True):
        np.testing.assert_allclose(a, np.asarray(b), rtol=1e-6, atol=1e-9)
    run = json.loads((out / "run.json").read_text())
    assert run["method"] == "fedprox" and run["rounds"] == 3 and run["runtime"] == "flower"
    assert run["clients"] == list(data.clients) and len(run["history"]) == 3


@pytest.mark.slow
def test_checkpoint_resume_continues_the_run(small, tmp_path, node_like_steps):
    settings, run_config, data = small
    (phase,) = build_phases(settings)
    ckpt = tmp_path / "ckpt"

    def run(rounds, resume):
        grid, federation = _discovered(run_config)  # a new grid: nodes have no state
        return run_server(
            grid,
            phase.algorithm,
            federation,
            rounds=rounds,
            checkpoint=ckpt,
            resume=resume,
            stop_when_converged=False,
        )

    first = run(2, False)
    assert json.loads(ckpt.with_suffix(".json").read_text())["history"][-1]["round"] == 2
    resumed = run(3, True)
    assert [h["round"] for h in resumed.history] == [1, 2, 3]
    assert resumed.history[:2] == json.loads(json.dumps(first.history))
    ref = _in_process(phase, data, rounds=3, stop_when_converged=False)
    # resumed clients restart their Newton solver from client_init: same answer to its tolerance
    np.testing.assert_allclose(resumed.server_state.mode, ref.server_state.mode, atol=1e-6)


def one_shot_config(run_config, **extra):
    """The small federation's run config for one-shot with a cheap Laplace global posterior.

    Sites over the global parameters: their global draws (Laplace) are a deterministic
    function of the sites, so the Flower run must equal the in-process one to the last
    bits. Over client effects the server samples its density with NUTS, which turns the
    last-bit differences between a node's single-client step and the vectorized
    in-process step into other draws (see the ``node_like_steps`` tests for that format).
    """
    return {
        **run_config,
        "method": "one-shot",
        "sites": "global",
        "global-method": "laplace",
        "num-chains": 2,
        "num-samples": 50,
        **extra,
    }


def one_shot_reference(settings, data):
    """``fit_one_shot`` in process with the settings of :func:`one_shot_config`."""
    from bayes_pfl.federated import fit_one_shot

    return fit_one_shot(
        settings.hierarchical_model,
        data,
        sites=settings.sites,
        global_method=settings.global_method,
        num_chains=settings.num_chains,
        num_samples=settings.num_samples,
        progress=False,
    )


def _assert_folder_posterior(folder, ref):
    """The result folder's posterior equals ``ref``'s draws; returns its run record."""
    from bayes_pfl.results import load_posterior

    post = load_posterior(folder / "posterior.nc").posterior
    for name, v in {**ref.phi, **ref.theta}.items():
        np.testing.assert_allclose(post[name].values, v, rtol=1e-6, atol=1e-9, err_msg=name)
    return json.loads((folder / "run.json").read_text())


@pytest.mark.slow
def test_one_shot_end_to_end_equals_fit_one_shot(small, tmp_path):
    """The ServerApp's whole path (describe, one round, global draws, personalization on the
    nodes, result folder) gives fit_one_shot's posteriors."""
    _, run_config, data = small
    run_config = one_shot_config(run_config, out=str(tmp_path / "fit"))
    settings = FlowerSettings.from_run_config(run_config)
    result = run_from_settings(_grid(run_config, 5), settings)
    ref = one_shot_reference(settings, data)
    assert result.clients == ref.clients and result.method == "one-shot"
    run = _assert_folder_posterior(tmp_path / "fit", ref)
    assert run["method"] == "one-shot" and run["runtime"] == "flower" and run["rounds"] == 1


@pytest.mark.slow
def test_one_shot_over_effects_end_to_end_equals_fit_one_shot(small, tmp_path, node_like_steps):
    """The default format (sites over client effects) through the ServerApp's whole path: each
    node personalizes from its own site; fit_one_shot's posteriors when its client step runs
    as the nodes' (``node_like_steps``)."""
    _, run_config, data = small
    run_config = one_shot_config(run_config, sites="effects", out=str(tmp_path / "fit"))
    settings = FlowerSettings.from_run_config(run_config)
    result = run_from_settings(_grid(run_config, 5), settings)
    ref = one_shot_reference(settings, data)
    assert result.clients == ref.clients and result.history[0]["sites"] == "effects"
    run = _assert_folder_posterior(tmp_path / "fit", ref)
    assert run["runtime"] == "flower" and run["min_personalize_acceptance"] > 0.5


@pytest.mark.slow  # a second effects fit of the small federation
def test_one_shot_with_a_student_t_population_equals_fit_one_shot(small, tmp_path, node_like_steps):
    """A Student-t population (``population-df``) through the ServerApp's whole path: each
    node personalizes from its own site with the scale-mixture proposal, as in process."""
    _, run_config, data = small
    run_config = one_shot_config(
        run_config, sites="effects", out=str(tmp_path / "fit"), **{"population-df": 4.0}
    )
    settings = FlowerSettings.from_run_config(run_config)
    assert settings.hierarchical_model.population_df == 4.0
    run_from_settings(_grid(run_config, 5), settings)
    ref = one_shot_reference(settings, data)
    run = _assert_folder_posterior(tmp_path / "fit", ref)
    assert run["population"] == {"student_t_df": 4.0}
    assert run["min_personalize_acceptance"] > 0.5


def test_effects_personalization_steps_trace_on_a_fresh_model():
    """A node's personalization from its site traces (jit, and the exported step's build)
    on a model whose population was never built: the population's check needs concrete
    values, so it is built before tracing."""
    from bayes_pfl.data import ClientArrays
    from bayes_pfl.flower import client as client_mod
    from bayes_pfl.models import get_model

    def fresh():
        return get_model("linear", 1)

    rows, draws, j = 6, 4, 3
    x, y, mask = np.zeros((rows, 1)), np.zeros(rows), np.arange(rows) < 4
    u = np.zeros((draws, fresh().phi_dim))
    site = {"precision": np.eye(j), "shift": np.zeros(j)}
    key = jax.random.key_data(jax.random.key(0))
    theta, acc = jax.eval_shape(
        client_mod._personalize_effects_fn(fresh()),
        key,
        site["precision"],
        site["shift"],
        u,
        x,
        y,
        mask,
    )
    assert theta.shape[0] == draws and acc.shape == ()
    arrays = ClientArrays(x, y, mask)
    flat_key = {"['key']": np.asarray(key)}
    build = client_mod._personalize_builder(lambda ctx: fresh(), None, flat_key, arrays, u, site)
    fn, templates = build()
    theta, acc = jax.eval_shape(fn, *templates)
    assert theta.shape[0] == draws and acc.shape == ()


# ------------------------------------------------------------- real Flower processes


@pytest.fixture(scope="module")
def jax_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("jax-cache"))


def _heart_reference(settings, data, *, rounds, participation=None):
    """In-process EP over the global parameters (round by round when participation varies)
    + laplace global draws."""
    (phase,) = build_phases(settings)
    model = settings.hierarchical_model
    if participation is None:
        out = _in_process(phase, data, rounds=rounds)
    else:
        out = None
        for mask in participation:  # EP-Laplace uses no random keys in its rounds
            out = _in_process(
                phase,
                data,
                rounds=1,
                participating=mask,
                init=None if out is None else (out.server_state, out.client_states),
            )
    state = out.server_state
    key = jax.random.key(settings.seed + 1)
    u, _ = global_draws(
        jax.random.fold_in(key, 1),
        model,
        state.sites_product,
        method="laplace",
        mode=state.mode,
        precision=state.precision,
        num_chains=settings.num_chains,
        num_samples=settings.num_samples,
    )
    c, s, p = u.shape
    theta, _ = personalize(jax.random.fold_in(key, 2), model, u.reshape(c * s, p), data.train)
    return u, theta


def _check_result(out: Path):
    """``flwr`` can report success although the ServerApp failed: the result folder decides."""
    assert (out / "run.json").is_file(), f"no result in {out}"
    assert (out / "posterior.nc").is_file() and (out / "summary.csv").is_file()
    return json.loads((out / "run.json").read_text())


@pytest.mark.slow
def test_flower_simulation_equals_in_process(tmp_path, jax_cache):
    """``flwr run`` in Flower's simulation runtime gives the in-process fit_ep's posteriors.

    Sites over the global parameters with Laplace global draws: a deterministic function of
    the sites, so equal to the last bits (see :func:`one_shot_config`)."""
    out = tmp_path / "fit"
    run_config = {
        "rounds": 2,
        "sites": "global",
        "global-method": "laplace",
        "num-chains": 2,
        "num-samples": 100,
        "out": str(out),
        "jax-cache-dir": jax_cache,
    }
    with LocalFederation(tmp_path / "flwr-home", simulation=True, env=APP_ENV) as fed:
        run_id = fed.run(APP_DIR, run_config, num_supernodes=4)
        status = fed.wait(run_id, timeout_s=600)
    run = _check_result(out)
    assert status == "finished:completed", status
    assert run["runtime"] == "flower" and run["left_out"] == {}
    settings = FlowerSettings.from_run_config(run_config)
    from bayes_pfl.flower.config import _federated_data

    data = _federated_data(settings)
    ref = fit_ep(
        settings.hierarchical_model,
        data,
        rounds=2,
        sites="global",
        global_method="laplace",
        num_chains=2,
        num_samples=100,
        progress=False,
    )
    from bayes_pfl.results import load_posterior

    post = load_posterior(out / "posterior.nc").posterior
    assert list(post["client"].values) == list(data.clients)
    for name in (*ref.phi, *ref.theta):
        ours = post[name].values
        theirs = ref.phi[name] if name in ref.phi else ref.theta[name]
        np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-8, err_msg=name)
    for h, r in zip(run["history"], ref.history, strict=True):
        assert HISTORY_KEYS <= set(h)
        np.testing.assert_allclose(h["mean_change"], r["mean_change"], rtol=1e-6)
    from bayes_pfl.report import write_report

    assert write_report(out).is_file()  # `bayes-pfl report` works on the folder


@pytest.mark.slow
def test_deployment_four_hospitals_with_a_node_stopped(tmp_path, jax_cache):
    """A SuperLink and four SuperNodes on 127.0.0.1, each reading only its hospital's CSV.

    EP with the hierarchical logistic model; one SuperNode is stopped after round 1. The
    run completes, the stopped hospital is left out of round 2 (its site kept) and of
    personalization, and the posteriors equal the in-process run with the same participation.
    EP with sites over the global parameters (Laplace tilted): the reference replays its
    rounds one by one with the recorded participation, which its key-free rounds allow.
    """
    info = DATASETS["heart_disease"]
    df = load("heart_disease")
    csv_dir = tmp_path / "hospitals"
    csv_dir.mkdir()
    nodes = []
    for i, hospital in enumerate(HEART_DISEASE_HOSPITALS):
        path = csv_dir / f"{hospital}.csv"
        df[df.hospital == hospital].to_csv(path, index=False)  # raw, with missing values
        nodes.append({"partition-id": i, "data-path": str(path)})
    out = tmp_path / "fit"
    rounds = 2
    run_config = {
        "rounds": rounds,
        "sites": "global",
        "global-method": "laplace",
        "num-chains": 2,
        "num-samples": 100,
        "num-clients": 4,
        "round-timeout-s": 300.0,
        "out": str(out),
        "jax-cache-dir": jax_cache,
    }
    victim = 2  # switzerland
    with LocalFederation(tmp_path / "flwr-home", nodes, env=APP_ENV) as fed:
        fed.wait_registered(timeout_s=120)
        run_id = fed.run(APP_DIR, run_config)
        ckpt = out / "checkpoint-0.json"
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline:
            if ckpt.is_file() and len(json.loads(ckpt.read_text())["history"]) >= rounds - 1:
                break
            time.sleep(0.1)
        else:
            pytest.fail(f"no checkpoint of round {rounds - 1}:\n{fed.logs(run_id)[-3000:]}")
        fed.stop_node(victim)
        status = fed.wait(run_id, timeout_s=400)
        logs = fed.logs(run_id)
    run = _check_result(out)
    assert status == "finished:completed", status
    hospitals = list(HEART_DISEASE_HOSPITALS)
    assert run["left_out"].keys() == {hospitals[victim]}
    assert run["history"][-1]["no_reply"] == [hospitals[victim]], logs[-3000:]
    assert f"({hospitals[victim]!r}) left out" in logs
    # reference: the same rows pooled in process, with the participation the run recorded
    settings = FlowerSettings.from_run_config(run_config)
    data = FederatedData.from_pandas(
        pd.concat([pd.read_csv(n["data-path"]) for n in nodes]),
        client_col="hospital",
        target="target",
        features=list(info.features),
        standardize=True,
        missing="drop",
    )
    participation = [
        np.array([lab not in h["no_reply"] + h["rejected"] for lab in data.clients])
        for h in run["history"]
    ]
    u, theta = _heart_reference(settings, data, rounds=rounds, participation=participation)
    from bayes_pfl.results import load_posterior

    post = load_posterior(out / "posterior.nc").posterior
    kept = [hospitals.index(c) for c in post["client"].values]
    assert kept == [i for i in range(4) if i != victim]
    from bayes_pfl.posterior import to_result

    ref = to_result(
        "ep",
        settings.hierarchical_model,
        [data.clients[i] for i in kept],
        u,
        theta[np.asarray(kept)],
        sample_stats=None,
        history=[],
        info={},
    )
    for name, v in {**ref.phi, **ref.theta}.items():
        np.testing.assert_allclose(post[name].values, v, rtol=1e-6, atol=1e-8, err_msg=name)
