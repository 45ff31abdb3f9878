"""Test set-up: this is an entry point, so JAX is configured here (CPU, float64, 4 host devices)."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
).strip()
os.environ.setdefault("MPLBACKEND", "Agg")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import pytest  # noqa: E402


@pytest.fixture(scope="module")
def schools():
    """Eight schools as ``FederatedData``: one row per school, the feature ``sigma``."""
    from bayes_pfl import FederatedData, load  # imported here, once JAX is configured above

    return FederatedData.from_pandas(
        load("eight_schools"), client_col="school", target="y", features=["sigma"]
    )
