r"""pFedHN: a server-side hypernetwork that writes each client's model.

Shamsian, Navon, Fetaya & Chechik 2021, *Personalized federated learning
using hypernetworks* (ICML). The server holds an MLP :math:`h_\varphi` that
maps a client descriptor :math:`d_k` to the client's full parameter vector,
:math:`\theta_k = \theta_0 + h_\varphi(d_k)` (:math:`\theta_0` the common
initial model; the output layer starts at zero, so :math:`\theta_k = \theta_0`
in round one). The descriptor is the client's standardized metadata vector
(brightness, site, device, ...) concatenated with a learned embedding
:math:`e_k` (``embedding_dim``; 8 without metadata, 0 with it, so that a model
depends on metadata alone).

A round: the server sends :math:`\theta_k`; the client runs ``local_steps``
optimizer steps from it and returns :math:`\Delta_k = \tilde\theta_k -
\theta_k`; the server descends the surrogate
:math:`\frac{1}{|S|}\sum_{k \in S} \langle h_\varphi(d_k), -\Delta_k \rangle`
(its gradient is pFedHN's :math:`-(\nabla_\varphi \theta_k)^\top \Delta_k`)
in :math:`\varphi` and the embeddings, with Adam at ``hn_lr``. Clients count
equally (pFedHN samples them uniformly). BatchNorm statistics stay with the
client.

Cold start: a new client described by metadata gets
:math:`\theta_0 + h_\varphi([\text{metadata}, \bar e])` (:math:`\bar e` the mean
learned embedding) without any training round; without metadata a new
client gets the model of the mean descriptor.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from bayes_pfl.algorithms import Algorithm
from bayes_pfl.baselines.networks import Params, build_network
from bayes_pfl.baselines.training import (
    Baseline,
    ClientInfo,
    LocalTraining,
    Metrics,
    client_metrics,
    keep_where,
    n_rows,
    sample_active,
    server_info,
    stack_copies,
    take,
    weighted_average,
)

__all__ = ["HyperServerState", "build"]

Array = jax.Array


class HyperServerState(NamedTuple):
    hn_params: Params  # the hypernetwork
    embeddings: Array  # [K, embedding_dim] learned client embeddings
    opt_state: Any
    active: Array


class HyperBroadcast(NamedTuple):
    params: Params  # theta_k
    active: Array


class HyperClientState(NamedTuple):
    stats: Params  # BatchNorm statistics (local)
    n: Array


class HyperMessage(NamedTuple):
    delta: Array  # flat theta_k after local training minus theta_k
    metrics: Metrics


def build(
    training: LocalTraining,
    init: tuple[Params, Params],
    *,
    metadata: Array | None,
    embedding_dim: int | None = None,
    hn_hidden: int | tuple[int, ...] = (64,),
    hn_lr: float = 0.01,
    seed: int = 0,
) -> Baseline:
    """Build pFedHN (see the module docstring).

    ``metadata`` is the standardized ``[K, m]`` metadata of the training
    clients (server-side knowledge, like the clients' labels), or ``None``.
    """
    params0, stats0 = init
    flat0, unravel = ravel_pytree(params0)
    m = 0 if metadata is None else metadata.shape[1]
    e = (0 if m else 8) if embedding_dim is None else int(embedding_dim)
    if m + e == 0:
        raise ValueError("hypernet needs metadata or embedding_dim > 0")
    hnet = build_network("mlp", m + e, flat0.shape[0], hidden=hn_hidden)
    hn0, _ = hnet.init(seed + 1)
    server_tx = optax.adam(hn_lr)
    fraction = training.fraction
    run = training.run_fn()

    def descriptors(meta: Array | None, emb: Array) -> Array:
        return emb if meta is None else jnp.concatenate([meta.astype(emb.dtype), emb], axis=1)

    def hn_output(hn_params: Params, desc: Array) -> Array:
        out, _ = hnet.apply(hn_params, {}, desc, jnp.ones(desc.shape[0], bool), False)
        return out

    def generate(hn_params: Params, desc: Array) -> Params:
        return jax.vmap(unravel)(flat0 + hn_output(hn_params, desc))

    def server_init(rng_key: Array, n_clients: int) -> HyperServerState:
        k_emb, k_act = jax.random.split(rng_key)
        emb = jax.random.normal(k_emb, (n_clients, e), flat0.dtype)
        return HyperServerState(
            hn0, emb, server_tx.init((hn0, emb)), sample_active(k_act, n_clients, fraction)
        )

    def broadcast(state: HyperServerState) -> HyperBroadcast:
        return HyperBroadcast(
            generate(state.hn_params, descriptors(metadata, state.embeddings)), state.active
        )

    def client_init(rng_key: Array, data) -> HyperClientState:
        del rng_key
        return HyperClientState(dict(stats0), n_rows(data))

    def client_update(rng_key: Array, bcast: HyperBroadcast, state: HyperClientState, data):
        del rng_key
        params, stats, (loss, acc) = run(bcast.params, state.stats, data)
        delta = ravel_pytree(params)[0] - ravel_pytree(bcast.params)[0]
        new = HyperClientState(keep_where(bcast.active, stats, state.stats), state.n)
        metrics = client_metrics(bcast.active, state.n, loss, acc)
        return new, HyperMessage(delta, metrics), ClientInfo(loss)

    def server_update(rng_key: Array, state: HyperServerState, messages: HyperMessage, accept):
        use = (accept & (messages.metrics.weight > 0)).astype(flat0.dtype)
        delta = jnp.where(use[:, None] > 0, messages.delta, 0.0)

        def surrogate(variables):
            hn_params, emb = variables
            out = hn_output(hn_params, descriptors(metadata, emb))
            return -jnp.sum(out * jax.lax.stop_gradient(delta)) / jnp.maximum(jnp.sum(use), 1.0)

        variables = (state.hn_params, state.embeddings)
        grads = jax.grad(surrogate)(variables)
        updates, opt_state = server_tx.update(grads, state.opt_state, variables)
        hn_params, emb = optax.apply_updates(variables, updates)
        active = sample_active(rng_key, state.active.shape[0], fraction)
        new = HyperServerState(hn_params, emb, opt_state, active)
        return new, server_info(messages.metrics, accept)

    def personal_fn(state: HyperServerState, clients: HyperClientState):
        return generate(state.hn_params, descriptors(metadata, state.embeddings)), clients.stats

    def mean_stats(clients: HyperClientState):
        return weighted_average(clients.stats, clients.n, stats0)

    def cold_start_fn(state: HyperServerState, clients: HyperClientState, new_metadata):
        n_new = 1 if new_metadata is None else new_metadata.shape[0]
        emb = jnp.broadcast_to(jnp.mean(state.embeddings, axis=0), (n_new, e))
        if metadata is not None and new_metadata is None:
            new_metadata = jnp.zeros((n_new, m))  # the mean client (metadata are standardized)
        params = generate(state.hn_params, descriptors(new_metadata, emb))
        return params, stack_copies(mean_stats(clients), n_new)

    def global_fn(state: HyperServerState, clients: HyperClientState):
        return take(cold_start_fn(state, clients, None), 0)

    algorithm = Algorithm(
        server_init, client_init, client_update, server_update, broadcast, "hypernet"
    )
    return Baseline(algorithm, personal_fn, global_fn, cold_start_fn)
