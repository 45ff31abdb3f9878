"""Client steps traced once and reused by every later ClientApp process.

flwr 1.41 answers each message in a fresh ``flwr-clientapp`` process, so without
help every message pays for tracing the client step again: seconds for EP's nested,
implicitly differentiated Newton solves, far more than the step itself. JAX's
persistent compilation cache saves XLA's compile but not the trace. A
:class:`StepCache` saves the trace: the first process to run a step exports it with
:mod:`jax.export` (serialized StableHLO) into a folder; later processes with the
same step and input signature deserialize it and call it, without importing the
model or building the algorithm.

A step's *signature* is the run's identity string (for the ready-made apps: the
run's settings), the step name, the key, shape and dtype of every input leaf, the
versions of JAX, numpyro and bayes-pfl, a hash of bayes-pfl's source and JAX's
float64 flag. Inputs travel as flat ``{key path: array}`` dicts (the form of
:func:`bayes_pfl.codec.encode` and of Flower's ``ArrayRecord``); outputs come back
in the same form, ready for :func:`~bayes_pfl.flower.records.named_record`.

Validation is unchanged: a signature is written only after its inputs were decoded
against the algorithm's templates (keys, shapes, dtypes), so an input that does not
match a stored signature takes the slow path and fails there with the same
:class:`~bayes_pfl.codec.CodecError`.

The folder holds programs, as JAX's compilation cache does: keep it private to the
node's user.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

__all__ = ["StepCache", "source_fingerprint"]

log = logging.getLogger("bayes_pfl.flower")

Flat = dict[str, np.ndarray]
BuildFn = Callable[[], tuple[Callable[..., tuple[Any, ...]], Sequence[Any]]]


@functools.cache
def source_fingerprint() -> str:
    """SHA-256 of bayes-pfl's Python source (the package and its model zoo)."""
    import bayes_pfl

    roots = [Path(bayes_pfl.__file__).resolve().parent]
    spec_models = Path(bayes_pfl.__file__).resolve().parents[1] / "models"
    if spec_models.is_dir():  # editable install: the zoo lives beside the package
        roots.append(spec_models)
    h = hashlib.sha256()
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            h.update(str(path.relative_to(root)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def package_version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return ""


class StepCache:
    """A folder of exported client steps for one run identity.

    Parameters
    ----------
    folder : path
        Where exported steps live (created if missing); safe to share between
        processes of one node (files are written atomically).
    identity : str
        Everything besides the inputs' shapes that decides what a step computes
        (the ready-made apps pass the run's settings).
    """

    def __init__(self, folder: str | os.PathLike, identity: str):
        self.folder = Path(folder)
        self.identity = str(identity)
        self.hits = 0
        self.misses = 0

    def signature(self, name: str, inputs: Sequence[Flat]) -> str:
        import jax

        spec = {
            "identity": self.identity,
            "name": name,
            "inputs": [
                sorted((k, list(np.shape(v)), np.asarray(v).dtype.str) for k, v in g.items())
                for g in inputs
            ],
            "jax": jax.__version__,
            "numpyro": package_version("numpyro"),
            "bayes-pfl": package_version("bayes-pfl"),
            "source": source_fingerprint(),
            "x64": bool(jax.config.jax_enable_x64),
        }
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()

    def call(self, name: str, build: BuildFn, inputs: Sequence[Flat]) -> list[Flat]:
        """Run step ``name`` on ``inputs`` (one flat dict per argument).

        ``build()`` is called only when no exported step matches: it returns
        ``(fn, templates)``, ``fn(*trees)`` returning a tuple of pytrees and
        ``templates`` one pytree (of arrays or ``jax.ShapeDtypeStruct``) per
        argument. Returns one flat ``{key path: numpy array}`` per output.
        """
        sig = self.signature(name, inputs)
        blob_path = self.folder / f"{sig}.stablehlo"
        meta_path = self.folder / f"{sig}.json"
        loaded = _LOADED.get(sig)
        if loaded is None and meta_path.is_file():
            try:
                loaded = _load(blob_path, meta_path)
            except Exception as err:  # a damaged file: trace again and replace it
                log.warning("exported step %s unusable (%s); tracing it again", name, err)
        if loaded is not None:
            self.hits += 1
            _LOADED[sig] = loaded
            return _run(loaded, inputs)
        self.misses += 1
        loaded = self._export(name, build, inputs, blob_path, meta_path)
        _LOADED[sig] = loaded
        return _run(loaded, inputs)

    # ---------------------------------------------------------------- internals

    def _export(
        self, name: str, build: BuildFn, inputs: Sequence[Flat], blob_path: Path, meta_path: Path
    ) -> _Loaded:
        import jax
        from jax import export

        from bayes_pfl.codec import decode

        fn, templates = build()
        if len(templates) != len(inputs):
            raise ValueError(f"step {name}: {len(inputs)} inputs for {len(templates)} templates")
        trees, in_keys, treedefs = [], [], []
        for group, template in zip(inputs, templates, strict=True):
            tree = decode(group, template, check_dtypes=True)  # CodecError on a mismatch
            paths, treedef = jax.tree_util.tree_flatten_with_path(template)
            trees.append(tree)
            in_keys.append([jax.tree_util.keystr(p) for p, _ in paths])
            treedefs.append(treedef)
        sizes = [len(k) for k in in_keys]
        out_keys: list[list[str]] = []

        def flat(*leaves):
            args, start = [], 0
            for treedef, n in zip(treedefs, sizes, strict=True):
                args.append(jax.tree_util.tree_unflatten(treedef, leaves[start : start + n]))
                start += n
            outs = fn(*args)
            out_keys[:] = [
                [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(o)[0]]
                for o in outs
            ]
            return [leaf for o in outs for leaf in jax.tree_util.tree_leaves(o)]

        leaves = [np.asarray(x) for t in trees for x in jax.tree_util.tree_leaves(t)]
        exported = export.export(jax.jit(flat))(
            *(jax.ShapeDtypeStruct(x.shape, x.dtype) for x in leaves)
        )
        meta = {"name": name, "in_keys": in_keys, "out_keys": out_keys}
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic_write(blob_path, bytes(exported.serialize()))
            atomic_write(meta_path, json.dumps(meta).encode())
        except OSError as err:  # a read-only folder costs speed, not the answer
            log.warning("cannot store exported step %s in %s: %s", name, self.folder, err)
        return _Loaded(jax.jit(exported.call), in_keys, out_keys)


class _Loaded(NamedTuple):
    fn: Callable[..., Any]  # jax.jit(exported.call)
    in_keys: list[list[str]]
    out_keys: list[list[str]]


_LOADED: dict[str, _Loaded] = {}  # by signature: a process deserializes a step once


def _load(blob_path: Path, meta_path: Path) -> _Loaded:
    import jax
    from jax import export

    meta = json.loads(meta_path.read_text())
    exported = export.deserialize(bytearray(blob_path.read_bytes()))
    return _Loaded(jax.jit(exported.call), meta["in_keys"], meta["out_keys"])


def _run(loaded: _Loaded, inputs: Sequence[Flat]) -> list[Flat]:
    if len(loaded.in_keys) != len(inputs):
        raise ValueError(f"{len(inputs)} inputs, the stored step takes {len(loaded.in_keys)}")
    leaves = []
    for keys, group in zip(loaded.in_keys, inputs, strict=True):
        if set(keys) != set(group):
            raise ValueError("input keys differ from the stored step's")
        leaves.extend(np.asarray(group[k]) for k in keys)
    return _split(loaded.fn(*leaves), loaded.out_keys)


def _split(outs, out_keys: list[list[str]]) -> list[Flat]:
    import jax

    outs = [np.asarray(x) for x in jax.device_get(list(outs))]
    result, start = [], 0
    for keys in out_keys:
        result.append(dict(zip(keys, outs[start : start + len(keys)], strict=True)))
        start += len(keys)
    if start != len(outs):
        raise ValueError(f"stored step returns {len(outs)} arrays, expected {start}")
    return result


def atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
