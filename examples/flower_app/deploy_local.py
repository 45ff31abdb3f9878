"""Deploy bayes-pfl on Flower on this machine: a SuperLink and one SuperNode per hospital.

Every process listens on 127.0.0.1 only. Each SuperNode reads only its own hospital's
CSV of the UCI heart-disease data (written to ``--workdir``); the ServerApp runs
federated EP with the hierarchical logistic model and writes the result folder of
``bayes-pfl fit`` to ``--out``. Everything is stopped on exit (also on Ctrl-C).

    python examples/flower_app/deploy_local.py --rounds 10 --out results/heart-flower
    bayes-pfl report results/heart-flower

With ``--keep-running`` the federation stays up after the run (Ctrl-C stops it) and
prints the ``flwr run`` command to start more runs against it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bayes_pfl.datasets import HEART_DISEASE_HOSPITALS, load
from bayes_pfl.flower.launch import LocalFederation

APP_DIR = Path(__file__).resolve().parent


def write_hospital_csvs(folder: Path) -> list[dict]:
    """One CSV per hospital (raw rows, missing values kept) and the node configs reading them."""
    folder.mkdir(parents=True, exist_ok=True)
    df = load("heart_disease")
    nodes = []
    for i, hospital in enumerate(HEART_DISEASE_HOSPITALS):
        path = folder / f"{hospital}.csv"
        df[df.hospital == hospital].to_csv(path, index=False)
        nodes.append({"partition-id": i, "data-path": str(path.resolve())})
    return nodes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", default="flower-local", help="FLWR_HOME, logs and hospital CSVs")
    p.add_argument("--out", default="flower-local/fit", help="result folder")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--method", default="ep", help="ep or one-shot")
    p.add_argument("--port", type=int, default=None, help="SuperLink port (default: a free one)")
    p.add_argument("--run-config", default="", help="extra run config, 'key=value key=value'")
    p.add_argument("--keep-running", action="store_true", help="leave the federation up")
    args = p.parse_args(argv)

    work = Path(args.workdir).resolve()
    nodes = write_hospital_csvs(work / "hospitals")
    run_config: dict = {
        "method": args.method,
        "rounds": args.rounds,
        "num-clients": len(nodes),
        "out": str(Path(args.out).resolve()),
        "jax-cache-dir": str(work / "jax-cache"),
    }
    for item in args.run_config.split():
        key, value = item.split("=", 1)
        try:
            run_config[key] = json.loads(value)  # numbers, true/false, "quoted strings"
        except json.JSONDecodeError:
            run_config[key] = value
    with LocalFederation(work / "flwr-home", nodes, port=args.port) as fed:
        print(f"SuperLink on 127.0.0.1:{fed.port}, {len(nodes)} SuperNodes; logs in {fed.home}")
        t0 = time.perf_counter()
        fed.wait_registered(timeout_s=300)
        run_id = fed.run(APP_DIR, run_config)
        print(f"run {run_id} started; waiting ...", flush=True)
        status = fed.wait(run_id, timeout_s=3600)
        print(f"run {run_id}: {status} after {time.perf_counter() - t0:.0f} s")
        ok = (Path(run_config["out"]) / "run.json").is_file()
        if not ok or status != "finished:completed":
            print(fed.logs(run_id)[-4000:], file=sys.stderr)
            return 1
        print(f"wrote {run_config['out']} (try: bayes-pfl report {run_config['out']})")
        if args.keep_running:
            print(
                f"federation still up. In another shell:\n  FLWR_HOME={fed.home} flwr run "
                f"{APP_DIR} local-link --stream -c 'out=\"...\"'\nCtrl-C stops everything."
            )
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
