"""``bayes-pfl fit --missing model [--noise-sd FEATURE=SD]``: missing feature values and
measurement error modelled in the zoo GLMs (:mod:`bayes_pfl.models.covariates`).

``--missing model`` keeps ``NaN`` in the features (``FederatedData.from_pandas(...,
missing="keep")``) and builds the GLM with ``missing=`` every feature that has a gap in the
data: each client's distribution of the feature is part of the model and the gaps are
integrated out, for every method. ``--missing-effects`` adds a per-client effect of each
such feature's missingness (``missing_effects=True``). ``--noise-sd FEATURE=SD`` declares a
feature measured with a known noise sd (in the feature's units, before ``--standardize``);
``--noise-sd FEATURE=COLUMN`` reads each client's own sd from a feature column (its
device's; one value per client, a column of data that is no term of the model).
"""

from __future__ import annotations

import argparse

import numpy as np

__all__ = ["MISSING_CHOICES", "add_missing_args", "data_missing", "latent_options"]

MISSING_CHOICES = ("error", "drop", "model")


def add_missing_args(group: argparse._ArgumentGroup) -> None:
    """The missing-value and measurement-error flags, in the data options' group."""
    group.add_argument(
        "--missing",
        choices=MISSING_CHOICES,
        default="error",
        help="rows with missing features: raise an error (default), drop them and report, or "
        "model them (GLMs: each client's distribution of a feature with gaps is part of the "
        "model and the gaps are integrated out, for every method)",
    )
    group.add_argument(
        "--missing-effects",
        action="store_true",
        help="--missing model: a per-client effect of each feature's missingness (informative "
        "missingness; takes a client that never measured a feature)",
    )
    group.add_argument(
        "--covariate-regression",
        action="store_true",
        help="--missing model / --noise-sd: each modelled feature's client distribution "
        "depends linearly on the row's exactly measured features (a shared regression): "
        "gaps and noisy values borrow what correlated features say",
    )
    group.add_argument(
        "--noise-sd",
        action="append",
        default=[],
        metavar="FEATURE=SD",
        help="GLMs: FEATURE is measured with a known noise sd SD (in its units), or with each "
        "client's own sd read from feature column SD (one value per client); its true value "
        "is a latent covariate (errors in variables); repeat for several",
    )


def data_missing(args) -> str:
    """``FederatedData.from_pandas``'s ``missing=`` for ``--missing``."""
    return "keep" if args.missing == "model" else args.missing


def latent_options(args, data, name: str) -> dict:
    """``get_model``'s ``missing=`` and ``noise_sd=`` for ``--missing model`` and
    ``--noise-sd`` (``{}`` without them), checked against the data and the model."""
    from bayes_pfl.data import DataError
    from bayes_pfl.models import GLM_FAMILY

    noise = _parse_noise(getattr(args, "noise_sd", []) or [], data)
    effects = bool(getattr(args, "missing_effects", False))
    if effects and args.missing != "model":
        raise DataError("--missing-effects needs --missing model")
    if args.missing != "model" and not noise:
        if getattr(args, "covariate_regression", False):
            raise DataError("--covariate-regression needs --missing model or --noise-sd")
        return {}
    if name not in GLM_FAMILY:
        flag = "--missing model" if args.missing == "model" else "--noise-sd"
        raise DataError(
            f"{flag} applies to the GLMs ({', '.join(GLM_FAMILY)}), not to model {name!r}"
        )
    gaps = []
    for split in ("train", "val", "test"):
        if getattr(data, split, None) is not None:
            x = np.asarray(data.arrays(split).x, float)
            gaps.append(np.isnan(x).reshape(-1, x.shape[-1]).any(axis=0))
    has_gap = np.any(gaps, axis=0)
    columns = {v for v in noise.values() if isinstance(v, str)}  # data, not covariates
    missing = [str(f) for f, g in zip(data.features, has_gap, strict=True) if g]
    missing = [f for f in missing if f not in columns]
    out = {"missing": missing, "noise_sd": noise, "missing_effects": effects and bool(missing)}
    if getattr(args, "covariate_regression", False):
        out["covariate_regression"] = True
    return out


def _parse_noise(items, data) -> dict[str, float | str]:
    from bayes_pfl.data import DataError

    features = [str(f) for f in data.features]
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        name, value = name.strip(), value.strip()
        try:
            sd = float(value)
        except ValueError:
            sd = float("nan")
        if sep and value in features and value != name:  # each client's sd, in a column
            if data.feature_scale is not None:
                raise DataError(
                    f"--noise-sd {item!r}: a noise column with --standardize would be "
                    f"standardized like a feature; standardize {name!r} and {value!r} by "
                    f"{name!r}'s scale in the CSV, or declare one SD"
                )
            out[name] = value
            continue
        if not sep or not (np.isfinite(sd) and sd >= 0):
            raise DataError(
                f"--noise-sd {item!r}: expected FEATURE=SD with SD a number >= 0 or the "
                "name of a feature column holding each client's sd"
            )
        if name not in features:
            raise DataError(
                f"--noise-sd {item!r}: {name!r} is not a feature (features: {', '.join(features)})"
            )
        scale = data.feature_scale
        out[name] = sd if scale is None else sd / float(scale[features.index(name)])
    return out
