r"""Ditto: a global model by FedAvg and a personal model pulled toward it.

Li, Hu, Beirami & Smith 2021, *Ditto: Fair and robust federated learning
through personalization* (ICML). Each sampled client runs two local
problems per round, both from what the server sent:

* the global one, exactly as FedAvg (its update is averaged at the server);
* its personal model :math:`v_k`, kept across rounds, for
  :math:`\min_v L_k(v) + \frac{\lambda}{2}\|v - w\|^2` with :math:`w` the
  global model of this round: ``local_steps`` optimizer steps on
  :math:`L_k`, each followed by the exact proximal step of the pull
  (:func:`~bayes_pfl.baselines.training.prox_toward`).

Limits: :math:`\lambda = 0` is local-only training (same start, same steps);
:math:`\lambda \to \infty` sets :math:`v_k` to the global model after every
step, so the personal models become the FedAvg model.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import optax

from bayes_pfl.algorithms import Algorithm
from bayes_pfl.baselines import fedavg
from bayes_pfl.baselines.networks import Family, Network, Params
from bayes_pfl.baselines.training import (
    Baseline,
    client_loss_fn,
    keep_where,
    local_steps_fn,
    own_models,
    prox_toward,
)

__all__ = ["DittoClientState", "build"]

Array = jax.Array


class DittoClientState(NamedTuple):
    shared: fedavg.FedAvgClientState  # the FedAvg part
    params: Params  # personal model v_k
    stats: Params


def build(
    network: Network,
    family: Family,
    init: tuple[Params, Params],
    *,
    tx: optax.GradientTransformation,
    local_steps: int = 5,
    lam: float = 0.1,
    learning_rate: float = 0.05,
    fraction: float = 1.0,
    weight_decay: float = 0.0,
) -> Baseline:
    """Build Ditto (see the module docstring); ``lam`` is the pull strength :math:`\\lambda`."""
    params0, stats0 = init
    base = fedavg.build(
        network,
        family,
        init,
        tx=tx,
        local_steps=local_steps,
        fraction=fraction,
        weight_decay=weight_decay,
        name="ditto",
    )
    run = local_steps_fn(client_loss_fn(network, family, weight_decay), tx, family, local_steps)
    strength = lam * learning_rate

    def client_init(rng_key: Array, data) -> DittoClientState:
        return DittoClientState(
            base.algorithm.client_init(rng_key, data), dict(params0), dict(stats0)
        )

    def client_update(rng_key: Array, bcast: fedavg.FedAvgBroadcast, state: DittoClientState, data):
        shared, message, info = base.algorithm.client_update(rng_key, bcast, state.shared, data)
        params, stats, _ = run(
            state.params, state.stats, data, lambda v: prox_toward(v, bcast.params, strength)
        )
        kept = keep_where(bcast.active, (params, stats), (state.params, state.stats))
        return DittoClientState(shared, *kept), message, info

    def global_fn(state, clients: DittoClientState):
        return base.global_fn(state, clients.shared)

    a = base.algorithm
    algorithm = Algorithm(
        a.server_init, client_init, client_update, a.server_update, a.broadcast, "ditto"
    )
    return Baseline(algorithm, own_models, global_fn)
