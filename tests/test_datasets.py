"""Tests of the bundled real datasets."""

import numpy as np
import pandas as pd
import pytest

from bayes_pfl.datasets import (
    DATASETS,
    HEART_DISEASE_FEATURES,
    HEART_DISEASE_FLAMBY_FEATURES,
    DatasetInfo,
    load,
    load_eight_schools,
    load_heart_disease,
    load_radon,
)


def test_radon():
    df = load_radon()
    assert list(df.columns) == ["county", "fips", "floor", "log_uppm", "log_radon"]
    assert len(df) == 919
    assert pd.api.types.is_string_dtype(df["county"])
    assert df["fips"].dtype == np.int64 and df["floor"].dtype == np.int64
    assert df["log_uppm"].dtype == np.float64 and df["log_radon"].dtype == np.float64
    assert set(df["floor"]) == {0, 1}
    sizes = df.groupby("county").size()
    assert len(sizes) == 85
    assert sizes.min() == 1 and sizes.max() == 116
    # Row order as in the file (posteriordb's radon_mn).
    assert df.iloc[0]["county"] == "AITKIN"
    assert df.iloc[0]["log_radon"] == pytest.approx(0.0953102)
    assert df["fips"].is_monotonic_increasing
    assert (df.groupby("county")["log_uppm"].nunique() == 1).all()
    assert not df.isna().any().any()


def test_eight_schools():
    df = load_eight_schools()
    assert list(df.columns) == ["school", "y", "sigma"]
    assert df["school"].tolist() == list("ABCDEFGH")
    assert df["y"].dtype == np.float64 and df["sigma"].dtype == np.float64
    assert df["y"].tolist() == [28, 8, -3, 7, -1, 1, 18, 12]
    assert df["sigma"].tolist() == [15, 10, 16, 11, 9, 11, 10, 18]


def test_heart_disease():
    df = load_heart_disease()
    assert list(df.columns) == ["hospital", *HEART_DISEASE_FEATURES, "num", "target"]
    assert len(df) == 920
    sizes = df.groupby("hospital", sort=False).size()
    assert sizes.to_dict() == {"cleveland": 303, "hungary": 294, "switzerland": 123, "va": 200}
    assert list(sizes.index) == ["cleveland", "hungary", "switzerland", "va"]
    for col in HEART_DISEASE_FEATURES:
        assert df[col].dtype == np.float64
    assert df["num"].dtype == np.int64 and set(df["num"]) <= {0, 1, 2, 3, 4}
    assert df["target"].dtype == np.int64
    np.testing.assert_array_equal(df["target"], (df["num"] > 0).astype(int))
    # First Cleveland row of the file.
    first = df.iloc[0]
    assert first["age"] == 63 and first["chol"] == 233 and first["num"] == 0


def test_heart_disease_missing_values_kept():
    df = load_heart_disease()
    by = dict(tuple(df.groupby("hospital")))
    # Switzerland records chol as 0 for every patient (kept as published).
    assert (by["switzerland"]["chol"] == 0).all()
    # '?' become NaN, rows are never dropped.
    hung = by["hungary"]
    assert hung["chol"].isna().sum() == 23
    assert hung["ca"].isna().sum() == 291
    assert by["cleveland"]["ca"].isna().sum() == 4
    assert by["va"]["trestbps"].isna().sum() == 56
    # FLamby drops slope/ca/thal and incomplete rows: 740 rows remain.
    assert len(df.dropna(subset=list(HEART_DISEASE_FLAMBY_FEATURES))) == 740


def test_heart_disease_target_option():
    df = load_heart_disease(target="num")
    assert "target" not in df.columns and "num" in df.columns
    with pytest.raises(ValueError, match="target"):
        load_heart_disease(target="multiclass")


def test_flamby_features():
    assert len(HEART_DISEASE_FLAMBY_FEATURES) == 10
    assert not {"slope", "ca", "thal"} & set(HEART_DISEASE_FLAMBY_FEATURES)
    assert set(HEART_DISEASE_FLAMBY_FEATURES) < set(HEART_DISEASE_FEATURES)


@pytest.mark.parametrize(
    ("name", "client_col", "target", "n_clients", "default_model"),
    [
        ("radon", "county", "log_radon", 85, "radon_intercept"),
        ("eight_schools", "school", "y", 8, "eight_schools"),
        ("heart_disease", "hospital", "target", 4, "logistic"),
    ],
)
def test_registry(name, client_col, target, n_clients, default_model):
    info = DATASETS[name]
    assert isinstance(info, DatasetInfo)
    assert info.name == name and info.client_col == client_col and info.target == target
    assert info.default_model == default_model
    assert isinstance(info.features, tuple)
    assert info.description and info.citation and info.licence
    df = load(name)
    assert df[client_col].nunique() == n_clients
    assert {target, *info.features} <= set(df.columns)
    pd.testing.assert_frame_equal(df, info.loader())


def test_registry_frozen():
    with pytest.raises(AttributeError):
        DATASETS["radon"].target = "floor"


def test_unknown_name():
    with pytest.raises(
        ValueError, match="eight_schools, guimmun, heart_disease, radon, sleepstudy"
    ):
        load("mnist")


def test_provenance_shipped():
    from importlib.resources import files

    text = files("bayes_pfl.datasets").joinpath("PROVENANCE.md").read_text()
    for fname in ("radon.csv", "eight_schools.csv", "processed.{cleveland"):
        assert fname in text
    assert files("bayes_pfl.datasets").joinpath("heart-disease.names").is_file()
