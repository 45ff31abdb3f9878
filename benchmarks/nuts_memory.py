"""Peak memory of parallel NUTS chains: ``fit_nuts`` in calls of ``centralized.CHUNK``
iterations against one call per phase (``CHUNK`` = warmup = samples: the warmup in one
call, the sampling in another; numpyro's ``MCMC`` runs both in one call), on the
8-client missing-feature federation of ``tests/test_ep_never_measured.py`` (4 chains of
1000 + 1000 at target acceptance 0.95, as its reference). Each setting runs in a fresh
process; resident memory is sampled every 0.5 s::

    .venv/bin/python benchmarks/nuts_memory.py            # both settings, ~9 min here
    .venv/bin/python benchmarks/nuts_memory.py --iterations 300

Writes ``results/nuts_memory.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import _common


def one(chunk: int | None, iterations: int) -> dict:
    """In this process: the reference fit, its peak resident memory and wall time."""
    _common.configure_jax()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_ep_never_measured import _federation

    from bayes_pfl import centralized

    if chunk is not None:
        centralized.CHUNK = chunk
    peak = [0]

    def watch():
        while True:
            with open("/proc/self/status") as f:
                rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))
            peak[0] = max(peak[0], rss)
            time.sleep(0.5)

    threading.Thread(target=watch, daemon=True).start()
    model, data = _federation(k=8)
    t0 = time.perf_counter()
    fit = centralized.fit_nuts(
        model, data, num_chains=4, num_warmup=iterations, num_samples=iterations, seed=1,
        target_accept_prob=0.95, kernel_options=centralized.median_start(), progress_bar=False,
    )  # fmt: skip
    return {"chunk": centralized.CHUNK, "peak_gb": peak[0] / 1e6,
            "seconds": time.perf_counter() - t0,
            "divergences": int(fit.sample_stats["diverging"].sum())}  # fmt: skip


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=1000, help="warmup, and again samples")
    ap.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # child: CHUNK
    args = ap.parse_args(argv)
    if args.one is not None:
        print(json.dumps(one(args.one or None, args.iterations)))
        return 0
    runs = []
    for chunk in (0, args.iterations):  # 0: the library's CHUNK; n: one call per phase
        cmd = [sys.executable, __file__, "--iterations", str(args.iterations), "--one", str(chunk)]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        runs.append(json.loads(res.stdout.strip().splitlines()[-1]))
        print(runs[-1], flush=True)
    out = {"iterations": args.iterations, "runs": runs, "machine": _common.machine()}
    path = _common.RESULTS / "nuts_memory.json"
    path.write_text(json.dumps(_common.jsonable(out), indent=1) + "\n")
    print(
        f"peak {runs[0]['peak_gb']:.2f} GB in calls of {runs[0]['chunk']} against "
        f"{runs[1]['peak_gb']:.2f} GB in one call per phase; {runs[0]['seconds']:.0f} s vs "
        f"{runs[1]['seconds']:.0f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
