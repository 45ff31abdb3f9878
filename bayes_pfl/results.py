"""One result type for every method, and its one conversion to ArviZ.

Every inference method (centralized NUTS, and the federated algorithms) returns
a :class:`FitResult`: draws of the global parameters ``phi``, draws of each
client's ``theta_k`` with a ``client`` axis in the user's label order, optional
sampler statistics and a per-round history. :meth:`FitResult.to_datatree` is the
one conversion to an ArviZ 1.x :class:`xarray.DataTree`, so results of different
methods share one layout and can be compared variable by variable.

On disk a fit is a folder with three files (:func:`save_fit`):

``posterior.nc``
    the DataTree (``xarray.open_datatree`` reads it back, labels included);
``summary.csv``
    ``arviz.summary`` with 90% equal-tailed intervals, one row per parameter
    element, client labels in the row names (``alpha[AITKIN]``);
``run.json``
    method, model (its name, description and coordinate labels), seed, wall time,
    package versions, diagnostics, history.

Labelled vector sites (:attr:`~bayes_pfl.spec.HierarchicalModel.coords`: a GLM's
coefficients) get one dimension per site, named ``<site>_term`` (:func:`term_dim`), whose
coordinate is the labels: ``b[cleveland, age]``, ``beta[floor]`` in ``summary.csv``.
One dimension per site, not one ``term`` dimension shared where labels agree: a GLM's
``mu`` (the varying terms with a population mean), ``beta`` (the common terms that do
not vary) and ``b`` (the varying terms) label different subsets of the terms, and a
shared dimension must have one set of labels in a Dataset; a per-site name is also the
same in every fit of a model, whatever the labels. Select a term by label:
``dt.posterior["b"].sel(b_term="age")``, ``dt.posterior["mu"].sel(mu_term="age")``.
Sites without labels keep ``<site>_dim_<i>``.
"""

from __future__ import annotations

import json
import platform
import sys
from dataclasses import dataclass, field
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import xarray as xr

from bayes_pfl.spec import HierarchicalModel
from bayes_pfl.student_t import df_record

__all__ = [
    "FitResult",
    "TERM_SUFFIX",
    "load_posterior",
    "package_versions",
    "save_fit",
    "summarize",
    "term_dim",
]

SUMMARY_CI_PROB = 0.9
TERM_SUFFIX = "_term"
"""Suffix of the dimension of a labelled vector site: ``b`` -> ``b_term``."""


def term_dim(site: str) -> str:
    """The dimension name of a labelled vector site's entries (``"b"`` -> ``"b_term"``)."""
    return f"{site}{TERM_SUFFIX}"


def package_versions() -> dict[str, str]:
    """Versions of Python and of the packages a result depends on."""
    out = {"python": platform.python_version()}
    for pkg in ("bayes-pfl", "jax", "jaxlib", "numpyro", "arviz", "xarray", "numpy", "pandas"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def _label_array(labels) -> np.ndarray:
    arr = np.asarray(list(labels))
    if arr.dtype.kind in "OUS":
        return arr.astype(str)
    return arr


@dataclass
class FitResult:
    """Posterior draws of one fit, in one layout for every method.

    Attributes
    ----------
    method : str
        ``"nuts"``, ``"one-shot"``, ``"ep"``, ...
    model : HierarchicalModel
        The model that was fitted.
    clients : tuple
        Client labels, in the order of the ``client`` axis.
    phi : dict of str to ndarray
        Global sites (sample and deterministic), each ``(chain, draw, *shape)``.
    theta : dict of str to ndarray
        Client sites, each ``(chain, draw, client, *shape)``.
    sample_stats : dict of str to ndarray, optional
        Sampler statistics, each ``(chain, draw)``.
    history : list of dict
        One entry per federated round (empty for centralized fits).
    info : dict
        Free-form run information (wall time, settings) written to ``run.json``.
    state : dict
        What a federated fit keeps for later steps (the global draws in
        unconstrained coordinates, the product of sites): used by
        :func:`~bayes_pfl.federated.cold_start`.
    coords : dict of str to tuple of str, optional
        Labels of the entries of vector sites (a GLM's coefficient names), by site.
        Default: the model's (:attr:`~bayes_pfl.spec.HierarchicalModel.coords`), read
        when the result is made, so every fit path carries them.
    """

    method: str
    model: HierarchicalModel
    clients: tuple
    phi: dict[str, np.ndarray]
    theta: dict[str, np.ndarray]
    sample_stats: dict[str, np.ndarray] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)
    coords: dict[str, tuple[str, ...]] | None = None

    def __post_init__(self):
        coords = self.model.coords if self.coords is None else self.coords
        self.coords = {str(k): tuple(map(str, v)) for k, v in coords.items()}

    @property
    def num_chains(self) -> int:
        return next(iter(self.phi.values())).shape[0]

    @property
    def num_draws(self) -> int:
        return next(iter(self.phi.values())).shape[1]

    def _element_dims(self, name: str, shape: tuple[int, ...]) -> list[str]:
        labels = self.coords.get(name)
        if labels is None:
            return [f"{name}_dim_{i}" for i in range(len(shape))]
        if shape != (len(labels),):
            raise ValueError(
                f"coords of {name!r} has {len(labels)} label(s) but its draws have element "
                f"shape {shape}"
            )
        return [term_dim(name)]

    def _dims(self) -> dict[str, list[str]]:
        dims = {}
        for name, v in self.phi.items():
            dims[name] = self._element_dims(name, v.shape[2:])
        for name, v in self.theta.items():
            dims[name] = ["client", *self._element_dims(name, v.shape[3:])]
        return dims

    def _term_coords(self) -> dict[str, np.ndarray]:
        """The labels of the labelled sites present, by dimension name."""
        present = {*self.phi, *self.theta}
        return {
            term_dim(name): np.asarray(labels, dtype=str)
            for name, labels in self.coords.items()
            if name in present
        }

    def pointwise_loglik(
        self, x: np.ndarray, y: np.ndarray, mask: np.ndarray, *, outcome_only: bool = False
    ) -> np.ndarray:
        """Log-likelihood of every real row under every draw, shape ``(chain, draw, n_obs)``.

        Rows are the ``mask``-selected rows of ``x``/``y`` (``(K, n_max, ...)``), client
        by client, in row order. ``outcome_only``: the outcome's site alone, without a
        covariate site (``x_obs``, missing values modelled); see
        :meth:`~bayes_pfl.spec.HierarchicalModel.pointwise_loglik_values`.
        """
        model = self.model
        c, d = self.num_chains, self.num_draws

        def flat(tree):
            return jax.tree.map(lambda a: jnp.asarray(a).reshape((c * d,) + a.shape[2:]), tree)

        phi, theta = flat(self.phi), flat(self.theta)

        def one_draw(phi_s, theta_s):
            values = partial(model.pointwise_loglik_values, outcome_only=outcome_only)
            return jax.vmap(values, in_axes=(0, None, 0, 0))(
                theta_s, phi_s, jnp.asarray(x), jnp.asarray(y)
            )

        ll = jax.lax.map(lambda args: one_draw(*args), (phi, theta), batch_size=64)
        ll = np.asarray(ll)[:, np.asarray(mask)]
        return ll.reshape(c, d, -1)

    def predictive(self, x: np.ndarray, mask: np.ndarray, *, seed: int = 0) -> np.ndarray:
        """Posterior predictive draws of the target for rows ``x`` (``(K, n_max, p)``).

        Returns ``(chain, draw, n_obs)`` over the ``mask``-selected rows, client by client.
        """
        model = self.model
        c, d = self.num_chains, self.num_draws

        def flat(tree):
            return jax.tree.map(lambda a: jnp.asarray(a).reshape((c * d,) + a.shape[2:]), tree)

        keys = jax.random.split(jax.random.key(seed), c * d)
        xs = jnp.asarray(x)

        def one_draw(args):
            key, phi_s, theta_s = args
            ks = jax.random.split(key, xs.shape[0])
            return jax.vmap(model.sample_likelihood, in_axes=(0, 0, None, 0))(
                ks, theta_s, phi_s, xs
            )

        yrep = jax.lax.map(one_draw, (keys, flat(self.phi), flat(self.theta)), batch_size=64)
        yrep = np.asarray(yrep)[:, np.asarray(mask)]
        return yrep.reshape(c, d, -1)

    def to_datatree(self, data=None, *, log_likelihood: bool = True):
        """The fit as an ArviZ 1.x ``xarray.DataTree``.

        Groups: ``posterior`` (global and client variables; client variables carry
        a ``client`` dimension labelled with the user's labels, labelled vector sites a
        ``<site>_term`` dimension labelled with :attr:`coords`), ``sample_stats``
        (when the method has them), and, when ``data`` (a
        :class:`~bayes_pfl.data.FederatedData`) is given, ``observed_data`` and
        ``log_likelihood`` over the training rows (dimension ``obs`` with a
        coordinate ``obs_client`` naming each row's client), ready for ``az.loo``.
        When ``data`` has held-out test rows, ``posterior_predictive`` holds draws
        of the target for them (dimension ``test_obs``, coordinate ``test_obs_client``)
        and ``observed_data`` their observed values (``<target>_test``).
        The federated round history, when present, is the group ``fit_history``.
        """
        import arviz as az

        groups: dict[str, dict[str, np.ndarray]] = {
            "posterior": {**self.phi, **self.theta},
        }
        if self.sample_stats:
            groups["sample_stats"] = dict(self.sample_stats)
        coords: dict[str, Any] = {"client": _label_array(self.clients), **self._term_coords()}
        dims = self._dims()
        obs_name = self.model.observed_name
        obs_client = predictive = held_out = None
        if data is not None:
            arr = data.train
            mask = np.asarray(arr.mask)
            rows = np.asarray(arr.y)[mask]
            obs_client = np.repeat(_label_array(self.clients), mask.sum(axis=1))
            groups["observed_data"] = {obs_name: rows}
            dims[obs_name] = ["obs"]
            coords["obs"] = np.arange(rows.shape[0])
            if log_likelihood:
                groups["log_likelihood"] = {obs_name: self.pointwise_loglik(arr.x, arr.y, arr.mask)}
            test = getattr(data, "test", None)
            if test is not None and np.asarray(test.mask).any():
                tmask = np.asarray(test.mask)
                test_client = np.repeat(_label_array(self.clients), tmask.sum(axis=1))
                test_coords = {
                    "test_obs": np.arange(int(tmask.sum())),
                    "test_obs_client": ("test_obs", test_client),
                }
                yrep = self.predictive(test.x, tmask)
                predictive = xr.Dataset(
                    {obs_name: (("chain", "draw", "test_obs"), yrep)},
                    coords={
                        "chain": np.arange(yrep.shape[0]),
                        "draw": np.arange(yrep.shape[1]),
                        **test_coords,
                    },
                )
                held_out = xr.Dataset(
                    {f"{obs_name}_test": ("test_obs", np.asarray(test.y)[tmask])},
                    coords=test_coords,
                )
        attrs = {"/": {"method": self.method, "model": self.model.name}}
        if self.model.population_df is not None:
            attrs["/"]["population_df"] = df_record(self.model.population_df)
        privacy = self.info.get("privacy")
        if privacy:  # a differentially private fit: what each client spent
            attrs["/"].update(
                {
                    "dp_epsilon_spent": privacy["epsilon_spent"],
                    "dp_delta": privacy["delta_spent"],
                    "dp_epsilon_budget": privacy["epsilon_budget"],
                    "dp_noise_multiplier": privacy["noise_multiplier"],
                    "dp_clip": privacy["clip"],
                    "dp_rounds": privacy["rounds_run"],
                    "dp_accountant": privacy["accountant"],
                    "dp_spent_per_client": json.dumps(privacy["spent"]),
                }
            )
        dt = az.from_dict(groups, coords=coords, dims=dims, attrs=attrs)
        if obs_client is not None:
            for group in ("observed_data", "log_likelihood"):
                if group in dt.children:
                    ds = dt[group].to_dataset().assign_coords(obs_client=("obs", obs_client))
                    dt[group] = xr.DataTree(ds)
        if predictive is not None:
            dt["posterior_predictive"] = xr.DataTree(predictive)
            od = xr.merge([dt["observed_data"].to_dataset(), held_out])
            dt["observed_data"] = xr.DataTree(od)
        if self.history:
            dt["fit_history"] = xr.DataTree(_history_dataset(self.history))
        return dt


def _history_dataset(history: list[dict[str, Any]]) -> xr.Dataset:
    scalars = {}
    for key in history[0]:
        if key == "round":
            continue
        vals = [h.get(key) for h in history]
        if all(isinstance(v, int | float | np.integer | np.floating | bool) for v in vals):
            scalars[key] = ("round", np.asarray(vals, dtype=float))
    return xr.Dataset(scalars, coords={"round": np.arange(1, len(history) + 1)})


def summarize(dt, *, var_names=None) -> pd.DataFrame:
    """ArviZ summary of the posterior with 90% equal-tailed intervals, unrounded."""
    import arviz as az

    return az.summary(
        dt, var_names=var_names, ci_prob=SUMMARY_CI_PROB, ci_kind="eti", round_to="none"
    )


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray | jax.Array):
        return np.asarray(obj).tolist()
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def save_fit(
    result: FitResult, data, out_dir: str | Path, *, log_likelihood: bool = True, **run_info
) -> dict[str, Path]:
    """Write ``posterior.nc``, ``summary.csv`` and ``run.json`` for a fit.

    Returns the paths written, by name. ``run_info`` is merged into ``run.json``, and so
    are ``data``'s standardization constants (``standardization``: feature -> mean, scale)
    when its features were standardized: new rows must be scaled with them.

    ``log_likelihood=False`` leaves the pointwise log-likelihood (chains x draws x rows:
    most of the file on a large federation) out of ``posterior.nc``; the per-client
    PSIS-LOO it serves is computed now instead and written to ``loo.csv``, with the total
    and any Pareto-k warning in ``run.json`` (``loo``), which is what the report shows.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dt = result.to_datatree(data)
    paths = {
        "posterior": out / "posterior.nc",
        "summary": out / "summary.csv",
        "run": out / "run.json",
    }
    if not log_likelihood and "log_likelihood" in dt.children:
        paths["loo"] = out / "loo.csv"
        run_info["loo"] = _save_loo(dt, paths["loo"])
        dt = dt.copy()
        del dt["log_likelihood"]
    dt.to_netcdf(paths["posterior"], engine="h5netcdf")
    summary = summarize(dt)
    summary.to_csv(paths["summary"])
    diag = {}
    if "r_hat" in summary:
        r_hat = summary["r_hat"].to_numpy(float)
        # one chain: no split R-hat (None in run.json, not NaN nor an all-NaN warning)
        diag["max_r_hat"] = float(np.nanmax(r_hat)) if np.isfinite(r_hat).any() else None
        diag["min_ess_bulk"] = float(np.nanmin(summary["ess_bulk"]))
    if result.sample_stats and "diverging" in result.sample_stats:
        diag["divergences"] = int(np.sum(result.sample_stats["diverging"]))
    if hasattr((result.state or {}).get("sites"), "precision"):
        from bayes_pfl.conflict import conflict_table

        table = conflict_table(result)
        paths["conflict"] = out / "conflict.csv"
        table.to_csv(paths["conflict"])
        run_info["conflict"] = {
            "alpha": 0.05,
            "threshold_p": 0.05 / len(table),
            "flagged": [str(c) for c in table.index[table["flagged"]]],
            "duplicates": [str(c) for c in table.index[table["duplicate"]]],
            "capped": [str(c) for c in table.index[table["capped"]]],
        }
    if data is not None and getattr(data, "feature_mean", None) is not None:
        # new rows (prediction, cold start) must be scaled with these same constants
        run_info.setdefault(
            "standardization",
            {
                str(f): {"mean": float(m), "scale": float(sc)}
                for f, m, sc in zip(
                    data.features, data.feature_mean, data.feature_scale, strict=True
                )
            },
        )
    run = {
        "method": result.method,
        "model": result.model.name,
        "model_description": result.model.description,
        "population": (
            "gaussian"
            if result.model.population_df is None
            else {"student_t_df": df_record(result.model.population_df)}
        ),
        "coords": result.coords,
        "clients": len(result.clients),
        "num_chains": result.num_chains,
        "num_draws": result.num_draws,
        **result.info,
        **run_info,
        "diagnostics": diag,
        "history": result.history,
        "versions": package_versions(),
        "command": sys.argv,
    }
    paths["run"].write_text(json.dumps(_jsonable(run), indent=2))
    return paths


def _save_loo(dt, path: Path) -> dict[str, Any]:
    """Per-client PSIS-LOO of ``dt`` to ``path``; its total and warnings, for ``run.json``."""
    import warnings

    from bayes_pfl.inspection import ParetoKWarning, loo_by_client

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loo = loo_by_client(dt)
    loo.table.to_csv(path)
    return {
        "elpd_loo": float(loo.total.elpd),
        "se": float(loo.total.se),
        "warnings": [str(w.message) for w in caught if isinstance(w.message, ParetoKWarning)],
    }


def load_posterior(path: str | Path):
    """Read a ``posterior.nc`` written by :func:`save_fit` (an ``xarray.DataTree``)."""
    return xr.open_datatree(Path(path), engine="h5netcdf").load()
