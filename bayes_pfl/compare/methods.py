"""Methods the harness runs: the Bayesian fits, the baselines, the networks, the references.

A :class:`Method` is a name and ``fit_fn(data, seed, **hparams)`` returning a
predictor (anything with ``predict(arrays) -> Prediction``). The adapters build them:
:func:`bayesian_method` (NUTS, EP, one-shot, VI), :func:`baseline_method` (the
optimization baselines of :mod:`bayes_pfl.baselines`), :func:`neural_method` (the
hierarchical Bayesian networks of :mod:`bayes_pfl.neural`), the references
:func:`constant_method` and :func:`oracle_method`, and :func:`make_method` any of
them by name; :func:`with_imputation` wraps a method that cannot take missing features.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import numpy as np

from bayes_pfl.compare.families import ComparisonError, check_family, infer_family
from bayes_pfl.compare.predictions import (
    PosteriorPredictor,
    Prediction,
    Predictor,
    bernoulli_log_density,
    prediction_from_mean,
)
from bayes_pfl.data import ClientArrays, FederatedData
from bayes_pfl.methods import UnknownMethod, get_method

__all__ = [
    "BAYESIAN_METHODS",
    "Method",
    "baseline_method",
    "bayesian_method",
    "callable_model",
    "constant_method",
    "make_method",
    "neural_method",
    "oracle_method",
    "with_imputation",
]

BAYESIAN_METHODS = ("nuts", "ep", "one-shot", "vi")


class Method(NamedTuple):
    """A method the harness can run.

    Attributes
    ----------
    name : str
        Unique name in a comparison (a table row label).
    fit_fn : callable
        ``fit_fn(data, seed, **hparams) -> Predictor``; it may use
        ``data.train`` (and ``data.val`` when it tunes itself) but never
        ``data.test``.
    grid : tuple of dict
        Hyper-parameter candidates, chosen by validation log predictive
        density; empty for none.
    family : str, optional
        The outcome family the method predicts; ``None`` for any.
    """

    name: str
    fit_fn: Callable[..., Predictor]
    grid: tuple[dict[str, Any], ...] = ()
    family: str | None = None


# ---------------------------------------------------------------------------
# references: the training mean, the truth of a synthetic federation


@dataclass
class _ConstantPredictor:
    family: str
    value: np.ndarray  # per client: P(y=1) / mean
    sd: np.ndarray

    def predict(self, arrays: ClientArrays) -> Prediction:
        mean = np.broadcast_to(self.value[:, None], np.asarray(arrays.mask).shape)
        return prediction_from_mean(self.family, mean, arrays, noise_sd=self.sd)


def _row_log_likelihood(family: str, mean, y, noise_sd=None) -> np.ndarray:
    """``log p(y | E[y] = mean)`` elementwise, for a synthetic federation's family."""
    if family == "bernoulli":
        return bernoulli_log_density(mean, y)
    if family == "poisson":
        from scipy.special import gammaln

        rate = np.maximum(mean, 1e-300)
        return y * np.log(rate) - rate - gammaln(y + 1.0)
    return -0.5 * ((y - mean) / noise_sd) ** 2 - math.log(noise_sd) - 0.5 * math.log(2 * math.pi)


@dataclass
class _OraclePredictor:
    truth: Any  # SyntheticFederation
    clients: tuple
    feature_mean: np.ndarray | None
    feature_scale: np.ndarray | None
    draws: np.ndarray | None = None  # know="phi": S draws of b from the true population
    log_weights: np.ndarray | None = None  # (K, S) normalized importance weights
    ess: np.ndarray | None = None  # (K,) effective sample size of each client's weights

    def _raw(self, arrays: ClientArrays) -> np.ndarray:
        x = np.asarray(arrays.x, dtype=np.float64)
        if self.feature_scale is not None:
            x = x * self.feature_scale + self.feature_mean
        return np.where(np.asarray(arrays.mask)[..., None], x, 0.0)  # padding: any finite

    def predict(self, arrays: ClientArrays) -> Prediction:
        family = self.truth.family
        sd = self.truth.phi.get("sigma_y")
        x = self._raw(arrays)
        if self.draws is None:
            mean = self.truth.true_mean(self.clients, x)
            sd = None if sd is None else np.full(len(self.clients), float(sd))
            return prediction_from_mean(family, mean, arrays, noise_sd=sd)
        y = np.asarray(arrays.y, dtype=np.float64)
        mask = np.asarray(arrays.mask)
        mean = np.zeros(mask.shape)
        log_density = np.zeros(mask.shape)
        for k in range(mask.shape[0]):  # the mixture over draws of one client: (S, n)
            mu_s = self.truth.mean_of(self.draws, x[k][None])
            w = np.exp(self.log_weights[k])
            mean[k] = w @ mu_s
            ll = _row_log_likelihood(family, mu_s, np.where(mask[k], y[k], 0.0)[None], sd)
            top = np.max(self.log_weights[k][:, None] + ll, axis=0)
            log_density[k] = top + np.log(np.exp(self.log_weights[k][:, None] + ll - top).sum(0))
        log_density = np.where(mask, log_density, 0.0)
        if family == "bernoulli":
            mean = np.where(mask, mean, 0.5)
        return Prediction(log_density, mean)


def oracle_method(
    truth, name: str | None = None, *, know: str = "theta", draws: int = 20_000
) -> Method:
    """A reference for synthetic federations, from the parameters that made the data.

    ``know="theta"`` (name ``"oracle"``): predict with each client's true
    parameters. Its expected log-loss is the data's own entropy, the floor for
    every method; it learns nothing from the training rows.

    ``know="phi"`` (name ``"bayes-oracle"``): each client's posterior predictive
    given its training rows and the *true population* (``b_k ~ N(mu, diag tau^2)``
    with the true ``mu``, ``tau``, shared slopes and noise sd), by importance
    sampling ``draws`` population draws weighted by the client's likelihood. Over
    federations drawn from that population, no learner that sees only a client's
    rows has a lower expected log-loss: it bounds what any method, Bayesian or
    not, could gain over a baseline. The fitted predictor's ``ess`` gives each
    client's effective sample size (small for large clients, whose likelihood is
    narrow: there the estimate is not to be trusted).

    Parameters
    ----------
    truth : SyntheticFederation or callable
        The federation (:func:`~bayes_pfl.synthetic.make_federation`), or
        ``seed -> SyntheticFederation`` when ``compare`` gets a new federation per seed.
        Its clients and features must be those of the data the harness scores;
        standardized features are mapped back with the data's stored standardization.
    name : str, optional
        Table row label.
    know : {"theta", "phi"}
    draws : int
        Population draws for ``know="phi"`` (the same draws for every client).
    """
    if know not in ("theta", "phi"):
        raise ComparisonError(f"know must be 'theta' or 'phi', got {know!r}")
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
        raise ComparisonError(f"draws must be a positive integer, got {draws!r}")
    name = name or ("oracle" if know == "theta" else "bayes-oracle")

    def fit_fn(data: FederatedData, seed: int) -> _OraclePredictor:
        fed = truth(seed) if callable(truth) else truth
        if tuple(str(f) for f in data.features) != tuple(fed.features):
            raise ComparisonError(
                f"{name}: the data's features {list(data.features)} are not the "
                f"federation's {list(fed.features)}"
            )
        unknown = sorted(set(map(str, data.clients)) - set(fed.clients))
        if unknown:
            raise ComparisonError(f"{name}: clients {unknown[:5]} are not in the federation")
        out = _OraclePredictor(fed, tuple(data.clients), data.feature_mean, data.feature_scale)
        if know == "theta":
            return out
        rng = np.random.default_rng(seed)
        mu, tau = np.asarray(fed.phi["mu"]), np.asarray(fed.phi["tau"])
        out.draws = mu + tau * rng.standard_normal((draws, mu.shape[0]))
        tr = data.train
        x, y, mask = out._raw(tr), np.asarray(tr.y, dtype=np.float64), np.asarray(tr.mask)
        sd = fed.phi.get("sigma_y")
        logw = np.zeros((mask.shape[0], draws))
        for k in range(mask.shape[0]):
            rows = mask[k]
            if rows.any():
                mu_s = fed.mean_of(out.draws, x[k][rows][None])
                logw[k] = _row_log_likelihood(fed.family, mu_s, y[k][rows][None], sd).sum(-1)
        logw -= logw.max(axis=1, keepdims=True)
        logw -= np.log(np.exp(logw).sum(axis=1, keepdims=True))
        out.log_weights = logw
        out.ess = 1.0 / np.exp(2.0 * logw).sum(axis=1)
        return out

    return Method(name, fit_fn, (), None)


def constant_method(
    name: str = "constant", *, family: str = "bernoulli", shrink: float = 1.0, grid=()
) -> Method:
    """A reference method without features: each client predicts its training mean.

    ``bernoulli``: ``P(y=1) = (n_1 + shrink) / (n + 2 shrink)`` (a Beta prior's
    posterior mean); ``normal``: the client's mean and sd (pooled sd for
    clients with fewer than two rows); ``poisson``: the client's mean rate.
    It is the floor every method should beat, and a cheap method for tests.
    """
    family = check_family(family)
    if family == "categorical":
        raise ComparisonError("constant_method supports bernoulli, normal and poisson")

    def fit_fn(data: FederatedData, seed: int, shrink: float = shrink) -> _ConstantPredictor:
        tr = data.train
        y, mask = np.asarray(tr.y, dtype=float), np.asarray(tr.mask)
        n = mask.sum(axis=1)
        s = np.where(mask, y, 0.0).sum(axis=1)
        if family == "bernoulli":
            value = (s + shrink) / (n + 2 * shrink)
        else:
            value = np.where(n > 0, s / np.maximum(n, 1), s.sum() / max(n.sum(), 1))
        resid = np.where(mask, y - value[:, None], 0.0)
        pooled = math.sqrt(float((resid**2).sum()) / max(int(n.sum()) - 1, 1))
        sd = np.where(n > 1, np.sqrt((resid**2).sum(axis=1) / np.maximum(n - 1, 1)), pooled)
        return _ConstantPredictor(family, value, np.maximum(sd, 1e-6))

    return Method(name, fit_fn, tuple(grid), family)


# ---------------------------------------------------------------------------
# Bayesian methods


def _model_family(model) -> str | None:
    """The likelihood family the model declares (:attr:`HierarchicalModel.family
    <bayes_pfl.spec.HierarchicalModel>`), ``None`` when it declares none; never read from
    its name."""
    return getattr(model, "family", None)


def bayesian_method(
    fit: str = "nuts",
    model=None,
    *,
    name: str | None = None,
    family: str | None = None,
    **fit_kwargs,
) -> Method:
    """A hierarchical Bayesian fit as a comparison method.

    Parameters
    ----------
    fit : {"nuts", "ep", "one-shot", "vi"}
        Centralized NUTS (:func:`~bayes_pfl.centralized.fit_nuts`), federated EP
        (:func:`~bayes_pfl.federated.fit_ep`), one-shot summary exchange
        (:func:`~bayes_pfl.federated.fit_one_shot`) or federated VI
        (:func:`~bayes_pfl.federated_vi.fit_vi`).
    model : HierarchicalModel or callable, optional
        The model, or ``model(data) -> HierarchicalModel`` to build it from the
        data (e.g. its number of features). Default: the zoo's hierarchical GLM
        of ``family`` with client-varying intercepts and slopes.
    name : str, optional
        Method name (default ``fit``).
    family : str, optional
        The family the model predicts (default: the family the model declares,
        ``model.family``, as every zoo model does; for a model that declares none,
        or a model factory, the comparison's).
    **fit_kwargs
        Passed to the fit function (``num_chains``, ``num_warmup``, ``rounds``...).
        Progress bars are off unless asked for.
    """
    if fit not in BAYESIAN_METHODS:
        raise ComparisonError(
            f"unknown Bayesian fit {fit!r}; choose one of {', '.join(BAYESIAN_METHODS)}"
        )
    if family is None and model is not None and not callable_model(model):
        family = _model_family(model)
    family = None if family is None else check_family(family)

    def fit_fn(data: FederatedData, seed: int, **hparams) -> PosteriorPredictor:
        try:
            fam = family or infer_family(data)
        except ComparisonError:
            raise ComparisonError(
                f"method {name or fit!r}: the target is not 0/1; pass family= to bayesian_method"
            ) from None
        m = _build_model(model, data, fam)
        result = get_method(fit, "compare").fit(data, model=m, seed=seed, **fit_kwargs, **hparams)
        return PosteriorPredictor(result, fam, seed)

    return Method(name or fit, fit_fn, (), family)


def callable_model(model) -> bool:
    """Whether ``model`` is a model factory ``data -> HierarchicalModel`` (not a model)."""
    from bayes_pfl.spec import HierarchicalModel

    return callable(model) and not isinstance(model, HierarchicalModel)


def _build_model(model, data: FederatedData, family: str):
    if model is None:
        from bayes_pfl.models import hierarchical_glm

        if family not in ("bernoulli", "normal", "poisson"):
            raise ComparisonError(f"no default Bayesian model for family {family!r}")
        return hierarchical_glm(family, data.n_features, varying="slopes")
    return model(data) if callable_model(model) else model


# ---------------------------------------------------------------------------
# baselines


@dataclass
class _BaselinePredictor:
    fit: Any
    family: str

    def predict(self, arrays: ClientArrays) -> Prediction:
        out = np.asarray(self.fit.predict(np.asarray(arrays.x), np.asarray(arrays.mask)))
        sd = getattr(self.fit, "noise_sd", None) if self.family == "normal" else None
        return prediction_from_mean(self.family, out, arrays, noise_sd=sd)


def baseline_method(
    method: str,
    *,
    family: str = "bernoulli",
    name: str | None = None,
    grid: Sequence[Mapping[str, Any]] = (),
    **kwargs,
) -> Method:
    """An optimization baseline of :mod:`bayes_pfl.baselines` as a comparison method.

    Parameters
    ----------
    method : str
        One of ``bayes_pfl.baselines.BASELINE_NAMES`` (``local``, ``pooled``,
        ``fedavg``, ``fedprox``, ``ditto``, ...).
    family : {"bernoulli", "categorical", "normal", "poisson"}
    name : str, optional
        Method name (default ``method``).
    grid : sequence of dict
        Hyper-parameter candidates (e.g. ``[{"lr": 0.05}, {"lr": 0.2}]``),
        chosen by validation log predictive density.
    **kwargs
        Passed to ``fit_baseline`` (``network``, ``rounds``, ``lr``, ...).
    """
    family = check_family(family)
    from bayes_pfl.baselines import BASELINE_NAMES

    if method not in BASELINE_NAMES:
        raise ComparisonError(
            f"unknown baseline {method!r}; choose one of {', '.join(BASELINE_NAMES)}"
        )

    def fit_fn(data: FederatedData, seed: int, **hparams) -> _BaselinePredictor:
        fit = get_method(method, "compare").fit(
            data, family=family, seed=seed, **{**kwargs, **hparams}
        )
        return _BaselinePredictor(fit, family)

    return Method(name or method, fit_fn, tuple(dict(g) for g in grid), family)


# ---------------------------------------------------------------------------
# hierarchical Bayesian networks (bayes_pfl.neural)


@dataclass
class _NeuralPredictor:
    fit: Any
    family: str
    n_draws: int
    seed: int

    def predict(self, arrays: ClientArrays) -> Prediction:
        probs = self.fit.predict(
            np.asarray(arrays.x), np.asarray(arrays.mask), n_draws=self.n_draws, seed=self.seed
        )
        probs = np.asarray(probs, dtype=np.float64)
        if self.family == "bernoulli":
            return prediction_from_mean("bernoulli", probs[..., 1], arrays)
        return prediction_from_mean("categorical", probs, arrays)


def neural_method(
    variant: str = "bayes_head",
    *,
    family: str = "categorical",
    name: str | None = None,
    grid: Sequence[Mapping[str, Any]] = (),
    n_draws: int = 32,
    **kwargs,
) -> Method:
    """A hierarchical Bayesian network of :mod:`bayes_pfl.neural` as a comparison method.

    Parameters
    ----------
    variant : str
        One of ``bayes_pfl.neural.VARIANTS`` (``bayes_head``, ``bayes_head_bn``,
        ``bayes_head_adapters``).
    family : {"categorical", "bernoulli"}
        Class codes ``0..C-1``; ``bernoulli`` scores ``P(y = 1)`` of a two-class network.
    name : str, optional
        Method name (default ``variant``).
    grid : sequence of dict
        Hyper-parameter candidates, chosen by validation log predictive density.
    n_draws : int
        Posterior draws of each client's head averaged in the predictive.
    **kwargs
        Passed to :func:`~bayes_pfl.neural.fit_neural` (``hidden``, ``rounds``, ``tau``, ...).
    """
    family = check_family(family)
    if family not in ("categorical", "bernoulli"):
        raise ComparisonError(f"the neural networks classify; family {family!r} is not supported")
    from bayes_pfl.neural import VARIANTS

    if variant not in VARIANTS:
        raise ComparisonError(
            f"unknown network variant {variant!r}; choose one of {', '.join(VARIANTS)}"
        )

    def fit_fn(data: FederatedData, seed: int, **hparams) -> _NeuralPredictor:
        kw = {**kwargs, **hparams}
        if family == "bernoulli":
            kw.setdefault("n_classes", 2)
        fit = get_method(variant, "compare").fit(data, seed=seed, **kw)
        return _NeuralPredictor(fit, family, int(n_draws), seed)

    return Method(name or variant, fit_fn, tuple(dict(g) for g in grid), family)


def make_method(
    name: str,
    *,
    family: str = "bernoulli",
    model=None,
    grid: Sequence[Mapping[str, Any]] = (),
    **kwargs,
) -> Method:
    """A method by name: ``"nuts"``, ``"ep"``, ``"one-shot"``, ``"constant"``, a baseline
    or a hierarchical Bayesian network variant (``"bayes_head"``, ...).

    ``model`` and ``kwargs`` go to :func:`bayesian_method` for the Bayesian
    fits, ``kwargs``/``grid`` to :func:`baseline_method` for the baselines and to
    :func:`neural_method` for the networks.

    Raises
    ------
    ComparisonError
        For an unknown name; the message lists the known ones.
    """
    if not isinstance(name, str):
        raise ComparisonError(f"a method name must be a string, got {name!r}")
    try:
        kind = get_method(name, "compare").kind
    except UnknownMethod as exc:
        raise ComparisonError(str(exc)) from None
    if kind in ("reference", "federated"):
        return bayesian_method(name, model, family=family, **kwargs)
    if kind == "constant":
        return constant_method(family=family, grid=grid)
    if kind == "baseline":
        return baseline_method(name, family=family, grid=grid, **kwargs)
    return neural_method(name, family=family, grid=grid, **kwargs)


# ---------------------------------------------------------------------------
# imputation (for methods that cannot take missing features)


def _impute_arrays(arr: ClientArrays | None, fill: np.ndarray, cols: np.ndarray):
    if arr is None:
        return None
    x = np.asarray(arr.x, dtype=np.float64)
    miss = np.isnan(x)
    filled = np.where(miss, fill, x)
    ind = miss[..., cols].astype(x.dtype)
    new_x = np.concatenate([filled, ind], axis=-1) * np.asarray(arr.mask)[..., None]
    return ClientArrays(new_x.astype(arr.x.dtype), arr.y, arr.mask)


def _imputer(data: FederatedData):
    tr = data.train
    x = np.asarray(tr.x, dtype=np.float64)[np.asarray(tr.mask)]
    miss = np.isnan(x)
    with np.errstate(invalid="ignore"):
        fill = np.where(miss.all(axis=0), 0.0, np.nanmean(np.where(miss, np.nan, x), axis=0))
    cols = np.flatnonzero(miss.any(axis=0))
    return fill, cols


def with_imputation(method: Method, *, name: str | None = None) -> Method:
    """``method`` on mean-imputed features plus one missing-indicator column per feature.

    The fill values are the pooled training means (what a federation computes
    from per-client sums and counts); indicators are added for the features
    with a missing value in the training rows. Use it for methods that cannot
    take ``NaN`` features (``FederatedData.from_pandas(..., missing="keep")``).
    """

    def fit_fn(data: FederatedData, seed: int, **hparams) -> Predictor:
        fill, cols = _imputer(data)
        feats = (*data.features, *(f"{data.features[j]}_missing" for j in cols))
        imputed = replace(
            data,
            features=tuple(feats),
            train=_impute_arrays(data.train, fill, cols),
            val=_impute_arrays(data.val, fill, cols),
            test=None,
        )
        inner = method.fit_fn(imputed, seed, **hparams)
        return _ImputedPredictor(inner, fill, cols)

    return Method(name or method.name, fit_fn, method.grid, method.family)


@dataclass
class _ImputedPredictor:
    inner: Any
    fill: np.ndarray
    cols: np.ndarray

    def predict(self, arrays: ClientArrays) -> Prediction:
        return self.inner.predict(_impute_arrays(arrays, self.fill, self.cols))
