"""sbibm's official benchmark observations and reference posterior samples.

The sbibm 1.1.0 wheel ships, for each of its tasks and ``num_observation`` 1..10, the
observation x_o (``observation.csv``), the parameters that generated it
(``true_parameters.csv``) and 10,000 reference posterior samples
(``reference_posterior_samples.csv.bz2``). This module downloads the wheel once, without
its dependencies, into ``benchmarks/.sbibm/`` (``pip download``) and reads those files from
it, so the accuracy benchmark scores every estimator on exactly the observations and
references a reviewer using sbibm would.
"""

from __future__ import annotations

import bz2
import io
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

SBIBM_VERSION = "1.1.0"
CACHE = Path(__file__).parent / ".sbibm"


def wheel() -> Path:
    """The sbibm wheel's path, downloaded on first use."""
    found = sorted(CACHE.glob(f"sbibm-{SBIBM_VERSION}-*.whl"))
    if not found:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", f"sbibm=={SBIBM_VERSION}", "--no-deps"]
            + ["-q", "-d", str(CACHE)],
            check=True,
        )
        found = sorted(CACHE.glob(f"sbibm-{SBIBM_VERSION}-*.whl"))
    return found[0]


def official(task: str, num_observation: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x_o (dim_x,), true theta (dim_theta,), reference samples (10000, dim_theta)), float32.

    ``num_observation`` is sbibm's 1-based index.
    """
    folder = f"sbibm/tasks/{task}/files/num_observation_{num_observation}/"
    with zipfile.ZipFile(wheel()) as z:

        def read(name: str) -> np.ndarray:
            raw = z.read(folder + name)
            text = (bz2.decompress(raw) if name.endswith(".bz2") else raw).decode()
            return np.loadtxt(io.StringIO(text), delimiter=",", skiprows=1, ndmin=2)

        x_o = read("observation.csv")[0]
        theta = read("true_parameters.csv")[0]
        reference = read("reference_posterior_samples.csv.bz2")
    return x_o.astype(np.float32), theta.astype(np.float32), reference.astype(np.float32)
