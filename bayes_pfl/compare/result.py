"""The result of a comparison: per-client metrics of every method and seed, and summaries."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bayes_pfl.compare.families import ComparisonError
from bayes_pfl.compare.predictions import INTERVAL_PROB

__all__ = ["CLASSIFICATION_METRICS", "METRICS", "REGRESSION_METRICS", "ComparisonResult"]

# metric columns, in table order, and whether higher is better
METRICS: dict[str, bool] = {
    "lpd": True,
    "log_loss": False,
    "accuracy": True,
    "brier": False,
    "ece": False,
    "rmse": False,
    "coverage90": True,
}
CLASSIFICATION_METRICS = ("lpd", "log_loss", "accuracy", "brier", "ece")
REGRESSION_METRICS = ("lpd", "rmse", "coverage90")


def _fmt(mean: float, sd: float, digits: int = 3) -> str:
    if not np.isfinite(mean):
        return "-"
    if not np.isfinite(sd):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {sd:.{digits}f}"


@dataclass
class ComparisonResult:
    """Per-client test metrics of every method and seed, and their summaries.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per method x seed x client: ``method``, ``seed``, ``client``,
        ``n_train`` (rows the final fit learnt from), ``n_test``, ``bucket``
        (client size by ``n_train``), the metrics (``lpd``, and ``log_loss``,
        ``accuracy``, ``brier``, ``ece`` for classifiers or ``rmse``,
        ``coverage90`` for regression), ``fit_time_s`` and ``hparams`` (the
        chosen candidate, JSON).
    family : str
    metrics : tuple of str
        The metric columns of :attr:`table`.
    seeds : tuple of int
    methods : tuple of str
        Method names in the order given.
    predictions : dict
        ``(method, seed) -> (Prediction, test ClientArrays)``, for plots.
    tuning : pandas.DataFrame
        Validation score of every grid candidate (``method``, ``seed``,
        ``hparams``, ``val_lpd``, ``chosen``).
    info : dict
        Settings: buckets, refit, data description.
    """

    table: pd.DataFrame
    family: str
    metrics: tuple[str, ...]
    seeds: tuple[int, ...]
    methods: tuple[str, ...]
    predictions: dict = field(default_factory=dict, repr=False)
    tuning: pd.DataFrame = field(default_factory=pd.DataFrame)
    info: dict[str, Any] = field(default_factory=dict)

    def _per_seed(self, keys: list[str], weighted: bool) -> pd.DataFrame:
        t = self.table
        if weighted:
            w = t["n_test"].astype(float)
            num = t[list(self.metrics)].mul(w, axis=0)
            num[keys] = t[keys]
            num["_w"] = w.where(t[list(self.metrics)].notna().any(axis=1), 0.0)
            g = num.groupby(keys, observed=True, sort=False)
            return g[list(self.metrics)].sum().div(g["_w"].sum(), axis=0)
        return t.groupby(keys, observed=True, sort=False)[list(self.metrics)].mean()

    def _across_seeds(self, per_seed: pd.DataFrame, by: list[str]) -> pd.DataFrame:
        g = per_seed.groupby(level=by, observed=True, sort=False)
        mean, sd = g.mean(), g.std(ddof=1)
        out = pd.DataFrame(index=mean.index)
        for m in self.metrics:
            out[f"{m}_mean"] = mean[m]
            out[f"{m}_sd"] = sd[m]
        out["n_seeds"] = g.size()
        return out

    def summary(self, *, weighted: bool = False) -> pd.DataFrame:
        """Mean per-client metrics per method, mean and sd across seeds.

        For each method and seed the metrics are averaged over clients (each
        client counts once; ``weighted=True`` weights clients by their test
        rows, i.e. pools the rows); ``<metric>_mean`` and ``<metric>_sd`` are the
        mean and standard deviation of these averages across seeds (``sd`` is
        NaN with one seed). Indexed by method, in the order given.
        """
        per = self._per_seed(["method", "seed"], weighted)
        out = self._across_seeds(per, ["method"])
        return out.reindex(list(self.methods))

    def by_bucket(self, *, weighted: bool = False) -> pd.DataFrame:
        """As :meth:`summary`, per client-size bucket: indexed by ``(bucket, method)``.

        ``n_clients`` is the mean number of clients in the bucket per seed.
        """
        per = self._per_seed(["bucket", "method", "seed"], weighted)
        out = self._across_seeds(per, ["bucket", "method"])
        counts = (
            self.table.groupby(["bucket", "method", "seed"], observed=True, sort=False)
            .size()
            .groupby(level=["bucket", "method"], observed=True, sort=False)
            .mean()
        )
        out["n_clients"] = counts
        order = [
            (b, m)
            for b in self.table["bucket"].cat.categories
            for m in self.methods
            if (b, m) in out.index
        ]
        return out.reindex(pd.MultiIndex.from_tuples(order, names=["bucket", "method"]))

    def best(self, metric: str, *, by_bucket: bool = False) -> pd.Series | str:
        """The method with the best mean ``metric`` (per bucket with ``by_bucket``)."""
        if metric not in self.metrics:
            raise ComparisonError(f"unknown metric {metric!r}; have {list(self.metrics)}")
        col = f"{metric}_mean"
        higher = METRICS[metric]
        if not by_bucket:
            s = self.summary()[col]
            return str(s.idxmax() if higher else s.idxmin())
        s = self.by_bucket()[col]
        g = s.groupby(level="bucket", observed=True, sort=False)
        return (g.idxmax() if higher else g.idxmin()).map(lambda ix: ix[1])

    def main_metric(self) -> str:
        """``log_loss`` for classifiers, ``lpd`` otherwise."""
        return "log_loss" if "log_loss" in self.metrics else "lpd"

    def to_markdown(self, *, title: str = "Method comparison", digits: int = 3) -> str:
        """A short markdown summary: per-method table (best in bold), by-bucket table."""
        s = self.summary()
        lines = [f"# {title}", ""]
        info = self.info.get("data", {})
        desc = ", ".join(f"{k} {v}" for k, v in info.items())
        lines.append(
            f"Family `{self.family}`; seeds {list(self.seeds)}; {desc}. Metrics are per-client "
            "test-set values averaged over clients, then mean ± sd across seeds."
        )
        lines.append("")
        header = ["method", *self.metrics]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join(" --- " for _ in header) + "|")
        best = {}
        for m in self.metrics:
            col = s[f"{m}_mean"]
            if col.notna().any():
                best[m] = col.idxmax() if METRICS[m] else col.idxmin()
            if m == "coverage90" and col.notna().any():
                best[m] = (col - INTERVAL_PROB).abs().idxmin()
        for meth in s.index:
            cells = []
            for m in self.metrics:
                txt = _fmt(s.loc[meth, f"{m}_mean"], s.loc[meth, f"{m}_sd"], digits)
                cells.append(f"**{txt}**" if best.get(m) == meth else txt)
            lines.append(f"| {meth} | " + " | ".join(cells) + " |")
        lines.append("")
        metric = self.main_metric()
        b = self.by_bucket()
        lines.append(f"## {metric} by client-size bucket (training rows)")
        lines.append("")
        buckets = [c for c in self.table["bucket"].cat.categories if c in b.index.levels[0]]
        lines.append("| method | " + " | ".join(f"{c} ({_nclients(b, c)})" for c in buckets) + " |")
        lines.append("|" + "|".join(" --- " for _ in range(len(buckets) + 1)) + "|")
        for meth in self.methods:
            cells = []
            for c in buckets:
                if (c, meth) in b.index:
                    row = b.loc[(c, meth)]
                    cells.append(_fmt(row[f"{metric}_mean"], row[f"{metric}_sd"], digits))
                else:
                    cells.append("-")
            lines.append(f"| {meth} | " + " | ".join(cells) + " |")
        if len(self.tuning):
            lines += ["", "## Tuned hyper-parameters (chosen on validation rows)", ""]
            chosen = self.tuning[self.tuning["chosen"]]
            for meth, g in chosen.groupby("method", sort=False):
                picks = ", ".join(f"seed {r.seed}: {r.hparams}" for r in g.itertuples())
                lines.append(f"- {meth}: {picks}")
        return "\n".join(lines) + "\n"

    def to_csv(self, out_dir: str | Path, *, title: str = "Method comparison") -> dict[str, Path]:
        """Write ``comparison.csv`` (the table), ``summary.csv``, ``by_bucket.csv``,
        ``tuning.csv`` (when methods were tuned) and ``summary.md``; return their paths."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {
            "table": out / "comparison.csv",
            "summary": out / "summary.csv",
            "by_bucket": out / "by_bucket.csv",
            "markdown": out / "summary.md",
        }
        self.table.to_csv(paths["table"], index=False)
        self.summary().to_csv(paths["summary"])
        self.by_bucket().to_csv(paths["by_bucket"])
        if len(self.tuning):
            paths["tuning"] = out / "tuning.csv"
            self.tuning.to_csv(paths["tuning"], index=False)
        paths["markdown"].write_text(self.to_markdown(title=title))
        return paths


def _nclients(b: pd.DataFrame, bucket) -> str:
    n = b.xs(bucket, level="bucket")["n_clients"].max()
    return f"{n:g} client{'' if n == 1 else 's'}"
