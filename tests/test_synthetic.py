"""Tests of the synthetic federations with known truth."""

import numpy as np
import pandas as pd
import pytest

from bayes_pfl.synthetic import SyntheticFederation, make_federation


@pytest.mark.parametrize("family", ["normal", "bernoulli", "poisson"])
@pytest.mark.parametrize("varying", ["intercept", "slopes"])
def test_shapes(family, varying):
    fed = make_federation(family=family, varying=varying, n_clients=12, n_features=3, seed=3)
    assert isinstance(fed, SyntheticFederation)
    d = 1 if varying == "intercept" else 4
    assert fed.clients == tuple(f"c{i:03d}" for i in range(12))
    assert fed.features == ("x0", "x1", "x2")
    assert fed.family == family and fed.varying == varying
    assert fed.target == "y" and fed.client_col == "client"
    assert list(fed.data.columns) == ["client", "x0", "x1", "x2", "y"]
    assert fed.theta["b"].shape == (12, d)
    assert fed.phi["mu"].shape == (d,) and fed.phi["tau"].shape == (d,)
    assert ("beta" in fed.phi) == (varying == "intercept")
    if varying == "intercept":
        assert fed.phi["beta"].shape == (3,)
    assert ("sigma_y" in fed.phi) == (family == "normal")
    assert fed.sizes.shape == (12,) and fed.sizes.sum() == len(fed.data)
    assert (fed.sizes >= 1).all()
    # Rows grouped by client in label order.
    assert fed.data["client"].is_monotonic_increasing
    assert pd.api.types.is_string_dtype(fed.data["client"])


def test_labels_padded_for_many_clients():
    fed = make_federation(n_clients=1500, sizes=1)
    assert fed.clients[0] == "c0000" and fed.clients[-1] == "c1499"


def test_no_features():
    fed = make_federation(n_features=0, n_clients=5, sizes=4)
    assert list(fed.data.columns) == ["client", "y"]
    assert "beta" not in fed.phi
    assert fed.theta["b"].shape == (5, 1)


def test_reproducible():
    a = make_federation(family="bernoulli", seed=7)
    b = make_federation(family="bernoulli", seed=7)
    c = make_federation(family="bernoulli", seed=8)
    pd.testing.assert_frame_equal(a.data, b.data)
    np.testing.assert_array_equal(a.theta["b"], b.theta["b"])
    for key in a.phi:
        np.testing.assert_array_equal(a.phi[key], b.phi[key])
    assert not np.array_equal(a.theta["b"], c.theta["b"])
    assert len(a.data) != len(c.data) or not a.data.equals(c.data)


def test_covariate_shift_changes_only_features_and_outcomes():
    a = make_federation(seed=1)
    b = make_federation(seed=1, covariate_shift=2.0)
    np.testing.assert_array_equal(a.sizes, b.sizes)
    np.testing.assert_array_equal(a.theta["b"], b.theta["b"])
    # Per-client feature means spread out under covariate shift.
    kw = dict(n_clients=40, sizes=200, seed=2)
    spread0 = make_federation(**kw).data.groupby("client")["x0"].mean().std()
    spread2 = make_federation(covariate_shift=2.0, **kw).data.groupby("client")["x0"].mean().std()
    assert spread0 < 0.2 < 1.0 < spread2


def test_lognormal_sizes():
    fed = make_federation(n_clients=200, seed=0)
    sizes = fed.sizes
    assert (sizes < 5).sum() >= 5
    assert 15 <= np.median(sizes) <= 25
    assert sizes.max() > 60
    clipped = make_federation(n_clients=200, min_size=3, max_size=40, seed=0).sizes
    assert clipped.min() >= 3 and clipped.max() <= 40


def test_explicit_sizes():
    assert (make_federation(n_clients=4, sizes=7).sizes == 7).all()
    np.testing.assert_array_equal(
        make_federation(n_clients=3, sizes=np.array([1, 5, 2])).sizes, [1, 5, 2]
    )


def test_explicit_truth():
    fed = make_federation(
        n_clients=5, n_features=2, mu=1.5, tau=[0.2], beta=[1.0, -1.0], sigma_y=0.3, seed=0
    )
    np.testing.assert_array_equal(fed.phi["mu"], [1.5])
    np.testing.assert_array_equal(fed.phi["tau"], [0.2])
    np.testing.assert_array_equal(fed.phi["beta"], [1.0, -1.0])
    assert float(fed.phi["sigma_y"]) == 0.3


def test_heterogeneity_zero_gives_identical_clients():
    fed = make_federation(n_clients=10, varying="slopes", heterogeneity=0.0, seed=4)
    b = fed.theta["b"]
    np.testing.assert_array_equal(b, np.broadcast_to(fed.phi["mu"], b.shape))
    np.testing.assert_array_equal(fed.phi["tau"], 0.0)


def test_heterogeneity_scales_tau():
    fed = make_federation(n_clients=10, heterogeneity=2.0, tau=0.3)
    np.testing.assert_allclose(fed.phi["tau"], [0.6])


def test_truth_is_consistent():
    fed = make_federation(n_clients=2000, varying="slopes", sizes=1, seed=5)
    b, mu, tau = fed.theta["b"], fed.phi["mu"], fed.phi["tau"]
    se = tau / np.sqrt(len(b))
    assert np.all(np.abs(b.mean(axis=0) - mu) < 4 * se)
    np.testing.assert_allclose(b.std(axis=0), tau, rtol=0.1)


def test_label_skew_enters_tau():
    fed = make_federation(family="bernoulli", n_clients=3000, sizes=1, label_skew=2.0, seed=0)
    np.testing.assert_allclose(fed.phi["tau"], [np.sqrt(0.5**2 + 2.0**2)])
    np.testing.assert_allclose(fed.theta["b"][:, 0].std(), fed.phi["tau"][0], rtol=0.05)
    skewed = make_federation(family="bernoulli", n_clients=30, sizes=300, label_skew=3.0)
    rates = skewed.data.groupby("client")["y"].mean()
    assert rates.min() < 0.2 and rates.max() > 0.8


def test_normal_truth_recovered_by_ols():
    fed = make_federation(
        family="normal", n_clients=20, n_features=1, sizes=500, sigma_y=0.5, seed=11
    )
    beta, sigma_y = fed.phi["beta"], float(fed.phi["sigma_y"])
    for k, (_, rows) in enumerate(fed.data.groupby("client", sort=True)):
        x = np.column_stack([np.ones(len(rows)), rows["x0"].to_numpy()])
        coef, *_ = np.linalg.lstsq(x, rows["y"].to_numpy(), rcond=None)
        cov = sigma_y**2 * np.linalg.inv(x.T @ x)
        se = np.sqrt(np.diag(cov))
        assert abs(coef[0] - fed.theta["b"][k, 0]) < 4 * se[0]
        assert abs(coef[1] - beta[0]) < 4 * se[1]
        resid = rows["y"].to_numpy() - x @ coef
        assert resid.std() == pytest.approx(sigma_y, rel=0.15)


def test_slopes_truth_recovered_by_ols():
    fed = make_federation(
        family="normal",
        varying="slopes",
        n_clients=10,
        n_features=2,
        sizes=400,
        sigma_y=0.5,
        seed=12,
    )
    for k, (_, rows) in enumerate(fed.data.groupby("client", sort=True)):
        x = np.column_stack([np.ones(len(rows)), rows[list(fed.features)].to_numpy()])
        coef, *_ = np.linalg.lstsq(x, rows["y"].to_numpy(), rcond=None)
        se = np.sqrt(np.diag(0.5**2 * np.linalg.inv(x.T @ x)))
        assert np.all(np.abs(coef - fed.theta["b"][k]) < 4 * se)


def test_bernoulli_outcomes():
    fed = make_federation(family="bernoulli", n_clients=30, seed=2)
    y = fed.data["y"]
    assert y.dtype == np.int64 and set(y) == {0, 1}
    # Base rate matches the truth on a big federation.
    big = make_federation(family="bernoulli", n_clients=50, n_features=2, sizes=400, seed=3)
    x = big.data[list(big.features)].to_numpy()
    k = np.repeat(np.arange(50), 400)
    p = 1 / (1 + np.exp(-(big.theta["b"][k, 0] + x @ big.phi["beta"])))
    assert abs(big.data["y"].mean() - p.mean()) < 4 * np.sqrt(np.sum(p * (1 - p))) / len(p)


def test_poisson_outcomes():
    fed = make_federation(family="poisson", n_clients=30, varying="slopes", seed=2)
    y = fed.data["y"]
    assert y.dtype == np.int64 and (y >= 0).all()
    big = make_federation(family="poisson", n_clients=40, n_features=1, sizes=500, seed=4)
    x = big.data["x0"].to_numpy()
    k = np.repeat(np.arange(40), 500)
    rate = np.exp(big.theta["b"][k, 0] + x * big.phi["beta"][0])
    assert abs(big.data["y"].sum() - rate.sum()) < 4 * np.sqrt(rate.sum())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(family="gamma"), "family"),
        (dict(varying="all"), "varying"),
        (dict(n_clients=1), "n_clients"),
        (dict(n_clients=2.5), "n_clients"),
        (dict(n_features=-1), "n_features"),
        (dict(sizes="uniform"), "sizes"),
        (dict(sizes=0), "sizes"),
        (dict(n_clients=3, sizes=[1, 2]), "length"),
        (dict(n_clients=3, sizes=[1, 0, 2]), "sizes"),
        (dict(median_size=0), "median_size"),
        (dict(min_size=0), "min_size"),
        (dict(min_size=5, max_size=2), "max_size"),
        (dict(n_features=2, mu=[0.0, 1.0]), "mu"),
        (dict(tau=-1.0), "tau"),
        (dict(n_features=2, beta=[1.0]), "beta"),
        (dict(varying="slopes", beta=[1.0, 1.0, 1.0]), "beta"),
        (dict(sigma_y=0.0), "sigma_y"),
        (dict(heterogeneity=-0.1), "heterogeneity"),
        (dict(covariate_shift=-1.0), "covariate_shift"),
        (dict(label_skew=1.0), "label_skew"),
        (dict(family="bernoulli", label_skew=-1.0), "label_skew"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_federation(**kwargs)


@pytest.mark.parametrize("family", ["normal", "bernoulli", "poisson"])
@pytest.mark.parametrize("varying", ["intercept", "slopes"])
def test_true_mean_is_the_generating_mean(family, varying):
    fed = make_federation(family=family, n_clients=5, n_features=2, varying=varying, seed=2)
    df = fed.data
    labels = list(fed.clients)[::-1]  # any order of clients
    rows = [df[df["client"] == c][list(fed.features)].to_numpy()[:3] for c in labels]
    x = np.stack(rows)
    b = fed.theta["b"][[fed.clients.index(c) for c in labels]]
    slopes = b[:, None, 1:] if varying == "slopes" else fed.phi["beta"][None, None, :]
    eta = b[:, None, 0] + np.sum(x * slopes, axis=-1)
    expected = {"normal": eta, "bernoulli": 1 / (1 + np.exp(-eta)), "poisson": np.exp(eta)}
    np.testing.assert_allclose(fed.true_mean(labels, x), expected[family], rtol=1e-12)


def test_true_mean_rejects_unknown_clients_and_bad_shapes():
    fed = make_federation(family="bernoulli", n_clients=3, n_features=2, seed=0)
    with pytest.raises(ValueError, match="unknown clients"):
        fed.true_mean(["c000", "nobody"], np.zeros((2, 1, 2)))
    with pytest.raises(ValueError, match="shape"):
        fed.true_mean(["c000"], np.zeros((1, 1, 3)))
    with pytest.raises(ValueError, match="shape"):
        fed.true_mean(["c000", "c001"], np.zeros((1, 1, 2)))
