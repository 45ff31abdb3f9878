"""Every metric against a value computed by hand, masking, and bad input."""

import math

import numpy as np
import pytest

from bayes_pfl import metrics as M
from bayes_pfl.plots import plot_calibration

MASK = np.array([[True, True, False], [True, False, False]])
P = np.array([[0.9, 0.2, np.nan], [0.6, np.nan, 7.0]])  # garbage on padded rows
Y = np.array([[1.0, 0.0, 5.0], [0.0, 3.0, 0.0]])


def test_log_mean_exp_draws_by_hand():
    ll = np.log(np.array([[0.2, 0.5], [0.6, 0.5]]))
    np.testing.assert_allclose(np.exp(M.log_mean_exp_draws(ll)), [0.4, 0.5])
    # (chain, draw) axes together; huge negative values stay stable
    ll4 = np.log(np.array([0.1, 0.3, 0.2, 0.4])).reshape(2, 2, 1) - 1000.0
    np.testing.assert_allclose(M.log_mean_exp_draws(ll4, axis=(0, 1)), [math.log(0.25) - 1000.0])


def test_log_predictive_density_by_hand():
    lpd = np.log(np.array([[0.5, 0.25, 1.0], [0.8, 0.1, 0.1]]))
    got = M.log_predictive_density(lpd, MASK)
    np.testing.assert_allclose(got, [(math.log(0.5) + math.log(0.25)) / 2, math.log(0.8)])


def test_log_loss_binary_and_categorical_by_hand():
    got = M.log_loss(P, Y, MASK)
    np.testing.assert_allclose(got, [-(math.log(0.9) + math.log(0.8)) / 2, -math.log(0.4)])
    probs = np.array([[[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]]])
    got = M.log_loss(probs, np.array([[0, 2]]), np.ones((1, 2), bool))
    np.testing.assert_allclose(got, [-(math.log(0.7) + math.log(0.6)) / 2])
    # a confident wrong prediction costs -log(EPS), not infinity
    hard = M.log_loss(np.array([[0.0]]), np.array([[1.0]]), np.array([[True]]))
    np.testing.assert_allclose(hard, [-math.log(M.EPS)])


def test_accuracy_by_hand():
    np.testing.assert_allclose(M.accuracy(P, Y, MASK), [1.0, 0.0])
    # 0.5 predicts class 0
    np.testing.assert_allclose(M.accuracy(np.array([[0.5]]), np.array([[0.0]]), [[True]]), [1.0])
    probs = np.array([[[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.2, 0.5, 0.3]]])
    got = M.accuracy(probs, np.array([[0, 2, 2]]), np.ones((1, 3), bool))
    np.testing.assert_allclose(got, [2 / 3])


def test_brier_by_hand():
    np.testing.assert_allclose(M.brier_score(P, Y, MASK), [(0.01 + 0.04) / 2, 0.36])
    probs = np.array([[[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]]])
    got = M.brier_score(probs, np.array([[0, 2]]), np.ones((1, 2), bool))
    # (0.09 + 0.04 + 0.01 + 0.01 + 0.09 + 0.16) / 2
    np.testing.assert_allclose(got, [0.2])


def test_ece_by_hand_and_matches_plot_calibration():
    p = np.array([[0.05, 0.15, 0.85, 0.95, 0.9]])
    y = np.array([[0.0, 0.0, 1.0, 1.0, 0.0]])
    mask = np.ones_like(y, bool)
    # bins of width 0.1: 0.05 | 0.15 | 0.85 | {0.95, 0.9} -> (0.05 + 0.15 + 0.15 + 2*0.425) / 5
    np.testing.assert_allclose(M.expected_calibration_error(p, y, mask), [0.24])
    # two bins: |0 - 0.1| * 2 + |2/3 - 0.9| * 3 over 5
    np.testing.assert_allclose(M.expected_calibration_error(p, y, mask, n_bins=2), [0.18])
    for bins in (2, 10):
        ref = plot_calibration(p[0], y[0], n_bins=bins).extra["ece"]
        np.testing.assert_allclose(M.expected_calibration_error(p, y, mask, n_bins=bins), [ref])
    # categorical: top-label confidence vs accuracy, one bin
    probs = np.array([[[0.8, 0.2], [0.4, 0.6]]])
    got = M.expected_calibration_error(probs[..., :], np.array([[0, 0]]), mask[:, :2], n_bins=1)
    np.testing.assert_allclose(got, [abs(0.5 - 0.7)])


def test_rmse_and_coverage_by_hand():
    mask = np.array([[True, True, False]])
    np.testing.assert_allclose(
        M.rmse(np.array([[1.0, 2.0, 9.0]]), np.array([[2.0, 4.0, 0.0]]), mask), [math.sqrt(2.5)]
    )
    lo, hi = np.zeros((1, 3)), np.ones((1, 3))
    got = M.interval_coverage(lo, hi, np.array([[0.5, 2.0, 1.0]]), np.ones((1, 3), bool))
    np.testing.assert_allclose(got, [2 / 3])  # the boundary counts as inside


def test_client_without_rows_is_nan():
    mask = np.array([[True], [False]])
    got = M.log_loss(np.array([[0.7], [0.1]]), np.array([[1.0], [0.0]]), mask)
    assert np.isnan(got[1]) and np.isfinite(got[0])
    assert np.isnan(
        M.expected_calibration_error(np.array([[0.7], [0.1]]), np.zeros((2, 1)), mask)[1]
    )


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: M.log_loss(np.array([[1.5]]), np.array([[1.0]]), [[True]]), "in \\[0, 1\\]"),
        (lambda: M.accuracy(np.array([[0.5]]), np.array([[2.0]]), [[True]]), "class labels"),
        (lambda: M.brier_score(np.zeros((1, 2)), np.zeros((1, 3)), np.ones((1, 3))), "shape"),
        (lambda: M.rmse(np.zeros((1, 2)), np.zeros((1, 2)), np.ones((2, 2), bool)), "mask"),
        (lambda: M.expected_calibration_error(P, Y, MASK, n_bins=0), "n_bins"),
        (lambda: M.log_predictive_density(np.zeros(3), np.ones(3, bool)), "clients, rows"),
    ],
)
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_calibrated_ece_matches_the_binomial_closed_form():
    """One bin (p = 0.5 for every row): the calibrated ECE is E|k/n - 1/2|, k ~ Bin(n, 1/2)."""
    from math import comb

    n, reps = 20, 4000
    exact = sum(comb(n, k) * 0.5**n * abs(k / n - 0.5) for k in range(n + 1))
    got = M.calibrated_ece(np.full((1, n), 0.5), np.ones((1, n), bool), reps=reps, seed=1)
    # Monte Carlo sd of |k/n - 1/2| is below 0.12: 4 standard errors
    assert abs(got[0] - exact) < 4 * 0.12 / np.sqrt(reps)


def test_calibrated_ece_shrinks_with_rows_and_vanishes_for_certain_predictions():
    rng = np.random.default_rng(0)
    small = rng.dirichlet(np.full(10, 0.3), size=(2, 25))
    large = rng.dirichlet(np.full(10, 0.3), size=(2, 2500))
    f_small = M.calibrated_ece(small, np.ones((2, 25), bool), reps=50)
    f_large = M.calibrated_ece(large, np.ones((2, 2500), bool), reps=50)
    assert np.all(f_large < f_small / 4)  # ~ 1/sqrt(n): 10x more rows per bin
    certain = np.eye(10)[rng.integers(0, 10, size=(3, 7))]
    np.testing.assert_array_equal(M.calibrated_ece(certain, np.ones((3, 7), bool)), 0.0)


def test_calibrated_ece_ignores_padded_rows_and_rejects_bad_input():
    rng = np.random.default_rng(2)
    p1 = rng.uniform(size=(3, 12))
    mask = rng.uniform(size=(3, 12)) < 0.7
    mask[2] = False  # a client without rows: NaN, as expected_calibration_error
    binary = M.calibrated_ece(p1, mask, reps=30, seed=4)
    assert np.all(binary[:2] > 0) and np.isnan(binary[2])
    garbage = np.where(mask, p1, np.nan)  # padded rows may hold anything
    np.testing.assert_array_equal(M.calibrated_ece(garbage, mask, reps=30, seed=4), binary)
    bad = p1.copy()
    bad[0, np.argmax(mask[0])] = 1.5  # a real row outside [0, 1]
    with pytest.raises(ValueError, match="finite"):
        M.calibrated_ece(bad, mask)
    with pytest.raises(ValueError, match="reps"):
        M.calibrated_ece(p1, mask, reps=0)
    with pytest.raises(ValueError, match="shape"):
        M.calibrated_ece(p1[0], mask[0])
