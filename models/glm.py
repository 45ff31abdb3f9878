"""Hierarchical generalized linear models on any features.

Every model here has the same parameter names, so that synthetic truths,
shrinkage tables and comparisons line up:

* ``mu`` (shape ``[D]``): population mean of the varying coefficients,
* ``tau`` (shape ``[D]``): population sd of the varying coefficients,
* ``beta`` (shape ``[P]``): shared slopes (only when ``varying="intercept"``),
* ``sigma_y``: noise scale (only for ``family="normal"``),
* ``W`` (shape ``[M, D]``): the effects of the client covariates ``z_k`` (metadata) on
  the client coefficients' mean (only with ``client_covariates``),
* per client ``b`` (shape ``[D]``): the client's coefficients; with the
  non-centered parameterization the client samples ``b_raw ~ N(0, 1)`` and
  ``b = mu + tau * b_raw`` is a deterministic site.

With client covariates the population of client ``k`` is
``b_k ~ N(mu + z_k W, diag(tau^2))``.

``D = 1`` with ``varying="intercept"`` (``b[0]`` is the client's intercept and
``eta = b[0] + x @ beta``), ``D = 1 + P`` with ``varying="slopes"``
(``eta = b[0] + x @ b[1:]``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

from bayes_pfl.spec import HierarchicalModel, ModelSpecError

from .covariates import (
    GH_NODES,
    IntegratedOutcome,
    ObservedCovariates,
    latent_features,
    linear_moments,
    noise_columns,
)

FAMILIES = ("normal", "bernoulli", "poisson")
VARYING = ("intercept", "slopes")

__all__ = [
    "FAMILIES",
    "INTERCEPT",
    "VARYING",
    "Terms",
    "hierarchical_glm",
    "linear",
    "logistic",
    "poisson",
]


INTERCEPT = "Intercept"
"""The name of the intercept term in :class:`Terms` and in coefficient labels."""


@dataclass(frozen=True)
class Terms:
    """Which coefficients of a GLM vary by client and which have a common effect.

    Parameters
    ----------
    features : sequence of str
        The feature columns of ``x``, in order (no intercept column: the
        intercept is the term :data:`INTERCEPT`).
    varying : sequence of str
        Terms (``"Intercept"`` or feature names) whose coefficient varies by
        client: ``b[j] = mu[j] + tau[j] * z`` (or ``b[j] ~ N(mu[j], tau[j])``).
        The intercept, if varying, comes first; features follow in column order.
    common : sequence of str
        Terms with a common (population) effect. A varying term that is also
        common has a population mean ``mu``; a varying term that is not common
        varies around 0 (lme4's ``y ~ 1 + (0 + x | g)``); a common term that
        does not vary is a shared coefficient in ``beta``.

    Every feature must be in ``varying`` or ``common``; the lme4 formula
    ``y ~ 1 + age + bmi + (1 + age | g)`` is ``Terms(("age", "bmi"),
    varying=("Intercept", "age"), common=("Intercept", "age", "bmi"))``.
    """

    features: tuple[str, ...]
    varying: tuple[str, ...]
    common: tuple[str, ...]

    def __post_init__(self):
        feats = tuple(map(str, self.features))
        known = (INTERCEPT, *feats)
        if len(set(feats)) != len(feats) or INTERCEPT in feats:
            raise ModelSpecError(f"feature names must be distinct and not {INTERCEPT!r}: {feats}")
        order = {t: i for i, t in enumerate(known)}
        for kind in ("varying", "common"):
            terms = tuple(map(str, getattr(self, kind)))
            unknown = [t for t in terms if t not in order]
            if unknown:
                raise ModelSpecError(
                    f"{kind} term(s) {unknown} are not among the features {list(feats)} "
                    f"or {INTERCEPT!r}"
                )
            object.__setattr__(self, kind, tuple(sorted(set(terms), key=order.__getitem__)))
        object.__setattr__(self, "features", feats)
        if not self.varying:
            raise ModelSpecError("a hierarchical GLM needs at least one term that varies by client")
        unused = [f for f in feats if f not in self.varying and f not in self.common]
        if unused:
            raise ModelSpecError(f"feature(s) {unused} are in no term (neither varying nor common)")

    @classmethod
    def preset(cls, varying: str, features: Sequence[str]) -> Terms:
        """The zoo's presets: ``"intercept"`` (only the intercept varies) or
        ``"slopes"`` (every coefficient varies)."""
        feats = tuple(map(str, features))
        every = (INTERCEPT, *feats)
        return cls(feats, varying=every if varying == "slopes" else (INTERCEPT,), common=every)

    @property
    def mean_terms(self) -> tuple[str, ...]:
        """Varying terms with a population mean (``mu``'s labels)."""
        return tuple(t for t in self.varying if t in self.common)

    @property
    def shared_terms(self) -> tuple[str, ...]:
        """Common terms that do not vary (``beta``'s labels)."""
        return tuple(t for t in self.common if t not in self.varying)


def hierarchical_glm(
    family: str,
    n_features: int | None = None,
    *,
    varying: str | Terms = "intercept",
    centered: bool = False,
    coef_scale: float = 2.5,
    tau_scale: float = 1.0,
    sigma_scale: float = 1.0,
    feature_names: Sequence[str] | None = None,
    name: str | None = None,
    client_covariates: Sequence[str] | int | None = None,
    missing: Sequence[str | int] = (),
    noise_sd: Mapping[str | int, float] | None = None,
    missing_effects: bool = False,
    sigma_by_client: bool = False,
    covariate_scale: float = 5.0,
    quadrature_nodes: int = GH_NODES,
    covariate_regression: bool = False,
    covariate_terms: Sequence[str] | None = None,
) -> HierarchicalModel:
    """A hierarchical GLM with client-varying intercepts (and optionally slopes).

    Parameters
    ----------
    family : {"normal", "bernoulli", "poisson"}
        Likelihood: Normal with identity link, Bernoulli with logit link,
        Poisson with log link.
    n_features : int, optional
        Number of feature columns ``P`` (or give ``feature_names``, or
        ``varying`` as :class:`Terms`).
    varying : {"intercept", "slopes"} or Terms
        Which coefficients vary by client. ``"slopes"`` makes every coefficient
        client-specific (``D = 1 + P``); :class:`Terms` chooses term by term (what
        a formula such as ``y ~ age + bmi + (1 + age | hospital)`` gives).
    centered : bool
        Centered (``b ~ N(mu, tau)``) or non-centered (``b_raw ~ N(0, 1)``)
        parameterization; non-centered suits small clients.
    coef_scale, tau_scale, sigma_scale : float
        Prior scales: ``mu, beta ~ N(0, coef_scale)``, ``tau ~ HalfNormal(tau_scale)``,
        ``sigma_y ~ HalfNormal(sigma_scale)``.
    feature_names : sequence of str, optional
        Names of the feature columns: the coefficients' labels (``model.coords``)
        in outputs. Default ``x0, x1, ...``.
    client_covariates : sequence of str or int, optional
        Client-level covariates (metadata; e.g. the columns of
        :attr:`bayes_pfl.data.FederatedData.covariate_names`, or their number ``M``,
        named ``z0, z1, ...``): the client coefficients' population mean becomes
        ``mu + z_k W`` with ``W [M, D] ~ N(0, coef_scale)``, so a client's metadata
        says where it sits in the population (a new client's cold start included).
        ``client_prior(phi, z)`` then takes the client's ``z [M]``.
    covariate_terms : sequence of str, optional
        The varying terms (names in ``model.coords["b"]``, e.g. ``["Intercept"]``) whose
        population mean the client covariates shift: ``W [M, len(covariate_terms)]``, the
        other terms' mean is ``mu`` for every client. Default: every varying term. Where
        the metadata say where a client's baseline sits but not how its features act
        (a device type, a region), ``["Intercept"]`` keeps the slopes' population free of
        ``W``: in ``benchmarks/systemic.py`` metadata on every term moved the population
        slope by +0.066 (13% of it) against the same model without metadata.
    missing : sequence of str or int
        Features (names or column positions) whose values may be missing (``NaN`` in
        ``x``, :meth:`FederatedData.from_pandas(..., missing="keep")
        <bayes_pfl.data.FederatedData.from_pandas>`). Each client gets a distribution of
        the feature, ``x_j ~ N(m_kj, sd_kj²)``, with ``(x_m, x_lsd) = (m_k, log sd_k)``
        client effects pooled by ``x_m ~ N(x_mu, x_tau)``, ``x_lsd ~ N(x_lsd_mu,
        x_lsd_tau)``, and missing values are integrated out of the likelihood
        (:mod:`bayes_pfl.models.covariates`), missing at random.
    noise_sd : mapping of str or int to float or str, optional
        Features measured with a known noise sd (errors in variables, ``0``: exact), in the
        units of ``x``: the true value is a latent covariate with the client's distribution
        as for ``missing``, which corrects the attenuation of its slope. A value is the sd
        (the same for every client) or the name of a column of ``x`` that holds each
        client's own sd (``{"sensor": "sensor_sd"}``: the client's device, declared in its
        data; one value per client, ``NaN`` allowed where the feature is missing). Such a
        column is no term of the model (``varying`` presets only).
    missing_effects : bool
        Informative missingness: a client effect ``g_j`` of ``[x_j missing]`` on the linear
        predictor for each feature in ``missing`` (pooled, ``g ~ N(g_mu, g_tau)``), as in
        :func:`bayes_pfl.models.heart.missing_logistic`.
    sigma_by_client : bool
        ``family="normal"``: a per-client noise scale, ``log sigma_y_k ~ N(log_sigma_mu,
        log_sigma_tau)`` (client effect ``log_sigma_y``), instead of one ``sigma_y``.
    covariate_scale : float
        Prior scale of the covariate distributions, for features on a unit scale
        (standardized): ``x_mu ~ N(0, s)``, ``x_tau ~ HalfNormal(s / 5)``,
        ``x_lsd_mu ~ N(log(s / 5), 1)``, ``x_lsd_tau ~ HalfNormal(0.5)``.
    covariate_regression : bool
        The modelled features' client distributions depend on the row's exactly measured
        features: ``x_j ~ N(m_kj + Σ_l c_jl x_l, sd_kj²)`` over the features ``l`` that are
        neither modelled nor noise columns, with ``c = x_coef [q, E] ~ N(0, 1)`` shared by
        the federation. Without it the features of a row are independent given the
        client, and a modelled feature correlated with an exact one gets a biased slope:
        the gaps are filled, and noisy values corrected, without what the correlated
        feature says about them (``benchmarks/systemic.py``).
    quadrature_nodes : int
        Gauss-Hermite nodes of a Bernoulli or Poisson row's integral over its missing or
        noisy values (:data:`~bayes_pfl.models.covariates.GH_NODES`, 32, by default; the
        cost of a row is about proportional). Accuracy: :data:`GH_NODES`'s notes.

    Examples
    --------
    >>> m = hierarchical_glm("bernoulli", 3, varying="slopes")
    >>> m.phi_dim, m.theta_dim
    (8, 4)
    >>> m = hierarchical_glm("normal", varying=Terms(("age", "bmi"),
    ...     varying=("Intercept", "age"), common=("Intercept", "age", "bmi")))
    >>> m.coords["b"], m.coords["beta"]
    (('Intercept', 'age'), ('bmi',))
    >>> m = hierarchical_glm("bernoulli", 1, varying="slopes", client_covariates=["north"])
    >>> m.phi_space.names, m.client_covariates
    (('mu', 'tau', 'W'), ('north',))
    >>> m = hierarchical_glm("bernoulli", 2, missing=["x1"])
    >>> m.theta_space.names, m.coords["x_m"]
    (('b_raw', 'x_raw'), ('x1',))
    """
    if family not in FAMILIES:
        raise ModelSpecError(f"unknown family {family!r}; choose one of {FAMILIES}")
    aux = noise_columns(noise_sd)
    if isinstance(varying, Terms):
        if aux:
            raise ModelSpecError(
                f"noise-sd column(s) {list(aux)} with formula terms: give the noise sd as a "
                "number, or use varying='intercept' / 'slopes' with feature_names"
            )
        terms = varying
        features = terms.features
    else:
        if varying not in VARYING:
            raise ModelSpecError(f"unknown varying={varying!r}; choose one of {VARYING}")
        if feature_names is None:
            if n_features is None:
                raise ModelSpecError("give n_features or feature_names")
            if int(n_features) < 0:
                raise ModelSpecError("n_features must be >= 0")
            feature_names = [f"x{j}" for j in range(int(n_features))]
        features = tuple(map(str, feature_names))
        # a noise-sd column is data about another feature's measurement, not a term
        terms = Terms.preset(varying, [f for f in features if f not in aux])
    p = len(features)
    if n_features is not None and int(n_features) != p:
        raise ModelSpecError(f"n_features={n_features} but {p} feature name(s): {features}")
    d = len(terms.varying)
    col = {f: j for j, f in enumerate(features)}
    v_int = terms.varying[0] == INTERCEPT
    v_cols = np.array([col[t] for t in terms.varying if t != INTERCEPT], dtype=int)
    s_int = INTERCEPT in terms.shared_terms
    s_cols = np.array([col[t] for t in terms.shared_terms if t != INTERCEPT], dtype=int)
    d_mu = len(terms.mean_terms)
    covariates = _covariate_names(client_covariates)
    w_terms, w_place = _covariate_terms(covariates, covariate_terms, terms.varying)
    cov = latent_features(features, missing, noise_sd, missing_effects)
    if (
        isinstance(quadrature_nodes, bool)
        or int(quadrature_nodes) != quadrature_nodes
        or (quadrature_nodes < 1)
    ):
        raise ModelSpecError(f"quadrature_nodes must be an integer >= 1, got {quadrature_nodes!r}")
    quadrature_nodes = int(quadrature_nodes)
    if sigma_by_client and family != "normal":
        raise ModelSpecError(f"sigma_by_client needs family='normal', not {family!r}")
    q, r = len(cov.names), len(cov.effect_names)
    exact_cols = np.array([j for j in range(p) if j not in cov.special_columns], dtype=int)
    if covariate_regression and not (q and exact_cols.size):
        raise ModelSpecError(
            "covariate_regression=True needs features in missing= or noise_sd= and at least "
            "one exactly measured feature to condition them on"
        )
    n_exact = exact_cols.size if covariate_regression else 0
    # mu (the means of the varying terms that have one) placed into the D varying terms
    place = None
    if d_mu < d:
        place = np.zeros((d_mu, d))
        place[np.arange(d_mu), [terms.varying.index(t) for t in terms.mean_terms]] = 1.0

    def columns(x, idx):
        return x if np.array_equal(idx, np.arange(x.shape[-1])) else x[..., idx]

    def hyperprior():
        if d_mu:
            numpyro.sample("mu", dist.Normal(0.0, coef_scale).expand([d_mu]).to_event(1))
        numpyro.sample("tau", dist.HalfNormal(tau_scale).expand([d]).to_event(1))
        if terms.shared_terms:
            numpyro.sample(
                "beta",
                dist.Normal(0.0, coef_scale).expand([len(terms.shared_terms)]).to_event(1),
            )
        if family == "normal" and not sigma_by_client:
            numpyro.sample("sigma_y", dist.HalfNormal(sigma_scale))
        if covariates is not None:
            numpyro.sample(
                "W",
                dist.Normal(0.0, coef_scale).expand([len(covariates), len(w_terms)]).to_event(2),
            )
        if q:
            numpyro.sample("x_mu", dist.Normal(0.0, covariate_scale).expand([q]).to_event(1))
            numpyro.sample("x_tau", dist.HalfNormal(covariate_scale / 5).expand([q]).to_event(1))
            numpyro.sample(
                "x_lsd_mu",
                dist.Normal(float(np.log(covariate_scale / 5)), 1.0).expand([q]).to_event(1),
            )
            numpyro.sample("x_lsd_tau", dist.HalfNormal(0.5).expand([q]).to_event(1))
            if n_exact:
                numpyro.sample("x_coef", dist.Normal(0.0, 1.0).expand([q, n_exact]).to_event(2))
        if r:
            numpyro.sample("g_mu", dist.Normal(0.0, coef_scale).expand([r]).to_event(1))
            numpyro.sample("g_tau", dist.HalfNormal(tau_scale).expand([r]).to_event(1))
        if sigma_by_client:
            numpyro.sample("log_sigma_mu", dist.Normal(float(np.log(sigma_scale)), 1.0))
            numpyro.sample("log_sigma_tau", dist.HalfNormal(0.5))

    def population_mean(phi):
        if not d_mu:
            return jnp.zeros(d)
        return phi["mu"] if place is None else phi["mu"] @ place

    def client_prior(phi, z=None):
        mean = population_mean(phi)
        if covariates is not None:
            shift = z @ phi["W"]
            mean = mean + (shift if w_place is None else shift @ w_place)
        if centered:
            numpyro.sample("b", dist.Normal(mean, phi["tau"]).to_event(1))
        else:
            b_raw = numpyro.sample("b_raw", dist.Normal(0.0, 1.0).expand([d]).to_event(1))
            numpyro.deterministic("b", mean + phi["tau"] * b_raw)
        if q and centered:
            numpyro.sample("x_m", dist.Normal(phi["x_mu"], phi["x_tau"]).to_event(1))
            numpyro.sample("x_lsd", dist.Normal(phi["x_lsd_mu"], phi["x_lsd_tau"]).to_event(1))
        elif q:  # one standard Normal site for both, (m, log sd) per feature
            raw = numpyro.sample("x_raw", dist.Normal(0.0, 1.0).expand([2 * q]).to_event(1))
            numpyro.deterministic("x_m", phi["x_mu"] + phi["x_tau"] * raw[..., :q])
            numpyro.deterministic("x_lsd", phi["x_lsd_mu"] + phi["x_lsd_tau"] * raw[..., q:])
        if r:
            _pooled("g", phi["g_mu"], phi["g_tau"], (r,), centered)
        if sigma_by_client:
            _pooled("log_sigma_y", phi["log_sigma_mu"], phi["log_sigma_tau"], (), centered)

    def coefficients(theta, phi):
        """The coefficient of every feature column, ``[P]`` (varying or shared)."""
        coef = jnp.zeros(p)
        if v_cols.size:
            coef = coef.at[v_cols].set(theta["b"][int(v_int) :])
        if s_cols.size:
            coef = coef.at[s_cols].set(phi["beta"][int(s_int) :])
        return coef

    def likelihood(theta, phi, x, y):
        sigma = None
        if family == "normal":
            sigma = jnp.exp(theta["log_sigma_y"]) if sigma_by_client else phi["sigma_y"]
        if not q:
            outcome(linear_predictor(theta, phi, x), sigma, y)
            return
        x = jnp.asarray(x)
        xf = x[..., cov.columns]
        miss = jnp.isnan(xf)
        x_obs = jnp.where(miss, 0.0, xf)
        m, sd = theta["x_m"], jnp.exp(theta["x_lsd"])
        if n_exact:  # each row's mean of the modelled features given its exact ones, [n, q]
            m = m + x[..., exact_cols] @ phi["x_coef"].T
        noise = cov.client_noise(x)
        coef = coefficients(theta, phi)[cov.columns]
        shift, eta_var = linear_moments(x_obs, miss, m, sd, noise, coef)
        # the GLM is linear in x: the modelled columns enter through E[x | x̃]
        eta = linear_predictor(theta, phi, x.at[..., cov.columns].set(0.0)) + shift
        if r:
            eta = eta + jnp.where(miss[..., cov.effect_positions], 1.0, 0.0) @ theta["g"]
        outcome_dist = IntegratedOutcome(family, eta, eta_var, sigma, n_nodes=quadrature_nodes)
        numpyro.sample("y", outcome_dist, obs=y)
        scale = jnp.sqrt(sd**2 + noise**2)
        numpyro.sample("x_obs", ObservedCovariates(m, scale, miss), obs=x_obs)

    def outcome(eta, sigma, y):
        if family == "normal":
            obs = dist.Normal(eta, sigma)
        elif family == "bernoulli":
            obs = dist.Bernoulli(logits=eta)
        else:
            obs = dist.Poisson(jnp.exp(eta))
        numpyro.sample("y", obs, obs=y)

    def linear_predictor(theta, phi, x):
        b = theta["b"]
        eta = b[0] if v_int else 0.0
        if v_cols.size:
            eta = eta + columns(x, v_cols) @ b[int(v_int) :]
        if terms.shared_terms:
            beta = phi["beta"]
            if s_int:
                eta = eta + beta[0]
            if s_cols.size:
                eta = eta + columns(x, s_cols) @ beta[int(s_int) :]
        return jnp.broadcast_to(eta, x.shape[:-1])

    param = "centered" if centered else "noncentered"
    if isinstance(varying, Terms):
        shape = f"varying {', '.join(terms.varying)}"
        default_name = f"{family}_terms_{param}"
    else:
        shape = f"client-varying {varying}"
        default_name = f"{family}_{varying}_{param}"
    coords = {"b": terms.varying, "tau": terms.varying}
    if d_mu:
        coords["mu"] = terms.mean_terms
    if terms.shared_terms:
        coords["beta"] = terms.shared_terms
    if not centered:
        coords["b_raw"] = terms.varying
    coords.update(cov.coords(centered))
    return HierarchicalModel(
        hyperprior,
        client_prior,
        likelihood,
        name=name or default_name,
        n_features=p,
        family=family,
        coords=coords,
        description=f"Hierarchical {family} GLM, {shape}, {param} parameterization"
        + (f", client covariates {', '.join(covariates)}" if covariates else "")
        + (f" (on {', '.join(w_terms)})" if w_place is not None else "")
        + cov.description()
        + (", noise sd by client." if sigma_by_client else "."),
        client_covariates=covariates,
        check_data=cov.check_data,
    )


def _covariate_terms(covariates, covariate_terms, varying):
    """The varying terms the client covariates shift, and ``[len(them), D]`` placing them
    among the ``D`` varying terms (``None``: all of them, in order)."""
    if covariate_terms is None:
        return tuple(varying), None
    if covariates is None:
        raise ModelSpecError("covariate_terms needs client_covariates")
    names = (covariate_terms,) if isinstance(covariate_terms, str) else tuple(covariate_terms)
    unknown = [t for t in names if t not in varying]
    if unknown or not names or len(set(names)) < len(names):
        raise ModelSpecError(
            f"covariate_terms={list(names)}: give distinct varying terms, among {list(varying)}"
            + (f" ({unknown} not varying)" if unknown else "")
        )
    if names == tuple(varying):
        return names, None
    place = np.zeros((len(names), len(varying)))
    place[np.arange(len(names)), [varying.index(t) for t in names]] = 1.0
    return names, place


def _covariate_names(client_covariates: Sequence[str] | int | None) -> tuple[str, ...] | None:
    """The names of the client covariates: as given, or ``z0, z1, ...`` for a count."""
    if client_covariates is None:
        return None
    if isinstance(client_covariates, bool):
        raise ModelSpecError(f"client_covariates must be names or a count, got {client_covariates}")
    if isinstance(client_covariates, int | np.integer):
        if client_covariates < 1:
            raise ModelSpecError(f"client_covariates must be at least 1, got {client_covariates}")
        return tuple(f"z{j}" for j in range(int(client_covariates)))
    names = tuple(map(str, client_covariates))
    if not names:
        raise ModelSpecError("client_covariates is empty; give None for no covariates")
    return names


def _pooled(name, loc, scale, shape, centered):
    """A client effect ``name ~ N(loc, scale)`` of ``shape`` (``()`` or ``(n,)``): sampled
    (centered) or ``loc + scale * raw`` with ``{name}_raw ~ N(0, 1)`` (non-centered)."""
    events = len(shape)
    if centered:
        return numpyro.sample(name, dist.Normal(loc, scale).expand(shape).to_event(events))
    raw = numpyro.sample(f"{name}_raw", dist.Normal(0.0, 1.0).expand(shape).to_event(events))
    return numpyro.deterministic(name, loc + scale * raw)


def linear(n_features: int, **kwargs) -> HierarchicalModel:
    """Hierarchical linear regression (Normal likelihood); see :func:`hierarchical_glm`."""
    return hierarchical_glm("normal", n_features, **kwargs)


def logistic(n_features: int, **kwargs) -> HierarchicalModel:
    """Hierarchical logistic regression (Bernoulli, logit link); see :func:`hierarchical_glm`."""
    return hierarchical_glm("bernoulli", n_features, **kwargs)


def poisson(n_features: int, **kwargs) -> HierarchicalModel:
    """Hierarchical Poisson regression (log link); see :func:`hierarchical_glm`."""
    return hierarchical_glm("poisson", n_features, **kwargs)
