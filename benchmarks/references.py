# ruff: noqa: E402  (JAX must be configured before anything imports it)
"""Clean centralized NUTS references for the benchmark cases of ``cases.py``.

For every case with settings in ``cases.REFERENCE`` it runs ``fit_nuts`` (seed 0, no
progress bar) on the case's model and data, computes the element-wise statistics of
``_common.reference_stats`` (mean, sd, Monte Carlo standard errors, bulk ESS, R-hat
of every global and client element) and checks that the reference is *clean*:
0 divergences, max R-hat <= 1.01 and min bulk ESS >= 400 over every element.

Run from the repository root (one case at a time on a shared machine)::

    nice .venv/bin/python benchmarks/references.py                  # every case
    nice .venv/bin/python benchmarks/references.py --case synth150 heart
    nice .venv/bin/python benchmarks/references.py --case heart --set num_warmup=4000

Writes, per case, ``benchmarks/results/references/<case>.npz`` (the statistics,
readable with ``_common.load_stats``) and ``<case>.json`` (settings, diagnostics,
wall time, posterior summaries of the global parameters, data description). A run
with ``--set`` tries other settings without writing anything. The exit code is 1 if
a reference is not clean, else 0.
"""

from _common import configure_jax

configure_jax(host_devices=4)

import argparse
import json
import time
from typing import Any

import numpy as np
from _common import (
    RESULTS,
    add_selection,
    jsonable,
    machine,
    reference_stats,
    save_stats,
    selected,
)
from cases import CASES, REFERENCE

from bayes_pfl import fit_nuts

OUT = RESULTS / "references"
SEED = 0
MAX_R_HAT = 1.01
MIN_ESS = 400.0


def diagnostics(fit, stats: dict[str, dict[str, Any]], max_tree_depth: int) -> dict[str, Any]:
    """Divergences, worst R-hat and bulk ESS (with their elements) and sampler statistics.

    Parameters
    ----------
    fit : FitResult
        A ``fit_nuts`` result.
    stats : dict
        Its :func:`_common.reference_stats`.
    max_tree_depth : int
        The run's tree-depth limit (to count the draws that hit it).

    Returns
    -------
    dict
        ``divergences``, ``max_r_hat`` and ``max_r_hat_at``, ``min_ess_bulk`` and
        ``min_ess_bulk_at``, ``max_mcse_over_sd``, ``tree_depth_hits`` (draws at the
        limit), ``mean_acceptance``, ``mean_n_steps`` and ``clean``.
    """
    labels = [lab for s in stats.values() for lab in s["labels"]]
    r_hat = np.concatenate([s["r_hat"] for s in stats.values()])
    ess = np.concatenate([s["ess_bulk"] for s in stats.values()])
    rel = np.concatenate([s["mcse_mean"] / s["sd"] for s in stats.values()])
    ss = fit.sample_stats or {}
    divergences = int(np.sum(ss["diverging"])) if "diverging" in ss else 0
    i_r, i_e = int(np.nanargmax(r_hat)), int(np.nanargmin(ess))
    out = {
        "divergences": divergences,
        "max_r_hat": float(r_hat[i_r]),
        "max_r_hat_at": labels[i_r],
        "min_ess_bulk": float(ess[i_e]),
        "min_ess_bulk_at": labels[i_e],
        "max_mcse_over_sd": float(np.nanmax(rel)),
        "n_elements": len(labels),
        "n_nan_r_hat": int(np.sum(np.isnan(r_hat))),
        "tree_depth_hits": int(np.sum(np.asarray(ss["tree_depth"]) >= max_tree_depth))
        if "tree_depth" in ss
        else None,
        "mean_acceptance": float(np.mean(ss["acceptance_rate"]))
        if "acceptance_rate" in ss
        else None,
        "mean_n_steps": float(np.mean(ss["n_steps"])) if "n_steps" in ss else None,
    }
    out["clean"] = bool(
        divergences == 0
        and out["n_nan_r_hat"] == 0
        and out["max_r_hat"] <= MAX_R_HAT
        and out["min_ess_bulk"] >= MIN_ESS
    )
    return out


def global_summary(fit, stats: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Posterior mean, sd, bulk ESS and R-hat of every element of the global parameters."""
    out = {}
    for name in fit.phi:
        s = stats[name]
        for k, label in enumerate(s["labels"]):
            out[label] = {
                "mean": float(s["mean"][k]),
                "sd": float(s["sd"][k]),
                "ess_bulk": float(s["ess_bulk"][k]),
                "r_hat": float(s["r_hat"][k]),
            }
    return out


def run_case(name: str, overrides: dict[str, Any], write: bool) -> dict[str, Any]:
    """Fit one case's reference, check it, print a line and (if ``write``) save it."""
    settings = {**REFERENCE[name], **overrides}
    model, data, desc = CASES[name]()
    print(
        f"=== {name}: {model.name}, {desc['clients']} clients, {desc['rows']} rows; "
        f"NUTS {settings}",
        flush=True,
    )
    t0 = time.perf_counter()
    fit = fit_nuts(model, data, seed=SEED, progress_bar=False, **settings)
    seconds = time.perf_counter() - t0
    stats = reference_stats(fit)
    diag = diagnostics(fit, stats, settings["max_tree_depth"])
    population = global_summary(fit, stats)
    print(
        f"{name}: {seconds:.1f} s, {diag['divergences']} divergences, max R-hat "
        f"{diag['max_r_hat']:.4f} ({diag['max_r_hat_at']}), min bulk ESS "
        f"{diag['min_ess_bulk']:.0f} ({diag['min_ess_bulk_at']}), tree-depth hits "
        f"{diag['tree_depth_hits']}: {'CLEAN' if diag['clean'] else 'NOT CLEAN'}",
        flush=True,
    )
    for label, v in population.items():
        print(f"    {label:12s} {v['mean']:9.4f} ± {v['sd']:.4f}", flush=True)
    record = {
        "case": name,
        "model": model.name,
        "seed": SEED,
        "settings": settings,
        "settings_from": "cases.REFERENCE" + (f" with overrides {overrides}" if overrides else ""),
        "criteria": {"divergences": 0, "max_r_hat": MAX_R_HAT, "min_ess_bulk": MIN_ESS},
        "wall_time_s": seconds,
        "diagnostics": diag,
        "global": population,
        "data": desc,
        "machine": machine(),
    }
    if write:
        OUT.mkdir(parents=True, exist_ok=True)
        save_stats(OUT / f"{name}.npz", stats)
        (OUT / f"{name}.json").write_text(json.dumps(jsonable(record), indent=1) + "\n")
        print(f"wrote {OUT / name}.npz and .json", flush=True)
    return record


def _parse_overrides(items: list[str]) -> dict[str, Any]:
    allowed = {"num_chains", "num_warmup", "num_samples", "target_accept_prob", "max_tree_depth"}
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in allowed:
            raise SystemExit(f"--set takes KEY=VALUE with KEY one of {sorted(allowed)}: {item!r}")
        out[key] = float(value) if key == "target_accept_prob" else int(value)
    return out


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns 1 if a reference is not clean."""
    with_reference = [c for c in CASES if REFERENCE.get(c) is not None]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_selection(
        parser,
        "--case",
        with_reference,
        help="cases to run (default: every case with reference settings)",
    )
    parser.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="try other fit_nuts settings (e.g. target_accept_prob=0.99); writes nothing",
    )
    args = parser.parse_args(argv)
    names = selected(with_reference, args.case)
    overrides = _parse_overrides(args.set)
    records = [run_case(name, overrides, write=not overrides) for name in names]
    print("\ncase           time (s)  div  max R-hat  min ESS  clean")
    for r in records:
        d = r["diagnostics"]
        print(
            f"{r['case']:14s} {r['wall_time_s']:8.1f} {d['divergences']:4d} "
            f"{d['max_r_hat']:10.4f} {d['min_ess_bulk']:8.0f}  {d['clean']}"
        )
    return 0 if all(r["diagnostics"]["clean"] for r in records) else 1


if __name__ == "__main__":
    raise SystemExit(main())
