"""Synthetic federations drawn from a hierarchical GLM, with the true parameters.

:func:`make_federation` draws clients from the same hierarchical GLMs as
``bayes_pfl.models.hierarchical_glm`` and returns the data together with the
exact parameters that generated it, under the zoo's parameter names:

* global ``phi``: ``mu`` (``[D]``), ``tau`` (``[D]``), ``beta`` (``[P]``, only
  with ``varying="intercept"`` and ``P > 0``), ``sigma_y`` (scalar, only for
  ``family="normal"``);
* per client ``theta``: ``b`` (``[K, D]``), with ``b_k = mu + tau * z_k`` and
  ``z_k ~ N(0, I)``, i.e. ``b_k ~ N(mu, tau)``.

``D = 1`` with ``varying="intercept"`` (``eta = b[0] + x @ beta``) and
``D = 1 + P`` with ``varying="slopes"`` (``eta = b[0] + x @ b[1:]``). The
outcome is ``y ~ N(eta, sigma_y)``, ``Bernoulli(sigmoid(eta))`` or
``Poisson(exp(eta))``.

Examples
--------
>>> from bayes_pfl.synthetic import make_federation
>>> fed = make_federation(family="bernoulli", n_clients=20, n_features=2, seed=1)
>>> fed.theta["b"].shape, sorted(fed.phi)
((20, 1), ['beta', 'mu', 'tau'])
>>> list(fed.data.columns)
['client', 'x0', 'x1', 'y']
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral, Real

import numpy as np
import pandas as pd

__all__ = ["FAMILIES", "VARYING", "SyntheticFederation", "make_federation"]

FAMILIES = ("normal", "bernoulli", "poisson")
VARYING = ("intercept", "slopes")


@dataclass(frozen=True)
class SyntheticFederation:
    """A synthetic federation and the truth that generated it.

    Attributes
    ----------
    data : pandas.DataFrame
        One row per observation, grouped by client in label order, with columns
        ``client`` (str labels ``"c000"``, ``"c001"``, ...), ``x0`` ..
        ``x{P-1}`` (float) and ``y`` (float for ``"normal"``, int otherwise).
    phi : dict of str to numpy.ndarray
        True global parameters: ``mu``, ``tau``, and ``beta`` and/or
        ``sigma_y`` where the model has them.
    theta : dict of str to numpy.ndarray
        True client parameters: ``{"b": array of shape [K, D]}``, rows in the
        order of :attr:`clients`.
    clients : tuple of str
        Client labels, sorted.
    features : tuple of str
        Feature columns of :attr:`data`.
    family : str
        ``"normal"``, ``"bernoulli"`` or ``"poisson"``.
    varying : str
        ``"intercept"`` or ``"slopes"``.
    target : str
        Outcome column, ``"y"``.
    client_col : str
        Client column, ``"client"``.
    """

    data: pd.DataFrame
    phi: dict[str, np.ndarray]
    theta: dict[str, np.ndarray]
    clients: tuple[str, ...]
    features: tuple[str, ...]
    family: str
    varying: str
    target: str = "y"
    client_col: str = "client"

    @property
    def n_clients(self) -> int:
        """Number of clients ``K``."""
        return len(self.clients)

    @property
    def sizes(self) -> np.ndarray:
        """Rows per client, in the order of :attr:`clients` (int array of length ``K``)."""
        counts = self.data[self.client_col].value_counts()
        return counts.reindex(list(self.clients), fill_value=0).to_numpy(dtype=np.int64)

    def true_mean(self, clients, x) -> np.ndarray:
        """``E[y | x]`` under the true parameters: what a predictor that knew them would say.

        Parameters
        ----------
        clients : sequence of str
            Client labels, one per leading row of ``x``.
        x : array of shape ``(len(clients), n, P)``
            Raw (not standardized) features, columns in the order of :attr:`features`.

        Returns
        -------
        numpy.ndarray of shape ``(len(clients), n)``
            ``P(y = 1)`` (Bernoulli), the rate (Poisson) or the mean (Normal).

        Raises
        ------
        ValueError
            For a label that is not one of :attr:`clients`, or ``x`` of the wrong shape.
        """
        labels = [str(c) for c in clients]
        unknown = sorted(set(labels) - set(self.clients))
        if unknown:
            raise ValueError(f"unknown clients {unknown[:5]}; the federation has {self.n_clients}")
        x = np.asarray(x, dtype=np.float64)
        p = len(self.features)
        if x.ndim != 3 or x.shape[0] != len(labels) or x.shape[2] != p:
            raise ValueError(f"x must have shape ({len(labels)}, n, {p}), got {x.shape}")
        index = {c: i for i, c in enumerate(self.clients)}
        return self.mean_of(self.theta["b"][[index[c] for c in labels]], x)

    def mean_of(self, b, x) -> np.ndarray:
        """``E[y | x]`` for client parameters ``b`` (the rows of ``theta["b"]``).

        ``b`` has shape ``(..., D)`` and ``x`` ``(..., n, P)`` (raw features); leading
        dimensions broadcast (e.g. ``S`` draws of ``b`` against one client's rows).
        With ``varying="intercept"`` the slopes are the true shared ``phi["beta"]``.
        """
        b = np.asarray(b, dtype=np.float64)
        x = np.asarray(x, dtype=np.float64)
        if self.varying == "intercept":
            slopes = self.phi.get("beta", np.zeros(x.shape[-1]))
            eta = b[..., :1] + x @ slopes
        else:
            eta = b[..., :1] + np.einsum("...np,...p->...n", x, b[..., 1:])
        if self.family == "bernoulli":
            return 1.0 / (1.0 + np.exp(-eta))
        if self.family == "poisson":
            return np.exp(eta)
        return eta


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_nonneg(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not value >= 0:
        raise ValueError(f"{name} must be a non-negative number, got {value!r}")
    return float(value)


def _vector(name: str, value, length: int) -> np.ndarray:
    """Broadcast a scalar or array-like to a float vector of ``length``."""
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim == 0:
        arr = np.full(length, float(arr))
    if arr.shape != (length,):
        raise ValueError(f"{name} must be a scalar or have shape ({length},), got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite")
    return arr


def _client_sizes(
    rng: np.random.Generator,
    sizes,
    n_clients: int,
    median_size: float,
    size_sigma: float,
    min_size: int,
    max_size: int | None,
) -> np.ndarray:
    if isinstance(sizes, str):
        if sizes != "lognormal":
            raise ValueError(f"sizes must be 'lognormal', an int or an array, got {sizes!r}")
        if isinstance(median_size, bool) or not isinstance(median_size, Real) or median_size <= 0:
            raise ValueError(f"median_size must be a positive number, got {median_size!r}")
        raw = np.round(median_size * np.exp(size_sigma * rng.standard_normal(n_clients)))
        hi = np.inf if max_size is None else max_size
        return np.clip(raw, min_size, hi).astype(np.int64)
    if isinstance(sizes, Integral) and not isinstance(sizes, bool):
        return np.full(n_clients, _check_int("sizes", sizes, 1), dtype=np.int64)
    arr = np.asarray(sizes)
    if arr.shape != (n_clients,):
        raise ValueError(f"sizes must have length n_clients={n_clients}, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer) or np.any(arr < 1):
        raise ValueError("sizes must be integers >= 1")
    return arr.astype(np.int64)


def make_federation(
    *,
    family: str = "normal",
    n_clients: int = 50,
    n_features: int = 3,
    varying: str = "intercept",
    sizes: str | int | np.ndarray = "lognormal",
    median_size: float = 20,
    size_sigma: float = 1.0,
    min_size: int = 1,
    max_size: int | None = None,
    mu: float | np.ndarray | None = None,
    tau: float | np.ndarray | None = None,
    beta: float | np.ndarray | None = None,
    sigma_y: float = 1.0,
    heterogeneity: float = 1.0,
    covariate_shift: float = 0.0,
    label_skew: float = 0.0,
    seed: int = 0,
) -> SyntheticFederation:
    """Draw a federation of clients from a hierarchical GLM, keeping the truth.

    Parameters
    ----------
    family : {"normal", "bernoulli", "poisson"}
        Likelihood: Normal (identity link), Bernoulli (logit link) or Poisson
        (log link).
    n_clients : int
        Number of clients ``K`` (at least 2).
    n_features : int
        Number of features ``P`` (at least 0). Features are standard normal
        (see ``covariate_shift``).
    varying : {"intercept", "slopes"}
        ``"intercept"``: only the intercept varies by client (``D = 1``) and the
        slopes ``beta`` are shared; ``"slopes"``: intercept and slopes vary
        (``D = 1 + P``).
    sizes : "lognormal", int or array of int
        Rows per client. ``"lognormal"`` draws
        ``round(median_size * exp(size_sigma * N(0, 1)))`` clipped to
        ``[min_size, max_size]``, so that many small clients and a few large
        ones appear; an int gives every client that many rows; an array of
        length ``n_clients`` gives each client's size.
    median_size, size_sigma, min_size, max_size
        Parameters of the log-normal sizes (ignored otherwise).
    mu : float or array of shape [D], optional
        Population mean of the client coefficients. Default: drawn, the
        intercept from ``N(0, 0.5^2)`` and the slopes (``varying="slopes"``)
        as a uniformly random direction of unit Euclidean norm, so that
        ``x @ slopes ~ N(0, 1)`` for standard normal features whatever ``P``
        (logistic probabilities are not saturated, Poisson rates stay moderate).
    tau : float or array of shape [D], optional
        Population sd of the client coefficients before scaling by
        ``heterogeneity``. Default 0.5 for every coefficient.
    beta : float or array of shape [P], optional
        Shared slopes (``varying="intercept"`` only). Default: drawn as a
        random direction of unit norm, as the default slopes of ``mu``.
    sigma_y : float
        Noise sd of the Normal family (ignored, and absent from ``phi``,
        otherwise).
    heterogeneity : float
        Multiplies ``tau``: the true ``tau`` is ``heterogeneity * tau``; 0 gives
        identical clients.
    covariate_shift : float
        Client ``k``'s features are drawn from ``N(m_k, 1)`` with
        ``m_k ~ N(0, covariate_shift^2)`` per feature (0: no shift).
    label_skew : float
        Bernoulli only: extra between-client spread of the intercept, i.e. of
        the clients' base rates. It enters the truth through the intercept's
        population sd, ``tau[0] = sqrt((heterogeneity * tau[0])^2 +
        label_skew^2)``, so that ``b_k ~ N(mu, tau)`` holds exactly.
    seed : int
        Seed of :func:`numpy.random.default_rng`; the result is a deterministic
        function of the arguments. Sizes, truth, features and outcomes use
        independent streams, so changing e.g. ``covariate_shift`` changes only
        the features and outcomes.

    Returns
    -------
    SyntheticFederation
        The data and the exact parameters that generated it.

    Raises
    ------
    ValueError
        On an unknown family or varying, ``n_clients < 2``, a negative
        ``n_features``, bad sizes, wrongly shaped ``mu``/``tau``/``beta``, a
        negative ``tau``/``heterogeneity``/``covariate_shift``/``label_skew``,
        ``sigma_y <= 0`` for the Normal family, ``beta`` with
        ``varying="slopes"``, or ``label_skew`` with a family other than
        Bernoulli.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose one of {FAMILIES}")
    if varying not in VARYING:
        raise ValueError(f"unknown varying {varying!r}; choose one of {VARYING}")
    k = _check_int("n_clients", n_clients, 2)
    p = _check_int("n_features", n_features, 0)
    min_size = _check_int("min_size", min_size, 1)
    if max_size is not None:
        max_size = _check_int("max_size", max_size, min_size)
    size_sigma = _check_nonneg("size_sigma", size_sigma)
    heterogeneity = _check_nonneg("heterogeneity", heterogeneity)
    covariate_shift = _check_nonneg("covariate_shift", covariate_shift)
    label_skew = _check_nonneg("label_skew", label_skew)
    if label_skew > 0 and family != "bernoulli":
        raise ValueError("label_skew is only defined for family='bernoulli'")
    if beta is not None and varying == "slopes":
        raise ValueError("beta (shared slopes) is only used with varying='intercept'")
    if family == "normal":
        sigma_y = _check_nonneg("sigma_y", sigma_y)
        if sigma_y == 0:
            raise ValueError("sigma_y must be > 0")
    d = 1 if varying == "intercept" else 1 + p

    rng_sizes, rng_truth, rng_x, rng_y = np.random.default_rng(seed).spawn(4)
    n = _client_sizes(rng_sizes, sizes, k, median_size, size_sigma, min_size, max_size)

    # Truth. Default draws come first, always in the same order.
    intercept = 0.5 * rng_truth.standard_normal(1)
    slopes = rng_truth.standard_normal(p)
    slopes /= max(np.linalg.norm(slopes), 1e-12)  # unit norm: x @ slopes ~ N(0, 1)
    default_mu = np.concatenate([intercept, slopes]) if varying == "slopes" else intercept
    z = rng_truth.standard_normal((k, d))

    mu = default_mu if mu is None else _vector("mu", mu, d)
    tau = np.full(d, 0.5) if tau is None else _vector("tau", tau, d)
    if np.any(tau < 0):
        raise ValueError("tau must be non-negative")
    tau = heterogeneity * tau
    tau[0] = np.sqrt(tau[0] ** 2 + label_skew**2)
    b = mu + tau * z

    phi: dict[str, np.ndarray] = {"mu": mu, "tau": tau}
    if varying == "intercept" and p > 0:
        phi["beta"] = slopes if beta is None else _vector("beta", beta, p)
    if family == "normal":
        phi["sigma_y"] = np.asarray(sigma_y, dtype=np.float64)

    # Features, with an optional per-client mean shift.
    client_idx = np.repeat(np.arange(k), n)
    shift = covariate_shift * rng_x.standard_normal((k, p))
    x = shift[client_idx] + rng_x.standard_normal((len(client_idx), p))

    # Outcomes.
    b_rows = b[client_idx]
    if varying == "intercept":
        eta = b_rows[:, 0] + (x @ phi["beta"] if p > 0 else 0.0)
    else:
        eta = b_rows[:, 0] + np.einsum("ij,ij->i", x, b_rows[:, 1:])
    if family == "normal":
        y = eta + sigma_y * rng_y.standard_normal(len(eta))
    elif family == "bernoulli":
        y = (rng_y.random(len(eta)) < 1.0 / (1.0 + np.exp(-eta))).astype(np.int64)
    else:
        y = rng_y.poisson(np.exp(eta)).astype(np.int64)

    width = max(3, len(str(k - 1)))
    clients = tuple(f"c{i:0{width}d}" for i in range(k))
    features = tuple(f"x{j}" for j in range(p))
    data = pd.DataFrame({"client": np.repeat(np.array(clients), n)}).astype({"client": str})
    for j, name in enumerate(features):
        data[name] = x[:, j]
    data["y"] = y

    return SyntheticFederation(
        data=data,
        phi=phi,
        theta={"b": b},
        clients=clients,
        features=features,
        family=family,
        varying=varying,
    )
