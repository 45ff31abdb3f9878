"""Per-round latency and bytes of bayes-pfl on Flower, against the in-process simulation.

For synthetic hierarchical-logistic federations of 10 and 100 clients, federated EP
over the global parameters (``sites = "global"``, Laplace tilted) runs ``--rounds`` rounds
(no early stop) three ways (``--runtimes`` picks some):

* ``in-process``: :func:`bayes_pfl.simulation.run_rounds` (one jitted, vmapped client step);
* ``flower-simulation``: ``flwr run`` on a simulation SuperLink (Ray actors, 1 CPU each);
* ``flower-deployment``: a SuperLink and one SuperNode per client as separate processes on
  127.0.0.1. Flower starts a fresh ClientApp process for every message. Up to 20 clients
  every node works at once; beyond, the server keeps at most 4 nodes working
  (``--max-in-flight``): 100 SuperNodes with their SuperExecs hold about 18 GB here, each
  ClientApp process with JAX about 0.45 GB more. A deployment that would not leave
  ``--memory-margin-gb`` of the memory available now is not started (other users share
  the machine). The SuperExecs poll for tasks at LocalFederation's default
  (``--superexec-poll-s``), the ServerApp pulls replies every ``--poll-interval-s``.

Per round it reports the median steady-state wall time (rounds 2..R) and the first round
(compilation, Ray start-up, the first trace and export of the client step), the bytes of
the broadcast and message pytrees per client, the serialized record bytes of the whole
round, the federation's start-up time (SuperNodes start 10 at a time, each batch registered
before the next) and the machine's peak memory in use during the run
(``MemTotal - MemAvailable``, sampled every 0.5 s). For a deployment it also breaks the
steady rounds down: per message, the round trip into the ClientApp process's start-up,
its handler and the waiting (the history keys of :func:`bayes_pfl.flower.server.run_server`),
and per round the CPU seconds of the ClientApp processes, SuperNodes, SuperExecs,
SuperLink and ServerApp against the machine's total (other users' processes included),
sampled every second between the ServerApp's checkpoints. Both Flower runs share a
persistent JAX compilation cache, its exported client steps
(:mod:`bayes_pfl.flower.steps`) and the nodes' parsed rows. Writes
``benchmarks/results/flower_latency.{json,md}`` (``--merge`` keeps the rows of client
counts not run now).

    nice python benchmarks/flower_latency.py [--rounds 3] [--clients 10 100]
        [--runtimes in-process flower-simulation flower-deployment] [--merge]

Run it with the checkout first on ``PYTHONPATH`` when bayes-pfl is installed from another
one: the Flower processes import bayes-pfl themselves.
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
        # the steady rounds' breakdown: medians over rounds of each round's median message
        for key in BREAKDOWN:
            values = [h[key] for h in steady if h.get(key) is not None and h[key] == h[key]]
            out[key] = statistics.median(values) if values else None
    return out


BREAKDOWN = (
    "client_round_trip_s",
    "client_round_trip_s_max",
    "client_process_start_s",
    "client_process_start_cpu_s",
    "client_handler_s",
    "client_wait_s",
    "client_process_cpu_s",
    "push_s",
)


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


SUPEREXEC_POLL_ENV = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL"  # Flower's default: 1 s
ROLES = {  # a process's name (/proc/PID/stat, 15 characters) -> its role
    "flwr-clientapp": "clientapps",
    "flower-supernod": "supernodes",
    "flower-superexe": "superexecs",
    "flower-superlin": "superlink",
    "flwr-serverapp": "serverapp",
}
TICK = os.sysconf("SC_CLK_TCK")


def _processes() -> dict[int, tuple[int, str, float]]:
    """``{pid: (parent pid, name, CPU seconds)}`` of every process (one pass over /proc;
    zombies keep their CPU time until reaped)."""
    out = {}
    for path in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = path.read_text()
        except OSError:
            continue
        name = text[text.index("(") + 1 : text.rindex(")")]
        fields = text[text.rindex(")") + 2 :].split()
        out[int(path.parent.name)] = (
            int(fields[1]),
            name,
            (int(fields[11]) + int(fields[12])) / TICK,
        )
    return out


def _machine_busy_s() -> float:
    """CPU seconds every process of the machine has used since boot (/proc/stat)."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(
            int, f.readline().split()[1:9]
        )
    return (user + nice + system + irq + softirq + steal) / TICK


class CpuByRound:
    """CPU seconds per round of the federation's processes, by role, and of the machine.

    Samples every second the CPU of every process below the SuperLink and the SuperNodes
    (ClientApp processes included: their SuperExec does not reap them) and the machine's
    total (other users' processes too), and snapshots both whenever the ServerApp's
    checkpoint gains a round.
    """

    def __init__(self, fed, checkpoint: Path):
        self.fed, self.checkpoint = fed, checkpoint
        self.cpu: dict[int, tuple[str, float]] = {}
        self.snapshots: list[dict] = []

    def __enter__(self):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _rounds(self) -> int:
        try:
            return len(json.loads(self.checkpoint.read_text())["history"])
        except (OSError, ValueError, KeyError):
            return len(self.snapshots) and self.snapshots[-1]["round"]

    def _sample(self):
        while not self._stop.wait(1.0):
            procs = _processes()
            children: dict[int, list[int]] = {}
            for pid, (ppid, _, _) in procs.items():
                children.setdefault(ppid, []).append(pid)
            todo = [p.pid for p in (self.fed.superlink, *self.fed.supernodes) if p is not None]
            while todo:
                pid = todo.pop()
                if pid in procs:
                    self.cpu[pid] = procs[pid][1:]
                todo.extend(children.get(pid, ()))
            done = self._rounds()
            if done and (not self.snapshots or done > self.snapshots[-1]["round"]):
                by_role = dict.fromkeys(ROLES.values(), 0.0)
                for name, cpu in self.cpu.values():
                    role = ROLES.get(name, "other")
                    by_role[role] = by_role.get(role, 0.0) + cpu
                self.snapshots.append(
                    {
                        "round": done,
                        "t": time.perf_counter(),
                        "machine": _machine_busy_s(),
                        **by_role,
                    }
                )

    def per_round(self) -> list[dict]:
        """CPU seconds between consecutive checkpoints (rounds 2.. of the run)."""
        out = []
        for a, b in zip(self.snapshots, self.snapshots[1:], strict=False):
            if b["round"] != a["round"] + 1:
                continue
            d = {k: b[k] - a[k] for k in b if k not in ("round", "t")}
            d["federation"] = sum(v for k, v in d.items() if k != "machine")
            out.append({"round": b["round"], "interval_s": b["t"] - a["t"], **d})
        return out


def flower(
    csv: Path,
    n_clients: int,
    run_config: dict,
    home: Path,
    *,
    deployment: bool,
    superexec_poll_s: float | None = None,
    timeout_s: float = 5400,
) -> dict:
    from bayes_pfl.flower.launch import LocalFederation

    nodes = [{"partition-id": i} for i in range(n_clients)] if deployment else []
    out = Path(run_config["out"])
    _first_to_go()
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    batch = 10 if deployment else 0  # 100 SuperNodes starting at once time out registering
    fed = LocalFederation(
        home,
        nodes,
        simulation=not deployment,
        start_batch=batch,
        # through the environment: LocalFederation sets its default, Flower's is 1 s
        env={} if superexec_poll_s is None else {SUPEREXEC_POLL_ENV: f"{superexec_poll_s:g}"},
    )
    with MemoryPeak() as mem, fed:
        fed.wait_registered(timeout_s=1800)
        t_up = time.perf_counter() - t0
        cfg = {**run_config, "num-clients": n_clients}
        with CpuByRound(fed, out / "checkpoint-0.json") as cpu:
            run_id = fed.run(APP_DIR, cfg, num_supernodes=n_clients, timeout_s=600)
            status = _wait(fed, run_id, out / "run.json", timeout_s)
        if not (out / "run.json").is_file():
            raise RuntimeError(f"{status}: no result\n{fed.logs(run_id)[-3000:]}")
    run = json.loads((out / "run.json").read_text())
    detail = ("round", "wall_time_s", "reply_wait_s", *BREAKDOWN)
    cpu_rounds = cpu.per_round()
    cpu_steady = {
        f"cpu_{k}_s": statistics.median(r[k] for r in cpu_rounds)
        for k in (cpu_rounds[0] if cpu_rounds else {})
        if k not in ("round", "interval_s")
    }
    return {
        **_summary(run["history"]),
        **cpu_steady,
        "per_round": [{k: h.get(k) for k in detail} for h in run["history"]],
        "cpu_per_round": cpu_rounds,
        "start_federation_s": t_up,
        "run_wall_s": time.perf_counter() - t0 - t_up,
        "status": status,
        "max_in_flight": run_config.get("max-in-flight", 0),
        "poll_interval_s": run_config.get("poll-interval-s"),
        "superexec_poll_s": float(fed.env.get(SUPEREXEC_POLL_ENV, 1.0)) if deployment else None,
        "load_average_before": load_before,
        "mem_used_before_mb": mem.before,
        "mem_used_peak_mb": mem.peak,
    }


def _first_to_go() -> None:
    """Should memory run out, let the kernel stop this benchmark's processes (the Flower
    processes inherit it) before other users' (``oom_score_adj`` 1000; raising it needs
    no privilege)."""
    try:
        Path("/proc/self/oom_score_adj").write_text("1000")
    except OSError:
        pass


def _wait(fed, run_id: int, result: Path, timeout_s: float) -> str:
    """Wait for the ServerApp's result file, then for Flower's final status. ``flwr ls``
    starts a Python process (about 1.5 CPU-s): ask it once a minute while the run goes on,
    not to load the cores the run is measured on."""
    deadline = time.monotonic() + timeout_s
    asked = time.monotonic()
    while time.monotonic() < deadline:
        if result.is_file():
            return fed.wait(run_id, timeout_s=300, poll_s=1.0)
        if time.monotonic() - asked > 60:
            asked = time.monotonic()
            status = fed.status(run_id)
            if status.startswith("finished"):
                return status
        time.sleep(1.0)
    raise TimeoutError(f"run {run_id} not finished after {timeout_s:.0f} s")


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
    errors: list[str] = []
    for k, by_runtime in results["runs"].items():
        for runtime, r in by_runtime.items():
            if "error" in r:
                lines.append(f"| {k} | {runtime} | see below |" + " |" * 10)
                errors.append(f"* {k} clients, {runtime}: {r['error'][:300]}")
                continue

            def f(key, fmt="{:.2f}", r=r):
                return _cell(r, key, fmt)

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
            f"(No deployment for {', '.join(map(str, skipped))} clients in this run.)",
        ]
    if errors:
        lines += ["", *errors]
    earlier = [
        f"{k} clients {runtime}: {r['date']}, {r.get('rounds', '?')} rounds"
        for k, by_runtime in results["runs"].items()
        for runtime, r in by_runtime.items()
        if r.get("date", results["machine"]["date"]) != results["machine"]["date"]
    ]
    if earlier:
        lines += ["", "Rows from earlier runs of this script: " + "; ".join(earlier) + "."]
    lines += _breakdown_table(results)
    lines += _cpu_table(results)
    lines += ["", results["notes"], ""]
    return "\n".join(lines)


def _cell(r: dict, key: str, fmt: str = "{:.2f}") -> str:
    """A table cell: ``r[key]`` formatted, empty where the run did not measure it."""
    v = r.get(key)
    return "" if v is None else fmt.format(v)


def _deployment_runs(results: dict, measured: str):
    """``(clients, record)`` of each deployment run without an error that has ``measured``."""
    for k, by_runtime in results["runs"].items():
        r = by_runtime.get("flower-deployment")
        if r is not None and "error" not in r and r.get(measured) is not None:
            yield k, r


def _cpu_table(results: dict) -> list[str]:
    """Where a deployment round's CPU went, by process, and the machine's total."""
    rows = []
    for k, r in _deployment_runs(results, "cpu_machine_s"):
        cpus = results["machine"]["cpu_count"]
        interval = statistics.median(x["interval_s"] for x in r["cpu_per_round"])
        cells = [
            r.get(f"cpu_{role}_s")
            for role in ("clientapps", "supernodes", "superexecs", "superlink", "serverapp")
        ]
        outside = r["cpu_machine_s"] - r["cpu_federation_s"]
        rows.append(
            f"| {k} | {interval:.2f} | "
            + " | ".join("" if c is None else f"{c:.1f}" for c in cells)
            + f" | {r['cpu_federation_s']:.1f} | {outside:.1f} | {r['cpu_machine_s']:.1f} "
            f"| {cpus * interval:.1f} |"
        )
    if not rows:
        return []
    return [
        "",
        "CPU seconds of a steady deployment round (median over rounds 2..R, between the "
        "ServerApp's checkpoints), by process: the ClientApp processes of the round, all "
        "SuperNodes, all SuperExecs, the SuperLink, the ServerApp; outside: every other "
        "process of the machine (the benchmark itself, other users). Cores x round: the CPU "
        "seconds the machine had.",
        "",
        "| clients | round (s) | ClientApps | SuperNodes | SuperExecs | SuperLink | ServerApp "
        "| federation | outside | machine | cores x round |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
    ]


def _breakdown_table(results: dict) -> list[str]:
    """Deployment rounds broken down: one message's round trip = process start + handler + waiting."""
    rows = []
    for k, r in _deployment_runs(results, "client_round_trip_s"):

        def f(key, fmt="{:.2f}", r=r):
            return _cell(r, key, fmt)

        mif = r.get("max_in_flight")
        rows.append(
            f"| {k} | {'' if mif is None else (mif or 'all')} | {f('superexec_poll_s', '{:g}')} "
            f"| {f('steady_round_s')} | {f('client_round_trip_s')} "
            f"| {f('client_round_trip_s_max')} | {f('client_process_start_s')} "
            f"| {f('client_process_start_cpu_s')} | {f('client_handler_s')} "
            f"| {f('client_wait_s')} | {f('client_process_cpu_s')} | {f('push_s')} "
            f"| {f('load_average_before', '{:.1f}')} / {f('load_average_after', '{:.1f}')} |"
        )
    if not rows:
        return []
    return [
        "",
        "Deployment rounds broken down (steady rounds; per message, the median over a "
        "round's messages, then over rounds). A message's round trip (the server's push "
        "to its pull of the reply) = process start (the ClientApp process's age when its "
        "handler starts: interpreter, Flower's ClientApp runtime, the app, the message) + "
        "handler (rows, the exported client step, encoding) + waiting (the SuperNode's "
        "3 s idle poll, the SuperExec's task poll, the SuperNode's 0.5 s reply poll, "
        "transport, the server's pull interval). CPU columns: CPU seconds of one ClientApp "
        "process, until its handler starts and until its reply is ready. Server push: "
        "the seconds the ServerApp spent in `grid.push_messages` for the round's messages "
        "(counted in the round trips: a node may take its message before the batch is "
        "pushed).",
        "",
        "| clients | max in flight | SuperExec poll (s) | steady round (s) "
        "| round trip (s) | longest round trip (s) | process start (s) | of it CPU (s) "
        "| handler (s) | waiting (s) | CPU / message (s) | server push (s) "
        "| load avg before / after |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        *rows,
    ]


NOTES = """\
What a Flower round costs, and why:

* Simulation: each ClientApp call runs in a Ray actor that keeps its Python process, so
  imports and compiled functions persist; a steady round costs the actor dispatch of K
  messages on the available cores plus the server's decode/update/encode.
* Deployment: Flower (1.41, 1.42) starts a new `flwr-clientapp` process for every message
  (each SuperNode's SuperExec launches it). Measured CPU of one such process here, about
  3 CPU-s in all: Flower's ClientApp runtime imports (FastAPI, SQLAlchemy, Alembic) about
  1.1-1.3 s, JAX about 0.6 s, jaxlib's LAPACK kernels load `scipy.linalg` on the step's
  first call about 0.3 s, the exported client step (lowering it, loading its executable
  from the persistent compilation cache) about 0.45 s, interpreter exit about 0.5 s
  (Flower about 0.35 s, JAX about 0.2 s), bayes-pfl's own code under 0.1 s. Since
  2026-12-04 the process no longer loads numpyro and SciPy to validate the run config,
  nor pandas to parse the node's rows (kept in `<jax-cache-dir>/bayes-pfl-rows`): about
  0.8 CPU-s less per message. The SuperLink and SuperNodes spend about 0.6 CPU-s more per
  message on its objects (a train message is 17 objects and its reply 15, each pushed and
  pulled with its own request, on both hops).
* Polling: the ServerApp pushes a round's messages with `grid.push_messages` and pulls
  replies with `grid.pull_messages` every `--poll-interval-s` (Flower's own
  `send_and_receive` sleeps 3 s between pulls). An idle SuperNode pulls the SuperLink every
  3 s (hard-coded in flwr), its SuperExec polls it for tasks every
  `FLWR_SUPEREXEC_TASK_POLL_INTERVAL` (LocalFederation: 0.05 s per node, 0.1-5 s;
  Flower's default 1 s); a finished reply waits up to 0.5 s for the SuperNode to send it.
  Each SuperExec poll costs about 4.6 ms of CPU: 10 nodes polling every 0.1 s would take
  half a core of the two while idle.
* On one 2-core machine a deployment round is CPU-bound: the CPU table shows the machine
  busy for nearly all of `cores x round`, and most of a message's "process start" is
  waiting for a core (its CPU column is what the start-up itself costs). The polling
  delays overlap other processes' work. A round cannot be shorter than its federation's
  CPU seconds over 2 cores (about 37 CPU-s for 10 clients: about 18-19 s), and other
  users' processes ("outside") add theirs. A 10-client round of 13 s or less would need
  the federation under 26 CPU-s: fewer than the ten ClientApp processes alone cost
  (about 3 CPU-s each, nearly all of it Flower's ClientApp runtime and JAX starting,
  loading the step and exiting; bayes-pfl's own code is under 0.1 CPU-s).
* 100 clients: besides about 2.9 CPU-s per ClientApp process, the 100 idle SuperNodes
  pulling the SuperLink every 3 s cost about 0.35 cores all the time (SuperNodes and
  SuperLink: about 180 CPU-s of a 350 s round, against 6 CPU-s of a 21 s round with 10);
  the SuperExecs poll every 5 s (LocalFederation's default for 100 nodes: about 0.05
  core in all), so a message waits about 2.5 s for its process to start, overlapped by
  the other 3 messages in flight. Other users' tests took about 29% of the machine during
  the 2026-12-04 100-client run ("outside"): alone, its round would take about 250 s
  (about 490 federation CPU-s over 2 cores); the 2026-11-26 run took 430 s. 100
  SuperNodes with their SuperExecs and 4 ClientApp processes need about 21 GB of the 24:
  the benchmark starts a deployment only if its estimate leaves `--memory-margin-gb`
  (1 GB) available, and raises its own processes' OOM score so that the kernel would stop
  them, not other users' processes, if memory ran out.
* Load averages count the federation's own processes (ten ClientApps at once push it
  above 10); other users' share of a round is the CPU table's "outside".
* Before and after (2026-12-04, 10 clients, 4 rounds, measured back to back on this shared
  machine): the previous code (numpyro/SciPy and pandas in every ClientApp process) with
  the previous settings (max-in-flight 4, SuperExec poll 1 s, pull every 50 ms): steady
  round 39.3 s, 50.3 federation CPU-s per round (27.5 CPU-s of other users' processes);
  this code and settings: 22.0 s, 37.1 CPU-s (7.6 outside). The earlier result file
  (2026-11-26, quieter machine, flwr 1.41, the previous code) had 26.1 s for 10 clients
  and 430 s for 100.
* Bytes: `bytes_*_per_client` are the pytree sizes (as in the in-process history);
  `wire_bytes_*` the serialized `.npy` payloads of the round's ArrayRecords (headers included).
"""


NODE_GB = 0.18  # a SuperNode and its SuperExec, idle (proportional set size, flwr 1.42)
CLIENTAPP_GB = 0.45  # a ClientApp process with JAX


def _memory_short_gb(n_clients: int, in_flight: int, margin_gb: float) -> str:
    """Why a deployment of ``n_clients`` would not fit in the memory available now ("" if it
    fits): its SuperNodes, ClientApp processes and ServerApp, plus ``margin_gb``."""
    need = n_clients * NODE_GB + (in_flight or n_clients) * CLIENTAPP_GB + 1.0
    available = _mem_available_gb()
    if need + margin_gb <= available:
        return ""
    return (
        f"needs about {need:.1f} GB ({n_clients} SuperNodes with SuperExecs at {NODE_GB} GB, "
        f"{in_flight or n_clients} ClientApps at {CLIENTAPP_GB} GB, 1 GB ServerApp/SuperLink) "
        f"+ {margin_gb:g} GB margin; {available:.1f} GB available"
    )


def _mem_available_gb() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024**2
    return float("inf")


def _default_in_flight(n_clients: int) -> int:
    """All nodes at once up to 20 (10 ClientApp processes with JAX take about 4.5 GB
    here); 4 beyond: 100 SuperNodes with their SuperExecs already hold about 19 GB."""
    return 0 if n_clients <= 20 else 4


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Flower vs in-process per-round latency")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--clients", type=int, nargs="+", default=[10, 100])
    p.add_argument(
        "--runtimes",
        nargs="+",
        choices=RUNTIMES,
        default=list(RUNTIMES),
        help="which runtimes to measure (default: all three)",
    )
    p.add_argument("--deployment-max-clients", type=int, default=100)
    p.add_argument(
        "--max-in-flight",
        type=int,
        default=None,
        help="nodes working at once in a deployment (0: all; default: all up to 20 "
        "clients, else 4)",
    )
    p.add_argument(
        "--superexec-poll-s",
        type=float,
        default=None,
        help="SuperExec task poll interval (default: LocalFederation's, 0.05 s per node "
        "within 0.1-5 s)",
    )
    p.add_argument(
        "--poll-interval-s",
        type=float,
        default=0.1,
        help="the ServerApp's reply pull interval (run config poll-interval-s)",
    )
    p.add_argument(
        "--memory-margin-gb",
        type=float,
        default=1.0,
        help="start a deployment only if this much memory stays available beyond its estimate",
    )
    p.add_argument("--skip-deployment", action="store_true")
    p.add_argument(
        "--render",
        action="store_true",
        help="only rewrite the markdown (and the notes in the JSON) from the JSON's results",
    )
    p.add_argument(
        "--merge",
        action="store_true",
        help="keep the existing results of client counts not measured now",
    )
    args = p.parse_args(argv)
    if args.render:
        path = _common.RESULTS / "flower_latency.json"
        results = json.loads(path.read_text())
        results["notes"] = NOTES
        path.write_text(json.dumps(_no_nan(results), indent=2))
        (_common.RESULTS / "flower_latency.md").write_text(_markdown(results))
        return 0
    results = {
        "machine": {**_common.machine(), "flwr": _flwr_version()},
        "rounds": args.rounds,
        "runs": {},
        "notes": NOTES,
    }
    old = _common.RESULTS / "flower_latency.json"
    if args.merge and old.is_file():  # keep the rows not measured now
        previous = json.loads(old.read_text())
        for k, by_runtime in previous.get("runs", {}).items():
            for runtime, r in by_runtime.items():
                if not (int(k) in args.clients and runtime in args.runtimes):
                    r.setdefault("date", previous["machine"]["date"])
                    results["runs"].setdefault(k, {})[runtime] = r
        results["runs"] = dict(sorted(results["runs"].items(), key=lambda kv: int(kv[0])))
    with tempfile.TemporaryDirectory(prefix="flower-latency-") as tmp:
        tmp = Path(tmp)
        cache = tmp / "jax-cache"
        for k in args.clients:
            csv = _federation_csv(tmp, k)
            runs = results["runs"].setdefault(str(k), {})
            if "in-process" in args.runtimes:
                cfg = _run_config(csv, args.rounds, tmp / f"out-inproc-{k}", cache)
                runs["in-process"] = in_process(csv, args.rounds, cfg)
                runs["in-process"]["load_average_after"] = os.getloadavg()[0]
                runs["in-process"]["date"] = results["machine"]["date"]
                print(k, "in-process", runs["in-process"], flush=True)
            todo = []
            if "flower-simulation" in args.runtimes:
                todo.append(("flower-simulation", False))
            if (
                "flower-deployment" in args.runtimes
                and not args.skip_deployment
                and k <= args.deployment_max_clients
            ):
                todo.append(("flower-deployment", True))
            for name, deployment in todo:
                cfg = _run_config(csv, args.rounds, tmp / f"out-{name}-{k}", cache)
                cfg["poll-interval-s"] = args.poll_interval_s
                if deployment:
                    mif = args.max_in_flight
                    cfg["max-in-flight"] = _default_in_flight(k) if mif is None else mif
                    short = _memory_short_gb(k, cfg["max-in-flight"], args.memory_margin_gb)
                    if short:  # other users' processes share this machine: do not OOM them
                        runs[name] = {
                            "error": f"not started: {short}",
                            "date": results["machine"]["date"],
                        }
                        print(k, name, runs[name], flush=True)
                        continue
                try:
                    runs[name] = flower(
                        csv,
                        k,
                        cfg,
                        tmp / f"home-{name}-{k}",
                        deployment=deployment,
                        superexec_poll_s=args.superexec_poll_s,
                    )
                except Exception as exc:  # noqa: BLE001 (report, keep going)
                    runs[name] = {"error": repr(exc)}
                runs[name]["load_average_after"] = os.getloadavg()[0]
                runs[name]["date"] = results["machine"]["date"]
                print(k, name, runs[name], flush=True)
    _common.RESULTS.mkdir(exist_ok=True)
    (_common.RESULTS / "flower_latency.json").write_text(
        json.dumps(_no_nan(_common.jsonable(results)), indent=2)
    )
    (_common.RESULTS / "flower_latency.md").write_text(_markdown(results))
    print(_markdown(results))
    return 0


RUNTIMES = ("in-process", "flower-simulation", "flower-deployment")


def _no_nan(obj):
    """NaN (a timing that does not apply, e.g. process start-up in the simulation runtime)
    as JSON null."""
    if isinstance(obj, dict):
        return {k: _no_nan(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_no_nan(v) for v in obj]
    if isinstance(obj, float) and obj != obj:
        return None
    return obj


def _flwr_version() -> str:
    from importlib import metadata

    return metadata.version("flwr")


if __name__ == "__main__":
    raise SystemExit(main())
