# ruff: noqa: E402  (JAX must be configured before anything imports it)
"""Clients that lie or stand far apart: how far they move the federated posterior, whether
the conflict score names them, and what the robust options buy and cost (issue #19).

Federation: 100 logistic clients, one standardized feature, intercept and slope varying by
client (``b_k ~ N(mu, tau)``), 10-200 rows per client (log-normal sizes, median 40).
A fraction of the clients (0, 5 or 10%, chosen at random per seed) is adversarial, with one
of five attacks:

``huge_precision``
    the client sends, every round, a site of precision ``1e4 I`` centred 4 population sds
    above the true ``mu`` in both coordinates (a forged, confident message);
``scaled``
    the client computes its honest site and multiplies it (precision and shift) by 100: the
    same mean, a hundred times the confidence;
``copy``
    the client sends the site of one honest client (the same victim for every attacker: a
    sybil that counts one client's data many times);
``label_flip``
    the client flips its own labels (``y -> 1 - y``) and follows the protocol;
``other_population``
    the client's data come from a population shifted by 4 sds in both coordinates, and it
    follows the protocol.

The site attacks act on the server's side of the exchange (the messages as the server
receives them), the data attacks on the client's rows. Methods (all federated EP, sites
over client effects, the default method):

``gaussian``  the Gaussian population, no option (the damage an attack does);
``capped``    the Gaussian population and the precision cap (``precision_cap=10``);
``robust``    a Student-t population (``df = 4``) and the precision cap;
``exclude``   the clients that ``capped`` names (:func:`bayes_pfl.conflict.flagged_clients`:
    conflict score below ``0.05 / K``, a copied site, or a capped site) left out, and the
    rest fitted with ``robust``'s options: the remedy a statistician applies.

Reported per attack, rate and method, over seeds: how far ``mu`` and each ``tau`` move
(``|mean - mean_ref| / sd_ref``) and the median over honest clients of their personalized
means' moves (in their own posterior sds), against two references: the **clean run** (the
same 100 clients, nobody attacking) and the **honest run** (only the honest clients: what
they alone imply). The attackers' own data never reach the server, so even a method that
removes every attacker moves from the clean run by about the posterior change of dropping
10% of the clients (an RMS of ``sqrt(0.1 / 0.9)`` ≈ 0.33 posterior sds for ``mu``): the
honest run is the reference no method can beat. Detection: the attackers' ranks in the
conflict score of the ``gaussian`` fit (share of seeds where all attackers are in the top
10%), the share of attackers ``capped`` names (flagged, copied or capped), and the
false-positive rate with no attackers. Cost: mean per-client
held-out log-loss of ``robust`` against ``gaussian`` on the synthetic comparison federation
(``benchmarks/pfl_comparison.py``'s ``synthetic`` case) with nobody attacking, and of each
option alone (:data:`COST_METHODS`: the cap alone; the Student-t at ``df = 10`` and with
``df`` learned).

Run from the repository root (about an hour on 2 cores)::

    .venv/bin/python benchmarks/robustness.py --seeds 5
    .venv/bin/python benchmarks/robustness.py --report   # tables from the saved runs

Results: ``benchmarks/results/robustness.md`` and ``robustness_runs/*.jsonl`` (one line per
seed, attack, rate and method; a rerun continues where the files end).
"""

from _common import configure_jax

configure_jax(host_devices=4)

import argparse
import contextlib
import json
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from _common import RESULTS, jsonable, machine, md_table

RUNS = RESULTS / "robustness_runs"
N_CLIENTS = 100
ATTACKS = ("huge_precision", "scaled", "copy", "label_flip", "other_population")
SITE_ATTACKS = ("huge_precision", "scaled", "copy")
RATES = (0.10, 0.05)
METHODS = ("gaussian", "capped", "robust", "exclude")
SHIFT_SDS = 4.0
DF = 4.0
CAP = 10.0


def federation(seed: int):
    from bayes_pfl.synthetic import make_federation

    return make_federation(
        family="bernoulli",
        n_clients=N_CLIENTS,
        n_features=1,
        varying="slopes",
        sizes="lognormal",
        median_size=40,
        size_sigma=0.7,
        min_size=10,
        max_size=200,
        seed=7000 + seed,
    )


def attackers_of(seed: int, rate: float) -> np.ndarray:
    rng = np.random.default_rng(9000 + seed)
    n = int(round(rate * N_CLIENTS))
    return np.sort(rng.choice(N_CLIENTS, n, replace=False)) if n else np.array([], int)


def frame_for(fed, attack: str, attackers: np.ndarray, seed: int) -> pd.DataFrame:
    """The rows the clients hold (data attacks change the attackers' own rows)."""
    df = fed.data.copy()
    if attack not in ("label_flip", "other_population") or not len(attackers):
        return df
    names = [fed.clients[i] for i in attackers]
    bad = df["client"].isin(names)
    if attack == "label_flip":
        df.loc[bad, "y"] = 1 - df.loc[bad, "y"]
        return df
    # other population: the attackers' coefficients drawn around mu + 4 tau
    rng = np.random.default_rng(11000 + seed)
    mu, tau = np.asarray(fed.phi["mu"]), np.asarray(fed.phi["tau"])
    for name in names:
        rows = df["client"] == name
        b = mu + SHIFT_SDS * tau + tau * rng.standard_normal(mu.shape)
        x = df.loc[rows, list(fed.features)].to_numpy()
        p = 1 / (1 + np.exp(-(b[0] + x @ b[1:])))
        df.loc[rows, "y"] = (rng.uniform(size=len(p)) < p).astype(df["y"].dtype)
    return df


def data_of(frame: pd.DataFrame, fed, keep=None):
    from bayes_pfl import FederatedData

    if keep is not None:
        frame = frame[frame["client"].isin(keep)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return FederatedData.from_pandas(
            frame, client_col="client", target="y", features=list(fed.features)
        )


@contextlib.contextmanager
def site_attack(attack: str, positions: np.ndarray, fed):
    """The server receives forged sites from the clients at ``positions`` (their order in
    the fit's data) during the fits in this block."""
    from bayes_pfl import federated
    from bayes_pfl.gaussian import GaussianFactor

    if attack not in SITE_ATTACKS or not len(positions):
        yield
        return
    orig = federated.effect_algorithm
    idx = jnp.asarray(positions)
    mu, tau = np.asarray(fed.phi["mu"]), np.asarray(fed.phi["tau"])
    target = jnp.asarray(mu + SHIFT_SDS * tau)

    def patched(model, **options):
        alg = orig(model, **options)

        def server_update(rng_key, state, messages, accept):
            site = messages.site
            if attack == "huge_precision":
                j = site.shift.shape[-1]
                prec = 1e4 * jnp.eye(j, dtype=site.shift.dtype)
                prec_k = jnp.broadcast_to(prec, (len(positions), j, j))
                shift_k = jnp.broadcast_to(prec @ target, (len(positions), j))
            elif attack == "scaled":
                prec_k, shift_k = 100.0 * site.precision[idx], 100.0 * site.shift[idx]
            else:  # copy: every attacker sends the victim's site
                victim = int(np.setdiff1d(np.arange(site.shift.shape[0]), positions)[0])
                prec_k = jnp.broadcast_to(site.precision[victim], site.precision[idx].shape)
                shift_k = jnp.broadcast_to(site.shift[victim], site.shift[idx].shape)
            forged = GaussianFactor(
                site.precision.at[idx].set(prec_k), site.shift.at[idx].set(shift_k)
            )
            return alg.server_update(rng_key, state, messages._replace(site=forged), accept)

        return alg._replace(server_update=server_update)

    federated.effect_algorithm = patched
    try:
        yield
    finally:
        federated.effect_algorithm = orig


_MODELS: dict = {}


def model_for(df=None, features=("x0",)):  # df: a Student-t population's (None: Gaussian)
    """One model object per form (the fits' compiled code is cached per model object)."""
    from bayes_pfl.models import hierarchical_glm

    key = (df, tuple(features))
    if key not in _MODELS:
        m = hierarchical_glm("bernoulli", feature_names=tuple(features), varying="slopes")
        _MODELS[key] = m if df is None else m.with_population(df)
    return _MODELS[key]


OPTIONS = {  # method -> (Student-t population, precision cap)
    "gaussian": (False, None),
    "capped": (False, CAP),
    "robust": (True, CAP),
    "exclude": (True, CAP),
}


def fit(data, method: str, seed: int):
    from bayes_pfl.federated import fit_ep

    robust, cap = OPTIONS[method]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fit_ep(
            model_for(DF if robust else None),
            data,
            seed=seed,
            progress=False,
            precision_cap=cap,
            num_samples=500,
        )


def summary(result) -> dict:
    """Posterior means and sds of mu, tau and every client's coefficients (by label)."""
    mu = np.asarray(result.phi["mu"]).reshape(-1, 2)
    tau = np.asarray(result.phi["tau"]).reshape(-1, 2)
    b = np.asarray(result.theta["b"])
    b = b.reshape(-1, *b.shape[-2:])  # [draw, client, 2]
    return {
        "mu_mean": mu.mean(0).tolist(),
        "mu_sd": mu.std(0).tolist(),
        "tau_mean": tau.mean(0).tolist(),
        "tau_sd": tau.std(0).tolist(),
        "clients": list(map(str, result.clients)),
        "b_mean": b.mean(0).tolist(),
        "b_sd": b.std(0).tolist(),
    }


def flagged_of(result) -> tuple[list[str], list[float]]:
    """``(flagged_clients, conflict chi2 per client)`` of a fit."""
    from bayes_pfl.conflict import conflict_table, flagged_clients

    table = conflict_table(result)
    return sorted(map(str, flagged_clients(result))), table["chi2"].astype(float).tolist()


def attack_runs(seed: int, attack: str, rate: float, fed) -> list[dict]:
    """Every method under one attack (``exclude`` refits without what ``capped`` names)."""
    attackers = attackers_of(seed, rate)
    frame = frame_for(fed, attack, attackers, seed)
    data = data_of(frame, fed)
    names = [str(fed.clients[i]) for i in attackers]
    out, named = [], []
    for method in METHODS:
        t0 = time.perf_counter()
        run_data = data
        if method == "exclude":
            run_data = data_of(frame, fed, [c for c in data.clients if str(c) not in named])
        labels = list(map(str, run_data.clients))
        positions = np.asarray([labels.index(c) for c in names if c in labels], int)
        with site_attack(attack, positions, fed):
            res = fit(run_data, method, seed)
        flagged, chi2 = flagged_of(res)
        if method == "capped":
            named = flagged
        row = {
            "seed": seed, "attack": attack, "rate": rate, "method": method,
            "flagged": flagged, "chi2": chi2, "excluded": named if method == "exclude" else [],
            "attackers": names, "converged": bool(res.info.get("converged")),
        }  # fmt: skip
        row.update(summary(res))
        row["seconds"] = time.perf_counter() - t0
        out.append(row)
    return out


REFERENCES = {"clean": ("gaussian", "capped", "robust"), "honest": ("gaussian", "robust")}


def reference_runs(seed: int, fed, rate: float, done: set):
    """The reference fits of a seed not yet in ``done``: clean runs (all clients honest)
    of every method, honest-only runs (the attackers of ``rate`` left out) of the
    Gaussian and the robust populations. Yields ``(ref, method, row)``."""
    for ref, methods in REFERENCES.items():
        name = "clean" if ref == "clean" else f"honest{rate:g}"
        keep = None
        if ref == "honest":
            attackers = {fed.clients[i] for i in attackers_of(seed, rate)}
            keep = [c for c in fed.clients if c not in attackers]
        for method in methods:
            if (seed, name, method) in done:
                continue
            res = fit(data_of(fed.data, fed, keep), method, seed)
            flagged, chi2 = flagged_of(res)
            yield name, method, {**summary(res), "flagged": flagged, "chi2": chi2}


def moves(run: dict, ref: dict) -> dict:
    """``|Δ mean| / sd_ref`` of mu, tau and the median over the run's honest clients."""
    mu = np.abs(np.subtract(run["mu_mean"], ref["mu_mean"])) / np.asarray(ref["mu_sd"])
    tau = np.abs(np.subtract(run["tau_mean"], ref["tau_mean"])) / np.asarray(ref["tau_sd"])
    pos = {c: i for i, c in enumerate(ref["clients"])}
    attackers = set(run.get("attackers", []))
    d = []
    for i, c in enumerate(run["clients"]):
        if c in attackers or c not in pos:
            continue
        j = pos[c]
        d.append(
            np.abs(np.subtract(run["b_mean"][i], ref["b_mean"][j])) / np.asarray(ref["b_sd"][j])
        )
    honest = float(np.median(np.max(np.asarray(d), axis=1))) if d else float("nan")
    return {"mu": float(mu.max()), "tau": float(tau.max()), "honest": honest}


def detection(run: dict) -> float:
    """1 if every attacker is in the top 10% of the conflict score (``chi2``), else 0."""
    chi2 = np.asarray(run["chi2"])
    if not run["attackers"]:
        return float("nan")
    order = np.argsort(-chi2)
    top = set(np.asarray(run["clients"])[order[: int(np.ceil(0.1 * len(chi2)))]])
    return float(set(run["attackers"]) <= top)


def named_share(run: dict) -> float:
    """Share of the attackers among the fit's flagged clients."""
    if not run["attackers"]:
        return float("nan")
    return len(set(run["attackers"]) & set(run["flagged"])) / len(run["attackers"])


# ---------------------------------------------------------------------------------- cost
COST_METHODS = {  # name -> (inference, population df or None, precision cap or None)
    "gaussian": ("ep", None, None),
    "capped": ("ep", None, CAP),
    "robust": ("ep", DF, CAP),
    "robust-df10": ("ep", 10.0, CAP),
    "robust-learned": ("ep", "learn", CAP),
    "nuts-gaussian": ("nuts", None, None),
    "nuts-t": ("nuts", DF, None),
}
"""The cost runs: the Gaussian population, each robust option alone and together, the
Student-t population at a larger and at a learned ``df``, and centralized NUTS with the
Gaussian and the Student-t population (what the model costs, apart from the federated
approximation)."""


def cost_runs(seeds, done: set, methods=tuple(COST_METHODS)) -> list[dict]:
    """Held-out log-loss of the Gaussian population and of the robust options on the
    synthetic comparison federation, nobody attacking; ``done``: ``(seed, method)``
    pairs already recorded (a rerun fits only the missing ones); ``methods``: which of
    :data:`COST_METHODS`, in this order."""
    import sys

    sys.path.insert(0, str(RESULTS.parent))
    from pfl_comparison import synthetic_data

    from bayes_pfl.compare import bayesian_method, compare

    out = []
    for seed in seeds:
        todo = [m for m in methods if (seed, m) not in done]
        if not todo:
            continue
        data = synthetic_data(seed)
        for name in todo:  # one method at a time: each is recorded as soon as it is fitted
            kind, df, cap = COST_METHODS[name]
            options = {} if cap is None else {"precision_cap": cap}
            method = bayesian_method(
                kind, model=lambda d, df=df: model_for(df, d.features), name=name, **options
            )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                table = compare(data, [method], seeds=(seed,), progress=False).table
            rows = table[table["method"] == name]
            row = {"seed": seed, "method": name, "log_loss": float(rows["log_loss"].mean())}
            _append("cost", row)
            out.append(row)
            print(f"cost seed {seed} {name}: {row['log_loss']:.4f}", flush=True)
    return out


# ---------------------------------------------------------------------------------- runs
def _append(name: str, row: dict) -> None:
    RUNS.mkdir(parents=True, exist_ok=True)
    with open(RUNS / f"{name}.jsonl", "a") as f:
        f.write(json.dumps(jsonable(row)) + "\n")


def _load(name: str) -> list[dict]:
    path = RUNS / f"{name}.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run(seeds, attacks, rates) -> None:
    """Every seed at the first rate, then the next rate (10% first: the acceptance rate)."""
    done_ref = {(r["seed"], r["ref"], r["method"]) for r in _load("references")}
    done = {(r["seed"], r["attack"], r["rate"], r["method"]) for r in _load("attacks")}
    for rate in rates:
        for seed in seeds:
            fed = federation(seed)
            t0 = time.perf_counter()
            for ref, method, row in reference_runs(seed, fed, rate, done_ref):
                _append("references", {"seed": seed, "ref": ref, "method": method, **row})
                done_ref.add((seed, ref, method))
                print(f"seed {seed}: reference {ref} {method} ({time.perf_counter() - t0:.0f} s)")
            for attack in attacks:
                if all((seed, attack, rate, m) in done for m in METHODS):
                    continue
                for row in attack_runs(seed, attack, rate, fed):
                    if (seed, attack, rate, row["method"]) in done:
                        continue
                    _append("attacks", row)
                    print(
                        f"seed {seed} {attack} {rate:g} {row['method']}: flagged "
                        f"{len(row['flagged'])}, {row['seconds']:.0f} s",
                        flush=True,
                    )
            jax.clear_caches()


CLEAN_REF = {"gaussian": "gaussian", "capped": "capped", "robust": "robust", "exclude": "robust"}
HONEST_REF = {"gaussian": "gaussian", "capped": "gaussian", "robust": "robust", "exclude": "robust"}


def report() -> str:
    refs = {(r["seed"], r["ref"], r["method"]): r for r in _load("references")}
    rows = _load("attacks")
    info = machine()
    lines = [
        "# Robustness to lying and outlying clients (issue #19)",
        "",
        "`benchmarks/robustness.py` (module docstring: federation, attacks, methods). "
        f"{N_CLIENTS} logistic clients, intercept and slope varying; EP over client effects. "
        f"`capped`: precision cap {CAP:g}; `robust`: Student-t population (df {DF:g}) and the "
        "cap; `exclude`: the clients `capped` names (conflict, copies, cap) left out, the rest "
        "fitted as `robust`.",
        "",
        f"Machine: {info.get('cpu_count')} CPUs, jax {info['versions'].get('jax')}. "
        f"Tables written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "",
        "## How far the attackers move the posterior",
        "",
        "In posterior sds of the reference run: `mu`, `tau` (the larger of intercept and "
        "slope), and honest clients' personalized coefficients (median over the honest "
        "clients of the larger coordinate's move). Median over seeds [max]. **clean**: the "
        "same 100 clients, nobody attacking (the same method; `exclude` against `robust`); "
        "**honest**: the honest clients alone (Gaussian population for `gaussian`/`capped`, "
        "Student-t for `robust`/`exclude`), what the honest data imply: the attackers' own "
        "data never reach the server, so no method can do better than the honest run. "
        "Detection: share of seeds in which every attacker is in the top 10% of the conflict "
        "score of the `gaussian` fit; named: mean share of the attackers among the clients "
        "`capped` names.",
        "",
        "The `robust` and `exclude` runs (Student-t population) were made before 2026-12-05 "
        "16:00 UTC, "
        "when personalization under a Student-t population drew from a generic sampler "
        "whose personalized sds were too narrow (median 0.70 of NUTS's on the comparison "
        "federation): their honest-client columns, measured in those sds, are too large; "
        "their `mu` and `tau` columns (the server's draws) are not affected. Re-run them "
        "(delete their lines from `robustness_runs/`) to update.",
        "",
    ]
    table = []
    for attack in ATTACKS:
        for rate in RATES:
            for method in METHODS:
                sel = [
                    r
                    for r in rows
                    if r["attack"] == attack and r["rate"] == rate and r["method"] == method
                ]
                if not sel:
                    continue
                mv_clean, mv_honest = [], []
                for r in sel:
                    c = refs.get((r["seed"], "clean", CLEAN_REF[method]))
                    h = refs.get((r["seed"], f"honest{rate:g}", HONEST_REF[method]))
                    if c:
                        mv_clean.append(moves(r, c))
                    if h:
                        mv_honest.append(moves(r, h))

                def cell(mv, key):
                    v = np.asarray([m[key] for m in mv])
                    return f"{np.median(v):.2f} [{v.max():.2f}]" if len(v) else "-"

                det = "-"
                if method == "gaussian":
                    det = f"{np.mean([detection(r) for r in sel]):.2f}"
                elif method == "capped":
                    det = f"named {np.mean([named_share(r) for r in sel]):.2f}"
                table.append(
                    [
                        attack, f"{rate:.0%}", method, str(len(sel)),
                        cell(mv_clean, "mu"), cell(mv_clean, "tau"), cell(mv_clean, "honest"),
                        cell(mv_honest, "mu"), cell(mv_honest, "tau"), cell(mv_honest, "honest"),
                        det,
                    ]
                )  # fmt: skip
    lines.append(
        md_table(
            [
                "attack",
                "rate",
                "method",
                "seeds",
                "mu (clean)",
                "tau (clean)",
                "honest (clean)",
                "mu (honest)",
                "tau (honest)",
                "honest (honest)",
                "detection",
            ],
            table,
        )  # fmt: skip
    )
    lines += ["", "## With no attackers", ""]
    fp = []
    for method in ("gaussian", "capped", "robust"):
        sel = [r for (_, ref, m), r in refs.items() if ref == "clean" and m == method]
        if sel:
            share = np.mean([len(r["flagged"]) / N_CLIENTS for r in sel])
            fp.append([method, str(len(sel)), f"{share:.3f}"])
    lines.append(md_table(["method", "seeds", "share of clients flagged (false positives)"], fp))
    cost = _load("cost")
    if cost:
        lines += [
            "",
            "## Cost with nobody attacking (synthetic comparison federation)",
            "",
            "Mean per-client held-out log-loss (`benchmarks/pfl_comparison.py`'s `synthetic` "
            "case: 150 clients, 3 features, test 30%).",
            "",
        ]
        df = pd.DataFrame(cost).pivot_table(index="seed", columns="method", values="log_loss")
        cols = [m for m in COST_METHODS if m in df.columns]

        def base(m):  # each method against the Gaussian population of its own inference
            return "nuts-gaussian" if COST_METHODS[m][0] == "nuts" else "gaussian"

        pairs = [(m, base(m)) for m in cols if m != base(m) and base(m) in df.columns]
        for m, b in pairs:  # paired per seed: the mean row is the mean paired difference
            df[f"{m} - {b}"] = df[m] - df[b]
        shown = [*cols, *(f"{m} - {b}" for m, b in pairs)]
        crow = []
        for label, r in [*((str(s), r) for s, r in df.iterrows()), ("mean", df.mean())]:
            crow.append(
                [label]
                + [
                    "" if pd.isna(r[c]) else (f"{r[c]:+.4f}" if " - " in c else f"{r[c]:.4f}")
                    for c in shown
                ]
            )
        lines.append(md_table(["seed", *shown], crow))
        lines += [
            "",
            f"`capped`: the precision cap alone; `robust`: Student-t (df {DF:g}) and the cap "
            "(the options of the tables above); `robust-df10`: Student-t with df 10 and the "
            "cap; `robust-learned`: Student-t with df learned (prior 2 + Gamma(2, 0.1)) and "
            "the cap (all federated EP); `nuts-gaussian`, `nuts-t`: centralized NUTS with the "
            f"Gaussian and the Student-t (df {DF:g}) population. Differences are paired by "
            "seed, each against the Gaussian population fitted the same way; a mean is over "
            "the seeds a column has.",
        ]
    text = "\n".join(lines) + "\n"
    (RESULTS / "robustness.md").write_text(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--attacks", nargs="+", choices=ATTACKS, default=list(ATTACKS))
    parser.add_argument("--rates", nargs="+", type=float, default=list(RATES))
    parser.add_argument("--cost-seeds", type=int, default=3)
    parser.add_argument("--skip-cost", action="store_true")
    parser.add_argument("--cost-only", action="store_true", help="only the no-attack cost")
    parser.add_argument(
        "--cost-methods", nargs="+", choices=list(COST_METHODS), default=list(COST_METHODS)
    )
    parser.add_argument("--report", action="store_true", help="only write the tables")
    args = parser.parse_args()
    if not args.report:
        if not args.cost_only:
            run(range(args.seeds), args.attacks, args.rates)
        if not args.skip_cost:
            done = {(r["seed"], r["method"]) for r in _load("cost")}
            cost_runs(range(args.cost_seeds), done, args.cost_methods)
    print(report())


if __name__ == "__main__":
    main()
