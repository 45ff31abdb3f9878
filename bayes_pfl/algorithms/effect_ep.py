r"""Federated expectation propagation with sites over each client's own effects.

Each client ``k`` summarizes its likelihood by a Gaussian *site* ``t_k(z_k)`` over
``z_k = (e_k, u_s)``: its own effects and the shared parameters its likelihood
reads (:class:`~bayes_pfl.population.Population`). The server keeps the
population *exact*: its global posterior is

.. math::

    q(\phi) \propto p_0(\phi) \prod_k Z_k(\phi), \qquad
    Z_k(\phi) = \int \mathcal N(e \mid m(\phi), C(\phi))\, t_k(e, u_s)\, de,

closed form (:meth:`~bayes_pfl.population.Population.log_z`), which it samples
with NUTS. A round (Hall et al. 2020, EP over random effects; Vehtari et al.
2020 for EP on partitioned data):

1. **cavity** (server): for client ``k``, the population predictive of ``z_k``
   with the client's own site removed, ``∫ N(e | m, C) q_{-k}(phi) dphi``, by
   moments over the server's draws of ``phi`` reweighted by ``1 / Z_k(phi)``
   (leave-one-client-out importance weights, truncated at ``sqrt(S)`` times their
   mean; Ionides 2008), projected to a Gaussian ``c_k(z)``;
2. **tilted** (client): ``c_k(z) p(y_k | z, x_k)``; its mean and covariance by
   importance sampling with the Laplace approximation at its mode as proposal,
   on a fixed set of exactly whitened antithetic points (so a Gaussian tilted
   distribution gives its moments exactly), falling back to the Laplace moments
   when the weights' effective sample size is low;
3. **site** (client): moment matching, ``t_k^{new} = N(tilted moments) / c_k``,
   its precision projected to be positive semi-definite (the GLM likelihoods are
   log-concave in the effects);
4. **server**: damps the sites, samples ``q(phi)`` with NUTS and forms the next
   cavities.

When a client's likelihood is Gaussian in ``z`` (eight schools, a Normal model
with known noise) its site is exact after one exchange whatever the cavity, so
one-shot exchange (the first round, undamped, the cavities from the hyper-prior)
gives the exact posterior. Message size: ``J (J + 1)`` numbers up, the same down,
``J = E + Q``, independent of the client's rows.

With *client covariates* (a model declared with ``client_covariates``) each client's
population is its own, ``e_k | phi ~ N(m(phi, z_k), C(phi))`` (``m = mu + z_k W``
for the zoo GLMs): the server's integral, the cavities and the personalization use
``m_k`` in place of ``m``. The covariates are not private: the server holds them,
``z [K, M]``, as constants of its state (:func:`build`'s ``covariates``), and the
clients' messages are unchanged.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bayes_pfl import gaussian as gf
from bayes_pfl.algorithms import Algorithm, select_clients
from bayes_pfl.gaussian import GaussianFactor
from bayes_pfl.local import (
    independence_chain,
    map_chains,
    newton_maximize,
    nuts_run,
    saddle_free,
    value_grad_hessian,
)
from bayes_pfl.population import Population, gaussian_population, small_cholesky
from bayes_pfl.spec import HierarchicalModel, isolated_trace
from bayes_pfl.student_t import student_t_correction

Array = jax.Array

__all__ = [
    "EffectBroadcast",
    "EffectClientInfo",
    "EffectClientState",
    "EffectMessage",
    "EffectServerInfo",
    "EffectServerState",
    "build",
    "cavities",
    "personalize_client",
    "server_density",
    "server_log_density",
]


class EffectServerState(NamedTuple):
    sites: GaussianFactor  # [K] full sites over z_k
    draws: Array  # [C, S, P] the server's current draws of u_phi
    step_size: Array  # [C] NUTS step sizes the chains adapted to
    inverse_mass: Array  # [C, P, P] and their dense inverse mass matrices
    cavity: GaussianFactor  # [K] the cavities of the next round
    loo_ess: Array  # [K] effective sample size of each client's leave-one-out weights
    capped: Array  # [K] bool: the precision cap bound on the client's last used site
    damping: Array  # the damping rate of the next round
    last_change: Array  # the last round's mean change (to detect oscillation)
    mode: Array  # [P] mode of the server's density p0 prod_k Z_k
    precision: Array  # [P, P] its negative Hessian there (a deterministic summary)
    round: Array
    covariates: Array  # [K, M] the clients' covariates (M = 0 without client covariates)


class EffectClientState(NamedTuple):
    z_mode: Array  # [J] last tilted mode (warm start)


class EffectBroadcast(NamedTuple):
    cavity: GaussianFactor  # this client's cavity over z


class EffectMessage(NamedTuple):
    site: GaussianFactor  # proposed (undamped) site over z
    ok: Array
    n_rows: Array  # the rows the client declares its site is computed from


class EffectClientInfo(NamedTuple):
    ok: Array
    converged: Array
    iterations: Array
    ess: Array  # effective sample size of the tilted importance weights
    laplace_fallback: Array  # the weights were too uneven; Laplace moments were used


class EffectServerInfo(NamedTuple):
    mean_change: Array  # max over clients of |Δ mean| / sd of cavity x site
    sd_change: Array  # max over clients of |log(sd_new / sd_old)|
    global_mean_change: Array  # max |Δ mode| / sd of the server density's Laplace summary
    global_sd_change: Array  # max |log(sd_new / sd_old)| of that summary
    n_accepted: Array
    n_capped: Array  # sites whose precision the cap reduced this round
    server_divergences: Array
    min_loo_ess: Array
    converged: Array


def server_density(
    pop: Population, log_hyperprior, sites: GaussianFactor, covariates: Array | None = None
):
    """``u_phi -> log p0(u_phi) + Σ_k log Z_k(u_phi)``, the server's exact population
    integral, for a sampler's inner loop.

    ``covariates [K, M]``: the clients' covariates with client covariates; client ``k``'s
    population mean is then ``m(phi, z_k)`` (:meth:`~bayes_pfl.population.Population.client_means`).

    The sites' blocks in the shared parameters alone enter ``Σ_k log Z_k`` as one quadratic
    form: they are summed over clients here, once, instead of per client at every
    evaluation (``K Q^2`` products per evaluation become ``Q^2``; radon's 85 counties and
    three shared parameters, 1,000 clients sharing ten slopes).
    """
    E = pop.e_dim
    if pop.q_dim:
        p_ss = jnp.sum(sites.precision[:, E:, E:], axis=0)
        s_s = jnp.sum(sites.shift[:, E:], axis=0)

    with_covariates = _has_covariates(pop, covariates)

    def logp(u_phi):
        m, root, u_s = _population_at(pop, u_phi, covariates if with_covariates else None)
        log_z = pop.log_z_at(m, root, u_s, sites, shared_terms=False, df=pop.df_at(u_phi))
        out = log_hyperprior(u_phi) + jnp.sum(log_z)
        if pop.q_dim:
            out = out - 0.5 * u_s @ (p_ss @ u_s) + s_s @ u_s
        return out

    return logp


def _population_at(pop: Population, u: Array, covariates: Array | None):
    """``(m, root, u_s)`` at a global draw ``u``: the population's mean (each client's,
    ``[K, E]``, given ``covariates``), its covariance root and the shared parameters."""
    m, root = pop.moments(u)
    if covariates is not None:
        m = pop.client_means(u, covariates)  # [K, E]
    return m, root, u[pop.shared_index]


def _has_covariates(pop: Population, covariates) -> bool:
    """Whether the server's integral reads client covariates: the model declares them
    (then they must be given) and there is at least one."""
    if not pop.n_covariates:
        return False
    if covariates is None:
        raise ValueError(
            f"model {pop.model.name!r} declares client covariates "
            f"{list(pop.model.client_covariates)}: the server needs every client's "
            "covariates [K, M]"
        )
    return True


def server_log_density(
    pop: Population,
    log_hyperprior,
    u_phi: Array,
    sites: GaussianFactor,
    covariates: Array | None = None,
):
    """``log p0(u_phi) + Σ_k log Z_k(u_phi)``: the server's exact population integral."""
    return server_density(pop, log_hyperprior, sites, covariates)(u_phi)


def personalize_client(
    rng_key: Array,
    pop: Population,
    site: GaussianFactor,
    u_draws: Array,
    x: Array,
    y: Array,
    mask: Array,
    *,
    mh_steps: int = 5,
    covariates: Array | None = None,
) -> tuple[Array, Array]:
    r"""``theta^(s) ~ p(theta_k | u^(s), D_k)`` for one client, exactly, from its own site.

    ``covariates [M]``: the client's covariates, with client covariates (its population
    mean ``m(phi, z_k)``).

    In standardized coordinates ``w`` (``u_theta = loc + scale * w``, ``w ~ N(0, I)`` a
    priori, effects ``e = m + L w``) the conditional is ``N(w | 0, I) L_k(m + L w, u_s)``.
    The Gaussian ``N(w | 0, I) t_k(m + L w, u_s)`` (the population times the client's
    site, closed form: precision ``M = I + L^T A L``) gives a start, one Newton step on
    the exact conditional from there gives the proposal of ``mh_steps`` independence
    Metropolis-Hastings steps that the exact likelihood corrects: exact for a Gaussian
    conditional (every step accepted) and in the limit otherwise; the acceptance rate
    (returned) says how close the proposal is. Per draw: one Hessian of the client's
    likelihood in its effects and one batched evaluation of ``mh_steps + 1`` proposals.

    With a Student-t population (``pop.df``) the population is the scale mixture
    ``w | λ ~ N(0, I / λ)`` and the proposal is the same product in mixture form
    (:func:`_mixture_proposals`): exact for a Gaussian likelihood, corrected by the exact
    conditional otherwise.

    Returns ``(u_theta [S, D], mean acceptance)``.
    """
    E = pop.e_dim
    n_draws = u_draws.shape[0]
    m, root = jax.vmap(lambda u: pop.moments(u, covariates))(u_draws)  # [S, E], [S, E, D]
    loc, scale = jax.vmap(lambda u: pop.prior_sites(u, covariates))(u_draws)  # [S, D]
    u_s = u_draws[:, pop.shared_index]
    a = site.precision[:E, :E]
    h = site.shift[:E] - u_s @ site.precision[:E, E:].T  # [S, E]
    lt_a = jnp.einsum("sed,ef->sdf", root, a)
    lt_a_l = jnp.einsum("sdf,sfg->sdg", lt_a, root)  # L^T A L [S, D, D]
    rhs = jnp.einsum("sed,se->sd", root, h - m @ a)
    k_eps, k_u = jax.random.split(rng_key)
    if pop.df is not None:
        w, lws = _mixture_proposals(
            k_eps, pop, u_draws, lt_a_l, rhs, m, root, u_s, x, y, mask, mh_steps
        )
    else:
        w, lws = _gaussian_proposals(k_eps, pop, lt_a_l, rhs, m, root, u_s, x, y, mask, mh_steps)
    log_unif = jnp.log(jax.random.uniform(k_u, (n_draws, mh_steps), dtype=a.dtype))
    idx, acc = jax.vmap(independence_chain)(lws, log_unif)
    w_pick = jnp.take_along_axis(w, idx[:, None, None], axis=1)[:, 0]
    return loc + scale * w_pick, jnp.mean(acc)


def _gaussian_proposals(key, pop: Population, b, r, m, root, u_s, x, y, mask, mh_steps: int):
    """Proposals and log weights of :func:`personalize_client` for a Gaussian population:
    ``N(w | 0, I)`` times the site (precision ``I + B``, shift ``r``), moved by one Newton
    step on the exact conditional. Returns ``(w [S, n, D], log weights [S, n])``."""
    n_draws, dim = r.shape
    mat = jnp.eye(dim, dtype=r.dtype) + b
    chol = small_cholesky(0.5 * (mat + jnp.swapaxes(mat, -1, -2)))
    eps = jax.random.normal(key, (n_draws, mh_steps + 1, dim), dtype=r.dtype)

    def one_draw(chol_s, rhs_s, m_s, root_s, us_s, eps_s):
        def logp(w):
            z = jnp.concatenate([m_s + root_s @ w, us_s])
            return -0.5 * w @ w + pop.loglik(z, x, y, mask)

        # the site's conditional mean, then one Newton step on the exact conditional from
        # there: exact for a Gaussian conditional whatever the site, and it corrects a site
        # fitted far from where this draw's population puts the client
        w0 = jax.scipy.linalg.cho_solve((chol_s, True), rhs_s)
        _, g, hess = value_grad_hessian(logp, w0)
        # not log-concave here (a gap times a slope): -hess can be nearly singular, its
        # proposal far wider than the conditional (a client never measuring a covariate:
        # 4x NUTS's sd); then the population's precision plus the log-concave curvature
        eye = jnp.eye(dim, dtype=r.dtype)
        neg = -0.5 * (hess + hess.T)
        log_concave = jnp.min(jnp.linalg.eigvalsh(neg - eye)) >= 0.0
        chol_n = jnp.linalg.cholesky(jnp.where(log_concave, neg, eye + gf.psd_part(neg - eye)))
        w1 = w0 + jax.scipy.linalg.cho_solve((chol_n, True), g)
        newton_ok = jnp.all(jnp.isfinite(chol_n)) & jnp.all(jnp.isfinite(w1))
        centre = jnp.where(newton_ok, w1, w0)
        ch = jnp.where(newton_ok, chol_n, chol_s)
        # w = centre + L^{-T} eps has covariance (L L^T)^{-1}
        w = centre + jax.scipy.linalg.solve_triangular(ch.T, eps_s.T, lower=False).T
        return w, jax.vmap(logp)(w) + 0.5 * jnp.sum(eps_s**2, 1)

    return jax.vmap(one_draw)(chol, r, m, root, u_s, eps)  # [S, n, D], [S, n]


def _mixture_proposals(
    key, pop: Population, u_draws, b, r, m, root, u_s, x, y, mask, mh_steps: int
):
    r"""Proposals and log weights of :func:`personalize_client` for a Student-t population.

    Given the mixing weight ``λ`` the population times the site is Gaussian in the
    standardized effects ``w``: precision ``λ I + B`` (``B = L^T A L``), shift ``r``. With
    ``B = V diag(β) V^T`` (one eigendecomposition per draw) every node ``λ_q`` of the
    population's quadrature (:func:`bayes_pfl.population.scale_mixture`) gives it in closed
    form, and so its normalizing constant
    ``Z_q ∝ λ_q^{D/2} Π_i (λ_q + β_i)^{-1/2} exp(Σ_i r̃_i² / (2 (λ_q + β_i)))``,
    ``r̃ = V^T r``. A proposal picks a node with probability ``∝ w_q Z_q`` (the weight's
    conditional given the site) and draws ``w`` from that node's Gaussian: a draw of the
    population times the site, the mixture the Gaussian case's proposal becomes. Its log
    weight is the exact conditional, ``log t_D(w; df) + log L_k``, minus the proposal's
    density (the mixture summed over the nodes): exact where the site is (a Gaussian
    likelihood: every weight equal), and the independence chain corrects the rest.

    With a learned ``df`` each draw ``u`` has its own ``df`` and so its own quadrature
    weights (:meth:`~bayes_pfl.population.Population.mixture`).

    Returns ``(w [S, n, D], log weights [S, n])``, ``n = mh_steps + 1``.
    """
    n_draws, dim = r.shape
    if pop.learned_df:
        df = jax.vmap(pop.df_at)(u_draws)  # [S]
        lam, log_w = jax.vmap(pop.mixture)(df)  # [S, Q]
    else:
        lam, log_w = (a[None, :] for a in pop.mixture())  # [1, Q]
        df = jnp.full((n_draws,), pop.df, dtype=r.dtype)
    beta, vec = jnp.linalg.eigh(0.5 * (b + jnp.swapaxes(b, -1, -2)))  # [S, D], [S, D, D]
    beta = jnp.maximum(beta, 0.0)  # the sites are projected PSD: rounding only
    rt = jnp.einsum("sdi,sd->si", vec, r)  # V^T r [S, D]
    prec = lam[:, :, None] + beta[:, None, :]  # [S, Q, D], in V's basis
    half_logdet = 0.5 * jnp.sum(jnp.log(prec), -1)  # [S, Q]
    r_m_r = jnp.sum(rt[:, None, :] ** 2 / prec, -1)  # r̃' (λ_q I + B)^{-1} r̃ [S, Q]
    log_z = 0.5 * dim * jnp.log(lam) - half_logdet + 0.5 * r_m_r
    log_pi = log_w + log_z
    log_pi = log_pi - jax.scipy.special.logsumexp(log_pi, axis=1, keepdims=True)
    mean_t = rt[:, None, :] / prec  # [S, Q, D] node means, in V's basis
    n = mh_steps + 1
    k_node, k_eps = jax.random.split(key)
    node = jax.random.categorical(k_node, log_pi[:, None, :], axis=-1, shape=(n_draws, n))
    eps = jax.random.normal(k_eps, (n_draws, n, dim), dtype=r.dtype)
    pick_mean = jnp.take_along_axis(mean_t, node[..., None], axis=1)  # [S, n, D]
    pick_prec = jnp.take_along_axis(prec, node[..., None], axis=1)
    wt = pick_mean + eps / jnp.sqrt(pick_prec)  # V^T w
    w = jnp.einsum("sdi,sni->snd", vec, wt)
    # the proposal's log density at each w: the mixture over every node (V orthogonal).
    # With node means r̃ / p_q: Σ_i p_qi (w̃_i - r̃_i / p_qi)² = Σ_i p_qi w̃_i² - 2 w̃·r̃
    # + Σ_i r̃_i² / p_qi, so no [S, n, Q, D] array (241 nodes with a learned df)
    quad = (
        jnp.einsum("snd,sqd->snq", wt**2, prec) - 2.0 * jnp.einsum("snd,sd->sn", wt, rt)[..., None]
    )
    log_comp = half_logdet[:, None, :] - 0.5 * (quad + r_m_r[:, None, :])
    # [S, n, Q], up to -D/2 log(2 pi), as the target below
    log_q = jax.scipy.special.logsumexp(log_comp + log_pi[:, None, :], axis=-1)
    # log t_D(w; df) + D/2 log(2 pi): the same constant left out as in log_q
    log_t = student_t_correction(w, df[:, None]) - 0.5 * jnp.sum(w**2, -1)

    def loglik(m_s, root_s, us_s, w_s):
        return jax.vmap(
            lambda wi: pop.loglik(jnp.concatenate([m_s + root_s @ wi, us_s]), x, y, mask)
        )(w_s)

    ll = jax.vmap(loglik)(m, root, u_s, w)  # [S, n]
    return w, log_t + ll - log_q


def cap_precision(
    sites: GaussianFactor, n_rows: Array, accept: Array, factor: float, max_rows: float | None
) -> tuple[GaussianFactor, Array, Array]:
    r"""Sites whose information is bounded by what their declared rows could carry.

    A row carries at most ``r`` units of information about a site's coordinates, in any
    direction; client ``k``'s site may then have no eigenvalue of its precision above
    ``c_k = n_k r``. The server does not know ``r`` a priori (it depends on the model and
    the features' scale): it takes ``r = factor x median_k(λ_max(Λ_k) / n_k)`` over the
    round's accepted clients, robust to fewer than half of them inflating their sites.
    ``n_k`` is the count the client declares, capped at ``max_rows`` by policy. A capped
    site keeps its mean ``Λ^{-1} η`` (within its range) and its eigenvectors, with
    eigenvalues ``min(λ, c_k)``: the client says the same thing with the confidence its
    rows allow.

    Returns ``(sites, capped [K] bool, per-row bound r)``.
    """
    n = jnp.maximum(n_rows, 1.0)
    if max_rows is not None:
        n = jnp.minimum(n, max_rows)
    w, v = jnp.linalg.eigh(0.5 * (sites.precision + jnp.swapaxes(sites.precision, -1, -2)))
    per_row = jnp.max(w, axis=-1) / n
    finite = accept & jnp.isfinite(per_row)
    median = jnp.nanmedian(jnp.where(finite, per_row, jnp.nan))
    bound = factor * median
    cap = (n * bound)[:, None]
    w_pos = jnp.maximum(w, 0.0)
    new_w = jnp.minimum(w_pos, cap)
    # η' = V diag(min(λ, c) / λ) V' η keeps the mean where λ > 0
    ratio = jnp.where(w_pos > 0, new_w / jnp.where(w_pos > 0, w_pos, 1.0), 1.0)
    vt_h = jnp.einsum("kji,kj->ki", v, sites.shift)
    shift = jnp.einsum("kij,kj->ki", v, ratio * vt_h)
    prec = jnp.einsum("kij,kj,klj->kil", v, new_w, v)
    capped = jnp.any(w_pos > cap, axis=-1) & finite
    out = GaussianFactor(
        jnp.where(capped[:, None, None], prec, sites.precision),
        jnp.where(capped[:, None], shift, sites.shift),
    )
    return out, capped, bound


def cavities(pop: Population, draws: Array, sites: GaussianFactor, covariates: Array | None = None):
    """Gaussian cavities over ``z_k`` for every client from global draws ``[S, P]``.

    Returns ``(cavity [K], loo_ess [K])``. For draw ``j`` the cavity's conditional of
    ``e_k`` is the population ``N(m_j, C_j)`` (``N(m_j(z_k), C_j)`` with client
    ``covariates [K, M]``) and ``u_s`` is the draw's own value; the draws are reweighted
    by ``1 / Z_k(u_j)`` to remove client ``k``'s site from ``q``.
    """
    E = pop.e_dim
    s_count = draws.shape[0]
    with_covariates = _has_covariates(pop, covariates)

    def per_draw(u):
        m, root, u_s = _population_at(pop, u, covariates if with_covariates else None)
        # a Student-t population's predictive covariance is C E[1/λ] = C df / (df - 2),
        # at the draw's df where the model learns it
        cov = pop.cov_factor_at(u) * (root @ root.T)
        return m, cov, u_s, pop.log_z_at(m, root, u_s, sites, df=pop.df_at(u))

    m, cov_e, u_s, log_z = jax.vmap(per_draw)(draws)  # [S,(K,)E], [S,E,E], [S,Q], [S,K]
    if with_covariates:
        u_s = jnp.broadcast_to(u_s[:, None, :], m.shape[:2] + u_s.shape[-1:])
    mu = jnp.concatenate([m, u_s], axis=-1)  # [S, J], or [S, K, J] with covariates
    J = mu.shape[-1]
    cond = jnp.zeros((s_count, J, J), draws.dtype).at[:, :E, :E].set(cov_e)

    def one_client(lz, mu):
        lw = -lz - jnp.max(-lz)
        w = jnp.exp(lw)
        w = w / jnp.sum(w)
        w = jnp.minimum(w, jnp.sqrt(s_count) / s_count)  # truncated IS (Ionides 2008)
        w = w / jnp.sum(w)
        ess = 1.0 / jnp.sum(w**2)
        mean = w @ mu
        second = jnp.einsum("s,sij->ij", w, cond) + jnp.einsum("s,si,sj->ij", w, mu, mu)
        cov = second - jnp.outer(mean, mean)
        cov = 0.5 * (cov + cov.T) + 1e-10 * jnp.eye(J, dtype=cov.dtype)
        return gf.from_moments(mean, cov), ess

    return jax.vmap(one_client, in_axes=(1, 1 if with_covariates else None))(log_z, mu)


def build(
    model: HierarchicalModel,
    *,
    damping: float = 1.0,
    tol: float = 0.05,
    local: str = "ep",
    vi_iterations: int = 10,
    tilted_points: int | None = None,
    min_ess_fraction: float = 0.1,
    newton_iter: int = 50,
    server_chains: int = 4,
    server_warmup: int = 300,
    server_samples: int = 300,
    precision_cap: float | None = None,
    max_rows: float | None = None,
    covariates=None,
) -> Algorithm:
    """EP with sites over client effects (see the module docstring).

    Parameters
    ----------
    model : HierarchicalModel
        A model with a Gaussian population (:class:`~bayes_pfl.population.Population`).
    damping : float
        Damping rate of the site updates after the first exchange (which is undamped),
        in ``(0, 1]``; halved (down to 0.1) after any round whose change exceeds the
        previous round's (an oscillation).
    tol : float
        Converged when no client's ``cavity x site`` moves its mean by more than
        ``tol`` sds or its sds by more than a factor ``exp(tol)``.
    tilted_points : int, optional
        Importance-sampling points of the tilted moments (default ``max(256, 32 J)``).
    min_ess_fraction : float
        Below this fraction of effective points the tilted moments fall back to the
        Laplace approximation (reported per round).
    local : {"ep", "vi"}
        ``"ep"``: the site moment-matches the tilted distribution ``c_k L_k`` (expectations
        by importance sampling); ``"vi"``: the site is the client's optimal Gaussian
        variational factor, ``q = c_k t_k`` maximizing ``E_q[log L_k] - KL(q || c_k)``
        (partitioned VI, Ashman et al. 2022), found by ``vi_iterations`` fixed-point
        (natural-gradient, unit step) updates ``Λ_t = -E_q[∇² log L_k]``,
        ``η_t = Λ_t m_q + E_q[∇ log L_k]`` from the Laplace approximation.
    vi_iterations : int
        Fixed-point iterations of ``local="vi"``.
    newton_iter : int
        Newton iterations of the tilted mode.
    server_chains, server_warmup, server_samples : int
        The server's NUTS run per round (its draws give the next cavities). The cavities'
        Monte Carlo noise passes into the sites, which damping 1 does not average away:
        on guimmun (161 communities) 2 chains x 300 draws left ``tau`` 0.17 sds from the
        reference at seed 0 (2 x 1000: 0.11), 4 chains 0.10, 0.07, 0.08 at seeds 0, 1, 2
        (``benchmarks/ep_seed_spread.py``). The chains run
        on separate devices when there are enough (:func:`bayes_pfl.local.map_chains`).
    precision_cap : float, optional
        A robust option against clients whose sites claim more than their rows could
        know: each site's precision is capped at ``n_k`` times ``precision_cap`` times
        the federation's median information per row (:func:`cap_precision`); ``None``
        (default): no cap. The round history counts the capped sites (``n_capped``) and
        the state names them (``capped``).
    max_rows : float, optional
        With ``precision_cap``: the most rows the server believes a client has (a
        policy bound on the declared ``n_k``).
    covariates : array-like ``[K, M]``, optional
        The clients' covariates, in client order, for a model with client covariates
        (required by ``server_init`` then): server-side constants, kept in the server
        state (``state.covariates``). Nested tuples are accepted (hashable, for caches).
    """
    if precision_cap is not None and not precision_cap >= 1.0:
        raise ValueError(f"precision_cap must be at least 1 (or None), got {precision_cap!r}")
    if max_rows is not None and not max_rows >= 1:
        raise ValueError(f"max_rows must be at least 1 (or None), got {max_rows!r}")
    if not 0.0 < damping <= 1.0:
        raise ValueError(f"damping must be in (0, 1], got {damping!r}")
    if local not in ("ep", "vi"):
        raise ValueError(f"local must be 'ep' or 'vi', got {local!r}")
    pop = gaussian_population(model)
    J, P = pop.z_dim, model.phi_dim
    given_covariates = None if covariates is None else np.asarray(covariates, dtype=float)
    log_hyperprior = jax.jit(model.log_hyperprior)
    loglik = jax.jit(pop.loglik)
    n_points = tilted_points or max(256, 32 * J)
    half = jax.random.normal(jax.random.key(20261204), ((n_points + 1) // 2, J))
    base = jnp.concatenate([half, -half])
    # exactly whitened: sample mean 0 (antithetic) and sample covariance I
    chol_b = jnp.linalg.cholesky(base.T @ base / base.shape[0])
    base = jax.scipy.linalg.solve_triangular(chol_b, base.T, lower=True).T

    def server_covariates(state):
        """The covariates the server's integral reads (``None`` without: the same code)."""
        return state.covariates if pop.n_covariates else None

    def sample_server(rng_key, sites, starts, step_size, inverse_mass, covariates):
        def chain(k, z0, eps, inv_m, sites, covariates):
            return nuts_run(
                k,
                server_density(pop, log_hyperprior, sites, covariates),
                z0,
                num_warmup=server_warmup,
                num_samples=server_samples,
                step_size=eps,
                inverse_mass_matrix=inv_m,
            )

        keys = jax.random.split(rng_key, starts.shape[0])
        return map_chains(chain, (keys, starts, step_size, inverse_mass), (sites, covariates))

    def summary(sites, start, covariates):
        """Mode and negative Hessian of the server's density (deterministic, exact sites)."""
        res = newton_maximize(
            server_density(pop, log_hyperprior, sites, covariates), start, max_iter=100
        )
        return res.mode, 0.5 * (res.neg_hessian + res.neg_hessian.T)

    def prior_draw(key):
        tr = isolated_trace(model.hyperprior, rng_key=key)
        return model.phi_space.flatten({n: tr[n]["value"] for n in model.phi_space.names})

    @jax.jit
    def _init(rng_key, sites, covariates):
        # the first cavities come from exact draws of the hyper-prior (no sampler to
        # compile twice: the server's NUTS runs from the first update on, adapting from
        # scratch)
        n_draws = server_chains * server_samples
        draws = jax.vmap(prior_draw)(jax.random.split(rng_key, n_draws))
        draws = draws.reshape(server_chains, server_samples, P)
        flat_draws = draws.reshape(-1, P)
        cav, ess = cavities(pop, flat_draws, sites, covariates if pop.n_covariates else None)
        mean = jnp.mean(flat_draws, axis=0)
        cov = jnp.cov(flat_draws, rowvar=False).reshape(P, P)
        eye = jnp.broadcast_to(jnp.eye(P, dtype=draws.dtype), (server_chains, P, P))
        return EffectServerState(
            sites,
            draws,
            jnp.ones(server_chains, dtype=draws.dtype),
            eye,
            cav,
            ess,
            jnp.zeros(ess.shape, bool),
            jnp.asarray(damping, dtype=draws.dtype),
            jnp.asarray(jnp.inf, dtype=draws.dtype),
            mean,
            jnp.linalg.inv(cov + 1e-9 * jnp.eye(P, dtype=draws.dtype)),
            jnp.zeros((), jnp.int32),  # not weakly typed: the next rounds see the same type
            covariates.astype(draws.dtype),
        )

    def server_init(rng_key: Array, n_clients: int) -> EffectServerState:
        return _init(rng_key, gf.flat(J, batch_shape=(n_clients,)), _covariate_table(n_clients))

    def _covariate_table(n_clients: int) -> np.ndarray:
        """The server's ``z [K, M]``, checked (``[K, 0]`` for a model without covariates)."""
        if not pop.n_covariates:
            if given_covariates is not None and given_covariates.size:
                raise ValueError(
                    f"model {model.name!r} declares no client covariates, but covariates "
                    f"of shape {given_covariates.shape} were given"
                )
            return np.zeros((n_clients, 0))
        names = list(model.client_covariates)
        if given_covariates is None:
            raise ValueError(
                f"model {model.name!r} declares client covariates {names}: the server needs "
                "every client's covariates (effect_ep.build(..., covariates=z [K, M]); "
                "FederatedData.from_pandas(..., metadata=...) in the in-process fits; the "
                "Flower runtime does not carry client metadata yet)"
            )
        if given_covariates.shape != (n_clients, pop.n_covariates):
            raise ValueError(
                f"covariates must have shape ({n_clients}, {pop.n_covariates}) (clients x "
                f"{names}), got {given_covariates.shape}"
            )
        if not np.all(np.isfinite(given_covariates)):
            raise ValueError("client covariates must be finite")
        return given_covariates

    def broadcast(state: EffectServerState) -> EffectBroadcast:
        return EffectBroadcast(state.cavity)

    def client_init(rng_key: Array, data) -> EffectClientState:
        del rng_key
        # the data's float type, not a weak type: the round-1 and later client steps must
        # see the same input types, or the step compiles twice
        return EffectClientState(jnp.full(J, jnp.nan, dtype=jnp.asarray(data[0]).dtype))

    def client_update(rng_key: Array, bcast: EffectBroadcast, state: EffectClientState, data):
        del rng_key
        x, y, mask = data
        cav = bcast.cavity
        cav_mean, cav_cov = gf.to_moments(cav)
        start = jnp.where(jnp.all(jnp.isfinite(state.z_mode)), state.z_mode, cav_mean)

        def log_tilted(z):
            return -0.5 * z @ (cav.precision @ z) + cav.shift @ z + loglik(z, x, y, mask)

        res = newton_maximize(log_tilted, start, max_iter=newton_iter)
        h = 0.5 * (res.neg_hessian + res.neg_hessian.T)
        h_abs = saddle_free(h, 1e-8)  # |H|: the proposal's fallback and the decrement's metric
        chol = jnp.linalg.cholesky(jnp.linalg.inv(h))
        # where the tilted is not log-concave at the point Newton ended (errors in variables:
        # the slope and the covariate's scale trade off), the proposal's scale comes from the
        # curvature's absolute eigenvalues: importance weights correct any proposal
        chol = jnp.where(
            jnp.all(jnp.isfinite(chol)),
            chol,
            jnp.linalg.cholesky(jnp.linalg.inv(h_abs)),
        )
        points = res.mode + base @ chol.T
        log_w = jax.vmap(log_tilted)(points) + 0.5 * jnp.sum(base**2, axis=1)
        log_w = jnp.where(jnp.isfinite(log_w), log_w, -jnp.inf)
        w = jax.nn.softmax(log_w)
        ess = 1.0 / jnp.sum(w**2)
        fallback = ess < min_ess_fraction * n_points
        w = jnp.where(fallback, jax.nn.softmax(-0.5 * jnp.sum(base**2, axis=1)), w)

        def lik_derivatives(z):
            _, g, hz = value_grad_hessian(lambda v: loglik(v, x, y, mask), z)
            return g, hz

        def expectations(pts, weights):
            grads, hessians = jax.vmap(lik_derivatives)(pts)
            good = jnp.all(jnp.isfinite(grads), axis=1) & jnp.all(
                jnp.isfinite(hessians), axis=(1, 2)
            )
            wg = jnp.where(good, weights, 0.0)
            wg = wg / jnp.sum(wg)
            g_mean = wg @ jnp.where(good[:, None], grads, 0.0)
            curv = jnp.einsum("s,sij->ij", wg, jnp.where(good[:, None, None], hessians, 0.0))
            return g_mean, gf.psd_part(-curv)

        if local == "ep":
            # Stein: E_t[∇ log L] sets the tilted mean exactly (m_t = m_c + Σ_c E_t[∇ log L]);
            # the site's precision is the tilted expectation of the likelihood's curvature
            # (moment matching when L is Gaussian, and no difference of two nearly equal
            # precisions, so no Monte Carlo noise amplified for shared parameters)
            grad_mean, prec = expectations(points, w)
            mean = w @ points
        else:
            uniform = jnp.full(base.shape[0], 1.0 / base.shape[0], dtype=base.dtype)

            def vi_step(carry, _):
                m_q, chol_q = carry
                g_mean, prec_t = expectations(m_q + base @ chol_q.T, uniform)
                q = GaussianFactor(cav.precision + prec_t, cav.shift + prec_t @ m_q + g_mean)
                m_new, c_new = gf.to_moments(q)
                ok_step = jnp.all(jnp.isfinite(m_new)) & jnp.all(jnp.isfinite(c_new))
                chol_new = jnp.linalg.cholesky(0.5 * (c_new + c_new.T))
                ok_step = ok_step & jnp.all(jnp.isfinite(chol_new))
                return (
                    jnp.where(ok_step, m_new, m_q),
                    jnp.where(ok_step, chol_new, chol_q),
                ), None

            (m_q, chol_q), _ = jax.lax.scan(vi_step, (res.mode, chol), None, length=vi_iterations)
            grad_mean, prec = expectations(m_q + base @ chol_q.T, uniform)
            mean = m_q
        site = GaussianFactor(prec, gf.proper_shift(prec, prec @ mean + grad_mean, cav_cov))
        finite = jnp.all(jnp.isfinite(site.precision)) & jnp.all(jnp.isfinite(site.shift))
        # Newton need not have converged where importance sampling corrects its end point
        # (enough effective points), nor where it stalled within 0.1 sd of a stationary
        # point (Newton decrement in the absolute curvature's metric below 0.01): the
        # quadrature's derivatives by rule and its values differ slightly where a row's
        # linear predictor has a large variance (a gap times a steep slope), and Newton
        # stops there when no step increases the value. Rejecting such a client lost its
        # data in every round (Switzerland's in the heart data with its gaps modelled).
        g_end = jax.grad(log_tilted)(res.mode)
        decrement = g_end @ jnp.linalg.solve(h_abs, g_end)
        near = jnp.isfinite(decrement) & (decrement < 0.01)
        ok = (res.converged | near | ~fallback) & finite & jnp.all(jnp.isfinite(chol))
        new_state = EffectClientState(jnp.where(ok, res.mode, state.z_mode))
        info = EffectClientInfo(ok, res.converged, res.iterations, ess, fallback)
        n_rows = jnp.sum(mask).astype(site.shift.dtype)
        return new_state, EffectMessage(site, ok, n_rows), info

    def server_update(rng_key: Array, state: EffectServerState, messages: EffectMessage, accept):
        accept = accept & messages.ok
        proposed = messages.site
        capped = jnp.zeros(accept.shape, bool)
        if precision_cap is not None:
            proposed, capped, _ = cap_precision(
                proposed, messages.n_rows, accept, precision_cap, max_rows
            )
            capped = capped & accept
        # the first exchange is undamped (one-shot; exact sites for Gaussian likelihoods),
        # later ones damped
        rate = jnp.where(state.round == 0, 1.0, state.damping)
        sites = gf.damp(state.sites, proposed, rate)
        sites = select_clients(accept, sites, state.sites)
        # the first update starts its chains at the prior draws' mean (prior draws can sit
        # far out in a heavy tail); later ones where the last run ended
        starts = jnp.where(
            state.round == 0,
            jnp.broadcast_to(state.mode, state.draws[:, -1, :].shape),
            state.draws[:, -1, :],
        )
        covariates = server_covariates(state)
        run = sample_server(rng_key, sites, starts, state.step_size, state.inverse_mass, covariates)
        draws, div = run.draws, run.diverging
        cav, ess = cavities(pop, draws.reshape(-1, P), sites, covariates)
        # change of each client's approximate marginal over z under this round's cavity
        old_m, old_c = gf.to_moments(gf.multiply(state.cavity, state.sites))
        new_m, new_c = gf.to_moments(gf.multiply(state.cavity, sites))
        old_sd = jnp.sqrt(jnp.diagonal(old_c, axis1=-2, axis2=-1))
        new_sd = jnp.sqrt(jnp.diagonal(new_c, axis1=-2, axis2=-1))
        mean_change = jnp.nanmax(jnp.abs(new_m - old_m) / old_sd)
        sd_change = jnp.nanmax(jnp.abs(jnp.log(new_sd / old_sd)))
        mode, prec = summary(sites, state.mode, covariates)
        sd_old = jnp.sqrt(jnp.diagonal(jnp.linalg.inv(state.precision)))
        sd_new = jnp.sqrt(jnp.diagonal(jnp.linalg.inv(prec)))
        g_mean_change = jnp.max(jnp.abs(mode - state.mode) / sd_old)
        g_sd_change = jnp.max(jnp.abs(jnp.log(sd_new / sd_old)))
        # every client's marginal and the global posterior (shared parameters: each site
        # moves a client's marginal by 1/K of what all of them move the global one)
        converged = (
            (mean_change < tol) & (sd_change < tol) & (g_mean_change < tol) & (g_sd_change < tol)
        )
        # a change larger than the last one is an oscillation: halve the damping rate
        next_rate = jnp.where(
            (state.round > 0) & (mean_change > state.last_change),
            jnp.maximum(0.5 * state.damping, 0.1),
            state.damping,
        )
        new_state = EffectServerState(
            sites,
            draws,
            run.step_size,
            run.inverse_mass_matrix,
            cav,
            ess,
            jnp.where(accept, capped, state.capped),
            next_rate,
            mean_change,
            mode,
            prec,
            state.round + 1,
            state.covariates,
        )
        info = EffectServerInfo(
            mean_change,
            sd_change,
            g_mean_change,
            g_sd_change,
            jnp.sum(accept),
            jnp.sum(capped),
            jnp.sum(div),
            jnp.min(ess),
            converged,
        )
        return new_state, info

    name = "ep-effects" if local == "ep" else "vi-effects"
    return Algorithm(server_init, client_init, client_update, server_update, broadcast, name=name)
