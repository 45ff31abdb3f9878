"""The robust options of ``bayes-pfl fit`` (:mod:`bayes_pfl.conflict`, docs/robustness.md):
``--population-df`` (a Student-t population), ``--precision-cap`` and ``--exclude-flagged``."""

from __future__ import annotations

import argparse
import sys

__all__ = ["add_population_args", "add_robust_fit_args", "fit_excluding_flagged", "with_population"]


def add_population_args(group: argparse._ArgumentGroup) -> None:
    """``--population-df``, in the model options' group."""
    group.add_argument(
        "--population-df",
        type=_population_df,
        default=None,
        metavar="DF",
        help="robust option: a Student-t population of clients with DF degrees of freedom "
        "(e.g. 4), or 'learn' (DF learned, prior 2 + Gamma(2, rate 0.1)): an outlying client "
        "moves the population little and is pooled less (default: Gaussian; the federated "
        "methods need DF > 2)",
    )


def _population_df(text: str):
    """``--population-df``'s value: a number or ``learn``."""
    if text.strip().lower() == "learn":
        return "learn"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number of degrees of freedom or 'learn', got {text!r}"
        ) from None


def with_population(args, model):
    """``model`` with the population ``--population-df`` asks for (``model`` without it)."""
    df = getattr(args, "population_df", None)
    if df is None:
        return model
    from bayes_pfl.data import DataError
    from bayes_pfl.spec import ModelSpecError

    try:
        return model.with_population(df)
    except ModelSpecError as exc:
        shown = df if isinstance(df, str) else f"{df:g}"
        raise DataError(f"--population-df {shown}: {exc}") from None


def add_robust_fit_args(group: argparse._ArgumentGroup) -> None:
    """``--exclude-flagged`` and ``--precision-cap``, in the federated options' group."""
    group.add_argument(
        "--exclude-flagged",
        action="store_true",
        help="robust option: fit under the Gaussian population first, leave out the clients "
        "it flags (conflict with the others, copied or capped sites) and fit again without "
        "them; run.json lists them (excluded_clients)",
    )
    group.add_argument(
        "--precision-cap",
        type=float,
        default=None,
        metavar="FACTOR",
        help="EP/one-shot, robust option: no client's site may carry more than FACTOR times "
        "the federation's median information per row times its rows (e.g. 10); the "
        "diagnostics name the clients whose cap bound (default: no cap)",
    )


def fit_excluding_flagged(args, info, data, model, options, *, progress: bool):
    """``--exclude-flagged``: a fit under the Gaussian population names the clients to leave
    out (conflict score, copied sites, capped sites); the model is then fitted without them."""
    from bayes_pfl.conflict import flagged_clients
    from bayes_pfl.data import DataError

    if info.kind != "federated" or options.get("sites", "effects") != "effects":
        raise DataError(
            "--exclude-flagged needs a federated method with sites over client effects "
            "(--method ep, one-shot or vi, --sites effects)"
        )
    gaussian = model.with_population(None) if model.population_df is not None else model
    first = info.fit(data, model=gaussian, seed=args.seed, progress=progress, **options)
    flagged = flagged_clients(first)
    if not flagged and gaussian is model:
        return first, data, {"excluded_clients": []}
    keep = [c for c in data.clients if c not in set(flagged)]
    if len(keep) < 2:
        raise DataError(
            f"--exclude-flagged: {len(flagged)} of {len(data.clients)} clients are flagged; "
            "fewer than two would remain: check the data"
        )
    if flagged:
        print(
            f"bayes-pfl: leaving out {len(flagged)} flagged client(s) and fitting again: "
            + ", ".join(map(repr, flagged)),
            file=sys.stderr,
            flush=True,
        )
        data = data.subset(keep)
    result = info.fit(data, model=model, seed=args.seed, progress=progress, **options)
    result.info["excluded_clients"] = [str(c) for c in flagged]
    return result, data, {"excluded_clients": [str(c) for c in flagged]}
