"""``bayes-pfl compare`` (and ``python -m bayes_pfl.compare``): the comparison harness
of :mod:`bayes_pfl.compare` from the command line.

The ``bayes-pfl`` parser hands ``compare`` and its options to :func:`compare_main`,
which parses them itself; this module is imported only then.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bayes_pfl.cli.common import configure_jax, formula_conflicts
from bayes_pfl.compare import (
    BAYESIAN_METHODS,
    FAMILIES,
    ComparisonError,
    bayesian_method,
    compare,
    constant_method,
    make_method,
)
from bayes_pfl.compare.families import infer_family
from bayes_pfl.data import FederatedData
from bayes_pfl.methods import method_names

__all__ = ["compare_main"]


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bayes-pfl compare",
        description="Compare Bayesian and baseline federated methods on identical splits "
        "(per client and by client size); writes CSV tables, summary.md and plots.",
    )
    p.add_argument(
        "--data",
        required=True,
        help="a bundled dataset (e.g. heart_disease), a CSV path, or one CSV per client: a "
        "folder or a quoted glob ('hospitals/*.csv'; see `bayes-pfl fit --help`)",
    )
    p.add_argument(
        "--client-col", help="client column (default: the dataset's; 'client' for a folder)"
    )
    p.add_argument("--target", help="target column (default: the dataset's)")
    p.add_argument("--features", help="comma-separated features (default: the dataset's)")
    p.add_argument("--missing", choices=("error", "drop"), default="error")
    p.add_argument("--family", choices=FAMILIES, help="outcome family (default: 0/1 -> bernoulli)")
    p.add_argument(
        "--methods",
        default="local,pooled,fedavg,nuts",
        help="comma-separated methods, any of: "
        + ", ".join(method_names("cli"))
        + " (default local,pooled,fedavg,nuts; docs/methods.md)",
    )
    p.add_argument("--seeds", type=int, default=3, help="number of seeds 0..N-1 (default 3)")
    p.add_argument("--test-size", type=float, default=0.3, help="test fraction per client")
    p.add_argument("--val-size", type=float, default=0.0, help="validation fraction per client")
    p.add_argument(
        "--no-standardize",
        action="store_true",
        help="keep raw feature units (always for eight_schools, whose sigma is a known sd)",
    )
    p.add_argument("--no-refit", action="store_true", help="final fits on training rows only")
    p.add_argument(
        "--varying", choices=("intercept", "slopes"), default=None, help="Bayesian GLM (slopes)"
    )
    p.add_argument(
        "--formula",
        help="the Bayesian methods' model as a formula, e.g. 'y ~ age + C(sex) + (1 + age | "
        "hospital)' (it names the client column, target and terms; every method gets its "
        "design columns)",
    )
    p.add_argument("--chains", type=int, default=2, help="NUTS chains (default 2)")
    p.add_argument("--warmup", type=int, default=500, help="NUTS warm-up (default 500)")
    p.add_argument("--samples", type=int, default=500, help="NUTS draws per chain (default 500)")
    p.add_argument("--rounds", type=int, default=50, help="baseline rounds (default 50)")
    p.add_argument("--buckets", default="10,50", help="client-size bucket edges (default 10,50)")
    p.add_argument("--out", default="compare-out", help="output folder (default compare-out)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    p.add_argument("--progress", action="store_true", help="one line per fit on stderr")
    return p


def _cli_data(args) -> tuple[Callable[[int], FederatedData], Any]:
    """``(seed -> FederatedData, the formula's model or None)``."""
    import warnings

    from bayes_pfl.data import DataError
    from bayes_pfl.datasets import source

    options = {
        "test_size": args.test_size,
        "val_size": args.val_size,
        "standardize": not args.no_standardize,
        "missing": args.missing,
    }
    if args.formula:
        from bayes_pfl.formula import formula_source, from_formula

        if conflict := formula_conflicts(args):
            raise ComparisonError(conflict)
        src, _ = formula_source(args.data, args.formula)
        options["standardize"] = options["standardize"] and src.standardizable
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # rows dropped: in the table
            first = from_formula(
                args.formula, src.frame, family=args.family or "bernoulli", seed=0, **options
            )
            family = args.family or infer_family(first.data)
            if family != first.model.family:
                first = from_formula(args.formula, src.frame, family=family, seed=0, **options)

        def make(seed: int) -> FederatedData:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # rows dropped: in the table
                return from_formula(
                    args.formula,
                    src.frame,
                    family=family,
                    schema=first.schema,
                    seed=seed,
                    **options,
                ).data

        return make, first.model
    try:
        src = source(
            args.data, client_col=args.client_col, target=args.target, features=args.features
        )
    except DataError as exc:
        raise ComparisonError(str(exc)) from None

    def make(seed: int) -> FederatedData:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # rows dropped: reported in the table
            # a dataset whose features keep their units (eight schools) stays raw
            standardize = options["standardize"] and src.standardizable
            return src.federated(seed=seed, **{**options, "standardize": standardize})

    return make, None


def compare_main(argv: Sequence[str] | None = None) -> int:
    """``bayes-pfl compare``: run :func:`~bayes_pfl.compare.compare` from the command line.

    Writes ``comparison.csv``, ``summary.csv``, ``by_bucket.csv``, ``summary.md``
    and (unless ``--no-plots``) ``<metric>.png`` / ``<metric>_by_bucket.png`` to
    ``--out``; prints the markdown summary. Returns 0, or 2 on invalid input.
    JAX is configured here (an entry point): float64 and one host device per chain.
    """
    args = _build_parser().parse_args(argv)
    configure_jax(args.chains)
    from bayes_pfl.data import DataError
    from bayes_pfl.spec import ModelSpecError

    try:
        make_data, formula_model = _cli_data(args)
        family = args.family
        names = [n.strip() for n in args.methods.split(",") if n.strip()]
        fam = family or infer_family(make_data(0))
        methods = []
        for n in names:
            if n in BAYESIAN_METHODS:  # a posterior method: the zoo's GLM of the family
                kw: dict[str, Any] = {"num_warmup": args.warmup, "num_samples": args.samples}
                kw["num_chains"] = args.chains
                glm_family = fam

                def model_fn(data, glm_family=glm_family):
                    from bayes_pfl.models import hierarchical_glm

                    if formula_model is not None:
                        return formula_model
                    varying = args.varying or "slopes"
                    return hierarchical_glm(glm_family, data.n_features, varying=varying)

                methods.append(bayesian_method(n, model_fn, family=fam, **kw))
            elif n == "constant":
                methods.append(constant_method(family=fam))
            else:
                methods.append(make_method(n, family=fam, rounds=args.rounds))
        result = compare(
            make_data,
            methods,
            seeds=range(args.seeds),
            family=fam,
            buckets=[int(b) for b in args.buckets.split(",")],
            refit=not args.no_refit,
            progress=args.progress,
        )
    except (ComparisonError, DataError, ModelSpecError) as exc:
        print(f"bayes-pfl compare: error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    paths = result.to_csv(out, title=f"Method comparison: {args.data}")
    if not args.no_plots:
        from bayes_pfl.plots import plot_comparison

        metric = result.main_metric()
        plot_comparison(result, metric, path=out / f"{metric}.png")
        plot_comparison(result, metric, by="bucket", path=out / f"{metric}_by_bucket.png")
    print(paths["markdown"].read_text())
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0
