r"""A model's client likelihood as a function of the client's own effects, and its Gaussian population.

The federated methods summarize each client's likelihood over what the client's
rows actually inform: its own *effects* ``e_k`` (the client-prior sites that the
likelihood reads, e.g. ``b`` of the zoo GLMs, radon's ``alpha``, eight schools'
``theta``) jointly with the *shared* global parameters that enter the likelihood
directly (radon's ``beta`` and ``sigma_y``; in unconstrained coordinates ``u_s``).
A site is a function of ``z_k = (e_k, u_s)``.

The server combines sites with the population *exactly*: when the client prior
is Gaussian in the effects, ``e_k | phi ~ N(m(phi), C(phi))``, the integral

.. math::

    Z_k(\phi) = \int \mathcal N(e \mid m(\phi), C(\phi))\, t_k(e, u_s)\, de

is closed form for a Gaussian site ``t_k`` (:meth:`Population.log_z`), so the
server's ``p(phi | D) ∝ p0(phi) Π_k Z_k(phi)`` has the right dependence on the
population scales (Lunn et al. 2013's two-stage scheme, with EP-refined sites;
Hall et al. 2020 for EP over random effects).

:class:`Population` derives all of this from a
:class:`~bayes_pfl.spec.HierarchicalModel` without extra declarations:

* the effects are the client-prior sites the likelihood reads (found by tracing
  the likelihood with recording dicts);
* the shared parameters are the hyper-prior sample sites the likelihood reads;
* ``m(phi)`` and ``C(phi) = L L^T`` come from the client prior: every latent
  client site must be Normal, and the effects must be affine in them (centered
  ``b ~ N(mu, tau)`` or non-centered ``b = mu + tau * b_raw``), which is checked
  numerically at construction. ``L = J diag(s)`` with ``J`` the Jacobian of the
  effects in the Normal sites and ``s`` their scales, so ``C`` may be singular.

With *client covariates* (``HierarchicalModel(..., client_covariates=...)``) the
population mean is the client's own, ``m_k = m(phi, z_k)`` (``mu + z_k W`` for the zoo
GLMs; any function of ``z_k``), while ``C(phi)`` must not depend on ``z_k`` (checked at
construction): the server's integral is the same with ``m_k`` in place of ``m``
(:meth:`Population.client_means`), and its ``z [K, M]`` are server-side constants.
"""

from __future__ import annotations

import math
from functools import cached_property

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.distributions import constraints

from bayes_pfl.gaussian import GaussianFactor
from bayes_pfl.spec import (
    HierarchicalModel,
    ModelSpecError,
    isolated_trace,
    normal_base,
    trace_values,
)
from bayes_pfl.student_t import LEARNED_DF

Array = jax.Array

__all__ = ["Population", "gaussian_population", "small_cholesky"]


class _Recorder(dict):
    """A dict that records which keys are read (to find what a likelihood uses)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.read: set[str] = set()

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        self.read.add(key)
        return super().get(key, default)


SCALE_MIXTURE_GRID = (-20.0, 4.0, 0.5)
"""``(first, last, step)`` of the grid in ``log λ`` of a Student-t population's mixing
weight (:func:`scale_mixture`; the step for ``df <= 4``, smaller above)."""


def scale_mixture(df: float, grid: tuple = SCALE_MIXTURE_GRID) -> tuple[np.ndarray, np.ndarray]:
    r"""Nodes ``λ_q`` and log weights for ``E[f(λ)] ≈ Σ_q w_q f(λ_q)``, ``λ ~ Gamma(df/2, rate df/2)``.

    The trapezoidal rule in ``v = log λ`` on ``[-20, 4]`` with step ``0.5 min(1,
    sqrt(4 / df))`` (49 nodes for ``df <= 4``; the prior narrows in ``v`` as ``df``
    grows). In ``v`` the server's integrand ``Gamma(λ) λ Z_k(phi, λ)`` is smooth and
    decays exponentially at both ends (as ``λ^{(df + r)/2}`` towards 0, ``r`` the number
    of effects; as ``e^{-df λ / 2}`` above), and for such integrands the trapezoidal rule
    converges geometrically: its error is of order ``exp(-2 π² s² / h²)`` for an
    integrand of width ``s`` in ``v``. The grid reaches ``λ = 2e-9``, the weight of a
    client ten thousand population sds from the others: an outlier is where a Student-t
    population matters, and a rule with its nodes near ``λ = 1`` (Gauss-Laguerre) misses
    it (by 14 in ``log Z`` for a client 35 sds out). Against adaptive quadrature
    (tests/test_robust.py) ``log Z`` is within 1e-6 for ``df`` from 2.5 to 10, outliers
    included.
    """
    from scipy.stats import gamma

    first, last, step = grid
    step = step * min(1.0, math.sqrt(4.0 / df))
    v = np.arange(first, last + 0.5 * step, step)
    lam = np.exp(v)
    log_w = gamma.logpdf(lam, 0.5 * df, scale=2.0 / df) + v + np.log(step)
    log_w = log_w - np.logaddexp.reduce(log_w)  # the rule integrates the prior to 1
    return lam, log_w


LEARNED_MIXTURE_GRID = (-20.0, 4.0, 0.1)
"""``(first, last, step)`` of the fixed grid in ``log λ`` of a learned ``df``
(:func:`learned_scale_mixture`)."""


def learned_scale_mixture(df, grid: tuple = LEARNED_MIXTURE_GRID) -> tuple[Array, Array]:
    r""":func:`scale_mixture` for a learned ``df``: a fixed grid, weights traceable in ``df``.

    The server samples ``df`` with the other global parameters, so the grid is static (241
    nodes on ``[-20, 4]``) and only the log weights ``log Gamma(e^v; df/2, rate df/2) + v +
    log h``, normalized by logsumexp, depend on ``df`` (differentiably). The step ``h = 0.1``
    is the fixed rule's ``0.5 sqrt(4 / df)`` at ``df = 100``: the prior of ``v = log λ`` has
    width ``s ≈ sqrt(2 / df)``, and the trapezoidal error ``exp(-2 π² s² / h²) = exp(-4 π² /
    (df h²))`` is ``exp(-39)`` at ``df = 100``, ``exp(-13)`` (2e-6) at ``df = 300`` and
    ``exp(-8)`` at ``df = 500``, while the prior's 99.99% quantile is ``df = 120``
    (``exp(-33)``). As ``df`` grows the weights concentrate on the node ``v = 0`` (on the
    grid): the rule tends to the Gaussian population, its limit. Against adaptive
    quadrature (tests/test_learned_df.py) ``log Z`` is within 1e-6 at ``df`` 3, 10 and 100,
    outliers included.
    """
    first, last, step = grid
    v = jnp.arange(round((last - first) / step) + 1) * step + first
    half = 0.5 * df
    # log Gamma(e^v; half, rate half) + v: the density of v
    log_w = half * jnp.log(half) - jax.scipy.special.gammaln(half) + half * v - half * jnp.exp(v)
    log_w = log_w - jax.scipy.special.logsumexp(log_w)  # log h cancels in the normalization
    return jnp.exp(v), log_w


class Population:
    """The effects, shared parameters and Gaussian population of a model (see module docstring).

    Attributes
    ----------
    diagonal_root : bool
        ``L`` is diagonal (each effect is one Normal site, centered or scaled): the
        server's integral then needs no matrix products.
    effect_sites : tuple of (name, shape)
        Client-prior sites the likelihood reads, in client-prior order.
    e_dim : int
        Number of effect coordinates ``E``.
    shared_index : numpy.ndarray
        Indices into the unconstrained global vector ``u_phi`` of the shared
        parameters ``u_s`` (hyper-prior sites the likelihood reads).
    z_dim : int
        Dimension of a site, ``E + len(shared_index)``.
    """

    def __init__(self, model: HierarchicalModel):
        self.model = model
        theta0 = trace_values(model.client_trace)
        phi0 = trace_values(model.hyper_trace)
        th_rec, phi_rec = _Recorder(theta0), _Recorder(phi0)
        n = 3
        x = jnp.ones((n, model.n_features or 1))
        isolated_trace(model.likelihood, th_rec, phi_rec, x, jnp.zeros(n))
        order = list(model.client_trace)
        self.effect_sites = tuple(
            (name, tuple(jnp.shape(theta0[name]))) for name in order if name in th_rec.read
        )
        if not self.effect_sites:
            raise ModelSpecError(f"model {model.name!r}: the likelihood reads no client parameter")
        self.e_dim = sum(math.prod(s) for _, s in self.effect_sites)
        phi_sample = set(model.phi_space.names)
        det_read = sorted(phi_rec.read - phi_sample)
        if det_read:
            raise ModelSpecError(
                f"model {model.name!r}: the likelihood reads deterministic global site(s) "
                f"{det_read}; declare what it needs as hyper-prior sample sites"
            )
        index, start = [], 0
        for s in model.phi_space.sites:
            if s.name in phi_rec.read:
                index.extend(range(start, start + s.size))
            start += s.size
        self.shared_index = np.asarray(index, dtype=int)
        self.q_dim = len(index)
        self.z_dim = self.e_dim + self.q_dim
        self.theta_dim = model.theta_dim
        self.n_covariates = model.n_covariates
        self._check_gaussian()
        self.df = model.population_df
        self.learned_df = self.df == LEARNED_DF
        if self.df is not None and not self.learned_df and self.df <= 2:
            raise ModelSpecError(
                f"model {model.name!r}: the federated methods need population_df > 2 (a "
                f"finite population variance for the cavities), got {self.df:g}; centralized "
                "NUTS accepts any positive value"
            )
        if self.learned_df:  # the weights and covariance factor depend on the draw's df
            self.mixture_nodes, self.mixture_log_weights, self.cov_factor = None, None, None
        elif self.df is not None:
            lam, log_w = scale_mixture(self.df)
            self.mixture_nodes = jnp.asarray(lam)
            self.mixture_log_weights = jnp.asarray(log_w)
            # the population predictive's covariance is C E[1/λ] = C df / (df - 2)
            self.cov_factor = self.df / (self.df - 2.0)
        else:
            self.cov_factor = 1.0

    # ------------------------------------------------------------------ Student-t
    def df_at(self, u_phi: Array):
        """The population's ``df`` at ``u_phi``: the fixed number, the learned site's value
        (traceable) or ``None`` (a Gaussian population)."""
        if not self.learned_df:
            return self.df
        return self.model.population_df_of(self.model.phi_values(u_phi))

    def cov_factor_at(self, u_phi: Array):
        """``E[1/λ] = df / (df - 2)`` at ``u_phi``, the population predictive's covariance
        factor (1 for a Gaussian population)."""
        if not self.learned_df:
            return self.cov_factor
        df = self.df_at(u_phi)
        return df / (df - 2.0)

    def mixture(self, df=None) -> tuple[Array, Array]:
        """Nodes and log weights of the quadrature over ``λ`` (:func:`scale_mixture`), at the
        draw's ``df`` for a learned ``df`` (:func:`learned_scale_mixture`)."""
        if not self.learned_df:
            return self.mixture_nodes, self.mixture_log_weights
        if df is None:
            raise ValueError(
                f"model {self.model.name!r} learns its population df: give the draw's df "
                "(Population.df_at(u_phi))"
            )
        return learned_scale_mixture(df)

    # ------------------------------------------------------------------ population
    def _covariates_or_zero(self, z):
        """The client's covariates, or zeros (the population's reference point) when not
        given for a model with covariates; ``None`` without covariates."""
        if self.n_covariates and z is None:
            return jnp.zeros(self.n_covariates)
        return self.model.check_covariates(z)

    def _normal_sites(self, phi, z=None):
        """``(loc, scale)`` of the client prior's Normal sites, flat in unconstrained order."""
        args = self.model.prior_args(phi, self._covariates_or_zero(z))
        tr = isolated_trace(self.model.client_prior, *args, rng_key=jax.random.key(0))
        locs, scales = [], []
        for s in self.model.theta_space.sites:
            base = normal_base(tr[s.name]["fn"])
            shape = s.unconstrained_shape
            locs.append(jnp.broadcast_to(base.loc, shape).reshape(-1))
            scales.append(jnp.broadcast_to(base.scale, shape).reshape(-1))
        return jnp.concatenate(locs), jnp.concatenate(scales)

    def _effects_at(self, u_theta: Array, phi, z=None) -> Array:
        vals = self.model.theta_values(u_theta, phi, self._covariates_or_zero(z))
        return jnp.concatenate([jnp.reshape(vals[n], (-1,)) for n, _ in self.effect_sites])

    def moments(self, u_phi: Array, z: Array | None = None) -> tuple[Array, Array]:
        """Population mean ``m [E]`` and a square root ``L [E, D]`` of ``C = L L^T`` at ``u_phi``.

        With client covariates: the population of a client with covariates ``z [M]``
        (at ``z = 0`` when not given; ``L`` does not depend on ``z``).
        """
        phi = self.model.phi_values(u_phi)
        loc, scale = self._normal_sites(phi, z)
        m = self._effects_at(loc, phi, z)
        jac = jax.jacfwd(self._effects_at)(loc, phi, z)
        return m, jac * scale

    def client_means(self, u_phi: Array, covariates: Array) -> Array:
        r"""Every client's population mean ``m_k = m(phi, z_k)``, ``[K, E]``, from the clients'
        covariates ``[K, M]`` (``mu + z_k W`` for the zoo GLMs)."""
        phi = self.model.phi_values(u_phi)

        def one(z):
            loc, _ = self._normal_sites(phi, z)
            return self._effects_at(loc, phi, z)

        return jax.vmap(one)(covariates)

    def prior_sites(self, u_phi: Array, z: Array | None = None) -> tuple[Array, Array]:
        """``(loc, scale)`` of the client prior's Normal sites at ``u_phi`` (unconstrained order).

        A client's unconstrained parameters are ``u_theta = loc + scale * w`` with
        ``w ~ N(0, I)`` a priori, and its effects ``e = m + L w`` (:meth:`moments`);
        ``z``: the client's covariates, with client covariates.
        """
        return self._normal_sites(self.model.phi_values(u_phi), z)

    def _check_gaussian(self) -> None:
        model = self.model
        tr = model.client_trace
        for s in model.theta_space.sites:
            fn = tr[s.name]["fn"]
            support = fn.support
            while isinstance(support, constraints.independent):
                support = support.base_constraint
            if normal_base(fn) is None or support is not constraints.real:
                raise ModelSpecError(
                    f"model {model.name!r}: client site {s.name!r} is "
                    f"{type(fn).__name__}, not Normal; the federated methods need a "
                    "Gaussian population (client effects Normal given phi, centered or "
                    "non-centered)"
                )
        rng = np.random.default_rng(0)
        self.diagonal_root = self.e_dim == model.theta_dim
        for _ in range(2):
            u_phi = jnp.asarray(0.5 * rng.standard_normal(model.phi_dim))
            phi = model.phi_values(u_phi)
            z = None
            if self.n_covariates:
                z = jnp.asarray(rng.standard_normal(self.n_covariates))
                _, root_0 = self.moments(u_phi)
                _, root_z = self.moments(u_phi, z)
                if not np.allclose(np.asarray(root_0), np.asarray(root_z), rtol=1e-6, atol=1e-8):
                    raise ModelSpecError(
                        f"model {model.name!r}: the population covariance of the client "
                        "effects depends on the client covariates; the federated methods "
                        "need the covariates in the population mean only"
                    )
            loc, scale = self._normal_sites(phi, z)
            m, root = self.moments(u_phi, z)
            root = np.asarray(root)
            if self.diagonal_root and np.any(root != np.diag(np.diagonal(root))):
                self.diagonal_root = False
            v = jnp.asarray(rng.standard_normal(model.theta_dim))
            got = self._effects_at(loc + scale * v, phi, z)
            want = m + root @ v
            if not np.allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-8):
                raise ModelSpecError(
                    f"model {model.name!r}: the client effects "
                    f"{[n for n, _ in self.effect_sites]} are not affine in the client "
                    "prior's Normal sites; the federated methods need a Gaussian population"
                )

    # ------------------------------------------------------------------ likelihood in z
    def split(self, z: Array) -> tuple[Array, Array]:
        """``(e, u_s)`` of a site coordinate vector ``z``."""
        return z[: self.e_dim], z[self.e_dim :]

    def theta_dict(self, e: Array) -> dict[str, Array]:
        out, start = {}, 0
        for name, shape in self.effect_sites:
            size = math.prod(shape)
            out[name] = jnp.reshape(e[start : start + size], shape)
            start += size
        return out

    def phi_dict(self, u_s: Array) -> dict[str, Array]:
        """Global values for the likelihood: the shared sites at ``u_s`` (others at zero)."""
        u_phi = jnp.zeros(self.model.phi_dim, dtype=jnp.result_type(u_s, float))
        if self.q_dim:
            u_phi = u_phi.at[self.shared_index].set(u_s)
        return self.model.phi_values(u_phi)

    def loglik(self, z: Array, x: Array, y: Array, mask: Array) -> Array:
        """``log p(y_k | e_k, u_s, x_k)`` of one client, padded rows masked out."""
        e, u_s = self.split(z)
        ll = self.model.pointwise_loglik_values(self.theta_dict(e), self.phi_dict(u_s), x, y)
        return jnp.sum(jnp.where(mask, ll, 0.0))

    def z_of(self, u_theta: Array, u_phi: Array, covariates: Array | None = None) -> Array:
        """The site coordinates ``z`` of unconstrained ``(u_theta, u_phi)`` (and the client's
        covariates, with client covariates)."""
        phi = self.model.phi_values(u_phi)
        e = self._effects_at(u_theta, phi, covariates)
        return jnp.concatenate([e, u_phi[self.shared_index]])

    # ------------------------------------------------------------------ population integral
    def log_z(self, u_phi: Array, site: GaussianFactor) -> Array:
        r"""``log ∫ N(e | m(phi), C(phi)) t(e, u_s) de`` for one full site over ``z`` (exact).

        With ``e = m + L w``, ``w ~ N(0, I)``, and the site's blocks ``A`` (``e, e``),
        ``B`` (``e, s``), ``S`` (``s, s``) and shift ``(h_e, h_s)``:
        ``h = h_e - B u_s``, ``M = I + L^T A L``, ``r = L^T (h - A m)`` and

        ``log Z = -m^T A m / 2 + h^T m - log|M| / 2 + r^T M^{-1} r / 2 - u_s^T S u_s / 2 + h_s^T u_s``,

        stable as ``C`` degenerates (``L -> 0`` gives ``log t(m, u_s)``). Needs ``A``
        positive semi-definite (the sites are projected so by the clients).
        """
        m, root = self.moments(u_phi)
        return self.log_z_at(m, root, u_phi[self.shared_index], site, df=self.df_at(u_phi))

    def log_z_at(
        self,
        m: Array,
        root: Array,
        u_s: Array,
        site: GaussianFactor,
        *,
        shared_terms: bool = True,
        df=None,
    ) -> Array:
        r""":meth:`log_z` from the population moments, for one site or a batch ``[K]`` of sites.

        With a Student-t population (``model.population_df``) the effects are
        ``N(m, C / λ)`` given the mixing weight ``λ ~ Gamma(ν/2, ν/2)``, and
        ``Z_k = E_λ[Z_k(m, L / sqrt(λ))]`` by quadrature (:func:`scale_mixture`). ``df``:
        the draw's ``ν`` (:meth:`df_at`), needed where the model learns it.
        """
        if self.df is None:
            return self._log_z_gauss(m, root, u_s, site, shared_terms=shared_terms)
        nodes, log_w = self.mixture(df)
        scaled = root[None] / jnp.sqrt(nodes)[:, None, None]
        per_node = jax.vmap(
            lambda r: self._log_z_gauss(m, r, u_s, site, shared_terms=shared_terms)
        )(scaled)  # [Q, ...]
        log_w = jnp.reshape(log_w, (-1,) + (1,) * (per_node.ndim - 1))
        return jax.scipy.special.logsumexp(per_node + log_w, axis=0)

    def _log_z_gauss(
        self, m: Array, root: Array, u_s: Array, site: GaussianFactor, *, shared_terms: bool = True
    ) -> Array:
        """:meth:`log_z_at` for a Gaussian population (the body of both forms).

        A batch is evaluated with batched products and an unrolled Cholesky factorization
        (:func:`small_cholesky`): the server evaluates it for every client at every step
        of its sampler, where a batched LAPACK call per client would dominate.
        ``shared_terms=False`` leaves out the terms in the shared parameters alone,
        ``-u_s' P_ss u_s / 2 + s_s' u_s``, which a sum over clients takes from the summed
        blocks once (:func:`bayes_pfl.algorithms.effect_ep.server_density`).
        """
        E = self.e_dim
        prec, shift = site.precision, site.shift
        a = prec[..., :E, :E]
        h = shift[..., :E]
        c = jnp.zeros(shift.shape[:-1], dtype=shift.dtype)
        # products written as broadcasts and sums: XLA's batched dot of tiny matrices
        # (and its transpose in the gradient) costs far more on CPU than the arithmetic
        if self.q_dim:
            h = h - jnp.sum(prec[..., :E, E:] * u_s, -1)
        if self.q_dim and shared_terms:
            c = -0.5 * jnp.sum(jnp.sum(prec[..., E:, E:] * u_s, -1) * u_s, -1) + jnp.sum(
                shift[..., E:] * u_s, -1
            )
        am = jnp.sum(a * m[..., None, :], -1)  # m [E], or [K, E] with client covariates
        if self.diagonal_root:
            t = jnp.diagonal(root)
            mat = jnp.eye(E, dtype=a.dtype) + a * t[:, None] * t[None, :]
            r = t * (h - am)
        else:
            la = jnp.sum(root.T[:, :, None] * a[..., None, :, :], -2)  # [..., D, E] = L^T A
            mat = jnp.eye(root.shape[1], dtype=root.dtype) + jnp.sum(
                la[..., :, :, None] * root[None, :, :], -2
            )
            r = jnp.sum(root.T * (h - am)[..., None, :], -1)
        chol_diag, sol = _cholesky_solve(0.5 * (mat + jnp.swapaxes(mat, -1, -2)), r)
        return (
            -0.5 * jnp.sum(am * m, -1)
            + jnp.sum(h * m, -1)
            - jnp.sum(jnp.log(chol_diag), -1)
            + 0.5 * jnp.sum(sol**2, -1)
            + c
        )

    def conditional(self, m: Array, root: Array, u_s: Array, site: GaussianFactor):
        """Mean and covariance of ``e | phi`` under ``N(e | m, L L^T) t(e, u_s)``."""
        E = self.e_dim
        a = site.precision[:E, :E]
        h = site.shift[:E]
        if self.q_dim:
            h = h - site.precision[:E, E:] @ u_s
        mat = jnp.eye(root.shape[1], dtype=root.dtype) + root.T @ a @ root
        # covariance C - C A (I + ...) form: L (I + L'AL)^{-1} L'
        cov = root @ jnp.linalg.solve(mat, root.T)
        mean = m + cov @ (h - a @ m)
        return mean, cov

    @cached_property
    def labels(self) -> list[str]:
        """One label per site coordinate (``b[0]``, ``beta[1]``, ``log(sigma_y)``)."""
        out = []
        for name, shape in self.effect_sites:
            for idx in np.ndindex(*shape) if shape else [()]:
                out.append(name + ("[" + ",".join(map(str, idx)) + "]" if idx else ""))
        phi_labels = self.model.phi_space.labels()
        out += [phi_labels[i] for i in self.shared_index]
        return out


def _cholesky_solve(mat: Array, r: Array) -> tuple[Array, Array]:
    """Diagonal of the lower Cholesky factor ``L`` of ``mat [..., n, n]`` and ``L^{-1} r``.

    Vectorized over the leading axes, a few vector operations per column: where a
    batched LAPACK call costs a call per matrix on CPU. Unrolled for ``n <= 6``; a
    ``lax.scan`` over the columns above (an unrolled factorization inside the server's
    sampler made XLA compile for minutes at ``n = 11``). NaN where a matrix is not
    positive definite.
    """
    n = mat.shape[-1]
    if n <= 6:
        return _cholesky_solve_unrolled(mat, r)
    idx = jnp.arange(n)
    batch = mat.shape[:-2]

    def column(chol, j):
        col = jnp.take(mat, j, axis=-1) - jnp.einsum("...ik,...k->...i", chol, chol[..., j, :])
        d = jnp.sqrt(jnp.take(col, j, axis=-1))
        new = jnp.where(idx > j, col / d[..., None], jnp.where(idx == j, d[..., None], 0.0))
        return jnp.where(idx == j, new[..., :, None], chol), d

    chol, diag = jax.lax.scan(column, jnp.zeros_like(mat), jnp.arange(n))

    def solve(sol, i):
        row = jnp.take(chol, i, axis=-2)
        v = (jnp.take(r, i, axis=-1) - jnp.sum(row * sol, -1)) / jnp.take(row, i, axis=-1)
        return jnp.where(idx == i, v[..., None], sol), None

    sol, _ = jax.lax.scan(solve, jnp.zeros(batch + (n,), r.dtype), jnp.arange(n))
    return jnp.moveaxis(diag, 0, -1), sol


def _cholesky_solve_unrolled(mat: Array, r: Array) -> tuple[Array, Array]:
    """:func:`_cholesky_solve` unrolled over the (small, static) dimension."""
    n = mat.shape[-1]
    idx = jnp.arange(n)
    cols: list[Array] = []  # cols[k][..., i] = L[i, k]
    diag, sol = [], []
    for j in range(n):
        col = mat[..., :, j]
        for k in range(j):
            col = col - cols[k] * cols[k][..., j : j + 1]
        d = jnp.sqrt(col[..., j])
        cols.append(jnp.where(idx > j, col / d[..., None], jnp.where(idx == j, d[..., None], 0.0)))
        diag.append(d)
    for i in range(n):
        v = r[..., i]
        for k in range(i):
            v = v - cols[k][..., i] * sol[k]
        sol.append(v / diag[i])
    return jnp.stack(diag, -1), jnp.stack(sol, -1)


def small_cholesky(mat: Array) -> Array:
    """Lower Cholesky factor of small matrices ``[..., n, n]`` (see :func:`_cholesky_solve`)."""
    n = mat.shape[-1]
    chol = jnp.zeros_like(mat)
    for j in range(n):
        col = mat[..., :, j] - jnp.einsum("...ik,...k->...i", chol, chol[..., j, :])
        d = jnp.sqrt(col[..., j])
        below = jnp.arange(n) > j
        new = jnp.where(below, col / d[..., None], jnp.where(jnp.arange(n) == j, d[..., None], 0))
        chol = chol.at[..., :, j].set(new)
    return chol


def gaussian_population(model: HierarchicalModel) -> Population:
    """The :class:`Population` of ``model`` (cached on the model object)."""
    pop = model.__dict__.get("_population")
    if pop is None:
        pop = Population(model)
        model.__dict__["_population"] = pop
    return pop
