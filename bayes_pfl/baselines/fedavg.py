r"""FedAvg, FedProx, FedBN and FedPer: one algorithm that averages some leaves and keeps the rest.

Every round the server sends its model; each sampled client copies the
*shared* leaves into its own model, runs ``local_steps`` optimizer steps on its
full training batch and returns the shared leaves; the server replaces them by
their average weighted by the clients' row counts. The leaves that are not
shared stay with the client and form its personal model. Which leaves are
shared is a structural choice (by :attr:`~bayes_pfl.baselines.networks.Network.roles`):

* **FedAvg** (McMahan et al. 2017, *Communication-efficient learning of deep
  networks from decentralized data*, AISTATS): everything, BatchNorm
  statistics included.
* **FedProx** (Li et al. 2020, *Federated optimization in heterogeneous
  networks*, MLSys): everything, and each local step is followed by the
  proximal step of :math:`\frac{\mu}{2}\|w - w_{\text{global}}\|^2`
  (:func:`~bayes_pfl.baselines.training.prox_toward`), i.e. proximal gradient
  descent on FedProx's local objective; :math:`\mu = 0` is FedAvg.
* **FedBN** (Li et al. 2021, *FedBN: Federated learning on non-IID features
  via local batch normalization*, ICLR): everything but BatchNorm's scale,
  bias and running statistics.
* **FedPer** (Arivazhagan et al. 2019, *Federated learning with
  personalization layers*, arXiv:1912.00818): the body; the head stays local.
  On a GLM the body is the slopes and the head the intercept.

With one local step of plain gradient descent and every client sampled, a
FedAvg round is exactly one step of centralized gradient descent on the pooled
mean loss: :math:`\sum_k \frac{n_k}{N}(w - \eta \nabla L_k(w)) = w - \eta
\nabla \frac{1}{N}\sum_k n_k L_k(w)`.

Client sampling: before every round the server draws
``max(1, round(fraction * K))`` clients uniformly without replacement (from
the driver's seeded round key); the others neither train nor count.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax

from bayes_pfl.algorithms import Algorithm
from bayes_pfl.baselines.networks import Params
from bayes_pfl.baselines.training import (
    Baseline,
    ClientInfo,
    LocalTraining,
    Metrics,
    accepted_weight,
    client_metrics,
    keep_where,
    n_rows,
    prox_toward,
    sample_active,
    server_info,
    stack_copies,
    weighted_average,
)

__all__ = [
    "SHARED_ROLES",
    "FedAvgBroadcast",
    "FedAvgClientState",
    "FedAvgMessage",
    "FedAvgServerState",
    "broadcast_copies",
    "build",
    "server_update_fn",
]

Array = jax.Array

SHARED_ROLES = {
    "fedavg": ("body", "head", "norm", "stat"),
    "fedprox": ("body", "head", "norm", "stat"),
    "fedbn": ("body", "head"),
    "fedper": ("body", "norm", "stat"),
}
"""Roles of the leaves each method averages at the server."""


class FedAvgServerState(NamedTuple):
    params: Params  # shared parameter leaves
    stats: Params  # shared BatchNorm statistics
    active: Array  # [K] clients sampled for the next round


class FedAvgClientState(NamedTuple):
    params: Params  # the client's whole last local model (its private leaves are personal)
    stats: Params
    n: Array  # training rows


class FedAvgBroadcast(NamedTuple):
    params: Params  # one client's model (clustered: its cluster's; IFCA: all models [C, ...])
    stats: Params
    active: Array


class FedAvgMessage(NamedTuple):
    params: Params
    stats: Params
    metrics: Metrics


def _split(tree: Params, keys) -> Params:
    return {k: v for k, v in tree.items() if k in keys}


def broadcast_copies(state: FedAvgServerState) -> FedAvgBroadcast:
    """FedAvg's ``broadcast``: every client gets copies of the server's ``params`` and
    ``stats`` and the sampled set ``active`` (IFCA's too: all cluster models)."""
    k = state.active.shape[0]
    return FedAvgBroadcast(*stack_copies((state.params, state.stats), k), state.active)


def server_update_fn(fraction: float, combine: Callable[[Params, Params], Params] | None = None):
    """FedAvg's ``server_update``: the shared leaves averaged over the accepted clients' messages.

    ``combine(old, mean) -> params`` sets the shared parameters from the old
    ones and the average (default: the average); BatchNorm statistics are
    always averaged. Then the clients of the next round are sampled.
    """

    def server_update(rng_key: Array, state: FedAvgServerState, messages: FedAvgMessage, accept):
        w = accepted_weight(messages.metrics, accept)
        params = weighted_average(messages.params, w, state.params)
        if combine is not None:
            params = combine(state.params, params)
        stats = weighted_average(messages.stats, w, state.stats)
        active = sample_active(rng_key, state.active.shape[0], fraction)
        return FedAvgServerState(params, stats, active), server_info(messages.metrics, accept)

    return server_update


def build(
    training: LocalTraining,
    init: tuple[Params, Params],
    *,
    shared_roles=SHARED_ROLES["fedavg"],
    mu: float = 0.0,
    name: str = "fedavg",
) -> Baseline:
    """Build the partial-sharing algorithm (see the module docstring).

    Parameters
    ----------
    training : LocalTraining
        The model, the local optimizer (a fresh state every round), the local
        steps, the weight decay and the fraction of clients sampled per round.
    init : (params, stats)
        Starting model, the same for every client.
    shared_roles : tuple of str
        Roles of the averaged leaves (:data:`SHARED_ROLES`).
    mu : float, default 0.0
        FedProx proximal strength (0: FedAvg); the proximal step is
        ``mu * training.learning_rate``.
    name : str
        The algorithm's name.
    """
    params0, stats0 = init
    roles = training.network.roles
    shared_p = tuple(k for k in params0 if roles[k] in shared_roles)
    shared_s = tuple(k for k in stats0 if roles[k] in shared_roles)
    fraction = training.fraction
    run = training.run_fn()
    strength = mu * training.learning_rate

    def server_init(rng_key: Array, n_clients: int) -> FedAvgServerState:
        return FedAvgServerState(
            _split(params0, shared_p),
            _split(stats0, shared_s),
            sample_active(rng_key, n_clients, fraction),
        )

    def client_init(rng_key: Array, data) -> FedAvgClientState:
        del rng_key
        return FedAvgClientState(dict(params0), dict(stats0), n_rows(data))

    def client_update(rng_key: Array, bcast: FedAvgBroadcast, state: FedAvgClientState, data):
        del rng_key
        params = {**state.params, **bcast.params}
        stats = {**state.stats, **bcast.stats}
        post = (lambda z: prox_toward(z, bcast.params, strength)) if mu > 0 else None
        new_params, new_stats, (loss, acc) = run(params, stats, data, post)
        kept = keep_where(bcast.active, (new_params, new_stats), (state.params, state.stats))
        metrics = client_metrics(bcast.active, state.n, loss, acc)
        message = FedAvgMessage(_split(new_params, shared_p), _split(new_stats, shared_s), metrics)
        return FedAvgClientState(*kept, state.n), message, ClientInfo(loss)

    def personal_fn(state: FedAvgServerState, clients: FedAvgClientState):
        k = clients.n.shape[0]
        return (
            {**clients.params, **stack_copies(state.params, k)},
            {**clients.stats, **stack_copies(state.stats, k)},
        )

    def global_fn(state: FedAvgServerState, clients: FedAvgClientState):
        # private leaves of a new client: the row-weighted mean of the clients' own
        own_p = {k: v for k, v in clients.params.items() if k not in shared_p}
        own_s = {k: v for k, v in clients.stats.items() if k not in shared_s}
        zero_p = {k: params0[k] for k in own_p}
        zero_s = {k: stats0[k] for k in own_s}
        return (
            {**weighted_average(own_p, clients.n, zero_p), **state.params},
            {**weighted_average(own_s, clients.n, zero_s), **state.stats},
        )

    server_update = server_update_fn(fraction)
    algorithm = Algorithm(
        server_init, client_init, client_update, server_update, broadcast_copies, name
    )
    return Baseline(algorithm, personal_fn, global_fn)
