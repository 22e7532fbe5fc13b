"""``sbi-service simulate``: workers, backends, chunks on disk and --resume, bad input."""

from __future__ import annotations

import numpy as np

from sbi_service.simulators.registry import get_task
from sbi_service.simulators.simulate import checkpoint_folder, simulate


def test_workers_give_the_same_file_and_bad_input_is_refused(home, tmp_path, run_cli):
    args = ["simulate", "two_moons", "--num-simulations", "3000", "--seed", "4"]
    args += ["--chunk-size", "1000"]
    code, _, err = run_cli(*args, "--out", str(tmp_path / "one.npz"))
    assert code == 0 and "wrote 3000 simulations" in err, err
    code, _, err = run_cli(*args, "--out", str(tmp_path / "two.npz"), "--workers", "2")
    assert code == 0, err
    one, two = np.load(tmp_path / "one.npz"), np.load(tmp_path / "two.npz")
    assert np.array_equal(one["theta"], two["theta"]) and np.array_equal(one["x"], two["x"])
    assert one["x"].dtype == np.float32 and one["x"].shape == (3000, 2)
    assert not (home / "simulations").exists() or not any((home / "simulations").iterdir())
    for bad, message in [
        (["--backend", "spark"], "unknown backend 'spark'"),
        (["--workers", "0"], "--workers must be at least 1"),
    ]:
        code, _, err = run_cli(*args, "--out", str(tmp_path / "x.npz"), *bad)
        assert code == 2 and message in err, err
    assert not (tmp_path / "x.npz").exists()


def test_resume_uses_the_chunks_on_disk(home, tmp_path, run_cli):
    task = get_task("two_moons")
    folder = checkpoint_folder(home, task, 3000, 7, 1000)
    first = simulate(task, 3000, 7, chunk_size=1000)
    folder.mkdir(parents=True)
    np.save(folder / "chunk-000001.npy", first.x[1000:2000].numpy() + 100)  # marked
    args = ["simulate", "two_moons", "--num-simulations", "3000", "--seed", "7"]
    args += ["--chunk-size", "1000", "--out", str(tmp_path / "r.npz")]
    code, _, err = run_cli(*args, "--resume")
    assert code == 0 and "1 chunk(s) resumed" in err, err
    x = np.load(tmp_path / "r.npz")["x"]
    assert np.array_equal(x[1000:2000], first.x[1000:2000].numpy() + 100)  # read, not redone
    assert np.array_equal(x[:1000], first.x[:1000].numpy())
    assert not folder.exists()  # consumed: removed
    folder.mkdir(parents=True)
    np.save(folder / "chunk-000001.npy", first.x[1000:2000].numpy() + 100)
    code, _, err = run_cli(*args)  # without --resume the chunks are made afresh
    assert code == 0 and "0 chunk(s) resumed" in err
    assert np.array_equal(np.load(tmp_path / "r.npz")["x"], first.x.numpy())
