"""Predictions of one split and the likelihood that turns point predictions into densities.

A method's fitted predictor returns a :class:`Prediction` for the rows of a split:
the log predictive density of each row's observed target, a point prediction, class
probabilities (categorical) and a central 90% interval where it has one.
:func:`prediction_from_mean` builds one from a point prediction through the
likelihood (Bernoulli, categorical, Normal, Poisson); :class:`PosteriorPredictor`
from posterior draws of a :class:`~bayes_pfl.results.FitResult`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import numpy as np

from bayes_pfl import metrics as M
from bayes_pfl.compare.families import ComparisonError, check_family
from bayes_pfl.data import ClientArrays

__all__ = [
    "INTERVAL_PROB",
    "PosteriorPredictor",
    "Prediction",
    "Predictor",
    "bernoulli_log_density",
    "prediction_from_mean",
]

INTERVAL_PROB = 0.9
_Z90 = 1.6448536269514722  # standard normal 95% quantile: a central 90% interval


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


def _scatter(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``(..., n_obs)`` values of the masked rows back into ``(..., K, n)`` (0 elsewhere)."""
    values = np.asarray(values, dtype=np.float64)
    out = np.zeros(values.shape[:-1] + mask.shape)
    out[..., mask] = values
    return out


def bernoulli_log_density(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``log p(y | P(y = 1) = p)`` elementwise, ``p`` clipped away from 0 and 1."""
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
    family = check_family(family)
    y = np.asarray(arrays.y, dtype=np.float64)
    mask = np.asarray(arrays.mask, dtype=bool)
    mu = np.asarray(mean, dtype=np.float64)
    if family == "bernoulli":
        p = np.where(mask, mu, 0.5)
        return Prediction(np.where(mask, bernoulli_log_density(p, y), 0.0), p)
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
class PosteriorPredictor:
    """Predictions from posterior draws of a :class:`~bayes_pfl.results.FitResult`.

    ``bernoulli``: ``P(y_i = 1) = mean_s p(y_i = 1 | theta^(s))`` (exact given
    the draws) and the log density follows from it. ``normal``/``poisson``:
    ``log mean_s p(y_i | theta^(s))``, the predictive mean and the 90% interval
    from posterior predictive draws of ``y``. ``p(y_i | theta)`` is the outcome's site
    alone: a model that also observes the covariates (missing values modelled,
    :mod:`bayes_pfl.models.covariates`) predicts ``y`` given the row's observed values.
    """

    result: Any
    family: str
    seed: int = 0

    def predict(self, arrays: ClientArrays) -> Prediction:
        x = np.asarray(arrays.x)
        y = np.asarray(arrays.y, dtype=np.float64)
        mask = np.asarray(arrays.mask, dtype=bool)
        if self.family == "bernoulli":
            ll1 = self.result.pointwise_loglik(x, np.ones_like(y), mask, outcome_only=True)
            p_obs = np.exp(M.log_mean_exp_draws(ll1, axis=(0, 1)))
            p = np.where(mask, _scatter(np.clip(p_obs, 0.0, 1.0), mask), 0.5)
            return Prediction(np.where(mask, bernoulli_log_density(p, y), 0.0), p)
        ll = self.result.pointwise_loglik(x, y, mask, outcome_only=True)
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
