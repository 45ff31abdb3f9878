"""Compare personalized federated methods on identical splits, per client and by client size.

:func:`compare` fits every method of a list on the same
:class:`~bayes_pfl.data.FederatedData` (the same training, validation and test
rows for every method), for several seeds, and scores each method's
predictions for every client's held-out test rows with :mod:`bayes_pfl.metrics`:
mean log predictive density, log-loss, accuracy, Brier score and expected
calibration error for classifiers; log predictive density, RMSE and 90%
interval coverage for regression. The result, a :class:`ComparisonResult`,
holds one row per method x seed x client and aggregates it per method
(:meth:`~ComparisonResult.summary`) and per client-size bucket
(:meth:`~ComparisonResult.by_bucket`); :meth:`~ComparisonResult.to_csv` writes
the tables and a short markdown summary, :func:`plot_comparison` and
:func:`plot_method_calibration` draw them.

A method is a :class:`Method`: a name and ``fit_fn(data, seed, **hparams)``
returning a *predictor*, anything with ``predict(arrays) -> Prediction``. The
adapters build them:

* :func:`bayesian_method` for the hierarchical Bayesian fits (``"nuts"``:
  centralized NUTS, :func:`~bayes_pfl.centralized.fit_nuts`; ``"ep"``:
  federated EP, :func:`~bayes_pfl.federated.fit_ep`; ``"one-shot"``:
  :func:`~bayes_pfl.federated.fit_one_shot`), predicting with posterior draws:
  the log predictive density of a row is ``log mean_s p(y_i | theta^(s))`` and
  the 90% interval the 5% and 95% quantiles of posterior predictive draws;
* :func:`baseline_method` for the optimization baselines of
  :mod:`bayes_pfl.baselines` (``local``, ``pooled``, ``fedavg``, ...), whose
  point predictions become predictive densities through the likelihood
  (Bernoulli, categorical, Poisson, or Normal with each client's residual sd);
* :func:`neural_method` for the hierarchical Bayesian networks of
  :mod:`bayes_pfl.neural` (``bayes_head``, ``bayes_head_bn``, ``bayes_head_adapters``),
  predicting with each client's posterior predictive class probabilities;
* :func:`make_method` builds any of them from a name;
* :func:`constant_method` (each client's training mean) and, on synthetic
  federations, :func:`oracle_method` (the true parameters) are references.

Seeds. ``seeds=(0, 1, 2)`` runs every method once per seed. ``data`` is either a
:class:`~bayes_pfl.data.FederatedData` (the same split for every seed; the seed
changes only the methods' randomness) or a function ``seed -> FederatedData``
(a new split per seed, shared by every method of that seed).

Tuning. A method with a ``grid`` of hyper-parameter candidates is fitted on the
training rows once per candidate and the candidate with the best mean
per-client *validation* log predictive density is kept; the test rows are
never used to choose anything. With ``refit=True`` (default) every method's
final fit then uses the training and validation rows together, so that all
methods, tuned or not, learn from the same rows.

Examples
--------
>>> import numpy as np, pandas as pd
>>> from bayes_pfl.data import FederatedData
>>> rng = np.random.default_rng(0)
>>> df = pd.DataFrame({"c": np.repeat(["a", "b", "c"], 30), "x": rng.normal(size=90)})
>>> df["y"] = (rng.random(90) < 1 / (1 + np.exp(-2 * df["x"]))).astype(int)
>>> data = FederatedData.from_pandas(df, client_col="c", target="y", features=["x"],
...                                  test_size=0.3)
>>> res = compare(data, [constant_method()], seeds=[0, 1])
>>> res.table[["method", "seed", "client", "n_train", "bucket"]].head(3)
     method  seed client  n_train bucket
0  constant     0      a       21  11-50
1  constant     0      b       21  11-50
2  constant     0      c       21  11-50
>>> round(float(res.summary().loc["constant", "accuracy_mean"]), 3)
0.519
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np
import pandas as pd

from bayes_pfl import metrics as M
from bayes_pfl.data import ClientArrays, FederatedData

__all__ = [
    "BAYESIAN_METHODS",
    "FAMILIES",
    "ComparisonError",
    "ComparisonResult",
    "Method",
    "Prediction",
    "Predictor",
    "baseline_method",
    "bayesian_method",
    "compare",
    "compare_main",
    "constant_method",
    "make_method",
    "neural_method",
    "oracle_method",
    "plot_comparison",  # noqa: F822 (on first use: __getattr__ below)
    "plot_method_calibration",  # noqa: F822
    "prediction_from_mean",
    "size_bucket",
    "with_imputation",
]

FAMILIES = ("bernoulli", "categorical", "normal", "poisson")
BAYESIAN_METHODS = ("nuts", "ep", "one-shot", "vi")
DEFAULT_BUCKETS = (10, 50)
INTERVAL_PROB = 0.9
_Z90 = 1.6448536269514722  # standard normal 95% quantile: a central 90% interval

# metric columns, in table order, and whether higher is better
METRICS: dict[str, bool] = {
    "lpd": True,
    "log_loss": False,
    "accuracy": True,
    "brier": False,
    "ece": False,
    "rmse": False,
    "coverage90": True,
}
_CLASSIFICATION_METRICS = ("lpd", "log_loss", "accuracy", "brier", "ece")
_REGRESSION_METRICS = ("lpd", "rmse", "coverage90")


class ComparisonError(ValueError):
    """Invalid input to the comparison (unknown method, family mismatch, missing split)."""


# ---------------------------------------------------------------------------
# predictions and methods


class Prediction(NamedTuple):
    """Predictions for the rows of one split, laid out like its :class:`ClientArrays`.

    Attributes
    ----------
    log_density : numpy.ndarray
        ``log p(y_i | training data)`` of each row's *observed* target,
        shape ``(K, n)``.
    mean : numpy.ndarray
        Point prediction, shape ``(K, n)``: ``P(y = 1)`` for ``bernoulli``, the
        predictive mean for ``normal`` and ``poisson``, the arg-max class for
        ``categorical``.
    probs : numpy.ndarray, optional
        Class probabilities ``(K, n, C)`` (``categorical`` only).
    lower, upper : numpy.ndarray, optional
        Central 90% predictive interval ``(K, n)``, where the method gives one.
    """

    log_density: np.ndarray
    mean: np.ndarray
    probs: np.ndarray | None = None
    lower: np.ndarray | None = None
    upper: np.ndarray | None = None


class Predictor(Protocol):
    """What a method's ``fit_fn`` returns."""

    def predict(self, arrays: ClientArrays) -> Prediction: ...


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


def _scatter(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``(..., n_obs)`` values of the masked rows back into ``(..., K, n)`` (0 elsewhere)."""
    values = np.asarray(values, dtype=np.float64)
    out = np.zeros(values.shape[:-1] + mask.shape)
    out[..., mask] = values
    return out


def _bernoulli_log_density(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    q = np.clip(p, M.EPS, 1.0 - M.EPS)
    return np.where(y > 0.5, np.log(q), np.log1p(-q))


def prediction_from_mean(
    family: str,
    mean,
    arrays: ClientArrays,
    *,
    noise_sd=None,
) -> Prediction:
    """A :class:`Prediction` from a point prediction, through the likelihood.

    Parameters
    ----------
    family : {"bernoulli", "categorical", "normal", "poisson"}
    mean : array
        ``P(y = 1)`` ``(K, n)``, class probabilities ``(K, n, C)``, the mean of a
        Normal ``(K, n)`` or a Poisson rate ``(K, n)``.
    arrays : ClientArrays
        The rows predicted (their ``y`` gives the log density).
    noise_sd : array, optional
        ``normal`` only: the predictive sd, per client ``(K,)`` or per row
        ``(K, n)``.

    Examples
    --------
    >>> import numpy as np
    >>> arr = ClientArrays(np.zeros((1, 2, 1)), np.array([[1.0, 3.0]]), np.ones((1, 2), bool))
    >>> pred = prediction_from_mean("normal", np.array([[1.0, 1.0]]), arr, noise_sd=[2.0])
    >>> np.round(pred.upper, 3).tolist()
    [[4.29, 4.29]]
    """
    family = _check_family(family)
    y = np.asarray(arrays.y, dtype=np.float64)
    mask = np.asarray(arrays.mask, dtype=bool)
    mu = np.asarray(mean, dtype=np.float64)
    if family == "bernoulli":
        p = np.where(mask, mu, 0.5)
        return Prediction(np.where(mask, _bernoulli_log_density(p, y), 0.0), p)
    if family == "categorical":
        probs = np.where(mask[..., None], mu, 1.0 / mu.shape[-1])
        labels = np.where(mask, y, 0).astype(np.int64)
        chosen = np.take_along_axis(probs, labels[..., None], axis=-1)[..., 0]
        ld = np.where(mask, np.log(np.clip(chosen, M.EPS, 1.0)), 0.0)
        return Prediction(ld, np.argmax(probs, axis=-1).astype(np.float64), probs=probs)
    if family == "normal":
        if noise_sd is None:
            raise ComparisonError("a normal point prediction needs noise_sd for its density")
        sd = np.asarray(noise_sd, dtype=np.float64)
        if sd.ndim == 1:
            sd = np.broadcast_to(sd[:, None], mu.shape)
        sd = np.maximum(sd, 1e-12)
        ld = -0.5 * ((y - mu) / sd) ** 2 - np.log(sd) - 0.5 * math.log(2 * math.pi)
        return Prediction(np.where(mask, ld, 0.0), mu, lower=mu - _Z90 * sd, upper=mu + _Z90 * sd)
    from scipy import stats

    rate = np.maximum(mu, 1e-12)
    ld = stats.poisson.logpmf(np.where(mask, y, 0), rate)
    lo = stats.poisson.ppf((1 - INTERVAL_PROB) / 2, rate)
    hi = stats.poisson.ppf((1 + INTERVAL_PROB) / 2, rate)
    return Prediction(np.where(mask, ld, 0.0), mu, lower=lo, upper=hi)


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
        return _bernoulli_log_density(mean, y)
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
    family = _check_family(family)
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


@dataclass
class PosteriorPredictor:
    """Predictions from posterior draws of a :class:`~bayes_pfl.results.FitResult`.

    ``bernoulli``: ``P(y_i = 1) = mean_s p(y_i = 1 | theta^(s))`` (exact given
    the draws) and the log density follows from it. ``normal``/``poisson``:
    ``log mean_s p(y_i | theta^(s))``, the predictive mean and the 90% interval
    from posterior predictive draws of ``y``.
    """

    result: Any
    family: str
    seed: int = 0

    def predict(self, arrays: ClientArrays) -> Prediction:
        x = np.asarray(arrays.x)
        y = np.asarray(arrays.y, dtype=np.float64)
        mask = np.asarray(arrays.mask, dtype=bool)
        if self.family == "bernoulli":
            ll1 = self.result.pointwise_loglik(x, np.ones_like(y), mask)
            p_obs = np.exp(M.log_mean_exp_draws(ll1, axis=(0, 1)))
            p = np.where(mask, _scatter(np.clip(p_obs, 0.0, 1.0), mask), 0.5)
            return Prediction(np.where(mask, _bernoulli_log_density(p, y), 0.0), p)
        ll = self.result.pointwise_loglik(x, y, mask)
        lpd = _scatter(M.log_mean_exp_draws(ll, axis=(0, 1)), mask)
        yrep = np.asarray(self.result.predictive(x, mask, seed=self.seed), dtype=np.float64)
        yrep = yrep.reshape(-1, yrep.shape[-1])
        q = np.quantile(yrep, [(1 - INTERVAL_PROB) / 2, (1 + INTERVAL_PROB) / 2], axis=0)
        return Prediction(
            lpd,
            _scatter(yrep.mean(axis=0), mask),
            lower=_scatter(q[0], mask),
            upper=_scatter(q[1], mask),
        )


def _model_family(model) -> str | None:
    name = getattr(model, "name", "") or ""
    for fam in FAMILIES:
        if name.startswith(fam):
            return fam
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
        The family the model predicts (default: from the zoo model's name,
        e.g. ``bernoulli_slopes_noncentered``, or the comparison's).
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
    family = None if family is None else _check_family(family)

    def fit_fn(data: FederatedData, seed: int, **hparams) -> PosteriorPredictor:
        from bayes_pfl.centralized import fit_nuts
        from bayes_pfl.federated import fit_ep, fit_one_shot

        try:
            fam = family or _infer_family(data)
        except ComparisonError:
            raise ComparisonError(
                f"method {name or fit!r}: the target is not 0/1; pass family= to bayesian_method"
            ) from None
        m = _build_model(model, data, fam)
        kw = {**fit_kwargs, **hparams}
        if fit == "nuts":
            kw.setdefault("progress_bar", False)
            result = fit_nuts(m, data, seed=seed, **kw)
        else:
            from bayes_pfl.federated_vi import fit_vi

            kw.setdefault("progress", False)
            fn = {"ep": fit_ep, "one-shot": fit_one_shot, "vi": fit_vi}[fit]
            result = fn(m, data, seed=seed, **kw)
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
    family = _check_family(family)
    from bayes_pfl.baselines import BASELINE_NAMES, fit_baseline

    if method not in BASELINE_NAMES:
        raise ComparisonError(
            f"unknown baseline {method!r}; choose one of {', '.join(BASELINE_NAMES)}"
        )

    def fit_fn(data: FederatedData, seed: int, **hparams) -> _BaselinePredictor:
        kw = {"progress": False, **kwargs, **hparams}
        fit = fit_baseline(method, data, family=family, seed=seed, **kw)
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
    family = _check_family(family)
    if family not in ("categorical", "bernoulli"):
        raise ComparisonError(f"the neural networks classify; family {family!r} is not supported")
    from bayes_pfl.neural import VARIANTS, fit_neural

    if variant not in VARIANTS:
        raise ComparisonError(
            f"unknown network variant {variant!r}; choose one of {', '.join(VARIANTS)}"
        )

    def fit_fn(data: FederatedData, seed: int, **hparams) -> _NeuralPredictor:
        kw = {"progress": False, **kwargs, **hparams}
        if family == "bernoulli":
            kw.setdefault("n_classes", 2)
        fit = fit_neural(data, variant=variant, seed=seed, **kw)
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
    if name in BAYESIAN_METHODS:
        return bayesian_method(name, model, family=family, **kwargs)
    if name == "constant":
        return constant_method(family=family, grid=grid)
    try:
        from bayes_pfl.baselines import BASELINE_NAMES
    except ImportError:  # pragma: no cover - baselines not installed
        BASELINE_NAMES = ()
    if name in BASELINE_NAMES:
        return baseline_method(name, family=family, grid=grid, **kwargs)
    from bayes_pfl.neural import VARIANTS

    if name in VARIANTS:
        return neural_method(name, family=family, grid=grid, **kwargs)
    known = [*BAYESIAN_METHODS, "constant", *BASELINE_NAMES, *VARIANTS]
    raise ComparisonError(f"unknown method {name!r}; known methods: {', '.join(known)}")


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


# ---------------------------------------------------------------------------
# validation


def _check_family(family) -> str:
    if family not in FAMILIES:
        raise ComparisonError(f"unknown family {family!r}; choose one of {', '.join(FAMILIES)}")
    return family


def _real_targets(data: FederatedData) -> np.ndarray:
    parts = []
    for arr in (data.train, data.val, data.test):
        if arr is not None:
            parts.append(np.asarray(arr.y, dtype=np.float64)[np.asarray(arr.mask)])
    return np.concatenate(parts)


def _infer_family(data: FederatedData) -> str:
    y = _real_targets(data)
    if np.all((y == 0) | (y == 1)):
        return "bernoulli"
    raise ComparisonError(
        "cannot infer the outcome family from a non-binary target; pass family= "
        f"(one of {', '.join(FAMILIES)})"
    )


def _check_targets(data: FederatedData, family: str) -> None:
    y = _real_targets(data)
    integer = np.all(y == np.round(y))
    if family == "bernoulli" and not np.all((y == 0) | (y == 1)):
        bad = np.unique(y[(y != 0) & (y != 1)])[:5]
        raise ComparisonError(
            f"family 'bernoulli' needs a 0/1 target; target {data.target!r} has values {bad}"
        )
    if family in ("poisson", "categorical") and not (integer and np.all(y >= 0)):
        raise ComparisonError(
            f"family {family!r} needs a non-negative integer target; target {data.target!r} is not"
        )


def _check_methods(methods, family: str) -> list[Method]:
    if isinstance(methods, Method | str):
        methods = [methods]
    out = []
    for m in methods:
        if isinstance(m, str):
            m = make_method(m, family=family)
        if not isinstance(m, Method):
            raise ComparisonError(
                f"methods must be Method objects or method names, got {type(m).__name__}"
            )
        if m.family is not None and m.family != family:
            raise ComparisonError(
                f"method {m.name!r} predicts family {m.family!r} but the comparison is for "
                f"family {family!r}"
            )
        out.append(m)
    if not out:
        raise ComparisonError("no methods to compare")
    names = [m.name for m in out]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ComparisonError(f"method names must be unique; repeated: {repeated}")
    return out


def _check_seeds(seeds) -> tuple[int, ...]:
    if isinstance(seeds, int | np.integer) and not isinstance(seeds, bool):
        seeds = (int(seeds),)
    seeds = tuple(seeds)
    if not seeds:
        raise ComparisonError("seeds is empty")
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, int | np.integer) or s < 0:
            raise ComparisonError(f"seeds must be non-negative integers, got {s!r}")
    if len(set(seeds)) != len(seeds):
        raise ComparisonError(f"seeds must be distinct, got {list(seeds)}")
    return tuple(int(s) for s in seeds)


def _check_buckets(buckets) -> tuple[int, ...]:
    edges = tuple(int(b) for b in buckets)
    if not edges or any(b < 0 for b in edges) or list(edges) != sorted(set(edges)):
        raise ComparisonError(f"buckets must be increasing non-negative edges, got {buckets!r}")
    return edges


def _check_prediction(pred, arrays: ClientArrays, name: str, family: str) -> Prediction:
    if not isinstance(pred, Prediction):
        raise ComparisonError(
            f"method {name!r}: predict() must return a Prediction, got {type(pred).__name__}"
        )
    shape = np.asarray(arrays.mask).shape
    for fld in ("log_density", "mean", "lower", "upper"):
        v = getattr(pred, fld)
        if v is not None and np.shape(v) != shape:
            raise ComparisonError(
                f"method {name!r}: prediction {fld} has shape {np.shape(v)}, expected {shape}"
            )
    if family == "categorical" and pred.probs is None:
        raise ComparisonError(f"method {name!r}: categorical predictions need probs")
    mask = np.asarray(arrays.mask)
    if not np.all(np.isfinite(np.asarray(pred.log_density)[mask])):
        raise ComparisonError(f"method {name!r}: non-finite log predictive density")
    return pred


# ---------------------------------------------------------------------------
# buckets, merging splits, scoring


def size_bucket(n_train, edges: Sequence[int] = DEFAULT_BUCKETS) -> pd.Categorical:
    """Client-size bucket labels of training-row counts.

    Edges ``(10, 50)`` give the buckets ``"<=10"``, ``"11-50"`` and ``">50"``
    (an ordered categorical).

    Examples
    --------
    >>> list(size_bucket([3, 10, 11, 50, 51]))
    ['<=10', '<=10', '11-50', '11-50', '>50']
    """
    edges = _check_buckets(edges)
    labels = [f"<={edges[0]}"]
    labels += [f"{lo + 1}-{hi}" for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
    labels.append(f">{edges[-1]}")
    n = np.asarray(n_train)
    idx = np.searchsorted(np.asarray(edges), n, side="left")
    return pd.Categorical.from_codes(idx, categories=labels, ordered=True)


def _merge_train_val(data: FederatedData) -> FederatedData:
    """Training and validation rows together as the training split (validation emptied)."""
    tr, va = data.train, data.val
    if va is None:
        return data
    counts = tr.n + va.n
    n_max = int(counts.max())
    k, p = tr.x.shape[0], tr.x.shape[2]
    x = np.zeros((k, n_max, p), dtype=tr.x.dtype)
    y = np.zeros((k, n_max), dtype=tr.y.dtype)
    for j in range(k):
        a, b = int(tr.n[j]), int(va.n[j])
        x[j, :a], y[j, :a] = tr.x[j, :a], tr.y[j, :a]
        x[j, a : a + b], y[j, a : a + b] = va.x[j, :b], va.y[j, :b]
    mask = np.arange(n_max) < counts[:, None]
    for a in (x, y, mask):
        a.flags.writeable = False
    index = dict(data.row_index)
    if "train" in index and "val" in index:
        tb = np.concatenate([[0], np.cumsum(tr.n)])
        vb = np.concatenate([[0], np.cumsum(va.n)])
        parts = []
        for j in range(k):
            parts.append(index["train"][tb[j] : tb[j + 1]])
            parts.append(index["val"][vb[j] : vb[j + 1]])
        index["train"] = parts[0].append(parts[1:])
        index.pop("val")
    return replace(data, train=ClientArrays(x, y, mask), val=None, row_index=index)


def _without_test(data: FederatedData) -> FederatedData:
    return replace(data, test=None)


def _score(pred: Prediction, arrays: ClientArrays, family: str, n_bins: int) -> dict:
    y, mask = np.asarray(arrays.y, dtype=np.float64), np.asarray(arrays.mask, dtype=bool)
    out = {"lpd": M.log_predictive_density(pred.log_density, mask)}
    if family in ("bernoulli", "categorical"):
        p = pred.probs if family == "categorical" else pred.mean
        out["log_loss"] = -out["lpd"]
        out["accuracy"] = M.accuracy(p, y, mask)
        out["brier"] = M.brier_score(p, y, mask)
        out["ece"] = M.expected_calibration_error(p, y, mask, n_bins=n_bins)
    else:
        out["rmse"] = M.rmse(pred.mean, y, mask)
        if pred.lower is not None and pred.upper is not None:
            out["coverage90"] = M.interval_coverage(pred.lower, pred.upper, y, mask)
        else:
            out["coverage90"] = np.full(mask.shape[0], np.nan)
    return out


def _validation_score(pred: Prediction, arrays: ClientArrays) -> float:
    lpd = M.log_predictive_density(pred.log_density, np.asarray(arrays.mask))
    return float(np.nanmean(lpd))


# ---------------------------------------------------------------------------
# the result


def _fmt(mean: float, sd: float, digits: int = 3) -> str:
    if not np.isfinite(mean):
        return "-"
    if not np.isfinite(sd):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {sd:.{digits}f}"


@dataclass
class ComparisonResult:
    """Per-client test metrics of every method and seed, and their summaries.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per method x seed x client: ``method``, ``seed``, ``client``,
        ``n_train`` (rows the final fit learnt from), ``n_test``, ``bucket``
        (client size by ``n_train``), the metrics (``lpd``, and ``log_loss``,
        ``accuracy``, ``brier``, ``ece`` for classifiers or ``rmse``,
        ``coverage90`` for regression), ``fit_time_s`` and ``hparams`` (the
        chosen candidate, JSON).
    family : str
    metrics : tuple of str
        The metric columns of :attr:`table`.
    seeds : tuple of int
    methods : tuple of str
        Method names in the order given.
    predictions : dict
        ``(method, seed) -> (Prediction, test ClientArrays)``, for plots.
    tuning : pandas.DataFrame
        Validation score of every grid candidate (``method``, ``seed``,
        ``hparams``, ``val_lpd``, ``chosen``).
    info : dict
        Settings: buckets, refit, data description.
    """

    table: pd.DataFrame
    family: str
    metrics: tuple[str, ...]
    seeds: tuple[int, ...]
    methods: tuple[str, ...]
    predictions: dict = field(default_factory=dict, repr=False)
    tuning: pd.DataFrame = field(default_factory=pd.DataFrame)
    info: dict[str, Any] = field(default_factory=dict)

    def _per_seed(self, keys: list[str], weighted: bool) -> pd.DataFrame:
        t = self.table
        if weighted:
            w = t["n_test"].astype(float)
            num = t[list(self.metrics)].mul(w, axis=0)
            num[keys] = t[keys]
            num["_w"] = w.where(t[list(self.metrics)].notna().any(axis=1), 0.0)
            g = num.groupby(keys, observed=True, sort=False)
            return g[list(self.metrics)].sum().div(g["_w"].sum(), axis=0)
        return t.groupby(keys, observed=True, sort=False)[list(self.metrics)].mean()

    def _across_seeds(self, per_seed: pd.DataFrame, by: list[str]) -> pd.DataFrame:
        g = per_seed.groupby(level=by, observed=True, sort=False)
        mean, sd = g.mean(), g.std(ddof=1)
        out = pd.DataFrame(index=mean.index)
        for m in self.metrics:
            out[f"{m}_mean"] = mean[m]
            out[f"{m}_sd"] = sd[m]
        out["n_seeds"] = g.size()
        return out

    def summary(self, *, weighted: bool = False) -> pd.DataFrame:
        """Mean per-client metrics per method, mean and sd across seeds.

        For each method and seed the metrics are averaged over clients (each
        client counts once; ``weighted=True`` weights clients by their test
        rows, i.e. pools the rows); ``<metric>_mean`` and ``<metric>_sd`` are the
        mean and standard deviation of these averages across seeds (``sd`` is
        NaN with one seed). Indexed by method, in the order given.
        """
        per = self._per_seed(["method", "seed"], weighted)
        out = self._across_seeds(per, ["method"])
        return out.reindex(list(self.methods))

    def by_bucket(self, *, weighted: bool = False) -> pd.DataFrame:
        """As :meth:`summary`, per client-size bucket: indexed by ``(bucket, method)``.

        ``n_clients`` is the mean number of clients in the bucket per seed.
        """
        per = self._per_seed(["bucket", "method", "seed"], weighted)
        out = self._across_seeds(per, ["bucket", "method"])
        counts = (
            self.table.groupby(["bucket", "method", "seed"], observed=True, sort=False)
            .size()
            .groupby(level=["bucket", "method"], observed=True, sort=False)
            .mean()
        )
        out["n_clients"] = counts
        order = [
            (b, m)
            for b in self.table["bucket"].cat.categories
            for m in self.methods
            if (b, m) in out.index
        ]
        return out.reindex(pd.MultiIndex.from_tuples(order, names=["bucket", "method"]))

    def best(self, metric: str, *, by_bucket: bool = False) -> pd.Series | str:
        """The method with the best mean ``metric`` (per bucket with ``by_bucket``)."""
        if metric not in self.metrics:
            raise ComparisonError(f"unknown metric {metric!r}; have {list(self.metrics)}")
        col = f"{metric}_mean"
        higher = METRICS[metric]
        if not by_bucket:
            s = self.summary()[col]
            return str(s.idxmax() if higher else s.idxmin())
        s = self.by_bucket()[col]
        g = s.groupby(level="bucket", observed=True, sort=False)
        return (g.idxmax() if higher else g.idxmin()).map(lambda ix: ix[1])

    def main_metric(self) -> str:
        """``log_loss`` for classifiers, ``lpd`` otherwise."""
        return "log_loss" if "log_loss" in self.metrics else "lpd"

    def to_markdown(self, *, title: str = "Method comparison", digits: int = 3) -> str:
        """A short markdown summary: per-method table (best in bold), by-bucket table."""
        s = self.summary()
        lines = [f"# {title}", ""]
        info = self.info.get("data", {})
        desc = ", ".join(f"{k} {v}" for k, v in info.items())
        lines.append(
            f"Family `{self.family}`; seeds {list(self.seeds)}; {desc}. Metrics are per-client "
            "test-set values averaged over clients, then mean ± sd across seeds."
        )
        lines.append("")
        header = ["method", *self.metrics]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join(" --- " for _ in header) + "|")
        best = {}
        for m in self.metrics:
            col = s[f"{m}_mean"]
            if col.notna().any():
                best[m] = col.idxmax() if METRICS[m] else col.idxmin()
            if m == "coverage90" and col.notna().any():
                best[m] = (col - INTERVAL_PROB).abs().idxmin()
        for meth in s.index:
            cells = []
            for m in self.metrics:
                txt = _fmt(s.loc[meth, f"{m}_mean"], s.loc[meth, f"{m}_sd"], digits)
                cells.append(f"**{txt}**" if best.get(m) == meth else txt)
            lines.append(f"| {meth} | " + " | ".join(cells) + " |")
        lines.append("")
        metric = self.main_metric()
        b = self.by_bucket()
        lines.append(f"## {metric} by client-size bucket (training rows)")
        lines.append("")
        buckets = [c for c in self.table["bucket"].cat.categories if c in b.index.levels[0]]
        lines.append("| method | " + " | ".join(f"{c} ({_nclients(b, c)})" for c in buckets) + " |")
        lines.append("|" + "|".join(" --- " for _ in range(len(buckets) + 1)) + "|")
        for meth in self.methods:
            cells = []
            for c in buckets:
                if (c, meth) in b.index:
                    row = b.loc[(c, meth)]
                    cells.append(_fmt(row[f"{metric}_mean"], row[f"{metric}_sd"], digits))
                else:
                    cells.append("-")
            lines.append(f"| {meth} | " + " | ".join(cells) + " |")
        if len(self.tuning):
            lines += ["", "## Tuned hyper-parameters (chosen on validation rows)", ""]
            chosen = self.tuning[self.tuning["chosen"]]
            for meth, g in chosen.groupby("method", sort=False):
                picks = ", ".join(f"seed {r.seed}: {r.hparams}" for r in g.itertuples())
                lines.append(f"- {meth}: {picks}")
        return "\n".join(lines) + "\n"

    def to_csv(self, out_dir: str | Path, *, title: str = "Method comparison") -> dict[str, Path]:
        """Write ``comparison.csv`` (the table), ``summary.csv``, ``by_bucket.csv``,
        ``tuning.csv`` (when methods were tuned) and ``summary.md``; return their paths."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {
            "table": out / "comparison.csv",
            "summary": out / "summary.csv",
            "by_bucket": out / "by_bucket.csv",
            "markdown": out / "summary.md",
        }
        self.table.to_csv(paths["table"], index=False)
        self.summary().to_csv(paths["summary"])
        self.by_bucket().to_csv(paths["by_bucket"])
        if len(self.tuning):
            paths["tuning"] = out / "tuning.csv"
            self.tuning.to_csv(paths["tuning"], index=False)
        paths["markdown"].write_text(self.to_markdown(title=title))
        return paths


def _nclients(b: pd.DataFrame, bucket) -> str:
    n = b.xs(bucket, level="bucket")["n_clients"].max()
    return f"{n:g} client{'' if n == 1 else 's'}"


# ---------------------------------------------------------------------------
# the harness


def _data_for_seed(data, seed: int) -> FederatedData:
    d = data(seed) if callable(data) and not isinstance(data, FederatedData) else data
    if not isinstance(d, FederatedData):
        raise ComparisonError(
            "data must be a FederatedData or a function seed -> FederatedData, got "
            f"{type(d).__name__}"
        )
    if d.test is None or not np.asarray(d.test.mask).any():
        raise ComparisonError(
            "the data have no test rows: build them with FederatedData.from_pandas(..., "
            "test_size=...)"
        )
    return d


def _progress(enabled: bool, msg: str) -> None:
    if enabled:
        print(msg, file=sys.stderr, flush=True)


def compare(
    data: FederatedData | Callable[[int], FederatedData],
    methods: Sequence[Method | str],
    *,
    seeds: Sequence[int] | int = (0,),
    family: str | None = None,
    buckets: Sequence[int] = DEFAULT_BUCKETS,
    refit: bool = True,
    n_bins: int = 10,
    progress: bool = False,
) -> ComparisonResult:
    """Fit and score every method on identical splits, for every seed.

    Parameters
    ----------
    data : FederatedData or callable
        Data with a test split, or ``seed -> FederatedData`` for one split per
        seed (e.g. ``lambda s: FederatedData.from_pandas(df, ..., seed=s)``).
    methods : sequence of Method or str
        Methods (see :func:`make_method` for names).
    seeds : sequence of int or int
        Seeds; each method is fitted once per seed (plus once per grid
        candidate when tuned).
    family : {"bernoulli", "categorical", "normal", "poisson"}, optional
        The outcome family; inferred as ``bernoulli`` for a 0/1 target and
        required otherwise.
    buckets : sequence of int
        Edges of the client-size buckets (training rows), see :func:`size_bucket`.
    refit : bool
        Fit the final models on training plus validation rows (default) or on
        the training rows only. Candidates of a grid are always fitted on the
        training rows and scored on the validation rows.
    n_bins : int
        Bins of the expected calibration error.
    progress : bool
        Print one line per fit to stderr.

    Returns
    -------
    ComparisonResult

    Raises
    ------
    ComparisonError
        Unknown method names, repeated names, a method of another family, a
        target that does not fit the family, no test rows, a grid without
        validation rows, bad seeds or buckets, malformed predictions.
    """
    seeds = _check_seeds(seeds)
    edges = _check_buckets(buckets)
    first = _data_for_seed(data, seeds[0])
    family = _infer_family(first) if family is None else _check_family(family)
    methods = _check_methods(methods, family)

    rows, tuning, predictions = [], [], {}
    data_desc: dict[str, Any] = {}
    for seed in seeds:
        d = first if seed == seeds[0] else _data_for_seed(data, seed)
        _check_targets(d, family)
        train_data = _without_test(d)
        final_data = _merge_train_val(train_data) if refit else train_data
        n_train = final_data.n_rows("train")
        n_test = d.n_rows("test")
        bucket = size_bucket(n_train, edges)
        if not data_desc:
            data_desc = {
                "clients": d.n_clients,
                "train rows": int(n_train.sum()),
                "test rows": int(n_test.sum()),
                "median client train rows": float(np.median(n_train)),
            }
        for m in methods:
            hparams: dict[str, Any] = {}
            if len(m.grid) > 1:
                if d.val is None or not np.asarray(d.val.mask).any():
                    raise ComparisonError(
                        f"method {m.name!r} has a grid of {len(m.grid)} candidates but the "
                        "data have no validation rows (use val_size=...)"
                    )
                scores = []
                for cand in m.grid:
                    t0 = time.perf_counter()
                    fitted = m.fit_fn(train_data, seed, **cand)
                    pred = _check_prediction(fitted.predict(d.val), d.val, m.name, family)
                    scores.append(_validation_score(pred, d.val))
                    _progress(
                        progress,
                        f"[seed {seed}] {m.name} {cand}: val lpd {scores[-1]:.4f} "
                        f"({time.perf_counter() - t0:.1f}s)",
                    )
                best = int(np.nanargmax(scores)) if np.isfinite(scores).any() else 0
                hparams = dict(m.grid[best])
                for i, (cand, sc) in enumerate(zip(m.grid, scores, strict=True)):
                    tuning.append(
                        {
                            "method": m.name,
                            "seed": seed,
                            "hparams": json.dumps(cand, sort_keys=True, default=str),
                            "val_lpd": sc,
                            "chosen": i == best,
                        }
                    )
            elif len(m.grid) == 1:
                hparams = dict(m.grid[0])
            t0 = time.perf_counter()
            fitted = m.fit_fn(final_data, seed, **hparams)
            pred = _check_prediction(fitted.predict(d.test), d.test, m.name, family)
            elapsed = time.perf_counter() - t0
            scores = _score(pred, d.test, family, n_bins)
            predictions[(m.name, seed)] = (pred, d.test)
            _progress(
                progress,
                f"[seed {seed}] {m.name}: test lpd {np.nanmean(scores['lpd']):.4f} "
                f"({elapsed:.1f}s)",
            )
            for k, client in enumerate(d.clients):
                row = {
                    "method": m.name,
                    "seed": seed,
                    "client": client,
                    "n_train": int(n_train[k]),
                    "n_test": int(n_test[k]),
                    "bucket": bucket[k],
                }
                row.update({name: float(v[k]) for name, v in scores.items()})
                row["fit_time_s"] = elapsed
                row["hparams"] = json.dumps(hparams, sort_keys=True, default=str)
                rows.append(row)

    metric_names = _CLASSIFICATION_METRICS if family in ("bernoulli", "categorical") else None
    metric_names = metric_names or _REGRESSION_METRICS
    table = pd.DataFrame(rows)
    table["bucket"] = pd.Categorical(
        table["bucket"], categories=list(size_bucket([0], edges).categories), ordered=True
    )
    cols = ["method", "seed", "client", "n_train", "n_test", "bucket", *metric_names]
    table = table[[*cols, "fit_time_s", "hparams"]]
    return ComparisonResult(
        table=table,
        family=family,
        metrics=tuple(metric_names),
        seeds=seeds,
        methods=tuple(m.name for m in methods),
        predictions=predictions,
        tuning=pd.DataFrame(tuning),
        info={"buckets": edges, "refit": refit, "n_bins": n_bins, "data": data_desc},
    )


# ---------------------------------------------------------------------------
# plots: in bayes_pfl.plots.comparison, re-exported on first use (PEP 562) so that
# importing the comparison does not import the plotting code; that module imports
# the comparison only inside its functions

_PLOTS = ("plot_comparison", "plot_method_calibration")


def __getattr__(name: str):
    if name in _PLOTS:
        from bayes_pfl.plots import comparison

        value = getattr(comparison, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_PLOTS))


# ---------------------------------------------------------------------------
# command line


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bayes-pfl compare",
        description="Compare Bayesian and baseline federated methods on identical splits "
        "(per client and by client size); writes CSV tables, summary.md and plots.",
    )
    p.add_argument(
        "--data", required=True, help="a bundled dataset (e.g. heart_disease) or a CSV path"
    )
    p.add_argument("--client-col", help="client column (default: the dataset's)")
    p.add_argument("--target", help="target column (default: the dataset's)")
    p.add_argument("--features", help="comma-separated features (default: the dataset's)")
    p.add_argument("--missing", choices=("error", "drop"), default="error")
    p.add_argument("--family", choices=FAMILIES, help="outcome family (default: 0/1 -> bernoulli)")
    p.add_argument(
        "--methods",
        default="local,pooled,fedavg,nuts",
        help="comma-separated methods: nuts, ep, one-shot, constant, the baselines and "
        "the network variants bayes_head, bayes_head_bn, bayes_head_adapters "
        "(default local,pooled,fedavg,nuts)",
    )
    p.add_argument("--seeds", type=int, default=3, help="number of seeds 0..N-1 (default 3)")
    p.add_argument("--test-size", type=float, default=0.3, help="test fraction per client")
    p.add_argument("--val-size", type=float, default=0.0, help="validation fraction per client")
    p.add_argument("--no-standardize", action="store_true", help="keep raw feature units")
    p.add_argument("--no-refit", action="store_true", help="final fits on training rows only")
    p.add_argument(
        "--varying", choices=("intercept", "slopes"), default="slopes", help="Bayesian GLM"
    )
    p.add_argument("--chains", type=int, default=2, help="NUTS chains (default 2)")
    p.add_argument("--warmup", type=int, default=500, help="NUTS warm-up (default 500)")
    p.add_argument("--samples", type=int, default=500, help="NUTS draws per chain (default 500)")
    p.add_argument("--rounds", type=int, default=50, help="baseline rounds (default 50)")
    p.add_argument("--buckets", default="10,50", help="client-size bucket edges (default 10,50)")
    p.add_argument("--out", default="compare-out", help="output folder (default compare-out)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    p.add_argument("--progress", action="store_true", help="one line per fit on stderr")
    return p


def _cli_data(args) -> Callable[[int], FederatedData]:
    from bayes_pfl.datasets import DATASETS

    if args.data in DATASETS:
        info = DATASETS[args.data]
        df = info.loader()
        client_col = args.client_col or info.client_col
        target = args.target or info.target
        features = args.features.split(",") if args.features else list(info.features)
    else:
        path = Path(args.data)
        if not path.is_file():
            raise ComparisonError(
                f"--data {args.data!r} is neither a bundled dataset ({', '.join(DATASETS)}) "
                "nor a CSV file"
            )
        if not (args.client_col and args.target and args.features):
            raise ComparisonError("a CSV needs --client-col, --target and --features")
        df = pd.read_csv(path)
        client_col, target, features = args.client_col, args.target, args.features.split(",")
    features = [f.strip() for f in features]

    def make(seed: int) -> FederatedData:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # rows dropped: reported in the table
            return FederatedData.from_pandas(
                df,
                client_col=client_col,
                target=target,
                features=features,
                test_size=args.test_size,
                val_size=args.val_size,
                seed=seed,
                standardize=not args.no_standardize,
                missing=args.missing,
            )

    return make


def compare_main(argv: Sequence[str] | None = None) -> int:
    """``bayes-pfl compare``: run :func:`compare` from the command line.

    Writes ``comparison.csv``, ``summary.csv``, ``by_bucket.csv``, ``summary.md``
    and (unless ``--no-plots``) ``<metric>.png`` / ``<metric>_by_bucket.png`` to
    ``--out``; prints the markdown summary. Returns 0, or 2 on invalid input.
    JAX is configured here (an entry point): float64 and one host device per chain.
    """
    args = _build_parser().parse_args(argv)
    from bayes_pfl.cli.common import configure_jax

    configure_jax(args.chains)
    from bayes_pfl.data import DataError
    from bayes_pfl.spec import ModelSpecError

    try:
        make_data = _cli_data(args)
        family = args.family
        names = [n.strip() for n in args.methods.split(",") if n.strip()]
        fam = family or _infer_family(make_data(0))
        methods = []
        for n in names:
            if n in BAYESIAN_METHODS:
                kw: dict[str, Any] = {"num_warmup": args.warmup, "num_samples": args.samples}
                kw["num_chains"] = args.chains
                glm_family = fam

                def model_fn(data, glm_family=glm_family):
                    from bayes_pfl.models import hierarchical_glm

                    return hierarchical_glm(glm_family, data.n_features, varying=args.varying)

                methods.append(bayesian_method(n, model_fn, family=fam, **kw))
            elif n == "constant":
                methods.append(constant_method(family=fam))
            else:
                methods.append(make_method(n, family=fam, rounds=args.rounds))
        result = compare(
            make_data,
            methods,
            seeds=range(args.seeds),
            family=fam,
            buckets=[int(b) for b in args.buckets.split(",")],
            refit=not args.no_refit,
            progress=args.progress,
        )
    except (ComparisonError, DataError, ModelSpecError) as exc:
        print(f"bayes-pfl compare: error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    paths = result.to_csv(out, title=f"Method comparison: {args.data}")
    if not args.no_plots:
        from bayes_pfl.plots import plot_comparison

        metric = result.main_metric()
        plot_comparison(result, metric, path=out / f"{metric}.png")
        plot_comparison(result, metric, by="bucket", path=out / f"{metric}_by_bucket.png")
    print(paths["markdown"].read_text())
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0


if __name__ == "__main__":
    sys.exit(compare_main())
