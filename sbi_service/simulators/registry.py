"""Simulators by name.

Four sources, looked up in this order:

1. registered from Python in this process: ``register(task)``;
2. built-in sbibm tasks (``sbi_service.simulators.tasks``);
3. plugins: entry points in the group ``sbi_service.simulators`` whose object is a
   ``Task`` or a zero-argument factory returning one;
4. registered in the store (``sbi-service simulators register`` or ``POST /v1/simulators``)
   by import path ``"package.module:attribute"``, where the attribute is a Task, a
   factory of one, or a vectorized callable together with a prior and ``x_shape``.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any

from sbi_service.errors import NotFoundError, UserError
from sbi_service.simulators.base import Task
from sbi_service.simulators.priors import prior_from_spec
from sbi_service.simulators.tasks import BUILTIN_TASKS

ENTRY_POINT_GROUP = "sbi_service.simulators"
_registered: dict[str, Task] = {}


def register(task: Task) -> Task:
    """Make ``task`` available by its name in this process."""
    _registered[task.name] = task
    return task


def _entry_points() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def _as_task(obj: Any, name: str, source: str) -> Task:
    if callable(obj) and not isinstance(obj, Task):
        obj = obj()
    if not isinstance(obj, Task):
        raise UserError(
            f"simulator {name!r} from {source} is not a Task (got {type(obj).__name__})"
        )
    obj.source = source
    return obj


def task_from_import_path(name: str, spec: dict[str, Any]) -> Task:
    """Resolve a stored registration.

    ``spec`` is {"import_path": "mod:attr", "prior"?: {...}, "x_shape"?: [...]}.
    """
    path = spec.get("import_path", "")
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise UserError(f"import_path {path!r} must look like 'package.module:attribute'")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise UserError(f"cannot import {path!r}: {e}") from None
    if "prior" in spec:  # a bare vectorized callable with its prior and x_shape
        if "x_shape" not in spec:
            raise UserError("a simulator registered with a prior also needs 'x_shape'")
        return Task(
            name=name,
            prior=prior_from_spec(spec["prior"]),
            simulator=obj,
            x_shape=tuple(spec["x_shape"]),
            description=spec.get("description", f"user simulator {path}"),
            source=f"import_path:{path}",
        )
    task = _as_task(obj, name, f"import_path:{path}")
    task.name = name
    return task


def get_task(name: str, stored: list[dict[str, Any]] | None = None) -> Task:
    """The task called ``name``; ``stored`` are the store's registrations."""
    if name in _registered:
        return _registered[name]
    if name in BUILTIN_TASKS:
        return BUILTIN_TASKS[name]()
    eps = _entry_points()
    if name in eps:
        return _as_task(eps[name].load(), name, f"entry_point:{eps[name].value}")
    for entry in stored or []:
        if entry["name"] == name:
            return task_from_import_path(name, entry["spec"])
    known = ", ".join(sorted(list_names(stored)))
    raise NotFoundError(f"unknown simulator {name!r}; known simulators: {known}")


def list_names(stored: list[dict[str, Any]] | None = None) -> list[str]:
    names = set(_registered) | set(BUILTIN_TASKS) | set(_entry_points())
    return sorted(names | {s["name"] for s in stored or []})


def list_tasks(stored: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """``Task.info()`` for every known simulator (one that fails to load says why)."""
    out = []
    for name in list_names(stored):
        try:
            out.append(get_task(name, stored).info())
        except UserError as e:
            out.append({"name": name, "error": str(e)})
    return out
