"""Shared pieces of the benchmark scripts: JAX set-up, element-wise posterior comparison, output.

The scripts import this module *first*: :func:`configure_jax` must run before anything
imports JAX (XLA reads its flags once, at start-up).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def configure_jax(host_devices: int = 4) -> None:
    """CPU, ``host_devices`` host devices (parallel NUTS chains) and float64.

    Call before importing any module that imports JAX.
    """
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = (
            f"{flags} --xla_force_host_platform_device_count={host_devices}".strip()
        )
    import jax

    jax.config.update("jax_enable_x64", True)


def machine() -> dict[str, Any]:
    """Where and when the benchmark ran."""
    import jax

    from bayes_pfl.results import package_versions

    return {
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "jax_backend": jax.default_backend(),
        "jax_devices": jax.device_count(),
        "versions": package_versions(),
    }


def element_draws(result) -> dict[str, tuple[list[str], Any]]:
    """Every variable of a fit as ``(element labels, draws [chain, draw, element])``.

    Global variables keep their shape in the labels (``beta[1]``); client variables are
    labelled by client (``alpha[AITKIN]``, ``b[c003,0]``).
    """
    import numpy as np

    out = {}
    for name, v in result.phi.items():
        v = np.asarray(v, dtype=float)
        shape = v.shape[2:]
        flat = v.reshape(v.shape[:2] + (-1,))
        if not shape:
            labels = [name]
        else:
            labels = [f"{name}[{','.join(map(str, idx))}]" for idx in np.ndindex(shape)]
        out[name] = (labels, flat)
    for name, v in result.theta.items():
        v = np.asarray(v, dtype=float)
        shape = v.shape[3:]
        flat = v.reshape(v.shape[:2] + (-1,))
        labels = []
        for client in result.clients:
            if not shape:
                labels.append(f"{name}[{client}]")
            else:
                labels += [f"{name}[{client},{','.join(map(str, i))}]" for i in np.ndindex(shape)]
        out[name] = (labels, flat)
    return out


def reference_stats(result) -> dict[str, dict[str, Any]]:
    """Per element mean, sd, Monte Carlo standard error of the mean, bulk ESS and R-hat."""
    import numpy as np
    from arviz_stats.base import array_stats

    stats = {}
    for name, (labels, d) in element_draws(result).items():
        flat = d.reshape(-1, d.shape[-1])
        stats[name] = {
            "labels": labels,
            "mean": flat.mean(axis=0),
            "sd": flat.std(axis=0, ddof=1),
            "mcse_mean": np.asarray(
                array_stats.mcse(d, chain_axis=0, draw_axis=1, method="mean"), dtype=float
            ),
            "mcse_sd": np.asarray(
                array_stats.mcse(d, chain_axis=0, draw_axis=1, method="sd"), dtype=float
            ),
            "ess_bulk": np.asarray(
                array_stats.ess(d, chain_axis=0, draw_axis=1, method="bulk"), dtype=float
            ),
            "r_hat": np.asarray(array_stats.rhat(d, chain_axis=0, draw_axis=1), dtype=float),
        }
    return stats


def compare(
    fit, ref: dict[str, dict[str, Any]], bounds: dict[str, float], default_bound: float, sd_range
) -> dict[str, Any]:
    """Element-wise ``z = |mean_fit - mean_ref| / sd_ref`` and ``r = sd_fit / sd_ref``.

    ``fit`` is a :class:`~bayes_pfl.results.FitResult` or its :func:`reference_stats`.
    Returns the worst z and the sd-ratio range over all elements (with the element where
    each occurs), per-variable summaries, and whether every element is within its bound
    (``bounds[var]`` or ``default_bound``) and every ratio within ``sd_range``.
    ``noise_z`` is the z that Monte Carlo error alone would give at the worst element:
    ``sqrt(mcse_ref^2 + mcse_fit^2) / sd_ref``. ``noise_r`` is the standard error of an
    sd ratio from Monte Carlo error alone, ``r sqrt((mcse_sd_ref / sd_ref)^2 +
    (mcse_sd_fit / sd_fit)^2)``, at the smallest and largest ratio; ``n_sd_fail_3se``
    counts the ratios outside ``sd_range`` by more than three of their standard errors
    (those that Monte Carlo error does not explain).
    """
    import numpy as np

    fit_stats = fit if isinstance(fit, dict) else reference_stats(fit)
    lo, hi = sd_range
    per_var = {}
    worst = {"z": -1.0}
    r_min = {"r": np.inf}
    r_max = {"r": -np.inf}
    z_ok = r_ok = True
    n_sd_3se = 0
    for name, fs in fit_stats.items():
        rs = ref[name]
        labels = list(fs["labels"])
        if labels != list(rs["labels"]):
            raise ValueError(f"{name}: element labels differ between fit and reference")
        z = np.abs(fs["mean"] - rs["mean"]) / rs["sd"]
        r = fs["sd"] / rs["sd"]
        noise = np.sqrt(rs["mcse_mean"] ** 2 + fs["mcse_mean"] ** 2) / rs["sd"]
        known_r = "mcse_sd" in rs and "mcse_sd" in fs  # stats saved before mcse_sd: unknown
        if known_r:
            noise_r = r * np.sqrt((rs["mcse_sd"] / rs["sd"]) ** 2 + (fs["mcse_sd"] / fs["sd"]) ** 2)
        else:
            noise_r = np.full(len(labels), np.nan)
        outside = np.maximum(lo - r, r - hi)  # > 0 outside the range
        bound = bounds.get(name, default_bound)
        iz, ilo, ihi = int(np.argmax(z)), int(np.argmin(r)), int(np.argmax(r))
        per_var[name] = {
            "n": len(labels),
            "bound": bound,
            "max_z": float(z[iz]),
            "max_z_at": labels[iz],
            "noise_z_at_max": float(noise[iz]),
            "median_z": float(np.median(z)),
            "min_sd_ratio": float(r[ilo]),
            "min_sd_ratio_at": labels[ilo],
            "max_sd_ratio": float(r[ihi]),
            "max_sd_ratio_at": labels[ihi],
            "z_pass": bool(np.all(z <= bound)),
            "n_z_fail": int(np.sum(z > bound)),
            "sd_pass": bool(np.all((r >= lo) & (r <= hi))),
            "n_sd_fail": int(np.sum((r < lo) | (r > hi))),
            "n_sd_fail_3se": int(np.sum(outside > 3 * noise_r)) if known_r else None,
        }
        z_ok &= per_var[name]["z_pass"]
        r_ok &= per_var[name]["sd_pass"]
        if z[iz] > worst["z"]:
            worst = {"z": float(z[iz]), "at": labels[iz], "bound": bound, "noise_z": noise[iz]}
        n_3se = per_var[name]["n_sd_fail_3se"]
        n_sd_3se = None if n_3se is None or n_sd_3se is None else n_sd_3se + n_3se
        if r[ilo] < r_min["r"]:
            r_min = {"r": float(r[ilo]), "at": labels[ilo], "noise_r": float(noise_r[ilo])}
        if r[ihi] > r_max["r"]:
            r_max = {"r": float(r[ihi]), "at": labels[ihi], "noise_r": float(noise_r[ihi])}
    worst["noise_z"] = float(worst["noise_z"])
    return {
        "worst_z": worst,
        "sd_ratio_min": r_min,
        "sd_ratio_max": r_max,
        "z_pass": bool(z_ok),
        "sd_pass": bool(r_ok),
        "n_sd_fail_3se": n_sd_3se,
        "per_variable": per_var,
    }


def global_figures(fit) -> dict[str, Any]:
    """A fit's seconds for the global and the personalized draws, its lowest personalization
    acceptance and its global divergences (``None`` where the fit does not report them)."""
    import numpy as np

    stats = fit.sample_stats
    return {
        "global_time_s": fit.info.get("global_time_s"),
        "personalize_time_s": fit.info.get("personalize_time_s"),
        "min_personalize_acceptance": fit.info.get("min_personalize_acceptance"),
        "global_divergences": int(np.sum(stats["diverging"]))
        if stats and "diverging" in stats
        else None,
    }


def last_round_figures(fit) -> dict[str, Any]:
    """The changes of the last round's global moments and the messages the server rejected."""
    hist = fit.history
    return {
        "last_mean_change": hist[-1].get("mean_change") if hist else None,
        "last_sd_change": hist[-1].get("sd_change") if hist else None,
        "rejected_messages": int(sum(h.get("n_rejected", 0) for h in hist)),
    }


def save_stats(path, stats: dict[str, dict[str, Any]]) -> None:
    """Write :func:`reference_stats` to an ``.npz`` file (``var/field`` keys)."""
    import numpy as np

    flat = {f"{var}/{k}": np.asarray(v) for var, s in stats.items() for k, v in s.items()}
    np.savez(path, **flat)


def load_stats(path) -> dict[str, dict[str, Any]]:
    """Read what :func:`save_stats` wrote."""
    import numpy as np

    out: dict[str, dict[str, Any]] = {}
    with np.load(path) as z:
        for key in z.files:
            var, k = key.rsplit("/", 1)
            out.setdefault(var, {})[k] = z[key]
    for s in out.values():
        s["labels"] = [str(a) for a in s["labels"]]
    return out


def jsonable(obj):
    """Turn numpy and JAX values into JSON types."""
    import numpy as np

    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if hasattr(obj, "__array__"):
        return np.asarray(obj).tolist()
    return obj


def write_results(stem: str, payload: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    """Write ``results/<stem>.json`` and ``results/<stem>.md``."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    js, md = RESULTS / f"{stem}.json", RESULTS / f"{stem}.md"
    js.write_text(json.dumps(jsonable(payload), indent=1) + "\n")
    md.write_text(markdown)
    return js, md


def saved_cases(stem: str) -> dict[str, Any]:
    """The cases of the last run's ``results/{stem}.json`` (none without one): a run of some
    cases keeps the others."""
    previous = RESULTS / f"{stem}.json"
    return json.loads(previous.read_text()).get("cases", {}) if previous.exists() else {}


def rewrite_report(stem: str, markdown_fn) -> str:
    """``results/{stem}.md`` written again from ``results/{stem}.json`` by
    ``markdown_fn(cases, meta, quick)``; returns the text."""
    saved = json.loads((RESULTS / f"{stem}.json").read_text())
    md = markdown_fn(saved["cases"], saved, saved["quick"])
    (RESULTS / f"{stem}.md").write_text(md)
    return md


def run_cases(stem: str, names, order, meta: dict, run_fn, markdown_fn) -> int:
    """Run the cases ``names``: ``run_fn(name, previous)`` returns a case's results
    (``previous``: its results of the last run, or ``None``). The cases not rerun are kept;
    ``results/{stem}.json`` and ``.md`` (``markdown_fn(cases, meta, quick)``, the cases in
    the order of ``order``) are written after every case."""
    results = saved_cases(stem)
    for name in names:
        results[name] = {"run": machine(), **run_fn(name, results.get(name))}
        ordered = {c: results[c] for c in order if c in results}
        md = markdown_fn(ordered, meta, meta["quick"])
        js, mdp = write_results(stem, {**meta, "cases": ordered}, md)
    print("\n" + md)
    print(f"wrote {js} and {mdp}")
    return 0


def add_selection(parser, flag: str, names, help: str | None = None) -> None:
    """A command-line ``flag`` taking some of ``names``, or ``all`` (the default)."""
    parser.add_argument(flag, nargs="+", choices=[*names, "all"], default=["all"], help=help)


def selected(names, picked: list[str]) -> list:
    """The ``names`` picked with :func:`add_selection`'s flag, in the order of ``names``."""
    return list(names) if "all" in picked else [n for n in names if n in picked]


def md_table(header: list[str], rows: list[list[Any]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def sd_range_text(lo: dict, hi: dict) -> str:
    """``"0.905 ±0.03 (`a`) - 1.088 ±0.03 (`b`)"``: the extreme sd ratios with their
    Monte Carlo standard errors (when known)."""

    def one(d):
        se = d.get("noise_r")
        se_s = f" ±{se:.3f}" if se is not None and not math.isnan(se) else ""
        return f"{d['r']:.3f}{se_s} (`{d['at']}`)"

    return f"{one(lo)} - {one(hi)}"


def sd_verdict(cmp: dict) -> str:
    """``"PASS"`` / ``"**FAIL**"`` for a :func:`compare` result's sd ratios, with how many
    fall outside the range by more than 3 Monte Carlo standard errors (when known)."""
    beyond = cmp.get("n_sd_fail_3se")
    return ("PASS" if cmp["sd_pass"] else "**FAIL**") + (
        f" ({beyond} beyond 3 se)" if beyond is not None else ""
    )


def split_federation(fed, seed: int, *, test_size: float = 0.3, val_size: float = 0.0):
    """``FederatedData`` of a :class:`~bayes_pfl.synthetic.SyntheticFederation`, with a
    held-out split per client (the benchmarks' synthetic cases)."""
    from bayes_pfl import FederatedData

    return FederatedData.from_pandas(
        fed.data,
        client_col=fed.client_col,
        target=fed.target,
        features=list(fed.features),
        test_size=test_size,
        val_size=val_size,
        seed=seed,
    )
