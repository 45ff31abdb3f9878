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
import os
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from bayes_pfl.flower.config import ClientData, standardization_stats

__all__ = [
    "make_client_app",
    "personalize_client",
    "personalize_effects_client",
    "prepare_arrays",
]

AlgorithmsFn = Callable[[Context], dict[str, Any]]
DataFn = Callable[[Context], ClientData]
SetupFn = Callable[[Context], None]


class _Rows(NamedTuple):
    """:class:`bayes_pfl.data.ClientArrays`'s fields, without importing that module (it
    loads pandas): a ClientApp process calling an exported step needs only the flat
    arrays, whose keys (``.x``, ``.y``, ``.mask``) are ``ClientArrays``' (tested)."""

    x: np.ndarray
    y: np.ndarray
    mask: np.ndarray


def _padded(data: ClientData, n_max: int, mean=None, scale=None) -> _Rows:
    x = data.x
    if not data.standardized and mean is not None:
        x = (x - mean) / scale
    n, p = x.shape
    if n > n_max:
        raise ValueError(f"client has {n} rows but the server padded to {n_max}")
    xs = np.zeros((n_max, p))
    ys = np.zeros(n_max)
    xs[:n], ys[:n] = x, data.y
    return _Rows(xs, ys, np.arange(n_max) < n)


def _client_arrays(rows: _Rows):
    from bayes_pfl.data import ClientArrays

    return ClientArrays(*rows)


def prepare_arrays(data: ClientData, n_max: int, mean=None, scale=None):
    """``ClientArrays`` of one client, standardized if needed and padded to ``n_max`` rows."""
    return _client_arrays(_padded(data, n_max, mean, scale))


def personalize_client(rng_key, model, u_draws, x, y, mask, **kwargs):
    """:func:`bayes_pfl.federated.personalize_client` (imported lazily: JAX loads on first use)."""
    from bayes_pfl.posterior import personalize_client as body

    return body(rng_key, model, u_draws, x, y, mask, **kwargs)


@functools.cache
def _jit(fn):
    import jax

    return jax.jit(fn)


@functools.cache
def _personalize_fn(model):
    import jax

    return jax.jit(lambda key, u, x, y, mask: personalize_client(key, model, u, x, y, mask))


def _population(model):
    """The model's Gaussian population, built eagerly: its construction checks the model
    with concrete values, so it must not first happen inside a trace (``jit``, export)."""
    from bayes_pfl.population import gaussian_population

    return gaussian_population(model)


def personalize_effects_client(rng_key, model, site, u_draws, x, y, mask):
    """Personalization from the node's own site over its effects (EP with sites over effects):
    :func:`bayes_pfl.algorithms.effect_ep.personalize_client`, as the in-process fit runs it.

    Under ``jit`` call it on a model whose population was built outside the trace
    (:func:`bayes_pfl.population.gaussian_population` caches it on the model)."""
    from bayes_pfl.algorithms.effect_ep import personalize_client as body

    return body(rng_key, _population(model), site, u_draws, x, y, mask)


@functools.cache
def _personalize_effects_fn(model):
    import jax

    from bayes_pfl.gaussian import GaussianFactor

    _population(model)  # outside the trace

    def fn(key, prec, shift, u, x, y, mask):
        return personalize_effects_client(key, model, GaussianFactor(prec, shift), u, x, y, mask)

    return jax.jit(fn)


def _key_data(record: ArrayRecord, name: str) -> np.ndarray:
    return np.asarray(record[name].numpy(), np.uint32)


def _key(record: ArrayRecord, name: str):
    import jax

    return jax.random.wrap_key_data(_key_data(record, name))


def _key_flat(record: ArrayRecord, name: str) -> dict[str, np.ndarray]:
    """A key's raw data as an exported step's input (``encode({"key": uint32 array})``)."""
    from bayes_pfl.codec import encode

    return encode({"key": _key_data(record, name)})


def _key_template(flat_key: dict[str, np.ndarray]):
    import jax

    (data,) = flat_key.values()
    return {"key": jax.ShapeDtypeStruct(data.shape, np.uint32)}


def _init_builder(algorithms_fn, context, name, key, arrays):
    """``build()`` of :meth:`StepCache.call` for ``client_init`` (run only on a miss)."""

    def build():
        import jax

        algorithm = algorithms_fn(context)[name]
        data = _client_arrays(arrays)

        def fn(key, a):
            return (algorithm.client_init(jax.random.wrap_key_data(key["key"]), a),)

        return fn, [_key_template(key), data]

    return build


def _update_builder(algorithms_fn, context, name, key, arrays, n_clients):
    """``build()`` of :meth:`StepCache.call` for ``client_update`` (run only on a miss)."""

    def build():
        import jax

        algorithm = algorithms_fn(context)[name]
        data = _client_arrays(arrays)
        init_key = jax.random.wrap_key_data(np.zeros_like(next(iter(key.values()))))
        state_tmpl = jax.eval_shape(algorithm.client_init, init_key, data)
        bcast_tmpl = _broadcast_row_template(algorithm, n_clients)

        def fn(key, bcast, state, a):
            return algorithm.client_update(jax.random.wrap_key_data(key["key"]), bcast, state, a)

        return fn, [_key_template(key), bcast_tmpl, state_tmpl, data]

    return build


def _personalize_builder(model_fn, context, key, arrays, u, site=None):
    """``build()`` of :meth:`StepCache.call` for personalization (run only on a miss)."""

    def build():
        import jax

        from bayes_pfl.gaussian import GaussianFactor

        model = model_fn(context)
        draws_tmpl = {"u": jax.ShapeDtypeStruct(u.shape, u.dtype)}
        if site is not None:
            _population(model)  # outside the trace
            draws_tmpl.update({k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in site.items()})

        def fn(key, draws, a):
            k = jax.random.wrap_key_data(key["key"])
            if site is None:
                return personalize_client(k, model, draws["u"], a.x, a.y, a.mask)
            factor = GaussianFactor(draws["precision"], draws["shift"])
            return personalize_effects_client(k, model, factor, draws["u"], a.x, a.y, a.mask)

        return fn, [_key_template(key), draws_tmpl, _client_arrays(arrays)]

    return build


def process_age() -> tuple[float, float]:
    """``(seconds since this process started, CPU seconds it has used)``.

    A deployment's ClientApp runs in a fresh process per message: the first number,
    read on entering a handler, is what starting that process cost (interpreter,
    Flower's ClientApp runtime, loading the app, pulling the message), the second how
    much of it was CPU. The age is NaN where ``/proc`` is missing (not Linux).
    """
    cpu = time.process_time()
    try:
        with open("/proc/self/stat", "rb") as f:
            start_ticks = int(f.read().rsplit(b")", 1)[1].split()[19])
        with open("/proc/uptime", "rb") as f:
            uptime = float(f.read().split()[0])
        age = max(uptime - start_ticks / os.sysconf("SC_CLK_TCK"), 0.0)
    except (OSError, ValueError, IndexError):
        age = float("nan")
    return age, cpu


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
    steps_fn: Callable[[Context], Any] | None = None,
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
    steps_fn : callable, optional
        ``context -> StepCache | None``: where exported client steps are kept
        (:mod:`bayes_pfl.flower.steps`). With one, a process whose step was already
        traced (by an earlier message's process) calls the exported step instead of
        building the algorithm and tracing it again; the answer is the same.
    """
    from bayes_pfl.codec import encode
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
        t_entry = time.perf_counter()
        start_s, start_cpu_s = process_age()
        import jax

        t0 = time.perf_counter()
        _setup(context)
        cfg = msg.content.config_records["config"]
        name = str(cfg["algorithm"])
        data = data_fn(context)
        if int(cfg["position"]) != data.position:
            raise ValueError(f"message for position {cfg['position']}, node is {data.position}")
        rows = _padded(data, int(cfg["n-max"]), *_standardization(msg))
        keys = msg.content.array_records["keys"]
        n_clients = int(cfg["n-clients"])
        state_store = context.state.array_records
        if bool(cfg["accepted"]) and "pending" in state_store:
            state_store["state"] = state_store["pending"]
        if "pending" in state_store:
            del state_store["pending"]
        fresh = bool(cfg["fresh"]) or "state" not in state_store
        steps = steps_fn(context) if steps_fn is not None else None
        round_data = _key_data(keys, "round")
        if name.endswith("-dp"):  # a private step: noise from the node's own secret
            from bayes_pfl.flower.private import round_key

            round_data = round_key(context, round_data)
        if steps is None:
            arrays = _client_arrays(rows)
            algorithm = algorithms_fn(context)[name]
            state_tmpl = jax.eval_shape(algorithm.client_init, _key(keys, "init"), arrays)
            if fresh:
                state = _jit(algorithm.client_init)(_key(keys, "init"), arrays)
            else:
                state = from_array_record(state_store["state"], state_tmpl)
            bcast_tmpl = _broadcast_row_template(algorithm, n_clients)
            bcast = from_array_record(msg.content.array_records["broadcast"], bcast_tmpl)
            t1 = time.perf_counter()
            new_state, message, info = _jit(algorithm.client_update)(
                jax.random.wrap_key_data(round_data), bcast, state, arrays
            )
            message = jax.block_until_ready(message)
            state_rec, new_state_rec = to_array_record(state), to_array_record(new_state)
            message_rec, info_rec = to_array_record(message), to_array_record(info)
        else:
            flat_arrays = encode(rows)
            if fresh:
                key = _key_flat(keys, "init")
                (state_flat,) = steps.call(
                    f"client_init:{name}",
                    _init_builder(algorithms_fn, context, name, key, rows),
                    [key, flat_arrays],
                )
            else:
                state_flat = {k: a.numpy() for k, a in state_store["state"].items()}
            bcast_flat = {k: a.numpy() for k, a in msg.content.array_records["broadcast"].items()}
            key = encode({"key": round_data})
            t1 = time.perf_counter()
            new_state_flat, message_flat, info_flat = steps.call(
                f"client_update:{name}",
                _update_builder(algorithms_fn, context, name, key, rows, n_clients),
                [key, bcast_flat, state_flat, flat_arrays],
            )
            state_rec, new_state_rec = named_record(state_flat), named_record(new_state_flat)
            message_rec, info_rec = named_record(message_flat), named_record(info_flat)
        t2 = time.perf_counter()
        state_store["state"] = state_rec
        state_store["pending"] = new_state_rec
        content = RecordDict(
            {
                "message": message_rec,
                "info": info_rec,
                "metrics": metric_record(
                    {
                        "position": data.position,
                        "prepare_s": t1 - t0,
                        "update_s": t2 - t1,
                        # the round's breakdown (run_server): process start-up, handler
                        "process_start_s": start_s,
                        "process_start_cpu_s": start_cpu_s,
                        "handler_s": time.perf_counter() - t_entry,
                        "process_cpu_s": time.process_time(),
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
        cfg = msg.content.config_records["config"]
        data = data_fn(context)
        rows = _padded(data, int(cfg["n-max"]), *_standardization(msg))
        u = named_arrays(msg.content.array_records["draws"], ("u",))["u"]
        site = None
        if "site" in msg.content.array_records:  # EP over client effects: its own site
            site = named_arrays(msg.content.array_records["site"], ("precision", "shift"))
        if bool(cfg.get("private", False)):
            return _personalize_privately(
                msg, context, algorithms_fn, model_fn, data, rows, u, site
            )
        steps = steps_fn(context) if steps_fn is not None else None
        if steps is None:
            key = _key(msg.content.array_records["keys"], "personalize")
            if site is None:
                theta, acc = _personalize_fn(model_fn(context))(key, u, *rows)
            else:
                theta, acc = _personalize_effects_fn(model_fn(context))(
                    key, site["precision"], site["shift"], u, *rows
                )
            theta = jax.block_until_ready(theta)
        else:
            key = _key_flat(msg.content.array_records["keys"], "personalize")
            theta_flat, acc_flat = steps.call(
                "personalize" if site is None else "personalize-effects",
                _personalize_builder(model_fn, context, key, rows, u, site),
                [key, encode({"u": u, **(site or {})}), encode(rows)],
            )
            theta, acc = theta_flat[""], acc_flat[""]
        content = RecordDict(
            {
                "theta": named_record({"theta": theta}),
                "metrics": metric_record({"position": data.position, "acceptance": acc}),
            }
        )
        return Message(content, reply_to=msg)

    return app


def _personalize_privately(msg, context, algorithms_fn, model_fn, data, rows, u, site):
    """``query.personalize`` of a private node: draws kept on the node
    (:func:`bayes_pfl.flower.private.personalize_locally`); the reply holds no draws."""
    from bayes_pfl.flower.private import personalize_locally
    from bayes_pfl.flower.records import from_array_record, metric_record

    cfg = msg.content.config_records["config"]
    algorithm = algorithms_fn(context)[str(cfg["local-site"])]
    template = _broadcast_row_template(algorithm, int(cfg["n-clients"]))
    bcast = from_array_record(msg.content.array_records["broadcast"], template)
    keys = {
        name: _key_data(msg.content.array_records["keys"], name)
        for name in ("local-site", "personalize")
    }
    model = model_fn(context)
    kept = personalize_locally(
        context,
        local_algorithm=algorithm,
        personalize=_personalize_effects_fn(model),
        model=model,
        label=data.label,
        arrays=_client_arrays(rows),
        bcast=bcast,
        u=u,
        chains=int(cfg["chains"]),
        sent_site=site,
        keys=keys,
        settings={"dp_epsilon": float(cfg["dp-epsilon"])},
    )
    content = RecordDict({"metrics": metric_record({"position": data.position, **kept})})
    return Message(content, reply_to=msg)


@functools.cache
def _broadcast_row_template(algorithm, n_clients: int):
    """Shapes of one client's row of ``algorithm.broadcast(server_init(...))``."""
    import jax

    def row():
        state = algorithm.server_init(jax.random.key(0), n_clients)
        return jax.tree.map(lambda a: a[0], algorithm.broadcast(state))

    return jax.eval_shape(row)
