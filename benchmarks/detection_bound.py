"""The best any detector could do against the protocol-following attacks of
``benchmarks/robustness.py`` (issue #19, done-when item 2).

Item 2 asks that the attackers be in the top 10% of the conflict score in at least 90% of
seeds. With 10 attackers among 100 clients that event is *exact identification*: the 10
highest scores are the 10 attackers. This script computes the probability that the
Bayes-optimal detector achieves it, a ceiling for every score, the conflict score included.

The detector is given more than any real one has: the true population ``(mu, tau)``, the
attack's form, and every client's raw rows. Given those, clients are independent, the
attacker set is a uniform draw of 10 of the 100 (as ``robustness.attackers_of`` draws it),
and the posterior probability of a set ``S`` is proportional to ``prod_{k in S} LR_k``,
with ``LR_k = p(D_k | attacker) / p(D_k | honest)``; so the most probable set is the 10
clients of highest ``LR_k`` and no rule picks the true set more often (the MAP rule
maximizes the probability of a correct decision). Each marginal likelihood is a 2-D
integral over the client's coefficients ``b_k`` (intercept, slope), computed with a
tensor Gauss-Hermite rule (adaptive: centred at the integrand's mode, scaled by its Laplace covariance;
``--nodes`` per axis, the answer checked against twice the nodes):

- honest: ``b_k ~ N(mu, diag(tau)^2)``;
- ``label_flip``: the client's labels are flipped, ``p(1 - y | x, b) = p(y | x, -b)``, so
  its data are those of a client with ``b_k ~ N(-mu, diag(tau)^2)``;
- ``other_population``: ``b_k ~ N(mu + 4 tau, diag(tau)^2)`` (``robustness.SHIFT_SDS``).

The federations, attackers and attacked rows are ``robustness.py``'s own (same seeds), so
seeds 0-2 are the benchmark's; more seeds only tighten the estimate. At 5% the event
"all 5 attackers in the top 10" is reported for the same LR ranking (a natural ideal
detector there, not proven optimal for that event).

Run (numpy only, about a second per seed)::

    .venv/bin/python benchmarks/detection_bound.py --seeds 200

Results: ``benchmarks/results/detection_bound.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from _common import RESULTS, jsonable, machine, md_table
from scipy.special import log_expit, logsumexp

DATA_ATTACKS = ("label_flip", "other_population")


def gauss_hermite_2d(nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Standard-normal nodes ``[G^2, 2]`` and log weights ``[G^2]`` of the tensor rule."""
    z, w = np.polynomial.hermite_e.hermegauss(nodes)
    w = w / w.sum()
    zz = np.stack(np.meshgrid(z, z, indexing="ij"), -1).reshape(-1, 2)
    lw = np.log(np.outer(w, w).ravel())
    return zz, lw


def _log_joint(b: np.ndarray, x, y, mean, sd) -> np.ndarray:
    """``log p(y | x, b) + log N(b | mean, diag(sd)^2)`` at points ``b [S, 2]``."""
    eta = b[:, :1] + b[:, 1:] * x[None, :]  # [S, n]
    ll = np.where(y[None, :] == 1, log_expit(eta), log_expit(-eta)).sum(1)
    zs = (b - mean) / sd
    return ll - 0.5 * (zs**2).sum(1) - np.log(2 * np.pi * np.prod(sd))


def log_marginal(x: np.ndarray, y: np.ndarray, mean: np.ndarray, sd: np.ndarray, rule) -> float:
    """``log ∫ prod_i p(y_i | x_i, b) N(b | mean, diag(sd)^2) db`` for a logistic client, by
    adaptive Gauss-Hermite: the rule is centred at the integrand's mode and scaled by its
    Laplace covariance (Newton steps), so large clients' sharp likelihoods are resolved."""
    z, lw = rule
    design = np.stack([np.ones_like(x), x], 1)  # [n, 2]
    b = mean.copy()
    f = _log_joint(b[None], x, y, mean, sd)[0]
    for _ in range(100):  # Newton with step halving (the integrand is log-concave)
        p = 1 / (1 + np.exp(-(design @ b)))
        grad = design.T @ (y - p) - (b - mean) / sd**2
        hess = (design * (p * (1 - p))[:, None]).T @ design + np.diag(1 / sd**2)
        step = np.linalg.solve(hess, grad)
        for _ in range(60):
            f_new = _log_joint((b + step)[None], x, y, mean, sd)[0]
            if f_new >= f - 1e-12:
                break
            step = step / 2
        b, f = b + step, f_new
        if np.max(np.abs(step)) < 1e-10:
            break
    p = 1 / (1 + np.exp(-(design @ b)))
    hess = (design * (p * (1 - p))[:, None]).T @ design + np.diag(1 / sd**2)
    chol = np.linalg.cholesky(np.linalg.inv(hess))
    points = b + z @ chol.T
    # ∫ f(b) db = E_{u ~ N(0, I)}[f(b* + C u) / N(u | 0, I)] |det C|
    log_phi = -0.5 * (z**2).sum(1) - np.log(2 * np.pi)
    logdet = np.log(np.diag(chol)).sum()
    return float(logsumexp(_log_joint(points, x, y, mean, sd) - log_phi + lw) + logdet)


def attacker_mean(attack: str, mu: np.ndarray, tau: np.ndarray) -> np.ndarray:
    import robustness  # the scenario (imported when used: it configures JAX)

    if attack == "label_flip":
        return -mu
    return mu + robustness.SHIFT_SDS * tau


def log_ratios(frame, fed, attack: str, rule) -> np.ndarray:
    """``log LR_k`` for every client, in the order of ``fed.clients``."""
    mu, tau = np.asarray(fed.phi["mu"], float), np.asarray(fed.phi["tau"], float)
    alt = attacker_mean(attack, mu, tau)
    out = np.empty(len(fed.clients))
    groups = dict(tuple(frame.groupby("client")))
    for i, name in enumerate(fed.clients):
        rows = groups[name]
        x = rows[fed.features[0]].to_numpy(float)
        y = rows["y"].to_numpy(int)
        out[i] = log_marginal(x, y, alt, tau, rule) - log_marginal(x, y, mu, tau, rule)
    return out


def one_seed(seed: int, rate: float, rules) -> list[dict]:
    import robustness

    fed = robustness.federation(seed)
    attackers = robustness.attackers_of(seed, rate)
    top = int(round(0.1 * robustness.N_CLIENTS))
    rows = []
    for attack in DATA_ATTACKS:
        frame = robustness.frame_for(fed, attack, attackers, seed)
        lr = log_ratios(frame, fed, attack, rules[0])
        check = log_ratios(frame, fed, attack, rules[1])
        order = np.argsort(-lr)
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        ranks = rank[attackers]
        rows.append(
            {
                "seed": seed,
                "rate": rate,
                "attack": attack,
                "all_in_top": bool(ranks.max() < top),
                "share_in_top": float(np.mean(ranks < top)),
                "worst_rank": int(ranks.max()) + 1,
                "quadrature_error": float(np.max(np.abs(lr - check))),
                "tau": np.asarray(fed.phi["tau"]).tolist(),
                "mu": np.asarray(fed.phi["mu"]).tolist(),
            }
        )
    return rows


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson interval of a binomial proportion."""
    p = k / n
    c = (p + z * z / (2 * n)) / (1 + z * z / n)
    h = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return c - h, c + h


def report(rows: list[dict], nodes: int, wall: float) -> str:
    table = []
    for rate in sorted({r["rate"] for r in rows}, reverse=True):
        for attack in DATA_ATTACKS:
            sel = [r for r in rows if r["rate"] == rate and r["attack"] == attack]
            k = sum(r["all_in_top"] for r in sel)
            lo, hi = wilson(k, len(sel))
            bench = [r for r in sel if r["seed"] < 3]
            table.append(
                [
                    attack,
                    f"{rate:.0%}",
                    len(sel),
                    f"{k / len(sel):.3f} [{lo:.3f}, {hi:.3f}]",
                    f"{np.mean([r['share_in_top'] for r in sel]):.3f}",
                    f"{np.median([r['worst_rank'] for r in sel]):.0f}",
                    " ".join("yes" if r["all_in_top"] else "no" for r in bench),
                ]
            )
    err = max(r["quadrature_error"] for r in rows)
    return "\n".join(
        [
            "# The best any detector could do (issue #19, item 2)",
            "",
            "`benchmarks/detection_bound.py` (module docstring: the argument). The Bayes-optimal "
            "detector - given the true population, the attack's form and every client's raw "
            "rows - ranks clients by `p(D_k | attacker) / p(D_k | honest)`; with 10 attackers "
            "among 100 clients, 'every attacker in the top 10%' is exact identification, and no "
            "score achieves it more often than this ranking does. Federations, attackers and "
            "attacked rows are `benchmarks/robustness.py`'s (seeds 0-2 are the benchmark's).",
            "",
            f"Machine: {machine()['cpu_count']} CPUs, numpy only. Adaptive Gauss-Hermite "
            f"{nodes} x {nodes} nodes (max |log LR| change at "
            f"{2 * nodes} x {2 * nodes}: {err:.1e}); {wall:.0f} s.",
            "",
            md_table(
                [
                    "attack",
                    "rate",
                    "seeds",
                    "P(all attackers in top 10%) [95% CI]",
                    "mean share of attackers in top 10%",
                    "median worst attacker rank",
                    "seeds 0-2",
                ],
                table,
            ),
            "",
            "Item 2 asks for at least 0.90 at 10%. The ceiling at 10% is far below it, so "
            "neither the conflict score nor any other score of these clients' data can reach "
            "it: the attacks follow the protocol, and an attacker's coefficients (a flipped "
            "client's are `-b`, around `-mu`; the other population's around `mu + 4 tau`) "
            "overlap the honest spread once each client's estimation error from its own rows "
            "is added, so the smallest of the ten attackers' likelihood ratios often falls "
            "below the largest of the 90 honest clients'. Most attackers are found (the "
            "share column); all of them together, rarely. At 5% (5 attackers, 10 places) the "
            "ideal ranking comes near 0.90.",
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=200)
    parser.add_argument("--rates", nargs="+", type=float, default=[0.10, 0.05])
    parser.add_argument("--nodes", type=int, default=12, help="Gauss-Hermite nodes per axis")
    args = parser.parse_args()
    rules = (gauss_hermite_2d(args.nodes), gauss_hermite_2d(2 * args.nodes))
    t0 = time.perf_counter()
    rows = []
    for seed in range(args.seeds):
        for rate in args.rates:
            rows.extend(one_seed(seed, rate, rules))
        if seed % 20 == 19:
            print(f"seed {seed + 1}/{args.seeds}", flush=True)
    wall = time.perf_counter() - t0
    (RESULTS / "detection_bound.json").write_text(
        json.dumps(jsonable({"nodes": args.nodes, "wall_s": wall, "rows": rows}), indent=1)
    )
    text = report(rows, args.nodes, wall)
    (RESULTS / "detection_bound.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
