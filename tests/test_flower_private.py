"""Differential privacy on Flower (#20): the ClientApp privatizes before sending, with noise
from a secret the node keeps, and personalized draws stay on the nodes."""

import json

import numpy as np
import pytest

pytest.importorskip("flwr")

from _helpers import APP_ENV  # noqa: E402
from flwr.app import Context, RecordDict  # noqa: E402

from bayes_pfl.federated import fit_ep  # noqa: E402
from bayes_pfl.flower.app import client_app, run_from_settings  # noqa: E402
from bayes_pfl.flower.config import FlowerSettings  # noqa: E402
from bayes_pfl.flower.private import round_key  # noqa: E402
from bayes_pfl.privacy import DPBudget  # noqa: E402
from bayes_pfl.results import load_posterior  # noqa: E402
from tests.test_flower import FakeGrid, jax_cache, node_like_steps, small  # noqa: E402, F401

EPS = 2.0


def _dp_config(run_config, out):
    return {
        **run_config,
        "method": "ep",
        "rounds": 3,
        "dp-epsilon": EPS,
        "num-chains": 2,
        "num-samples": 100,
        "out": str(out),
    }


def _run(run_config, node_configs):
    settings = FlowerSettings.from_run_config(run_config)
    grid = FakeGrid(client_app(), node_configs, run_config)
    return run_from_settings(grid, settings), grid


@pytest.mark.slow
def test_private_run_equals_in_process(small, tmp_path, node_like_steps):  # noqa: F811
    """Draws stay on the nodes. With ``dp-seed = 0`` (no node secret) the Flower run is the
    in-process DP fit with the same seed: the global posterior, each node's own personalized
    posterior (written on the node, never sent) and the privacy spent; the server's result
    has no client draws."""
    settings, run_config, data = small
    rc = _dp_config(run_config, tmp_path / "server")
    nodes = [
        {"partition-id": i, "dp-seed": 0, "personal-dir": str(tmp_path / f"n{i}")} for i in range(5)
    ]
    result, _ = _run(rc, nodes)
    ref = fit_ep(
        settings.hierarchical_model,
        data,
        rounds=3,
        dp=DPBudget(EPS),
        num_chains=2,
        num_samples=100,
        progress=False,
    )
    assert result.theta == {} and result.clients == ref.clients
    post = load_posterior(tmp_path / "server" / "posterior.nc").posterior
    for name, v in ref.phi.items():
        np.testing.assert_allclose(post[name].values, v, rtol=1e-6, atol=1e-9, err_msg=name)
    assert not set(ref.theta) & set(post.data_vars)
    run = json.loads((tmp_path / "server" / "run.json").read_text())
    assert run["privacy"]["spent"] == ref.info["privacy"]["spent"]
    assert run["privacy"]["epsilon_spent"] <= EPS
    assert run["personalized_on"] == "nodes" and run["settings"]["dp_epsilon"] == EPS
    for i, label in enumerate(ref.clients):
        own = load_posterior(tmp_path / f"n{i}" / "posterior.nc").posterior
        for name, v in ref.theta.items():
            mine = own[name].values[:, :, 0]
            np.testing.assert_allclose(mine, v[:, :, i], rtol=1e-6, atol=1e-9, err_msg=label)


@pytest.mark.slow
def test_node_secret_changes_the_noise_and_a_reused_round_key_is_refused(small, tmp_path):  # noqa: F811
    """A node with a secret (its own ``dp-seed``, or random bits when none is set) sends other
    noise than the server could compute; a round key used twice is refused."""
    _, run_config, _ = small
    rc = {**_dp_config(run_config, tmp_path / "a"), "rounds": 1}
    open_nodes = [
        {"partition-id": i, "dp-seed": 0, "personal-dir": str(tmp_path / f"a{i}")} for i in range(5)
    ]
    secret_nodes = [{"partition-id": i, "personal-dir": str(tmp_path / f"b{i}")} for i in range(5)]
    secret_nodes[0]["dp-seed"] = 12345
    a, _ = _run(rc, open_nodes)
    b, _ = _run({**rc, "out": str(tmp_path / "b")}, secret_nodes)
    sa, sb = np.asarray(a.state["sites"].shift), np.asarray(b.state["sites"].shift)
    assert np.all(np.abs(sa - sb).max(axis=-1) > 1e-6)  # every node's noise differs

    ctx = Context(1, 7, {"dp-seed": 99}, RecordDict(), {})
    key = np.array([1, 2], np.uint32)
    mixed = round_key(ctx, key)
    assert mixed.shape == (2,) and not np.array_equal(mixed, key)
    with pytest.raises(ValueError, match="used already"):
        round_key(ctx, key)
    other = Context(1, 8, {"dp-seed": 100}, RecordDict(), {})
    assert not np.array_equal(round_key(other, key), mixed)


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"method": "one-shot"}, "applies to method ep"),
        ({"sites": "global"}, "applies to method ep"),
        ({"precision-cap": 10.0}, "precision-cap"),
        ({"dp-delta": 0.5, "dp-epsilon": 0.0}, "need dp-epsilon"),
        ({"dp-delta": 2.0}, "dp-delta"),
        ({"dp-accountant": "nope"}, "accountant"),
        ({"standardize": True}, "exact"),
    ],
)
def test_bad_private_settings_are_refused(small, tmp_path, extra, message):  # noqa: F811
    _, run_config, _ = small
    with pytest.raises(ValueError, match=message):
        FlowerSettings.from_run_config({**_dp_config(run_config, tmp_path), **extra})


def test_a_node_requiring_privacy_refuses_a_run_without_it(small, tmp_path):  # noqa: F811
    _, run_config, _ = small
    rc = {**run_config, "method": "ep", "rounds": 1, "out": str(tmp_path)}
    nodes = [{"partition-id": i, "dp-max-epsilon": 1.0} for i in range(5)]
    # (the in-process grid raises the node's error; a real SuperNode reports it as the
    # node's failed reply, and the server leaves the node out)
    with pytest.raises(ValueError, match="requires differential privacy.*dp-max-epsilon"):
        _run(rc, nodes)
    ok = [{"partition-id": i, "dp-max-epsilon": 2.0} for i in range(5)]
    settings = FlowerSettings.from_run_config({**rc, "dp-epsilon": 1.0})
    from bayes_pfl.flower.app import check_node_privacy

    for node in ok:
        check_node_privacy(settings, node)  # a budget within the node's limit passes
    with pytest.raises(ValueError, match="epsilon <= 2"):
        check_node_privacy(FlowerSettings.from_run_config({**rc, "dp-epsilon": 4.0}), ok[0])


@pytest.mark.slow
def test_flower_simulation_private_run(tmp_path, jax_cache):  # noqa: F811
    """``flwr run`` (simulation runtime) of a DP EP fit: nodes draw their own secrets, so the
    noise differs from the in-process fit's; the spend is the same, every global parameter
    agrees with the in-process DP fit within its noise (|z| <= 4 of the two posteriors), the
    server's folder holds no client draws and each node wrote its own posterior."""
    import glob

    from bayes_pfl.data import FederatedData
    from bayes_pfl.flower.launch import LocalFederation
    from bayes_pfl.synthetic import make_federation
    from tests.test_flower import APP_DIR, _check_result

    fed_data = make_federation(
        family="bernoulli", n_clients=4, n_features=2, median_size=150, seed=5
    ).data
    csv = tmp_path / "fed.csv"
    fed_data.to_csv(csv, index=False)
    out = tmp_path / "fit"
    run_config = {
        "data": str(csv),
        "client-col": "client",
        "target": "y",
        "features": "x0,x1",
        "model": "logistic",
        "standardize": False,
        "rounds": 4,
        "dp-epsilon": 4.0,
        "num-chains": 2,
        "num-samples": 500,
        "out": str(out),
        "jax-cache-dir": jax_cache,
    }
    home = tmp_path / "flwr-home"
    with LocalFederation(home, simulation=True, env=APP_ENV) as fed:
        run_id = fed.run(APP_DIR, run_config, num_supernodes=4)
        status = fed.wait(run_id, timeout_s=600)
    run = _check_result(out)
    assert status == "finished:completed", status
    assert run["personalized_on"] == "nodes" and run["left_out"] == {}
    settings = FlowerSettings.from_run_config(run_config)
    data = FederatedData.from_pandas(
        fed_data, client_col="client", target="y", features=["x0", "x1"], seed=0
    )
    ref = fit_ep(
        settings.hierarchical_model,
        data,
        rounds=4,
        dp=DPBudget(4.0),
        num_chains=2,
        num_samples=500,
        progress=False,
    )
    assert run["privacy"]["spent"] == ref.info["privacy"]["spent"]
    post = load_posterior(out / "posterior.nc").posterior
    assert not set(ref.theta) & set(post.data_vars)
    for name, v in ref.phi.items():
        a = post[name].values.reshape(-1, *v.shape[2:])
        b = v.reshape(-1, *v.shape[2:])
        z = np.abs(a.mean(0) - b.mean(0)) / np.sqrt(a.var(0) + b.var(0))
        assert np.all(z <= 4.0), (name, z)
    own = sorted(glob.glob(str(home / "bayes-pfl-personal" / "run-*" / "*" / "posterior.nc")))
    assert len(own) == 4, own
    for path in own:
        theta = load_posterior(path).posterior
        assert theta.sizes["client"] == 1 and set(ref.theta) <= set(theta.data_vars)
