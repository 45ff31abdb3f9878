"""The comparison harness: identical splits, seeds, buckets, tuning, outputs, bad input."""

import hashlib
import json
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from bayes_pfl import metrics as M
from bayes_pfl.compare import (
    ComparisonError,
    Method,
    PosteriorPredictor,
    Prediction,
    bayesian_method,
    compare,
    constant_method,
    make_method,
    plot_comparison,
    plot_method_calibration,
    prediction_from_mean,
    size_bucket,
    with_imputation,
)
from bayes_pfl.data import ClientArrays, FederatedData
from bayes_pfl.results import FitResult


def _frame(sizes=(40, 12, 6, 30), seed=0, binary=True):
    rng = np.random.default_rng(seed)
    labels = np.repeat([f"h{i}" for i in range(len(sizes))], sizes)
    x = rng.normal(size=len(labels))
    offset = np.repeat(rng.normal(scale=1.0, size=len(sizes)), sizes)
    eta = offset + 1.5 * x
    y = (rng.random(len(eta)) < 1 / (1 + np.exp(-eta))).astype(int) if binary else eta
    return pd.DataFrame({"site": labels, "x": x, "y": y})


def _make(df, seed, val_size=0.2):
    return FederatedData.from_pandas(
        df,
        client_col="site",
        target="y",
        features=["x"],
        test_size=0.3,
        val_size=val_size,
        seed=seed,
    )


def _digest(*arrays):
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(np.asarray(a)).tobytes())
    return h.hexdigest()


def _spy(name, log):
    """A method recording what it was given: the data at fit, the rows at predict."""
    inner = constant_method(name).fit_fn

    def fit_fn(data, seed, **hp):
        assert data.test is None, "a method must never see the test rows"
        log.append((name, seed, "fit", _digest(data.train.x, data.train.y, data.train.mask)))
        fitted = inner(data, seed)

        class P:
            def predict(self, arrays):
                log.append((name, seed, "predict", _digest(arrays.x, arrays.y, arrays.mask)))
                return fitted.predict(arrays)

        return P()

    return Method(name, fit_fn, (), "bernoulli")


def test_identical_splits_across_methods_and_new_split_per_seed():
    df = _frame()
    log = []
    res = compare(lambda s: _make(df, s), [_spy("a", log), _spy("b", log)], seeds=[3, 7])
    for seed in (3, 7):
        for what in ("fit", "predict"):
            got = {n: d for n, s, w, d in log if s == seed and w == what}
            assert got["a"] == got["b"]
    fits = {s: d for n, s, w, d in log if w == "fit" and n == "a"}
    assert fits[3] != fits[7]  # a function of the seed gives one split per seed
    assert list(res.table["seed"].unique()) == [3, 7]
    assert res.table.groupby("method").size().tolist() == [8, 8]  # 2 seeds x 4 clients


def test_fixed_data_keeps_one_split_and_passes_the_seed():
    data = _make(_frame(), 0)
    log, seeds_seen = [], []

    def fit_fn(d, seed):
        seeds_seen.append(seed)
        return constant_method().fit_fn(d, seed)

    compare(data, [_spy("a", log), Method("c", fit_fn)], seeds=[1, 2])
    fits = {s: d for n, s, w, d in log if w == "fit"}
    assert fits[1] == fits[2]
    assert seeds_seen == [1, 2]


def test_refit_uses_train_plus_val_and_buckets_follow_n_train():
    data = _make(_frame(sizes=(40, 12, 6, 30)), 0)
    res = compare(data, ["constant"], buckets=(10, 20))
    tr, va = data.n_rows("train"), data.n_rows("val")
    assert res.table["n_train"].tolist() == (tr + va).tolist()
    assert res.table["n_test"].tolist() == data.n_rows("test").tolist()
    assert res.table["bucket"].astype(str).tolist() == list(size_bucket(tr + va, (10, 20)))
    res2 = compare(data, ["constant"], refit=False)
    assert res2.table["n_train"].tolist() == tr.tolist()


def test_size_bucket_edges():
    b = size_bucket([0, 1, 10, 11, 50, 51, 500], (10, 50))
    assert list(b) == ["<=10", "<=10", "<=10", "11-50", "11-50", ">50", ">50"]
    assert list(b.categories) == ["<=10", "11-50", ">50"]
    assert list(size_bucket([5, 6], (5,))) == ["<=5", ">5"]
    with pytest.raises(ComparisonError, match="increasing"):
        size_bucket([1], (50, 10))


def test_table_metrics_match_metric_functions_and_summary_aggregates():
    data = _make(_frame(), 0, val_size=0.0)
    res = compare(data, [constant_method(shrink=1.0)], seeds=[0, 1])
    pred, arr = res.predictions[("constant", 0)]
    t0 = res.table[res.table["seed"] == 0]
    np.testing.assert_allclose(t0["log_loss"], M.log_loss(pred.mean, arr.y, arr.mask))
    np.testing.assert_allclose(t0["ece"], M.expected_calibration_error(pred.mean, arr.y, arr.mask))
    np.testing.assert_allclose(t0["lpd"], -t0["log_loss"])
    # the prediction is each client's smoothed training rate
    tr = data.train
    rate = ((tr.y * tr.mask).sum(1) + 1) / (tr.mask.sum(1) + 2)
    np.testing.assert_allclose(pred.mean[:, 0], rate)
    s = res.summary()
    per_seed = res.table.groupby("seed")["accuracy"].mean()
    assert s.loc["constant", "accuracy_mean"] == pytest.approx(per_seed.mean())
    assert s.loc["constant", "accuracy_sd"] == pytest.approx(per_seed.std(ddof=1))
    b = res.by_bucket()
    assert set(b.index.get_level_values("method")) == {"constant"}
    assert b["n_clients"].sum() == data.n_clients
    w = res.summary(weighted=True).loc["constant", "accuracy_mean"]
    t = res.table
    pooled = [(g["accuracy"] * g["n_test"]).sum() / g["n_test"].sum() for _, g in t.groupby("seed")]
    assert w == pytest.approx(np.mean(pooled))


def test_grid_is_chosen_on_validation_rows():
    data = _make(_frame(sizes=(60, 60, 60)), 0)
    m = constant_method("c", grid=[{"shrink": 1e6}, {"shrink": 1.0}])
    res = compare(data, [m], seeds=[0])
    tun = res.tuning
    assert len(tun) == 2 and tun["chosen"].sum() == 1
    # a huge prior pulls every client to 1/2: worse on validation than the client rates
    assert json.loads(tun.loc[tun["chosen"], "hparams"].item()) == {"shrink": 1.0}
    assert json.loads(res.table["hparams"].iloc[0]) == {"shrink": 1.0}
    with pytest.raises(ComparisonError, match="validation"):
        compare(_make(_frame(), 0, val_size=0.0), [m])


def test_csv_and_markdown(tmp_path):
    data = _make(_frame(), 0)
    res = compare(data, ["constant", constant_method("flat", shrink=1e6)], seeds=[0, 1])
    paths = res.to_csv(tmp_path, title="Toy")
    table = pd.read_csv(paths["table"])
    assert len(table) == 2 * 2 * 4
    assert list(table.columns[:6]) == ["method", "seed", "client", "n_train", "n_test", "bucket"]
    np.testing.assert_allclose(table["log_loss"], res.table["log_loss"])
    summ = pd.read_csv(paths["summary"], index_col=0)
    assert list(summ.index) == ["constant", "flat"]
    assert "accuracy_mean" in summ and "accuracy_sd" in summ
    md = paths["markdown"].read_text()
    assert md.startswith("# Toy")
    assert "| constant |" in md and "| flat |" in md and "**" in md
    assert "by client-size bucket" in md
    assert (tmp_path / "by_bucket.csv").exists()


def test_plots():
    data = _make(_frame(), 0)
    res = compare(data, ["constant", constant_method("flat", shrink=1e6)], seeds=[0, 1])
    pr = plot_comparison(res, "log_loss")
    assert pr.data["method"].tolist() == ["constant", "flat"]
    assert pr.extra["best"] == res.best("log_loss")
    pb = plot_comparison(res, by="bucket")
    assert set(pb.data["bucket"]) <= {"<=10", "11-50", ">50"}
    cal = plot_method_calibration(res, "constant")
    ps = [res.predictions[("constant", s)] for s in (0, 1)]
    p = np.concatenate([pr_.mean[a.mask] for pr_, a in ps])
    y = np.concatenate([a.y[a.mask] for _, a in ps])
    ref = M.expected_calibration_error(p[None], y[None], np.ones((1, p.size), bool))
    assert cal.extra["ece"] == pytest.approx(ref[0])
    with pytest.raises(ComparisonError, match="unknown metric"):
        plot_comparison(res, "rmse")


@pytest.mark.parametrize(
    ("methods", "kwargs", "match"),
    [
        (["no-such-method"], {}, "unknown method 'no-such-method'.*known methods: nuts"),
        ([constant_method(family="normal")], {}, "predicts family 'normal'.*'bernoulli'"),
        (["constant", "constant"], {}, "unique"),
        ([], {}, "no methods"),
        (["constant"], {"family": "gaussian"}, "unknown family"),
        (["constant"], {"seeds": [0, 0]}, "distinct"),
        (["constant"], {"seeds": [-1]}, "non-negative"),
        ([object()], {}, "Method objects"),
    ],
)
def test_bad_input(methods, kwargs, match):
    with pytest.raises(ComparisonError, match=match):
        compare(_make(_frame(), 0), methods, **kwargs)


def test_family_must_fit_the_target_and_test_rows_are_required():
    cont = _make(_frame(binary=False), 0)
    with pytest.raises(ComparisonError, match="pass family="):
        compare(cont, ["constant"])
    with pytest.raises(ComparisonError, match="needs a 0/1 target"):
        compare(cont, [constant_method()], family="bernoulli")
    notest = FederatedData.from_pandas(_frame(), client_col="site", target="y", features=["x"])
    with pytest.raises(ComparisonError, match="no test rows"):
        compare(notest, ["constant"])
    with pytest.raises(ComparisonError, match="FederatedData"):
        compare(lambda s: "nope", ["constant"])


def test_malformed_prediction_is_reported():
    class Bad:
        def predict(self, arrays):
            return Prediction(np.zeros(3), np.zeros(3))

    with pytest.raises(ComparisonError, match="'bad'.*shape"):
        compare(_make(_frame(), 0), [Method("bad", lambda d, s: Bad())])


def test_normal_regression_metrics_and_intervals():
    data = _make(_frame(binary=False), 0, val_size=0.0)
    res = compare(data, [constant_method(family="normal")], family="normal")
    assert res.metrics == ("lpd", "rmse", "coverage90")
    assert res.main_metric() == "lpd"
    pred, arr = res.predictions[("constant", 0)]
    sd = np.std(pred.upper - pred.lower)
    assert sd >= 0 and np.all(pred.upper > pred.lower)
    # closed form of the Normal density on one row
    mu, hi = pred.mean[0, 0], pred.upper[0, 0]
    s = (hi - mu) / 1.6448536269514722
    expect = -0.5 * ((arr.y[0, 0] - mu) / s) ** 2 - math.log(s) - 0.5 * math.log(2 * math.pi)
    assert pred.log_density[0, 0] == pytest.approx(expect)


def test_poisson_prediction_by_hand():
    arr = ClientArrays(np.zeros((1, 2, 1)), np.array([[0.0, 3.0]]), np.ones((1, 2), bool))
    pred = prediction_from_mean("poisson", np.array([[2.0, 2.0]]), arr)
    np.testing.assert_allclose(pred.log_density, [[-2.0, 3 * math.log(2) - 2 - math.log(6)]])
    assert pred.lower[0, 0] == 0 and pred.upper[0, 0] == 5  # Poisson(2) 5% and 95% quantiles


def test_imputation_wrapper_adds_indicators():
    df = _frame()
    df.loc[df.index[::5], "x"] = np.nan
    data = FederatedData.from_pandas(
        df, client_col="site", target="y", features=["x"], test_size=0.3, missing="keep"
    )
    seen = {}

    def fit_fn(d, seed):
        seen["features"] = d.features
        seen["x"] = np.asarray(d.train.x)
        return constant_method().fit_fn(d, seed)

    res = compare(data, [with_imputation(Method("imp", fit_fn))])
    assert seen["features"] == ("x", "x_missing")
    assert not np.isnan(seen["x"]).any()
    assert res.table["lpd"].notna().all()


def _logistic_fit_result(draws_b, draws_beta, clients):
    from bayes_pfl.models import logistic

    model = logistic(1, varying="intercept")
    s = draws_b.shape[0]
    return FitResult(
        method="fake",
        model=model,
        clients=clients,
        phi={
            "mu": np.zeros((1, s, 1)),
            "tau": np.ones((1, s, 1)),
            "beta": draws_beta.reshape(1, s, 1),
        },
        theta={"b_raw": draws_b.reshape(1, s, -1, 1), "b": draws_b.reshape(1, s, -1, 1)},
    )


def test_posterior_predictor_averages_probabilities_over_draws():
    # two draws, two clients: P(y=1) is the mean of the draws' probabilities
    b = np.array([[0.0, 1.0], [2.0, -1.0]])  # [draw, client]
    beta = np.array([1.0, 0.0])
    fit = _logistic_fit_result(b, beta, ("a", "b"))
    x = np.array([[[0.5]], [[-1.0]]])
    arr = ClientArrays(x, np.array([[1.0], [0.0]]), np.ones((2, 1), bool))
    pred = PosteriorPredictor(fit, "bernoulli").predict(arr)

    def sig(z):
        return 1 / (1 + math.exp(-z))

    p_a = (sig(0.0 + 0.5) + sig(2.0)) / 2
    p_b = (sig(1.0 - 1.0) + sig(-1.0)) / 2
    np.testing.assert_allclose(pred.mean[:, 0], [p_a, p_b])
    np.testing.assert_allclose(pred.log_density[:, 0], [math.log(p_a), math.log(1 - p_b)])


@pytest.mark.slow
def test_bayesian_nuts_method_runs_in_the_harness():
    df = _frame(sizes=(90, 60, 30), seed=1)
    data = _make(df, 0, val_size=0.0)
    nuts = bayesian_method("nuts", num_chains=1, num_warmup=150, num_samples=150)
    assert nuts.family is None  # the default zoo model follows the comparison's family
    res = compare(data, [nuts, "constant"], seeds=[0])
    s = res.summary()
    assert np.isfinite(s["log_loss_mean"]).all()
    # the data follow a logistic model in x: the model must beat the featureless rate
    assert s.loc["nuts", "log_loss_mean"] < s.loc["constant", "log_loss_mean"]
    assert bayesian_method("vi").name == "vi"  # federated VI is one (fit_vi)
    with pytest.raises(ComparisonError, match="unknown Bayesian fit"):
        bayesian_method("gibbs")


def test_bayesian_method_takes_the_family_the_model_declares():
    """Issue #17: the family comes from ``model.family``, never from the model's name."""
    import numpyro
    import numpyro.distributions as dist

    from bayes_pfl.compare import FAMILIES
    from bayes_pfl.models import linear, radon_intercept
    from bayes_pfl.spec import LIKELIHOOD_FAMILIES, HierarchicalModel

    assert LIKELIHOOD_FAMILIES == FAMILIES
    assert bayesian_method("nuts", radon_intercept()).family == "normal"  # not in its name
    assert bayesian_method("ep", linear(1)).family == "normal"
    assert bayesian_method("nuts", linear(1), family="bernoulli").family == "bernoulli"
    # the harness holds a model's family against the comparison's
    with pytest.raises(ComparisonError, match="'nuts' predicts family 'normal'.*'bernoulli'"):
        compare(_make(_frame(), 0), [bayesian_method("nuts", linear(1))])

    # a model that declares none: the name is not read, the data decide (as for a factory)
    def hyper():
        numpyro.sample("mu", dist.Normal(0, 1))

    def prior(phi):
        numpyro.sample("theta", dist.Normal(phi["mu"], 1))

    def lik(theta, phi, x, y):
        numpyro.sample("y", dist.Normal(theta["theta"] + x[:, 0], 1), obs=y)

    undeclared = HierarchicalModel(hyper, prior, lik, name="poisson_lookalike", n_features=1)
    method = bayesian_method("nuts", undeclared)
    assert method.family is None
    cont = _make(_frame(binary=False), 0)
    with pytest.raises(ComparisonError, match="'nuts'.*pass family= to bayesian_method"):
        compare(cont, [method], family="normal")


def test_make_method_knows_bayesian_names():
    assert make_method("ep").name == "ep"
    assert make_method("one-shot", family="bernoulli").fit_fn is not None
    with pytest.raises(ComparisonError, match="unknown method"):
        make_method("fedfoo")


@pytest.mark.slow
def test_neural_networks_run_in_the_harness():
    from bayes_pfl.datasets.digits import make_digits_federation
    from bayes_pfl.neural import fit_neural

    data = make_digits_federation(n_clients=4, seed=0)
    kw = {"rounds": 3, "local_steps": 8, "hidden": (16,), "n_classes": 10}
    method = make_method("bayes_head", family="categorical", **kw)
    res = compare(data, [method], family="categorical", seeds=[0], refit=False)
    rows = res.table[res.table["method"] == "bayes_head"]
    assert len(rows) == 4 and rows[["lpd", "log_loss", "ece"]].notna().all().all()
    assert rows["accuracy"].mean() > 0.5  # ten classes: chance is 0.1
    # the harness scores the network's own posterior predictive on the test rows
    pred, test = res.predictions[("bayes_head", 0)]
    fit = fit_neural(data, variant="bayes_head", seed=0, **kw)
    direct = fit.predict(np.asarray(test.x), np.asarray(test.mask), n_draws=32, seed=0)
    mask = np.asarray(test.mask)
    np.testing.assert_allclose(pred.probs[mask], direct[mask], rtol=1e-6, atol=1e-9)
    # a two-class network scores P(y = 1) as a Bernoulli method
    binary = _make(_frame(), 0)
    two = make_method("bayes_head", family="bernoulli", rounds=2, local_steps=3, hidden=(4,))
    res2 = compare(binary, [two], seeds=[0])
    assert res2.table[["lpd", "brier", "ece"]].notna().all().all()
    with pytest.raises(ComparisonError, match="classify"):
        make_method("bayes_head", family="normal")


def test_baseline_adapter_runs():
    data = _make(_frame(), 0)
    m = make_method("local", rounds=5, local_steps=2, grid=[{"lr": 0.05}, {"lr": 0.2}])
    res = compare(data, [m, "constant"], seeds=[0])
    assert res.table["lpd"].notna().all()
    assert res.tuning["chosen"].sum() == 1


def test_compare_main_writes_outputs(tmp_path, monkeypatch, capsys):
    from bayes_pfl.cli.compare import compare_main  # the command line's, since issue #17

    monkeypatch.setenv("BAYES_PFL_NO_COMPILATION_CACHE", "1")
    csv = tmp_path / "toy.csv"
    _frame().to_csv(csv, index=False)
    out = tmp_path / "out"
    base = ["--data", str(csv), "--client-col", "site", "--target", "y", "--features", "x"]
    rc = compare_main([*base, "--methods", "constant", "--seeds", "2", "--out", str(out)])
    assert rc == 0
    for name in ("comparison.csv", "summary.csv", "by_bucket.csv", "summary.md", "log_loss.png"):
        assert (out / name).exists(), name
    assert "constant" in capsys.readouterr().out
    rc = compare_main([*base, "--methods", "constant,nope", "--out", str(out)])
    assert rc == 2
    assert "unknown method 'nope'" in capsys.readouterr().err


def test_bayesian_method_needs_a_family_for_a_non_binary_target():
    cont = _make(_frame(binary=False), 0)
    with pytest.raises(ComparisonError, match="'nuts'.*pass family= to bayesian_method"):
        compare(cont, [bayesian_method("nuts")], family="normal")


def test_missing_logistic_models_missingness():
    from bayes_pfl.models.heart import missing_logistic, missing_logistic_for

    m = missing_logistic(2, missing=[1])
    b = np.array([0.5, 1.0, -2.0, 0.7])  # intercept, 2 slopes, missingness of feature 1
    x = np.array([[1.0, 0.5], [np.nan, np.nan], [2.0, np.nan]])
    y = np.array([1.0, 0.0, 1.0])
    ll = np.asarray(m.pointwise_loglik_values({"b": b}, {}, x, y))
    eta = np.array([0.5 + 1.0 - 1.0, 0.5 + 0.7, 0.5 + 2.0 + 0.7])
    expect = y * eta - np.log1p(np.exp(eta))
    np.testing.assert_allclose(ll, expect)
    df = _frame()
    df.loc[df.index[::7], "x"] = np.nan
    data = FederatedData.from_pandas(
        df, client_col="site", target="y", features=["x"], test_size=0.3, missing="keep"
    )
    assert missing_logistic_for(data).theta_dim == 3


# ---------------------------------------------------------------------------
# the known-truth oracle of synthetic federations


def _oracle_fed(family="bernoulli", seed=3):
    from bayes_pfl.synthetic import make_federation

    return make_federation(
        family=family, n_clients=12, n_features=2, varying="slopes", median_size=25, seed=seed
    )


def _split(fed, df=None, features=None, **kwargs):
    """A synthetic federation's rows (or ``df``) as FederatedData, 30% test rows, seed 0."""
    kw = {"test_size": 0.3, "seed": 0, **kwargs}
    features = list(fed.features) if features is None else features
    df = fed.data if df is None else df
    return FederatedData.from_pandas(df, client_col="client", target="y", features=features, **kw)


def _true_probability_column(fed):
    """The data frame with ``p_true``, computed row by row from the stored truth."""
    df = fed.data.copy()
    b = fed.theta["b"][[fed.clients.index(c) for c in df["client"]]]
    eta = b[:, 0] + np.einsum("ij,ij->i", df[list(fed.features)].to_numpy(), b[:, 1:])
    df["p_true"] = 1.0 / (1.0 + np.exp(-eta))
    return df


@pytest.mark.parametrize("standardize", [False, True])
def test_oracle_predicts_the_true_probabilities(standardize):
    from bayes_pfl.compare import oracle_method

    fed = _oracle_fed()
    df = _true_probability_column(fed)
    data = _split(fed, df, standardize=standardize)
    # the same split (it depends on the seed only), carrying p_true along as a raw column
    ref = _split(fed, df, features=[*fed.features, "p_true"]).test
    test = data.test
    assert data.feature_scale is not None if standardize else data.feature_scale is None
    pred = oracle_method(fed).fit_fn(data, 0).predict(test)
    mask = np.asarray(test.mask)
    p_true = np.asarray(ref.x)[..., -1]
    np.testing.assert_allclose(np.asarray(pred.mean)[mask], p_true[mask], rtol=1e-10)
    y = np.asarray(test.y)[mask]
    expected = np.where(y == 1, np.log(p_true[mask]), np.log1p(-p_true[mask]))
    np.testing.assert_allclose(np.asarray(pred.log_density)[mask], expected, rtol=1e-10)


def test_oracle_is_the_floor_of_expected_log_loss():
    """On 2,000 clients' test rows the oracle's mean log-loss is below every fitted
    method's: in expectation no predictor beats the true probabilities, and the
    constant's excess here is far beyond the Monte Carlo error of ~0.01."""
    from bayes_pfl.compare import oracle_method
    from bayes_pfl.synthetic import make_federation

    fed = make_federation(
        family="bernoulli", n_clients=200, n_features=2, varying="slopes", median_size=30, seed=4
    )
    data = _split(fed)
    res = compare(data, [oracle_method(fed), constant_method()], seeds=[0])
    s = res.summary()["log_loss_mean"]
    assert s["oracle"] < s["constant"] - 0.05


def test_oracle_normal_family_uses_the_true_noise():
    from bayes_pfl.compare import oracle_method

    fed = _oracle_fed("normal")
    data = _split(fed)
    pred = oracle_method(fed).fit_fn(data, 0).predict(data.test)
    mask = np.asarray(data.test.mask)
    half = (np.asarray(pred.upper) - np.asarray(pred.mean))[mask]
    np.testing.assert_allclose(half, 1.6448536269514722 * float(fed.phi["sigma_y"]), rtol=1e-12)


def test_oracle_rejects_data_of_another_federation():
    from bayes_pfl.compare import oracle_method

    fed = _oracle_fed()
    df = fed.data.rename(columns={"x1": "z"})
    data = _split(fed, df, features=["x0", "z"])
    with pytest.raises(ComparisonError, match="features"):
        oracle_method(fed).fit_fn(data, 0)
    df = fed.data.assign(client=fed.data["client"].replace({"c000": "stranger"}))
    data = _split(fed, df)
    with pytest.raises(ComparisonError, match="stranger"):
        oracle_method(fed).fit_fn(data, 0)
    # a callable gets the harness's seed
    seen = []
    oracle_method(lambda s: seen.append(s) or fed).fit_fn(_split(fed), 7)
    assert seen == [7]


def test_bayes_oracle_equals_the_conjugate_posterior_predictive():
    """Normal clients with a varying intercept and known slope and noise: given the true
    population, each client's posterior predictive is Normal in closed form. The
    importance-sampled mixture matches it; 200,000 draws give every client an effective
    sample size above 10,000 (25,000 here), so a log density carries a Monte Carlo error of
    about 1/sqrt(ESS) < 1%; the bound 0.02 is three times that."""
    from bayes_pfl.compare import oracle_method
    from bayes_pfl.synthetic import make_federation

    fed = make_federation(
        family="normal", n_clients=6, n_features=1, varying="intercept", sizes=6, seed=5
    )
    data = _split(fed, test_size=0.5, standardize=True)
    pred_fit = oracle_method(fed, know="phi", draws=200_000).fit_fn(data, 0)
    assert pred_fit.ess.min() > 10_000
    pred = pred_fit.predict(data.test)
    mu, tau = float(fed.phi["mu"][0]), float(fed.phi["tau"][0])
    beta, sd = float(fed.phi["beta"][0]), float(fed.phi["sigma_y"])
    raw = lambda a: np.asarray(a.x)[..., 0] * data.feature_scale[0] + data.feature_mean[0]  # noqa: E731
    tr, te = data.train, data.test
    resid = np.where(tr.mask, np.asarray(tr.y) - beta * raw(tr), 0.0)
    prec = 1 / tau**2 + np.asarray(tr.mask).sum(1) / sd**2
    post_mean = (mu / tau**2 + resid.sum(1) / sd**2) / prec
    m = post_mean[:, None] + beta * raw(te)
    v = sd**2 + 1 / prec[:, None]
    exact = -0.5 * (np.asarray(te.y) - m) ** 2 / v - 0.5 * np.log(2 * np.pi * v)
    mask = np.asarray(te.mask)
    np.testing.assert_allclose(np.asarray(pred.log_density)[mask], exact[mask], atol=0.02)
    np.testing.assert_allclose(np.asarray(pred.mean)[mask], m[mask], atol=0.02 * sd)


def test_bayes_oracle_sits_between_the_oracle_and_the_prior():
    """On tiny Bernoulli clients the population-aware predictive is worse than knowing
    each client's parameters and better than the population alone (no rows used)."""
    from bayes_pfl.compare import oracle_method
    from bayes_pfl.synthetic import make_federation

    fed = make_federation(
        family="bernoulli",
        n_clients=300,
        n_features=2,
        varying="slopes",
        median_size=12,
        seed=8,
        label_skew=1.0,
    )
    data = _split(fed)
    methods = [oracle_method(fed), oracle_method(fed, know="phi", draws=4000)]
    # the population alone: the same predictor with every training row hidden
    tr = data.train
    empty = SimpleNamespace(
        features=data.features,
        clients=data.clients,
        feature_mean=data.feature_mean,
        feature_scale=data.feature_scale,
        train=tr._replace(mask=np.zeros_like(np.asarray(tr.mask))),
    )
    prior = oracle_method(fed, know="phi", draws=4000).fit_fn(empty, 0).predict(data.test)
    res = compare(data, methods, seeds=[0])
    s = res.summary()["log_loss_mean"]
    mask = np.asarray(data.test.mask)
    prior_ll = np.nanmean(
        [
            -np.asarray(prior.log_density)[k][mask[k]].mean()
            for k in range(len(mask))
            if mask[k].any()
        ]
    )
    assert s["oracle"] < s["bayes-oracle"] < prior_ll


def test_oracle_method_rejects_bad_settings():
    from bayes_pfl.compare import oracle_method

    fed = _oracle_fed()
    with pytest.raises(ComparisonError, match="know"):
        oracle_method(fed, know="everything")
    with pytest.raises(ComparisonError, match="draws"):
        oracle_method(fed, know="phi", draws=0)


def test_posterior_predictor_reads_the_outcome_given_the_observed_values():
    """Missing values modelled (#18): the likelihood also observes the covariates
    (``x_obs``); a prediction of ``y`` is ``p(y | x̃)``, the outcome's site alone."""
    from scipy import integrate, stats
    from scipy.special import expit

    from bayes_pfl.models import hierarchical_glm

    model = hierarchical_glm("bernoulli", 1, varying="intercept", missing=["x0"])
    b, beta, m, sd = 0.3, 1.5, 0.4, 0.8
    one = np.ones((1, 1, 1))
    fit = FitResult(
        method="fake",
        model=model,
        clients=("a",),
        phi={
            "mu": np.zeros((1, 1, 1)),
            "tau": one,
            "beta": beta * one,
            **{k: one for k in ("x_mu", "x_tau", "x_lsd_mu", "x_lsd_tau")},
        },
        theta={
            "b_raw": np.zeros((1, 1, 1, 1)),
            "b": np.full((1, 1, 1, 1), b),
            "x_raw": np.zeros((1, 1, 1, 2)),
            "x_m": np.full((1, 1, 1, 1), m),
            "x_lsd": np.full((1, 1, 1, 1), np.log(sd)),
        },
    )
    arr = ClientArrays(np.array([[[1.2], [np.nan]]]), np.array([[1.0, 0.0]]), np.ones((1, 2), bool))
    pred = PosteriorPredictor(fit, "bernoulli").predict(arr)
    gap, _ = integrate.quad(lambda x: expit(b + beta * x) * stats.norm.pdf(x, m, sd), -8, 8)
    np.testing.assert_allclose(pred.mean[0], [expit(b + beta * 1.2), gap], rtol=1e-6)
    # the joint likelihood (LOO's) still holds the covariate's density
    joint = fit.pointwise_loglik(arr.x, arr.y, arr.mask)[0, 0, 0]
    assert joint == pytest.approx(
        math.log(expit(b + beta * 1.2)) + stats.norm.logpdf(1.2, m, sd), rel=1e-6
    )
