"""One registry of methods: a name maps once to what the method is, how it fits, its rounds.

Every front end reads this registry: the command line (``bayes-pfl fit --method``,
``bayes-pfl compare --methods``), the comparison harness (:func:`bayes_pfl.compare.make_method`)
and Flower (the run config's ``method``). A method is

* ``fit(data, *, model, family, seed, progress, **options)``: the in-process fit (a
  :class:`~bayes_pfl.results.FitResult` for the Bayesian methods, the baselines'
  :class:`~bayes_pfl.baselines.BaselineFit`, the networks' ``NeuralFit``);
* ``phases(*, model, n_features, family, seed, **options)``: its rounds as driver
  :class:`~bayes_pfl.simulation.Phase` s, what a Flower server runs (``None`` for a
  method with no rounds to federate: NUTS pools every row on one machine);
* its options: the keyword arguments of ``fit`` with their defaults, read from the
  function itself, so a default is written in one place.

Adding a method is one module (its algorithm and fit) plus one entry in
:func:`_registry`.

Examples
--------
>>> from bayes_pfl.methods import get_method, method_names
>>> method_names("flower")  # doctest: +SKIP
('ep', 'one-shot', 'vi', 'local', 'fedavg', ...)
>>> get_method("ep").options["rounds"]
10
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

__all__ = [
    "FRONT_ENDS",
    "KINDS",
    "MethodInfo",
    "UnknownMethod",
    "get_method",
    "method_names",
    "method_table",
]

FRONT_ENDS = ("cli", "compare", "flower")
"""``cli``: the command line (``fit`` for posteriors, ``compare`` for every method);
``compare``: :func:`bayes_pfl.compare.compare`; ``flower``: a Flower run (simulation or
deployment)."""

KINDS = ("reference", "federated", "baseline", "neural", "constant")


class UnknownMethod(ValueError):
    """A method name that is not in the registry (or not available in a front end)."""


class MethodInfo(NamedTuple):
    """One registry entry (see the module docstring)."""

    name: str
    kind: str
    summary: str
    fit: Callable[..., Any]
    phases: Callable[..., tuple] | None
    not_in: tuple[tuple[str, str], ...] = ()  # (front end, why the method does not run there)

    @property
    def front_ends(self) -> tuple[str, ...]:
        """The front ends the method runs on: all but those ``not_in`` names."""
        skipped = dict(self.not_in)
        return tuple(end for end in FRONT_ENDS if end not in skipped)

    @property
    def options(self) -> dict[str, Any]:
        """The method's options and their defaults (keyword arguments of its fit)."""
        skip = {"data", "model", "seed", "progress", "progress_bar", "method", "variant"}
        return {
            p.name: p.default
            for p in inspect.signature(self.fit).parameters.values()
            if p.kind is not p.VAR_KEYWORD and p.name not in skip and p.default is not p.empty
        }


# --------------------------------------------------------------------------- fits


def _nuts_fit() -> Callable[..., Any]:
    from bayes_pfl.centralized import fit_nuts

    def fit(data, *, model, seed: int = 0, progress: bool = False, **options):
        options.setdefault("progress_bar", progress)
        return fit_nuts(model, data, seed=seed, **options)

    fit.__signature__ = inspect.signature(fit_nuts)
    return fit


def _bayes_fit(name: str) -> Callable[..., Any]:
    from bayes_pfl.federated import fit_ep, fit_one_shot
    from bayes_pfl.federated_vi import fit_vi

    fn = {"ep": fit_ep, "one-shot": fit_one_shot, "vi": fit_vi}[name]

    params = inspect.signature(fn).parameters
    open_ended = any(p.kind is p.VAR_KEYWORD for p in params.values())

    @functools.wraps(fn)
    def fit(data, *, model, seed: int = 0, progress: bool = False, **options):
        unknown = sorted(set(options) - set(params))
        if unknown and not open_ended:
            known = [n for n in params if n not in ("model", "data", "seed", "progress")]
            raise TypeError(
                f"method {name!r} has no option(s) {unknown}; its options: {', '.join(known)}"
            )
        return fn(model, data, seed=seed, progress=progress, **options)

    fit.__signature__ = inspect.signature(fn)  # options read from the real function
    return fit


def _baseline_fit(name: str) -> Callable[..., Any]:
    from bayes_pfl.baselines import fit_baseline

    def fit(data, *, family: str = "bernoulli", seed: int = 0, progress: bool = False, **options):
        return fit_baseline(name, data, family=family, seed=seed, progress=progress, **options)

    fit.__signature__ = inspect.signature(fit_baseline)
    return fit


def _neural_fit(variant: str) -> Callable[..., Any]:
    from bayes_pfl.neural import fit_neural

    def fit(data, *, seed: int = 0, progress: bool = False, **options):
        return fit_neural(data, variant=variant, seed=seed, progress=progress, **options)

    fit.__signature__ = inspect.signature(fit_neural)
    return fit


# --------------------------------------------------------------------------- phases


def _ep_phases(name: str) -> Callable[..., tuple]:
    """EP, one-shot or VI's rounds from the options of its fit (defaults included).

    EP's ``summary`` is resolved by :func:`bayes_pfl.federated.resolve_summary` (``None``:
    particles where they apply, else Gaussian sites), so its phases end with the particle
    exchange where the in-process fit's do; one-shot and VI keep Gaussian sites.
    """

    def phases(*, model, **options):
        from bayes_pfl.federated import ep_phases, resolve_summary, site_options

        options = {**_registry()[name].options, **options}  # the fit's defaults fill gaps
        sites = options["sites"]
        if options.get("dp") is not None:
            return _dp_phases(name, model, options)
        tilted, site_fit = site_options(sites, options.get("tilted"), options.get("site_fit"))
        given = dict(sites=sites, damping=options.get("damping"), tol=options.get("tol"))
        if sites == "global":
            given.update(tilted=tilted, site_fit=site_fit, site_points=options.get("site_points"))
        if name == "one-shot":
            return ep_phases(
                model, rounds=1, **_capped({**given, "damping": 1.0, "tol": 0.0}, options)
            )
        rounds = options["rounds"] or 10  # fit_vi's rounds=None: 10 with sites="effects"
        if name == "vi":
            if sites != "effects":
                raise UnknownMethod(
                    "vi runs over the network with sites='effects' (factors over each "
                    "client's effects); sites='global' VI runs in process only"
                )
            vi_iter = options["vi_iterations"]
            given["effect_options"] = (("local", "vi"), ("vi_iterations", vi_iter))
        elif options.get("effect_options"):
            given["effect_options"] = tuple(sorted(dict(options["effect_options"]).items()))
        if name == "ep":  # one-shot and VI keep Gaussian sites
            summary = resolve_summary(model, options.get("summary"), sites)
            given.update(summary=summary, n_particles=options["n_particles"])
        return ep_phases(model, rounds=rounds, **_capped(given, options))

    return phases


def _dp_phases(name: str, model, options: dict) -> tuple:
    """EP's rounds with differentially private clients (``options["dp"]``, a
    :class:`~bayes_pfl.privacy.DPBudget`), as :func:`bayes_pfl.federated.fit_ep` runs them."""
    from bayes_pfl.federated import dp_options, ep_phases, resolve_summary

    if name != "ep":
        raise UnknownMethod(f"dp (differential privacy) applies to ep, not {name}")
    if options.get("precision_cap") is not None:
        raise ValueError(
            "precision_cap reads each client's row count, which a differentially private "
            "client does not send (an exact count is not private): use one or the other"
        )
    rounds = options["rounds"]
    noise, clip, damping = dp_options(
        model,
        options["dp"],
        rounds,
        options["sites"],
        resolve_summary(model, options.get("summary"), options["sites"], dp=options["dp"]),
        options.get("damping"),
        options.get("effect_options"),
    )
    return ep_phases(
        model,
        rounds=rounds,
        sites="effects",
        damping=damping,
        tol=options.get("tol"),
        effect_options=tuple(sorted(dict(options.get("effect_options") or {}).items())) or None,
        dp=(noise, clip),
    )


def _capped(given: dict, options: dict) -> dict:
    """EP phase options with the fit's ``precision_cap`` among the effect options."""
    cap = options.get("precision_cap")
    if cap is None:
        return given
    from bayes_pfl.federated import with_cap

    merged = with_cap(dict(given.get("effect_options") or ()), cap, given["sites"])
    return {**given, "effect_options": tuple(sorted(merged.items()))}


def _baseline_phases(name: str) -> Callable[..., tuple]:
    def phases(*, n_features: int, family: str, seed: int = 0, rounds: int = 50, **options):
        from bayes_pfl.baselines.fit import baseline_algorithm
        from bayes_pfl.simulation import Phase

        options = {k: v for k, v in options.items() if k != "model"}
        alg = baseline_algorithm(name, n_features, family=family, seed=seed, **options).algorithm
        return (Phase({}, alg, rounds, False),)

    return phases


# --------------------------------------------------------------------------- registry


@functools.cache
def _registry() -> dict[str, MethodInfo]:
    from bayes_pfl.baselines import BASELINE_NAMES
    from bayes_pfl.neural import VARIANTS

    federated_summary = {
        "one-shot": "one exchange of posterior summaries (EP's first round)",
        "ep": "federated expectation propagation, sites over each client's effects",
        "vi": "federated variational inference, EP's messages and exact server",
    }
    out: dict[str, MethodInfo] = {
        "nuts": MethodInfo(
            "nuts",
            "reference",
            "centralized NUTS on the pooled rows: the gold standard",
            _nuts_fit(),
            None,
            (("flower", "pools every client's rows on one machine: not a federated method"),),
        )
    }
    for name, summary in federated_summary.items():
        out[name] = MethodInfo(name, "federated", summary, _bayes_fit(name), _ep_phases(name))
    for name in BASELINE_NAMES:
        pooled = name == "pooled"
        out[name] = MethodInfo(
            name,
            "baseline",
            f"optimization baseline {name!r} (bayes_pfl.baselines)",
            _baseline_fit(name),
            None if pooled else _baseline_phases(name),
            (("flower", "trains one model on every client's rows pooled"),) if pooled else (),
        )
    for variant in VARIANTS:
        out[variant] = MethodInfo(
            variant,
            "neural",
            f"hierarchical Bayesian network {variant!r} (bayes_pfl.neural)",
            _neural_fit(variant),
            None,
            (("flower", "the network's readout (predictive draws) is in-process only"),),
        )
    out["constant"] = MethodInfo(
        "constant",
        "constant",
        "predicts the pooled training rate (a floor every method must beat)",
        _constant_fit,
        None,
        (("flower", "nothing to federate"),),
    )
    return out


def _constant_fit(data, *, family: str = "bernoulli", seed: int = 0, progress: bool = False):
    """The pooled training rate (or mean) as every row's prediction: a predictor."""
    from bayes_pfl.compare import constant_method

    return constant_method(family=family).fit_fn(data, seed)


def get_method(name: str, front_end: str | None = None) -> MethodInfo:
    """The registry entry of ``name``; an error naming the known methods otherwise.

    With ``front_end`` (one of :data:`FRONT_ENDS`), also an error when the method does not
    run there, saying why.
    """
    reg = _registry()
    if not isinstance(name, str) or name not in reg:
        raise UnknownMethod(f"unknown method {name!r}; known methods: {', '.join(reg)}")
    info = reg[name]
    if front_end is not None:
        if front_end not in FRONT_ENDS:
            raise ValueError(f"front_end must be one of {FRONT_ENDS}, got {front_end!r}")
        if front_end not in info.front_ends:
            why = dict(info.not_in).get(front_end, "not available")
            raise UnknownMethod(f"method {name!r} does not run on {front_end}: {why}")
    return info


def method_names(front_end: str | None = None, kind: str | None = None) -> tuple[str, ...]:
    """Names in the registry, optionally those that run on ``front_end`` / of ``kind``."""
    return tuple(
        n
        for n, m in _registry().items()
        if (front_end is None or front_end in m.front_ends) and (kind is None or m.kind == kind)
    )


def method_table() -> str:
    """The method x front end table of the docs (markdown), generated from the registry."""
    lines = [
        "| method | kind | " + " | ".join(FRONT_ENDS) + " | options (defaults) |",
        "| --- | --- | " + " | ".join("---" for _ in FRONT_ENDS) + " | --- |",
    ]
    for m in _registry().values():
        cells = []
        for end in FRONT_ENDS:
            cells.append("yes" if end in m.front_ends else f"no: {dict(m.not_in)[end]}")
        opts = ", ".join(f"`{k}={v!r}`" for k, v in list(m.options.items())[:6])
        lines.append(f"| `{m.name}` | {m.kind} | " + " | ".join(cells) + f" | {opts} |")
    return "\n".join(lines) + "\n"
