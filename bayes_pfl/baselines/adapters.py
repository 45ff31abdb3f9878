r"""Low-rank residual adapters: a shared model plus a small personal correction per client.

Client :math:`k` uses :math:`W + A_k B_k` for every weight matrix :math:`W`
(:math:`A_k` of shape ``(in, rank)``, :math:`B_k` of shape ``(rank, out)``) and
:math:`b + s_k` for every bias or BatchNorm vector, as LoRA does for
fine-tuning (Hu et al. 2022, *LoRA: Low-rank adaptation of large language
models*, ICLR) and personalized FL variants of it do per client. Each round a
sampled client trains the shared model and its adapter jointly for
``local_steps`` steps; every step is followed by the proximal step of
:math:`\frac{\gamma}{2}(\|A_k\|^2 + \|B_k\|^2 + \|s_k\|^2)`, which shrinks the
adapter toward zero (:math:`\gamma` = ``adapter_strength``). The shared model
is averaged as in FedAvg; the adapter never leaves the client.

:math:`\gamma \to \infty` forces the adapters to zero: FedAvg. :math:`A_k`
starts random (scale ``1/sqrt(in)``) and :math:`B_k` at zero, so the
correction starts at exactly zero.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from bayes_pfl.baselines import fedavg
from bayes_pfl.baselines.networks import Params
from bayes_pfl.baselines.training import (
    Baseline,
    ClientInfo,
    LocalTraining,
    client_metrics,
    keep_where,
    n_rows,
    server_models,
    shrink,
    stack_copies,
)

__all__ = ["AdapterClientState", "adapted", "build"]

Array = jax.Array


class AdapterClientState(NamedTuple):
    adapter: Params  # "{key}.down", "{key}.up" per matrix, "{key}.shift" per vector
    n: Array


def adapted(params: Params, adapter: Params) -> Params:
    """The client's effective parameters: ``W + down @ up`` and ``b + shift``."""
    out = {}
    for k, w in params.items():
        if w.ndim == 2:
            out[k] = w + adapter[f"{k}.down"] @ adapter[f"{k}.up"]
        else:
            out[k] = w + adapter[f"{k}.shift"]
    return out


def build(
    training: LocalTraining,
    init: tuple[Params, Params],
    *,
    rank: int = 2,
    adapter_strength: float = 0.1,
) -> Baseline:
    """Build the adapter method (see the module docstring)."""
    params0, stats0 = init
    base = fedavg.build(training, init, name="adapters")
    run = training.run_fn(training.loss_fn(to_params=lambda z: adapted(z["shared"], z["adapter"])))
    strength = adapter_strength * training.learning_rate

    def post(z):
        return {"shared": z["shared"], "adapter": shrink(z["adapter"], strength)}

    def client_init(rng_key: Array, data) -> AdapterClientState:
        adapter = {}
        for i, (k, w) in enumerate(sorted(params0.items())):
            if w.ndim == 2:
                r = min(rank, *w.shape)
                key = jax.random.fold_in(rng_key, i)
                adapter[f"{k}.down"] = jax.random.normal(key, (w.shape[0], r), w.dtype) / jnp.sqrt(
                    w.shape[0]
                )
                adapter[f"{k}.up"] = jnp.zeros((r, w.shape[1]), w.dtype)
            else:
                adapter[f"{k}.shift"] = jnp.zeros_like(w)
        return AdapterClientState(adapter, n_rows(data))

    def client_update(
        rng_key: Array, bcast: fedavg.FedAvgBroadcast, state: AdapterClientState, data
    ):
        del rng_key
        z = {"shared": bcast.params, "adapter": state.adapter}
        z, stats, (loss, acc) = run(z, bcast.stats, data, post)
        adapter = keep_where(bcast.active, z["adapter"], state.adapter)
        metrics = client_metrics(bcast.active, state.n, loss, acc)
        message = fedavg.FedAvgMessage(z["shared"], stats, metrics)
        return AdapterClientState(adapter, state.n), message, ClientInfo(loss)

    def personal_fn(state: fedavg.FedAvgServerState, clients: AdapterClientState):
        params = jax.vmap(adapted, in_axes=(None, 0))(state.params, clients.adapter)
        return params, stack_copies(state.stats, clients.n.shape[0])

    algorithm = base.algorithm._replace(client_init=client_init, client_update=client_update)
    return Baseline(algorithm, personal_fn, server_models)
