"""Bundled real datasets that are naturally split into clients.

Five small datasets ship inside the package and load without network access
(see ``PROVENANCE.md`` next to this file for sources, licences and caveats):

* :func:`load_radon`: Minnesota radon, 919 homes in 85 counties (clients);
* :func:`load_eight_schools`: Rubin's eight schools, one summary statistic per school;
* :func:`load_heart_disease`: UCI Heart Disease, 920 patients in four hospitals;
* :func:`load_sleepstudy`: lme4's sleep-deprivation reaction times, 18 subjects x 10 days;
* :func:`load_guimmun`: mlmRev's Guatemalan child immunization, 2,159 children in
  161 communities.

:data:`DATASETS` describes each one (client column, target, features, default
model of the zoo, which of its coefficients vary by client, whether its features may
be standardized) and :func:`load` loads any of them by name. :func:`source` is the one
loader of the front ends: a bundled dataset, one CSV of all clients, or one CSV file per
client (a folder or a glob, :mod:`bayes_pfl.datasets.client_files`).

Examples
--------
>>> from bayes_pfl.datasets import DATASETS, load
>>> df = load("radon")
>>> info = DATASETS["radon"]
>>> df[info.client_col].nunique()
85
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib.resources import files
from typing import NamedTuple

import numpy as np
import pandas as pd

from .client_files import FILE_CLIENT_COL, client_files, is_client_files, read_client_files

__all__ = [
    "DATASETS",
    "FILE_CLIENT_COL",
    "GUIMMUN_YES_NO",
    "HEART_DISEASE_COLUMNS",
    "HEART_DISEASE_FEATURES",
    "HEART_DISEASE_FLAMBY_FEATURES",
    "HEART_DISEASE_HOSPITALS",
    "DataSource",
    "DatasetInfo",
    "client_files",
    "load",
    "load_eight_schools",
    "load_guimmun",
    "load_heart_disease",
    "load_radon",
    "load_sleepstudy",
    "source",
]

HEART_DISEASE_FEATURES: tuple[str, ...] = (
    "age",
    "sex",
    "cp",
    "trestbps",
    "chol",
    "fbs",
    "restecg",
    "thalach",
    "exang",
    "oldpeak",
    "slope",
    "ca",
    "thal",
)
"""The 13 feature columns of the UCI "processed" heart-disease files, in file order."""

HEART_DISEASE_COLUMNS: tuple[str, ...] = (*HEART_DISEASE_FEATURES, "num")
"""All 14 columns of the UCI "processed" files, in file order."""

HEART_DISEASE_FLAMBY_FEATURES: tuple[str, ...] = tuple(
    c for c in HEART_DISEASE_FEATURES if c not in ("slope", "ca", "thal")
)
"""The 10 features FLamby's Fed-Heart-Disease keeps (all but slope, ca and thal)."""

HEART_DISEASE_HOSPITALS: dict[str, str] = {
    "cleveland": "processed.cleveland.data",
    "hungary": "processed.hungarian.data",
    "switzerland": "processed.switzerland.data",
    "va": "processed.va.data",
}
"""Hospital label (the ``hospital`` column) -> bundled file, in concatenation order."""


def _path(name: str):
    return files("bayes_pfl.datasets").joinpath(name)


def load_radon() -> pd.DataFrame:
    """Load the Minnesota radon data (Gelman & Hill 2007).

    Values and row order are those of posteriordb's ``radon_mn`` data.

    Returns
    -------
    pandas.DataFrame
        919 rows (homes) and columns ``county`` (str, 85 counties with 1 to 116
        homes each), ``fips`` (int, county FIPS code), ``floor`` (int, 0 =
        basement, 1 = first floor), ``log_uppm`` (float, county-level log
        uranium) and ``log_radon`` (float, log of radon activity + 0.1).
    """
    with _path("radon.csv").open("r") as fh:
        df = pd.read_csv(fh)
    return df.astype(
        {
            "county": str,
            "fips": np.int64,
            "floor": np.int64,
            "log_uppm": np.float64,
            "log_radon": np.float64,
        }
    )


def load_eight_schools() -> pd.DataFrame:
    """Load Rubin's (1981) eight schools data.

    Returns
    -------
    pandas.DataFrame
        8 rows and columns ``school`` (str, ``"A"`` to ``"H"``), ``y`` (float,
        estimated SAT-coaching effect) and ``sigma`` (float, its standard error).
    """
    with _path("eight_schools.csv").open("r") as fh:
        df = pd.read_csv(fh)
    return df.astype({"school": str, "y": np.float64, "sigma": np.float64})


def load_heart_disease(target: str = "binary") -> pd.DataFrame:
    """Load the UCI Heart Disease data of four hospitals.

    The four UCI "processed" files are concatenated in the order Cleveland,
    Hungary, Switzerland, VA (303, 294, 123 and 200 rows, 920 in all). Missing
    values (``?`` in the files) are kept as NaN; no row is dropped. The data are
    otherwise as published: Switzerland records ``chol`` as 0 for every patient
    (not measured), and ``slope``, ``ca`` and ``thal`` are mostly missing outside
    Cleveland. FLamby drops those three columns
    (:data:`HEART_DISEASE_FLAMBY_FEATURES`) and the rows still missing a value.

    Parameters
    ----------
    target : {"binary", "num"}
        ``"binary"`` (default) returns both ``num`` and the binary ``target`` =
        ``int(num > 0)``; ``"num"`` returns ``num`` only.

    Returns
    -------
    pandas.DataFrame
        Columns ``hospital`` (str: ``"cleveland"``, ``"hungary"``,
        ``"switzerland"``, ``"va"``), the 13 features of
        :data:`HEART_DISEASE_FEATURES` (float, NaN where missing), ``num`` (int,
        0 = no disease, 1-4 = disease) and, with ``target="binary"``, ``target``
        (int, 0 or 1). The index runs from 0 to 919.
    """
    if target not in ("binary", "num"):
        raise ValueError(f"target must be 'binary' or 'num', got {target!r}")
    parts = []
    for hospital, fname in HEART_DISEASE_HOSPITALS.items():
        with _path(fname).open("r") as fh:
            part = pd.read_csv(fh, header=None, names=list(HEART_DISEASE_COLUMNS), na_values="?")
        part.insert(0, "hospital", hospital)
        parts.append(part)
    df = pd.concat(parts, ignore_index=True)
    df = df.astype({c: np.float64 for c in HEART_DISEASE_FEATURES})
    df["hospital"] = df["hospital"].astype(str)
    df["num"] = df["num"].astype(np.int64)
    if target == "binary":
        df["target"] = (df["num"] > 0).astype(np.int64)
    return df


def load_sleepstudy() -> pd.DataFrame:
    """Load lme4's ``sleepstudy`` data (Belenky et al. 2003).

    Average reaction times of 18 subjects (the clients) on each of 10 days of
    sleep deprivation (days 0 to 9; 180 rows, 10 per subject), in the file's
    order. lme4's canonical random-slopes example fits
    ``Reaction ~ Days + (Days | Subject)``.

    Returns
    -------
    pandas.DataFrame
        180 rows and columns ``Reaction`` (float, average reaction time in ms),
        ``Days`` (int, 0 to 9), ``Subject`` (int, subject number, 308 to 372)
        and ``reaction_std`` (float): ``Reaction`` standardized with the mean
        and standard deviation (``ddof=0``) of all 180 rows, so that the zoo's
        default priors (unit-scale population sd and noise sd) fit the outcome.
        :data:`DATASETS` uses it as the target: the raw reaction times (mean
        about 300 ms, sd 56 ms) are far outside those priors' scale.
    """
    with _path("sleepstudy.csv").open("r") as fh:
        df = pd.read_csv(fh)
    df = df.astype({"Reaction": np.float64, "Days": np.int64, "Subject": np.int64})
    reaction = df["Reaction"].to_numpy()
    df["reaction_std"] = (reaction - reaction.mean()) / reaction.std()
    return df


GUIMMUN_YES_NO: tuple[str, ...] = ("immun", "kid2p", "mom25p", "momWork", "rural")
"""The columns of ``guimmun`` coded ``Y``/``N`` in the data, encoded 1/0 by :func:`load_guimmun`."""


def load_guimmun() -> pd.DataFrame:
    """Load mlmRev's ``guImmun`` data (Rodriguez & Goldman 2001).

    Complete immunization of 2,159 children of 1,595 mothers in 161 Guatemalan
    communities (the clients; 1 to 55 children each, median 11), in the file's
    order. The yes/no columns of :data:`GUIMMUN_YES_NO` are encoded as 0/1
    integers (``Y`` = 1, ``N`` = 0; the encoding loses nothing); the other
    categorical columns are kept as text.

    Returns
    -------
    pandas.DataFrame
        2,159 rows and the columns of mlmRev's documentation:

        * ``kid``, ``mom``, ``comm`` (int): child, family and community ids;
        * ``immun`` (int): 1 if the child received a complete set of
          immunizations (every child here received at least one);
        * ``kid2p`` (int): 1 if the child was 2 years or older at the survey;
        * ``mom25p`` (int): 1 if the mother was 25 years or older;
        * ``ord`` (str): birth order, ``"01"`` (first child), ``"23"``,
          ``"46"``, ``"7p"`` (seventh or later);
        * ``ethn`` (str): mother's ethnicity, ``"L"`` (Ladino), ``"N"``
          (indigenous, not speaking Spanish), ``"S"`` (indigenous, speaking
          Spanish);
        * ``momEd``, ``husEd`` (str): education of the mother and of her
          husband, ``"N"`` (primary not finished), ``"P"`` (primary finished),
          ``"S"`` (secondary finished), ``husEd`` also ``"U"`` (unknown);
        * ``momWork`` (int): 1 if the mother had ever worked outside the home;
        * ``rural`` (int): 1 if the family's location is rural (constant within
          each community);
        * ``pcInd81`` (float): share of indigenous population in the community
          at the 1981 census (0 to 1).
    """
    text = ["ord", "ethn", "momEd", "husEd"]
    with _path("guimmun.csv").open("r") as fh:
        df = pd.read_csv(fh, dtype={c: str for c in [*text, *GUIMMUN_YES_NO]})
    for col in GUIMMUN_YES_NO:
        levels = set(df[col].unique())
        if not levels <= {"Y", "N"}:
            raise ValueError(f"guimmun column {col!r}: expected Y/N, got {sorted(levels)}")
        df[col] = (df[col] == "Y").astype(np.int64)
    return df.astype(
        {"kid": np.int64, "mom": np.int64, "comm": np.int64, "pcInd81": np.float64}
        | {c: str for c in text}
    )


@dataclass(frozen=True)
class DatasetInfo:
    """Description of a bundled dataset.

    Attributes
    ----------
    name : str
        Name accepted by :func:`load`.
    loader : callable
        Function returning the data frame.
    client_col : str
        Column whose values label the clients.
    target : str
        Column of the outcome.
    features : tuple of str
        Default feature columns.
    default_model : str
        Name of the matching model in ``bayes_pfl.models`` (see ``get_model``).
    description : str
        One-line description.
    citation : str
        Reference to cite.
    licence : str
        Licence or terms of use.
    varying : {"intercept", "slopes"}
        Which coefficients of a zoo GLM vary by client by default (the command
        line's ``--varying`` when it is not given).
    standardizable : bool
        Whether its features may be standardized. ``False`` when a feature is a known
        quantity the model reads in its own units (eight schools' ``sigma`` is each
        school's standard error: standardized, it would no longer be one, and negative
        values break the likelihood). Front ends that standardize by default (Flower's
        run config, ``bayes-pfl compare``) leave such features raw; asking for it
        explicitly (``bayes-pfl fit --standardize``) is an error.
    """

    name: str
    loader: Callable[[], pd.DataFrame]
    client_col: str
    target: str
    features: tuple[str, ...]
    default_model: str
    description: str
    citation: str
    licence: str
    varying: str = "intercept"
    standardizable: bool = True


DATASETS: dict[str, DatasetInfo] = {
    "radon": DatasetInfo(
        name="radon",
        loader=load_radon,
        client_col="county",
        target="log_radon",
        features=("log_uppm", "floor"),
        default_model="radon_intercept",
        description="Minnesota radon: 919 homes in 85 counties (1 to 116 homes per county).",
        citation=(
            "Gelman, A. & Hill, J. (2007). Data Analysis Using Regression and "
            "Multilevel/Hierarchical Models. Cambridge University Press. "
            "Data as in posteriordb's radon_mn."
        ),
        licence="Public data (US EPA National Radon Survey).",
    ),
    "eight_schools": DatasetInfo(
        name="eight_schools",
        loader=load_eight_schools,
        client_col="school",
        target="y",
        features=("sigma",),
        default_model="eight_schools",
        description="Eight schools: SAT-coaching effect estimates and standard errors.",
        citation=(
            "Rubin, D. B. (1981). Estimation in parallel randomized experiments. "
            "Journal of Educational Statistics, 6(4), 377-401."
        ),
        licence="Published summary statistics (Rubin 1981).",
        standardizable=False,  # sigma is each school's known standard error
    ),
    "heart_disease": DatasetInfo(
        name="heart_disease",
        loader=load_heart_disease,
        client_col="hospital",
        target="target",
        features=HEART_DISEASE_FLAMBY_FEATURES,
        default_model="logistic",
        description="UCI Heart Disease: 920 patients in four hospitals (303/294/123/200).",
        citation=(
            "Janosi, A., Steinbrunn, W., Pfisterer, M. & Detrano, R. (1988). Heart "
            "Disease. UCI Machine Learning Repository. https://doi.org/10.24432/C52P4X"
        ),
        licence="CC BY 4.0",
    ),
    "sleepstudy": DatasetInfo(
        name="sleepstudy",
        loader=load_sleepstudy,
        client_col="Subject",
        target="reaction_std",
        features=("Days",),
        default_model="linear",
        description=(
            "Sleep deprivation: reaction times of 18 subjects over 10 days (standardized "
            "outcome reaction_std; raw Reaction in ms)."
        ),
        citation=(
            "Belenky, G. et al. (2003). Patterns of performance degradation and restoration "
            "during sleep restriction and subsequent recovery: a sleep dose-response study. "
            "Journal of Sleep Research, 12, 1-12. Data as in the R package lme4 "
            "(Bates, Maechler, Bolker & Walker 2015)."
        ),
        licence="Distributed with the R package lme4 (GPL-2 | GPL-3).",
        varying="slopes",
    ),
    "guimmun": DatasetInfo(
        name="guimmun",
        loader=load_guimmun,
        client_col="comm",
        target="immun",
        features=("kid2p", "mom25p", "rural"),
        default_model="logistic",
        description=(
            "Guatemalan child immunization: 2,159 children in 161 communities "
            "(1 to 55 children per community)."
        ),
        citation=(
            "Rodriguez, G. & Goldman, N. (1995). An assessment of estimation procedures for "
            "multilevel models with binary responses. Journal of the Royal Statistical "
            "Society A, 158, 73-89. Data as in the R package mlmRev (Bates, Maechler & "
            "Bolker)."
        ),
        licence="Distributed with the R package mlmRev (GPL >= 2).",
    ),
}
"""Bundled datasets by name."""


def load(name: str) -> pd.DataFrame:
    """Load a bundled dataset by name.

    Parameters
    ----------
    name : str
        One of the keys of :data:`DATASETS`.

    Returns
    -------
    pandas.DataFrame
        The dataset, as returned by its loader.

    Raises
    ------
    ValueError
        If ``name`` is not a known dataset.
    """
    try:
        info = DATASETS[name]
    except KeyError:
        known = ", ".join(sorted(DATASETS))
        raise ValueError(f"unknown dataset {name!r}; known datasets: {known}") from None
    return info.loader()


class DataSource(NamedTuple):
    """A table and how it is split into clients (:func:`source`)."""

    frame: pd.DataFrame
    client_col: str
    target: str
    features: list[str]
    default_model: str | None  # the bundled dataset's model, None for CSV files
    name: str | None = None  # the bundled dataset's name
    standardizable: bool = True  # DatasetInfo.standardizable; True for CSV files

    def federated(self, **options):
        """:meth:`~bayes_pfl.data.FederatedData.from_pandas` of this table and its columns
        (``options``: ``test_size``, ``seed``, ``standardize``, ``missing``, ...).

        ``standardize=True`` on a dataset whose features keep their units
        (:attr:`DatasetInfo.standardizable`) is a :class:`~bayes_pfl.data.DataError`.
        """
        from bayes_pfl.data import DataError, FederatedData

        if options.get("standardize") and not self.standardizable:
            raise DataError(
                f"{self.name}: feature(s) {', '.join(self.features)} are known quantities its "
                "model reads in their own units (eight schools: each school's standard "
                "error), never standardized; drop --standardize"
            )
        return FederatedData.from_pandas(
            self.frame,
            client_col=self.client_col,
            target=self.target,
            features=self.features,
            **options,
        )


def source(
    data: str,
    *,
    client_col: str | None = None,
    target: str | None = None,
    features: str | list[str] | None = None,
    flag: str = "--data",
    column_flags: tuple[str, str, str] = ("--client-col", "--target", "--features"),
) -> DataSource:
    """A bundled dataset's name, a CSV path, or one CSV file per client (a folder or a
    glob), with its columns: the one loader of every front end (the command line's
    ``fit`` and ``compare``, Flower's run config).

    * A bundled dataset supplies its own client column, target and features (each may
      be overridden).
    * One CSV of all clients needs all three.
    * A folder (every ``*.csv`` in it) or a glob (``'hospitals/*.csv'``) holds one file
      per client (:mod:`~bayes_pfl.datasets.client_files`): it needs the target and the
      features. Each file is one client labelled by its stem, in a column named
      ``client_col`` (default :data:`FILE_CLIENT_COL`, ``"client"``); if the files have
      that column, it labels the rows instead. Clients come in the order of the file
      names.

    ``features`` may be a comma-separated string. Errors name the options (``flag`` for
    ``data``, ``column_flags`` for the three columns), the file and what is wrong; they
    are :class:`~bayes_pfl.data.DataError`.
    """
    from pathlib import Path

    from bayes_pfl.data import DataError

    if isinstance(features, str):
        features = [f for f in features.split(",")]
    features = [f.strip() for f in features if f.strip()] if features else None
    if data in DATASETS:
        info = DATASETS[data]
        return DataSource(
            info.loader(),
            client_col or info.client_col,
            target or info.target,
            features or list(info.features),
            info.default_model,
            info.name,
            info.standardizable,
        )
    if is_client_files(data):
        missing = [
            name for name, v in zip(column_flags[1:], (target, features), strict=True) if not v
        ]
        if missing:
            raise DataError(f"CSV files need {', '.join(missing)} ({flag} {data!r})")
        client_col = client_col or FILE_CLIENT_COL
        frame = read_client_files(client_files(data, flag=flag), client_col, flag=flag)
        return DataSource(frame, client_col, target, features, None)
    path = Path(data).expanduser()
    if not path.exists():
        raise DataError(
            f"{flag} {data!r}: file not found (nor a folder, nor a bundled dataset: "
            f"{', '.join(DATASETS)})"
        )
    if not path.is_file():
        raise DataError(f"{flag} {data!r} is not a CSV file or a folder")
    given = (client_col, target, features)
    missing = [name for name, value in zip(column_flags, given, strict=True) if not value]
    if missing:
        raise DataError(f"a CSV needs {', '.join(missing)} ({flag} {data!r})")
    return DataSource(pd.read_csv(path), client_col, target, features, None)
