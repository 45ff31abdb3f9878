# ruff: noqa: E402  (JAX must be configured before anything imports it)
"""Optimization baselines: vmapped speed, and personalization on the shifted digits federation.

Speed: FedAvg on an MLP (hidden 32, 5 features, logistic), 100 synthetic clients
(``make_federation(family="bernoulli", n_clients=100, n_features=5, seed=0)``,
log-normal sizes), 20 rounds x 5 local full-batch SGD steps, run by
:func:`bayes_pfl.simulation.run_rounds` (one ``jit(vmap(client_update))`` call per
round), against a Python loop over clients of the *same* ``jit(client_update)`` per
round (messages stacked, then the same server step). Both measured in this process,
float32, warm (a first run compiles; the reported time is a second run).

Digits: :func:`bayes_pfl.datasets.digits.make_digits_federation` (20 clients, Dirichlet
label skew ``alpha=0.5``, per-client brightness/contrast shift), MLP with BatchNorm
(hidden 32), 50 rounds x 5 local steps. Learning rate (and Ditto's ``lam``, pFedMe's
``lam``, the adapters' strength) are chosen on a validation split of seed 0 (15% of each
client's rows) by mean per-client validation accuracy; the chosen settings are then run
on 3 seeds (partition, shift, split and initialization all change with the seed) and
scored by mean per-client *test* accuracy (30% of each client's rows).

Run from the repository root::

    .venv/bin/python benchmarks/baselines_speed.py            # both parts
    .venv/bin/python benchmarks/baselines_speed.py --quick    # smoke run

Writes ``benchmarks/results/baselines_speed.json`` and ``.md`` (``--quick``:
``baselines_speed_quick.*``).
"""

import os

os.environ["JAX_PLATFORMS"] = "cpu"

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from _common import RESULTS, machine

from bayes_pfl.baselines import fedavg as fedavg_lib
from bayes_pfl.baselines import fit_baseline
from bayes_pfl.baselines.networks import build_network, get_family
from bayes_pfl.baselines.training import LocalTraining, make_optimizer
from bayes_pfl.data import FederatedData
from bayes_pfl.datasets.digits import make_digits_federation
from bayes_pfl.simulation import run_rounds
from bayes_pfl.synthetic import make_federation

DIGITS_METHODS = {
    # method: tuning grid (besides lr)
    "local": [{}],
    "pooled": [{}],
    "fedavg": [{}],
    "fedprox": [{"mu": 0.1}],
    "fedbn": [{}],
    "fedper": [{}],
    "ditto": [{"lam": 0.1}, {"lam": 1.0}],
    "pfedme": [{"lam": 1.0}, {"lam": 15.0}],
    "adapters": [{"adapter_strength": 0.01}, {"adapter_strength": 0.1}],
    "clustered": [{}],
    "ifca": [{"n_clusters": 2}],
    "hypernet": [{"metadata": True}],
}
LRS = (0.1, 0.3)


# ------------------------------------------------------------------ speed


def speed(n_clients: int, rounds: int) -> dict:
    fed = make_federation(family="bernoulli", n_clients=n_clients, n_features=5, seed=0)
    data = FederatedData.from_pandas(
        fed.data, client_col="client", target="y", features=list(fed.features)
    )
    net = build_network("mlp", 5, 1, hidden=32)
    fam = get_family("bernoulli")
    baseline = fedavg_lib.build(LocalTraining(net, fam, make_optimizer("sgd", 0.05)), net.init(0))
    alg = baseline.algorithm
    train = data.arrays("train")

    def vmapped():
        t0 = time.perf_counter()
        res = run_rounds(alg, train, rounds=rounds, labels=data.clients, progress=False)
        jax.block_until_ready(res.server_state)
        return time.perf_counter() - t0, res

    cold, _ = vmapped()
    warm, res_v = vmapped()

    step = jax.jit(alg.client_update)
    server_step = jax.jit(alg.server_update)
    take = jax.jit(lambda tree, k: jax.tree.map(lambda a: a[k], tree))
    stack = jax.jit(lambda *trees: jax.tree.map(lambda *a: jnp.stack(a), *trees))
    arrays = tuple(jnp.asarray(a) for a in train)
    per_client = [tuple(a[k] for a in arrays) for k in range(n_clients)]
    key = jax.random.key(0)

    def looped():
        t0 = time.perf_counter()
        server = alg.server_init(jax.random.fold_in(key, 0), n_clients)
        states = [alg.client_init(None, d) for d in per_client]
        for r in range(rounds):
            bcast = alg.broadcast(server)
            keys = jax.random.split(jax.random.fold_in(key, r + 1), n_clients)
            out = [
                step(keys[k], take(bcast, k), states[k], per_client[k]) for k in range(n_clients)
            ]
            states = [o[0] for o in out]
            messages = stack(*[o[1] for o in out])
            accept = jnp.asarray(train.n > 0)
            server, _ = server_step(jax.random.fold_in(key, 10_000 + r), server, messages, accept)
        jax.block_until_ready(server)
        return time.perf_counter() - t0, server

    looped()  # compile
    loop_time, server_l = looped()
    diff = max(
        float(jnp.max(jnp.abs(res_v.server_state.params[k] - server_l.params[k])))
        for k in server_l.params
    )
    return {
        "n_clients": n_clients,
        "rounds": rounds,
        "local_steps": 5,
        "rows_per_client_median": float(np.median(train.n)),
        "rows_per_client_max": int(train.n.max()),
        "vmapped_cold_s": cold,
        "vmapped_warm_s": warm,
        "loop_warm_s": loop_time,
        "loop_over_vmapped": loop_time / warm,
        "max_abs_param_difference": diff,
    }


# ----------------------------------------------------------------- digits


def mean_client_accuracy(fit, arrays) -> float:
    pred = fit.predict(arrays.x, arrays.mask).argmax(-1)
    hits = ((pred == arrays.y) & arrays.mask).sum(1)
    n = arrays.mask.sum(1)
    return float(np.mean(hits[n > 0] / n[n > 0]))


def run_digits(method: str, data, meta, *, lr, seed, rounds, extra) -> object:
    kw = dict(extra)
    if kw.pop("metadata", False):
        kw["metadata"] = meta.to_numpy()
    return fit_baseline(
        method, data, family="categorical", network="mlp_bn", n_classes=10,
        rounds=rounds, local_steps=5, lr=lr, seed=seed, **kw,
    )  # fmt: skip


def digits(seeds: list[int], rounds: int, methods: dict) -> dict:
    tune_data, tune_meta = make_digits_federation(
        20, seed=seeds[0], test_size=0.3, val_size=0.15, return_metadata=True
    )
    val = tune_data.arrays("val")
    chosen, tuning = {}, {}
    for method, grid in methods.items():
        scores = []
        for extra in grid:
            for lr in LRS:
                fit = run_digits(
                    method, tune_data, tune_meta, lr=lr, seed=seeds[0], rounds=rounds, extra=extra
                )
                scores.append((mean_client_accuracy(fit, val), lr, extra))
        best = max(scores, key=lambda s: s[0])
        chosen[method] = {"lr": best[1], **best[2]}
        tuning[method] = [{"val_accuracy": s[0], "lr": s[1], **s[2]} for s in scores]
        print(f"tuned {method}: {chosen[method]} (val {best[0]:.3f})", flush=True)
    results = {m: [] for m in methods}
    for seed in seeds:
        data, meta = make_digits_federation(
            20, seed=seed, test_size=0.3, val_size=0.15, return_metadata=True
        )
        test = data.arrays("test")
        for method, setting in chosen.items():
            extra = {k: v for k, v in setting.items() if k != "lr"}
            t0 = time.perf_counter()
            fit = run_digits(
                method, data, meta, lr=setting["lr"], seed=seed, rounds=rounds, extra=extra
            )
            acc = mean_client_accuracy(fit, test)
            entry = {"seed": seed, "test_accuracy": acc, "seconds": time.perf_counter() - t0}
            if fit.clusters is not None:
                entry["clusters_found"] = len(set(fit.clusters.tolist()))
            results[method].append(entry)
            print(f"seed {seed} {method}: {acc:.3f}", flush=True)
    summary = {
        m: {
            "mean": float(np.mean([r["test_accuracy"] for r in rs])),
            "sd": float(np.std([r["test_accuracy"] for r in rs], ddof=1)) if len(rs) > 1 else 0.0,
            "per_seed": [r["test_accuracy"] for r in rs],
            "settings": chosen[m],
            **(
                {"clusters_found": [r["clusters_found"] for r in rs]}
                if rs and "clusters_found" in rs[0]
                else {}
            ),
        }
        for m, rs in results.items()
    }
    return {"seeds": seeds, "rounds": rounds, "summary": summary, "tuning": tuning}


# ----------------------------------------------------------------- output


def markdown(out: dict) -> str:
    lines = ["# Optimization baselines: speed and digits personalization", ""]
    m = out["machine"]
    lines.append(
        f"Run {m['date']} on {m['cpu_count']}-core CPU ({m['platform']}), JAX `{m['jax_backend']}`, "
        "float32. The machine was shared with other jobs, so times are indicative."
    )
    s = out.get("speed")
    if s:
        lines += [
            "",
            f"## FedAvg, MLP, {s['n_clients']} clients x {s['rounds']} rounds "
            f"x {s['local_steps']} local steps",
            "",
            "| run | seconds |",
            "| --- | --- |",
            f"| vmapped driver, cold (compilation included) | {s['vmapped_cold_s']:.2f} |",
            f"| vmapped driver, warm | **{s['vmapped_warm_s']:.2f}** |",
            f"| Python loop over clients of the same jitted step, warm | **{s['loop_warm_s']:.2f}** |",
            "",
            f"Loop / vmapped: **{s['loop_over_vmapped']:.1f}x**. Both give the same global model "
            f"(max abs difference {s['max_abs_param_difference']:.1e}). Clients hold "
            f"{s['rows_per_client_median']:.0f} rows (median), at most {s['rows_per_client_max']} "
            "(the vmapped step pads every client to the largest).",
        ]
    d = out.get("digits")
    if d:
        lines += [
            "",
            f"## Digits, 20 clients, label skew + brightness/contrast shift, MLP with BatchNorm, "
            f"{d['rounds']} rounds, seeds {d['seeds']}",
            "",
            "Mean per-client test accuracy (mean and sd over seeds); settings chosen on the "
            "validation split of the first seed.",
            "",
            "| method | test accuracy | sd | per seed | settings |",
            "| --- | --- | --- | --- | --- |",
        ]
        order = sorted(d["summary"].items(), key=lambda kv: -kv[1]["mean"])
        for name, r in order:
            per = ", ".join(f"{a:.3f}" for a in r["per_seed"])
            settings = dict(r["settings"])
            if "clusters_found" in r:
                settings["clusters found"] = r["clusters_found"]
            lines.append(f"| {name} | **{r['mean']:.3f}** | {r['sd']:.3f} | {per} | {settings} |")
        fa = d["summary"].get("fedavg")
        if fa:
            gaps = [
                f"{n} - fedavg: {d['summary'][n]['mean'] - fa['mean']:+.3f}"
                for n in ("fedbn", "ditto", "fedper", "local", "pooled")
                if n in d["summary"]
            ]
            lines += ["", "Differences in mean test accuracy: " + "; ".join(gaps) + "."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run")
    parser.add_argument("--part", choices=("speed", "digits"), help="run one part only")
    args = parser.parse_args()
    suffix = "_quick" if args.quick else ""
    out = {"machine": machine()}
    if args.part in (None, "speed"):
        out["speed"] = speed(20 if args.quick else 100, 3 if args.quick else 20)
        print(json.dumps(out["speed"], indent=1), flush=True)
    if args.part in (None, "digits"):
        methods = (
            {k: DIGITS_METHODS[k][:1] for k in ("fedavg", "fedbn")}
            if args.quick
            else DIGITS_METHODS
        )
        out["digits"] = digits([0] if args.quick else [0, 1, 2], 5 if args.quick else 50, methods)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"baselines_speed{suffix}.json"
    if args.part and path.exists():
        previous = json.loads(path.read_text())
        previous.update(out)
        out = previous
    path.write_text(json.dumps(out, indent=1))
    path.with_suffix(".md").write_text(markdown(out))
    print(markdown(out))


if __name__ == "__main__":
    main()
