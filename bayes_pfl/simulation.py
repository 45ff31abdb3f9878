"""The in-process driver: one round loop for every federated algorithm.

:func:`run_rounds` vmaps an :class:`~bayes_pfl.algorithms.Algorithm`'s
``client_update`` over the client axis (one compiled call per round, no Python
loop over clients), checks every message at the server boundary, applies
``server_update``, records a history entry per round (changes, bytes in each
direction, rejected clients), shows progress, and can checkpoint and resume.
"""

from __future__ import annotations

import functools
import json
import time
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bayes_pfl.algorithms import Algorithm, select_clients
from bayes_pfl.codec import decode, encode

__all__ = [
    "ClientError",
    "NoClientContributed",
    "Phase",
    "Screened",
    "SimulationResult",
    "check_messages",
    "client_blocks",
    "message_nbytes",
    "round_entry",
    "row_buckets",
    "phase_checkpoint",
    "run_phases",
    "run_rounds",
    "screen",
]


def off_devices(tree):
    """Host copies of the leaves a :func:`bayes_pfl.local.map_chains` computation left on several devices.

    A jitted function's outputs live on the devices it ran on; fed to a computation on
    another device set (the next run's chains, a per-client step) they would be rejected,
    or make it run replicated. Other leaves (typed keys included) are returned as they are.
    """

    def one(a):
        if isinstance(a, jax.Array) and len(a.sharding.device_set) > 1:
            return np.asarray(a)
        return a

    return jax.tree.map(one, tree)


class NoClientContributed(RuntimeError):
    """No participating client's local inference succeeded in any round: the server's
    posterior would be its prior, so no result is returned."""


class Phase(NamedTuple):
    """One stretch of rounds with one algorithm: what a method's rounds are made of.

    A method is a tuple of phases (:func:`run_phases` in process; the Flower server runs
    the same tuple over the network): e.g. EP with NUTS tilted moments is a Laplace-EP
    phase, then a NUTS phase started from its states.
    """

    tag: dict  # added to each history entry of the phase ({"sites": "effects"}, {"tilted": ...})
    algorithm: Algorithm
    rounds: int
    warm_start: bool  # start from the previous phase's server and client states
    bucket_rows: bool = False  # the client step may run on row buckets (see run_rounds)


class SimulationResult(NamedTuple):
    server_state: Any
    client_states: Any
    history: list[dict[str, Any]]
    converged: bool
    rounds: int


def message_nbytes(tree: Any, n_clients: int) -> int:
    """Bytes one client sends or receives: the pytree's bytes divided by the client axis."""
    total = sum(int(np.asarray(leaf).nbytes) for leaf in jax.tree_util.tree_leaves(tree))
    return total // n_clients


def row_buckets(
    mask, *, ratio: int = 4, max_buckets: int = 4, min_rows: int = 8, min_saving: float = 0.5
) -> list[tuple[np.ndarray, int]]:
    """Groups of clients padded to fewer rows: ``[(client indices, rows), ...]``.

    Clients are padded to the largest client's rows, so with ragged sizes most of a
    vectorized step's work is on padding (200 clients of median 20 rows padded to 710).
    Each client goes to the shortest padding of a ladder ``n_max, n_max / ratio,
    n_max / ratio², ...`` (at most ``max_buckets`` rungs, none below ``min_rows``) that
    holds its last real row. Every bucket is one more compiled shape, so the ladder is
    used only when it removes at least ``min_saving`` of the padded work; otherwise (and
    for equal sizes) one bucket holds every client. Client order within a bucket is kept.
    """
    mask = np.asarray(mask, bool)
    k, n_max = mask.shape
    used = np.where(mask.any(axis=1), n_max - np.argmax(mask[:, ::-1], axis=1), 0)
    caps = [n_max]
    while len(caps) < max_buckets and -(-caps[-1] // ratio) >= min_rows:
        caps.append(-(-caps[-1] // ratio))
    caps = np.asarray(caps[::-1])  # ascending
    rung = np.searchsorted(caps, used)  # smallest cap >= used
    work = float(np.sum(caps[rung]))
    if len(caps) == 1 or work > (1.0 - min_saving) * k * n_max:
        return [(np.arange(k), n_max)]
    return [(np.flatnonzero(rung == r), int(caps[r])) for r in np.unique(rung)]


def _take(tree: Any, idx: np.ndarray, rows: int | None = None) -> Any:
    """Rows ``idx`` of every leaf (leading client axis); ``rows`` trims the row axis."""
    return jax.tree.map(lambda a: a[idx] if rows is None else a[idx, :rows], tree)


def bucket_parts(data: tuple, mask, bucket: bool = True) -> list[tuple[np.ndarray, tuple]]:
    """``[(client indices, their arrays trimmed to the bucket's rows), ...]``.

    One part holding every client, arrays untouched, unless ``bucket`` and
    :func:`row_buckets` finds a grouping that pays for its extra compiled shapes.
    """
    buckets = row_buckets(mask) if bucket else []
    if len(buckets) <= 1:
        return [(np.arange(np.shape(mask)[0]), data)]
    return [(idx, tuple(_take(a, idx, rows) for a in data)) for idx, rows in buckets]


def bucketed(step, parts: list[tuple[np.ndarray, tuple]], keys, per_client: tuple):
    """``step`` over each bucket of clients, results put back in client order."""
    if len(parts) == 1:
        return step(keys, *per_client, parts[0][1])
    outs = [step(keys[idx], *(_take(t, idx) for t in per_client), sub) for idx, sub in parts]
    order = np.argsort(np.concatenate([idx for idx, _ in parts]), kind="stable")
    return jax.tree.map(lambda *xs: jnp.concatenate(xs)[order], *outs)


def check_messages(messages: Any, labels) -> tuple[np.ndarray, dict[Any, str]]:
    """Host-side check of stacked messages: every leaf of every client must be finite.

    Returns the per-client acceptance mask and ``{label: reason}`` for rejected clients.
    """
    k = len(labels)
    ok = np.ones(k, bool)
    reasons: dict[Any, str] = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(messages)[0]:
        arr = np.asarray(leaf)
        if arr.shape[:1] != (k,):
            raise ValueError(
                f"message field {jax.tree_util.keystr(path)} has leading axis {arr.shape[:1]}, "
                f"expected {k} clients"
            )
        if not np.issubdtype(arr.dtype, np.floating):
            continue
        finite = np.isfinite(arr.reshape(k, -1)).all(axis=1)
        for i in np.flatnonzero(~finite):
            reasons.setdefault(labels[i], f"non-finite values in {jax.tree_util.keystr(path)}")
        ok &= finite
    return ok, reasons


def _scalars(info: Any, prefix: str = "") -> dict[str, float]:
    out = {}
    for name, value in info._asdict().items():
        arr = np.asarray(value)
        if arr.ndim == 0:
            out[prefix + name] = arr.item() if arr.dtype != bool else bool(arr)
        elif arr.dtype == bool:
            out[prefix + name + "_count"] = int(arr.sum())
        elif name == "ess":
            out[prefix + name + "_min"] = float(np.min(arr))
        else:
            out[prefix + name + "_max"] = float(np.max(arr))
    return out


CLIENT_BATCH = 1024
"""Clients per vectorized chunk of the in-process client step (see ``run_rounds``)."""

ON_REJECTED = ("skip", "raise")
ON_FAILED = ("keep", "raise")


class ClientError(RuntimeError):
    """Clients were left out of a round and the run's policy says to stop.

    Raised by :func:`run_rounds` with ``on_rejected="raise"`` (a message failed the
    server's check: non-finite values) or ``on_failed="raise"`` (a client's local
    inference failed), before the server uses the round's messages.

    Attributes
    ----------
    clients : tuple
        The labels of the clients, in client order.
    reasons : dict
        ``{label: why}``.
    round : int
        The round (1-based) in which they were left out.
    """

    def __init__(self, message: str, *, reasons: dict, round: int):
        super().__init__(message)
        self.reasons = dict(reasons)
        self.clients = tuple(self.reasons)
        self.round = int(round)


class Screened(NamedTuple):
    """What the server takes of a round's messages (:func:`screen`)."""

    accept: np.ndarray  # bool [K]: messages the server uses
    used: np.ndarray  # bool [K]: accepted and local inference ok (new information)
    rejected: dict  # {label: why} messages refused at the boundary (non-finite, malformed)
    failed: dict  # {label: why} clients whose local inference failed (previous site kept)


def _check_policy(name: str, value: str, allowed: tuple) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value


def screen(
    algorithm: Algorithm,
    messages: Any,
    cinfo: Any,
    labels: list,
    participating: np.ndarray,
    *,
    round: int,
    on_rejected: str = "skip",
    on_failed: str = "keep",
    answered: np.ndarray | None = None,
    rejected: dict | None = None,
    stacklevel: int = 3,
) -> Screened:
    """The server boundary of one round, shared by the in-process driver and Flower.

    Checks the stacked ``messages`` (:func:`check_messages`), reads local failures from
    the messages' ``ok`` flag (reasons from the info's ``status`` through
    ``algorithm.reasons``), applies the policies (``"skip"``/``"keep"``: warn naming the
    clients; ``"raise"``: :class:`ClientError`) and returns the acceptance mask.
    Failures in round 1 are not warned about under ``"keep"`` (a client may lack a local
    mode before it has a cavity: one row, an unidentified scale); they still raise.
    ``answered``/``rejected`` carry what a transport already knows (clients that did not
    reply, malformed replies).
    """
    k = len(labels)
    words = dict(algorithm.reasons)
    ok, bad = check_messages(messages, labels)
    answered = np.ones(k, bool) if answered is None else np.asarray(answered, bool)
    reasons = dict(rejected or {})
    position = {lab: i for i, lab in enumerate(labels)}
    for lab, why in bad.items():
        if answered[position[lab]] and participating[position[lab]]:
            field = why.removeprefix("non-finite values in ")
            reasons.setdefault(lab, words.get(field, why))
    own = {lab: why for lab, why in reasons.items() if answered[position[lab]]}
    if own:
        text = (
            f"{algorithm.name}, round {round}: rejected messages from {len(own)} client(s): "
            + "; ".join(f"client {lab!r}: {why}" for lab, why in own.items())
        )
        if on_rejected == "raise":
            raise ClientError(text, reasons=own, round=round)
        warnings.warn(text, stacklevel=stacklevel)
    accept = ok & answered & participating
    local_ok = np.asarray(getattr(messages, "ok", np.ones(k, bool)), bool)
    status = getattr(cinfo, "status", None) if cinfo is not None else None
    status = None if status is None else np.asarray(status).reshape(-1)
    failed = {}
    for i in np.flatnonzero(~local_ok & accept):
        why = "local inference failed"
        if status is not None and len(status) == k:
            why = words.get(int(status[i]), why)
        failed[labels[i]] = why
    if failed and on_failed == "raise":
        raise ClientError(
            f"{algorithm.name}, round {round}: local inference failed on {len(failed)} "
            "client(s): " + "; ".join(f"client {lab!r}: {why}" for lab, why in failed.items()),
            reasons=failed,
            round=round,
        )
    if failed and round > 1:
        warnings.warn(
            f"round {round}: local inference failed on {len(failed)} client(s), their "
            "previous contribution is kept: "
            + ", ".join(f"{lab!r} ({why})" for lab, why in list(failed.items())[:20]),
            stacklevel=stacklevel,
        )
    return Screened(accept, accept & local_ok, reasons, failed)


def round_entry(
    round: int,
    seconds: float,
    messages: Any,
    broadcast: Any,
    screened: Screened,
    sinfo: Any,
    cinfo: Any,
    n_clients: int,
) -> dict[str, Any]:
    """One history entry (the keys every runtime records; a transport adds its own)."""
    return {
        "round": round,
        "wall_time_s": seconds,
        "bytes_up_per_client": message_nbytes(messages, n_clients),
        "bytes_down_per_client": message_nbytes(broadcast, n_clients),
        "n_rejected": len(screened.rejected),
        "rejected": [str(lab) for lab in screened.rejected],
        "failed": [str(lab) for lab in screened.failed],
        **_scalars(sinfo),
        **(_scalars(cinfo, "client_") if cinfo is not None else {}),
    }


def client_blocks(participating: np.ndarray, blocks: int) -> list[np.ndarray]:
    """The participating clients split into ``blocks`` consecutive blocks (masks)."""
    idx = np.flatnonzero(participating)
    out = []
    for b in np.array_split(idx, min(blocks, max(len(idx), 1))):
        mask = np.zeros_like(participating)
        mask[b] = True
        out.append(mask)
    return out


def run_rounds(
    algorithm: Algorithm,
    data,
    *,
    rounds: int,
    labels,
    seed: int = 0,
    participating: np.ndarray | None = None,
    blocks: int = 1,
    on_rejected: str = "skip",
    on_failed: str = "keep",
    stop_when_converged: bool = True,
    progress: bool = True,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    init: tuple[Any, Any] | None = None,
    bucket_rows: bool = False,
    client_batch: int = CLIENT_BATCH,
) -> SimulationResult:
    """Run ``algorithm`` for up to ``rounds`` rounds on ``data`` (``ClientArrays``).

    Parameters
    ----------
    algorithm : Algorithm
        Pure functions, see :mod:`bayes_pfl.algorithms`.
    data : ClientArrays
        Stacked client arrays (leading client axis).
    rounds : int
        Maximum number of rounds.
    labels : sequence
        Client labels (for messages about rejected clients and the history).
    seed : int
        Seed of the round keys.
    participating : bool array, optional
        Clients taking part (default: every client with at least one row).
        Others keep their initial contribution.
    blocks : int
        The client schedule. 1 (default): every participating client updates from the
        same broadcast, then the server updates. ``blocks > 1``: a round is a *sweep*
        over that many consecutive blocks of the participating clients, with a server
        update after each block, so later blocks see earlier blocks' new messages (the
        sequential schedule of partitioned VI; blocks equal to the clients is fully
        sequential). History entries then carry ``group`` (the block) and the last
        entry of a sweep ``sweep_converged``; the run converges when every block of a
        sweep does. In-process, the vectorized client step still computes every client
        (the others are discarded), so a sweep costs ``blocks`` rounds of compute.
    on_rejected : {"skip", "raise"}
        A message that fails the server's check (non-finite values) is left out with a
        warning naming the client, or raises :class:`ClientError`.
    on_failed : {"keep", "raise"}
        A client whose local inference failed (``message.ok`` False) keeps its previous
        contribution (with a warning from round 2), or :class:`ClientError` is raised.
    stop_when_converged : bool
        Stop after the first round whose server info says ``converged``.
    progress : bool
        Show a progress bar over rounds.
    checkpoint : path, optional
        After every round, write the server and client states and the history there
        (``.npz`` plus ``.json``); with ``resume=True`` an existing checkpoint is
        loaded and the run continues from its round.
    init : (server_state, client_states), optional
        Start from these states instead of ``server_init``/``client_init`` (e.g. the
        end of a cheaper algorithm's run).
    bucket_rows : bool
        Run the client step on groups of clients padded to fewer rows
        (:func:`row_buckets`): the same results (up to rounding) at a fraction of the
        cost when client sizes are ragged. Only for algorithms whose client step does
        not depend on the padded length (EP's does not; minibatching ones do).
    client_batch : int
        The client step is vectorized over at most this many clients at once; more
        clients run as chunks of this size in sequence (same results, bounded memory).
    """
    from tqdm.auto import tqdm

    if (
        isinstance(client_batch, bool)
        or not isinstance(client_batch, int | np.integer)
        or client_batch < 1
    ):
        raise ValueError(f"client_batch must be a positive integer, got {client_batch!r}")
    if isinstance(blocks, bool) or not isinstance(blocks, int | np.integer) or blocks < 1:
        raise ValueError(f"blocks must be a positive integer, got {blocks!r}")
    _check_policy("on_rejected", on_rejected, ON_REJECTED)
    _check_policy("on_failed", on_failed, ON_FAILED)

    labels = list(labels)
    k = len(labels)
    arrays = jax.tree.map(jnp.asarray, tuple(data))
    if participating is None:
        participating = np.asarray(data.mask).sum(axis=1) > 0
    participating = np.asarray(participating, bool)
    key = jax.random.key(seed)
    # the algorithm's own states: a checkpoint's templates (``init`` may be another
    # algorithm's: the particle exchange starts from EP's state and wraps it)
    server_state = own_server = algorithm.server_init(jax.random.fold_in(key, 0), k)
    client_states = own_clients = jax.vmap(algorithm.client_init)(jax.random.split(key, k), arrays)
    if init is not None:
        server_state, client_states = init
    history: list[dict[str, Any]] = []
    start_round = 0
    ckpt = Path(checkpoint) if checkpoint is not None else None
    if ckpt is not None and resume and ckpt.with_suffix(".npz").exists():
        server_state, client_states, history = _load_checkpoint(ckpt, own_server, own_clients)
        start_round = max((h["round"] for h in history), default=0)
    broadcast_step = compiled(algorithm.broadcast)
    broadcast = broadcast_step(server_state)

    client_step = _compiled_client_step(algorithm.client_update, int(client_batch))
    parts = bucket_parts(arrays, data.mask, bucket_rows)  # trimmed once per run
    server_step = compiled(algorithm.server_update)
    schedule = [participating] if blocks == 1 else client_blocks(participating, int(blocks))
    converged = bool(history) and bool(
        history[-1].get("sweep_converged", history[-1].get("converged", False))
    )
    bar = tqdm(
        range(start_round, rounds),
        disable=not progress,
        desc=f"{algorithm.name} {'sweeps' if len(schedule) > 1 else 'rounds'}",
        unit="round",
        initial=start_round,
        total=rounds,
    )
    contributed = np.zeros(k, bool)
    for r in bar:
        if converged and stop_when_converged:
            break
        sweep_converged = True
        for g, block in enumerate(schedule):
            t0 = time.perf_counter()
            rkey = jax.random.fold_in(key, r * len(schedule) + g + 1)
            ckeys = jax.random.split(jax.random.fold_in(rkey, 1), k)
            client_states_new, messages, cinfo = bucketed(
                client_step, parts, ckeys, (broadcast, client_states)
            )
            messages = jax.block_until_ready(messages)
            screened = screen(
                algorithm,
                messages,
                cinfo,
                labels,
                block,
                round=r + 1,
                on_rejected=on_rejected,
                on_failed=on_failed,
            )
            contributed |= screened.used
            accept = jnp.asarray(screened.accept)
            client_states = select_clients(accept, client_states_new, client_states)
            server_state, sinfo = server_step(
                jax.random.fold_in(rkey, 2), server_state, messages, accept
            )
            server_state = off_devices(server_state)  # chains on several devices: back to one
            sent = broadcast
            broadcast = jax.block_until_ready(broadcast_step(server_state))
            seconds = time.perf_counter() - t0
            entry = round_entry(r + 1, seconds, messages, sent, screened, sinfo, cinfo, k)
            if len(schedule) > 1:
                entry["group"] = g
            history.append(entry)
            sweep_converged &= bool(entry.get("converged", False))
        if len(schedule) > 1:
            history[-1]["sweep_converged"] = sweep_converged
        converged = sweep_converged
        if progress:
            bar.set_postfix(
                {
                    key_: f"{history[-1][key_]:.2g}"
                    for key_ in ("mean_change", "sd_change")
                    if key_ in history[-1]
                }
            )
        if ckpt is not None:
            _save_checkpoint(ckpt, server_state, client_states, history)
    bar.close()
    ran = start_round == 0 and len(history) > 0  # a resumed run saw only its own rounds
    if ran and participating.any() and not contributed.any():
        failed_all = [labels[i] for i in np.flatnonzero(participating)]
        raise NoClientContributed(
            f"{algorithm.name}: local inference failed on every client in every round "
            f"({len(failed_all)} client(s): "
            + ", ".join(repr(lab) for lab in failed_all[:10])
            + (" ..." if len(failed_all) > 10 else "")
            + "); the posterior would be the prior. Check the target's coding and the "
            "model (see the round history's 'failed' entries)"
        )
    never = [labels[i] for i in np.flatnonzero(participating & ~contributed)] if ran else []
    if never:
        warnings.warn(
            f"{len(never)} client(s) never contributed (local inference failed in every "
            "round), their data are not in the posterior: "
            + ", ".join(repr(lab) for lab in never[:20]),
            stacklevel=2,
        )
    rounds_run = max((h["round"] for h in history), default=0)
    return SimulationResult(server_state, client_states, history, converged, rounds_run)


def run_phases(
    phases: tuple[Phase, ...],
    data,
    *,
    labels,
    seed: int = 0,
    progress: bool = True,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    **options,
) -> SimulationResult:
    """Run a method's phases one after another with :func:`run_rounds`.

    Each phase's history entries carry its ``tag``; a ``warm_start`` phase starts from
    the previous phase's states. Every phase checkpoints after each of its rounds
    (:func:`phase_checkpoint`: the last phase, whose states the readout uses, at
    ``checkpoint`` itself) and, with ``resume``, continues from its own checkpoint: a
    phase already done is read back, not run again. ``options`` go to every
    ``run_rounds`` call. Returns the last phase's result with the history of all phases.
    """
    history: list[dict[str, Any]] = []
    out = None
    for i, phase in enumerate(phases):
        out = run_rounds(
            phase.algorithm,
            data,
            rounds=phase.rounds,
            labels=labels,
            seed=seed,
            progress=progress,
            checkpoint=None if checkpoint is None else phase_checkpoint(checkpoint, i, len(phases)),
            resume=resume,
            init=(out.server_state, out.client_states) if phase.warm_start and out else None,
            bucket_rows=phase.bucket_rows,
            **options,
        )
        history += [{**h, **phase.tag} for h in out.history]
    if out is None:
        raise ValueError("a method needs at least one phase")
    return out._replace(history=history)


def phase_checkpoint(checkpoint: str | Path, index: int, n_phases: int) -> Path:
    """The checkpoint prefix of phase ``index`` of ``n_phases``: ``checkpoint`` for the
    last one, ``<checkpoint>-phase<index>`` for those before it."""
    path = Path(checkpoint)
    return (
        path if index == n_phases - 1 else path.with_name(f"{path.stem}-phase{index}{path.suffix}")
    )


@functools.cache
def _compiled_client_step(client_update, batch: int = CLIENT_BATCH):
    """One jitted client step per algorithm, reused across runs of the same shapes.

    Vectorized over clients (``vmap``); above ``batch`` clients, over chunks of ``batch``
    clients in sequence (``lax.map``), so the step's intermediate arrays, and the
    memory and cache they take, stop growing with the number of clients.
    """

    def step(keys, broadcast, states, data):
        if keys.shape[0] <= batch:
            return jax.vmap(client_update)(keys, broadcast, states, data)
        return jax.lax.map(
            lambda args: client_update(*args), (keys, broadcast, states, data), batch_size=batch
        )

    return jax.jit(step)


@functools.cache
def compiled(fn):
    return jax.jit(fn)


def _save_checkpoint(path: Path, server_state, client_states, history) -> None:
    flat = {f"server{k}": v for k, v in encode(server_state).items()}
    flat.update({f"clients{k}": v for k, v in encode(client_states).items()})
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **flat)
    tmp.replace(path.with_suffix(".npz"))
    path.with_suffix(".json").write_text(json.dumps(history, indent=1))


def _load_checkpoint(path: Path, server_template, client_template):
    with np.load(path.with_suffix(".npz")) as z:
        flat = dict(z)
    server = decode({k[6:]: v for k, v in flat.items() if k.startswith("server")}, server_template)
    clients = decode(
        {k[7:]: v for k, v in flat.items() if k.startswith("clients")}, client_template
    )
    history = json.loads(path.with_suffix(".json").read_text())
    server = jax.tree.map(jnp.asarray, server)
    clients = jax.tree.map(jnp.asarray, clients)
    return server, clients, history
