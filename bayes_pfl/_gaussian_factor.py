"""The :class:`GaussianFactor` type and what is done with one as a message.

A factor is what clients and server exchange; before any algebra
(:mod:`bayes_pfl.gaussian`) the server checks what it received on the host:
:func:`validate` (one factor) and :func:`validate_batch` (one per client, every
offender named) raise :class:`InvalidFactorError`; :func:`nbytes` is a factor's
size as sent.

Import these names from :mod:`bayes_pfl.gaussian`, their public home.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


class InvalidFactorError(ValueError):
    """A Gaussian factor (typically a client's message) that cannot be used.

    The message names the offending sender (when known) and the problem.

    Attributes
    ----------
    problems : dict[str, list[str]]
        The problems found, keyed by the display name of the sender
        (e.g. ``"client 'AITKIN'"``).
    clients : tuple
        For :func:`validate_batch`, the labels (as passed in ``names``) of all
        offending clients, in batch order; empty otherwise.
    indices : tuple[int, ...]
        For :func:`validate_batch`, the positions of the offending clients on
        the leading axis; empty otherwise.
    """

    def __init__(
        self,
        message: str,
        *,
        problems: dict[str, list[str]] | None = None,
        clients: Sequence[Any] = (),
        indices: Sequence[int] = (),
    ) -> None:
        super().__init__(message)
        self.problems = dict(problems or {})
        self.clients = tuple(clients)
        self.indices = tuple(int(i) for i in indices)


class GaussianFactor(NamedTuple):
    r"""Gaussian factor :math:`\exp(-\frac12 x^\top \Lambda x + \eta^\top x)`.

    A JAX pytree (a named tuple of two arrays), so it passes through ``jit``,
    ``vmap``, ``lax.scan`` and ``tree_map`` unchanged.

    Parameters
    ----------
    precision : Array
        Precision :math:`\Lambda`, shape ``[..., P, P]`` (full, symmetric) or
        ``[..., P]`` (diagonal of a diagonal precision).
    shift : Array
        Shift (precision-adjusted mean) :math:`\eta = \Lambda m`, shape
        ``[..., P]``.
    """

    precision: Array
    shift: Array

    @property
    def is_diagonal(self) -> bool:
        """Whether the precision is stored as its diagonal (static)."""
        return jnp.ndim(self.precision) == jnp.ndim(self.shift)

    @property
    def dim(self) -> int:
        """Dimension ``P`` of the parameter vector."""
        return jnp.shape(self.shift)[-1]

    @property
    def batch_shape(self) -> tuple[int, ...]:
        """Leading batch axes (e.g. ``(n_clients,)``); ``()`` for one factor."""
        return tuple(jnp.shape(self.shift)[:-1])


# public under bayes_pfl.gaussian, where they are documented: tracebacks and pickles say so
GaussianFactor.__module__ = InvalidFactorError.__module__ = "bayes_pfl.gaussian"


# --------------------------------------------------------------------------
# validation at the server boundary (host side)


def _as_host_array(x: Any, field: str, who: str) -> np.ndarray:
    if not isinstance(x, np.ndarray | jax.Array):
        raise InvalidFactorError(
            f"{who}: {field} must be a numpy or JAX array, got {type(x).__name__}",
            problems={who: [f"{field} is not an array"]},
        )
    try:
        arr = np.asarray(x)
    except jax.errors.TracerArrayConversionError as err:  # programming error, not a bad message
        raise TypeError(
            "validate() is a host-side check and cannot be used under jit/vmap"
        ) from err
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        raise InvalidFactorError(
            f"{who}: {field} must have a real floating dtype, got {arr.dtype}",
            problems={who: [f"{field} has dtype {arr.dtype}"]},
        )
    return arr


def _check_structure(
    f: Any, dim: int, diagonal: bool | None, who: str, batch: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Type and shape checks; returns host arrays of precision and shift."""
    if isinstance(dim, bool) or not isinstance(dim, int | np.integer) or dim < 1:
        raise ValueError(f"dim must be a positive integer, got {dim!r}")
    if not isinstance(f, GaussianFactor):
        raise InvalidFactorError(
            f"{who}: expected a GaussianFactor, got {type(f).__name__}",
            problems={who: ["not a GaussianFactor"]},
        )
    prec = _as_host_array(f.precision, "precision", who)
    shift = _as_host_array(f.shift, "shift", who)
    dim = int(dim)
    problems = []
    if shift.shape != batch + (dim,):
        problems.append(f"shift has shape {shift.shape}, expected {batch + (dim,)}")
    full_shape, diag_shape = batch + (dim, dim), batch + (dim,)
    if diagonal is None:
        allowed: tuple[tuple[int, ...], ...] = (full_shape, diag_shape)
    else:
        allowed = (diag_shape,) if diagonal else (full_shape,)
    if prec.shape not in allowed:
        expected = " or ".join(str(s) for s in allowed)
        problems.append(f"precision has shape {prec.shape}, expected {expected}")
    if problems:
        raise InvalidFactorError(f"{who}: " + "; ".join(problems), problems={who: problems})
    return prec, shift


def _content_problems(
    prec: np.ndarray, shift: np.ndarray, require_proper: bool, symmetry_rtol: float
) -> list[list[str]]:
    """Per-factor problems for host arrays with one leading (client) axis."""
    n = shift.shape[0]
    diagonal = prec.ndim == shift.ndim
    out: list[list[str]] = [[] for _ in range(n)]
    flat_prec = prec.reshape(n, -1)
    prec_finite = np.isfinite(flat_prec).all(axis=1)
    shift_finite = np.isfinite(shift).all(axis=1)
    for i in range(n):
        if not prec_finite[i]:
            out[i].append("precision has non-finite entries")
        if not shift_finite[i]:
            out[i].append("shift has non-finite entries")
    ok = np.flatnonzero(prec_finite)
    if ok.size == 0:
        return out
    p64 = prec[ok].astype(np.float64)
    if not diagonal:
        asym = np.abs(p64 - np.swapaxes(p64, -1, -2)).max(axis=(-2, -1))
        scale = np.abs(p64).max(axis=(-2, -1))
        for j, i in enumerate(ok):
            if asym[j] > symmetry_rtol * scale[j]:
                out[i].append(
                    f"precision is not symmetric (max |Λ - Λᵀ| = {asym[j]:.3g} "
                    f"> {symmetry_rtol:g} × max |Λ| = {scale[j]:.3g})"
                )
    if require_proper:
        if diagonal:
            mins = p64.min(axis=-1)
        else:
            mins = np.linalg.eigvalsh(0.5 * (p64 + np.swapaxes(p64, -1, -2)))[:, 0]
        for j, i in enumerate(ok):
            if not mins[j] > 0:
                out[i].append(
                    f"precision is not positive definite (smallest eigenvalue {mins[j]:.3g})"
                )
    return out


def validate(
    f: Any,
    dim: int,
    *,
    diagonal: bool | None = None,
    name: str = "factor",
    require_proper: bool = False,
    symmetry_rtol: float = 1e-6,
) -> GaussianFactor:
    """Check an incoming factor (one client's message) at the server boundary.

    A host-side check (not for use under ``jit``) that turns any malformed
    message into an :class:`InvalidFactorError` naming its sender, instead of
    an obscure failure deeper in the algorithm.

    Parameters
    ----------
    f : Any
        The received object; must be a :class:`GaussianFactor` of numpy or JAX
        floating arrays without batch axes.
    dim : int
        Expected dimension ``P``.
    diagonal : bool, optional
        Require a diagonal (``[P]``) or full (``[P, P]``) precision; either when
        ``None``.
    name : str
        Display name of the sender used in the error, e.g. ``"client 'AITKIN'"``.
    require_proper : bool
        Also require a positive-definite precision (e.g. for posterior
        summaries; EP site factors may legitimately be improper).
    symmetry_rtol : float
        Tolerance on ``max |Λ - Λᵀ|`` relative to ``max |Λ|``.

    Returns
    -------
    GaussianFactor
        ``f`` itself, for chaining.

    Raises
    ------
    InvalidFactorError
        Wrong type (not a factor, fields not floating arrays), wrong shape,
        non-finite entries, asymmetric precision, or (with ``require_proper``)
        a precision that is not positive definite.
    """
    prec, shift = _check_structure(f, dim, diagonal, name, ())
    problems = _content_problems(prec[None], shift[None], require_proper, symmetry_rtol)[0]
    if problems:
        raise InvalidFactorError(f"{name}: " + "; ".join(problems), problems={name: problems})
    return f


def validate_batch(
    f: Any,
    dim: int,
    names: Sequence[Any],
    *,
    diagonal: bool | None = None,
    require_proper: bool = False,
    symmetry_rtol: float = 1e-6,
    name: str = "batch of client factors",
) -> GaussianFactor:
    """Validate a stacked factor with a leading client axis, reporting every bad client.

    Same checks as :func:`validate`, applied per client. Structural problems
    (wrong types, wrong shapes, a leading axis that does not match ``names``)
    concern the whole batch and are reported under ``name``; content problems
    (non-finite entries, asymmetry, non-PD precision) are collected for *all*
    clients and raised in a single :class:`InvalidFactorError` whose
    ``clients`` and ``indices`` list the offenders, so the server can exclude
    them.

    Parameters
    ----------
    f : Any
        A :class:`GaussianFactor` with precision ``[K, P, P]`` or ``[K, P]`` and
        shift ``[K, P]``.
    dim : int
        Expected dimension ``P``.
    names : sequence
        One label per client (``K`` of them); a client is shown as
        ``client 'LABEL'``.
    diagonal, require_proper, symmetry_rtol
        As in :func:`validate`.
    name : str
        Display name of the batch for structural errors.

    Returns
    -------
    GaussianFactor
        ``f`` itself, for chaining.
    """
    names = list(names)
    k = len(names)
    if isinstance(f, GaussianFactor) and isinstance(f.shift, np.ndarray | jax.Array):
        lead = np.shape(f.shift)[:1]
        if np.ndim(f.shift) == 2 and lead != (k,):
            raise InvalidFactorError(
                f"{name}: leading axis has {lead[0]} clients, expected {k} (one per name)",
                problems={name: ["leading axis does not match the client names"]},
            )
    prec, shift = _check_structure(f, dim, diagonal, name, (k,))
    per_client = _content_problems(prec, shift, require_proper, symmetry_rtol)
    bad = [i for i, p in enumerate(per_client) if p]
    if bad:
        problems = {f"client {names[i]!r}": per_client[i] for i in bad}
        lines = "\n".join(f"  {who}: " + "; ".join(p) for who, p in problems.items())
        raise InvalidFactorError(
            f"invalid factors from {len(bad)} of {k} clients:\n{lines}",
            problems=problems,
            clients=[names[i] for i in bad],
            indices=bad,
        )
    return f


def nbytes(f: GaussianFactor) -> int:
    """Bytes of the arrays as they would be sent: sum of ``.nbytes`` of the leaves.

    A full float64 factor of dimension ``P`` takes ``(P*P + P) * 8`` bytes; a
    diagonal one ``2 * P * 8``.
    """
    total = 0
    for leaf in jax.tree_util.tree_leaves(f):
        dtype = leaf.dtype if hasattr(leaf, "dtype") else np.asarray(leaf).dtype
        total += int(np.prod(np.shape(leaf), dtype=np.int64)) * np.dtype(dtype).itemsize
    return int(total)
