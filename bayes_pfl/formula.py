"""Models declared as formulas, the way statisticians write them (lme4 / brms / bambi).

``outcome ~ age + bmi + C(sex) + (1 + age | hospital)`` declares a hierarchical GLM:
the terms left of the bar vary by client (the bar's right side names the client
column), the others have one common effect; a varying term that is also a common term
varies around that common effect (its population mean ``mu``), one that is not varies
around 0. The family comes by name (``bernoulli``, ``normal``, ``poisson``, or the zoo's
``logistic``, ``linear``). Formulas are parsed and evaluated by the maintained
`formulae <https://github.com/bambinos/formulae>`_ package.

The federated subtlety is the *schema*. A client that holds only some levels of a
factor must build the same design columns as every other client, so the columns are
fixed once by a :class:`Schema`: the formula and, for every categorical variable, the
union of its levels. A client contributes only the *set of levels* it has (no row, no
count); each client then evaluates its own rows against the schema, and a level the
schema does not know is an error, never a silent new column. Standardization (``standardize=True``)
uses pooled means and scales that clients compute from per-client sums
(:meth:`bayes_pfl.data.FederatedData.from_pandas`). Formula functions that learn from the
data they see (``center``, ``scale``, ``standardize``) would learn from one client's
rows and are refused; ``standardize=True`` does their work federation-wide.

Varying coefficients are independent a priori (a diagonal population covariance, as
lme4's ``(1 + age || g)``); ``(1 + age | g)`` is read that way.

>>> import pandas as pd
>>> df = pd.DataFrame({
...     "hospital": ["a", "a", "a", "b", "b", "b"],
...     "age": [50.0, 61, 45, 70, 38, 55],
...     "sex": ["F", "M", "F", "F", "F", "F"],
...     "y": [1, 0, 1, 1, 0, 0],
... })
>>> fm = from_formula("y ~ age + C(sex) + (1 + age | hospital)", df, family="bernoulli")
>>> fm.schema.features
('age', 'C(sex)[M]')
>>> fm.model.coords["b"], fm.model.coords["beta"]
(('Intercept', 'age'), ('C(sex)[M]',))
>>> fm.data.arrays().x[1, :3, 1].tolist()  # hospital b has no "M": same column, zeros
[0.0, 0.0, 0.0]
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from bayes_pfl.data import DataError, FederatedData
from bayes_pfl.spec import HierarchicalModel, ModelSpecError

__all__ = [
    "FAMILY_ALIASES",
    "FormulaError",
    "FormulaModel",
    "Schema",
    "formula_model",
    "formula_source",
    "from_formula",
    "parse_formula",
]

FAMILY_ALIASES = {
    "bernoulli": "bernoulli",
    "logistic": "bernoulli",
    "normal": "normal",
    "gaussian": "normal",
    "linear": "normal",
    "poisson": "poisson",
}
"""Family names a formula model accepts, and the likelihood each means."""

_STATEFUL = ("center", "scale", "standardize")
# what a formula's calls may name, besides formulae's own (C, I, ...): numpy as np and its
# elementwise functions by their plain names (log(x), exp(x), sqrt(x))
_NAMESPACE = {
    "np": np,
    "numpy": np,
    **{f: getattr(np, f) for f in ("log", "log1p", "exp", "sqrt", "abs")},
}
_INTERCEPT = "Intercept"


class FormulaError(ModelSpecError):
    """A formula bayes-pfl cannot fit, with the reason."""


class ParsedFormula(NamedTuple):
    """A formula split into what the schema needs (see :func:`parse_formula`)."""

    response: str
    group: str
    common: str  # right-hand side of the common terms, e.g. "1 + age + C(sex)"
    varying: str  # right-hand side of the varying terms, e.g. "1 + age"
    variables: tuple[str, ...]  # data columns the right-hand side reads
    categorical: tuple[str, ...]  # of those, the ones wrapped in C(...)


def _formulae():
    try:
        import formulae
    except ImportError as exc:  # pragma: no cover - a dependency of the package
        raise FormulaError("formulas need the 'formulae' package (pip install formulae)") from exc
    return formulae


def parse_formula(formula: str) -> ParsedFormula:
    """Split ``formula`` into response, client column, common and varying terms.

    Raises
    ------
    FormulaError
        Not a formula of one response and exactly one grouping column (the client
        column), or a term bayes-pfl cannot evaluate client by client.
    """
    if not isinstance(formula, str) or "~" not in formula:
        raise FormulaError(f"a formula reads 'outcome ~ terms + (terms | client)', got {formula!r}")
    if "||" in formula:
        formula = formula.replace("||", "|")  # varying terms are independent anyway
    formulae = _formulae()
    try:
        desc = formulae.model_description(formula)
    except Exception as exc:
        raise FormulaError(f"cannot parse formula {formula!r}: {exc}") from exc
    if desc.response is None:
        raise FormulaError(f"formula {formula!r} has no outcome left of '~'")
    resp = desc.response.term
    if (
        type(resp).__name__ != "Term"
        or len(resp.components) != 1
        or (type(resp.components[0]).__name__ != "Variable")
    ):
        raise FormulaError(
            f"the outcome must be a column name, got {resp.name!r} (transform the column "
            "before fitting)"
        )
    common, varying, groups = [], [], []
    common_intercept = varying_intercept = False
    for term in desc.terms:
        kind = type(term).__name__
        if kind == "Intercept":
            common_intercept = True
        elif kind == "Term":
            common.append(term)
        elif kind == "GroupSpecificTerm":
            groups.append(term.factor.name)
            if type(term.expr).__name__ == "Intercept":
                varying_intercept = True
            else:
                varying.append(term.expr)
        else:  # pragma: no cover - formulae's other kinds (offsets)
            raise FormulaError(f"term {term!r} of kind {kind} is not supported")
    if not groups:
        raise FormulaError(
            f"formula {formula!r} has no varying term: a hierarchical model needs one, "
            "e.g. '(1 | client)' for a varying intercept"
        )
    if len(set(groups)) > 1:
        raise FormulaError(
            f"formula {formula!r} groups by {sorted(set(groups))}: bayes-pfl's only grouping "
            "is the client column (one name right of every '|')"
        )
    group = groups[0]
    for term in common + varying:
        name = term.name
        if re.match(rf"^({'|'.join(_STATEFUL)})\(", name):
            raise FormulaError(
                f"term {name!r}: {name.split('(')[0]}() would learn its constants from each "
                "client's own rows; use standardize=True (--standardize), whose pooled "
                "constants the federation computes from per-client sums"
            )
    variables, categorical = [], []
    for term in common + varying:
        for comp in term.components:
            for v in sorted(x for x in comp.var_names if x):
                if v not in variables:
                    variables.append(v)
            if type(comp).__name__ == "Call" and comp.name.startswith("C("):
                categorical += [v for v in comp.var_names if v and v not in categorical]
    if group in variables:
        raise FormulaError(f"the client column {group!r} cannot also be a term")
    if resp.name in variables:
        raise FormulaError(f"the outcome {resp.name!r} cannot also be a term")

    def rhs(intercept: bool, terms) -> str:
        return " + ".join(["1" if intercept else "0", *(t.name for t in terms)])

    return ParsedFormula(
        response=resp.name,
        group=group,
        common=rhs(common_intercept, common),
        varying=rhs(varying_intercept, varying),
        variables=tuple(variables),
        categorical=tuple(categorical),
    )


def formula_source(data: str, formula: str, *, flag: str = "--data"):
    """``(DataSource, ParsedFormula)``: the rows of ``data`` (a bundled dataset, a CSV, or
    a folder or glob of one CSV per client: :func:`bayes_pfl.datasets.source`) for
    ``formula``, which names the client column (a folder's files are labelled in it) and
    the outcome; only the columns the formula reads need to exist."""
    from bayes_pfl.datasets import source

    parsed = parse_formula(formula)
    src = source(
        data,
        client_col=parsed.group,
        target=parsed.response,
        features=list(parsed.variables) or [parsed.response],
        flag=flag,
    )
    return src, parsed


def _sort_levels(levels) -> tuple:
    try:
        return tuple(sorted(levels))
    except TypeError:  # mixed types: by their text
        return tuple(sorted(levels, key=str))


def _is_categorical(col: pd.Series) -> bool:
    return not (pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col))


@dataclass(frozen=True)
class Schema:
    """The design every client evaluates its rows against.

    Build it with :meth:`from_clients` (from each client's set of levels) or
    :meth:`from_dict` (a schema sent by a server). It is all a client needs to turn its
    own rows into design columns equal to everyone else's.

    Attributes
    ----------
    formula : str
        The formula as given.
    levels : dict
        Categorical variable -> its levels, sorted; the first is the reference.
    features : tuple of str
        Design column labels (``age``, ``C(sex)[M]``, ``age:bmi``), the intercept excluded.
    varying, common : tuple of str
        Terms (design labels, ``Intercept`` included) that vary by client / that have a
        common effect (see :class:`bayes_pfl.models.Terms`).
    """

    formula: str
    levels: dict[str, tuple]
    features: tuple[str, ...] = ()
    varying: tuple[str, ...] = ()
    common: tuple[str, ...] = ()
    _parsed: ParsedFormula | None = field(default=None, repr=False, compare=False)
    _matrices: Any = field(default=None, repr=False, compare=False)

    @property
    def parsed(self) -> ParsedFormula:
        return self._parsed

    @property
    def response(self) -> str:
        return self._parsed.response

    @property
    def group(self) -> str:
        return self._parsed.group

    # ------------------------------------------------------------------ build
    @classmethod
    def from_clients(
        cls, formula: str, frames: Mapping[Hashable, pd.DataFrame] | pd.DataFrame
    ) -> Schema:
        """The schema of ``formula`` for clients holding ``frames``.

        ``frames``: one data frame per client, or one long frame with the formula's
        client column. Only each client's *set of levels* of every categorical
        variable enters the schema (their union, sorted).
        """
        parsed = parse_formula(formula)
        frames = _per_client(frames, parsed.group)
        categorical = set(parsed.categorical)
        for label, frame in frames.items():
            _check_columns(frame, parsed.variables, label)
            categorical |= {v for v in parsed.variables if _is_categorical(frame[v])}
        levels = {}
        for v in parsed.variables:
            if v not in categorical:
                continue
            union = set()
            for frame in frames.values():
                union |= set(pd.unique(frame[v].dropna()))
            if not union:
                raise DataError(f"categorical column {v!r} has no value in any client")
            levels[v] = _sort_levels(union)
        return cls._build(formula, parsed, levels)

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> Schema:
        """A schema from :meth:`to_dict` (e.g. sent by a server); its columns are re-derived
        and must equal the ones recorded."""
        try:
            formula = spec["formula"]
            levels = {str(k): tuple(v) for k, v in dict(spec["levels"]).items()}
        except (KeyError, TypeError, ValueError) as exc:
            raise FormulaError(f"not a formula schema: {exc}") from exc
        schema = cls._build(formula, parse_formula(formula), levels)
        recorded = tuple(spec.get("features", schema.features))
        if recorded != schema.features:
            raise FormulaError(
                f"schema columns {list(recorded)} differ from the ones its formula and levels "
                f"give here ({list(schema.features)}): different formulae versions?"
            )
        return schema

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: formula, levels and the columns they give."""
        return {
            "formula": self.formula,
            "levels": {k: [_plain(x) for x in v] for k, v in self.levels.items()},
            "features": list(self.features),
            "varying": list(self.varying),
            "common": list(self.common),
        }

    @classmethod
    def _build(cls, formula: str, parsed: ParsedFormula, levels: dict[str, tuple]) -> Schema:
        formulae = _formulae()
        unknown = set(levels) - set(parsed.variables)
        if unknown:
            raise FormulaError(
                f"levels given for {sorted(unknown)}, which the formula does not use"
            )
        # a stand-in frame carrying every level: the matrices learn the columns from it
        n = max([2, *(len(v) for v in levels.values())])
        frame = {}
        for v in parsed.variables:
            if v in levels:
                lv = list(levels[v])
                frame[v] = pd.Categorical([lv[i % len(lv)] for i in range(n)], categories=lv)
            else:
                frame[v] = np.arange(1.0, n + 1.0)
        frame = pd.DataFrame(frame)
        matrices = {}
        labels = {}
        for part in ("common", "varying"):
            rhs = getattr(parsed, part)
            try:
                m = formulae.design_matrices(
                    rhs, frame, na_action="error", extra_namespace=_NAMESPACE
                ).common
            except Exception as exc:
                raise FormulaError(f"cannot evaluate the terms {rhs!r}: {exc}") from exc
            matrices[part] = m
            labels[part] = tuple(m.as_dataframe().columns) if m is not None else ()
        features = []
        for lab in labels["common"] + labels["varying"]:
            if lab != _INTERCEPT and lab not in features:
                features.append(lab)
        return cls(
            formula=formula,
            levels=levels,
            features=tuple(features),
            varying=labels["varying"],
            common=labels["common"],
            _parsed=parsed,
            _matrices=matrices,
        )

    # ------------------------------------------------------------------ use
    def design(self, frame: pd.DataFrame, *, client: Hashable | None = None) -> pd.DataFrame:
        """One client's design columns (:attr:`features`), row for row of ``frame``.

        Rows with a missing value in a variable the formula reads give NaN rows.

        Raises
        ------
        DataError
            A column the formula reads is missing, or a categorical value is not among
            the schema's levels (named, with the levels known).
        """
        where = f"client {client!r}: " if client is not None else ""
        _check_columns(frame, self._parsed.variables, client)
        frame = frame.loc[:, list(self._parsed.variables)].copy()
        missing = frame.isna().any(axis=1).to_numpy()
        for v, lv in self.levels.items():
            col = frame[v]
            seen = set(pd.unique(col.dropna()))
            unseen = seen - set(lv)
            if unseen:
                raise DataError(
                    f"{where}column {v!r} has level(s) {_sort_levels(unseen)} that the "
                    f"federation's schema does not know (levels: {list(lv)})"
                )
            fill = lv[0]
            frame[v] = pd.Categorical(col.where(~col.isna(), fill), categories=list(lv))
        for v in self._parsed.variables:
            if v not in self.levels:
                col = frame[v]
                if pd.api.types.is_bool_dtype(col):
                    col = col.astype(float)
                frame[v] = pd.to_numeric(col, errors="raise").fillna(1.0)
        out = pd.DataFrame(index=frame.index, columns=list(self.features), dtype=float)
        if len(frame):
            for part in ("common", "varying"):
                m = self._matrices[part]
                if m is None:
                    continue
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    got = m.evaluate_new_data(frame).as_dataframe()
                for lab in got.columns:
                    if lab != _INTERCEPT:
                        out[lab] = got[lab].to_numpy(dtype=float)
        out.loc[missing, :] = np.nan
        return out


def _plain(x):
    return x.item() if isinstance(x, np.generic) else x


def _check_columns(frame: pd.DataFrame, columns: Sequence[str], client) -> None:
    absent = [c for c in columns if c not in frame.columns]
    if absent:
        where = f" of client {client!r}" if client is not None else ""
        raise DataError(
            f"the formula reads column(s) {absent}, which the data{where} lack "
            f"(columns: {list(frame.columns)})"
        )


def _per_client(frames, group: str) -> dict[Hashable, pd.DataFrame]:
    if isinstance(frames, pd.DataFrame):
        if group not in frames.columns:
            raise DataError(
                f"the formula's client column {group!r} is not in the data "
                f"(columns: {list(frames.columns)})"
            )
        if frames[group].isna().any():
            raise DataError(f"client column {group!r} has missing values")
        return {k: g for k, g in frames.groupby(group, sort=False)}
    return dict(frames)


class FormulaModel(NamedTuple):
    """A formula fitted to clients' data: the model, the data and the schema."""

    model: HierarchicalModel
    data: FederatedData
    schema: Schema

    def design(self, frame: pd.DataFrame) -> np.ndarray:
        """New rows (prediction, cold start) as the model's ``x``: the schema's columns,
        standardized with the fitted data's constants."""
        x = self.schema.design(frame).to_numpy(dtype=float)
        if np.isnan(x).any():
            raise DataError("rows with missing values in the formula's columns")
        if self.data.feature_mean is not None:
            x = (x - self.data.feature_mean) / self.data.feature_scale
        return x


def from_formula(
    formula: str,
    df: pd.DataFrame,
    *,
    family: str,
    schema: Schema | None = None,
    clients: Sequence[Hashable] | None = None,
    test_size: float = 0.0,
    val_size: float = 0.0,
    seed: int = 0,
    standardize: bool = False,
    missing: str = "error",
    centered: bool = False,
    coef_scale: float = 2.5,
    tau_scale: float = 1.0,
    sigma_scale: float = 1.0,
    name: str | None = None,
) -> FormulaModel:
    """Model and federated data from a formula and a long data frame.

    Parameters
    ----------
    formula : str
        ``outcome ~ common terms + (varying terms | client column)``.
    df : pandas.DataFrame
        One row per observation, with the client column the formula names.
    family : str
        ``bernoulli`` (``logistic``), ``normal`` (``gaussian``, ``linear``) or ``poisson``.
    schema : Schema, optional
        A schema fixed beforehand (e.g. by a server). Default: from the clients' levels.
    clients, test_size, val_size, seed, standardize
        As in :meth:`bayes_pfl.data.FederatedData.from_pandas`.
    missing : {"error", "drop"}
        Rows with a missing value in a column the formula reads: an error naming the
        column and clients, or dropped (counted, with a warning).
    centered, coef_scale, tau_scale, sigma_scale
        The model's parameterization and prior scales (see
        :func:`bayes_pfl.models.hierarchical_glm`): ``mu, beta ~ N(0, coef_scale)``,
        ``tau ~ HalfNormal(tau_scale)``, ``sigma_y ~ HalfNormal(sigma_scale)``.
    name : str, optional
        The model's name in outputs (default: the family's name).

    Returns
    -------
    FormulaModel
        ``(model, data, schema)``.
    """
    if family not in FAMILY_ALIASES:
        raise FormulaError(f"unknown family {family!r}; choose one of {', '.join(FAMILY_ALIASES)}")
    if missing not in ("error", "drop"):
        raise DataError(f"formulas take missing='error' or 'drop', got {missing!r}")
    parsed = parse_formula(formula)
    per_client = _per_client(df, parsed.group)
    if schema is None:
        schema = Schema.from_clients(formula, per_client)
    elif schema.formula != formula:
        raise FormulaError(f"the schema is for {schema.formula!r}, not {formula!r}")
    if parsed.response not in df.columns:
        raise DataError(
            f"the formula's outcome {parsed.response!r} is not in the data "
            f"(columns: {list(df.columns)})"
        )
    if missing == "error":
        gaps = df[list(parsed.variables)].isna()
        if gaps.any().any():
            cols = [c for c in parsed.variables if gaps[c].any()]
            who = pd.unique(df.loc[gaps.any(axis=1), parsed.group])
            raise DataError(
                f"missing values in column(s) {cols} (clients {list(who)[:10]}); "
                "drop those rows with missing='drop' (--missing drop)"
            )
    parts = [schema.design(frame, client=label) for label, frame in per_client.items()]
    design = pd.concat(parts).reindex(df.index) if parts else pd.DataFrame()
    long = design.copy()
    long.insert(0, parsed.group, df[parsed.group])
    long[parsed.response] = df[parsed.response]
    data = FederatedData.from_pandas(
        long,
        client_col=parsed.group,
        target=parsed.response,
        features=list(schema.features),
        clients=clients,
        test_size=test_size,
        val_size=val_size,
        seed=seed,
        standardize=standardize,
        missing=missing,
    )
    model = formula_model(
        schema,
        family,
        centered=centered,
        coef_scale=coef_scale,
        tau_scale=tau_scale,
        sigma_scale=sigma_scale,
        name=name,
    )
    return FormulaModel(model, data, schema)


def formula_model(
    schema: Schema,
    family: str,
    *,
    centered: bool = False,
    coef_scale: float = 2.5,
    tau_scale: float = 1.0,
    sigma_scale: float = 1.0,
    name: str | None = None,
) -> HierarchicalModel:
    """The hierarchical GLM of a schema's terms (see :func:`from_formula` for the options)."""
    from bayes_pfl.models import Terms, hierarchical_glm

    if family not in FAMILY_ALIASES:
        raise FormulaError(f"unknown family {family!r}; choose one of {', '.join(FAMILY_ALIASES)}")
    terms = Terms(schema.features, varying=schema.varying, common=schema.common)
    model = hierarchical_glm(
        FAMILY_ALIASES[family],
        varying=terms,
        centered=centered,
        coef_scale=coef_scale,
        tau_scale=tau_scale,
        sigma_scale=sigma_scale,
        name=name or family,
    )
    model.description = f"{model.description} Formula: {schema.formula}"
    return model
