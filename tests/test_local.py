"""Local inference kernels: Newton's stopping rule, plain Newton steps, conditional draws."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bayes_pfl.local import (
    conditional_mode,
    laplace_log_marginal,
    newton_maximize,
    newton_steps,
    sample_conditionals,
    value_grad_hessian,
)

CENTRE = jnp.array([3.0, -1.0])
WEIGHT = jnp.array([1e4, 2.0])


def _quadratic(x):
    return -0.5 * jnp.sum((x - CENTRE) ** 2 * WEIGHT) + 1e3


def test_newton_stops_without_halving_when_rounding_hides_progress():
    """With ``tol=0`` the gradient test never passes; once the predicted ascent is below
    the rounding error of ``logp`` Newton takes the full step and stops, instead of
    halving the step to its limit (11 extra evaluations) to find no increase."""
    calls = []

    def logp(x):
        jax.debug.callback(lambda: calls.append(1))
        return _quadratic(x)

    res = jax.jit(lambda x0: newton_maximize(logp, x0, tol=0.0, max_iter=50))(jnp.zeros(2))
    np.testing.assert_allclose(res.mode, CENTRE, rtol=0, atol=1e-12)
    assert int(res.iterations) <= 2
    # value, gradient and Hessian at two iterates plus one trial step each: a handful of
    # evaluations (the search that halved to its limit made 17 here)
    assert len(calls) <= 8, len(calls)


def test_newton_steps_exact_on_a_quadratic():
    x, neg_h = newton_steps(_quadratic, jnp.zeros(2), 1)
    np.testing.assert_allclose(x, CENTRE, atol=1e-12)
    np.testing.assert_allclose(neg_h, jnp.diag(WEIGHT), atol=1e-9)
    x0, neg_h0 = newton_steps(_quadratic, jnp.ones(2), 0)  # no step: the start and its curvature
    np.testing.assert_allclose(x0, jnp.ones(2))
    np.testing.assert_allclose(neg_h0, jnp.diag(WEIGHT), atol=1e-9)


def test_newton_steps_refuse_a_non_finite_step():
    # square root of a negative number: NaN value, gradient and Hessian, so a NaN step
    x, _ = newton_steps(lambda x: jnp.sum(jnp.sqrt(x)), jnp.array([-1.0]), 1)
    np.testing.assert_allclose(x, [-1.0])  # the NaN step was not taken


def test_conditional_draws_exact_on_a_skewed_density():
    """Independence MH from plain Newton steps: a logistic conditional with 3 rows (skewed,
    acceptance below 1) is sampled exactly: mean and sd match quadrature."""
    y = jnp.array([1.0, 1.0, 0.0])

    def log_joint(th, u):
        eta = th[0] + u[0]
        return jnp.sum(y * eta - jnp.logaddexp(0.0, eta)) - 0.5 * th[0] ** 2

    u = jnp.zeros((20000, 1)) + 0.3
    theta, acc = jax.jit(
        lambda k: sample_conditionals(k, log_joint, u, jnp.zeros(1), mh_steps=5, newton_iter=1)
    )(jax.random.key(3))
    grid = np.linspace(-12, 12, 200001)
    lp = np.array(jax.vmap(lambda t: log_joint(jnp.array([t]), jnp.array([0.3])))(grid))
    w = np.exp(lp - lp.max())
    w /= w.sum()
    mean = np.sum(w * grid)
    sd = np.sqrt(np.sum(w * (grid - mean) ** 2))
    draws = np.asarray(theta[:, 0])
    assert 0.8 < float(acc) < 1.0  # not Gaussian: the MH correction is at work
    # independent draws (every draw is its own chain): standard errors sd/sqrt(n)
    n = draws.size
    assert abs(draws.mean() - mean) < 5 * sd / np.sqrt(n)
    # sd's standard error is sd sqrt(0.5 / n) for a Gaussian; x1.5 for this mild skew
    assert abs(draws.std() - sd) < 5 * 1.5 * sd * np.sqrt(0.5 / n)


@pytest.mark.slow
def test_value_grad_hessian_matches_separate_derivatives():
    """One forward-over-reverse pass gives jax's value, gradient and Hessian, also when
    differentiated again (the Laplace marginal is differentiated twice in u by EP)."""

    def f(x):
        return jnp.sum(jnp.sin(x) * x[::-1]) - 0.25 * jnp.sum(x**4) + x[0] * x[1] ** 3

    x = jnp.array([0.3, -1.2, 0.7])
    v, g, h = value_grad_hessian(f, x)
    np.testing.assert_allclose(v, f(x), rtol=1e-14)
    np.testing.assert_allclose(g, jax.grad(f)(x), rtol=1e-13)
    np.testing.assert_allclose(h, jax.hessian(f)(x), rtol=1e-13, atol=1e-14)

    def log_joint(th, u):  # theta | u is not Gaussian: the Laplace terms depend on u
        return -0.5 * jnp.sum((th - u[0]) ** 2) * jnp.exp(-u[1]) - 0.1 * jnp.sum(th**4) - u[1]

    def reference(u):  # the same marginal from jax.hessian and a direct value
        th = conditional_mode(log_joint, u, jnp.zeros(2))
        h = -jax.hessian(log_joint, argnums=0)(th, u)
        return log_joint(th, u) + jnp.log(2 * jnp.pi) - 0.5 * jnp.linalg.slogdet(h)[1]

    u = jnp.array([0.4, 0.2])
    ours = lambda uu: laplace_log_marginal(log_joint, uu, jnp.zeros(2))  # noqa: E731
    np.testing.assert_allclose(ours(u), reference(u), rtol=1e-12)
    np.testing.assert_allclose(jax.grad(ours)(u), jax.grad(reference)(u), rtol=1e-8)
    hess = jax.hessian(ours)(u)
    np.testing.assert_allclose(hess, jax.hessian(reference)(u), rtol=1e-10)
    # and it is the derivative of the gradient (central differences, error ~ step^2)
    step = 1e-5
    fd = jnp.stack(
        [
            (jax.grad(ours)(u + step * e) - jax.grad(ours)(u - step * e)) / (2 * step)
            for e in jnp.eye(2)
        ]
    )
    np.testing.assert_allclose(hess, fd, rtol=1e-6, atol=1e-8)


def test_newton_converged_by_its_decrement_in_float32():
    """A 54-row logistic log-likelihood with a Gaussian prior, in float32: Newton ends with
    the full step of a tiny predicted ascent, so the last gradient it saw is stale (about
    1e-3 to 1e-2 here) and fails the gradient test, while the Newton decrement shows the
    iterate within 1e-4 sds of the mode: the result is converged (it was reported as
    failed, and the federated client steps dropped such clients)."""
    rng = np.random.default_rng(0)
    n, d = 54, 5
    x = jnp.asarray(rng.normal(size=(n, d)), jnp.float32)
    y = jnp.asarray(rng.random(n) < 0.5, jnp.float32)

    def logp(z):
        eta = x @ z
        return jnp.sum(y * eta - jnp.logaddexp(0.0, eta)) - 0.5 * 0.15 * jnp.sum(z**2)

    res = jax.jit(lambda z0: newton_maximize(logp, z0))(jnp.ones(d, jnp.float32))
    assert res.mode.dtype == jnp.float32
    assert bool(res.converged)
    # the mode is right: the float64 Newton solution from the same start
    with jax.enable_x64(True):
        x64, y64 = jnp.asarray(np.asarray(x), jnp.float64), jnp.asarray(np.asarray(y), jnp.float64)

        def logp64(z):
            eta = x64 @ z
            return jnp.sum(y64 * eta - jnp.logaddexp(0.0, eta)) - 0.5 * 0.15 * jnp.sum(z**2)

        ref = newton_maximize(logp64, jnp.ones(d, jnp.float64))
        sd = jnp.sqrt(jnp.diagonal(jnp.linalg.inv(ref.neg_hessian)))
        assert bool(ref.converged)
        np.testing.assert_array_less(np.abs(np.asarray(res.mode, np.float64) - ref.mode) / sd, 1e-3)


def test_newton_with_zero_tolerance_converges_by_its_decrement():
    res = newton_maximize(_quadratic, jnp.zeros(2), tol=0.0)
    assert bool(res.converged)


def _collatz_steps(x0, scale):
    """A loop whose trip count differs per input (chains of different lengths)."""

    def body(c):
        x, n = c
        return jnp.where(x % 2 == 0, x // 2, 3 * x + 1), n + 1

    _, n = jax.lax.while_loop(lambda c: c[0] != 1, body, (x0, 0))
    return n * scale


def test_map_chains_runs_each_chain_on_its_own_device_with_the_per_chain_results():
    from bayes_pfl.local import map_chains
    from bayes_pfl.simulation import off_devices

    assert jax.local_device_count() >= 4  # conftest: 4 host devices
    starts = jnp.array([27, 6, 97, 1])
    out = jax.jit(lambda s, c: map_chains(_collatz_steps, (s,), (c,)))(starts, 2)
    expected = [2 * int(_collatz_steps(s, 1)) for s in starts]
    np.testing.assert_array_equal(out, expected)
    assert len(out.sharding.device_set) == 4  # one chain per device
    host = off_devices({"n": out, "key": jax.random.key(0)})
    assert isinstance(host["n"], np.ndarray) and host["key"].dtype == jax.random.key(0).dtype
    # more chains than devices: vmap, on one device, the same numbers
    many = jnp.arange(2, 8)
    out6 = map_chains(_collatz_steps, (many,), (1,))
    np.testing.assert_array_equal(out6, [int(_collatz_steps(s, 1)) for s in many])
    assert len(out6.sharding.device_set) == 1
