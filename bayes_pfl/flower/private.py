"""A differentially private node (run config ``dp-epsilon``): its keys and its readout.

What a node does beyond the ClientApp's usual steps when the run's EP is private
(:mod:`bayes_pfl.privacy`, ``docs/privacy.md``):

* **Its noise is its own.** The server sends every round's random key; a private
  node mixes it with a secret it keeps (:func:`round_key`), so the server cannot
  reproduce the noise and subtract it. The secret is the node config's ``dp-seed``
  (an integer, for runs one wants to repeat) or, without one, 64 random bits the node
  draws once per run and keeps in its ``Context.state``. ``dp-seed = 0`` means *no*
  secret: the node's noise is then the in-process fit's with the same seed (the server
  can reproduce it), for tests and reproductions only; the node logs a warning. A round
  key the node has used already is refused: the same noise on another statistic would
  reveal the difference of the two.
* **Its personalized posterior stays on the node** (:func:`personalize_locally`). The
  node computes its own noise-free site against the final cavity (never sent; as
  :func:`bayes_pfl.privacy.local_sites` does in process), draws ``theta`` from it and
  its rows, and writes them, with the global draws, to a result folder of its own
  (``posterior.nc``, ``summary.csv``, ``run.json``): the node config's
  ``personal-dir``, else ``$FLWR_HOME/bayes-pfl-personal/run-<id>/<label>``. The
  reply says only that it is done: neither draws nor acceptance rates (functions of
  the rows) leave the node.
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context

__all__ = ["personal_dir", "personalize_locally", "round_key"]

log = logging.getLogger("bayes_pfl.flower")

_STATE = "dp-node"


def _secret(context: Context) -> int | None:
    """The node's 64-bit secret (``None`` for ``dp-seed = 0``: no secret)."""
    if "dp-seed" in context.node_config:
        seed = context.node_config["dp-seed"]
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"node config dp-seed must be an integer >= 0, got {seed!r}")
        if seed == 0:
            log.warning(
                "node config dp-seed = 0: this node's privacy noise is reproducible by the "
                "server (for tests and reproductions only)"
            )
            return None
        return seed % 2**64
    record = _record(context)
    if "secret" not in record:  # drawn once per run, kept on the node
        record["secret"] = f"{secrets.randbits(64):016x}"
    return int(str(record["secret"]), 16)


def _record(context: Context) -> ConfigRecord:
    """The node's own DP state in ``Context.state``: its secret and the round keys used."""
    store = context.state.config_records
    if _STATE not in store:
        store[_STATE] = ConfigRecord({"used": []})
    return store[_STATE]


def round_key(context: Context, key_data: np.ndarray) -> np.ndarray:
    """The key a private node's step uses for the server's round key ``key_data``.

    ``fold_in(fold_in(server key, low 32 bits), high 32 bits)`` of the node's secret;
    the server's key itself with ``dp-seed = 0``. Raises if the node has used this server
    key before.
    """
    import jax

    record = _record(context)
    tag = np.asarray(key_data, np.uint32).tobytes().hex()
    used = [str(u) for u in record.get("used", [])]
    if tag in used:
        raise ValueError(
            "the server sent a round key this private node has used already: refused (the "
            "same noise on another statistic would reveal the difference of the two)"
        )
    record["used"] = [*used, tag]
    secret = _secret(context)
    if secret is None:
        return np.asarray(key_data, np.uint32)
    key = jax.random.wrap_key_data(np.asarray(key_data, np.uint32))
    key = jax.random.fold_in(jax.random.fold_in(key, secret & 0xFFFFFFFF), secret >> 32)
    return np.asarray(jax.random.key_data(key), np.uint32)


def personal_dir(context: Context, label: str) -> Path:
    """Where this node writes its personalized posterior (see the module docstring)."""
    given = context.node_config.get("personal-dir")
    if given:
        return Path(str(given)).expanduser().resolve()
    home = Path(os.environ.get("FLWR_HOME", Path.home() / ".flwr"))
    return (home / "bayes-pfl-personal" / f"run-{context.run_id}" / label).resolve()


def personalize_locally(
    context: Context,
    *,
    local_algorithm,
    personalize,
    model,
    label: str,
    arrays,
    bcast,
    u: np.ndarray,
    chains: int,
    sent_site: dict[str, np.ndarray],
    keys: dict[str, np.ndarray],
    settings: dict[str, Any],
) -> dict[str, float]:
    """The node's noise-free site, its personalized draws, and its own result folder.

    ``local_algorithm``: the non-private EP client step whose broadcast (``bcast``, this
    node's row) the fit used; ``personalize``: the node's jitted
    ``(key, precision, shift, u, x, y, mask) -> (theta, acceptance)``; ``arrays``: its
    padded rows (``ClientArrays``); ``sent_site``: the (noisy) site the server holds for
    this node, the proposal if the local step fails (as in process); ``keys``: raw key
    data of ``"local-site"`` and ``"personalize"``. Returns what the node may report
    (nothing of its rows).
    """
    import jax
    import jax.numpy as jnp

    from bayes_pfl.gaussian import GaussianFactor
    from bayes_pfl.posterior import to_result
    from bayes_pfl.results import save_fit

    k_site = jax.random.wrap_key_data(np.asarray(keys["local-site"], np.uint32))
    state = jax.jit(local_algorithm.client_init)(k_site, arrays)
    _, msg, _ = jax.jit(local_algorithm.client_update)(k_site, bcast, state, arrays)
    fallback = GaussianFactor(jnp.asarray(sent_site["precision"]), jnp.asarray(sent_site["shift"]))
    site = jax.tree.map(lambda a, b: jnp.where(msg.ok, a, b), msg.site, fallback)
    k_personal = jax.random.wrap_key_data(np.asarray(keys["personalize"], np.uint32))
    theta, acc = personalize(k_personal, site.precision, site.shift, u, *arrays)
    theta = np.asarray(jax.block_until_ready(theta))
    s = u.shape[0] // chains
    result = to_result(
        "ep",
        model,
        [label],
        np.asarray(u).reshape(chains, s, u.shape[1]),
        theta[None],
        sample_stats=None,
        history=[],
        info={
            "runtime": "flower",
            "personalized_on": "node",
            "local_site_ok": bool(msg.ok),
            "min_personalize_acceptance": float(acc),
            "settings": settings,
        },
    )
    out = personal_dir(context, label)
    save_fit(result, None, out)
    log.info("private node %r: personalized posterior written to %s", label, out)
    return {"kept-on-node": 1.0}
