r"""Federated expectation propagation over the global parameters.

Following Vehtari et al. (2020), *Expectation propagation as a way of life*
(JMLR 21(17)), the posterior of the unconstrained global parameters ``u`` is

.. math::

    p(u \mid D) \propto p_0(u) \prod_k L_k(u), \qquad
    L_k(u) = \int p(y_k \mid \theta_k, u, x_k)\, p(\theta_k \mid u)\, d\theta_k,

and bayes-pfl approximates it by :math:`q(u) \propto p_0(u) \prod_k t_k(u)`: the
*exact* hyper-prior :math:`p_0` (every client knows the model) times one
Gaussian *site* :math:`t_k` per client, held in natural parameters
(:class:`~bayes_pfl.gaussian.GaussianFactor`). A round:

1. the server sends client :math:`k` the product of sites :math:`G = \prod_j t_j`
   and its own site :math:`t_k`;
2. the client forms its cavity :math:`p_0(u)\, G(u) / t_k(u)` and the *tilted*
   distribution :math:`p_0(u)\, G_{-k}(u)\, p(\theta_k \mid u)\, p(y_k \mid \theta_k, u)`
   over :math:`(u, \theta_k)`, and proposes a new site:

   * ``tilted="laplace"``: the client effect is integrated out by a Laplace
     approximation at each ``u`` (exact when the client's conditional is
     Gaussian, as in radon and eight schools), giving :math:`\log \hat L_k(u)`;
     the new site is its second-order expansion at the tilted mode
     :math:`u^*`: precision :math:`-\nabla^2 \log \hat L_k(u^*)`, shift
     :math:`\Lambda_k u^* + \nabla \log \hat L_k(u^*)` (Laplace propagation,
     Smola et al. 2004; exact when :math:`L_k` is Gaussian in ``u``);
   * ``tilted="nuts"``: NUTS on :math:`(u, \theta_k)`; the new site is the
     moment-matched Gaussian of the draws of ``u`` divided by the second-order
     expansion of the cavity at their mean;

3. the server damps, :math:`t_k \leftarrow t_k^{1-\delta} \hat t_k^{\delta}`
   (natural parameters interpolate), multiplies the sites and summarizes
   :math:`p_0 \cdot G` by its Laplace approximation to measure convergence. If
   :math:`p_0 \cdot G` has no proper mode it halves :math:`\delta` (up to 4
   times) and otherwise rejects the round's updates.

All clients update in parallel from the same :math:`G`. Sites may be improper
(negative curvature in some direction); a client whose tilted inference fails
keeps its site. A client holding no rows has :math:`L_k \equiv 1` and keeps a
flat site. The global posterior is finally sampled from :math:`p_0 \cdot G`
with NUTS on the server (:mod:`bayes_pfl.federated`).

One-shot posterior-summary exchange is the first round of this algorithm with
``damping=1``: each client's cavity is then the hyper-prior itself, and its
message summarizes its own likelihood at its local posterior mode (Dutta,
Blomstedt & Kaski 2016). It is exact when every :math:`L_k` is Gaussian in
``u`` (e.g. a Normal-Normal hierarchy with known scales); with unknown
population scales (eight schools' ``tau``) :math:`L_k` is not Gaussian in
``log tau`` and the summary is a local approximation, which EP's later rounds
re-centre where the global posterior has its mass.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from bayes_pfl import gaussian as gf
from bayes_pfl.algorithms import Algorithm, select_clients
from bayes_pfl.gaussian import GaussianFactor
from bayes_pfl.local import (
    chain_diagnostics,
    conditional_mode,
    laplace_log_marginal,
    newton_maximize,
    nuts_run,
)
from bayes_pfl.spec import HierarchicalModel

Array = jax.Array

__all__ = [
    "EPBroadcast",
    "EPClientInfo",
    "EPClientState",
    "EPMessage",
    "EPServerInfo",
    "EPServerState",
    "TILTED",
    "build",
    "gaussian_log_kernel",
]

TILTED = ("laplace", "nuts")
SITE_FITS = ("taylor", "regression", "gradient")


class EPServerState(NamedTuple):
    sites: GaussianFactor  # [K] client sites
    sites_product: GaussianFactor  # G = prod_k t_k
    mode: Array  # [P] mode of p0 * G
    precision: Array  # [P, P] -Hessian of log(p0 * G) at the mode (Laplace summary)
    round: Array


class EPClientState(NamedTuple):
    u_mode: Array  # [P] last tilted mode of u (warm start)


class EPBroadcast(NamedTuple):
    sites_product: GaussianFactor  # G
    site: GaussianFactor  # this client's current site t_k


class EPMessage(NamedTuple):
    site: GaussianFactor  # proposed (undamped) site
    ok: Array  # the client's tilted inference succeeded


class EPClientInfo(NamedTuple):
    ok: Array
    converged: Array
    iterations: Array
    divergences: Array
    rhat: Array  # split-R-hat of the tilted NUTS run (NaN for Laplace)
    ess: Array  # bulk ESS of the tilted NUTS run (NaN for Laplace)


class EPServerInfo(NamedTuple):
    mean_change: Array  # max |Δ mode| / sd of the Laplace summary of p0 * G
    sd_change: Array  # max |log(sd_new / sd_old)|
    damping: Array  # damping rate used this round
    global_ok: Array  # p0 * G had a proper mode (else the round was rejected)
    n_accepted: Array
    converged: Array


def gaussian_log_kernel(f: GaussianFactor, u: Array) -> Array:
    """``-1/2 u^T Λ u + η^T u``: the log of a factor, up to a constant."""
    return -0.5 * u @ (f.precision @ u) + f.shift @ u


def _summary_change(m0, p0, m1, p1):
    s0 = jnp.sqrt(jnp.diag(jnp.linalg.inv(p0)))
    s1 = jnp.sqrt(jnp.diag(jnp.linalg.inv(p1)))
    return jnp.max(jnp.abs(m1 - m0) / s0), jnp.max(jnp.abs(jnp.log(s1 / s0)))


def build(
    model: HierarchicalModel,
    *,
    tilted: str = "laplace",
    damping: float = 0.5,
    tol: float = 1e-3,
    nuts_warmup: int = 400,
    nuts_samples: int = 600,
    newton_iter: int = 50,
    site_fit: str = "gradient",
    site_points: int | None = None,
) -> Algorithm:
    """Federated EP for ``model``.

    Parameters
    ----------
    model : HierarchicalModel
        The declaration; its per-client pieces define the tilted distributions.
    tilted : {"laplace", "nuts"}
        Tilted inference: Laplace at the joint mode (fast, deterministic) or
        moments of a NUTS run on ``(u, theta_k)`` (accurate for skewed tilted
        distributions).
    damping : float
        Damping rate ``δ`` in ``(0, 1]``.
    tol : float
        Convergence: the largest change of ``q``'s means (in sds) and of its log
        sds both below ``tol``.
    nuts_warmup, nuts_samples : int
        NUTS settings for ``tilted="nuts"``.
    newton_iter : int
        Newton iterations for ``tilted="laplace"``.
    site_fit : {"gradient", "regression", "taylor"}
        With ``tilted="laplace"``, how the new site follows ``log L̂_k``:

        * ``"gradient"`` (default): least-squares linear fit of ``∇ log L̂_k(u)`` at
          fixed points spread over the tilted distribution's Laplace approximation
          ``q``; by Stein's lemma its slope estimates ``E_q[∇² log L̂_k]`` and its
          value at the centre ``E_q[∇ log L̂_k]``, so the site follows ``L_k`` over
          where the posterior has its mass (a statistical linearization; better than
          a Taylor expansion for population scales whose ``L_k`` flattens towards
          zero, like eight schools' ``tau``). Each point gives ``P + 1`` equations,
          so it needs few points: 6x faster than ``"regression"`` on 1,000 clients
          with ``P = 12`` (benchmarks/federated_speed.py);
        * ``"regression"``: least-squares quadratic fit of the values ``log L̂_k`` at
          such points (the same quantities in the limit of many points; needs more
          than the ``(P + 1)(P + 2) / 2`` coefficients);
        * ``"taylor"``: second-order expansion at the tilted mode (exact for Gaussian
          ``L_k``, fastest, biased for skewed ones).
    site_points : int, optional
        Number of points of the ``"regression"`` fit (default ``max(256, 4 x`` the
        number of quadratic coefficients``)``) or of the ``"gradient"`` fit (default
        ``max(64, 4 (P + 1))``), placed symmetrically (antithetic pairs).
    """
    if tilted not in TILTED:
        raise ValueError(f"tilted must be one of {TILTED}, got {tilted!r}")
    if site_fit not in SITE_FITS:
        raise ValueError(f"site_fit must be one of {SITE_FITS}, got {site_fit!r}")
    if not 0.0 < damping <= 1.0:
        raise ValueError(f"damping must be in (0, 1], got {damping!r}")
    P, D = model.phi_dim, model.theta_dim
    # The densities are traced once each and reused as calls: the tilted inference
    # differentiates them many times over (nested Newton, implicit derivatives), and
    # re-tracing the numpyro model at every use cost more than XLA's compilation.
    log_hyperprior = jax.jit(model.log_hyperprior)
    client_log_joint = jax.jit(model.client_log_joint)
    upper = jnp.triu_indices(P)
    n_coef = 1 + P + upper[0].shape[0]
    n_points = site_points or max(256, 4 * n_coef)
    base = jax.random.normal(jax.random.key(20201), ((n_points + 1) // 2, P))
    base = jnp.concatenate([base, -base])  # antithetic: symmetric about the centre
    off_diagonal = jnp.where(upper[0] == upper[1], 1.0, 2.0)

    def quadratic_features(z):
        return jnp.concatenate([jnp.ones(1), z, -0.5 * jnp.outer(z, z)[upper] * off_diagonal])

    # The points are ``centre + L z`` for fixed standard points ``z``: fitting the quadratic
    # in ``z`` uses one design matrix for every client and round, so its pseudo-inverse is
    # computed once (a matrix-vector product per client instead of a least-squares solve).
    design_pinv = jnp.linalg.pinv(jax.vmap(quadratic_features)(base))

    def regression_site(log_lik, centre, neg_hessian):
        """Least-squares quadratic ``c + b'u - u'Au/2`` through ``log_lik`` around ``centre``.

        Returns the site and whether every point had a finite value (else the fit is
        not trusted and the client keeps its site).
        """
        chol = jnp.linalg.cholesky(jnp.linalg.inv(neg_hessian))  # L, covariance L L'
        values = jax.vmap(log_lik)(centre + base @ chol.T)
        good = jnp.all(jnp.isfinite(values))
        coef = design_pinv @ jnp.where(jnp.isfinite(values), values, 0.0)
        a_z = jnp.zeros((P, P)).at[upper].set(coef[1 + P :])
        a_z = a_z + a_z.T - jnp.diag(jnp.diag(a_z))
        # z = L^{-1} (u - centre): A_u = L^{-T} A_z L^{-1}, b_u = L^{-T} b_z + A_u centre
        l_inv = jax.scipy.linalg.solve_triangular(chol, jnp.eye(P), lower=True)
        a_u = l_inv.T @ a_z @ l_inv
        b_u = l_inv.T @ coef[1 : 1 + P] + a_u @ centre
        return GaussianFactor(0.5 * (a_u + a_u.T), b_u), good

    n_grad = site_points or max(64, 4 * (P + 1))
    zg = jax.random.normal(jax.random.key(20202), ((n_grad + 1) // 2, P))
    zg = jnp.concatenate([zg, -zg])
    # regressing gradients on [1, z]: coefficients (1 + P, P) = grad_pinv @ gradients
    grad_pinv = jnp.linalg.pinv(jnp.concatenate([jnp.ones((zg.shape[0], 1)), zg], axis=1))

    def gradient_site(log_lik, centre, neg_hessian):
        """Site from the linear regression of ``∇ log L̂_k`` on ``u`` over the tilted region.

        By Stein's lemma the slope is ``E_q[∇² log L̂_k]`` under the Gaussian ``q`` the
        points are drawn from, and the intercept at the centre ``E_q[∇ log L̂_k]``: the
        same quantities the quadratic regression of values estimates, from ``P + 1``
        equations per point instead of one.
        """
        chol = jnp.linalg.cholesky(jnp.linalg.inv(neg_hessian))  # L, covariance L L'
        grads = jax.vmap(jax.grad(log_lik))(centre + zg @ chol.T)  # [M, P]
        good = jnp.all(jnp.isfinite(grads))
        coef = grad_pinv @ jnp.where(jnp.isfinite(grads), grads, 0.0)  # [1 + P, P]
        # g(u) ~ g0 + H (u - centre), z = L^{-1} (u - centre): coef[1:] = L' H
        l_inv = jax.scipy.linalg.solve_triangular(chol, jnp.eye(P), lower=True)
        hess = l_inv.T @ coef[1:]
        a_u = -0.5 * (hess + hess.T)
        return GaussianFactor(a_u, a_u @ centre + coef[0]), good

    def global_summary(G: GaussianFactor, start: Array):
        """Mode and curvature of p0(u) * G(u) (the server's Laplace summary)."""
        res = newton_maximize(lambda u: log_hyperprior(u) + gaussian_log_kernel(G, u), start)
        h = 0.5 * (res.neg_hessian + res.neg_hessian.T)
        ok = res.converged & gf.is_proper(GaussianFactor(h, h @ res.mode))
        return res.mode, h, ok

    def server_init(rng_key: Array, n_clients: int) -> EPServerState:
        del rng_key
        G = gf.flat(P)
        mode, h, _ = global_summary(G, jnp.zeros(P))
        return EPServerState(
            gf.flat(P, batch_shape=(n_clients,)), G, mode, h, jnp.zeros((), jnp.int32)
        )

    def broadcast(state: EPServerState) -> EPBroadcast:
        k = state.sites.shift.shape[0]
        G = jax.tree.map(lambda a: jnp.broadcast_to(a, (k,) + a.shape), state.sites_product)
        return EPBroadcast(G, state.sites)

    def client_init(rng_key: Array, data) -> EPClientState:
        del rng_key, data
        return EPClientState(jnp.zeros(P))

    def client_update(rng_key: Array, bcast: EPBroadcast, state: EPClientState, data):
        x, y, mask = data
        cavity = gf.divide(bcast.sites_product, bcast.site)

        def log_cavity(u):
            return log_hyperprior(u) + gaussian_log_kernel(cavity, u)

        def log_joint(th, u):
            return client_log_joint(th, u, x, y, mask)

        theta0 = jnp.zeros(D)
        if tilted == "laplace":
            # inner problems start from the client effect's mode at the last tilted mode
            th_start = conditional_mode(log_joint, state.u_mode, theta0, max_iter=newton_iter)
            th_start = jnp.where(jnp.all(jnp.isfinite(th_start)), th_start, theta0)

            def log_lik(u):
                return laplace_log_marginal(log_joint, u, th_start, max_iter=newton_iter)

            res = newton_maximize(
                lambda u: log_cavity(u) + log_lik(u), state.u_mode, max_iter=newton_iter
            )
            u_star = res.mode
            if site_fit == "taylor":
                h = -jax.hessian(log_lik)(u_star)
                h = 0.5 * (h + h.T)
                site = GaussianFactor(h, h @ u_star + jax.grad(log_lik)(u_star))
            else:
                h_t = 0.5 * (res.neg_hessian + res.neg_hessian.T)
                # the points lie near u*, so their inner problems start from theta_hat(u*)
                # (a few Newton steps each instead of a cold start)
                th_star = conditional_mode(log_joint, u_star, th_start, max_iter=newton_iter)

                def log_lik_near(u):
                    return laplace_log_marginal(log_joint, u, th_star, max_iter=newton_iter)

                if site_fit == "gradient":
                    site, points_ok = gradient_site(log_lik_near, u_star, h_t)
                else:
                    site, points_ok = regression_site(log_lik_near, u_star, h_t)
            converged, iterations, divergences = res.converged, res.iterations, jnp.asarray(0)
            if site_fit != "taylor":
                converged = converged & points_ok
            rhat = ess = jnp.asarray(jnp.nan)
        else:

            def log_tilted(z):
                return log_cavity(z[:P]) + log_joint(z[P:], z[:P])

            start = newton_maximize(
                log_tilted, jnp.concatenate([state.u_mode, theta0]), max_iter=newton_iter
            )
            chain = nuts_run(
                rng_key, log_tilted, start.mode, num_warmup=nuts_warmup, num_samples=nuts_samples
            )
            draws, div = chain.draws, chain.diverging
            u = draws[:, :P]
            m_t = jnp.mean(u, axis=0)
            tilted_factor = gf.from_moments(m_t, jnp.atleast_2d(jnp.cov(u, rowvar=False)))
            # second-order expansion of the (non-Gaussian) cavity at the tilted mean
            hc = -jax.hessian(log_cavity)(m_t)
            hc = 0.5 * (hc + hc.T)
            cavity_local = GaussianFactor(hc, hc @ m_t + jax.grad(log_cavity)(m_t))
            site = gf.divide(tilted_factor, cavity_local)
            u_star = m_t
            converged, iterations, divergences = start.converged, start.iterations, jnp.sum(div)
            rhat, ess = chain_diagnostics(draws)
        finite = jnp.all(jnp.isfinite(site.precision)) & jnp.all(jnp.isfinite(site.shift))
        ok = converged & finite & jnp.all(jnp.isfinite(u_star))
        site = jax.tree.map(lambda s, old: jnp.where(ok, s, old), site, bcast.site)
        new_state = EPClientState(jnp.where(ok, u_star, state.u_mode))
        info = EPClientInfo(ok, converged, iterations, divergences, rhat, ess)
        return new_state, EPMessage(site, ok), info

    def server_update(rng_key: Array, state: EPServerState, messages: EPMessage, accept: Array):
        del rng_key
        accept = accept & messages.ok

        def candidate(rate):
            sites = gf.damp(state.sites, messages.site, rate)
            sites = select_clients(accept, sites, state.sites)
            G = gf.product(sites, axis=0)
            mode, h, ok = global_summary(G, state.mode)
            return sites, G, mode, h, ok

        rates = damping * 0.5 ** jnp.arange(5)
        sites_c, G_c, mode_c, h_c, ok_c = jax.vmap(candidate)(rates)
        any_ok = jnp.any(ok_c)
        idx = jnp.argmax(ok_c)

        def pick(cands, old):
            return jax.tree.map(lambda c, o: jnp.where(any_ok, c[idx], o), cands, old)

        sites = pick(sites_c, state.sites)
        G = pick(G_c, state.sites_product)
        mode = pick(mode_c, state.mode)
        h = pick(h_c, state.precision)
        mean_change, sd_change = _summary_change(state.mode, state.precision, mode, h)
        converged = any_ok & (mean_change < tol) & (sd_change < tol)
        new_state = EPServerState(sites, G, mode, h, state.round + 1)
        info = EPServerInfo(
            mean_change,
            sd_change,
            jnp.where(any_ok, rates[idx], 0.0),
            any_ok,
            jnp.sum(accept),
            converged,
        )
        return new_state, info

    return Algorithm(
        server_init, client_init, client_update, server_update, broadcast, name=f"ep-{tilted}"
    )
