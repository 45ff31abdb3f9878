"""A formula model over Flower: each node evaluates its own file against the federation's
schema and the run equals the in-process fit on the same formula."""

import json

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("flwr")

from test_flower import FakeGrid  # noqa: E402

from bayes_pfl.data import DataError  # noqa: E402
from bayes_pfl.federated import fit_one_shot  # noqa: E402
from bayes_pfl.flower.app import client_app, run_from_settings  # noqa: E402
from bayes_pfl.flower.config import FlowerSettings  # noqa: E402
from bayes_pfl.formula import Schema, from_formula  # noqa: E402

FORMULA = "y ~ age + C(ward) + (1 | site)"


@pytest.fixture(scope="module")
def site_files(tmp_path_factory):
    """Four sites, one CSV each; site 'd' has no ward 'c' (its column must still be there)."""
    rng = np.random.default_rng(11)
    folder = tmp_path_factory.mktemp("sites")
    frames = {}
    for s, n in (("a", 12), ("b", 9), ("c", 15), ("d", 7)):
        ward = rng.choice(["a", "b"] if s == "d" else ["a", "b", "c"], n)
        age = rng.normal(50, 10, n).round(1)
        y = rng.normal(0.3 * (ward == "b") + 0.02 * (age - 50), 1.0).round(3)
        frames[s] = pd.DataFrame({"age": age, "ward": ward, "y": y})
        frames[s].to_csv(folder / f"{s}.csv", index=False)
    return folder, frames


def _run_config(folder, schema, tmp_path):
    return {
        "data": str(folder),
        "formula": FORMULA,
        "schema": json.dumps(schema.to_dict()),
        "model": "linear",
        "method": "one-shot",
        "sites": "global",
        "global-method": "laplace",
        "num-chains": 2,
        "num-samples": 50,
        "standardize": True,
        "round-timeout-s": 0.2,
        "poll-interval-s": 0.01,
        "out": str(tmp_path / "fit"),
    }


@pytest.mark.slow
def test_nodes_reading_their_own_files_equal_the_in_process_formula_fit(site_files, tmp_path):
    folder, frames = site_files
    # the schema from the sites' level sets (what deploy_local.py --formula sends)
    schema = Schema.from_clients(FORMULA, {s: f.assign(site=s) for s, f in frames.items()})
    assert schema.features == ("age", "C(ward)[b]", "C(ward)[c]")
    run_config = _run_config(folder, schema, tmp_path)
    nodes = [
        {"partition-id": i, "data-path": str(folder / f"{s}.csv")} for i, s in enumerate(frames)
    ]
    settings = FlowerSettings.from_run_config(run_config)
    result = run_from_settings(FakeGrid(client_app(), nodes, run_config), settings)
    long = pd.concat([f.assign(site=s) for s, f in frames.items()], ignore_index=True)
    fm = from_formula(FORMULA, long, family="linear", standardize=True)
    ref = fit_one_shot(
        fm.model, fm.data, sites="global", global_method="laplace", num_chains=2,
        num_samples=50, progress=False,
    )  # fmt: skip
    assert result.clients == ref.clients == ("a", "b", "c", "d")
    for name, v in {**ref.phi, **ref.theta}.items():
        np.testing.assert_allclose(result.phi.get(name, result.theta.get(name)), v,
                                   rtol=1e-6, atol=1e-9, err_msg=name)  # fmt: skip
    assert result.model.coords["beta"] == ("age", "C(ward)[b]", "C(ward)[c]")


def test_a_node_file_needs_the_schema_and_its_levels(site_files, tmp_path):
    folder, frames = site_files
    schema = Schema.from_clients(FORMULA, {s: f.assign(site=s) for s, f in frames.items()})
    run_config = {**_run_config(folder, schema, tmp_path), "schema": ""}
    from bayes_pfl.flower.config import load_client_data

    settings = FlowerSettings.from_run_config(run_config)
    node = {"partition-id": 0, "data-path": str(folder / "a.csv")}
    with pytest.raises(DataError, match="needs the federation's schema"):
        load_client_data(settings, node)
    # a schema that lacks a level this node holds: named, never a new column
    narrow = Schema.from_clients(FORMULA, {"d": frames["d"].assign(site="d")})
    settings = FlowerSettings.from_run_config(_run_config(folder, narrow, tmp_path))
    with pytest.raises(DataError, match=r"client 'a': column 'ward' has level\(s\) \('c',\)"):
        load_client_data(settings, node)


def test_the_app_declares_every_setting():
    """Flower refuses a run-config key the app's pyproject does not declare ("Invalid run
    configuration"): every FlowerSettings field must be there, with the field's default."""
    import dataclasses
    import tomllib
    from pathlib import Path

    app = Path(__file__).resolve().parents[1] / "examples" / "flower_app" / "pyproject.toml"
    declared = tomllib.loads(app.read_text())["tool"]["flwr"]["app"]["config"]
    fields = {f.name.replace("_", "-"): f.default for f in dataclasses.fields(FlowerSettings)}
    assert set(declared) == set(fields)
    defaults = {"data", "missing", "standardize", "jax-cache-dir"}  # the app's own choices
    for key, value in declared.items():
        if key not in defaults:
            assert value == fields[key], key
