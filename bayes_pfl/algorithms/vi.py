r"""Federated variational inference over the global parameters (partitioned VI).

Following partitioned variational inference (PVI; Bui et al. 2018, *Partitioned
variational inference: a unified framework encompassing federated and continual
learning*; Ashman et al. 2022, *Partitioned variational inference: a framework for
probabilistic federated learning*), the posterior of the unconstrained global
parameters ``u`` is approximated by

.. math::

    q(u) \propto p_0(u) \prod_k t_k(u),

the *exact* hyper-prior :math:`p_0` times one Gaussian factor :math:`t_k` per client,
held in natural parameters (:class:`~bayes_pfl.gaussian.GaussianFactor`). This is the
same message type and the same global approximation as federated EP
(:mod:`bayes_pfl.algorithms.ep`); only the client's way of proposing a factor differs,
so the server update (damping, its back-off when :math:`p_0 G` loses its mode,
convergence), the driver, the Flower backend and the ArviZ output are EP's.

A round of client :math:`k`
---------------------------
The client receives :math:`G = \prod_j t_j`, its own factor :math:`t_k` and the
server's Gaussian summary of :math:`p_0 G` (mode and curvature). Its cavity is
:math:`p_0(u)\, G(u) / t_k(u)` (exact prior, as in EP), and it maximizes the local
ELBO of the tilted distribution over :math:`z = (u, \theta_k)`,

.. math::

    \mathcal{F}_k(q) = \mathbb{E}_{q(u, \theta_k)}\left[\log p_0(u)
        + \log \tfrac{G}{t_k}(u) + \log p(y_k, \theta_k \mid u)\right] + \mathbb{H}[q],

over a Gaussian family for :math:`q(u, \theta_k)`: ``"full"`` (full-rank covariance,
so :math:`q(\theta_k \mid u)` keeps its dependence on ``u``), ``"meanfield"``
(diagonal) or ``"lowrank"`` (diagonal plus rank ``r``). With
:math:`\ell_k(z) = \log p(y_k, \theta_k \mid u)` (the client's own terms, from
:meth:`~bayes_pfl.spec.HierarchicalModel.client_log_joint`) its new factor is

.. math::

    \Lambda_s = -\mathbb{E}_q[\nabla^2 \ell_k], \qquad
    \eta_s = \mathbb{E}_q[\nabla \ell_k] + \Lambda_s m,

a Gaussian factor over :math:`(u, \theta_k)`, marginalized to ``u`` (Schur complement
over the :math:`\theta_k` block; full and low-rank) or restricted to its diagonal
``u`` block (mean-field). At a stationary point of :math:`\mathcal F_k` the Gaussian
family's optimality conditions (Opper & Archambeau 2009) read
:math:`\Lambda_q = -\mathbb{E}_q[\nabla^2 \log(\text{cavity})] + \Lambda_s`, so this
*is* :math:`t_k = q_{\text{new}} / \text{cavity}` of PVI, with the cavity's (possibly
non-Gaussian) prior part taken exactly. It is computed in this natural-gradient form
(Khan & Lin 2017) rather than by subtracting the cavity's natural parameters from
:math:`q_{\text{new}}`'s because the subtraction multiplies the optimizer's residual
by the cavity precision, which grows with the number of clients (with 200 clients a
0.5% error of :math:`q_{\text{new}}` is a 100% error of the factor), while the
expected derivatives of :math:`\ell_k` depend on :math:`q` only smoothly (they are
exact for any ``q`` when :math:`\ell_k` is quadratic).

At a fixed point every client's :math:`q_k(u)` is the same Gaussian :math:`q^*`, the
Gaussian-family VI optimum of the whole posterior, and :math:`q^*` is also the
Gaussian VI fit of :math:`p_0 G` (the same optimality conditions), so the server can
report either :math:`q^*` (pure VI) or :math:`p_0 G` itself (exact prior, VI factors):
see :func:`bayes_pfl.federated_vi.fit_vi`.

Optimization and Monte Carlo error
----------------------------------
Expectations over ``q`` use ``num_particles`` *fixed* base draws per client (common
random numbers: the same draws in every Adam step and in every round), drawn at
``client_init``, antithetic and whitened so that their sample mean is exactly 0 and
their sample covariance exactly ``I``. Expectations of quadratics (the Gaussian part
of the cavity; the whole ELBO of a conjugate Normal model) are then exact; other
terms carry the Monte Carlo error of a sample-average approximation, which is fixed
across rounds, so the rounds are a deterministic fixed-point iteration whose
convergence can be tested like EP's. The factor's Monte Carlo error is that of a
``num_particles``-sample mean of :math:`\nabla^2 \ell_k` and :math:`\nabla \ell_k`
under :math:`q_k` (independent across clients, so relative errors of :math:`G`
shrink like :math:`1/\sqrt{K}`).

The ELBO is maximized by a fixed number of optax Adam steps on reparameterized
gradients, in coordinates whitened by the starting point (so the learning rate is in
units of posterior standard deviations), with a cosine-decayed learning rate. Each
round starts from the server's summary of :math:`p_0 G` for ``u`` (where the new
:math:`q_k(u)` will be at convergence) and the client's previous
:math:`q_k(\theta_k \mid u)` (its warm start, kept in the client state).

Failures
--------
A client whose ELBO is not finite, whose factor has non-finite entries, or whose
factor precision exceeds ``max_site_precision`` in absolute value (an exploding
factor) sends its previous factor with ``ok=False`` and keeps its previous ``q``; the
reason is its ``status`` (:data:`STATUS`), which
:func:`~bayes_pfl.federated_vi.fit_vi` turns into an error naming the client.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from bayes_pfl import gaussian as gf
from bayes_pfl.algorithms import Algorithm, ep
from bayes_pfl.algorithms.ep import EPMessage, EPServerState, gaussian_log_kernel
from bayes_pfl.gaussian import GaussianFactor
from bayes_pfl.spec import HierarchicalModel

Array = jax.Array

__all__ = [
    "FAMILIES",
    "STATUS",
    "GaussianFamily",
    "VIBroadcast",
    "VIClientInfo",
    "VIClientState",
    "base_draws",
    "build",
    "fit_gaussian",
    "gaussian_family",
]

FAMILIES = ("full", "meanfield", "lowrank")

#: Meaning of ``VIClientState.status`` / ``VIClientInfo.status``.
STATUS = {
    -1: "not updated yet",
    0: "ok",
    1: "the local ELBO is not finite (NaN or infinite loss)",
    2: "the new factor has non-finite entries",
    3: "the new factor exploded (precision above max_site_precision)",
}


# --------------------------------------------------------------------------
# Gaussian variational families


class GaussianFamily(NamedTuple):
    """A Gaussian variational family as pure functions of its parameters (a pytree).

    ``sample(params, eps)`` maps one base draw ``eps`` (length ``noise_dim(n)``) to a
    point; ``entropy(params)`` is the entropy up to a constant; ``moments(params)`` the
    mean and covariance; ``from_moments(mean, cov)`` the family member closest to
    ``N(mean, cov)`` (exact for full; diagonal of ``cov`` for mean-field; leading
    eigenvectors for low rank).
    """

    name: str
    noise_dim: Callable[[int], int]
    sample: Callable[[Any, Array], Array]
    entropy: Callable[[Any], Array]
    moments: Callable[[Any], tuple[Array, Array]]
    from_moments: Callable[[Array, Array], Any]


def _full() -> GaussianFamily:
    def unpack(raw):
        return jnp.tril(raw, -1) + jnp.diag(jnp.exp(jnp.diag(raw)))

    def sample(params, eps):
        m, raw = params
        return m + unpack(raw) @ eps

    def entropy(params):
        return jnp.sum(jnp.diag(params[1]))

    def moments(params):
        m, raw = params
        chol = unpack(raw)
        return m, chol @ chol.T

    def from_moments(mean, cov):
        chol = jnp.linalg.cholesky(cov)
        return mean, jnp.tril(chol, -1) + jnp.diag(jnp.log(jnp.diag(chol)))

    return GaussianFamily("full", lambda n: n, sample, entropy, moments, from_moments)


def _meanfield() -> GaussianFamily:
    def sample(params, eps):
        m, log_sd = params
        return m + jnp.exp(log_sd) * eps

    def entropy(params):
        return jnp.sum(params[1])

    def moments(params):
        m, log_sd = params
        return m, jnp.diag(jnp.exp(2.0 * log_sd))

    def from_moments(mean, cov):
        return mean, 0.5 * jnp.log(jnp.diag(cov))

    return GaussianFamily("meanfield", lambda n: n, sample, entropy, moments, from_moments)


def _lowrank(rank: int) -> GaussianFamily:
    def sample(params, eps):
        m, log_d, w = params
        n = m.shape[0]
        return m + jnp.exp(log_d) * eps[:n] + w @ eps[n:]

    def entropy(params):
        _, log_d, w = params
        # log det(D^2 + W W^T) / 2 = sum log d + log det(I + W^T D^-2 W) / 2
        wd = w * jnp.exp(-log_d)[:, None]
        _, logdet = jnp.linalg.slogdet(jnp.eye(w.shape[1]) + wd.T @ wd)
        return jnp.sum(log_d) + 0.5 * logdet

    def moments(params):
        m, log_d, w = params
        return m, jnp.diag(jnp.exp(2.0 * log_d)) + w @ w.T

    def from_moments(mean, cov):
        vals, vecs = jnp.linalg.eigh(cov)
        top_vals, top_vecs = vals[::-1][:rank], vecs[:, ::-1][:, :rank]
        # half of each leading direction's variance in W, the rest and all others in D
        w = top_vecs * jnp.sqrt(0.5 * jnp.maximum(top_vals, 0.0))
        diag = jnp.diag(cov)
        d2 = jnp.maximum(diag - jnp.sum(w**2, axis=1), 0.1 * diag)
        return mean, 0.5 * jnp.log(d2), w

    return GaussianFamily("lowrank", lambda n: n + rank, sample, entropy, moments, from_moments)


def gaussian_family(name: str, rank: int = 2) -> GaussianFamily:
    """The :class:`GaussianFamily` called ``name`` (``"full"``, ``"meanfield"``, ``"lowrank"``)."""
    if name not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {name!r}")
    if name == "full":
        return _full()
    if name == "meanfield":
        return _meanfield()
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be a positive integer, got {rank!r}")
    return _lowrank(rank)


def base_draws(rng_key: Array, num_particles: int, dim: int) -> Array:
    """``num_particles`` antithetic standard-normal draws with exact mean 0 and covariance I.

    Half the draws are whitened by the Cholesky factor of their own second-moment
    matrix and the other half are their negatives, so that ``mean(eps) == 0`` and
    ``eps.T @ eps / num_particles == I`` exactly: Gaussian expectations of quadratic
    functions are then computed without Monte Carlo error.
    """
    half = num_particles // 2
    if half < dim:
        raise ValueError(
            f"num_particles must be at least twice the dimension ({2 * dim}), got {num_particles}"
        )
    raw = jax.random.normal(rng_key, (half, dim))
    chol = jnp.linalg.cholesky(raw.T @ raw / half)
    white = jax.scipy.linalg.solve_triangular(chol, raw.T, lower=True).T
    return jnp.concatenate([white, -white])


class GaussianFit(NamedTuple):
    mean: Array
    cov: Array
    points: Array  # [N, n] the base draws mapped through the fitted q
    elbo: Array  # sample-average ELBO at the end (up to a constant)
    grad_norm: Array  # max |gradient| at the end, in whitened coordinates


def fit_gaussian(
    log_density_fn,
    start_mean: Array,
    start_cov: Array,
    eps: Array,
    fam: GaussianFamily,
    *,
    steps: Array | int,
    lr: float,
    optimizer: optax.GradientTransformation | None = None,
    final_lr_fraction: float = 0.01,
) -> GaussianFit:
    r"""Maximize the sample-average ELBO of ``exp(log_density_fn)`` over a Gaussian family.

    The ELBO :math:`\frac1N\sum_i f(z_i) + \mathbb H[q]`, :math:`z_i` the fixed base
    draws ``eps`` mapped through ``q``, is maximized by ``steps`` optimizer steps in
    coordinates whitened by the start (``z = m_0 + s_0 \odot z'``, ``s_0`` the start's
    standard deviations). The default optimizer is Adam with a learning rate decayed
    from ``lr`` to ``lr * final_lr_fraction`` on a cosine over ``steps`` (which may be
    a traced value). Pure and vmappable.
    """
    s0 = jnp.sqrt(jnp.diag(start_cov))
    corr = start_cov / jnp.outer(s0, s0)
    params0 = fam.from_moments(jnp.zeros_like(start_mean), corr)

    def to_z(params, e):
        return start_mean + s0 * fam.sample(params, e)

    def loss(params):
        vals = jax.vmap(lambda e: log_density_fn(to_z(params, e)))(eps)
        return -(jnp.mean(vals) + fam.entropy(params))

    if optimizer is None:
        total = jnp.maximum(jnp.asarray(steps), 1)

        def schedule(count):
            frac = jnp.minimum(count / total, 1.0)
            cosine = 0.5 * (1.0 + jnp.cos(jnp.pi * frac))
            return lr * (final_lr_fraction + (1.0 - final_lr_fraction) * cosine)

        optimizer = optax.adam(schedule)
    grad_fn = jax.value_and_grad(loss)

    def step(_, carry):
        params, opt_state = carry
        _, g = grad_fn(params)
        updates, opt_state = optimizer.update(g, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    params, _ = jax.lax.fori_loop(0, steps, step, (params0, optimizer.init(params0)))
    value, g = grad_fn(params)
    grad_norm = jnp.max(jnp.asarray([jnp.max(jnp.abs(leaf)) for leaf in jax.tree.leaves(g)]))
    m, c = fam.moments(params)
    points = jax.vmap(lambda e: to_z(params, e))(eps)
    return GaussianFit(start_mean + s0 * m, c * jnp.outer(s0, s0), points, -value, grad_norm)


def expected_curvature_factor(log_fn, points: Array, mean: Array) -> GaussianFactor:
    r"""Gaussian factor ``(-E[∇² f], E[∇f] - E[∇² f] m)`` of ``f = log_fn`` over ``points``."""
    grads = jax.vmap(jax.grad(log_fn))(points)
    hess = jax.vmap(jax.hessian(log_fn))(points)
    prec = -jnp.mean(hess, axis=0)
    prec = 0.5 * (prec + prec.T)
    return GaussianFactor(prec, jnp.mean(grads, axis=0) + prec @ mean)


def marginalize(f: GaussianFactor, dim_u: int) -> GaussianFactor:
    """Integrate the trailing coordinates out of a full factor (Schur complement)."""
    p, s = f.precision, f.shift
    puu, put, ptt = p[:dim_u, :dim_u], p[:dim_u, dim_u:], p[dim_u:, dim_u:]
    sol = jnp.linalg.solve(ptt, jnp.concatenate([put.T, s[dim_u:, None]], axis=1))
    prec = puu - put @ sol[:, :-1]
    return GaussianFactor(0.5 * (prec + prec.T), s[:dim_u] - put @ sol[:, -1])


# --------------------------------------------------------------------------
# the algorithm


class VIClientState(NamedTuple):
    mean: Array  # [P + D] mean of q_k(u, theta_k)
    cov: Array  # [P + D, P + D] covariance of q_k (diagonal for mean-field)
    eps: Array  # [N, noise_dim] fixed base draws (common random numbers)
    elbo: Array  # last local ELBO (sample average, up to a constant)
    status: Array  # int, see STATUS
    rounds: Array  # number of completed local fits


class VIBroadcast(NamedTuple):
    sites_product: GaussianFactor  # G
    site: GaussianFactor  # this client's current factor t_k
    mode: Array  # [P] mode of the server's p0 * G (start of q_k(u))
    precision: Array  # [P, P] its curvature


class VIClientInfo(NamedTuple):
    ok: Array
    status: Array
    elbo: Array
    grad_norm: Array  # max |ELBO gradient| after the last step (whitened coordinates)
    site_precision_max: Array  # max |entry| of the new factor's precision


def build(
    model: HierarchicalModel,
    *,
    family: str = "full",
    rank: int = 2,
    steps: int = 200,
    first_steps: int | None = None,
    lr: float = 0.05,
    num_particles: int = 32,
    damping: float = 0.8,
    tol: float = 1e-3,
    max_site_precision: float = 1e10,
    optimizer: optax.GradientTransformation | None = None,
) -> Algorithm:
    """Federated (partitioned) VI for ``model``; see the module docstring.

    Parameters
    ----------
    model : HierarchicalModel
        The declaration; :meth:`~bayes_pfl.spec.HierarchicalModel.client_log_joint`
        and :meth:`~bayes_pfl.spec.HierarchicalModel.log_hyperprior` define the
        local ELBOs.
    family : {"full", "meanfield", "lowrank"}
        Gaussian family of each client's ``q_k(u, theta_k)``. Full and low-rank
        clients send full factors (their ``u`` precision is the Schur complement of
        the joint factor); mean-field clients send diagonal factors (``2 P`` numbers).
    rank : int
        Rank of the low-rank part (``family="lowrank"``).
    steps : int
        Adam steps per round (warm rounds).
    first_steps : int, optional
        Adam steps in a client's first fit, which starts cold (default ``3 * steps``).
    lr : float
        Initial learning rate, in units of the start's posterior standard deviations.
    num_particles : int
        Fixed base draws per client (even, at least twice the dimension of the noise).
    damping : float
        Damping rate of the factor updates, in ``(0, 1]`` (EP's server update).
    tol : float
        Convergence: the largest change of the server's summary of ``p0 * G`` (means
        in sds, and log sds) below ``tol``.
    max_site_precision : float
        A new factor whose precision has an entry above this in absolute value is
        rejected as exploding (``status`` 3).
    optimizer : optax.GradientTransformation, optional
        Replaces the default (Adam, cosine-decayed from ``lr``); applied for ``steps``
        (``first_steps``) steps in whitened coordinates.

    Returns
    -------
    Algorithm
        ``server_init``/``server_update`` are EP's (:func:`bayes_pfl.algorithms.ep.build`);
        messages are :class:`~bayes_pfl.algorithms.ep.EPMessage`.
    """
    fam = gaussian_family(family, rank)
    if not 0.0 < damping <= 1.0:
        raise ValueError(f"damping must be in (0, 1], got {damping!r}")
    for name, value in (("steps", steps), ("num_particles", num_particles)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    first_steps = 3 * steps if first_steps is None else first_steps
    P, D = model.phi_dim, model.theta_dim
    n = P + D
    noise_dim = fam.noise_dim(n)
    if num_particles % 2 or num_particles < 2 * noise_dim:
        raise ValueError(
            f"num_particles must be even and at least {2 * noise_dim} (twice the dimension "
            f"of the base draws of this model and family), got {num_particles}"
        )
    server = ep.build(model, damping=damping, tol=tol, site_fit="taylor")
    diagonal = fam.name == "meanfield"

    def broadcast(state: EPServerState) -> VIBroadcast:
        b = server.broadcast(state)
        k = state.sites.shift.shape[0]
        mode = jnp.broadcast_to(state.mode, (k, P))
        precision = jnp.broadcast_to(state.precision, (k, P, P))
        return VIBroadcast(b.sites_product, b.site, mode, precision)

    def client_init(rng_key: Array, data) -> VIClientState:
        del data
        eps = base_draws(rng_key, num_particles, noise_dim)
        return VIClientState(
            jnp.zeros(n), jnp.eye(n), eps, jnp.asarray(jnp.nan), jnp.asarray(-1), jnp.asarray(0)
        )

    def start(state: VIClientState, bcast: VIBroadcast):
        """Start of q_k: u from the server's summary, theta | u from the previous q_k."""
        m, c = state.mean, state.cov
        a = jnp.linalg.solve(c[:P, :P], c[:P, P:]).T  # [D, P]: E[theta | u] slope
        cond_cov = c[P:, P:] - a @ c[:P, P:]
        su = jnp.linalg.inv(bcast.precision)
        su = 0.5 * (su + su.T)
        mu = bcast.mode
        mean = jnp.concatenate([mu, m[P:] + a @ (mu - m[:P])])
        cov = jnp.block([[su, su @ a.T], [a @ su, a @ su @ a.T + cond_cov]])
        return mean, 0.5 * (cov + cov.T)

    def client_update(rng_key: Array, bcast: VIBroadcast, state: VIClientState, data):
        del rng_key  # the base draws are fixed per client (common random numbers)
        x, y, mask = data
        cavity = gf.divide(bcast.sites_product, bcast.site)

        def log_lik(z):
            return model.client_log_joint(z[P:], z[:P], x, y, mask)

        def log_tilted(z):
            u = z[:P]
            return model.log_hyperprior(u) + gaussian_log_kernel(cavity, u) + log_lik(z)

        mean0, cov0 = start(state, bcast)
        n_steps = jnp.where(state.rounds > 0, steps, first_steps)
        fit = fit_gaussian(
            log_tilted, mean0, cov0, state.eps, fam, steps=n_steps, lr=lr, optimizer=optimizer
        )
        joint = expected_curvature_factor(log_lik, fit.points, fit.mean)
        if diagonal:
            site = GaussianFactor(
                jnp.diag(joint.precision)[:P],
                jnp.diag(joint.precision)[:P] * fit.mean[:P]
                + (joint.shift - joint.precision @ fit.mean)[:P],
            )
            cov = jnp.diag(jnp.diag(fit.cov))
        else:
            site = marginalize(joint, P)
            cov = fit.cov
        prec_max = jnp.max(jnp.abs(site.precision))
        finite_site = jnp.all(jnp.isfinite(site.precision)) & jnp.all(jnp.isfinite(site.shift))
        finite_q = jnp.all(jnp.isfinite(fit.mean)) & jnp.all(jnp.isfinite(cov))
        status = jnp.where(
            ~(jnp.isfinite(fit.elbo) & finite_q),
            1,
            jnp.where(~finite_site, 2, jnp.where(prec_max > max_site_precision, 3, 0)),
        )
        ok = status == 0
        old = gf.to_diagonal(bcast.site) if diagonal else bcast.site
        site = jax.tree.map(lambda s, o: jnp.where(ok, s, o), site, old)
        new_state = VIClientState(
            jnp.where(ok, fit.mean, state.mean),
            jnp.where(ok, cov, state.cov),
            state.eps,
            fit.elbo,
            status,
            state.rounds + ok,
        )
        info = VIClientInfo(ok, status, fit.elbo, fit.grad_norm, prec_max)
        return new_state, EPMessage(site, ok), info

    name = f"vi-{fam.name}" + (f"{rank}" if fam.name == "lowrank" else "")
    return Algorithm(
        server.server_init,
        client_init,
        client_update,
        server.server_update,
        broadcast,
        name=name,
        reasons=tuple(STATUS.items()),
    )
