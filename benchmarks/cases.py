"""Named benchmark federations and the NUTS settings of their centralized references.

Every entry of :data:`CASES` is a builder ``() -> (model, data, desc)``:

* ``model``: a :class:`bayes_pfl.spec.HierarchicalModel` of the zoo;
* ``data``: a :class:`bayes_pfl.FederatedData` whose rows are all training rows
  (no test or validation split);
* ``desc``: a JSON-able description of the data (clients, rows, client-size
  quantiles, scaling, and for synthetic federations the generator call and the
  true global parameters).

:data:`REFERENCE` gives, per case, the :func:`bayes_pfl.fit_nuts` settings of a
*clean* centralized reference (0 divergences, max R-hat <= 1.01, min bulk ESS >= 400
over every element, seed 0), as checked by ``benchmarks/references.py``; ``None``
for cases meant for speed measurements only.

This module does not configure JAX and imports JAX (through ``bayes_pfl``) only when a
builder runs, so a script may import it before or after ``_common.configure_jax``;
the script must still call ``configure_jax`` before the first builder runs.

Examples
--------
>>> from cases import CASES, REFERENCE  # doctest: +SKIP
>>> model, data, desc = CASES["sleepstudy"]()  # doctest: +SKIP
>>> fit = fit_nuts(model, data, seed=0, **REFERENCE["sleepstudy"])  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from bayes_pfl import FederatedData
    from bayes_pfl.spec import HierarchicalModel

Builder = Callable[[], "tuple[HierarchicalModel, FederatedData, dict[str, Any]]"]

SIZE_QUANTILES = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)
"""Quantiles of the rows per client reported in every ``desc``."""


def describe_sizes(data: FederatedData) -> dict[str, Any]:
    """Clients, rows and the distribution of rows per client of ``data``'s training rows.

    Parameters
    ----------
    data : FederatedData
        The federation.

    Returns
    -------
    dict
        ``clients``, ``rows``, ``size_quantiles`` (quantile -> rows, at
        :data:`SIZE_QUANTILES`), ``median_rows``, ``max_rows``, ``min_rows`` and the
        counts ``clients_with_1_row``, ``clients_with_le_5_rows``,
        ``clients_with_lt_5_rows``.
    """
    sizes = np.asarray(data.n_rows("train"))
    return {
        "clients": int(data.n_clients),
        "rows": int(sizes.sum()),
        "size_quantiles": {
            f"q{round(100 * q):d}": float(np.quantile(sizes, q)) for q in SIZE_QUANTILES
        },
        "min_rows": int(sizes.min()),
        "median_rows": float(np.median(sizes)),
        "max_rows": int(sizes.max()),
        "clients_with_1_row": int(np.sum(sizes == 1)),
        "clients_with_le_5_rows": int(np.sum(sizes <= 5)),
        "clients_with_lt_5_rows": int(np.sum(sizes < 5)),
    }


def _call_repr(fn: str, kwargs: dict[str, Any]) -> str:
    """``fn(k=v, ...)`` with numpy arrays written as lists."""

    def value(v):
        return repr(v.tolist()) if isinstance(v, np.ndarray) else repr(v)

    return f"{fn}(" + ", ".join(f"{k}={value(v)}" for k, v in kwargs.items()) + ")"


def _standardization(data: FederatedData) -> dict[str, Any] | None:
    """The pooled feature means and scales of a standardized federation, by feature."""
    if data.feature_mean is None:
        return None
    return {
        str(f): {"mean": float(m), "scale": float(s)}
        for f, m, s in zip(data.features, data.feature_mean, data.feature_scale, strict=True)
    }


def _synthetic(model: HierarchicalModel, kwargs: dict[str, Any]):
    """Draw ``make_federation(**kwargs)`` and describe it (generator call and truth)."""
    from bayes_pfl import FederatedData
    from bayes_pfl.synthetic import make_federation

    fed = make_federation(**kwargs)
    data = FederatedData.from_pandas(
        fed.data, client_col=fed.client_col, target=fed.target, features=list(fed.features)
    )
    desc = {
        "source": "synthetic",
        **describe_sizes(data),
        "features": list(fed.features),
        "standardized": False,
        "generator": _call_repr("make_federation", kwargs),
        "generator_kwargs": {
            k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in kwargs.items()
        },
        "true_phi": {k: np.asarray(v).tolist() for k, v in fed.phi.items()},
        "outcome_mean": float(np.mean(fed.data[fed.target])),
    }
    return model, data, desc


# ---------------------------------------------------------------------------
# builders


def eight_schools_case():
    """Rubin's eight schools: each school a client holding one estimate and its se."""
    from bayes_pfl import FederatedData, load
    from bayes_pfl.models import eight_schools

    data = FederatedData.from_pandas(
        load("eight_schools"), client_col="school", target="y", features=["sigma"]
    )
    desc = {
        "source": "bayes_pfl.load('eight_schools')",
        **describe_sizes(data),
        "features": ["sigma"],
        "standardized": False,
        "note": "each client holds one estimate y and its known standard error sigma",
    }
    return eight_schools(), data, desc


def radon_case():
    """Minnesota radon, 85 counties, posteriordb's varying-intercept model."""
    from bayes_pfl import FederatedData, load
    from bayes_pfl.models import radon_intercept

    data = FederatedData.from_pandas(
        load("radon"), client_col="county", target="log_radon", features=["log_uppm", "floor"]
    )
    desc = {
        "source": "bayes_pfl.load('radon')",
        **describe_sizes(data),
        "features": ["log_uppm", "floor"],
        "standardized": False,
    }
    return radon_intercept(), data, desc


def synth150_case():
    """150 logistic clients of 3 to 180 rows (median 17), 4 features, varying slopes."""
    from bayes_pfl.models import logistic

    kwargs = {
        "family": "bernoulli",
        "n_clients": 150,
        "n_features": 4,
        "varying": "slopes",
        "sizes": "lognormal",
        "median_size": 17,
        "size_sigma": 0.95,
        "min_size": 3,
        "max_size": 180,
        "covariate_shift": 0.5,
        "seed": 8,
    }
    return _synthetic(logistic(4, varying="slopes"), kwargs)


def synth150_t4_case():
    """``synth150``'s federation with a Student-t population (``df = 4``) in the model: the
    federated methods' scale-mixture server and personalization against NUTS (#19)."""
    model, data, desc = synth150_case()
    return model.with_population(4.0), data, {**desc, "population_df": 4.0}


def hospitals4_case():
    """Four logistic clients of 20, 60, 150 and 300 rows, 10 features, varying slopes."""
    from bayes_pfl.models import logistic

    kwargs = {
        "family": "bernoulli",
        "n_clients": 4,
        "n_features": 10,
        "varying": "slopes",
        "sizes": np.array([20, 60, 150, 300]),
        "covariate_shift": 0.5,
        "seed": 4,
    }
    return _synthetic(logistic(10, varying="slopes"), kwargs)


def sleepstudy_case():
    """lme4's sleepstudy: ``Reaction ~ Days + (Days | Subject)``, both on a unit scale.

    The outcome is the loader's ``reaction_std`` (Reaction standardized over all 180
    rows) and ``Days`` is standardized by :class:`FederatedData` (pooled mean and sd),
    so that the zoo's default priors (coefficients N(0, 2.5), scales HalfNormal(1))
    are weakly informative.
    """
    from bayes_pfl import FederatedData, load
    from bayes_pfl.models import linear

    df = load("sleepstudy")
    data = FederatedData.from_pandas(
        df, client_col="Subject", target="reaction_std", features=["Days"], standardize=True
    )
    reaction = df["Reaction"].to_numpy()
    r_mean, r_sd = float(reaction.mean()), float(reaction.std())
    d_scale = float(data.feature_scale[0])
    desc = {
        "source": "bayes_pfl.load('sleepstudy') (lme4 sleepstudy)",
        **describe_sizes(data),
        "features": ["Days"],
        "standardized": True,
        "standardization": _standardization(data),
        "outcome": "reaction_std = (Reaction - mean) / sd over all 180 rows (ddof=0)",
        "outcome_scaling": {"column": "Reaction", "mean": r_mean, "sd": r_sd},
        "back_transform": (
            f"intercept (ms at the mean day 4.5) = {r_mean:.4f} + {r_sd:.4f} * b[0]; "
            f"slope (ms per day) = {r_sd / d_scale:.4f} * b[1]; "
            f"sigma (ms) = {r_sd:.4f} * sigma_y"
        ),
    }
    return linear(1, varying="slopes"), data, desc


def guimmun_case():
    """Guatemalan immunization: 161 communities, kid2p, mom25p and rural all varying."""
    from bayes_pfl import FederatedData, load
    from bayes_pfl.models import logistic

    features = ["kid2p", "mom25p", "rural"]
    df = load("guimmun")
    data = FederatedData.from_pandas(df, client_col="comm", target="immun", features=features)
    desc = {
        "source": "bayes_pfl.load('guimmun') (mlmRev guImmun)",
        **describe_sizes(data),
        "features": features,
        "standardized": False,
        "encoding": "immun, kid2p, mom25p, rural: Y -> 1, N -> 0",
        "outcome_mean": float(df["immun"].mean()),
        "note": (
            "rural is constant within every community (a community-level covariate): a "
            "community's intercept and rural slope are identified only through their sum; "
            "the population prior separates them"
        ),
    }
    return logistic(3, varying="slopes"), data, desc


def heart_case():
    """UCI heart disease, four hospitals, FLamby's 10 features (complete rows), standardized."""
    from bayes_pfl import FederatedData, load
    from bayes_pfl.datasets import HEART_DISEASE_FLAMBY_FEATURES
    from bayes_pfl.models import logistic

    features = list(HEART_DISEASE_FLAMBY_FEATURES)
    df = load("heart_disease")
    complete = df.dropna(subset=[*features, "target"]).reset_index(drop=True)
    data = FederatedData.from_pandas(
        complete, client_col="hospital", target="target", features=features, standardize=True
    )
    scale = np.asarray(data.feature_scale)
    if not np.all(np.isfinite(scale) & (scale > 0)):
        raise RuntimeError(f"heart: a feature has a zero or non-finite pooled scale: {scale}")
    desc = {
        "source": "bayes_pfl.load('heart_disease'), FLamby's 10 features, complete rows",
        **describe_sizes(data),
        "rows_dropped": int(len(df) - len(complete)),
        "rows_by_hospital": {
            str(c): int(n) for c, n in zip(data.clients, data.n_rows(), strict=True)
        },
        "features": features,
        "standardized": True,
        "standardization": _standardization(data),
        "note": (
            "Switzerland's chol is 0 for every patient (kept as published); the pooled chol "
            "sd is not 0, so standardization does not divide by zero; binary features "
            "(sex, fbs, exang) are left as 0/1 by FederatedData"
        ),
    }
    return logistic(10, varying="slopes"), data, desc


def big1000_case():
    """1,000 logistic clients x 50 rows x 10 features, varying intercept (speed only)."""
    from bayes_pfl.models import logistic

    kwargs = {
        "family": "bernoulli",
        "n_clients": 1000,
        "n_features": 10,
        "varying": "intercept",
        "sizes": 50,
        "seed": 0,
    }
    return _synthetic(logistic(10), kwargs)


CASES: dict[str, Builder] = {
    "eight_schools": eight_schools_case,
    "radon": radon_case,
    "synth150": synth150_case,
    "synth150_t4": synth150_t4_case,
    "hospitals4": hospitals4_case,
    "sleepstudy": sleepstudy_case,
    "guimmun": guimmun_case,
    "heart": heart_case,
    "big1000": big1000_case,
}
"""Benchmark federations by name: builders ``() -> (model, data, desc)``."""


def _nuts(
    num_warmup: int,
    num_samples: int,
    target_accept_prob: float,
    max_tree_depth: int = 10,
    num_chains: int = 4,
) -> dict[str, Any]:
    return {
        "num_chains": num_chains,
        "num_warmup": num_warmup,
        "num_samples": num_samples,
        "target_accept_prob": target_accept_prob,
        "max_tree_depth": max_tree_depth,
    }


REFERENCE: dict[str, dict[str, Any] | None] = {
    "eight_schools": _nuts(2000, 5000, 0.95),
    "radon": _nuts(1000, 2000, 0.9),
    "synth150": _nuts(1000, 1000, 0.9),
    "synth150_t4": _nuts(1000, 1000, 0.95),
    "hospitals4": _nuts(2000, 1000, 0.99, 12),
    "sleepstudy": _nuts(1000, 2000, 0.95),
    "guimmun": _nuts(1000, 3000, 0.95),
    "heart": _nuts(3000, 1000, 0.995, 12),
    "big1000": None,
}
"""``fit_nuts`` settings (seed 0) of a clean centralized reference per case; ``None``: none."""
