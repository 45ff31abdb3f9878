"""FitResult's coordinates: the model's labels of its vector sites, carried to ArviZ and disk."""

import json

import numpy as np
import pandas as pd
import pytest

from bayes_pfl import FederatedData
from bayes_pfl.models import get_model, hierarchical_glm, radon_intercept
from bayes_pfl.posterior import to_result
from bayes_pfl.results import FitResult, load_posterior, save_fit, summarize, term_dim

CLIENTS = ("cleveland", "hungary", "swiss")


def _fake_result(model, clients=CLIENTS, chains=2, draws=5, seed=0) -> FitResult:
    """Draws of every site of ``model`` (values do not matter: only shapes and names)."""
    rng = np.random.default_rng(seed)
    phi = {s.name: rng.normal(size=(chains, draws, *s.shape)) for s in model.phi_space.sites}
    theta = {
        name: rng.normal(size=(chains, draws, len(clients), *shape))
        for name, shape in _theta_shapes(model).items()
    }
    return FitResult("nuts", model, tuple(clients), phi, theta)


def _theta_shapes(model):
    out = {s.name: s.shape for s in model.theta_space.sites}
    for name in model.theta_deterministic:
        out[name] = np.shape(model.client_trace[name]["value"])
    return out


def _data(features=("age", "bmi"), clients=CLIENTS, n=4, seed=0):
    rng = np.random.default_rng(seed)
    rows = len(clients) * n
    df = pd.DataFrame(rng.normal(size=(rows, len(features))), columns=list(features))
    df["client"] = np.repeat(clients, n)
    df["y"] = (rng.random(rows) < 0.5).astype(int)
    return FederatedData.from_pandas(df, client_col="client", target="y", features=list(features))


def test_slopes_glm_coefficients_are_labelled_by_term():
    model = hierarchical_glm("bernoulli", varying="slopes", feature_names=("age", "bmi"))
    result = _fake_result(model)
    assert result.coords == model.coords  # learnt from the model when the result is made
    post = result.to_datatree().posterior
    terms = ["Intercept", "age", "bmi"]
    for site in ("b", "b_raw", "mu", "tau"):
        assert post[site].dims[-1] == term_dim(site) == f"{site}_term"
        assert list(post[term_dim(site)].values) == terms
    assert post["b"].dims == ("chain", "draw", "client", "b_term")
    np.testing.assert_array_equal(
        post["b"].sel(client="hungary", b_term="age").values, result.theta["b"][:, :, 1, 1]
    )
    rows = list(summarize(result.to_datatree()).index)
    assert "b[cleveland, age]" in rows and "mu[bmi]" in rows and "tau[Intercept]" in rows
    assert not [r for r in rows if "_dim_" in r or "[0]" in r]


def test_intercept_glm_labels_its_shared_slopes():
    model = get_model("logistic", 2, varying="intercept", feature_names=("age", "bmi"))
    post = _fake_result(model).to_datatree().posterior
    assert list(post["beta_term"].values) == ["age", "bmi"]
    assert list(post["b_term"].values) == list(post["mu_term"].values) == ["Intercept"]
    rows = list(summarize(_fake_result(model).to_datatree()).index)
    assert "beta[bmi]" in rows and "b[swiss, Intercept]" in rows


def test_radon_labels_beta_and_unlabelled_sites_keep_positions():
    post = _fake_result(radon_intercept()).to_datatree().posterior
    assert list(post["beta_term"].values) == ["log_uppm", "floor"]
    assert post["alpha"].dims == ("chain", "draw", "client")
    # a vector site the model does not label keeps its positional dimension
    model = hierarchical_glm("normal", 2, varying="slopes")
    result = _fake_result(model)
    result.coords = {k: v for k, v in result.coords.items() if k != "tau"}
    post = result.to_datatree().posterior
    assert post["tau"].dims[-1] == "tau_dim_0" and post["b"].dims[-1] == "b_term"
    assert list(post["b_term"].values) == ["Intercept", "x0", "x1"]


def test_coords_that_do_not_fit_the_draws_are_refused():
    model = hierarchical_glm("normal", 2, varying="slopes")
    result = _fake_result(model)
    result.coords = {**result.coords, "b": ("Intercept", "x0")}
    with pytest.raises(ValueError, match="'b' has 2 label"):
        result.to_datatree()


def test_federated_readout_carries_the_coords():
    """posterior.to_result (EP, one-shot, VI, Flower) learns the labels from the model."""
    model = hierarchical_glm("bernoulli", varying="slopes", feature_names=("age", "bmi"))
    u = np.zeros((2, 3, model.phi_dim))
    theta = np.zeros((len(CLIENTS), 6, model.theta_dim))
    result = to_result("ep", model, CLIENTS, u, theta, sample_stats=None, history=[], info={})
    assert result.coords["b"] == ("Intercept", "age", "bmi")
    assert list(result.to_datatree().posterior["b_term"].values) == ["Intercept", "age", "bmi"]


def test_labels_survive_save_and_load(tmp_path):
    model = get_model("logistic", 2, varying="slopes", feature_names=("age", "bmi"))
    result = _fake_result(model)
    paths = save_fit(result, _data(), tmp_path)
    back = load_posterior(paths["posterior"]).posterior
    assert list(back["b_term"].values) == ["Intercept", "age", "bmi"]
    assert list(back["client"].values) == list(CLIENTS)
    summary = pd.read_csv(paths["summary"], index_col=0)
    assert "b[hungary, bmi]" in summary.index
    run = json.loads(paths["run"].read_text())
    assert run["model"] == "logistic"
    assert "client-varying slopes" in run["model_description"]
    assert run["coords"]["b"] == ["Intercept", "age", "bmi"]


def test_zoo_models_are_named_as_asked():
    for name in ("linear", "logistic", "poisson"):
        model = get_model(name, 2, varying="slopes", centered=True)
        assert model.name == name
        assert "slopes" in model.description and "centered" in model.description
    assert get_model("radon_intercept").name == "radon_intercept"


def test_standardization_constants_are_kept_in_run_json(tmp_path):
    """New rows must be scaled like the fitted ones: run.json keeps the pooled constants."""
    rng = np.random.default_rng(2)
    df = pd.DataFrame({"client": np.repeat(CLIENTS, 6), "age": rng.normal(50, 9, 18)})
    df["y"] = (rng.random(18) < 0.5).astype(int)
    data = FederatedData.from_pandas(
        df, client_col="client", target="y", features=["age"], standardize=True
    )
    model = hierarchical_glm("bernoulli", 1, varying="intercept")
    save_fit(_fake_result(model), data, tmp_path)
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["standardization"] == {
        "age": {"mean": pytest.approx(df.age.mean()), "scale": pytest.approx(df.age.std(ddof=0))}
    }
    save_fit(_fake_result(model), _data(), tmp_path / "raw")
    assert "standardization" not in json.loads((tmp_path / "raw" / "run.json").read_text())


def test_the_cli_hints_at_standardization_for_features_far_from_unit_scale(capsys):
    from types import SimpleNamespace

    from bayes_pfl.cli.fit import _standardization_hint

    rng = np.random.default_rng(3)
    df = pd.DataFrame({"client": np.repeat(CLIENTS, 6), "age": rng.normal(50, 9, 18),
                       "z": rng.normal(size=18), "flag": rng.integers(0, 2, 18)})  # fmt: skip
    df["y"] = (rng.random(18) < 0.5).astype(int)
    data = FederatedData.from_pandas(
        df, client_col="client", target="y", features=["age", "z", "flag"]
    )
    args = SimpleNamespace(standardize=False, data="my.csv", formula=None)
    _standardization_hint(args, data)
    err = capsys.readouterr().err
    assert "hint: feature(s) age (mean" in err and "--standardize" in err
    assert "z (" not in err and "flag" not in err  # unit scale and 0/1: no hint
    _standardization_hint(SimpleNamespace(standardize=True, data="my.csv", formula=None), data)
    assert capsys.readouterr().err == ""
