"""Pytrees to flat dicts of numpy arrays by key path, and back (no pickle).

Used for checkpoints (``.npz``) and by the Flower backend (``ArrayRecord``).
Keys are JAX key paths such as ``.global_factor.precision``; decoding needs a
*template* pytree of the expected structure, so a message can only ever become
the structure the receiver expects (shapes and dtypes are checked by the caller).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

__all__ = ["CodecError", "decode", "encode"]


class CodecError(ValueError):
    """A flat record does not match the expected pytree structure."""


def encode(tree: Any) -> dict[str, np.ndarray]:
    """Flatten a pytree of arrays to ``{key path: numpy array}``."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def decode(
    flat: dict[str, Any], template: Any, *, check_shapes: bool = True, check_dtypes: bool = False
) -> Any:
    """Rebuild a pytree shaped like ``template`` from :func:`encode`'s output.

    Raises :class:`CodecError` naming the first missing or unexpected key and, with
    ``check_shapes``, any leaf whose shape differs from the template's; with
    ``check_dtypes``, any leaf whose dtype differs (what arrives from another process).
    """
    paths, treedef = jax.tree_util.tree_flatten_with_path(template)
    keys = [jax.tree_util.keystr(p) for p, _ in paths]
    missing = [k for k in keys if k not in flat]
    extra = [k for k in flat if k not in set(keys)]
    if missing or extra:
        raise CodecError(f"record keys do not match: missing {missing}, unexpected {extra}")
    leaves = []
    for key, (_, ref) in zip(keys, paths, strict=True):
        arr = np.asarray(flat[key])
        if check_shapes and arr.shape != np.shape(ref):
            raise CodecError(f"{key}: shape {arr.shape}, expected {np.shape(ref)}")
        if check_dtypes:
            want = np.dtype(ref.dtype) if hasattr(ref, "dtype") else np.asarray(ref).dtype
            if arr.dtype != want:
                raise CodecError(f"{key}: dtype {arr.dtype}, expected {want}")
        leaves.append(arr)
    return jax.tree_util.tree_unflatten(treedef, leaves)
