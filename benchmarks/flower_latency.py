"""Per-round latency and bytes of bayes-pfl on Flower, against the in-process simulation.

For synthetic hierarchical-logistic federations of 10 and 100 clients, federated EP
over the global parameters (``sites = "global"``, Laplace tilted) runs ``--rounds`` rounds (no early stop) three ways:

* ``in-process``: :func:`bayes_pfl.simulation.run_rounds` (one jitted, vmapped client step);
* ``flower-simulation``: ``flwr run`` on a simulation SuperLink (Ray actors, 1 CPU each);
* ``flower-deployment``: a SuperLink and one SuperNode per client as separate processes on
  127.0.0.1. flwr 1.41 starts a fresh ClientApp process for every message, so the server
  keeps at most ``--max-in-flight`` (default 4) nodes working at once: 100 SuperNodes with
  their SuperExecs hold about 19 GB here, and each ClientApp process with JAX about 0.4 GB
  more (4 of them already keep the 2 cores busy).

Per round it reports the median steady-state wall time (rounds 2..R) and the first round
(compilation, Ray start-up, the first trace and export of the client step), the bytes of
the broadcast and message pytrees per client, the serialized record bytes of the whole
round, the federation's start-up time (SuperNodes start 10 at a time, each batch registered
before the next) and the machine's peak memory in use during the run
(``MemTotal - MemAvailable``, sampled every 0.5 s). Both Flower runs share a persistent JAX
compilation cache and its exported client steps (:mod:`bayes_pfl.flower.steps`) and poll
for replies every 50 ms. Writes ``benchmarks/results/flower_latency.{json,md}``.

    nice python benchmarks/flower_latency.py [--rounds 3] [--clients 10 100] [--skip-deployment]
"""

from __future__ import annotations

import _common  # noqa: I001  (configures JAX before anything imports it)

_common.configure_jax(host_devices=1)

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

APP_DIR = Path(__file__).resolve().parents[1] / "examples" / "flower_app"
N_FEATURES = 3


def _federation_csv(folder: Path, n_clients: int) -> Path:
    from bayes_pfl.synthetic import make_federation

    fed = make_federation(
        family="bernoulli", n_clients=n_clients, n_features=N_FEATURES, median_size=30, seed=0
    )
    path = folder / f"synthetic-{n_clients}.csv"
    fed.data.to_csv(path, index=False)
    return path


def _run_config(csv: Path, rounds: int, out: Path, cache: Path) -> dict:
    return {
        "data": str(csv),
        "client-col": "client",
        "target": "y",
        "features": ",".join(f"x{i}" for i in range(N_FEATURES)),
        "model": "logistic",
        "standardize": False,
        "rounds": rounds,
        "sites": "global",  # the format these latencies were measured in
        "tol": 0.0,  # no early stop
        "global-method": "laplace",
        "num-chains": 1,
        "num-samples": 100,
        "round-timeout-s": 1200.0,
        "out": str(out),
        "jax-cache-dir": str(cache),
    }


def _summary(history: list[dict]) -> dict:
    walls = [h["wall_time_s"] for h in history]
    out = {
        "rounds": len(history),
        "first_round_s": walls[0],
        "steady_round_s": statistics.median(walls[1:]) if len(walls) > 1 else None,
        "bytes_up_per_client": history[-1]["bytes_up_per_client"],
        "bytes_down_per_client": history[-1]["bytes_down_per_client"],
    }
    if "wire_bytes_up" in history[-1]:
        out["wire_bytes_up_per_round"] = history[-1]["wire_bytes_up"]
        out["wire_bytes_down_per_round"] = history[-1]["wire_bytes_down"]
        steady = history[1:] or history
        out["client_update_s"] = statistics.median(h["client_update_s_max"] for h in steady)
    return out


def in_process(csv: Path, rounds: int, run_config: dict) -> dict:
    from bayes_pfl.flower.config import FlowerSettings, _federated_data, build_phases
    from bayes_pfl.simulation import run_rounds

    settings = FlowerSettings.from_run_config(run_config)
    data = _federated_data(settings)
    (phase,) = build_phases(settings)
    res = run_rounds(
        phase.algorithm,
        data.train,
        rounds=rounds,
        labels=data.clients,
        stop_when_converged=False,
        progress=False,
    )
    return _summary(res.history)


def _mem_used_mb() -> float:
    info = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, value = line.split(":")
            info[key] = int(value.split()[0])
    return (info["MemTotal"] - info["MemAvailable"]) / 1024


class MemoryPeak:
    """Peak of the machine's memory in use while the block runs (sampled every 0.5 s)."""

    def __enter__(self):
        self.before = self.peak = _mem_used_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.5):
            self.peak = max(self.peak, _mem_used_mb())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def flower(
    csv: Path,
    n_clients: int,
    run_config: dict,
    home: Path,
    *,
    deployment: bool,
    timeout_s: float = 5400,
) -> dict:
    from bayes_pfl.flower.launch import LocalFederation

    nodes = [{"partition-id": i} for i in range(n_clients)] if deployment else []
    out = Path(run_config["out"])
    t0 = time.perf_counter()
    batch = 10 if deployment else 0  # 100 SuperNodes starting at once time out registering
    fed = LocalFederation(home, nodes, simulation=not deployment, start_batch=batch)
    with MemoryPeak() as mem, fed:
        fed.wait_registered(timeout_s=1800)
        t_up = time.perf_counter() - t0
        cfg = {**run_config, "num-clients": n_clients}
        run_id = fed.run(APP_DIR, cfg, num_supernodes=n_clients, timeout_s=600)
        # `flwr ls` starts a process per call: poll rarely, not to load the 2 cores
        status = fed.wait(run_id, timeout_s=timeout_s, poll_s=15.0)
        if not (out / "run.json").is_file():
            raise RuntimeError(f"{status}: no result\n{fed.logs(run_id)[-3000:]}")
    run = json.loads((out / "run.json").read_text())
    return {
        **_summary(run["history"]),
        "start_federation_s": t_up,
        "run_wall_s": time.perf_counter() - t0 - t_up,
        "status": status,
        "max_in_flight": run_config.get("max-in-flight", 0),
        "mem_used_before_mb": mem.before,
        "mem_used_peak_mb": mem.peak,
    }


def _markdown(results: dict) -> str:
    lines = [
        "# bayes-pfl on Flower: per-round latency",
        "",
        f"{results['machine']['date']}, {results['machine']['cpu_count']} CPU cores "
        f"(shared), EP (Laplace tilted) on a synthetic hierarchical logistic federation "
        f"({N_FEATURES} features), {results['rounds']} rounds. Steady = median of rounds 2..R.",
        "",
        "| clients | runtime | first round (s) | steady round (s) | client update (s) "
        "| bytes up / client | bytes down / client | wire bytes up / round "
        "| wire bytes down / round | start-up (s) | max in flight | peak memory (GB) "
        "| load avg after |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for k, by_runtime in results["runs"].items():
        for runtime, r in by_runtime.items():
            if "error" in r:
                lines.append(f"| {k} | {runtime} | error: {r['error'][:60]} |" + " |" * 10)
                continue

            def f(key, fmt="{:.2f}", r=r):
                v = r.get(key)
                return "" if v is None else fmt.format(v)

            peak = r.get("mem_used_peak_mb")
            mif = r.get("max_in_flight")
            lines.append(
                f"| {k} | {runtime} | {f('first_round_s')} | {f('steady_round_s')} "
                f"| {f('client_update_s', '{:.3f}')} | {r['bytes_up_per_client']} "
                f"| {r['bytes_down_per_client']} | {f('wire_bytes_up_per_round', '{:d}')} "
                f"| {f('wire_bytes_down_per_round', '{:d}')} | {f('start_federation_s', '{:.1f}')} "
                f"| {'' if mif is None else (mif or 'all')} "
                f"| {'' if peak is None else f'{peak / 1024:.1f}'} "
                f"| {f('load_average_after', '{:.1f}')} |"
            )
    skipped = [
        k for k, by_runtime in results["runs"].items() if "flower-deployment" not in by_runtime
    ]
    if skipped:
        lines += [
            "",
            f"(Deployment not run for {', '.join(map(str, skipped))} clients: above "
            "`--deployment-max-clients`.)",
        ]
    lines += ["", results["notes"], ""]
    return "\n".join(lines)


NOTES = """\
What remains of a Flower round, and why:

* Simulation: each ClientApp call runs in a Ray actor that keeps its Python process, so
  imports and compiled functions persist; a steady round costs the actor dispatch of K
  messages on the available cores plus the server's decode/update/encode.
* Deployment: the SuperNode (flwr 1.41) starts a new ClientApp *process* for every message,
  and each SuperNode has its own SuperExec process. A ClientApp process imports flwr's
  ClientApp runtime (about 1.8 s here), JAX and bayes-pfl's Flower modules (about 0.8 s;
  `import bayes_pfl` no longer loads numpyro, ArviZ or pandas), reads its rows, then calls
  the client step that the first process exported (`jax.export`, in the JAX cache folder)
  and whose XLA compile is in the persistent cache (about 0.5 s), instead of building the
  model and tracing the step again (about 8 s: EP's nested Newton solves). Idle SuperNodes
  poll the SuperLink every 3 s and their SuperExec polls for tasks every 1 s; the
  ServerApp pulls replies every 50 ms (Flower's own `send_and_receive` sleeps 3 s between
  pulls). On one 2-core machine the K process start-ups of a round are what remains: a
  round costs about K x (imports + call) CPU-seconds over 2 cores, plus the polling delays.
* Bytes: `bytes_*_per_client` are the pytree sizes (as in the in-process history);
  `wire_bytes_*` the serialized `.npy` payloads of the round's ArrayRecords (headers included).
"""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Flower vs in-process per-round latency")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--clients", type=int, nargs="+", default=[10, 100])
    p.add_argument("--deployment-max-clients", type=int, default=100)
    p.add_argument(
        "--max-in-flight",
        type=int,
        default=4,
        help="nodes working at once in a deployment (0: all)",
    )
    p.add_argument("--skip-deployment", action="store_true")
    args = p.parse_args(argv)
    results = {
        "machine": _common.machine(),
        "rounds": args.rounds,
        "runs": {},
        "notes": NOTES,
    }
    with tempfile.TemporaryDirectory(prefix="flower-latency-") as tmp:
        tmp = Path(tmp)
        cache = tmp / "jax-cache"
        for k in args.clients:
            csv = _federation_csv(tmp, k)
            runs = results["runs"][str(k)] = {}
            cfg = _run_config(csv, args.rounds, tmp / f"out-inproc-{k}", cache)
            runs["in-process"] = in_process(csv, args.rounds, cfg)
            runs["in-process"]["load_average_after"] = os.getloadavg()[0]
            print(k, "in-process", runs["in-process"], flush=True)
            todo = [("flower-simulation", False)]
            if not args.skip_deployment and k <= args.deployment_max_clients:
                todo.append(("flower-deployment", True))
            for name, deployment in todo:
                cfg = _run_config(csv, args.rounds, tmp / f"out-{name}-{k}", cache)
                if deployment:
                    cfg["max-in-flight"] = args.max_in_flight
                try:
                    runs[name] = flower(
                        csv, k, cfg, tmp / f"home-{name}-{k}", deployment=deployment
                    )
                except Exception as exc:  # noqa: BLE001 (report, keep going)
                    runs[name] = {"error": repr(exc)}
                runs[name]["load_average_after"] = os.getloadavg()[0]
                print(k, name, runs[name], flush=True)
    _common.RESULTS.mkdir(exist_ok=True)
    (_common.RESULTS / "flower_latency.json").write_text(
        json.dumps(_common.jsonable(results), indent=2)
    )
    (_common.RESULTS / "flower_latency.md").write_text(_markdown(results))
    print(_markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
