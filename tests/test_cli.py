"""The bayes-pfl command line, run as users run it (a subprocess)."""

import json
import subprocess

import pandas as pd
import pytest
import xarray as xr
from _helpers import CLI, cli_env, run_cli

from bayes_pfl import load

# a short fit: two chains of 300 warm-up and 300 kept draws, no progress bar
QUICK = ("--chains", "2", "--warmup", "300", "--samples", "300", "--no-progress")


def csv_args(csv, client_col="school", target="y", features="sigma"):
    """``--data CSV`` and the column options that read it."""
    return ("--data", str(csv), "--client-col", client_col, "--target", target,
            "--features", features)  # fmt: skip


def test_help_everywhere():
    for args in ([], ["fit"], ["demo"], ["datasets"], ["models"]):
        r = run_cli(*args, "--help")
        assert r.returncode == 0, r.stderr
        assert "usage: bayes-pfl" in r.stdout


@pytest.mark.slow
def test_fit_radon_nuts_writes_three_files(tmp_path):
    out = tmp_path / "radon"
    r = run_cli(
        "fit",
        "--data",
        "radon",
        "--model",
        "radon_intercept",
        "--method",
        "nuts",
        "--out",
        str(out),
        "--no-progress",
    )
    assert r.returncode == 0, r.stderr
    names = {p.name for p in out.iterdir()}
    assert names == {"posterior.nc", "summary.csv", "run.json", "shrinkage.csv", "loo.csv"}
    summary = pd.read_csv(out / "summary.csv", index_col=0)
    assert summary["r_hat"].max() <= 1.01
    assert "alpha[AITKIN]" in summary.index and "sigma_y" in summary.index
    assert {"mean", "sd", "r_hat", "ess_bulk"} <= set(summary.columns)
    dt = xr.open_datatree(out / "posterior.nc")
    assert dt.posterior.sizes["client"] == 85
    run = json.loads((out / "run.json").read_text())
    assert run["method"] == "nuts" and run["seed"] == 0 and run["wall_time_s"] > 0
    assert "AITKIN" in r.stdout  # the per-county table


@pytest.mark.slow
def test_fit_csv_and_clear_errors(tmp_path):
    df = load("eight_schools")
    csv = tmp_path / "schools.csv"
    df.to_csv(csv, index=False)
    out = tmp_path / "out"
    r = run_cli("fit", *csv_args(csv), "--model", "eight_schools", "--out", str(out), *QUICK)
    assert r.returncode == 0, r.stderr
    assert (out / "posterior.nc").exists()

    r = run_cli(
        "fit", *csv_args(csv, features="sigma,nope"), "--model", "eight_schools", "--out", str(out)
    )
    assert r.returncode == 2 and "nope" in r.stderr

    r = run_cli("fit", "--data", "no_such_thing", "--out", str(out))
    assert r.returncode == 2 and "'no_such_thing': file not found" in r.stderr

    r = run_cli("fit", *csv_args(csv), "--out", str(out))
    assert r.returncode == 2 and "--model is required for a CSV" in r.stderr

    bad = tmp_path / "gaps.csv"
    df.assign(sigma=df["sigma"].where(df["school"] != "A")).to_csv(bad, index=False)
    r = run_cli("fit", *csv_args(bad), "--model", "eight_schools", "--out", str(out))
    assert r.returncode == 2 and "pass --missing drop" in r.stderr and "missing=" not in r.stderr

    r = run_cli("--version")
    assert r.returncode == 0 and r.stdout.startswith("bayes-pfl 0.")

    r = run_cli("fit", "--data", "radon", "--model", "eight_schools", "--out", str(out))
    assert r.returncode == 2 and "sigma" in r.stderr


def test_datasets_and_models_listing():
    r = run_cli("datasets")
    assert r.returncode == 0 and "radon" in r.stdout and "heart_disease" in r.stdout
    r = run_cli("models")
    assert r.returncode == 0 and "radon_intercept" in r.stdout


@pytest.mark.slow
@pytest.mark.parametrize("method", ["one-shot", "ep", "vi"])
def test_fit_federated_methods(tmp_path, method):
    out = tmp_path / method
    r = run_cli(
        "fit", "--data", "eight_schools", "--method", method, "--rounds", "3", "--out", str(out),
        *QUICK,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    names = {p.name for p in out.iterdir()}
    # a federated fit also writes each client's conflict score (docs/robustness.md)
    assert names == {
        "posterior.nc", "summary.csv", "run.json", "shrinkage.csv", "loo.csv", "conflict.csv"
    }  # fmt: skip
    run = json.loads((out / "run.json").read_text())
    assert run["method"] == method
    assert run["conflict"]["flagged"] == [] and run["conflict"]["duplicates"] == []
    assert 1 <= len(run["history"]) <= (1 if method == "one-shot" else 3)
    assert {"mean_change", "bytes_up_per_client", "bytes_down_per_client"} <= set(run["history"][0])
    dt = xr.open_datatree(out / "posterior.nc")
    assert list(dt.posterior.client.values) == list("ABCDEFGH")
    assert "fit_history" in dt.children


def test_compare_subcommand_dispatches_to_the_harness(capsys):
    from bayes_pfl.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["compare", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--methods" in out


def _hospital_csv(tmp_path, outcome):
    import numpy as np

    rng = np.random.default_rng(0)
    n = 60
    df = pd.DataFrame(
        {
            "hospital": np.repeat(["H1", "H2", "H3"], n // 3),
            "age": rng.normal(size=n),
            "outcome": outcome(rng, n),
        }
    )
    csv = tmp_path / "hospitals.csv"
    df.to_csv(csv, index=False)
    return csv


@pytest.mark.parametrize("method", ["nuts", "ep", "one-shot", "vi"])
def test_outcome_outside_the_likelihood_support_is_a_clear_error(tmp_path, method):
    """A 1/2-coded outcome for a Bernoulli likelihood: every method stops with an error
    naming the column, the values and the support (EP reported 'converged' over a prior;
    NUTS a 30-line numpyro traceback)."""
    csv = _hospital_csv(tmp_path, lambda rng, n: rng.integers(1, 3, n))
    r = run_cli(
        "fit", *csv_args(csv, client_col="hospital", target="outcome", features="age"),
        "--model", "logistic", "--method", method, "--out", str(tmp_path / "out"), "--no-progress",
    )  # fmt: skip
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "'outcome'" in r.stderr and "{0, 1}" in r.stderr and "2" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "out" / "posterior.nc").exists()


@pytest.mark.parametrize(
    "option, value",
    [
        ("--rounds", "0"),
        ("--rounds", "-3"),
        ("--chains", "0"),
        ("--samples", "0"),
        ("--warmup", "-1"),
        ("--steps", "0"),
        ("--rounds", "two"),
    ],
)
def test_counts_are_validated(tmp_path, option, value):
    r = run_cli(
        "fit", "--data", "eight_schools", "--method", "ep", option, value,
        "--out", str(tmp_path / "out"),
    )  # fmt: skip
    assert r.returncode == 2 and option in r.stderr, r.stderr
    assert ("at least" in r.stderr) or ("integer" in r.stderr)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_diagnostics_warn_on_the_console_and_strict_fails(tmp_path):
    """Every method's diagnostics reach the console; ``--strict`` turns them into exit 3.
    One chain: r_hat is 'n/a', one warning line, no numpy RuntimeWarning."""
    r = run_cli(
        "fit", "--data", "eight_schools", "--chains", "1", "--warmup", "100", "--samples", "100",
        "--out", str(tmp_path / "one"), "--no-progress", "--strict",
    )  # fmt: skip
    assert r.returncode == 3, r.stderr
    assert "n/a (1 chain)" in r.stdout and "one chain: r_hat cannot be computed" in r.stderr
    assert "RuntimeWarning" not in r.stderr and "--strict" in r.stderr
    assert (tmp_path / "one" / "posterior.nc").exists()  # the fit is still written

    args = ["fit", "--data", "eight_schools", "--method", "vi", "--rounds", "1", "--chains", "2",
            "--samples", "300", "--no-progress"]  # fmt: skip
    r = run_cli(*args, "--out", str(tmp_path / "vi"))
    assert r.returncode == 0, r.stderr
    assert "warning: VI did not converge in 1 round(s)" in r.stderr
    r = run_cli(*args, "--out", str(tmp_path / "vi2"), "--strict")
    assert r.returncode == 3 and "VI did not converge" in r.stderr


@pytest.mark.slow
def test_output_folder_is_refused_when_not_empty_and_replaced_whole(tmp_path):
    out = tmp_path / "fit"
    out.mkdir()
    (out / "report.html").write_text("an earlier fit's report")
    args = ["fit", "--data", "eight_schools", "--chains", "2", "--warmup", "100",
            "--samples", "100", "--no-progress", "--out", str(out)]  # fmt: skip
    r = run_cli(*args)
    assert (
        r.returncode == 2 and "is not empty (report.html)" in r.stderr and "--overwrite" in r.stderr
    )
    assert sorted(p.name for p in out.iterdir()) == ["report.html"]  # untouched
    r = run_cli(*args, "--overwrite")
    assert r.returncode == 0, r.stderr
    names = sorted(p.name for p in out.iterdir())
    assert "report.html" not in names and "posterior.nc" in names  # replaced, not mixed
    assert [p.name for p in tmp_path.iterdir()] == ["fit"]  # no temporary folder left


@pytest.mark.slow
def test_an_interrupted_fit_leaves_nothing_behind(tmp_path):
    """Ctrl-C during sampling: one line, exit 130, no output folder, no partial folder."""
    import signal
    import time

    out = tmp_path / "fit"
    # as from a terminal: SIGINT at its default disposition (a library imported by an earlier
    # test in this worker may have set it to "ignore", which children inherit)
    p = subprocess.Popen(
        [*CLI, "fit", "--data", "radon", "--samples", "100000", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(),
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    deadline = time.time() + 120
    while time.time() < deadline and not any(tmp_path.iterdir()):
        time.sleep(0.5)  # the temporary folder appears once the data and model are loaded
    time.sleep(3)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert "interrupted; nothing was written" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_no_progress_bar_escape_codes_in_a_log_file(tmp_path):
    """stderr is a pipe here (as in a log file): no bar is drawn, without --no-progress."""
    r = run_cli("fit", "--data", "eight_schools", "--method", "one-shot", "--chains", "2",
                "--samples", "200", "--out", str(tmp_path / "fit"))  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "\r" not in r.stderr and "it/s" not in r.stderr and "round/s" not in r.stderr


@pytest.mark.slow
def test_checkpoint_and_resume_from_the_command_line(tmp_path):
    ck = tmp_path / "ck" / "rounds"
    ck.parent.mkdir()
    args = ["fit", "--data", "radon", "--method", "ep", "--chains", "2", "--samples", "200",
            "--checkpoint", str(ck)]  # fmt: skip
    r = run_cli(*args, "--rounds", "1", "--out", str(tmp_path / "a"))
    assert r.returncode == 0, r.stderr
    first = json.loads(ck.with_suffix(".json").read_text())
    r = run_cli(*args, "--rounds", "3", "--resume", "--out", str(tmp_path / "b"))
    assert r.returncode == 0, r.stderr
    resumed = json.loads(ck.with_suffix(".json").read_text())
    h0, h1 = first, resumed
    assert len(h0) == 1 and len(h1) >= 2
    assert h1[0]["wall_time_s"] == h0[0]["wall_time_s"]  # continued, not restarted
    r = run_cli("fit", "--data", "radon", "--resume", "--out", str(tmp_path / "c"))
    assert r.returncode == 2 and "--resume needs --checkpoint" in r.stderr


@pytest.mark.slow
def test_a_feature_warning_is_shown_once(tmp_path):
    """The command line checks the data before refusing or writing the output folder and
    the fit checks it again: the constant-feature warning still appears once."""
    df = load("eight_schools").assign(const=1.0)
    csv = tmp_path / "schools.csv"
    df.to_csv(csv, index=False)
    r = run_cli("fit", *csv_args(csv, features="sigma,const"), "--model", "linear",
                "--method", "one-shot", "--chains", "2", "--samples", "200",
                "--out", str(tmp_path / "fit"))  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("['const'] are constant") == 1, r.stderr


@pytest.mark.slow
def test_fit_varying_slopes_names_every_term_and_the_model(tmp_path):
    """sleepstudy with --varying slopes: the model is called as asked, every coefficient is
    labelled by its term in the files and the printed table, which stays short."""
    out = tmp_path / "sleep"
    r = run_cli("fit", "--data", "sleepstudy", "--model", "linear", "--varying", "slopes",
                "--chains", "2", "--warmup", "150", "--samples", "150", "--no-progress",
                "--out", str(out))  # fmt: skip
    assert r.returncode == 0, r.stderr
    run = json.loads((out / "run.json").read_text())
    assert run["model"] == "linear" and "client-varying slopes" in run["model_description"]
    assert run["coords"]["b"] == ["Intercept", "Days"]
    summary = pd.read_csv(out / "summary.csv", index_col=0)
    assert {"b[308, Days]", "b[308, Intercept]", "mu[Days]", "tau[Intercept]"} <= set(summary.index)
    shrink = pd.read_csv(out / "shrinkage.csv")
    assert list(shrink["term"].unique()) == ["Intercept", "Days"] and len(shrink) == 2 * 18
    assert (
        "linear: per-client b (posterior mean, sd, 90% interval, terms Intercept, Days)" in r.stdout
    )
    assert "Days" in r.stdout and "6 more row(s)" in r.stdout  # 36 rows, 30 printed
