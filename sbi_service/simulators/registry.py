"""Simulators by name.

Sources, looked up in this order:

1. registered from Python in this process: ``register(task)`` or the ``@simulator``
   decorator on a vectorized function;
2. built-in sbibm tasks (``sbi_service.simulators.tasks``);
3. plugins: entry points in the group ``sbi_service.simulators`` whose object is a
   ``Task`` or a zero-argument factory returning one;
4. registered in the store (``sbi-service simulators register`` or
   ``POST /v1/simulators``), of two kinds:
   - ``import_path``: ``{"import_path": "package.module:attribute", "prior"?, "x_shape"?}``,
     where the attribute is a Task, a ``@simulator`` function, a vectorized callable
     given with a prior and ``x_shape``, or (from the CLI only) a factory of a Task;
   - ``remote``: ``{"url", "prior", "x_shape", ...}``, an HTTP simulator
     (``sbi_service.simulators.remote``).

Every task has a ``version``: the package's for built-in tasks and plugins, and for
stored registrations a number that grows by one each time the name is registered again.

Resolving an import path imports the module, which runs its code: a caller over the
network passes ``allowlist`` (module prefixes), checked before anything is imported,
and factories are never called for it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, entry_points, version
from typing import Any, TypeVar

from sbi_service.errors import ForbiddenError, NotFoundError, UserError
from sbi_service.simulators.base import Task
from sbi_service.simulators.priors import prior_from_spec
from sbi_service.simulators.tasks import BUILTIN_TASKS

ENTRY_POINT_GROUP = "sbi_service.simulators"
STORED_KINDS = ("import_path", "remote")
REMOTE_OPTIONS = ("format", "timeout_s", "retries", "backoff_s", "batch_size", "max_concurrency")
_registered: dict[str, Task] = {}
F = TypeVar("F", bound=Callable[..., Any])


def register(task: Task) -> Task:
    """Make ``task`` available by its name in this process."""
    task.source = "python"
    _registered[task.name] = task
    return task


def simulator(
    name: str, prior: dict[str, Any], x_shape: Sequence[int], description: str = ""
) -> Callable[[F], F]:
    """Decorator: register a vectorized ``fn(theta (n, d)) -> x (n, *x_shape)`` as ``name``.

    The function is returned unchanged, with the Task as ``fn.sbi_task``, so that an
    import path to the function also finds it.
    """

    def wrap(fn: F) -> F:
        task = Task(name, prior_from_spec(prior), fn, tuple(x_shape), description)
        fn.sbi_task = register(task)  # type: ignore[attr-defined]
        return fn

    return wrap


@lru_cache
def _package_version(dist: str) -> str:
    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"


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


def module_allowed(module: str, allowlist: Sequence[str]) -> bool:
    """``module`` is one of the prefixes or inside one (``pkg`` allows ``pkg.sims``)."""
    return any(module == p or module.startswith(p + ".") for p in allowlist if p)


def task_from_import_path(
    name: str, spec: dict[str, Any], allowlist: Sequence[str] | None = None
) -> Task:
    """Resolve ``{"import_path": "mod:attr", "prior"?, "x_shape"?}``.

    ``allowlist`` None: trusted (the CLI, a stored registration). A list: the module
    must be on it (``ForbiddenError`` before any import) and nothing is called here.
    """
    path = spec.get("import_path", "")
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise UserError(f"import_path {path!r} must look like 'package.module:attribute'")
    if allowlist is not None and not module_allowed(module_name, allowlist):
        raise ForbiddenError(
            f"import_path {path!r}: module {module_name!r} is not on SBI_SERVICE_IMPORT_ALLOWLIST "
            f"({', '.join(allowlist) or 'empty: registration by import path is off over REST'})"
        )
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise UserError(f"cannot import {path!r}: {e}") from None
    source = f"import_path:{path}"
    if isinstance(getattr(obj, "sbi_task", None), Task):
        obj = obj.sbi_task
    if isinstance(obj, Task):
        return replace(obj, name=name, source=source)
    if "prior" in spec:  # a bare vectorized callable with its prior and x_shape
        if "x_shape" not in spec:
            raise UserError("a simulator registered with a prior also needs 'x_shape'")
        if not callable(obj):
            raise UserError(f"import_path {path!r} is a {type(obj).__name__}, not a function")
        return Task(
            name=name,
            prior=prior_from_spec(spec["prior"]),
            simulator=obj,
            x_shape=tuple(spec["x_shape"]),
            description=spec.get("description", f"user simulator {path}"),
            source=source,
        )
    if allowlist is not None:
        raise UserError(
            f"import_path {path!r} is not a Task or a @simulator function: give 'prior' and "
            "'x_shape' to register a bare vectorized callable"
        )
    task = _as_task(obj, name, source)
    task.name = name
    return task


def task_from_remote(name: str, spec: dict[str, Any], allowed_hosts: Sequence[str]) -> Task:
    """Resolve ``{"url", "prior", "x_shape", "format"?, "timeout_s"?, ...}``."""
    from sbi_service.simulators.remote import RemoteSimulator

    for key in ("url", "prior", "x_shape"):
        if key not in spec:
            raise UserError(f"a remote simulator needs {key!r}")
    options = {k: spec[k] for k in REMOTE_OPTIONS if k in spec}
    remote = RemoteSimulator(spec["url"], tuple(spec["x_shape"]), list(allowed_hosts), **options)
    return Task(
        name=name,
        prior=prior_from_spec(spec["prior"]),
        simulator=remote,
        x_shape=tuple(spec["x_shape"]),
        description=spec.get("description", f"remote simulator at {spec['url']}"),
        source=f"remote:{spec['url']}",
    )


def task_from_stored(entry: dict[str, Any]) -> Task:
    """A task from a store registration ``{"name", "kind", "spec"}``."""
    from sbi_service.config import get_settings

    name, spec = entry["name"], entry["spec"]
    if entry["kind"] == "remote":
        task = task_from_remote(name, spec, get_settings().simulator_hosts)
    else:
        task = task_from_import_path(name, spec)
    task.version = str(spec.get("version", 1))
    return task


def get_task(name: str, stored: list[dict[str, Any]] | None = None) -> Task:
    """The task called ``name``; ``stored`` are the store's registrations."""
    if name in _registered:
        return _registered[name]
    if name in BUILTIN_TASKS:
        task = BUILTIN_TASKS[name]()
        task.version = _package_version("sbi-service")
        return task
    eps = _entry_points()
    if name in eps:
        ep = eps[name]
        task = _as_task(ep.load(), name, f"entry_point:{ep.value}")
        task.version = ep.dist.version if ep.dist is not None else "unknown"
        return task
    for entry in stored or []:
        if entry["name"] == name:
            return task_from_stored(entry)
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
