"""Federated algorithms as pure functions over pytrees.

Every algorithm is an :class:`Algorithm`: a NamedTuple of four pure functions,
built by a factory that closes over the model and the structural choices
(tilted inference, damping). Data is always an argument, never captured, so one
compiled function serves every client, and the same functions run in the
in-process simulation (:mod:`bayes_pfl.simulation`, vmapped over clients) and
in a Flower deployment.

``server_init(rng_key, n_clients) -> server_state``
    the server's state before the first round.
``broadcast(server_state) -> broadcast``
    what the server sends, with a leading client axis (client ``k`` gets row ``k``).
``client_init(rng_key, data) -> client_state``
    one client's state before the first round.
``client_update(rng_key, broadcast, client_state, data) -> (client_state, message, info)``
    one client's round: ``data`` is that client's ``ClientArrays`` (unbatched).
``server_update(rng_key, server_state, messages, accept) -> (server_state, info)``
    ``messages`` are stacked on a leading client axis; ``accept`` (bool, one per
    client) is False for clients that did not answer, sent an invalid message
    or hold no rows: their previous contribution is kept.

A message may carry ``ok`` (bool): False when the client's local inference failed (it
then resends its previous contribution). ``Algorithm.reasons`` puts into words what the
driver sees, for the errors and warnings that name clients: pairs ``(key, words)``, a
message field's key path (``".check.loss"``) for why that field is non-finite, a value
of the client info's ``status`` (int) for why local inference failed (a tuple, so that
an ``Algorithm`` stays hashable).
"""

from collections.abc import Callable
from typing import Any, NamedTuple


class Algorithm(NamedTuple):
    """The four pure functions of a federated algorithm (see the module docstring)."""

    server_init: Callable[..., Any]
    client_init: Callable[..., Any]
    client_update: Callable[..., Any]
    server_update: Callable[..., Any]
    broadcast: Callable[..., Any]
    name: str = "algorithm"
    reasons: tuple[tuple[str | int, str], ...] = ()


def select_clients(mask, new: Any, old: Any) -> Any:
    """Per client (leading axis): ``new`` where ``mask`` is True, else ``old``."""
    import jax
    import jax.numpy as jnp

    return jax.tree.map(
        lambda a, b: jnp.where(jnp.reshape(mask, (-1,) + (1,) * (a.ndim - 1)), a, b), new, old
    )


__all__ = ["Algorithm", "select_clients"]
