"""Figures: each plot's ``data`` is checked against numbers computed here from real fits."""

from statistics import NormalDist

import matplotlib
import numpy as np
import pandas as pd
import pytest
from _helpers import nuts
from matplotlib.figure import Figure
from matplotlib.text import Annotation

from bayes_pfl import load
from bayes_pfl.federated import fit_ep
from bayes_pfl.models import eight_schools
from bayes_pfl.plots import (
    PlotResult,
    plot_calibration,
    plot_compare,
    plot_convergence,
    plot_forest,
    plot_forest_terms,
    plot_shrinkage,
    plot_shrinkage_terms,
)

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SCHOOLS = list("ABCDEFGH")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def data(schools):
    return schools


def _nuts(data, seed):
    return nuts(eight_schools(), data, chains=2, warmup=500, samples=500, seed=seed).to_datatree(
        data
    )


@pytest.fixture(scope="module")
def dt(data):
    return _nuts(data, 0)


@pytest.fixture(scope="module")
def dt2(data):
    return _nuts(data, 1)


@pytest.fixture(scope="module")
def ep(data):
    # EP over the global parameters, whose history records the damping and which does not
    # converge (tol 1e-3) in 3 rounds; the server draws from its Laplace summary: the same
    # rounds, a faster test
    return fit_ep(
        eight_schools(),
        data,
        rounds=3,
        sites="global",
        progress=False,
        num_chains=2,
        num_samples=300,
        num_warmup=300,
        global_method="laplace",
    )


def _draws(dt, var):
    """(chain*draw, client) draws of a client variable, columns the client labels."""
    da = dt.posterior[var].transpose("chain", "draw", "client")
    return pd.DataFrame(
        da.values.reshape(-1, da.sizes["client"]), columns=[str(c) for c in da.client.values]
    )


def _shrinkage_table(dt, data):
    """The columns of ``inspection.shrinkage_table`` for eight schools, by hand.

    Each school holds one row: its local estimate is ``y`` with standard error ``sigma``.
    """
    z = NormalDist().inv_cdf(0.95)
    df = load("eight_schools").set_index("school")
    draws = _draws(dt, "theta")
    pooled = float(dt.posterior["mu"].mean())
    t = pd.DataFrame(
        {
            "n": np.asarray(data.n_rows()),
            "local_mean": df["y"],
            "local_lo": df["y"] - z * df["sigma"],
            "local_hi": df["y"] + z * df["sigma"],
            "personal_mean": draws.mean(),
            "personal_lo": draws.quantile(0.05),
            "personal_hi": draws.quantile(0.95),
            "pooled_mean": pooled,
        },
        index=pd.Index(SCHOOLS, name="client"),
    )
    t["shrinkage"] = (t["local_mean"] - t["personal_mean"]) / (t["local_mean"] - pooled)
    t.attrs["var"] = "theta"
    return t


def _check_png(res: PlotResult, path):
    assert res.path == path
    blob = path.read_bytes()
    assert blob[:8] == PNG_MAGIC and len(blob) > 5_000


def test_shrinkage_arrows_from_local_to_personal(dt, data, tmp_path):
    table = _shrinkage_table(dt, data)
    before = plt.get_fignums()
    res = plot_shrinkage(table, path=tmp_path / "shrink.png")
    assert plt.get_fignums() == before  # nothing left open in pyplot
    assert isinstance(res.fig, Figure) and len(res.axes) == 1
    _check_png(res, tmp_path / "shrink.png")

    d = res.data
    assert list(d["client"]) == SCHOOLS
    np.testing.assert_allclose(d["local"], table["local_mean"])
    np.testing.assert_allclose(d["personal"], table["personal_mean"])
    np.testing.assert_allclose(d["pooled"], table["pooled_mean"])
    assert (d["n"] == 1).all()
    assert res.extra["pooled_line"] == pytest.approx(float(dt.posterior["mu"].mean()))
    # partial pooling pulls every school toward mu: |personal - mu| < |local - mu|
    mu = res.extra["pooled_line"]
    assert ((d["personal"] - mu).abs() < (d["local"] - mu).abs()).all()

    # the arrows drawn: tail at (0, local), head at (1, personal)
    arrows = [a for a in res.axes[0].texts if isinstance(a, Annotation) and a.arrow_patch]
    assert len(arrows) == 8
    tails = sorted(a.xyann for a in arrows)
    heads = sorted(a.xy for a in arrows)
    assert tails == sorted((0.0, v) for v in table["local_mean"])
    assert heads == sorted((1.0, v) for v in table["personal_mean"])
    line = [ln for ln in res.axes[0].lines if ln.get_linestyle() == "--"]
    assert line and line[0].get_ydata()[0] == pytest.approx(mu)


def test_shrinkage_marker_size_grows_with_n_and_labels_from_column():
    t = pd.DataFrame(
        {
            "client": ["small", "mid", "big"],
            "n": [2, 10, 50],
            "local_mean": [3.0, -1.0, 0.5],
            "personal_mean": [0.8, -0.5, 0.45],
            "pooled_mean": 0.3,
        }
    )
    ax = Figure().subplots()
    res = plot_shrinkage(t, ax=ax, title="made up")
    assert res.axes == (ax,) and res.fig is ax.figure
    assert list(res.data["client"]) == ["small", "mid", "big"]
    assert res.data["marker_size"].is_monotonic_increasing
    sizes = [c.get_sizes() for c in ax.collections]
    assert all(np.allclose(s, res.data["marker_size"]) for s in sizes)
    assert ax.get_title() == "made up"


def test_shrinkage_bad_input():
    t = pd.DataFrame({"n": [1], "local_mean": [1.0], "personal_mean": [0.5]})
    with pytest.raises(ValueError, match="missing column.*pooled_mean"):
        plot_shrinkage(t)
    t["pooled_mean"] = 0.0
    idx = pd.MultiIndex.from_product([["a"], [0, 1]], names=["client", "element"])
    with pytest.raises(ValueError, match="element="):
        plot_shrinkage(pd.concat([t, t]).set_axis(idx))
    res = plot_shrinkage(pd.concat([t, t.assign(local_mean=9.0)]).set_axis(idx), element=1)
    assert list(res.data["local"]) == [9.0]


def test_forest_sorted_intervals_and_population_band(dt, tmp_path):
    before = plt.get_fignums()
    res = plot_forest(dt, "theta", population=("mu", "tau"), path=tmp_path / "forest.png")
    assert plt.get_fignums() == before
    _check_png(res, tmp_path / "forest.png")

    draws = _draws(dt, "theta")
    d = res.data.set_index("client")
    assert sorted(d.index) == SCHOOLS
    assert res.data["mean"].is_monotonic_increasing  # drawn in order of the mean
    assert res.data["y"].is_monotonic_decreasing  # first (smallest) on top
    np.testing.assert_allclose(d["mean"], draws.mean()[d.index], rtol=1e-10)
    np.testing.assert_allclose(d["lo"], draws.quantile(0.05)[d.index], rtol=1e-8)
    np.testing.assert_allclose(d["hi"], draws.quantile(0.95)[d.index], rtol=1e-8)

    mu, tau = float(dt.posterior["mu"].mean()), float(dt.posterior["tau"].mean())
    band = NormalDist(mu, tau).inv_cdf(0.05), NormalDist(mu, tau).inv_cdf(0.95)
    np.testing.assert_allclose(res.extra["band"], band, rtol=1e-10)
    assert res.extra["z"] == pytest.approx(1.6448536, abs=1e-6)
    # the band is on the interval panel
    spans = [p for p in res.axes[0].patches if p.get_alpha() == 0.25]
    assert len(spans) == 1
    x0 = spans[0].get_x()
    np.testing.assert_allclose((x0, x0 + spans[0].get_width()), band, rtol=1e-10)


def test_forest_into_given_axes_draws_the_same(dt):
    ax = Figure().subplots()
    res = plot_forest(dt, "theta", population=("mu", "tau"), ci_prob=0.8, ax=ax)
    assert res.axes == (ax,)
    draws = _draws(dt, "theta")
    d = res.data.set_index("client")
    assert res.data["mean"].is_monotonic_increasing
    np.testing.assert_allclose(d["lo"], draws.quantile(0.1)[d.index], rtol=1e-8)
    np.testing.assert_allclose(d["hi"], draws.quantile(0.9)[d.index], rtol=1e-8)
    assert [t.get_text() for t in ax.get_yticklabels()] == list(res.data["client"])
    assert res.extra["z"] == pytest.approx(NormalDist().inv_cdf(0.9))


def test_forest_bad_input(dt):
    with pytest.raises(ValueError, match="unknown variable 'nope'.*theta"):
        plot_forest(dt, "nope")
    with pytest.raises(ValueError, match="global"):
        plot_forest(dt, "mu")
    with pytest.raises(ValueError, match="unknown population variable 'sigma'"):
        plot_forest(dt, "theta", population=("mu", "sigma"))
    with pytest.raises(ValueError, match="pair"):
        plot_forest(dt, "theta", population="mu")
    with pytest.raises(ValueError, match="ci_prob"):
        plot_forest(dt, "theta", ci_prob=1.5)


def test_compare_two_fits(dt, dt2, tmp_path):
    res = plot_compare(dt, dt2, "theta", labels=("seed 0", "seed 1"), path=tmp_path / "cmp.png")
    _check_png(res, tmp_path / "cmp.png")
    assert len(res.axes) == 2
    d = res.data.set_index("client")
    assert sorted(d.index) == SCHOOLS
    assert res.data["mean_ref"].is_monotonic_increasing
    for suffix, tree in (("_ref", dt), ("_other", dt2)):
        draws = _draws(tree, "theta")
        np.testing.assert_allclose(d["mean" + suffix], draws.mean()[d.index], rtol=1e-10)
        np.testing.assert_allclose(d["lo" + suffix], draws.quantile(0.05)[d.index], rtol=1e-8)
        np.testing.assert_allclose(d["hi" + suffix], draws.quantile(0.95)[d.index], rtol=1e-8)
    # two NUTS runs of one posterior agree to Monte Carlo error (theta's sd is ~5-6)
    assert res.extra["max_abs_diff"] < 2.0
    scatter = res.axes[1].lines[0]
    np.testing.assert_allclose(np.asarray(scatter.get_xdata(), float), res.data["mean_ref"])
    np.testing.assert_allclose(np.asarray(scatter.get_ydata(), float), res.data["mean_other"])


@pytest.mark.slow
def test_compare_ep_against_nuts_and_bad_input(dt, ep):
    res = plot_compare(dt, ep, "theta", labels=("NUTS", "EP"))
    assert sorted(res.data["client"]) == SCHOOLS
    with pytest.raises(ValueError, match="different clients.*only in NUTS \\['H'\\]"):
        plot_compare(dt, dt.isel(client=slice(0, 7)), "theta", labels=("NUTS", "EP"))
    with pytest.raises(ValueError, match="reference fit: unknown variable 'alpha'"):
        plot_compare(dt, dt, "alpha")
    with pytest.raises(ValueError, match="sequence of 2 Axes"):
        plot_compare(dt, dt, "theta", ax=Figure().subplots())


@pytest.mark.slow
def test_convergence_from_history_and_datatree(ep, tmp_path):
    res = plot_convergence(ep.history, tol=1e-3, path=tmp_path / "conv.png")
    _check_png(res, tmp_path / "conv.png")
    assert len(res.data) == len(ep.history) == 3
    assert list(res.data["round"]) == [1, 2, 3]
    for key in ("mean_change", "sd_change", "damping"):
        np.testing.assert_allclose(res.data[key], [h[key] for h in ep.history])
    assert res.axes[0].get_yscale() == "log"

    from_tree = plot_convergence(ep.to_datatree(log_likelihood=False))
    pd.testing.assert_frame_equal(from_tree.data, res.data)
    pd.testing.assert_frame_equal(plot_convergence(ep).data, res.data)


def test_convergence_of_an_effect_sites_history(tmp_path):
    """EP over client effects records no damping: NaN there, the changes plotted."""
    history = [
        {
            "round": r,
            "sites": "effects",
            "mean_change": m,
            "sd_change": sd,
            "global_mean_change": m / 2,
            "global_sd_change": sd / 2,
            "converged": r == 3,
        }
        for r, m, sd in ((1, 2.0, 1.0), (2, 0.3, 0.1), (3, 0.01, 0.02))
    ]
    res = plot_convergence(history, tol=0.05, path=tmp_path / "conv.png")
    _check_png(res, tmp_path / "conv.png")
    assert list(res.data["round"]) == [1, 2, 3]
    np.testing.assert_allclose(res.data["mean_change"], [2.0, 0.3, 0.01])
    np.testing.assert_allclose(res.data["sd_change"], [1.0, 0.1, 0.02])
    assert res.data["damping"].isna().all()


def test_convergence_bad_input(dt):
    with pytest.raises(ValueError, match="no fit_history"):
        plot_convergence(dt)
    with pytest.raises(ValueError, match="no rounds"):
        plot_convergence([])
    with pytest.raises(ValueError, match="sd_change"):
        plot_convergence([{"round": 1, "mean_change": 0.1}])


def test_calibration_hand_example(tmp_path):
    p = [0.1, 0.2, 0.3, 0.8, 0.9]
    y = [0, 0, 1, 1, 1]
    res = plot_calibration(p, y, n_bins=2, path=tmp_path / "cal.png")
    _check_png(res, tmp_path / "cal.png")
    d = res.data
    assert list(d["bin"]) == [0, 1] and list(d["count"]) == [3, 2]
    np.testing.assert_allclose(d["mean_pred"], [0.2, 0.85])
    np.testing.assert_allclose(d["frac_pos"], [1 / 3, 1.0])
    # 3/5 * |1/3 - 0.2| + 2/5 * |1 - 0.85| = 0.08 + 0.06
    assert res.extra["ece"] == pytest.approx(0.14)
    assert res.extra["n"] == 5
    line = [ln for ln in res.axes[0].lines if ln.get_marker() == "o"][0]
    np.testing.assert_allclose(line.get_xdata(), d["mean_pred"])
    np.testing.assert_allclose(line.get_ydata(), d["frac_pos"])


def test_calibration_perfect_and_counts():
    # p = 0.25 with one positive in four, p = 0.75 with three in four: perfectly calibrated
    p = [0.25] * 4 + [0.75] * 4
    y = [1, 0, 0, 0, 1, 1, 1, 0]
    res = plot_calibration(p, np.asarray(y, dtype=bool))
    assert res.extra["ece"] == pytest.approx(0.0, abs=1e-12)
    assert list(res.data["count"]) == [4, 4]

    rng = np.random.default_rng(0)
    p = rng.uniform(size=1000)
    p[:3] = [0.0, 1.0, 0.5]  # the edges
    y = rng.uniform(size=1000) < p
    res = plot_calibration(p, y, n_bins=10)
    assert res.data["count"].sum() == 1000
    assert res.data["bin"].between(0, 9).all()
    assert (
        (res.data["mean_pred"] >= res.data["bin_lo"])
        & (res.data["mean_pred"] <= res.data["bin_hi"])
    ).all()
    assert res.extra["ece"] < 0.1  # drawn from the predicted probabilities


@pytest.mark.parametrize(
    "p, y, n_bins, match",
    [
        ([0.2, 0.4], [0, 1, 1], 10, "differ in length"),
        ([0.2, 1.4], [0, 1], 10, r"\[0, 1\]"),
        ([0.2, 0.4], [0, 2], 10, "binary"),
        ([], [], 10, "no predictions"),
        ([0.2, 0.4], [0, 1], 0, "n_bins"),
    ],
)
def test_calibration_bad_input(p, y, n_bins, match):
    with pytest.raises(ValueError, match=match):
        plot_calibration(p, y, n_bins=n_bins)


def test_forest_vector_client_variable_needs_element():
    """GLM-style ``b[client, coef]`` with population ``mu[coef]``, ``tau[coef]``."""
    import arviz as az

    rng = np.random.default_rng(0)
    post = {
        "b": rng.normal(size=(2, 50, 4, 2)) + np.arange(4)[:, None],
        "mu": rng.normal(size=(2, 50, 2)),
        "tau": np.abs(rng.normal(size=(2, 50, 2))) + 0.1,
    }
    dims = {"b": ["client", "coef"], "mu": ["coef"], "tau": ["coef"]}
    tree = az.from_dict({"posterior": post}, coords={"client": list("wxyz")}, dims=dims)
    with pytest.raises(ValueError, match="element="):
        plot_forest(tree, "b")
    res = plot_forest(tree, "b", element=1, population=("mu", "tau"), ax=Figure().subplots())
    d = res.data.set_index("client").loc[list("wxyz")]
    np.testing.assert_allclose(d["mean"], post["b"][..., 1].mean(axis=(0, 1)))
    loc, scale = post["mu"][..., 1].mean(), post["tau"][..., 1].mean()
    np.testing.assert_allclose(
        res.extra["band"], (loc - 1.6448536 * scale, loc + 1.6448536 * scale)
    )
    with pytest.raises(ValueError, match="does not index"):
        plot_forest(tree, "b", element=5)


# ---------------------------------------------------------------------------
# every term of a vector client variable


def _terms_tree(n_clients=50, seed=0):
    """``b[client, b_term]`` (Intercept, age), ``mu`` over Intercept only (age varies around
    0), ``tau`` over both: the layout of FitResult.to_datatree for such a GLM."""
    import arviz as az

    rng = np.random.default_rng(seed)
    clients = [f"c{i:02d}" for i in range(n_clients)]
    post = {
        "b": rng.normal(size=(2, 40, n_clients, 2)) + np.linspace(-1, 1, n_clients)[:, None],
        "mu": rng.normal(loc=3.0, size=(2, 40, 1)),
        "tau": np.abs(rng.normal(size=(2, 40, 2))) + 0.5,
    }
    dims = {"b": ["client", "b_term"], "mu": ["mu_term"], "tau": ["tau_term"]}
    coords = {
        "client": clients,
        "b_term": ["Intercept", "age"],
        "mu_term": ["Intercept"],
        "tau_term": ["Intercept", "age"],
    }
    return az.from_dict({"posterior": post}, coords=coords, dims=dims), post


def test_forest_terms_one_panel_per_term_with_its_population(tmp_path):
    tree, post = _terms_tree()
    res = plot_forest_terms(
        tree, "b", population=("mu", "tau"), max_labels=10, path=tmp_path / "f.png"
    )
    _check_png(res, tmp_path / "f.png")
    assert [a.get_title() for a in res.axes] == ["b[Intercept]", "b[age]"]
    assert res.extra["pop_loc"] == pytest.approx({"Intercept": post["mu"].mean(), "age": 0.0})
    assert res.extra["pop_scale"]["age"] == pytest.approx(post["tau"][..., 1].mean())
    age = res.data[res.data["term"] == "age"].set_index("client")
    np.testing.assert_allclose(age.loc["c07", "mean"], post["b"][:, :, 7, 1].mean())
    assert age.sort_values("y")["mean"].is_monotonic_increasing  # sorted: lowest at the bottom
    # 50 clients: the 5 lowest and 5 highest of each panel are named, the caption says so
    labels = [t.get_text() for t in res.axes[1].get_yticklabels()]
    assert len(labels) == 11 and "(40 more)" in labels
    assert set(labels) - {"(40 more)"} == set(age.index[age["named"]])
    assert "only the 5 lowest and 5 highest" in res.extra["caption"]
    few = plot_forest_terms(_terms_tree(n_clients=40)[0], "b", population=("mu", "tau"))
    assert len(few.axes[0].get_yticklabels()) == 40 and few.extra["caption"] == ""


def test_shrinkage_terms_one_panel_and_mean_line_per_term():
    idx = pd.MultiIndex.from_product(
        [["a", "b", "c"], ["Intercept", "age"]], names=["client", "term"]
    )
    table = pd.DataFrame(
        {
            "n": [3, 3, 10, 10, 30, 30],
            "local_mean": [1.0, 5.0, 2.0, 6.0, 3.0, 7.0],
            "personal_mean": [1.5, 4.0, 2.2, 5.5, 3.0, 6.9],
            "pooled_mean": [2.0, 0.0, 2.0, 0.0, 2.0, 0.0],
        },
        index=idx,
    )
    res = plot_shrinkage_terms(table, var="b")
    assert [a.get_title() for a in res.axes] == ["b[Intercept]", "b[age]"]
    assert res.extra["pooled_line"] == {"Intercept": 2.0, "age": 0.0}
    assert list(res.data.loc[res.data["term"] == "age", "local"]) == [5.0, 6.0, 7.0]
    # a table with one row per client is the one-panel plot
    one = plot_shrinkage_terms(table.xs("age", level="term"))
    assert len(one.axes) == 1


def test_forest_by_term_label_without_a_stray_variable_label():
    tree, post = _terms_tree(n_clients=6)
    res = plot_forest(tree, "b", element="age")
    np.testing.assert_allclose(
        res.data.set_index("client").loc["c03", "mean"], post["b"][:, :, 3, 1].mean()
    )
    assert res.fig._suptitle.get_text() == "Per-client b[age]"
    label_texts = [t.get_text() for t in res.axes[1].texts]
    assert "b" not in label_texts and "c03" in label_texts  # clients only, no variable name
    with pytest.raises(ValueError, match="no such label"):
        plot_forest(tree, "b", element="bmi")
