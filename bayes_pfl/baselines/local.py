"""The two non-federated references: every client alone, and all rows pooled.

* **Local only**: each client trains its own model on its own rows, starting
  from the same initial model; nothing is communicated (the server only
  collects training metrics). Run by the usual driver so that its history
  looks like every other method's.
* **Pooled** (centralized): one model trained by full-batch optimization on
  the union of all clients' training rows, the upper reference a federation
  without privacy constraints could reach. It is not federated, so it runs as
  a plain ``lax.scan`` of optimizer steps without the driver.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from bayes_pfl.algorithms import Algorithm
from bayes_pfl.baselines.networks import Params
from bayes_pfl.baselines.training import (
    Baseline,
    ClientInfo,
    LocalTraining,
    Metrics,
    n_rows,
    own_models,
    server_info,
    weighted_average,
)

__all__ = ["LocalClientState", "LocalMessage", "build", "fit_pooled"]

Array = jax.Array


class LocalClientState(NamedTuple):
    params: Params
    stats: Params
    opt_state: Any  # kept across rounds: local training is one long run
    n: Array


class LocalMessage(NamedTuple):
    metrics: Metrics


def build(training: LocalTraining, init: tuple[Params, Params]) -> Baseline:
    """Local-only training as an :class:`~bayes_pfl.algorithms.Algorithm` (``local_steps`` per round)."""
    params0, stats0 = init
    tx = training.tx
    run = training.run_from_fn()

    def server_init(rng_key: Array, n_clients: int) -> Array:
        del rng_key
        return jnp.zeros(n_clients)  # nothing to hold; a placeholder with a client axis

    def broadcast(state: Array) -> Array:
        return state

    def client_init(rng_key: Array, data) -> LocalClientState:
        del rng_key
        return LocalClientState(dict(params0), dict(stats0), tx.init(dict(params0)), n_rows(data))

    def client_update(rng_key: Array, bcast: Array, state: LocalClientState, data):
        del rng_key, bcast
        params, stats, opt_state, (losses, accs) = run(
            state.params, state.stats, state.opt_state, data
        )
        metrics = Metrics(state.n, losses[0], accs[0])
        return (
            LocalClientState(params, stats, opt_state, state.n),
            LocalMessage(metrics),
            ClientInfo(losses[0]),
        )

    def server_update(rng_key: Array, state: Array, messages: LocalMessage, accept):
        del rng_key
        return state, server_info(messages.metrics, accept)

    def global_fn(state, clients: LocalClientState):
        # a new client has no model of its own: the row-weighted mean of the local models
        del state
        return (
            weighted_average(clients.params, clients.n, params0),
            weighted_average(clients.stats, clients.n, stats0),
        )

    algorithm = Algorithm(
        server_init, client_init, client_update, server_update, broadcast, "local"
    )
    return Baseline(algorithm, own_models, global_fn)


def fit_pooled(training: LocalTraining, init: tuple[Params, Params], data, *, rounds: int):
    """Full-batch training on every client's rows pooled: ``rounds`` blocks of
    ``training.local_steps`` steps.

    Returns ``(params, stats, losses, accuracies)``; the metrics are those of
    the model *before* each block of steps (one per "round").
    """
    x, y, mask = data
    pooled = (
        jnp.reshape(x, (-1, x.shape[-1])),
        jnp.reshape(y, (-1,)),
        jnp.reshape(mask, (-1,)),
    )
    record_every = training.local_steps
    run = training.run_from_fn(rounds * record_every)

    @jax.jit
    def train(params, stats, data):
        params, stats, _, (losses, accs) = run(params, stats, training.tx.init(params), data)
        return params, stats, losses[::record_every], accs[::record_every]

    return train(*init, pooled)
