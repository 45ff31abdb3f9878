# ruff: noqa: E402  (JAX must be configured before anything imports it)
"""How much EP's result moves with the server draws' Monte Carlo noise (issue #16).

The cavities come from the server's NUTS draws each round, and with damping 1 that noise
passes into the sites. This fits ``fit_ep`` on guimmun (161 communities, binary, its clean
NUTS reference in ``results/references/``) at several seeds and server settings and
reports the worst ``z`` and the sd-ratio range against the reference, element by element.

Run from the repository root::

    .venv/bin/python benchmarks/ep_seed_spread.py

Writes ``benchmarks/results/ep_seed_spread.json`` and ``.md``.
"""

from _common import configure_jax

configure_jax(host_devices=4)

from _common import RESULTS, compare, load_stats, machine, md_table, write_results
from cases import CASES

from bayes_pfl.federated import fit_ep

RUNS = [
    (0, {"server_chains": 2}),
    (0, {"server_chains": 2, "server_samples": 1000}),
    (0, {}),
    (1, {}),
    (2, {}),
]


def main() -> None:
    model, data, _ = CASES["guimmun"]()
    stats = load_stats(RESULTS / "references" / "guimmun.npz")
    rows = []
    for seed, options in RUNS:
        fit = fit_ep(model, data, seed=seed, progress=False, effect_options=options or None)
        cmp = compare(fit, stats, {}, 0.15, (0.85, 1.15))
        row = {
            "seed": seed,
            "effect_options": options or "defaults (4 server chains x 300 draws)",
            "rounds": len(fit.history),
            "worst_z": round(cmp["worst_z"]["z"], 3),
            "at": cmp["worst_z"]["at"],
            "sd_ratio_min": round(cmp["sd_ratio_min"]["r"], 3),
            "sd_ratio_max": round(cmp["sd_ratio_max"]["r"], 3),
        }
        print(row, flush=True)
        rows.append(row)
    meta = machine()
    md = (
        "# EP's result across seeds and server settings (guimmun)\n\n"
        f"{meta['date']}. Command: `.venv/bin/python benchmarks/ep_seed_spread.py`. Worst z "
        "and sd-ratio range over every element against the clean NUTS reference.\n\n"
        + md_table(list(rows[0]), [list(r.values()) for r in rows])
        + "\n"
    )
    write_results("ep_seed_spread", {"meta": meta, "runs": rows}, md)


if __name__ == "__main__":
    main()
