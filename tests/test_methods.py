"""The method registry: one name, one entry, read by every front end."""

import inspect
from pathlib import Path

import pytest

from bayes_pfl.baselines import BASELINE_NAMES
from bayes_pfl.federated import effect_algorithm, ep_algorithm, fit_ep, particle_algorithm
from bayes_pfl.methods import (
    FRONT_ENDS,
    KINDS,
    UnknownMethod,
    get_method,
    method_names,
    method_table,
)
from bayes_pfl.models import eight_schools
from bayes_pfl.neural import VARIANTS

DOCS = Path(__file__).resolve().parents[1] / "docs" / "methods.md"


def test_every_method_has_one_entry():
    names = method_names()
    assert len(names) == len(set(names))
    expected = {"nuts", "one-shot", "ep", "vi", "constant", *BASELINE_NAMES, *VARIANTS}
    assert set(names) == expected
    for name in names:
        info = get_method(name)
        assert info.name == name and info.kind in KINDS
        assert set(info.front_ends) <= set(FRONT_ENDS)
        # a front end a method does not run on says why
        assert {end for end, _ in info.not_in} == set(FRONT_ENDS) - set(info.front_ends)
        # a method that runs on Flower has rounds to run
        assert (info.phases is not None) == ("flower" in info.front_ends)


def test_unknown_method_names_the_known_ones():
    with pytest.raises(UnknownMethod, match=r"unknown method 'nope'.*ep.*fedavg.*bayes_head"):
        get_method("nope")
    with pytest.raises(UnknownMethod, match="does not run on flower: pools every"):
        get_method("nuts", "flower")
    with pytest.raises(ValueError, match="front_end must be one of"):
        get_method("ep", "web")


def test_options_are_the_fit_functions_defaults():
    """A default is written once: the registry reads it from the fit function."""
    ep = get_method("ep").options
    params = inspect.signature(fit_ep).parameters
    assert ep["rounds"] == params["rounds"].default == 10
    assert ep["num_chains"] == params["num_chains"].default
    assert "model" not in ep and "data" not in ep and "seed" not in ep
    assert get_method("nuts").options["num_warmup"] == 1000
    assert get_method("fedavg").options["rounds"] == 50


def test_ep_phases_are_the_in_process_ones():
    """Flower runs the phases fit_ep runs: the same (memoized) algorithm objects."""
    model = eight_schools()
    ep = get_method("ep")
    phase, extra = ep.phases(model=model, **ep.options)  # the default summary: "auto"
    assert phase.algorithm is effect_algorithm(model, damping=1.0, tol=0.05)
    assert phase.rounds == 10 and phase.tag == {"sites": "effects"}
    assert extra.algorithm is particle_algorithm(
        model, phase.algorithm, mode="auto", n_particles=256
    )
    assert extra.rounds == 1 and extra.warm_start
    (shot,) = get_method("one-shot").phases(model=model, **get_method("one-shot").options)
    assert shot.rounds == 1 and shot.algorithm is effect_algorithm(model, damping=1.0, tol=0.0)
    nuts_tilted = ep.phases(model=model, **{**ep.options, "sites": "global", "tilted": "nuts"})
    assert [p.tag for p in nuts_tilted] == [{"tilted": "laplace"}, {"tilted": "nuts"}]
    assert nuts_tilted[1].warm_start and not nuts_tilted[0].warm_start
    assert nuts_tilted[1].algorithm is ep_algorithm(
        model, tilted="nuts", damping=0.8, tol=0.05, site_fit="gradient", site_points=None
    )
    vi = get_method("vi")
    (vphase,) = vi.phases(model=model, **vi.options)
    assert vphase.algorithm is effect_algorithm(
        model, damping=1.0, tol=0.05, local="vi", vi_iterations=10
    )
    with pytest.raises(TypeError, match=r"'one-shot' has no option\(s\) \['rounds'\]; its options"):
        get_method("one-shot").fit(None, model=model, rounds=3)
    with pytest.raises(UnknownMethod, match="sites='global' VI runs in process only"):
        vi.phases(model=model, **{**vi.options, "sites": "global"})


def test_docs_table_is_generated_from_the_registry():
    table = method_table()
    for name in method_names():
        assert f"| `{name}` |" in table
    assert table in DOCS.read_text(), (
        "docs/methods.md is out of date: regenerate it with "
        "`python -c 'from bayes_pfl.methods import method_table; print(method_table())'`"
    )


def test_front_ends_list_the_registry():
    """The command line's and compare's method lists are the registry's."""
    from bayes_pfl.cli.fit import METHODS as FIT_METHODS
    from bayes_pfl.compare import BAYESIAN_METHODS

    posterior = (*method_names(kind="reference"), *method_names(kind="federated"))
    assert set(FIT_METHODS) == set(posterior) == set(BAYESIAN_METHODS)
    assert set(method_names("compare")) == set(method_names())


def test_flower_runs_the_registry():
    """Flower's posterior methods are the registry's federated ones; its phases come from it."""
    from bayes_pfl.flower.config import METHODS, FlowerSettings, build_phases

    assert set(METHODS) == set(method_names(kind="federated"))
    settings = FlowerSettings(data="eight_schools", method="vi", rounds=3)
    (phase,) = build_phases(settings)
    model = settings.hierarchical_model
    assert phase.algorithm is effect_algorithm(
        model, damping=1.0, tol=0.05, local="vi", vi_iterations=10
    )
    assert phase.rounds == 3
    base = build_phases(FlowerSettings(data="radon", method="fedavg", rounds=2))
    assert base[0].rounds == 2 and base[0].algorithm.name == "fedavg"
    with pytest.raises(ValueError, match="does not run on flower: pools every"):
        build_phases(FlowerSettings(data="eight_schools", method="nuts"))


@pytest.mark.slow
def test_every_method_runs_through_its_front_ends():
    """The registry walked on a tiny binary federation: every method fits and predicts
    through compare (the CLI's ``compare`` runs the same ``make_method``), and every
    method that runs on Flower runs the phases Flower would run (``build_phases`` over the
    driver in process; the transport itself is tested in test_flower.py)."""
    import numpy as np
    from _helpers import federation_data

    from bayes_pfl.compare import make_method
    from bayes_pfl.flower.config import FlowerSettings, _federated_data, build_phases
    from bayes_pfl.simulation import run_phases
    from bayes_pfl.synthetic import make_federation

    data = federation_data(
        make_federation(family="bernoulli", n_clients=4, n_features=2, sizes=12, seed=0),
        test_size=0.25,
        seed=0,
    )
    quick = {
        "reference": dict(num_chains=1, num_warmup=100, num_samples=100),
        "federated": dict(rounds=2, num_chains=1, num_warmup=100, num_samples=100),
        "baseline": dict(rounds=2),
        "neural": dict(rounds=2, local_steps=2, hidden=4),
        "constant": {},
    }
    for name in method_names("compare"):
        info = get_method(name)
        options = {k: v for k, v in quick[info.kind].items() if k in info.options}
        method = make_method(name, family="bernoulli", **options)
        pred = method.fit_fn(data, 0).predict(data.test)
        p = np.asarray(pred.mean)[np.asarray(data.test.mask)]
        assert p.size and np.all((p >= 0) & (p <= 1)), name
    import warnings

    for name in method_names("flower"):
        # Flower's defaults (standardize = true): eight schools' sigma is left raw
        settings = FlowerSettings(data="eight_schools", method=name, rounds=2)
        table = _federated_data(settings)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = run_phases(
                build_phases(settings), table.train, labels=table.clients, progress=False
            )
        assert out.history and all(np.isfinite(h["wall_time_s"]) for h in out.history), name
        assert not [w for w in caught if "contribut" in str(w.message)], name
