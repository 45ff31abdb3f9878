"""Hierarchical Bayesian networks trained by federated VI (:mod:`bayes_pfl.neural`)."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bayes_pfl.baselines.networks import build_network, get_family
from bayes_pfl.data import ClientArrays
from bayes_pfl.neural import (
    NeuralBroadcast,
    NeuralTrainingError,
    build,
    fit_neural,
)
from bayes_pfl.simulation import run_rounds

N_FEATURES, N_CLASSES, HIDDEN = 5, 3, 4


def _net(**kwargs):
    net = build_network("mlp", N_FEATURES, N_CLASSES, hidden=HIDDEN)
    return build(net, get_family("categorical", N_CLASSES), net.init(0), **kwargs)


def _client_data(n, n_max=None, seed=0):
    rng = np.random.default_rng(seed)
    n_max = n if n_max is None else n_max
    x = np.zeros((n_max, N_FEATURES))
    y = np.zeros(n_max)
    x[:n] = rng.standard_normal((n, N_FEATURES))
    y[:n] = (x[:n, 0] > 0) + (x[:n, 1] > 0.5)
    return ClientArrays(jnp.asarray(x), jnp.asarray(y), jnp.asarray(np.arange(n_max) < n))


def _federation(k=4, n=25):
    parts = [_client_data(n, seed=i) for i in range(k)]
    return ClientArrays(*(jnp.stack(a) for a in zip(*parts, strict=True)))


def _one_client(hn, data, cavity_mean, cavity_var, tau, seed=0, start=None):
    alg = hn.algorithm
    state = alg.client_init(jax.random.key(0), data)
    if start is not None:
        state = state._replace(head_mean=start)
    server = alg.server_init(jax.random.key(0), 1)
    body = jax.tree.map(lambda a: a[0], alg.broadcast(server).body)
    bcast = NeuralBroadcast(body, {}, cavity_mean, cavity_var, jnp.asarray(tau), jnp.asarray(0.1))
    return jax.jit(alg.client_update)(jax.random.key(seed), bcast, state, data)


def test_tau_to_zero_pins_client_head_to_population():
    """tau -> 0 (and a certain population head): w_k equals w_global, a shared head."""
    hn = _net(tau=1e-4, local_steps=40, learning_rate=0.01)
    data = _client_data(30)
    dim = hn.algorithm.client_init(jax.random.key(0), data).head_mean.shape[0]
    m = jnp.asarray(np.random.default_rng(1).standard_normal(dim))
    # started at the population head, the data cannot move it; a large tau would
    state, msg, _ = _one_client(hn, data, m, jnp.full(dim, 1e-8), 1e-4, start=m)
    np.testing.assert_allclose(state.head_mean, m, atol=5e-3)
    free, _, _ = _one_client(hn, data, m, jnp.full(dim, 1e-8), 10.0, start=m)
    assert float(jnp.max(jnp.abs(free.head_mean - m))) > 0.1
    # the site over w_global is the data factor itself when tau = 0 (precision <= 1/tau^2)
    assert np.all(np.asarray(msg.site.precision) <= 1e8 + 1e-6)


def test_tau_to_infinity_gives_independent_local_heads():
    """tau -> inf: the client's head ignores the population and sends (nearly) nothing."""
    hn = _net(tau=1e4, local_steps=30, learning_rate=0.05)
    data = _client_data(30)
    dim = hn.algorithm.client_init(jax.random.key(0), data).head_mean.shape[0]
    rng = np.random.default_rng(2)
    out = [
        _one_client(hn, data, jnp.asarray(5 * rng.standard_normal(dim)), jnp.full(dim, 0.01), 1e4)
        for _ in range(2)
    ]
    np.testing.assert_allclose(out[0][0].head_mean, out[1][0].head_mean, atol=1e-6)
    assert float(jnp.max(out[0][1].site.precision)) < 1e-7


def test_federated_limits_shared_vs_independent_heads():
    """After federated rounds, tiny tau gives one shared head, large tau distinct local heads."""
    data = _federation()
    spread = {}
    for tau in (1e-3, 10.0):
        hn = _net(tau=tau, local_steps=15, learning_rate=0.05, damping=1.0)
        res = run_rounds(
            hn.algorithm, data, rounds=5, labels=list("abcd"), on_rejected="raise", progress=False
        )
        means = np.asarray(res.client_states.head_mean)
        spread[tau] = float(np.mean(np.std(means, axis=0)))
    assert spread[1e-3] < 0.5 * spread[10.0]


def test_message_shape_does_not_depend_on_data_size():
    hn = _net(local_steps=3)
    dim = hn.algorithm.client_init(jax.random.key(0), _client_data(1)).head_mean.shape[0]
    shapes = []
    for n, n_max in ((1, 1), (7, 40), (0, 5)):
        _, msg, _ = _one_client(hn, _client_data(n, n_max), jnp.zeros(dim), jnp.ones(dim), 0.1)
        shapes.append([np.shape(leaf) for leaf in jax.tree.leaves(msg)])
    assert shapes[0] == shapes[1] == shapes[2]


def test_nan_loss_is_caught_naming_the_client():
    data = _federation(k=3)
    x = np.asarray(data.x).copy()
    x[1, 0, 0] = np.nan
    bad = ClientArrays(jnp.asarray(x), data.y, data.mask)
    with pytest.raises(NeuralTrainingError, match=r"'b'.*NaN or infinite local loss") as err:
        run_rounds(
            _net(local_steps=2).algorithm, bad, rounds=2, labels=list("abc"), on_rejected="raise"
        )
    assert err.value.clients == ("b",)


def test_exploding_factor_is_caught_naming_the_client():
    data = _federation(k=2)
    hn = _net(local_steps=2, max_precision=1e-6)
    with pytest.raises(NeuralTrainingError, match="exploding factor") as err:
        run_rounds(
            hn.algorithm,
            data,
            rounds=2,
            labels=["x1", "x2"],
            progress=False,
            on_rejected="raise",
            stop_when_converged=False,
        )
    assert set(err.value.clients) == {"x1", "x2"}


@pytest.mark.parametrize("variant", ["bayes_head", "bayes_head_bn", "bayes_head_adapters"])
def test_fit_neural_predictive_and_cold_start(variant):
    from bayes_pfl.datasets.digits import make_digits_federation

    data = make_digits_federation(n_clients=4, seed=0)
    fit = fit_neural(data, variant=variant, rounds=2, local_steps=3, hidden=(8,), tau=0.5)
    test = data.arrays("test")
    p = fit.predict(test.x, test.mask, n_draws=4)
    assert p.shape == test.mask.shape + (10,)
    np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-6)
    new = fit.predict_new(test.x[:2], test.mask[:2], n_draws=4)
    assert new.shape == (2, test.mask.shape[1], 10)
    assert np.all(fit.population_var >= fit.tau**2)
    assert fit.head_mean.shape == fit.head_sd.shape == (4, 8 * 10 + 10)
    assert len(fit.history) == 2


def test_neural_predictions_compile_once_per_fit(caplog):
    """A second prediction of the same fit (other rows, same shapes) reuses the compiled
    predictive: a wrapper made per call compiled again every time."""
    from bayes_pfl.datasets.digits import make_digits_federation

    data = make_digits_federation(n_clients=3, seed=1)
    fit = fit_neural(data, rounds=1, local_steps=2, hidden=(4,))
    test = data.arrays("test")
    for first in (True, False):
        x = test.x if first else test.x[:, ::-1]  # other rows, same shape
        caplog.clear()
        with caplog.at_level(logging.WARNING), jax.log_compiles(True):
            p = fit.predict(x, test.mask, n_draws=3)
            fit.predict_new(x[:2], test.mask[:2], n_draws=3)
        compiled = [r.getMessage() for r in caplog.records if "Compiling" in r.getMessage()]
        assert bool(compiled) == first, compiled
    np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-6)


def test_unknown_variant():
    from bayes_pfl.datasets.digits import make_digits_federation

    with pytest.raises(ValueError, match="unknown variant"):
        fit_neural(make_digits_federation(n_clients=3, seed=0), variant="nope")


def test_body_optimizer_and_head_learning_rate_are_separate():
    """``optimizer`` and ``learning_rate`` move the body only; the variational head has its
    own Adam: with a zero body rate the body stays put while the head still learns, and
    with a zero head rate the head stays put while SGD moves the body."""
    data = _client_data(30)
    dim = _net().algorithm.client_init(jax.random.key(0), data).head_mean.shape[0]
    cavity = (jnp.zeros(dim), jnp.ones(dim))
    frozen_body = _net(optimizer="sgd", learning_rate=0.0, head_learning_rate=0.05)
    state0 = frozen_body.algorithm.client_init(jax.random.key(0), data)
    state, _, _ = _one_client(frozen_body, data, *cavity, 0.1)
    for k, v in state.params.items():
        np.testing.assert_array_equal(v, state0.params[k], err_msg=k)
    assert float(jnp.max(jnp.abs(state.head_mean - state0.head_mean))) > 1e-3

    frozen_head = _net(optimizer="sgd", learning_rate=0.5, head_learning_rate=0.0)
    state, _, _ = _one_client(frozen_head, data, *cavity, 0.1)
    np.testing.assert_array_equal(state.head_mean, state0.head_mean)
    np.testing.assert_array_equal(state.head_raw_sd, state0.head_raw_sd)
    moved = max(float(jnp.max(jnp.abs(v - state0.params[k]))) for k, v in state.params.items())
    assert moved > 1e-3


def test_fit_neural_with_sgd_body_learns_and_records_it():
    from bayes_pfl.datasets.digits import make_digits_federation

    data = make_digits_federation(n_clients=4, seed=0)
    fit = fit_neural(data, rounds=3, local_steps=5, optimizer="sgd", lr=0.2, hidden=(8,))
    assert fit.hparams["optimizer"] == "sgd" and fit.hparams["head_lr"] is None
    test = data.arrays("test")
    acc = np.nanmean(
        np.asarray(fit.predict(test.x, test.mask)).argmax(-1) == test.y, where=test.mask
    )
    assert acc > 0.3  # chance is 0.1
    with pytest.raises(ValueError, match="unknown optimizer"):
        fit_neural(data, rounds=1, local_steps=1, optimizer="rmsprop")
