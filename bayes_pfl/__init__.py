"""bayes-pfl: hierarchical Bayesian personalized federated learning.

Declare a hierarchical model once (:class:`HierarchicalModel`), hold clients' rows
apart (:class:`FederatedData`), and fit it centrally with NUTS
(:func:`fit_nuts`, the reference) or with the federated algorithms.
"""

import importlib
from typing import TYPE_CHECKING

# Public names, imported on first use (PEP 562): ``import bayes_pfl.flower.app`` in a
# Flower ClientApp process then loads JAX but not numpyro, ArviZ or pandas.
_LAZY = {
    "fit_nuts": "bayes_pfl.centralized",
    "ClientArrays": "bayes_pfl.data",
    "DataError": "bayes_pfl.data",
    "FederatedData": "bayes_pfl.data",
    "UnknownClientError": "bayes_pfl.data",
    "load": "bayes_pfl.datasets",
    "FitResult": "bayes_pfl.results",
    "load_posterior": "bayes_pfl.results",
    "save_fit": "bayes_pfl.results",
    "summarize": "bayes_pfl.results",
    "HierarchicalModel": "bayes_pfl.spec",
    "ModelSpecError": "bayes_pfl.spec",
}

if TYPE_CHECKING:  # pragma: no cover
    from bayes_pfl.centralized import fit_nuts
    from bayes_pfl.data import ClientArrays, DataError, FederatedData, UnknownClientError
    from bayes_pfl.datasets import load
    from bayes_pfl.results import FitResult, load_posterior, save_fit, summarize
    from bayes_pfl.spec import HierarchicalModel, ModelSpecError


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'bayes_pfl' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__version__ = "0.1.0"

__all__ = [
    "ClientArrays",
    "DataError",
    "FederatedData",
    "FitResult",
    "HierarchicalModel",
    "ModelSpecError",
    "UnknownClientError",
    "fit_nuts",
    "load",
    "load_posterior",
    "save_fit",
    "summarize",
]
