"""Ready-made Flower apps driven by the run config (:class:`~bayes_pfl.flower.config.FlowerSettings`).

``examples/flower_app`` points Flower at these two objects::

    [tool.flwr.app.components]
    serverapp = "bayes_pfl_app.server_app:app"   # = bayes_pfl.flower.app.server_app()
    clientapp = "bayes_pfl_app.client_app:app"   # = bayes_pfl.flower.app.client_app()

The ServerApp discovers the nodes, runs the method's phases with :func:`run_server`,
samples the global posterior, collects personalized draws and writes the result
folder of ``bayes-pfl fit`` (``posterior.nc``, ``summary.csv``, ``run.json``) with
:func:`bayes_pfl.results.save_fit`, plus ``checkpoint.npz``/``.json`` after every round.
For an optimization baseline it writes ``server_state.npz`` (the global model, by key
path) and ``run.json`` (clients, nodes, rows, standardization, the round history).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from bayes_pfl.flower.config import (
    METHODS,
    FlowerSettings,
    build_phases,
    cached_client_data,
    configure_jax,
    load_client_data,
)

__all__ = ["client_app", "run_from_settings", "server_app"]

log = logging.getLogger("bayes_pfl.flower")


def _settings(context: Context) -> FlowerSettings:
    return FlowerSettings.from_run_config(dict(context.run_config))


def client_app() -> ClientApp:
    """The ClientApp: this node's rows from its node config, algorithms from the run config."""
    from bayes_pfl.flower.client import make_client_app

    data_cache: dict[Any, Any] = {}

    def setup(context: Context) -> None:
        settings = _settings(context)
        check_node_privacy(settings, dict(context.node_config))
        configure_jax(settings)

    def algorithms(context: Context) -> dict[str, Any]:
        settings = _settings(context)
        out = {ph.algorithm.name: ph.algorithm for ph in build_phases(settings)}
        if settings.dp_epsilon:  # the noise-free step a private node personalizes from
            local = local_site_algorithm(settings)
            out[local.name] = local
        return out

    def data(context: Context):
        settings = _settings(context)
        key = (settings, tuple(sorted((k, str(v)) for k, v in context.node_config.items())))
        if key not in data_cache:
            node_config = dict(context.node_config)
            if settings.jax_cache_dir:  # the node's private cache: its rows for later processes
                folder = Path(settings.jax_cache_dir).expanduser() / "bayes-pfl-rows"
                data_cache[key] = cached_client_data(settings, node_config, folder)
            else:
                data_cache[key] = load_client_data(settings, node_config)
        return data_cache[key]

    def model(context: Context):
        return _settings(context).hierarchical_model

    def steps(context: Context):
        settings = _settings(context)
        if not settings.jax_cache_dir:
            return None
        from bayes_pfl.flower.steps import StepCache

        folder = Path(settings.jax_cache_dir).expanduser() / "bayes-pfl-steps"
        return StepCache(folder, identity=settings.step_identity())

    return make_client_app(algorithms, data, model_fn=model, setup_fn=setup, steps_fn=steps)


def server_app() -> ServerApp:
    """The ServerApp: rounds, global and personalized draws, result folder."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        settings = _settings(context)
        configure_jax(settings)
        if not log.handlers:
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
            log.addHandler(handler)
            log.setLevel(logging.INFO)
        run_from_settings(grid, settings, run_id=int(context.run_id))

    return app


def run_from_settings(grid: Grid, settings: FlowerSettings, *, run_id: int = 0):
    """Everything the ServerApp does, callable with any ``Grid`` (returns the ``FitResult``)."""
    from bayes_pfl.flower.server import discover, finish, run_server
    from bayes_pfl.results import save_fit

    t_start = time.perf_counter()
    out = settings.out_dir(run_id)
    out.mkdir(parents=True, exist_ok=True)
    log.info("bayes-pfl on Flower: method %s, results in %s", settings.method, out)
    if settings.standardize and not settings.standardize_features:
        log.warning("%s: its features keep their units, not standardized", settings.data)
    federation = discover(
        grid,
        n_clients=settings.num_clients,
        node_wait_s=settings.node_wait_s,
        standardize=settings.standardize_features,
        **settings.messaging,
    )
    log.info(
        "federation: %s", dict(zip(federation.labels, federation.n_rows.tolist(), strict=True))
    )
    phases = build_phases(settings)
    history: list[dict[str, Any]] = []
    state, converged, accepted = None, False, None
    for i, phase in enumerate(phases):
        res = run_server(
            grid,
            phase.algorithm,
            federation,
            rounds=phase.rounds,
            seed=settings.seed,
            init_server_state=state if phase.warm_start else None,
            fresh_clients=not phase.warm_start,
            accepted=accepted if phase.warm_start else None,
            checkpoint=out / f"checkpoint-{i}" if settings.checkpoint else None,
            resume=settings.resume,
            phase=f"{i}:{phase.algorithm.name}",
            bucket_rows=phase.bucket_rows,
            **settings.messaging,
        )
        state, converged, accepted = res.server_state, res.converged, res.accepted
        tag = dict(phase.tag)
        history += [{**h, **tag} for h in res.history]
    if settings.method not in METHODS:  # a baseline: no posterior to read out
        _save_baseline(out, settings, federation, state, history, converged, run_id, t_start)
        return None
    result = finish(
        grid,
        settings.method,
        settings.hierarchical_model,
        federation,
        state,
        history,
        converged,
        seed=settings.seed,
        global_method=settings.global_method,
        num_chains=settings.num_chains,
        num_warmup=settings.final_warmup,
        num_samples=settings.num_samples,
        t_start=t_start,
        settings=settings.settings_record(),
        **settings.messaging,
        private=None
        if not settings.dp_epsilon
        else {"algorithm": local_site_algorithm(settings), "dp_epsilon": settings.dp_epsilon},
    )
    if settings.dp_epsilon:
        result.info["privacy"] = _privacy_record(settings, federation, len(history))
    save_fit(
        result,
        None,
        out,
        dataset=settings.data,
        seed=settings.seed,
        total_time_s=time.perf_counter() - t_start,
        flower=_flower_record(federation, run_id),
    )
    log.info("wrote %s", out)
    return result


def local_site_algorithm(settings: FlowerSettings):
    """The non-private EP client step of a DP run (its broadcast is the run's): what a
    private node computes its own site with, to personalize from, never to send (as
    :func:`bayes_pfl.federated.run_fit` does in process)."""
    from bayes_pfl.federated import effect_algorithm

    return effect_algorithm(settings.hierarchical_model, damping=1.0, tol=settings.ep_tol)


def check_node_privacy(settings: FlowerSettings, node_config: dict[str, Any]) -> None:
    """A node's own privacy demand: node config ``dp-max-epsilon`` refuses a run without
    differential privacy or with a larger budget (the run config is the server side's)."""
    if "dp-max-epsilon" not in node_config:
        return
    limit = float(node_config["dp-max-epsilon"])
    if not settings.dp_epsilon or settings.dp_epsilon > limit:
        raise ValueError(
            f"this node requires differential privacy with epsilon <= {limit:g} (node config "
            f"dp-max-epsilon); the run asks for dp-epsilon {settings.dp_epsilon:g} (0: none)"
        )


def _privacy_record(settings: FlowerSettings, federation, rounds_run: int) -> dict[str, Any]:
    """``privacy_record`` of a Flower DP run: every node is counted as spending each round
    that ran (an upper bound for a node that missed one)."""
    import numpy as np

    from bayes_pfl import privacy

    noise, clip, _ = settings.dp_options
    return privacy.privacy_record(
        settings.dp_budget,
        noise,
        clip=clip,
        rounds_planned=settings.rounds,
        rounds_run=rounds_run,
        labels=federation.labels,
        participating=np.asarray(federation.n_rows) > 0,
    )


def _flower_record(federation, run_id: int) -> dict[str, Any]:
    """The deployment facts ``run.json`` keeps: run id, node per client, rows, standardization."""
    return {
        "run_id": run_id,
        "nodes": dict(zip(federation.labels, federation.node_ids, strict=True)),
        "n_rows": dict(zip(federation.labels, federation.n_rows.tolist(), strict=True)),
        "standardization": None
        if federation.mean is None
        else {"mean": federation.mean.tolist(), "scale": federation.scale.tolist()},
    }


def _save_baseline(out, settings, federation, state, history, converged, run_id, t_start):
    """An optimization baseline's result folder: ``server_state.npz`` and ``run.json``.

    The server state (the global model, and whatever else the baseline's server keeps)
    is flattened by key path (:func:`bayes_pfl.codec.encode`, no pickle); ``decode`` it
    with the template ``baseline_algorithm(...).server_init(...)``. Personal models stay
    on the nodes (in each ClientApp's ``Context.state``), as in a real deployment.
    """
    import json

    import numpy as np

    from bayes_pfl.codec import encode

    np.savez(out / "server_state.npz", **encode(state))
    run = {
        "method": settings.method,
        "runtime": "flower",
        "dataset": settings.data,
        "seed": settings.seed,
        "rounds": len(history),
        "converged": bool(converged),
        "clients": list(federation.labels),
        "flower": _flower_record(federation, run_id),
        "total_time_s": time.perf_counter() - t_start,
        "history": history,
    }
    (out / "run.json").write_text(json.dumps(run, indent=2, default=str))
    log.info("wrote %s", out)
