"""Test set-up: this is an entry point, so JAX is configured here (CPU, float64, 4 host devices)."""

import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
).strip()
os.environ.setdefault("MPLBACKEND", "Agg")
# no persistent compilation cache in the test processes: a CLI test run in-process turns it on
# for its whole worker, and a later test's write into it aborted that worker (stop 28's CI);
# the command line run as a subprocess keeps it (tests/_helpers.py cli_env drops this)
os.environ["BAYES_PFL_NO_COMPILATION_CACHE"] = "1"

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_code():
    """Drops JAX's compiled executables after each test module: a worker that compiles the
    whole suite's models grew until XLA's compiler crashed late in the run (a segfault in
    backend_compile_and_load, stop 29; one process fitting new models repeatedly ran out
    of LLVM memory in the systemic benchmark, stop 28)."""
    yield
    jax.clear_caches()


@pytest.fixture(autouse=True)
def _no_persistent_compilation_cache():
    """Fails the test that turns JAX's persistent compilation cache on in a test process
    (stop 28's CI and a run of stop 29: a worker aborted in a later test's cache write)."""
    yield
    assert not jax.config.jax_compilation_cache_dir, (
        "this test turned on JAX's persistent compilation cache in the test process; entry "
        "points must honour BAYES_PFL_NO_COMPILATION_CACHE (set by conftest)"
    )


@pytest.fixture(scope="module")
def schools():
    """Eight schools as ``FederatedData``: one row per school, the feature ``sigma``."""
    from bayes_pfl import FederatedData, load  # imported here, once JAX is configured above

    return FederatedData.from_pandas(
        load("eight_schools"), client_col="school", target="y", features=["sigma"]
    )


@pytest.fixture(scope="module")
def schools_outlier():
    """Eight schools plus four like them and school 'X', 60 points off (about six times the
    population's spread); no two schools with the same rows (those would send identical
    sites, which the copy check names)."""
    import pandas as pd

    from bayes_pfl import FederatedData, load

    extra = pd.DataFrame(
        {
            "school": ["I", "J", "K", "L", "X"],
            "y": [4.0, 10.0, 1.0, 6.0, 70.0],
            "sigma": [10.0, 12.0, 9.0, 11.0, 8.0],
        }
    )
    return FederatedData.from_pandas(
        pd.concat([load("eight_schools"), extra], ignore_index=True),
        client_col="school",
        target="y",
        features=["sigma"],
    )


def pytest_configure(config):
    """Reads ``BAYES_PFL_SLOW_DEADLINE`` (seconds since the epoch) once, at start-up: a
    malformed value is a usage error naming the variable, before any test runs."""
    deadline = os.environ.get("BAYES_PFL_SLOW_DEADLINE")
    try:
        config.slow_deadline = float(deadline) if deadline else None
    except ValueError as err:
        raise pytest.UsageError(
            f"BAYES_PFL_SLOW_DEADLINE must be seconds since the epoch, got {deadline!r}"
        ) from err


@pytest.hookimpl(trylast=True)  # after ``-m``'s deselection: the items that will run
def pytest_collection_modifyitems(config, items):
    """With ``BAYES_PFL_SLOW_DEADLINE`` set, the slow tests start at a test file that
    changes from day to day (the files in their usual order, rotated by the deadline's
    day). The deadline skips the slow tests that come last; in collection order those
    were always the same files (stop 38's CI: the 23 tests of test_particles to
    test_sbc), so those files never ran in CI. Every worker of ``-n`` reads the same
    variable, so they collect the same order."""
    if config.slow_deadline is None:
        return
    at = [i for i, item in enumerate(items) if item.get_closest_marker("slow") is not None]
    files = list(dict.fromkeys(items[i].path for i in at))
    if len(files) < 2:
        return
    start = int(config.slow_deadline // 86400) % len(files)
    rank = {f: (k - start) % len(files) for k, f in enumerate(files)}
    slow = sorted((items[i] for i in at), key=lambda item: rank[item.path])
    for i, item in zip(at, slow, strict=True):
        items[i] = item


def pytest_runtest_setup(item):
    """Skips, with a reason in the summary, each ``slow`` test that would start after the
    time set in ``BAYES_PFL_SLOW_DEADLINE``. CI sets it so that its 90 minutes hold on a
    slow machine (stop 33's CI ran the default suite in 40 min, 2.4 times stop 31's, and
    the slow tests then ran past the limit): the slow tests that fit are run, the others
    are reported as skipped, never dropped without a word."""
    deadline = item.config.slow_deadline
    if deadline is None or item.get_closest_marker("slow") is None:
        return
    if time.time() > deadline:
        pytest.skip(
            "slow test not started: the time budget in BAYES_PFL_SLOW_DEADLINE is spent "
            "(run `pytest -m slow` without it to run every slow test)"
        )
