"""What a Flower run is: settings read once from the run config, the model, the
algorithm phases, and each node's own rows.

Flower hands both apps the same *run config* (``[tool.flwr.app.config]`` of the app's
``pyproject.toml``, overridden by ``flwr run -c key=value``) and each node its *node
config* (``flower-supernode --node-config``). :meth:`FlowerSettings.from_run_config`
validates the run config at the boundary and turns it into a frozen, hashable
object, so the model, the algorithms and the compiled functions built from it are
built once per process and reused across messages.

A node's rows come from one of two places (:func:`load_client_data`):

* ``node_config["data-path"]``: a CSV holding only this node's rows (a real
  deployment: a hospital reads its own file; its label is the file's client column,
  else its stem, as when ``data`` is the folder of these files). Features are raw;
  when ``standardize`` is on, the server pools per-client counts, means and sums of
  squared deviations (never rows) and sends back the pooled statistics;
* otherwise the run config's ``data`` (a bundled dataset, a CSV path, or a folder or
  glob of one CSV per client: :func:`bayes_pfl.datasets.source`) split into clients
  exactly as :meth:`bayes_pfl.data.FederatedData.from_pandas` splits it, and the node
  takes client ``partition-id`` (a simulation, or a demo where every node sees the
  same files).
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "METHODS",
    "ClientData",
    "FlowerSettings",
    "LEARNED_DF_SENTINEL",
    "build_phases",
    "cached_client_data",
    "configure_jax",
    "load_client_data",
    "pooled_standardization",
    "standardization_stats",
]

LEARNED_DF_SENTINEL = -1.0
"""The run config's ``population-df`` for a learned df (a float field: ``"learn"`` is not
a float)."""

METHODS = ("ep", "one-shot", "vi")
"""The posterior methods (the registry's ``federated`` kind, :mod:`bayes_pfl.methods`; a
test keeps them equal, written here so that a ClientApp process need not build the
registry). Any other method of the registry that runs on Flower (the baselines) is
accepted by :func:`build_phases`."""

# The values FlowerSettings.check accepts: copies of bayes_pfl.federated.SITES and
# bayes_pfl.algorithms.ep.TILTED / SITE_FITS (a test keeps them equal). Importing those
# modules loads numpyro and SciPy, about 0.6 s of CPU in every ClientApp process of a
# deployment, whose exported client step needs neither.
SITES = ("effects", "global")
SUMMARIES = ("gaussian", "particles", "auto")  # bayes_pfl.federated.SUMMARIES
TILTED = ("laplace", "nuts")
SITE_FITS = ("taylor", "regression", "gradient")


@dataclass(frozen=True)
class FlowerSettings:
    """Settings of a Flower run (the keys of ``[tool.flwr.app.config]``, ``-`` for ``_``).

    Attributes
    ----------
    data : str
        Bundled dataset name, CSV path, or a folder or glob of one CSV per client (see
        :func:`bayes_pfl.datasets.source`): where nodes without ``data-path`` in their
        node config take their partition from.
    client_col, target, features : str
        Client column, target and comma-separated features (empty: the bundled
        dataset's defaults).
    model, varying, centered
        Zoo model (empty: the dataset's default), see :func:`bayes_pfl.models.get_model`.
    population_df : float
        ``> 0``: a Student-t population with this many degrees of freedom (a robust
        option, :meth:`~bayes_pfl.spec.HierarchicalModel.with_population`; the federated
        methods need it above 2); 0: Gaussian; ``-1`` (:data:`LEARNED_DF_SENTINEL`): a
        learned df (``population_df="learn"``; the run config's values are typed, so the
        string is not accepted).
    formula, schema
        A model as a formula (:mod:`bayes_pfl.formula`; ``model`` then names the family:
        ``logistic``, ``linear``, ``poisson``, ...); it names the client column, target
        and terms. ``schema``: the JSON of :meth:`bayes_pfl.formula.Schema.to_dict`, the
        design every node evaluates its own rows against. Nodes reading their own file
        (``data-path``) need it (``deploy_local.py --formula`` writes it from the files'
        level sets); otherwise it is made from ``data``'s clients.
    missing : {"error", "drop", "keep"}
        Rows with missing values, as in :meth:`~bayes_pfl.data.FederatedData.from_pandas`.
    standardize : bool
        Standardize features with pooled training statistics, unless the dataset's
        features keep their units (:attr:`standardize_features`).
    method : str
        ``"ep"``, ``"one-shot"`` or a baseline module name in ``bayes_pfl.baselines``.
    method_options : str
        JSON object of extra keyword arguments for a baseline's ``build``.
    rounds, sites, damping, tilted, site_fit, tol
        As in :func:`bayes_pfl.federated.fit_ep` (``damping < 0``, ``tol < 0``: its
        defaults).
    precision_cap : float
        As in :func:`bayes_pfl.federated.fit_ep` (a robust option; 0: no cap).
    summary, n_particles
        EP's client summaries (:mod:`bayes_pfl.algorithms.particles`): ``"auto"`` (default)
        adds the particle exchange after the Gaussian rounds where particles apply
        (:func:`bayes_pfl.federated.resolve_summary` with ``summary=None``) and keeps
        Gaussian sites elsewhere, silently; ``"particles"`` and ``"gaussian"`` as in ``fit_ep``.
    dp_epsilon, dp_delta, dp_clip, dp_accountant
        Record-level differential privacy of each node's sites (``method = "ep"``), as
        :class:`bayes_pfl.privacy.DPBudget` (``dp-epsilon`` 0: off; ``dp-clip`` 0: its
        default). Each ClientApp privatizes before sending, with noise from a secret the
        node keeps (node config ``dp-seed``, see :mod:`bayes_pfl.flower.client`); the
        personalized posteriors stay on the nodes.
    seed : int
        Seed of every random key (the same keys as the in-process run).
    global_method, num_chains, num_warmup, num_samples
        How the server samples the global posterior after the rounds (``num_warmup < 0``:
        :func:`bayes_pfl.federated.default_warmup`).
    num_clients : int
        Nodes to wait for (0: as many as have registered once their number settles).
    node_wait_s, round_timeout_s, poll_interval_s : float
        How long to wait for nodes to register, for a round's replies, and how often
        to poll for replies.
    max_in_flight : int
        At most this many nodes are sent a message at once (0: all). On one machine
        hosting many SuperNodes it bounds the ClientApp processes running together
        (flwr 1.41 starts one per message); across machines leave it 0.
    out : str
        Result folder (``posterior.nc``, ``summary.csv``, ``run.json``, checkpoint).
    checkpoint, resume : bool
        Checkpoint the server state after every round; resume from it.
    jax_cache_dir : str
        Persistent JAX compilation cache (empty: none).
    x64 : bool
        Run JAX in float64 (needed for equality with a float64 in-process run).
    """

    data: str = "heart_disease"
    client_col: str = ""
    target: str = ""
    features: str = ""
    model: str = ""
    formula: str = ""
    schema: str = ""
    varying: str = "intercept"
    centered: bool = False
    population_df: float = 0.0
    missing: str = "drop"
    standardize: bool = True
    method: str = "ep"
    method_options: str = ""
    rounds: int = 10
    sites: str = "effects"
    damping: float = -1.0
    tilted: str = "laplace"
    site_fit: str = "gradient"
    precision_cap: float = 0.0
    summary: str = "auto"
    n_particles: int = 256
    dp_epsilon: float = 0.0
    dp_delta: float = 1e-5
    dp_clip: float = 0.0
    dp_accountant: str = "rdp"
    tol: float = -1.0
    seed: int = 0
    global_method: str = "nuts"
    num_chains: int = 4
    num_warmup: int = -1
    num_samples: int = 1000
    num_clients: int = 0
    node_wait_s: float = 120.0
    round_timeout_s: float = 300.0
    poll_interval_s: float = 0.05
    max_in_flight: int = 0
    out: str = ""
    checkpoint: bool = True
    resume: bool = False
    jax_cache_dir: str = ""
    x64: bool = True

    @classmethod
    def from_run_config(cls, run_config: dict[str, Any]) -> FlowerSettings:
        """Validate a run config (``context.run_config``); unknown keys are an error."""
        known = {f.name.replace("_", "-"): f for f in fields(cls)}
        unknown = sorted(set(run_config) - set(known))
        if unknown:
            raise ValueError(f"unknown run-config key(s) {unknown}; known: {sorted(known)}")
        values = {}
        for key, value in run_config.items():
            f = known[key]
            kind = type(cls.__dataclass_fields__[f.name].default)
            if kind is bool and not isinstance(value, bool):
                raise ValueError(f"run-config {key!r} must be true or false, got {value!r}")
            try:
                values[f.name] = kind(value)
            except (TypeError, ValueError):
                raise ValueError(
                    f"run-config {key!r} must be {kind.__name__}, got {value!r}"
                ) from None
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        if self.missing not in ("error", "drop", "keep"):
            raise ValueError(f"missing must be error, drop or keep, got {self.missing!r}")
        if self.method in METHODS:
            if self.sites not in SITES:
                raise ValueError(f"sites must be one of {SITES}, got {self.sites!r}")

            if self.tilted not in TILTED:
                raise ValueError(f"tilted must be one of {TILTED}, got {self.tilted!r}")
            if self.site_fit not in SITE_FITS:
                raise ValueError(f"site-fit must be one of {SITE_FITS}, got {self.site_fit!r}")
        if self.summary not in SUMMARIES:
            raise ValueError(f"summary must be one of {SUMMARIES}, got {self.summary!r}")
        if self.summary == "particles" and (self.method, self.sites) != ("ep", "effects"):
            raise ValueError("summary particles applies to method ep with sites effects")
        if self.n_particles < 1:
            raise ValueError(f"n-particles must be >= 1, got {self.n_particles}")
        if self.rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {self.rounds}")
        if self.round_timeout_s <= 0 or self.poll_interval_s <= 0:
            raise ValueError("round-timeout-s and poll-interval-s must be positive")
        if self.max_in_flight < 0:
            raise ValueError(f"max-in-flight must be >= 0, got {self.max_in_flight}")
        if self.dp_epsilon < 0 or self.dp_clip < 0:
            raise ValueError("dp-epsilon and dp-clip must be >= 0 (0: no privacy, default clip)")
        if self.dp_epsilon:
            if self.method != "ep" or self.sites != "effects":
                raise ValueError(
                    f"dp-epsilon applies to method ep with sites effects (noisy EP sites), "
                    f"not method {self.method!r} with sites {self.sites!r}"
                )
            if self.summary == "particles":
                raise ValueError("dp-epsilon needs summary gaussian or auto (noisy Gaussian sites)")
            if self.precision_cap:
                raise ValueError(
                    "dp-epsilon with precision-cap: a private node sends no row count (an "
                    "exact count is not private), which the cap reads; use one or the other"
                )
            if self.resume:
                raise ValueError("dp-epsilon cannot resume (the budget spans one run)")
            if self.standardize_features:
                raise ValueError(
                    "dp-epsilon with standardize: the nodes would send their features' exact "
                    "sums to the server; set standardize = false and scale the features with "
                    "public constants"
                )
            self.dp_budget  # noqa: B018  (its own checks: delta, clip, accountant)
        elif any(k != v for k, v in self._dp_given()):
            raise ValueError("dp-delta, dp-clip and dp-accountant need dp-epsilon (the budget)")

    # ------------------------------------------------------------ data and model

    @functools.cached_property
    def formula_schema(self):
        """The :class:`bayes_pfl.formula.Schema` of ``formula`` (``None`` without one): the
        run config's ``schema``, else made from ``data``'s clients' level sets."""
        if not self.formula:
            if self.schema:
                raise ValueError("run-config schema needs formula")
            return None
        from bayes_pfl.formula import FormulaError, Schema, formula_source

        if self.schema:
            try:
                schema = Schema.from_dict(json.loads(self.schema))
            except json.JSONDecodeError as exc:
                raise ValueError(f"run-config schema is not JSON: {exc}") from None
            if schema.formula != self.formula:
                raise FormulaError(f"the schema is for {schema.formula!r}, not {self.formula!r}")
            return schema
        src, _ = formula_source(self.data, self.formula, flag="run-config data")
        return Schema.from_clients(self.formula, src.frame)

    @functools.cached_property
    def dataset(self) -> tuple[str, str, tuple[str, ...], str | None]:
        """``(client_col, target, features, default_model)`` after applying defaults."""
        from bayes_pfl.datasets import DATASETS

        if self.formula:
            if self.client_col or self.target or self.features:
                raise ValueError("formula names the client column, target and terms: drop "
                                 "client-col, target and features from the run config")  # fmt: skip
            schema = self.formula_schema
            return schema.group, schema.response, schema.features, None

        info = DATASETS.get(self.data)
        client_col = self.client_col or (info.client_col if info else "")
        target = self.target or (info.target if info else "")
        if self.features:
            features = tuple(f.strip() for f in self.features.split(",") if f.strip())
        else:
            features = tuple(info.features) if info else ()
        if not target or not features:
            raise ValueError(
                f"data {self.data!r} is not a bundled dataset: set target and features "
                "in the run config"
            )
        return client_col, target, features, info.default_model if info else None

    @property
    def standardize_features(self) -> bool:
        """``standardize``, unless ``data`` is a bundled dataset whose features keep their
        units (:attr:`bayes_pfl.datasets.DatasetInfo.standardizable`: eight schools' sigma
        is each school's standard error). The run config's ``standardize`` is on by
        default, so it cannot tell a request from the default: the dataset's declaration
        wins and the server logs it."""
        from bayes_pfl.datasets import DATASETS

        info = DATASETS.get(self.data)
        return self.standardize and (info is None or info.standardizable)

    @property
    def outcome_family(self) -> str:
        """The likelihood family the model declares (baselines fit the same outcome);
        ``"bernoulli"`` for a CSV without a model."""
        if not (self.model or self.dataset[3]):
            return "bernoulli"
        return self.hierarchical_model.family or "bernoulli"

    @property
    def n_features(self) -> int:
        return len(self.dataset[2])

    @functools.cached_property
    def hierarchical_model(self):
        from bayes_pfl.models import get_model

        if self.formula:
            from bayes_pfl.formula import formula_model

            model = formula_model(self.formula_schema, self.model, centered=self.centered)
        else:
            name = self.model or self.dataset[3]
            if not name:
                raise ValueError("set model in the run config (see `bayes-pfl models`)")
            model = get_model(name, self.n_features, varying=self.varying, centered=self.centered)
        if self.population_df == LEARNED_DF_SENTINEL:
            return model.with_population("learn")
        if self.population_df < 0:
            raise ValueError(
                f"population-df must be >= 0 (0: Gaussian) or {LEARNED_DF_SENTINEL:g} (a learned "
                f"df), got {self.population_df}"
            )
        return model.with_population(self.population_df) if self.population_df else model

    def _dp_given(self):
        defaults = {f.name: f.default for f in fields(self)}
        return [(getattr(self, n), defaults[n]) for n in ("dp_delta", "dp_clip", "dp_accountant")]

    @property
    def dp_budget(self):
        """The run's :class:`~bayes_pfl.privacy.DPBudget` (``None`` without ``dp-epsilon``)."""
        if not self.dp_epsilon:
            return None
        from bayes_pfl.privacy import DPBudget

        try:
            return DPBudget(
                self.dp_epsilon,
                self.dp_delta,
                clip=self.dp_clip or None,
                accountant=self.dp_accountant,
            )
        except ValueError as exc:
            raise ValueError("run-config " + str(exc).replace("dp ", "dp-", 1)) from None

    @functools.cached_property
    def dp_options(self) -> tuple[float, float, float]:
        """``(noise multiplier, clip, the clients' damping)`` of a DP run, as
        :func:`bayes_pfl.federated.dp_options` gives them to ``fit_ep``."""
        from bayes_pfl.federated import dp_options

        damping = self.damping if self.damping >= 0 else None  # fit_ep's default unless set
        return dp_options(
            self.hierarchical_model,
            self.dp_budget,
            self.rounds,
            self.sites,
            "gaussian",
            damping,
            None,
        )

    @functools.cached_property
    def ep_summary(self) -> str:
        """The summary EP runs (``"gaussian"`` for the other methods): ``summary`` resolved
        by :func:`bayes_pfl.federated.resolve_summary`, ``"auto"`` as its default."""
        if self.method != "ep":
            return "gaussian"
        from bayes_pfl.federated import resolve_summary

        given = None if self.summary == "auto" else self.summary
        return resolve_summary(self.hierarchical_model, given, self.sites, self.dp_budget)

    @property
    def ep_tol(self) -> float:
        return self.tol if self.tol >= 0 else self._ep_defaults["tol"]

    @property
    def final_warmup(self) -> int:
        from bayes_pfl.federated import default_warmup

        return default_warmup(self.sites, self.num_warmup if self.num_warmup >= 0 else None)

    @property
    def ep_damping(self) -> float:
        return self.damping if self.damping >= 0 else self._ep_defaults["damping"]

    @property
    def _ep_defaults(self) -> dict[str, float]:
        """:func:`bayes_pfl.federated.ep_defaults` of these sites (imported here, on the
        server or when tracing: a ClientApp with exported steps never needs them)."""
        from bayes_pfl.federated import ep_defaults

        return ep_defaults(self.sites, self.tilted)

    def step_identity(self) -> str:
        """What decides the clients' steps: every setting but the server's and the I/O ones.

        The identity of :class:`bayes_pfl.flower.steps.StepCache`, so runs that differ only
        in where results go, in timeouts or in how the server samples share exported steps.
        """
        server_only = {
            "out", "checkpoint", "resume", "node_wait_s", "round_timeout_s", "poll_interval_s",
            "max_in_flight",
            "num_clients", "jax_cache_dir", "global_method", "num_chains", "num_warmup",
            "num_samples",
        }  # fmt: skip
        kept = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in server_only}
        return json.dumps(kept, sort_keys=True)

    def settings_record(self) -> dict[str, Any]:
        """The settings ``fit_ep``/``fit_one_shot`` write into ``run.json``."""
        if self.method == "one-shot":
            if self.sites == "effects":
                return {"sites": "effects"}
            return {"sites": "global", "tilted": self.tilted, "site_fit": self.site_fit}
        if self.method in ("ep", "vi"):
            out = {
                "rounds": self.rounds,
                "damping": self.ep_damping,
                "sites": self.sites,
                "tol": self.ep_tol,
            }
            if self.method == "ep" and self.sites == "effects":
                out["summary"] = self.ep_summary
                if self.ep_summary != "gaussian":
                    out["n_particles"] = self.n_particles
            if self.precision_cap:
                out["precision_cap"] = self.precision_cap
            if self.dp_epsilon:
                _, clip, damping = self.dp_options
                dp = self.dp_budget
                out.update(
                    damping=damping,
                    summary="gaussian",
                    dp_epsilon=dp.epsilon,
                    dp_delta=dp.delta,
                    dp_clip=clip,
                )
            if self.method == "vi":
                from bayes_pfl.methods import get_method

                out["vi_iterations"] = get_method("vi").options["vi_iterations"]
            elif self.sites == "global":
                out.update(tilted=self.tilted, site_fit=self.site_fit, site_points=None)
            return out
        return {"rounds": self.rounds, "method_options": self.method_options}

    @property
    def messaging(self) -> dict[str, Any]:
        """How the server exchanges messages with the nodes: the keywords ``timeout_s``,
        ``poll_interval_s`` and ``max_in_flight`` of ``discover``, ``run_server`` and
        ``finish``."""
        return {
            "timeout_s": self.round_timeout_s,
            "poll_interval_s": self.poll_interval_s,
            "max_in_flight": self.max_in_flight,
        }

    def out_dir(self, run_id: int) -> Path:
        if self.out:
            return Path(self.out).expanduser().resolve()
        home = Path(os.environ.get("FLWR_HOME", Path.home() / ".flwr"))
        return (home / "bayes-pfl-results" / f"run-{run_id}").resolve()


@functools.cache
def build_phases(settings: FlowerSettings) -> tuple:
    """The phases of ``settings.method``, from the method registry: the very phases the
    in-process fit runs (:func:`bayes_pfl.federated.ep_phases` for EP, one-shot and VI).

    Cached per settings, so a process builds (and compiles) each algorithm once.
    """
    from bayes_pfl.methods import UnknownMethod, get_method

    try:
        info = get_method(settings.method, "flower")
    except UnknownMethod as exc:
        raise ValueError(str(exc)) from None
    if info.kind == "federated":
        options = {
            "rounds": settings.rounds,
            "sites": settings.sites,
            "damping": settings.ep_damping,
            "tol": settings.ep_tol,
        }
        if settings.sites == "global":
            options.update(tilted=settings.tilted, site_fit=settings.site_fit)
        if settings.precision_cap:
            options["precision_cap"] = settings.precision_cap
        if settings.method == "ep":
            options.update(summary=settings.ep_summary, n_particles=settings.n_particles)
        if settings.dp_epsilon:  # the clients' own damping (dp_options' default unless set)
            options.update(dp=settings.dp_budget, damping=settings.dp_options[2])
        return info.phases(model=settings.hierarchical_model, **options)
    options = json.loads(settings.method_options) if settings.method_options else {}
    options = {"family": settings.outcome_family, "seed": settings.seed, **options}
    return info.phases(n_features=settings.n_features, rounds=settings.rounds, **options)


def configure_jax(settings: FlowerSettings) -> None:
    """Entry-point JAX set-up for an app process: float64 and the compilation cache
    (not with ``BAYES_PFL_NO_COMPILATION_CACHE`` set, as on the command line; the exported
    client steps still go to ``jax_cache_dir``)."""
    import jax

    jax.config.update("jax_enable_x64", settings.x64)
    if settings.jax_cache_dir and not os.environ.get("BAYES_PFL_NO_COMPILATION_CACHE"):
        jax.config.update("jax_compilation_cache_dir", str(Path(settings.jax_cache_dir)))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


# ---------------------------------------------------------------- client data


class ClientData(NamedTuple):
    """One node's rows, unpadded: ``x [n, P]``, ``y [n]`` (float64)."""

    label: str
    position: int
    x: np.ndarray
    y: np.ndarray
    standardized: bool  # False: raw features that still need the pooled statistics


def load_client_data(settings: FlowerSettings, node_config: dict[str, Any]) -> ClientData:
    """This node's rows (see the module docstring).

    ``node_config["partition-id"]`` is the node's position in the federation (the
    client axis of the in-process run); ``data-path`` names a CSV holding only this
    node's rows; ``client-label`` names the client (default: the CSV's client column,
    ``client-col`` or ``client``; else the file's stem, as
    :func:`bayes_pfl.datasets.source` labels a folder of such files).
    """
    if "partition-id" not in node_config:
        raise ValueError("the node config needs partition-id (the client's position)")
    position = int(node_config["partition-id"])
    if node_config.get("data-path"):
        return _local_csv(settings, position, node_config)
    return _partition(settings, position)


def cached_client_data(
    settings: FlowerSettings, node_config: dict[str, Any], folder: str | os.PathLike
) -> ClientData:
    """:func:`load_client_data`, kept in ``folder`` for the node's later processes.

    A deployment answers every message in a fresh ClientApp process: without this each
    one imports pandas and parses the node's CSV again (about 0.3 s of CPU). The rows
    are stored under a hash of the settings that decide them, the node config, the
    CSV's path, size and modification time and bayes-pfl's version and source, so an
    edited file or another run configuration reads the CSV again. Rows of a bundled
    dataset (no file to check) are not kept. The folder holds the node's rows: keep it
    private to the node, as the rows themselves (the ready-made apps use
    ``<jax-cache-dir>/bayes-pfl-rows``).
    """
    source = node_config.get("data-path") or settings.data
    path = Path(str(source)).expanduser()
    if not path.is_file():
        return load_client_data(settings, node_config)
    from bayes_pfl.flower.steps import atomic_write, package_version, source_fingerprint

    stat = path.stat()
    spec = {
        "settings": settings.step_identity(),
        "node": sorted((str(k), str(v)) for k, v in node_config.items()),
        "file": [str(path.resolve()), stat.st_size, stat.st_mtime_ns],
        "bayes-pfl": package_version("bayes-pfl"),
        "source": source_fingerprint(),
    }
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
    target = Path(folder) / f"{digest}.npz"
    try:
        with np.load(target, allow_pickle=False) as z:
            return ClientData(
                str(z["label"]),
                int(z["position"]),
                z["x"],
                z["y"],
                bool(z["standardized"]),
            )
    except FileNotFoundError:
        pass
    except Exception:  # noqa: BLE001 (damaged: read the CSV again and replace it)
        pass
    data = load_client_data(settings, node_config)
    buf = io.BytesIO()
    np.savez(
        buf,
        label=np.str_(data.label),
        position=np.int64(data.position),
        x=np.asarray(data.x, np.float64),
        y=np.asarray(data.y, np.float64),
        standardized=np.bool_(data.standardized),
    )
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(target, buf.getvalue())
    except OSError:  # a read-only folder costs speed, not the answer
        pass
    return data


def _local_csv(settings: FlowerSettings, position: int, node_config) -> ClientData:
    import pandas as pd

    from bayes_pfl.data import DataError
    from bayes_pfl.datasets import FILE_CLIENT_COL

    path = Path(str(node_config["data-path"])).expanduser()
    df = pd.read_csv(path)
    client_col, target, features, _ = settings.dataset
    needed = settings.formula_schema.parsed.variables if settings.formula else features
    missing_cols = [c for c in (*needed, target) if c not in df.columns]
    if missing_cols:
        raise DataError(f"{path}: missing column(s) {missing_cols}")
    label = str(node_config.get("client-label", ""))
    client_col = client_col or FILE_CLIENT_COL
    if not label and client_col in df.columns:
        held = df[client_col].dropna().unique()
        if len(held) > 1:
            shown = ", ".join(repr(str(v)) for v in held[:5]) + (", ..." if len(held) > 5 else "")
            raise DataError(
                f"{path}: column {client_col!r} names {len(held)} clients ({shown}); a node "
                "holds one client: give each its own file, or set client-label"
            )
        label = str(held[0]) if len(held) else ""
    label = label or path.stem
    if settings.formula:
        if not settings.schema:
            raise DataError(
                f"{path}: a node reading its own file needs the federation's schema (run-config "
                "schema: the JSON of bayes_pfl.formula.Schema.to_dict(); deploy_local.py "
                "--formula writes it from the files' level sets)"
            )
        design = settings.formula_schema.design(df, client=label)
        df = design.assign(**{target: df[target]})
        features = tuple(design.columns)
    x = df[list(features)].apply(pd.to_numeric, errors="raise").to_numpy(np.float64)
    y = pd.to_numeric(df[target]).to_numpy(np.float64)
    if np.isinf(x).any() or np.isinf(y).any():
        raise DataError(f"{path}: infinite values")
    if np.isnan(y).any() and settings.missing != "drop":
        raise DataError(f"{path}: missing target values")
    bad = np.isnan(y) | (np.isnan(x).any(axis=1) if settings.missing != "keep" else False)
    if bad.any():
        if settings.missing == "error":
            raise DataError(f"{path}: {int(bad.sum())} row(s) with missing values")
        x, y = x[~bad], y[~bad]
    if len(y) == 0:
        raise DataError(f"{path}: no rows")
    return ClientData(label, position, x, y, standardized=not settings.standardize_features)


@functools.cache
def _federated_data(settings: FlowerSettings):
    import warnings

    from bayes_pfl.datasets import source

    client_col, target, features, _ = settings.dataset
    schema = settings.formula_schema
    src = source(
        settings.data,
        client_col=client_col,
        target=target,
        features=list(schema.parsed.variables) or [target] if schema else list(features),
        flag="run-config data",
        column_flags=("client-col", "target", "features"),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # missing="drop" counts, reported in-process
        if schema is not None:
            from bayes_pfl.formula import from_formula

            return from_formula(
                settings.formula,
                src.frame,
                family=settings.model,
                schema=schema,
                seed=settings.seed,
                standardize=settings.standardize_features,
                missing=settings.missing,
            ).data
        return src.federated(
            seed=settings.seed,
            standardize=settings.standardize_features,
            missing=settings.missing,
        )


def _partition(settings: FlowerSettings, position: int) -> ClientData:
    data = _federated_data(settings)
    if not 0 <= position < data.n_clients:
        raise ValueError(
            f"partition-id {position} is outside the {data.n_clients} clients of {settings.data!r}"
        )
    arr = data.train.client(position)
    n = int(np.asarray(arr.mask).sum())
    return ClientData(
        str(data.clients[position]),
        position,
        np.asarray(arr.x[:n], np.float64),
        np.asarray(arr.y[:n], np.float64),
        standardized=True,
    )


# ------------------------------------------------------ federated standardization


def standardization_stats(x: np.ndarray) -> dict[str, np.ndarray]:
    """Per-feature count, mean, sum of squared deviations and a 0/1 flag of one client."""
    p = x.shape[1]
    out = {"n": np.zeros(p), "mean": np.zeros(p), "m2": np.zeros(p), "binary": np.ones(p, bool)}
    for j in range(p):
        col = x[:, j][~np.isnan(x[:, j])]
        if col.size == 0:
            continue
        m = col.mean()
        out["n"][j], out["mean"][j] = col.size, m
        out["m2"][j] = np.sum((col - m) ** 2)
        out["binary"][j] = bool(np.all((col == 0) | (col == 1)))
    return out


def pooled_standardization(stats: list[dict[str, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Pooled mean and sd (ddof=0) from per-client statistics (Chan et al. 1979).

    Equal, up to rounding, to the statistics :meth:`FederatedData.from_pandas` computes
    from the pooled rows: binary columns get ``(0, 1)`` and constant columns scale 1.
    """
    p = stats[0]["n"].shape[0]
    n = np.zeros(p)
    mean = np.zeros(p)
    m2 = np.zeros(p)
    binary = np.ones(p, bool)
    for s in stats:
        nb = s["n"]
        tot = n + nb
        delta = s["mean"] - mean
        with np.errstate(invalid="ignore", divide="ignore"):
            frac = np.where(tot > 0, nb / np.where(tot > 0, tot, 1), 0.0)
        mean = mean + delta * frac
        m2 = m2 + s["m2"] + delta**2 * n * frac
        n = tot
        binary &= np.asarray(s["binary"], bool)
    out_mean, out_scale = np.zeros(p), np.ones(p)
    for j in range(p):
        if n[j] == 0 or binary[j]:
            continue
        sd = np.sqrt(m2[j] / n[j])
        out_mean[j] = mean[j]
        if sd > 1e-12 * max(1.0, abs(mean[j])):
            out_scale[j] = sd
    return out_mean, out_scale
