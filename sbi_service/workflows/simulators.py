"""Register user simulators in the store (the CLI and ``POST /v1/simulators`` call this).

Two kinds (``sbi_service.simulators.registry``): ``import_path`` and ``remote``.
Registration resolves the spec and runs a trial batch of ``TRIAL_ROWS`` prior draws;
a simulator that raises, answers the wrong shape or something that is not numbers, or
gives NaN/inf for more than ``MAX_TRIAL_NONFINITE`` of the rows is refused with a
message saying which, and nothing is stored. Registering a name again stores the new
spec as the next version.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sbi_service.errors import UserError
from sbi_service.simulators.registry import (
    list_names,
    task_from_import_path,
    task_from_remote,
)
from sbi_service.simulators.simulate import simulate
from sbi_service.store.db import Store, check_name

TRIAL_ROWS = 10
MAX_TRIAL_NONFINITE = 0.5


def register_simulator(
    store: Store,
    name: str,
    kind: str,
    spec: dict[str, Any],
    allowlist: Sequence[str] | None = None,
    allowed_hosts: Sequence[str] = (),
) -> dict[str, Any]:
    """Check that ``spec`` resolves to a working task, then record it; returns its info.

    ``allowlist``: module prefixes an import path must be in (None: the CLI, unlimited);
    ``allowed_hosts``: ``SBI_SERVICE_SIMULATOR_HOSTS`` for a remote simulator.
    """
    check_name(name, "simulator name")
    if name in list_names() and name not in {s["name"] for s in store.list_simulators()}:
        raise UserError(f"simulator name {name!r} is taken by a built-in or plugin simulator")
    if kind == "remote":
        task = task_from_remote(name, spec, allowed_hosts)
    elif kind == "import_path":
        task = task_from_import_path(name, spec, allowlist)
    else:
        raise UserError(f"unknown simulator kind {kind!r}; expected import_path or remote")
    trial = simulate(task, TRIAL_ROWS, seed=0, retries=0, max_lost_fraction=1.0)
    if trial.report.failed_chunks:
        raise UserError(
            f"simulator {name!r} failed its trial batch of {TRIAL_ROWS} rows: "
            f"{trial.report.failed_chunks[0]['error']}"
        )
    if trial.report.num_nonfinite > MAX_TRIAL_NONFINITE * TRIAL_ROWS:
        raise UserError(
            f"simulator {name!r} returned NaN or inf for {trial.report.num_nonfinite} of "
            f"{TRIAL_ROWS} trial rows: it must return finite x for most parameters"
        )
    task.version = str(store.add_simulator(name, kind, spec))
    return task.info()
