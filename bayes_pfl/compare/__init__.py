"""Compare personalized federated methods on identical splits, per client and by client size.

:func:`compare` fits every method of a list on the same
:class:`~bayes_pfl.data.FederatedData` (the same training, validation and test
rows for every method), for several seeds, and scores each method's
predictions for every client's held-out test rows with :mod:`bayes_pfl.metrics`:
mean log predictive density, log-loss, accuracy, Brier score and expected
calibration error for classifiers; log predictive density, RMSE and 90%
interval coverage for regression. The result, a :class:`ComparisonResult`,
holds one row per method x seed x client and aggregates it per method
(:meth:`~ComparisonResult.summary`) and per client-size bucket
(:meth:`~ComparisonResult.by_bucket`); :meth:`~ComparisonResult.to_csv` writes
the tables and a short markdown summary, :func:`plot_comparison` and
:func:`plot_method_calibration` draw them.

A method is a :class:`Method`: a name and ``fit_fn(data, seed, **hparams)``
returning a *predictor*, anything with ``predict(arrays) -> Prediction``. The
adapters build them:

* :func:`bayesian_method` for the hierarchical Bayesian fits (``"nuts"``:
  centralized NUTS, :func:`~bayes_pfl.centralized.fit_nuts`; ``"ep"``:
  federated EP, :func:`~bayes_pfl.federated.fit_ep`; ``"one-shot"``:
  :func:`~bayes_pfl.federated.fit_one_shot`), predicting with posterior draws:
  the log predictive density of a row is ``log mean_s p(y_i | theta^(s))`` and
  the 90% interval the 5% and 95% quantiles of posterior predictive draws;
* :func:`baseline_method` for the optimization baselines of
  :mod:`bayes_pfl.baselines` (``local``, ``pooled``, ``fedavg``, ...), whose
  point predictions become predictive densities through the likelihood
  (Bernoulli, categorical, Poisson, or Normal with each client's residual sd);
* :func:`neural_method` for the hierarchical Bayesian networks of
  :mod:`bayes_pfl.neural` (``bayes_head``, ``bayes_head_bn``, ``bayes_head_adapters``),
  predicting with each client's posterior predictive class probabilities;
* :func:`make_method` builds any of them from a name;
* :func:`constant_method` (each client's training mean) and, on synthetic
  federations, :func:`oracle_method` (the true parameters) are references.

Seeds. ``seeds=(0, 1, 2)`` runs every method once per seed. ``data`` is either a
:class:`~bayes_pfl.data.FederatedData` (the same split for every seed; the seed
changes only the methods' randomness) or a function ``seed -> FederatedData``
(a new split per seed, shared by every method of that seed).

Tuning. A method with a ``grid`` of hyper-parameter candidates is fitted on the
training rows once per candidate and the candidate with the best mean
per-client *validation* log predictive density is kept; the test rows are
never used to choose anything. With ``refit=True`` (default) every method's
final fit then uses the training and validation rows together, so that all
methods, tuned or not, learn from the same rows.

The package, a module per job (each imports only the ones before it):

* :mod:`~bayes_pfl.compare.families`: :data:`FAMILIES`, :class:`ComparisonError`,
  the checks of a family against the target;
* :mod:`~bayes_pfl.compare.predictions`: :class:`Prediction`, :func:`prediction_from_mean`,
  :class:`PosteriorPredictor`;
* :mod:`~bayes_pfl.compare.methods`: :class:`Method` and its adapters;
* :mod:`~bayes_pfl.compare.result`: :class:`ComparisonResult`;
* :mod:`~bayes_pfl.compare.harness`: :func:`compare`, :func:`size_bucket`.

The two figures live in :mod:`bayes_pfl.plots.comparison` and are re-exported here on
first use (PEP 562), so that importing the comparison does not import the plotting
code (nor JAX, which it loads); the plotting code imports the comparison only inside
its functions. The command line, ``bayes-pfl compare`` (or ``python -m
bayes_pfl.compare``), is :func:`bayes_pfl.cli.compare.compare_main`; this package never
imports :mod:`bayes_pfl.cli`.

Examples
--------
>>> import numpy as np, pandas as pd
>>> from bayes_pfl.data import FederatedData
>>> rng = np.random.default_rng(0)
>>> df = pd.DataFrame({"c": np.repeat(["a", "b", "c"], 30), "x": rng.normal(size=90)})
>>> df["y"] = (rng.random(90) < 1 / (1 + np.exp(-2 * df["x"]))).astype(int)
>>> data = FederatedData.from_pandas(df, client_col="c", target="y", features=["x"],
...                                  test_size=0.3)
>>> res = compare(data, [constant_method()], seeds=[0, 1])
>>> res.table[["method", "seed", "client", "n_train", "bucket"]].head(3)
     method  seed client  n_train bucket
0  constant     0      a       21  11-50
1  constant     0      b       21  11-50
2  constant     0      c       21  11-50
>>> round(float(res.summary().loc["constant", "accuracy_mean"]), 3)
0.519
"""

# ``X as X``: public names of the former single module outside its ``__all__``,
# re-exported explicitly so that they stay importable from here
from bayes_pfl.compare.families import FAMILIES, ComparisonError
from bayes_pfl.compare.harness import DEFAULT_BUCKETS as DEFAULT_BUCKETS
from bayes_pfl.compare.harness import compare, size_bucket
from bayes_pfl.compare.methods import (
    BAYESIAN_METHODS,
    Method,
    baseline_method,
    bayesian_method,
    constant_method,
    make_method,
    neural_method,
    oracle_method,
    with_imputation,
)
from bayes_pfl.compare.methods import callable_model as callable_model
from bayes_pfl.compare.predictions import INTERVAL_PROB as INTERVAL_PROB
from bayes_pfl.compare.predictions import PosteriorPredictor as PosteriorPredictor
from bayes_pfl.compare.predictions import Prediction, Predictor, prediction_from_mean
from bayes_pfl.compare.result import METRICS as METRICS
from bayes_pfl.compare.result import ComparisonResult

__all__ = [
    "BAYESIAN_METHODS",
    "FAMILIES",
    "ComparisonError",
    "ComparisonResult",
    "Method",
    "Prediction",
    "Predictor",
    "baseline_method",
    "bayesian_method",
    "compare",
    "constant_method",
    "make_method",
    "neural_method",
    "oracle_method",
    "plot_comparison",
    "plot_method_calibration",
    "prediction_from_mean",
    "size_bucket",
    "with_imputation",
]

_PLOTS = ("plot_comparison", "plot_method_calibration")


def __getattr__(name: str):
    if name in _PLOTS:  # imported on first use: see the module docstring
        from bayes_pfl.plots import comparison

        value = getattr(comparison, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_PLOTS))
