r"""Federated EP and one-shot end to end: the rounds, then the readout.

* the rounds of :mod:`bayes_pfl.algorithms.effect_ep` (sites over each client's own
  effects, the population integrated exactly by the server; default) or of
  :mod:`bayes_pfl.algorithms.ep` (sites over the global parameters), run by the
  driver :func:`bayes_pfl.simulation.run_rounds`; one-shot is EP's first round; with
  ``summary="auto"``/``"particles"`` one exchange of importance-weighted particles relative
  to the Gaussian sites follows (:mod:`bayes_pfl.algorithms.particles`);
* then :func:`bayes_pfl.posterior.readout`: global draws, personalized draws, the
  :class:`~bayes_pfl.results.FitResult` in the same layout as the centralized fit.

:func:`cold_start`, :func:`global_draws` and :func:`personalize` live in
:mod:`bayes_pfl.posterior` and are re-exported here.
"""

from __future__ import annotations

import functools
import time
import warnings
from typing import Any

import numpy as np

from bayes_pfl import privacy
from bayes_pfl.algorithms import effect_ep, ep, particles
from bayes_pfl.centralized import check_model_data
from bayes_pfl.population import gaussian_population
from bayes_pfl.posterior import (
    ColdStart,
    Rounds,
    check_steps,
    cold_start,
    effect_global_draws,
    global_draws,
    personalize,
    personalize_client,
    personalize_effects,
    readout,
    server_draws,
    server_summary,
)
from bayes_pfl.results import FitResult
from bayes_pfl.simulation import Phase, run_phases
from bayes_pfl.spec import HierarchicalModel
from bayes_pfl.student_t import df_label

__all__ = [
    "ColdStart",
    "cold_start",
    "fit_ep",
    "fit_one_shot",
    "effect_global_draws",
    "global_draws",
    "personalize",
    "personalize_client",
    "personalize_effects",
    "server_draws",
    "server_summary",
]

SITES = ("effects", "global")
"""Where EP's sites live: over each client's own effects (default; the population is
integrated exactly by the server, :mod:`bayes_pfl.algorithms.effect_ep`) or over the
global parameters (:mod:`bayes_pfl.algorithms.ep`)."""


@functools.lru_cache(maxsize=16)
def ep_algorithm(model: HierarchicalModel, **options) -> Any:
    """``ep.build`` memoized per model and options: a second fit of the same model reuses
    the same functions, hence their compiled code (no re-tracing, no XLA compilation)."""
    return ep.build(model, **options)


@functools.lru_cache(maxsize=16)
def effect_algorithm(model: HierarchicalModel, **options) -> Any:
    """``effect_ep.build`` memoized per model and options (compiled code reused)."""
    return effect_ep.build(model, **options)


SUMMARIES = ("gaussian", "particles", "auto")
"""Client summaries with ``sites="effects"``: Gaussian sites only; or, after the Gaussian
rounds, one exchange of importance-weighted particles relative to the site from every
client (``"particles"``) or from the clients whose diagnostic asks for them (``"auto"``);
:mod:`bayes_pfl.algorithms.particles`."""


@functools.lru_cache(maxsize=16)
def particle_algorithm(model: HierarchicalModel, effect, **options) -> Any:
    """``particles.build`` memoized per model, Gaussian-rounds algorithm and options."""
    return particles.build(model, effect, **options)


def _why_no_particles(model: HierarchicalModel, sites: str) -> tuple[str, bool] | None:
    """Why particles cannot run for this model and sites (the rest of a message that
    starts ``summary=...``), and whether a fit that asks for them is an error (``True``)
    or keeps Gaussian sites with a warning; ``None``: they can. The one list
    :func:`particle_summary` and :func:`resolve_summary` both read."""
    if sites != "effects":
        return " needs sites='effects' (particles over each client's effects)", True
    if model.population_df is not None:
        return (
            f" needs a Gaussian population; model {model.name!r} has a Student-t population "
            f"(population_df={df_label(model.population_df)}): use summary='gaussian'",
            True,
        )
    if model.n_covariates:
        return (
            ": particles do not support client covariates (metadata: each client's "
            "population mean mu + z W); use summary='gaussian'",
            True,
        )
    why = particles.applicable(gaussian_population(model))
    if why is not None:
        return f": model {model.name!r} keeps Gaussian sites: {why}", False
    return None


def particle_summary(model: HierarchicalModel, summary: str, sites: str = "effects") -> str:
    """The summary a fit will use: ``summary`` checked, ``"gaussian"`` (with a warning
    saying why) where particles do not apply (shared likelihood parameters)."""
    if summary not in SUMMARIES:
        raise ValueError(f"summary must be one of {SUMMARIES}, got {summary!r}")
    if summary == "gaussian" or (no := _why_no_particles(model, sites)) is None:
        return summary
    why, error = no
    message = f"summary={summary!r}{why}"
    if error:
        raise ValueError(message)
    warnings.warn(message, stacklevel=3)
    return "gaussian"


def resolve_summary(model: HierarchicalModel, summary: str | None, sites: str, dp=None) -> str:
    """The summary an EP fit runs: ``summary=None`` (the default) is ``"auto"`` where
    particles apply (sites over effects, a Gaussian population, no shared likelihood
    parameters, no client covariates, no differential privacy) and ``"gaussian"``
    elsewhere, silently; a summary the caller named is checked by :func:`particle_summary`
    (an error or a warning where it cannot run). The in-process fits and Flower's phases
    (:mod:`bayes_pfl.methods`) both resolve it here."""
    if summary is not None:
        return particle_summary(model, summary, sites)
    if dp is not None or _why_no_particles(model, sites) is not None:
        return "gaussian"
    return "auto"


def ep_defaults(sites: str, tilted: str = "laplace") -> dict[str, float]:
    """EP's ``damping`` and ``tol`` when not given, the one place they are written.

    Sites over effects: damping 1 (the first exchange undamped; the rate halves after an
    oscillating round) and tol 0.05 (the cavities carry the server's Monte Carlo noise).
    Sites over the global parameters: damping 0.8; tol 1e-3 (Laplace) or 0.05 (NUTS).
    """
    if sites == "effects":
        return {"damping": 1.0, "tol": 0.05}
    return {"damping": 0.8, "tol": 1e-3 if tilted == "laplace" else 0.05}


def ep_phases(
    model: HierarchicalModel,
    *,
    rounds: int,
    sites: str = "effects",
    damping: float | None = None,
    tol: float | None = None,
    tilted: str = "laplace",
    site_fit: str = "gradient",
    site_points: int | None = None,
    effect_options: tuple | None = None,
    summary: str = "gaussian",
    n_particles: int = 256,
    dp: tuple | None = None,
) -> tuple[Phase, ...]:
    """EP's rounds as driver phases; the in-process fits and Flower run this same tuple.

    ``sites="effects"``: one phase of :func:`effect_algorithm` (``effect_options`` as
    frozen ``(name, value)`` pairs; ``("local", "vi")`` makes it federated VI); with
    ``summary`` ``"particles"``/``"auto"`` a one-round phase of :func:`particle_algorithm`
    follows, warm-started from it (``summary`` as :func:`particle_summary` resolved it).
    ``sites="global"``: :func:`ep_algorithm`; with ``tilted="nuts"`` (and more than one
    round) a Laplace-EP phase first, the NUTS phase warm-started from it (its cavities
    are then well defined and NUTS's Monte Carlo noise only perturbs a good
    approximation). One-shot is ``rounds=1, damping=1, tol=0``.

    ``dp=(noise_multiplier, clip)`` (``sites="effects"``, Gaussian summary): the clients'
    steps are :func:`bayes_pfl.privacy.private_algorithm`'s, ``damping`` theirs (the
    server's pinned at 1).
    """
    given = ep_defaults(sites, tilted)
    damping = given["damping"] if damping is None else damping
    tol = given["tol"] if tol is None else tol
    if sites == "effects":
        if dp is not None:
            base = effect_algorithm(model, damping=1.0, tol=tol, **dict(effect_options or ()))
            alg = privacy.private_algorithm(model, base, *dp, damping=damping)
            return (Phase({"sites": "effects", "dp": True}, alg, rounds, False, True),)
        alg = effect_algorithm(model, damping=damping, tol=tol, **dict(effect_options or ()))
        phases = [Phase({"sites": "effects"}, alg, rounds, False, True)]
        if summary != "gaussian":
            extra = particle_algorithm(model, alg, mode=summary, n_particles=n_particles)
            phases.append(Phase({"sites": "effects", "summary": summary}, extra, 1, True, True))
        return tuple(phases)
    phases = []
    if tilted == "nuts" and rounds > 1:
        warm = ep_algorithm(
            model,
            tilted="laplace",
            damping=damping,
            tol=1e-3,
            site_fit=site_fit,
            site_points=site_points,
        )
        phases.append(Phase({"tilted": "laplace"}, warm, rounds, False, True))
    alg = ep_algorithm(
        model, tilted=tilted, damping=damping, tol=tol, site_fit=site_fit, site_points=site_points
    )
    phases.append(Phase({"tilted": tilted}, alg, rounds, bool(phases), True))
    return tuple(phases)


def ep_rounds(
    model: HierarchicalModel,
    data,
    *,
    seed: int,
    progress: bool,
    checkpoint=None,
    resume: bool = False,
    **phase_options,
) -> Rounds:
    """EP's rounds (:func:`ep_phases`) on ``data.train``; what :func:`readout` needs next."""
    phase_options = with_covariates(model, data, phase_options)
    out = run_phases(
        ep_phases(model, **phase_options),
        data.train,
        labels=data.clients,
        seed=seed,
        progress=progress,
        checkpoint=checkpoint,
        resume=resume,
    )
    return Rounds(out.server_state, out.history, out.converged)


def fit_ep(
    model: HierarchicalModel,
    data,
    *,
    rounds: int = 10,
    damping: float | None = None,
    sites: str = "effects",
    tilted: str | None = None,
    site_fit: str | None = None,
    site_points: int | None = None,
    tol: float | None = None,
    seed: int = 0,
    global_method: str = "nuts",
    num_chains: int = 4,
    num_warmup: int | None = None,
    num_samples: int = 1000,
    mh_steps: int = 5,
    progress: bool = True,
    checkpoint=None,
    resume: bool = False,
    effect_options: dict | None = None,
    summary: str | None = None,
    n_particles: int = 256,
    precision_cap: float | None = None,
    dp: privacy.DPBudget | None = None,
) -> FitResult:
    """Federated EP, then global and personalized draws.

    Parameters
    ----------
    rounds : int
        Maximum number of rounds; EP stops earlier when converged.
    damping : float, optional
        Damping rate of site updates (default 1 with ``sites="effects"``, whose first
        exchange is undamped and whose rate halves after an oscillating round; 0.8 with
        ``"global"``).
    sites : {"effects", "global"}
        ``"effects"`` (default): each client's site is a Gaussian over its own effects
        and the shared likelihood parameters, moment-matched to its tilted
        distribution, and the server integrates the population exactly
        (:mod:`bayes_pfl.algorithms.effect_ep`); ``"global"``: sites over the global
        parameters (:mod:`bayes_pfl.algorithms.ep`, the earlier format).
    tilted : {"laplace", "nuts"}
        ``sites="global"`` only: tilted inference of the clients. ``"nuts"`` starts
        from the Laplace-EP solution; its Monte Carlo noise adds up over sites.
    site_fit : {"gradient", "regression", "taylor"}
        ``sites="global"`` only (see :func:`bayes_pfl.algorithms.ep.build`).
    site_points : int, optional
        ``sites="global"`` only: points of the ``"regression"``/``"gradient"`` fit.
    tol : float, optional
        Convergence tolerance (default 0.05 for ``"effects"``, whose cavities carry the
        server's Monte Carlo noise; ``1e-3`` for Laplace and ``0.05`` for NUTS global
        sites).
    global_method : {"nuts", "laplace"}
        ``sites="global"``: how the server samples ``p0 * G`` (``"effects"``: NUTS).
    num_chains, num_warmup, num_samples
        Server NUTS settings of the final global draws; the result has ``num_chains x
        num_samples`` draws. ``num_warmup`` defaults to 300 with ``sites="effects"``
        (the chains start from the mass matrices the last round adapted and adapt only
        their step size) and 1000 with ``"global"``.
    mh_steps : int
        Independence-MH steps per personalized draw (:func:`personalize`); raise it
        when ``info["min_personalize_acceptance"]`` is low (tiny clients, skewed
        conditionals).
    checkpoint, resume
        Checkpoint file prefix and whether to resume from it. Each phase checkpoints
        after every round: the particle exchange at ``checkpoint``, the Gaussian rounds
        before it at ``<checkpoint>-phase0``
        (:func:`~bayes_pfl.simulation.phase_checkpoint`).
    effect_options : dict, optional
        Further options of :func:`bayes_pfl.algorithms.effect_ep.build` (the server's
        per-round NUTS settings, the tilted importance-sampling points).
    summary : {"auto", "gaussian", "particles"}, optional
        ``sites="effects"`` only. Default (``None``): ``"auto"`` where particles apply,
        ``"gaussian"`` where they do not (shared likelihood parameters, a Student-t
        population, client covariates, ``dp``), silently. ``"gaussian"``: Gaussian sites. ``"particles"``: after
        the Gaussian rounds, one more exchange in which every client sends
        ``n_particles`` importance-weighted particles relative to its site, and the
        server's density (its final draws) is particle-corrected where a client's
        likelihood is far from Gaussian (:mod:`bayes_pfl.algorithms.particles`);
        ``"auto"``: only the clients whose diagnostic (sd of ``log L/t`` under their
        Gaussian tilted, effective sample size) asks for it. Models whose likelihood
        reads shared global parameters keep Gaussian sites (with a warning when
        ``summary`` was named). The round history reports the clients using particles,
        their lowest ESS and the bytes per client of each form.
    n_particles : int
        Particles per client with ``summary`` ``"particles"``/``"auto"``.
    precision_cap : float, optional
        ``sites="effects"`` only; a robust option. No client's site may carry more
        information than its declared rows could: each site's precision is capped at
        ``n_k x precision_cap x`` the federation's median information per row
        (:func:`bayes_pfl.algorithms.effect_ep.cap_precision`; e.g. 10). ``None``
        (default): no cap. ``diagnostics()`` names the clients whose cap bound. With a
        Student-t population (``model.with_population(4)``) an outlying or lying client
        moves the population little (``benchmarks/robustness.py``).
    dp : DPBudget, optional
        Record-level differential privacy of what each client sends
        (:mod:`bayes_pfl.privacy`, ``docs/privacy.md``): each round a client sends a
        noisy, per-row clipped partitioned-VI site; the noise is calibrated so that
        ``rounds`` rounds spend at most ``dp.epsilon`` (at ``dp.delta``), and the fit runs
        at most ``rounds`` rounds. ``damping`` is then the clients' own damping of their
        sites (default 0.5: it averages the noise of successive rounds). The spend of
        each client is in ``info["privacy"]`` (and run.json, and the posterior's
        attributes). Needs ``sites="effects"`` and ``summary="gaussian"``.

    Returns
    -------
    FitResult
        ``method="ep"``, with the round history.
    """
    check_model_data(model, data)
    mh_steps = check_steps("mh_steps", mh_steps)
    tilted, site_fit = site_options(sites, tilted, site_fit)
    num_warmup = default_warmup(sites, num_warmup)
    given = ep_defaults(sites, tilted)
    if dp is not None and precision_cap is not None:
        raise ValueError(
            "precision_cap reads each client's row count, which a differentially private "
            "client does not send (an exact count is not private): use one or the other"
        )
    summary = resolve_summary(model, summary, sites, dp)
    if dp is not None:
        noise, clip, damping = dp_options(
            model, dp, rounds, sites, summary, damping, effect_options
        )
        _dp_data_checks(dp, data, resume)
    damping = given["damping"] if damping is None else damping
    tol = given["tol"] if tol is None else tol
    effect_options = with_cap(effect_options, precision_cap, sites)
    settings = {"rounds": rounds, "damping": damping, "sites": sites, "tol": tol}
    if sites == "global":
        settings.update(tilted=tilted, site_fit=site_fit, site_points=site_points)
    else:
        settings.update(summary=summary)
        if summary != "gaussian":
            settings.update(n_particles=n_particles)
        if effect_options:
            settings.update(dict(effect_options))
    if dp is not None:
        settings.update(dp_epsilon=dp.epsilon, dp_delta=dp.delta, dp_clip=clip)
    result = run_fit(
        "ep",
        model,
        data,
        dict(rounds=rounds, damping=damping, tilted=tilted, site_fit=site_fit, tol=tol),
        settings,
        site_points=site_points,
        sites=sites,
        effect_options=_freeze(effect_options),
        summary=summary,
        n_particles=n_particles,
        dp=None if dp is None else (noise, clip),
        seed=seed,
        global_method=global_method,
        num_chains=num_chains,
        num_warmup=num_warmup,
        num_samples=num_samples,
        mh_steps=mh_steps,
        progress=progress,
        checkpoint=checkpoint,
        resume=resume,
    )
    if dp is not None:
        result.info["privacy"] = privacy.privacy_record(
            dp,
            noise,
            clip=clip,
            rounds_planned=rounds,
            rounds_run=int(result.info["rounds"]),
            labels=data.clients,
            participating=np.asarray(data.train.mask).sum(axis=1) > 0,
        )
    return result


DP_CLIENT_OPTIONS = ("local", "vi_iterations", "tilted_points", "min_ess_fraction", "newton_iter")
"""``effect_options`` of the EP client step, which a DP fit replaces."""


def dp_options(model, dp, rounds, sites, summary, damping, effect_options):
    """Check a DP fit's options: ``(noise multiplier, clip, the clients' damping)``.

    What the in-process fit and Flower's phases (:mod:`bayes_pfl.methods`) both need; no
    data are read (the noise depends on the budget and the rounds only).
    """
    if not isinstance(dp, privacy.DPBudget):
        raise TypeError(f"dp must be a bayes_pfl.privacy.DPBudget, got {type(dp).__name__}")
    if sites != "effects" or summary != "gaussian":
        raise ValueError(
            "dp needs sites='effects' and summary='gaussian' (noisy Gaussian sites over each "
            f"client's effects), got sites={sites!r}, summary={summary!r}"
        )
    given = sorted(set(effect_options or ()) & set(DP_CLIENT_OPTIONS))
    if given:
        raise ValueError(f"effect_options {given} set the EP client step, which dp replaces")
    damping = 0.5 if damping is None else damping
    if not 0.0 < damping <= 1.0:
        raise ValueError(f"damping must be in (0, 1], got {damping!r}")
    noise = privacy.calibrate_noise(dp.epsilon, dp.delta, rounds, dp.accountant)
    return noise, dp.clip_for(gaussian_population(model).z_dim), damping


def _dp_data_checks(dp, data, resume) -> None:
    """The in-process DP fit's checks that read the data or the run's state."""
    if resume:
        raise ValueError("dp fits cannot resume from a checkpoint (the budget spans one run)")
    n_max = int(np.asarray(data.train.mask).sum(axis=1).max())
    if dp.delta > 1.0 / (10 * max(n_max, 1)):
        warnings.warn(
            f"dp delta={dp.delta:g} is above 1/(10 n) for the largest client ({n_max} rows): "
            "a delta near 1/n allows releasing a whole row",
            stacklevel=3,
        )


def run_fit(
    method: str,
    model: HierarchicalModel,
    data,
    phase_options: dict,
    settings: dict,
    *,
    seed: int,
    global_method: str,
    num_chains: int,
    num_warmup: int,
    num_samples: int,
    mh_steps: int,
    progress: bool,
    checkpoint=None,
    resume: bool = False,
    **more_phase_options,
) -> FitResult:
    """EP's rounds (:func:`ep_rounds`), then :func:`~bayes_pfl.posterior.readout`, timed.

    With ``dp`` the clients personalize from their own noise-free sites
    (:func:`bayes_pfl.privacy.local_sites`: local, never sent).
    """
    t_start = time.perf_counter()
    fitted = ep_rounds(
        model,
        data,
        seed=seed,
        progress=progress,
        checkpoint=checkpoint,
        resume=resume,
        **phase_options,
        **more_phase_options,
    )
    personal = None
    if more_phase_options.get("dp") is not None:
        base = effect_algorithm(
            model,
            damping=1.0,
            tol=phase_options["tol"],
            **dict(more_phase_options.get("effect_options") or ()),
        )
        personal = privacy.local_sites(base, fitted.server_state, data.train, seed=seed)
    return readout(
        method,
        model,
        data,
        fitted,
        seed=seed,
        global_method=global_method,
        num_chains=num_chains,
        num_warmup=num_warmup,
        num_samples=num_samples,
        t_start=t_start,
        mh_steps=mh_steps,
        settings=settings,
        personal_sites=personal,
    )


def with_covariates(model: HierarchicalModel, data, phase_options: dict) -> dict:
    """``phase_options`` with the clients' covariates for the server (a model with client
    covariates; they are server-side constants of EP with sites over client effects)."""
    if not model.n_covariates:
        return phase_options
    sites = phase_options.get("sites", "effects")
    if sites != "effects":
        raise ValueError(
            f"model {model.name!r} has client covariates: they need sites='effects' (the "
            f"server's population integral), got sites={sites!r}"
        )
    summary = phase_options.get("summary", "gaussian")
    if summary != "gaussian":
        raise ValueError(
            f"model {model.name!r} has client covariates: summary={summary!r} (particles) does "
            "not support them yet; use summary='gaussian'"
        )
    z = tuple(map(tuple, np.asarray(data.metadata.covariates, dtype=float).tolist()))
    options = dict(phase_options.get("effect_options") or ())
    return {**phase_options, "effect_options": _freeze({**options, "covariates": z})}


def with_cap(effect_options: dict | None, precision_cap, sites: str) -> dict | None:
    """``effect_options`` with the precision cap (checked) where one is given."""
    if precision_cap is None:
        return effect_options
    if sites != "effects":
        raise ValueError("precision_cap needs sites='effects' (sites over client effects)")
    if isinstance(precision_cap, bool) or not (
        isinstance(precision_cap, int | float) and precision_cap >= 1
    ):
        raise ValueError(f"precision_cap must be a number >= 1 (or None), got {precision_cap!r}")
    return {**(effect_options or {}), "precision_cap": float(precision_cap)}


def site_options(sites: str, tilted: str | None, site_fit: str | None) -> tuple[str, str]:
    """``tilted``/``site_fit`` belong to sites over the global parameters: defaults there,
    a clear error when given with sites over client effects."""
    if sites not in SITES:
        raise ValueError(f"sites must be one of {SITES}, got {sites!r}")
    if sites == "effects":
        given = [n for n, v in (("tilted", tilted), ("site_fit", site_fit)) if v is not None]
        if given:
            raise ValueError(
                f"{' and '.join(given)} only apply to sites='global' (sites over the global "
                "parameters); sites='effects' moment-matches each client's tilted distribution"
            )
    return tilted or "laplace", site_fit or "gradient"


def default_warmup(sites: str, num_warmup: int | None) -> int:
    """The final global draws' NUTS warm-up: 300 with sites over effects, else 1000."""
    if num_warmup is not None:
        return num_warmup
    return 300 if sites == "effects" else 1000


def _freeze(options: dict | None) -> tuple | None:
    """Options as a hashable tuple of items (the algorithm cache's key)."""
    return tuple(sorted(options.items())) if options else None


def fit_one_shot(
    model: HierarchicalModel,
    data,
    *,
    sites: str = "effects",
    tilted: str | None = None,
    site_fit: str | None = None,
    seed: int = 0,
    global_method: str = "nuts",
    num_chains: int = 4,
    num_warmup: int | None = None,
    num_samples: int = 1000,
    mh_steps: int = 5,
    progress: bool = True,
    effect_options: dict | None = None,
    precision_cap: float | None = None,
) -> FitResult:
    """One-shot posterior-summary exchange: EP's first round, undamped.

    With ``sites="effects"`` (default) each client moment-matches a Gaussian site over
    its own effects (and the shared likelihood parameters) against the population
    predictive under the hyper-prior, and the server integrates the population
    exactly: the exact posterior when every client's likelihood is Gaussian in its
    effects (eight schools). With ``sites="global"`` each client summarizes its
    likelihood as a Gaussian over the global parameters at its local mode (Dutta,
    Blomstedt & Kaski 2016). Options as in :func:`fit_ep`.
    """
    check_model_data(model, data)
    mh_steps = check_steps("mh_steps", mh_steps)
    tilted, site_fit = site_options(sites, tilted, site_fit)
    num_warmup = default_warmup(sites, num_warmup)
    effect_options = with_cap(effect_options, precision_cap, sites)
    settings = {"sites": sites}
    if precision_cap is not None:
        settings.update(precision_cap=float(precision_cap))
    if sites == "global":
        settings.update(tilted=tilted, site_fit=site_fit)
    return run_fit(
        "one-shot",
        model,
        data,
        dict(rounds=1, damping=1.0, tilted=tilted, site_fit=site_fit, tol=0.0),
        settings,
        sites=sites,
        effect_options=_freeze(effect_options),
        seed=seed,
        global_method=global_method,
        num_chains=num_chains,
        num_warmup=num_warmup,
        num_samples=num_samples,
        mh_steps=mh_steps,
        progress=progress,
    )
