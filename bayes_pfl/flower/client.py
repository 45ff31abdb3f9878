"""The ClientApp: decode, call the algorithm's ``client_update``, encode.

:func:`make_client_app` builds a :class:`flwr.clientapp.ClientApp` over any
:class:`~bayes_pfl.algorithms.Algorithm`. It answers three message types:

``query.describe``
    the node's position, label, row count and feature count (and, when asked, its
    per-feature standardization statistics; never rows);
``train``
    one round: ``client_update(rng_key, broadcast, client_state, data)`` with the
    key, broadcast row and algorithm named by the server; the new client state is
    kept in ``Context.state`` as *pending* and becomes the node's state only when
    the server says, in its next message, that the round's message was accepted
    (the in-process driver keeps a rejected client's previous state the same way);
``query.personalize``
    draws of the node's ``theta`` for every global draw the server sends
    (:func:`personalize_client`, the per-client body of
    :func:`bayes_pfl.federated.personalize`).

Everything on the wire is an ``ArrayRecord``/``ConfigRecord``/``MetricRecord``
built by :mod:`bayes_pfl.flower.records`.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from bayes_pfl.flower.config import ClientData, standardization_stats

__all__ = ["make_client_app", "personalize_client", "prepare_arrays"]

AlgorithmsFn = Callable[[Context], dict[str, Any]]
DataFn = Callable[[Context], ClientData]
SetupFn = Callable[[Context], None]


def prepare_arrays(data: ClientData, n_max: int, mean=None, scale=None):
    """``ClientArrays`` of one client, standardized if needed and padded to ``n_max`` rows."""
    from bayes_pfl.data import ClientArrays

    x = data.x
    if not data.standardized and mean is not None:
        x = (x - mean) / scale
    n, p = x.shape
    if n > n_max:
        raise ValueError(f"client has {n} rows but the server padded to {n_max}")
    xs = np.zeros((n_max, p))
    ys = np.zeros(n_max)
    xs[:n], ys[:n] = x, data.y
    return ClientArrays(xs, ys, np.arange(n_max) < n)


def personalize_client(rng_key, model, u_draws, x, y, mask, **kwargs):
    """:func:`bayes_pfl.federated.personalize_client` (imported lazily: JAX loads on first use)."""
    from bayes_pfl.federated import personalize_client as body

    return body(rng_key, model, u_draws, x, y, mask, **kwargs)


@functools.cache
def _jit(fn):
    import jax

    return jax.jit(fn)


@functools.cache
def _personalize_fn(model):
    import jax

    return jax.jit(lambda key, u, x, y, mask: personalize_client(key, model, u, x, y, mask))


def _key(record: ArrayRecord, name: str):
    import jax

    return jax.random.wrap_key_data(np.asarray(record[name].numpy(), np.uint32))


def _standardization(msg: Message):
    if "standardization" not in msg.content.array_records:
        return None, None
    from bayes_pfl.flower.records import named_arrays

    arrays = named_arrays(msg.content.array_records["standardization"], ("mean", "scale"))
    return arrays["mean"], arrays["scale"]


def make_client_app(
    algorithms_fn: AlgorithmsFn,
    data_fn: DataFn,
    *,
    model_fn: Callable[[Context], Any] | None = None,
    setup_fn: SetupFn | None = None,
) -> ClientApp:
    """A ClientApp running ``algorithms_fn(context)[name].client_update`` on ``data_fn(context)``.

    Parameters
    ----------
    algorithms_fn : callable
        ``context -> {name: Algorithm}``; the server names the algorithm of each
        round (several phases may use several algorithms). Should return the *same*
        objects across calls (cache them) so compiled functions are reused.
    data_fn : callable
        ``context -> ClientData``: this node's rows and position.
    model_fn : callable, optional
        ``context -> HierarchicalModel``, needed for ``query.personalize``.
    setup_fn : callable, optional
        Called first on every message (e.g. JAX configuration).
    """
    from bayes_pfl.flower.records import (
        from_array_record,
        metric_record,
        named_arrays,
        named_record,
        to_array_record,
    )

    app = ClientApp()

    def _setup(context: Context) -> None:
        if setup_fn is not None:
            setup_fn(context)

    @app.query("describe")
    def describe(msg: Message, context: Context) -> Message:
        _setup(context)
        data = data_fn(context)
        info = ConfigRecord(
            {
                "position": data.position,
                "label": data.label,
                "n-rows": int(data.y.shape[0]),
                "n-features": int(data.x.shape[1]),
                "standardized": bool(data.standardized),
            }
        )
        content = RecordDict({"describe": info})
        if bool(msg.content.config_records["config"].get("want-stats", False)):
            if not data.standardized:
                content["stats"] = named_record(standardization_stats(data.x))
        return Message(content, reply_to=msg)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        import jax

        t0 = time.perf_counter()
        _setup(context)
        cfg = msg.content.config_records["config"]
        algorithm = algorithms_fn(context)[str(cfg["algorithm"])]
        data = data_fn(context)
        if int(cfg["position"]) != data.position:
            raise ValueError(f"message for position {cfg['position']}, node is {data.position}")
        arrays = prepare_arrays(data, int(cfg["n-max"]), *_standardization(msg))
        keys = msg.content.array_records["keys"]
        n_clients = int(cfg["n-clients"])
        state_tmpl = jax.eval_shape(algorithm.client_init, _key(keys, "init"), arrays)
        state_store = context.state.array_records
        if bool(cfg["accepted"]) and "pending" in state_store:
            state_store["state"] = state_store["pending"]
        if "pending" in state_store:
            del state_store["pending"]
        if bool(cfg["fresh"]) or "state" not in state_store:
            state = _jit(algorithm.client_init)(_key(keys, "init"), arrays)
        else:
            state = from_array_record(state_store["state"], state_tmpl)
        bcast_tmpl = _broadcast_row_template(algorithm, n_clients)
        bcast = from_array_record(msg.content.array_records["broadcast"], bcast_tmpl)
        t1 = time.perf_counter()
        new_state, message, info = _jit(algorithm.client_update)(
            _key(keys, "round"), bcast, state, arrays
        )
        message = jax.block_until_ready(message)
        t2 = time.perf_counter()
        state_store["state"] = to_array_record(state)
        state_store["pending"] = to_array_record(new_state)
        content = RecordDict(
            {
                "message": to_array_record(message),
                "info": to_array_record(info),
                "metrics": metric_record(
                    {
                        "position": data.position,
                        "prepare_s": t1 - t0,
                        "update_s": t2 - t1,
                    }
                ),
            }
        )
        return Message(content, reply_to=msg)

    @app.query("personalize")
    def personalize(msg: Message, context: Context) -> Message:
        import jax

        _setup(context)
        if model_fn is None:
            raise ValueError("this ClientApp was built without model_fn: cannot personalize")
        model = model_fn(context)
        cfg = msg.content.config_records["config"]
        data = data_fn(context)
        arrays = prepare_arrays(data, int(cfg["n-max"]), *_standardization(msg))
        u = named_arrays(msg.content.array_records["draws"], ("u",))["u"]
        key = _key(msg.content.array_records["keys"], "personalize")
        theta, acc = _personalize_fn(model)(key, u, *(np.asarray(a) for a in arrays))
        theta = jax.block_until_ready(theta)
        content = RecordDict(
            {
                "theta": named_record({"theta": theta}),
                "metrics": metric_record({"position": data.position, "acceptance": acc}),
            }
        )
        return Message(content, reply_to=msg)

    return app


@functools.cache
def _broadcast_row_template(algorithm, n_clients: int):
    """Shapes of one client's row of ``algorithm.broadcast(server_init(...))``."""
    import jax

    def row():
        state = algorithm.server_init(jax.random.key(0), n_clients)
        return jax.tree.map(lambda a: a[0], algorithm.broadcast(state))

    return jax.eval_shape(row)
