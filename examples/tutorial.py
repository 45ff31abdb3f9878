"""The tutorial (docs/tutorial.md), end to end: per-hospital CSV files -> a formula ->
a federated fit, its report, and a comparison with the optimization baselines.

Run:  python examples/tutorial.py [--workdir DIR] [--quick]

1. writes ``DIR/hospitals/<hospital>.csv``: eight hospitals, one file each, columns
   ``age``, ``bmi``, ``sex`` (text), ``ward`` (text; one hospital has no ICU), ``outcome``
   (0/1), and some missing ``bmi`` values;
2. ``bayes-pfl fit --data DIR/hospitals/ --formula ... --method ep --report``;
3. the same with ``--method nuts`` (the centralized reference) and the largest
   difference between the two;
4. ``bayes-pfl compare`` on the same folder and formula.

Every step is the command line a user types (printed before it runs).
"""

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

FORMULA = "outcome ~ age + bmi + C(sex) + C(ward) + (1 + age | hospital)"
HOSPITALS = {  # rows per hospital: from a small rural clinic to a university hospital
    "aarhus": 220,
    "bergen": 140,
    "cork": 60,
    "delft": 35,
    "essen": 90,
    "faro": 18,
    "graz": 45,
    "hull": 12,
}


def write_hospitals(folder: Path, seed: int = 7) -> None:
    """One CSV per hospital, drawn from a varying-intercept-and-slope logistic model."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in HOSPITALS.items():
        a = rng.normal(-0.3, 0.6)  # the hospital's baseline risk
        s = rng.normal(0.8, 0.3)  # and its age effect (per 10 years)
        age = rng.normal(60, 12, n).round()
        bmi = rng.normal(27, 4.5, n).round(1)
        sex = rng.choice(["female", "male"], n)
        wards = ["general", "cardiology"] if name == "hull" else ["general", "cardiology", "icu"]
        ward = rng.choice(wards, n)
        eta = (
            a
            + s * (age - 60) / 10
            + 0.25 * (bmi - 27) / 4.5
            + 0.4 * (sex == "male")
            + 0.5 * (ward == "icu")
        )
        outcome = rng.binomial(1, 1 / (1 + np.exp(-eta)))
        df = pd.DataFrame({"age": age, "bmi": bmi, "sex": sex, "ward": ward, "outcome": outcome})
        if name in ("cork", "essen"):  # an older scale: some BMI values were not recorded
            df.loc[rng.random(n) < 0.1, "bmi"] = np.nan
        df.to_csv(folder / f"{name}.csv", index=False)


def bayes_pfl(*args: str) -> None:
    cmd = [sys.executable, "-m", "bayes_pfl.cli", *args]
    print("\n$ bayes-pfl " + " ".join(shlex.quote(a) for a in args), flush=True)
    subprocess.run(cmd, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=None, help="default: a new temporary folder")
    parser.add_argument("--quick", action="store_true", help="shorter chains, one seed")
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bayes-pfl-tutorial-"))
    hospitals = work / "hospitals"
    write_hospitals(hospitals)
    print(f"wrote {len(HOSPITALS)} hospital files to {hospitals}/")
    sampling = ["--warmup", "300", "--samples", "300"] if args.quick else []
    common = [
        "--data", f"{hospitals}/", "--formula", FORMULA, "--model", "logistic",
        "--missing", "drop", "--standardize", "--overwrite", "--no-progress",
    ]  # fmt: skip
    bayes_pfl("fit", *common, "--method", "ep", "--report", "--out", str(work / "ep"), *sampling)
    bayes_pfl("fit", *common, "--method", "nuts", "--out", str(work / "nuts"), *sampling)

    ep = pd.read_csv(work / "ep" / "summary.csv", index_col=0)
    ref = pd.read_csv(work / "nuts" / "summary.csv", index_col=0)
    z = ((ep["mean"] - ref["mean"]).abs() / ref["sd"]).dropna()
    r = (ep["sd"] / ref["sd"]).reindex(z.index)
    print(
        f"\nEP vs NUTS over {len(z)} parameters: largest |mean difference| {z.max():.3f} "
        f"posterior sd ({z.idxmax()}); sd ratios {r.min():.2f}-{r.max():.2f}"
    )
    schema = json.loads((work / "ep" / "schema.json").read_text())
    print(f"design columns every hospital built: {schema['features']}")

    bayes_pfl(
        "compare", "--data", f"{hospitals}/", "--formula", FORMULA, "--family", "bernoulli",
        "--missing", "drop", "--methods", "local,fedavg,ditto,nuts,ep",
        "--seeds", "1" if args.quick else "3", "--out", str(work / "compare"), "--no-plots",
    )  # fmt: skip
    print(f"\nreport: {work / 'ep' / 'report.html'}")


if __name__ == "__main__":
    main()
