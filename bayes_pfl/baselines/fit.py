"""One entry point for every optimization baseline: :func:`fit_baseline` -> :class:`BaselineFit`."""

from __future__ import annotations

import functools
import time
import warnings
from collections.abc import Hashable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bayes_pfl.baselines import adapters, clustered, ditto, fedavg, hypernet, local, pfedme
from bayes_pfl.baselines.networks import (
    FAMILIES,
    NETWORKS,
    Family,
    Network,
    build_network,
    get_family,
)
from bayes_pfl.baselines.training import (
    OPTIMIZERS,
    Baseline,
    LocalTraining,
    make_optimizer,
    stack_copies,
)
from bayes_pfl.data import ClientArrays, DataError, FederatedData

__all__ = [
    "BASELINE_NAMES",
    "HPARAM_DEFAULTS",
    "BaselineFit",
    "checked_rows",
    "class_count",
    "fit_baseline",
]

BASELINE_NAMES = (
    "local",
    "pooled",
    "fedavg",
    "fedprox",
    "ditto",
    "pfedme",
    "fedbn",
    "fedper",
    "adapters",
    "clustered",
    "ifca",
    "hypernet",
)

_COMMON = {"optimizer": "sgd", "weight_decay": 0.0, "hidden": (32,)}
_FEDERATED = {"fraction": 1.0}

HPARAM_DEFAULTS: dict[str, dict[str, Any]] = {
    "local": {},
    "pooled": {},
    "fedavg": {},
    "fedprox": {"mu": 0.01},
    "ditto": {"lam": 0.1},
    "pfedme": {"lam": 15.0, "inner_steps": 5, "beta": 1.0, "personal_lr": None},
    "fedbn": {},
    "fedper": {},
    "adapters": {"rank": 2, "adapter_strength": 0.1},
    "clustered": {
        "n_clusters": None,
        "max_clusters": 4,
        "min_silhouette": 0.25,
        "max_similarity": 0.5,
        "cluster_round": 1,
    },
    "ifca": {"n_clusters": 2, "init_scale": 1.0},
    "hypernet": {"embedding_dim": None, "hn_hidden": (64,), "hn_lr": 0.01},
}
"""Method-specific hyper-parameters and their defaults (besides the common ones:
``optimizer``, ``weight_decay``, ``hidden`` and, for federated methods, ``fraction``)."""


@functools.cache
def _predictors(apply_fn, mean_link):
    """Jitted predictions, shared by every fit of the same network and family."""

    def mean_fn(params, stats, x, mask):
        eta, _ = apply_fn(params, stats, x, mask, False)
        return mean_link(eta)

    return jax.jit(jax.vmap(mean_fn)), jax.jit(jax.vmap(mean_fn, in_axes=(None, None, 0, 0)))


def _defaults(method: str) -> dict[str, Any]:
    out = dict(_COMMON)
    if method not in ("local", "pooled"):
        out.update(_FEDERATED)
    out.update(HPARAM_DEFAULTS[method])
    return out


def checked_rows(x, mask, n_features: int, n_clients: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Rows to predict on, checked: ``x`` of shape ``(n_clients, n_rows, n_features)``
    (``n_clients`` any when ``None``), ``mask`` of shape ``(n_clients, n_rows)``, no NaN
    in real rows; padding rows set to zero. Raises :class:`~bayes_pfl.data.DataError`."""
    x = np.asarray(x, dtype=float)
    if x.ndim != 3 or x.shape[2] != n_features:
        raise DataError(f"x must have shape (n_clients, n_rows, {n_features}), got {x.shape}")
    if n_clients is not None and x.shape[0] != n_clients:
        raise DataError(
            f"x has {x.shape[0]} clients; this fit has {n_clients} (same clients, same order)"
        )
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != x.shape[:2]:
        raise DataError(f"mask must have shape {x.shape[:2]}, got {mask.shape}")
    if np.isnan(x[mask]).any():
        raise DataError("x has NaN values in real (unmasked) rows")
    return np.where(mask[..., None], x, 0.0), mask


def class_count(data: FederatedData) -> int:
    """Classes of a categorical federation: the largest class code in any split plus one."""
    return 1 + int(
        max(
            np.asarray(data.arrays(s).y)[np.asarray(data.arrays(s).mask)].max(initial=0)
            for s in ("train", "val", "test")
            if data.n_rows(s).sum() > 0
        )
    )


class BaselineFit:
    """A fitted baseline: personalized models for the training clients, and a model for new ones.

    Attributes
    ----------
    method : str
        One of :data:`BASELINE_NAMES`.
    hparams : dict
        Every hyper-parameter used, defaults included (``family``, ``network``,
        ``rounds``, ``local_steps``, ``lr``, ``seed`` too).
    history : list of dict
        One entry per round: ``round``, ``loss`` (row-weighted mean training
        loss of the participating clients at the model they received),
        ``accuracy`` (classification only), ``n_active`` (clients whose
        update counted), ``wall_time_s``.
    noise_sd : numpy.ndarray or None
        ``family="normal"`` only: each client's residual sd on its training
        rows under its personal model (clients without rows get the pooled
        value).
    clients : tuple
        Client labels, in the order of every client axis.
    personal_params, personal_stats : dict of str to numpy.ndarray
        Each client's model (parameters and BatchNorm statistics), keyed by
        dotted path, stacked on a leading client axis.
    global_params, global_stats : dict of str to numpy.ndarray
        The model a new client gets from :meth:`predict_new` (without metadata).
    clusters : numpy.ndarray or None
        ``"clustered"`` and ``"ifca"``: each client's cluster.
    network : str
        ``"linear"``, ``"mlp"`` or ``"mlp_bn"``.
    family : str
        The likelihood family.
    """

    def __init__(
        self,
        *,
        method: str,
        hparams: dict[str, Any],
        history: list[dict[str, Any]],
        clients: tuple[Hashable, ...],
        network: Network,
        family: Family,
        personal: tuple[dict, dict],
        global_model: tuple[dict, dict],
        clusters: np.ndarray | None = None,
        cold_start: Any = None,
        metadata_scaling: tuple[np.ndarray, np.ndarray] | None = None,
        n_features: int,
    ):
        self.method = method
        self.hparams = hparams
        self.history = history
        self.clients = clients
        self.network = network.name
        self.family = family.name
        self.personal_params = {k: np.asarray(v) for k, v in personal[0].items()}
        self.personal_stats = {k: np.asarray(v) for k, v in personal[1].items()}
        self.global_params = {k: np.asarray(v) for k, v in global_model[0].items()}
        self.global_stats = {k: np.asarray(v) for k, v in global_model[1].items()}
        self.clusters = clusters
        self.noise_sd: np.ndarray | None = None
        self._net = network
        self._fam = family
        self._cold_start = cold_start
        self._metadata_scaling = metadata_scaling
        self._n_features = n_features

        self._predict, self._predict_shared = _predictors(network.apply, family.mean)

    def __repr__(self) -> str:
        return (
            f"BaselineFit(method={self.method!r}, family={self.family!r}, "
            f"network={self.network!r}, n_clients={len(self.clients)}, rounds={len(self.history)})"
        )

    def predict(self, x, mask) -> np.ndarray:
        """Predictive mean of each client's personal model on its rows.

        Parameters
        ----------
        x : array, shape (n_clients, n_rows, n_features)
            Rows of the *training* clients, in the order of :attr:`clients`
            (e.g. ``data.arrays("test").x``).
        mask : bool array, shape (n_clients, n_rows)
            Real rows (padding rows get some finite value).

        Returns
        -------
        numpy.ndarray
            ``"bernoulli"``: P(y = 1), shape ``(n_clients, n_rows)``;
            ``"categorical"``: class probabilities ``(n_clients, n_rows, C)``;
            ``"normal"``: mean; ``"poisson"``: rate.
        """
        x, mask = checked_rows(x, mask, self._n_features, len(self.clients))
        out = self._predict(self.personal_params, self.personal_stats, x, mask)
        return np.asarray(out)

    def predict_new(self, x, mask, metadata=None) -> np.ndarray:
        """Predictions for clients that took no part in training (cold start).

        Parameters
        ----------
        x, mask
            As in :meth:`predict`, for ``n_new`` new clients.
        metadata : array, shape (n_new, m), optional
            ``"hypernet"`` trained with metadata: each new client's metadata; its
            model comes from the hypernetwork (the mean client's without
            metadata). Ignored by the other methods, which give every new
            client their global model (for local-only training the mean of
            the local models; for FedBN/FedPer the global body with the mean
            personal layers; for clustering the largest cluster's model).
        """
        x, mask = checked_rows(x, mask, self._n_features, None)
        if self._cold_start is not None and self._metadata_scaling is not None:
            if metadata is not None:
                meta = np.asarray(metadata, dtype=float)
                mean, scale = self._metadata_scaling
                if meta.shape != (x.shape[0], mean.shape[0]):
                    raise DataError(
                        f"metadata must have shape ({x.shape[0]}, {mean.shape[0]}), got {meta.shape}"
                    )
                if not np.isfinite(meta).all():
                    raise DataError("metadata has non-finite values")
                params, stats = self._cold_start((meta - mean) / scale)
                return np.asarray(self._predict(params, stats, x, mask))
        elif metadata is not None and self.method == "hypernet":
            warnings.warn(
                "this hypernet was trained without metadata; metadata ignored", stacklevel=2
            )
        out = self._predict_shared(self.global_params, self.global_stats, x, mask)
        return np.asarray(out)


# ---------------------------------------------------------------------------


def _check_choice(kind: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {kind} {value!r}; choose one of {choices}")


def _check_arrays(arr: ClientArrays, family: str, split: str) -> None:
    x, y, mask = (np.asarray(a) for a in arr)
    if x.ndim != 3 or y.shape != x.shape[:2] or mask.shape != x.shape[:2]:
        raise DataError(
            f"{split} arrays have inconsistent shapes: x {x.shape}, y {y.shape}, mask {mask.shape}"
        )
    if np.isnan(x[mask]).any() or not np.isfinite(x[mask]).all():
        raise DataError(f"{split} features have missing or infinite values; these models need none")
    yy = y[mask]
    if not np.isfinite(yy).all():
        raise DataError(f"{split} target has missing or infinite values")
    if family == "bernoulli" and not np.isin(yy, (0.0, 1.0)).all():
        raise DataError(f"family='bernoulli' needs a 0/1 target; {split} has other values")
    if family == "poisson" and (yy < 0).any():
        raise DataError(
            f"family='poisson' needs a non-negative target; {split} has negative values"
        )
    if family == "categorical" and ((yy < 0).any() or (yy != np.round(yy)).any()):
        raise DataError(
            f"family='categorical' needs integer class codes 0..C-1; {split} has other values"
        )


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _check_names(method: str, family: str, network: str) -> None:
    _check_choice("method", method, BASELINE_NAMES)
    _check_choice("family", family, FAMILIES)
    _check_choice("network", network, NETWORKS)


def _hyperparameters(
    method: str, local_steps, lr, hparams: dict[str, Any]
) -> tuple[int, dict[str, Any]]:
    """``local_steps`` checked, and every hyper-parameter of ``method`` (defaults filled in)."""
    local_steps = _positive_int("local_steps", local_steps)
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    defaults = _defaults(method)
    unknown = sorted(set(hparams) - set(defaults))
    if unknown:
        raise ValueError(
            f"unknown hyper-parameter(s) {unknown} for method {method!r}; valid: {sorted(defaults)}"
        )
    hp = {**defaults, **hparams}
    _check_choice("optimizer", hp["optimizer"], OPTIMIZERS)
    return local_steps, hp


def _history(entries: list[dict], classify: bool) -> list[dict]:
    out = []
    for e in entries:
        row = {"round": e["round"], "loss": float(e["loss"])}
        if classify:
            row["accuracy"] = float(e["accuracy"])
        row["n_active"] = int(e["n_active"])
        row["wall_time_s"] = float(e["wall_time_s"])
        out.append(row)
    return out


def fit_baseline(
    method: str,
    data: FederatedData,
    *,
    family: str = "bernoulli",
    network: str = "linear",
    n_classes: int | None = None,
    rounds: int = 50,
    local_steps: int = 5,
    lr: float = 0.05,
    seed: int = 0,
    metadata: np.ndarray | None = None,
    progress: bool = False,
    **hparams: Any,
) -> BaselineFit:
    """Fit an optimization-based (personalized) federated learning baseline.

    Every federated method is an :class:`~bayes_pfl.algorithms.Algorithm` run
    by the in-process driver :func:`bayes_pfl.simulation.run_rounds`, vmapped
    over clients. Clients train with full-batch steps of ``optimizer`` on the
    mean negative log-likelihood of their real rows (padding ignored; a
    client without rows neither trains nor counts).

    Parameters
    ----------
    method : str
        One of :data:`BASELINE_NAMES`:

        ``"local"``
            each client alone (no communication);
        ``"pooled"``
            one model on all training rows pooled (non-federated reference);
        ``"fedavg"``
            McMahan et al. 2017, AISTATS (:mod:`~bayes_pfl.baselines.fedavg`);
        ``"fedprox"``
            Li et al. 2020, MLSys; hparam ``mu`` (default 0.01);
        ``"ditto"``
            Li et al. 2021, ICML; hparam ``lam`` (default 0.1)
            (:mod:`~bayes_pfl.baselines.ditto`);
        ``"pfedme"``
            T. Dinh et al. 2020, NeurIPS; hparams ``lam`` (15.0),
            ``inner_steps`` (5), ``beta`` (1.0), ``personal_lr`` (``lr``)
            (:mod:`~bayes_pfl.baselines.pfedme`);
        ``"fedbn"``
            Li et al. 2021, ICLR; BatchNorm layers stay local (needs
            ``network="mlp_bn"``, else it is FedAvg, with a warning);
        ``"fedper"``
            Arivazhagan et al. 2019; personal head (on a GLM: intercept);
        ``"adapters"``
            low-rank residual adapters per client (LoRA, Hu et al. 2022);
            hparams ``rank`` (2), ``adapter_strength`` (0.1)
            (:mod:`~bayes_pfl.baselines.adapters`);
        ``"clustered"``
            clustering by gradient similarity (Sattler et al. 2021; Briggs et
            al. 2020); hparams ``n_clusters`` (None: chosen by silhouette),
            ``max_clusters`` (4), ``min_silhouette`` (0.25), ``max_similarity`` (0.5),
            ``cluster_round`` (1) (:mod:`~bayes_pfl.baselines.clustered`);
        ``"ifca"``
            Ghosh et al. 2020, NeurIPS; hparams ``n_clusters`` (2),
            ``init_scale`` (1.0, spread of the clusters' random starts);
        ``"hypernet"``
            pFedHN, Shamsian et al. 2021, ICML; hparams ``embedding_dim``
            (8 without metadata, 0 with), ``hn_hidden`` ((64,)), ``hn_lr``
            (0.01) (:mod:`~bayes_pfl.baselines.hypernet`).
    data : FederatedData
        Training rows come from ``data.arrays("train")``.
    family : {"normal", "bernoulli", "poisson", "categorical"}, default "bernoulli"
        Likelihood: squared error (identity link), logistic, Poisson (log
        link), multinomial logistic (softmax).
    network : {"linear", "mlp", "mlp_bn"}, default "linear"
        A GLM, an MLP, or an MLP with BatchNorm
        (:func:`~bayes_pfl.baselines.networks.build_network`).
    n_classes : int, optional
        Categorical only; default: largest class code in any split plus one.
    rounds : int, default 50
        Communication rounds (for ``"local"``/``"pooled"``: blocks of
        ``local_steps`` steps).
    local_steps : int, default 5
        Full-batch optimizer steps per client and round.
    lr : float, default 0.05
        Learning rate of the clients' optimizer.
    seed : int, default 0
        Seeds the initial model, client sampling and everything random: the
        same seed gives the same fit.
    metadata : array of shape (n_clients, m), optional
        Client descriptors for ``"hypernet"`` (standardized internally);
        ignored by other methods.
    progress : bool, default False
        Show a progress bar over rounds.
    **hparams
        Method hyper-parameters (above) and, for every method,
        ``optimizer`` (``"sgd"`` or ``"adam"``, default ``"sgd"``),
        ``weight_decay`` (L2 penalty, default 0.0), ``hidden`` (MLP widths,
        default ``(32,)``) and, for federated methods, ``fraction`` (clients
        sampled per round, default 1.0).

    Returns
    -------
    BaselineFit

    Raises
    ------
    ValueError
        Unknown method, family, network, optimizer or hyper-parameter.
    DataError
        Missing/infinite values, inconsistent shapes or targets the family
        cannot model.

    Examples
    --------
    >>> from bayes_pfl.data import FederatedData
    >>> from bayes_pfl.synthetic import make_federation
    >>> fed = make_federation(family="bernoulli", n_clients=6, sizes=30, seed=0)
    >>> data = FederatedData.from_pandas(
    ...     fed.data, client_col="client", target="y", features=list(fed.features), test_size=0.3
    ... )
    >>> fit = fit_baseline("ditto", data, rounds=5, lam=0.5)
    >>> test = data.arrays("test")
    >>> fit.predict(test.x, test.mask).shape
    (6, 9)
    """
    _check_names(method, family, network)
    if not isinstance(data, FederatedData):
        raise DataError(f"data must be a FederatedData, got {type(data).__name__}")
    rounds = _positive_int("rounds", rounds)
    local_steps, hp = _hyperparameters(method, local_steps, lr, hparams)
    if "fraction" in hp and not 0 < hp["fraction"] <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {hp['fraction']!r}")

    train = data.arrays("train")
    for split in ("train", "val", "test"):
        if split == "train" or data.n_rows(split).sum() > 0:
            _check_arrays(data.arrays(split), family, split)
    if family == "categorical":
        if n_classes is None:
            n_classes = class_count(data)
        n_classes = max(int(n_classes), 2)
        if np.asarray(train.y)[np.asarray(train.mask)].max(initial=0) >= n_classes:
            raise DataError(f"class codes must be below n_classes={n_classes}")
    fam = get_family(family, n_classes)
    net = build_network(network, data.n_features, fam.out_dim, hidden=hp["hidden"])
    init = net.init(seed)

    meta_scaling = None
    meta_std = None
    if method == "hypernet" and metadata is not None:
        meta = np.asarray(metadata, dtype=float)
        if meta.ndim == 1:
            meta = meta[:, None]
        if meta.shape[0] != data.n_clients or meta.ndim != 2:
            raise DataError(
                f"metadata must have shape (n_clients={data.n_clients}, m), got {meta.shape}"
            )
        if not np.isfinite(meta).all():
            raise DataError("metadata has missing or infinite values")
        mean = meta.mean(axis=0)
        scale = meta.std(axis=0)
        scale = np.where(scale > 1e-12, scale, 1.0)
        meta_scaling = (mean, scale)
        meta_std = jnp.asarray((meta - mean) / scale)

    hparams_out = {
        "family": family,
        "network": network,
        "n_classes": n_classes,
        "rounds": rounds,
        "local_steps": local_steps,
        "lr": lr,
        "seed": seed,
        **hp,
    }
    clusters = None
    if method == "pooled":
        t0 = time.perf_counter()
        params, stats, losses, accs = local.fit_pooled(
            _training(net, fam, hp, local_steps, lr),
            init,
            tuple(jnp.asarray(a) for a in train),
            rounds=rounds,
        )
        losses = np.asarray(losses)
        per_round = (time.perf_counter() - t0) / rounds
        entries = [
            {
                "round": r + 1,
                "loss": losses[r],
                "accuracy": np.asarray(accs)[r],
                "n_active": int((train.n > 0).sum()),
                "wall_time_s": per_round,
            }
            for r in range(rounds)
        ]
        personal = stack_copies((params, stats), data.n_clients)
        fit = BaselineFit(
            method=method,
            hparams=hparams_out,
            history=_history(entries, fam.correct is not None),
            clients=data.clients,
            network=net,
            family=fam,
            personal=personal,
            global_model=(params, stats),
            n_features=data.n_features,
        )
    else:
        baseline = _build(method, net, fam, init, hp, local_steps, lr, seed, meta_std)
        from bayes_pfl.simulation import run_rounds

        result = run_rounds(
            baseline.algorithm,
            train,
            rounds=rounds,
            labels=data.clients,
            seed=seed,
            stop_when_converged=False,
            progress=progress,
        )
        personal = baseline.personal_fn(result.server_state, result.client_states)
        global_model = baseline.global_fn(result.server_state, result.client_states)
        if method in ("clustered", "ifca"):
            if method == "clustered":
                clusters = np.asarray(result.server_state.assignment)
            else:
                clusters = np.asarray(result.client_states.choice)
        cold = None
        if baseline.cold_start_fn is not None:
            server_state, client_states = result.server_state, result.client_states
            cold_jit = jax.jit(baseline.cold_start_fn)

            def cold(meta_new):
                return cold_jit(server_state, client_states, jnp.asarray(meta_new))

        fit = BaselineFit(
            method=method,
            hparams=hparams_out,
            history=_history(result.history, fam.correct is not None),
            clients=data.clients,
            network=net,
            family=fam,
            personal=personal,
            global_model=global_model,
            clusters=clusters,
            cold_start=cold,
            metadata_scaling=meta_scaling,
            n_features=data.n_features,
        )
    if family == "normal":
        fit.noise_sd = _noise_sd(fit, train)
    return fit


def baseline_algorithm(
    method: str,
    n_features: int,
    *,
    family: str = "bernoulli",
    network: str = "linear",
    n_classes: int | None = None,
    local_steps: int = 5,
    lr: float = 0.05,
    seed: int = 0,
    **hparams,
) -> Baseline:
    """The :class:`Baseline` (its ``.algorithm`` and read-outs) that :func:`fit_baseline`
    runs, built from names alone, without data: what a Flower ServerApp and ClientApp
    need to run a baseline over the same functions as the in-process driver.

    ``"pooled"`` is not federated and ``"hypernet"`` with metadata needs the data's
    metadata: both are refused. Arguments are those of :func:`fit_baseline`.
    """
    _check_choice("method", method, BASELINE_NAMES)
    if method == "pooled":
        raise ValueError("'pooled' trains on all rows in one place: it has no federated form")
    _check_names(method, family, network)
    local_steps, hp = _hyperparameters(method, local_steps, lr, hparams)
    if family == "categorical" and n_classes is None:
        raise ValueError("family='categorical' needs n_classes")
    fam = get_family(family, max(int(n_classes), 2) if family == "categorical" else None)
    net = build_network(network, int(n_features), fam.out_dim, hidden=hp["hidden"])
    return _build(method, net, fam, net.init(seed), hp, local_steps, lr, seed, None)


def _noise_sd(fit: BaselineFit, train: ClientArrays) -> np.ndarray:
    mask = np.asarray(train.mask)
    resid = np.where(mask, np.asarray(train.y) - fit.predict(train.x, mask), 0.0)
    n = mask.sum(axis=1)
    pooled = np.sqrt((resid**2).sum() / max(n.sum(), 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        sd = np.sqrt((resid**2).sum(axis=1) / n)
    return np.where(n > 0, sd, pooled)


def _training(net, fam, hp, local_steps, lr) -> LocalTraining:
    return LocalTraining(
        net,
        fam,
        make_optimizer(hp["optimizer"], lr),
        local_steps=local_steps,
        learning_rate=lr,
        weight_decay=float(hp["weight_decay"]),
        fraction=float(hp.get("fraction", 1.0)),
    )


def _build(method, net, fam, init, hp, local_steps, lr, seed, meta_std) -> Baseline:
    training = _training(net, fam, hp, local_steps, lr)
    if method == "local":
        return local.build(training, init)
    if method in ("fedavg", "fedprox", "fedbn", "fedper"):
        if method == "fedbn" and not any(r == "norm" for r in net.roles.values()):
            warnings.warn(
                f"fedbn on network={net.name!r} (no BatchNorm layer) is FedAvg; "
                "use network='mlp_bn'",
                UserWarning,
                stacklevel=3,
            )
        roles = fedavg.SHARED_ROLES[method]
        mu = float(hp.get("mu", 0.0))
        return fedavg.build(training, init, shared_roles=roles, mu=mu, name=method)
    if method == "ditto":
        return ditto.build(training, init, lam=float(hp["lam"]))
    if method == "pfedme":
        personal_lr = lr if hp["personal_lr"] is None else float(hp["personal_lr"])
        return pfedme.build(
            training._replace(tx=make_optimizer(hp["optimizer"], personal_lr)),
            init,
            lam=float(hp["lam"]),
            inner_steps=_positive_int("inner_steps", hp["inner_steps"]),
            beta=float(hp["beta"]),
            personal_lr=personal_lr,
        )
    if method == "adapters":
        return adapters.build(
            training,
            init,
            rank=_positive_int("rank", hp["rank"]),
            adapter_strength=float(hp["adapter_strength"]),
        )
    if method == "clustered":
        n_clusters = hp["n_clusters"]
        if n_clusters is not None:
            n_clusters = _positive_int("n_clusters", n_clusters)
        return clustered.build_clustered(
            training,
            init,
            n_clusters=n_clusters,
            max_clusters=max(2, _positive_int("max_clusters", hp["max_clusters"])),
            min_silhouette=float(hp["min_silhouette"]),
            max_similarity=float(hp["max_similarity"]),
            cluster_round=_positive_int("cluster_round", hp["cluster_round"]),
        )
    if method == "ifca":
        c = _positive_int("n_clusters", hp["n_clusters"])
        inits = [
            _perturbed(net.init(seed + i), seed + i, float(hp["init_scale"])) for i in range(c)
        ]
        return clustered.build_ifca(training, jax.tree.map(lambda *a: jnp.stack(a), *inits))
    if method == "hypernet":
        return hypernet.build(
            training,
            init,
            metadata=meta_std,
            embedding_dim=hp["embedding_dim"],
            hn_hidden=hp["hn_hidden"],
            hn_lr=float(hp["hn_lr"]),
            seed=seed,
        )
    raise AssertionError(method)  # pragma: no cover


def _perturbed(init, seed: int, scale: float):
    """IFCA starts: every weight matrix plus ``scale * N(0, 1/fan_in)`` noise."""
    params, stats = init
    rng = np.random.default_rng(seed)
    out = {}
    for k, w in params.items():
        if w.ndim == 2:
            noise = rng.standard_normal(w.shape) * scale / np.sqrt(w.shape[0])
            out[k] = w + jnp.asarray(noise, w.dtype)
        else:
            out[k] = w
    return out, stats
