"""Formula front-end: schema, design columns, and the model equal to the zoo's."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pandas as pd
import pytest

from bayes_pfl.data import DataError, FederatedData
from bayes_pfl.formula import FormulaError, Schema, from_formula, parse_formula
from bayes_pfl.models import Terms, hierarchical_glm


@pytest.fixture(scope="module")
def frame():
    rng = np.random.default_rng(3)
    n = 60
    hosp = np.repeat(["h1", "h2", "h3", "h4"], n // 4)
    df = pd.DataFrame(
        {
            "hospital": hosp,
            "age": rng.normal(50, 10, n),
            "bmi": rng.normal(25, 4, n),
            "sex": rng.choice(["F", "M"], n),
            "ward": rng.choice([1, 2, 3], n),
        }
    )
    # hospital h4 has no ward 3 and only women: its columns must still be everyone's
    h4 = df["hospital"] == "h4"
    df.loc[h4, "ward"] = df.loc[h4, "ward"].clip(upper=2)
    df.loc[h4, "sex"] = "F"
    df["y"] = rng.integers(0, 2, n)
    df["z"] = rng.normal(size=n)
    return df


def _densities(model, u_phi, u_theta, x, y, mask):
    return (
        model.log_hyperprior(u_phi),
        model.log_client_prior(u_theta, u_phi),
        model.client_loglik(u_theta, u_phi, x, y, mask),
    )


@pytest.mark.parametrize(
    ("formula", "family", "varying"),
    [
        ("y ~ age + bmi + (1 | hospital)", "bernoulli", "intercept"),
        ("y ~ age + bmi + (1 + age + bmi | hospital)", "bernoulli", "slopes"),
        ("z ~ age + bmi + (1 | hospital)", "normal", "intercept"),
    ],
)
def test_formula_model_is_the_zoo_model(frame, formula, family, varying):
    """Same data arrays, same parameters and the same log densities at random points as the
    zoo GLM: the same posterior (a sampler given both draws the same chains)."""
    fm = from_formula(formula, frame, family=family, test_size=0.2, seed=1, standardize=True)
    target = formula.split("~")[0].strip()
    zoo_data = FederatedData.from_pandas(
        frame,
        client_col="hospital",
        target=target,
        features=["age", "bmi"],
        test_size=0.2,
        seed=1,
        standardize=True,
    )
    zoo = hierarchical_glm(family, 2, varying=varying)
    for split in ("train", "test"):
        a, b = fm.data.arrays(split), zoo_data.arrays(split)
        for f in ("x", "y", "mask"):
            np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    assert fm.model.phi_space.labels() == zoo.phi_space.labels()
    assert fm.model.theta_space.labels() == zoo.theta_space.labels()
    arr = fm.data.arrays()
    keys = jax.random.split(jax.random.key(0), 5)
    for key in keys:
        k1, k2 = jax.random.split(key)
        u_phi = jax.random.normal(k1, (zoo.phi_dim,))
        u_theta = jax.random.normal(k2, (zoo.theta_dim,))
        got = _densities(fm.model, u_phi, u_theta, arr.x[0], arr.y[0], arr.mask[0])
        want = _densities(zoo, u_phi, u_theta, arr.x[0], arr.y[0], arr.mask[0])
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    assert fm.model.family == zoo.family


def test_mixed_terms_likelihood_by_hand(frame):
    """``(1 + age | g)`` with a shared ``bmi`` and a factor: the linear predictor written out."""
    fm = from_formula("y ~ age + bmi + C(sex) + (1 + age | hospital)", frame, family="bernoulli")
    m = fm.model
    assert fm.schema.features == ("age", "bmi", "C(sex)[M]")
    assert m.coords["b"] == ("Intercept", "age")
    assert m.coords["mu"] == ("Intercept", "age")
    assert m.coords["beta"] == ("bmi", "C(sex)[M]")
    arr = fm.data.arrays()
    x, y, mask = arr.x[0], arr.y[0], arr.mask[0]
    phi = {
        "mu": jnp.array([0.3, -0.1]),
        "tau": jnp.array([0.5, 0.2]),
        "beta": jnp.array([0.05, 0.7]),
    }
    b = jnp.array([0.1, 0.02])
    got = m.pointwise_loglik_values({"b": b, "b_raw": (b - phi["mu"]) / phi["tau"]}, phi, x, y)
    eta = b[0] + x[:, 0] * b[1] + x[:, 1:] @ phi["beta"]
    want = dist.Bernoulli(logits=eta).log_prob(y)
    np.testing.assert_allclose(got[mask], want[mask], rtol=1e-12)
    # the sex column: 1 for men, 0 for women, from the client's own rows
    rows = frame[frame.hospital == "h1"]
    np.testing.assert_array_equal(x[mask][:, 2], (rows["sex"] == "M").to_numpy(float))


def test_varying_term_without_common_effect_has_no_mean(frame):
    fm = from_formula("y ~ 1 + (0 + age | hospital) + (1 | hospital)", frame, family="bernoulli")
    m = fm.model
    assert m.coords["b"] == ("Intercept", "age")
    assert m.coords["mu"] == ("Intercept",)  # age varies around 0
    phi = {"mu": jnp.array([0.4]), "tau": jnp.array([1.0, 2.0])}
    tr_mean = m.client_prior  # b = mean + tau * b_raw with mean (0.4, 0)
    import numpyro

    with numpyro.handlers.seed(rng_seed=0), numpyro.handlers.trace() as tr:
        with numpyro.handlers.condition(data={"b_raw": jnp.zeros(2)}):
            tr_mean(phi)
    np.testing.assert_allclose(tr["b"]["value"], [0.4, 0.0])


def test_a_level_absent_from_a_client_gives_the_same_columns(frame):
    fm = from_formula("y ~ C(ward) + sex + (1 | hospital)", frame, family="bernoulli")
    assert fm.schema.levels == {"ward": (1, 2, 3), "sex": ("F", "M")}
    assert fm.schema.features == ("C(ward)[2]", "C(ward)[3]", "sex[M]")
    h4 = frame[frame.hospital == "h4"]
    alone = fm.schema.design(h4, client="h4")  # the client evaluates only its own rows
    assert list(alone.columns) == list(fm.schema.features)
    np.testing.assert_array_equal(alone["C(ward)[3]"], 0.0)
    np.testing.assert_array_equal(alone["sex[M]"], 0.0)
    np.testing.assert_array_equal(alone["C(ward)[2]"], (h4["ward"] == 2).to_numpy(float))
    k = fm.data.clients.index("h4")
    arr = fm.data.arrays()
    np.testing.assert_array_equal(arr.x[k][arr.mask[k]], alone.to_numpy())


def test_schema_comes_from_level_sets_and_round_trips(frame):
    per_client = {k: g for k, g in frame.groupby("hospital")}
    s1 = Schema.from_clients("y ~ C(ward) + sex + (1 | hospital)", per_client)
    s2 = Schema.from_clients("y ~ C(ward) + sex + (1 | hospital)", frame)
    assert s1 == s2
    import json

    s3 = Schema.from_dict(json.loads(json.dumps(s1.to_dict())))
    assert s3 == s1 and s3.features == s1.features
    bad = {**s1.to_dict(), "features": ["nope"]}
    with pytest.raises(FormulaError, match="differ"):
        Schema.from_dict(bad)


def test_unseen_level_at_prediction_is_a_clear_error(frame):
    fm = from_formula("y ~ age + sex + (1 | hospital)", frame, family="bernoulli")
    new = pd.DataFrame({"age": [50.0], "sex": ["X"]})
    with pytest.raises(
        DataError, match=r"column 'sex' has level\(s\) \('X',\).*levels: \['F', 'M'\]"
    ):
        fm.design(new)
    x = fm.design(pd.DataFrame({"age": [50.0, 40.0], "sex": ["M", "F"]}))
    np.testing.assert_array_equal(x, [[50.0, 1.0], [40.0, 0.0]])
    # a fixed schema and a client with a level the schema lacks: named
    other = frame.assign(sex=np.where(frame.hospital == "h2", "U", frame.sex))
    with pytest.raises(DataError, match="client 'h2'"):
        from_formula("y ~ age + sex + (1 | hospital)", other, family="bernoulli", schema=fm.schema)


def test_design_applies_the_fitted_standardization(frame):
    fm = from_formula("y ~ age + (1 | hospital)", frame, family="bernoulli", standardize=True)
    x = fm.design(frame.iloc[:3])
    raw = frame["age"].to_numpy()
    np.testing.assert_allclose(x[:, 0], (raw[:3] - raw.mean()) / raw.std(), rtol=1e-12)


@pytest.mark.parametrize(
    ("formula", "match"),
    [
        ("y ~ age", "no varying term"),
        ("y ~ age + (1 | hospital) + (1 | ward)", "groups by"),
        ("y ~ scale(age) + (1 | hospital)", "standardize=True"),
        ("y ~ center(age) + (1 | hospital)", "pooled constants"),
        ("np.log(y) ~ age + (1 | hospital)", "outcome must be a column"),
        ("y ~ hospital + (1 | hospital)", "client column"),
        ("age + (1 | hospital)", "outcome ~"),
        ("y ~ age + (1 | hospital", "cannot parse"),
    ],
)
def test_formulas_bayes_pfl_cannot_fit_are_named(formula, match):
    with pytest.raises(FormulaError, match=match):
        parse_formula(formula)


def test_data_errors_name_the_column(frame):
    with pytest.raises(DataError, match=r"reads column\(s\) \['weight'\]"):
        from_formula("y ~ weight + (1 | hospital)", frame, family="bernoulli")
    with pytest.raises(DataError, match="client column 'site'"):
        from_formula("y ~ age + (1 | site)", frame, family="bernoulli")
    gappy = frame.assign(bmi=frame.bmi.where(frame.index % 7 != 0))
    with pytest.raises(DataError, match=r"missing values in column\(s\) \['bmi'\].*--missing drop"):
        from_formula("y ~ bmi + (1 | hospital)", gappy, family="bernoulli")
    with pytest.warns(UserWarning, match="dropped 9 rows"):
        fm = from_formula("y ~ bmi + (1 | hospital)", gappy, family="bernoulli", missing="drop")
    assert int(fm.data.n_rows().sum()) == len(frame) - 9
    with pytest.raises(FormulaError, match="unknown family"):
        from_formula("y ~ bmi + (1 | hospital)", frame, family="binomial")


def test_terms_are_checked():
    with pytest.raises(Exception, match="not among the features"):
        Terms(("a",), varying=("Intercept", "b"), common=("Intercept", "a"))
    with pytest.raises(Exception, match="in no term"):
        Terms(("a", "b"), varying=("Intercept",), common=("Intercept", "a"))
    with pytest.raises(Exception, match="at least one term that varies"):
        Terms(("a",), varying=(), common=("Intercept", "a"))


@pytest.mark.slow
def test_formula_nuts_draws_equal_the_zoo_models(frame):
    """The fit, not only the density: NUTS on the formula model and on the zoo GLM with the
    same data and seed gives the same draws."""
    from _helpers import nuts

    fm = from_formula("z ~ age + (1 | hospital)", frame, family="normal", standardize=True)
    zoo = hierarchical_glm("normal", 1, varying="intercept")
    a = nuts(fm.model, fm.data, chains=1, warmup=150, samples=150)
    b = nuts(zoo, fm.data, chains=1, warmup=150, samples=150)
    for name in ("mu", "tau", "beta", "sigma_y"):
        np.testing.assert_allclose(a.phi[name], b.phi[name], rtol=1e-10)
    np.testing.assert_allclose(a.theta["b"], b.theta["b"], rtol=1e-10)


def test_transforms_and_interactions_evaluate_per_row(frame):
    fm = from_formula(
        "y ~ age:bmi + log(bmi) + np.sqrt(age) + I(age**2) + (1 | hospital)",
        frame,
        family="bernoulli",
    )
    assert fm.schema.features == ("age:bmi", "log(bmi)", "np.sqrt(age)", "I(age ** 2)")
    rows = frame[frame.hospital == "h1"]
    arr = fm.data.arrays()
    want = np.column_stack([rows.age * rows.bmi, np.log(rows.bmi), np.sqrt(rows.age), rows.age**2])
    np.testing.assert_allclose(arr.x[0][arr.mask[0]], want, rtol=1e-12)
