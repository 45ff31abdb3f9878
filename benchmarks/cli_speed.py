# ruff: noqa: E402  (JAX must be configured before anything imports it)
"""Speed as a user meets it: ``bayes-pfl fit ... --method ep`` against ``--method nuts``.

Each fit is a fresh process running the command line (interpreter start-up, imports,
data loading, compilation, inference, writing the result folder: everything a user
waits for), with an empty JAX compilation cache ("cold") and then again with the cache
the cold run left ("cached"). A further process fits twice with the Python API and
times the second call ("warm": what a notebook user sees after the first fit).

Cases (issue #16, target 5):

* ``synth150``: 150 clients (3-180 rows, median 17), 4 features, varying intercept and
  slopes, logistic (``cases.py``), the CSV written to a temporary folder; target EP >= 3x;
* ``guimmun``: the bundled Guatemalan immunization data, 161 communities, 2,159 children,
  the command line's defaults (``--data guimmun``); target: EP faster than NUTS;
* ``big1000``: 1,000 clients x 50 rows x 10 features, logistic, varying intercept;
  target >= 10x (warm >= 30x);
* ``big1000`` warm: >= 30x; ``synth150`` warm: >= 10x.

Run from the repository root, alone (nothing else on the machine)::

    .venv/bin/python benchmarks/cli_speed.py
    .venv/bin/python benchmarks/cli_speed.py --case synth150 --methods ep nuts

Writes ``benchmarks/results/cli_speed.json`` and ``.md`` (a ``--case`` run merges).
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

from _common import RESULTS, jsonable, machine, md_table, write_results
from cases import CASES

ROOT = Path(__file__).resolve().parents[1]
SPEED_CASES = ("synth150", "guimmun", "big1000")
TARGETS = {"synth150": (3.0, 10.0), "guimmun": (1.0, None), "big1000": (10.0, 30.0)}

LAUNCH = """
import json, resource, sys, time
t0 = time.perf_counter()
from bayes_pfl.cli import main
rc = main(sys.argv[1:])
print("@@" + json.dumps({"rc": rc, "seconds_in_python": time.perf_counter() - t0,
      "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

WARM = """
import json, sys, time
from bayes_pfl.cli import build_parser, configure_jax, load_data, load_model
configure_jax(4)
args = build_parser().parse_args(["fit", *sys.argv[2:], "--method", sys.argv[1], "--out", "x"])
data, default_model = load_data(args)
model = load_model(args, data, default_model)
from bayes_pfl import fit_nuts
from bayes_pfl.federated import fit_ep
from bayes_pfl.federated_vi import fit_vi
fit = {"nuts": lambda: fit_nuts(model, data, progress_bar=False),
       "ep": lambda: fit_ep(model, data, progress=False),
       "vi": lambda: fit_vi(model, data, progress=False)}[sys.argv[1]]
times = []
for _ in range(2):
    t0 = time.perf_counter(); fit(); times.append(time.perf_counter() - t0)
print("@@" + json.dumps({"first_s": times[0], "warm_s": times[1]}))
"""


def _cli_args(case: str, tmp: Path) -> list[str]:
    """The command line's data arguments for ``case`` (a CSV written for synthetic ones)."""
    if case == "guimmun":
        return ["--data", "guimmun"]
    model, data, desc = CASES[case]()
    csv = tmp / f"{case}.csv"
    if not csv.exists():
        df = data.to_pandas("train")
        df.to_csv(csv, index=False)
    varying = "slopes" if "slopes" in model.name else "intercept"
    return [
        "--data",
        str(csv),
        "--client-col",
        "client",
        "--target",
        data.target,
        "--features",
        ",".join(data.features),
        "--model",
        "logistic",
        "--varying",
        varying,
    ]


def _run(cmd: list[str], env: dict, timeout: float) -> dict:
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s", "wall_time_s": timeout}
    wall = time.perf_counter() - t0
    line = [x for x in p.stdout.splitlines() if x.startswith("@@")]
    out = {"wall_time_s": wall, "returncode": p.returncode}
    if line:
        out.update(json.loads(line[-1][2:]))
    if p.returncode != 0 or not line:
        out["error"] = (p.stderr or p.stdout)[-2000:]
    return out


def run_case(case: str, methods: list[str], tmp: Path, timeout: float) -> dict:
    data_args = _cli_args(case, tmp)
    res: dict = {"cli_data_args": data_args, "methods": {}}
    for method in methods:
        cache = tmp / f"cache-{case}-{method}"
        env = {
            **os.environ,
            "XDG_CACHE_HOME": str(cache),
            "JAX_PLATFORMS": "cpu",
            "PYTHONUNBUFFERED": "1",
        }
        env.pop("XLA_FLAGS", None)  # the command line sets its own
        entry = {}
        for label in ("cold", "cached"):
            out_dir = tmp / f"out-{case}-{method}-{label}"
            cmd = [sys.executable, "-c", LAUNCH, "fit", *data_args, "--method", method]
            cmd += ["--out", str(out_dir), "--no-progress"]
            entry[label] = _run(cmd, env, timeout)
            print(f"{case:9s} {method:5s} {label:6s} {entry[label]}", flush=True)
        warm = _run(
            [sys.executable, "-c", WARM, method, *data_args],
            {**env, "XDG_CACHE_HOME": str(tmp / f"cache-warm-{case}-{method}")},
            2 * timeout,
        )
        entry["warm"] = warm
        print(f"{case:9s} {method:5s} warm   {warm}", flush=True)
        res["methods"][method] = entry
    return res


def _ratio(res: dict, kind: str, key: str = "wall_time_s") -> float | None:
    m = res["methods"]
    if "nuts" not in m or "ep" not in m:
        return None
    a, b = m["nuts"].get(kind, {}), m["ep"].get(kind, {})
    if key not in a or key not in b or "error" in a or "error" in b:
        return None
    return a[key] / b[key]


def markdown(results: dict, meta: dict) -> str:
    lines = [
        "# Speed as a user meets it: `bayes-pfl fit --method ep` vs `--method nuts`",
        "",
        f"{meta['date']}, {meta['platform']}, {meta['cpu_count']} cores, load average "
        f"{meta.get('load_average', 'n/a')} when written (run alone for timings; a higher "
        "load makes the times upper bounds). Command: "
        "`.venv/bin/python benchmarks/cli_speed.py`. Fresh processes of the "
        "command line (start-up, imports, data, compilation, inference and writing the "
        "result folder included); `cold`: empty JAX compilation cache, `cached`: a second "
        "process with the cache the first left; `warm`: the second fit in one Python "
        "process (API). Ratios NUTS time / EP time from one run.",
        "",
    ]
    header = ["case", "method", "cold s", "cached s", "warm s", "peak RSS MB (cold)"]
    rows = []
    for case, res in results.items():
        for method, e in res["methods"].items():
            cold, cached, warm = e.get("cold", {}), e.get("cached", {}), e.get("warm", {})

            def fmt(d, key="wall_time_s"):
                return "error" if "error" in d else f"{d.get(key, float('nan')):.1f}"

            rows.append(
                [
                    case,
                    method,
                    fmt(cold),
                    fmt(cached),
                    fmt(warm, "warm_s"),
                    f"{cold.get('max_rss_mb', float('nan')):.0f}",
                ]
            )
    lines.append(md_table(header, rows))
    header = ["case", "NUTS/EP cold", "NUTS/EP cached", "NUTS/EP warm", "target (fresh, warm)"]
    rows = []
    for case, res in results.items():
        cold, cached = _ratio(res, "cold"), _ratio(res, "cached")
        warm = _ratio(res, "warm", "warm_s")
        t = TARGETS.get(case, (None, None))

        def f(x):
            return "n/a" if x is None else f"{x:.2f}x"

        target = ", ".join("-" if x is None else f"{x:g}x" for x in t)
        rows.append([case, f(cold), f(cached), f(warm), target])
    lines += ["", md_table(header, rows)]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", nargs="+", choices=SPEED_CASES, default=list(SPEED_CASES))
    parser.add_argument("--methods", nargs="+", default=["nuts", "ep"])
    parser.add_argument("--timeout", type=float, default=1800.0)
    args = parser.parse_args(argv)
    path = RESULTS / "cli_speed.json"
    results = json.loads(path.read_text()).get("cases", {}) if path.exists() else {}
    with tempfile.TemporaryDirectory(prefix="bayes-pfl-speed-") as tmp:
        for case in args.case:
            res = run_case(case, args.methods, Path(tmp), args.timeout)
            if case in results:
                res["methods"] = {**results[case].get("methods", {}), **res["methods"]}
            results[case] = res
            # written after every case: a long run keeps what it measured
            meta = {**machine(), "load_average": [round(x, 1) for x in os.getloadavg()]}
            write_results(
                "cli_speed", jsonable({"meta": meta, "cases": results}), markdown(results, meta)
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
