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
    "NoClientContributed",
    "SimulationResult",
    "check_messages",
    "message_nbytes",
    "row_buckets",
    "run_rounds",
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


def _bucket_parts(data: tuple, mask, bucket: bool = True) -> list[tuple[np.ndarray, tuple]]:
    """``[(client indices, their arrays trimmed to the bucket's rows), ...]``.

    One part holding every client, arrays untouched, unless ``bucket`` and
    :func:`row_buckets` finds a grouping that pays for its extra compiled shapes.
    """
    buckets = row_buckets(mask) if bucket else []
    if len(buckets) <= 1:
        return [(np.arange(np.shape(mask)[0]), data)]
    return [(idx, tuple(_take(a, idx, rows) for a in data)) for idx, rows in buckets]


def _bucketed(step, parts: list[tuple[np.ndarray, tuple]], keys, per_client: tuple):
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


def run_rounds(
    algorithm: Algorithm,
    data,
    *,
    rounds: int,
    labels,
    seed: int = 0,
    participating: np.ndarray | None = None,
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

    labels = list(labels)
    k = len(labels)
    arrays = jax.tree.map(jnp.asarray, tuple(data))
    if participating is None:
        participating = np.asarray(data.mask).sum(axis=1) > 0
    participating = np.asarray(participating, bool)
    key = jax.random.key(seed)
    server_state = algorithm.server_init(jax.random.fold_in(key, 0), k)
    client_states = jax.vmap(algorithm.client_init)(jax.random.split(key, k), arrays)
    if init is not None:
        server_state, client_states = init
    history: list[dict[str, Any]] = []
    start_round = 0
    ckpt = Path(checkpoint) if checkpoint is not None else None
    if ckpt is not None and resume and ckpt.with_suffix(".npz").exists():
        server_state, client_states, history = _load_checkpoint(ckpt, server_state, client_states)
        start_round = len(history)
    broadcast_step = _compiled(algorithm.broadcast)
    broadcast = broadcast_step(server_state)

    client_step = _compiled_client_step(algorithm.client_update, int(client_batch))
    parts = _bucket_parts(arrays, data.mask, bucket_rows)  # trimmed once per run
    server_step = _compiled(algorithm.server_update)
    converged = bool(history and history[-1].get("converged", False))
    bar = tqdm(
        range(start_round, rounds),
        disable=not progress,
        desc=f"{algorithm.name} rounds",
        unit="round",
        initial=start_round,
        total=rounds,
    )
    contributed = np.zeros(k, bool)
    for r in bar:
        if converged and stop_when_converged:
            break
        t0 = time.perf_counter()
        rkey = jax.random.fold_in(key, r + 1)
        ckeys = jax.random.split(jax.random.fold_in(rkey, 1), k)
        client_states_new, messages, cinfo = _bucketed(
            client_step, parts, ckeys, (broadcast, client_states)
        )
        messages = jax.block_until_ready(messages)
        ok, reasons = check_messages(messages, labels)
        if reasons:
            warnings.warn(
                f"round {r + 1}: rejected messages from {len(reasons)} client(s): "
                + "; ".join(f"{lab!r}: {why}" for lab, why in reasons.items()),
                stacklevel=2,
            )
        local_ok = np.asarray(getattr(messages, "ok", np.ones(k, bool)), bool)
        failed = [labels[i] for i in np.flatnonzero(~local_ok & ok & participating)]
        if failed and r > 0:
            # in round 1 clients may lack a local mode (e.g. one row, unidentified scale)
            warnings.warn(
                f"round {r + 1}: local inference failed on {len(failed)} client(s), their "
                "previous contribution is kept: " + ", ".join(repr(lab) for lab in failed[:20]),
                stacklevel=2,
            )
        contributed |= ok & local_ok & participating
        accept = jnp.asarray(ok & participating)
        client_states = select_clients(accept, client_states_new, client_states)
        bytes_down = message_nbytes(broadcast, k)
        server_state, sinfo = server_step(
            jax.random.fold_in(rkey, 2), server_state, messages, accept
        )
        server_state = off_devices(server_state)  # chains on several devices: back to one
        broadcast = jax.block_until_ready(broadcast_step(server_state))
        entry = {
            "round": r + 1,
            "wall_time_s": time.perf_counter() - t0,
            "bytes_up_per_client": message_nbytes(messages, k),
            "bytes_down_per_client": bytes_down,
            "n_rejected": len(reasons),
            "rejected": [str(lab) for lab in reasons],
            "failed": [str(lab) for lab in failed],
            **_scalars(sinfo),
            **_scalars(cinfo, "client_"),
        }
        history.append(entry)
        converged = bool(entry.get("converged", False))
        if progress:
            bar.set_postfix(
                {
                    key_: f"{entry[key_]:.2g}"
                    for key_ in ("mean_change", "sd_change")
                    if key_ in entry
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
    return SimulationResult(server_state, client_states, history, converged, len(history))


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
def _compiled(fn):
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
