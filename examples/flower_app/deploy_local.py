"""Deploy bayes-pfl on Flower on this machine: a SuperLink and one SuperNode per client file.

Every process listens on 127.0.0.1 only. Each SuperNode reads only its own CSV: by
default one per hospital of the UCI heart-disease data (written to ``--workdir``), or,
with ``--data``, each file of a folder or glob (one client per file, labelled by its
stem, as ``bayes-pfl fit --data`` reads the same files in process). The ServerApp runs
federated EP (the hierarchical logistic model by default) and writes the result folder
of ``bayes-pfl fit`` to ``--out``. Everything is stopped on exit (also on Ctrl-C). Logs,
Flower's home and the JAX cache go to ``--workdir`` (default: a new temporary folder,
printed; nothing is written to the current folder).

    python examples/flower_app/deploy_local.py --rounds 10 --out results/heart-flower
    bayes-pfl report results/heart-flower

    python examples/flower_app/deploy_local.py --data 'sites/*.csv' --target y \\
        --features age,dose --model logistic --out results/sites
    python examples/flower_app/deploy_local.py --data sites/ \\
        --formula 'y ~ age + C(sex) + (1 + age | site)' --model logistic --out results/f

With ``--formula`` the launcher fixes the federation's schema from each file's *set of
levels* (what a server would collect; no row leaves a file) and sends it in the run
config; each node evaluates its own file against it.

With ``--keep-running`` the federation stays up after the run (Ctrl-C stops it) and
prints the ``flwr run`` command to start more runs against it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from bayes_pfl.data import DataError
from bayes_pfl.datasets import HEART_DISEASE_HOSPITALS, client_files, load, source
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


def client_nodes(data: str) -> list[dict]:
    """The node configs of one CSV per client (a folder or glob): node ``i`` reads only
    the ``i``-th file, in the order :func:`bayes_pfl.datasets.source` gives the clients."""
    return [
        {"partition-id": i, "data-path": str(path.resolve())}
        for i, path in enumerate(client_files(data))
    ]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--data",
        help="one CSV per client: a folder (every *.csv) or a quoted glob ('sites/*.csv'); "
        "default: the four heart-disease hospitals",
    )
    p.add_argument("--client-col", default="", help="with --data: see `bayes-pfl fit --help`")
    p.add_argument("--target", default="", help="with --data: the target column")
    p.add_argument("--features", default="", help="with --data: comma-separated features")
    p.add_argument("--model", default="", help="zoo model (with --data: required)")
    p.add_argument(
        "--formula",
        default="",
        help="with --data: the model as a formula (--model then names the family); it "
        "names the client column, target and terms",
    )
    p.add_argument(
        "--workdir",
        default=None,
        help="FLWR_HOME, logs, JAX cache, hospital CSVs (default: a new temporary folder)",
    )
    p.add_argument("--out", default=None, help="result folder (default: WORKDIR/fit)")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--method", default="ep", help="ep or one-shot")
    p.add_argument("--port", type=int, default=None, help="SuperLink port (default: a free one)")
    p.add_argument("--run-config", default="", help="extra run config, 'key=value key=value'")
    p.add_argument("--keep-running", action="store_true", help="leave the federation up")
    args = p.parse_args(argv)
    if args.formula and not (args.data and args.model):
        p.error("--formula needs --data and --model (the family)")
    if args.data and not args.formula and not (args.target and args.features and args.model):
        p.error("--data needs --target, --features and --model (or --formula and --model)")
    if args.workdir is None:
        args.workdir = tempfile.mkdtemp(prefix="bayes-pfl-flower-")
    if args.out is None:
        args.out = str(Path(args.workdir) / "fit")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(args.workdir).resolve()
    run_config: dict = {
        "method": args.method,
        "rounds": args.rounds,
        "out": str(Path(args.out).resolve()),
        "jax-cache-dir": str(work / "jax-cache"),
    }
    if args.data:
        try:  # the launcher checks the files once; each node then reads only its own
            if args.formula:
                from bayes_pfl.formula import Schema, formula_source

                src, _ = formula_source(args.data, args.formula)
                schema = Schema.from_clients(args.formula, src.frame)
                run_config.update(formula=args.formula, schema=json.dumps(schema.to_dict()))
            else:
                src = source(
                    args.data,
                    client_col=args.client_col,
                    target=args.target,
                    features=args.features,
                )
        except (DataError, ValueError) as exc:
            print(f"deploy_local: error: {exc}", file=sys.stderr)
            return 2
        nodes = client_nodes(args.data)
        n_clients = src.frame[src.client_col].nunique()
        if n_clients != len(nodes):
            print(
                f"deploy_local: error: {len(nodes)} files hold {n_clients} clients; a "
                "SuperNode holds one client: give each client its own file",
                file=sys.stderr,
            )
            return 2
        data = os.path.abspath(os.path.expanduser(args.data))
        run_config["data"] = data
        if not args.formula:
            run_config.update(target=args.target, features=args.features)
            run_config.update({"client-col": args.client_col} if args.client_col else {})
    else:
        nodes = write_hospital_csvs(work / "hospitals")
    if args.model:
        run_config["model"] = args.model
    run_config["num-clients"] = len(nodes)
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
