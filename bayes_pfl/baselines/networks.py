"""Point-estimate models for the baselines: GLM families and Flax NNX networks as pure functions.

A :class:`Family` says how a network's output ``eta`` (one column, or one per
class) scores a row: negative log-likelihood, predictive mean and, for
classifiers, whether the row is classified correctly.

A :class:`Network` wraps a Flax NNX module as pure functions over *flat
dicts* of arrays keyed by dotted path (``"layers.0.kernel"``): ``init(seed)``
returns ``(params, stats)`` — trainable ``nnx.Param`` leaves and BatchNorm
running statistics (``nnx.BatchStat``) — and ``apply(params, stats, x, mask,
train)`` returns ``(eta, new_stats)``. Flat dicts stack on a leading client
axis, ``vmap``, travel in messages, and let an algorithm say by key which
leaves are shared (``roles`` maps each key to ``"body"``, ``"head"``,
``"norm"`` or ``"stat"``).

Networks
--------
``"linear"``
    A GLM: ``eta = x @ kernel + bias``. Roles: ``kernel`` is the body
    (slopes), ``bias`` the head (intercept), so FedPer on a GLM shares the
    slopes and personalizes the intercept (a varying-intercept model).
``"mlp"``
    ``Linear -> ReLU`` per hidden layer, then a linear head.
``"mlp_bn"``
    ``Linear -> BatchNorm -> ReLU`` per hidden layer, then a linear head.
    BatchNorm computes its batch statistics over the client's real rows only
    (padding is masked out).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

__all__ = [
    "FAMILIES",
    "NETWORKS",
    "Family",
    "Network",
    "build_network",
    "get_family",
    "masked_mean_loss",
]

FAMILIES = ("normal", "bernoulli", "poisson", "categorical")
NETWORKS = ("linear", "mlp", "mlp_bn")

Array = jax.Array
Params = dict[str, Array]

_MAX_LOG_RATE = 30.0  # Poisson: cap on eta inside exp (rates up to ~1e13)


class Family(NamedTuple):
    """A likelihood for a network's output ``eta`` (shape ``(n, out_dim)``).

    ``nll(eta, y)`` and ``correct(eta, y)`` return one value per row;
    ``mean(eta)`` is the predictive mean (probability of class 1, class
    probabilities, mean, or rate). ``correct`` is ``None`` for regression.
    """

    name: str
    out_dim: int
    nll: Callable[[Array, Array], Array]
    mean: Callable[[Array], Array]
    correct: Callable[[Array, Array], Array] | None


@functools.cache
def get_family(name: str, n_classes: int | None = None) -> Family:
    """The :class:`Family` called ``name`` (``n_classes`` for ``"categorical"``; cached)."""
    if name == "normal":
        return Family(
            name,
            1,
            lambda eta, y: 0.5 * (y - eta[:, 0]) ** 2,
            lambda eta: eta[:, 0],
            None,
        )
    if name == "bernoulli":
        return Family(
            name,
            1,
            lambda eta, y: jax.nn.softplus(eta[:, 0]) - y * eta[:, 0],
            lambda eta: jax.nn.sigmoid(eta[:, 0]),
            lambda eta, y: (eta[:, 0] > 0) == (y > 0.5),
        )
    if name == "poisson":

        def poisson_nll(eta, y):
            e = jnp.minimum(eta[:, 0], _MAX_LOG_RATE)
            return jnp.exp(e) - y * e

        return Family(
            name,
            1,
            poisson_nll,
            lambda eta: jnp.exp(jnp.minimum(eta[:, 0], _MAX_LOG_RATE)),
            None,
        )
    if name == "categorical":
        if n_classes is None or n_classes < 2:
            raise ValueError(f"family='categorical' needs n_classes >= 2, got {n_classes!r}")

        def categorical_nll(eta, y):
            codes = y.astype(jnp.int32)
            return (
                jax.nn.logsumexp(eta, axis=-1)
                - jnp.take_along_axis(eta, codes[:, None], axis=-1)[:, 0]
            )

        return Family(
            name,
            int(n_classes),
            categorical_nll,
            lambda eta: jax.nn.softmax(eta, axis=-1),
            lambda eta, y: jnp.argmax(eta, axis=-1) == y.astype(jnp.int32),
        )
    raise ValueError(f"unknown family {name!r}; choose one of {FAMILIES}")


class Network(NamedTuple):
    """A Flax NNX module as pure functions over flat dicts (see the module docstring).

    Attributes
    ----------
    name : str
        ``"linear"``, ``"mlp"`` or ``"mlp_bn"``.
    init : callable
        ``init(seed) -> (params, stats)``, host-side (not under ``jit``).
    apply : callable
        ``apply(params, stats, x, mask, train) -> (eta, new_stats)``; ``x`` is
        ``(n, n_features)``, ``mask`` ``(n,)`` (rows that count for BatchNorm
        statistics), ``eta`` ``(n, out_dim)``. With ``train=False`` BatchNorm
        uses its running statistics and ``new_stats`` equals ``stats``.
    roles : dict
        Key -> ``"body"``, ``"head"``, ``"norm"`` (BatchNorm scale and bias) or
        ``"stat"`` (BatchNorm running mean and variance).
    """

    name: str
    init: Callable[[int], tuple[Params, Params]]
    apply: Callable[..., tuple[Array, Params]]
    roles: dict[str, str]


class _MLP(nnx.Module):
    """Linear(+BatchNorm)+ReLU hidden layers and a linear head (no hidden layer: a GLM)."""

    def __init__(
        self,
        n_features: int,
        hidden: tuple[int, ...],
        out_dim: int,
        *,
        batch_norm: bool,
        zero_init: bool,
        param_dtype: Any,
        rngs: nnx.Rngs,
    ):
        dims = (n_features, *hidden)
        self.layers = nnx.List(
            [
                nnx.Linear(a, b, param_dtype=param_dtype, rngs=rngs)
                for a, b in zip(dims[:-1], dims[1:], strict=True)
            ]
        )
        self.norms = (
            nnx.List(
                [nnx.BatchNorm(b, momentum=0.9, param_dtype=param_dtype, rngs=rngs) for b in hidden]
            )
            if batch_norm
            else None
        )
        init = nnx.initializers.zeros if zero_init else nnx.initializers.lecun_normal()
        self.head = nnx.Linear(
            dims[-1], out_dim, kernel_init=init, param_dtype=param_dtype, rngs=rngs
        )

    def __call__(self, x: Array, mask: Array, train: bool) -> Array:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if self.norms is not None:
                x = self.norms[i](
                    x, use_running_average=not train, mask=jnp.broadcast_to(mask[:, None], x.shape)
                )
            x = nnx.relu(x)
        return self.head(x)


def _key(path: tuple) -> str:
    return ".".join(str(p) for p in path)


def _role(network: str, key: str) -> str:
    leaf = key.rsplit(".", 1)[-1]
    if key.startswith("norms."):
        return "stat" if leaf in ("mean", "var") else "norm"
    if network == "linear":
        return "body" if leaf == "kernel" else "head"
    return "head" if key.startswith("head.") else "body"


def build_network(
    network: str,
    n_features: int,
    out_dim: int,
    *,
    hidden: int | tuple[int, ...] = (32,),
) -> Network:
    """Build a :class:`Network` (cached: equal arguments give the same functions).

    Parameters
    ----------
    network : {"linear", "mlp", "mlp_bn"}
        Architecture (see the module docstring).
    n_features : int
        Input width.
    out_dim : int
        Output width (1, or the number of classes).
    hidden : int or tuple of int, default (32,)
        Hidden layer widths of the MLPs (ignored by ``"linear"``).

    Returns
    -------
    Network
        Parameters use JAX's default float dtype (float64 when x64 is enabled).
        ``"linear"`` starts from zero coefficients; the MLPs from LeCun-normal
        hidden layers and a zero head.

    Examples
    --------
    >>> net = build_network("mlp_bn", 3, 2, hidden=4)
    >>> params, stats = net.init(0)
    >>> sorted(params), sorted(stats)  # doctest: +NORMALIZE_WHITESPACE
    (['head.bias', 'head.kernel', 'layers.0.bias', 'layers.0.kernel', 'norms.0.bias',
      'norms.0.scale'], ['norms.0.mean', 'norms.0.var'])
    """
    if network not in NETWORKS:
        raise ValueError(f"unknown network {network!r}; choose one of {NETWORKS}")
    if isinstance(hidden, int):
        hidden = (hidden,)
    hidden = tuple(int(h) for h in hidden) if network != "linear" else ()
    if any(h < 1 for h in hidden) or (network != "linear" and not hidden):
        raise ValueError(f"hidden must be positive layer widths, got {hidden!r}")
    return _build_network(network, int(n_features), int(out_dim), hidden, jnp.result_type(float))


@functools.cache
def _build_network(
    network: str, n_features: int, out_dim: int, hidden: tuple[int, ...], param_dtype: Any
) -> Network:
    def make(seed) -> _MLP:
        return _MLP(
            n_features,
            hidden,
            out_dim,
            batch_norm=network == "mlp_bn",
            zero_init=True,
            param_dtype=param_dtype,
            rngs=nnx.Rngs(seed),
        )

    graphdef, param_state, stat_state = nnx.split(make(0), nnx.Param, nnx.BatchStat)
    param_vars = dict(nnx.to_flat_state(param_state))
    stat_vars = dict(nnx.to_flat_state(stat_state))
    param_paths = {_key(p): p for p in param_vars}
    stat_paths = {_key(p): p for p in stat_vars}

    def to_flat(state) -> Params:
        # BatchNorm keeps its running statistics in float32 whatever param_dtype is
        return {_key(p): v.get_value().astype(param_dtype) for p, v in nnx.to_flat_state(state)}

    def to_state(flat: Params, paths, variables):
        return nnx.from_flat_state(
            {paths[k]: variables[paths[k]].replace(v) for k, v in flat.items()}
        )

    def init(seed: int) -> tuple[Params, Params]:
        _, p, s = nnx.split(make(int(seed)), nnx.Param, nnx.BatchStat)
        return to_flat(p), to_flat(s)

    def apply(params: Params, stats: Params, x: Array, mask: Array, train: bool):
        module = nnx.merge(
            graphdef,
            to_state(params, param_paths, param_vars),
            to_state(stats, stat_paths, stat_vars),
        )
        eta = module(x.astype(param_dtype), mask, train)
        if not train or not stats:
            return eta, stats
        _, _, new = nnx.split(module, nnx.Param, nnx.BatchStat)
        return eta, to_flat(new)

    roles = {k: _role(network, k) for k in (*param_paths, *stat_paths)}
    return Network(network, init, apply, roles)


def masked_mean_loss(family: Family, eta: Array, y: Array, mask: Array) -> Array:
    """Mean negative log-likelihood over the real rows (0 for a client without rows)."""
    nll = jnp.where(mask, family.nll(eta, y), 0.0)
    return jnp.sum(nll) / jnp.maximum(jnp.sum(mask), 1)
