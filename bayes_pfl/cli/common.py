"""What the commands of :mod:`bayes_pfl.cli` share: the entry point's JAX set-up, the
differential-privacy options."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

__all__ = ["add_dp_args", "configure_jax", "dp_budget", "formula_conflicts"]


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


def add_dp_args(fit: argparse.ArgumentParser) -> None:
    """``--dp-epsilon``, ``--dp-delta``, ``--dp-clip`` (:func:`dp_budget` reads them)."""
    dp = fit.add_argument_group(
        "differential privacy (ep)",
        "record-level DP of what each client sends (docs/privacy.md): each client spends at "
        "most (epsilon, delta) over the whole fit, --rounds rounds planned",
    )
    dp.add_argument(
        "--dp-epsilon",
        type=float,
        default=None,
        metavar="EPS",
        help="privacy budget epsilon per client (> 0); turns DP on",
    )
    dp.add_argument(
        "--dp-delta",
        type=float,
        default=None,
        metavar="DELTA",
        help="delta per client, in (0, 1) (default 1e-5)",
    )
    dp.add_argument(
        "--dp-clip",
        type=float,
        default=None,
        metavar="C",
        help="bound on each row's contribution (default sqrt of the site dimension)",
    )


def dp_budget(args):
    """The :class:`~bayes_pfl.privacy.DPBudget` of ``--dp-*``, or None; bad values and
    options that do not go together raise ``DataError`` naming the flag."""
    from bayes_pfl.data import DataError

    eps, delta, clip = (getattr(args, f"dp_{k}", None) for k in ("epsilon", "delta", "clip"))
    if eps is None:
        given = [f for f, v in (("--dp-delta", delta), ("--dp-clip", clip)) if v is not None]
        if given:
            raise DataError(f"{' and '.join(given)} need --dp-epsilon (the privacy budget)")
        return None
    method = getattr(args, "method", "nuts")
    if method != "ep":
        raise DataError(f"--dp-epsilon applies to --method ep (noisy EP sites), not {method}")
    if getattr(args, "sites", "effects") != "effects":
        raise DataError("--dp-epsilon needs --sites effects")
    if getattr(args, "resume", False):
        raise DataError("--dp-epsilon cannot --resume (the budget spans one run)")
    from bayes_pfl.privacy import DPBudget

    try:
        return DPBudget(eps, 1e-5 if delta is None else delta, clip)
    except ValueError as exc:
        raise DataError("--" + str(exc).replace("dp ", "dp-", 1)) from None
