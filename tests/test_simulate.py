import sys
import textwrap

import numpy as np
import pytest
import torch

from sbi_service.errors import NotFoundError, UserError
from sbi_service.simulators.base import Task
from sbi_service.simulators.priors import prior_from_spec
from sbi_service.simulators.registry import get_task, list_names, register
from sbi_service.simulators.simulate import load_simulations, save_simulations, simulate
from sbi_service.store import Store
from sbi_service.workflows.simulators import register_simulator


def test_simulation_depends_only_on_seed_not_chunking_or_workers():
    task = get_task("two_moons")
    a = simulate(task, 1000, seed=5, chunk_size=300)
    b = simulate(task, 1000, seed=5, chunk_size=300, workers=2)
    c = simulate(task, 1000, seed=6, chunk_size=300)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])
    assert a[0].shape == (1000, 2) and a[1].shape == (1000, 2)


def test_callable_without_generator_is_seeded_by_global_state():
    def noisy(theta):  # uses numpy's and torch's global generators
        return theta + torch.randn(theta.shape) + torch.as_tensor(np.random.randn(*theta.shape))

    task = Task(
        "noisy", prior_from_spec({"type": "normal", "loc": [0.0], "scale": [1.0]}), noisy, (1,)
    )
    np.random.seed(123)
    state = np.random.get_state()[1].copy()
    a, b = simulate(task, 50, seed=1)[1], simulate(task, 50, seed=1)[1]
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
    """)
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

    store = Store(tmp_path / "home")
    info = register_simulator(
        store,
        "quad",
        {
            "import_path": "user_sims:quadratic",
            "prior": {"type": "normal", "loc": [0.0], "scale": [1.0]},
            "x_shape": [1],
        },
    )
    assert info["name"] == "quad" and info["dim_theta"] == 1
    stored = store.list_simulators()
    theta, x = simulate(get_task("quad", stored), 10, seed=0)
    assert x.shape == (10, 1)
    with pytest.raises(UserError, match="cannot import"):
        register_simulator(store, "broken", {"import_path": "user_sims:nothing"})
    with pytest.raises(UserError, match="taken"):
        register_simulator(store, "two_moons", {"import_path": "user_sims:make_task"})
    with pytest.raises(NotFoundError, match="unknown simulator"):
        get_task("broken", store.list_simulators())
