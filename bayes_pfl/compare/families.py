"""The outcome families of a comparison, the comparison's error, and the checks of a target.

Every module of :mod:`bayes_pfl.compare` builds on this one: :data:`FAMILIES` (the
likelihood families a comparison scores; the same as
:data:`bayes_pfl.spec.LIKELIHOOD_FAMILIES`, which a model declares), the
:class:`ComparisonError` they raise, and the checks of a family against the data's
target (:func:`check_family`, :func:`infer_family`, :func:`check_targets`).
"""

from __future__ import annotations

import numpy as np

from bayes_pfl.data import FederatedData

__all__ = ["FAMILIES", "ComparisonError", "check_family", "check_targets", "infer_family"]

FAMILIES = ("bernoulli", "categorical", "normal", "poisson")


class ComparisonError(ValueError):
    """Invalid input to the comparison (unknown method, family mismatch, missing split)."""


def check_family(family) -> str:
    """``family`` if it is one of :data:`FAMILIES`, else a :class:`ComparisonError`."""
    if family not in FAMILIES:
        raise ComparisonError(f"unknown family {family!r}; choose one of {', '.join(FAMILIES)}")
    return family


def _real_targets(data: FederatedData) -> np.ndarray:
    parts = []
    for arr in (data.train, data.val, data.test):
        if arr is not None:
            parts.append(np.asarray(arr.y, dtype=np.float64)[np.asarray(arr.mask)])
    return np.concatenate(parts)


def infer_family(data: FederatedData) -> str:
    """``"bernoulli"`` for a 0/1 target; a :class:`ComparisonError` asking for ``family=`` otherwise."""
    y = _real_targets(data)
    if np.all((y == 0) | (y == 1)):
        return "bernoulli"
    raise ComparisonError(
        "cannot infer the outcome family from a non-binary target; pass family= "
        f"(one of {', '.join(FAMILIES)})"
    )


def check_targets(data: FederatedData, family: str) -> None:
    """A :class:`ComparisonError` when the target (every split) is outside ``family``'s support."""
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
