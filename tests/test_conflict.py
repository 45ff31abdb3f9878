"""Conflict scores: a client whose data stand apart from everyone else's is named."""

import dataclasses
import warnings

import numpy as np
import pytest

from bayes_pfl.conflict import ConflictWarning, client_conflict, conflict_scores
from bayes_pfl.diagnostics import DiagnosticsWarning, diagnostics
from bayes_pfl.federated import fit_one_shot
from bayes_pfl.gaussian import GaussianFactor
from bayes_pfl.models import eight_schools


def test_score_is_the_predictive_chi2_of_the_sites_estimate():
    """One Normal observation y with known sd sigma (site precision 1/sigma^2, shift
    y/sigma^2) against a cavity N(m, c): X^2 = (y - m)^2 / (c + sigma^2), one degree of
    freedom; a site that says nothing about a direction adds no degree of freedom."""
    y, sigma, m, c = 3.0, 2.0, -1.0, 1.5
    chi2, dof = conflict_scores(
        np.array([[[1 / sigma**2]]]), np.array([[y / sigma**2]]), np.array([[m]]),
        np.array([[[c]]]),
    )  # fmt: skip
    np.testing.assert_allclose(chi2, [(y - m) ** 2 / (c + sigma**2)], rtol=1e-12)
    assert dof.tolist() == [1]
    # two effects, the site informative about the first only (a rank-1 precision)
    lam = np.array([[[4.0, 0.0], [0.0, 0.0]]])
    chi2, dof = conflict_scores(lam, np.array([[4.0 * y, 0.0]]), np.array([[m, 9.0]]),
                                np.array([[[c, 0.3], [0.3, 2.0]]]))  # fmt: skip
    np.testing.assert_allclose(chi2, [(y - m) ** 2 / (c + 0.25)], rtol=1e-12)
    assert dof.tolist() == [1]


@pytest.fixture(scope="module")
def shifted_schools(schools_outlier):
    """One-shot on eight schools plus four like them and school 'X', 60 points off."""
    return fit_one_shot(eight_schools(), schools_outlier, num_samples=400, progress=False)


@pytest.mark.slow
def test_an_obviously_shifted_client_is_flagged_and_named(shifted_schools):
    with pytest.warns(ConflictWarning, match=r"'X' \(p "):
        table = client_conflict(shifted_schools)
    assert table.index.tolist() == list(shifted_schools.clients)
    assert table["p_value"].idxmin() == "X" and table.loc["X", "flagged"]
    assert not table.drop("X")["flagged"].any()  # nobody else
    assert (table["df"] == 1).all()


@pytest.mark.slow
def test_a_crafted_site_is_named_in_diagnostics(shifted_schools):
    """A client claiming a huge precision at a shifted mean: its message is finite and
    well-formed, and the conflict score names it (the global draws are the honest fit's:
    what the server holds when the crafted message arrives)."""
    sites = shifted_schools.state["sites"]
    k = shifted_schools.clients.index("B")
    lam = np.asarray(sites.precision).copy()
    eta = np.asarray(sites.shift).copy()
    lam[k] = 1e4  # "I am certain"
    eta[k] = 1e4 * 120.0  # "... that my effect is 120" (the population: about 10 +- 20)
    crafted = dataclasses.replace(
        shifted_schools,
        state={**shifted_schools.state, "sites": GaussianFactor(lam, eta)},
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = diagnostics(crafted)
    named = [str(w.message) for w in caught if issubclass(w.category, DiagnosticsWarning)]
    assert any("'B' (p" in m and "conflict" in m for m in named)
    assert out["conflict"].loc["B", "flagged"] and not out["ok"]


def test_conflict_needs_sites_over_client_effects(schools):
    from _helpers import nuts

    fit = nuts(eight_schools(), schools, chains=1, warmup=50, samples=50)
    with pytest.raises(ValueError, match="sites over client effects"):
        client_conflict(fit)
    assert diagnostics(fit)["conflict"] is None


@pytest.mark.slow
def test_the_readout_reports_its_stages(schools, caplog):
    """The phases after the rounds (global draws, personalization) log at INFO, which the
    command line prints on a terminal (they have no progress bar)."""
    import logging

    with caplog.at_level(logging.INFO, logger="bayes_pfl"):
        fit_one_shot(eight_schools(), schools, num_samples=50, progress=False)
    messages = [r.getMessage() for r in caplog.records if r.name == "bayes_pfl.posterior"]
    assert messages[0].startswith("global draws: nuts, 4 chain(s) x 50 draws")
    assert any("personalizing 8 client(s) x 200 draws" in m for m in messages)
    assert messages[-1].startswith("personalization took")
