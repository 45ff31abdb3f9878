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


def test_the_budget_rotates_the_slow_files_by_its_day():
    """With the variable set, the slow tests start at the file of index ``day % files``:
    on day 1 of three files the second comes first, then the third, then the first, each
    file's tests in their own order (so the files past the deadline change daily)."""
    files = ["test_local.py", "test_report.py", "test_sbc.py"]
    env = {**os.environ, "BAYES_PFL_SLOW_DEADLINE": str(86400 + 10)}  # day 1, long past
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "--collect-only", "-p", "no:cacheprovider",
         "-m", "slow", *(str(TESTS / f) for f in files)],
        capture_output=True, text=True, env=env, cwd=TESTS.parent, timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    ids = [line for line in res.stdout.splitlines() if "::" in line]
    order = list(dict.fromkeys(i.split("::")[0].rsplit("/", 1)[-1] for i in ids))
    assert order == [files[1], files[2], files[0]], ids
    # each file's tests stay together: the file changes only between the three groups
    where = [i.split("::")[0] for i in ids]
    assert sum(a != b for a, b in zip(where[:-1], where[1:], strict=True)) == len(files) - 1, ids
