r"""Clustered federated learning: clients are grouped and every group trains its own model.

Two ways to find the groups:

**Gradient-similarity clustering** (``"clustered"``; in the spirit of
Sattler, Müller & Samek 2021, *Clustered federated learning: model-agnostic
distributed multitask optimization under privacy constraints*, IEEE TNNLS,
and Briggs, Fan & Andras 2020, *Federated learning with hierarchical
clustering of local updates*, IJCNN). Everyone trains one model by FedAvg
until round ``cluster_round``. In that round every client also reports its
full-batch gradient at the common model it received; the server computes the
clients' pairwise cosine similarities and clusters the normalized gradients
by spherical k-means (farthest-first start, then Lloyd iterations). The
number of clusters is ``n_clusters`` if given, else the value in
``2..max_clusters`` with the best mean silhouette (cosine distance), or a
single cluster if that silhouette is below ``min_silhouette`` or two of
the clusters' mean gradient directions have a cosine similarity above
``max_similarity`` (Sattler et al. likewise split only when the clients'
gradients point apart). From then on
each cluster runs FedAvg on its own model, starting from the average of its
members' updates of the clustering round. Clients without rows join the
largest cluster. (Messages have static shapes, so every round's message carries the
gradient; the server reads it only in the clustering round, when every client
is sampled.)

**IFCA** (``"ifca"``; Ghosh, Chung, Yin & Ramchandran 2020, *An efficient
framework for clustered federated learning*, NeurIPS). The server keeps
``n_clusters`` models, started from different random initializations, and
sends all of them; every sampled client picks the one with the lowest loss
on its training rows, trains it and sends it back with its choice; the
server averages each model over the clients that chose it (a model nobody
chose is kept). Assignments are revisited every round.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from bayes_pfl.algorithms import Algorithm
from bayes_pfl.baselines import fedavg
from bayes_pfl.baselines.networks import Params
from bayes_pfl.baselines.training import (
    Baseline,
    ClientInfo,
    LocalTraining,
    Metrics,
    accepted_weight,
    client_metrics,
    n_rows,
    sample_active,
    server_info,
    stack_copies,
    take,
    weighted_average,
)

__all__ = [
    "ClusterServerState",
    "build_clustered",
    "build_ifca",
    "choose_clusters",
    "silhouette",
    "spherical_kmeans",
]

Array = jax.Array


class ClusterServerState(NamedTuple):
    params: Params  # [C, ...] one model per cluster
    stats: Params
    assignment: Array  # [K] int: the cluster each client belongs to (last choice for IFCA)
    sizes: Array  # [C] rows per cluster in the last round
    round: Array
    active: Array  # [K] clients sampled for the next round


class ClusterMessage(NamedTuple):
    params: Params
    stats: Params
    direction: Array  # clustered: flat gradient at the received model; IFCA: one-hot choice
    metrics: Metrics


class ClusterClientState(NamedTuple):
    n: Array


def _per_cluster_average(messages: ClusterMessage, weights: Array, onehot: Array, old: Params):
    """``old[c]`` replaced by the average of its members' models (weights ``weights * onehot[:, c]``)."""
    return jax.vmap(lambda w, prev: weighted_average(messages, w, prev), in_axes=(1, 0))(
        weights[:, None] * onehot, old
    )


def _cluster_models(messages: ClusterMessage, weights: Array, onehot: Array, old):
    """Per-cluster averages of the members' parameters and statistics, and each cluster's rows.

    ``onehot[k, c]`` says that client ``k`` belongs to cluster ``c``; a cluster
    without members keeps its model from ``old`` (a :class:`ClusterServerState`).
    """
    params = _per_cluster_average(messages.params, weights, onehot, old.params)
    stats = _per_cluster_average(messages.stats, weights, onehot, old.stats)
    return params, stats, weights @ onehot


def _largest_cluster(state: ClusterServerState, clients):
    """``global_fn`` of both methods: the model of the cluster with the most rows last round."""
    del clients
    return take((state.params, state.stats), jnp.argmax(state.sizes))


def spherical_kmeans(u: Array, valid: Array, n_clusters: int, iterations: int = 25) -> Array:
    """Cluster unit vectors ``u`` (``[K, D]``) by cosine similarity; returns ``[K]`` labels.

    Centres start farthest-first (the first valid row, then repeatedly the valid
    row least similar to every chosen centre), then Lloyd iterations. Invalid
    rows get the label of their most similar centre but never move a centre.
    """
    sims = u @ u.T
    first = jnp.argmax(valid)
    chosen = [first]
    best = jnp.where(valid, sims[first], jnp.inf)
    for _ in range(1, n_clusters):
        nxt = jnp.argmin(best)
        chosen.append(nxt)
        best = jnp.minimum(best, jnp.where(valid, sims[nxt], jnp.inf))
    centres = u[jnp.stack(chosen)]

    def lloyd(centres, _):
        labels = jnp.argmax(u @ centres.T, axis=1)
        onehot = (labels[:, None] == jnp.arange(n_clusters)) & valid[:, None]
        sums = onehot.T.astype(u.dtype) @ u
        norm = jnp.linalg.norm(sums, axis=1, keepdims=True)
        centres = jnp.where(norm > 0, sums / jnp.where(norm > 0, norm, 1.0), centres)
        return centres, None

    centres, _ = jax.lax.scan(lloyd, centres, None, length=iterations)
    return jnp.argmax(u @ centres.T, axis=1)


def silhouette(distance: Array, labels: Array, valid: Array, n_clusters: int) -> Array:
    """Mean silhouette of the valid rows for a ``[K, K]`` distance matrix (singletons score 0)."""
    onehot = ((labels[:, None] == jnp.arange(n_clusters)) & valid[:, None]).astype(distance.dtype)
    counts = onehot.sum(axis=0)  # [C]
    sums = distance @ onehot  # [K, C]: sum of distances to each cluster's members
    own = onehot[jnp.arange(labels.shape[0]), labels] > 0
    own_count = counts[labels] - own
    a = jnp.take_along_axis(sums, labels[:, None], axis=1)[:, 0] / jnp.maximum(own_count, 1)
    mean_other = jnp.where(
        (counts[None, :] > 0) & (jnp.arange(n_clusters)[None, :] != labels[:, None]),
        sums / jnp.maximum(counts[None, :], 1),
        jnp.inf,
    )
    b = jnp.min(mean_other, axis=1)
    s = jnp.where(
        (own_count > 0) & jnp.isfinite(b), (b - a) / jnp.maximum(jnp.maximum(a, b), 1e-12), 0.0
    )
    return jnp.sum(jnp.where(valid, s, 0.0)) / jnp.maximum(jnp.sum(valid), 1)


def _max_cross_similarity(u: Array, labels: Array, valid: Array, n_clusters: int) -> Array:
    """Largest cosine similarity between the mean directions of two different non-empty clusters."""
    onehot = ((labels[:, None] == jnp.arange(n_clusters)) & valid[:, None]).astype(u.dtype)
    sums = onehot.T @ u
    norm = jnp.linalg.norm(sums, axis=1, keepdims=True)
    centres = sums / jnp.where(norm > 0, norm, 1.0)
    present = onehot.sum(axis=0) > 0
    sims = centres @ centres.T
    pair = present[:, None] & present[None, :] & ~jnp.eye(n_clusters, dtype=bool)
    return jnp.max(jnp.where(pair, sims, -1.0))


@functools.partial(
    jax.jit, static_argnames=("n_clusters", "max_clusters", "min_silhouette", "max_similarity")
)
def choose_clusters(
    directions: Array,
    valid: Array,
    *,
    n_clusters: int | None,
    max_clusters: int,
    min_silhouette: float,
    max_similarity: float = 0.5,
) -> Array:
    """Cluster labels ``[K]`` from the clients' update directions (see the module docstring).

    With ``n_clusters=None`` the number of clusters maximizes the mean
    silhouette over ``2..max_clusters``; the split is kept only if that
    silhouette is at least ``min_silhouette`` *and* no two clusters' mean
    directions have a cosine similarity above ``max_similarity`` (silhouettes
    alone always find structure, even among nearly parallel gradients).
    """
    norm = jnp.linalg.norm(directions, axis=1, keepdims=True)
    u = directions / jnp.where(norm > 0, norm, 1.0)
    if n_clusters is not None:
        labels = spherical_kmeans(u, valid, n_clusters)
    else:
        distance = 1.0 - u @ u.T
        candidates = [spherical_kmeans(u, valid, c) for c in range(2, max_clusters + 1)]
        scores = jnp.stack([silhouette(distance, lab, valid, max_clusters) for lab in candidates])
        pick = jnp.argmax(scores)
        labels = jnp.stack(candidates)[pick]
        split = (scores[pick] >= min_silhouette) & (
            _max_cross_similarity(u, labels, valid, max_clusters) <= max_similarity
        )
        labels = jnp.where(split, labels, jnp.zeros_like(labels))
    c = max_clusters if n_clusters is None else n_clusters
    counts = jnp.sum((labels[:, None] == jnp.arange(c)) & valid[:, None], axis=0)
    return jnp.where(valid, labels, jnp.argmax(counts)).astype(jnp.int32)


def build_clustered(
    training: LocalTraining,
    init: tuple[Params, Params],
    *,
    n_clusters: int | None = None,
    max_clusters: int = 4,
    min_silhouette: float = 0.25,
    max_similarity: float = 0.5,
    cluster_round: int = 1,
) -> Baseline:
    """Gradient-similarity clustering followed by per-cluster FedAvg (see the module docstring)."""
    params0, stats0 = init
    c_max = n_clusters if n_clusters is not None else max_clusters
    loss_fn = training.loss_fn()
    grad_fn = jax.grad(lambda p, s, d: loss_fn(p, s, d)[0])
    run = training.run_fn(loss_fn)
    fraction = training.fraction

    def active_for(rng_key, n_clients, next_round):
        # every client answers in the clustering round
        return jnp.where(
            next_round == cluster_round, True, sample_active(rng_key, n_clients, fraction)
        )

    def server_init(rng_key: Array, n_clients: int) -> ClusterServerState:
        return ClusterServerState(
            stack_copies(params0, c_max),
            stack_copies(stats0, c_max),
            jnp.zeros(n_clients, jnp.int32),
            jnp.zeros(c_max),
            jnp.asarray(0, jnp.int32),
            active_for(rng_key, n_clients, 1),
        )

    def broadcast(state: ClusterServerState) -> fedavg.FedAvgBroadcast:
        return fedavg.FedAvgBroadcast(
            *take((state.params, state.stats), state.assignment), state.active
        )

    def client_init(rng_key: Array, data) -> ClusterClientState:
        del rng_key
        return ClusterClientState(n_rows(data))

    def client_update(
        rng_key: Array, bcast: fedavg.FedAvgBroadcast, state: ClusterClientState, data
    ):
        del rng_key
        direction, _ = ravel_pytree(grad_fn(bcast.params, bcast.stats, data))
        params, stats, (loss, acc) = run(bcast.params, bcast.stats, data)
        metrics = client_metrics(bcast.active, state.n, loss, acc)
        return state, ClusterMessage(params, stats, direction, metrics), ClientInfo(loss)

    def server_update(rng_key: Array, state: ClusterServerState, messages: ClusterMessage, accept):
        r = state.round + 1
        w = accepted_weight(messages.metrics, accept)
        found = choose_clusters(
            messages.direction,
            w > 0,
            n_clusters=n_clusters,
            max_clusters=max_clusters,
            min_silhouette=min_silhouette,
            max_similarity=max_similarity,
        )
        assignment = jnp.where(r == cluster_round, found, state.assignment)
        onehot = (assignment[:, None] == jnp.arange(c_max)).astype(w.dtype)
        params, stats, sizes = _cluster_models(messages, w, onehot, state)
        active = active_for(rng_key, w.shape[0], r + 1)
        new = ClusterServerState(params, stats, assignment, sizes, r, active)
        return new, server_info(messages.metrics, accept)

    def personal_fn(state: ClusterServerState, clients):
        del clients
        return take((state.params, state.stats), state.assignment)

    algorithm = Algorithm(
        server_init, client_init, client_update, server_update, broadcast, "clustered"
    )
    return Baseline(algorithm, personal_fn, _largest_cluster)


class IFCAClientState(NamedTuple):
    choice: Array  # the cluster chosen in the client's last round
    n: Array


def build_ifca(training: LocalTraining, inits: tuple[Params, Params]) -> Baseline:
    """IFCA (see the module docstring); ``inits`` holds one starting model per cluster ``[C, ...]``."""
    params0, stats0 = inits
    c = jax.tree.leaves(params0)[0].shape[0]
    loss_fn = training.loss_fn()
    run = training.run_fn(loss_fn)
    fraction = training.fraction

    def server_init(rng_key: Array, n_clients: int) -> ClusterServerState:
        return ClusterServerState(
            params0,
            stats0,
            jnp.zeros(n_clients, jnp.int32),
            jnp.zeros(c),
            jnp.asarray(0, jnp.int32),
            sample_active(rng_key, n_clients, fraction),
        )

    def client_init(rng_key: Array, data) -> IFCAClientState:
        del rng_key
        return IFCAClientState(jnp.asarray(0, jnp.int32), n_rows(data))

    def client_update(rng_key: Array, bcast: fedavg.FedAvgBroadcast, state: IFCAClientState, data):
        del rng_key
        losses = jax.vmap(lambda p, s: loss_fn(p, s, data)[0])(bcast.params, bcast.stats)
        choice = jnp.argmin(losses).astype(jnp.int32)
        params, stats, (loss, acc) = run(*take((bcast.params, bcast.stats), choice), data)
        onehot = (jnp.arange(c) == choice).astype(loss.dtype)
        metrics = client_metrics(bcast.active, state.n, loss, acc)
        new = IFCAClientState(jnp.where(bcast.active, choice, state.choice), state.n)
        return new, ClusterMessage(params, stats, onehot, metrics), ClientInfo(loss)

    def server_update(rng_key: Array, state: ClusterServerState, messages: ClusterMessage, accept):
        w = accepted_weight(messages.metrics, accept)
        onehot = messages.direction
        params, stats, sizes = _cluster_models(messages, w, onehot, state)
        chosen = jnp.argmax(onehot, axis=1).astype(jnp.int32)
        assignment = jnp.where(w > 0, chosen, state.assignment)
        active = sample_active(rng_key, w.shape[0], fraction)
        new = ClusterServerState(params, stats, assignment, sizes, state.round + 1, active)
        return new, server_info(messages.metrics, accept)

    def personal_fn(state: ClusterServerState, clients: IFCAClientState):
        # the model each client would pick now, by its last choice
        return take((state.params, state.stats), clients.choice)

    algorithm = Algorithm(
        server_init, client_init, client_update, server_update, fedavg.broadcast_copies, "ifca"
    )
    return Baseline(algorithm, personal_fn, _largest_cluster)
