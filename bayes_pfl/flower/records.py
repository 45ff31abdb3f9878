"""Pytrees to Flower records and back, by key path (no pickle on the wire).

A pytree of arrays travels as an :class:`flwr.app.ArrayRecord` whose keys are the
key paths of :func:`bayes_pfl.codec.encode` (``.site.precision``) and whose values
are numpy arrays serialized by Flower with ``np.save(allow_pickle=False)``. The
receiver decodes against a *template* of the structure it expects, so a record can
only ever become that structure: missing or unexpected keys, other shapes and other
dtypes raise :class:`~bayes_pfl.codec.CodecError`.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord

from bayes_pfl.codec import CodecError, decode, encode

__all__ = [
    "CodecError",
    "config_record",
    "from_array_record",
    "metric_record",
    "named_arrays",
    "named_record",
    "record_nbytes",
    "to_array_record",
]


def to_array_record(tree: Any) -> ArrayRecord:
    """Flatten a pytree of (JAX or numpy) arrays to an ``ArrayRecord`` keyed by key path."""
    arrays = {}
    for key, value in encode(tree).items():
        arr = np.asarray(jax.device_get(value))
        if arr.dtype == object:
            raise CodecError(f"{key}: object arrays cannot travel (no pickle)")
        arrays[key] = Array(np.require(arr, requirements="C"))
    return ArrayRecord(arrays)


def from_array_record(record: ArrayRecord, template: Any) -> Any:
    """Rebuild a pytree shaped like ``template`` (arrays or ``jax.ShapeDtypeStruct``).

    Raises :class:`CodecError` on a key, shape or dtype mismatch.
    """
    flat = {key: arr.numpy() for key, arr in record.items()}
    return decode(flat, template, check_dtypes=True)


def named_record(arrays: dict[str, Any]) -> ArrayRecord:
    """An ``ArrayRecord`` of a flat ``{name: array}`` dict (keys kept as they are)."""
    return ArrayRecord(
        {k: Array(np.require(np.asarray(v), requirements="C")) for k, v in arrays.items()}
    )


def named_arrays(
    record: ArrayRecord, names: tuple[str, ...] | None = None
) -> dict[str, np.ndarray]:
    """``{name: numpy array}`` of a record; with ``names``, exactly those keys or ``CodecError``."""
    if names is not None and set(record.keys()) != set(names):
        raise CodecError(f"record keys {sorted(record.keys())}, expected {sorted(names)}")
    return {k: a.numpy() for k, a in record.items()}


def metric_record(values: dict[str, Any]) -> MetricRecord:
    """A ``MetricRecord`` of plain Python ints and floats (numpy scalars converted)."""
    out: dict[str, int | float] = {}
    for key, value in values.items():
        v = np.asarray(value)
        if v.ndim != 0:
            raise TypeError(f"metric {key!r} is not a scalar (shape {v.shape})")
        out[key] = int(v) if v.dtype.kind in "biu" else float(v)
    return MetricRecord(out)


def config_record(values: dict[str, Any]) -> ConfigRecord:
    """A flat ``ConfigRecord`` of str/int/float/bool values (numpy scalars converted)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, np.generic):
            value = value.item()
        out[key] = value
    return ConfigRecord(out)


def record_nbytes(record: ArrayRecord) -> int:
    """Serialized size of an ``ArrayRecord``'s arrays (``.npy`` bytes, headers included)."""
    return sum(len(arr.data) for arr in record.values())
