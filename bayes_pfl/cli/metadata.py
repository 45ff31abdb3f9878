"""``bayes-pfl fit --metadata meta.csv --metadata-cols region,device``: client metadata as
covariates of the population (:mod:`bayes_pfl.metadata`)."""

from __future__ import annotations

import argparse
from dataclasses import replace

__all__ = ["add_metadata_args", "attach_metadata", "metadata_terms"]


def add_metadata_args(group: argparse._ArgumentGroup) -> None:
    """The metadata flags, in the data options' group."""
    group.add_argument(
        "--metadata",
        metavar="CSV",
        help="client metadata, one row per client (its label in the client column): the "
        "population's mean moves with them (mu + z W; GLMs and the methods nuts, ep, "
        "one-shot, vi). Categorical columns are one-hot (first level the reference), numeric "
        "ones standardized",
    )
    group.add_argument(
        "--metadata-cols",
        metavar="COLS",
        help="--metadata: comma-separated columns to use (default: every column but the "
        "client column)",
    )
    group.add_argument(
        "--metadata-terms",
        metavar="TERMS",
        help="--metadata: comma-separated varying terms whose population mean the metadata "
        "move, e.g. Intercept when they say where a client's baseline sits but not how its "
        "features act (default: every varying term)",
    )


def metadata_terms(args) -> dict:
    """``hierarchical_glm``'s ``covariate_terms`` of ``--metadata-terms`` (``{}`` without)."""
    from bayes_pfl.data import DataError

    terms = getattr(args, "metadata_terms", None)
    if terms is None:
        return {}
    if getattr(args, "metadata", None) is None:
        raise DataError("--metadata-terms needs --metadata")
    return {"covariate_terms": tuple(t.strip() for t in terms.split(",") if t.strip())}


def attach_metadata(args, data):
    """``data`` with the clients' metadata of ``--metadata`` (``data`` itself without)."""
    import pandas as pd

    from bayes_pfl.data import DataError
    from bayes_pfl.metadata import ClientMetadata

    path = getattr(args, "metadata", None)
    cols = getattr(args, "metadata_cols", None)
    if path is None:
        if cols is not None:
            raise DataError("--metadata-cols needs --metadata")
        return data
    if getattr(args, "formula", None):
        raise DataError("--metadata applies to --model GLMs, not yet to --formula models")
    try:
        table = pd.read_csv(path)
    except (OSError, ValueError) as exc:
        raise DataError(f"--metadata {path}: cannot read it as CSV ({exc})") from None
    if data.client_col not in table.columns:
        raise DataError(
            f"--metadata {path}: no client column {data.client_col!r} (columns: "
            f"{', '.join(map(str, table.columns))})"
        )
    # labels as the data have them (a CSV reads numbers as numbers, the data may hold text)
    if all(isinstance(c, str) for c in data.clients):
        table[data.client_col] = table[data.client_col].astype(str)
    metadata = ClientMetadata.encode(table, cols, data.clients, data.client_col)
    return replace(data, metadata=metadata)
