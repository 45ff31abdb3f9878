"""What the commands of :mod:`bayes_pfl.cli` share: the entry point's JAX set-up."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["configure_jax", "formula_conflicts"]


def formula_conflicts(args) -> str | None:
    """What is wrong when ``--formula`` comes with the flags it replaces, or ``None``."""
    given = [f for f in ("client_col", "target", "features", "varying") if getattr(args, f, None)]
    if not given:
        return None
    flags = ", ".join("--" + f.replace("_", "-") for f in given)
    return f"--formula names the client column, outcome and terms; drop {flags}"


def configure_jax(num_devices: int) -> None:
    """Entry-point-only JAX set-up: host devices for parallel chains and float64."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = (
            f"{flags} --xla_force_host_platform_device_count={max(1, num_devices)}".strip()
        )
    import jax

    jax.config.update("jax_enable_x64", True)
    # a persistent compilation cache makes repeated runs skip XLA compilation
    if not os.environ.get("BAYES_PFL_NO_COMPILATION_CACHE"):
        cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "bayes-pfl" / "jax"
        jax.config.update("jax_compilation_cache_dir", str(cache))
