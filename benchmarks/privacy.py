# ruff: noqa: E402  (JAX must be configured before anything imports it)
"""Utility against privacy: the hierarchical model fitted by EP with DP client messages.

Record-level DP (:mod:`bayes_pfl.privacy`, ``docs/privacy.md``): every client spends at
most ``(epsilon, delta = 1e-5)`` over the whole fit; ``epsilon`` in {0.5, 1, 2, 4, 8} and
the non-private EP fit, on identical splits through :func:`bayes_pfl.compare.compare`:

``synthetic``
    50 clients of 100-500 rows (uniform; 70% training rows), a hierarchical logistic model
    with 3 features and client-varying intercept and slopes (:mod:`bayes_pfl.synthetic`);
    the model: the zoo's ``hierarchical_glm('bernoulli', 3, varying='slopes')``.
``heart``
    UCI heart disease, four hospitals, exactly ``benchmarks/pfl_comparison.py``'s FLamby
    split per seed (final fits on training + validation rows) and model
    (``models/heart.py``), with FedAvg (the same tuning grid) for reference.

Per method and seed: the mean over clients of the per-client test log-loss, and the
population error: the largest ``|mean_dp - mean_np| / sd_np`` over the elements of ``mu``
and ``tau`` (posterior means and sds of the DP and the non-private fit of that seed). DP
fits run ``ROUNDS`` rounds with client damping 0.5 and the default clip ``sqrt(J)``. A
membership-inference audit of one small client's first-round message (40,000 noise draws
with and without an extreme row, :func:`bayes_pfl.privacy.audit_epsilon`) closes the
report.

Run from the repository root::

    nice .venv/bin/python benchmarks/privacy.py            # both cases, 3 seeds
    nice .venv/bin/python benchmarks/privacy.py --quick    # smoke run

Writes ``benchmarks/results/privacy.json``, ``.md`` and ``privacy.png`` (``--quick``:
``privacy_quick.*``) after each case; ``--case`` runs one case and keeps the other's saved
results; ``--report`` rewrites the ``.md`` and ``.png`` from the ``.json``. The exit code
is 0 whether or not targets are met.
"""

from _common import configure_jax

configure_jax(host_devices=2)

import argparse
import sys
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from _common import RESULTS, machine, md_table, split_federation, write_results

from bayes_pfl import FederatedData, privacy
from bayes_pfl.compare import baseline_method, bayesian_method, compare
from bayes_pfl.models import hierarchical_glm
from bayes_pfl.models.heart import missing_logistic
from bayes_pfl.privacy import DPBudget
from bayes_pfl.synthetic import make_federation

EPSILONS = (0.5, 1.0, 2.0, 4.0, 8.0)
DELTA = 1e-5
ROUNDS = 6  # DP rounds (planned and run); chosen on a separate 20-client federation
NP_ROUNDS = 10  # non-private EP: at most (it stops when converged)
TARGET_SYNTHETIC = 0.03  # epsilon 2: mean per-client log-loss within this of non-private


def fit_kw(quick: bool) -> dict:
    if quick:
        return {
            "num_chains": 1,
            "num_warmup": 150,
            "num_samples": 150,
            "effect_options": {"server_chains": 2, "server_warmup": 150, "server_samples": 150},
        }
    return {
        "num_chains": 2,
        "num_warmup": 300,
        "num_samples": 300,
        "effect_options": {"server_chains": 2, "server_warmup": 200, "server_samples": 300},
    }


def synthetic_data(seed: int) -> FederatedData:
    rng = np.random.default_rng(500 + seed)
    n_train = rng.integers(100, 501, 50)
    fed = make_federation(
        family="bernoulli",
        n_clients=50,
        n_features=3,
        varying="slopes",
        sizes=np.round(n_train / 0.7).astype(int),
        seed=2000 + seed,
    )
    return split_federation(fed, seed)


def heart_split(seed: int) -> FederatedData:
    from pfl_comparison import heart_data

    return heart_data(seed)[0]


def _glm(d):
    return hierarchical_glm("bernoulli", d.n_features, varying="slopes")


def _heart_model(d):
    return missing_logistic(d.n_features, tau_scale=0.5, name="heart")


def _recording(method, fits: dict):
    """``method`` whose fits keep the population posterior's means and sds per seed."""

    def fit_fn(data, seed, **hp):
        pred = method.fit_fn(data, seed, **hp)
        res = pred.result
        fits[(method.name, seed)] = {
            name: (np.asarray(v).mean(axis=(0, 1)), np.asarray(v).std(axis=(0, 1)))
            for name, v in res.phi.items()
            if name in ("mu", "tau")
        } | {"privacy": res.info.get("privacy"), "wall_s": res.info["wall_time_s"]}
        return pred

    return method._replace(fit_fn=fit_fn)


def methods(model, quick: bool, fits: dict, epsilons) -> list:
    kw = fit_kw(quick)
    out = [bayesian_method("ep", model, name="non-private", rounds=NP_ROUNDS, **kw)]
    for eps in epsilons:
        out.append(
            bayesian_method(
                "ep",
                model,
                name=f"dp eps={eps:g}",
                rounds=ROUNDS,
                dp=DPBudget(eps, delta=DELTA),
                **kw,
            )
        )
    return [_recording(m, fits) for m in out]


def population_error(fits: dict, name: str, seed: int) -> float:
    ref, got = fits[("non-private", seed)], fits[(name, seed)]
    errs = [np.max(np.abs(got[k][0] - ref[k][0]) / ref[k][1]) for k in ("mu", "tau")]
    return float(max(errs))


def run_case(case: str, seeds, quick: bool, epsilons) -> dict:
    fits: dict = {}
    if case == "synthetic":
        ms = methods(_glm, quick, fits, epsilons)
        data_fn = synthetic_data
    else:
        ms = methods(_heart_model, quick, fits, epsilons)
        grid = [{"lr": 0.5, "weight_decay": wd} for wd in (0.0, 0.01)]
        ms.append(
            baseline_method(
                "fedavg",
                family="bernoulli",
                grid=grid[:1] if quick else grid,
                rounds=100,
                local_steps=5,
            )
        )
        data_fn = heart_split
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        res = compare(data_fn, ms, seeds=seeds, family="bernoulli", progress=True)
    per_seed = res.table.groupby(["method", "seed"], sort=False)["log_loss"].mean()
    per_client = res.table.set_index(["method", "seed", "client"])["log_loss"]
    rows = {}
    for name in res.methods:
        ll = {int(s): float(per_seed[(name, s)]) for s in seeds}
        entry = {"log_loss": ll}
        if name != "fedavg":
            entry["wall_s"] = {int(s): fits[(name, s)]["wall_s"] for s in seeds}
        if name.startswith("dp"):
            entry["delta_log_loss"] = {
                s: ll[s] - float(per_seed[("non-private", s)]) for s in map(int, seeds)
            }
            entry["population_error"] = {
                s: population_error(fits, name, s) for s in map(int, seeds)
            }
            entry["max_client_delta"] = {
                s: float(np.max(np.abs(per_client[(name, s)] - per_client[("non-private", s)])))
                for s in map(int, seeds)
            }
            rec = fits[(name, int(seeds[0]))]["privacy"]
            entry["noise_multiplier"] = rec["noise_multiplier"]
            entry["clip"] = rec["clip"]
            entry["epsilon_spent"] = max(
                fits[(name, int(s))]["privacy"]["epsilon_spent"] for s in seeds
            )
        rows[name] = entry
    return {
        "methods": rows,
        "seeds": list(map(int, seeds)),
        "wall_s": time.perf_counter() - t0,
        "date": machine()["date"],
    }


def audit(epsilon: float = 1.0, n: int = 40_000) -> dict:
    """Membership inference on one 8-row client's first-round message (see module doc)."""
    from bayes_pfl import gaussian as gf
    from bayes_pfl.algorithms.effect_ep import EffectBroadcast
    from bayes_pfl.federated import effect_algorithm
    from bayes_pfl.population import gaussian_population

    model = hierarchical_glm("bernoulli", 2, varying="slopes")
    J = gaussian_population(model).z_dim
    cavity = gf.from_moments(jnp.zeros(J), 4.0 * jnp.eye(J))
    rng = np.random.default_rng(1)
    x = np.vstack([rng.standard_normal((8, 2)), [[30.0, -30.0]]])
    y = np.append((rng.uniform(size=8) < 0.5).astype(float), 1.0)
    full, out = np.ones(9, bool), np.append(np.ones(8, bool), False)
    sigma = privacy.calibrate_noise(epsilon, DELTA, 1)
    rows = []
    for factor in (1, 2, 4):
        alg = privacy.private_algorithm(
            model, effect_algorithm(model, damping=1.0, tol=0.05), sigma / factor, 1.0
        )

        def release(key, mask, alg=alg):
            st = alg.client_init(key, (x, y, mask))
            _, msg, _ = alg.client_update(key, EffectBroadcast(cavity), st, (x, y, mask))
            return jnp.concatenate([msg.site.precision.reshape(-1), msg.site.shift])

        run = jax.jit(jax.vmap(release, in_axes=(0, None)))
        keys = jax.random.split(jax.random.key(factor), 2 * n)
        a, b = np.asarray(run(keys[:n], full)), np.asarray(run(keys[n:], out))
        d = a[: n // 2].mean(0) - b[: n // 2].mean(0)
        lb = privacy.audit_epsilon(a[n // 2 :] @ d, b[n // 2 :] @ d, DELTA)
        claimed = privacy.epsilon_spent(sigma / factor, 1, DELTA)
        rows.append({"noise_multiplier": sigma / factor, "claimed": claimed, "lower_bound": lb})
    return {"epsilon": epsilon, "draws_per_side": n, "rows": rows}


# --------------------------------------------------------------------------- report


def _ms(vals, digits: int = 3) -> str:
    v = np.asarray(list(vals), float)
    m, sd = f"{v.mean():.{digits}f}", f"{v.std(ddof=1):.{digits}f}" if len(v) > 1 else ""
    return f"{m} ± {sd}" if sd else m


def case_table(c: dict) -> str:
    rows = []
    for name, e in c["methods"].items():
        rows.append(
            [
                name,
                f"{e['noise_multiplier']:.2f}" if "noise_multiplier" in e else "",
                f"{e['epsilon_spent']:.3f}" if "epsilon_spent" in e else "",
                _ms(e["log_loss"].values()),
                _ms(e["delta_log_loss"].values(), 4) if "delta_log_loss" in e else "",
                _ms(e["population_error"].values()) if "population_error" in e else "",
                _ms(e["max_client_delta"].values()) if "max_client_delta" in e else "",
            ]
        )
    header = ["method", "noise multiplier", "epsilon spent (max)", "mean per-client log-loss"]
    header += ["Δ log-loss vs non-private", "population error (sd units)"]
    header += ["largest per-client abs Δ log-loss"]
    return md_table(header, rows)


def verdicts(cases: dict) -> list[str]:
    out = []
    syn = cases.get("synthetic")
    if syn and "dp eps=2" in syn["methods"]:
        d = np.asarray(list(syn["methods"]["dp eps=2"]["delta_log_loss"].values()))
        ok = bool(np.all(np.abs(d) <= TARGET_SYNTHETIC))
        out.append(
            f"- synthetic, epsilon 2: Δ mean per-client log-loss per seed "
            f"{', '.join(f'{v:+.4f}' for v in d)} (target |Δ| <= {TARGET_SYNTHETIC} at every "
            f"seed): {'met' if ok else 'NOT met'}"
        )
    heart = cases.get("heart")
    if heart and "dp eps=2" in heart["methods"] and "fedavg" in heart["methods"]:
        dp = heart["methods"]["dp eps=2"]["log_loss"]
        fa = heart["methods"]["fedavg"]["log_loss"]
        wins = [dp[s] < fa[s] for s in dp]
        out.append(
            f"- heart, epsilon 2: mean per-client log-loss {_ms(dp.values())} vs non-private "
            f"FedAvg {_ms(fa.values())}; lower at {sum(wins)}/{len(wins)} seeds: "
            f"{'met' if all(wins) else 'NOT met'}"
        )
    for case, c in cases.items():
        if "dp eps=1" in c["methods"]:
            e = c["methods"]["dp eps=1"]
            out.append(
                f"- {case}, epsilon 1: Δ log-loss {_ms(e['delta_log_loss'].values(), 4)}, "
                f"population error {_ms(e['population_error'].values())} sds"
            )
    return out


def markdown(payload: dict) -> str:
    m = payload["machine"]
    lines = [
        "# Differential privacy: utility against privacy",
        "",
        f"Run: `nice .venv/bin/python benchmarks/privacy.py{' --quick' if payload['quick'] else ''}`"
        f" ({m['date']}, {m['cpu_count']} CPU cores, JAX {m['jax_backend']}). Record-level DP "
        f"per client (`bayes_pfl.privacy`, docs/privacy.md), delta {DELTA:g}, RDP accountant, "
        f"{ROUNDS} DP rounds (client damping 0.5, clip sqrt(J)); non-private: federated EP "
        f"(at most {NP_ROUNDS} rounds). Per-client test log-loss averaged over clients, mean ± "
        "sd across seeds; population error: max over the elements of mu and tau of "
        "|posterior mean (DP) - posterior mean (non-private)| / posterior sd (non-private), "
        "same seed. Personalization is local and exact in every fit (each client's own rows "
        "and the released global posterior).",
        "",
        "## Targets",
        "",
        *verdicts(payload["cases"]),
        "",
    ]
    for case, c in sorted(payload["cases"].items(), reverse=True):
        title = {
            "synthetic": "Synthetic federation: 50 clients, 100-500 training rows, 3 features",
            "heart": "UCI heart disease, 4 hospitals (FLamby split of pfl_comparison.py)",
        }[case]
        lines += [f"## {title}", "", f"Seeds {c['seeds']}; {c['wall_s']:.0f} s ({c['date']}).", ""]
        lines += [case_table(c), ""]
    if "audit" in payload:
        a = payload["audit"]
        lines += [
            "## Membership-inference audit",
            "",
            f"One 8-row client's first-round message, with vs without an extreme row (x = "
            f"(30, -30)), {a['draws_per_side']} noise draws each; statistic: the message "
            "projected on the mean difference of half the draws, threshold tests on the other "
            "half; 95% Clopper-Pearson lower bound on epsilon (`privacy.audit_epsilon`). "
            "Smaller noise multipliers show the audit's power.",
            "",
            md_table(
                ["noise multiplier", "claimed epsilon", "empirical lower bound"],
                [
                    [
                        f"{r['noise_multiplier']:.2f}",
                        f"{r['claimed']:.2f}",
                        f"{r['lower_bound']:.2f}",
                    ]
                    for r in a["rows"]
                ],
            ),
        ]
    lines += ["![utility vs privacy](privacy.png)", ""]
    return "\n".join(lines) + "\n"


def _eps_axis(ax, eps) -> None:
    ax.set_xscale("log")
    ax.set_xticks(eps, [f"{e:g}" for e in eps])
    ax.minorticks_off()


def plot(payload: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = payload["cases"]
    fig, axes = plt.subplots(2, len(cases), figsize=(5 * len(cases), 7), squeeze=False)
    for j, (case, c) in enumerate(cases.items()):
        dp = [(float(n.split("=")[1]), e) for n, e in c["methods"].items() if n.startswith("dp")]
        eps = [x for x, _ in dp]
        ll = np.array([list(e["log_loss"].values()) for _, e in dp])
        ax = axes[0, j]
        ax.errorbar(
            eps,
            ll.mean(1),
            yerr=ll.std(1, ddof=1) if ll.shape[1] > 1 else None,
            marker="o",
            label="DP hierarchical (EP)",
        )
        for ref, style in (("non-private", "--"), ("fedavg", ":")):
            if ref in c["methods"]:
                v = np.mean(list(c["methods"][ref]["log_loss"].values()))
                ax.axhline(v, ls=style, color="k" if ref == "non-private" else "C3", label=ref)
        _eps_axis(ax, eps)
        ax.set_title(case)
        ax.set_ylabel("mean per-client test log-loss")
        ax.legend()
        pe = np.array([list(e["population_error"].values()) for _, e in dp])
        ax = axes[1, j]
        ax.errorbar(
            eps, pe.mean(1), yerr=pe.std(1, ddof=1) if pe.shape[1] > 1 else None, marker="o"
        )
        _eps_axis(ax, eps)
        ax.set_yscale("log")
        ax.set_xlabel("epsilon per client (delta 1e-5)")
        ax.set_ylabel("population error (non-private sds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--case", choices=("synthetic", "heart", "all"), default="all")
    p.add_argument(
        "--report", action="store_true", help="rewrite the .md and .png from the last .json"
    )
    args = p.parse_args()
    stem = "privacy_quick" if args.quick else "privacy"
    if args.report:
        import json

        payload = json.loads((RESULTS / f"{stem}.json").read_text())
        return _write(payload, stem, json_too=False)
    seeds = list(range(1 if args.quick else args.seeds))
    epsilons = (1.0, 2.0) if args.quick else EPSILONS
    # a run of one case keeps the other's saved results; each case is written when done
    previous = RESULTS / f"{stem}.json"
    payload = {"cases": {}}
    if previous.exists():
        import json

        payload = json.loads(previous.read_text())
    payload.update(machine=machine(), quick=args.quick)
    if "audit" not in payload or args.case == "all":
        payload["audit"] = audit()
    for case in ("synthetic", "heart"):
        if args.case in (case, "all"):
            print(f"== {case}", file=sys.stderr, flush=True)
            payload["cases"][case] = run_case(case, seeds, args.quick, epsilons)
            _write(payload, stem)
    return 0


def _write(payload: dict, stem: str, json_too: bool = True) -> int:
    png = RESULTS / f"{stem}.png"
    plot(payload, png)
    md = markdown(payload).replace("(privacy.png)", f"({png.name})")
    if json_too:
        write_results(stem, payload, md)
    else:
        (RESULTS / f"{stem}.md").write_text(md)
    print(md)
    print(f"wrote {RESULTS / stem}.json/.md/.png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
