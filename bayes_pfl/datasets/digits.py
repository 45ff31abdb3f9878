"""A federation of handwritten digits with label skew and a per-client feature shift.

The images are scikit-learn's bundled copy of the UCI *Optical Recognition of
Handwritten Digits* test set (Alpaydin & Kaynak 1998; 1,797 images of 8x8
pixels with 17 grey levels, classes 0-9), loaded by
:func:`sklearn.datasets.load_digits` without network access. scikit-learn is
needed only here (``pip install scikit-learn``).

Clients differ in three ways, as in the personalized-FL literature:

* **label skew**: each class is shared among clients by Dirichlet proportions
  (concentration ``alpha``; Hsu, Qi & Brown 2019, *Measuring the effects of
  non-identical data distribution for federated visual classification*), so
  each client sees a few classes often and others rarely;
* **quantity skew**: the proportions are multiplied by a log-normal size
  factor per client, so some clients hold many images and some only a
  handful (a few with 20 or fewer training images);
* **feature shift** (``shift=True``): client ``k`` rescales every pixel
  (scaled to ``[0, 1]``) as ``contrast_k * (x - 0.5) + 0.5 + brightness_k``,
  with ``brightness_k ~ U(-0.4, 0.4)`` and ``contrast_k ~ logU(0.4, 2.5)``
  — different scanners or exposure, the setting of FedBN (Li et al. 2021).

Examples
--------
>>> from bayes_pfl.datasets.digits import make_digits_federation
>>> data, meta = make_digits_federation(n_clients=10, seed=0, return_metadata=True)
>>> data.n_clients, data.n_features, list(meta.columns)
(10, 64, ['brightness', 'contrast'])
>>> int(data.n_rows("train").sum() + data.n_rows("test").sum())
1797
"""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
import pandas as pd

from bayes_pfl.data import FederatedData

__all__ = ["DIGITS_FEATURES", "make_digits_federation"]

DIGITS_FEATURES: tuple[str, ...] = tuple(f"p{i:02d}" for i in range(64))
"""Pixel columns, row by row (``p00`` top left, ``p63`` bottom right)."""

_MIN_ROWS = 6  # every client keeps some training and test images


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "make_digits_federation needs scikit-learn (pip install scikit-learn)"
        ) from err
    bunch = load_digits()
    return bunch.data / 16.0, bunch.target.astype(np.int64)


def _partition(
    labels: np.ndarray, n_clients: int, alpha: float, rng: np.random.Generator
) -> np.ndarray:
    """Client of every image: per class Dirichlet(alpha) shares times log-normal client sizes."""
    classes = np.unique(labels)
    for _ in range(1000):
        size = np.exp(rng.standard_normal(n_clients))
        owner = np.empty(len(labels), dtype=np.int64)
        for c in classes:
            idx = rng.permutation(np.flatnonzero(labels == c))
            share = rng.dirichlet(np.full(n_clients, alpha)) * size
            share /= share.sum()
            cuts = np.round(np.cumsum(share)[:-1] * len(idx)).astype(int)
            for k, part in enumerate(np.split(idx, cuts)):
                owner[part] = k
        if np.bincount(owner, minlength=n_clients).min() >= _MIN_ROWS:
            return owner
    raise ValueError(  # pragma: no cover - needs absurd settings
        f"could not give every one of {n_clients} clients {_MIN_ROWS} images; use fewer clients"
    )


def make_digits_federation(
    n_clients: int = 20,
    *,
    alpha: float = 0.5,
    shift: bool = True,
    test_size: float = 0.3,
    val_size: float = 0.0,
    seed: int = 0,
    return_metadata: bool = False,
) -> FederatedData | tuple[FederatedData, pd.DataFrame]:
    """Split scikit-learn's digits into a federation of clients (see the module docstring).

    Parameters
    ----------
    n_clients : int, default 20
        Number of clients (2 to 200).
    alpha : float, default 0.5
        Dirichlet concentration of the label skew: small values give clients
        few classes, large values (100) nearly the global class mix.
    shift : bool, default True
        Apply the per-client brightness/contrast shift to the pixels.
    test_size, val_size : float
        Per-client held-out fractions (see :meth:`FederatedData.from_pandas`).
    seed : int, default 0
        Seeds the partition, the shifts and the train/test split.
    return_metadata : bool, default False
        Also return the clients' metadata.

    Returns
    -------
    FederatedData
        Client labels ``"d00"``, ``"d01"``, ...; target ``"digit"`` (class
        codes 0-9 as floats; ``family="categorical"``); features
        :data:`DIGITS_FEATURES` (shifted pixels, not standardized).
    pandas.DataFrame
        Only with ``return_metadata=True``: one row per client (index: client
        label, in the order of ``data.clients``), columns ``brightness`` and
        ``contrast`` (0 and 1 without shift) — the descriptors a
        hypernetwork can map to a model (``metadata=meta.to_numpy()``).
    """
    if (
        isinstance(n_clients, bool)
        or not isinstance(n_clients, Integral)
        or not 2 <= n_clients <= 200
    ):
        raise ValueError(f"n_clients must be an integer in [2, 200], got {n_clients!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, Real) or not alpha > 0:
        raise ValueError(f"alpha must be a positive number, got {alpha!r}")
    x, y = _load_digits()
    rng_part, rng_shift = np.random.default_rng(seed).spawn(2)
    owner = _partition(y, int(n_clients), float(alpha), rng_part)
    if shift:
        brightness = rng_shift.uniform(-0.4, 0.4, n_clients)
        contrast = np.exp(rng_shift.uniform(np.log(0.4), np.log(2.5), n_clients))
    else:
        brightness = np.zeros(n_clients)
        contrast = np.ones(n_clients)
    x = contrast[owner, None] * (x - 0.5) + 0.5 + brightness[owner, None]

    labels = [f"d{k:02d}" for k in range(n_clients)]
    order = np.argsort(owner, kind="stable")
    df = pd.DataFrame(x[order], columns=list(DIGITS_FEATURES))
    df.insert(0, "client", np.asarray(labels)[owner[order]])
    df["digit"] = y[order]
    data = FederatedData.from_pandas(
        df,
        client_col="client",
        target="digit",
        features=list(DIGITS_FEATURES),
        clients=labels,
        test_size=test_size,
        val_size=val_size,
        seed=seed,
    )
    if not return_metadata:
        return data
    meta = pd.DataFrame(
        {"brightness": brightness, "contrast": contrast}, index=pd.Index(labels, name="client")
    )
    return data, meta
