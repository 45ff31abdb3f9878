"""``bayes-pfl fit --formula`` and ``compare --formula``, run as users run them."""

import json

import numpy as np
import pandas as pd
import pytest
from _helpers import run_cli

FORMULA = "outcome ~ age + C(sex) + (1 + age | hospital)"


@pytest.fixture(scope="module")
def hospitals_csv(tmp_path_factory):
    rng = np.random.default_rng(5)
    parts = []
    for h, n in (("north", 40), ("south", 25), ("east", 30), ("west", 12)):
        age = rng.normal(0, 1, n).round(2)
        # west holds men only: its C(sex) column must still be everyone's
        sex = np.array(["M"] * n) if h == "west" else rng.choice(["F", "M"], n)
        eta = rng.normal(0, 0.4) + 0.8 * age + 0.5 * (sex == "M")
        y = rng.binomial(1, 1 / (1 + np.exp(-eta)))
        parts.append(pd.DataFrame({"hospital": h, "age": age, "sex": sex, "outcome": y}))
    path = tmp_path_factory.mktemp("formula") / "hospitals.csv"
    pd.concat(parts).to_csv(path, index=False)
    return path


@pytest.mark.slow
def test_fit_from_a_formula_writes_the_schema_and_names_the_model(hospitals_csv, tmp_path):
    out = tmp_path / "fit"
    r = run_cli(
        "fit", "--data", str(hospitals_csv), "--formula", FORMULA, "--model", "logistic",
        "--prior", "tau=0.5", "--chains", "1", "--warmup", "200", "--samples", "200",
        "--no-progress", "--out", str(out),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    schema = json.loads((out / "schema.json").read_text())
    assert schema["formula"] == FORMULA
    assert schema["levels"] == {"sex": ["F", "M"]}
    assert schema["features"] == ["age", "C(sex)[M]"]
    assert schema["varying"] == ["Intercept", "age"]
    run = json.loads((out / "run.json").read_text())
    assert run["model"] == "logistic"
    summary = pd.read_csv(out / "summary.csv", index_col=0)
    assert summary.filter(like="tau[", axis=0).shape[0] == 2
    assert summary.filter(like="beta[", axis=0).shape[0] == 1


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--model", "logistic", "--features", "age"), "drop --features"),
        (("--model", "radon_intercept"), "--formula needs --model naming the family"),
        ((), "--formula needs --model naming the family"),
        (("--model", "logistic", "--prior", "tau=-1"), "must be positive"),
        (("--model", "logistic", "--prior", "rho=1"), "NAME one of coef, tau, sigma"),
    ],
)
def test_formula_flags_are_checked(hospitals_csv, tmp_path, extra, message):
    r = run_cli(
        "fit", "--data", str(hospitals_csv), "--formula", FORMULA, *extra,
        "--out", str(tmp_path / "x"),
    )  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert message in r.stderr
    assert not (tmp_path / "x").exists()


def test_a_formula_error_is_one_line(hospitals_csv, tmp_path):
    r = run_cli(
        "fit", "--data", str(hospitals_csv), "--formula", "outcome ~ age + (1 | ward)",
        "--model", "logistic", "--out", str(tmp_path / "x"),
    )  # fmt: skip
    assert r.returncode == 2
    assert "client column 'ward' is not in the data" in r.stderr
    assert "Traceback" not in r.stderr
