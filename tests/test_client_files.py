"""One CSV file per client (``--data hospitals/`` or ``--data 'hospitals/*.csv'``): the same
federation as one CSV of all the rows, the errors naming the file, Flower nodes each reading
their own file; and datasets whose features keep their units (eight schools' sigma)."""

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bayes_pfl.data import DataError
from bayes_pfl.datasets import DATASETS, HEART_DISEASE_HOSPITALS, client_files, load, source

INFO = DATASETS["heart_disease"]
FEATURES = ",".join(INFO.features)
APP_DIR = Path(__file__).resolve().parents[1] / "examples" / "flower_app"


@pytest.fixture(scope="module")
def hospitals(tmp_path_factory):
    """Heart disease as one file per hospital (raw, missing values kept, no hospital column),
    written in reverse order, and as one CSV of all rows with a ``client`` column."""
    root = tmp_path_factory.mktemp("heart")
    folder = root / "files" / "hospitals"
    folder.mkdir(parents=True)
    df = load("heart_disease").rename(columns={"hospital": "client"})
    for hospital in reversed(HEART_DISEASE_HOSPITALS):  # the order is the files' names'
        df[df.client == hospital].drop(columns="client").to_csv(
            folder / f"{hospital}.csv", index=False
        )
    (folder / "README.txt").write_text("not a CSV: a folder reads *.csv only\n")
    single = root / "all.csv"
    df.to_csv(single, index=False)
    return folder, single


def _same_federation(a, b):
    assert a.clients == b.clients
    assert a.features == b.features and a.target == b.target
    for split in ("train", "test"):
        for x, y in zip(a.arrays(split), b.arrays(split), strict=True):
            np.testing.assert_array_equal(x, y)
        pd.testing.assert_index_equal(a.row_index[split], b.row_index[split])
    np.testing.assert_array_equal(a.feature_mean, b.feature_mean)
    np.testing.assert_array_equal(a.feature_scale, b.feature_scale)
    assert a.dropped_rows == b.dropped_rows


@pytest.mark.parametrize("form", ["folder", "folder/", "glob", "recursive glob"])
def test_files_equal_one_csv_of_all_rows(hospitals, form):
    folder, single = hospitals
    data = {
        "folder": str(folder),
        "folder/": f"{folder}/",
        "glob": str(folder / "*.csv"),
        "recursive glob": str(folder.parent / "**" / "*.csv"),
    }[form]
    options = dict(test_size=0.25, seed=3, standardize=True, missing="drop")
    files = source(data, target="target", features=FEATURES)
    one = source(str(single), client_col="client", target="target", features=FEATURES)
    assert files.client_col == "client" and files.default_model is None
    pd.testing.assert_frame_equal(files.frame, one.frame)
    with pytest.warns(UserWarning, match="dropped"):
        got = files.federated(**options)
    with pytest.warns(UserWarning, match="dropped"):
        want = one.federated(**options)
    _same_federation(got, want)
    assert got.clients == tuple(sorted(HEART_DISEASE_HOSPITALS))


def test_client_col_names_the_column_of_file_names(hospitals):
    folder, _ = hospitals
    src = source(str(folder), client_col="hospital", target="target", features=FEATURES)
    assert src.client_col == "hospital" and src.frame.columns[0] == "hospital"
    assert src.frame["hospital"].unique().tolist() == sorted(HEART_DISEASE_HOSPITALS)


def test_columns_typed_once_over_all_files(tmp_path):
    """An int column in one file and a float one in another is float; text in any file
    makes a text column; column order may differ: as read_csv types one CSV of all rows."""
    (tmp_path / "a.csv").write_text("x,grade,y,flag\n1,1,0,True\n2,2,1,False\n")
    (tmp_path / "b.csv").write_text("y,x,grade,flag\n1,2.5,B,\n0,3,A,True\n")
    src = source(str(tmp_path), target="y", features="x")
    one = pd.read_csv(
        __import__("io").StringIO(
            "client,x,grade,y,flag\na,1,1,0,True\na,2,2,1,False\nb,2.5,B,1,\nb,3,A,0,True\n"
        )
    )
    pd.testing.assert_frame_equal(src.frame, one)
    assert src.frame["x"].dtype == np.float64 and src.frame["y"].dtype == np.int64
    assert src.frame["grade"].tolist() == ["1", "2", "B", "A"]


def test_files_with_a_client_column(tmp_path):
    """A client column in the files labels the rows (a file may hold several clients); a
    client with rows in two files is an error naming both."""
    (tmp_path / "east.csv").write_text("site,x,y\nu,1,0\nv,2,1\nu,3,1\n")
    (tmp_path / "west.csv").write_text("site,x,y\nw,1,0\nw,2,1\n")
    src = source(str(tmp_path), client_col="site", target="y", features="x")
    data = src.federated()
    assert data.clients == ("u", "v", "w") and data.n_rows().tolist() == [2, 1, 2]
    # the default client column, when the files have it, is used the same way
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "one.csv").write_text("client,x,y\nu,1,0\nv,2,1\n")
    (tmp_path / "c" / "two.csv").write_text("client,x,y\nw,1,0\n")
    assert source(str(tmp_path / "c"), target="y", features="x").federated().clients == (
        "u",
        "v",
        "w",
    )
    (tmp_path / "north.csv").write_text("site,x,y\nx1,1,0\nv,5,1\n")
    with pytest.raises(DataError, match=r"client 'v'.*east\.csv and .*north\.csv"):
        source(str(tmp_path / "*.csv"), client_col="site", target="y", features="x")


def _error(data, **kw):
    kw = {"target": "y", "features": "x", **kw}
    with pytest.raises(DataError) as err:
        source(str(data), **kw)
    return str(err.value)


def test_errors_name_the_file(tmp_path):
    good = "x,y\n1,0\n2,1\n"
    assert "no file matches" in _error(tmp_path / "nothing-*.csv")
    (tmp_path / "empty-folder").mkdir()
    (tmp_path / "empty-folder" / "notes.txt").write_text(good)
    assert "no *.csv file in the folder" in _error(tmp_path / "empty-folder")

    def folder(name, **files):
        d = tmp_path / name
        d.mkdir()
        (d / "a.csv").write_text(good)
        for stem, text in files.items():
            (d / f"{stem}.csv").write_bytes(text if isinstance(text, bytes) else text.encode())
        return d

    msg = _error(folder("cols", b="x,z,w\n1,2,3\n"))
    assert "b.csv has other columns than" in msg and "a.csv" in msg
    assert "missing 'y'" in msg and "extra 'z', 'w'" in msg
    assert "b.csv: empty file" in _error(folder("empty", b=""))
    assert "b.csv: no rows (only a header)" in _error(folder("header", b="x,y\n"))
    msg = _error(folder("ragged", b="x,y\n1,2\n3,4,5\n"))
    assert "b.csv: cannot be parsed as CSV" in msg
    assert "b.csv: cannot be parsed as CSV" in _error(folder("binary", b=bytes(range(256)) * 8))
    for sub in ("one", "two"):
        (tmp_path / "same" / sub).mkdir(parents=True)
        (tmp_path / "same" / sub / "site.csv").write_text(good)
    msg = _error(tmp_path / "same" / "*" / "*.csv")
    assert "one/site.csv and " in msg and "two/site.csv have the same name 'site'" in msg
    msg = _error(tmp_path / "header", target=None, features=None)
    assert msg.startswith("CSV files need --target, --features")
    assert "absent.csv': file not found (nor a folder" in _error(tmp_path / "absent.csv")


def test_client_files_sorted_by_name(tmp_path):
    for name in ("b.csv", "a-1.csv", "a.csv", "C.CSV", "skip.txt", "._a.csv"):
        (tmp_path / name).write_text("x,y\n1,0\n")
    assert [p.name for p in client_files(str(tmp_path))] == ["C.CSV", "a-1.csv", "a.csv", "b.csv"]


# ---------------------------------------------------- features that keep their units


def test_eight_schools_is_never_standardized():
    src = source("eight_schools")
    assert not src.standardizable and not DATASETS["eight_schools"].standardizable
    with pytest.raises(DataError, match="sigma.*standard error.*drop --standardize"):
        src.federated(standardize=True)
    assert all(info.standardizable for name, info in DATASETS.items() if name != "eight_schools")


def test_flower_default_leaves_eight_schools_sigma_raw():
    """Flower's default (standardize = true) keeps eight schools' sigma a standard error:
    standardized, five of the eight schools get a negative one and their local inference
    fails. Nodes without a file take their partition raw; nodes with one are not asked
    for statistics."""
    from bayes_pfl.flower.config import FlowerSettings, _federated_data, load_client_data

    settings = FlowerSettings(data="eight_schools")
    assert settings.standardize and not settings.standardize_features
    data = _federated_data(settings)
    assert data.feature_mean is None
    sigma = load("eight_schools")["sigma"].to_numpy()
    np.testing.assert_array_equal(data.train.x[:, 0, 0], sigma)
    node = load_client_data(settings, {"partition-id": 2})
    assert node.label == "C" and node.x[0, 0] == sigma[2] and node.standardized
    assert FlowerSettings(data="heart_disease").standardize_features


# ------------------------------------------------------------ Flower: a file per node


def _settings(folder, **extra):
    from bayes_pfl.flower.config import FlowerSettings

    run_config = {
        "data": str(folder),
        "target": "target",
        "features": FEATURES,
        "model": "logistic",
        "missing": "drop",
        **extra,
    }
    return FlowerSettings.from_run_config(run_config)


def test_flower_node_reads_its_own_file(hospitals):
    """A SuperNode given its file (data-path) reads only it, labelled by the file's stem; with
    the pooled statistics its rows equal the partition of the folder read in process (and
    what a node without data-path takes from the run config's folder)."""
    import warnings

    from bayes_pfl.flower.client import prepare_arrays
    from bayes_pfl.flower.config import (
        load_client_data,
        pooled_standardization,
        standardization_stats,
    )

    folder, _ = hospitals
    settings = _settings(folder)
    nodes = [
        load_client_data(settings, {"partition-id": i, "data-path": str(path)})
        for i, path in enumerate(client_files(str(folder)))
    ]
    assert [n.label for n in nodes] == sorted(HEART_DISEASE_HOSPITALS)
    assert not any(n.standardized for n in nodes)
    mean, scale = pooled_standardization([standardization_stats(n.x) for n in nodes])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        data = source(str(folder), target="target", features=FEATURES).federated(
            standardize=True, missing="drop"
        )
    np.testing.assert_allclose(mean, data.feature_mean, rtol=1e-12)
    np.testing.assert_allclose(scale, data.feature_scale, rtol=1e-12)
    n_max = int(data.train.n.max())
    for k, node in enumerate(nodes):
        got = prepare_arrays(node, n_max, mean, scale)
        want = data.train.client(k)
        np.testing.assert_array_equal(got.mask, want.mask)
        np.testing.assert_allclose(got.x, want.x, rtol=1e-12, atol=1e-12)
        np.testing.assert_array_equal(got.y, want.y)
        partition = load_client_data(settings, {"partition-id": k})  # the folder, no data-path
        assert partition.label == node.label and partition.standardized
        np.testing.assert_allclose(partition.x, got.x[: len(node.y)], rtol=1e-12, atol=1e-12)


def test_flower_nodes_described_by_their_files(hospitals):
    """Through the ClientApp (test_flower's in-process grid): nodes given their files describe
    themselves by the files' stems, in the folder's order, and the server's pooled
    standardization is the in-process one."""
    pytest.importorskip("flwr")
    import warnings

    from test_flower import FakeGrid

    from bayes_pfl.flower.app import client_app
    from bayes_pfl.flower.server import discover

    folder, _ = hospitals
    run_config = {"data": str(folder), "target": "target", "features": FEATURES}
    run_config.update({"model": "logistic", "missing": "drop"})
    nodes = _deploy_local().client_nodes(str(folder / "*.csv"))
    grid = FakeGrid(client_app(), nodes[::-1], run_config)  # node ids in another order
    federation = discover(grid, n_clients=4, node_wait_s=5, timeout_s=5, standardize=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        data = source(str(folder), target="target", features=FEATURES).federated(
            standardize=True, missing="drop"
        )
    assert federation.labels == data.clients
    np.testing.assert_array_equal(federation.n_rows, data.n_rows())
    np.testing.assert_allclose(federation.mean, data.feature_mean, rtol=1e-12)
    np.testing.assert_allclose(federation.scale, data.feature_scale, rtol=1e-12)


def test_flower_node_file_with_several_clients_is_an_error(tmp_path):
    from bayes_pfl.flower.config import load_client_data

    path = tmp_path / "region.csv"
    path.write_text("client,target,age\nu,0,50\nv,1,60\n")
    settings = _settings(tmp_path, features="age")
    with pytest.raises(DataError, match=r"region\.csv: column 'client' names 2 clients"):
        load_client_data(settings, {"partition-id": 0, "data-path": str(path)})
    node = {"partition-id": 0, "data-path": str(path), "client-label": "region"}
    assert load_client_data(settings, node).label == "region"


def _deploy_local():
    spec = importlib.util.spec_from_file_location("deploy_local", APP_DIR / "deploy_local.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_deploy_local_gives_each_node_its_file(hospitals, tmp_path, monkeypatch):
    """deploy_local.py --data FOLDER|GLOB: one SuperNode per file, each with data-path to its
    own file, in the order of source(); its working folder is not the current folder."""
    deploy = _deploy_local()
    folder, _ = hospitals
    for data in (str(folder), str(folder / "*.csv")):
        nodes = deploy.client_nodes(data)
        assert nodes == [
            {"partition-id": i, "data-path": str(p.resolve())}
            for i, p in enumerate(client_files(str(folder)))
        ]
    monkeypatch.chdir(tmp_path)
    given = ["--data", str(folder), "--target", "target", "--features", "age"]
    with pytest.raises(SystemExit):
        deploy.parse_args(given)  # no --model
    args = deploy.parse_args([*given, "--model", "logistic"])
    work = Path(args.workdir).resolve()
    try:
        assert work.is_dir() and not work.is_relative_to(tmp_path)
        assert Path(args.out).resolve() == work / "fit"
    finally:
        work.rmdir()
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_cli_fit_reads_a_folder_of_client_files(tmp_path):
    """``bayes-pfl fit --data FOLDER``: one school per file, labelled by the file names (a
    short NUTS fit); a bad file and ``--standardize`` on eight schools exit 2 naming why."""
    import xarray as xr
    from _helpers import run_cli

    folder = tmp_path / "schools"
    folder.mkdir()
    for _, row in load("eight_schools").iterrows():
        row.drop("school").to_frame().T.to_csv(folder / f"{row['school']}.csv", index=False)
    out = tmp_path / "out"
    columns = ("--target", "y", "--features", "sigma", "--model", "eight_schools")
    quick = ("--chains", "1", "--warmup", "50", "--samples", "50", "--no-progress")
    r = run_cli("fit", "--data", str(folder), *columns, "--out", str(out), *quick)
    assert r.returncode == 0, r.stderr
    assert list(xr.open_datatree(out / "posterior.nc").posterior["client"].values) == list(
        "ABCDEFGH"
    )
    (folder / "I.csv").write_text("")
    r = run_cli("fit", "--data", f"{folder}/*.csv", *columns, "--out", str(tmp_path / "o2"))
    assert r.returncode == 2 and "I.csv: empty file" in r.stderr, r.stderr
    r = run_cli("fit", "--data", "eight_schools", "--standardize", "--out", str(tmp_path / "o3"))
    assert r.returncode == 2 and "drop --standardize" in r.stderr, r.stderr
