r"""Record-level differential privacy for what clients send: DP partitioned-VI sites.

Threat model (``docs/privacy.md``): the unit of privacy is one *row* of one client's
data (a patient), neighbouring datasets differ by adding or removing one row; every
client guarantees ``(epsilon, delta)``-DP for its rows on its own, for everything it
sends during the whole fit, against the server and everyone else (no trusted party).
The population parameters (and every client's site) are released; a client's
personalized posterior is computed locally from its own rows and is not released.

The site of :mod:`bayes_pfl.algorithms.effect_ep` moment-matches the *tilted*
distribution, which depends on all of a client's rows at once: one row can move it
without bound. Here, as in DP partitioned VI (Heikkilä et al. 2023), a client's
round is one natural-gradient (unit step) partitioned-VI update computed under a
*public* Gaussian

.. math::

    q_k(z) \propto c_k(z)\, t_k^{\mathrm{prev}}(z),

the server's cavity times the site the client sent last (both already released; at
the first round the cavity alone). Row ``i`` contributes

.. math::

    g_i = \mathbb E_{q_k}[\nabla_z \ell_i(z)], \qquad
    H_i = \mathbb E_{q_k}[-\nabla_z^2 \ell_i(z)],

expectations on a fixed set of exactly whitened antithetic points of ``q_k``. The
vector ``v_i = (g_i, \mathrm{vech}\, H_i)`` (the upper triangle of ``H_i``, what is
released) is clipped to Euclidean norm ``C``: ``v_i \min(1, C / \|v_i\|)``. Scaling
``g_i`` and ``H_i`` by the same factor is the natural-gradient step of the row's
likelihood raised to a power ``\le 1``: clipping *tempers* outlying rows (a wider
site), it does not move where the row points. The clipped sum gets Gaussian noise,

.. math::

    S = \sum_i \mathrm{clip}_C(v_i) + \mathcal N(0, \sigma^2 C^2 I),

an add/remove-one-row sensitivity of ``C`` (padded rows contribute zero), so one round
is the Gaussian mechanism with noise multiplier ``\sigma``. The noisy ``H`` (the
upper triangle mirrored) is projected to the positive semi-definite cone (eigenvalues
floored at 0: the GLM likelihoods are log-concave, and a PSD site keeps the server's
population integral proper), and the new site is

.. math::

    \Lambda_t = \mathrm{PSD}(H), \qquad \eta_t = \Lambda_t m_q + g,

which the client damps against its previous site (post-processing of released
values) before sending. ``R`` rounds compose ``R`` Gaussian mechanisms (adaptive
composition); the spend is computed by Google's ``dp-accounting`` (RDP or PLD
accountant), and ``sigma`` is the smallest noise multiplier whose composed epsilon
over the planned rounds is within the budget (:func:`calibrate_noise`). A fit that
stops early (convergence) spends the epsilon of the rounds it ran.

What else a client sends is data-independent or post-processing: the ``ok`` flag is
whether its (noisy) site is finite, and its round info is constant.

References
----------
Heikkilä, M. A., Ashman, M., Swaroop, S., Turner, R. E., Honkela, A. (2023).
Differentially private partitioned variational inference. TMLR.
Abadi, M. et al. (2016). Deep learning with differential privacy. CCS (per-example
clipping, Gaussian noise).
Mironov, I. (2017). Rényi differential privacy. CSF.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bayes_pfl import gaussian as gf
from bayes_pfl.algorithms import Algorithm
from bayes_pfl.algorithms.effect_ep import EffectClientInfo, EffectMessage
from bayes_pfl.gaussian import GaussianFactor
from bayes_pfl.local import value_grad_hessian
from bayes_pfl.population import Population, gaussian_population
from bayes_pfl.spec import HierarchicalModel

Array = jax.Array

__all__ = [
    "ACCOUNTANTS",
    "audit_epsilon",
    "DPBudget",
    "DPClientState",
    "calibrate_noise",
    "clip_rows",
    "epsilon_spent",
    "local_sites",
    "noise_aware",
    "noisy_site",
    "private_algorithm",
    "privacy_record",
    "row_statistics",
    "vech_dim",
]

ACCOUNTANTS = ("rdp", "pld")
"""Accountants of ``dp-accounting``: Rényi DP (``rdp.RdpAccountant``, default, fast) or
privacy loss distributions (``pld.PLDAccountant``, tighter, slower)."""


def _positive_number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ValueError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value <= 0.0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return value


@dataclass(frozen=True)
class DPBudget:
    """A client's privacy budget for a whole fit, and the clipping bound.

    Parameters
    ----------
    epsilon : float
        Total epsilon per client over all rounds (> 0).
    delta : float
        Total delta per client, in ``(0, 1)``; default ``1e-5``. It should be well below
        one over a client's rows (``1 / (10 n_k)`` is a common choice): a fit warns when
        it is not. It is not derived from the client's row count, which would make the
        noise depend on the private ``n_k``.
    clip : float, optional
        Bound ``C`` on each row's contribution ``(g_i, vech H_i)`` (Euclidean norm).
        Default ``sqrt(J)``, ``J`` the site dimension (a property of the model, not of
        the data): with standardized features a GLM row with an intercept and
        ``J - 1`` varying slopes has ``|x_i| ~ sqrt(J)``, and a logistic
        row's gradient ``(y_i - p_i) x_i`` is at most that. Too small a ``C`` tempers
        the rows with large residuals most, which inflates the coefficients (on a
        4-dimensional synthetic federation, ``C = 1`` moved the population means by up
        to 0.27 even without noise; ``C = 2`` by 0.05 at epsilon 2); too large a ``C``
        adds noise for nothing.
    accountant : {"rdp", "pld"}
        ``dp-accounting``'s accountant (:data:`ACCOUNTANTS`).
    """

    epsilon: float
    delta: float = 1e-5
    clip: float | None = None
    accountant: str = "rdp"

    def clip_for(self, z_dim: int) -> float:
        """The clipping bound for sites of dimension ``z_dim`` (``clip`` or ``sqrt(J)``)."""
        return self.clip if self.clip is not None else math.sqrt(z_dim)

    def __post_init__(self):
        object.__setattr__(self, "epsilon", _positive_number("dp epsilon", self.epsilon))
        if self.clip is not None:
            object.__setattr__(self, "clip", _positive_number("dp clip", self.clip))
        if (
            isinstance(self.delta, bool)
            or not isinstance(self.delta, int | float | np.integer | np.floating)
            or not 0.0 < float(self.delta) < 1.0
        ):
            raise ValueError(f"dp delta must be a number in (0, 1), got {self.delta!r}")
        object.__setattr__(self, "delta", float(self.delta))
        if self.accountant not in ACCOUNTANTS:
            raise ValueError(f"dp accountant must be one of {ACCOUNTANTS}, got {self.accountant!r}")


# --------------------------------------------------------------------------- accounting


def _accountant(kind: str):
    from dp_accounting import pld, rdp

    return rdp.RdpAccountant() if kind == "rdp" else pld.PLDAccountant()


def _event(noise_multiplier: float, rounds: int):
    import dp_accounting

    return dp_accounting.SelfComposedDpEvent(
        dp_accounting.GaussianDpEvent(float(noise_multiplier)), int(rounds)
    )


def epsilon_spent(
    noise_multiplier: float, rounds: int, delta: float, accountant: str = "rdp"
) -> float:
    """Epsilon at ``delta`` of ``rounds`` Gaussian mechanisms of noise multiplier
    ``noise_multiplier`` (sensitivity 1), composed by ``dp-accounting``'s accountant."""
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"accountant must be one of {ACCOUNTANTS}, got {accountant!r}")
    if rounds <= 0:
        return 0.0
    acc = _accountant(accountant)
    acc.compose(_event(noise_multiplier, rounds))
    return float(acc.get_epsilon(delta))


def calibrate_noise(epsilon: float, delta: float, rounds: int, accountant: str = "rdp") -> float:
    """The smallest noise multiplier whose ``rounds``-fold composition spends at most
    ``(epsilon, delta)``.

    ``dp_accounting.calibrate_dp_mechanism`` (Brent's method over the accountant's
    epsilon) finds it to within ``1e-4``; the result is then checked against the
    accountant and raised until its epsilon is within the budget, so the returned
    multiplier never overspends.
    """
    import dp_accounting

    if isinstance(rounds, bool) or not isinstance(rounds, int | np.integer) or rounds < 1:
        raise ValueError(f"rounds must be a positive integer, got {rounds!r}")
    sigma = float(
        dp_accounting.calibrate_dp_mechanism(
            lambda: _accountant(accountant),
            lambda s: _event(s, rounds),
            float(epsilon),
            float(delta),
            bracket_interval=dp_accounting.LowerEndpointAndGuess(1e-3, 1.0),
            tol=1e-4,
        )
    )
    for _ in range(1000):
        if epsilon_spent(sigma, rounds, delta, accountant) <= epsilon:
            return sigma
        sigma *= 1.0 + 1e-4
    raise RuntimeError(f"could not calibrate the noise to epsilon={epsilon}, delta={delta}")


# --------------------------------------------------------------------------- the mechanism


def vech_dim(J: int) -> int:
    """Length of a row's released vector ``(g, vech H)``: ``J + J (J + 1) / 2``."""
    return J + J * (J + 1) // 2


def row_statistics(pop: Population, points: Array, x: Array, y: Array, mask: Array) -> Array:
    r"""Each row's ``v_i = (E_q[∇ℓ_i], vech E_q[-∇²ℓ_i])``, ``[n, J + J (J + 1) / 2]``.

    ``points [S, J]`` are equally weighted points of the public ``q``; the
    expectations are their means. A point where a row's derivatives are not finite
    counts as zero for that row (still a function of that row alone). Padded rows
    (``mask`` False) are exactly zero. The points are scanned one at a time (memory
    ``n x len(v)``, not ``S x n x J x J``).
    """
    J = points.shape[1]
    iu = np.triu_indices(J)
    model = pop.model

    def row_ll(z, xi, yi):
        e, u_s = pop.split(z)
        ll = model.pointwise_loglik_values(pop.theta_dict(e), pop.phi_dict(u_s), xi[None], yi[None])
        return ll[0]

    def one_row(z, xi, yi):
        _, g, h = value_grad_hessian(lambda v: row_ll(v, xi, yi), z)
        v = jnp.concatenate([g, -h[iu]])
        return jnp.where(jnp.all(jnp.isfinite(v)), v, 0.0)

    def step(total, z):
        return total + jax.vmap(one_row, in_axes=(None, 0, 0))(z, x, y), None

    zero = jnp.zeros((y.shape[0], vech_dim(J)), dtype=points.dtype)
    total, _ = jax.lax.scan(step, zero, points)
    return jnp.where(mask[:, None], total / points.shape[0], 0.0)


def clip_rows(v: Array, clip: float | Array) -> Array:
    """Rows of ``v [n, d]`` scaled down to Euclidean norm at most ``clip``."""
    # scaled by the largest entry first: no overflow of the squares
    big = jnp.max(jnp.abs(v), axis=1, keepdims=True)
    big = jnp.where(big > 0, big, 1.0)
    norms = big[:, 0] * jnp.sqrt(jnp.sum((v / big) ** 2, axis=1))
    scale = jnp.minimum(1.0, clip / jnp.maximum(norms, jnp.finfo(v.dtype).tiny))
    return v * scale[:, None]


def noisy_site(rng_key: Array, total: Array, mean: Array, noise_std: float | Array):
    """The site from a clipped sum ``total = (g, vech H)``: Gaussian noise of sd
    ``noise_std`` on every entry, ``H`` mirrored and projected to the PSD cone,
    ``(Λ, η) = (PSD(H), PSD(H) m_q + g)`` around the public mean ``m_q``."""
    J = mean.shape[0]
    noisy = total + noise_std * jax.random.normal(rng_key, total.shape, total.dtype)
    iu = np.triu_indices(J)
    upper = jnp.zeros((J, J), total.dtype).at[iu].set(noisy[J:])
    h = upper + upper.T - jnp.diag(jnp.diagonal(upper))
    prec = gf.psd_part(h)
    return GaussianFactor(prec, prec @ mean + noisy[:J])


def noise_aware(site: GaussianFactor, noise_var: float | Array) -> GaussianFactor:
    r"""The site with the noise of its linear term integrated out.

    A site ``N(ẑ | z, Λ^{-1})`` (``ẑ = Λ^{-1} η``) whose ``η`` carries Gaussian noise of
    variance ``s² I`` is, as a likelihood of ``z``, ``N(ẑ | z, Λ^{-1} + s² Λ^{-2})``: in
    the eigenbasis of ``Λ`` each precision ``λ`` becomes ``λ² / (λ + s²)`` with the same
    mean (``η`` scaled by ``λ / (λ + s²)``); directions of zero precision keep none and
    lose their (pure noise) linear term. A deterministic function of the released site
    and the public noise scale: post-processing, no privacy cost. Without it the server
    would read the noise in the site means as spread between clients (the population
    scales inflated). The noise of ``Λ`` itself is not accounted for.
    """
    lam, vecs = jnp.linalg.eigh(0.5 * (site.precision + site.precision.T))
    lam = jnp.maximum(lam, 0.0)
    eta = vecs.T @ site.shift
    keep = lam > 1e-12 * jnp.maximum(jnp.max(lam), 1.0)
    factor = jnp.where(keep, lam / (lam + noise_var), 0.0)
    return GaussianFactor((vecs * (lam * factor)) @ vecs.T, vecs @ (eta * factor))


class DPClientState(NamedTuple):
    raw: GaussianFactor  # the client's damped noisy site (before noise_aware)
    site: GaussianFactor  # the site it sent last, noise_aware(raw): released, hence public
    noise_var: Array  # variance of raw's linear-term noise, in units of (sigma C)^2
    sent: Array  # how many sites it has sent


def default_points(J: int) -> int:
    """Points of the public ``q`` the expectations are taken on: ``max(64, 16 J)``."""
    return max(64, 16 * J)


@functools.lru_cache(maxsize=8)
def _pinned_server(server_update):
    """The EP server step with its damping kept at 1: the clients damp their own sites
    (so a client's ``q`` is exactly the server's ``cavity x site``), and noise must not
    be read as oscillation (which halves the server's rate)."""

    def update(rng_key, state, messages, accept):
        new, info = server_update(rng_key, state, messages, accept)
        return new._replace(damping=jnp.ones_like(new.damping)), info

    return update


@functools.lru_cache(maxsize=32)
def private_algorithm(
    model: HierarchicalModel,
    algorithm: Algorithm,
    noise_multiplier: float,
    clip: float,
    damping: float = 1.0,
    points: int | None = None,
    noise_aware_sites: bool = True,
) -> Algorithm:
    """EP over client effects with the DP client step (see the module docstring).

    Parameters
    ----------
    model : HierarchicalModel
    algorithm : Algorithm
        :func:`bayes_pfl.algorithms.effect_ep.build`'s algorithm, built with
        ``damping=1``: its server and broadcast are kept, its client step replaced.
    noise_multiplier : float
        ``sigma``: the noise sd is ``sigma * clip`` on every released entry.
    clip : float
        ``C``, the bound on each row's ``(g_i, vech H_i)``.
    damping : float
        The client's own damping of its site after the first round, in ``(0, 1]``:
        ``t = t_prev^{1 - rate} t_new^{rate}`` (post-processing). Below 1 it averages the
        noise of successive rounds (stationary variance ``rate / (2 - rate)`` of one
        round's).
    points : int, optional
        Points of ``q`` the expectations use (default :func:`default_points`).
    noise_aware_sites : bool
        Send :func:`noise_aware` sites (default); ``False`` sends the raw noisy sites
        (for comparison).

    Returns
    -------
    Algorithm
        Same broadcast, messages (:class:`~bayes_pfl.algorithms.effect_ep.EffectMessage`)
        and client info types; the client state is :class:`DPClientState`.
    """
    if not 0.0 < damping <= 1.0:
        raise ValueError(f"damping must be in (0, 1], got {damping!r}")
    pop = gaussian_population(model)
    J = pop.z_dim
    n_points = points or default_points(J)
    half = jax.random.normal(jax.random.key(20261205), ((n_points + 1) // 2, J))
    base = jnp.concatenate([half, -half])
    chol_b = jnp.linalg.cholesky(base.T @ base / base.shape[0])
    base = jax.scipy.linalg.solve_triangular(chol_b, base.T, lower=True).T
    noise_std = float(noise_multiplier) * float(clip)

    def client_init(rng_key: Array, data) -> DPClientState:
        del rng_key
        dtype = jnp.asarray(data[0]).dtype
        flat = gf.flat(J, dtype=dtype)
        return DPClientState(flat, flat, jnp.zeros((), dtype), jnp.zeros((), jnp.int32))

    def client_update(rng_key: Array, bcast, state: DPClientState, data):
        x, y, mask = data
        cav = bcast.cavity
        # q = cavity x previous site: public (the server's broadcast and what this client
        # already released); the cavity alone when that is not proper
        m_q, cov_q = gf.to_moments(gf.multiply(cav, state.site))
        chol = jnp.linalg.cholesky(0.5 * (cov_q + cov_q.T))
        m_c, cov_c = gf.to_moments(cav)
        good = jnp.all(jnp.isfinite(chol)) & jnp.all(jnp.isfinite(m_q))
        m_q = jnp.where(good, m_q, m_c)
        chol = jnp.where(good, chol, jnp.linalg.cholesky(0.5 * (cov_c + cov_c.T)))
        pts = m_q + base.astype(m_q.dtype) @ chol.T
        v = clip_rows(row_statistics(pop, pts, x, y, mask), clip)
        new = noisy_site(rng_key, jnp.sum(v, axis=0), m_q, noise_std)
        rate = jnp.where(state.sent == 0, 1.0, damping)
        raw = gf.damp(state.raw, new, rate)
        # the damped site is an average of rounds: its noise variance (linear term)
        var = (1.0 - rate) ** 2 * state.noise_var + rate**2
        site = noise_aware(raw, var * noise_std**2) if noise_aware_sites else raw
        ok = jnp.all(jnp.isfinite(site.precision)) & jnp.all(jnp.isfinite(site.shift))
        new_state = jax.tree.map(
            lambda a, b: jnp.where(ok, a, b),
            DPClientState(raw, site, var.astype(state.noise_var.dtype), state.sent + 1),
            state,
        )
        # the client's info is data-independent (it may be reported to the server)
        info = EffectClientInfo(
            ok,
            jnp.asarray(True),
            jnp.zeros((), jnp.int32),
            jnp.asarray(float(n_points), m_q.dtype),
            jnp.asarray(False),
        )
        # no row count: an exact count is not private under record-level DP (adding a row
        # changes it), so a private client declares none (and the precision cap, which
        # reads it, is refused with dp)
        n_rows = jnp.zeros((), site.shift.dtype)
        return new_state, EffectMessage(site, ok, n_rows), info

    return algorithm._replace(
        client_init=client_init,
        client_update=client_update,
        server_update=_pinned_server(algorithm.server_update),
        name=algorithm.name + "-dp",
    )


@functools.cache
def _vmapped(client_update):
    return jax.jit(jax.vmap(client_update))


def local_sites(algorithm: Algorithm, server_state, data, *, seed: int = 0) -> GaussianFactor:
    """Each client's own noise-free EP site against the fit's final (public) cavity.

    What a client computes locally after a DP fit to personalize from (the proposal of
    :func:`bayes_pfl.algorithms.effect_ep.personalize_client`, whose exact likelihood
    corrects it): never sent, so not privatized. The noisy site a client sent can sit
    far from its likelihood and make a poor proposal. ``algorithm`` is the non-private
    :func:`~bayes_pfl.algorithms.effect_ep.build` whose broadcast the fit used; clients
    whose local step fails keep the server's site.
    """
    from bayes_pfl.algorithms import select_clients

    arrays = tuple(jnp.asarray(a) for a in data)
    k = arrays[0].shape[0]
    keys = jax.random.split(jax.random.key(seed + 7), k)
    states = jax.vmap(algorithm.client_init)(keys, arrays)
    bcast = algorithm.broadcast(server_state)
    _, msg, _ = _vmapped(algorithm.client_update)(keys, bcast, states, arrays)
    return select_clients(msg.ok, msg.site, server_state.sites)


def audit_epsilon(
    with_row: np.ndarray, without_row: np.ndarray, delta: float, *, alpha: float = 0.05
) -> float:
    """Empirical lower bound on epsilon from samples of a scalar released statistic.

    ``with_row``/``without_row``: the statistic over independent noise draws on two
    neighbouring datasets. For every threshold test ``S`` (above or below each of 99
    quantiles), ``(epsilon, delta)``-DP requires ``P_in(S) <= e^eps P_out(S) + delta``
    (and the same with the datasets swapped); with one-sided Clopper-Pearson bounds at
    level ``alpha`` on both probabilities, ``log((lower P_in(S) - delta) / upper
    P_out(S))`` is a ``1 - alpha`` lower bound on the epsilon of the mechanism
    (Jagielski, Ullman & Oprea 2020, auditing DP-SGD). A claimed epsilon below it is
    refuted; the choice of the statistic (and threshold) decides the bound's power.
    """
    from scipy import stats

    best = 0.0
    for a, b in ((with_row, without_row), (without_row, with_row)):
        a, b = np.asarray(a, float), np.asarray(b, float)
        n_a, n_b = len(a), len(b)
        ts = np.quantile(np.concatenate([a, b]), np.linspace(0.01, 0.99, 99))
        for t in ts:
            for k_a, k_b in ((np.sum(a > t), np.sum(b > t)), (np.sum(a <= t), np.sum(b <= t))):
                k_a, k_b = int(k_a), int(k_b)
                lo_a = stats.beta.ppf(alpha / 2, k_a, n_a - k_a + 1) if k_a else 0.0
                hi_b = stats.beta.ppf(1 - alpha / 2, k_b + 1, n_b - k_b) if k_b < n_b else 1.0
                if lo_a - delta > 0 and hi_b > 0:
                    best = max(best, math.log((lo_a - delta) / hi_b))
    return best


def privacy_record(
    budget: DPBudget,
    noise_multiplier: float,
    *,
    clip: float,
    rounds_planned: int,
    rounds_run: int,
    labels,
    participating,
) -> dict[str, Any]:
    """What a DP fit records (``fit.info["privacy"]``, run.json): the budget, the noise,
    and the ``(epsilon, delta)`` each client spent over the rounds that ran (0 for a
    client with no rows, which sent nothing)."""
    spent = epsilon_spent(noise_multiplier, rounds_run, budget.delta, budget.accountant)
    if spent > budget.epsilon * (1.0 + 1e-9):
        raise RuntimeError(
            f"privacy budget exceeded: spent epsilon {spent} > budget {budget.epsilon}"
        )
    per_client = {
        str(lab): {
            "epsilon": spent if part else 0.0,
            "delta": budget.delta if part and rounds_run else 0.0,
        }
        for lab, part in zip(labels, participating, strict=True)
    }
    return {
        "epsilon_budget": budget.epsilon,
        "delta": budget.delta,
        "clip": float(clip),
        "accountant": budget.accountant,
        "unit": "one row of a client's data (add/remove one row)",
        "mechanism": "Gaussian, per-row clipped natural-gradient site statistics (DP-PVI)",
        "noise_multiplier": float(noise_multiplier),
        "rounds_planned": int(rounds_planned),
        "rounds_run": int(rounds_run),
        "epsilon_spent": spent,
        "delta_spent": budget.delta if rounds_run else 0.0,
        "spent": per_client,
    }
