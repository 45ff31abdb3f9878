"""The ``bayes-pfl`` commands on fits: ``demo``, ``fit``, ``report``, ``datasets``, ``models``.

:func:`build_parser` is the ``bayes-pfl`` parser (``compare`` parses its own options:
:mod:`bayes_pfl.cli.compare`); the ``cmd_*`` functions run the commands.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bayes_pfl.cli.common import add_dp_args, dp_budget
from bayes_pfl.cli.figures import demo_figures
from bayes_pfl.cli.metadata import add_metadata_args, attach_metadata, metadata_terms
from bayes_pfl.cli.missing import add_missing_args, data_missing, latent_options
from bayes_pfl.cli.robust import (
    add_population_args,
    add_robust_fit_args,
    fit_excluding_flagged,
    with_population,
)

METHODS = ("nuts", "one-shot", "ep", "vi")
"""The methods ``fit`` runs: those of the registry (:mod:`bayes_pfl.methods`) that end in a
posterior (``reference`` and ``federated`` kinds); a test checks the two agree. The
baselines and networks run through ``bayes-pfl compare --methods``."""


def _count(minimum: int):
    """An argparse type: an integer of at least ``minimum`` (a count of rounds, chains,
    draws or steps), with an error naming the bound instead of a fit that silently runs
    zero rounds."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    parse.__name__ = "count"
    return parse


def _add_overwrite_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a non-empty output folder (by default it is refused: an earlier fit's "
        "report and figures would sit beside the new fit)",
    )


def _check_out(out: Path, overwrite: bool) -> None:
    from bayes_pfl.data import DataError

    if out.exists() and not out.is_dir():
        raise DataError(f"--out {str(out)!r} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        held = sorted(p.name for p in out.iterdir())
        shown = ", ".join(held[:5]) + (", ..." if len(held) > 5 else "")
        raise DataError(
            f"output folder {str(out)!r} is not empty ({shown}); pass --overwrite to replace "
            "it, or choose another --out"
        )


def _add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument(
        "--data",
        required=True,
        help="a bundled dataset (see `bayes-pfl datasets`: radon, eight_schools, heart_disease, "
        "sleepstudy, guimmun), a CSV file path with every client's rows, or one CSV per "
        "client: a folder (every *.csv in it) or a quoted glob ('hospitals/*.csv'); each "
        "file is a client named by its stem (cleveland.csv: cleveland), clients in file-name "
        "order",
    )
    g.add_argument(
        "--client-col",
        help="column naming each row's client (default: the dataset's). For a folder or glob: "
        "the column of the file names (default 'client'); if the files have this column, it "
        "names the clients instead (a client's rows in one file)",
    )
    g.add_argument("--target", help="target column (default: dataset's)")
    g.add_argument("--features", help="comma-separated feature columns (default: dataset's)")
    add_missing_args(g)
    g.add_argument("--test-size", type=float, default=0.0, help="held-out fraction per client")
    g.add_argument(
        "--standardize",
        action="store_true",
        help="standardize features (not eight_schools: its sigma is each school's known sd)",
    )
    add_metadata_args(g)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument(
        "--model", help="zoo model name (default: the dataset's; see `bayes-pfl models`)"
    )
    g.add_argument(
        "--varying",
        choices=("intercept", "slopes"),
        default=None,
        help="GLMs: which coefficients vary by client (default: the bundled dataset's, "
        "e.g. slopes for sleepstudy; intercept otherwise)",
    )
    g.add_argument("--centered", action="store_true", help="GLMs: centered parameterization")
    add_population_args(g)
    g.add_argument(
        "--formula",
        help="the model as a formula, e.g. 'outcome ~ age + C(sex) + (1 + age | hospital)': "
        "terms left of '|' vary by client, the name right of it is the client column; "
        "--model then names the family (logistic/bernoulli, linear/normal, poisson)",
    )
    g.add_argument(
        "--prior",
        action="append",
        default=[],
        metavar="NAME=SCALE",
        help="--formula: a prior scale, coef (mu, beta ~ N(0, 2.5)), tau (HalfNormal(1)) "
        "or sigma (HalfNormal(1)); repeat for several",
    )


def _add_nuts_args(p: argparse.ArgumentParser, *, chains=4, warmup=1000, samples=1000) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument(
        "--chains", type=_count(1), default=chains, help=f"NUTS chains (default {chains})"
    )
    g.add_argument(
        "--warmup",
        type=_count(0),
        default=None,
        help=f"warm-up draws (default {warmup}; 300 for the server's final draws of EP and "
        "one-shot over client effects, whose chains start adapted)",
    )
    g.add_argument(
        "--samples", type=_count(1), default=samples, help=f"draws per chain ({samples})"
    )
    g.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    g.add_argument(
        "--no-progress",
        action="store_true",
        help="hide progress bars (they are shown only when stderr is a terminal)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bayes-pfl",
        description="Hierarchical Bayesian personalized federated learning.",
    )
    from importlib.metadata import version

    parser.add_argument("--version", action="version", version=f"bayes-pfl {version('bayes-pfl')}")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser(
        "demo",
        help="fit the radon model on the bundled Minnesota data and write a result folder",
        description="Fit posteriordb's radon_intercept model to 919 homes in 85 Minnesota "
        "counties (each county a client), print a per-county table and write "
        "posterior.nc, summary.csv, run.json and plots.",
    )
    demo.add_argument("--out", default="demo-out", help="output folder (default demo-out)")
    _add_overwrite_arg(demo)
    _add_nuts_args(demo)

    fit = sub.add_parser(
        "fit",
        help="fit a hierarchical model to federated data",
        description="Fit a zoo model; writes OUT/posterior.nc, OUT/summary.csv, OUT/run.json.",
    )
    _add_data_args(fit)
    _add_model_args(fit)
    fit.add_argument(
        "--method",
        choices=METHODS,
        default="nuts",
        help="nuts: centralized NUTS reference (pools all rows); one-shot: one exchange of "
        "posterior summaries; ep: federated expectation propagation; vi: federated "
        "(partitioned) variational inference",
    )
    fed = fit.add_argument_group("federated (one-shot, ep)")
    fed.add_argument("--rounds", type=_count(1), default=10, help="EP: maximum rounds (default 10)")
    fed.add_argument(
        "--damping",
        type=float,
        default=None,
        help="EP/VI: damping rate (default 1 for EP over client effects, halved after an "
        "oscillating round; 0.8 otherwise)",
    )
    fed.add_argument(
        "--checkpoint",
        metavar="PATH",
        help="EP/VI: write the round states to PATH.npz/PATH.json after every round "
        "(EP's Gaussian rounds to PATH-phase0.* when particles follow)",
    )
    fed.add_argument(
        "--resume",
        action="store_true",
        help="EP/VI: continue from --checkpoint's last round (same data and options)",
    )
    fed.add_argument(
        "--sites",
        choices=("effects", "global"),
        default="effects",
        help="EP/one-shot: sites over each client's own effects, the population integrated "
        "exactly by the server (default), or over the global parameters",
    )
    fed.add_argument(
        "--tilted",
        choices=("laplace", "nuts"),
        default=None,
        help="--sites global: clients' tilted inference, laplace (default) or nuts",
    )
    fed.add_argument(
        "--site-fit",
        choices=("gradient", "regression", "taylor"),
        default=None,
        help="--sites global, laplace clients: linear fit of the marginal likelihood's "
        "gradient over the tilted region (default), quadratic fit of its values there, or "
        "Taylor expansion at the tilted mode",
    )
    fed.add_argument(
        "--summary",
        choices=("auto", "gaussian", "particles"),
        default=None,
        help="EP, sites over effects: after the Gaussian rounds, one exchange of "
        "importance-weighted particles from the clients whose likelihood is far from "
        "Gaussian (auto, the default where the model allows it), from every client "
        "(particles), or none (gaussian)",
    )
    add_robust_fit_args(fed)
    add_dp_args(fit)
    vi = fit.add_argument_group("federated VI (vi)")
    vi.add_argument(
        "--family",
        choices=("full", "meanfield", "lowrank"),
        default=None,
        help="--sites global: Gaussian family of the clients' q(u, theta_k) (default full)",
    )
    vi.add_argument(
        "--schedule",
        choices=("synchronous", "sequential"),
        default=None,
        help="--sites global: all clients per round (default), or groups of clients one "
        "after another",
    )
    vi.add_argument(
        "--steps",
        type=_count(1),
        default=None,
        help="--sites global: Adam steps per client per round (default 200)",
    )
    fit.add_argument("--out", required=True, help="output folder")
    _add_overwrite_arg(fit)
    fit.add_argument(
        "--report", action="store_true", help="also write OUT/report.html (see `bayes-pfl report`)"
    )
    fit.add_argument(
        "--save-log-likelihood",
        action="store_true",
        help="keep the pointwise log-likelihood (chains x draws x rows) in posterior.nc; "
        "by default the per-client PSIS-LOO is computed at once and written to loo.csv",
    )
    fit.add_argument(
        "--strict",
        action="store_true",
        help="exit with status 3 when any diagnostic warns (r_hat > 1.01, ess_bulk < 400, "
        "divergences, EP/VI not converged, clients that failed); the fit is still written",
    )
    _add_nuts_args(fit)

    report = sub.add_parser(
        "report",
        help="turn a fit's folder into a self-contained HTML report",
        description="Write DIR/report.html (diagnostics, shrinkage, per-client posteriors, "
        "convergence, calibration, LOO per client) and print the shrinkage table.",
    )
    report.add_argument("dir", help="a folder written by `bayes-pfl fit`")

    sub.add_parser("datasets", help="list the bundled datasets")
    sub.add_parser("models", help="list the model zoo")
    sub.add_parser(
        "compare",
        help="compare Bayesian and optimization-based methods on the same splits",
        description="See `bayes-pfl compare --help` (bayes_pfl.cli.compare.compare_main).",
        add_help=False,
    )
    return parser


def load_data(args):
    """``(FederatedData, the bundled dataset's default model name or None)`` of the data options."""
    from bayes_pfl.datasets import source

    src = source(args.data, client_col=args.client_col, target=args.target, features=args.features)
    data = src.federated(
        test_size=args.test_size,
        seed=args.seed,
        standardize=args.standardize,
        missing=data_missing(args),
    )
    return attach_metadata(args, data), src.default_model


_PRIOR_FLAGS = {"coef": "coef_scale", "tau": "tau_scale", "sigma": "sigma_scale"}


def load_inputs(args):
    """``(data, model, formula schema or None)`` of the data and model options."""
    from bayes_pfl.data import DataError

    if getattr(args, "formula", None):
        data, model, schema = _formula_inputs(args)
        attach_metadata(args, data)  # --metadata: not yet with --formula (a clear error)
    else:
        if getattr(args, "prior", None):
            raise DataError("--prior applies to --formula models")
        data, default_model = load_data(args)
        model, schema = load_model(args, data, default_model), None
    return data, with_population(args, model), schema


def _formula_inputs(args):
    from bayes_pfl.cli.common import formula_conflicts
    from bayes_pfl.data import DataError
    from bayes_pfl.formula import FAMILY_ALIASES, formula_source, from_formula

    if conflict := formula_conflicts(args):
        raise DataError(conflict)
    if args.missing == "model" or getattr(args, "noise_sd", None):
        raise DataError("--missing model and --noise-sd apply to --model GLMs, not yet --formula")
    if args.model not in FAMILY_ALIASES:
        raise DataError(
            f"--formula needs --model naming the family: {', '.join(FAMILY_ALIASES)}"
            + (f" (got {args.model!r})" if args.model else "")
        )
    scales = {}
    for item in args.prior:
        name, _, value = item.partition("=")
        try:
            scales[_PRIOR_FLAGS[name.strip()]] = float(value)
        except (KeyError, ValueError):
            raise DataError(
                f"--prior {item!r}: expected NAME=SCALE with NAME one of "
                f"{', '.join(_PRIOR_FLAGS)} and a positive number"
            ) from None
        if not scales[_PRIOR_FLAGS[name.strip()]] > 0:
            raise DataError(f"--prior {item!r}: the scale must be positive")
    src, _ = formula_source(args.data, args.formula)
    if args.standardize and not src.standardizable:
        src.federated(standardize=True)  # the dataset's own error: its features keep units
    fm = from_formula(
        args.formula,
        src.frame,
        family=args.model,
        test_size=args.test_size,
        seed=args.seed,
        standardize=args.standardize,
        missing=args.missing,
        centered=args.centered,
        name=args.model,
        **scales,
    )
    return fm.data, fm.model, fm.schema


def load_model(args, data, default_model):
    """The zoo model of ``--model`` (default: the dataset's) for ``data``."""
    from bayes_pfl.datasets import DATASETS
    from bayes_pfl.models import get_model

    name = args.model or default_model
    if name is None:
        from bayes_pfl.data import DataError

        raise DataError("--model is required for a CSV (see `bayes-pfl models`)")
    varying = args.varying
    if varying is None:
        info = DATASETS.get(args.data)
        varying = info.varying if info is not None else "intercept"
    return get_model(
        name,
        data.n_features,
        varying=varying,
        centered=args.centered,
        feature_names=data.features,  # the coefficients' labels (ignored by posteriordb's)
        client_covariates=None if data.metadata is None else data.metadata.names,
        **latent_options(args, data, name),
        **metadata_terms(args),
    )


def _client_variable(model) -> str:
    """The client-level variable people read: a deterministic (centered) one if there is one."""
    names = model.theta_deterministic or model.theta_space.names
    return names[0]


CLIENT_ROWS = 30
"""Rows of the per-client table ``bayes-pfl fit`` prints (every row is in summary.csv)."""


def client_table(dt, var: str, data) -> pd.DataFrame:  # noqa: F821
    """Per-client posterior mean, sd and 90% interval of ``var``: one row per client, or per
    ``(client, term)`` for a vector variable (every varying coefficient of a GLM)."""
    import numpy as np
    import pandas as pd

    v = dt.posterior[var]
    extra = [d for d in v.dims if d not in ("chain", "draw", "client")]
    v = v.stack(sample=("chain", "draw"))
    if extra:  # (client, term) rows, terms labelled by the model (positions otherwise)
        v = v.stack(row=("client", *extra)).transpose("row", "sample")
        index = pd.MultiIndex.from_tuples(
            [tuple(map(str, r)) for r in v["row"].values],
            names=["client", "term" if extra[0].endswith("_term") else "element"],
        )
        n_train = np.repeat(data.n_rows("train"), len(index) // len(data.clients))
    else:
        v = v.transpose("client", "sample")
        index = pd.Index(list(data.clients), name="client")
        n_train = data.n_rows("train")
    draws = v.values
    return pd.DataFrame(
        {
            "n_train": n_train,
            "mean": draws.mean(axis=1),
            "sd": draws.std(axis=1, ddof=1),
            "q05": np.quantile(draws, 0.05, axis=1),
            "q95": np.quantile(draws, 0.95, axis=1),
        },
        index=index,
    )


def print_client_table(table, var: str, model_name: str, *, rows: int = CLIENT_ROWS) -> None:
    """The per-client table on the console: its first ``rows`` rows, and where the rest is."""
    import pandas as pd

    terms = ""
    if isinstance(table.index, pd.MultiIndex):
        terms = ", terms " + ", ".join(map(str, table.index.get_level_values(1).unique()))
    print(f"\n{model_name}: per-client {var} (posterior mean, sd, 90% interval{terms})")
    with pd.option_context("display.max_rows", rows + 1, "display.width", 120):
        print(table.head(rows).round(3).to_string())
    if len(table) > rows:
        print(
            f"... {len(table) - rows} more row(s): every {var}[client{', term' if terms else ''}]"
            " is in summary.csv (and shrinkage.csv, the report)"
        )


def _fit_and_save(args, data, model, out: Path, *, dataset: str):
    """Fit ``args.method`` (read from the method registry) and save every output file.

    The command line's flags map to the fit's options of the same meaning; an option the
    method does not take is not passed (``--rounds`` with NUTS), and one left unset takes
    the fit function's default (the registry reads it from there).
    """
    from bayes_pfl.methods import get_method
    from bayes_pfl.results import save_fit

    t0 = time.perf_counter()
    info = get_method(getattr(args, "method", "nuts"), "cli")
    given = {
        "num_chains": args.chains,
        "num_warmup": args.warmup,
        "num_samples": args.samples,
        **{
            k: getattr(args, k, None)
            for k in (
                "rounds",
                "damping",
                "sites",
                "tilted",
                "site_fit",
                "summary",
                "precision_cap",
            )
        },
    }
    if getattr(args, "checkpoint", None):
        given.update(checkpoint=args.checkpoint, resume=args.resume)
    given["dp"] = dp_budget(args)
    options = {k: v for k, v in given.items() if v is not None and k in info.options}
    if info.name == "vi":  # VI over the global parameters: fit_vi passes these through
        options.update(
            {k: v for k in ("family", "schedule", "steps") if (v := getattr(args, k, None))}
        )
    stages = _show_stages(args)
    run_info = {}
    if getattr(args, "exclude_flagged", False):
        result, data, run_info = fit_excluding_flagged(
            args, info, data, model, options, progress=_progress(args)
        )
    else:
        result = info.fit(data, model=model, seed=args.seed, progress=_progress(args), **options)
    if stages:
        print("bayes-pfl: summarizing and writing the fit", file=sys.stderr, flush=True)
    paths = save_fit(
        result,
        data,
        out,
        log_likelihood=getattr(args, "save_log_likelihood", False),
        dataset=dataset,
        seed=args.seed,
        total_time_s=time.perf_counter() - t0,
        **run_info,
    )
    return result, paths, data


def _standardization_hint(args, data) -> None:
    """A hint on stderr when a user's features are far from unit scale and not standardized:
    the GLMs' priors (coefficients ~ N(0, 2.5)) assume features of about unit scale."""
    import numpy as np

    from bayes_pfl.datasets import DATASETS

    if args.standardize or (args.data in DATASETS and not getattr(args, "formula", None)):
        return  # a bundled dataset's model is written for its units
    arr = data.arrays()
    x = np.asarray(arr.x)[np.asarray(arr.mask)]
    far = []
    for j, name in enumerate(data.features):
        col = x[:, j]
        col = col[np.isfinite(col)]
        if col.size < 2 or np.all((col == 0) | (col == 1)):
            continue
        sd, mean = float(col.std()), float(col.mean())
        if sd > 5 or sd < 0.2 or abs(mean) > 5 * max(sd, 1e-12):
            far.append(f"{name} (mean {mean:.3g}, sd {sd:.3g})")
    if far:
        print(
            f"bayes-pfl: hint: feature(s) {', '.join(far[:5])}{' ...' if len(far) > 5 else ''} "
            "are far from unit scale, which the priors (coefficients ~ N(0, 2.5)) assume; "
            "--standardize scales them with pooled constants (kept in run.json)",
            file=sys.stderr,
        )


def _in_worker(fn, *args):
    """``fn(*args)`` in a worker thread, the main thread waiting: Python handles Ctrl-C only
    in the main thread and between bytecodes, and JAX runs the sampler as one long XLA call
    when no progress bar is shown, which would hold the signal for minutes."""
    import threading

    box: dict = {}

    def run():
        try:
            box["value"] = fn(*args)
        except BaseException as exc:  # handed to the main thread as it is
            box["error"] = exc

    worker = threading.Thread(target=run, name="bayes-pfl-fit", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(0.2)
    if "error" in box:
        raise box["error"]
    return box["value"]


def cmd_fit(args, *, dataset=None) -> int:
    import shutil
    import tempfile

    from bayes_pfl.data import DataError

    if getattr(args, "resume", False) and not getattr(args, "checkpoint", None):
        raise DataError("--resume needs --checkpoint PATH (the checkpoint to continue)")
    if getattr(args, "checkpoint", None) and args.method not in ("ep", "vi"):
        raise DataError(f"--checkpoint applies to --method ep or vi, not {args.method}")
    dp_budget(args)  # bad privacy options before the data are read
    data, model, schema = load_inputs(args)
    _standardization_hint(args, data)
    import warnings

    from bayes_pfl.centralized import check_model_data

    with warnings.catch_warnings():  # the fit runs the check again and shows its warnings
        warnings.simplefilter("ignore")
        check_model_data(model, data)  # input errors before the output folder's
    _check_out(final := Path(args.out), getattr(args, "overwrite", False))
    # everything is written to a temporary folder beside the target and moved into place
    # at the end: an interrupted or failed run leaves no half-written or mixed folder
    final.parent.mkdir(parents=True, exist_ok=True)
    out = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    try:
        code = _in_worker(_fit_into, args, data, model, out, dataset)
        if schema is not None:  # what new rows (prediction, cold start) are evaluated against
            (out / "schema.json").write_text(json.dumps(schema.to_dict(), indent=2) + "\n")
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final)
    out.rename(final)
    print(f"\nwrote {final}/: " + ", ".join(sorted(p.name for p in final.iterdir())))
    return code


def _fit_into(args, data, model, out: Path, dataset) -> int:
    import pandas as pd

    from bayes_pfl.results import load_posterior

    result, paths, data = _fit_and_save(args, data, model, out, dataset=dataset or args.data)
    dt = load_posterior(paths["posterior"])
    var = _client_variable(model)
    table = client_table(dt, var, data)
    print_client_table(table, var, model.name)
    summary = pd.read_csv(paths["summary"], index_col=0)
    div = int(result.sample_stats["diverging"].sum()) if result.sample_stats else 0
    chains = int(dt.posterior.sizes.get("chain", 1))
    r_hat = f"{summary['r_hat'].max():.4f}" if chains > 1 else "n/a (1 chain)"
    print(
        f"\n{result.method}: max r_hat {r_hat}, "
        f"min ess_bulk {summary['ess_bulk'].min():.0f}, divergences {div}, "
        f"wall time {result.info['wall_time_s']:.1f} s"
    )
    if result.history:
        last = result.history[-1]
        rounds = f"{len(result.history)} round(s)"
        if result.method != "one-shot":  # one exchange: nothing to converge
            rounds += f", converged: {result.info.get('converged')}"
        print(
            f"{rounds}, bytes per client per round: up {last['bytes_up_per_client']}, "
            f"down {last['bytes_down_per_client']}"
        )
    problems = _diagnose(result, chains, summary)
    from bayes_pfl.report import shrinkage_for_fit, write_report

    shrink = shrinkage_for_fit(dt, data)
    if shrink is not None:
        paths["shrinkage"] = out / "shrinkage.csv"
        shrink.to_csv(paths["shrinkage"])
    if args.command == "demo":
        for p in demo_figures(dt, var, table, out):
            paths[p.stem] = p
    if args.command == "demo" or getattr(args, "report", False):
        paths["report"] = write_report(out)
    if problems and getattr(args, "strict", False):
        print(
            f"bayes-pfl: --strict: {len(problems)} diagnostic warning(s), see above",
            file=sys.stderr,
        )
        return 3
    return 0


def _diagnose(result, chains: int, summary=None) -> list[str]:
    """Print every :func:`bayes_pfl.diagnostics.diagnostics` warning of the fit (any method:
    r_hat, ESS, divergences, EP/VI convergence, failed or rejected clients) to stderr and
    return them; one line saying so when there is none. ``summary``: the fit's saved
    ``summary.csv`` (its ArviZ summary, not computed again)."""
    import warnings

    from bayes_pfl.diagnostics import DiagnosticsWarning, diagnostics

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if chains < 2:  # split R-hat of one chain: numpy's warning on an empty reduction
            warnings.filterwarnings("ignore", category=RuntimeWarning)
        diagnostics(result, summary=summary)
    problems = [str(w.message) for w in caught if issubclass(w.category, DiagnosticsWarning)]
    if chains < 2:
        problems.insert(0, "one chain: r_hat cannot be computed; run --chains 2 or more")
    for message in problems:
        print(f"bayes-pfl: warning: {message}", file=sys.stderr)
    if not problems:
        print(
            "diagnostics: no warnings (r_hat <= 1.01, ess_bulk >= 400, no divergences"
            + (", converged, every client contributed)" if result.history else ")")
        )
    return problems


def cmd_demo(args) -> int:
    args.data = "radon"
    args.client_col = args.target = args.features = None
    args.model = "radon_intercept"
    args.varying, args.centered = "intercept", False
    args.missing, args.test_size, args.standardize = "error", 0.0, False
    args.method = "nuts"
    return cmd_fit(args, dataset="radon")


REPORT_ROWS = 20
"""Rows of the shrinkage table ``bayes-pfl report`` prints (the rest is in the files)."""


def cmd_report(args) -> int:
    import pandas as pd

    from bayes_pfl.report import read_shrinkage, write_report

    out = Path(args.dir)
    try:
        path = write_report(out)
    except FileNotFoundError as exc:
        print(f"bayes-pfl: error: {exc}", file=sys.stderr)
        return 2
    shrink = out / "shrinkage.csv"
    if shrink.is_file():
        table = read_shrinkage(shrink)
        with pd.option_context("display.width", 140):
            print(table.head(REPORT_ROWS).round(3).to_string())
        if len(table) > REPORT_ROWS:
            print(f"... {len(table) - REPORT_ROWS} more row(s) in {shrink} and the report")
    print(f"\nwrote {path}")
    return 0


def cmd_datasets() -> int:
    from bayes_pfl.datasets import DATASETS

    for name, info in DATASETS.items():
        df = info.loader()
        print(
            f"{name:15s} {len(df):5d} rows, {df[info.client_col].nunique():3d} clients "
            f"({info.client_col}); target {info.target}; model {info.default_model}"
        )
        print(f"{'':15s} {info.description}")
    return 0


def cmd_models() -> int:
    from bayes_pfl.models import MODEL_NAMES, get_model

    for name in MODEL_NAMES:
        m = get_model(name, 2)
        print(f"{name:16s} phi={list(m.phi_space.names)} theta={list(m.theta_space.names)}")
        print(f"{'':16s} {m.description}")
    return 0


def _show_stages(args) -> bool:
    """On a terminal (where progress bars show), print the stages that have none: the
    federated readout's global draws and personalization, summaries and writing."""
    import logging

    if not _progress(args):
        return False
    logger = logging.getLogger("bayes_pfl")
    if not any(getattr(h, "_bayes_pfl_cli", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("bayes-pfl: %(message)s"))
        handler._bayes_pfl_cli = True
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return True


def _progress(args) -> bool:
    """Progress bars only on a terminal: redrawn bars would fill a log file with escape codes."""
    return not args.no_progress and sys.stderr.isatty()
