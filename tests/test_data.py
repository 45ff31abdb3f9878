"""Tests of bayes_pfl.data: federated data from a pandas frame."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from bayes_pfl.data import ClientArrays, DataError, FederatedData, UnknownClientError


@pytest.fixture
def frame() -> pd.DataFrame:
    """Three ragged clients (3, 1 and 2 rows), interleaved, string labels."""
    return pd.DataFrame(
        {
            "site": ["b", "a", "b", "c", "b", "c"],
            "x1": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
            "flag": [True, False, True, False, False, True],
            "y": [0.5, 1.5, 2.5, 3.5, 4.5, 5.5],
        },
        index=[10, 11, 12, 13, 14, 15],
    )


def build(df: pd.DataFrame, **kwargs) -> FederatedData:
    kwargs.setdefault("client_col", "site")
    kwargs.setdefault("target", "y")
    kwargs.setdefault("features", ["x1", "flag"])
    return FederatedData.from_pandas(df, **kwargs)


def binary_frame() -> pd.DataFrame:
    """Client 'p': 10 positives and 10 negatives; client 'q': 6 rows."""
    rng = np.random.default_rng(0)
    y = np.r_[np.tile([0, 1], 10), [0, 0, 0, 1, 1, 1]]
    return pd.DataFrame({"site": ["p"] * 20 + ["q"] * 6, "x": rng.normal(size=26), "y": y})


# ------------------------------------------------------------------ building


def test_labels_kept_in_order_of_first_appearance(frame):
    data = build(frame)
    assert data.clients == ("b", "a", "c")
    assert all(isinstance(c, str) for c in data.clients)
    assert data.features == ("x1", "flag")
    assert data.target == "y" and data.client_col == "site"
    assert data.n_clients == 3 and data.n_features == 2
    assert data.test is None and data.val is None
    assert data.feature_mean is None and data.feature_scale is None
    assert data.dropped_rows == {}


def test_integer_labels_stay_integers():
    df = pd.DataFrame({"c": [7, 3, 7, 3], "x": [1.0, 2.0, 3.0, 4.0], "y": [0.0, 1.0, 2.0, 3.0]})
    data = FederatedData.from_pandas(df, client_col="c", target="y", features=["x"])
    assert data.clients == (7, 3)
    assert all(type(c) is int for c in data.clients)
    assert data.index([3]).tolist() == [1]


def test_clients_argument_orders_federation(frame):
    data = build(frame, clients=["c", "a", "b"])
    assert data.clients == ("c", "a", "b")
    assert data.n_rows().tolist() == [2, 1, 3]
    np.testing.assert_array_equal(data.train.x[0, :, 0], [4.0, 6.0, 0.0])


def test_padding_and_mask(frame):
    data = build(frame)
    arr = data.train
    assert isinstance(arr, ClientArrays)
    assert arr.x.shape == (3, 3, 2) and arr.y.shape == (3, 3) and arr.mask.shape == (3, 3)
    assert arr.x.dtype == np.float64 and arr.y.dtype == np.float64 and arr.mask.dtype == bool
    np.testing.assert_array_equal(
        arr.mask, [[True, True, True], [True, False, False], [True, True, False]]
    )
    assert arr.n.tolist() == [3, 1, 2]
    assert data.n_rows().tolist() == [3, 1, 2]
    # client 'b' rows in frame order; bool feature became 0/1
    np.testing.assert_array_equal(arr.x[0], [[1.0, 1.0], [3.0, 1.0], [5.0, 0.0]])
    np.testing.assert_array_equal(arr.y[0], [0.5, 2.5, 4.5])
    # padding is zero
    np.testing.assert_array_equal(arr.x[1, 1:], 0.0)
    np.testing.assert_array_equal(arr.y[1, 1:], 0.0)
    # one client, without the client axis
    one = arr.client(2)
    assert one.x.shape == (3, 2) and one.y.shape == (3,) and int(one.n) == 2
    np.testing.assert_array_equal(one.y, [3.5, 5.5, 0.0])


def test_arrays_are_read_only(frame):
    data = build(frame)
    with pytest.raises(ValueError):
        data.train.x[0, 0, 0] = 1.0


def test_float32_dtype(frame):
    data = build(frame, dtype=np.float32)
    assert data.train.x.dtype == np.float32 and data.train.y.dtype == np.float32


def test_eight_schools_single_row_clients():
    df = pd.DataFrame(
        {
            "school": list("ABCDEFGH"),
            "y": [28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0],
            "sigma": [15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0],
        }
    )
    data = FederatedData.from_pandas(
        df, client_col="school", target="y", features=["sigma"], test_size=0.3, seed=3
    )
    assert data.clients == tuple("ABCDEFGH")
    assert data.train.x.shape == (8, 1, 1)
    assert data.n_rows("train").tolist() == [1] * 8
    assert data.n_rows("test").tolist() == [0] * 8
    np.testing.assert_array_equal(data.train.y[:, 0], df["y"])


def test_to_pandas_round_trip(frame):
    data = build(frame)
    back = data.to_pandas()
    expected = frame.iloc[[0, 2, 4, 1, 3, 5]].astype({"flag": float})
    pd.testing.assert_frame_equal(back, expected, check_dtype=False)
    assert list(back.columns) == ["site", "x1", "flag", "y"]
    assert back.index.tolist() == data.row_index["train"].tolist()


def test_to_pandas_round_trip_standardized_with_splits(frame):
    big = pd.concat([frame] * 4, ignore_index=True)
    data = build(big, standardize=True, test_size=0.25, val_size=0.25, seed=5)
    parts = pd.concat([data.to_pandas(s) for s in ("train", "test", "val")])
    pd.testing.assert_frame_equal(
        parts.sort_index(), big.astype({"flag": float}), check_dtype=False, atol=1e-12
    )


def test_summary(frame):
    data = build(pd.concat([frame] * 2, ignore_index=True), test_size=0.5)
    summary = data.summary()
    assert list(summary.columns) == ["n_train", "n_test", "n_val", "dropped"]
    assert summary.index.name == "site"
    assert summary.index.tolist() == ["b", "a", "c"]
    assert summary["n_train"].tolist() == [3, 1, 2]
    assert summary["n_test"].tolist() == [3, 1, 2]
    assert summary["n_val"].tolist() == [0, 0, 0]
    assert summary["dropped"].tolist() == [0, 0, 0]


def test_repr(frame):
    text = repr(build(frame, test_size=0.4))
    assert "n_clients=3" in text and "train=" in text and "test=" in text


# -------------------------------------------------------------------- splits


def test_split_sizes_and_disjointness():
    df = pd.DataFrame({"c": ["a"] * 10 + ["b"] * 4, "x": np.arange(14.0), "y": np.arange(14.0)})
    data = FederatedData.from_pandas(
        df, client_col="c", target="y", features=["x"], test_size=0.3, val_size=0.2, seed=1
    )
    assert data.n_rows("train").tolist() == [5, 2]
    assert data.n_rows("test").tolist() == [3, 1]
    assert data.n_rows("val").tolist() == [2, 1]
    rows = np.concatenate([data.to_pandas(s)["x"].to_numpy() for s in ("train", "test", "val")])
    np.testing.assert_array_equal(np.sort(rows), np.arange(14.0))
    # rows keep frame order inside each split
    for split in ("train", "test", "val"):
        for k in range(2):
            arr = data.arrays(split).client(k)
            real = arr.x[arr.mask, 0]
            assert np.all(np.diff(real) > 0)


def test_split_reproducible_and_seed_dependent():
    df = pd.DataFrame({"c": ["a"] * 30 + ["b"] * 30, "x": np.arange(60.0), "y": np.arange(60.0)})

    def test_rows(seed):
        data = FederatedData.from_pandas(
            df, client_col="c", target="y", features=["x"], test_size=0.3, seed=seed
        )
        return data.to_pandas("test")["x"].tolist()

    assert test_rows(0) == test_rows(0)
    assert test_rows(0) != test_rows(1)


def test_client_always_keeps_a_training_row():
    df = pd.DataFrame(
        {"c": ["one", "two", "two", "many", "many", "many"], "x": np.arange(6.0), "y": 1.0}
    )
    data = FederatedData.from_pandas(
        df, client_col="c", target="y", features=["x"], test_size=0.5, val_size=0.4
    )
    assert data.n_rows("train").tolist() == [1, 1, 1]
    assert data.n_rows("test").tolist() == [0, 1, 2]
    assert data.n_rows("val").tolist() == [0, 0, 0]


def test_stratified_split_binary_target():
    df = binary_frame()
    data = FederatedData.from_pandas(
        df, client_col="site", target="y", features=["x"], test_size=0.3, seed=0
    )
    test_y = data.to_pandas("test").groupby("site")["y"]
    train_y = data.to_pandas("train").groupby("site")["y"]
    # client p: 10 + 10 rows, 30 % test -> 3 positives and 3 negatives
    assert test_y.sum()["p"] == 3 and test_y.size()["p"] == 6
    assert train_y.sum()["p"] == 7 and train_y.size()["p"] == 14
    # client q: 3 + 3 rows -> 2 test rows, one of each class
    assert test_y.sum()["q"] == 1 and test_y.size()["q"] == 2
    for seed in range(10):
        data = FederatedData.from_pandas(
            df, client_col="site", target="y", features=["x"], test_size=0.3, seed=seed
        )
        assert data.to_pandas("test").groupby("site")["y"].sum().tolist() == [3, 1]


def test_arrays_split_errors(frame):
    data = build(frame)
    with pytest.raises(DataError, match="test"):
        data.arrays("test")
    with pytest.raises(DataError, match="split"):
        data.arrays("tset")
    assert data.n_rows("val").tolist() == [0, 0, 0]


# ------------------------------------------------------------ standardization


def test_standardize_uses_training_statistics_only():
    df = pd.DataFrame(
        {
            "c": ["a"] * 4 + ["b"] * 4,
            "x": [1.0, 2.0, 3.0, 4.0, 10.0, 20.0, 30.0, 40.0],
            "bin": [0, 1, 1, 0, 1, 0, 0, 1],
            "const": 5.0,
            "y": np.arange(8.0),
        }
    )
    data = FederatedData.from_pandas(
        df,
        client_col="c",
        target="y",
        features=["x", "bin", "const"],
        test_size=0.25,
        seed=2,
        standardize=True,
    )
    train = data.to_pandas("train")
    assert len(train) == 6
    mean, sd = train["x"].mean(), train["x"].std(ddof=0)
    np.testing.assert_allclose(data.feature_mean, [mean, 0.0, 5.0])
    np.testing.assert_allclose(data.feature_scale, [sd, 1.0, 1.0])
    # statistics differ from those of all rows: test rows are not used
    assert not np.isclose(mean, df["x"].mean()) or not np.isclose(sd, df["x"].std(ddof=0))
    # stored x is standardized with the training statistics, test included
    for split in ("train", "test"):
        arr = data.arrays(split)
        raw = data.to_pandas(split)
        np.testing.assert_allclose(arr.x[arr.mask][:, 0], (raw["x"] - mean) / sd)
        # binary column untouched, constant column centred
        np.testing.assert_array_equal(arr.x[arr.mask][:, 1], raw["bin"])
        np.testing.assert_array_equal(arr.x[arr.mask][:, 2], 0.0)
    train_x = data.train.x[data.train.mask][:, 0]
    np.testing.assert_allclose([train_x.mean(), train_x.std()], [0.0, 1.0], atol=1e-12)


# -------------------------------------------------------------- missing values


def test_missing_error_names_column(frame):
    frame.loc[11, "x1"] = np.nan
    frame.loc[12, "x1"] = np.nan
    with pytest.raises(DataError, match=r"'x1'.*2"):
        build(frame)


def test_missing_target_error_names_client(frame):
    frame.loc[13, "y"] = np.nan
    with pytest.raises(DataError, match=r"'y'.*'c'"):
        build(frame)
    with pytest.raises(DataError, match=r"'y'.*'c'"):
        build(frame, missing="keep")


def test_missing_drop_warns_and_counts(frame):
    frame.loc[10, "x1"] = np.nan
    frame.loc[12, "y"] = np.nan
    frame.loc[13, "x1"] = np.nan
    with pytest.warns(UserWarning, match=r"dropped 3 rows.*'b': 2.*'c': 1"):
        data = build(frame, missing="drop")
    assert data.dropped_rows == {"b": 2, "c": 1}
    assert data.n_rows().tolist() == [1, 1, 1]
    assert data.summary()["dropped"].tolist() == [2, 0, 1]
    assert not np.isnan(data.train.x).any()


def test_missing_drop_without_missing_values_is_silent(frame):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data = build(frame, missing="drop")
    assert data.dropped_rows == {}


def test_missing_drop_emptying_a_client_is_an_error(frame):
    frame.loc[11, "x1"] = np.nan
    with pytest.warns(UserWarning), pytest.raises(DataError, match="'a'"):
        build(frame, missing="drop")


def test_missing_keep_keeps_nan(frame):
    frame.loc[11, "x1"] = np.nan
    data = build(frame, missing="keep", standardize=True)
    assert np.isnan(data.train.x[1, 0, 0])
    assert np.isnan(data.train.x).sum() == 1
    assert np.isfinite(data.feature_mean).all()
    assert np.isnan(data.to_pandas().loc[11, "x1"])


def test_nullable_dtypes():
    df = pd.DataFrame(
        {
            "c": pd.array(["a", "a", "b"], dtype="string"),
            "x": pd.array([1, None, 3], dtype="Int64"),
            "y": [0.0, 1.0, 2.0],
        }
    )
    data = FederatedData.from_pandas(df, client_col="c", target="y", features=["x"], missing="keep")
    assert data.clients == ("a", "b")
    assert np.isnan(data.train.x[0, 1, 0])
    with pytest.raises(DataError, match="'x'"):
        FederatedData.from_pandas(df, client_col="c", target="y", features=["x"])


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("mutate", "kwargs", "needle"),
    [
        (lambda df: df.to_numpy(), {}, "DataFrame"),
        (lambda df: df, {"features": ["x1", "nope", "gone"]}, "'nope', 'gone'"),
        (lambda df: df, {"client_col": "where"}, "'where'"),
        (lambda df: df, {"target": "outcome"}, "'outcome'"),
        (lambda df: df, {"features": ["x1", "y"]}, "'y'"),
        (lambda df: df, {"features": ["x1", "site"]}, "'site'"),
        (lambda df: df, {"features": []}, "features"),
        (lambda df: df.assign(word=list("uvwxyz")), {"features": ["x1", "word"]}, "'word'"),
        (lambda df: df.assign(y=list("uvwxyz")), {}, "'y'"),
        (lambda df: df.assign(x1=[1.0, np.inf, 3, 4, 5, 6]), {}, "'x1'"),
        (lambda df: df.assign(x1=[1.0, -np.inf, 3, 4, 5, 6]), {"missing": "drop"}, "'x1'"),
        (lambda df: df.assign(y=[1.0, 2, 3, np.inf, 5, 6]), {"missing": "drop"}, "'c'"),
        (lambda df: df.assign(site=["b", "a", None, "c", "b", "c"]), {}, "'site'"),
        (lambda df: df.assign(site="b"), {}, "'b'"),
        (lambda df: df, {"clients": ["b", "a", "c", "d"]}, "'d'"),
        (lambda df: df, {"clients": ["b", "a"]}, "'c'"),
        (lambda df: df, {"clients": ["b", "a", "c", "a"]}, "'a'"),
        (lambda df: df, {"missing": "ignore"}, "missing"),
        (lambda df: df, {"test_size": 1.0}, "test_size"),
        (lambda df: df, {"val_size": -0.1}, "val_size"),
        (lambda df: df, {"test_size": 0.5, "val_size": 0.5}, "test_size + val_size"),
        (lambda df: df, {"seed": -1}, "seed"),
        (lambda df: df, {"dtype": np.int32}, "dtype"),
    ],
)
def test_bad_input_raises_data_error(frame, mutate, kwargs, needle):
    with pytest.raises(DataError) as info:
        build(mutate(frame), **kwargs)
    assert needle in str(info.value)
    assert isinstance(info.value, ValueError)


def test_missing_columns_all_named(frame):
    with pytest.raises(DataError) as info:
        build(frame, client_col="who", target="what", features=["x1", "why"])
    for name in ("who", "what", "why"):
        assert repr(name) in str(info.value)


def test_categorical_unused_category_is_a_zero_row_client(frame):
    frame["site"] = pd.Categorical(frame["site"], categories=["a", "b", "c", "ghost"])
    with pytest.raises(DataError, match="'ghost'"):
        build(frame)
    frame["site"] = frame["site"].cat.remove_unused_categories()
    assert build(frame).clients == ("b", "a", "c")


def test_infinite_target_names_client_and_count(frame):
    frame.loc[[13, 15], "y"] = [np.inf, -np.inf]
    with pytest.raises(DataError, match=r"'y' has 2 infinite values: client 'c': 2"):
        build(frame)


# --------------------------------------------------------- index, subset, encode


def test_index_and_unknown_client(frame):
    data = build(frame)
    assert data.index(["c", "b"]).tolist() == [2, 0]
    assert data.index("a").tolist() == [1]
    with pytest.raises(UnknownClientError, match="'zzz'") as info:
        data.index(["a", "zzz"])
    assert isinstance(info.value, KeyError) and isinstance(info.value, DataError)
    assert "'b'" in str(info.value)  # lists known labels
    assert not str(info.value).startswith('"')  # not KeyError-quoted


def test_index_type_mismatch_hint():
    df = pd.DataFrame({"c": [1, 2], "x": [1.0, 2.0], "y": [1.0, 2.0]})
    data = FederatedData.from_pandas(df, client_col="c", target="y", features=["x"])
    with pytest.raises(UnknownClientError, match="type"):
        data.index("1")


def test_subset(frame):
    frame.loc[10, "x1"] = np.nan
    big = pd.concat([frame] * 2, ignore_index=True)
    with pytest.warns(UserWarning):
        data = build(big, test_size=0.5, standardize=True, missing="drop")
    sub = data.subset(["c", "a"])
    assert sub.clients == ("c", "a")
    assert sub.train.x.shape == (2, 2, 2)  # trimmed to the largest selected client
    np.testing.assert_array_equal(sub.train.x[0], data.train.x[2, :2])
    np.testing.assert_array_equal(sub.test.y[1], data.test.y[1, :2])
    np.testing.assert_array_equal(sub.feature_mean, data.feature_mean)
    np.testing.assert_array_equal(sub.feature_scale, data.feature_scale)
    assert sub.dropped_rows == {} and data.dropped_rows == {"b": 2}
    assert data.subset(["b", "c"]).dropped_rows == {"b": 2}
    full = data.to_pandas("test")
    expected = pd.concat([full[full["site"] == "c"], full[full["site"] == "a"]])
    pd.testing.assert_frame_equal(sub.to_pandas("test"), expected)
    with pytest.raises(UnknownClientError, match="'x'"):
        data.subset(["a", "x"])
    with pytest.raises(DataError, match="'a'"):
        data.subset(["a", "a"])
    with pytest.raises(DataError, match="two clients"):
        data.subset(["a"])


def test_encode_known_clients(frame):
    data = build(frame, standardize=True)
    new = pd.DataFrame(
        {"site": ["c", "a", "c"], "x1": [7.0, 8.0, 9.0], "flag": [True, False, False]}
    )
    arrays, labels = data.encode(new)
    assert labels == ("c", "a")
    assert data.index(labels).tolist() == [2, 1]
    assert arrays.x.shape == (2, 2, 2)
    np.testing.assert_array_equal(arrays.mask, [[True, True], [True, False]])
    np.testing.assert_array_equal(arrays.y, 0.0)  # no target column
    expected = (np.array([7.0, 9.0]) - data.feature_mean[0]) / data.feature_scale[0]
    np.testing.assert_allclose(arrays.x[0, :, 0], expected)
    np.testing.assert_array_equal(arrays.x[0, :, 1], [1.0, 0.0])  # binary untouched

    with_target = new.assign(y=[1.0, 2.0, 3.0])
    arrays, _ = data.encode(with_target)
    np.testing.assert_array_equal(arrays.y, [[1.0, 3.0], [2.0, 0.0]])


def test_encode_errors(frame):
    data = build(frame)
    good = pd.DataFrame({"site": ["a"], "x1": [1.0], "flag": [True]})
    with pytest.raises(UnknownClientError, match="'mars'"):
        data.encode(good.assign(site="mars"))
    with pytest.raises(DataError, match="'flag'"):
        data.encode(good.drop(columns="flag"))
    with pytest.raises(DataError, match="'x1'"):
        data.encode(good.assign(x1="one"))
    with pytest.raises(DataError, match="'x1'"):
        data.encode(good.assign(x1=np.nan))
    with pytest.raises(DataError, match="'x1'"):
        data.encode(good.assign(x1=np.inf))
    with pytest.raises(DataError, match="'y'"):
        data.encode(good.assign(y="label"))
    arrays, _ = data.encode(good.assign(x1=np.nan), missing="keep")
    assert np.isnan(arrays.x[0, 0, 0])
    with pytest.raises(DataError, match="DataFrame"):
        data.encode(good.to_dict())


def test_client_arrays_is_a_pytree(frame):
    jax = pytest.importorskip("jax")
    data = build(frame)
    leaves = jax.tree_util.tree_leaves(data.train)
    assert len(leaves) == 3
    n = jax.vmap(lambda a: a.mask.sum())(data.train)
    assert np.asarray(n).tolist() == [3, 1, 2]
