# ruff: noqa: E402  (JAX must be configured before anything imports it)
"""Simulation-based calibration (Talts et al. 2018; Modrák et al. 2023) of every posterior
method: centralized NUTS, one-shot, EP and VI.

Each simulation draws ``phi`` from the hyper-prior, every client's ``theta_k`` from the
population, ``y`` from the likelihood on a fixed design (client sizes 3-30 rows, one
standardized feature), fits the method and records the rank of each true value among
``L = 99`` posterior draws (thinned evenly): ``mu``, ``tau`` (intercept and slope),
two clients' coefficients (client 0's intercept, client 1's slope), ``sigma_y`` for the
Normal model, and the data's log-likelihood as a test quantity (its rank among the draws'
log-likelihoods of the same data: sensitive to a posterior that is too wide or too narrow
as a whole). If a method is calibrated, every quantity's rank is uniform on 0..L.

Uniformity is judged by the ECDF of the randomized PIT values ``(rank + U) / (L + 1)``
against simultaneous 95% bands (``arviz_stats.ecdf_utils.ecdf_pit``): a quantity passes
when its ECDF stays inside the band everywhere. The table also gives the mean PIT (above
0.5: the truth tends to lie above the posterior, which under-estimates; below: over-
estimates) and the 90% central coverage (below 0.9: intervals too narrow).

Cases: ``normal`` (linear, varying intercept and slope, 10 clients) and ``logistic``
(Bernoulli, the same). Runs are written one simulation per line to
``benchmarks/results/sbc_runs/<case>_<method>.jsonl`` as they finish; a rerun continues
where the file ends. ``--report`` (or the end of a run) writes ``results/sbc.md``,
``results/sbc.json`` and one ECDF-difference figure per method and case
(``results/sbc_<case>_<method>.png``).

Run from the repository root (hours for 200 simulations of every method; one process per
method in parallel is fine)::

    .venv/bin/python benchmarks/sbc.py --case normal --methods nuts --sims 200
    .venv/bin/python benchmarks/sbc.py --report
"""

from _common import configure_jax

configure_jax(host_devices=4)

import argparse
import json
import time
import traceback
import warnings

import numpy as np
from _common import RESULTS, jsonable, machine, md_table

RUNS = RESULTS / "sbc_runs"
L_DRAWS = 99
N_CLIENTS = 10
CASES = {"normal": "normal", "logistic": "bernoulli"}
METHODS = ("nuts", "one-shot", "ep", "vi")


def model_of(case: str):
    from bayes_pfl.models import hierarchical_glm

    return hierarchical_glm(CASES[case], feature_names=("x",), varying="slopes")


def design(case: str):
    """The fixed design of a case: client sizes and features (the same in every simulation)."""
    rng = np.random.default_rng(20261204 + len(case))
    sizes = rng.integers(3, 31, N_CLIENTS)
    xs = [rng.normal(size=(n, 1)) for n in sizes]
    return sizes, xs


def simulate(case: str, sim: int):
    """``(FederatedData, true values by quantity)`` of simulation ``sim``."""
    import jax
    import pandas as pd

    from bayes_pfl import FederatedData
    from bayes_pfl.spec import isolated_trace, trace_values

    model = model_of(case)
    sizes, xs = design(case)
    k_phi, k_theta, k_y = jax.random.split(jax.random.key(sim), 3)
    phi = trace_values(isolated_trace(model.hyperprior, rng_key=k_phi))
    frames, thetas = [], []
    for k in range(N_CLIENTS):
        theta = trace_values(
            isolated_trace(model.client_prior, phi, rng_key=jax.random.fold_in(k_theta, k))
        )
        y = np.asarray(model.sample_likelihood(jax.random.fold_in(k_y, k), theta, phi, xs[k]))
        thetas.append(theta)
        frames.append(pd.DataFrame({"client": f"c{k}", "x": xs[k][:, 0], "y": y}))
    data = FederatedData.from_pandas(
        pd.concat(frames), client_col="client", target="y", features=["x"]
    )
    truth = {
        "mu[Intercept]": float(phi["mu"][0]),
        "mu[x]": float(phi["mu"][1]),
        "tau[Intercept]": float(phi["tau"][0]),
        "tau[x]": float(phi["tau"][1]),
        "b[c0, Intercept]": float(thetas[0]["b"][0]),
        "b[c1, x]": float(thetas[1]["b"][1]),
    }
    if "sigma_y" in phi:
        truth["sigma_y"] = float(phi["sigma_y"])
    stacked = {"b": np.stack([np.asarray(t["b"]) for t in thetas])}
    return data, truth, {k: np.asarray(v) for k, v in phi.items()}, stacked


def fit(method: str, model, data, seed: int):
    from bayes_pfl import fit_nuts
    from bayes_pfl.federated import fit_ep, fit_one_shot
    from bayes_pfl.federated_vi import fit_vi

    if method == "nuts":
        return fit_nuts(
            model, data, num_chains=2, num_warmup=500, num_samples=500, seed=seed,
            progress_bar=False,
        )  # fmt: skip
    common = {"seed": seed, "progress": False, "num_samples": 250}
    fn = {"one-shot": fit_one_shot, "ep": fit_ep, "vi": fit_vi}[method]
    return fn(model, data, **common)


def _log_lik(model, data, phi: dict, theta: dict) -> np.ndarray:
    """Log-likelihood of the training rows under draws ``phi [S, ...]``, ``theta [S, K, ...]``."""
    import jax
    import jax.numpy as jnp

    arr = data.arrays()

    def one(p, t):
        per_client = jax.vmap(
            lambda tk, x, y, m: jnp.sum(
                jnp.where(m, model.pointwise_loglik_values(tk, p, x, y), 0.0)
            )
        )(t, arr.x, arr.y, arr.mask)
        return jnp.sum(per_client)

    return np.asarray(jax.vmap(one)(phi, theta))


def ranks(result, model, data, truth: dict, true_phi: dict, true_theta: dict) -> dict:
    """Rank of every true value among ``L_DRAWS`` evenly thinned posterior draws."""
    n = result.num_chains * result.num_draws
    pick = np.linspace(0, n - 1, L_DRAWS).round().astype(int)

    def flat(v):
        v = np.asarray(v)
        return v.reshape((n,) + v.shape[2:])[pick]

    phi = {k: flat(v) for k, v in result.phi.items()}
    theta = {"b": flat(result.theta["b"])}
    draws = {
        "mu[Intercept]": phi["mu"][:, 0],
        "mu[x]": phi["mu"][:, 1],
        "tau[Intercept]": phi["tau"][:, 0],
        "tau[x]": phi["tau"][:, 1],
        "b[c0, Intercept]": theta["b"][:, 0, 0],
        "b[c1, x]": theta["b"][:, 1, 1],
    }
    if "sigma_y" in phi:
        draws["sigma_y"] = phi["sigma_y"]
    out = {q: int(np.sum(draws[q] < truth[q])) for q in truth}
    ll_draws = _log_lik(model, data, phi, theta)
    ll_true = _log_lik(
        model,
        data,
        {k: v[None] for k, v in true_phi.items()},
        {"b": true_theta["b"][None]},
    )[0]
    out["log_lik"] = int(np.sum(ll_draws < ll_true))
    return out


def run(case: str, method: str, sims: int) -> None:
    RUNS.mkdir(parents=True, exist_ok=True)
    path = RUNS / f"{case}_{method}.jsonl"
    done = set()
    if path.exists():
        done = {json.loads(line)["sim"] for line in path.read_text().splitlines() if line}
    model = model_of(case)
    for sim in range(sims):
        if sim in done:
            continue
        if sim % 25 == 0:
            # every fit compiles new programs: without this a long run exhausts the process's
            # JIT code sections ("LLVM ERROR: Cannot allocate memory", vm.max_map_count)
            import jax

            jax.clear_caches()
        data, truth, true_phi, true_theta = simulate(case, sim)
        t0 = time.perf_counter()
        row = {"sim": sim}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = fit(method, model, data, seed=sim)
            row["ranks"] = ranks(result, model, data, truth, true_phi, true_theta)
            if method in ("ep", "vi"):  # rounds that can stop unconverged
                row["converged"] = bool(result.info.get("converged"))
        except Exception as exc:  # a failed fit is recorded, never dropped silently
            row["error"] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
        row["seconds"] = round(time.perf_counter() - t0, 2)
        with path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"{case} {method} sim {sim}: {row.get('ranks', row.get('error'))} "
              f"({row['seconds']} s)", flush=True)  # fmt: skip


def judge(rank_list: list[int], rng, prob: float = 0.95) -> dict:
    """ECDF of the randomized PIT of ``rank_list`` against simultaneous ``prob`` bands."""
    from arviz_stats.ecdf_utils import ecdf_pit

    r = np.asarray(rank_list, dtype=float)
    pit = (r + rng.uniform(size=r.shape)) / (L_DRAWS + 1)
    x, ecdf, lo, hi = ecdf_pit(pit, prob, 2000, rng=rng)
    inside = bool(np.all((ecdf >= lo - 1e-12) & (ecdf <= hi + 1e-12)))
    return {
        "n": int(r.size),
        "inside_band": inside,
        "mean_pit": float(pit.mean()),
        "coverage90": float(np.mean((pit > 0.05) & (pit < 0.95))),
        "curve": {
            "x": x.tolist(),
            "diff": (ecdf - x).tolist(),
            "lo": (lo - x).tolist(),
            "hi": (hi - x).tolist(),
        },  # fmt: skip
    }


def direction(j: dict) -> str:
    if j["inside_band"]:
        return "calibrated"
    words = []
    if j["mean_pit"] > 0.55:
        words.append("truth above the draws (under-estimated)")
    elif j["mean_pit"] < 0.45:
        words.append("truth below the draws (over-estimated)")
    if j["coverage90"] < 0.85:
        words.append("intervals too narrow")
    elif j["coverage90"] > 0.95:
        words.append("intervals too wide")
    return "; ".join(words) or "non-uniform"


def report() -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(0)
    out = {"machine": machine(), "L": L_DRAWS, "clients": N_CLIENTS, "results": {}}
    rows = []
    for path in sorted(RUNS.glob("*.jsonl")):
        case, method = path.stem.split("_", 1)
        lines = [json.loads(x) for x in path.read_text().splitlines() if x]
        ok = [x for x in lines if "ranks" in x]
        failed = len(lines) - len(ok)
        if not ok:
            continue
        quantities = list(ok[0]["ranks"])
        judged = {q: judge([x["ranks"][q] for x in ok], rng) for q in quantities}
        out["results"][f"{case}/{method}"] = {
            "simulations": len(lines),
            "failed": failed,
            "not_converged": sum(1 for x in ok if x.get("converged") is False),
            "median_seconds": float(np.median([x["seconds"] for x in lines])),
            "quantities": judged,
        }
        for q, j in judged.items():
            rows.append([case, method, q, j["n"], "yes" if j["inside_band"] else "**no**",
                         f"{j['mean_pit']:.3f}", f"{j['coverage90']:.3f}", direction(j)])  # fmt: skip
        fig, axes = plt.subplots(1, len(quantities), figsize=(2.6 * len(quantities), 2.6),
                                 sharey=True)  # fmt: skip
        for ax, q in zip(np.atleast_1d(axes), quantities, strict=True):
            c = judged[q]["curve"]
            ax.fill_between(c["x"], c["lo"], c["hi"], step="post", color="0.85")
            ax.step(
                c["x"], c["diff"], where="post", color="C0" if judged[q]["inside_band"] else "C3"
            )
            ax.axhline(0, color="k", lw=0.5)
            ax.set_title(q, fontsize=8)
            ax.set_xlabel("PIT", fontsize=7)
            ax.tick_params(labelsize=6)
        np.atleast_1d(axes)[0].set_ylabel("ECDF - uniform", fontsize=7)
        fig.suptitle(f"SBC {case} / {method}: {len(ok)} simulations, 95% simultaneous bands",
                     fontsize=9)  # fmt: skip
        fig.tight_layout()
        fig.savefig(RESULTS / f"sbc_{case}_{method}.png", dpi=110)
        plt.close(fig)
    header = ["case", "method", "quantity", "sims", "inside band", "mean PIT", "90% cov", "verdict"]
    lines = [
        "# Simulation-based calibration",
        "",
        "`benchmarks/sbc.py` (module docstring: design and criteria). Ranks among "
        f"{L_DRAWS} thinned draws; {N_CLIENTS} clients of 3-30 rows, varying intercept and "
        "slope; ECDF of the randomized PIT against simultaneous 95% bands "
        "(arviz_stats.ecdf_utils.ecdf_pit). Figures: `sbc_<case>_<method>.png`.",
        "",
        f"Run: {out['machine']['date']}.",
        "",
    ]
    for key, res in out["results"].items():
        lines.append(
            f"- {key}: {res['simulations']} simulations, {res['failed']} failed fits, "
            f"{res['not_converged']} not converged, median {res['median_seconds']:.1f} s per fit"
        )
    lines += ["", md_table(header, rows), ""]
    (RESULTS / "sbc.md").write_text("\n".join(lines))
    (RESULTS / "sbc.json").write_text(json.dumps(jsonable(out), indent=1))
    print("\n".join(lines))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--sims", type=int, default=200)
    parser.add_argument("--report", action="store_true", help="only summarize the runs")
    args = parser.parse_args()
    if not args.report:
        for case in args.case:
            for method in args.methods:
                run(case, method, args.sims)
    report()


if __name__ == "__main__":
    main()
