"""Start and stop Flower processes on one machine: a SuperLink, SuperNodes, ``flwr run``.

Used by ``examples/flower_app/deploy_local.py``, the tests and the benchmarks. Every
process is started in its own session and stopped by its process-group id (SIGTERM,
then SIGKILL after a grace period), so its children (SuperExec, ServerApp and
ClientApp processes, Ray) go with it. Every process gets
``FLWR_TELEMETRY_ENABLED=0``, ``FLWR_DISABLE_UPDATE_CHECK=1`` and a private
``FLWR_HOME``, and listens on 127.0.0.1 only.

Examples
--------
>>> with LocalFederation(home=tmp, n_nodes=4, node_configs=[...]) as fed:  # doctest: +SKIP
...     run_id = fed.run(app_dir, run_config={"rounds": 5, "out": str(out)})
...     fed.wait(run_id)
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "LocalFederation",
    "default_superexec_poll_s",
    "flower_env",
    "free_port",
    "stop_process",
]

FINISHED = ("finished",)
SUPEREXEC_POLL_ENV = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL"  # read by flower-superexec (flwr >= 1.41)


# what a SuperNode that failed to start for a passing reason writes to its log
_TRANSIENT_START_ERRORS = (
    b"address already in use",
    b"Public key already in use",
    b"could not establish a connection to the SuperLink",
)


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(exclude: Collection[int] = ()) -> int:
    """A TCP port free on 127.0.0.1 right now, below the kernel's ephemeral range.

    A port from the ephemeral range (what binding port 0 returns) may be handed to an
    outgoing connection before the server that was meant to bind it starts: with a
    hundred SuperNodes connecting while others start, that happened. Ports below the
    range are not given out that way. ``exclude``: ports already promised to others.
    """
    low = max(_ephemeral_low(), 1025)
    first = 10000 if low > 10000 else 1024
    start = random.randrange(first, low)
    for port in (*range(start, low), *range(first, start)):
        if port in exclude:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # no port below the range: let the kernel pick
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def flower_env(home: str | Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for Flower processes: no telemetry, no update check, private FLWR_HOME."""
    env = dict(os.environ)
    env.update(
        {
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "FLWR_HOME": str(Path(home).resolve()),
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
            "RAY_USAGE_STATS_ENABLED": "0",
            "JAX_PLATFORMS": env.get("JAX_PLATFORMS", "cpu"),
            "JAX_ENABLE_X64": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.pop("XLA_FLAGS", None)  # one CPU device per app process
    bin_dir = str(Path(sys.executable).parent)  # flower-superexec etc. next to this Python
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    env.update(extra or {})
    return env


def default_superexec_poll_s(n_nodes: int) -> float:
    """SuperExec task poll interval for ``n_nodes`` SuperNodes on one machine.

    0.05 s per node, between 0.1 s and 5 s: together the SuperExecs poll about 20 times
    a second (about 0.1 core), few enough not to slow the ClientApp processes they wait
    for, while one message waits on average half the interval (0.25 s with 10 nodes).
    On hosts that run one SuperNode each, 0.1 s costs each about 5% of a core.
    """
    return float(min(max(0.05 * n_nodes, 0.1), 5.0))


def _bin(name: str) -> str:
    local = Path(sys.executable).with_name(name)
    return str(local) if local.exists() else (shutil.which(name) or name)


def _descendants(pid: int) -> list[int]:
    """Process ids below ``pid`` (Linux ``/proc``; empty elsewhere)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def stop_process(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """Stop ``proc`` and everything it started.

    SIGTERM to its process group (``start_new_session``) and to its descendants
    (Flower detaches some children into sessions of their own), then SIGKILL to
    whatever is left after ``grace_s``.
    """
    family = _descendants(proc.pid)
    for pid in family:
        try:
            os.kill(pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            pass
    # children may outlive the leader: kill what is left of the group
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    deadline = time.monotonic() + grace_s
    for pid in family:
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        pass


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


class LocalFederation:
    """A SuperLink and SuperNodes on 127.0.0.1, and ``flwr run`` against them.

    Parameters
    ----------
    home : path
        ``FLWR_HOME`` of every process (connection config, installed app bundles) and
        the folder of the process logs.
    node_configs : sequence of dict
        One ``--node-config`` per SuperNode (e.g. ``{"partition-id": 0, "data-path": ...}``);
        empty with ``simulation=True``.
    simulation : bool
        Start the SuperLink with ``--simulation`` (Flower's simulation runtime runs the
        ClientApps; no SuperNodes).
    tls : (certfile, keyfile, ca_certfile), optional
        Serve the SuperLink over TLS (SuperNodes and ``flwr`` verify it with the CA).
    start_batch : int
        Start the SuperNodes this many at a time, each batch registered before the next
        starts (0: all at once). A hundred SuperNodes (and their SuperExecs) starting
        together on 2 cores time out registering; batches of 10 do not.
    superexec_poll_s : float, optional
        How often each SuperNode's SuperExec asks its SuperNode for a task to start
        (``FLWR_SUPEREXEC_TASK_POLL_INTERVAL``, 0.01-60 s; Flower's default is 1 s): a
        message waits on average half of it before its ClientApp process starts. Each
        poll is an HTTP request: an idle SuperNode and its SuperExec use about
        3.5 + 4.6 / poll milli-cores (2 cores here), so many nodes polling often load one
        machine. Default :func:`superexec_poll_s` (about 20 polls a second over all the
        nodes). A value in ``env`` wins.
    """

    def __init__(
        self,
        home: str | Path,
        node_configs: Sequence[Mapping[str, Any]] = (),
        *,
        simulation: bool = False,
        port: int | None = None,
        tls: tuple[str, str, str] | None = None,
        env: Mapping[str, str] | None = None,
        start_batch: int = 0,
        superexec_poll_s: float | None = None,
    ):
        self.home = Path(home).resolve()
        self.start_batch = int(start_batch)
        self.home.mkdir(parents=True, exist_ok=True)
        self.node_configs = [dict(c) for c in node_configs]
        self.simulation = simulation
        self.port = port or free_port()
        self._ports = {self.port}  # promised to our processes (not bound yet, maybe)
        self._runs = 0  # runs started: each writes its run config to its own file
        self._restarts: dict[int, int] = {}
        self.tls = tls
        if superexec_poll_s is None:
            superexec_poll_s = default_superexec_poll_s(len(self.node_configs))
        poll = {SUPEREXEC_POLL_ENV: f"{float(superexec_poll_s):g}"}
        self.env = flower_env(self.home, {**poll, **(env or {})})
        self.superlink: subprocess.Popen | None = None
        self.supernodes: list[subprocess.Popen | None] = []
        self._logs: list[Any] = []

    # -------------------------------------------------------------- processes

    def _spawn(self, args: list[str], log_name: str) -> subprocess.Popen:
        log = open(self.home / log_name, "ab")  # noqa: SIM115 (closed in stop)
        self._logs.append(log)
        return subprocess.Popen(
            args,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=self.home,
        )

    def _security(self) -> list[str]:
        return ["--insecure"] if self.tls is None else []

    def start(self, timeout_s: float = 60.0) -> LocalFederation:
        args = [
            _bin("flower-superlink"),
            *self._security(),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--disable-runtime-dependency-installation",
        ]
        if self.tls is not None:
            cert, key, ca = self.tls
            args += ["--ssl-certfile", cert, "--ssl-keyfile", key, "--ssl-ca-certfile", ca]
        if self.simulation:
            args.append("--simulation")
        self.superlink = self._spawn(args, "superlink.log")
        self._write_connection()
        self._wait_healthy(timeout_s)
        n = len(self.node_configs)
        batch = self.start_batch or max(n, 1)
        for first in range(0, n, batch):
            for i in range(first, min(first + batch, n)):
                self.supernodes.append(self._start_supernode(i))
            if self.start_batch:
                self.wait_registered(timeout_s=600, nodes=range(first, min(first + batch, n)))
        return self

    def _start_supernode(self, i: int) -> subprocess.Popen:
        cfg = " ".join(f"{k}={_toml_value(v)}" for k, v in self.node_configs[i].items())
        args = [
            _bin("flower-supernode"),
            *self._security(),
            "--superlink",
            f"127.0.0.1:{self.port}",
            "--port",
            str(self._port()),
            "--node-config",
            cfg,
        ]
        if self.tls is not None:
            args += ["--root-certificates", self.tls[2]]
        return self._spawn(args, f"supernode-{i}.log")

    def _port(self) -> int:
        port = free_port(exclude=self._ports)
        self._ports.add(port)
        return port

    def _write_connection(self) -> None:
        lines = ["[superlink]", 'default = "local-link"', "", "[superlink.local-link]"]
        lines.append(f'address = "127.0.0.1:{self.port}"')
        if self.tls is None:
            lines.append("insecure = true")
        else:
            lines.append(f'root-certificates = "{self.tls[2]}"')
        (self.home / "config.toml").write_text("\n".join(lines) + "\n")

    def _wait_healthy(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.superlink is not None and self.superlink.poll() is not None:
                raise RuntimeError(f"SuperLink exited; see {self.home / 'superlink.log'}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.2)
        raise TimeoutError(f"SuperLink not listening on 127.0.0.1:{self.port}")

    def wait_registered(
        self, timeout_s: float = 120.0, poll_s: float = 0.5, nodes: Collection[int] | None = None
    ) -> float:
        """Wait until every SuperNode (or those in ``nodes``) has registered with the
        SuperLink (its log names its node id); returns the seconds waited.

        A SuperNode that exits before registering for a transient reason (its port was
        taken; on a loaded machine its registration timed out on its side after the
        SuperLink had recorded its key, so its retry is refused) is restarted, at most 3
        times. Wait before ``run`` so that ``flwr run`` does not compete with start-ups.
        """
        t0 = time.monotonic()
        deadline = t0 + timeout_s
        ids = range(len(self.supernodes)) if nodes is None else nodes
        waiting = {i for i in ids if self.supernodes[i] is not None}
        while waiting:
            for i in list(waiting):
                proc = self.supernodes[i]
                log = self.home / f"supernode-{i}.log"
                text = log.read_bytes() if log.is_file() else b""
                if proc is not None and proc.poll() is not None:
                    transient = any(t in text for t in _TRANSIENT_START_ERRORS)
                    if transient and self._restarts.get(i, 0) < 3:
                        self._restarts[i] = self._restarts.get(i, 0) + 1
                        self.supernodes[i] = self._start_supernode(i)
                        continue
                    raise RuntimeError(f"SuperNode {i} exited; see {log}")
                if b"SuperNode ID:" in text:
                    waiting.discard(i)
            if not waiting:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{len(waiting)} SuperNode(s) not registered after {timeout_s:.0f} s: "
                    f"{sorted(waiting)[:10]}"
                )
            time.sleep(poll_s)
        return time.monotonic() - t0

    def stop_node(self, i: int, *, kill: bool = False) -> None:
        """Stop SuperNode ``i`` (SIGTERM: it deregisters at once; ``kill``: SIGKILL, no goodbye)."""
        proc = self.supernodes[i]
        if proc is None:
            return
        if kill:
            os.killpg(proc.pid, signal.SIGKILL)
        stop_process(proc)
        self.supernodes[i] = None

    def stop(self) -> None:
        for i in range(len(self.supernodes)):
            self.stop_node(i)
        if self.superlink is not None:
            stop_process(self.superlink)
            self.superlink = None
        for log in self._logs:
            log.close()
        self._logs.clear()

    def __enter__(self) -> LocalFederation:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---------------------------------------------------------------- flwr CLI

    def flwr(self, *args: str, timeout_s: float = 120.0) -> subprocess.CompletedProcess:
        return subprocess.run(
            [_bin("flwr"), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            cwd=self.home,
        )

    def run(
        self,
        app_dir: str | Path,
        run_config: Mapping[str, Any] | None = None,
        *,
        num_supernodes: int | None = None,
        num_cpus: int = 1,
        timeout_s: float = 120.0,
    ) -> int:
        """``flwr run APP local-link`` (detached); returns the run id."""
        args = ["run", str(Path(app_dir).resolve()), "local-link", "--format", "json"]
        if run_config:
            # a TOML file, not 'key=value' pairs: flwr splits those with a pattern that
            # cannot hold a quote inside a value (a formula's schema is JSON)
            self._runs += 1
            path = Path(self.home) / f"run-config-{self._runs}.toml"
            path.write_text(
                "".join(f"{json.dumps(str(k))} = {_toml_value(v)}\n" for k, v in run_config.items())
            )
            args += ["--run-config", str(path)]
        if self.simulation:
            n = num_supernodes or len(self.node_configs)
            args += [
                "--federation-config",
                f"num-supernodes={n} client-resources-num-cpus={num_cpus}",
            ]
        out = self.flwr(*args, timeout_s=timeout_s)
        try:
            payload = json.loads(out.stdout[out.stdout.index("{") :])
            return int(payload["run-id"])
        except (ValueError, KeyError, TypeError):
            raise RuntimeError(f"flwr run failed:\n{out.stdout}\n{out.stderr}") from None

    def status(self, run_id: int) -> str:
        out = self.flwr("ls", "local-link", "--run-id", str(run_id), "--format", "json")
        try:
            payload = json.loads(out.stdout[out.stdout.index("{") :])
            return str(payload["runs"][0]["status"])
        except (ValueError, KeyError, IndexError, TypeError):
            return "unknown"

    def wait(self, run_id: int, timeout_s: float = 600.0, poll_s: float = 1.0) -> str:
        """Wait until the run is finished; returns Flower's status (``finished:completed`` ...)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            status = self.status(run_id)
            if status.startswith(FINISHED):
                return status
            if self.superlink is None or self.superlink.poll() is not None:
                raise RuntimeError(f"SuperLink died; see {self.home / 'superlink.log'}")
            time.sleep(poll_s)
        raise TimeoutError(f"run {run_id} not finished after {timeout_s:.0f} s")

    def logs(self, run_id: int) -> str:
        return self.flwr("log", str(run_id), "local-link", "--show").stdout


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    return json.dumps(str(v))
