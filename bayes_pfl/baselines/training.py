"""Pieces every baseline shares: the masked client loss, a scan of local optimizer steps,
proximal pulls toward an anchor, weighted averaging at the server, client sampling, and
the small tree operations on client and server states the algorithms have in common.

All functions are pure and work on one client (no client axis); the driver vmaps them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from bayes_pfl.baselines.networks import Family, Network, Params, masked_mean_loss

__all__ = [
    "OPTIMIZERS",
    "Baseline",
    "ClientInfo",
    "LocalTraining",
    "Metrics",
    "ServerInfo",
    "accepted_weight",
    "accuracy_of",
    "client_loss_fn",
    "client_metrics",
    "evaluate",
    "keep_where",
    "local_steps_fn",
    "make_optimizer",
    "n_rows",
    "optimizer_steps_fn",
    "own_models",
    "prox_toward",
    "sample_active",
    "server_info",
    "server_models",
    "shrink",
    "stack_copies",
    "take",
    "weighted_average",
]

Array = jax.Array
OPTIMIZERS = ("sgd", "adam")


class Baseline(NamedTuple):
    """An :class:`~bayes_pfl.algorithms.Algorithm` and how to read models out of its states.

    ``personal_fn(server_state, client_states) -> (params, stats)`` stacked on
    the client axis: the model each client uses. ``global_fn(server_state,
    client_states) -> (params, stats)``: the model a new client starts from.
    ``cold_start_fn(server_state, client_states, metadata) -> (params, stats)``
    stacked over the rows of ``metadata``: models for new clients described by
    metadata (hypernetwork only).
    """

    algorithm: Any
    personal_fn: Callable[[Any, Any], tuple[Params, Params]]
    global_fn: Callable[[Any, Any], tuple[Params, Params]]
    cold_start_fn: Callable[[Any, Any, Any], tuple[Params, Params]] | None = None


class Metrics(NamedTuple):
    """What a client reports besides its model: its weight and its training fit."""

    weight: Array  # rows that count at the server (0 when not sampled this round)
    loss: Array  # mean training loss at the model it received
    accuracy: Array  # training accuracy at the model it received (0 for regression)


class ClientInfo(NamedTuple):
    loss: Array


class ServerInfo(NamedTuple):
    loss: Array  # weighted mean training loss over the accepted, sampled clients
    accuracy: Array
    n_active: Array  # clients whose update entered the server model


def make_optimizer(name: str, learning_rate: float) -> optax.GradientTransformation:
    """``optax.sgd`` (plain gradient descent) or ``optax.adam`` at ``learning_rate``."""
    if name == "sgd":
        return optax.sgd(learning_rate)
    if name == "adam":
        return optax.adam(learning_rate)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {OPTIMIZERS}")


def client_loss_fn(
    network: Network,
    family: Family,
    weight_decay: float = 0.0,
    to_params: Callable[[Any], Params] | None = None,
):
    """``loss(z, stats, data) -> (loss, (new_stats, eta))`` for one client, in train mode.

    ``z`` are the trainable variables, turned into network parameters by
    ``to_params`` (identity by default). BatchNorm statistics use the client's
    real rows; a client without rows uses its (zero) padding instead, so that
    nothing divides by zero, and contributes a zero loss and zero gradient.
    """

    def loss(z, stats, data):
        x, y, mask = data
        params = z if to_params is None else to_params(z)
        bn_mask = jnp.where(jnp.any(mask), mask, True)
        eta, new_stats = network.apply(params, stats, x, bn_mask, True)
        value = masked_mean_loss(family, eta, y, mask)
        if weight_decay:
            value = value + 0.5 * weight_decay * sum(jnp.sum(p**2) for p in jax.tree.leaves(params))
        return value, (new_stats, eta)

    return loss


def accuracy_of(family: Family, eta: Array, y: Array, mask: Array) -> Array:
    if family.correct is None:  # regression: no accuracy (0, as messages must stay finite)
        return jnp.zeros((), eta.dtype)
    hits = jnp.sum(jnp.where(mask, family.correct(eta, y), False))
    return hits / jnp.maximum(jnp.sum(mask), 1)


def optimizer_steps_fn(loss_fn, tx: optax.GradientTransformation, family: Family, steps: int):
    """``run(z, stats, opt_state, data, post_fn=None) -> (z, stats, opt_state, (losses, accuracies))``.

    ``steps`` optimizer steps on the client's full batch (``lax.scan``) from
    the optimizer state ``opt_state``; ``post_fn(z)`` (a proximal step) follows
    every update. ``losses`` and ``accuracies`` (one per step) are those of the
    ``z`` each step starts from.
    """
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def run(z, stats, opt_state, data, post_fn=None):
        _, y, mask = data

        def step(carry, _):
            z, stats, opt_state = carry
            (value, (new_stats, eta)), grads = grad_fn(z, stats, data)
            updates, opt_state = tx.update(grads, opt_state, z)
            z = optax.apply_updates(z, updates)
            if post_fn is not None:
                z = post_fn(z)
            return (z, new_stats, opt_state), (value, accuracy_of(family, eta, y, mask))

        (z, stats, opt_state), metrics = jax.lax.scan(
            step, (z, stats, opt_state), None, length=steps
        )
        return z, stats, opt_state, metrics

    return run


def local_steps_fn(loss_fn, tx: optax.GradientTransformation, family: Family, steps: int):
    """``run(z, stats, data, post_fn=None) -> (z, stats, (loss, accuracy))``.

    :func:`optimizer_steps_fn` from a fresh optimizer state every call; the
    returned loss and accuracy are those of the *starting* ``z``.
    """
    run_from = optimizer_steps_fn(loss_fn, tx, family, steps)

    def run(z, stats, data, post_fn=None):
        z, stats, _, (losses, accs) = run_from(z, stats, tx.init(z), data, post_fn)
        return z, stats, (losses[0], accs[0])

    return run


class LocalTraining(NamedTuple):
    """The settings every baseline's clients train with: the model, the optimizer, the steps.

    ``network`` and ``family`` are the model
    (:func:`~bayes_pfl.baselines.networks.build_network`,
    :func:`~bayes_pfl.baselines.networks.get_family`); ``tx`` the local optimizer;
    ``local_steps`` the full-batch optimizer steps per client and round;
    ``learning_rate`` the rate of ``tx``, which scales the proximal steps
    (``mu``, ``lam``, ``adapter_strength`` times ``learning_rate``); ``weight_decay``
    the L2 penalty added to every client's loss; ``fraction`` the fraction of
    clients sampled per round (federated methods).
    """

    network: Network
    family: Family
    tx: optax.GradientTransformation
    local_steps: int = 5
    learning_rate: float = 0.05
    weight_decay: float = 0.0
    fraction: float = 1.0

    def loss_fn(self, to_params: Callable[[Any], Params] | None = None):
        """:func:`client_loss_fn` of this model and weight decay."""
        return client_loss_fn(self.network, self.family, self.weight_decay, to_params)

    def run_fn(self, loss_fn=None, steps: int | None = None):
        """:func:`local_steps_fn` (a fresh optimizer state every call) of ``loss_fn``
        (default :meth:`loss_fn`) for ``steps`` steps (default ``local_steps``)."""
        loss_fn = self.loss_fn() if loss_fn is None else loss_fn
        steps = self.local_steps if steps is None else steps
        return local_steps_fn(loss_fn, self.tx, self.family, steps)

    def run_from_fn(self, steps: int | None = None):
        """:func:`optimizer_steps_fn` (the optimizer state carried by the caller) of the
        client loss for ``steps`` steps (default ``local_steps``)."""
        steps = self.local_steps if steps is None else steps
        return optimizer_steps_fn(self.loss_fn(), self.tx, self.family, steps)


def evaluate(network: Network, family: Family, params, stats, data) -> tuple[Array, Array]:
    """Mean loss and accuracy of a model on a client's rows (eval mode, running statistics)."""
    x, y, mask = data
    eta, _ = network.apply(params, stats, x, mask, False)
    return masked_mean_loss(family, eta, y, mask), accuracy_of(family, eta, y, mask)


def prox_toward(z, anchor, strength):
    r"""Proximal step of :math:`\frac{s}{2}\|z - a\|^2`: ``(z + s a) / (1 + s)`` leaf by leaf.

    Exact for any ``s >= 0``: ``s = 0`` leaves ``z`` unchanged and ``s -> inf``
    returns the anchor, so very strong pulls stay stable (a gradient step
    would diverge once ``learning_rate * s > 2``). Only the keys of ``anchor``
    are pulled.
    """
    out = dict(z)
    for k, a in anchor.items():
        out[k] = (z[k] + strength * a) / (1.0 + strength)
    return out


def shrink(tree, strength):
    """Proximal step of :math:`\\frac{s}{2}\\|z\\|^2`: ``z / (1 + s)``."""
    return jax.tree.map(lambda a: a / (1.0 + strength), tree)


def weighted_average(trees, weights: Array, old):
    """``sum_k w_k tree_k / sum_k w_k`` over the leading client axis; ``old`` if all weights are 0."""
    total = jnp.sum(weights)
    safe = jnp.where(total > 0, total, 1.0)

    def avg(stack, prev):
        w = jnp.reshape(weights, (-1,) + (1,) * (stack.ndim - 1)).astype(stack.dtype)
        return jnp.where(total > 0, jnp.sum(w * stack, axis=0) / safe, prev)

    return jax.tree.map(avg, trees, old)


def sample_active(rng_key: Array, n_clients: int, fraction: float) -> Array:
    """A uniformly random subset of ``max(1, round(fraction * n_clients))`` clients (bool mask)."""
    m = max(1, int(round(fraction * n_clients)))
    if m >= n_clients:
        return jnp.ones(n_clients, bool)
    chosen = jax.random.permutation(rng_key, n_clients)[:m]
    return jnp.zeros(n_clients, bool).at[chosen].set(True)


def n_rows(data) -> Array:
    """A client's number of training rows (a float scalar) from its ``(x, y, mask)``."""
    return jnp.sum(data[2]).astype(float)


def keep_where(keep: Array, new, old):
    """``new`` where ``keep`` (a client trained this round), else ``old``, leaf by leaf."""
    return jax.tree.map(lambda a, b: jnp.where(keep, a, b), new, old)


def stack_copies(tree, k: int):
    """``k`` copies of every leaf of ``tree`` on a new leading (client or cluster) axis."""
    return jax.tree.map(lambda a: jnp.broadcast_to(a, (k,) + a.shape), tree)


def take(tree, index):
    """Entry ``index`` (an int or an index array) of every leaf's leading axis."""
    return jax.tree.map(lambda a: a[index], tree)


def own_models(server_state, client_states) -> tuple[Params, Params]:
    """A ``personal_fn`` (or ``global_fn``) for states whose clients hold ``params`` and ``stats``."""
    del server_state
    return client_states.params, client_states.stats


def server_models(server_state, client_states) -> tuple[Params, Params]:
    """A ``global_fn`` for a server state that holds the ``params`` and ``stats`` a new client gets."""
    del client_states
    return server_state.params, server_state.stats


def client_metrics(active: Array, n: Array, loss: Array, accuracy: Array) -> Metrics:
    """A client's :class:`Metrics`: its rows count at the server only if it was sampled."""
    return Metrics(jnp.where(active, n, 0.0), loss, accuracy)


def accepted_weight(metrics: Metrics, accept: Array) -> Array:
    """The clients' weights at the server: 0 for a message the driver rejected."""
    return jnp.where(accept, metrics.weight, 0.0)


def server_info(metrics: Metrics, accept: Array) -> ServerInfo:
    """Weighted training loss and accuracy over the accepted clients that trained this round."""
    w = accepted_weight(metrics, accept)
    total = jnp.maximum(jnp.sum(w), 1e-12)
    loss = jnp.sum(w * jnp.nan_to_num(metrics.loss)) / total
    accuracy = jnp.sum(w * metrics.accuracy) / total
    return ServerInfo(loss, accuracy, jnp.sum(w > 0))
