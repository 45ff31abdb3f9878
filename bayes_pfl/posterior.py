r"""The readout after the rounds: global draws, personalized draws, cold start, the result.

Every federated method (EP, one-shot, VI; in process or over Flower) ends the same way,
and this module is that end:

* :func:`server_draws`: the server samples the global parameters from its state after
  the rounds: sites over client effects (:func:`effect_global_draws`, the population
  integrated exactly) or over the global parameters (:func:`global_draws`: NUTS on
  :math:`q(u) \propto p_0(u) G(u)`, exact hyper-prior times the product of Gaussian
  sites, or its Laplace approximation);
* :func:`personalize` / :func:`personalize_effects`: each client draws
  :math:`\theta_k^{(s)} \sim p(\theta_k \mid u^{(s)}, D_k)` for every global draw
  :math:`u^{(s)}`, so :math:`p(\theta_k \mid D) = \int p(\theta_k \mid D_k, u)\,
  p(u \mid D)\, du` is sampled exactly given the global draws (a Gaussian proposal
  refined by independence Metropolis-Hastings). Draw ``s`` of every client shares the
  global draw ``s``, so the joint ``(phi, theta_1, ..., theta_K)`` draws are coherent;
* :func:`readout`: both, timed, into a :class:`~bayes_pfl.results.FitResult`
  (:func:`to_result` converts flat draws to the user's constrained parameters);
* :func:`cold_start`: a new client with no rows gets the population predictive
  :math:`p(\theta_{new} \mid D)`; with a few rows, its personalized posterior from the
  current global draws, reweighted by its Laplace evidence :math:`\hat L_{new}(u^{(s)})`
  (importance resampling, no new federation round). With client covariates
  (metadata) the new client's population is its own, :math:`p(\theta_{new} \mid u, z_{new})`,
  from its metadata alone or with its rows.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bayes_pfl.algorithms import effect_ep, particles
from bayes_pfl.algorithms.ep import gaussian_log_kernel
from bayes_pfl.gaussian import GaussianFactor
from bayes_pfl.local import (
    map_chains,
    nuts_run,
    sample_conditional,
    sample_conditionals,
)
from bayes_pfl.population import gaussian_population
from bayes_pfl.results import FitResult
from bayes_pfl.simulation import bucket_parts, bucketed
from bayes_pfl.spec import HierarchicalModel

Array = jax.Array
log = logging.getLogger(__name__)
"""The readout's stages (global draws, personalization) at INFO: the phases after the
rounds that show no progress bar (the command line prints them on a terminal)."""

__all__ = [
    "GLOBAL_METHODS",
    "ColdStart",
    "Rounds",
    "check_steps",
    "cold_start",
    "default_batch",
    "effect_global_draws",
    "global_draws",
    "personalize",
    "personalize_client",
    "personalize_effects",
    "particle_info",
    "readout",
    "readout_keys",
    "server_draws",
    "server_summary",
    "timed_server_draws",
    "to_result",
]

GLOBAL_METHODS = ("nuts", "laplace")
"""How the server samples the product of sites over the global parameters."""


def global_draws(
    rng_key: Array,
    model: HierarchicalModel,
    sites_product: GaussianFactor,
    *,
    method: str = "nuts",
    mode: Array | None = None,
    precision: Array | None = None,
    num_chains: int = 4,
    num_warmup: int = 1000,
    num_samples: int = 1000,
) -> tuple[Array, dict[str, Array]]:
    """Draws of the unconstrained global parameters from ``p0(u) * G(u)``.

    Returns ``(u [chain, draw, P], sample_stats)``. ``method="nuts"`` samples the
    small server model with NUTS (chains vectorized); ``"laplace"`` draws from the
    Gaussian at ``mode`` with ``precision`` (the server's Laplace summary).
    """
    if method not in GLOBAL_METHODS:
        raise ValueError(f"global method must be one of {GLOBAL_METHODS}, got {method!r}")
    P = model.phi_dim
    if method == "laplace":
        chol = jnp.linalg.cholesky(jnp.linalg.inv(precision))
        eps = jax.random.normal(rng_key, (num_chains, num_samples, P))
        return mode + eps @ chol.T, {}

    def logp(u):
        return model.log_hyperprior(u) + gaussian_log_kernel(sites_product, u)

    start = jnp.zeros(P) if mode is None else mode
    keys = jax.random.split(rng_key, num_chains)
    inits = start + 0.1 * jax.random.normal(jax.random.fold_in(rng_key, 1), (num_chains, P))

    @jax.jit
    def run(keys, inits):
        return jax.vmap(
            lambda k, z0: nuts_run(k, logp, z0, num_warmup=num_warmup, num_samples=num_samples)
        )(keys, inits)

    chains = run(keys, inits)
    return chains.draws, {"diverging": np.asarray(chains.diverging)}


def effect_global_draws(
    rng_key: Array,
    model: HierarchicalModel,
    state: effect_ep.EffectServerState | particles.ParticleServerState,
    *,
    num_chains: int = 4,
    num_warmup: int = 300,
    num_samples: int = 1000,
) -> tuple[Array, dict[str, Array]]:
    """NUTS draws ``[chain, draw, P]`` of ``p0(u) prod_k Z_k(u)`` (sites over client effects).

    The chains start from the server's last draws with the dense mass matrices its
    last round adapted, and adapt only their step size during ``num_warmup``. After a
    particle exchange (:class:`~bayes_pfl.algorithms.particles.ParticleServerState`) the
    density is the particle-corrected one
    (:func:`~bayes_pfl.algorithms.particles.corrected_density`) over the clients that
    sent particles.
    """
    density_args: tuple = ()
    density = effect_ep.server_density
    if isinstance(state, particles.ParticleServerState):
        density_args = particles.used_particles(state)
        density = particles.corrected_density
        state = state.ep
    else:
        density_args = (jax.device_get(state.sites),)
        if model.n_covariates:
            density_args += (jax.device_get(state.covariates),)
    pop = gaussian_population(model)
    log_hyperprior = _jitted_hyperprior(model)  # one object per model: the sampler's cache key
    n_prev = state.draws.shape[0]
    pick = np.arange(num_chains) % n_prev
    # host copies: the rounds' chains may have left these on other devices than these
    # chains run on (see ``local.map_chains``)
    inits = np.asarray(state.draws[:, -1, :])[pick]
    step = np.asarray(state.step_size)[pick]
    inv_mass = np.asarray(state.inverse_mass)[pick]
    keys = jax.random.split(rng_key, num_chains)
    run = _effect_sampler(pop, log_hyperprior, num_warmup, num_samples, density)
    draws, diverging = run(keys, inits, step, inv_mass, density_args)
    return np.asarray(draws), {"diverging": np.asarray(diverging)}


@functools.lru_cache(maxsize=16)
def _jitted_hyperprior(model: HierarchicalModel):
    """``jax.jit(model.log_hyperprior)``, made once per model: a new wrapper per fit made
    :func:`_effect_sampler` miss its cache, so every fit traced and compiled its final
    chains again (about 7 s of a 10 s readout on a 150-client federation)."""
    return jax.jit(model.log_hyperprior)


@functools.lru_cache(maxsize=16)
def _effect_sampler(pop, log_hyperprior, num_warmup: int, num_samples: int, density):
    """The jitted final NUTS chains of :func:`effect_global_draws` (one compilation per
    setting); ``density(pop, log_hyperprior, *args)`` is the server's log density."""

    def chain(k, z0, eps, m, args):
        return nuts_run(
            k,
            density(pop, log_hyperprior, *args),
            z0,
            num_warmup=num_warmup,
            num_samples=num_samples,
            step_size=eps,
            inverse_mass_matrix=m,
            adapt_mass_matrix=False,
        )

    @jax.jit
    def run(keys, inits, step, inv_mass, args):
        out = map_chains(chain, (keys, inits, step, inv_mass), (args,))
        return out.draws, out.diverging

    return run


def _client_logp(model: HierarchicalModel, covariates=None):
    def logp(th, u, x, y, mask):
        return model.client_log_joint(th, u, x, y, mask, covariates)

    return logp


def personalize_client(
    rng_key: Array,
    model: HierarchicalModel,
    u_draws: Array,
    x: Array,
    y: Array,
    mask: Array,
    *,
    mh_steps: int = 5,
    newton_iter: int = 1,
    covariates: Array | None = None,
) -> tuple[Array, Array]:
    """``theta^(s) ~ p(theta | u^(s), D_k)`` for one client: ``([S, D] draws, mean acceptance)``.

    The body of :func:`personalize` for the client whose key is ``rng_key``
    (``jax.random.split(key, K)[k]`` there); the Flower client calls it, so a
    deployment draws the same values as the in-process run. ``covariates [M]``: the
    client's covariates, with client covariates.
    """
    logp = _client_logp(model, covariates)
    return sample_conditionals(
        rng_key,
        lambda th, u: logp(th, u, x, y, mask),
        u_draws,
        jnp.zeros(model.theta_dim),
        mh_steps=mh_steps,
        newton_iter=newton_iter,
    )


def personalize(
    rng_key: Array,
    model: HierarchicalModel,
    u_draws: Array,
    data,
    *,
    mh_steps: int = 5,
    newton_iter: int = 1,
    batch_size: int | None = None,
    covariates: Array | None = None,
) -> tuple[Array, Array]:
    """Each client's ``theta`` for every global draw: ``theta_k^(s) ~ p(theta_k | u^(s), D_k)``.

    Each draw is an independence Metropolis-Hastings chain of ``mh_steps`` steps
    whose proposal is the Laplace approximation of the conditional, reached by
    ``newton_iter`` Newton iterations from a linear prediction of the draw's mode
    (:func:`bayes_pfl.local.sample_conditionals`). The draws are exact when the
    conditional is Gaussian; otherwise the chain's acceptance rate (returned per
    client) says how close the proposal is (0.99 on the 50-row logistic clients
    of ``benchmarks/federated_speed.py``).

    Parameters
    ----------
    u_draws : Array
        ``[S, P]`` unconstrained global draws.
    data : ClientArrays
        Stacked client arrays.
    mh_steps, newton_iter : int
        MH steps per draw and Newton iterations per draw's proposal.
    batch_size : int, optional
        Clients per vectorized batch (default: a batch's draws x rows x features x
        client parameters stays about 2e7, the size of the per-draw Hessians). Clients
        are grouped by size first (:func:`bayes_pfl.simulation.row_buckets`).
    covariates : Array, optional
        ``[K, M]`` the clients' covariates, for a model with client covariates.

    Returns
    -------
    (theta [K, S, D], acceptance [K])
        Unconstrained client draws and each client's mean independence-MH
        acceptance rate (1.0 when its conditional is Gaussian).
    """
    mh_steps = check_steps("mh_steps", mh_steps)
    newton_iter = check_steps("newton_iter", newton_iter)

    def call(batch, keys, z, arrays):
        kernel = _personalize_kernel(model, mh_steps, newton_iter, batch)
        return kernel(keys, u_draws, z, *arrays)

    return _by_client_buckets(
        call, rng_key, model, data, covariates, u_draws.shape[0], batch_size=batch_size
    )


def _by_client_buckets(
    call, rng_key, model, data, covariates, draws_per_row, *, batch_size, sites=()
):
    """``call(batch, keys, *sites, z, (x, y, mask))`` over the clients, one key each.

    Clients are padded to fewer rows where sizes are ragged (simulation.row_buckets, one
    compiled shape per bucket); every client keeps its own key, so the draws do not
    depend on the grouping. Batches of clients (lax.map) keep one batch's work
    (``draws_per_row`` x rows x features x client parameters: the per-draw Hessians of the
    likelihood in the client's parameters) around 2e7 numbers unless ``batch_size`` is
    given. Without the parameters' factor, 4000 draws of 8 clients of 80 rows with a missing
    feature's effects (6 client parameters) ran 5 clients a batch: 3.9 GB of XLA temporaries
    (0.78 GB a client, ``memory_analysis``), 7 GB at peak, and a CI worker ran out of memory
    in that test (stop 35).
    """
    x, y, mask = (jnp.asarray(a) for a in (data.x, data.y, data.mask))
    k = x.shape[0]
    keys = jax.random.split(rng_key, k)
    z = _client_covariates(model, covariates, k)

    def step(bucket_keys, *parts):
        n_clients, rows = parts[-1][0].shape[:2]
        shape = (draws_per_row, rows, x.shape[2], model.theta_dim)
        return call(batch_size or default_batch(n_clients, *shape), bucket_keys, *parts)

    return bucketed(step, bucket_parts((x, y, mask), mask), keys, (*sites, z))


def default_batch(n_clients: int, draws: int, rows: int, features: int, params: int) -> int:
    """Clients per vectorized batch of the personalized draws: ``draws x rows x features x
    params`` numbers a client (the per-draw Hessians of its likelihood in its ``params``
    parameters), about 2e7 a batch, at least one client."""
    per_client = draws * rows * max(features, 1) * max(params, 1)
    return int(max(1, min(n_clients, 2e7 // max(per_client, 1))))


def _client_covariates(model: HierarchicalModel, covariates, n_clients: int):
    """The clients' covariates ``[K, M]`` as an array, checked; ``None`` without."""
    z = model.check_covariates(covariates, (n_clients,))
    return None if z is None else jnp.asarray(z)


def personalize_effects(
    rng_key: Array,
    model: HierarchicalModel,
    sites: GaussianFactor,
    u_draws: Array,
    data,
    *,
    mh_steps: int = 5,
    batch_size: int | None = None,
    covariates: Array | None = None,
) -> tuple[Array, Array]:
    """:func:`personalize` from each client's site over its effects (EP with ``sites="effects"``).

    Client ``k`` draws ``theta_k^(s) ~ p(theta_k | u^(s), D_k)`` by independence
    Metropolis-Hastings whose proposal is the population times its own site
    (:func:`bayes_pfl.algorithms.effect_ep.personalize_client`): exact in the limit,
    no optimization per draw. Same keys, shapes and outputs as :func:`personalize`
    (``covariates [K, M]`` with client covariates).
    """
    mh_steps = check_steps("mh_steps", mh_steps)

    def call(batch, keys, client_sites, z, arrays):
        kernel = _effect_personalize_kernel(model, mh_steps, batch)
        return kernel(keys, client_sites, z, u_draws, *arrays)

    draws_per_row = u_draws.shape[0] * (mh_steps + 1)
    return _by_client_buckets(
        call, rng_key, model, data, covariates, draws_per_row, batch_size=batch_size, sites=(sites,)
    )


@functools.lru_cache(maxsize=16)
def _effect_personalize_kernel(model: HierarchicalModel, mh_steps: int, batch: int):
    pop = gaussian_population(model)

    def one_client(u_draws, args):
        key, site, zk, xk, yk, mk = args
        return effect_ep.personalize_client(
            key, pop, site, u_draws, xk, yk, mk, mh_steps=mh_steps, covariates=zk
        )

    @jax.jit
    def run(keys, sites, z, u_draws, x, y, mask):
        return jax.lax.map(
            functools.partial(one_client, u_draws), (keys, sites, z, x, y, mask), batch_size=batch
        )

    return run


def check_steps(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


@functools.lru_cache(maxsize=16)
def _personalize_kernel(model: HierarchicalModel, mh_steps: int, newton_iter: int, batch: int):
    """The jitted, client-batched personalization (cached: one compilation per setting)."""

    def one_client(u_draws, args):
        key, zk, xk, yk, mk = args
        return personalize_client(
            key,
            model,
            u_draws,
            xk,
            yk,
            mk,
            mh_steps=mh_steps,
            newton_iter=newton_iter,
            covariates=zk,
        )

    @jax.jit
    def run(keys, u_draws, z, x, y, mask):
        return jax.lax.map(
            functools.partial(one_client, u_draws), (keys, z, x, y, mask), batch_size=batch
        )

    return run


def _constrain(model: HierarchicalModel, u: Array, theta: Array | None, covariates=None):
    """Constrained phi (and theta) dicts from flat draws: u [N, P], theta [K, N, D]
    (and the clients' covariates [K, M], with client covariates)."""
    phi_values, theta_values = _constrain_kernels(model)
    phi = phi_values(u)
    if theta is None:
        return phi, None
    z = _client_covariates(model, covariates, theta.shape[0])
    return phi, theta_values(theta, phi, z)


@functools.lru_cache(maxsize=16)
def _constrain_kernels(model: HierarchicalModel):
    """The jitted ``(phi_values, theta_values)`` of :func:`_constrain`, made once per
    model (a new wrapper per call compiled again at every cold start)."""

    def per_client(th, phi, zk):
        return jax.vmap(model.theta_values, in_axes=(0, 0, None))(th, phi, zk)

    phi_values = jax.jit(jax.vmap(model.phi_values))
    return phi_values, jax.jit(jax.vmap(per_client, in_axes=(0, None, 0)))


def to_result(
    method: str,
    model: HierarchicalModel,
    clients,
    u: Array,
    theta: Array,
    *,
    sample_stats: dict | None,
    history: list,
    info: dict,
    covariates=None,
) -> FitResult:
    c, s, _ = u.shape
    flat_u = u.reshape(c * s, -1)
    phi, theta_vals = _constrain(model, flat_u, theta, covariates)
    phi = {k: np.asarray(v).reshape((c, s) + v.shape[1:]) for k, v in phi.items()}
    # theta_vals: [K, C*S, ...] -> [C, S, K, ...]
    th = {}  # theta None: no client's draws (a DP run on Flower keeps them on the nodes)
    for name, v in (theta_vals or {}).items():
        v = np.moveaxis(np.asarray(v), 0, 1)
        th[name] = v.reshape((c, s) + v.shape[1:])
    return FitResult(
        method=method,
        model=model,
        clients=tuple(clients),
        phi=phi,
        theta=th,
        sample_stats=sample_stats or None,
        history=history,
        info=info,
    )


class Rounds(NamedTuple):
    """What the rounds leave for the readout: the server state, the history, convergence."""

    server_state: Any
    history: list
    converged: bool


def server_draws(
    rng_key: Array,
    model: HierarchicalModel,
    state,
    *,
    global_method: str = "nuts",
    num_chains: int = 4,
    num_warmup: int = 1000,
    num_samples: int = 1000,
) -> tuple[Array, dict]:
    """The global draws ``[chain, draw, P]`` after EP's rounds, from its server state.

    Sites over client effects (:class:`~bayes_pfl.algorithms.effect_ep.EffectServerState`):
    :func:`effect_global_draws`; sites over the global parameters: :func:`global_draws`.
    Used by the in-process fits and by the Flower server alike.
    """
    if isinstance(state, effect_ep.EffectServerState | particles.ParticleServerState):
        return effect_global_draws(
            rng_key,
            model,
            state,
            num_chains=num_chains,
            num_warmup=num_warmup,
            num_samples=num_samples,
        )
    return global_draws(
        rng_key,
        model,
        state.sites_product,
        method=global_method,
        mode=state.mode,
        precision=state.precision,
        num_chains=num_chains,
        num_warmup=num_warmup,
        num_samples=num_samples,
    )


def server_summary(state, u) -> dict[str, Any]:
    """What a federated ``FitResult.state`` keeps of the server: draws and sites."""
    if isinstance(state, particles.ParticleServerState):
        used = np.asarray(state.particles.use)
        return {
            "u_draws": np.asarray(u),
            "sites": state.ep.sites,
            "particle_clients": used,
            "particle_ess": np.asarray(state.ess),
            "particle_sd_log_ratio": np.asarray(state.sd_log_ratio),
        }
    if isinstance(state, effect_ep.EffectServerState):
        return {"u_draws": np.asarray(u), "sites": state.sites, "capped": np.asarray(state.capped)}
    return {
        "u_draws": np.asarray(u),
        "sites_product": state.sites_product,
        "mode": np.asarray(state.mode),
        "precision": np.asarray(state.precision),
    }


def particle_info(state, labels) -> dict[str, Any]:
    """The info keys of a fit whose server ran the particle exchange: ``particle_clients``,
    the labels of the clients whose ``Z_k`` is particle-corrected (none otherwise)."""
    if not isinstance(state, particles.ParticleServerState):
        return {}
    used = np.asarray(state.particles.use)
    return {"particle_clients": [str(lab) for lab, u in zip(labels, used, strict=True) if u]}


def readout_keys(seed: int) -> tuple[Array, Array]:
    """The keys of the readout: the global draws', then the personalization's.

    Every runtime derives them so (in process, Flower), which is what makes their draws
    equal for the same seed.
    """
    key = jax.random.key(seed + 1)
    return jax.random.fold_in(key, 1), jax.random.fold_in(key, 2)


def timed_server_draws(rng_key: Array, model: HierarchicalModel, state, **sampling):
    """:func:`server_draws` and the seconds they took: ``(u, sample_stats, seconds)``."""
    t0 = time.perf_counter()
    u, stats = server_draws(rng_key, model, state, **sampling)
    u = jax.block_until_ready(u)  # JAX is asynchronous: time the work, not its dispatch
    return u, stats, time.perf_counter() - t0


def readout(
    method: str,
    model: HierarchicalModel,
    data,
    fitted: Rounds,
    *,
    seed: int,
    global_method: str,
    num_chains: int,
    num_warmup: int,
    num_samples: int,
    t_start: float,
    settings: dict,
    mh_steps: int = 5,
    personal_sites=None,
) -> FitResult:
    """Global draws from the server's state, then each client's personalized draws.

    ``personal_sites`` (sites over effects only): the sites the clients personalize
    from (the proposal of :func:`personalize_effects`) instead of the server's, e.g.
    each client's own noise-free site in a differentially private fit.
    """
    state = fitted.server_state
    key_global, key_personal = readout_keys(seed)
    log.info("global draws: %s, %d chain(s) x %d draws", global_method, num_chains, num_samples)
    u, gstats, t_global = timed_server_draws(
        key_global,
        model,
        state,
        global_method=global_method,
        num_chains=num_chains,
        num_warmup=num_warmup,
        num_samples=num_samples,
    )
    c, s, p = u.shape
    log.info(
        "global draws took %.1f s; personalizing %d client(s) x %d draws",
        t_global,
        len(data.clients),
        c * s,
    )
    t0 = time.perf_counter()
    covariates = _state_covariates(model, state)
    if isinstance(state, effect_ep.EffectServerState | particles.ParticleServerState):
        # a Student-t population too: the proposal is the site times the scale mixture
        # (the generic sampler's Laplace proposal is too narrow for the t's tails: its
        # personalized sds were 0.37-1.02 of NUTS's, median 0.70, on a 150-client federation)
        sites = particles.gaussian_state(state).sites if personal_sites is None else personal_sites
        draw = functools.partial(personalize_effects, key_personal, model, sites)
    else:
        draw = functools.partial(personalize, key_personal, model)
    theta, acc = draw(u.reshape(c * s, p), data.train, mh_steps=mh_steps, covariates=covariates)
    theta = jax.block_until_ready(theta)  # JAX is asynchronous: time the work, not its dispatch
    t_personal = time.perf_counter() - t0
    log.info("personalization took %.1f s", t_personal)
    result = to_result(
        method,
        model,
        data.clients,
        u,
        theta,
        sample_stats=gstats,
        history=fitted.history,
        info={
            "seed": seed,
            "rounds": len(fitted.history),
            "converged": fitted.converged,
            "wall_time_s": time.perf_counter() - t_start,
            "global_time_s": t_global,
            "personalize_time_s": t_personal,
            "min_personalize_acceptance": float(np.min(np.asarray(acc))),
            "settings": {**settings, "global_method": global_method, "mh_steps": mh_steps},
            **particle_info(state, data.clients),
        },
        covariates=covariates,
    )
    result.state.update(server_summary(state, u))
    if covariates is not None:
        result.state.update(
            covariates=np.asarray(covariates),
            metadata_encoding=data.metadata.encoding,
        )
    return result


def _state_covariates(model: HierarchicalModel, state):
    """The clients' covariates ``[K, M]`` the server state holds (``None`` without)."""
    if not model.n_covariates:
        return None
    ep_state = particles.gaussian_state(state)
    if not isinstance(ep_state, effect_ep.EffectServerState):
        raise ValueError(
            f"model {model.name!r} has client covariates: only EP with sites over client "
            "effects (sites='effects') supports them"
        )
    return jnp.asarray(ep_state.covariates)


class ColdStart(NamedTuple):
    """Personalized draws for a new client."""

    theta: dict[str, np.ndarray]  # constrained, each [draw, ...]
    phi: dict[str, np.ndarray]  # the global draws each theta draw goes with
    ess: float  # effective sample size of the importance weights (all draws when no rows)


def cold_start(
    result: FitResult,
    x=None,
    y=None,
    *,
    seed: int = 0,
    mh_steps: int = 10,
    metadata=None,
) -> ColdStart:
    """Posterior of a new client's ``theta`` without re-running the federation.

    With no rows (``x is None``): draws from ``p(theta_new | D) = ∫ p(theta | u) p(u | D) du``
    using the fit's global draws. With rows ``x [n, P]``, ``y [n]``: global draws
    are reweighted by the new client's Laplace evidence ``L_new(u)`` and
    resampled, and ``theta`` is drawn from ``p(theta | u, D_new)`` for each.

    With client covariates the new client's population is ``p(theta | u, z_new)``:
    ``metadata`` gives its metadata (a mapping column -> value, a Series or a one-row
    DataFrame, encoded as the training metadata were; a category level unseen in
    training is a :class:`~bayes_pfl.data.DataError`), or its covariates ``z [M]``
    directly as an array.
    """
    state = getattr(result, "state", None)
    if not state or "u_draws" not in state:
        raise ValueError("cold_start needs a federated FitResult (from fit_ep or fit_one_shot)")
    model = result.model
    u = jnp.asarray(state["u_draws"]).reshape(-1, model.phi_dim)
    z = _new_client_covariates(model, state, metadata)
    key = jax.random.key(seed)
    n = u.shape[0]
    if x is None:
        theta = _cold_prior_kernel(model)(jax.random.split(key, n), u, z)
        ess = float(n)
    else:
        x = jnp.asarray(x, dtype=u.dtype)
        y = jnp.asarray(y, dtype=u.dtype)
        if x.ndim != 2 or y.shape != (x.shape[0],):
            raise ValueError(f"x must be [n, features] and y [n], got {x.shape} and {y.shape}")
        k1, k2 = jax.random.split(key)
        run = _cold_rows_kernel(model, check_steps("mh_steps", mh_steps))
        theta_all, log_w = run(jax.random.split(k1, n), u, z, x, y)
        w = jax.nn.softmax(log_w)
        ess = float(1.0 / jnp.sum(w**2))
        idx = jax.random.choice(k2, n, (n,), p=w)
        theta, u = theta_all[idx], u[idx]
    phi, theta_vals = _constrain(model, u, theta[None], None if z is None else z[None])
    return ColdStart(
        theta={k: np.asarray(v[0]) for k, v in theta_vals.items()},
        phi={k: np.asarray(v) for k, v in phi.items()},
        ess=ess,
    )


@functools.lru_cache(maxsize=16)
def _cold_prior_kernel(model: HierarchicalModel):
    """The jitted draws of :func:`cold_start` without rows, ``(keys [N], u [N, P], z)``:
    made once per model (a closure per call compiled again at every new client)."""

    def one(k, uu, z):
        return model.sample_theta(k, model.phi_values(uu), z)

    return jax.jit(jax.vmap(one, in_axes=(0, 0, None)))


@functools.lru_cache(maxsize=16)
def _cold_rows_kernel(model: HierarchicalModel, mh_steps: int):
    """The jitted conditional draws and evidences of :func:`cold_start` with rows,
    ``(keys [N], u [N, P], z, x [n, P], y [n])``: made once per model and setting."""
    d = model.theta_dim

    def one(k, uu, z, x, y):
        mask = jnp.ones(y.shape[0], bool)
        logp = _client_logp(model, z)
        res = sample_conditional(
            k, lambda th: logp(th, uu, x, y, mask), jnp.zeros(d), mh_steps=mh_steps
        )
        return res.theta, res.log_evidence

    return jax.jit(jax.vmap(one, in_axes=(0, 0, None, None, None)))


def _new_client_covariates(model: HierarchicalModel, state: dict, metadata) -> Array | None:
    """A new client's covariates ``z [M]`` from its metadata (``None`` without covariates)."""
    if not model.n_covariates:
        if metadata is not None:
            raise ValueError(
                f"model {model.name!r} has no client covariates: a new client's metadata "
                "say nothing to it"
            )
        return None
    names = list(model.client_covariates)
    if metadata is None:
        raise ValueError(
            f"model {model.name!r} has client covariates {names}: give the new client's "
            "metadata (cold_start(..., metadata={column: value}))"
        )
    if isinstance(metadata, np.ndarray | jax.Array | list | tuple):
        z = np.asarray(metadata, dtype=float)
        if z.shape != (len(names),):
            raise ValueError(f"covariates must have shape ({len(names)},) ({names}), got {z.shape}")
    else:
        encoding = state.get("metadata_encoding")
        if encoding is None:
            raise ValueError(
                "the fit has no metadata encoding (its data had no metadata table): give the "
                f"new client's covariates z as an array of {len(names)} ({names})"
            )
        z = encoding.encode_row(metadata)
    return jnp.asarray(z, dtype=state["u_draws"].dtype)
