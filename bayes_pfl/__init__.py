"""bayes-pfl: hierarchical Bayesian personalized federated learning.

Declare a hierarchical model once (:class:`HierarchicalModel`), hold clients' rows
apart (:class:`FederatedData`), and fit it centrally with NUTS
(:func:`fit_nuts`, the reference) or with the federated algorithms.
"""

from bayes_pfl.centralized import fit_nuts
from bayes_pfl.data import ClientArrays, DataError, FederatedData, UnknownClientError
from bayes_pfl.datasets import load
from bayes_pfl.results import FitResult, load_posterior, save_fit, summarize
from bayes_pfl.spec import HierarchicalModel, ModelSpecError

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
