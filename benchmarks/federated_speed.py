# ruff: noqa: E402  (JAX must be configured before anything imports it)
"""Speed, scaling, memory and communication of federated EP against centralized NUTS.

Speed target: a synthetic hierarchical logistic regression with 1,000 clients x 50 rows
x 10 features (``make_federation(family="bernoulli", n_clients=1000, n_features=10,
sizes=50, seed=2)``, model ``logistic(10)``):

* centralized ``fit_nuts`` (2 chains x 1000 warmup / 1000 samples),
* ``fit_ep(rounds=10, global_method="laplace", num_chains=2)``, called twice in one
  process: cold (first call, JIT compilation included) and warm (second call),
* ``fit_ep(rounds=10, global_method="nuts", num_chains=2)``, cold,

(2 x 1000 global draws, as many joint draws as the NUTS reference, every client
personalized for each),

each in a fresh process, so every cold time includes all of its compilation. The
Laplace-global process writes JAX's persistent compilation cache (as ``bayes-pfl fit``
does by default) and a second fresh process fits again with it: the time of a repeated
run of the same model and data shapes in a new process. Reported:
end-to-end times (excluding interpreter start-up, imports and data generation), the
ratio NUTS / EP, and EP's accuracy against that NUTS run (worst ``z`` over all parameter
elements, bound 0.15; sd ratios in [0.9, 1.1]).

Scaling: ``fit_ep(rounds=5, tol=1e-12, global_method="laplace", num_samples=100)`` for
100, 1,000 and 10,000 clients x 50 rows x 10 features, each in a fresh process: cold time,
time per round after the first (no compilation), global and personalization time, peak
resident memory of the process, and bytes per client per round in each direction. A size
that runs past ``--timeout`` seconds is stopped; its completed rounds (from the fit's
checkpoint) are still reported.

Run from the repository root::

    .venv/bin/python benchmarks/federated_speed.py                 # full run
    .venv/bin/python benchmarks/federated_speed.py --part scaling  # one part
    .venv/bin/python benchmarks/federated_speed.py --quick         # smoke run, small sizes

Writes ``benchmarks/results/federated_speed.json`` and ``.md`` (``--quick``:
``federated_speed_quick.*``); a ``--part`` run replaces that part in the output and keeps
the other.
"""

from _common import configure_jax

configure_jax(host_devices=4)

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import (
    RESULTS,
    compare,
    load_stats,
    machine,
    md_table,
    reference_stats,
    save_stats,
    sd_range_text,
    sd_verdict,
    write_results,
)

SEED = 0
BOUND = 0.15
SD_RANGE = (0.9, 1.1)
N_ROWS = 50
N_FEATURES = 10

FULL = {
    "target_clients": 1000,
    "nuts": {"num_chains": 2, "num_warmup": 1000, "num_samples": 1000},
    # as many joint draws as the NUTS reference (2 x 1000), each client personalized
    "target_ep": {
        "laplace": {"calls": 2, "kwargs": {"num_chains": 2}, "cached_rerun": True},
        "nuts": {"calls": 1, "kwargs": {"num_chains": 2}},
    },
    "scaling_clients": [100, 1000, 10000],
    # personalization costs draws x clients: 4 x 100 draws keep 10,000 clients affordable
    "scaling_kwargs": {"num_samples": 100},
    "timeout_s": 1200,
}
QUICK = {
    "target_clients": 100,
    "nuts": {"num_chains": 2, "num_warmup": 300, "num_samples": 300},
    "target_ep": {
        "laplace": {"calls": 2, "kwargs": {"num_samples": 100}, "cached_rerun": True},
        "nuts": {"calls": 1, "kwargs": {"num_samples": 100}},
    },
    "scaling_clients": [50, 100, 200],
    "scaling_kwargs": {"num_samples": 100},
    "timeout_s": 600,
}


# --------------------------------------------------------------------------------------
# worker: one job in a fresh process


def _data(n_clients: int, seed: int):
    from bayes_pfl import FederatedData
    from bayes_pfl.synthetic import make_federation

    fed = make_federation(
        family="bernoulli", n_clients=n_clients, n_features=N_FEATURES, sizes=N_ROWS, seed=seed
    )
    return FederatedData.from_pandas(
        fed.data, client_col=fed.client_col, target=fed.target, features=list(fed.features)
    )


HISTORY_KEYS = (
    "round",
    "wall_time_s",
    "mean_change",
    "sd_change",
    "damping",
    "n_accepted",
    "n_rejected",
    "client_converged_count",
    "client_iterations_max",
)


def _rounds(history: list[dict]) -> list[dict]:
    return [{k: h[k] for k in HISTORY_KEYS if k in h} for h in history]


def _ep_record(fit, seconds: float) -> dict:
    hist = fit.history
    per_round = [h["wall_time_s"] for h in hist]
    return {
        "wall_time_s": seconds,
        "rounds": fit.info["rounds"],
        "converged": fit.info["converged"],
        "rounds_time_s": float(sum(per_round)),
        "round_times_s": per_round,
        "global_time_s": fit.info["global_time_s"],
        "personalize_time_s": fit.info["personalize_time_s"],
        # everything after the rounds: global draws, personalization, result assembly
        "after_rounds_s": seconds - float(sum(per_round)),
        "bytes_up_per_client": [h["bytes_up_per_client"] for h in hist],
        "bytes_down_per_client": [h["bytes_down_per_client"] for h in hist],
        "rejected_messages": int(sum(h.get("n_rejected", 0) for h in hist)),
        "settings": fit.info["settings"],
        "history": _rounds(hist),
    }


def worker(job: dict, out: Path) -> None:
    """Run one job; write ``out.json`` (timings) and ``out.npz`` (posterior summaries)."""
    from bayes_pfl import fit_nuts
    from bayes_pfl.federated import fit_ep
    from bayes_pfl.models import logistic

    if job.get("compilation_cache"):
        import jax

        # JAX's persistent cache: compiled executables on disk, reused by later processes
        jax.config.update("jax_compilation_cache_dir", job["compilation_cache"])
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    t0 = time.perf_counter()
    data = _data(job["clients"], job["data_seed"])
    record: dict = {"job": job, "data_time_s": time.perf_counter() - t0}
    model = logistic(N_FEATURES)
    if job["kind"] == "nuts":
        t0 = time.perf_counter()
        fit = fit_nuts(model, data, seed=SEED, progress_bar=False, **job["settings"])
        record["wall_time_s"] = time.perf_counter() - t0
        record["settings"] = fit.info["settings"]
        record["divergences"] = int(np.sum(fit.sample_stats["diverging"]))
        record["mean_tree_depth"] = float(np.mean(fit.sample_stats["tree_depth"]))
        stats = reference_stats(fit)
        record["max_r_hat"] = float(max(np.nanmax(s["r_hat"]) for s in stats.values()))
        record["min_ess_bulk"] = float(min(np.nanmin(s["ess_bulk"]) for s in stats.values()))
        save_stats(out.with_suffix(".npz"), stats)
    else:
        calls = []
        # the checkpoint's history (rewritten after every round) survives a timeout
        ckpt = {"checkpoint": f"{out}_ckpt"} if job.get("checkpoint") else {}
        for _ in range(job["calls"]):
            t0 = time.perf_counter()
            fit = fit_ep(model, data, seed=SEED, progress=False, **ckpt, **job["settings"])
            calls.append(_ep_record(fit, time.perf_counter() - t0))
        record["calls"] = calls
        if job.get("stats"):
            save_stats(out.with_suffix(".npz"), reference_stats(fit))
    out.with_suffix(".json").write_text(json.dumps(record))


def spawn(job: dict, tmp: Path, name: str, timeout: float | None = None) -> dict:
    """Run ``job`` in a fresh Python process; add its peak RSS and its summaries.

    A worker still running after ``timeout`` seconds is killed; the record then holds the
    rounds its checkpoint had written.
    """
    out = tmp / name
    cmd = [sys.executable, __file__, "--worker", json.dumps(job), "--out", str(out)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd)
    timed_out = False
    loads = []
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        loads.append(os.getloadavg()[0])
        if timeout is not None and time.perf_counter() - t0 > timeout:
            proc.kill()
            timed_out = True
            _, status, usage = os.wait4(proc.pid, 0)
            break
        time.sleep(0.5)
    proc.returncode = os.waitstatus_to_exitcode(status)
    elapsed = time.perf_counter() - t0
    base = {
        "job": job,
        "process_time_s": elapsed,
        "max_rss_mb": usage.ru_maxrss / 1024,
        # 1-minute load average while it ran (the worker itself counts up to 2 on 2 cores);
        # well above the core count means other processes competed for the CPU
        "load_avg_mean": float(np.mean(loads)) if loads else None,
        "load_avg_max": float(np.max(loads)) if loads else None,
    }
    if timed_out:
        hist_path = Path(f"{out}_ckpt.json")
        hist = json.loads(hist_path.read_text()) if hist_path.exists() else []
        return {**base, "error": f"timed out after {timeout:.0f} s", "history": _rounds(hist)}
    if proc.returncode != 0:
        return {**base, "error": f"worker exited with {proc.returncode}"}
    record = {**json.loads(out.with_suffix(".json").read_text()), **base}
    if out.with_suffix(".npz").exists():
        record["stats_path"] = str(out.with_suffix(".npz"))
    return record


# --------------------------------------------------------------------------------------
# the benchmark


def _call_repr(settings: dict) -> str:
    return "fit_ep(" + ", ".join(f"{k}={v!r}" for k, v in settings.items()) + ")"


def speed_target(cfg: dict, tmp: Path) -> dict:
    k = cfg["target_clients"]
    base = {"clients": k, "data_seed": 2}
    print(f"\n=== speed target: {k} clients x {N_ROWS} rows x {N_FEATURES} features", flush=True)
    nuts = spawn({**base, "kind": "nuts", "settings": cfg["nuts"]}, tmp, "nuts")
    print(f"centralized NUTS: {nuts.get('wall_time_s', float('nan')):.1f} s", flush=True)
    ref = load_stats(nuts.pop("stats_path")) if "stats_path" in nuts else None
    out = {"clients": k, "rows": N_ROWS, "features": N_FEATURES, "nuts": nuts, "ep": {}}
    for gm, spec in cfg["target_ep"].items():
        settings = {"rounds": 10, "global_method": gm, **spec["kwargs"]}
        job = {**base, "kind": "ep", "calls": spec["calls"], "stats": True, "settings": settings}
        if spec.get("cached_rerun"):
            job["compilation_cache"] = str(tmp / f"jax-cache-{gm}")
        rec = spawn(job, tmp, f"ep_{gm}")
        if spec.get("cached_rerun") and "error" not in rec:
            # a new process finding the first one's compiled code in the persistent cache
            again = spawn({**job, "calls": 1, "stats": False}, tmp, f"ep_{gm}_cached")
            if "error" not in again:
                rec["cached"] = {**again["calls"][0], "max_rss_mb": again["max_rss_mb"]}
                rec["cached"]["load_avg"] = [again["load_avg_mean"], again["load_avg_max"]]
        rec["call"] = _call_repr(settings)
        if "error" not in rec:
            if "error" not in nuts:
                rec["nuts_over_ep"] = [nuts["wall_time_s"] / c["wall_time_s"] for c in rec["calls"]]
                if "cached" in rec:
                    rec["cached"]["nuts_over_ep"] = (
                        nuts["wall_time_s"] / rec["cached"]["wall_time_s"]
                    )
            if ref is not None:
                stats = load_stats(rec.pop("stats_path"))
                rec["accuracy"] = compare(stats, ref, {}, BOUND, SD_RANGE)
            acc = rec.get("accuracy", {})
            times = ", ".join(f"{c['wall_time_s']:.1f} s" for c in rec["calls"])
            ratios = ", ".join(f"{x:.2f}x" for x in rec.get("nuts_over_ep", []))
            print(
                f"EP global={gm}: calls {times}, rounds {rec['calls'][0]['rounds']}, "
                f"NUTS/EP {ratios}, worst z {acc.get('worst_z', {}).get('z')}",
                flush=True,
            )
        out["ep"][gm] = rec
    return out


def scaling(cfg: dict, tmp: Path) -> list[dict]:
    rows = []
    for k in cfg["scaling_clients"]:
        # fit_ep's default sites over client effects (the server samples its exact density
        # with NUTS; global_method applies to sites="global" only)
        settings = {"rounds": 5, "tol": 1e-12}
        settings.update(cfg["scaling_kwargs"])
        job = {
            "clients": k,
            "data_seed": 2,
            "kind": "ep",
            "calls": 1,
            "checkpoint": True,
            "settings": settings,
        }
        rec = spawn(job, tmp, f"scale_{k}", timeout=cfg["timeout_s"])
        rec["call"] = _call_repr(settings)
        hist = rec["calls"][0]["history"] if "calls" in rec else rec.get("history", [])
        times = [h["wall_time_s"] for h in hist]
        rec["rounds_done"] = len(times)
        rec["round1_s"] = times[0] if times else None
        rec["later_round_s"] = float(np.median(times[1:])) if len(times) > 1 else None
        rec["iterations_max"] = [h.get("client_iterations_max") for h in hist]
        msg = f"scaling {k:6d} clients: "
        if "error" in rec:
            msg += f"{rec['error']} after {len(times)} round(s): {[round(t, 1) for t in times]}"
        else:
            c = rec["calls"][0]
            msg += (
                f"cold {c['wall_time_s']:.1f} s, round 1 {rec['round1_s']:.1f} s, later "
                f"{rec['later_round_s']:.2f} s/round, after rounds {_after_rounds(c):.1f} s"
            )
        print(f"{msg}, max RSS {rec['max_rss_mb']:.0f} MB", flush=True)
        rows.append(rec)
    return rows


def _fmt(x, spec: str = ".1f") -> str:
    return "-" if x is None else format(x, spec)


def _after_rounds(call: dict) -> float | None:
    if not call:
        return None
    return call.get("after_rounds_s", call["wall_time_s"] - call["rounds_time_s"])


def _load(r: dict) -> str:
    if r.get("load_avg_mean") is None:
        return "-"
    return f"{r['load_avg_mean']:.1f} / {r['load_avg_max']:.1f}"


def markdown(res: dict, meta: dict) -> str:
    m = meta["machine"]
    quick = meta["quick"]
    out = ["# Federated speed and scaling\n"]
    out.append(
        f"Machine: {m['cpu_count']}-core CPU ({m['platform']}), JAX backend "
        f"`{m['jax_backend']}` with {m['jax_devices']} host devices, float64, seed {SEED}"
        f"{' (**--quick smoke run**: small sizes, not the targets)' if quick else ''}. "
        "Each fit runs in a fresh process; times are end to end including JIT compilation "
        "(excluding interpreter start-up, imports and data generation). *rounds*: the EP "
        "rounds (sum of the history's round times); *after rounds*: the rest of the call "
        "(server draws of the global parameters, personalization of every client, building "
        "the result). *load avg*: the 1-minute load average while the "
        "fit ran; the fit itself accounts for up to 2 on this 2-core machine, more means "
        "other processes competed for the CPU.\n"
    )
    if "target" in res:
        out += _target_markdown(res["target"])
    if "scaling" in res:
        out += _scaling_markdown(res["scaling"], res.get("scaling_run", {}))
    return "\n".join(out)


def _target_markdown(t: dict) -> list[str]:
    n = t["nuts"]
    out = [
        f"## Speed target: {t['clients']:,} clients x {t['rows']} rows x {t['features']} "
        "features (hierarchical logistic)\n",
        f"Run {t.get('run', {}).get('date', '?')}.\n",
    ]
    if "error" in n:
        out.append(f"Centralized NUTS failed: {n['error']}\n")
    else:
        s = n["settings"]
        out.append(
            f"Centralized NUTS: {s['num_chains']} chains x {s['num_warmup']} warmup / "
            f"{s['num_samples']} samples ({s['chain_method']} chains), "
            f"**{n['wall_time_s']:.1f} s**, {n['divergences']} divergences, mean tree depth "
            f"{n['mean_tree_depth']:.1f}, max R-hat {n['max_r_hat']:.3f}, min bulk ESS "
            f"{n['min_ess_bulk']:.0f}, peak RSS {n['max_rss_mb']:.0f} MB.\n"
        )
    rows = []
    for r in t["ep"].values():
        if "error" in r:
            rows.append([f"`{r['call']}`", r["error"]] + [""] * 9)
            continue
        acc = r.get("accuracy")
        if acc:
            w, lo, hi = acc["worst_z"], acc["sd_ratio_min"], acc["sd_ratio_max"]
            zs = f"{w['z']:.3f} (`{w['at']}`) {'PASS' if acc['z_pass'] else '**FAIL**'}"
            rs = f"{sd_range_text(lo, hi)} {sd_verdict(acc)}"
        else:
            zs = rs = "-"
        ratios = r.get("nuts_over_ep", [])
        for i, c in enumerate(r["calls"]):
            rows.append(
                [
                    f"`{r['call']}`",
                    "cold" if i == 0 else "warm",
                    f"{c['rounds']} ({'converged' if c['converged'] else 'not converged'})",
                    f"**{c['wall_time_s']:.1f}**",
                    f"{c['rounds_time_s']:.1f}",
                    f"{_after_rounds(c):.1f}",
                    f"{r['max_rss_mb']:.0f}",
                    _load(r),
                    f"**{ratios[i]:.2f}x**" if i < len(ratios) else "-",
                    zs if i == 0 else "(same draws)",
                    rs if i == 0 else "",
                ]
            )
        if "cached" in r:
            c = r["cached"]
            rows.append(
                [
                    f"`{r['call']}`",
                    "new process, compilation cache",
                    f"{c['rounds']} ({'converged' if c['converged'] else 'not converged'})",
                    f"**{c['wall_time_s']:.1f}**",
                    f"{c['rounds_time_s']:.1f}",
                    f"{_after_rounds(c):.1f}",
                    f"{c['max_rss_mb']:.0f}",
                    " / ".join(f"{x:.1f}" for x in c["load_avg"]),
                    f"**{c['nuts_over_ep']:.2f}x**" if "nuts_over_ep" in c else "-",
                    "(same fit)",
                    "",
                ]
            )
    out.append(
        md_table(
            [
                "EP call",
                "call",
                "rounds",
                "total (s)",
                "rounds (s)",
                "after rounds (s)",
                "peak RSS (MB)",
                "load avg mean / max",
                "NUTS time / EP time",
                f"worst z vs NUTS (bound {BOUND})",
                f"sd ratio range, ± Monte Carlo se (target {SD_RANGE[0]}-{SD_RANGE[1]}; "
                "reported, the target's bound is on z)",
            ],
            rows,
        )
    )
    return out


def _scaling_markdown(scaling_rows: list[dict], run: dict) -> list[str]:
    call = scaling_rows[0]["call"] if scaling_rows else ""
    out = [
        f"## Scaling: `{call}`, {N_ROWS} rows x {N_FEATURES} features per client\n",
        f"Run {run.get('date', '?')}. *later rounds*: median wall time of rounds 2-5 (no "
        "compilation); *max client Newton iterations*: per round, the most outer Newton "
        "iterations any client needed (clients run in lockstep under `vmap`).\n",
    ]
    rows = []
    for r in scaling_rows:
        k = r["job"]["clients"]
        c = r["calls"][0] if "calls" in r else {}
        up = c.get("bytes_up_per_client", [None])
        down = c.get("bytes_down_per_client", [None])
        rows.append(
            [
                f"{k:,}",
                r.get("error", "ok"),
                f"{r['rounds_done']}",
                _fmt(c.get("wall_time_s")),
                _fmt(r["round1_s"]),
                _fmt(r["later_round_s"], ".2f"),
                _fmt(_after_rounds(c)),
                f"{r['max_rss_mb']:.0f}",
                _load(r),
                "-" if up[0] is None else f"{up[0]:,}",
                "-" if down[0] is None else f"{down[0]:,}",
                ", ".join(_fmt(i, ".0f") for i in r["iterations_max"]),
            ]
        )
    out.append(
        md_table(
            [
                "clients",
                "status",
                "rounds done",
                "cold total (s)",
                "round 1 (s, incl. compile)",
                "later rounds (s/round)",
                "after rounds (s)",
                "peak RSS (MB)",
                "load avg mean / max",
                "bytes up / client / round",
                "bytes down / client / round",
                "max client Newton iterations per round",
            ],
            rows,
        )
    )
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    parser.add_argument("--part", choices=["all", "target", "scaling"], default="all")
    parser.add_argument("--timeout", type=float, help="seconds per scaling size")
    parser.add_argument(
        "--report-only", action="store_true", help="rewrite the .md from the .json, run nothing"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(json.loads(args.worker), Path(args.out))
        return 0
    stem = "federated_speed" + ("_quick" if args.quick else "")
    if args.report_only:
        saved = json.loads((RESULTS / f"{stem}.json").read_text())
        md = markdown(saved, saved)
        (RESULTS / f"{stem}.md").write_text(md)
        print(md)
        return 0
    cfg = dict(QUICK if args.quick else FULL)
    if args.timeout:
        cfg["timeout_s"] = args.timeout
    meta = {"machine": machine(), "seed": SEED, "quick": args.quick, "config": cfg}
    res: dict = {}
    previous = RESULTS / f"{stem}.json"
    if args.part != "all" and previous.exists():  # keep the part not rerun now
        old = json.loads(previous.read_text())
        res = {k: old[k] for k in ("target", "scaling", "scaling_run") if k in old}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        if args.part in ("all", "target"):
            res["target"] = {"run": machine(), **speed_target(cfg, Path(tmp))}
        if args.part in ("all", "scaling"):
            res["scaling_run"] = machine()
            res["scaling"] = scaling(cfg, Path(tmp))
    meta["total_time_s"] = time.perf_counter() - t0
    md = markdown(res, meta)
    js, mdp = write_results(stem, {**meta, **res}, md)
    print("\n" + md)
    print(f"wrote {js} and {mdp} in {meta['total_time_s']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
