"""The bayes-pfl model zoo, installed as ``bayes_pfl.models``.

* :func:`radon_intercept`, :func:`eight_schools`: posteriordb models with their
  parameter names and priors;
* :func:`hierarchical_glm` and the shortcuts :func:`linear`, :func:`logistic`,
  :func:`poisson`: hierarchical GLMs on any features, varying intercepts or
  intercepts and slopes, centered or non-centered; missing feature values and
  measurement error modelled per client (:mod:`bayes_pfl.models.covariates`).

:func:`get_model` builds any of them by name, as the command line does.
"""

from __future__ import annotations

from bayes_pfl.spec import HierarchicalModel, ModelSpecError

from .glm import FAMILIES, INTERCEPT, VARYING, Terms, hierarchical_glm, linear, logistic, poisson
from .posteriordb import eight_schools, radon_intercept

GLM_FAMILY = {"linear": "normal", "logistic": "bernoulli", "poisson": "poisson"}
MODEL_NAMES = ("radon_intercept", "eight_schools", *GLM_FAMILY)

__all__ = [
    "FAMILIES",
    "INTERCEPT",
    "MODEL_NAMES",
    "VARYING",
    "eight_schools",
    "get_model",
    "hierarchical_glm",
    "linear",
    "logistic",
    "poisson",
    "radon_intercept",
    "Terms",
]


def get_model(
    name: str,
    n_features: int | None = None,
    *,
    varying: str = "intercept",
    centered: bool = False,
    feature_names=None,
    client_covariates=None,
    **latent,
) -> HierarchicalModel:
    """Build a zoo model by name.

    Parameters
    ----------
    name : str
        One of :data:`MODEL_NAMES`.
    n_features : int, optional
        Number of features, required by the GLMs (``linear``, ``logistic``, ``poisson``).
    varying, centered, feature_names, client_covariates
        GLM options, see :func:`hierarchical_glm`; ignored by the posteriordb models but
        ``client_covariates``, which they do not take (an error).
    **latent
        GLM options for missing values and measurement error (``missing``, ``noise_sd``,
        ``missing_effects``, ``sigma_by_client``, see :func:`hierarchical_glm`); the
        posteriordb models take none (an error).

    The model is named ``name`` (``get_model("logistic", 2).name == "logistic"``, as the
    user asked for it, in files and reports); the GLM's description says which
    coefficients vary and how it is parameterized.
    """
    if client_covariates is not None and name not in GLM_FAMILY:
        raise ModelSpecError(
            f"model {name!r} takes no client covariates (metadata); the GLMs "
            f"({', '.join(GLM_FAMILY)}) do"
        )
    if latent and name not in GLM_FAMILY:
        raise ModelSpecError(
            f"model {name!r} takes no {', '.join(latent)}; the GLMs ({', '.join(GLM_FAMILY)}) do"
        )
    if name == "radon_intercept":
        return radon_intercept()
    if name == "eight_schools":
        return eight_schools()
    if name in GLM_FAMILY:
        if n_features is None:
            raise ModelSpecError(f"model {name!r} needs n_features")
        return hierarchical_glm(
            GLM_FAMILY[name],
            n_features,
            varying=varying,
            centered=centered,
            feature_names=feature_names,
            name=name,
            client_covariates=client_covariates,
            **latent,
        )
    raise ModelSpecError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
