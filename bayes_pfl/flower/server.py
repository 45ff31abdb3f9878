"""The server side: a generic round loop over Flower's Message API, and the after-rounds step.

:func:`run_server` is :func:`bayes_pfl.simulation.run_rounds` with the client axis
replaced by nodes: every round it sends client ``k`` row ``k`` of
``algorithm.broadcast(server_state)`` and the key the in-process driver gives
client ``k`` (``jax.random.split(jax.random.fold_in(round_key, 1), K)[k]``), waits
for replies until the round's timeout (polling every ``poll_interval_s``, not
Flower's fixed 3 s), decodes each reply against the structure ``client_update``
returns, rejects (and logs by node id) clients that did not answer, answered with
an error, or sent a malformed or non-finite message
(:func:`bayes_pfl.simulation.screen`, the driver's server boundary), and applies the *same*
``server_update`` with ``accept`` False for them: EP keeps their previous site.
History entries have the keys of the in-process history, plus ``no_reply`` (clients
that timed out or whose node left), timings and wire sizes: ``client_round_trip_s``
(median seconds from a message's push to its reply's pull) split into
``client_process_start_s`` (a fresh ClientApp process's start-up),
``client_handler_s`` (the ClientApp's handler) and ``client_wait_s`` (the rest:
polling and transport), and ``push_s`` (the server's pushes of the round's messages). The server state and history are checkpointed after every round.

:func:`discover` waits for the nodes, asks each for its position, label and row
count (and pooled standardization statistics when nodes hold raw features);
:func:`finish` samples the global posterior on the server and asks each node for
its personalized draws, giving the same :class:`~bayes_pfl.results.FitResult` as
:func:`bayes_pfl.federated.fit_ep`.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.common.constant import ErrorCode

from bayes_pfl.algorithms import Algorithm
from bayes_pfl.codec import decode, encode
from bayes_pfl.flower.config import pooled_standardization
from bayes_pfl.flower.records import (
    CodecError,
    config_record,
    from_array_record,
    named_arrays,
    named_record,
    record_nbytes,
    to_array_record,
)
from bayes_pfl.simulation import compiled, round_entry, row_buckets, screen

__all__ = [
    "Federation",
    "ServerResult",
    "discover",
    "exchange",
    "finish",
    "run_server",
    "wait_for_nodes",
]

log = logging.getLogger("bayes_pfl.flower")


class Federation(NamedTuple):
    """The nodes of a run, by position (the client axis of the in-process run)."""

    node_ids: tuple[int, ...]
    labels: tuple[str, ...]
    n_rows: np.ndarray
    n_features: int
    mean: np.ndarray | None  # pooled standardization sent to nodes with raw features
    scale: np.ndarray | None

    @property
    def n_clients(self) -> int:
        return len(self.node_ids)

    @property
    def n_max(self) -> int:
        return int(np.max(self.n_rows))

    def padded_rows(self, bucket_rows: bool = False) -> np.ndarray:
        """The rows each node pads its arrays to, by position: the largest client's, or
        with ``bucket_rows`` those of its group of :func:`bayes_pfl.simulation.row_buckets`
        (as ``run_rounds(bucket_rows=True)`` pads it in process). A client's step
        depends on its padding in the last bits; the same padding keeps a node's
        computation the in-process one."""
        rows = np.full(self.n_clients, self.n_max, dtype=int)
        if bucket_rows and self.n_clients:
            mask = np.arange(self.n_max)[None, :] < np.asarray(self.n_rows)[:, None]
            for idx, r in row_buckets(mask):
                rows[idx] = r
        return rows

    def data_template(self, dtype=None):
        from bayes_pfl.data import ClientArrays

        dtype = dtype or jnp.zeros(0).dtype
        n, p = self.n_max, self.n_features
        return ClientArrays(
            jax.ShapeDtypeStruct((n, p), dtype),
            jax.ShapeDtypeStruct((n,), dtype),
            jax.ShapeDtypeStruct((n,), jnp.bool_),
        )

    def data_records(self) -> dict[str, ArrayRecord]:
        if self.mean is None:
            return {}
        return {"standardization": named_record({"mean": self.mean, "scale": self.scale})}


class ServerResult(NamedTuple):
    server_state: Any
    history: list[dict[str, Any]]
    converged: bool
    rounds: int
    accepted: np.ndarray  # per client: its last message was accepted (its state committed)


# ------------------------------------------------------------------ messaging


def wait_for_nodes(grid, n_nodes: int, *, timeout_s: float, settle_s: float = 3.0) -> list[int]:
    """Node ids once ``n_nodes`` have registered (``n_nodes=0``: once their number settles).

    Raises ``TimeoutError`` naming how many registered when ``timeout_s`` passes.
    """
    deadline = time.monotonic() + timeout_s
    last, since = -1, time.monotonic()
    while True:
        ids = sorted(int(i) for i in grid.get_node_ids())
        if n_nodes and len(ids) >= n_nodes:
            return ids
        if not n_nodes and ids:
            if len(ids) != last:
                last, since = len(ids), time.monotonic()
            elif time.monotonic() - since >= settle_s:
                return ids
        if time.monotonic() > deadline:
            want = n_nodes or "at least 1"
            raise TimeoutError(
                f"{len(ids)} SuperNode(s) registered within {timeout_s:.0f} s, expected {want}; "
                "are the SuperNodes running and pointed at this SuperLink?"
            )
        time.sleep(0.2)


def exchange(
    grid,
    contents: dict[int, RecordDict],
    *,
    message_type: str,
    group_id: str,
    timeout_s: float,
    poll_interval_s: float = 0.05,
    max_in_flight: int = 0,
    timings: dict[str, Any] | None = None,
) -> tuple[dict[int, RecordDict], dict[int, str]]:
    """Send ``contents[node_id]`` to each node; collect replies until all came or ``timeout_s``.

    The messages are pushed with ``grid.push_messages`` and the replies pulled with
    ``grid.pull_messages`` every ``poll_interval_s`` (Flower's ``send_and_receive``
    sleeps 3 s between pulls). With ``max_in_flight > 0`` at most that many messages
    await a reply at any time (the next node's message goes out when a reply comes):
    on one machine hosting many SuperNodes this bounds the concurrent ClientApp
    processes. ``timeout_s`` covers the whole exchange.

    Returns ``({node_id: reply content}, {node_id: why no reply})``: errors reported by
    Flower (a ClientApp exception, an unavailable node) and timeouts. ``timings``, when
    given, receives ``"round_trip_s"``: ``{node_id: seconds}`` from the push of each
    answering node's message (the start of its batch's push) to the pull of its reply,
    and ``"push_s"``: the seconds spent in ``grid.push_messages``.
    """
    if int(max_in_flight) != max_in_flight or max_in_flight < 0:
        raise ValueError(f"max_in_flight must be a non-negative integer, got {max_in_flight!r}")
    ttl = max(60.0, 2.0 * timeout_s)
    queue = list(contents.items())
    cap = len(queue) if max_in_flight == 0 else int(max_in_flight)
    pending: dict[str, int] = {}
    pushed: dict[str, float] = {}
    push_s = [0.0]
    round_trips: dict[int, float] = {}

    def send(n: int) -> None:
        batch, queue[:n] = queue[:n], []
        messages = [
            Message(
                content,
                dst_node_id=node,
                message_type=message_type,
                group_id=group_id,
                ttl=ttl,
            )
            for node, content in batch
        ]
        t_push = time.perf_counter()  # a node may take its message before the batch is pushed
        ids = list(grid.push_messages(messages))
        push_s[0] += time.perf_counter() - t_push
        pending.update(
            {mid: msg.metadata.dst_node_id for mid, msg in zip(ids, messages, strict=True)}
        )
        pushed.update(dict.fromkeys(ids, t_push))

    replies: dict[int, RecordDict] = {}
    failures: dict[int, str] = {}
    deadline = time.monotonic() + timeout_s
    send(cap)
    while pending:
        for reply in grid.pull_messages(list(pending)):
            mid = reply.metadata.reply_to_message_id
            node = pending.pop(mid, None)
            if node is None:
                continue
            round_trips[node] = time.perf_counter() - pushed[mid]
            if reply.has_error():
                failures[node] = f"error {reply.error.code}: {reply.error.reason}"
            else:
                replies[node] = reply.content
        if time.monotonic() > deadline:
            break
        if queue and len(pending) < cap:
            send(cap - len(pending))
            continue
        if not pending:
            break
        time.sleep(poll_interval_s)
    for node in pending.values():
        failures[node] = f"no reply within {timeout_s:g} s"
    for node, _ in queue:
        failures[node] = f"not asked within {timeout_s:g} s (max_in_flight {cap})"
    if timings is not None:
        timings.update(round_trip_s=round_trips, push_s=push_s[0])
    return replies, failures


def discover(
    grid,
    *,
    n_clients: int = 0,
    node_wait_s: float = 120.0,
    timeout_s: float = 120.0,
    poll_interval_s: float = 0.05,
    standardize: bool = False,
    max_in_flight: int = 0,
) -> Federation:
    """Wait for the nodes and ask each for its position, label and row count.

    Positions must be ``0 .. K-1`` once each. With ``standardize``, nodes holding raw
    features also send per-feature statistics and the pooled mean and sd are kept to
    send with every later message.
    """
    nodes = wait_for_nodes(grid, n_clients, timeout_s=node_wait_s)
    content = RecordDict({"config": ConfigRecord({"want-stats": bool(standardize)})})
    replies, failures = exchange(
        grid,
        {n: content for n in nodes},
        message_type="query.describe",
        group_id="describe",
        timeout_s=timeout_s,
        poll_interval_s=poll_interval_s,
        max_in_flight=max_in_flight,
    )
    if failures:
        raise RuntimeError(
            "nodes did not describe themselves: "
            + "; ".join(f"node {n}: {why}" for n, why in failures.items())
        )
    described = []
    for node, reply in replies.items():
        cfg = reply.config_records["describe"]
        stats = None
        if "stats" in reply.array_records:
            stats = named_arrays(reply.array_records["stats"], ("n", "mean", "m2", "binary"))
        described.append((int(cfg["position"]), node, cfg, stats))
    described.sort(key=lambda t: t[0])
    positions = [p for p, *_ in described]
    if positions != list(range(len(described))):
        raise RuntimeError(
            f"node positions (partition-id) must be 0..{len(described) - 1} once each, "
            f"got {positions}"
        )
    n_features = {int(c["n-features"]) for _, _, c, _ in described}
    if len(n_features) != 1:
        raise RuntimeError(f"nodes disagree on the number of features: {sorted(n_features)}")
    mean = scale = None
    stats = [s for *_, s in described if s is not None]
    if standardize and stats:
        mean, scale = pooled_standardization(stats)
    return Federation(
        node_ids=tuple(node for _, node, _, _ in described),
        labels=tuple(str(c["label"]) for _, _, c, _ in described),
        n_rows=np.array([int(c["n-rows"]) for _, _, c, _ in described]),
        n_features=n_features.pop(),
        mean=mean,
        scale=scale,
    )


# ------------------------------------------------------------------ round loop


def _stack(trees: list[Any]) -> Any:
    return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *trees)


def _timing(round_trip: float | None, metrics) -> dict[str, float]:
    """One reply's round trip split into process start-up, handler and waiting.

    ``process_start_s`` (the ClientApp process's age on entering the handler) counts
    only when the process started after the message was pushed: a long-lived process
    (Flower's simulation actors, an in-process grid) started no process for it.
    Waiting is the rest: the SuperNode's and SuperExec's polls, transport, the
    server's pull interval. ``process_cpu_s``: CPU seconds a fresh process used until
    its reply was ready.
    """
    nan = float("nan")
    rt = nan if round_trip is None else float(round_trip)
    handler = float(metrics.get("handler_s", nan))
    start = float(metrics.get("process_start_s", nan))
    start_cpu = float(metrics.get("process_start_cpu_s", nan))
    cpu = float(metrics.get("process_cpu_s", nan))
    if start + handler > rt:  # the process predates the message
        start = start_cpu = 0.0
        cpu = nan
    return {
        "round_trip_s": rt,
        "process_start_s": start,
        "process_start_cpu_s": start_cpu,
        "handler_s": handler,
        "wait_s": rt - start - handler,
        "process_cpu_s": cpu,
    }


def _breakdown(timings: list[dict[str, float]]) -> dict[str, float]:
    """History keys of a round's timing: medians over the replies (and the longest round trip)."""
    if not timings:
        return {}
    out = {}
    for key in timings[0]:
        values = np.array([t[key] for t in timings], float)
        ok = values[np.isfinite(values)]
        out[f"client_{key}"] = float(np.median(ok)) if ok.size else float("nan")
    trips = np.array([t["round_trip_s"] for t in timings], float)
    trips = trips[np.isfinite(trips)]
    out["client_round_trip_s_max"] = float(trips.max()) if trips.size else float("nan")
    return out


def _zeros_like(template: Any) -> Any:
    return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), template)


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Server state, history and per-client bookkeeping: ``path.npz`` + ``path.json``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **{f"server{k}": v for k, v in encode(state["server_state"]).items()})
    tmp.replace(path.with_suffix(".npz"))
    meta = {k: v for k, v in state.items() if k != "server_state"}
    tmp_json = path.with_suffix(".tmp.json")
    tmp_json.write_text(json.dumps(meta, indent=1, default=_json_default))
    tmp_json.replace(path.with_suffix(".json"))


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(type(obj))


def load_checkpoint(path: str | Path, server_template: Any) -> dict[str, Any] | None:
    """The checkpoint written by :func:`run_server` at ``path``, or None if there is none."""
    path = Path(path)
    if not path.with_suffix(".npz").exists():
        return None
    with np.load(path.with_suffix(".npz")) as z:
        flat = {k[6:]: v for k, v in z.items() if k.startswith("server")}
    meta = json.loads(path.with_suffix(".json").read_text())
    meta["server_state"] = jax.tree.map(jnp.asarray, decode(flat, server_template))
    return meta


def run_server(
    grid,
    algorithm: Algorithm,
    federation: Federation,
    *,
    rounds: int,
    seed: int = 0,
    participating: np.ndarray | None = None,
    stop_when_converged: bool = True,
    timeout_s: float = 300.0,
    poll_interval_s: float = 0.05,
    max_in_flight: int = 0,
    init_server_state: Any = None,
    fresh_clients: bool = True,
    accepted: np.ndarray | None = None,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    phase: str = "",
    bucket_rows: bool = False,
) -> ServerResult:
    """Run ``algorithm`` over the nodes of ``federation`` for up to ``rounds`` rounds.

    The Flower counterpart of :func:`bayes_pfl.simulation.run_rounds` (same keys, same
    ``server_update``, same history keys).

    Parameters
    ----------
    grid : flwr.serverapp.Grid
        The ServerApp's grid.
    algorithm : Algorithm
        The pure functions; nodes run the algorithm of the same ``algorithm.name``.
    federation : Federation
        Nodes by position, from :func:`discover`.
    rounds, seed, participating, stop_when_converged
        As in ``run_rounds`` (``participating`` defaults to clients with rows).
    timeout_s : float
        A round waits this long for replies; clients that did not answer are left
        out of the round (``accept`` False).
    poll_interval_s : float
        How often to pull replies.
    max_in_flight : int
        At most this many nodes work on a round at once (0: all); see :func:`exchange`.
    init_server_state : optional
        Start from this server state (the end of a previous phase); with
        ``fresh_clients=False`` the nodes keep their client states too.
    accepted : bool array, optional
        With ``fresh_clients=False``: whether each client's last message of the previous
        phase was accepted (``ServerResult.accepted``), so its last state is committed.
    checkpoint, resume
        After every round write ``checkpoint.npz``/``.json``; with ``resume`` continue
        from an existing checkpoint of the same ``phase``. Client states live on the
        nodes; a node that lost its state (a new run) starts from ``client_init``.
    bucket_rows : bool
        As in ``run_rounds``: each node pads its rows to its row bucket's
        (:meth:`Federation.padded_rows`) instead of the largest client's, as the
        in-process driver does (``fit_ep`` buckets its rounds).
    """
    labels = list(federation.labels)
    k = federation.n_clients
    nodes = federation.node_ids
    if participating is None:
        participating = federation.n_rows > 0
    participating = np.asarray(participating, bool)
    key = jax.random.key(seed)
    init_keys = jax.random.key_data(jax.random.split(key, k))
    # its own state: a checkpoint's template (a particle exchange's state wraps EP's)
    server_state = own_state = algorithm.server_init(jax.random.fold_in(key, 0), k)
    if init_server_state is not None:
        server_state = init_server_state
    history: list[dict[str, Any]] = []
    accepted_last = np.zeros(k, bool) if accepted is None else np.asarray(accepted, bool).copy()
    start_round = 0
    ckpt = Path(checkpoint) if checkpoint is not None else None
    if ckpt is not None and resume:
        saved = load_checkpoint(ckpt, own_state)
        if saved is not None and saved.get("phase") == phase:
            server_state, history = saved["server_state"], saved["history"]
            start_round = len(history)
            fresh_clients = False  # nodes without a state start from client_init anyway
            accepted_last = np.zeros(k, bool)
            log.info("resuming %s from round %d (%s)", algorithm.name, start_round, ckpt)

    data_tmpl = federation.data_template()
    broadcast_step = compiled(algorithm.broadcast)
    server_step = compiled(algorithm.server_update)
    broadcast = broadcast_step(server_state)
    row_tmpl = jax.eval_shape(lambda b: jax.tree.map(lambda a: a[0], b), broadcast)
    state_tmpl = jax.eval_shape(algorithm.client_init, jax.random.key(0), data_tmpl)
    message_tmpl, info_tmpl = jax.eval_shape(
        lambda *a: algorithm.client_update(*a)[1:],
        jax.random.key(0),
        row_tmpl,
        state_tmpl,
        data_tmpl,
    )
    data_records = federation.data_records()
    padded = federation.padded_rows(bucket_rows)
    converged = bool(history and history[-1].get("converged", False))
    for r in range(start_round, rounds):
        if converged and stop_when_converged:
            break
        t0 = time.perf_counter()
        rkey = jax.random.fold_in(key, r + 1)
        ckeys = jax.random.key_data(jax.random.split(jax.random.fold_in(rkey, 1), k))
        host_bcast = jax.device_get(broadcast)
        contents, wire_down = {}, 0
        for i in np.flatnonzero(participating):
            row = jax.tree.map(lambda a, i=i: a[i], host_bcast)
            content = RecordDict(
                {
                    "config": config_record(
                        {
                            "algorithm": algorithm.name,
                            "round": r + 1,
                            "position": int(i),
                            "n-clients": k,
                            "n-max": int(padded[i]),
                            "fresh": bool(fresh_clients and r == start_round),
                            "accepted": bool(accepted_last[i]),
                        }
                    ),
                    "broadcast": to_array_record(row),
                    "keys": named_record({"round": ckeys[i], "init": init_keys[i]}),
                    **data_records,
                }
            )
            wire_down += record_nbytes(content["broadcast"])
            contents[nodes[i]] = content
        timings: dict[str, Any] = {}
        replies, failures = exchange(
            grid,
            contents,
            message_type="train",
            group_id=f"{phase or algorithm.name}-{r + 1}",
            timeout_s=timeout_s,
            poll_interval_s=poll_interval_s,
            max_in_flight=max_in_flight,
            timings=timings,
        )
        t_reply = time.perf_counter() - t0
        position = {node: i for i, node in enumerate(nodes)}
        messages = [None] * k
        infos: list[Any] = []
        reasons: dict[str, str] = {}
        no_reply: list[str] = []
        wire_up = 0
        update_s = []
        replied = []
        for node, why in failures.items():
            i = position[node]
            if why.startswith("no reply") or f"error {ErrorCode.NODE_UNAVAILABLE}:" in why:
                no_reply.append(labels[i])
            reasons[labels[i]] = why
        for node, reply in replies.items():
            i = position[node]
            try:
                messages[i] = from_array_record(reply.array_records["message"], message_tmpl)
                infos.append(from_array_record(reply.array_records["info"], info_tmpl))
                wire_up += record_nbytes(reply.array_records["message"])
                metrics = reply.metric_records["metrics"]
                update_s.append(float(metrics["update_s"]))
                replied.append(_timing(timings["round_trip_s"].get(node), metrics))
            except (CodecError, KeyError) as exc:
                messages[i] = None
                reasons[labels[i]] = f"malformed message: {exc}"
        answered = np.array([m is not None for m in messages])
        stacked = _stack([m if m is not None else _zeros_like(message_tmpl) for m in messages])
        cinfo = _stack(infos) if infos else None
        # the driver's server boundary: the same checks, reasons and acceptance as in process
        screened = screen(
            algorithm,
            stacked,
            cinfo,
            labels,
            participating,
            round=r + 1,
            answered=answered,
            rejected={lab: why for lab, why in reasons.items() if lab not in no_reply},
        )
        reasons.update(screened.rejected)
        for lab, why in reasons.items():
            i = labels.index(lab)
            level = logging.INFO if lab in no_reply else logging.WARNING
            log.log(level, "round %d: node %s (%r) left out: %s", r + 1, nodes[i], lab, why)
        accept_np = screened.accept
        accept = jnp.asarray(accept_np)
        sent = broadcast
        server_state, sinfo = server_step(
            jax.random.fold_in(rkey, 2), server_state, jax.tree.map(jnp.asarray, stacked), accept
        )
        broadcast = jax.block_until_ready(broadcast_step(server_state))
        accepted_last = accept_np.copy()
        entry = round_entry(
            r + 1, time.perf_counter() - t0, stacked, sent, screened, sinfo, cinfo, k
        )
        entry.update(
            {
                "n_no_reply": len(no_reply),
                "no_reply": [str(lab) for lab in no_reply],
                "reply_wait_s": t_reply,
                "client_update_s_max": max(update_s) if update_s else float("nan"),
                **_breakdown(replied),
                "push_s": timings["push_s"],
                "wire_bytes_down": wire_down,
                "wire_bytes_up": wire_up,
            }
        )
        history.append(entry)
        converged = bool(entry.get("converged", False))
        log.info(
            "%s round %d: %.2f s, accepted %d/%d%s",
            algorithm.name,
            r + 1,
            entry["wall_time_s"],
            int(accept_np.sum()),
            int(participating.sum()),
            f", left out {sorted(reasons)}" if reasons else "",
        )
        if ckpt is not None:
            _save_checkpoint(
                ckpt, {"server_state": server_state, "history": history, "phase": phase}
            )
    return ServerResult(server_state, history, converged, len(history), accepted_last)


# ------------------------------------------------------------ after the rounds


def finish(
    grid,
    method: str,
    model,
    federation: Federation,
    server_state,
    history: list[dict[str, Any]],
    converged: bool,
    *,
    seed: int,
    global_method: str = "nuts",
    num_chains: int = 4,
    num_warmup: int = 1000,
    num_samples: int = 1000,
    t_start: float,
    settings: dict[str, Any],
    timeout_s: float = 300.0,
    poll_interval_s: float = 0.05,
    max_in_flight: int = 0,
    private: dict[str, Any] | None = None,
):
    """Global draws on the server, personalized draws on each node: a ``FitResult``.

    Mirrors :func:`bayes_pfl.posterior.readout` with the same keys; the server never
    sees a row: node ``k`` receives the global draws and returns its ``theta`` draws.
    Nodes that do not answer are left out of the result (``info["left_out"]``).

    ``private`` (a differentially private run: ``{"algorithm": the non-private EP
    client step, "dp_epsilon": ...}``): each node personalizes from its own noise-free
    site and keeps its draws (:mod:`bayes_pfl.flower.private`); the node is sent its
    broadcast row and the in-process keys of :func:`bayes_pfl.privacy.local_sites`, and
    the result holds the global draws and no client's ``theta``.
    """
    from bayes_pfl.posterior import (
        particle_info,
        readout_keys,
        server_summary,
        timed_server_draws,
        to_result,
    )

    key_global, key_personal = readout_keys(seed)
    u, gstats, t_global = timed_server_draws(
        key_global,
        model,
        server_state,
        global_method=global_method,
        num_chains=num_chains,
        num_warmup=num_warmup,
        num_samples=num_samples,
    )
    c, s, p = u.shape
    u_flat = np.asarray(u).reshape(c * s, p)
    k = federation.n_clients
    pkeys = jax.random.key_data(jax.random.split(key_personal, k))
    draws = named_record({"u": u_flat})
    data_records = federation.data_records()
    from bayes_pfl.algorithms.effect_ep import EffectServerState
    from bayes_pfl.algorithms.particles import gaussian_state

    # EP over client effects: each node personalizes from its own site (a Student-t
    # population too; after a particle exchange its Gaussian site), as in process
    ep_state = gaussian_state(server_state)
    sites = ep_state.sites if isinstance(ep_state, EffectServerState) else None

    def site_record(i):
        if sites is None:
            return {}
        own = {"precision": np.asarray(sites.precision[i]), "shift": np.asarray(sites.shift[i])}
        return {"site": named_record(own)}

    config = {"n-max": federation.n_max}
    extra = [{} for _ in range(k)]
    if private is not None:
        from bayes_pfl.flower.records import to_array_record

        local = private["algorithm"]
        bcast = jax.device_get(local.broadcast(server_state))
        # privacy.local_sites' keys (the in-process run's), not the noise's: nothing the
        # node computes with them leaves the node
        lkeys = jax.random.key_data(jax.random.split(jax.random.key(seed + 7), k))
        config.update(
            {
                "private": True,
                "local-site": local.name,
                "n-clients": k,
                "chains": c,
                "dp-epsilon": float(private["dp_epsilon"]),
            }
        )
        for i in range(k):
            extra[i] = {
                "broadcast": to_array_record(jax.tree.map(lambda a, i=i: a[i], bcast)),
                "keys": named_record({"personalize": pkeys[i], "local-site": lkeys[i]}),
            }

    contents = {
        node: RecordDict(
            {
                "config": config_record({**config, "position": i}),
                "draws": draws,
                "keys": named_record({"personalize": pkeys[i]}),
                **site_record(i),
                **data_records,
                **extra[i],
            }
        )
        for i, node in enumerate(federation.node_ids)
    }
    t0 = time.perf_counter()
    replies, failures = exchange(
        grid,
        contents,
        message_type="query.personalize",
        group_id="personalize",
        timeout_s=timeout_s,
        poll_interval_s=poll_interval_s,
        max_in_flight=max_in_flight,
    )
    t_personal = time.perf_counter() - t0
    keep, thetas, acc, left_out = [], [], [], {}
    for i, node in enumerate(federation.node_ids):
        label = federation.labels[i]
        try:
            if node in failures:
                raise RuntimeError(failures[node])
            reply = replies[node]
            if private is not None:
                if (
                    "theta" in reply.array_records
                    or "kept-on-node" not in reply.metric_records["metrics"]
                ):
                    raise CodecError("a private node must keep its draws and say so")
                keep.append(label)
                continue
            th = named_arrays(reply.array_records["theta"], ("theta",))["theta"]
            if th.shape != (c * s, model.theta_dim) or th.dtype != u_flat.dtype:
                raise CodecError(f"theta draws of shape {th.shape} {th.dtype}")
            if not np.all(np.isfinite(th)):
                raise RuntimeError("non-finite draws")
        except (RuntimeError, CodecError, KeyError) as exc:
            left_out[label] = str(exc)
            log.warning("personalization: node %s (%r) left out: %s", node, label, exc)
            continue
        keep.append(label)
        thetas.append(th)
        acc.append(float(reply.metric_records["metrics"]["acceptance"]))
    if not keep:
        raise RuntimeError("no node returned personalized draws: " + json.dumps(left_out))
    if private is not None:  # the draws stay on the nodes: the global posterior only
        keep, theta = list(federation.labels), None
    else:
        theta = jnp.asarray(np.stack(thetas))
    result = to_result(
        method,
        model,
        keep,
        u,
        theta,
        sample_stats=gstats,
        history=history,
        info={
            "seed": seed,
            "rounds": len(history),
            "converged": converged,
            "wall_time_s": time.perf_counter() - t_start,
            "global_time_s": t_global,
            "personalize_time_s": t_personal,
            "min_personalize_acceptance": None if private else float(np.min(acc)),
            "settings": {**settings, "global_method": global_method},
            "runtime": "flower",
            "left_out": left_out,
            **particle_info(server_state, federation.labels),
            **({"personalized_on": "nodes"} if private else {}),
        },
    )
    result.state.update(server_summary(server_state, u))
    return result
