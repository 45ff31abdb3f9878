"""CI's time budget for the slow tests (``BAYES_PFL_SLOW_DEADLINE``, read by conftest)."""

import os
import re
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).parent


def _pytest(deadline: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "BAYES_PFL_SLOW_DEADLINE": deadline}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-m", "slow",
         str(TESTS / "test_local.py")],
        capture_output=True, text=True, env=env, cwd=TESTS.parent, timeout=600,
    )  # fmt: skip


def test_a_spent_budget_skips_the_slow_tests_with_a_reason():
    res = _pytest("0")  # the epoch: long past
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert re.search(r"\b[1-9]\d* skipped", out) and "passed" not in out, out
    assert "BAYES_PFL_SLOW_DEADLINE is spent" in out, out


def test_a_malformed_budget_is_an_error_naming_it():
    res = _pytest("in an hour")
    out = res.stdout + res.stderr
    assert res.returncode != 0
    assert "BAYES_PFL_SLOW_DEADLINE must be seconds since the epoch" in out, out
