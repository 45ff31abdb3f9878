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

from bayes_pfl.baselines import fedavg
from bayes_pfl.baselines.networks import Params
from bayes_pfl.baselines.training import (
    Baseline,
    LocalTraining,
    keep_where,
    own_models,
    prox_toward,
)

__all__ = ["DittoClientState", "build"]

Array = jax.Array


class DittoClientState(NamedTuple):
    shared: fedavg.FedAvgClientState  # the FedAvg part
    params: Params  # personal model v_k
    stats: Params


def build(training: LocalTraining, init: tuple[Params, Params], *, lam: float = 0.1) -> Baseline:
    """Build Ditto (see the module docstring); ``lam`` is the pull strength :math:`\\lambda`."""
    params0, stats0 = init
    base = fedavg.build(training, init, name="ditto")
    run = training.run_fn()
    strength = lam * training.learning_rate

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

    algorithm = base.algorithm._replace(client_init=client_init, client_update=client_update)
    return Baseline(algorithm, own_models, global_fn)
