"""The comparison statistics of the benchmark scripts (benchmarks/_common.py)."""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from _common import compare, sd_range_text, sd_verdict  # noqa: E402


def _stats(sd, mean, ess):
    sd, mean = np.asarray(sd, float), np.asarray(mean, float)
    return {
        "v": {
            "labels": ["a", "b", "c"],
            "mean": mean,
            "sd": sd,
            "mcse_mean": sd / np.sqrt(ess),
            "mcse_sd": sd / np.sqrt(2 * ess),  # Gaussian draws
        }
    }


def test_compare_reports_monte_carlo_error_of_sd_ratios():
    ref = _stats([1.0, 1.0, 2.0], [0.0, 0.0, 0.0], ess=1000)
    fit = _stats([1.2, 1.0, 2.5], [0.05, 0.3, 0.0], ess=1000)
    c = compare(fit, ref, {}, 0.1, (0.9, 1.1))
    assert c["worst_z"]["at"] == "b" and np.isclose(c["worst_z"]["z"], 0.3)
    assert np.isclose(c["worst_z"]["noise_z"], np.sqrt(2 / 1000))
    assert not c["z_pass"] and not c["sd_pass"]
    # r = 1.25 at c: se = 1.25 sqrt(2 / 2000) = 0.0395; 0.15 beyond 1.1 is 3.8 se
    assert c["sd_ratio_max"]["at"] == "c"
    assert np.isclose(c["sd_ratio_max"]["noise_r"], 1.25 * np.sqrt(2 / 2000))
    # r = 1.2 at a is 0.1 beyond 1.1, 2.6 se: explained by Monte Carlo error
    assert c["n_sd_fail_3se"] == 1
    assert c["per_variable"]["v"]["n_sd_fail"] == 2
    text = sd_range_text(c["sd_ratio_min"], c["sd_ratio_max"])
    assert text == "1.000 ±0.032 (`b`) - 1.250 ±0.040 (`c`)"
    assert sd_verdict(c) == "**FAIL** (1 beyond 3 se)"
    # stats saved before mcse_sd existed: no noise figure, no count (unknown, not zero)
    for s in (ref["v"], fit["v"]):
        del s["mcse_sd"]
    c = compare(fit, ref, {}, 0.1, (0.9, 1.1))
    assert c["n_sd_fail_3se"] is None and np.isnan(c["sd_ratio_max"]["noise_r"])
    assert sd_range_text(c["sd_ratio_min"], c["sd_ratio_max"]) == "1.000 (`b`) - 1.250 (`c`)"
    assert sd_verdict(c) == "**FAIL**"
    assert sd_verdict(compare(ref, ref, {}, 0.1, (0.9, 1.1))) == "PASS"


def test_detection_bound_marginal_likelihood_equals_a_double_integral():
    """benchmarks/detection_bound.py's adaptive Gauss-Hermite marginal likelihood of a
    logistic client under a Normal population, against scipy's dblquad, near and far
    from the client's own estimate (the attacker hypothesis sits far). 1e-6 is far below
    what ranks clients (their log likelihood ratios differ by tenths); 12 nodes per axis,
    the script's default, measured 1e-7 here."""
    from detection_bound import _log_joint, gauss_hermite_2d, log_marginal
    from scipy import integrate

    rng = np.random.default_rng(3)
    x = rng.normal(size=40)
    y = (rng.uniform(size=40) < 1 / (1 + np.exp(-(0.3 + 1.0 * x)))).astype(int)
    sd = np.array([0.5, 0.5])
    for mean in (np.array([0.3, 1.0]), np.array([-0.3, -1.0])):

        def f(b1, b0, mean=mean):
            return np.exp(_log_joint(np.array([[b0, b1]]), x, y, mean, sd)[0] + 40.0)

        exact, _ = integrate.dblquad(
            f, *(mean[0] + 8 * sd[0] * np.array([-1, 1])),
            *(mean[1] + 8 * sd[1] * np.array([-1, 1])), epsabs=0, epsrel=1e-10,
        )  # fmt: skip
        got = log_marginal(x, y, mean, sd, gauss_hermite_2d(12))
        assert abs(got - (np.log(exact) - 40.0)) < 1e-6
