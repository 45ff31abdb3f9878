"""``bayes-pfl fit --missing model [--noise-sd FEATURE=SD]`` on a CSV with gaps (#18)."""

import json

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from _helpers import run_cli

QUICK = ("--chains", "1", "--warmup", "150", "--samples", "150", "--no-progress")


def _csv(tmp_path, seed=0):
    """Six clients, features ``x0`` (a fifth missing; measured with noise sd 0.5 at three
    clients, declared in column ``x0_sd``, 0 elsewhere) and ``x1``, a Normal outcome, and a
    metadata table (a binary client covariate)."""
    rng = np.random.default_rng(seed)
    rows = []
    for c in range(6):
        x = rng.normal(size=(25, 2)) + rng.normal(size=2)
        y = 0.3 * rng.normal() + x @ [1.0, -0.5] + 0.5 * rng.normal(size=25)
        sd = 0.5 * (c % 2)
        x[:, 0] += sd * rng.normal(size=25)
        x[rng.uniform(size=25) < 0.2, 0] = np.nan
        frame = {"site": f"s{c}", "x0": x[:, 0], "x1": x[:, 1], "y": y}
        rows.append(pd.DataFrame({**frame, "x0_sd": np.where(np.isnan(x[:, 0]), np.nan, sd)}))
    df = pd.concat(rows, ignore_index=True)
    meta = pd.DataFrame({"site": [f"s{c}" for c in range(6)], "region": list("abcabc")})
    df.to_csv(tmp_path / "gaps.csv", index=False)
    meta.to_csv(tmp_path / "meta.csv", index=False)
    return df


def _args(tmp_path, csv="gaps.csv"):
    return ("--data", str(tmp_path / csv), "--client-col", "site", "--target", "y",
            "--features", "x0,x1", "--model", "linear")  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("method", ["nuts", "ep"])
def test_fit_a_csv_with_gaps_and_metadata(tmp_path, method):
    _csv(tmp_path)
    out = tmp_path / method
    r = run_cli(
        "fit", *_args(tmp_path), "--features", "x0,x1,x0_sd", "--missing", "model",
        "--noise-sd", "x1=0.1", "--noise-sd", "x0=x0_sd", "--metadata",
        str(tmp_path / "meta.csv"), "--method", method, "--rounds", "2", "--out", str(out),
        *QUICK,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    dt = xr.open_datatree(out / "posterior.nc")
    assert list(dt.posterior["beta"].coords["beta_term"].values) == ["x0", "x1"]  # x0_sd is no term
    assert set(dt.posterior["x_m"].dims) >= {"client"}
    assert dt.posterior["x_m"].sizes["client"] == 6
    # 150 rows, noise sd 0.5: posterior sds about 0.04, the band of 0.2 is 5 of them
    beta = dt.posterior["beta"].mean(("chain", "draw"))
    np.testing.assert_allclose(beta.sel(beta_term=["x0", "x1"]), [1.0, -0.5], atol=0.2)
    summary = pd.read_csv(out / "summary.csv", index_col=0)
    assert any(i.startswith("x_mu") for i in summary.index)
    run = json.loads((out / "run.json").read_text())
    assert run["method"] == method


@pytest.mark.slow
def test_clear_errors(tmp_path):
    df = _csv(tmp_path)
    out = str(tmp_path / "out")
    r = run_cli("fit", *_args(tmp_path), "--missing", "model", "--noise-sd", "age=0.5",
                "--out", out)  # fmt: skip
    assert r.returncode == 2 and "'age' is not a feature" in r.stderr, r.stderr
    r = run_cli("fit", *_args(tmp_path), "--out", out)
    assert r.returncode == 2 and "or --missing model to model them (GLMs)" in r.stderr, r.stderr
    r = run_cli("fit", *_args(tmp_path), "--missing", "drop", "--noise-sd", "x1=-1", "--out", out)
    assert r.returncode == 2 and "SD a number >= 0" in r.stderr, r.stderr
    r = run_cli("fit", *_args(tmp_path), "--features", "x0,x1,x0_sd", "--missing", "model",
                "--noise-sd", "x0=x0_sd", "--standardize", "--out", out)  # fmt: skip
    assert r.returncode == 2 and "a noise column with --standardize" in r.stderr, r.stderr
    df.assign(y=df["y"].where(df.index != 3)).to_csv(tmp_path / "y.csv", index=False)
    r = run_cli("fit", *_args(tmp_path, "y.csv"), "--missing", "model", "--out", out)
    assert r.returncode == 2 and "target column 'y' has 1 missing value" in r.stderr, r.stderr
    df.assign(x0=df["x0"].where(df["site"] != "s2")).to_csv(tmp_path / "s2.csv", index=False)
    r = run_cli("fit", *_args(tmp_path, "s2.csv"), "--missing", "model", "--out", out)
    assert r.returncode == 2, r.stderr
    assert "feature 'x0' is missing in every training row of client(s) 's2' (25 row(s))" in (
        r.stderr
    )
    r = run_cli("fit", "--data", "eight_schools", "--missing", "model", "--out", out)
    assert r.returncode == 2 and "applies to the GLMs" in r.stderr, r.stderr


def test_covariate_regression_flag_builds_the_conditioned_model(tmp_path):
    """``--covariate-regression`` reaches ``hierarchical_glm`` (no fit: the options and the
    model they build), and is refused without modelled features."""
    import argparse

    from bayes_pfl import FederatedData
    from bayes_pfl.cli.missing import latent_options
    from bayes_pfl.data import DataError
    from bayes_pfl.models import get_model

    df = _csv(tmp_path)
    data = FederatedData.from_pandas(
        df, client_col="site", target="y", features=["x0", "x1"], missing="keep"
    )
    args = argparse.Namespace(
        missing="model", noise_sd=[], missing_effects=False, covariate_regression=True
    )
    options = latent_options(args, data, "linear")
    assert options["covariate_regression"] and options["missing"] == ["x0"]
    model = get_model("linear", 2, feature_names=["x0", "x1"], **options)
    assert "x_coef" in model.phi_space.names
    args.missing = "drop"
    with pytest.raises(DataError, match="--covariate-regression needs --missing model"):
        latent_options(args, data, "linear")
