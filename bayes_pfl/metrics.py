r"""Held-out predictive metrics, computed per client over padded, masked rows.

Every function takes arrays laid out like :class:`~bayes_pfl.data.ClientArrays`:
a leading ``client`` axis, rows padded to a common length and a boolean ``mask``
of the real rows, and returns one value per client (shape ``(K,)``). A client
without a real row gets ``NaN``. Padded rows never enter a result, whatever
they hold.

* :func:`log_predictive_density`: mean of :math:`\log p(y_i \mid D)` over a
  client's rows; :func:`log_mean_exp_draws` turns per-draw log-likelihoods
  into it (:math:`\log \frac1S \sum_s p(y_i \mid \theta^{(s)})`);
* :func:`log_loss`: binary or categorical cross-entropy (the negative log
  predictive density of a classifier);
* :func:`accuracy`: threshold 0.5 (binary) or arg-max (categorical);
* :func:`rmse`: root mean squared error of a point prediction;
* :func:`brier_score`: mean squared error of the predicted probabilities
  (summed over classes for categorical predictions);
* :func:`expected_calibration_error`: equal-width bins of the predicted
  probability (binary) or of the top-label confidence (categorical), the same
  bins as :func:`bayes_pfl.plots.plot_calibration`;
* :func:`interval_coverage`: fraction of rows inside a predictive interval.

Examples
--------
>>> import numpy as np
>>> p = np.array([[0.9, 0.2, 0.0], [0.6, 0.0, 0.0]])     # P(y = 1); padding after
>>> y = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
>>> mask = np.array([[True, True, False], [True, False, False]])
>>> accuracy(p, y, mask).tolist()
[1.0, 0.0]
>>> np.round(log_loss(p, y, mask), 4).tolist()          # -(log .9 + log .8)/2, -log .4
[0.1643, 0.9163]
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "EPS",
    "accuracy",
    "brier_score",
    "calibrated_ece",
    "expected_calibration_error",
    "interval_coverage",
    "log_loss",
    "log_mean_exp_draws",
    "log_predictive_density",
    "rmse",
]

EPS = 1e-15
"""Probabilities are clipped to ``[EPS, 1 - EPS]`` before taking logs (a hard 0 or 1
prediction that is wrong costs ``-log(EPS) ≈ 34.5`` nats instead of infinity)."""


def _mask_like(mask, shape: tuple[int, ...]) -> np.ndarray:
    m = np.asarray(mask, dtype=bool)
    if m.shape != shape:
        raise ValueError(f"mask has shape {m.shape}, expected {shape} (clients, rows)")
    return m


def _per_client_mean(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Masked mean over the row axis; NaN for clients with no real row."""
    n = mask.sum(axis=1)
    total = np.where(mask, values, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, total / np.maximum(n, 1), np.nan)


def _as_2d(name: str, a) -> np.ndarray:
    arr = np.asarray(a, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name} must have shape (clients, rows), got {arr.shape}")
    return arr


def _check_labels(y: np.ndarray, mask: np.ndarray, n_classes: int) -> np.ndarray:
    yy = np.where(mask, y, 0.0)
    if np.any((yy != np.round(yy)) | (yy < 0) | (yy >= n_classes)):
        raise ValueError(f"y must hold class labels 0..{n_classes - 1} on real rows")
    return yy.astype(np.int64)


def _class_probs(p, y, mask) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(probs [K, n, C], labels [K, n], mask)``: binary ``P(y=1)`` becomes two columns."""
    probs = np.asarray(p, dtype=np.float64)
    yy = _as_2d("y", y)
    m = _mask_like(mask, yy.shape)
    if probs.ndim == 2:
        if probs.shape != yy.shape:
            raise ValueError(f"p has shape {probs.shape}, y has {yy.shape}")
        probs = np.stack([1.0 - probs, probs], axis=-1)
    elif probs.ndim != 3 or probs.shape[:2] != yy.shape:
        raise ValueError(
            f"p must be P(y=1) of shape {yy.shape} or class probabilities of shape "
            f"{yy.shape + ('C',)}, got {probs.shape}"
        )
    real = probs[m]
    if real.size and (not np.all(np.isfinite(real)) or real.min() < 0 or real.max() > 1):
        raise ValueError("predicted probabilities must be finite and in [0, 1] on real rows")
    return probs, _check_labels(yy, m, probs.shape[-1]), m


def log_mean_exp_draws(loglik, axis: int | tuple[int, ...] = 0) -> np.ndarray:
    r"""Pointwise log predictive density from per-draw log-likelihoods.

    .. math:: \log \hat p(y_i \mid D) = \log \frac1S \sum_{s=1}^S p(y_i \mid \theta^{(s)})

    computed stably (max subtracted). ``axis`` is the draw axis (or axes, e.g.
    ``(0, 1)`` for ``chain, draw``).

    Examples
    --------
    >>> import numpy as np
    >>> ll = np.log(np.array([[0.2, 0.5], [0.6, 0.5]]))   # 2 draws, 2 rows
    >>> np.round(np.exp(log_mean_exp_draws(ll)), 6).tolist()
    [0.4, 0.5]
    """
    ll = np.asarray(loglik, dtype=np.float64)
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    top = np.max(ll, axis=axes, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    n = np.prod([ll.shape[a] for a in axes])
    out = np.log(np.sum(np.exp(ll - top), axis=axes, keepdims=True) / n) + top
    return np.squeeze(out, axis=axes)


def log_predictive_density(log_density, mask) -> np.ndarray:
    """Mean log predictive density of the real rows, per client (higher is better).

    Parameters
    ----------
    log_density : array, shape (K, n)
        ``log p(y_i | D)`` of each row's observed target.
    mask : array of bool, shape (K, n)

    Examples
    --------
    >>> import numpy as np
    >>> lpd = np.log([[0.5, 0.25, 1.0]])
    >>> log_predictive_density(lpd, [[True, True, False]]).round(4).tolist()
    [-1.0397]
    """
    ld = _as_2d("log_density", log_density)
    m = _mask_like(mask, ld.shape)
    return _per_client_mean(ld, m)


def log_loss(p, y, mask, *, eps: float = EPS) -> np.ndarray:
    """Cross-entropy ``-mean log p(y_i)`` per client (lower is better).

    Parameters
    ----------
    p : array, shape (K, n) or (K, n, C)
        ``P(y = 1)`` of binary targets, or class probabilities.
    y : array, shape (K, n)
        Observed labels (0/1, or 0..C-1).
    mask : array of bool, shape (K, n)
    eps : float
        Probabilities are clipped to ``[eps, 1 - eps]``.
    """
    probs, labels, m = _class_probs(p, y, mask)
    chosen = np.take_along_axis(probs, labels[..., None], axis=-1)[..., 0]
    return _per_client_mean(-np.log(np.clip(chosen, eps, 1.0 - eps)), m)


def accuracy(p, y, mask) -> np.ndarray:
    """Fraction of rows classified right: ``P(y=1) > 0.5`` (binary) or the arg-max class.

    A binary probability of exactly 0.5 predicts class 0.
    """
    probs, labels, m = _class_probs(p, y, mask)
    if probs.shape[-1] == 2:
        pred = (probs[..., 1] > 0.5).astype(np.int64)
    else:
        pred = np.argmax(probs, axis=-1)
    return _per_client_mean((pred == labels).astype(np.float64), m)


def brier_score(p, y, mask) -> np.ndarray:
    r"""Mean squared error of predicted probabilities, per client (lower is better).

    Binary: :math:`\frac1n \sum_i (p_i - y_i)^2`. Categorical: the multi-class
    score :math:`\frac1n \sum_i \sum_c (p_{ic} - [y_i = c])^2` (twice the binary
    score for two classes).
    """
    probs, labels, m = _class_probs(p, y, mask)
    onehot = np.eye(probs.shape[-1])[labels]
    sq = np.sum((probs - onehot) ** 2, axis=-1)
    if np.asarray(p).ndim == 2:
        sq = sq / 2.0  # both columns carry the same error: back to (p - y)^2
    return _per_client_mean(sq, m)


def _ece_one(conf: np.ndarray, hit: np.ndarray, n_bins: int) -> float:
    if conf.size == 0:
        return float("nan")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, n_bins - 1)
    gap = np.bincount(idx, weights=hit - conf, minlength=n_bins)
    return float(np.sum(np.abs(gap)) / conf.size)


def expected_calibration_error(p, y, mask, *, n_bins: int = 10) -> np.ndarray:
    r"""Expected calibration error per client (lower is better).

    .. math:: \mathrm{ECE} = \sum_b \frac{n_b}{n} \left| \bar y_b - \bar p_b \right|

    over ``n_bins`` equal-width bins of [0, 1] (each ``[lo, hi)``, the last one
    closed), as :func:`bayes_pfl.plots.plot_calibration` draws them. Binary
    predictions are binned by ``P(y=1)`` and compared with the frequency of
    ``y = 1``; categorical ones by the top-label confidence, compared with the
    accuracy of the arg-max class. With few rows per client the estimate is
    noisy and biased upward (one row contributes ``|y - p|``).
    """
    if int(n_bins) != n_bins or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    probs, labels, m = _class_probs(p, y, mask)
    if np.ndim(p) == 2:
        conf, hit = probs[..., 1], labels.astype(np.float64)
    else:
        conf = probs.max(axis=-1)
        hit = (np.argmax(probs, axis=-1) == labels).astype(np.float64)
    return np.array([_ece_one(conf[k][m[k]], hit[k][m[k]], int(n_bins)) for k in range(len(m))])


def calibrated_ece(p, mask, *, n_bins: int = 10, reps: int = 200, seed: int = 0) -> np.ndarray:
    """Expected calibration error per client of a *perfectly calibrated* predictor.

    The ECE a model giving these very probabilities would show if it were exactly
    calibrated: labels are drawn from ``p`` itself, ``reps`` times, and
    :func:`expected_calibration_error` is averaged. With tens of test rows per client
    this floor is far from zero (each bin's frequency is a small-sample estimate), so
    it tells how much of a measured ECE is noise: a measured ECE near the floor is as
    good as calibration can be shown on these rows. ``p`` as in
    :func:`expected_calibration_error`; ``seed`` fixes the draws.
    """
    if int(reps) != reps or reps < 1:
        raise ValueError(f"reps must be a positive integer, got {reps!r}")
    probs = np.asarray(p, dtype=np.float64)
    binary = probs.ndim == 2
    if binary:
        probs = np.stack([1.0 - probs, probs], axis=-1)
    if probs.ndim != 3:
        raise ValueError(f"p must be [K, n] or [K, n, C], got shape {np.shape(p)}")
    m = _mask_like(mask, probs.shape[:2])
    real = probs[m]
    if real.size and (not np.all(np.isfinite(real)) or real.min() < 0 or real.max() > 1):
        raise ValueError("predicted probabilities must be finite and in [0, 1] on real rows")
    rng = np.random.default_rng(seed)
    cdf = np.cumsum(probs, axis=-1)
    cdf[..., -1] = np.inf  # rows summing to 1 - eps still draw a class
    total = np.zeros(probs.shape[0])
    for _ in range(int(reps)):
        u = rng.random(probs.shape[:2] + (1,))
        labels = np.argmax(u < cdf, axis=-1)
        labels = np.where(m, labels, 0)
        total += expected_calibration_error(
            probs[..., 1] if binary else probs, labels, m, n_bins=n_bins
        )
    return total / reps


def rmse(mean, y, mask) -> np.ndarray:
    """Root mean squared error of a point prediction, per client (lower is better)."""
    mu = _as_2d("mean", mean)
    yy = _as_2d("y", y)
    if mu.shape != yy.shape:
        raise ValueError(f"mean has shape {mu.shape}, y has {yy.shape}")
    m = _mask_like(mask, yy.shape)
    return np.sqrt(_per_client_mean((mu - yy) ** 2, m))


def interval_coverage(lower, upper, y, mask) -> np.ndarray:
    """Fraction of real rows with ``lower <= y <= upper``, per client.

    For a calibrated 90% predictive interval the expected value is 0.9 (for a
    discrete target a closed interval of quantiles covers at least that).
    """
    lo, hi, yy = _as_2d("lower", lower), _as_2d("upper", upper), _as_2d("y", y)
    if not lo.shape == hi.shape == yy.shape:
        raise ValueError(f"lower, upper and y differ in shape: {lo.shape}, {hi.shape}, {yy.shape}")
    m = _mask_like(mask, yy.shape)
    inside = (lo <= yy) & (yy <= hi)
    return _per_client_mean(inside.astype(np.float64), m)
