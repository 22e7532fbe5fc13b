import sys
import textwrap

import numpy as np
import pytest
import torch

from sbi_service.errors import ForbiddenError, NotFoundError, UserError
from sbi_service.simulators.base import Task
from sbi_service.simulators.priors import prior_from_spec
from sbi_service.simulators.registry import get_task, list_names, register
from sbi_service.simulators.simulate import (
    MIN_CALL_SECONDS,
    chunks_per_call,
    load_simulations,
    save_simulations,
    simulate,
)
from sbi_service.store import Store
from sbi_service.workflows.simulators import register_simulator


def test_simulation_depends_only_on_seed_not_chunking_or_workers():
    task = get_task("two_moons")
    a = simulate(task, 1000, seed=5, chunk_size=300)
    b = simulate(task, 1000, seed=5, chunk_size=300, workers=2)
    c = simulate(task, 1000, seed=6, chunk_size=300)
    assert torch.equal(a.theta, b.theta) and torch.equal(a.x, b.x)
    assert not torch.equal(a.x, c.x)
    assert a.theta.shape == (1000, 2) and a.x.shape == (1000, 2)
    assert b.report.workers == 2 and b.report.num_kept == 1000


def test_callable_without_generator_is_seeded_by_global_state():
    def noisy(theta):  # uses numpy's and torch's global generators
        return theta + torch.randn(theta.shape) + torch.as_tensor(np.random.randn(*theta.shape))

    task = Task(
        "noisy", prior_from_spec({"type": "normal", "loc": [0.0], "scale": [1.0]}), noisy, (1,)
    )
    np.random.seed(123)
    state = np.random.get_state()[1].copy()
    a, b = simulate(task, 50, seed=1).x, simulate(task, 50, seed=1).x
    assert torch.equal(a, b)
    assert np.array_equal(np.random.get_state()[1], state), "numpy's global state must be restored"


def test_wrong_output_shape_is_reported():
    task = Task(
        "bad",
        prior_from_spec({"type": "normal", "loc": [0.0], "scale": [1.0]}),
        lambda theta: theta[:-1],
        (1,),
    )
    with pytest.raises(UserError, match="returned x of shape"):
        simulate(task, 10, seed=0)
    words = Task("words", task.prior, lambda theta: np.array(["a"] * len(theta)), (1,))
    with pytest.raises(UserError, match="not numbers"):
        simulate(words, 10, seed=0)


def _flaky_task(name: str, fail) -> Task:
    """x = theta + noise; ``fail(theta)`` says whether this call raises."""

    def sim(theta, generator):
        if fail(theta):
            raise RuntimeError("simulator crashed")
        return theta + torch.randn(theta.shape, generator=generator)

    prior = prior_from_spec({"type": "normal", "loc": [0.0], "scale": [1.0]})
    return register(Task(name, prior, sim, (1,)))


def test_failing_chunk_is_retried_then_reported_with_its_rows():
    calls = []
    once = _flaky_task("once", lambda theta: calls.append(1) or len(calls) == 2)
    good = simulate(_flaky_task("never", lambda theta: False), 400, seed=1, chunk_size=100)
    retried = simulate(once, 400, seed=1, chunk_size=100)
    assert torch.equal(retried.x, good.x) and not retried.report.failed_chunks
    always = _flaky_task("always", lambda theta: len(theta) == 5)  # the last chunk, 5 rows
    sims = simulate(always, 405, seed=1, chunk_size=100, retries=2)
    assert sims.report.failed_chunks == [
        {"chunk": 4, "rows": [400, 405], "error": "RuntimeError('simulator crashed')"}
    ]
    full = simulate(_flaky_task("never", lambda theta: False), 405, seed=1, chunk_size=100)
    assert sims.report.num_kept == 400 and torch.equal(sims.x, full.x[:400])


def test_nonfinite_rows_are_dropped_and_counted_and_too_many_fail():
    prior = prior_from_spec({"type": "normal", "loc": [0.0], "scale": [1.0]})

    def some_nan(theta):
        return torch.where(theta > 1.5, torch.nan, theta)

    sims = simulate(Task("some_nan", prior, some_nan, (1,)), 1000, seed=0)
    dropped = sims.report.num_requested - sims.report.num_kept
    assert 0 < sims.report.num_nonfinite == dropped < 100
    assert torch.isfinite(sims.x).all() and (sims.theta <= 1.5).all()
    assert torch.equal(sims.x, sims.theta)  # the pairs stay aligned
    with pytest.raises(UserError, match=r"lost \d+ of 1000 simulations.*NaN or inf"):
        simulate(Task("half_nan", prior, lambda t: torch.where(t > 0, torch.nan, t), (1,)), 1000, 0)


def test_chunks_on_disk_let_a_rerun_resume(tmp_path):
    broken = {"on": True}
    calls = []

    def fail(theta):
        calls.append(1)
        return broken["on"] and len(calls) > 2

    task = _flaky_task("resumable", fail)
    with pytest.raises(UserError, match="lost 200 of 400.*--resume"):
        simulate(task, 400, seed=3, chunk_size=100, checkpoint=tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "chunk-000000.npy",
        "chunk-000001.npy",
    ]
    broken["on"] = False
    calls.clear()
    resumed = simulate(task, 400, seed=3, chunk_size=100, checkpoint=tmp_path / "run")
    assert resumed.report.resumed_chunks == 2 and len(calls) == 2
    fresh = simulate(task, 400, seed=3, chunk_size=100)
    assert torch.equal(resumed.theta, fresh.theta) and torch.equal(resumed.x, fresh.x)


def test_npz_round_trip_and_validation(tmp_path):
    theta, x = torch.randn(20, 2), torch.randn(20, 3)
    save_simulations(tmp_path / "s.npz", theta, x)
    t2, x2 = load_simulations(tmp_path / "s.npz")
    assert torch.equal(theta, t2) and torch.equal(x, x2)
    np.savez(tmp_path / "mismatch.npz", theta=np.zeros((5, 2)), x=np.zeros((4, 3)))
    with pytest.raises(UserError, match="5 rows but 'x' has 4"):
        load_simulations(tmp_path / "mismatch.npz")
    np.savez(tmp_path / "nokey.npz", theta=np.zeros((5, 2)))
    with pytest.raises(UserError, match="lacks"):
        load_simulations(tmp_path / "nokey.npz")
    x_nan = np.zeros((5, 3))
    x_nan[2, 1] = np.nan
    np.savez(tmp_path / "nan.npz", theta=np.zeros((5, 2)), x=x_nan)
    with pytest.raises(UserError, match="NaN or inf"):
        load_simulations(tmp_path / "nan.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="not a readable"):
        load_simulations(tmp_path / "junk.npz")
    with pytest.raises(UserError, match="does not exist"):
        load_simulations(tmp_path / "missing.npz")


def test_registration_from_python():
    task = Task(
        "my_sim",
        prior_from_spec({"type": "normal", "loc": [0.0], "scale": [1.0]}),
        lambda theta: 2 * theta,
        (1,),
    )
    register(task)
    assert get_task("my_sim") is task
    assert "my_sim" in list_names()


def test_registration_by_import_path_and_entry_point(tmp_path, monkeypatch):
    (tmp_path / "user_sims.py").write_text(
        textwrap.dedent("""
        import torch
        from sbi_service.simulators.base import Task
        from sbi_service.simulators.priors import prior_from_spec

        def quadratic(theta, generator=None):
            return theta**2 + 0.1 * torch.randn(theta.shape, generator=generator)

        def make_task():
            prior = prior_from_spec({"type": "box_uniform", "low": [-1.0], "high": [1.0]})
            return Task("plugin_sim", prior, quadratic, (1,), description="a plugin")

        CALLED = []

        def factory_with_effects():
            CALLED.append(1)
            return make_task()

        @simulator("decorated", {"type": "normal", "loc": [0.0], "scale": [1.0]}, [1])
        def decorated(theta):
            return theta + 1

        def mostly_nan(theta):
            return torch.full(theta.shape, float("nan"))

        def wrong_shape(theta):
            return torch.zeros(len(theta), 3)
    """).replace("import torch", f"import torch\n{IMPORT_DECORATOR}")
    )
    dist = tmp_path / "user_sims-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: user-sims\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[sbi_service.simulators]\nplugin_sim = user_sims:make_task\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("user_sims", None)

    task = get_task("plugin_sim")
    assert task.source.startswith("entry_point") and task.description == "a plugin"
    assert task.version == "0.1"

    store = Store(tmp_path / "home")
    info = register_simulator(
        store,
        "quad",
        "import_path",
        {
            "import_path": "user_sims:quadratic",
            "prior": {"type": "normal", "loc": [0.0], "scale": [1.0]},
            "x_shape": [1],
        },
    )
    assert info["name"] == "quad" and info["dim_theta"] == 1 and info["version"] == "1"
    stored = store.list_simulators()
    theta, x = simulate(get_task("quad", stored), 10, seed=0)
    assert x.shape == (10, 1)
    # workers look the stored simulator up by name: the same numbers with 2 processes
    two = simulate(get_task("quad", stored), 30, seed=0, chunk_size=10, workers=2, stored=stored)
    assert torch.equal(two.x, simulate(get_task("quad", stored), 30, seed=0, chunk_size=10).x)
    spec = {"import_path": "user_sims:quadratic", "prior": PRIOR_1D, "x_shape": [1]}
    assert register_simulator(store, "quad", "import_path", spec)["version"] == "2"
    with pytest.raises(UserError, match="cannot import"):
        register_simulator(store, "broken", "import_path", {"import_path": "user_sims:nothing"})
    with pytest.raises(UserError, match="taken"):
        register_simulator(
            store, "two_moons", "import_path", {"import_path": "user_sims:make_task"}
        )
    with pytest.raises(NotFoundError, match="unknown simulator"):
        get_task("broken", store.list_simulators())
    # the trial batch names what is wrong with the output
    for attr, message in [("mostly_nan", "NaN or inf for 10 of 10"), ("wrong_shape", "shape")]:
        bad = {"import_path": f"user_sims:{attr}", "prior": PRIOR_1D, "x_shape": [1]}
        with pytest.raises(UserError, match=message):
            register_simulator(store, attr, "import_path", bad)
    # the decorator: registered in this process, and found by its import path
    assert get_task("decorated").source == "python"
    dec = register_simulator(
        store, "dec", "import_path", {"import_path": "user_sims:decorated"}, allowlist=["user_sims"]
    )
    assert dec["x_shape"] == [1] and dec["source"] == "import_path:user_sims:decorated"
    assert [s["name"] for s in store.list_simulators()] == ["dec", "quad"]


def test_import_paths_over_the_network_are_allowlisted_and_never_called(tmp_path, monkeypatch):
    store = Store(tmp_path / "home")
    monkeypatch.delitem(sys.modules, "this", raising=False)
    for allowlist in ([], ["user"], ["pkg"]):
        with pytest.raises(ForbiddenError, match="not on SBI_SERVICE_IMPORT_ALLOWLIST"):
            register_simulator(store, "s", "import_path", {"import_path": "this:s"}, allowlist)
    assert "this" not in sys.modules, "a refused module must not even be imported"
    with pytest.raises(UserError, match="not a Task or a @simulator function"):
        register_simulator(store, "s", "import_path", {"import_path": "os:getcwd"}, ["os"])
    assert store.list_simulators() == []


IMPORT_DECORATOR = "from sbi_service.simulators.registry import simulator"
PRIOR_1D = {"type": "normal", "loc": [0.0], "scale": [1.0]}


def test_chunks_per_call_packs_cheap_chunks_and_keeps_slow_ones_apart(monkeypatch):
    import sbi_service.simulators.simulate as simulation

    monkeypatch.setattr(simulation, "MIN_CALL_SECONDS", MIN_CALL_SECONDS)
    assert chunks_per_call(10, 2, 0.002) == 5  # 20 ms of work: one wave, a call per slot
    assert chunks_per_call(1000, 2, 0.002) == 50  # 2 s: 10 waves of 0.1 s calls
    assert chunks_per_call(10, 2, 3.0) == 1  # a slow simulator: a call per chunk
    assert chunks_per_call(3, 8, 1.0) == 1  # fewer chunks than slots
    assert chunks_per_call(40, 8, 0.001) == 10  # 40 ms: 4 calls of 10 ms, not 8 of 5
    assert chunks_per_call(10, 2, 0.0015) == 10  # 15 ms: one call (run in this process)


def pool_calls(monkeypatch) -> list[int]:
    """The chunks in each call sent to the local pool from now on, in order."""
    import sbi_service.simulators.simulate as simulation

    calls: list[int] = []
    submit = simulation._SharedPool.submit
    monkeypatch.setattr(
        simulation._SharedPool,
        "submit",
        lambda self, fn, *a: calls.append(len(a[0])) or submit(self, fn, *a),
    )
    return calls


def test_cheap_chunks_travel_packed_and_give_the_same_numbers(monkeypatch):
    import sbi_service.simulators.simulate as simulation

    calls = pool_calls(monkeypatch)
    monkeypatch.setattr(simulation, "_row_seconds", {})
    task = get_task("two_moons")
    first = simulate(task, 2500, seed=4, chunk_size=100, workers=2)  # 25 chunks
    assert calls[:2] == [1, 1] and sum(calls) == 25  # one chunk per worker measured first
    calls.clear()
    again = simulate(task, 2500, seed=4, chunk_size=100, workers=2)
    assert calls == [13, 12]  # the measured cost from the last run: one call per worker
    alone = simulate(task, 2500, seed=4, chunk_size=100)
    for sims in (first, again):
        assert torch.equal(sims.x, alone.x) and torch.equal(sims.theta, alone.theta)


def test_a_run_of_under_two_calls_of_work_runs_in_the_calling_process(monkeypatch):
    import sbi_service.simulators.simulate as simulation

    monkeypatch.setattr(simulation, "MIN_CALL_SECONDS", MIN_CALL_SECONDS)
    monkeypatch.setattr(simulation, "_row_seconds", {})
    calls = pool_calls(monkeypatch)
    task = get_task("two_moons")
    first = simulate(task, 2500, seed=4, chunk_size=100, workers=2)  # cost not measured yet
    assert not first.report.in_process and sum(calls) == 25
    calls.clear()
    # measured at 5 ms of work (the workers' own timing of 2,500 two_moons rows is a few
    # ms on an idle machine): one call's worth, so it runs here
    simulation._row_seconds[(task.name, task.version)] = 0.005 / 2500
    here = simulate(task, 2500, seed=4, chunk_size=100, workers=2)
    assert here.report.in_process and calls == []
    # the same run measured at 30 ms of work: two calls of 15 ms, one per worker
    simulation._row_seconds[(task.name, task.version)] = 0.03 / 2500
    sent = simulate(task, 2500, seed=4, chunk_size=100, workers=2)
    assert not sent.report.in_process and calls == [13, 12]
    for sims in (here, sent):
        assert torch.equal(sims.x, first.x) and torch.equal(sims.theta, first.theta)
