"""The centralized NUTS reference: the gold standard federated posteriors are measured against.

All clients' rows are pooled (this is *not* federated) and the model derived by
:meth:`~bayes_pfl.spec.HierarchicalModel.centralized_model` is sampled with
numpyro's NUTS.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.infer import MCMC, NUTS

from bayes_pfl.results import FitResult
from bayes_pfl.spec import HierarchicalModel, ModelSpecError

__all__ = ["check_model_data", "fit_nuts", "median_start"]

_EXTRA_FIELDS = ("diverging", "num_steps", "accept_prob", "energy", "potential_energy")

CHUNK = 50
"""Iterations of parallel chains run by one call of the compiled sampler. Chains that run at
the same time on several CPU devices (numpyro's ``chain_method="parallel"``, ``pmap``)
hold memory that grows with every iteration until the call returns, then is reused:
on the 8-client missing-feature test federation (``tests/test_ep_never_measured.py``)
4 chains of 1000 + 1000 iterations in one call peaked at 4.9 GB here and 22 GB in CI
(killed); a single device, or the same chains as several calls, stay flat. So
:func:`fit_nuts` runs parallel chains in calls of this many iterations: that fit now peaks
at 1.35 GB, in 267 s against 256 s in one call."""


def check_model_data(model: HierarchicalModel, data) -> None:
    """Raise :class:`~bayes_pfl.spec.ModelSpecError` when ``data`` does not fit ``model``:
    other features, or target values outside the support of the likelihood (a 1/2-coded
    outcome for a Bernoulli likelihood, negative counts for a Poisson one).

    Without this check such a target gives a finite, wrong log-likelihood: inference
    "succeeds" on data the model cannot have produced.
    """
    if model.feature_names is not None and tuple(data.features) != model.feature_names:
        raise ModelSpecError(
            f"model {model.name!r} expects features {list(model.feature_names)} in that order, "
            f"the data has {list(data.features)}"
        )
    if model.n_features is not None and data.n_features != model.n_features:
        raise ModelSpecError(
            f"model {model.name!r} expects {model.n_features} feature(s), "
            f"the data has {data.n_features}: {list(data.features)}"
        )
    check_model_covariates(model, data)
    if model.check_data is not None:
        model.check_data(data)
    _check_target_support(model, data)
    _warn_degenerate_features(data)


def check_model_covariates(model: HierarchicalModel, data) -> None:
    """Raise :class:`~bayes_pfl.spec.ModelSpecError` when a model with client covariates
    gets data without them, or with other covariates than it declares."""
    if model.client_covariates is None:
        return
    metadata = getattr(data, "metadata", None)
    if metadata is None:
        raise ModelSpecError(
            f"model {model.name!r} declares client covariates {list(model.client_covariates)}; "
            "the data have no client metadata (FederatedData.from_pandas(..., metadata=, "
            "metadata_cols=))"
        )
    names = metadata.names
    if tuple(names) != tuple(model.client_covariates):
        raise ModelSpecError(
            f"model {model.name!r} declares client covariates {list(model.client_covariates)} "
            f"in that order, the data have {list(names)}"
        )


def data_covariates(model: HierarchicalModel, data):
    """The clients' covariates ``[K, M]`` the model reads from ``data`` (``None`` without)."""
    return None if model.client_covariates is None else np.asarray(data.metadata.covariates, float)


def _warn_degenerate_features(data) -> None:
    """Warn about a feature constant over all training rows (it trades off with the
    intercept: unidentified but for the prior) or features that are exactly collinear."""
    import warnings

    arrays = data.arrays("train")
    x = np.asarray(arrays.x)[np.asarray(arrays.mask, bool)]
    if x.shape[0] < 2 or x.shape[1] == 0:
        return
    x = x[np.all(np.isfinite(x), axis=1)]  # rows with a kept missing value do not count
    if x.shape[0] < 2:
        return
    names = [str(f) for f in data.features]
    sd = x.std(axis=0)
    const = [n for n, s in zip(names, sd, strict=True) if s == 0]
    if const:
        warnings.warn(
            f"feature(s) {const} are constant over all training rows: each trades off with "
            "the intercept (identified by the prior alone); drop them",
            UserWarning,
            stacklevel=3,
        )
        return
    if x.shape[1] < 2:
        return
    _, sv, vt = np.linalg.svd((x - x.mean(axis=0)) / sd, full_matrices=False)
    if sv[-1] < 1e-8 * sv[0]:
        involved = [n for n, w in zip(names, vt[-1], strict=True) if abs(w) > 1e-6]
        warnings.warn(
            f"features {involved} are exactly collinear over the training rows (one is a "
            "linear combination of the others): their coefficients are identified by the "
            "prior alone; drop one",
            UserWarning,
            stacklevel=3,
        )


def _check_target_support(model: HierarchicalModel, data) -> None:
    for split in ("train", "val", "test"):
        arrays = data.arrays(split) if getattr(data, split, None) is not None else None
        if arrays is None:
            continue
        mask = np.asarray(arrays.mask, bool)
        if not mask.any():
            continue
        x = np.asarray(arrays.x)[mask]
        y = np.asarray(arrays.y)[mask]
        for name, support in model.observed_supports(x, y).items():
            ok = np.asarray(support.check(jnp.asarray(y)), bool)
            if ok.all():
                continue
            bad_rows = np.broadcast_to(~ok, y.shape)
            values = np.unique(y[bad_rows])
            client_idx = np.nonzero(mask)[0][bad_rows]
            clients = [data.clients[k] for k in dict.fromkeys(client_idx.tolist())]
            shown = ", ".join(repr(c) for c in clients[:5]) + (" ..." if len(clients) > 5 else "")
            raise ModelSpecError(
                f"target {data.target!r} has values that model {model.name!r} cannot produce: "
                f"its observed site {name!r} has support {_support_name(support)}, the "
                f"{split} rows hold {', '.join(f'{v:g}' for v in values[:10])} "
                f"({int(bad_rows.sum())} row(s), client(s) {shown}); recode the target "
                "(e.g. 0/1 for a Bernoulli likelihood) or choose another model"
            )


def _support_name(support) -> str:
    cls = type(support).__name__
    named = {
        "_Boolean": "{0, 1}",
        "_IntegerNonnegative": "the non-negative integers",
        "_IntegerPositive": "the positive integers",
        "_Real": "the finite reals",
        "_Positive": "the positive reals",
        "_UnitInterval": "[0, 1]",
    }
    if cls in named:
        return named[cls]
    lower, upper = getattr(support, "lower_bound", None), getattr(support, "upper_bound", None)
    if lower is not None and upper is not None:
        return f"{cls.strip('_')} [{lower}, {upper}]"
    if lower is not None:
        return f"{cls.strip('_')} above {lower}"
    return str(support)


def _parallel_chains(kernel, rng_key, num_chains, num_warmup, num_samples, args, *,
                     progress_bar):  # fmt: skip
    """numpyro's parallel chains (one per device, the same keys and steps as ``MCMC``) run
    :data:`CHUNK` iterations per call. Returns the constrained samples and
    :data:`_EXTRA_FIELDS`, each ``[chain, draw, ...]``."""
    from tqdm.auto import tqdm

    devices = jax.local_devices()[:num_chains]
    keys = jax.random.split(rng_key, num_chains)
    # the data are closed over, not traced arguments (as in numpyro's MCMC): the kernel
    # keeps functions of them from its init
    state = jax.pmap(
        lambda key: kernel.init(key, num_warmup, None, model_args=args, model_kwargs={}),
        devices=devices,
    )(keys)

    def run(state, n):
        """``n <= CHUNK`` iterations; the draws in the first ``n`` rows of a buffer."""
        post = kernel.postprocess_fn(args, {})

        def record(s):
            return post(s.z), {f: getattr(s, f) for f in _EXTRA_FIELDS}

        buffer = jax.tree.map(lambda v: jnp.zeros((CHUNK, *jnp.shape(v)), v.dtype),
                              record(state))  # fmt: skip

        def body(i, carry):
            s, buf = carry
            s = kernel.sample(s, args, {})
            buf = jax.tree.map(lambda b, v: b.at[i].set(v), buf, record(s))
            return s, buf

        return jax.lax.fori_loop(0, n, body, (state, buffer))

    step = jax.pmap(run, in_axes=(0, None), devices=devices)
    draws = []
    bar = tqdm(total=num_warmup + num_samples, disable=not progress_bar, desc="warmup")
    done = 0
    while done < num_warmup + num_samples:
        # a call never straddles the end of warmup: its draws are kept or dropped whole
        end = num_warmup if done < num_warmup else num_warmup + num_samples
        n = min(CHUNK, end - done)
        state, buf = step(state, jnp.asarray(n))
        if done >= num_warmup:
            draws.append(jax.tree.map(lambda b, n=n: np.asarray(b[:, :n]), buf))
        done += n
        bar.set_description("warmup" if done < num_warmup else "sample", refresh=False)
        bar.update(n)
    bar.close()
    samples, extra = jax.tree.map(lambda *d: np.concatenate(d, axis=1), *draws)
    return samples, extra


def median_start() -> dict:
    """``fit_nuts(kernel_options=...)`` that start every chain at the prior medians with a
    heuristic first step size, instead of numpyro's uniform draw in ``(-2, 2)`` and step
    size 1. For models whose early warmup can fling a chain far out, where it stays: with
    modelled covariates (``hierarchical_glm(missing=..., noise_sd=...)``) a chain was left
    in the covariates' log scales at 1023 leapfrog steps per draw
    (``benchmarks/pfl_comparison.py``, ``benchmarks/systemic.py``)."""
    from numpyro.infer import init_to_median

    return {"init_strategy": init_to_median(num_samples=15), "find_heuristic_step_size": True}


def fit_nuts(
    model: HierarchicalModel,
    data,
    *,
    num_chains: int = 4,
    num_warmup: int = 1000,
    num_samples: int = 1000,
    seed: int = 0,
    target_accept_prob: float = 0.9,
    max_tree_depth: int = 10,
    progress_bar: bool = True,
    chain_method: str | None = None,
    kernel_options: dict | None = None,
) -> FitResult:
    """Sample the pooled hierarchical model with NUTS.

    Parameters
    ----------
    model : HierarchicalModel
        The model declaration.
    data : FederatedData
        Training rows of every client (``data.train``).
    num_chains, num_warmup, num_samples : int
        NUTS settings; chains run in parallel when JAX has at least ``num_chains``
        devices (an entry point can call ``numpyro.set_host_device_count``),
        else one after another.
    seed : int
        Seed of the sampler.
    target_accept_prob, max_tree_depth
        NUTS step-size adaptation target and tree depth limit.
    progress_bar : bool
        Show a progress bar (numpyro's; for parallel chains, one over their iterations).
    chain_method : {"parallel", "sequential", "vectorized"}, optional
        Overrides the choice above. Parallel chains run :data:`CHUNK` iterations per call
        of the compiled sampler (the same draws as numpyro's ``MCMC``, to round-off).
    kernel_options : dict, optional
        More options of numpyro's ``NUTS`` kernel, e.g. ``init_strategy`` or
        ``find_heuristic_step_size=True``, for a model where early warmup leaves a chain
        stuck far from the posterior. Default: numpyro's start (uniform in ``(-2, 2)`` in
        unconstrained space, step size 1), except for a model that observes its covariates
        (:attr:`HierarchicalModel.observes_covariates`), which starts at
        :func:`median_start`; the start used is in ``info["settings"]["start"]``.

    Returns
    -------
    FitResult
        ``method="nuts"``, with sampler statistics ``diverging``, ``tree_depth``,
        ``n_steps``, ``acceptance_rate``, ``energy`` and ``lp``.

    Examples
    --------
    >>> from bayes_pfl import FederatedData, load  # doctest: +SKIP
    >>> from bayes_pfl.models import eight_schools  # doctest: +SKIP
    >>> data = FederatedData.from_pandas(load("eight_schools"), client_col="school",
    ...                                  target="y", features=["sigma"])  # doctest: +SKIP
    >>> fit = fit_nuts(eight_schools(), data)  # doctest: +SKIP
    >>> fit.to_datatree(data)  # doctest: +SKIP
    """
    check_model_data(model, data)
    for name, value, least in (("num_chains", num_chains, 1), ("num_warmup", num_warmup, 0),
                               ("num_samples", num_samples, 1)):  # fmt: skip
        if int(value) != value or value < least:
            raise ValueError(f"fit_nuts: {name} must be an integer >= {least}, got {value!r}")
    if chain_method is None:
        chain_method = "parallel" if jax.local_device_count() >= num_chains else "sequential"
    arr = data.train
    x, y, mask = (jnp.asarray(arr.x), jnp.asarray(arr.y), jnp.asarray(arr.mask))
    if kernel_options is None:
        start = "median" if model.observes_covariates else "uniform"
        kernel_options = median_start() if start == "median" else {}
    else:
        start = "kernel_options"
    kernel = NUTS(
        model.centralized_model,
        target_accept_prob=target_accept_prob,
        max_tree_depth=max_tree_depth,
        **kernel_options,
    )
    t0 = time.perf_counter()
    z = data_covariates(model, data)
    z = None if z is None else jnp.asarray(z, dtype=x.dtype)
    args = (x, y, mask, z)
    if chain_method == "parallel" and 1 < num_chains <= jax.local_device_count():
        samples, extra = _parallel_chains(
            kernel, jax.random.key(seed), num_chains, num_warmup, num_samples, args,
            progress_bar=progress_bar,
        )  # fmt: skip
    else:  # numpyro's MCMC (parallel with too few devices: it warns, and runs sequentially)
        mcmc = MCMC(
            kernel,
            num_warmup=num_warmup,
            num_samples=num_samples,
            num_chains=num_chains,
            chain_method=chain_method,
            progress_bar=progress_bar,
        )
        mcmc.run(jax.random.key(seed), *args, extra_fields=_EXTRA_FIELDS)
        samples = jax.block_until_ready(mcmc.get_samples(group_by_chain=True))
        extra = mcmc.get_extra_fields(group_by_chain=True)
    wall = time.perf_counter() - t0
    phi_names = (*model.phi_space.names, *model.phi_deterministic)
    theta_names = (*model.theta_space.names, *model.theta_deterministic)
    n_steps = np.asarray(extra["num_steps"])
    stats = {
        "diverging": np.asarray(extra["diverging"]),
        "n_steps": n_steps,
        "tree_depth": np.ceil(np.log2(n_steps + 1)).astype(int),
        "acceptance_rate": np.asarray(extra["accept_prob"]),
        "energy": np.asarray(extra["energy"]),
        "lp": -np.asarray(extra["potential_energy"]),
    }
    return FitResult(
        method="nuts",
        model=model,
        clients=tuple(data.clients),
        phi={k: np.asarray(samples[k]) for k in phi_names},
        theta={k: np.asarray(samples[k]) for k in theta_names},
        sample_stats=stats,
        info={
            "wall_time_s": wall,
            "seed": seed,
            "settings": {
                "num_chains": num_chains,
                "num_warmup": num_warmup,
                "num_samples": num_samples,
                "target_accept_prob": target_accept_prob,
                "max_tree_depth": max_tree_depth,
                "chain_method": chain_method,
                "start": start,
            },
        },
    )
