"""Simulation-based calibration, the small version of benchmarks/sbc.py: centralized NUTS
on the Normal varying-intercept-and-slope federation is calibrated, and the same check
fails a posterior whose population scales are inflated (so it can fail)."""

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import sbc  # noqa: E402

SIMS = 30


@pytest.mark.slow
def test_nuts_ranks_are_uniform_and_a_miscalibrated_posterior_is_caught():
    """30 simulations; each quantity's randomized-PIT ECDF must stay inside its
    simultaneous 99% band (eight quantities: a 99% band each keeps the chance that a
    calibrated method fails any of them near 1 - 0.99^8 = 8%; the simulations are seeded,
    so the outcome is fixed). The control multiplies the posterior's ``tau`` draws by 1.6:
    the truth then falls low among them and the check must say so."""
    model = sbc.model_of("normal")
    good, inflated = [], []
    for sim in range(SIMS):
        data, truth, true_phi, true_theta = sbc.simulate("normal", sim)
        result = sbc.fit("nuts", model, data, seed=sim)
        good.append(sbc.ranks(result, model, data, truth, true_phi, true_theta))
        wide = dataclasses.replace(result, phi={**result.phi, "tau": result.phi["tau"] * 1.6})
        inflated.append(sbc.ranks(wide, model, data, truth, true_phi, true_theta))
    rng = np.random.default_rng(0)
    for q in good[0]:
        verdict = sbc.judge([r[q] for r in good], rng, prob=0.99)
        assert verdict["inside_band"], (q, verdict["mean_pit"], verdict["coverage90"])
    for q in ("tau[Intercept]", "tau[x]"):
        verdict = sbc.judge([r[q] for r in inflated], rng, prob=0.99)
        assert not verdict["inside_band"] and verdict["mean_pit"] < 0.4, q
        assert "over-estimated" in sbc.direction(verdict)
