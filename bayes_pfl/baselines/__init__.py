"""Optimization-based (personalized) federated learning baselines.

Point-estimate models — GLMs (normal, logistic, Poisson, multinomial
logistic), Flax NNX MLPs with optional BatchNorm — trained by the classic
federated and personalized federated algorithms, each an
:class:`~bayes_pfl.algorithms.Algorithm` of pure functions run by the same
in-process driver as the Bayesian methods
(:func:`bayes_pfl.simulation.run_rounds`, vmapped over clients):

=============  ===========================================================
``local``      every client alone (reference)
``pooled``     all rows pooled, not federated (reference)
``fedavg``     McMahan et al. 2017
``fedprox``    Li et al. 2020 (proximal term ``mu``)
``ditto``      Li et al. 2021 (personal model pulled by ``lam``)
``pfedme``     T. Dinh et al. 2020 (Moreau envelopes)
``fedbn``      Li et al. 2021 (local BatchNorm)
``fedper``     Arivazhagan et al. 2019 (personal head)
``adapters``   low-rank residual adapters per client (LoRA-style)
``clustered``  gradient-similarity clustering (Sattler et al. 2021)
``ifca``       iterative cluster assignment (Ghosh et al. 2020)
``hypernet``   pFedHN (Shamsian et al. 2021), cold start from metadata
=============  ===========================================================

Examples
--------
>>> from bayes_pfl.baselines import BASELINE_NAMES, fit_baseline
>>> from bayes_pfl.data import FederatedData
>>> from bayes_pfl.synthetic import make_federation
>>> fed = make_federation(family="normal", n_clients=4, sizes=20, seed=0)
>>> data = FederatedData.from_pandas(fed.data, client_col="client", target="y",
...                                  features=list(fed.features))
>>> fit = fit_baseline("fedavg", data, family="normal", rounds=3)
>>> len(fit.history), fit.noise_sd.shape
(3, (4,))
"""

from bayes_pfl.baselines.fit import BASELINE_NAMES, HPARAM_DEFAULTS, BaselineFit, fit_baseline
from bayes_pfl.baselines.networks import FAMILIES, NETWORKS

__all__ = [
    "BASELINE_NAMES",
    "FAMILIES",
    "HPARAM_DEFAULTS",
    "NETWORKS",
    "BaselineFit",
    "fit_baseline",
]
