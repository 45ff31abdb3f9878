"""One declaration of a hierarchical model, and everything derived from it.

A hierarchical model in bayes-pfl is three numpyro functions:

``hyperprior()``
    samples the global parameters ``phi``: population parameters (a mean and a
    scale of the client effects) and any global parameter that enters the
    likelihood (shared slopes, a noise scale).
``client_prior(phi)``
    samples one client's parameters ``theta_k`` given ``phi`` (a dict of the
    hyper-prior's sample and deterministic sites). It is written for *one*
    client; bayes-pfl runs it under a ``client`` plate for the centralized model
    and under :func:`jax.vmap` for the federated algorithms, so vector sites
    must declare their event shape (``dist.Normal(0, 1).expand([d]).to_event(1)``)
    and arithmetic must broadcast over a leading client axis. A model with *client
    covariates* (``HierarchicalModel(..., client_covariates=("region=north", ...))``)
    declares ``client_prior(phi, z)`` instead: ``z [M]`` is the client's metadata
    vector (``[K, M]`` under the plate), known to the server, e.g.
    ``theta_k ~ N(mu + z_k W, tau)``.
``likelihood(theta, phi, x, y)``
    observes one client's rows: ``x`` has shape ``(n, p)``, ``y`` shape ``(n,)``
    (``None`` when predicting). Each observed site's ``log_prob`` must have shape
    ``(n,)`` (one term per row), so that padded rows can be masked out and
    pointwise log-likelihoods are available for LOO.

From this declaration :class:`HierarchicalModel` derives

* :meth:`HierarchicalModel.centralized_model`: the pooled numpyro model (plate
  over clients, ragged clients by padding and masking), used by the centralized
  NUTS reference;
* the per-client pieces of the federated algorithms, all pure functions of flat
  *unconstrained* vectors ``u_phi`` (length :attr:`~HierarchicalModel.phi_dim`)
  and ``u_theta`` (length :attr:`~HierarchicalModel.theta_dim`), ready for
  ``jit``/``vmap``/``grad``: :meth:`~HierarchicalModel.log_hyperprior`,
  :meth:`~HierarchicalModel.log_client_prior`,
  :meth:`~HierarchicalModel.client_loglik` and
  :meth:`~HierarchicalModel.pointwise_loglik`.

Example
-------
>>> import numpyro, numpyro.distributions as dist
>>> def hyperprior():
...     numpyro.sample("mu", dist.Normal(0.0, 5.0))
...     numpyro.sample("tau", dist.HalfNormal(1.0))
>>> def client_prior(phi):
...     numpyro.sample("theta", dist.Normal(phi["mu"], phi["tau"]))
>>> def likelihood(theta, phi, x, y):
...     numpyro.sample("y", dist.Normal(theta["theta"], x[:, 0]), obs=y)
>>> model = HierarchicalModel(hyperprior, client_prior, likelihood, name="normal")
>>> model.phi_dim, model.theta_dim
(2, 1)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
from numpyro import distributions as dist
from numpyro import handlers
from numpyro.distributions import biject_to, constraints

from bayes_pfl.student_t import (
    DF_SITE,
    LEARNED_DF,
    check_population_df,
    df_label,
    learned_df_hyperprior,
    student_t_correction,
)

Array = jax.Array
Params = dict[str, Array]

__all__ = [
    "LIKELIHOOD_FAMILIES",
    "HierarchicalModel",
    "ModelSpecError",
    "ParamSpace",
    "ParamSite",
    "isolated_trace",
    "trace_values",
]

LIKELIHOOD_FAMILIES = ("bernoulli", "categorical", "normal", "poisson")
"""The outcome families a model may declare (``HierarchicalModel(..., family=)``): the
families :mod:`bayes_pfl.compare` scores predictions through."""


class ModelSpecError(ValueError):
    """A model declaration that bayes-pfl cannot use, with the reason."""


@dataclass(frozen=True)
class ParamSite:
    """One latent sample site: its constrained shape and its support."""

    name: str
    shape: tuple[int, ...]
    support: Any
    unconstrained_shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return math.prod(self.unconstrained_shape)

    @property
    def transform(self):
        return biject_to(self.support)


class ParamSpace:
    """The latent sites of one numpyro function, flattened to one unconstrained vector.

    Sites are kept in the order the function samples them. ``unflatten`` maps a
    flat unconstrained vector ``u`` to a dict of constrained values and the log
    absolute determinant of the Jacobian of that map, so that a density ``p(z)``
    over constrained values becomes ``p(T(u)) |det J_T(u)|`` over ``u``.
    """

    def __init__(self, sites: tuple[ParamSite, ...]):
        self.sites = sites
        self.size = sum(s.size for s in sites)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.sites)

    def labels(self) -> list[str]:
        """One human-readable label per unconstrained coordinate (``beta[1]``, ``log(tau)``)."""
        out = []
        for s in self.sites:
            prefix = _transform_name(s.support)
            for idx in np.ndindex(*s.unconstrained_shape) if s.unconstrained_shape else [()]:
                name = s.name + ("[" + ",".join(map(str, idx)) + "]" if idx else "")
                out.append(f"{prefix}({name})" if prefix else name)
        return out

    def unflatten(self, u: Array) -> tuple[Params, Array]:
        """Constrained values and ``log|det J|`` for one flat unconstrained vector ``u``."""
        u = jnp.asarray(u)
        if u.shape[-1:] != (self.size,):
            raise ModelSpecError(
                f"expected an unconstrained vector of length {self.size}, got shape {u.shape}"
            )
        values, logdet, start = {}, jnp.zeros(u.shape[:-1]), 0
        for s in self.sites:
            chunk = u[..., start : start + s.size].reshape(u.shape[:-1] + s.unconstrained_shape)
            start += s.size
            t = s.transform
            z = t(chunk)
            ladj = t.log_abs_det_jacobian(chunk, z)
            # Sum the Jacobian term over the site's own dimensions only.
            extra = ladj.ndim - (u.ndim - 1)
            logdet = logdet + (jnp.sum(ladj, axis=tuple(range(-extra, 0))) if extra > 0 else ladj)
            values[s.name] = z
        return values, logdet

    def flatten(self, values: Params) -> Array:
        """The flat unconstrained vector of a dict of constrained values (inverse of ``unflatten``)."""
        parts = []
        batch = None
        for s in self.sites:
            if s.name not in values:
                raise ModelSpecError(f"missing value for site {s.name!r}")
            z = jnp.asarray(values[s.name])
            u = s.transform.inv(z)
            nb = u.ndim - len(s.unconstrained_shape)
            batch = u.shape[:nb] if batch is None else batch
            parts.append(u.reshape(batch + (s.size,)))
        return jnp.concatenate(parts, axis=-1)


def _transform_name(support) -> str:
    """How a site's support is unconstrained, for labels: ``""``, ``"log"``, ``"logit"``, ..."""
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    if support is constraints.real:
        return ""
    if support is constraints.positive:
        return "log"
    if isinstance(support, constraints.interval):
        return "logit"
    return "unconstrained"


def _latent_sites(trace) -> tuple[ParamSite, ...]:
    sites = []
    for name, site in trace.items():
        if site["type"] != "sample" or site["is_observed"]:
            continue
        if site.get("infer", {}).get("is_auxiliary"):
            continue
        value = jnp.asarray(site["value"])
        support = site["fn"].support
        t = biject_to(support)
        ushape = tuple(t.inverse_shape(value.shape))
        sites.append(ParamSite(name, tuple(value.shape), support, ushape))
    return tuple(sites)


def trace_values(trace) -> Params:
    """Sample and deterministic values of a trace, by site name."""
    return {
        name: site["value"]
        for name, site in trace.items()
        if site["type"] == "deterministic" or (site["type"] == "sample" and not site["is_observed"])
    }


def isolated_trace(fn, *args, data=None, rng_key=None):
    """Trace ``fn(*args)`` in isolation: values substituted from ``data``; nothing leaks out.

    ``handlers.block`` keeps the sites from reaching handlers of an enclosing model
    (the centralized model, a tilted or server model), which matters when this runs
    under ``jax.vmap`` inside one.
    """
    if data is not None:
        fn = handlers.substitute(fn, data=data)
    if rng_key is not None:
        fn = handlers.seed(fn, rng_key)
    with handlers.block():
        return handlers.trace(fn).get_trace(*args)


def _log_prob_sum(trace) -> Array:
    """Sum of the log densities of a trace's latent sample sites."""
    total = jnp.zeros(())
    for site in trace.values():
        if site["type"] == "sample" and not site["is_observed"]:
            total = total + jnp.sum(site["fn"].log_prob(site["value"]))
    return total


def _observed_sites(trace) -> list[str]:
    return [n for n, s in trace.items() if s["type"] == "sample" and s["is_observed"]]


def normal_base(fn):
    """The Normal distribution under Independent/Expanded wrappers, or None."""
    while isinstance(fn, dist.Independent | dist.ExpandedDistribution):
        fn = fn.base_dist
    return fn if isinstance(fn, dist.Normal) else None


def standardized_client_sites(trace, names: Sequence[str], batch: int) -> Array:
    """``w = (value - loc) / scale`` of a client trace's Normal sites, ``[batch, D]``.

    ``batch`` is the number of leading client axes' entries (1 for one client, ``K``
    under a client plate); the sites' own shapes are flattened after it.
    """
    out = []
    for name in names:
        site = trace[name]
        base = normal_base(site["fn"])
        if base is None:
            raise ModelSpecError(
                f"client site {name!r} is {type(site['fn']).__name__}, not Normal: a "
                "Student-t population scales Normal client sites"
            )
        w = (jnp.asarray(site["value"]) - base.loc) / base.scale
        out.append(jnp.reshape(w, (batch, -1)))
    return jnp.concatenate(out, axis=1)


class HierarchicalModel:
    """A hierarchical model declared once: hyper-prior, client prior and client likelihood.

    Parameters
    ----------
    hyperprior : callable
        ``hyperprior()`` samples the global parameters ``phi``.
    client_prior : callable
        ``client_prior(phi)`` samples one client's ``theta_k`` (``client_prior(phi, z)``
        with ``client_covariates``).
    likelihood : callable
        ``likelihood(theta, phi, x, y)`` observes one client's rows.
    name : str
        Short name used in files and reports.
    n_features : int, optional
        Number of feature columns the likelihood expects (checked against data).
    feature_names : sequence of str, optional
        Expected feature names, in order, for models tied to a dataset (radon).
    description : str, optional
        One paragraph for ``--help`` and reports.
    family : {"bernoulli", "categorical", "normal", "poisson"}, optional
        The outcome family of the likelihood, declared by the model (every zoo model
        does); :mod:`bayes_pfl.compare` reads it to score the model's predictions.
        ``None`` (default): not declared; nothing reads it from ``name``.
    coords : mapping of str to sequence of str, optional
        Labels of the entries of vector sites, by site name (``{"b": ("Intercept",
        "age"), "beta": ("bmi",)}``): the coefficient names the outputs (ArviZ
        coordinates, summaries, plots) show instead of positions. Each labelled
        site must be a vector with one label per entry.
    population_df : float or "learn", optional
        ``None`` (default): the client prior as declared (a Gaussian population for the zoo
        models). A number ``ν > 0``: a *Student-t population* with ``ν`` degrees of freedom, a
        robust option: every client's Normal client-prior sites are scaled by one mixing weight,
        ``w_k | λ_k ~ N(0, I / λ_k)``, ``λ_k ~ Gamma(ν/2, ν/2)`` (``w`` the standardized sites), so
        a client far from the others moves the population little and is itself pooled less
        (``ν = 4`` is a common robust choice, :meth:`with_population`). ``"learn"``: ``ν`` is
        learned, a global site ``population_df ~ 2 + Gamma(2, rate 0.1)`` appended to the
        hyper-prior (:mod:`bayes_pfl.student_t`). NUTS samples the marginal t exactly; the
        federated methods integrate ``λ_k`` by quadrature in the server's integral
        (:class:`~bayes_pfl.population.Population`).
    client_covariates : sequence of str, optional
        The names of the client-level covariates (metadata columns, one-hot levels such as
        ``"region=north"``) that the client prior reads: ``client_prior(phi, z)`` with
        ``z`` the client's vector of ``M = len(client_covariates)`` values, so that the
        population is ``theta_k | phi ~ p(theta | phi, z_k)`` (e.g. ``N(mu + z_k W, T)``).
        ``None`` (default): ``client_prior(phi)``, one population for every client.
        Every function derived from the declaration then takes the client's ``z``.
    check_data : callable, optional
        ``check_data(data)``: the model's own check of a ``FederatedData`` before a fit
        (raises with the reason), e.g. which features may have missing values.

    Notes
    -----
    The global posterior is ``p(phi | D) ∝ p(phi) prod_k L_k(phi)`` with
    ``L_k(phi) = ∫ p(y_k | theta_k, phi, x_k) p(theta_k | phi) dtheta_k``, and the
    personalized posterior of client ``k`` is
    ``p(theta_k | D) = ∫ p(theta_k | D_k, phi) p(phi | D) dphi``.
    """

    def __init__(
        self,
        hyperprior: Callable[[], Any],
        client_prior: Callable[[Params], Any],
        likelihood: Callable[[Params, Params, Array, Array | None], Any],
        *,
        name: str,
        n_features: int | None = None,
        feature_names: tuple[str, ...] | None = None,
        description: str = "",
        family: str | None = None,
        coords: Mapping[str, Sequence[str]] | None = None,
        population_df: float | str | None = None,
        client_covariates: Sequence[str] | None = None,
        check_data: Callable[[Any], None] | None = None,
    ):
        if family is not None and family not in LIKELIHOOD_FAMILIES:
            raise ModelSpecError(
                f"unknown likelihood family {family!r}; choose one of "
                f"{', '.join(LIKELIHOOD_FAMILIES)} (or None)"
            )
        self.hyperprior = self.declared_hyperprior = hyperprior
        self.client_prior = client_prior
        self.likelihood = likelihood
        self.name = name
        self.n_features = n_features if feature_names is None else len(feature_names)
        self.feature_names = tuple(feature_names) if feature_names is not None else None
        self.description = description
        self.family = family
        self.coords = {k: tuple(map(str, v)) for k, v in (coords or {}).items()}
        self.population_df = population_df = check_population_df(population_df)
        if population_df == LEARNED_DF:  # one more global site (bayes_pfl.student_t)
            self.hyperprior = learned_df_hyperprior(hyperprior)
        if client_covariates is not None:
            if isinstance(client_covariates, str):
                raise ModelSpecError(
                    f"client_covariates must be a sequence of names, got the string "
                    f"{client_covariates!r}"
                )
            client_covariates = tuple(map(str, client_covariates))
            if len(set(client_covariates)) != len(client_covariates):
                raise ModelSpecError(f"client_covariates repeat a name: {list(client_covariates)}")
        self.client_covariates = client_covariates
        self.check_data = check_data
        self._check()
        self._check_coords()
        if population_df is not None:
            standardized_client_sites(self.client_trace, self.theta_space.names, 1)

    def __repr__(self) -> str:
        t = f", population_df={df_label(self.population_df)}" if self.population_df else ""
        if self.client_covariates is not None:
            t += f", client_covariates={list(self.client_covariates)}"
        return (
            f"HierarchicalModel({self.name!r}, phi={list(self.phi_space.names)}, "
            f"theta={list(self.theta_space.names)}{t})"
        )

    @property
    def n_covariates(self) -> int:
        """Number ``M`` of client covariates (0 without ``client_covariates``)."""
        return 0 if self.client_covariates is None else len(self.client_covariates)

    def check_covariates(self, z, batch: tuple[int, ...] | None = None) -> Array | None:
        """``z`` checked against the declared client covariates: ``None`` for a model
        without them (where a ``z`` with no column, ``[..., 0]``, is accepted), else the
        array, whose last axis must have the ``M`` covariates (and leading axes ``batch``
        when given)."""
        if self.client_covariates is None:
            if z is not None and jnp.shape(z)[-1:] != (0,):
                raise ModelSpecError(
                    f"model {self.name!r} declares no client covariates, but client "
                    f"covariates of shape {jnp.shape(z)} were given"
                )
            return None
        if z is None:
            raise ModelSpecError(
                f"model {self.name!r} declares client covariates "
                f"{list(self.client_covariates)}: give each client's covariates z"
            )
        z = jnp.asarray(z)
        want = (self.n_covariates,) if batch is None else (*batch, self.n_covariates)
        if z.shape[-1:] != (self.n_covariates,) or (batch is not None and z.shape != want):
            raise ModelSpecError(
                f"model {self.name!r}: client covariates must have shape {want} "
                f"({list(self.client_covariates)}), got {z.shape}"
            )
        return z

    def prior_args(self, phi: Params, z) -> tuple:
        """The arguments of ``client_prior``: ``(phi,)`` or ``(phi, z)`` with covariates."""
        z = self.check_covariates(z)
        return (phi,) if z is None else (phi, z)

    def _zero_covariates(self, batch: tuple[int, ...] = ()) -> Array | None:
        return None if self.client_covariates is None else jnp.zeros((*batch, self.n_covariates))

    def with_population(self, df: float | str | None) -> HierarchicalModel:
        """The same declaration with a Student-t population of ``df`` degrees of freedom
        (``"learn"``: learned; ``None``: as declared); see ``population_df``."""
        return HierarchicalModel(
            self.declared_hyperprior,
            self.client_prior,
            self.likelihood,
            name=self.name,
            feature_names=self.feature_names,
            n_features=self.n_features,
            description=self.description,
            family=self.family,
            coords=self.coords,
            population_df=df,
            client_covariates=self.client_covariates,
            check_data=self.check_data,
        )

    def population_df_of(self, phi: Params):
        """The Student-t population's ``df`` at global values ``phi``: the fixed number, the
        learned site's value (traceable) or ``None`` (a Gaussian population)."""
        return phi[DF_SITE] if self.population_df == LEARNED_DF else self.population_df

    def _population_correction(self, trace, batch: int, phi: Params) -> Array:
        """The Student-t population's correction of a client-prior trace, ``[batch]``."""
        w = standardized_client_sites(trace, self.theta_space.names, batch)
        return student_t_correction(w, self.population_df_of(phi))

    # ------------------------------------------------------------------ structure
    def _trace(self, fn, *args):
        return handlers.trace(handlers.seed(fn, 0)).get_trace(*args)

    @cached_property
    def hyper_trace(self):
        """One run of ``hyperprior()`` (seed 0): the sites, shapes and supports of phi."""
        try:
            return self._trace(self.hyperprior)
        except Exception as exc:  # user code
            raise ModelSpecError(
                f"hyperprior() failed when run once: {type(exc).__name__}: {exc}"
            ) from exc

    @cached_property
    def client_trace(self):
        """One run of ``client_prior(phi)`` (seed 0): the sites of a client's theta."""
        phi = trace_values(self.hyper_trace)
        try:
            return self._trace(self.client_prior, *self.prior_args(phi, self._zero_covariates()))
        except Exception as exc:
            raise ModelSpecError(
                f"client_prior({'phi, z' if self.client_covariates else 'phi'}) failed when run "
                f"once: {type(exc).__name__}: {exc}"
            ) from exc

    @cached_property
    def phi_space(self) -> ParamSpace:
        """The global parameters ``phi`` as one unconstrained vector."""
        return ParamSpace(_latent_sites(self.hyper_trace))

    @cached_property
    def theta_space(self) -> ParamSpace:
        """One client's parameters ``theta_k`` as one unconstrained vector."""
        return ParamSpace(_latent_sites(self.client_trace))

    @property
    def phi_dim(self) -> int:
        return self.phi_space.size

    @property
    def theta_dim(self) -> int:
        return self.theta_space.size

    @cached_property
    def phi_deterministic(self) -> tuple[str, ...]:
        return tuple(n for n, s in self.hyper_trace.items() if s["type"] == "deterministic")

    @cached_property
    def theta_deterministic(self) -> tuple[str, ...]:
        return tuple(n for n, s in self.client_trace.items() if s["type"] == "deterministic")

    @cached_property
    def observed_name(self) -> str:
        """Name of the likelihood's observed site (the target variable in outputs)."""
        return self._observed[0]

    @cached_property
    def observes_covariates(self) -> bool:
        """Whether the likelihood observes more than the target (modelled covariates)."""
        return len(self._observed) > 1

    @cached_property
    def _observed(self) -> list[str]:
        theta = trace_values(self.client_trace)
        phi = trace_values(self.hyper_trace)
        n = 3
        p = self.n_features or 1
        x = jnp.ones((n, p))
        y = jnp.zeros((n,))
        try:
            tr = handlers.trace(handlers.seed(self.likelihood, 0)).get_trace(theta, phi, x, y)
        except Exception as exc:
            raise ModelSpecError(
                f"likelihood(theta, phi, x, y) failed on a test client of {n} rows and {p} "
                f"feature(s): {type(exc).__name__}: {exc}"
            ) from exc
        names = _observed_sites(tr)
        if not names:
            raise ModelSpecError("likelihood(...) has no observed sample site (obs=y)")
        latent = [k for k, s in tr.items() if s["type"] == "sample" and not s["is_observed"]]
        if latent:
            raise ModelSpecError(
                f"likelihood(...) samples latent site(s) {latent}; latent variables belong in "
                "hyperprior() (global) or client_prior(phi) (per client)"
            )
        for name in names:
            lp = tr[name]["fn"].log_prob(tr[name]["value"])
            if lp.shape != (n,):
                raise ModelSpecError(
                    f"observed site {name!r} gives log_prob of shape {lp.shape} for a client "
                    f"of {n} rows; it must give one term per row, shape ({n},)"
                )
        return names

    def _check(self) -> None:
        for space, where in ((self.phi_space, "hyperprior()"), (self.theta_space, "client_prior")):
            if space.size == 0:
                raise ModelSpecError(f"{where} samples no latent parameter")
        for fn_trace, where in (
            (self.hyper_trace, "hyperprior()"),
            (self.client_trace, "client_prior(phi)"),
        ):
            if _observed_sites(fn_trace):
                raise ModelSpecError(
                    f"{where} must not observe data; put observations in likelihood"
                )
        clash = set(self.phi_space.names) & set(self.theta_space.names)
        if clash:
            raise ModelSpecError(f"site names used both globally and per client: {sorted(clash)}")
        # the client prior must run under a plate (see module docstring)
        phi = trace_values(self.hyper_trace)
        try:
            with handlers.trace() as tr, handlers.seed(rng_seed=0):
                with numpyro.plate("client", 2):
                    self.client_prior(*self.prior_args(phi, self._zero_covariates((2,))))
        except Exception as exc:
            raise ModelSpecError(
                "client_prior(phi) does not run under a client plate; declare vector sites with "
                f".to_event(1) and use broadcasting arithmetic ({exc})"
            ) from exc
        for s in self.theta_space.sites:
            got = tuple(jnp.shape(tr[s.name]["value"]))
            if got != (2,) + s.shape:
                raise ModelSpecError(
                    f"client_prior site {s.name!r} has shape {got} under a client plate of 2, "
                    f"expected {(2,) + s.shape}; declare its event shape with .to_event()"
                )
        _ = self._observed

    def _check_coords(self) -> None:
        shapes = {s.name: s.shape for s in self.phi_space.sites + self.theta_space.sites}
        for trace in (self.hyper_trace, self.client_trace):
            shapes.update(
                {
                    n: tuple(jnp.shape(s["value"]))
                    for n, s in trace.items()
                    if s["type"] == "deterministic"
                }
            )
        for name, labels in self.coords.items():
            if name not in shapes:
                raise ModelSpecError(
                    f"coords names site {name!r}, which the model does not have "
                    f"(sites: {', '.join(sorted(shapes))})"
                )
            shape = shapes[name]
            if len(shape) != 1 or shape[0] != len(labels):
                raise ModelSpecError(
                    f"coords of {name!r} has {len(labels)} label(s) but the site has shape "
                    f"{shape}; coords label the entries of a vector site"
                )
            if len(set(labels)) != len(labels):
                raise ModelSpecError(f"coords of {name!r} repeat a label: {list(labels)}")

    def observed_supports(self, x: Array, y: Array) -> dict[str, Any]:
        """``{observed site: support constraint}`` of the likelihood on rows ``(x, y)``.

        The likelihood is run once at a draw of the priors; the supports of the usual
        families do not depend on the parameters (``Bernoulli``: 0/1, ``Poisson``:
        non-negative integers, ``Normal``: finite reals).
        """
        theta = trace_values(self.client_trace)
        phi = trace_values(self.hyper_trace)
        # the supports are read, not the values checked: a likelihood whose parameters are
        # invalid at this draw (NaN, with validation on) is the fit's to report
        with numpyro.validation_enabled(False):
            tr = handlers.trace(handlers.seed(self.likelihood, 0)).get_trace(
                theta, phi, jnp.asarray(x), jnp.asarray(y)
            )
        return {name: tr[name]["fn"].support for name in _observed_sites(tr)}

    # ------------------------------------------------------------------ values
    def phi_values(self, u_phi: Array) -> Params:
        """All hyper-prior sites (sample and deterministic) at unconstrained ``u_phi``."""
        values, _ = self.phi_space.unflatten(u_phi)
        return trace_values(isolated_trace(self.hyperprior, data=values))

    def theta_values(self, u_theta: Array, phi: Params, z: Array | None = None) -> Params:
        """All client-prior sites of one client at unconstrained ``u_theta``, given ``phi``
        values (and the client's covariates ``z [M]`` when the model declares them)."""
        values, _ = self.theta_space.unflatten(u_theta)
        return trace_values(
            isolated_trace(self.client_prior, *self.prior_args(phi, z), data=values)
        )

    # ------------------------------------------------------------------ densities
    def log_hyperprior(self, u_phi: Array) -> Array:
        """``log p(phi) + log|det J|`` at unconstrained ``u_phi``."""
        values, logdet = self.phi_space.unflatten(u_phi)
        return _log_prob_sum(isolated_trace(self.hyperprior, data=values)) + logdet

    def log_client_prior(self, u_theta: Array, u_phi: Array, z: Array | None = None) -> Array:
        """``log p(theta_k | phi, z_k) + log|det J|`` for one client, unconstrained coordinates."""
        phi = self.phi_values(u_phi)
        values, logdet = self.theta_space.unflatten(u_theta)
        tr = isolated_trace(self.client_prior, *self.prior_args(phi, z), data=values)
        out = _log_prob_sum(tr) + logdet
        if self.population_df is not None:
            out = out + self._population_correction(tr, 1, phi)[0]
        return out

    def pointwise_loglik_values(
        self, theta: Params, phi: Params, x: Array, y: Array, *, outcome_only: bool = False
    ) -> Array:
        """Per-row ``log p(y_i | theta, phi, x_i)`` from site values, shape ``(n,)``.

        The sum over every observed site of the likelihood (the row's joint likelihood);
        ``outcome_only``: the outcome's site alone (:attr:`observed_name`), what a
        prediction of the target reads when the likelihood also observes the covariates
        (the ``x_obs`` site of a model with missing values modelled).
        """
        tr = isolated_trace(self.likelihood, theta, phi, x, y)
        out = jnp.zeros(y.shape[0])
        for name in [self.observed_name] if outcome_only else self._observed:
            out = out + tr[name]["fn"].log_prob(tr[name]["value"])
        return out

    def pointwise_loglik(
        self, u_theta: Array, u_phi: Array, x: Array, y: Array, z: Array | None = None
    ) -> Array:
        """Per-row log-likelihood of one client at unconstrained parameters, shape ``(n,)``."""
        phi = self.phi_values(u_phi)
        theta = self.theta_values(u_theta, phi, z)
        return self.pointwise_loglik_values(theta, phi, x, y)

    def client_loglik(
        self, u_theta: Array, u_phi: Array, x: Array, y: Array, mask: Array, z: Array | None = None
    ) -> Array:
        """``log p(y_k | theta_k, phi, x_k)`` of one client, padded rows masked out."""
        ll = self.pointwise_loglik(u_theta, u_phi, x, y, z)
        return jnp.sum(jnp.where(mask, ll, 0.0))

    def client_log_joint(
        self,
        u_theta: Array,
        u_phi: Array,
        x: Array,
        y: Array,
        mask: Array,
        z: Array | None = None,
    ) -> Array:
        """``log p(y_k, theta_k | phi, z_k)`` of one client in unconstrained coordinates.

        This is the client's whole contribution to the posterior given ``phi``; the
        federated algorithms integrate ``theta_k`` out of it locally. ``z``: the client's
        covariates ``[M]`` when the model declares them.
        """
        phi = self.phi_values(u_phi)
        values, logdet = self.theta_space.unflatten(u_theta)
        tr = isolated_trace(self.client_prior, *self.prior_args(phi, z), data=values)
        lp, theta = _log_prob_sum(tr), trace_values(tr)
        if self.population_df is not None:
            lp = lp + self._population_correction(tr, 1, phi)[0]
        ll = self.pointwise_loglik_values(theta, phi, x, y)
        return lp + logdet + jnp.sum(jnp.where(mask, ll, 0.0))

    def log_joint(
        self,
        u_phi: Array,
        u_theta: Array,
        x: Array,
        y: Array,
        mask: Array,
        z: Array | None = None,
    ) -> Array:
        """Centralized log density over ``u_phi`` and all clients' ``u_theta`` (shape ``(K, d)``);
        ``z [K, M]``: the clients' covariates when the model declares them."""
        z = self.check_covariates(z, (x.shape[0],))
        if z is None:
            per_client = jax.vmap(self.client_log_joint, in_axes=(0, None, 0, 0, 0))(
                u_theta, u_phi, x, y, mask
            )
        else:
            per_client = jax.vmap(self.client_log_joint, in_axes=(0, None, 0, 0, 0, 0))(
                u_theta, u_phi, x, y, mask, z
            )
        return self.log_hyperprior(u_phi) + jnp.sum(per_client)

    # ------------------------------------------------------------------ numpyro model
    def centralized_model(
        self, x: Array, y: Array | None, mask: Array, z: Array | None = None
    ) -> None:
        """The pooled numpyro model: hyper-prior, a ``client`` plate, masked likelihood.

        ``x`` has shape ``(K, n_max, p)``, ``y`` and ``mask`` shape ``(K, n_max)``;
        padded rows (``mask == False``) contribute nothing. The likelihood enters as
        one factor site ``"loglik"`` (the vmapped sum of the clients' masked
        log-likelihoods), so the posterior is exactly that of the declaration.
        ``z [K, M]``: the clients' covariates, when the model declares them.
        """
        z = self.check_covariates(z, (x.shape[0],))
        with handlers.trace() as hyper_tr:
            self.hyperprior()
        phi = trace_values(hyper_tr)
        with handlers.trace() as client_tr, numpyro.plate("client", x.shape[0]):
            self.client_prior(*self.prior_args(phi, z))
        theta = trace_values(client_tr)
        if self.population_df is not None:
            numpyro.factor(
                "population_t", jnp.sum(self._population_correction(client_tr, x.shape[0], phi))
            )
        if y is None:
            return
        with handlers.block():
            ll = jax.vmap(self.pointwise_loglik_values, in_axes=(0, None, 0, 0))(theta, phi, x, y)
        numpyro.factor("loglik", jnp.sum(jnp.where(mask, ll, 0.0)))

    def sample_theta(self, rng_key: Array, phi: Params, z: Array | None = None) -> Array:
        """One draw of ``theta_k ~ p(theta | phi, z)``, unconstrained (a new client, no data;
        ``z [M]`` its covariates when the model declares them)."""
        args = self.prior_args(phi, z)
        if self.population_df is None:
            tr = isolated_trace(self.client_prior, *args, rng_key=rng_key)
            return self.theta_space.flatten({n: tr[n]["value"] for n in self.theta_space.names})
        # a Student-t population: the Normal sites' deviations scaled by 1 / sqrt(λ)
        k_theta, k_lam = jax.random.split(rng_key)
        tr = isolated_trace(self.client_prior, *args, rng_key=k_theta)
        half = 0.5 * self.population_df_of(phi)
        lam = jax.random.gamma(k_lam, half) / half
        values = {}
        for n in self.theta_space.names:
            base = normal_base(tr[n]["fn"])
            values[n] = base.loc + (tr[n]["value"] - base.loc) / jnp.sqrt(lam)
        return self.theta_space.flatten(values)

    # ------------------------------------------------------------------ prediction
    def sample_likelihood(self, rng_key: Array, theta: Params, phi: Params, x: Array) -> Array:
        """Draw ``y`` for one client's rows from the likelihood (posterior predictive)."""
        tr = isolated_trace(self.likelihood, theta, phi, x, None, rng_key=rng_key)
        return tr[self.observed_name]["value"]
