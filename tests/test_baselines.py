"""Optimization baselines: limits, exact equalities, what stays local, clustering, cold start."""

import dataclasses
import warnings

import jax
import numpy as np
import pandas as pd
import pytest

from bayes_pfl.baselines import BASELINE_NAMES, HPARAM_DEFAULTS, fit_baseline
from bayes_pfl.baselines.clustered import choose_clusters
from bayes_pfl.baselines.networks import build_network, get_family
from bayes_pfl.baselines.training import (
    client_loss_fn,
    keep_where,
    make_optimizer,
    optimizer_steps_fn,
    stack_copies,
    take,
)
from bayes_pfl.data import ClientArrays, DataError, FederatedData
from bayes_pfl.synthetic import make_federation


def _data(family="normal", n_clients=6, sizes=30, seed=1, test_size=0.0, **kw):
    fed = make_federation(
        family=family, n_clients=n_clients, n_features=2, varying="slopes", sizes=sizes,
        seed=seed, **kw,
    )  # fmt: skip
    return FederatedData.from_pandas(
        fed.data, client_col="client", target="y", features=list(fed.features),
        test_size=test_size, seed=seed,
    )  # fmt: skip


@pytest.fixture(scope="module")
def normal_data():
    return _data("normal")


@pytest.fixture(scope="module")
def bern_data():
    # unequal client sizes, so that the weighting by rows matters
    return _data("bernoulli", sizes=np.array([5, 40, 12, 60, 8, 25]), seed=2, test_size=0.25)


def _pred(fit, data):
    tr = data.arrays("train")
    return fit.predict(tr.x, tr.mask)[np.asarray(tr.mask)]


# ---------------------------------------------------------------- limits


@pytest.fixture(scope="module")
def reference_fits(normal_data):
    common = dict(family="normal", rounds=60, local_steps=5, lr=0.1)
    return {
        "local": fit_baseline("local", normal_data, **common),
        "fedavg": fit_baseline("fedavg", normal_data, **common),
    }


def test_ditto_limits(normal_data, reference_fits):
    common = dict(family="normal", rounds=60, local_steps=5, lr=0.1)
    tiny = fit_baseline("ditto", normal_data, lam=1e-9, **common)
    huge = fit_baseline("ditto", normal_data, lam=1e7, **common)
    for k, v in reference_fits["local"].personal_params.items():
        np.testing.assert_allclose(tiny.personal_params[k], v, atol=1e-6)
    np.testing.assert_allclose(
        _pred(huge, normal_data), _pred(reference_fits["fedavg"], normal_data), atol=1e-4
    )
    # the two references differ, so the limits say something
    gap = np.abs(_pred(reference_fits["local"], normal_data) - _pred(huge, normal_data))
    assert gap.max() > 0.1


def test_pfedme_limits(normal_data, reference_fits):
    # lambda -> 0: local training with local_steps * inner_steps steps per round
    tiny = fit_baseline(
        "pfedme", normal_data, family="normal", rounds=60, local_steps=1, lr=0.1,
        lam=1e-9, inner_steps=5,
    )  # fmt: skip
    for k, v in reference_fits["local"].personal_params.items():
        np.testing.assert_allclose(tiny.personal_params[k], v, atol=1e-6)
    # lambda -> inf: the global model follows FedAvg at the outer rate
    huge = fit_baseline(
        "pfedme", normal_data, family="normal", rounds=60, local_steps=5, lr=0.1,
        lam=1e5, inner_steps=3,
    )  # fmt: skip
    for k, v in reference_fits["fedavg"].global_params.items():
        np.testing.assert_allclose(huge.global_params[k], v, atol=1e-3)


# ------------------------------------------------------- exact equalities


def test_local_training_is_one_long_run(normal_data):
    """Local-only training keeps its optimizer state: rounds x steps = one run of that many steps."""
    fit = fit_baseline(
        "local", normal_data, family="normal", rounds=3, local_steps=2, lr=0.05, optimizer="adam"
    )
    fam = get_family("normal")
    net = build_network("linear", normal_data.n_features, fam.out_dim)
    tx = make_optimizer("adam", 0.05)
    run = optimizer_steps_fn(client_loss_fn(net, fam), tx, fam, 6)
    params0, stats0 = net.init(0)
    client = tuple(np.asarray(a)[1] for a in normal_data.arrays("train"))
    params, _, _, (losses, _) = run(params0, stats0, tx.init(params0), client)
    for k, v in params.items():
        np.testing.assert_allclose(fit.personal_params[k][1], v, rtol=1e-10, atol=1e-12)
    # one loss per step, at the parameters the step starts from; the run descends
    assert losses.shape == (6,) and np.all(np.diff(losses) < 0)


def test_tree_helpers():
    tree = {"a": np.arange(3.0), "b": np.ones((2, 2))}
    stacked = stack_copies(tree, 4)
    assert stacked["a"].shape == (4, 3) and stacked["b"].shape == (4, 2, 2)
    np.testing.assert_array_equal(take(stacked, 2)["a"], tree["a"])
    other = jax.tree.map(lambda a: -a, tree)
    np.testing.assert_array_equal(keep_where(True, tree, other)["b"], tree["b"])
    np.testing.assert_array_equal(keep_where(False, tree, other)["b"], other["b"])


def test_fedavg_one_gd_step_is_centralized_gd(bern_data):
    kw = dict(family="bernoulli", rounds=15, local_steps=1, lr=0.5)
    fedavg = fit_baseline("fedavg", bern_data, **kw)
    pooled = fit_baseline("pooled", bern_data, **kw)
    assert set(fedavg.global_params) == {"head.kernel", "head.bias"}
    for k, v in pooled.global_params.items():
        np.testing.assert_allclose(fedavg.global_params[k], v, rtol=1e-10, atol=1e-12)
    # the pooled history records the same losses
    np.testing.assert_allclose(
        [h["loss"] for h in fedavg.history], [h["loss"] for h in pooled.history], rtol=1e-10
    )
    # several local steps drift away from centralized descent
    drift = fit_baseline("fedavg", bern_data, **{**kw, "local_steps": 3, "rounds": 5})
    assert (
        np.abs(drift.global_params["head.kernel"] - fedavg.global_params["head.kernel"]).max()
        > 1e-4
    )


@pytest.fixture(scope="module")
def sampled_fedavg(bern_data):
    """FedAvg with half of the clients sampled per round."""
    return fit_baseline("fedavg", bern_data, rounds=4, fraction=0.5, seed=5)


def test_fedprox_mu_zero_is_fedavg(bern_data, sampled_fedavg):
    kw = dict(rounds=4, fraction=0.5, seed=5)
    prox0 = fit_baseline("fedprox", bern_data, mu=0.0, **kw)
    prox = fit_baseline("fedprox", bern_data, mu=5.0, **kw)
    for k, v in sampled_fedavg.global_params.items():
        np.testing.assert_array_equal(prox0.global_params[k], v)
    assert not np.allclose(
        prox.global_params["head.kernel"], sampled_fedavg.global_params["head.kernel"]
    )


# ------------------------------------------------------ what stays local


def _spread(a):
    """Largest difference between clients (leading axis)."""
    return float(np.max(np.abs(a - a[:1])))


def test_fedbn_keeps_batchnorm_local(bern_data):
    kw = dict(family="bernoulli", network="mlp_bn", hidden=4, rounds=4)
    fedbn = fit_baseline("fedbn", bern_data, **kw)
    for key in ("layers.0.kernel", "layers.0.bias", "head.kernel", "head.bias"):
        assert _spread(fedbn.personal_params[key]) == 0.0, key
    for key in ("norms.0.scale", "norms.0.bias"):
        assert _spread(fedbn.personal_params[key]) > 1e-6, key
    for key in ("norms.0.mean", "norms.0.var"):
        assert _spread(fedbn.personal_stats[key]) > 1e-6, key
    # FedAvg on the same network averages BatchNorm too
    fedavg = fit_baseline("fedavg", bern_data, **kw)
    assert _spread(fedavg.personal_params["norms.0.scale"]) == 0.0
    assert _spread(fedavg.personal_stats["norms.0.mean"]) == 0.0
    te = bern_data.arrays("test")
    assert np.isfinite(fedbn.predict_new(te.x[:2], te.mask[:2])).all()


def test_fedper_shares_body_personal_head(bern_data):
    fit = fit_baseline("fedper", bern_data, network="mlp", hidden=4, rounds=4)
    assert _spread(fit.personal_params["layers.0.kernel"]) == 0.0
    assert _spread(fit.personal_params["head.kernel"]) > 1e-6
    # on a GLM: shared slopes, personal intercepts
    glm = fit_baseline("fedper", bern_data, rounds=4)
    assert _spread(glm.personal_params["head.kernel"]) == 0.0
    assert _spread(glm.personal_params["head.bias"]) > 1e-6


def test_adapters_strength_controls_personalization(normal_data, reference_fits):
    kw = dict(family="normal", rounds=60, local_steps=5, lr=0.1)
    rigid = fit_baseline("adapters", normal_data, adapter_strength=1e9, **kw)
    np.testing.assert_allclose(
        _pred(rigid, normal_data), _pred(reference_fits["fedavg"], normal_data), atol=1e-6
    )
    loose = fit_baseline("adapters", normal_data, adapter_strength=0.01, rank=1, **kw)
    assert _spread(loose.personal_params["head.kernel"]) > 1e-2
    # personal corrections fit the clients better than the shared model
    mse = [
        np.mean((_pred(f, normal_data) - normal_data.train.y[normal_data.train.mask]) ** 2)
        for f in (loose, rigid)
    ]
    assert mse[0] < mse[1]


# ------------------------------------------------------------ clustering


@pytest.fixture(scope="module")
def two_groups():
    """Eight clients: four with slope +2, four with slope -2."""
    rng = np.random.default_rng(0)
    rows = []
    for k in range(8):
        slope = 2.0 if k % 2 == 0 else -2.0
        x = rng.standard_normal(25)
        rows.append(
            pd.DataFrame(
                {"client": f"g{k}", "x": x, "y": slope * x + 0.3 * rng.standard_normal(25)}
            )
        )
    data = FederatedData.from_pandas(
        pd.concat(rows, ignore_index=True), client_col="client", target="y", features=["x"]
    )
    return data, np.arange(8) % 2


def _same_partition(a, b):
    return len(set(zip(a.tolist(), b.tolist(), strict=True))) == len(set(b.tolist()))


def test_clustered_recovers_planted_clusters(two_groups):
    data, truth = two_groups
    fit = fit_baseline("clustered", data, family="normal", rounds=20, lr=0.1)  # k chosen
    assert _same_partition(fit.clusters, truth) and len(set(fit.clusters.tolist())) == 2
    slopes = fit.personal_params["head.kernel"][:, 0, 0]
    np.testing.assert_allclose(slopes, np.where(truth == 0, 2.0, -2.0), atol=0.3)
    fedavg = fit_baseline("fedavg", data, family="normal", rounds=20, lr=0.1)
    assert np.abs(fedavg.personal_params["head.kernel"]).max() < 0.5


def test_ifca_recovers_planted_clusters(two_groups):
    data, truth = two_groups
    fit = fit_baseline("ifca", data, family="normal", rounds=20, lr=0.1, n_clusters=2, seed=3)
    assert _same_partition(fit.clusters, truth)
    slopes = fit.personal_params["head.kernel"][:, 0, 0]
    np.testing.assert_allclose(slopes, np.where(truth == 0, 2.0, -2.0), atol=0.3)


def test_choose_clusters_one_group_when_directions_agree():
    rng = np.random.default_rng(0)
    same = np.array([1.0, 2.0, -1.0]) + 0.05 * rng.standard_normal((6, 3))
    labels = choose_clusters(
        same, np.ones(6, bool), n_clusters=None, max_clusters=3, min_silhouette=0.25
    )
    assert set(np.asarray(labels).tolist()) == {0}
    opposite = np.concatenate([same[:3], -same[3:]])
    labels = choose_clusters(
        opposite, np.ones(6, bool), n_clusters=None, max_clusters=3, min_silhouette=0.25
    )
    assert _same_partition(np.asarray(labels), np.array([0, 0, 0, 1, 1, 1]))


# -------------------------------------------------------------- hypernet


def test_hypernet_cold_start_from_metadata():
    """Intercept = metadata: the hypernetwork must map new metadata to the right intercept."""
    rng = np.random.default_rng(1)
    meta = np.linspace(-2, 2, 10)
    rows = []
    for k, m in enumerate(meta):
        x = rng.standard_normal(30)
        rows.append(pd.DataFrame({"client": k, "x": x, "y": m + x + 0.2 * rng.standard_normal(30)}))
    data = FederatedData.from_pandas(
        pd.concat(rows, ignore_index=True), client_col="client", target="y", features=["x"]
    )
    fit = fit_baseline(
        "hypernet", data, family="normal", rounds=80, lr=0.1, metadata=meta[:, None], hn_lr=0.05
    )
    new_meta = np.array([[-1.5], [0.5], [1.8]])
    x_new = np.zeros((3, 1, 1))
    pred = fit.predict_new(x_new, np.ones((3, 1), bool), metadata=new_meta)[:, 0]
    np.testing.assert_allclose(pred, new_meta[:, 0], atol=0.35)
    # personal models follow the metadata too, and beat the global model
    own = fit.predict(np.zeros((10, 1, 1)), np.ones((10, 1), bool))[:, 0]
    assert np.corrcoef(own, meta)[0, 1] > 0.95
    # without metadata: the mean client
    mean_client = fit.predict_new(x_new, np.ones((3, 1), bool))
    np.testing.assert_allclose(mean_client, mean_client[0, 0], atol=1e-12)
    with pytest.raises(DataError, match="metadata must have shape"):
        fit.predict_new(x_new, np.ones((3, 1), bool), metadata=np.zeros((2, 1)))


def test_hypernet_without_metadata_learns_embeddings(bern_data):
    data = _with_empty_client(bern_data, 2)  # and one client without training rows
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*rejected messages.*")
        fit = fit_baseline("hypernet", data, rounds=10, embedding_dim=3)
    assert fit.history[-1]["loss"] < fit.history[0]["loss"]
    te = bern_data.arrays("test")
    p = fit.predict(te.x, te.mask)
    assert p.shape == te.y.shape and np.isfinite(p).all()
    with pytest.warns(UserWarning, match="without metadata"):
        fit.predict_new(te.x[:1], te.mask[:1], metadata=np.zeros((1, 2)))


# ------------------------------------------------- padding and empty clients


def _with_empty_client(data: FederatedData, k: int) -> FederatedData:
    tr = data.train
    mask = np.array(tr.mask)
    mask[k] = False
    return dataclasses.replace(data, train=ClientArrays(tr.x, tr.y, mask))


def _padded(data: FederatedData, extra: int) -> FederatedData:
    tr = data.train
    pad = lambda a: np.concatenate([a, np.full((a.shape[0], extra) + a.shape[2:], 7.0)], 1)  # noqa: E731
    mask = np.concatenate([tr.mask, np.zeros((tr.mask.shape[0], extra), bool)], 1)
    return dataclasses.replace(data, train=ClientArrays(pad(tr.x), pad(tr.y), mask))


def test_padding_is_ignored(bern_data):
    kw = dict(network="mlp_bn", hidden=3, rounds=3)
    a = fit_baseline("fedbn", bern_data, **kw)
    b = fit_baseline("fedbn", _padded(bern_data, 9), **kw)
    for k, v in a.personal_params.items():
        np.testing.assert_allclose(b.personal_params[k], v, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(
    "method,kw",
    [
        ("fedavg", {"network": "mlp_bn", "hidden": 3}),
        ("pfedme", {}),
        ("clustered", {"n_clusters": 2}),
    ],
)
def test_client_without_rows_stays_finite(bern_data, method, kw):
    data = _with_empty_client(bern_data, 2)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*rejected messages.*")
        fit = fit_baseline(method, data, rounds=3, **kw)
    te = data.arrays("test")
    assert np.isfinite(fit.predict(te.x, te.mask)).all()
    assert np.isfinite([h["loss"] for h in fit.history]).all()


# ---------------------------------------------------------- other families


def test_families_and_noise_sd():
    normal = _data("normal", n_clients=4, sizes=40, seed=3)
    fit = fit_baseline("fedper", normal, family="normal", rounds=30, lr=0.1)
    assert fit.noise_sd.shape == (4,) and np.all(fit.noise_sd > 0.5) and np.all(fit.noise_sd < 2)
    poisson = _data("poisson", n_clients=4, sizes=40, seed=3)
    fit = fit_baseline("fedavg", poisson, family="poisson", rounds=20, lr=0.05)
    tr = poisson.train
    rate = fit.predict(tr.x, tr.mask)
    assert fit.noise_sd is None and np.all(rate > 0)
    assert fit.history[-1]["loss"] < fit.history[0]["loss"]
    # categorical: three classes from a thresholded score
    df = normal.to_pandas()
    df["cls"] = np.digitize(df["y"], np.quantile(df["y"], [1 / 3, 2 / 3])).astype(float)
    cat = FederatedData.from_pandas(df, client_col="client", target="cls", features=["x0", "x1"])
    fit = fit_baseline("local", cat, family="categorical", rounds=20, lr=0.2)
    probs = fit.predict(cat.train.x, cat.train.mask)
    assert probs.shape == cat.train.x.shape[:2] + (3,)
    np.testing.assert_allclose(probs.sum(-1), 1.0)
    assert fit.history[-1]["accuracy"] > 0.5


def test_float32(bern_data):
    with jax.enable_x64(False):
        fit = fit_baseline("ditto", bern_data, network="mlp", hidden=3, rounds=3)
        assert fit.personal_params["head.kernel"].dtype == np.float32
        te = bern_data.arrays("test")
        assert np.isfinite(fit.predict(te.x, te.mask)).all()


# ---------------------------------------------------------- errors, seeds


def test_bad_names_and_data(bern_data):
    with pytest.raises(ValueError, match="choose one of.*fedavg"):
        fit_baseline("fedsgd", bern_data)
    with pytest.raises(ValueError, match="choose one of.*categorical"):
        fit_baseline("fedavg", bern_data, family="gamma")
    with pytest.raises(ValueError, match="choose one of.*mlp_bn"):
        fit_baseline("fedavg", bern_data, network="cnn")
    with pytest.raises(ValueError, match="unknown hyper-parameter.*valid"):
        fit_baseline("fedavg", bern_data, lam=1.0)
    with pytest.raises(ValueError, match="optimizer"):
        fit_baseline("fedavg", bern_data, optimizer="lbfgs")
    with pytest.raises(DataError, match="0/1"):
        fit_baseline("fedavg", _data("normal"), family="bernoulli")
    df = bern_data.to_pandas()
    df.loc[df.index[0], "x0"] = np.nan
    nan_data = FederatedData.from_pandas(
        df, client_col="client", target="y", features=["x0", "x1"], missing="keep"
    )
    with pytest.raises(DataError, match="missing"):
        fit_baseline("local", nan_data)
    with pytest.raises(DataError):
        fit_baseline("local", bern_data.train)
    fit = fit_baseline("local", bern_data, rounds=1)
    te = bern_data.arrays("test")
    with pytest.raises(DataError, match="clients"):
        fit.predict(te.x[:3], te.mask[:3])
    with pytest.raises(DataError, match="shape"):
        fit.predict(te.x[..., :1], te.mask)
    assert set(HPARAM_DEFAULTS) == set(BASELINE_NAMES)


def test_seeded_and_sampled(bern_data, sampled_fedavg):
    a = sampled_fedavg
    b = fit_baseline("fedavg", bern_data, rounds=4, fraction=0.5, seed=5)
    c = fit_baseline("fedavg", bern_data, rounds=4, fraction=0.5, seed=6)
    for k in a.global_params:
        np.testing.assert_array_equal(a.global_params[k], b.global_params[k])
    assert any(not np.array_equal(a.global_params[k], c.global_params[k]) for k in a.global_params)
    assert [h["n_active"] for h in a.history] == [3] * 4
    assert a.hparams["fraction"] == 0.5 and a.hparams["optimizer"] == "sgd"


def test_network_roles():
    net = build_network("mlp_bn", 3, 2, hidden=(4, 5))
    assert net.roles["head.kernel"] == "head" and net.roles["layers.1.kernel"] == "body"
    assert net.roles["norms.1.scale"] == "norm" and net.roles["norms.1.var"] == "stat"
    assert build_network("linear", 3, 1).roles == {"head.bias": "head", "head.kernel": "body"}
