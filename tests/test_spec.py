"""The model declaration and what it derives."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from _helpers import normal_normal_parts
from numpyro.infer.util import log_density, potential_energy

from bayes_pfl.data import FederatedData
from bayes_pfl.datasets import load_radon
from bayes_pfl.models import (
    MODEL_NAMES,
    eight_schools,
    get_model,
    hierarchical_glm,
    radon_intercept,
)
from bayes_pfl.spec import HierarchicalModel, ModelSpecError


@pytest.fixture(scope="module")
def radon():
    df = load_radon()
    data = FederatedData.from_pandas(
        df, client_col="county", target="log_radon", features=["log_uppm", "floor"]
    )
    return df, data


def radon_by_hand(county, log_uppm, floor, log_radon, n_county):
    """posteriordb's radon_hierarchical_intercept_noncentered, written directly in numpyro."""
    mu_alpha = numpyro.sample("mu_alpha", dist.Normal(0, 10))
    sigma_alpha = numpyro.sample("sigma_alpha", dist.HalfNormal(1))
    beta = numpyro.sample("beta", dist.Normal(0, 10).expand([2]).to_event(1))
    sigma_y = numpyro.sample("sigma_y", dist.HalfNormal(1))
    with numpyro.plate("county", n_county):
        alpha_raw = numpyro.sample("alpha_raw", dist.Normal(0, 1))
    alpha = mu_alpha + sigma_alpha * alpha_raw
    mu = alpha[county] + beta[0] * log_uppm + beta[1] * floor
    with numpyro.plate("obs", log_radon.shape[0]):
        numpyro.sample("log_radon", dist.Normal(mu, sigma_y), obs=log_radon)


def _random_radon_params(key, n_county):
    k = jax.random.split(key, 5)
    return {
        "mu_alpha": jax.random.normal(k[0]) * 2,
        "sigma_alpha": jnp.exp(jax.random.normal(k[1]) * 0.5),
        "beta": jax.random.normal(k[2], (2,)),
        "sigma_y": jnp.exp(jax.random.normal(k[3]) * 0.5),
        "alpha_raw": jax.random.normal(k[4], (n_county,)),
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_centralized_density_equals_hand_written_radon(radon, seed):
    df, data = radon
    model = radon_intercept()
    county = jnp.asarray(df["county"].map({c: i for i, c in enumerate(data.clients)}).to_numpy())
    hand_args = (
        county,
        jnp.asarray(df["log_uppm"].to_numpy()),
        jnp.asarray(df["floor"].to_numpy(float)),
        jnp.asarray(df["log_radon"].to_numpy()),
        data.n_clients,
    )
    arr = data.train
    fed_args = (jnp.asarray(arr.x), jnp.asarray(arr.y), jnp.asarray(arr.mask))
    params = _random_radon_params(jax.random.key(seed), data.n_clients)

    lp_hand, _ = log_density(radon_by_hand, hand_args, {}, params)
    lp_fed, _ = log_density(model.centralized_model, fed_args, {}, params)
    np.testing.assert_allclose(lp_fed, lp_hand, rtol=1e-10)

    # The same density in unconstrained coordinates (Jacobians included), via the
    # per-client pieces the federated algorithms use.
    unconstrained = {
        "mu_alpha": params["mu_alpha"],
        "sigma_alpha": jnp.log(params["sigma_alpha"]),
        "beta": params["beta"],
        "sigma_y": jnp.log(params["sigma_y"]),
        "alpha_raw": params["alpha_raw"],
    }
    pe_hand = potential_energy(radon_by_hand, hand_args, {}, unconstrained)
    u_phi = model.phi_space.flatten({k: params[k] for k in model.phi_space.names})
    u_theta = params["alpha_raw"][:, None]
    lj = model.log_joint(u_phi, u_theta, *fed_args)
    np.testing.assert_allclose(-lj, pe_hand, rtol=1e-10)


def test_param_spaces_and_labels():
    model = radon_intercept()
    assert model.phi_space.names == ("mu_alpha", "sigma_alpha", "beta", "sigma_y")
    assert model.phi_dim == 5 and model.theta_dim == 1
    assert model.phi_space.labels() == [
        "mu_alpha",
        "log(sigma_alpha)",
        "beta[0]",
        "beta[1]",
        "log(sigma_y)",
    ]
    assert model.theta_deterministic == ("alpha",)
    assert model.observed_name == "log_radon"
    u = jnp.array([0.1, -0.3, 0.5, 1.0, 0.2])
    values, logdet = model.phi_space.unflatten(u)
    np.testing.assert_allclose(values["sigma_alpha"], np.exp(-0.3))
    np.testing.assert_allclose(logdet, -0.3 + 0.2)
    np.testing.assert_allclose(model.phi_space.flatten(values), u)


def test_unflatten_rejects_wrong_length():
    with pytest.raises(ModelSpecError, match="length 5"):
        radon_intercept().phi_space.unflatten(jnp.zeros(4))


def test_masked_rows_contribute_nothing():
    model = eight_schools()
    u_phi = jnp.array([1.0, 0.5])
    x = jnp.array([[15.0], [99.0]])
    y = jnp.array([28.0, -1e3])
    full = model.client_log_joint(jnp.array([0.2]), u_phi, x[:1], y[:1], jnp.array([True]))
    padded = model.client_log_joint(jnp.array([0.2]), u_phi, x, y, jnp.array([True, False]))
    np.testing.assert_allclose(full, padded)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_zoo_models_build_and_differentiate(name):
    model = get_model(name, 2)
    u_phi = jnp.zeros(model.phi_dim) + 0.1
    u_theta = jnp.zeros((3, model.theta_dim))
    x = jnp.ones((3, 4, model.n_features))
    y = jnp.ones((3, 4))
    mask = jnp.ones((3, 4), bool)
    g = jax.grad(model.log_joint, argnums=(0, 1))(u_phi, u_theta, x, y, mask)
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in g)


@pytest.mark.parametrize("family", ["normal", "bernoulli", "poisson"])
@pytest.mark.parametrize("varying", ["intercept", "slopes"])
def test_centered_and_noncentered_glm_agree_on_likelihood(family, varying):
    """Same b, same data -> same log-likelihood in both parameterizations."""
    c = hierarchical_glm(family, 2, varying=varying, centered=True)
    n = hierarchical_glm(family, 2, varying=varying, centered=False)
    assert c.phi_space.names == n.phi_space.names
    u_phi = jnp.linspace(-0.5, 0.5, c.phi_dim)
    phi = n.phi_values(u_phi)
    b_raw = jnp.linspace(-1, 1, n.theta_dim)
    b = phi["mu"] + phi["tau"] * b_raw
    x = jnp.array([[0.5, -1.0], [1.5, 0.2], [0.0, 0.3]])
    y = jnp.array([1.0, 0.0, 2.0]) if family == "poisson" else jnp.array([1.0, 0.0, 1.0])
    ll_c = c.pointwise_loglik(b, u_phi, x, y)
    ll_n = n.pointwise_loglik(b_raw, u_phi, x, y)
    np.testing.assert_allclose(ll_c, ll_n, rtol=1e-10)


def test_spec_errors_are_clear():
    hyper, prior, _ = normal_normal_parts(0, 1, 1, 1)

    def lik_scalar(theta, phi, x, y):
        numpyro.sample("y", dist.Normal(theta["theta"], 1).expand([x.shape[0]]).to_event(1), obs=y)

    with pytest.raises(ModelSpecError, match="one term per row"):
        HierarchicalModel(hyper, prior, lik_scalar, name="bad")

    def lik_latent(theta, phi, x, y):
        s = numpyro.sample("s", dist.HalfNormal(1))
        numpyro.sample("y", dist.Normal(theta["theta"], s), obs=y)

    with pytest.raises(ModelSpecError, match="latent"):
        HierarchicalModel(hyper, prior, lik_latent, name="bad")

    def prior_no_event(phi):
        numpyro.sample("theta", dist.Normal(phi["mu"], 1).expand([3]))

    def lik_vec(theta, phi, x, y):
        numpyro.sample("y", dist.Normal(theta["theta"].sum(-1), 1), obs=y)

    with pytest.raises(ModelSpecError, match="client plate"):
        HierarchicalModel(hyper, prior_no_event, lik_vec, name="bad")

    def lik_none(theta, phi, x, y):
        pass

    with pytest.raises(ModelSpecError, match="no observed"):
        HierarchicalModel(hyper, prior, lik_none, name="bad")

    with pytest.raises(ModelSpecError, match="unknown model"):
        get_model("nope", 2)
    with pytest.raises(ModelSpecError, match="unknown family"):
        hierarchical_glm("gamma", 2)


def _zoo():
    """Every model factory of the zoo, each GLM family with both parameterizations."""
    from bayes_pfl.models.glm import FAMILIES as GLM_FAMILIES
    from bayes_pfl.models.heart import missing_logistic

    models = [get_model(name, 2) for name in MODEL_NAMES]
    models += [hierarchical_glm(f, 2, varying="slopes", centered=True) for f in GLM_FAMILIES]
    models.append(missing_logistic(2, missing=[1]))
    return models


def test_every_zoo_model_declares_its_likelihood_family():
    """The family a model declares is the one its likelihood observes (its support):
    nothing needs to read it from the model's name (radon, eight schools: no family in it)."""
    from numpyro.distributions import constraints

    from bayes_pfl.spec import LIKELIHOOD_FAMILIES

    support = {
        "bernoulli": constraints.boolean,
        "normal": constraints.real,
        "poisson": constraints.nonnegative_integer,
    }
    seen = set()
    for model in _zoo():
        assert model.family in LIKELIHOOD_FAMILIES, model.name
        x = jnp.ones((3, model.n_features))
        supports = model.observed_supports(x, jnp.zeros(3))
        assert list(supports.values()) == [support[model.family]], model.name
        seen.add(model.family)
    assert seen == {"bernoulli", "normal", "poisson"}
    assert radon_intercept().family == eight_schools().family == "normal"


def test_a_declared_family_is_checked_and_optional():
    hyper, prior, lik = normal_normal_parts(0, 1, 1, 1)
    assert HierarchicalModel(hyper, prior, lik, name="bernoulli_like").family is None
    assert HierarchicalModel(hyper, prior, lik, name="m", family="normal").family == "normal"
    with pytest.raises(ModelSpecError, match="unknown likelihood family 'gaussian'.*bernoulli"):
        HierarchicalModel(hyper, prior, lik, name="m", family="gaussian")


def test_sample_likelihood_draws_target():
    model = hierarchical_glm("bernoulli", 1)
    phi = model.phi_values(jnp.zeros(model.phi_dim))
    theta = model.theta_values(jnp.zeros(1), phi)
    y = model.sample_likelihood(jax.random.key(0), theta, phi, jnp.zeros((50, 1)))
    assert y.shape == (50,)
    assert set(np.unique(np.asarray(y))) <= {0, 1}


def test_target_outside_the_observed_support_is_rejected_with_the_clients_named():
    import pandas as pd

    from bayes_pfl.centralized import check_model_data
    from bayes_pfl.data import FederatedData
    from bayes_pfl.models import get_model
    from bayes_pfl.spec import ModelSpecError

    df = pd.DataFrame(
        {"site": ["a"] * 3 + ["b"] * 3, "x": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
         "y": [0, 1, 1, 0, 2, 1]}
    )  # fmt: skip
    data = FederatedData.from_pandas(df, client_col="site", target="y", features=["x"])
    logistic = get_model("logistic", 1)
    with pytest.raises(ModelSpecError, match=r"'y'.*\{0, 1\}.*2 \(1 row\(s\), client\(s\) 'b'\)"):
        check_model_data(logistic, data)
    # the same target is fine for a Normal likelihood, and 0/1 for the Bernoulli one
    check_model_data(get_model("linear", 1), data)
    ok = FederatedData.from_pandas(
        df.assign(y=[0, 1, 1, 0, 1, 1]), client_col="site", target="y", features=["x"]
    )
    check_model_data(logistic, ok)


def test_constant_and_collinear_features_are_warned_about():
    import warnings

    import pandas as pd

    from bayes_pfl.centralized import check_model_data
    from bayes_pfl.data import FederatedData
    from bayes_pfl.models import get_model

    rng = np.random.default_rng(0)
    n = 12
    df = pd.DataFrame(
        {"site": ["a", "b", "c"] * 4, "x1": rng.normal(size=n), "x2": rng.normal(size=n),
         "y": rng.normal(size=n)}
    )  # fmt: skip

    def fed(frame, features):
        return FederatedData.from_pandas(frame, client_col="site", target="y", features=features)

    with pytest.warns(UserWarning, match=r"\['k'\] are constant"):
        check_model_data(get_model("linear", 2), fed(df.assign(k=3.0), ["x1", "k"]))
    with pytest.warns(UserWarning, match=r"\['x1', 'x2', 'x3'\] are exactly collinear"):
        frame = df.assign(x3=2 * df.x1 - df.x2)
        check_model_data(get_model("linear", 3), fed(frame, ["x1", "x2", "x3"]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_model_data(get_model("linear", 2), fed(df, ["x1", "x2"]))
