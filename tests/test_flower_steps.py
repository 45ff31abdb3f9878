"""Exported client steps (bayes_pfl.flower.steps), the server's in-flight cap, and the light
import a ClientApp process pays for."""

import json
import logging
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("flwr")

from test_flower import (  # noqa: E402, F401  (small: fixture)
    FakeGrid,
    one_shot_config,
    one_shot_reference,
    small,
)

from bayes_pfl.codec import CodecError, encode  # noqa: E402
from bayes_pfl.flower import client as client_mod  # noqa: E402
from bayes_pfl.flower import config as config_mod  # noqa: E402
from bayes_pfl.flower import steps as steps_mod  # noqa: E402
from bayes_pfl.flower.app import client_app, run_from_settings  # noqa: E402
from bayes_pfl.flower.config import FlowerSettings  # noqa: E402
from bayes_pfl.flower.server import exchange  # noqa: E402
from bayes_pfl.flower.steps import StepCache  # noqa: E402
from bayes_pfl.results import load_posterior  # noqa: E402


def _step(calls):
    """A small step: ``(a.x @ w, sum)`` with a namedtuple-free pytree; counts builds."""

    def build():
        calls.append(1)

        def fn(a, w):
            y = a["x"] @ w["w"]
            return {"y": y}, jnp.sum(y)

        return fn, [
            {"x": jax.ShapeDtypeStruct((3, 2), np.float64)},
            {"w": jax.ShapeDtypeStruct((2,), np.float64)},
        ]

    return build


def _inputs(x, w):
    return [encode({"x": x}), encode({"w": w})]


@pytest.fixture(autouse=True)
def _fresh_loaded():
    steps_mod._LOADED.clear()  # each test sees processes that loaded nothing yet
    yield
    steps_mod._LOADED.clear()


def test_step_is_exported_once_and_reused_by_a_new_process(tmp_path):
    x, w = np.arange(6.0).reshape(3, 2), np.array([0.5, -1.0])
    calls = []
    cache = StepCache(tmp_path, "run-a")
    out = cache.call("mul", _step(calls), _inputs(x, w))
    np.testing.assert_allclose(out[0]["['y']"], x @ w)
    assert float(out[1][""]) == pytest.approx(float(np.sum(x @ w)))
    assert (cache.misses, cache.hits, len(calls)) == (1, 0, 1)
    assert len(list(tmp_path.glob("*.stablehlo"))) == 1
    meta = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert meta["in_keys"] == [["['x']"], ["['w']"]] and meta["out_keys"] == [["['y']"], [""]]

    steps_mod._LOADED.clear()  # as a fresh process: only the folder is shared
    again = StepCache(tmp_path, "run-a")
    out2 = again.call("mul", _step(calls), _inputs(2 * x, w))
    np.testing.assert_allclose(out2[0]["['y']"], 2 * x @ w)
    assert (again.misses, again.hits, len(calls)) == (0, 1, 1)  # not traced again


def test_signature_separates_identity_name_and_shapes(tmp_path):
    x, w = np.ones((3, 2)), np.ones(2)
    cache = StepCache(tmp_path, "run-a")
    sig = cache.signature("mul", _inputs(x, w))
    assert StepCache(tmp_path, "run-b").signature("mul", _inputs(x, w)) != sig
    assert cache.signature("other", _inputs(x, w)) != sig
    assert cache.signature("mul", _inputs(np.ones((4, 2)), w)) != sig
    assert cache.signature("mul", _inputs(x.astype(np.float32), w)) != sig
    assert cache.signature("mul", _inputs(x, w)) == sig


def test_input_that_matches_no_template_raises_codec_error(tmp_path):
    cache = StepCache(tmp_path, "run-a")
    with pytest.raises(CodecError, match="shape"):
        cache.call("mul", _step([]), _inputs(np.ones((4, 2)), np.ones(2)))
    with pytest.raises(CodecError, match="missing"):
        cache.call("mul", _step([]), [encode({"z": np.ones((3, 2))}), encode({"w": np.ones(2)})])
    with pytest.raises(CodecError, match="dtype"):
        cache.call("mul", _step([]), _inputs(np.ones((3, 2), np.float32), np.ones(2)))
    assert not list(tmp_path.glob("*.json"))  # nothing stored for rejected inputs


def test_damaged_export_is_traced_again(tmp_path, caplog):
    x, w = np.ones((3, 2)), np.ones(2)
    calls = []
    StepCache(tmp_path, "run-a").call("mul", _step(calls), _inputs(x, w))
    next(tmp_path.glob("*.stablehlo")).write_bytes(b"not a program")
    steps_mod._LOADED.clear()
    with caplog.at_level(logging.WARNING, logger="bayes_pfl.flower"):
        out = StepCache(tmp_path, "run-a").call("mul", _step(calls), _inputs(x, w))
    assert "unusable" in caplog.text and len(calls) == 2
    np.testing.assert_allclose(out[0]["['y']"], x @ w)


@pytest.mark.slow
def test_app_with_exported_steps_equals_in_process_and_reuses_them(small, tmp_path, monkeypatch):  # noqa: F811
    """The ready-made ClientApp with a JAX cache folder exports its steps on the first run;
    a second run (fresh processes) calls them without tracing; both give fit_one_shot's
    posteriors."""
    _, run_config, data = small
    run_config = one_shot_config(
        run_config, **{"round-timeout-s": 60.0, "jax-cache-dir": str(tmp_path / "jax-cache")}
    )

    def run(out):
        cfg = {**run_config, "out": str(tmp_path / out)}
        grid = FakeGrid(client_app(), [{"partition-id": i} for i in range(5)], cfg)
        run_from_settings(grid, FlowerSettings.from_run_config(cfg))
        return load_posterior(tmp_path / out / "posterior.nc").posterior

    first = run("first")
    stored = sorted((tmp_path / "jax-cache" / "bayes-pfl-steps").glob("*.json"))
    names = {json.loads(p.read_text())["name"] for p in stored}
    # one_shot_config: sites over the global parameters (see its docstring)
    assert names == {"client_init:ep-laplace", "client_update:ep-laplace", "personalize"}

    steps_mod._LOADED.clear()

    def no_tracing(*args, **kwargs):
        raise AssertionError("a step was traced again")

    def no_pandas(*args, **kwargs):
        raise AssertionError("a later process needs neither ClientArrays nor the CSV")

    monkeypatch.setattr(StepCache, "_export", no_tracing)
    # later processes read their rows from the node's cache and pass flat arrays to the
    # exported steps: no bayes_pfl.data (pandas), no CSV parsing
    monkeypatch.setattr(client_mod, "_client_arrays", no_pandas)
    monkeypatch.setattr(config_mod, "load_client_data", no_pandas)
    second = run("second")  # a different result folder: the steps' identity is the same

    settings = FlowerSettings.from_run_config({**run_config, "out": str(tmp_path / "x")})
    ref = one_shot_reference(settings, data)
    for name, v in {**ref.phi, **ref.theta}.items():
        np.testing.assert_allclose(first[name].values, v, rtol=1e-6, atol=1e-9, err_msg=name)
        np.testing.assert_array_equal(second[name].values, first[name].values, err_msg=name)


class _CountingGrid(FakeGrid):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.batches = []

    def push_messages(self, messages):
        self.batches.append(len(messages))
        return super().push_messages(messages)


def test_exchange_keeps_at_most_max_in_flight_messages_out(small):  # noqa: F811
    from flwr.app import ConfigRecord, RecordDict

    _, run_config, _ = small
    grid = _CountingGrid(client_app(), [{"partition-id": i} for i in range(5)], run_config)
    content = RecordDict({"config": ConfigRecord({"want-stats": False})})
    nodes = grid.get_node_ids()

    def describe(**kw):
        return exchange(
            grid,
            {n: content for n in nodes},
            message_type="query.describe",
            group_id="d",
            timeout_s=30,
            poll_interval_s=0.001,
            **kw,
        )

    replies, failures = describe(max_in_flight=2)
    assert not failures and sorted(replies) == sorted(nodes)
    assert grid.batches == [2, 2, 1]
    timings = {}
    describe(timings=timings)
    trips = timings["round_trip_s"]
    assert sorted(trips) == sorted(nodes) and all(0 <= t < 30 for t in trips.values())
    assert 0 <= timings["push_s"] <= max(trips.values())
    positions = sorted(int(r.config_records["describe"]["position"]) for r in replies.values())
    assert positions == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="max_in_flight"):
        exchange(grid, {}, message_type="train", group_id="d", timeout_s=1, max_in_flight=-1)
    with pytest.raises(ValueError, match="max-in-flight"):
        FlowerSettings.from_run_config({**run_config, "max-in-flight": -1})


def test_nodes_not_asked_before_the_timeout_are_reported():
    class Silent:
        def __init__(self):
            self.pushed = 0

        def push_messages(self, messages):
            self.pushed += len(messages)
            return [f"m{self.pushed}-{i}" for i in range(len(messages))]

        def pull_messages(self, ids):
            return []

    from flwr.app import RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id = TaskIdentity.node_id = TaskIdentity.task_id = 1
    grid = Silent()
    _, failures = exchange(
        grid,
        {n: RecordDict() for n in (1, 2, 3)},
        message_type="train",
        group_id="g",
        timeout_s=0.05,
        poll_interval_s=0.01,
        max_in_flight=1,
    )
    assert grid.pushed == 1
    assert "no reply within" in failures[1]
    assert "not asked within" in failures[2] and "not asked within" in failures[3]


def test_import_bayes_pfl_is_light():
    """A ClientApp process imports the Flower modules and validates its run config without
    numpyro, ArviZ, pandas or SciPy; the public names still resolve on first use."""
    code = (
        "import sys, bayes_pfl, bayes_pfl.flower.app, bayes_pfl.flower.steps\n"
        "from bayes_pfl.flower.config import FlowerSettings\n"
        "FlowerSettings.from_run_config({'method': 'ep'})\n"
        "heavy = [m for m in ('numpyro', 'arviz', 'pandas', 'scipy') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "assert bayes_pfl.fit_nuts.__module__ == 'bayes_pfl.centralized'\n"
        "from bayes_pfl import FederatedData, HierarchicalModel, load\n"
        "assert 'fit_nuts' in dir(bayes_pfl)\n"
        "try:\n"
        "    bayes_pfl.no_such_name\n"
        "except AttributeError as e:\n"
        "    assert 'no_such_name' in str(e)\n"
        "else:\n"
        "    raise SystemExit('no AttributeError')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_settings_check_accepts_what_the_algorithms_accept():
    """FlowerSettings.check keeps copies of these (importing them loads numpyro and SciPy)."""
    from bayes_pfl.algorithms.ep import SITE_FITS, TILTED
    from bayes_pfl.federated import SITES, SUMMARIES

    assert config_mod.SITES == SITES
    assert config_mod.SUMMARIES == SUMMARIES
    assert config_mod.TILTED == TILTED
    assert config_mod.SITE_FITS == SITE_FITS


def test_rows_flatten_like_client_arrays():
    """The exported steps' row inputs built without bayes_pfl.data have ClientArrays' keys,
    shapes, dtypes and values."""
    from bayes_pfl.data import ClientArrays

    data = config_mod.ClientData("a", 0, np.arange(6.0).reshape(2, 3), np.array([0.0, 1.0]), True)
    rows = client_mod._padded(data, 4)
    assert client_mod._Rows._fields == ClientArrays._fields
    ref = client_mod.prepare_arrays(data, 4)
    assert isinstance(ref, ClientArrays)
    flat, flat_ref = encode(rows), encode(ref)
    assert list(flat) == list(flat_ref)
    for k in flat:
        assert flat[k].dtype == flat_ref[k].dtype
        np.testing.assert_array_equal(flat[k], flat_ref[k])


def test_node_rows_are_cached_until_the_csv_changes(small, tmp_path, monkeypatch):  # noqa: F811
    """cached_client_data: the rows load_client_data gives, read back from the node's folder
    by later processes; an edited CSV or another node config reads the CSV again."""
    settings, _, _ = small
    csv = tmp_path / "node.csv"
    csv.write_text("client,y,x0\nh1,0.5,1.0\nh1,1.5,-2.0\n")
    node = {"partition-id": 0, "data-path": str(csv)}
    folder = tmp_path / "rows"
    first = config_mod.cached_client_data(settings, node, folder)
    assert first.label == "h1" and first.x.shape == (2, 1)
    assert len(list(folder.glob("*.npz"))) == 1

    real = config_mod.load_client_data
    calls = []

    def counting(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(config_mod, "load_client_data", counting)
    again = config_mod.cached_client_data(settings, node, folder)
    assert not calls
    for a, b in zip(again, first, strict=True):
        np.testing.assert_array_equal(a, b)
    assert isinstance(again.label, str) and isinstance(again.standardized, bool)

    config_mod.cached_client_data(settings, {**node, "client-label": "other"}, folder)
    assert len(calls) == 1
    for damaged in (b"", b"PK\x03\x04 not a zip"):
        for f in folder.glob("*.npz"):
            f.write_bytes(damaged)
        again = config_mod.cached_client_data(settings, node, folder)  # read and stored again
        np.testing.assert_array_equal(again.x, first.x)
    assert len(calls) == 3
    config_mod.cached_client_data(settings, node, folder)
    assert len(calls) == 3
    csv.write_text("client,y,x0\nh1,0.5,1.0\nh1,1.5,-2.0\nh1,2.5,3.0\n")
    edited = config_mod.cached_client_data(settings, node, folder)
    assert len(calls) == 4 and edited.x.shape == (3, 1)


def test_round_trip_breakdown():
    """A reply's round trip splits into process start, handler and waiting; a process older
    than the message (simulation actors, an in-process grid) started no process for it."""
    from bayes_pfl.flower.server import _breakdown, _timing

    age, cpu = client_mod.process_age()  # this test process: older than its CPU time
    assert cpu > 0 and (np.isnan(age) or age >= cpu / 4)

    fresh = _timing(
        5.0,
        {
            "process_start_s": 3.0,
            "process_start_cpu_s": 1.5,
            "handler_s": 1.5,
            "process_cpu_s": 2.5,
        },
    )
    assert fresh == {
        "round_trip_s": 5.0,
        "process_start_s": 3.0,
        "process_start_cpu_s": 1.5,
        "handler_s": 1.5,
        "wait_s": 0.5,
        "process_cpu_s": 2.5,
    }
    old = _timing(
        0.5,
        {
            "process_start_s": 90.0,
            "process_start_cpu_s": 9.0,
            "handler_s": 0.2,
            "process_cpu_s": 9.5,
        },
    )
    assert old["process_start_s"] == 0.0 and old["process_start_cpu_s"] == 0.0
    assert old["wait_s"] == pytest.approx(0.3) and np.isnan(old["process_cpu_s"])
    unknown = _timing(None, {"update_s": 0.1})  # an older ClientApp: no timings
    assert all(np.isnan(v) for v in unknown.values())
    summary = _breakdown([fresh, old, unknown])
    assert summary["client_round_trip_s"] == pytest.approx(2.75)
    assert summary["client_round_trip_s_max"] == 5.0
    assert summary["client_process_cpu_s"] == 2.5
    assert _breakdown([]) == {}


def test_local_federation_sets_the_superexec_poll(tmp_path):
    """The SuperExecs that the SuperNodes start read their task poll from the environment."""
    from bayes_pfl.flower.launch import (
        SUPEREXEC_POLL_ENV,
        LocalFederation,
        default_superexec_poll_s,
    )

    assert default_superexec_poll_s(1) == 0.1 and default_superexec_poll_s(10) == 0.5
    assert default_superexec_poll_s(1000) == 5.0
    nodes = [{"partition-id": i} for i in range(4)]
    assert LocalFederation(tmp_path, nodes).env[SUPEREXEC_POLL_ENV] == "0.2"
    fed = LocalFederation(tmp_path, nodes, superexec_poll_s=0.05)
    assert fed.env[SUPEREXEC_POLL_ENV] == "0.05"
    fed = LocalFederation(tmp_path, nodes, env={SUPEREXEC_POLL_ENV: "2"})
    assert fed.env[SUPEREXEC_POLL_ENV] == "2"


def test_wait_registered_reads_each_supernode_log(tmp_path):
    """``wait_registered`` returns once every SuperNode's log names its node id, names the
    nodes still missing on timeout, and reports a SuperNode that exited."""
    from bayes_pfl.flower.launch import LocalFederation

    fed = LocalFederation(tmp_path, [{"partition-id": i} for i in range(3)])
    fed.supernodes = [subprocess.Popen(["sleep", "30"]) for _ in range(3)]
    try:
        for i in range(2):
            (tmp_path / f"supernode-{i}.log").write_text("INFO : SuperNode ID: 12345\n")
        (tmp_path / "supernode-2.log").write_text("INFO : Starting Flower SuperNode\n")
        with pytest.raises(TimeoutError, match=r"1 SuperNode\(s\) not registered .*\[2\]"):
            fed.wait_registered(timeout_s=0.3, poll_s=0.05)
        with open(tmp_path / "supernode-2.log", "a") as f:
            f.write("INFO : SuperNode ID: 777\n")
        assert fed.wait_registered(timeout_s=5, poll_s=0.05) < 5
        (tmp_path / "supernode-2.log").write_text("")
        fed.supernodes[2].kill()
        fed.supernodes[2].wait()
        with pytest.raises(RuntimeError, match="SuperNode 2 exited"):
            fed.wait_registered(timeout_s=5, poll_s=0.05)
    finally:
        for p in fed.supernodes:
            p.kill()
            p.wait()


def test_supernode_failing_to_start_for_a_transient_reason_is_restarted(tmp_path):
    from bayes_pfl.flower.launch import LocalFederation

    fed = LocalFederation(tmp_path, [{"partition-id": 0}])
    started = []

    def fake_start(i):
        started.append(i)
        return subprocess.Popen(["sleep", "30"])

    fed._start_supernode = fake_start
    dead = subprocess.Popen(["true"])
    dead.wait()
    fed.supernodes = [dead]
    log = tmp_path / "supernode-0.log"
    log.write_text("ERROR: Exit Code: 305\n[code: 23] Public key already in use.\n")
    try:
        with pytest.raises(TimeoutError):
            fed.wait_registered(timeout_s=0.3, poll_s=0.05)
        assert started == [0] and fed._restarts == {0: 1}  # restarted once, now alive
        with open(log, "a") as f:
            f.write("INFO : SuperNode ID: 42\n")
        fed.wait_registered(timeout_s=5, poll_s=0.05)
    finally:
        fed.supernodes[0].kill()
        fed.supernodes[0].wait()


def test_free_port_is_below_the_ephemeral_range_and_not_reused():
    from bayes_pfl.flower.launch import _ephemeral_low, free_port

    ports = set()
    for _ in range(50):
        ports.add(free_port(exclude=ports))
    assert len(ports) == 50 and max(ports) < _ephemeral_low()
