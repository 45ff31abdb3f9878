"""Tests of the bundled multilevel datasets (lme4 sleepstudy, mlmRev guImmun)."""

import argparse
from importlib.resources import files

import numpy as np
import pandas as pd
import pytest

from bayes_pfl.data import FederatedData
from bayes_pfl.datasets import (
    DATASETS,
    GUIMMUN_YES_NO,
    DatasetInfo,
    load,
    load_guimmun,
    load_sleepstudy,
)


def test_sleepstudy():
    df = load_sleepstudy()
    assert list(df.columns) == ["Reaction", "Days", "Subject", "reaction_std"]
    assert len(df) == 180
    assert df["Reaction"].dtype == np.float64 and df["reaction_std"].dtype == np.float64
    assert df["Days"].dtype == np.int64 and df["Subject"].dtype == np.int64
    assert not df.isna().any().any()
    sizes = df.groupby("Subject").size()
    assert len(sizes) == 18 and (sizes == 10).all()
    assert (df.groupby("Subject")["Days"].apply(sorted) == [list(range(10))] * 18).all()
    # First row of the file (lme4: subject 308, day 0).
    assert df.iloc[0][["Reaction", "Days", "Subject"]].tolist() == [249.56, 0, 308]
    # The standardized outcome: pooled mean 0 and sd 1 (ddof=0), same order as Reaction.
    z = df["reaction_std"].to_numpy()
    assert z.mean() == pytest.approx(0.0, abs=1e-12) and z.std() == pytest.approx(1.0)
    r = df["Reaction"].to_numpy()
    np.testing.assert_allclose(z, (r - r.mean()) / r.std())


def test_guimmun():
    df = load_guimmun()
    assert list(df.columns) == [
        "kid",
        "mom",
        "comm",
        "immun",
        "kid2p",
        "mom25p",
        "ord",
        "ethn",
        "momEd",
        "husEd",
        "momWork",
        "rural",
        "pcInd81",
    ]
    assert len(df) == 2159
    assert not df.isna().any().any()
    assert df["comm"].nunique() == 161 and df["mom"].nunique() == 1595
    sizes = df.groupby("comm").size()
    assert sizes.min() == 1 and sizes.max() == 55
    # Y/N columns -> 0/1 integers, counts as in the file.
    for col in GUIMMUN_YES_NO:
        assert df[col].dtype == np.int64 and set(df[col]) == {0, 1}
    counts = {c: int(df[c].sum()) for c in ("immun", "kid2p", "mom25p", "rural", "momWork")}
    assert counts == {"immun": 964, "kid2p": 1666, "mom25p": 1121, "rural": 1640, "momWork": 972}
    # Other categorical columns stay text, with leading zeros kept.
    assert set(df["ord"]) == {"01", "23", "46", "7p"}
    assert set(df["ethn"]) == {"L", "N", "S"}
    assert set(df["momEd"]) == {"N", "P", "S"} and set(df["husEd"]) == {"N", "P", "S", "U"}
    assert pd.api.types.is_string_dtype(df["ord"])
    # rural and pcInd81 are community-level covariates.
    assert (df.groupby("comm")[["rural", "pcInd81"]].nunique() == 1).all().all()
    first = df.iloc[0]
    assert (first["kid"], first["comm"], first["immun"], first["ord"]) == (2, 1, 1, "01")


@pytest.mark.parametrize(
    ("name", "client_col", "target", "features", "n_clients", "n_rows", "model", "varying"),
    [
        ("sleepstudy", "Subject", "reaction_std", ("Days",), 18, 180, "linear", "slopes"),
        (
            "guimmun",
            "comm",
            "immun",
            ("kid2p", "mom25p", "rural"),
            161,
            2159,
            "logistic",
            "intercept",
        ),
    ],
)
def test_registry(name, client_col, target, features, n_clients, n_rows, model, varying):
    info = DATASETS[name]
    assert isinstance(info, DatasetInfo) and info.name == name
    assert (info.client_col, info.target, info.features) == (client_col, target, features)
    assert (info.default_model, info.varying) == (model, varying)
    assert info.description and info.citation and info.licence
    df = load(name)
    pd.testing.assert_frame_equal(df, info.loader())
    for col in (target, *features):
        assert pd.api.types.is_numeric_dtype(df[col]), col
    data = FederatedData.from_pandas(
        df, client_col=client_col, target=target, features=list(features)
    )
    assert data.n_clients == n_clients and int(data.n_rows().sum()) == n_rows
    assert np.isfinite(data.train.x).all() and np.isfinite(data.train.y).all()


def test_other_datasets_vary_the_intercept():
    for name in ("radon", "eight_schools", "heart_disease"):
        assert DATASETS[name].varying == "intercept"


@pytest.mark.parametrize(
    ("data", "varying", "expected_theta_dim"),
    [("sleepstudy", None, 2), ("sleepstudy", "intercept", 1), ("guimmun", None, 1)],
)
def test_cli_model_uses_the_dataset_varying(data, varying, expected_theta_dim):
    from bayes_pfl.cli import load_data, load_model

    args = argparse.Namespace(
        data=data,
        client_col=None,
        target=None,
        features=None,
        test_size=0.0,
        seed=0,
        standardize=False,
        missing="error",
        model=None,
        varying=varying,
        centered=False,
    )
    fed, default_model = load_data(args)
    model = load_model(args, fed, default_model)
    assert model.theta_dim == expected_theta_dim
    assert model.name == {"sleepstudy": "linear", "guimmun": "logistic"}[data]  # as asked
    assert model.description.startswith(
        {"sleepstudy": "Hierarchical normal", "guimmun": "Hierarchical bernoulli"}[data]
    )
    assert model.coords["b"][0] == "Intercept" and set(model.coords["b"]) <= {
        "Intercept",
        *fed.features,
    }


def test_files_shipped():
    pkg = files("bayes_pfl.datasets")
    for fname in ("sleepstudy.csv", "guimmun.csv"):
        assert pkg.joinpath(fname).is_file()
    text = pkg.joinpath("PROVENANCE.md").read_text()
    for word in ("sleepstudy.csv", "guimmun.csv", "Belenky", "Rodríguez", "lme4", "mlmRev"):
        assert word in text
