r"""Gaussian factors in natural parameters.

A :class:`GaussianFactor` is the unit of communication of the federated
algorithms in bayes-pfl: the site factors of federated expectation propagation
(EP), the posterior summaries that clients send to the server, and the
Gaussian variational families of federated VI. Every factor lives over the
flat *unconstrained* global parameter vector :math:`\phi \in \mathbb{R}^P`.

Natural parameters
------------------
A Gaussian factor is the (possibly unnormalized, possibly improper) function

.. math::

    t(x) \propto \exp\left(-\tfrac12 x^\top \Lambda x + \eta^\top x\right),

with *precision* :math:`\Lambda` and *shift* :math:`\eta = \Lambda m`. When
:math:`\Lambda` is positive definite the factor is proper and is the density of
:math:`\mathcal{N}(m, \Lambda^{-1})` up to a constant. In natural parameters
:math:`(\Lambda, \eta)`

* a product of factors is the sum of their natural parameters
  (:func:`multiply`, :func:`product`),
* a quotient is the difference (:func:`divide`); in EP the *cavity*
  distribution of client :math:`k` is :math:`q_{-k} = q / t_k`,
* a power :math:`t^s` scales them (:func:`power`), and
* *damping* :math:`t_{\text{old}}^{1-\delta}\, t_{\text{new}}^{\delta}` is a
  linear interpolation (:func:`damp`).

Site factors of EP are allowed to be improper (their precision may have
negative eigenvalues); only the global approximation and the cavities must be
proper. See Vehtari et al. (2020), "Expectation propagation as a way of life:
a framework for Bayesian inference on partitioned data", JMLR 21(17), for the
role of each operation in distributed EP.

Storage
-------
``precision`` has shape ``[..., P, P]`` (full) or ``[..., P]`` (diagonal, the
diagonal of :math:`\Lambda`); ``shift`` has shape ``[..., P]``. A factor is
diagonal iff ``precision.ndim == shift.ndim``. Leading batch axes (e.g. a
client axis) are allowed and broadcast. Operations that mix a diagonal and a
full factor promote the diagonal one to full.

All array functions are pure and ``jit``/``vmap``-friendly (no Python
branching on array values; only on static shapes). :func:`validate` and
:func:`validate_batch` are host-side checks for messages arriving at the
server and are not meant to be traced.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax.numpy as jnp
from jax.scipy.linalg import solve_triangular

from bayes_pfl._gaussian_factor import (
    Array,
    GaussianFactor,
    InvalidFactorError,
    nbytes,
    validate,
    validate_batch,
)

__all__ = [
    "GaussianFactor",
    "InvalidFactorError",
    "RepairInfo",
    "damp",
    "divide",
    "flat",
    "from_moments",
    "is_proper",
    "kl_divergence",
    "log_density",
    "log_normalizer",
    "multiply",
    "nbytes",
    "power",
    "product",
    "proper_shift",
    "psd_part",
    "repair",
    "to_diagonal",
    "to_full",
    "to_moments",
    "validate",
    "validate_batch",
]

_LOG_2PI = math.log(2.0 * math.pi)


class RepairInfo(NamedTuple):
    """Diagnostics returned by :func:`repair` (arrays with the batch shape).

    Attributes
    ----------
    repaired : Array
        Boolean, whether any eigenvalue of the precision was below the floor
        and the factor was changed.
    min_eigenvalue_before : Array
        Smallest eigenvalue of the (symmetrized) precision before the repair;
        NaN for a factor with non-finite entries.
    """

    repaired: Array
    min_eigenvalue_before: Array


# --------------------------------------------------------------------------
# internal helpers


def _sym(a: Array) -> Array:
    return 0.5 * (a + jnp.swapaxes(a, -1, -2))


def _diag_embed(d: Array) -> Array:
    """``[..., P] -> [..., P, P]`` diagonal matrices."""
    return d[..., :, None] * jnp.eye(d.shape[-1], dtype=d.dtype)


def _matvec(a: Array, v: Array) -> Array:
    """Batched (broadcasting) ``a @ v`` for ``a [..., P, P]`` and ``v [..., P]``."""
    return jnp.matmul(a, v[..., None])[..., 0]


def _broadcast_batch(a: Array, b: Array) -> tuple[Array, Array]:
    """Broadcast the batch axes of ``a [..., P, P]`` and ``b [..., P, K]``."""
    batch = jnp.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    return jnp.broadcast_to(a, batch + a.shape[-2:]), jnp.broadcast_to(b, batch + b.shape[-2:])


def _cho_solve(chol: Array, rhs: Array) -> Array:
    """Solve ``(L L^T) X = rhs`` for lower-triangular ``L``; rhs ``[..., P, K]``."""
    chol, rhs = _broadcast_batch(chol, rhs)
    y = solve_triangular(chol, rhs, lower=True)
    return solve_triangular(chol, y, lower=True, trans="T")


def _cho_solve_vec(chol: Array, v: Array) -> Array:
    return _cho_solve(chol, v[..., None])[..., 0]


def _cho_inverse(chol: Array) -> Array:
    eye = jnp.broadcast_to(jnp.eye(chol.shape[-1], dtype=chol.dtype), chol.shape)
    return _sym(_cho_solve(chol, eye))


def _logdet_from_chol(chol: Array) -> Array:
    return 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), axis=-1)


def _align(a: GaussianFactor, b: GaussianFactor) -> tuple[GaussianFactor, GaussianFactor]:
    """Promote to full storage if exactly one of the two factors is diagonal."""
    if a.is_diagonal != b.is_diagonal:
        return to_full(a), to_full(b)
    return a, b


# --------------------------------------------------------------------------
# construction and conversion


def flat(
    dim: int,
    diagonal: bool = False,
    dtype: Any = None,
    batch_shape: tuple[int, ...] = (),
) -> GaussianFactor:
    r"""The uniform factor :math:`t(x) = 1` (zero natural parameters).

    It is the identity of :func:`multiply` and the usual initial value of the
    EP site factors.

    Parameters
    ----------
    dim : int
        Dimension ``P``.
    diagonal : bool
        Store the precision as its diagonal.
    dtype : dtype, optional
        Floating dtype; the JAX default float type when ``None``.
    batch_shape : tuple of int
        Leading batch axes, e.g. ``(n_clients,)``.
    """
    batch_shape = tuple(batch_shape)
    prec_shape = batch_shape + ((dim,) if diagonal else (dim, dim))
    dtype = jnp.zeros((), dtype=dtype).dtype if dtype is None else dtype
    return GaussianFactor(jnp.zeros(prec_shape, dtype), jnp.zeros(batch_shape + (dim,), dtype))


def from_moments(mean: Array, cov: Array) -> GaussianFactor:
    r"""Factor of :math:`\mathcal{N}(m, \Sigma)`: :math:`\Lambda = \Sigma^{-1}`, :math:`\eta = \Lambda m`.

    Parameters
    ----------
    mean : Array
        Mean :math:`m`, shape ``[..., P]``.
    cov : Array
        Covariance :math:`\Sigma`, ``[..., P, P]`` (positive definite), or a
        vector of variances ``[..., P]``, which gives a diagonal factor.

    Returns
    -------
    GaussianFactor
        Full factor computed with a Cholesky factorization of :math:`\Sigma`
        (NaN if :math:`\Sigma` is not positive definite), or a diagonal factor.
    """
    mean = jnp.asarray(mean)
    cov = jnp.asarray(cov)
    if cov.ndim == mean.ndim:
        precision = 1.0 / cov
        return GaussianFactor(precision, precision * mean)
    chol = jnp.linalg.cholesky(cov)
    precision = _cho_inverse(chol)
    shift = _cho_solve_vec(chol, mean)
    return GaussianFactor(precision, shift)


def to_moments(f: GaussianFactor) -> tuple[Array, Array]:
    r"""Mean and covariance of a proper factor.

    :math:`m = \Lambda^{-1}\eta` and :math:`\Sigma = \Lambda^{-1}`, computed
    with a Cholesky factorization of :math:`\Lambda` for full factors.

    Parameters
    ----------
    f : GaussianFactor
        A proper factor.

    Returns
    -------
    mean : Array
        ``[..., P]``.
    cov : Array
        ``[..., P, P]`` for a full factor; the variances ``[..., P]`` for a
        diagonal one.

    Notes
    -----
    For an improper factor the results are NaN (for a diagonal factor, in the
    coordinates with a non-positive precision). Check with :func:`is_proper`.
    """
    if f.is_diagonal:
        ok = f.precision > 0
        safe = jnp.where(ok, f.precision, 1.0)
        nan = jnp.asarray(jnp.nan, dtype=safe.dtype)
        var = jnp.where(ok, 1.0 / safe, nan)
        return jnp.where(ok, f.shift / safe, nan), var
    chol = jnp.linalg.cholesky(f.precision)
    return _cho_solve_vec(chol, f.shift), _cho_inverse(chol)


def to_full(f: GaussianFactor) -> GaussianFactor:
    """The same factor with a full ``[..., P, P]`` precision (no-op if already full)."""
    if not f.is_diagonal:
        return f
    return GaussianFactor(_diag_embed(f.precision), f.shift)


def to_diagonal(f: GaussianFactor, preserve_mean: bool = False) -> GaussianFactor:
    r"""Diagonal factor that keeps the diagonal of the precision matrix.

    The result has precision :math:`\operatorname{diag}(\Lambda)`. By default
    the shift :math:`\eta` is kept, which makes the map linear in natural
    parameters (it commutes with :func:`multiply`, :func:`divide` and
    :func:`damp`) and defined for improper site factors; the mean of the result,
    :math:`\eta_i / \Lambda_{ii}`, then differs from :math:`m` unless
    :math:`\Lambda` is diagonal.

    With ``preserve_mean=True`` the shift is :math:`\operatorname{diag}(\Lambda)
    \odot m` with :math:`m = \Lambda^{-1}\eta` the mean of ``f`` (which must
    be proper). This is the factorized Gaussian that minimizes the *reverse*
    KL divergence :math:`\mathrm{KL}(q \,\|\, f)` (the mean-field VI solution).

    Notes
    -----
    This is a mean-field projection only in the sense of matching the precision
    diagonal. It is *not* the moment-matching (forward-KL, EP-style)
    projection, which would keep the marginal variances
    :math:`\Sigma_{ii}` and hence use the precisions
    :math:`1/(\Lambda^{-1})_{ii} \le \Lambda_{ii}`; the diagonal of the
    precision overstates the certainty of correlated coordinates.
    """
    if f.is_diagonal:
        return f
    diag = jnp.diagonal(f.precision, axis1=-2, axis2=-1)
    if preserve_mean:
        mean, _ = to_moments(f)
        return GaussianFactor(diag, diag * mean)
    return GaussianFactor(diag, f.shift)


# --------------------------------------------------------------------------
# algebra in natural parameters


def multiply(a: GaussianFactor, b: GaussianFactor) -> GaussianFactor:
    r"""Product :math:`a \cdot b`: :math:`(\Lambda_a + \Lambda_b,\; \eta_a + \eta_b)`.

    Batch axes broadcast; a diagonal and a full factor give a full factor.
    """
    a, b = _align(a, b)
    return GaussianFactor(a.precision + b.precision, a.shift + b.shift)


def divide(a: GaussianFactor, b: GaussianFactor) -> GaussianFactor:
    r"""Quotient :math:`a / b`: :math:`(\Lambda_a - \Lambda_b,\; \eta_a - \eta_b)`.

    In EP, the cavity distribution of client :math:`k` is
    ``divide(q, t_k)`` :math:`= q_{-k} \propto q / t_k`, the global
    approximation with the client's own site factor removed. The result can
    be improper (check with :func:`is_proper`).
    """
    a, b = _align(a, b)
    return GaussianFactor(a.precision - b.precision, a.shift - b.shift)


def product(f: GaussianFactor, axis: int = 0) -> GaussianFactor:
    r"""Product of the factors along a batch axis (sum of natural parameters).

    E.g. the global EP approximation :math:`q = p_0 \prod_k t_k` is
    ``multiply(prior, product(sites, axis=0))`` for sites stacked on a leading
    client axis.

    Parameters
    ----------
    f : GaussianFactor
        Factor with at least one batch axis.
    axis : int
        Batch axis to reduce, counted within ``f.batch_shape`` (negative
        values count from the last batch axis).
    """
    nbatch = len(f.batch_shape)
    if not -nbatch <= axis < nbatch:
        raise ValueError(f"axis {axis} is out of range for batch shape {f.batch_shape}")
    axis = axis % nbatch
    return GaussianFactor(jnp.sum(f.precision, axis=axis), jnp.sum(f.shift, axis=axis))


def power(f: GaussianFactor, s: float | Array) -> GaussianFactor:
    r"""Power :math:`t^s`: natural parameters scaled by ``s``.

    Used for fractional (power) EP and for tempered or partial updates.
    ``s`` may be an array broadcasting against the batch shape when given as
    ``s[..., None]`` for the shift; a scalar is the usual case.
    """
    s = jnp.asarray(s)
    if s.ndim == 0:
        return GaussianFactor(s * f.precision, s * f.shift)
    ps = s[..., None] if f.is_diagonal else s[..., None, None]
    return GaussianFactor(ps * f.precision, s[..., None] * f.shift)


def damp(old: GaussianFactor, new: GaussianFactor, rate: float | Array) -> GaussianFactor:
    r"""Damped update :math:`t_{\text{old}}^{1-\delta}\, t_{\text{new}}^{\delta}`.

    In natural parameters this is the linear interpolation
    :math:`(1-\delta)(\Lambda, \eta)_{\text{old}} + \delta(\Lambda, \eta)_{\text{new}}`.
    Damping the site updates is what makes (parallel, federated) EP converge
    in practice (Vehtari et al. 2020 discuss damping); ``rate = 1`` is
    the undamped update.

    Parameters
    ----------
    old, new : GaussianFactor
        Current and proposed factor.
    rate : float or Array
        Damping rate :math:`\delta \in (0, 1]`. A Python number outside this
        interval raises :class:`ValueError`; traced values are not checked.
    """
    if isinstance(rate, int | float) and not 0.0 < rate <= 1.0:
        raise ValueError(f"damping rate must be in (0, 1], got {rate!r}")
    old, new = _align(old, new)
    return GaussianFactor(
        (1.0 - rate) * old.precision + rate * new.precision,
        (1.0 - rate) * old.shift + rate * new.shift,
    )


# --------------------------------------------------------------------------
# densities and divergences


def log_normalizer(f: GaussianFactor) -> Array:
    r"""Log partition function of a proper factor.

    .. math::

        A(\Lambda, \eta) = \log \int \exp\left(-\tfrac12 x^\top\Lambda x
        + \eta^\top x\right) dx
        = \tfrac{P}{2}\log 2\pi - \tfrac12 \log\lvert\Lambda\rvert
        + \tfrac12 \eta^\top \Lambda^{-1} \eta .

    Returns an array with the batch shape (NaN for an improper factor).
    """
    p = f.dim
    if f.is_diagonal:
        ok = jnp.all(f.precision > 0, axis=-1)
        safe = jnp.where(f.precision > 0, f.precision, 1.0)
        val = 0.5 * (p * _LOG_2PI - jnp.sum(jnp.log(safe), -1) + jnp.sum(f.shift**2 / safe, -1))
        return jnp.where(ok, val, jnp.nan)
    chol = jnp.linalg.cholesky(f.precision)
    mean = _cho_solve_vec(chol, f.shift)
    return 0.5 * (p * _LOG_2PI - _logdet_from_chol(chol) + jnp.sum(f.shift * mean, -1))


def log_density(f: GaussianFactor, x: Array) -> Array:
    r"""Normalized log density :math:`\log \mathcal{N}(x \mid m, \Lambda^{-1})` of a proper factor.

    .. math::

        -\tfrac{P}{2}\log 2\pi + \tfrac12\log\lvert\Lambda\rvert
        - \tfrac12 (x - m)^\top \Lambda (x - m), \qquad m = \Lambda^{-1}\eta .

    Parameters
    ----------
    f : GaussianFactor
        A proper factor.
    x : Array
        Points, ``[..., P]``; leading axes broadcast against the batch shape.

    Returns
    -------
    Array
        Broadcast shape of ``x.shape[:-1]`` and ``f.batch_shape`` (NaN for an
        improper factor).
    """
    x = jnp.asarray(x)
    p = f.dim
    if f.is_diagonal:
        ok = jnp.all(f.precision > 0, axis=-1)
        safe = jnp.where(f.precision > 0, f.precision, 1.0)
        d = x - f.shift / safe
        val = 0.5 * (-p * _LOG_2PI + jnp.sum(jnp.log(safe), -1) - jnp.sum(safe * d**2, -1))
        return jnp.where(ok, val, jnp.nan)
    chol = jnp.linalg.cholesky(f.precision)
    mean = _cho_solve_vec(chol, f.shift)
    d = x - mean
    # (x - m)^T Λ (x - m) = || L^T (x - m) ||^2
    ltd = jnp.matmul(jnp.swapaxes(chol, -1, -2), d[..., None])[..., 0]
    return 0.5 * (-p * _LOG_2PI + _logdet_from_chol(chol) - jnp.sum(ltd**2, -1))


def kl_divergence(p: GaussianFactor, q: GaussianFactor) -> Array:
    r"""KL divergence :math:`\mathrm{KL}(p \,\|\, q)` between proper factors.

    .. math::

        \tfrac12\left[\operatorname{tr}(\Lambda_q \Lambda_p^{-1})
        + (m_q - m_p)^\top \Lambda_q (m_q - m_p) - P
        + \log\lvert\Lambda_p\rvert - \log\lvert\Lambda_q\rvert\right].

    Used as the convergence measure of the federated algorithms (change of the
    global approximation between rounds). Returns an array with the broadcast
    batch shape (NaN if either factor is improper).
    """
    p, q = _align(p, q)
    dim = p.dim
    if p.is_diagonal:
        mp, vp = to_moments(p)
        mq, _ = to_moments(q)
        lq = q.precision
        terms = lq * vp + lq * (mq - mp) ** 2 - 1.0 + jnp.log(p.precision) - jnp.log(lq)
        return 0.5 * jnp.sum(terms, -1)
    lp = jnp.linalg.cholesky(p.precision)
    lq = jnp.linalg.cholesky(q.precision)
    mp = _cho_solve_vec(lp, p.shift)
    mq = _cho_solve_vec(lq, q.shift)
    # tr(Λq Λp^{-1}) = || Lp^{-1} Lq ||_F^2
    a, b = _broadcast_batch(lp, lq)
    trace = jnp.sum(solve_triangular(a, b, lower=True) ** 2, axis=(-2, -1))
    d = mq - mp
    ltd = jnp.matmul(jnp.swapaxes(lq, -1, -2), d[..., None])[..., 0]
    quad = jnp.sum(ltd**2, -1)
    return 0.5 * (trace + quad - dim + _logdet_from_chol(lp) - _logdet_from_chol(lq))


# --------------------------------------------------------------------------
# properness and repair


def _finite(f: GaussianFactor) -> Array:
    prec_axes = (-1,) if f.is_diagonal else (-2, -1)
    return jnp.all(jnp.isfinite(f.precision), axis=prec_axes) & jnp.all(
        jnp.isfinite(f.shift), axis=-1
    )


def is_proper(f: GaussianFactor, tol: float | Array = 0.0) -> Array:
    r"""Whether the factor is a proper Gaussian.

    True iff all entries are finite and every eigenvalue of the symmetrized
    precision :math:`(\Lambda + \Lambda^\top)/2` exceeds ``tol``.

    Returns
    -------
    Array
        Boolean array with the batch shape.
    """
    finite = _finite(f)
    if f.is_diagonal:
        safe = jnp.where(jnp.isfinite(f.precision), f.precision, 0.0)
        return finite & jnp.all(safe > tol, axis=-1)
    safe = jnp.where(jnp.isfinite(f.precision), f.precision, 0.0)
    eigs = jnp.linalg.eigvalsh(_sym(safe))
    return finite & (eigs[..., 0] > tol)


def repair(
    f: GaussianFactor, min_eigenvalue: float | Array = 1e-6
) -> tuple[GaussianFactor, RepairInfo]:
    r"""Clip the precision's eigenvalues from below so the factor is proper.

    With :math:`(\Lambda + \Lambda^\top)/2 = V \operatorname{diag}(w) V^\top`,
    the repaired precision is :math:`\Lambda' = V \operatorname{diag}(\max(w,
    \lambda_{\min})) V^\top` (for a diagonal factor, elementwise clipping). If
    the original factor was proper its mean :math:`m = \Lambda^{-1}\eta` is
    kept, :math:`\eta' = \Lambda' m`; otherwise the mean is undefined and the
    shift is kept, :math:`\eta' = \eta`.

    Factors whose smallest eigenvalue is already at least ``min_eigenvalue``
    are returned unchanged (bit for bit), as are factors with non-finite
    entries, which cannot be repaired (reject them with :func:`validate`).
    Works on batches and under ``vmap``/``jit``.

    Parameters
    ----------
    f : GaussianFactor
        Factor, possibly with batch axes.
    min_eigenvalue : float or Array
        Eigenvalue floor :math:`\lambda_{\min} > 0`.

    Returns
    -------
    GaussianFactor
        Repaired factor.
    RepairInfo
        ``repaired`` (bool) and ``min_eigenvalue_before``, with the batch shape.
    """
    finite = _finite(f)
    floor = jnp.asarray(min_eigenvalue, dtype=jnp.result_type(f.precision))
    if f.is_diagonal:
        w = jnp.where(jnp.isfinite(f.precision), f.precision, 0.0)
        wmin = jnp.min(w, axis=-1)
        proper = finite & (wmin > 0)
        repaired = finite & (wmin < floor)
        new_w = jnp.maximum(w, floor)
        mean = f.shift / jnp.where(w > 0, w, 1.0)
        new_shift = jnp.where(proper[..., None], new_w * mean, f.shift)
        keep = ~repaired[..., None]
        out = GaussianFactor(
            jnp.where(keep, f.precision, new_w), jnp.where(keep, f.shift, new_shift)
        )
        return out, RepairInfo(repaired, jnp.where(finite, wmin, jnp.nan))

    safe = jnp.where(jnp.isfinite(f.precision), f.precision, 0.0)
    w, v = jnp.linalg.eigh(_sym(safe))
    wmin = w[..., 0]
    proper = finite & (wmin > 0)
    repaired = finite & (wmin < floor)
    new_w = jnp.maximum(w, floor)
    vt = jnp.swapaxes(v, -1, -2)
    new_prec = _sym(jnp.matmul(v * new_w[..., None, :], vt))
    # m = V diag(1/w) V^T eta, and Λ' m = V diag(w'/w) V^T eta
    safe_shift = jnp.where(jnp.isfinite(f.shift), f.shift, 0.0)
    coef = _matvec(vt, safe_shift) * (new_w / jnp.where(w > 0, w, 1.0))
    new_shift = jnp.where(proper[..., None], _matvec(v, coef), f.shift)
    out = GaussianFactor(
        jnp.where(repaired[..., None, None], new_prec, f.precision),
        jnp.where(repaired[..., None], new_shift, f.shift),
    )
    return out, RepairInfo(repaired, jnp.where(finite, wmin, jnp.nan))


def psd_part(prec: Array) -> Array:
    """The positive semi-definite part of a symmetric matrix (negative eigenvalues set to 0)."""
    w, v = jnp.linalg.eigh(0.5 * (prec + prec.T))
    return (v * jnp.maximum(w, 0.0)) @ v.T


def proper_shift(prec: Array, shift: Array, cavity_cov: Array, limit: float = 1.0) -> Array:
    r"""A site's shift without the linear factors that would move its client's marginal
    far along directions the site has no precision for.

    Where the tilted expectation of the likelihood's curvature is not positive (made 0 by
    the projection) the site still carries Stein's gradient there, a linear factor
    ``exp(g_v z_v)``: it puts the marginal's mean where the tilted's is under this
    cavity, ``C_vv g_v`` away from the cavity's, and is kept where that is less than
    ``limit`` cavity sds (a small correction where the likelihood is locally flat; the
    errors-in-variables clients of ``benchmarks/systemic.py``). Further, the likelihood is
    far from linear along ``v`` (a slope times a covariate the client never measured) and
    the factor, whose pull grows with the population's variance, drove the population
    scales up round after round: it is dropped, and the site says nothing along ``v``.
    Without such a direction the shift is returned bit for bit."""
    w, v = jnp.linalg.eigh(prec)
    along = v.T @ shift
    moved = jnp.abs(along) * jnp.sqrt(jnp.einsum("ij,ik,kj->j", v, cavity_cov, v))
    drop = (w <= 1e-8 * jnp.max(jnp.abs(w))) & (moved > limit)
    return shift - v @ jnp.where(drop, along, 0.0)
