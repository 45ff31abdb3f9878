# ruff: noqa: E402  (JAX must be configured before anything imports it)
"""Hierarchical Bayesian networks against optimization baselines on the digits federation.

Digits federation (:func:`bayes_pfl.datasets.digits.make_digits_federation`: label
skew + per-client brightness/contrast shift), 20 clients, per-client split 55/15/30
(train/validation/test), 3 seeds (each seed re-draws the federation, the split and
the initialization). Every method gets a small grid of hyper-parameters, chosen per
seed by mean per-client *validation* log-loss; the chosen fit is scored on the test
rows (never used for selection). Metrics per client, then averaged over clients:
accuracy, log-loss, expected calibration error (10 bins, top-label,
:func:`bayes_pfl.metrics.expected_calibration_error`); clients with <= 20 training
images are also reported separately. Per-round wall time of the hierarchical
network (vmapped over clients, after the compiling first round) for 25/50/100
clients shows how the cost grows with the number of clients.

Run from the repository root::

    nice .venv/bin/python benchmarks/neural_digits.py            # 3 seeds
    nice .venv/bin/python benchmarks/neural_digits.py --quick    # 1 seed, smoke run
    nice .venv/bin/python benchmarks/neural_digits.py --heart    # heart-disease hospitals

Writes ``benchmarks/results/neural_digits.json`` and ``.md`` (``--quick``:
``neural_digits_quick.*``); ``--heart`` writes ``neural_heart.*``.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse
import time
import warnings

import jax
import numpy as np
from _common import machine, md_table, write_results

from bayes_pfl import metrics as M
from bayes_pfl.baselines import fit_baseline
from bayes_pfl.datasets.digits import make_digits_federation
from bayes_pfl.neural import NeuralTrainingError, fit_neural

SMALL = 20  # clients with at most this many training images are reported separately
ROUNDS, LOCAL_STEPS = 30, 20

BASELINE_GRID = [{"optimizer": "sgd", "lr": 0.2}, {"optimizer": "adam", "lr": 0.01}]
# the networks' body gets the baselines' optimizer choices; the variational head is Adam's
NEURAL_GRID = [
    {**opt, "tau": t, "kl_weight": w}
    for opt in BASELINE_GRID
    for t in (0.03, 0.1)
    for w in (1.0, 0.01)
]
BASELINES = {
    "fedavg": "mlp",
    "fedbn": "mlp_bn",
    "ditto": "mlp",
    "pfedme": "mlp",
    "fedper": "mlp",
}
NEURAL = ("bayes_head", "bayes_head_bn", "bayes_head_adapters")


def _scores(p, arr) -> dict[str, np.ndarray]:
    """Per-client metrics; ``ece_floor`` is the ECE a perfectly calibrated predictor with
    these probabilities would show on these rows (:func:`bayes_pfl.metrics.calibrated_ece`)."""
    return {
        "accuracy": M.accuracy(p, arr.y, arr.mask),
        "log_loss": M.log_loss(p, arr.y, arr.mask),
        "ece": M.expected_calibration_error(p, arr.y, arr.mask),
        "ece_floor": M.calibrated_ece(p, arr.mask, reps=200, seed=0),
    }


def _pooled_ece(p, arr, clients) -> float:
    """ECE over the test rows of ``clients`` pooled (one reliability diagram for all)."""
    p, y, m = (np.asarray(a)[clients] for a in (p, arr.y, arr.mask))
    flat = (p.reshape(1, -1, p.shape[-1]), y.reshape(1, -1), m.reshape(1, -1))
    return float(M.expected_calibration_error(*flat)[0])


def _paired(per_seed: dict, a: str, b: str, key: str) -> dict:
    """Mean over seeds of ``a - b`` in ``key``, its standard error and the seeds' count:
    both methods see the same federation, split and test rows in a seed, so the
    difference cancels what the seeds share."""
    d = np.array(
        [per_seed[s]["methods"][a][key] - per_seed[s]["methods"][b][key] for s in per_seed]
    )
    se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")
    return {"mean": float(d.mean()), "se": se, "n": len(d)}


def _diverged_text(per_seed: dict) -> str:
    counts: dict[str, dict] = {}
    for s in per_seed:
        for method, cfgs in per_seed[s]["diverged"].items():
            for cfg in cfgs:
                key = ", ".join(f"{k} {v}" for k, v in cfg.items())
                counts.setdefault(method, {}).setdefault(key, []).append(s)
    if not counts:
        return "none"
    return "; ".join(f"{m} ({k}) in seeds {v}" for m, by in counts.items() for k, v in by.items())


def _fmt_paired(p: dict) -> str:
    return f"{p['mean']:+.4f} ± {p['se']:.4f} (se, {p['n']} seeds)"


def _fit(method: str, data, cfg: dict, seed: int):
    if method in NEURAL:
        fit = fit_neural(
            data, variant=method, rounds=ROUNDS, local_steps=LOCAL_STEPS, seed=seed, **cfg
        )
        return fit, fit.predict
    fit = fit_baseline(
        method,
        data,
        family="categorical",
        network=BASELINES[method],
        rounds=ROUNDS,
        local_steps=LOCAL_STEPS,
        seed=seed,
        **cfg,
    )
    return fit, fit.predict


def run_seed(seed: int, n_clients: int) -> dict:
    data = make_digits_federation(n_clients=n_clients, seed=seed, test_size=0.3, val_size=0.15)
    val, test = data.arrays("val"), data.arrays("test")
    small = data.n_rows("train") <= SMALL
    diverged: dict[str, list] = {}
    out = {"n_small": int(small.sum()), "methods": {}, "diverged": diverged}
    for method in (*NEURAL, *BASELINES):
        # every candidate compiles its own programs (its settings are closure constants);
        # without this, ten seeds' worth of executables exhaust 24 GB
        jax.clear_caches()
        grid = NEURAL_GRID if method in NEURAL else BASELINE_GRID
        best = None
        for cfg in grid:
            t0 = time.perf_counter()
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    _, predict = _fit(method, data, cfg, seed)
            except NeuralTrainingError as err:  # a candidate that diverged cannot be chosen
                print(f"seed {seed} {method} {cfg}: diverged ({str(err)[:120]})", flush=True)
                diverged.setdefault(method, []).append(cfg)
                continue
            secs = time.perf_counter() - t0
            pv = predict(val.x, val.mask)
            val_acc = float(np.nanmean(M.accuracy(pv, val.y, val.mask)))
            val_ll = float(np.nanmean(M.log_loss(pv, val.y, val.mask)))
            print(
                f"seed {seed} {method} {cfg}: val acc {val_acc:.4f} log-loss {val_ll:.4f} "
                f"({secs:.0f} s)",
                flush=True,
            )
            if best is None or val_ll < best[0]:
                best = (val_ll, cfg, predict, val_acc)
        if best is None:
            raise RuntimeError(f"seed {seed}: every {method} candidate diverged")
        val_ll, cfg, predict, val_acc = best
        pt = predict(test.x, test.mask)
        s = _scores(pt, test)
        everyone = np.ones(len(small), bool)
        out["methods"][method] = {
            "config": cfg,
            "val_accuracy": val_acc,
            "val_log_loss": val_ll,
            **{k: float(np.nanmean(v)) for k, v in s.items()},
            **{f"small_{k}": float(np.nanmean(v[small])) for k, v in s.items()},
            **{f"large_{k}": float(np.nanmean(v[~small])) for k, v in s.items()},
            "ece_pooled": _pooled_ece(pt, test, everyone),
            "small_ece_pooled": _pooled_ece(pt, test, small),
        }
    return out


def heart_federation(seed: int):
    """UCI heart disease, four hospitals, FLamby's ten features (``cp`` one-hot), complete
    rows, per-hospital split 51/15/34, standardized with training statistics."""
    from bayes_pfl.data import FederatedData
    from bayes_pfl.datasets import HEART_DISEASE_FLAMBY_FEATURES, load

    df = load("heart_disease")
    for v in (2, 3, 4):
        df[f"cp_{v}"] = (df["cp"] == v).astype(float)
    feats = [f for f in HEART_DISEASE_FLAMBY_FEATURES if f != "cp"] + ["cp_2", "cp_3", "cp_4"]
    df = df[df[feats].notna().all(axis=1)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return FederatedData.from_pandas(
            df,
            client_col="hospital",
            target="target",
            features=feats,
            test_size=0.34,
            val_size=0.15,
            seed=seed,
            standardize=True,
        )


def run_heart(seeds) -> tuple[dict, str]:
    """The same grids and selection on the four hospitals (binary target, 2 classes)."""
    res = {}
    for seed in seeds:
        data = heart_federation(seed)
        val, test = data.arrays("val"), data.arrays("test")
        res[seed] = {}
        for method in ("bayes_head", *BASELINES):
            grid = NEURAL_GRID if method in NEURAL else BASELINE_GRID
            best = None
            for cfg in grid:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    if method in NEURAL:
                        try:
                            fit = fit_neural(
                                data,
                                variant=method,
                                rounds=ROUNDS,
                                local_steps=LOCAL_STEPS,
                                hidden=(16,),
                                seed=seed,
                                **cfg,
                            )
                        except NeuralTrainingError:  # diverged: not a candidate
                            continue
                    else:
                        fit = fit_baseline(
                            method,
                            data,
                            family="categorical",
                            n_classes=2,
                            network=BASELINES[method],
                            rounds=ROUNDS,
                            local_steps=LOCAL_STEPS,
                            hidden=(16,),
                            seed=seed,
                            **cfg,
                        )
                pv = fit.predict(val.x, val.mask)
                ll = float(np.nanmean(M.log_loss(pv, val.y, val.mask)))
                if best is None or ll < best[0]:
                    best = (ll, cfg, fit)
            s = _scores(best[2].predict(test.x, test.mask), test)
            res[seed][method] = {
                "config": best[1],
                **{k: float(np.nanmean(v)) for k, v in s.items()},
            }
            print(f"heart seed {seed} {method}: {res[seed][method]}", flush=True)
    methods = list(res[seeds[0]])
    rows = []
    for m in methods:
        cells = []
        for k in ("accuracy", "log_loss", "ece"):
            vals = [res[s][m][k] for s in seeds]
            cells.append(f"{np.mean(vals):.3f} ± {np.std(vals):.3f}")
        rows.append([m, *cells])
    md = (
        "# Hierarchical Bayesian network vs baselines: UCI heart disease, four hospitals\n\n"
        f"Seeds {list(seeds)}; complete rows, FLamby's features; per-hospital split "
        "51/15/34; MLP with 16 hidden units; the digits grids; chosen on validation "
        "log-loss; test metrics averaged over the 4 hospitals (mean ± sd over seeds).\n\n"
        + md_table(["method", "accuracy", "log-loss", "ECE"], rows)
    )
    return res, md


def timing(sizes=(25, 50, 100), rounds: int = 5) -> dict:
    """Per-round time; client ``k`` holds the training rows of digits client ``k % 20``,
    so the padded row count is the same for every size and only the client count grows."""
    import jax.numpy as jnp

    from bayes_pfl.baselines.networks import build_network, get_family
    from bayes_pfl.data import ClientArrays
    from bayes_pfl.neural import build
    from bayes_pfl.simulation import run_rounds

    base = make_digits_federation(n_clients=20, seed=0).arrays("train")
    net = build_network("mlp", 64, 10, hidden=(32,))
    out = {}
    for k in sizes:
        idx = np.arange(k) % 20
        arrays = ClientArrays(*(jnp.asarray(np.asarray(a)[idx]) for a in base))
        hn = build(net, get_family("categorical", 10), net.init(0), local_steps=LOCAL_STEPS)
        res = run_rounds(
            hn.algorithm,
            arrays,
            rounds=rounds,
            labels=range(k),
            on_rejected="raise",
            stop_when_converged=False,
            progress=False,
        )
        walls = [h["wall_time_s"] for h in res.history[1:]]
        out[k] = {"per_round_s": float(np.median(walls)), "n_max": int(base.mask.shape[1])}
        print(f"timing {k} clients: {out[k]}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--heart", action="store_true", help="the heart-disease case only")
    args = ap.parse_args()
    if args.heart:
        seeds = list(range(1 if args.quick else args.seeds))
        res, md = run_heart(seeds)
        payload = {"machine": machine(), "per_seed": res, "grids": [BASELINE_GRID, NEURAL_GRID]}
        js, mdp = write_results("neural_heart", payload, md)
        print(f"wrote {js} and {mdp}")
        return
    seeds = range(1 if args.quick else args.seeds)
    t0 = time.perf_counter()
    per_seed = {s: run_seed(s, args.clients) for s in seeds}
    tim = timing(rounds=3 if args.quick else 5)
    methods = list(per_seed[0]["methods"])
    keys = [k for k in per_seed[0]["methods"][methods[0]] if k not in ("config",)]
    summary = {
        m: {
            k: (
                float(np.mean([per_seed[s]["methods"][m][k] for s in seeds])),
                float(np.std([per_seed[s]["methods"][m][k] for s in seeds])),
            )
            for k in keys
        }
        for m in methods
    }
    baselines = [m for m in methods if m not in NEURAL]
    best_base = max(baselines, key=lambda m: summary[m]["accuracy"][0])
    best_bnn = max(NEURAL, key=lambda m: summary[m]["val_accuracy"][0])
    acc_ok = summary[best_bnn]["accuracy"][0] >= summary[best_base]["accuracy"][0]
    paired = {k: _paired(per_seed, best_bnn, best_base, k) for k in ("accuracy", "log_loss")}
    ece_ratio = summary[best_bnn]["ece"][0] / summary[best_base]["ece"][0]
    pooled_ratio = summary[best_bnn]["ece_pooled"][0] / summary[best_base]["ece_pooled"][0]
    targets = {
        "best_baseline": best_base,
        "best_hierarchical": best_bnn,
        "accuracy_at_least_best_baseline": bool(acc_ok),
        "ece_ratio": ece_ratio,
        "ece_at_least_30pct_lower": bool(ece_ratio <= 0.7),
        "ece_pooled_ratio": pooled_ratio,
        "ece_pooled_at_least_30pct_lower": bool(pooled_ratio <= 0.7),
        "ece_floor_best_baseline": summary[best_base]["ece_floor"][0],
        "ece_floor_best_hierarchical": summary[best_bnn]["ece_floor"][0],
        "paired_difference": paired,
    }
    sizes = sorted(tim)
    growth = tim[sizes[-1]]["per_round_s"] / tim[sizes[0]]["per_round_s"]
    payload = {
        "machine": machine(),
        "settings": {
            "n_clients": args.clients,
            "seeds": list(seeds),
            "rounds": ROUNDS,
            "local_steps": LOCAL_STEPS,
            "baseline_grid": BASELINE_GRID,
            "neural_grid": NEURAL_GRID,
            "small_clients_max_train": SMALL,
            "selection": "mean per-client validation log-loss, per seed",
        },
        "per_seed": per_seed,
        "summary": summary,
        "targets": targets,
        "timing": tim,
        "timing_growth_25_to_100": growth,
        "elapsed_s": time.perf_counter() - t0,
    }

    def fmt(m, k):
        mean, sd = summary[m][k]
        return f"{mean:.3f} ± {sd:.3f}"

    rows = [
        [m, *(fmt(m, k) for k in ("accuracy", "log_loss", "ece", "ece_floor", "ece_pooled"))]
        + [fmt(m, k) for k in ("small_accuracy", "small_log_loss", "small_ece")]
        for m in methods
    ]
    md = [
        "# Hierarchical Bayesian networks vs optimization baselines: digits federation\n",
        f"{args.clients} clients, seeds {list(seeds)}, {ROUNDS} rounds × {LOCAL_STEPS} local "
        "steps; hyper-parameters chosen per seed on validation log-loss (baselines: SGD at "
        "0.2 or Adam at 0.01; networks: the same two for the body x tau {0.03, 0.1} x "
        "kl_weight {1, 0.01}, the variational head by Adam at 0.01); test metrics "
        "averaged over clients (mean ± sd over seeds). Small: clients with ≤ 20 training "
        f"images (per seed: {[per_seed[s]['n_small'] for s in seeds]}).\n",
        md_table(
            [
                "method",
                "accuracy",
                "log-loss",
                "ECE",
                "ECE if calibrated",
                "ECE, pooled rows",
                "small: accuracy",
                "small: log-loss",
                "small: ECE",
            ],
            rows,
        ),
        "\n## Targets\n",
        f"- best baseline (test accuracy): **{best_base}**; hierarchical network chosen on "
        f"validation: **{best_bnn}**",
        f"- accuracy ≥ best baseline: **{acc_ok}** ({fmt(best_bnn, 'accuracy')} vs "
        f"{fmt(best_base, 'accuracy')})",
        f"- paired over seeds, {best_bnn} − {best_base}: accuracy "
        f"{_fmt_paired(paired['accuracy'])}, log-loss {_fmt_paired(paired['log_loss'])}",
        f"- candidates that diverged (a client's loss NaN: `NeuralTrainingError`, not "
        f"selectable): {_diverged_text(per_seed)}",
        f"- ECE ≥ 30% lower: **{ece_ratio <= 0.7}** (ratio {ece_ratio:.2f}: "
        f"{fmt(best_bnn, 'ece')} vs {fmt(best_base, 'ece')}); a perfectly calibrated "
        f"predictor with the same probabilities would show {fmt(best_bnn, 'ece_floor')} and "
        f"{fmt(best_base, 'ece_floor')} on these rows",
        f"- pooled-rows ECE ≥ 30% lower: **{pooled_ratio <= 0.7}** (ratio {pooled_ratio:.2f}: "
        f"{fmt(best_bnn, 'ece_pooled')} vs {fmt(best_base, 'ece_pooled')})\n",
        "\n*ECE* is computed per client on its test rows and averaged over clients, as the "
        "harness reports it; with about 25 test images per client it is biased upward. *ECE "
        "if calibrated* is the mean per-client ECE a perfectly calibrated predictor giving the "
        "same probabilities would show on the same rows (labels drawn from the predicted "
        "probabilities, 200 times): the part of the ECE column that is noise. *ECE, pooled "
        "rows* bins all clients' test rows together (about 540 images).\n",
        "\n## Per-round time (bayes_head, vmapped, this machine)\n",
        md_table(
            ["clients", "per round (s)", "max training rows"],
            [[k, f"{tim[k]['per_round_s']:.3f}", tim[k]["n_max"]] for k in sizes],
        ),
        f"\n25 → 100 clients: × {growth:.2f} (linear: × 4).\n",
        f"\nMachine: {payload['machine']['platform']}, {payload['machine']['cpu_count']} CPUs "
        f"(shared), {payload['machine']['date']}.\n",
    ]
    stem = "neural_digits_quick" if args.quick else "neural_digits"
    js, mdp = write_results(stem, payload, "\n".join(md))
    print(f"wrote {js} and {mdp}")


if __name__ == "__main__":
    main()
