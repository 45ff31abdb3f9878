r"""pFedMe: personalized models as Moreau-envelope proximal points of the global model.

T. Dinh, Tran & Nguyen 2020, *Personalized federated learning with Moreau
envelopes* (NeurIPS). Client :math:`k` minimizes the Moreau envelope
:math:`F_k(w) = \min_\theta L_k(\theta) + \frac{\lambda}{2}\|\theta - w\|^2`;
its personal model is the minimizer :math:`\theta_k(w)`. Each of the client's
``local_steps`` steps:

1. approximates :math:`\theta_k` by ``inner_steps`` proximal-gradient steps
   (a gradient step on :math:`L_k` at rate ``personal_lr`` followed by the exact
   proximal step of the pull toward its local copy :math:`w_k`), warm-started
   from the previous :math:`\theta_k` (kept across rounds);
2. moves the local copy: :math:`w_k \leftarrow w_k - \eta\lambda(w_k - \theta_k)`
   (:math:`\lambda(w_k - \theta_k) = \nabla F_k(w_k)`).

The server sets :math:`w \leftarrow (1-\beta) w + \beta \bar w` with
:math:`\bar w` the row-weighted mean of the clients' :math:`w_k`.

Limits: :math:`\lambda = 0` is local-only training with
``local_steps * inner_steps`` steps per round (the global model never moves);
:math:`\lambda \to \infty` gives :math:`\theta_k = w_k - \nabla L_k(\theta_k)/\lambda \to w_k`
and :math:`w_k \leftarrow w_k - \eta \nabla L_k(w_k)`: FedAvg with rate :math:`\eta`.
Using proximal-gradient inner steps (instead of gradient steps on the
regularized objective) keeps large :math:`\lambda` stable.
"""

from __future__ import annotations

from typing import NamedTuple

import jax

from bayes_pfl.baselines import fedavg
from bayes_pfl.baselines.networks import Params
from bayes_pfl.baselines.training import (
    Baseline,
    ClientInfo,
    LocalTraining,
    client_metrics,
    keep_where,
    n_rows,
    own_models,
    prox_toward,
    server_models,
)

__all__ = ["PFedMeClientState", "build"]

Array = jax.Array


class PFedMeClientState(NamedTuple):
    params: Params  # personal model theta_k
    stats: Params
    n: Array


def build(
    training: LocalTraining,
    init: tuple[Params, Params],
    *,
    lam: float = 15.0,
    inner_steps: int = 5,
    beta: float = 1.0,
    personal_lr: float | None = None,
) -> Baseline:
    """Build pFedMe (see the module docstring).

    ``training.tx`` drives the inner steps on :math:`\\theta_k` (at rate ``personal_lr``,
    default ``training.learning_rate``, when built by
    :func:`~bayes_pfl.baselines.fit_baseline`); ``training.learning_rate`` is the
    outer rate :math:`\\eta`.
    """
    params0, stats0 = init
    learning_rate, local_steps = training.learning_rate, training.local_steps
    personal_lr = learning_rate if personal_lr is None else personal_lr
    run = training.run_fn(steps=inner_steps)
    pull = personal_lr * lam
    base = fedavg.build(training, init, name="pfedme")

    def client_init(rng_key: Array, data) -> PFedMeClientState:
        del rng_key
        return PFedMeClientState(dict(params0), dict(stats0), n_rows(data))

    def client_update(
        rng_key: Array, bcast: fedavg.FedAvgBroadcast, state: PFedMeClientState, data
    ):
        del rng_key

        def outer(carry, _):
            w, theta, stats = carry
            theta, stats, metrics = run(theta, stats, data, lambda t: prox_toward(t, w, pull))
            w = jax.tree.map(lambda a, b: a - learning_rate * lam * (a - b), w, theta)
            return (w, theta, stats), metrics

        (w, theta, stats), (losses, accs) = jax.lax.scan(
            outer, (bcast.params, state.params, state.stats), None, length=local_steps
        )
        kept = keep_where(bcast.active, (theta, stats), (state.params, state.stats))
        metrics = client_metrics(bcast.active, state.n, losses[0], accs[0])
        stats_msg = {k: v for k, v in stats.items() if k in bcast.stats}
        return (
            PFedMeClientState(*kept, state.n),
            fedavg.FedAvgMessage(w, stats_msg, metrics),
            ClientInfo(losses[0]),
        )

    def mix(old, mean):
        return jax.tree.map(lambda a, b: (1.0 - beta) * a + beta * b, old, mean)

    algorithm = base.algorithm._replace(
        client_init=client_init,
        client_update=client_update,
        server_update=fedavg.server_update_fn(training.fraction, mix),
    )
    return Baseline(algorithm, own_models, server_models)
