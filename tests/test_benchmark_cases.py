"""The benchmark federations of benchmarks/cases.py build, fit their models and describe themselves."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from cases import CASES, REFERENCE  # noqa: E402

from bayes_pfl.centralized import check_model_data  # noqa: E402
from bayes_pfl.data import FederatedData  # noqa: E402
from bayes_pfl.spec import HierarchicalModel  # noqa: E402

SETTINGS = {"num_chains", "num_warmup", "num_samples", "target_accept_prob", "max_tree_depth"}


def test_reference_settings():
    assert set(REFERENCE) == set(CASES)
    assert REFERENCE["big1000"] is None
    for name, settings in REFERENCE.items():
        if settings is not None:
            assert set(settings) == SETTINGS, name


@pytest.mark.parametrize("name", [c for c in CASES if c != "big1000"])
def test_case_builds(name):
    model, data, desc = CASES[name]()
    assert isinstance(model, HierarchicalModel) and isinstance(data, FederatedData)
    check_model_data(model, data)
    assert data.test is None and data.val is None  # every row is a training row
    assert desc["clients"] == data.n_clients
    assert desc["rows"] == int(data.n_rows().sum())
    json.dumps(desc)  # JSON-able
    assert np.isfinite(data.train.x).all() and np.isfinite(data.train.y).all()


def test_case_sizes():
    _, _, d = CASES["synth150"]()
    assert (d["clients"], d["min_rows"], d["median_rows"], d["max_rows"]) == (150, 3, 17, 180)
    assert d["clients_with_le_5_rows"] >= 5 and "make_federation(" in d["generator"]
    assert set(d["true_phi"]) == {"mu", "tau"}
    _, data, _ = CASES["hospitals4"]()
    assert data.n_rows().tolist() == [20, 60, 150, 300] and data.n_features == 10
    _, data, d = CASES["heart"]()
    assert d["rows"] == 740 and data.n_features == 10
    assert np.all(data.feature_scale > 0)
    _, data, _ = CASES["sleepstudy"]()
    assert abs(data.train.x[data.train.mask].mean()) < 1e-12  # Days standardized
