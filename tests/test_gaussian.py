"""Tests for bayes_pfl.gaussian: Gaussian factors in natural parameters."""

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from jax.scipy.stats import multivariate_normal  # noqa: E402

from bayes_pfl import gaussian as g  # noqa: E402
from bayes_pfl.gaussian import GaussianFactor, InvalidFactorError  # noqa: E402

P = 5


def random_spd(rng, p=P, scale=1.0):
    a = rng.normal(size=(p, p))
    return scale * (a @ a.T / p + 0.5 * np.eye(p))


def random_factor(rng, p=P, batch=()):
    prec = np.stack([random_spd(rng, p) for _ in range(int(np.prod(batch)))]).reshape(
        batch + (p, p)
    )
    shift = rng.normal(size=batch + (p,))
    return GaussianFactor(jnp.asarray(prec), jnp.asarray(shift))


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def assert_factor_close(a, b, **kw):
    np.testing.assert_allclose(a.precision, b.precision, **kw)
    np.testing.assert_allclose(a.shift, b.shift, **kw)


# -- structure ------------------------------------------------------------------


def test_properties_and_flat():
    f = g.flat(P)
    assert not f.is_diagonal and f.dim == P and f.batch_shape == ()
    assert f.precision.shape == (P, P) and f.shift.dtype == jnp.float64
    d = g.flat(3, diagonal=True, dtype=jnp.float32, batch_shape=(4,))
    assert d.is_diagonal and d.dim == 3 and d.batch_shape == (4,)
    assert d.precision.shape == (4, 3) and d.precision.dtype == jnp.float32
    assert not jnp.any(d.precision) and not jnp.any(d.shift)
    # flat is the identity of multiply
    f = random_factor(np.random.default_rng(1))
    assert_factor_close(g.multiply(f, g.flat(P)), f)


def test_is_pytree():
    f = g.flat(P, batch_shape=(2,))
    leaves, tree = jax.tree_util.tree_flatten(f)
    assert len(leaves) == 2
    assert isinstance(jax.tree_util.tree_unflatten(tree, leaves), GaussianFactor)


# -- moments ----------------------------------------------------------------


def test_moments_round_trip_full(rng):
    mean = rng.normal(size=P)
    cov = np.linalg.inv(random_spd(rng))
    f = g.from_moments(mean, cov)
    np.testing.assert_allclose(f.precision, np.linalg.inv(cov), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(f.shift, np.linalg.solve(cov, mean), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(f.precision, f.precision.T)
    m2, c2 = g.to_moments(f)
    np.testing.assert_allclose(m2, mean, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(c2, cov, rtol=1e-10, atol=1e-10)


def test_moments_round_trip_diagonal(rng):
    mean = rng.normal(size=(3, P))
    var = rng.uniform(0.1, 2.0, size=(3, P))
    f = g.from_moments(mean, var)
    assert f.is_diagonal and f.batch_shape == (3,)
    np.testing.assert_allclose(f.precision, 1 / var)
    m2, v2 = g.to_moments(f)
    np.testing.assert_allclose(m2, mean, rtol=1e-12)
    np.testing.assert_allclose(v2, var, rtol=1e-12)


def test_to_moments_improper_is_nan():
    f = GaussianFactor(jnp.array([[1.0, 2.0], [2.0, 1.0]]), jnp.ones(2))
    mean, cov = g.to_moments(f)
    assert jnp.all(jnp.isnan(mean)) and jnp.all(jnp.isnan(cov))
    md, vd = g.to_moments(GaussianFactor(jnp.array([1.0, -1.0]), jnp.ones(2)))
    assert np.isfinite(md[0]) and np.isnan(md[1]) and np.isnan(vd[1])


def test_full_diagonal_conversions(rng):
    var = rng.uniform(0.5, 2.0, size=P)
    mean = rng.normal(size=P)
    d = g.from_moments(mean, var)
    full = g.to_full(d)
    assert not full.is_diagonal
    np.testing.assert_allclose(full.precision, np.diag(1 / var))
    assert_factor_close(g.to_diagonal(full), d)
    f = random_factor(rng)
    diag = g.to_diagonal(f)
    np.testing.assert_allclose(diag.precision, np.diag(f.precision))
    np.testing.assert_allclose(diag.shift, f.shift)
    kept = g.to_diagonal(f, preserve_mean=True)
    np.testing.assert_allclose(g.to_moments(kept)[0], g.to_moments(f)[0], rtol=1e-10)


# -- algebra ----------------------------------------------------------------


def test_multiply_divide_inverse(rng):
    a, b = random_factor(rng), random_factor(rng)
    assert_factor_close(g.divide(g.multiply(a, b), b), a, rtol=1e-12, atol=1e-12)
    assert_factor_close(g.multiply(g.divide(a, b), b), a, rtol=1e-12, atol=1e-12)


def test_product_of_gaussians_closed_form(rng):
    m1, m2 = rng.normal(size=P), rng.normal(size=P)
    s1, s2 = np.linalg.inv(random_spd(rng)), np.linalg.inv(random_spd(rng))
    f = g.multiply(g.from_moments(m1, s1), g.from_moments(m2, s2))
    mean, cov = g.to_moments(f)
    p1, p2 = np.linalg.inv(s1), np.linalg.inv(s2)
    cov_expected = np.linalg.inv(p1 + p2)
    mean_expected = cov_expected @ (p1 @ m1 + p2 @ m2)  # precision-weighted mean
    np.testing.assert_allclose(cov, cov_expected, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(mean, mean_expected, rtol=1e-9, atol=1e-10)


def test_multiply_mixed_diagonal_promotes(rng):
    f = random_factor(rng)
    d = g.from_moments(rng.normal(size=P), rng.uniform(0.5, 2, size=P))
    out = g.multiply(f, d)
    assert not out.is_diagonal
    np.testing.assert_allclose(out.precision, f.precision + np.diag(d.precision))


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_product_over_batch_axis(rng, axis):
    f = random_factor(rng, batch=(3, 4))
    bax = axis % 2  # the batch axis as an array axis (batch axes lead)
    expected = g.flat(P)
    for i in range(f.batch_shape[bax]):
        site = jax.tree_util.tree_map(lambda x, i=i: jnp.take(x, i, bax), f)
        expected = g.multiply(expected, site)
    out = g.product(f, axis=axis)
    assert out.batch_shape == tuple(s for j, s in enumerate((3, 4)) if j != axis % 2)
    assert_factor_close(out, expected, rtol=1e-12)


def test_product_diagonal_and_bad_axis(rng):
    d = GaussianFactor(jnp.asarray(rng.uniform(size=(4, P))), jnp.asarray(rng.normal(size=(4, P))))
    out = g.product(d)
    np.testing.assert_allclose(out.precision, d.precision.sum(0))
    with pytest.raises(ValueError):
        g.product(g.flat(P))


def test_damp(rng):
    old, new = random_factor(rng), random_factor(rng)
    assert_factor_close(g.damp(old, new, 1.0), new)
    mid = g.damp(old, new, 0.5)
    np.testing.assert_allclose(mid.precision, 0.5 * (old.precision + new.precision))
    np.testing.assert_allclose(mid.shift, 0.5 * (old.shift + new.shift))
    # traced rate under jit
    out = jax.jit(g.damp)(old, new, jnp.asarray(0.25))
    np.testing.assert_allclose(out.shift, 0.75 * old.shift + 0.25 * new.shift)
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="damping rate"):
            g.damp(old, new, bad)


def test_power(rng):
    f = random_factor(rng)
    assert_factor_close(g.power(f, 2.0), g.multiply(f, f))
    assert_factor_close(g.power(f, 0.0), g.flat(P))
    fb = random_factor(rng, batch=(3,))
    s = jnp.array([1.0, 0.5, 2.0])
    out = g.power(fb, s)
    np.testing.assert_allclose(out.precision[1], 0.5 * fb.precision[1])
    np.testing.assert_allclose(out.shift[2], 2.0 * fb.shift[2])


# -- densities --------------------------------------------------------------


def test_log_density_matches_scipy(rng):
    mean = rng.normal(size=P)
    cov = np.linalg.inv(random_spd(rng))
    f = g.from_moments(mean, cov)
    x = rng.normal(size=(7, P))
    expected = multivariate_normal.logpdf(x, mean, cov)
    np.testing.assert_allclose(g.log_density(f, x), expected, rtol=1e-10)
    # diagonal
    var = rng.uniform(0.2, 3.0, size=P)
    d = g.from_moments(mean, var)
    expected = multivariate_normal.logpdf(x, mean, np.diag(var))
    np.testing.assert_allclose(g.log_density(d, x), expected, rtol=1e-10)
    np.testing.assert_allclose(g.log_density(g.to_full(d), x), expected, rtol=1e-10)


def test_log_density_batched_factor(rng):
    f = random_factor(rng, batch=(3,))
    x = rng.normal(size=P)
    out = g.log_density(f, x)
    assert out.shape == (3,)
    for i in range(3):
        m, c = g.to_moments(jax.tree_util.tree_map(lambda a, i=i: a[i], f))
        np.testing.assert_allclose(out[i], multivariate_normal.logpdf(x, m, c), rtol=1e-10)


def test_log_normalizer(rng):
    f = random_factor(rng)
    mean, cov = g.to_moments(f)
    # log density = eta^T x - x^T Λ x / 2 - A
    x = rng.normal(size=P)
    unnorm = f.shift @ x - 0.5 * x @ f.precision @ x
    np.testing.assert_allclose(unnorm - g.log_normalizer(f), g.log_density(f, x), rtol=1e-10)
    d = g.to_diagonal(f)
    np.testing.assert_allclose(g.log_normalizer(d), g.log_normalizer(g.to_full(d)), rtol=1e-10)


def test_kl(rng):
    f = random_factor(rng)
    np.testing.assert_allclose(g.kl_divergence(f, f), 0.0, atol=1e-10)
    # 1-D closed form
    m1, s1, m2, s2 = 0.3, 0.7, -1.2, 1.9
    p = g.from_moments(jnp.array([m1]), jnp.array([[s1**2]]))
    q = g.from_moments(jnp.array([m2]), jnp.array([[s2**2]]))
    expected = np.log(s2 / s1) + (s1**2 + (m1 - m2) ** 2) / (2 * s2**2) - 0.5
    np.testing.assert_allclose(g.kl_divergence(p, q), expected, rtol=1e-10)
    pd = g.from_moments(jnp.array([m1]), jnp.array([s1**2]))
    qd = g.from_moments(jnp.array([m2]), jnp.array([s2**2]))
    np.testing.assert_allclose(g.kl_divergence(pd, qd), expected, rtol=1e-10)
    # multivariate: against the moment form
    a, b = random_factor(rng), random_factor(rng)
    ma, sa = g.to_moments(a)
    mb, sb = g.to_moments(b)
    pb = np.linalg.inv(sb)
    expected = 0.5 * (
        np.trace(pb @ sa)
        + (mb - ma) @ pb @ (mb - ma)
        - P
        + np.linalg.slogdet(sb)[1]
        - np.linalg.slogdet(sa)[1]
    )
    np.testing.assert_allclose(g.kl_divergence(a, b), expected, rtol=1e-9)
    # mixed diagonal / full and batched
    kl = g.kl_divergence(random_factor(rng, batch=(3,)), g.to_diagonal(b))
    assert kl.shape == (3,) and jnp.all(kl > 0)


# -- properness and repair ----------------------------------------------------


def test_is_proper():
    assert bool(g.is_proper(random_factor(np.random.default_rng(2))))
    indefinite = GaussianFactor(jnp.array([[1.0, 2.0], [2.0, 1.0]]), jnp.zeros(2))
    assert not bool(g.is_proper(indefinite))
    nan_prec = GaussianFactor(jnp.array([[1.0, jnp.nan], [jnp.nan, 1.0]]), jnp.zeros(2))
    assert not bool(g.is_proper(nan_prec))
    nan_shift = GaussianFactor(jnp.eye(2), jnp.array([0.0, jnp.nan]))
    assert not bool(g.is_proper(nan_shift))
    assert not bool(g.is_proper(g.flat(2)))
    assert bool(g.is_proper(GaussianFactor(jnp.eye(2) * 0.5, jnp.zeros(2)), tol=0.4))
    assert not bool(g.is_proper(GaussianFactor(jnp.eye(2) * 0.5, jnp.zeros(2)), tol=0.6))
    diag = GaussianFactor(jnp.array([[1.0, 2.0], [1.0, -1.0], [jnp.inf, 1.0]]), jnp.zeros((3, 2)))
    np.testing.assert_array_equal(g.is_proper(diag), [True, False, False])


def test_repair_indefinite(rng):
    prec = jnp.array([[1.0, 2.0, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, -3.0]])
    f = GaussianFactor(prec, jnp.array([1.0, -1.0, 0.5]))
    fixed, info = g.repair(f, min_eigenvalue=1e-3)
    assert bool(info.repaired)
    np.testing.assert_allclose(info.min_eigenvalue_before, -3.0)
    assert bool(g.is_proper(fixed))
    assert np.linalg.eigvalsh(np.asarray(fixed.precision)).min() >= 1e-3 * (1 - 1e-9)
    np.testing.assert_allclose(fixed.shift, f.shift)  # improper: shift kept
    # the positive eigenvalue and its eigenvector are untouched
    v = jnp.array([1.0, 1.0, 0.0]) / jnp.sqrt(2.0)
    np.testing.assert_allclose(fixed.precision @ v, 3.0 * v, atol=1e-12)
    np.testing.assert_allclose(
        np.linalg.eigvalsh(np.asarray(fixed.precision)), [1e-3, 1e-3, 3.0], atol=1e-12
    )


def test_repair_keeps_proper_factor_and_mean(rng):
    f = random_factor(rng)
    out, info = g.repair(f)
    assert not bool(info.repaired)
    np.testing.assert_array_equal(out.precision, f.precision)
    np.testing.assert_array_equal(out.shift, f.shift)
    # proper but below the floor: clipped, mean kept
    small = GaussianFactor(jnp.diag(jnp.array([1e-8, 1.0, 2.0])), jnp.array([1e-8, 1.0, 4.0]))
    out, info = g.repair(small, min_eigenvalue=1e-4)
    assert bool(info.repaired)
    np.testing.assert_allclose(g.to_moments(out)[0], [1.0, 1.0, 2.0], rtol=1e-8)
    # diagonal storage
    d = GaussianFactor(jnp.array([-1.0, 2.0]), jnp.array([1.0, 2.0]))
    out, info = g.repair(d, 0.1)
    np.testing.assert_allclose(out.precision, [0.1, 2.0])
    np.testing.assert_allclose(out.shift, d.shift)
    dp = GaussianFactor(jnp.array([1e-3, 2.0]), jnp.array([1e-3, 2.0]))
    out, _ = g.repair(dp, 0.1)
    np.testing.assert_allclose(out.shift, [0.1, 2.0])  # mean 1 kept


def test_repair_nonfinite_is_left_alone():
    f = GaussianFactor(jnp.array([[jnp.nan, 0.0], [0.0, 1.0]]), jnp.zeros(2))
    out, info = g.repair(f)
    assert not bool(info.repaired) and bool(jnp.isnan(info.min_eigenvalue_before))
    assert not bool(g.is_proper(out))


# -- vmap / jit ---------------------------------------------------------------


def test_vmap_over_clients(rng):
    good = random_factor(rng, batch=(3,))
    bad_prec = good.precision.at[1].set(jnp.array(np.diag([1.0, -2.0, 1.0, 1.0, 1.0])))
    f = GaussianFactor(bad_prec, good.shift)

    proper = jax.vmap(g.is_proper)(f)
    np.testing.assert_array_equal(proper, [True, False, True])
    np.testing.assert_array_equal(proper, g.is_proper(f))  # batched call agrees

    fixed, info = jax.vmap(g.repair)(f)
    np.testing.assert_array_equal(info.repaired, [False, True, False])
    assert bool(jnp.all(g.is_proper(fixed)))
    np.testing.assert_array_equal(fixed.precision[0], f.precision[0])

    means, covs = jax.vmap(g.to_moments)(good)
    assert means.shape == (3, P) and covs.shape == (3, P, P)
    m1, c1 = g.to_moments(jax.tree_util.tree_map(lambda a: a[1], good))
    np.testing.assert_allclose(means[1], m1, rtol=1e-12)
    np.testing.assert_allclose(covs[1], c1, rtol=1e-12)
    batched_means, _ = g.to_moments(good)
    np.testing.assert_allclose(batched_means, means, rtol=1e-12)


def test_jit(rng):
    a, b = random_factor(rng), random_factor(rng)
    x = rng.normal(size=P)

    @jax.jit
    def step(a, b, x):
        cavity = g.divide(g.multiply(a, b), b)
        fixed, info = g.repair(cavity)
        return (
            g.to_moments(fixed),
            g.log_density(fixed, x),
            g.kl_divergence(a, fixed),
            g.is_proper(fixed),
            g.product(jax.tree_util.tree_map(lambda u, v: jnp.stack([u, v]), a, b)),
        )

    (mean, _), logp, kl, ok, prod = step(a, b, x)
    np.testing.assert_allclose(mean, g.to_moments(a)[0], rtol=1e-9)
    np.testing.assert_allclose(logp, g.log_density(a, x), rtol=1e-9)
    assert abs(float(kl)) < 1e-8 and bool(ok)
    assert_factor_close(prod, g.multiply(a, b))


def test_grad_through_log_density(rng):
    f = random_factor(rng)
    x = jnp.asarray(rng.normal(size=P))
    grad = jax.grad(g.log_density, argnums=1)(f, x)
    mean, _ = g.to_moments(f)
    np.testing.assert_allclose(grad, -f.precision @ (x - mean), rtol=1e-9)


# -- validation ---------------------------------------------------------------

NAME = "client 'AITKIN'"


def good_factor():
    return random_factor(np.random.default_rng(3))


def test_validate_accepts_good_factors():
    f = good_factor()
    assert g.validate(f, P, name=NAME, require_proper=True) is f
    np_f = GaussianFactor(np.asarray(f.precision), np.asarray(f.shift))
    g.validate(np_f, P, diagonal=False)
    d = g.to_diagonal(f)
    g.validate(d, P, diagonal=True, require_proper=True)
    g.validate(d, P)
    # an improper EP site factor is fine unless require_proper
    g.validate(g.flat(P), P)


@pytest.mark.parametrize(
    "bad, match",
    [
        ("nan_prec", "non-finite"),
        ("inf_shift", "non-finite"),
        ("wrong_prec_shape", "shape"),
        ("wrong_shift_shape", "shape"),
        ("batched", "shape"),
        ("asymmetric", "not symmetric"),
        ("diag_expected", "shape"),
        ("int_dtype", "dtype"),
        ("string_dtype", "dtype"),
    ],
)
def test_validate_rejects(bad, match):
    f = good_factor()
    prec, shift = np.asarray(f.precision), np.asarray(f.shift)
    cases = {
        "nan_prec": lambda: GaussianFactor(np.where(np.eye(P) > 0, np.nan, prec), shift),
        "inf_shift": lambda: GaussianFactor(prec, np.full(P, np.inf)),
        "wrong_prec_shape": lambda: GaussianFactor(np.eye(P + 1), shift),
        "wrong_shift_shape": lambda: GaussianFactor(prec, np.zeros(P - 1)),
        "batched": lambda: GaussianFactor(prec[None], shift[None]),
        "asymmetric": lambda: GaussianFactor(prec + np.triu(np.ones((P, P)), 1), shift),
        "diag_expected": lambda: f,
        "int_dtype": lambda: GaussianFactor(np.eye(P, dtype=int), shift),
        "string_dtype": lambda: GaussianFactor(np.full((P, P), "x"), shift),
    }
    kwargs = {"diagonal": True} if bad == "diag_expected" else {}
    with pytest.raises(InvalidFactorError, match=match) as err:
        g.validate(cases[bad](), P, name=NAME, **kwargs)
    assert NAME in str(err.value)
    assert NAME in err.value.problems


def test_validate_symmetry_tolerance():
    f = good_factor()
    tiny = np.asarray(f.precision).copy()
    tiny[0, 1] += 1e-9 * np.abs(tiny).max()
    g.validate(GaussianFactor(tiny, f.shift), P, name=NAME)


def test_validate_require_proper():
    indefinite = GaussianFactor(np.diag([1.0, -1.0, 1.0, 1.0, 1.0]), np.zeros(P))
    g.validate(indefinite, P, name=NAME)  # fine as an EP site
    with pytest.raises(InvalidFactorError, match="positive definite") as err:
        g.validate(indefinite, P, name=NAME, require_proper=True)
    assert NAME in str(err.value)
    diag = GaussianFactor(np.array([1.0, 0.0, 1.0, 1.0, 1.0]), np.zeros(P))
    with pytest.raises(InvalidFactorError, match="positive definite"):
        g.validate(diag, P, name=NAME, require_proper=True)


@pytest.mark.parametrize(
    "junk",
    [
        None,
        "a factor",
        [[1.0, 2.0], [3.0]],
        (np.eye(P), np.zeros(P)),
        {"precision": np.eye(P), "shift": np.zeros(P)},
        GaussianFactor(None, None),
        GaussianFactor("abc", "def"),
        GaussianFactor([[1.0] * P] * P, [0.0] * P),
        GaussianFactor(np.eye(P), [0.0] * P),
        GaussianFactor(np.array([None] * P), np.zeros(P)),
        GaussianFactor(np.eye(P) + 0j, np.zeros(P)),
        GaussianFactor(np.eye(P), object()),
        42,
    ],
)
def test_validate_rejects_junk(junk):
    with pytest.raises(InvalidFactorError) as err:
        g.validate(junk, P, name=NAME)
    assert NAME in str(err.value)


def test_validate_bad_dim_is_programming_error():
    with pytest.raises(ValueError):
        g.validate(good_factor(), 0)


def test_validate_batch_lists_all_bad_clients(rng):
    names = ["AITKIN", "BROWN", "CLARK", "DAVIS", "EVANS"]
    f = random_factor(rng, batch=(5,))
    prec, shift = np.array(f.precision), np.array(f.shift)
    g.validate_batch(GaussianFactor(prec, shift), P, names, require_proper=True)
    prec[1, 0, 0] = np.nan  # BROWN: non-finite
    prec[3] = np.diag([1.0, -1.0, 1.0, 1.0, 1.0])  # DAVIS: not PD
    prec[4, 0, 1] += 10.0  # EVANS: asymmetric
    shift[4, 2] = np.inf  # EVANS: also non-finite shift
    bad = GaussianFactor(prec, shift)
    with pytest.raises(InvalidFactorError) as err:
        g.validate_batch(bad, P, names, require_proper=True)
    msg = str(err.value)
    for who in ("BROWN", "DAVIS", "EVANS"):
        assert f"client '{who}'" in msg
    assert "AITKIN" not in msg and "CLARK" not in msg
    assert err.value.clients == ("BROWN", "DAVIS", "EVANS")
    assert err.value.indices == (1, 3, 4)
    evans = err.value.problems["client 'EVANS'"]
    assert any("non-finite" in p for p in evans) and any("symmetric" in p for p in evans)
    assert "3 of 5" in msg
    # without require_proper, DAVIS is acceptable
    with pytest.raises(InvalidFactorError) as err:
        g.validate_batch(bad, P, names)
    assert err.value.clients == ("BROWN", "EVANS")


def test_validate_batch_structure_errors(rng):
    f = random_factor(rng, batch=(3,))
    with pytest.raises(InvalidFactorError, match="leading axis"):
        g.validate_batch(f, P, ["a", "b"])
    with pytest.raises(InvalidFactorError, match="shape"):
        g.validate_batch(jax.tree_util.tree_map(lambda a: a[0], f), P, ["a"])
    with pytest.raises(InvalidFactorError, match="not a|GaussianFactor"):
        g.validate_batch([f], P, ["a", "b", "c"])
    d = g.to_diagonal(f)
    g.validate_batch(d, P, [0, 1, 2], diagonal=True)
    with pytest.raises(InvalidFactorError, match="client 2"):
        g.validate_batch(
            GaussianFactor(d.precision.at[2, 0].set(-1.0), d.shift),
            P,
            [0, 1, 2],
            require_proper=True,
        )


def test_validate_under_jit_is_a_type_error():
    with pytest.raises(TypeError, match="host-side"):
        jax.jit(lambda f: g.validate(f, P))(good_factor())


# -- size -------------------------------------------------------------------


def test_nbytes():
    assert g.nbytes(g.flat(5, dtype=jnp.float64)) == (25 + 5) * 8
    assert g.nbytes(g.flat(5, diagonal=True, dtype=jnp.float32)) == 10 * 4
    assert g.nbytes(g.flat(5, batch_shape=(3,), dtype=jnp.float64)) == 3 * 30 * 8
    f = GaussianFactor(np.eye(5), np.zeros(5))
    assert g.nbytes(f) == (25 + 5) * 8 == f.precision.nbytes + f.shift.nbytes
    assert isinstance(g.nbytes(f), int)
