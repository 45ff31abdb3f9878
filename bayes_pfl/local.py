"""Per-client inference kernels: Newton/Laplace, conditional sampling, NUTS.

Every function here works on one client and one flat vector, and is meant to be
``jax.vmap``-ed over clients (and draws) by the callers; none loops in Python.

* :func:`newton_maximize`: the mode of a smooth log density by Newton's method
  with a saddle-free Hessian (absolute eigenvalues) and a vectorized
  backtracking line search; the workhorse of Laplace-EP and one-shot summaries.
  It stops once the predicted ascent of a step is below the rounding error of the
  log density (a line search could not confirm it, and under ``vmap`` every lane
  would wait for its halvings).
* :func:`newton_steps`: a fixed number of plain Newton steps from a good start.
* :func:`laplace_marginal`: the Laplace approximation of a joint density over
  ``(u, theta)``, marginalized to ``u`` by a Schur complement.
* :func:`sample_conditional`: exact-in-the-limit draws from a low-dimensional
  conditional ``p(theta | u, D_k)``: a Laplace proposal refined by independence
  Metropolis-Hastings steps (exact when the conditional is Gaussian);
  :func:`sample_conditionals` draws one per global draw from linearly predicted modes.
* :func:`nuts_run`: numpyro's functional NUTS on a potential, vmappable (the draws,
  divergences and the adaptation it ended with).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P
from numpyro.infer.hmc import hmc
from numpyro.infer.util import ParamInfo

Array = jax.Array
LogDensityFn = Callable[[Array], Array]

__all__ = [
    "ConditionalDraws",
    "LaplaceResult",
    "NewtonResult",
    "laplace_marginal",
    "map_chains",
    "newton_maximize",
    "newton_steps",
    "independence_chain",
    "nuts_run",
    "sample_conditional",
    "sample_conditionals",
    "saddle_free",
]

_MAX_HALVINGS = 11  # smallest step tried: 1/2048


class NewtonResult(NamedTuple):
    """Mode of a log density and the curvature there."""

    mode: Array  # [n]
    value: Array  # log density at the mode
    neg_hessian: Array  # [n, n], -∇² log p at the mode (not made positive definite)
    grad_norm: Array  # max |∇ log p| at the mode
    iterations: Array
    converged: Array  # bool


def saddle_free(h: Array, floor: float) -> Array:
    """Saddle-free version of a symmetric matrix: absolute eigenvalues, floored."""
    w, v = jnp.linalg.eigh(0.5 * (h + h.T))
    w = jnp.maximum(jnp.abs(w), floor)
    return (v * w) @ v.T


def _newton_direction(neg_hessian: Array, grad: Array, floor: float) -> Array:
    """Solve ``|H| d = g``; scalar arithmetic in one dimension (no batched LAPACK calls,
    which dominate when a one-dimensional client effect is solved for many clients)."""
    if neg_hessian.shape[0] == 1:
        return grad / jnp.maximum(jnp.abs(neg_hessian[0]), floor)
    return jnp.linalg.solve(saddle_free(neg_hessian, floor), grad)


def value_grad_hessian(logp_fn: LogDensityFn, x: Array) -> tuple[Array, Array, Array]:
    """``(f(x), ∇f(x), ∇²f(x))`` from one forward-over-reverse pass.

    ``jax.value_and_grad`` and ``jax.hessian`` called separately evaluate the gradient
    twice (the Hessian's forward-mode pass recomputes it as its primal, and XLA does not
    merge the two); here the gradient and value are read off the Hessian's primal.
    """
    value_and_grad = jax.value_and_grad(logp_fn)

    def along(e):
        (f, g), (_, he) = jax.jvp(value_and_grad, (x,), (e,))
        return f, g, he

    eye = jnp.eye(jnp.shape(x)[0], dtype=jnp.result_type(x))
    return jax.vmap(along, out_axes=(None, None, 0))(eye)


def newton_maximize(
    logp_fn: LogDensityFn,
    x0: Array,
    *,
    max_iter: int = 50,
    tol: float = 1e-9,
    floor: float = 1e-8,
    max_halvings: int = _MAX_HALVINGS,
) -> NewtonResult:
    """Maximize ``logp_fn`` from ``x0`` by damped, saddle-free Newton steps.

    Each iteration solves ``|H| d = g`` (``|H|``: the negative Hessian with
    absolute, floored eigenvalues, so every step ascends), then backtracks: the
    full step first, halved (at most ``max_halvings`` times) until ``logp``
    increases. Near the mode the full step is accepted, so an iteration costs one
    extra evaluation of ``logp`` (under ``jax.vmap`` every client waits for the
    client that halves most often, in that iteration only). It stops when the
    gradient's largest entry is below ``tol * (1 + |logp|)``, when no step size
    increases ``logp`` (a numerical optimum), or after ``max_iter`` iterations.
    Non-finite trial values are never accepted, so a finite start stays finite.
    """
    n = jnp.shape(x0)[0]

    def safe_logp(x):
        v = logp_fn(x)
        return jnp.where(jnp.isfinite(v), v, -jnp.inf)

    # A do-while loop: derivatives are evaluated only in the body, once per iterate, so
    # they are compiled once (this matters for nested, implicitly differentiated objectives).
    def not_done(state):
        return jnp.logical_and(state[4] <= max_iter, jnp.logical_not(state[5]))

    def body(state):
        x, _, _, _, it, _ = state
        f, g, h = value_grad_hessian(logp_fn, x)
        h = -h
        converged = jnp.max(jnp.abs(g)) < tol * (1.0 + jnp.abs(f))
        d = _newton_direction(h, g, floor)
        # Predicted ascent of the step, g'|H|^{-1} g / 2, below the rounding error of logp:
        # function values can no longer confirm a step (a line search would halve to its
        # limit, every halving a full evaluation), and the quadratic model is exact at this
        # scale, so the full step is taken and the search ends.
        tiny = g @ d <= 100.0 * jnp.finfo(x.dtype).eps * (1.0 + jnp.abs(f))
        searching = jnp.logical_not(converged | tiny) & (it < max_iter)

        def shrink(ls):
            step, _, k = ls
            return 0.5 * step, safe_logp(x + 0.5 * step * d), k + 1

        def keep_shrinking(ls):
            _, val, k = ls
            return searching & jnp.logical_not(val > f) & (k < max_halvings)

        one = jnp.ones((), x.dtype)
        val0 = jnp.where(searching, safe_logp(x + d), -jnp.inf)
        step, val, _ = jax.lax.while_loop(keep_shrinking, shrink, (one, val0, jnp.asarray(0)))
        move = searching & (val > f)
        last = jnp.logical_not(converged) & tiny & (it < max_iter) & jnp.all(jnp.isfinite(d))
        # a step that cannot improve means we sit at a (numerical) optimum
        done = jnp.logical_not(move)
        move = move | last
        return jnp.where(move, x + step * d, x), f, g, h, it + 1, done

    x0 = jnp.asarray(x0)
    dt = x0.dtype
    init = (
        x0,
        jnp.zeros((), dt),
        jnp.zeros(n, dt),
        jnp.zeros((n, n), dt),
        jnp.asarray(0),
        jnp.asarray(False),
    )
    x, f, g, h, it, _ = jax.lax.while_loop(not_done, body, init)
    gmax = jnp.max(jnp.abs(g))
    # Converged when the gradient is small, or when the Newton decrement g'|H|^{-1} g (twice
    # the predicted ascent; the squared distance to the mode in the curvature's metric,
    # affine invariant: Boyd & Vandenberghe 9.5) is. ``g`` is the gradient *before* the last
    # step: a loop ending with the full step of a ``tiny`` ascent left the iterate closer
    # still, and in float32 that stale gradient (~1e-2 on a 50-row logistic client) failed
    # the gradient test while the step moved by 1e-5 sds: such clients were dropped.
    decrement = g @ _newton_direction(h, g, floor)
    dec_tol = jnp.maximum(tol, 1000.0 * jnp.finfo(dt).eps) * (1.0 + jnp.abs(f))
    small_step = jnp.isfinite(decrement) & (decrement < dec_tol)
    converged = jnp.isfinite(f) & ((gmax < jnp.sqrt(tol) * (1.0 + jnp.abs(f))) | small_step)
    return NewtonResult(x, f, h, gmax, it - 1, converged)


class LaplaceResult(NamedTuple):
    """Laplace approximation of a joint over ``(u, theta)``, marginal over ``u``."""

    mode: Array  # joint mode [P + D]
    u_mode: Array  # [P]
    u_precision: Array  # [P, P] Schur complement: precision of the u-marginal
    joint_neg_hessian: Array  # [P + D, P + D]
    value: Array
    converged: Array


def laplace_marginal(logp_fn: LogDensityFn, z0: Array, dim_u: int, **newton_kw) -> LaplaceResult:
    """Laplace approximation of ``exp(logp_fn(z))``, ``z = (u, theta)``, marginalized to ``u``.

    The marginal precision of ``u`` is the Schur complement
    ``H_uu - H_ut H_tt^{-1} H_tu`` of the negative Hessian ``H`` at the joint mode.
    """
    res = newton_maximize(logp_fn, z0, **newton_kw)
    h = 0.5 * (res.neg_hessian + res.neg_hessian.T)
    huu, hut, htt = h[:dim_u, :dim_u], h[:dim_u, dim_u:], h[dim_u:, dim_u:]
    if h.shape[0] > dim_u:
        prec = huu - hut @ jnp.linalg.solve(htt, hut.T)
    else:
        prec = huu
    converged = res.converged & jnp.all(jnp.isfinite(prec))
    return LaplaceResult(res.mode, res.mode[:dim_u], 0.5 * (prec + prec.T), h, res.value, converged)


class ConditionalDraws(NamedTuple):
    """Draws of ``theta`` from ``p(theta | u, D)`` and the Laplace evidence estimate."""

    theta: Array  # [D]
    log_evidence: Array  # Laplace estimate of log ∫ p(D, theta | u) dtheta
    acceptance: Array  # independence-MH acceptance rate


def sample_conditional(
    rng_key: Array,
    logp_fn: LogDensityFn,
    theta0: Array,
    *,
    mh_steps: int = 10,
    newton_iter: int = 30,
    max_halvings: int = _MAX_HALVINGS,
) -> ConditionalDraws:
    """One draw from a low-dimensional density ``exp(logp_fn(theta))`` (unnormalized).

    A Laplace approximation ``N(m, H^{-1})`` at the mode (found by at most
    ``newton_iter`` Newton iterations from ``theta0``) is the proposal of
    ``mh_steps`` independence Metropolis-Hastings steps started from a proposal
    draw, so the draw is exact when the density is Gaussian (every step is
    accepted) and close to exact when it is nearly so; an inexact mode (few
    Newton iterations from a poor start) costs acceptance, not correctness of the
    MH correction. Also returns the Laplace estimate of the log normalizing
    constant, used to reweight global draws for a new client (cold start).
    ``max_halvings`` bounds each Newton line search (see :func:`newton_maximize`).
    """
    res = newton_maximize(logp_fn, theta0, max_iter=newton_iter, max_halvings=max_halvings)
    x, acceptance, half_logdet = _independence_mh(
        rng_key, logp_fn, res.mode, res.neg_hessian, mh_steps
    )
    d = theta0.shape[0]
    log_evidence = res.value + 0.5 * d * jnp.log(2 * jnp.pi) - half_logdet
    return ConditionalDraws(x, log_evidence, acceptance)


def _independence_mh(
    rng_key: Array, logp_fn: LogDensityFn, centre: Array, neg_hessian: Array, mh_steps: int
) -> tuple[Array, Array, Array]:
    """``mh_steps`` independence-MH steps with proposal ``N(centre, neg_hessian^{-1})``
    (absolute eigenvalues), started from a proposal draw.

    Returns ``(draw, acceptance rate, half log-determinant of the proposal precision)``.
    """
    d = centre.shape[0]
    if d == 1:  # scalar arithmetic: no batched LAPACK calls for a scalar client effect
        prec = jnp.maximum(jnp.abs(neg_hessian[0, 0]), 1e-10)
        half_logdet = 0.5 * jnp.log(prec)

        def to_theta(eps):
            return centre + eps / jnp.sqrt(prec)

    else:
        chol_prec = jnp.linalg.cholesky(saddle_free(neg_hessian, 1e-10))
        half_logdet = jnp.sum(jnp.log(jnp.diag(chol_prec)))

        def to_theta(eps):
            return centre + jax.scipy.linalg.solve_triangular(chol_prec.T, eps, lower=False)

    # An independence sampler's proposals do not depend on the chain: all of them are drawn
    # and evaluated at once (one batched evaluation of the density, whose parts that do not
    # depend on theta are computed once), and only the accept/reject chain over their
    # log-weights runs sequentially, on scalars.
    k_eps, k_u = jax.random.split(rng_key)
    eps = jax.random.normal(k_eps, (mh_steps + 1, d))
    log_unif = jnp.log(jax.random.uniform(k_u, (mh_steps,)))
    xs = jax.vmap(to_theta)(eps)
    lws = jax.vmap(logp_fn)(xs) + 0.5 * jnp.sum(eps**2, axis=1)
    i, acceptance = independence_chain(lws, log_unif)
    return xs[i], acceptance, half_logdet


def independence_chain(log_weights: Array, log_unif: Array) -> tuple[Array, Array]:
    """An independence Metropolis-Hastings chain over proposals already evaluated.

    ``log_weights [n]`` are ``log target - log proposal`` of ``n`` proposals (the first is
    the chain's start), ``log_unif [n - 1]`` the logs of uniform draws. Returns the index
    of the proposal the chain ends on and the acceptance rate. Non-finite weights are
    never accepted.
    """
    lws = jnp.where(jnp.isfinite(log_weights), log_weights, -jnp.inf)
    n_steps = lws.shape[0] - 1

    def mh(carry, step):
        i, lw, acc = carry
        j, lw_new, lu = step
        accept = lu < lw_new - lw
        return (jnp.where(accept, j, i), jnp.where(accept, lw_new, lw), acc + accept), None

    steps = (jnp.arange(1, n_steps + 1), lws[1:], log_unif)
    (i, _, acc), _ = jax.lax.scan(mh, (jnp.asarray(0), lws[0], jnp.asarray(0.0)), steps)
    return i, acc / max(n_steps, 1)


def newton_steps(logp_fn: LogDensityFn, x0: Array, steps: int, *, floor: float = 1e-8):
    """``steps`` plain (saddle-free) Newton steps from ``x0``, no line search.

    For a start already near the mode (a linear prediction of it), where a line search
    only costs evaluations. Returns ``(x, neg_hessian)``: the last iterate and the
    negative Hessian at the point it was reached from (at ``x0`` when ``steps == 0``).
    A non-finite step is not taken.
    """
    if steps == 0:
        return x0, -jax.hessian(logp_fn)(x0)
    x = x0
    for _ in range(steps):
        _, g, h = value_grad_hessian(logp_fn, x)
        d = _newton_direction(-h, g, floor)
        x = jnp.where(jnp.all(jnp.isfinite(d)), x + d, x)
    return x, -h


def sample_conditionals(
    rng_key: Array,
    log_joint_fn: Callable[[Array, Array], Array],
    u_draws: Array,
    theta0: Array,
    *,
    mh_steps: int = 5,
    newton_iter: int = 1,
) -> tuple[Array, Array]:
    """``theta^(s) ~ exp(log_joint_fn(theta, u^(s)))`` for every draw ``u^(s)`` (rows of ``u_draws``).

    Every draw starts from a linear prediction of its mode: the mode ``θ̂(ū)`` at the
    draws' mean ``ū`` (full Newton, once) moved by the implicit-function Jacobian,
    ``θ̂(ū) + J (u^(s) - ū)`` with ``J = -[∇²_θθ g]^{-1} ∇²_θu g``. From there
    ``newton_iter`` plain Newton steps (:func:`newton_steps`, no line search) give the
    centre and curvature of a Gaussian proposal, and ``mh_steps`` independence
    Metropolis-Hastings steps correct it, so the draws are exact in the limit whatever
    the start; the start only sets the acceptance rate. The proposals of an
    independence sampler do not depend on the chain, so all of a draw's proposals are
    evaluated in one batched call. Every evaluation costs a pass over the client's
    rows: a draw costs ``newton_iter`` passes with derivatives and ``mh_steps + 1``
    without.

    Returns ``(theta [S, D], mean acceptance)``.
    """
    u_bar = jnp.mean(u_draws, axis=0)

    def mode_twice(u):
        mode = conditional_mode(log_joint_fn, u, theta0)
        return mode, mode

    # conditional_mode's implicit-differentiation rule gives J; the mode comes as aux
    jac, centre = jax.jacfwd(mode_twice, has_aux=True)(u_bar)  # [D, P], [D]
    starts = centre + (u_draws - u_bar) @ jac.T
    usable = jnp.all(jnp.isfinite(starts), axis=1, keepdims=True)
    starts = jnp.where(usable, starts, theta0)

    def one_draw(key, u, start):
        # Plain Newton steps, no line search: under vmap every draw would wait for the one
        # that halves most often, and from this start a full step is good (the MH
        # correction absorbs an imperfect proposal).
        logp = lambda th: log_joint_fn(th, u)  # noqa: E731
        centre, neg_hessian = newton_steps(logp, start, newton_iter)
        theta, acceptance, _ = _independence_mh(key, logp, centre, neg_hessian, mh_steps)
        return theta, acceptance

    keys = jax.random.split(rng_key, u_draws.shape[0])
    theta, acc = jax.vmap(one_draw)(keys, u_draws, starts)
    return theta, jnp.mean(acc)


class NutsRun(NamedTuple):
    """Draws of one NUTS chain and the adaptation it ended with."""

    draws: Array  # [num_samples, n]
    diverging: Array  # [num_samples]
    step_size: Array
    inverse_mass_matrix: Array  # [n, n]
    num_steps: Array  # [num_samples] leapfrog steps per draw


def nuts_run(
    rng_key: Array,
    logp_fn: LogDensityFn,
    z0: Array,
    *,
    num_warmup: int = 500,
    num_samples: int = 500,
    target_accept_prob: float = 0.8,
    max_tree_depth: int = 8,
    step_size: Array | float = 1.0,
    inverse_mass_matrix: Array | None = None,
    adapt_mass_matrix: bool = True,
) -> NutsRun:
    """One NUTS chain on ``exp(logp_fn(z))`` with numpyro's functional core (vmappable).

    A dense mass matrix is adapted during warm-up, starting from ``inverse_mass_matrix``
    when given (e.g. the adaptation of an earlier run on a nearby density); with
    ``adapt_mass_matrix=False`` only the step size is adapted. No Python loop, so it can
    be ``jax.vmap``-ed (the chains then step in lockstep).
    """
    init_kernel, sample_kernel = hmc(potential_fn=lambda z: -logp_fn(z), algo="NUTS")
    k_init, _ = jax.random.split(rng_key)
    state = init_kernel(
        ParamInfo(z0, -logp_fn(z0), -jax.grad(logp_fn)(z0)),
        num_warmup,
        step_size=step_size,
        inverse_mass_matrix=inverse_mass_matrix,
        adapt_mass_matrix=adapt_mass_matrix,
        target_accept_prob=target_accept_prob,
        max_tree_depth=max_tree_depth,
        dense_mass=True,
        rng_key=k_init,
    )

    def body(state, _):
        state = sample_kernel(state)
        return state, (state.z, state.diverging, state.num_steps)

    state, _ = jax.lax.scan(body, state, None, length=num_warmup)
    state, (draws, div, steps) = jax.lax.scan(body, state, None, length=num_samples)
    adapt = state.adapt_state
    return NutsRun(draws, div, adapt.step_size, adapt.inverse_mass_matrix, steps)


def map_chains(fn: Callable, per_chain: tuple, shared: tuple = ()):
    """``fn(*chain_args, *shared)`` for every chain: ``per_chain`` leaves carry a leading
    chain axis, ``shared`` leaves are the same for all chains.

    With at least as many local devices as chains (an entry point set the host device
    count, as ``bayes-pfl`` does) each chain runs on its own device (``jax.shard_map``):
    chains step independently, each its own trajectory lengths, in parallel threads.
    Otherwise ``jax.vmap``: the chains step in lockstep, every step as long as the
    longest chain's. Usable inside ``jax.jit``.
    """
    n = jax.tree.leaves(per_chain)[0].shape[0]
    in_axes = (0,) * len(per_chain) + (None,) * len(shared)
    mapped = jax.vmap(fn, in_axes=in_axes)
    devices = jax.local_devices()
    if n < 2 or len(devices) < n:
        return mapped(*per_chain, *shared)
    mesh = Mesh(np.asarray(devices[:n]), ("chain",))
    specs = (P("chain"),) * len(per_chain) + (P(),) * len(shared)
    return jax.shard_map(mapped, mesh=mesh, in_specs=specs, out_specs=P("chain"), check_vma=False)(
        *per_chain, *shared
    )


def conditional_mode(
    log_joint_fn: Callable[[Array, Array], Array],
    u: Array,
    theta0: Array,
    *,
    max_iter: int = 50,
) -> Array:
    """``argmax_theta log_joint_fn(theta, u)``, differentiable in ``u`` by implicit differentiation.

    At the mode ``∇_θ g(θ̂(u), u) = 0``, so ``dθ̂/du = -[∇²_θθ g]^{-1} ∇²_θu g``; this is
    the JVP rule, so ``jax.grad``/``jax.hessian`` of functions of ``θ̂(u)`` are exact
    without differentiating through Newton's iterations.
    """

    @jax.custom_jvp
    def mode(u):
        return newton_maximize(lambda th: log_joint_fn(th, u), theta0, max_iter=max_iter).mode

    @mode.defjvp
    def mode_jvp(primals, tangents):
        (u,), (du,) = primals, tangents
        th = mode(u)
        g_th = jax.grad(log_joint_fn, argnums=0)
        h_tt = jax.hessian(log_joint_fn, argnums=0)(th, u)
        _, b = jax.jvp(lambda uu: g_th(th, uu), (u,), (du,))
        if h_tt.shape[0] == 1:
            return th, -b / h_tt[0]
        return th, -jnp.linalg.solve(h_tt, b)

    return mode(u)


def laplace_log_marginal(
    log_joint_fn: Callable[[Array, Array], Array],
    u: Array,
    theta0: Array,
    *,
    max_iter: int = 50,
) -> Array:
    r"""Laplace estimate of :math:`\log \int \exp g(\theta, u)\, d\theta`, smooth in ``u``.

    .. math::

        \log \hat L(u) = g(\hat\theta(u), u) + \tfrac{D}{2}\log 2\pi
            - \tfrac12 \log\det\left(-\nabla^2_{\theta\theta} g(\hat\theta(u), u)\right)

    Exact when ``g`` is quadratic in ``θ`` (a Gaussian conditional, e.g. a normal
    likelihood linear in the client effect); gradients and Hessians in ``u`` come
    from :func:`conditional_mode`'s implicit differentiation.
    """
    th = conditional_mode(log_joint_fn, u, theta0, max_iter=max_iter)
    value, _, h = value_grad_hessian(lambda t: log_joint_fn(t, u), th)
    h = -h
    if h.shape[0] == 1:  # no LAPACK call for a scalar client effect
        logdet = jnp.where(h[0, 0] > 0, jnp.log(jnp.abs(h[0, 0])), jnp.nan)
    else:
        sign, logdet = jnp.linalg.slogdet(h)
        logdet = jnp.where(sign > 0, logdet, jnp.nan)
    d = th.shape[0]
    return value + 0.5 * d * jnp.log(2 * jnp.pi) - 0.5 * logdet


def chain_diagnostics(draws: Array) -> tuple[Array, Array]:
    """Split-R-hat (max over coordinates) and bulk ESS (min) of one chain ``[n, d]``, in JAX.

    The chain is split in halves (Gelman et al., *BDA3*, 11.4); ESS uses the FFT
    autocorrelation with Geyer's initial positive sequence, truncated at the first
    negative pair sum. Jittable and vmappable, for per-client tilted NUTS runs.
    """
    n = (draws.shape[0] // 2) * 2
    halves = jnp.stack([draws[: n // 2], draws[n // 2 : n]])  # [2, m, d]
    m = n // 2
    means = halves.mean(axis=1)
    within = halves.var(axis=1, ddof=1).mean(axis=0)
    between = m * means.var(axis=0, ddof=1)
    var_plus = (m - 1) / m * within + between / m
    rhat = jnp.sqrt(var_plus / within)

    x = draws[:n] - draws[:n].mean(axis=0)
    f = jnp.fft.rfft(x, n=2 * n, axis=0)
    acov = jnp.fft.irfft(f * jnp.conj(f), axis=0)[:n] / n
    rho = acov / acov[:1]
    pairs = rho[: (n // 2) * 2].reshape(n // 2, 2, -1).sum(axis=1)  # Gamma_t = rho_2t + rho_2t+1
    positive = jnp.cumprod(pairs > 0, axis=0)
    tau = -1.0 + 2.0 * jnp.sum(pairs * positive, axis=0)
    ess = n / jnp.maximum(tau, 1.0 / jnp.log10(n))
    return jnp.max(rhat), jnp.min(ess)
