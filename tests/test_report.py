"""The HTML report of a fit folder, checked by content and opened in headless Chromium."""

import shutil
import subprocess

import pytest
from _helpers import federation_data, nuts

from bayes_pfl import save_fit
from bayes_pfl.cli import main
from bayes_pfl.models import eight_schools, logistic
from bayes_pfl.report import shrinkage_for_fit, write_report
from bayes_pfl.synthetic import make_federation


@pytest.fixture(scope="module")
def schools_dir(tmp_path_factory, schools):
    out = tmp_path_factory.mktemp("schools")
    fit = nuts(eight_schools(), schools, chains=2, warmup=500, samples=500)
    save_fit(fit, schools, out)
    shrinkage_for_fit(fit.to_datatree(schools), schools).to_csv(out / "shrinkage.csv")
    return out


def test_report_sections_and_embedded_figures(schools_dir):
    path = write_report(schools_dir)
    page = path.read_text()
    for section in ("Run", "Diagnostics", "Shrinkage", "Per-client theta", "PSIS-LOO per client"):
        assert f"<h2>{section}" in page
    assert page.count("data:image/png;base64,") == 2  # shrinkage + forest, self-contained
    assert {p.name for p in (schools_dir / "figures").iterdir()} == {
        "shrinkage.png",
        "forest_theta.png",
    }
    for school in "ABCDEFGH":
        assert f"<th>{school}</th>" in page


@pytest.mark.slow
def test_report_calibration_for_binary_target(tmp_path):
    fed = make_federation(family="bernoulli", n_clients=6, n_features=2, sizes=40, seed=5)
    data = federation_data(fed, test_size=0.25, seed=0)
    fit = nuts(logistic(2), data, chains=2, warmup=300, samples=300)
    save_fit(fit, data, tmp_path)
    page = write_report(tmp_path).read_text()
    assert "Calibration on held-out rows" in page and "Expected calibration error" in page
    assert (tmp_path / "figures" / "calibration.png").stat().st_size > 5000


def test_cli_report(schools_dir, capsys):
    assert main(["report", str(schools_dir)]) == 0
    out = capsys.readouterr().out
    assert "shrinkage" in out and "report.html" in out
    assert main(["report", str(schools_dir / "nope")]) == 2
    assert "no posterior.nc" in capsys.readouterr().err


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")
def test_report_opens_in_headless_chromium(schools_dir, tmp_path):
    path = write_report(schools_dir)
    r = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--dump-dom",
            path.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    dom = r.stdout
    assert "<h1>bayes-pfl report: eight_schools (nuts)</h1>" in dom
    assert dom.count("<img") == 2
    assert "ERR_" not in r.stderr  # no failed loads: the page is self-contained


def test_cli_report_prints_a_short_table(schools_dir, tmp_path, capsys):
    """A long shrinkage table: ``bayes-pfl report`` prints its first rows and says where the
    rest is (it printed every row: 320 for a school-data fit)."""
    import pandas as pd

    from bayes_pfl.cli import REPORT_ROWS

    folder = tmp_path / "fit"
    shutil.copytree(schools_dir, folder)
    table = pd.read_csv(folder / "shrinkage.csv", index_col=0)
    long = pd.concat([table] * 5, keys=range(5)).reset_index(level=0, drop=True)
    long.index = [f"c{i}" for i in range(len(long))]
    long.to_csv(folder / "shrinkage.csv")
    assert main(["report", str(folder)]) == 0
    out = capsys.readouterr().out
    assert f"c{REPORT_ROWS - 1} " in out and f"c{REPORT_ROWS} " not in out
    assert f"{len(long) - REPORT_ROWS} more row(s)" in out


def test_report_of_varying_slopes_names_terms_and_failed_clients(tmp_path):
    """A slopes GLM over 45 clients: a panel per term, every client's terms in shrinkage.csv
    (summarized by term on the page), and the client whose local inference failed named."""
    import json

    import numpy as np
    import pandas as pd

    from bayes_pfl import FederatedData
    from bayes_pfl.models import get_model
    from bayes_pfl.results import FitResult

    rng = np.random.default_rng(0)
    clients = [f"c{i:02d}" for i in range(45)]
    df = pd.DataFrame(rng.normal(size=(45 * 6, 2)), columns=["age", "bmi"])
    df["hospital"], df["y"] = np.repeat(clients, 6), rng.normal(size=45 * 6)
    data = FederatedData.from_pandas(df, client_col="hospital", target="y", features=["age", "bmi"])
    model = get_model("linear", 2, varying="slopes", feature_names=("age", "bmi"))
    phi = {s.name: np.abs(rng.normal(size=(2, 30, *s.shape))) for s in model.phi_space.sites}
    theta = {"b_raw": rng.normal(size=(2, 30, 45, 3)), "b": rng.normal(size=(2, 30, 45, 3))}
    history = [
        {
            "round": r,
            "failed": failed,
            "rejected": [],
            "n_rejected": 0,
            "mean_change": 0.1,
            "sd_change": 0.1,
        }  # fmt: skip
        for r, failed in ((1, []), (2, ["c07"]), (3, []))
    ]
    fit = FitResult("ep", model, tuple(clients), phi, theta, history=history)
    save_fit(fit, data, tmp_path)
    shrinkage_for_fit(fit.to_datatree(data), data).to_csv(tmp_path / "shrinkage.csv")
    page = write_report(tmp_path).read_text()
    assert "<h1>bayes-pfl report: linear (ep)</h1>" in page
    assert "client-varying slopes" in page  # the model's description
    assert "local inference failed on client(s) &#x27;c07&#x27; (rounds [2])" in page
    assert "pass the FitResult" not in page
    assert "135 rows: a summary per term here" in page  # 45 clients x 3 terms
    for term in ("Intercept", "age", "bmi"):
        assert f"<th>{term}</th>" in page
    assert "only the 20 lowest and 20 highest of each panel are named" in page
    table = pd.read_csv(tmp_path / "shrinkage.csv")
    assert list(table["term"].unique()) == ["Intercept", "age", "bmi"]
    assert json.loads((tmp_path / "run.json").read_text())["history"][1]["failed"] == ["c07"]


def test_without_the_pointwise_log_likelihood_the_report_keeps_loo(schools_dir, schools, tmp_path):
    """``save_fit(log_likelihood=False)`` (the CLI's default): posterior.nc has no
    log_likelihood group, loo.csv and run.json hold the per-client PSIS-LOO computed at
    save time, and the report shows the same table as from the full posterior."""
    import json

    import pandas as pd
    import xarray as xr

    from bayes_pfl.inspection import loo_by_client
    from bayes_pfl.results import load_posterior

    fit = nuts(eight_schools(), schools, chains=2, warmup=300, samples=300)
    paths = save_fit(fit, schools, tmp_path, log_likelihood=False)
    dt = xr.open_datatree(paths["posterior"])
    assert "log_likelihood" not in dt.children and "posterior" in dt.children
    full = loo_by_client(fit.to_datatree(schools))
    saved = pd.read_csv(tmp_path / "loo.csv", index_col=0)
    pd.testing.assert_frame_equal(
        saved.reset_index(drop=True), full.table.reset_index(drop=True), check_dtype=False
    )
    run = json.loads((tmp_path / "run.json").read_text())
    assert abs(run["loo"]["elpd_loo"] - full.total.elpd) < 1e-9
    page = write_report(tmp_path).read_text()
    assert "<h2>PSIS-LOO per client" in page and f"{full.total.elpd:.2f}" in page
    assert load_posterior(paths["posterior"]).posterior["mu"].shape == (2, 300)
