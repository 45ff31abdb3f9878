r"""Hierarchical Bayesian neural networks (Flax NNX) trained by federated variational inference.

Model
-----
Every client ``k`` shares a deterministic *body* (the hidden layers of a
:func:`~bayes_pfl.baselines.networks.build_network` MLP) and owns a *head*
(the last linear layer, flattened to :math:`w_k \in \mathbb{R}^P`) drawn from
a population distribution:

.. math::

    w_{\text{global}} \sim \mathcal{N}(0, s_0^2 I), \qquad
    w_k \mid w_{\text{global}} \sim \mathcal{N}(w_{\text{global}}, \tau^2 I), \qquad
    y_{ki} \mid w_k \sim \text{Categorical}(\text{softmax}(f_{\text{body}}(x_{ki}) w_k)).

Inference (partitioned VI, Ashman et al. 2022, *Partitioned variational
inference: a framework for probabilistic federated learning*; Bui et al. 2018)
------------------------------------------------------------------------------
The server keeps a diagonal Gaussian :math:`q(w_{\text{global}}) = p(w_{\text{global}})
\prod_k t_k(w_{\text{global}})` as natural parameters
(:class:`~bayes_pfl.gaussian.GaussianFactor`) and one site :math:`t_k` per client.
Client ``k`` receives its *cavity* :math:`q_{-k} = q / t_k = \mathcal{N}(m_{-k}, V_{-k})`
and the body, and maximizes by reparameterized gradients (optax Adam)

.. math::

    \mathcal{L}_k = \mathbb{E}_{q(w_k)} \log p(D_k \mid \text{body}, w_k)
        - \mathrm{KL}\big(q(w_k) \,\|\, \mathcal{N}(m_{-k}, V_{-k} + \tau^2)\big)

over a mean-field :math:`q(w_k) = \mathcal{N}(\mu_k, \operatorname{diag}\sigma_k^2)`
(kept in the client's state) and the body (a point estimate). The data's
contribution is the Gaussian :math:`\ell_k(w_k) = q(w_k) / \mathcal{N}(m_{-k}, V_{-k}+\tau^2)`
with precision :math:`\lambda_k` (floored at 0) and mean :math:`m_k`, and the
client's new site over :math:`w_{\text{global}}` integrates :math:`w_k` out exactly:

.. math::

    t_k(w_{\text{global}}) = \int \ell_k(w_k)\, \mathcal{N}(w_k; w_{\text{global}}, \tau^2)\, dw_k
    \;\Rightarrow\; \Lambda_{t_k} = \frac{\lambda_k}{1 + \tau^2 \lambda_k}, \quad
    \eta_{t_k} = \frac{\lambda_k m_k}{1 + \tau^2 \lambda_k}.

Its precision is at most :math:`1/\tau^2`; its shape never depends on the
client's data size. The server damps the sites
(:func:`~bayes_pfl.gaussian.damp`), multiplies them into :math:`q(w_{\text{global}})`
and averages the body updates weighted by row counts (FedAvg). Limits:
:math:`\tau \to 0` pins every :math:`w_k` to :math:`w_{\text{global}}` (one
shared Bayesian head fitted by PVI); :math:`\tau \to \infty` makes every
client's prior flat and its site zero (independent local heads).

Variants (:data:`VARIANTS`)
---------------------------
``"bayes_head"``
    (a) an MLP body shared by FedAvg and a Bayesian head per client.
``"bayes_head_bn"``
    (c) an MLP with BatchNorm whose scale, bias and running statistics stay
    with the client (FedBN, Li et al. 2021), the rest of the body shared, and
    a Bayesian head per client.
``"bayes_head_adapters"``
    (b) (a) plus a personal rank-2 adapter on every hidden kernel,
    :math:`W_k = W + A_k B_k`, with the hierarchical shrinkage prior
    :math:`A_k, B_k \sim \mathcal{N}(0, s^2)` whose population scale :math:`s`
    is re-estimated by the server every round (empirical Bayes); the factors
    are MAP estimates per client, and a new client starts from :math:`W`.

Every variant takes ``kl_weight`` (a tempered, "cold" client posterior when
below 1; Wenzel et al. 2020, *How good is the Bayes posterior in deep neural
networks really?*).

Prediction
----------
A client's posterior predictive averages the softmax over ``S`` draws of
:math:`w_k \sim q(w_k)`; a new client (cold start) draws
:math:`w_{\text{new}} \sim \mathcal{N}(\mathbb{E}[w_{\text{global}}],
\operatorname{Var}[w_{\text{global}}] + \tau^2)` and uses the row-weighted mean of
the clients' normalization layers.

Examples
--------
>>> from bayes_pfl.datasets.digits import make_digits_federation
>>> data = make_digits_federation(n_clients=4, seed=0)
>>> fit = fit_neural(data, rounds=2, local_steps=2, hidden=(8,))
>>> fit.predict(data.arrays("test").x, data.arrays("test").mask).shape[-1]
10
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from bayes_pfl import gaussian
from bayes_pfl.algorithms import Algorithm
from bayes_pfl.baselines.fit import checked_rows, class_count
from bayes_pfl.baselines.networks import (
    Family,
    Network,
    Params,
    build_network,
    get_family,
    masked_mean_loss,
)
from bayes_pfl.baselines.training import (
    accuracy_of,
    keep_where,
    make_optimizer,
    stack_copies,
    weighted_average,
)
from bayes_pfl.data import DataError, FederatedData
from bayes_pfl.gaussian import GaussianFactor
from bayes_pfl.simulation import ClientError, run_rounds

__all__ = [
    "VARIANTS",
    "ClientCheck",
    "HierarchicalNetwork",
    "NeuralBroadcast",
    "NeuralClientInfo",
    "NeuralClientState",
    "NeuralFit",
    "NeuralMessage",
    "NeuralServerInfo",
    "NeuralServerState",
    "NeuralTrainingError",
    "build",
    "fit_neural",
]

Array = jax.Array

VARIANTS: dict[str, dict[str, Any]] = {
    "bayes_head": {"network": "mlp", "local_roles": ()},
    "bayes_head_bn": {"network": "mlp_bn", "local_roles": ("norm", "stat")},
    "bayes_head_adapters": {"network": "mlp", "local_roles": (), "adapter_rank": 2},
}
"""Variant name -> network and the roles of the leaves that stay with the client
(besides the Bayesian head)."""


NeuralTrainingError = ClientError
_REASONS = (
    (".check.loss", "NaN or infinite local loss"),
    (".check.factor_bound", "exploding factor over w_global"),
)
"""A client's local training produced a NaN loss or an exploding factor: the driver's
:class:`~bayes_pfl.simulation.ClientError` (``clients`` holds the offending labels)."""


class NeuralServerState(NamedTuple):
    body: Params  # shared parameter leaves (body, and norms unless local)
    stats: Params  # shared BatchNorm statistics (empty when local or absent)
    prior: GaussianFactor  # p(w_global), diagonal, [P]
    sites: GaussianFactor  # t_k(w_global), diagonal, [K, P]
    log_tau: Array  # scalar
    log_adapter_sd: Array  # scalar: population sd of the adapter factors (variant b)


class NeuralBroadcast(NamedTuple):
    body: Params
    stats: Params
    cavity_mean: Array  # [P]
    cavity_var: Array  # [P]
    tau: Array  # scalar
    adapter_sd: Array  # scalar


class NeuralClientState(NamedTuple):
    params: Params  # the client's last local model leaves other than the head
    stats: Params
    head_mean: Array  # [P]
    head_raw_sd: Array  # [P], sd = softplus(raw)
    adapters: Params  # "<kernel key>.a" [in, r], "<kernel key>.b" [r, out] (empty without)
    n: Array  # training rows


class ClientCheck(NamedTuple):
    """Health of a client's round; a NaN field makes the driver reject the message."""

    loss: Array  # final local loss (NaN when it diverged)
    factor_bound: Array  # largest |site| value, NaN when above the bound (exploding)


class NeuralMessage(NamedTuple):
    check: ClientCheck  # first: the driver names the first non-finite field
    site: GaussianFactor  # t_k(w_global), diagonal [P]
    body: Params
    stats: Params
    weight: Array  # training rows
    sq_dev: Array  # mean over head dims of E_q (w_k - m_cavity)^2 (for learn_tau)
    adapter_sq: Array  # mean squared adapter factor entry (for the shrinkage scale)
    accuracy: Array


class NeuralClientInfo(NamedTuple):
    loss: Array


class NeuralServerInfo(NamedTuple):
    loss: Array
    accuracy: Array
    tau: Array
    adapter_sd: Array
    n_active: Array


class HierarchicalNetwork(NamedTuple):
    """An :class:`~bayes_pfl.algorithms.Algorithm` and how to read models out of its states."""

    algorithm: Algorithm
    network: Network
    family: Family
    head_keys: tuple[str, ...]
    unravel_head: Any  # flat head vector -> {"head.bias": ..., "head.kernel": ...}
    personal_fn: Any  # (server_state, client_states) -> (params without head, stats, q mean, q sd)
    population_fn: Any  # (server_state, client_states) -> (params, stats, mean, var incl. tau^2)


def _softplus_inv(y):
    return y + jnp.log(-jnp.expm1(-y))


def build(
    network: Network,
    family: Family,
    init: tuple[Params, Params],
    *,
    local_roles: tuple[str, ...] = (),
    tau: float = 0.1,
    learn_tau: bool = False,
    adapter_rank: int = 0,
    adapter_sd: float = 0.1,
    learn_adapter_sd: bool = True,
    prior_sd: float = 1.0,
    kl_weight: float = 1.0,
    local_steps: int = 20,
    learning_rate: float = 0.01,
    optimizer: str = "adam",
    head_learning_rate: float | None = None,
    mc_samples: int = 1,
    damping: float = 0.5,
    init_sd: float = 0.01,
    min_tau: float = 1e-3,
    max_precision: float = 1e10,
    max_abs_shift: float = 1e10,
    name: str = "hbnn",
) -> HierarchicalNetwork:
    """Build the federated-VI algorithm of a hierarchical Bayesian network (module docstring).

    Parameters
    ----------
    network, family
        The model (:func:`~bayes_pfl.baselines.networks.build_network`,
        :func:`~bayes_pfl.baselines.networks.get_family`); leaves with role
        ``"head"`` form the Bayesian head.
    init : (params, stats)
        Starting network.
    local_roles : tuple of str
        Roles (besides ``"head"``) that stay with the client: ``("norm", "stat")``
        for FedBN-style normalization.
    tau : float
        Population sd of the head weights around :math:`w_{\\text{global}}`
        (the starting value when ``learn_tau``).
    learn_tau : bool
        Re-estimate :math:`\\tau^2` every round as the row-weighted mean of the
        clients' :math:`\\mathbb{E}_q (w_k - m_{-k})^2` (empirical Bayes), floored at ``min_tau``.
    adapter_rank : int
        Variant (b): rank ``r`` of a personal low-rank adapter on every hidden
        kernel, ``W_k = W + A_k B_k`` (0: none). The factors have the
        hierarchical shrinkage prior ``A_k, B_k ~ N(0, s^2)`` with one
        population scale ``s`` (MAP per client).
    adapter_sd : float
        Starting population scale ``s``.
    learn_adapter_sd : bool
        Re-estimate ``s^2`` every round as the row-weighted mean squared
        factor entry over the clients (empirical Bayes), floored at ``min_tau``.
    prior_sd : float
        Prior sd :math:`s_0` of :math:`w_{\\text{global}}`.
    kl_weight : float
        Temperature :math:`T` of the client posterior: the local loss is
        ``mean NLL + T * (KL + shrinkage) / n_k`` (1: the ELBO; below 1: a cold
        posterior, Wenzel et al. 2020, whose sites count the data ``1/T`` times).
    local_steps, learning_rate, mc_samples
        Optimizer steps per round on the client's full batch, the learning rate of
        the network's point-estimated leaves (body, normalization, adapters), and
        reparameterized draws of :math:`w_k` per step.
    optimizer : {"adam", "sgd"}
        Optimizer of the point-estimated leaves
        (:func:`~bayes_pfl.baselines.training.make_optimizer`, the baselines' choices).
    head_learning_rate : float, optional
        Adam's learning rate for the variational head :math:`q(w_k)` (mean and sd
        are always fitted by Adam: the sd's gradient is scaled by ``1/n_k`` and
        plain SGD would barely move it). Default: ``learning_rate`` with Adam, 0.01
        otherwise.
    damping : float
        Site damping :math:`\\delta \\in (0, 1]` (1: no damping).
    init_sd : float
        Starting sd of :math:`q(w_k)`.
    max_precision, max_abs_shift : float
        A site whose precision or shift exceeds these is *exploding*; the
        driver rejects it and :func:`fit_neural` raises :class:`NeuralTrainingError`.
    """
    params0, stats0 = init
    head_keys = tuple(k for k in params0 if network.roles[k] == "head")
    if not head_keys:
        raise ValueError(f"network {network.name!r} has no head leaves")
    head0, unravel = ravel_pytree({k: params0[k] for k in head_keys})
    dim = head0.shape[0]
    dtype = head0.dtype
    shared_p = tuple(k for k in params0 if network.roles[k] not in ("head", *local_roles))
    shared_s = tuple(k for k in stats0 if network.roles[k] not in local_roles)
    if head_learning_rate is None:
        head_learning_rate = learning_rate if optimizer == "adam" else 0.01
    tx = optax.multi_transform(
        {
            "point": make_optimizer(optimizer, learning_rate),
            "head": optax.adam(head_learning_rate),
        },
        {"params": "point", "adapters": "point", "mean": "head", "raw_sd": "head"},
    )
    prior = GaussianFactor(jnp.full(dim, 1.0 / prior_sd**2, dtype), jnp.zeros(dim, dtype))
    adapted = (
        tuple(k for k in params0 if network.roles[k] == "body" and k.endswith(".kernel"))
        if adapter_rank > 0
        else ()
    )

    def with_adapters(params: Params, adapters: Params) -> Params:
        out = dict(params)
        for k in adapted:
            out[k] = params[k] + adapters[k + ".a"] @ adapters[k + ".b"]
        return out

    def adapters_init(rng_key: Array) -> Params:
        out = {}
        for i, k in enumerate(adapted):
            fan_in, fan_out = params0[k].shape
            key = jax.random.fold_in(rng_key, i)
            a = jax.random.normal(key, (fan_in, adapter_rank), dtype) / jnp.sqrt(fan_in)
            out[k + ".a"] = a
            out[k + ".b"] = jnp.zeros((adapter_rank, fan_out), dtype)  # W_k = W at the start
        return out

    def server_init(rng_key: Array, n_clients: int) -> NeuralServerState:
        del rng_key
        zeros = jnp.zeros((n_clients, dim), dtype)
        return NeuralServerState(
            {k: params0[k] for k in shared_p},
            {k: stats0[k] for k in shared_s},
            prior,
            GaussianFactor(zeros, zeros),
            jnp.log(jnp.asarray(tau, dtype)),
            jnp.log(jnp.asarray(adapter_sd, dtype)),
        )

    def broadcast(state: NeuralServerState) -> NeuralBroadcast:
        k = state.sites.shift.shape[0]
        q = gaussian.multiply(state.prior, gaussian.product(state.sites, axis=0))
        cavity = gaussian.divide(q, state.sites)  # proper: sites have precision >= 0
        mean, var = gaussian.to_moments(cavity)
        tau_now = jnp.exp(state.log_tau)
        return NeuralBroadcast(
            stack_copies(state.body, k),
            stack_copies(state.stats, k),
            mean,
            var,
            jnp.broadcast_to(tau_now, (k,)),
            jnp.broadcast_to(jnp.exp(state.log_adapter_sd), (k,)),
        )

    def client_init(rng_key: Array, data) -> NeuralClientState:
        local = {k: v for k, v in params0.items() if k not in head_keys}
        return NeuralClientState(
            local,
            dict(stats0),
            head0,
            jnp.full(dim, _softplus_inv(jnp.asarray(init_sd, dtype))),
            adapters_init(rng_key),
            jnp.sum(data[2]).astype(dtype),
        )

    def loss_fn(z, stats, eps, data, prior_mean, prior_var, a_sd, n):
        x, y, mask = data
        sd = jax.nn.softplus(z["raw_sd"])
        bn_mask = jnp.where(jnp.any(mask), mask, True)
        body = with_adapters(z["params"], z["adapters"])

        def nll(e):
            w = z["mean"] + sd * e
            params = {**body, **unravel(w)}
            eta, new_stats = network.apply(params, stats, x, bn_mask, True)
            return masked_mean_loss(family, eta, y, mask), (new_stats, eta)

        nlls, (new_stats, etas) = jax.vmap(nll)(eps)
        kl = 0.5 * jnp.sum(
            (sd**2 + (z["mean"] - prior_mean) ** 2) / prior_var
            - 1.0
            + jnp.log(prior_var)
            - 2.0 * jnp.log(sd)
        )
        shrink = 0.5 * sum(jnp.sum(v**2) for v in z["adapters"].values()) / a_sd**2
        value = jnp.mean(nlls) + kl_weight * (kl + shrink) / jnp.maximum(n, 1.0)
        return value, (jax.tree.map(lambda a: a[0], new_stats), etas[0])

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def client_update(rng_key: Array, bcast: NeuralBroadcast, state: NeuralClientState, data):
        _, y, mask = data
        tau2 = bcast.tau**2
        prior_var = bcast.cavity_var + tau2
        prior_mean = bcast.cavity_mean
        params = {**state.params, **bcast.body}
        stats = {**state.stats, **bcast.stats}
        z = {
            "params": params,
            "mean": state.head_mean,
            "raw_sd": state.head_raw_sd,
            "adapters": state.adapters,
        }

        def step(carry, key):
            z, stats, opt_state = carry
            eps = jax.random.normal(key, (mc_samples, dim), dtype)
            (value, (new_stats, eta)), grads = grad_fn(
                z, stats, eps, data, prior_mean, prior_var, bcast.adapter_sd, state.n
            )
            updates, opt_state = tx.update(grads, opt_state, z)
            z = optax.apply_updates(z, updates)
            return (z, new_stats, opt_state), (value, accuracy_of(family, eta, y, mask))

        keys = jax.random.split(rng_key, local_steps)
        (z, new_stats, _), (losses, accs) = jax.lax.scan(step, (z, stats, tx.init(z)), keys)
        sd2 = jax.nn.softplus(z["raw_sd"]) ** 2
        # data factor l_k = q(w_k) / N(prior_mean, prior_var), precision floored at 0
        lam_raw = 1.0 / sd2 - 1.0 / prior_var
        eta_l = z["mean"] / sd2 - prior_mean / prior_var
        lam = jnp.maximum(lam_raw, 0.0)
        denom = 1.0 + tau2 * lam
        site = GaussianFactor(lam / denom, jnp.where(lam_raw > 0, eta_l / denom, 0.0))
        site = keep_where(
            state.n > 0, site, GaussianFactor(jnp.zeros_like(lam), jnp.zeros_like(lam))
        )
        bound = jnp.maximum(jnp.max(jnp.abs(site.precision)), jnp.max(jnp.abs(site.shift)))
        exploding = (jnp.max(site.precision) > max_precision) | (
            jnp.max(jnp.abs(site.shift)) > max_abs_shift
        )
        sq_dev = jnp.mean((z["mean"] - prior_mean) ** 2 + sd2)
        leaves = jax.tree.leaves(z["adapters"])
        adapter_sq = (
            sum(jnp.sum(v**2) for v in leaves) / sum(v.size for v in leaves)
            if leaves
            else jnp.zeros((), dtype)
        )
        new_state = NeuralClientState(
            {k: v for k, v in z["params"].items()},
            new_stats,
            z["mean"],
            z["raw_sd"],
            z["adapters"],
            state.n,
        )
        message = NeuralMessage(
            ClientCheck(losses[-1], jnp.where(exploding, jnp.nan, bound)),
            site,
            {k: z["params"][k] for k in shared_p},
            {k: new_stats[k] for k in shared_s},
            state.n,
            sq_dev,
            adapter_sq,
            accs[-1],
        )
        return new_state, message, NeuralClientInfo(losses[-1])

    def server_update(rng_key: Array, state: NeuralServerState, messages: NeuralMessage, accept):
        del rng_key
        w = jnp.where(accept, messages.weight, 0.0)
        new_sites = gaussian.damp(state.sites, messages.site, damping)
        keep = accept[:, None]
        sites = GaussianFactor(
            jnp.where(keep, new_sites.precision, state.sites.precision),
            jnp.where(keep, new_sites.shift, state.sites.shift),
        )
        body = weighted_average(messages.body, w, state.body)
        stats = weighted_average(messages.stats, w, state.stats)
        total = jnp.maximum(jnp.sum(w), 1e-12)
        if learn_tau:
            tau2 = jnp.sum(w * jnp.nan_to_num(messages.sq_dev)) / total
            log_tau = jnp.where(
                jnp.sum(w) > 0, 0.5 * jnp.log(jnp.maximum(tau2, min_tau**2)), state.log_tau
            )
        else:
            log_tau = state.log_tau
        log_a = state.log_adapter_sd
        if adapted and learn_adapter_sd:
            s2 = jnp.sum(w * jnp.nan_to_num(messages.adapter_sq)) / total
            log_a = jnp.where(jnp.sum(w) > 0, 0.5 * jnp.log(jnp.maximum(s2, min_tau**2)), log_a)
        info = NeuralServerInfo(
            jnp.sum(w * jnp.nan_to_num(messages.check.loss)) / total,
            jnp.sum(w * messages.accuracy) / total,
            jnp.exp(log_tau),
            jnp.exp(log_a),
            jnp.sum(w > 0),
        )
        return NeuralServerState(body, stats, state.prior, sites, log_tau, log_a), info

    def personal_fn(state: NeuralServerState, clients: NeuralClientState):
        k = clients.n.shape[0]
        params = jax.vmap(with_adapters)(
            {**clients.params, **stack_copies(state.body, k)}, clients.adapters
        )
        stats = {**clients.stats, **stack_copies(state.stats, k)}
        return params, stats, clients.head_mean, jax.nn.softplus(clients.head_raw_sd)

    def population_fn(state: NeuralServerState, clients: NeuralClientState):
        q = gaussian.multiply(state.prior, gaussian.product(state.sites, axis=0))
        mean, var = gaussian.to_moments(q)
        own_p = {k: v for k, v in clients.params.items() if k not in shared_p}
        own_s = {k: v for k, v in clients.stats.items() if k not in shared_s}
        zero_p = {k: params0[k] for k in own_p}
        zero_s = {k: stats0[k] for k in own_s}
        params = {**weighted_average(own_p, clients.n, zero_p), **state.body}
        stats = {**weighted_average(own_s, clients.n, zero_s), **state.stats}
        return params, stats, mean, var + jnp.exp(2.0 * state.log_tau)

    algorithm = Algorithm(
        server_init, client_init, client_update, server_update, broadcast, name, reasons=_REASONS
    )
    return HierarchicalNetwork(
        algorithm, network, family, head_keys, unravel, personal_fn, population_fn
    )


def _predictive_fn(net: HierarchicalNetwork, n_draws: int):
    """``f(key, params, stats, mean, sd, x, mask) -> probabilities``, one client, ``S`` draws."""

    def one(key, params, stats, mean, sd, x, mask):
        eps = jax.random.normal(key, (n_draws, mean.shape[0]), mean.dtype)

        def draw(e):
            full = {**params, **net.unravel_head(mean + sd * e)}
            eta, _ = net.network.apply(full, stats, x, mask, False)
            return net.family.mean(eta)

        return jnp.mean(jax.vmap(draw)(eps), axis=0)

    return one


class NeuralFit:
    """A fitted hierarchical Bayesian network: per-client posterior predictives and cold start.

    Attributes
    ----------
    variant : str
        One of :data:`VARIANTS`.
    hparams : dict
        Every hyper-parameter used.
    history : list of dict
        The driver's per-round entries (``loss``, ``accuracy``, ``tau``, ``wall_time_s``, ...).
    clients : tuple
        Client labels, in the order of every client axis.
    head_mean, head_sd : numpy.ndarray
        ``q(w_k)`` per client, shape ``(K, P)`` (flat head: bias then kernel).
    population_mean, population_var : numpy.ndarray
        Mean of :math:`q(w_{\\text{global}})` and the predictive variance of a
        new client's head, :math:`\\operatorname{Var}[w_{\\text{global}}] + \\tau^2`.
    tau : float
        Final population sd.
    """

    def __init__(self, net, variant, hparams, result, clients, n_features):
        self.variant = variant
        self.hparams = hparams
        self.history = result.history
        self.clients = tuple(clients)
        self._net = net
        self._n_features = n_features
        self._kernels = {}  # jitted predictives by (draws, new clients): compiled once a fit
        params, stats, mean, sd = net.personal_fn(result.server_state, result.client_states)
        self._personal = (params, stats)
        self.head_mean = np.asarray(mean)
        self.head_sd = np.asarray(sd)
        gp, gs, gmean, gvar = net.population_fn(result.server_state, result.client_states)
        self._population = (gp, gs)
        self.population_mean = np.asarray(gmean)
        self.population_var = np.asarray(gvar)
        self.tau = float(jnp.exp(result.server_state.log_tau))
        self.server_state = result.server_state
        self.client_states = result.client_states

    def __repr__(self) -> str:
        return (
            f"NeuralFit(variant={self.variant!r}, n_clients={len(self.clients)}, "
            f"rounds={len(self.history)}, tau={self.tau:.3g})"
        )

    def _kernel(self, n_draws: int, new: bool):
        """The jitted predictive of :meth:`predict` (``new=False``) or :meth:`predict_new`,
        made once per fit and number of draws (a wrapper per call compiled every time)."""
        key = (int(n_draws), new)
        if key not in self._kernels:
            one = _predictive_fn(self._net, int(n_draws))
            axes = (0, None, None, None, None, 0, 0) if new else 0
            self._kernels[key] = jax.jit(jax.vmap(one, in_axes=axes))
        return self._kernels[key]

    def _check_x(self, x, mask, n_clients):
        x, mask = checked_rows(x, mask, self._n_features, n_clients)
        return jnp.asarray(x), jnp.asarray(mask)

    def predict(self, x, mask, *, n_draws: int = 32, seed: int = 0) -> np.ndarray:
        """Posterior predictive class probabilities of each training client, ``(K, n, C)``.

        The softmax averaged over ``n_draws`` draws of :math:`w_k \\sim q(w_k)`.
        """
        x, mask = self._check_x(x, mask, len(self.clients))
        fn = self._kernel(n_draws, new=False)
        keys = jax.random.split(jax.random.key(seed), len(self.clients))
        params, stats = self._personal
        out = fn(
            keys, params, stats, jnp.asarray(self.head_mean), jnp.asarray(self.head_sd), x, mask
        )
        return np.asarray(out)

    def predict_point(self, x, mask) -> np.ndarray:
        """Class probabilities at the posterior mean head (no averaging over draws)."""
        x, mask = self._check_x(x, mask, len(self.clients))
        fn = self._kernel(1, new=False)
        keys = jax.random.split(jax.random.key(0), len(self.clients))
        params, stats = self._personal
        zero = jnp.zeros_like(jnp.asarray(self.head_sd))
        return np.asarray(fn(keys, params, stats, jnp.asarray(self.head_mean), zero, x, mask))

    def predict_new(self, x, mask, *, n_draws: int = 32, seed: int = 0) -> np.ndarray:
        """Cold start: predictive of new clients from the population distribution.

        Heads are drawn from :math:`\\mathcal{N}(\\mathbb{E}[w_{\\text{global}}],
        \\operatorname{Var}[w_{\\text{global}}] + \\tau^2)`; normalization layers
        kept local are the row-weighted mean of the clients'.
        """
        x, mask = self._check_x(x, mask, None)
        fn = self._kernel(n_draws, new=True)
        keys = jax.random.split(jax.random.key(seed), x.shape[0])
        params, stats = self._population
        sd = jnp.sqrt(jnp.asarray(self.population_var))
        return np.asarray(fn(keys, params, stats, jnp.asarray(self.population_mean), sd, x, mask))


def fit_neural(
    data: FederatedData,
    *,
    variant: str = "bayes_head",
    n_classes: int | None = None,
    hidden: int | tuple[int, ...] = (32,),
    rounds: int = 30,
    local_steps: int = 20,
    lr: float = 0.01,
    optimizer: str = "adam",
    head_lr: float | None = None,
    tau: float = 0.1,
    learn_tau: bool = False,
    prior_sd: float = 1.0,
    kl_weight: float = 1.0,
    mc_samples: int = 1,
    damping: float = 0.5,
    init_sd: float = 0.01,
    seed: int = 0,
    split: str = "train",
    progress: bool = False,
) -> NeuralFit:
    """Train a hierarchical Bayesian network on a classification federation by federated VI.

    Parameters
    ----------
    data : FederatedData
        Class codes ``0..C-1`` as the target; rows of ``split`` train.
    variant : {"bayes_head", "bayes_head_bn"}
        See :data:`VARIANTS` and the module docstring.
    n_classes : int, optional
        Default: the largest class code in any split plus one.
    hidden : int or tuple of int
        Body widths.
    rounds, local_steps, tau, learn_tau, prior_sd, kl_weight, mc_samples, damping, init_sd
        See :func:`build`.
    optimizer, lr, head_lr
        Optimizer and learning rate of the body (and normalization, adapters);
        Adam's learning rate of the variational head (``optimizer``,
        ``learning_rate``, ``head_learning_rate`` of :func:`build`).
    seed : int
        Seeds the network's initialization and every draw.
    split : str
        Training split (``"train"``).
    progress : bool
        Show a progress bar.

    Returns
    -------
    NeuralFit

    Raises
    ------
    NeuralTrainingError
        When a client's local loss is NaN or infinite, or its site over
        :math:`w_{\\text{global}}` explodes; the message names the client(s) and the round.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {tuple(VARIANTS)}")
    if not isinstance(data, FederatedData):
        raise DataError(f"data must be a FederatedData, got {type(data).__name__}")
    spec = VARIANTS[variant]
    train = data.arrays(split)
    if n_classes is None:
        n_classes = class_count(data)
    fam = get_family("categorical", max(int(n_classes), 2))
    hidden = (hidden,) if isinstance(hidden, int) else tuple(hidden)
    net = build_network(spec["network"], data.n_features, fam.out_dim, hidden=hidden)
    hparams = dict(
        variant=variant,
        n_classes=int(n_classes),
        hidden=hidden,
        rounds=rounds,
        local_steps=local_steps,
        lr=lr,
        optimizer=optimizer,
        head_lr=head_lr,
        tau=tau,
        learn_tau=learn_tau,
        prior_sd=prior_sd,
        kl_weight=kl_weight,
        mc_samples=mc_samples,
        damping=damping,
        init_sd=init_sd,
        seed=seed,
    )
    # every other hyper-parameter is an option of build, two under build's longer names
    options = {
        {"lr": "learning_rate", "head_lr": "head_learning_rate"}.get(k, k): v
        for k, v in hparams.items()
        if k not in ("variant", "n_classes", "hidden", "rounds", "seed")
    }
    hn = build(
        net,
        fam,
        net.init(seed),
        local_roles=spec["local_roles"],
        adapter_rank=spec.get("adapter_rank", 0),
        name=variant,
        **options,
    )
    result = run_rounds(
        hn.algorithm,
        train,
        rounds=rounds,
        labels=data.clients,
        seed=seed,
        on_rejected="raise",
        stop_when_converged=False,
        progress=progress,
    )
    return NeuralFit(hn, variant, hparams, result, data.clients, data.n_features)
