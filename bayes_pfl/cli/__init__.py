"""The ``bayes-pfl`` command line.

``bayes-pfl demo``
    fit the radon model on the bundled Minnesota data, print a per-county table
    and write the result folder with plots;
``bayes-pfl fit``
    fit any zoo model to a bundled dataset or a CSV, with any method;
``bayes-pfl report``
    turn a fit's folder into a self-contained HTML report;
``bayes-pfl datasets`` / ``bayes-pfl models``
    list what is bundled;
``bayes-pfl compare``
    compare Bayesian and optimization-based methods on the same splits
    (:mod:`bayes_pfl.cli.compare`; also ``python -m bayes_pfl.compare``).

JAX is configured here, in the entry point (64-bit floats, one host device per
chain), never at import of the library (:func:`~bayes_pfl.cli.common.configure_jax`).

Modules: :mod:`~bayes_pfl.cli.common` (what the commands share),
:mod:`~bayes_pfl.cli.fit` (the parser and the commands on fits),
:mod:`~bayes_pfl.cli.compare` (``bayes-pfl compare``, loaded only when it runs).
"""

from __future__ import annotations

import os
import sys

from bayes_pfl.cli.common import configure_jax
from bayes_pfl.cli.fit import (
    METHODS,
    REPORT_ROWS,
    build_parser,
    client_table,
    cmd_datasets,
    cmd_demo,
    cmd_fit,
    cmd_models,
    cmd_report,
    load_data,
    load_inputs,
    load_model,
)

__all__ = [
    "METHODS",
    "REPORT_ROWS",
    "build_parser",
    "client_table",
    "cmd_datasets",
    "cmd_demo",
    "cmd_fit",
    "cmd_models",
    "cmd_report",
    "configure_jax",
    "load_data",
    "load_inputs",
    "load_model",
    "main",
]


def _cli_hint(message: str) -> str:
    """The library's hints in command-line syntax (``missing='drop'`` -> ``--missing drop``)."""
    message = message.replace(
        " or missing='keep' to keep NaN in x", ", or --missing model to model them (GLMs)"
    )
    return message.replace("pass missing='drop'", "pass --missing drop")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["compare"]:  # parses its own options and configures JAX itself
        from bayes_pfl.cli.compare import compare_main

        return compare_main(argv[1:])
    args = build_parser().parse_args(argv)
    configure_jax(getattr(args, "chains", 1))
    from bayes_pfl.data import DataError
    from bayes_pfl.simulation import NoClientContributed
    from bayes_pfl.spec import ModelSpecError

    try:
        if args.command == "demo":
            return cmd_demo(args)
        if args.command == "fit":
            return cmd_fit(args)
        if args.command == "datasets":
            return cmd_datasets()
        if args.command == "report":
            return cmd_report(args)
        return cmd_models()
    except (DataError, ModelSpecError) as exc:
        print(f"bayes-pfl: error: {_cli_hint(str(exc))}", file=sys.stderr)
        return 2
    except NoClientContributed as exc:
        print(f"bayes-pfl: inference failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bayes-pfl: interrupted; nothing was written", file=sys.stderr)
        # the sampler may still be running in JAX's runtime (one XLA call for all the draws
        # when no progress bar is shown): a normal exit would wait for it to finish, minutes
        # later. The output was cleaned up already (cmd_fit); leave at once.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
