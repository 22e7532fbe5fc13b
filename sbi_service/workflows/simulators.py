"""Register user simulators in the store (the CLI and ``POST /v1/simulators`` call this)."""

from __future__ import annotations

from typing import Any

from sbi_service.errors import UserError
from sbi_service.simulators.registry import list_names, task_from_import_path
from sbi_service.simulators.simulate import simulate
from sbi_service.store.db import Store, check_name


def register_simulator(store: Store, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Check that ``spec`` resolves to a working task, then record it; returns its info."""
    check_name(name, "simulator name")
    if name in list_names() and name not in {s["name"] for s in store.list_simulators()}:
        raise UserError(f"simulator name {name!r} is taken by a built-in or plugin simulator")
    task = task_from_import_path(name, spec)
    simulate(task, 2, seed=0)  # fails here, with the simulator's own message, if it cannot run
    store.add_simulator(name, "import_path", spec)
    return task.info()
