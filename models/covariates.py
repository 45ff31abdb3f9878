r"""Covariates modelled per client: missing values integrated out, measurement error corrected.

One mechanism covers both. Feature ``j`` of a row has an *observed* value ``x̃_j`` with a
known noise sd ``s_j`` (``s_j = 0``: exact; ``NaN``: not observed). Each client ``k`` has
its own distribution of the true covariate, ``x_j ~ N(m_kj, sd_kj²)``, and
``(m_kj, log sd_kj)`` are client effects, partially pooled by a Gaussian population like
the regression coefficients (so every federated method's Gaussian site covers them, with no
new message). A row's likelihood is

.. math::

    p(y, x̃ \mid θ_k) = \int p(y \mid x, θ_k)\, \prod_j N(x_j \mid m_{kj}, sd_{kj})\,
        N(x̃_j \mid x_j, s_j)\, dx
      = \underbrace{\prod_{j\ \mathrm{seen}} N(x̃_j \mid m_{kj}, \sqrt{sd_{kj}^2 + s_j^2})}
        _{\texttt{"x_obs"}}\;
        \underbrace{\int p(y \mid η)\, N(η \mid \bar η, v_η)\, dη}_{\texttt{"y"}} .

Given ``x̃``, the true covariates are independent Gaussians (:func:`conditional`: the
prior itself where a value is missing, the precision-weighted combination where it was
measured with noise, the value itself where it is exact), and a GLM's linear predictor
``η = a + Σ_j c_j x_j`` is then Gaussian with mean ``η̄`` and variance
``v_η = Σ_j c_j² Var(x_j | x̃)``. So however many features of a row are missing or noisy,
the integral is one-dimensional: closed form for a Normal outcome
(``y ~ N(η̄, σ² + v_η)``), Gauss-Hermite quadrature with :data:`GH_NODES` nodes for the
Bernoulli and Poisson outcomes (:class:`IntegratedOutcome`). Nothing is imputed: a client
sends only its site over its effects.

The likelihood has two observed sites: ``"y"`` is ``p(y | x̃, θ_k)`` (the outcome's
conditional, what predictions and scores read) and ``"x_obs"`` is ``p(x̃ | θ_k)``
(:class:`ObservedCovariates`); their sum is the row's likelihood. When nothing is missing
and no noise is declared, ``"y"`` is the complete-data GLM's likelihood exactly and
``"x_obs"`` depends on the covariate effects alone, so the regression coefficients'
posterior is the complete-data one.

API (for benchmarks and front ends)
-----------------------------------
Data
    ``FederatedData.from_pandas(df, ..., missing="keep")`` keeps ``NaN`` in the features
    (a missing target is still an error). ``check_model_data(model, data)`` (run by every
    fit) raises :class:`~bayes_pfl.spec.ModelSpecError` for ``NaN`` in a feature the model
    does not model, or a modelled feature missing in every training row of a client
    (:meth:`LatentFeatures.check_data`).
Model
    ``hierarchical_glm(family, ..., missing=["x1"], noise_sd={"x2": 0.5},
    missing_effects=False, sigma_by_client=False, covariate_scale=5.0)`` (also through
    ``get_model(name, p, **same)`` and ``linear``/``logistic``/``poisson``). Global sites
    ``x_mu, x_tau, x_lsd_mu, x_lsd_tau`` ``[q]`` (``q`` modelled features, in column order,
    labelled by ``model.coords["x_m"]``), ``g_mu, g_tau`` with ``missing_effects``,
    ``log_sigma_mu, log_sigma_tau`` with ``sigma_by_client`` (instead of ``sigma_y``).
    Client sites ``x_m, x_lsd`` ``[q]`` (``x_raw [2q]`` non-centered), ``g``,
    ``log_sigma_y``; a fit's ``fit.theta["x_m"]`` is ``[chain, draw, K, q]``.
Methods
    ``fit_nuts``, ``fit_ep``, ``fit_one_shot``, ``fit_vi`` take these models unchanged:
    the covariate effects are part of each client's Gaussian site.
Command line
    ``bayes-pfl fit ... --missing model [--noise-sd FEATURE=SD ...]``
    (:mod:`bayes_pfl.cli.missing`).

Docs: ``docs/systemic.md``. References: Little & Rubin (2019), *Statistical Analysis
with Missing Data*, ch. 11 (ignorable likelihood with a covariate model); Carroll et al.
(2006), *Measurement Error in Nonlinear Models*, ch. 8-9 (structural errors in
variables); Liu & Pierce (1994), adaptive Gauss-Hermite quadrature.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from jax.scipy.special import logsumexp
from numpyro.distributions import constraints

from bayes_pfl.spec import ModelSpecError

__all__ = [
    "GH_NODES",
    "IntegratedOutcome",
    "LatentFeatures",
    "ObservedCovariates",
    "conditional",
    "gauss_hermite",
    "latent_features",
    "linear_moments",
    "noise_columns",
    "safe_sqrt",
]

GH_NODES = 32
"""Gauss-Hermite nodes of :class:`IntegratedOutcome` (Bernoulli and Poisson outcomes),
centred at the integrand's mode. Against adaptive quadrature (``scipy.integrate.quad``,
means -3..3, Bernoulli ``y`` 0/1, Poisson ``y`` 0..30) the log-likelihood of a row is
within 1e-10 where the linear predictor's sd given the observed values (``sqrt(v_η)``) is
at most 1, 1e-7 at 1.5 and 1e-4 at 3 (the worst case: a Poisson zero, whose integrand is a
smoothed step). Standardized features with unit slopes are in the first regime.
``hierarchical_glm(quadrature_nodes=)`` trades accuracy for time: for a Bernoulli row
(means -3..3) the largest error is 3e-10 / 1e-8 / 6e-7 with 16 / 12 / 8 nodes at
``sqrt(v_η) = 1`` and 1e-7 / 1e-6 / 2e-5 at 1.5 (32 nodes: 6e-15 and 8e-11).
Beyond that (a gap times a steep slope: ``sqrt(v_η)`` about 5) the value stays close
(2e-10 at mean -10, ``v_η`` 27, ``y`` 1; 6e-5 at ``v_η`` 100), but the derivatives by rule,
moments on the same nodes, differ from the value's own derivatives by up to 5e-4 per row
(3e-3 at ``v_η`` 100; 64 nodes: 4e-5 and 1e-3): optimizers that use both can stall a
little short of a mode (EP's client step accepts a stall within 0.1 sd)."""


def gauss_hermite(n: int = GH_NODES) -> tuple[np.ndarray, np.ndarray]:
    """Nodes ``t`` and log weights for ``E f(Z) ≈ Σ_g w_g f(t_g)``, ``Z ~ N(0, 1)``."""
    t, w = np.polynomial.hermite.hermgauss(n)
    return np.sqrt(2.0) * t, np.log(w) - 0.5 * np.log(np.pi)


def safe_sqrt(v):
    """``sqrt(v)`` for ``v >= 0`` with a finite gradient at ``v = 0`` (where it is 0)."""
    pos = v > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, v, 1.0)), 0.0)


def conditional(x_obs, missing, m, sd, noise_sd):
    """The true covariates given the observed ones: ``E[x | x̃]`` and ``Var[x | x̃]``.

    Parameters
    ----------
    x_obs : array ``[n, q]``
        Observed values (any finite number where ``missing``).
    missing : bool array ``[n, q]``
        No observation.
    m, sd : arrays ``[q]`` (``m`` also ``[n, q]``: a mean per row)
        The client's covariate distribution ``x_j ~ N(m_j, sd_j²)``.
    noise_sd : array ``[q]``
        Known measurement-error sd (0: exact).

    Returns
    -------
    mean, var : arrays ``[n, q]``
        ``m, sd²`` where missing; ``x̃, 0`` where exact; the precision-weighted
        combination ``((m s² + x̃ sd²) / (sd² + s²), sd² s² / (sd² + s²))`` where noisy.
    """
    v, s2 = sd**2, noise_sd**2
    total = v + s2
    mean = jnp.where(missing, m, (m * s2 + x_obs * v) / total)
    var = jnp.where(missing, v, v * s2 / total)
    return mean, var


def linear_moments(x_obs, missing, m, sd, noise_sd, coef):
    """``Σ_j c_j E[x_j | x̃]`` and ``Σ_j c_j² Var[x_j | x̃]`` per row, ``[n]`` each.

    The same as ``conditional`` followed by the sums (``coef [q]``: the features'
    coefficients ``c``), written as products of the rows' constant ``[n, q]`` indicators
    and values with ``[q]`` parameter vectors, so that derivatives in the parameters carry
    ``[n]`` arrays only (EP takes Hessians at hundreds of points; with ``[n, q]``
    intermediates they took gigabytes).
    """
    v, s2 = sd**2, noise_sd**2
    w = s2 / (v + s2)  # the weight of the client's mean in a noisy value's conditional
    miss = jnp.where(missing, 1.0, 0.0)
    seen = 1.0 - miss
    value = jnp.where(missing, 0.0, x_obs)
    if jnp.ndim(m) == 1:
        mean = miss @ (coef * m) + seen @ (coef * m * w) + value @ (coef * (1 - w))
    else:  # a mean per row, [n, q] (covariate_regression)
        mean = (miss * m) @ coef + (seen * m) @ (coef * w) + value @ (coef * (1 - w))
    var = miss @ (coef**2 * v) + seen @ (coef**2 * v * w)
    return mean, var


class IntegratedOutcome(dist.Distribution):
    r"""``p(y) = ∫ p(y | η) N(η | eta_mean, eta_var) dη`` for a GLM outcome, one per row.

    ``family`` ``"normal"``: ``N(y | eta_mean, sqrt(sigma² + eta_var))`` (exact);
    ``"bernoulli"`` (logit link) and ``"poisson"`` (log link): Gauss-Hermite quadrature with
    ``n_nodes`` nodes in ``η``. Where ``eta_var = 0`` it is the GLM's own likelihood (up to
    the rounding of the weights' sum, below 1e-14). :meth:`sample` draws ``η`` and then
    ``y``: the posterior predictive of a row with missing or noisy features.
    """

    arg_constraints = {"eta_mean": constraints.real, "eta_var": constraints.nonnegative}
    pytree_aux_fields = ("family", "n_nodes")

    def __init__(self, family, eta_mean, eta_var, sigma=None, *, n_nodes=GH_NODES):
        self.family, self.n_nodes = family, n_nodes
        self.eta_mean, self.eta_var = jnp.broadcast_arrays(eta_mean, eta_var)
        self.sigma = sigma
        super().__init__(batch_shape=jnp.shape(self.eta_mean), validate_args=False)

    @property
    def support(self):
        return {
            "normal": constraints.real,
            "bernoulli": constraints.boolean,
            "poisson": constraints.nonnegative_integer,
        }[self.family]

    def _outcome(self, eta):
        if self.family == "normal":
            return dist.Normal(eta, self.sigma)
        if self.family == "bernoulli":
            return dist.Bernoulli(logits=eta)
        return dist.Poisson(jnp.exp(eta))

    def log_prob(self, value):
        if self.family == "normal":
            return dist.Normal(self.eta_mean, jnp.sqrt(self.sigma**2 + self.eta_var)).log_prob(
                value
            )
        y, mean, var = jnp.broadcast_arrays(jnp.asarray(value), self.eta_mean, self.eta_var)
        return _integrated_loglik(self.family, self.n_nodes)(y, mean, var)

    def sample(self, key, sample_shape=()):
        k_eta, k_y = jax.random.split(key)
        shape = tuple(sample_shape) + self.batch_shape
        eta = self.eta_mean + safe_sqrt(self.eta_var) * jax.random.normal(k_eta, shape)
        return self._outcome(eta).sample(k_y)


NEWTON_STEPS = 30
"""Safeguarded Newton steps to the mode of ``p(y | η) N(η | η̄, v)`` that centres the
quadrature (:func:`_quadrature`)."""


def _cumulant(family, eta):
    """``A(η), A'(η), A''(η)`` of the outcome (``log p(y | η) = y η - A(η) + const``)."""
    if family == "bernoulli":
        p = jax.nn.sigmoid(eta)
        return jax.nn.softplus(eta), p, p * (1 - p)
    e = jnp.exp(eta)
    return e, e, e


def _quadrature(family, y, mean, var, n_nodes):
    r"""``F = log ∫ p(y | η) N(η | mean, var) dη`` and its first and second derivatives in
    ``(mean, var)``, by Gauss-Hermite quadrature centred at the integrand's mode.

    With the mode ``η*`` (Newton from a start between ``mean`` and the outcome's own
    maximum) and the curvature scale ``s = (A''(η*) + 1/var)^{-1/2}``, the integral is
    ``s Σ_g w_g f(η* + s z_g) / φ(z_g)`` for standard-Normal nodes ``z_g``, weights
    ``w_g`` and ``f`` the integrand: exact for a Gaussian ``f`` and accurate when ``f`` is
    close to one (Liu & Pierce 1994), where a rule around ``mean`` is not (a Poisson
    outcome's ``e^η``). The derivatives are moments, under ``q(η) ∝ p(y | η) N(η | mean,
    var)`` on the same nodes, of the outcome's ``ℓ = log p(y | η)`` and its derivatives
    (the heat equation ``∂_var E f = E f'' / 2`` for ``f = p(y | ·)``): ``F_m = E ℓ'``,
    ``F_v = E[ℓ'' + ℓ'²] / 2``, ``F_mm = E[ℓ'' + ℓ'²] - F_m²``,
    ``F_mv = E[f'''/f] / 2 - F_m F_v``, ``F_vv = E[f''''/f] / 4 - F_v²``. No power of
    ``1/var`` enters, so they hold from ``var = 0`` (``q`` a point mass at ``mean``;
    ``F = log p(y | mean)``) to large variances without cancellation.

    Returns ``F, (F_m, F_v), (F_mm, F_mv, F_vv)``, each of ``mean``'s shape.
    """
    pos = var > 0
    v = jnp.where(pos, var, 1.0)
    # The mode solves g(η) = y - A'(η) - (η - mean) / v = 0, g decreasing: one root, in a
    # bracket [lo, hi] that each step narrows; a Newton step leaving it is replaced by
    # bisection. (Plain Newton from ``mean`` oscillated for a Bernoulli outcome with a
    # large v - mean -10, v 27: between about -10 and 17 - and the rule centred there was
    # off by 5e-3 in F, and inconsistent with its derivatives: EP's client Newton stalled.)
    if family == "poisson":  # start near the precision-weighted mode of prior and outcome
        w = y + 0.5
        eta = (mean / v + w * jnp.log(w)) / (1 / v + w)
        # g > 0 below min(mean, log y) (y > 0), and below mean - v e^mean (y = 0)
        lo = jnp.where(
            y > 0,
            jnp.minimum(mean, jnp.log(jnp.where(y > 0, y, 1.0))),
            mean - v * jnp.exp(jnp.minimum(mean, 50.0)),
        )
        hi = mean + v * y
    else:  # 0 <= A'(η) <= 1
        eta = mean
        lo, hi = mean - v * (1 - y), mean + v * y
    eta = jnp.clip(eta, lo, hi)
    step_before = step_last = hi - lo
    for _ in range(NEWTON_STEPS):
        _, a1, a2 = _cumulant(family, eta)
        g = y - a1 - (eta - mean) / v
        lo, hi = jnp.where(g > 0, eta, lo), jnp.where(g > 0, hi, eta)
        step = g / (a2 + 1 / v)
        # bisect where Newton leaves the bracket or does not halve the step before last
        # (rtsafe, Numerical Recipes 9.4): oscillations across the mode end there
        newton = (
            (eta + step > lo) & (eta + step < hi) & (jnp.abs(step) <= 0.5 * jnp.abs(step_before))
        )
        new = jnp.where(g == 0, eta, jnp.where(newton, eta + step, 0.5 * (lo + hi)))
        step_before, step_last = step_last, new - eta
        eta = new
    scale = 1 / jnp.sqrt(_cumulant(family, eta)[2] + 1 / v)
    z, log_w = gauss_hermite(n_nodes)
    nodes = eta[..., None] + scale[..., None] * z
    d = nodes - mean[..., None]
    vv = v[..., None]
    log_f = (
        -0.5 * d**2 / vv
        - 0.5 * jnp.log(2 * np.pi * vv)
        + _outcome_log_prob(family, nodes, y[..., None])
    )
    log_q = log_f + log_w + 0.5 * z**2 + 0.5 * np.log(2 * np.pi)
    value = jnp.log(scale) + logsumexp(log_q, axis=-1)
    q = jax.nn.softmax(log_q, axis=-1)

    def expect(fn):  # E_q fn(l1, l2, l3, l4); a point mass at the mean where var = 0
        at_nodes = jnp.sum(q * fn(*_outcome_derivatives(family, nodes, y[..., None])), -1)
        return jnp.where(pos, at_nodes, fn(*_outcome_derivatives(family, mean, y)))

    f_m = expect(lambda l1, l2, l3, l4: l1)
    f2 = expect(lambda l1, l2, l3, l4: l2 + l1**2)
    f3 = expect(lambda l1, l2, l3, l4: l3 + 3 * l1 * l2 + l1**3)
    f4 = expect(lambda l1, l2, l3, l4: l4 + 4 * l3 * l1 + 3 * l2**2 + 6 * l2 * l1**2 + l1**4)
    f_v = 0.5 * f2
    value = jnp.where(pos, value, _outcome_log_prob(family, mean, y))
    return value, (f_m, f_v), (f2 - f_m**2, 0.5 * f3 - f_m * f_v, 0.25 * f4 - f_v**2)


def _outcome_derivatives(family, eta, y):
    """The first four derivatives of ``l(eta) = log p(y | eta) = y eta - A(eta) + const``."""
    if family == "bernoulli":
        p = jax.nn.sigmoid(eta)
        v = p * (1 - p)
        return y - p, -v, -v * (1 - 2 * p), -v * (1 - 6 * v)
    e = jnp.exp(eta)
    return y - e, -e, -e, -e


def _integrated_loglik(family, n_nodes):
    """``F(y, mean, var)`` of :func:`_quadrature` with its derivatives given by rule
    (``jax.custom_jvp``, first and second order): a derivative flows through the rows'
    ``(mean, var)`` only, never through the ``[rows, nodes]`` quadrature arrays, so a
    Hessian over ``J`` parameters costs one quadrature instead of ``J`` (what keeps EP's
    per-point Hessians within memory)."""

    @jax.custom_jvp
    def loglik(y, mean, var):
        return _quadrature(family, y, mean, var, n_nodes)[0]

    @jax.custom_jvp
    def score(y, mean, var):
        return _quadrature(family, y, mean, var, n_nodes)[1]

    @loglik.defjvp
    def _loglik_jvp(primals, tangents):
        y, mean, var = primals
        _, d_mean, d_var = tangents
        f_m, f_v = score(y, mean, var)
        return loglik(y, mean, var), f_m * d_mean + f_v * d_var

    @score.defjvp
    def _score_jvp(primals, tangents):
        y, mean, var = primals
        _, d_mean, d_var = tangents
        _, grads, (f_mm, f_mv, f_vv) = _quadrature(family, y, mean, var, n_nodes)
        return grads, (f_mm * d_mean + f_mv * d_var, f_mv * d_mean + f_vv * d_var)

    return loglik


def _outcome_log_prob(family, eta, y):
    if family == "bernoulli":
        return dist.Bernoulli(logits=eta).log_prob(y)
    return dist.Poisson(jnp.exp(eta)).log_prob(y)


class ObservedCovariates(dist.Distribution):
    """The observed covariates of each row, ``p(x̃ | θ_k)``: value ``[n, q]``, one term per row.

    Missing entries (``missing``, any value there) contribute nothing.
    """

    arg_constraints = {"m": constraints.real_vector, "scale": constraints.positive}
    support = constraints.real_vector

    def __init__(self, m, scale, missing):
        self.m, self.scale, self.missing = m, scale, missing
        super().__init__(
            batch_shape=jnp.shape(missing)[:-1],
            event_shape=jnp.shape(missing)[-1:],
            validate_args=False,
        )

    def log_prob(self, value):
        # Σ_j [x̃_ij seen] log N(x̃_ij | m_j, scale_j) as products of the rows' (constant)
        # [n, q] statistics with [q] parameter vectors: derivatives in the parameters never
        # carry an [n, q] array (EP's Hessians at hundreds of points)
        seen = jnp.where(self.missing, 0.0, 1.0)
        value = jnp.where(self.missing, 0.0, value)
        if jnp.ndim(self.m) == 2:  # a mean per row (covariate_regression)
            z = (value - self.m) / self.scale
            return jnp.sum(seen * (-jnp.log(self.scale) - 0.5 * np.log(2 * np.pi) - 0.5 * z**2), -1)
        prec = 1 / self.scale**2
        const = -jnp.log(self.scale) - 0.5 * np.log(2 * np.pi) - 0.5 * self.m**2 * prec
        return seen @ const + value @ (self.m * prec) - 0.5 * (value**2) @ prec

    def sample(self, key, sample_shape=()):
        shape = tuple(sample_shape) + self.batch_shape + self.event_shape
        return self.m + self.scale * jax.random.normal(key, shape)


@dataclass(frozen=True)
class LatentFeatures:
    """The features of a GLM with a modelled distribution (missing values, measurement
    error), built by :func:`latent_features` from ``hierarchical_glm``'s arguments.

    ``names`` (in column order) and their ``columns`` in ``x``, the known ``noise_sd`` of
    each (0: exact) or the column of ``x`` that holds it by client (``noise_columns``,
    ``noise_names``; such a column is data, not a term of the model), and the features
    with an effect of missingness (``effect_names``, their ``effect_positions`` among
    ``names``).
    """

    names: tuple[str, ...]
    columns: np.ndarray
    noise_sd: np.ndarray
    effect_names: tuple[str, ...]
    effect_positions: np.ndarray
    noise_columns: np.ndarray  # [q] the column of x holding a feature's noise sd (-1: none)
    noise_names: tuple[str, ...]  # [q] those columns' names ("": none)

    @property
    def special_columns(self) -> set[int]:
        """The columns of ``x`` this object reads: the modelled features and their noise
        columns (every other column is an exactly measured feature)."""
        return set(self.columns.tolist()) | set(
            self.noise_columns[self.noise_columns >= 0].tolist()
        )

    def client_noise(self, x):
        """The noise sd of each modelled feature for one client's rows ``x [n, P]``,
        ``[q]``: the declared constant, or the client's value in the feature's noise
        column (one value per client, checked by :meth:`check_data`; read as the largest
        over the rows, so padded rows (zeros) and ``NaN`` where the feature is missing do
        not count)."""
        by_column = self.noise_columns >= 0
        if not by_column.any():
            return jnp.asarray(self.noise_sd)
        values = x[..., np.maximum(self.noise_columns, 0)].reshape(-1, len(self.names))
        client = jnp.max(jnp.where(jnp.isnan(values), 0.0, values), axis=0, initial=0.0)
        return jnp.where(by_column, client, self.noise_sd)

    def coords(self, centered: bool) -> dict[str, tuple[str, ...]]:
        out = {}
        if self.names:
            for site in ("x_m", "x_lsd", "x_mu", "x_tau", "x_lsd_mu", "x_lsd_tau"):
                out[site] = self.names
            if not centered:
                out["x_raw"] = tuple(f"m:{f}" for f in self.names) + tuple(
                    f"log_sd:{f}" for f in self.names
                )
        if self.effect_names:
            labels = tuple(f"missing:{f}" for f in self.effect_names)
            for site in ("g", "g_mu", "g_tau") + (() if centered else ("g_raw",)):
                out[site] = labels
        return out

    def description(self) -> str:
        noisy = [
            f"{f} (sd by client: column {c!r})" if c else f"{f} (sd {s:g})"
            for f, s, c in zip(self.names, self.noise_sd, self.noise_names, strict=True)
            if s or c
        ]
        out = ""
        if len(self.names) > len(noisy):
            out += ", missing values integrated out"
        if noisy:
            out += f", measurement error in {', '.join(noisy)}"
        if self.effect_names:
            out += f", effects of missingness of {', '.join(self.effect_names)}"
        return out

    def check_data(self, data) -> None:
        """Raise :class:`~bayes_pfl.spec.ModelSpecError` for data the model cannot take:
        missing values in a feature whose distribution is not modelled, a modelled feature
        missing in every training row of a client (its values there would be the
        population's guess alone; allowed with an effect of missingness), or one constant
        over a client's observed training rows (no spread: often a code for missing)."""
        for split in ("train", "val", "test"):
            if getattr(data, split, None) is None:
                continue
            arrays = data.arrays(split)
            x = np.asarray(arrays.x, float)
            real = np.asarray(arrays.mask, bool)
            gaps = np.isnan(x) & real[..., None]
            special = self.special_columns
            bad = [j for j in range(x.shape[-1]) if j not in special and gaps[..., j].any()]
            if bad:
                where = _client_counts(data, gaps[..., bad].any(axis=-1))
                raise ModelSpecError(
                    f"missing values in feature(s) {[str(data.features[j]) for j in bad]} "
                    f"({split} rows: {where}), which the model does not model; build it with "
                    "missing=[...] (command line: --missing model)"
                )
            for name, j, c, c_name in zip(
                self.names, self.columns, self.noise_columns, self.noise_names, strict=True
            ):
                if c >= 0:
                    _check_noise_column(data, split, name, c_name, x[..., c], real & ~gaps[..., j])
            if split != "train":
                continue
            for name, j, noise, c in zip(
                self.names, self.columns, self.noise_sd, self.noise_columns, strict=True
            ):
                seen = real & ~gaps[..., j]
                if c >= 0:  # the client's declared noise (one value per client, checked above)
                    noise = np.where(seen, x[..., c], 0.0).max(axis=1, initial=0.0)
                _check_spread(data, name, j, x[..., j], seen, noise)
                if name in self.effect_names:
                    continue
                n_real = real.sum(axis=1)
                empty = (gaps[..., j].sum(axis=1) == n_real) & (n_real > 0)
                if empty.any():
                    clients = [str(data.clients[k]) for k in np.flatnonzero(empty)]
                    raise ModelSpecError(
                        f"feature {name!r} is missing in every training row of client(s) "
                        f"{', '.join(repr(c) for c in clients[:5])}"
                        f"{' ...' if len(clients) > 5 else ''} "
                        f"({', '.join(str(int(n)) for n in n_real[empty][:5])} row(s)): its "
                        "values there would be the population's guess alone; drop the "
                        "feature, or declare missing_effects=True (an effect of its "
                        "missingness per client, as in models/heart.py)"
                    )


def noise_columns(noise_sd) -> tuple[str, ...]:
    """The columns named as noise sds in ``noise_sd=`` (``{"sensor": "sensor_sd"}``): data
    read by the likelihood, not terms of the model."""
    return tuple(dict.fromkeys(str(s) for s in (noise_sd or {}).values() if isinstance(s, str)))


def latent_features(features, missing, noise_sd, missing_effects) -> LatentFeatures:
    """Check ``missing=`` and ``noise_sd=`` against the features (names or positions of
    the columns of ``x``). A ``noise_sd`` value is a number (the sd, in the feature's
    units) or the name of a column that holds each client's sd."""

    def name(f, where):
        if isinstance(f, int | np.integer) and not isinstance(f, bool):
            if not 0 <= f < len(features):
                raise ModelSpecError(f"{where}: column {f} is not in [0, {len(features)})")
            return features[int(f)]
        if str(f) not in features:
            raise ModelSpecError(
                f"{where} names {str(f)!r}, which is not a feature of the model "
                f"(features: {', '.join(features) or 'none'})"
            )
        return str(f)

    def sd(f, s):
        if isinstance(s, str):
            return name(s, f"noise_sd[{f!r}]")
        try:
            value = float(s)
        except (TypeError, ValueError):
            value = float("nan")
        if not (np.isfinite(value) and value >= 0):
            raise ModelSpecError(
                f"noise_sd[{f!r}] must be a number >= 0 or the name of a column holding "
                f"each client's sd, got {s!r}"
            )
        return value

    if isinstance(missing, str):
        missing = (missing,)
    miss = {name(f, "missing") for f in missing}
    noise = {name(f, "noise_sd"): sd(f, s) for f, s in (noise_sd or {}).items()}
    aux = noise_columns(noise)
    clash = sorted((miss | set(noise)) & set(aux))
    if clash:
        raise ModelSpecError(
            f"{clash} named as noise-sd column(s) and as modelled feature(s): a noise column "
            "is data about another feature's measurement, not a covariate"
        )
    if missing_effects and not miss:
        raise ModelSpecError("missing_effects=True needs features in missing=")
    names = tuple(f for f in features if f in miss or f in noise)
    effects = tuple(f for f in names if f in miss) if missing_effects else ()
    by_column = {f: s for f, s in noise.items() if isinstance(s, str)}
    return LatentFeatures(
        names,
        np.array([features.index(f) for f in names], dtype=int),
        np.array([0.0 if f in by_column else noise.get(f, 0.0) for f in names]),
        effects,
        np.array([names.index(f) for f in effects], dtype=int),
        np.array([features.index(by_column[f]) if f in by_column else -1 for f in names], int),
        tuple(by_column.get(f, "") for f in names),
    )


def _check_spread(data, name, j, x, seen, noise) -> None:
    """A modelled, exactly measured feature constant over a client's observed rows: the
    client's distribution of it would have no spread (``sd -> 0``, a degenerate likelihood);
    often a code for missing (0 for "not measured")."""
    noise = np.broadcast_to(np.asarray(noise, float), (x.shape[0],))
    for k in range(x.shape[0]):
        if noise[k] > 0:
            continue
        values = x[k][seen[k]]
        if values.size >= 2 and np.all(values == values[0]):
            scale, mean = data.feature_scale, data.feature_mean
            value = values[0] if scale is None else values[0] * scale[j] + mean[j]
            raise ModelSpecError(
                f"feature {name!r} is {value:g} in all {values.size} observed rows of client "
                f"{str(data.clients[k])!r}: the client's distribution of it has no spread. If "
                f"{value:g} codes a missing value there, set it to NaN; otherwise declare a "
                "noise sd for it (noise_sd=, --noise-sd) or leave the feature out"
            )


def _check_noise_column(data, split, name, column, values, seen) -> None:
    """A feature's noise column: finite, >= 0 and one value per client on the rows where
    the feature was observed (the client's device; ``NaN`` is allowed where the feature is
    missing)."""
    where = f"noise column {column!r} of feature {name!r} ({split} rows)"
    bad = seen & ~(np.isfinite(values) & (values >= 0))
    if bad.any():
        raise ModelSpecError(
            f"{where}: values must be finite and >= 0 where {name!r} is observed; "
            f"not so for client(s) {_client_counts(data, bad)}"
        )
    for k in range(values.shape[0]):
        v = values[k][seen[k]]
        if v.size and np.ptp(v) > 1e-12 * max(1.0, float(np.max(v))):
            raise ModelSpecError(
                f"{where}: client {str(data.clients[k])!r} has {len(np.unique(v))} different "
                f"values ({float(v.min()):g} to {float(v.max()):g}); the noise sd is the "
                "client's (its device's): one value per client"
            )


def _client_counts(data, rows) -> str:
    """``'a' (3 rows), 'b' (1 row)``: the clients with flagged rows, ``rows [K, n]``."""
    counts = rows.sum(axis=1)
    parts = [
        f"{str(data.clients[k])!r} ({int(c)} row{'s' if c != 1 else ''})"
        for k, c in enumerate(counts)
        if c
    ]
    return ", ".join(parts[:5]) + (" ..." if len(parts) > 5 else "")
