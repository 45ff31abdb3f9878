r"""Federated variational inference end to end: rounds, global draws, personalized draws.

:func:`fit_vi` runs the rounds of :mod:`bayes_pfl.algorithms.vi` (partitioned VI with
EP's messages and server update) with the in-process driver
(:func:`bayes_pfl.simulation.run_rounds`), then

* draws the global parameters from the server's approximation: by default
  (``global_method="vi"``) from :math:`q^*`, the Gaussian fit of :math:`p_0 G` in
  the clients' family, which at the fixed point is the Gaussian VI posterior itself
  (so VI's under-dispersion shows, it is not hidden); ``"nuts"`` samples
  :math:`p_0(u) G(u)` (exact hyper-prior, VI factors) with NUTS exactly as
  :func:`~bayes_pfl.federated.fit_ep` does; ``"laplace"`` draws from the server's
  Laplace summary;
* draws each client's ``theta_k`` for every global draw :math:`u^{(s)}`: by default
  (``personalization="local"``) from the client's own variational conditional
  :math:`q_k(\theta_k \mid u^{(s)})` (a Gaussian regression on ``u`` for the full and
  low-rank families; :math:`q_k(\theta_k)` for mean-field), which is free;
  ``"exact"`` uses :func:`bayes_pfl.federated.personalize`
  (:math:`p(\theta_k \mid u^{(s)}, D_k)` by a Laplace proposal and independence MH),
  which costs draws x clients x rows. Clients without rows draw ``theta`` from the
  client prior :math:`p(\theta \mid u^{(s)})` either way.

Schedules
---------
``schedule="synchronous"``: every client updates from the same global approximation
in a round, as in EP. ``schedule="sequential"``: the clients (with rows) are split into
``groups`` consecutive blocks; in a *sweep* the blocks update one after another and
the server updates after each block, so later blocks see earlier blocks' new factors
(``groups`` equal to the number of clients is PVI's fully sequential schedule). Both
are the driver's client schedule (:func:`~bayes_pfl.simulation.run_rounds` with
``blocks=groups``): the factors of the clients outside the block are kept. In the
in-process simulation the vmapped client step still computes every client (and
discards the others), so a sweep costs ``groups`` synchronous rounds of compute; a
Flower deployment would only ask the block's clients.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from bayes_pfl.algorithms import vi
from bayes_pfl.algorithms.ep import gaussian_log_kernel
from bayes_pfl.centralized import check_model_data
from bayes_pfl.posterior import (
    check_steps,
    personalize,
    readout_keys,
    server_draws,
    server_summary,
    to_result,
)
from bayes_pfl.results import FitResult
from bayes_pfl.simulation import ClientError, run_rounds
from bayes_pfl.spec import HierarchicalModel

Array = jax.Array

__all__ = [
    "GLOBAL_METHODS",
    "PERSONALIZATION",
    "SCHEDULES",
    "VIClientError",
    "fit_vi",
    "fit_vi_global",
]

SCHEDULES = ("synchronous", "sequential")
GLOBAL_METHODS = ("vi", "nuts", "laplace")
PERSONALIZATION = ("local", "exact")
ON_CLIENT_ERROR = ("raise", "keep")


VIClientError = ClientError
"""A client's local VI failed (NaN ELBO, non-finite or exploding factor): the driver's
:class:`~bayes_pfl.simulation.ClientError` (``clients``, ``reasons``, ``round``)."""


def _server_q(model, fam, state, *, steps, lr, num_particles, seed):
    """Gaussian fit of ``p0 * G`` in family ``fam`` (the VI posterior at the fixed point)."""
    P = model.phi_dim

    def logp(u):
        return model.log_hyperprior(u) + gaussian_log_kernel(state.sites_product, u)

    cov0 = jnp.linalg.inv(state.precision)
    eps = vi.base_draws(
        jax.random.key(seed), max(num_particles, 2 * fam.noise_dim(P)), fam.noise_dim(P)
    )

    @jax.jit
    def run(mode, cov0, eps):
        return vi.fit_gaussian(logp, mode, 0.5 * (cov0 + cov0.T), eps, fam, steps=steps, lr=lr)

    fit = run(state.mode, cov0, eps)
    return np.asarray(fit.mean), np.asarray(fit.cov)


def local_personalize(
    rng_key: Array, model: HierarchicalModel, u_draws: Array, client_states, has_rows
) -> Array:
    r"""``theta_k^(s) ~ q_k(theta_k | u^(s))`` from each client's variational Gaussian.

    ``u_draws`` is ``[S, P]``; returns ``[K, S, D]`` (unconstrained). Clients without rows
    (``has_rows`` False) draw from the client prior ``p(theta | u^(s))`` instead.
    """
    P = model.phi_dim
    mean, cov = jnp.asarray(client_states.mean), jnp.asarray(client_states.cov)
    k, s = mean.shape[0], u_draws.shape[0]
    k_local, k_prior = jax.random.split(rng_key)

    @jax.jit
    def conditional(key, m, c):
        a = jnp.linalg.solve(c[:P, :P], c[:P, P:]).T
        cond = c[P:, P:] - a @ c[:P, P:]
        chol = jnp.linalg.cholesky(0.5 * (cond + cond.T))
        eps = jax.random.normal(key, (s, chol.shape[0]))
        return m[P:] + (u_draws - m[:P]) @ a.T + eps @ chol.T

    theta = jax.vmap(conditional)(jax.random.split(k_local, k), mean, cov)
    if not np.all(has_rows):

        @jax.jit
        def prior(key):
            def one(kk, u):
                return model.sample_theta(kk, model.phi_values(u))

            return jax.vmap(one)(jax.random.split(key, s), u_draws)

        empty = np.flatnonzero(~np.asarray(has_rows))
        keys = jax.random.split(k_prior, len(empty))
        draws = jnp.stack([prior(kk) for kk in keys])
        theta = theta.at[empty].set(draws)
    return theta


def fit_vi(
    model: HierarchicalModel,
    data,
    *,
    sites: str = "effects",
    rounds: int | None = None,
    damping: float | None = None,
    tol: float | None = None,
    vi_iterations: int = 10,
    seed: int = 0,
    num_chains: int = 4,
    num_warmup: int | None = None,
    num_samples: int = 1000,
    mh_steps: int = 5,
    progress: bool = True,
    checkpoint=None,
    resume: bool = False,
    precision_cap: float | None = None,
    **global_options,
) -> FitResult:
    """Federated (partitioned) variational inference, then global and personalized draws.

    With ``sites="effects"`` (default) VI shares EP's message format and exact server
    (:mod:`bayes_pfl.algorithms.effect_ep` with ``local="vi"``): each client's factor is
    a Gaussian over its own effects and the shared likelihood parameters, chosen so that
    ``q_k = c_k t_k`` is the Gaussian maximizing ``E_q[log L_k] - KL(q_k || c_k)``
    against its cavity ``c_k`` (Ashman et al. 2022); the server integrates the population
    exactly and samples ``p0 prod_k Z_k`` with NUTS; personalization is exact given the
    global draws. With ``sites="global"`` the factors live over the global parameters
    and are fitted by stochastic optimization (:func:`fit_vi_global`, whose options
    ``family``, ``schedule``, ``steps``, ... are passed through ``global_options``).

    Parameters
    ----------
    rounds : int, optional
        Maximum rounds (default 10 for ``"effects"``, 20 for ``"global"``).
    damping, tol : float, optional
        As in :func:`bayes_pfl.federated.fit_ep` (``"global"``: 0.8 and 1e-3).
    vi_iterations : int
        ``"effects"``: fixed-point iterations of each client's Gaussian VI per round.
    num_chains, num_warmup, num_samples, mh_steps, checkpoint, resume
        As in :func:`bayes_pfl.federated.fit_ep`.

    Returns
    -------
    FitResult
        ``method="vi"``, the same layout as :func:`~bayes_pfl.federated.fit_ep`.
    """
    if sites == "global":
        if precision_cap is not None:
            raise ValueError("precision_cap needs sites='effects' (factors over client effects)")
        return fit_vi_global(
            model,
            data,
            rounds=20 if rounds is None else rounds,
            damping=0.8 if damping is None else damping,
            tol=1e-3 if tol is None else tol,
            seed=seed,
            num_chains=num_chains,
            num_warmup=1000 if num_warmup is None else num_warmup,
            num_samples=num_samples,
            progress=progress,
            checkpoint=checkpoint,
            resume=resume,
            **global_options,
        )
    from bayes_pfl import federated

    if sites != "effects":
        raise ValueError(f"sites must be one of {federated.SITES}, got {sites!r}")
    if global_options:
        raise ValueError(
            f"option(s) {sorted(global_options)} only apply to sites='global' (VI factors "
            "over the global parameters); sites='effects' has a closed-form client update"
        )
    check_model_data(model, data)
    mh_steps = check_steps("mh_steps", mh_steps)
    vi_iterations = check_steps("vi_iterations", vi_iterations)
    rounds = 10 if rounds is None else rounds
    given = federated.ep_defaults("effects")
    damping = given["damping"] if damping is None else damping
    tol = given["tol"] if tol is None else tol
    settings = {"rounds": rounds, "damping": damping, "sites": "effects", "tol": tol}
    effect_options = {"local": "vi", "vi_iterations": vi_iterations}
    if precision_cap is not None:
        effect_options = federated.with_cap(effect_options, precision_cap, "effects")
        settings["precision_cap"] = effect_options["precision_cap"]
    return federated.run_fit(
        "vi",
        model,
        data,
        dict(rounds=rounds, damping=damping, tol=tol, sites="effects"),
        {**settings, "vi_iterations": vi_iterations},
        effect_options=tuple(sorted(effect_options.items())),
        seed=seed,
        global_method="nuts",
        num_chains=num_chains,
        num_warmup=federated.default_warmup("effects", num_warmup),
        num_samples=num_samples,
        mh_steps=mh_steps,
        progress=progress,
        checkpoint=checkpoint,
        resume=resume,
    )


def fit_vi_global(
    model: HierarchicalModel,
    data,
    *,
    rounds: int = 20,
    family: str = "full",
    rank: int = 2,
    steps: int = 200,
    first_steps: int | None = None,
    lr: float = 0.05,
    num_particles: int = 32,
    damping: float = 0.8,
    schedule: str = "synchronous",
    groups: int = 4,
    tol: float = 1e-3,
    max_site_precision: float = 1e10,
    on_client_error: str = "raise",
    seed: int = 0,
    global_method: str = "vi",
    personalization: str = "local",
    num_chains: int = 4,
    num_warmup: int = 1000,
    num_samples: int = 1000,
    progress: bool = True,
    checkpoint=None,
    resume: bool = False,
) -> FitResult:
    """Federated VI with factors over the global parameters (:mod:`bayes_pfl.algorithms.vi`).

    Parameters
    ----------
    rounds : int
        Maximum number of rounds (sweeps for the sequential schedule); stops earlier
        when the server's summary of ``p0 * G`` changes by less than ``tol``.
    family, rank, steps, first_steps, lr, num_particles, damping, tol, max_site_precision
        See :func:`bayes_pfl.algorithms.vi.build`.
    schedule : {"synchronous", "sequential"}
        All clients per round, or ``groups`` blocks one after another with a server
        update after each (see the module docstring).
    on_client_error : {"raise", "keep"}
        A client whose local VI fails (NaN ELBO, non-finite or exploding factor)
        raises :class:`VIClientError` naming it, or keeps its previous factor with a
        warning.
    global_method : {"vi", "nuts", "laplace"}
        Global draws from the server's Gaussian VI fit of ``p0 * G`` (the VI
        posterior), by NUTS on ``p0 * G`` (exact prior, VI factors; as ``fit_ep``), or
        from its Laplace approximation.
    personalization : {"local", "exact"}
        ``theta_k`` draws from the clients' variational conditionals, or from
        ``p(theta_k | u, D_k)`` (:func:`bayes_pfl.federated.personalize`).
    num_chains, num_warmup, num_samples
        Shape of the global draws (``num_warmup`` only for NUTS).
    checkpoint, resume
        Checkpoint file prefix (written after every round or sweep) and whether to
        resume from it.

    Returns
    -------
    FitResult
        ``method="vi"``, the same layout as :func:`~bayes_pfl.federated.fit_ep`, with
        the round history; ``state`` also holds the clients' variational means and
        covariances (``client_mean``, ``client_cov``).

    Examples
    --------
    >>> fit = fit_vi(model, data, rounds=10, progress=False)  # doctest: +SKIP
    >>> fit.to_datatree(data)  # doctest: +SKIP
    """
    for name, value, allowed in (
        ("schedule", schedule, SCHEDULES),
        ("global_method", global_method, GLOBAL_METHODS),
        ("personalization", personalization, PERSONALIZATION),
        ("on_client_error", on_client_error, ON_CLIENT_ERROR),
    ):
        if value not in allowed:
            raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"groups must be a positive integer, got {groups!r}")
    check_model_data(model, data)
    t_start = time.perf_counter()
    settings = {
        "rounds": rounds,
        "family": family,
        "rank": rank,
        "steps": steps,
        "first_steps": first_steps,
        "lr": lr,
        "num_particles": num_particles,
        "damping": damping,
        "schedule": schedule,
        "groups": groups,
        "tol": tol,
        "global_method": global_method,
        "personalization": personalization,
    }
    algorithm = vi.build(
        model,
        family=family,
        rank=rank,
        steps=steps,
        first_steps=first_steps,
        lr=lr,
        num_particles=num_particles,
        damping=damping,
        tol=tol,
        max_site_precision=max_site_precision,
    )
    out = run_rounds(
        algorithm,
        data.train,
        rounds=rounds,
        labels=data.clients,
        seed=seed,
        blocks=1 if schedule == "synchronous" else groups,
        on_rejected="raise" if on_client_error == "raise" else "skip",
        on_failed=on_client_error,
        progress=progress,
        checkpoint=checkpoint,
        resume=resume,
    )
    state, client_states, history = out.server_state, out.client_states, out.history
    converged = out.converged
    t_rounds = time.perf_counter() - t_start
    key_global, key_personal = readout_keys(seed)
    t0 = time.perf_counter()
    P = model.phi_dim
    sample_stats = None
    q_mean = q_cov = None
    if global_method == "vi":
        fam = vi.gaussian_family(family, rank)
        first = 3 * steps if first_steps is None else first_steps
        q_mean, q_cov = _server_q(
            model, fam, state, steps=first, lr=lr, num_particles=num_particles, seed=seed + 2
        )
        eps = jax.random.normal(key_global, (num_chains, num_samples, P))
        u = jnp.asarray(q_mean) + eps @ jnp.linalg.cholesky(jnp.asarray(q_cov)).T
    else:
        u, sample_stats = server_draws(
            key_global,
            model,
            state,
            global_method=global_method,
            num_chains=num_chains,
            num_warmup=num_warmup,
            num_samples=num_samples,
        )
    t_global = time.perf_counter() - t0
    c, s, _ = u.shape
    flat_u = u.reshape(c * s, P)
    has_rows = np.asarray(data.train.mask).sum(axis=1) > 0
    t0 = time.perf_counter()
    info_extra = {}
    if personalization == "local":
        theta = local_personalize(key_personal, model, flat_u, client_states, has_rows)
    else:
        theta, acc = personalize(key_personal, model, flat_u, data.train)
        info_extra["min_personalize_acceptance"] = float(np.min(np.asarray(acc)))
    t_personal = time.perf_counter() - t0
    result = to_result(
        "vi",
        model,
        data.clients,
        u,
        theta,
        sample_stats=sample_stats,
        history=history,
        info={
            "seed": seed,
            "rounds": max((h["round"] for h in history), default=0),
            "server_updates": len(history),
            "converged": converged,
            "wall_time_s": time.perf_counter() - t_start,
            "rounds_time_s": t_rounds,
            "global_time_s": t_global,
            "personalize_time_s": t_personal,
            **info_extra,
            "settings": settings,
        },
    )
    result.state.update(server_summary(state, u))
    result.state.update(
        {"client_mean": np.asarray(client_states.mean), "client_cov": np.asarray(client_states.cov)}
    )
    if q_mean is not None:
        result.state.update({"q_mean": q_mean, "q_cov": q_cov})
    return result
