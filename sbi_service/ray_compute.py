"""The Ray compute backend: simulation chunks and jobs as Ray tasks.

This is the one module (with the Ray Serve deployment) that imports Ray; it needs the
optional extra ``pip install 'sbi-service[ray]'``.

``connect()`` joins the cluster at ``SBI_SERVICE_RAY_ADDRESS`` (``auto``,
``host:port`` or ``ray://host:port``) or, with no address, starts a local Ray runtime
for this process (it stops when the process exits). An address whose port does not
answer within ``CONNECT_TIMEOUT_S`` is a ``UserError`` naming it, rather than Ray's
own minutes of retries. A process that already called ``ray.init`` (a test session,
a Ray Serve replica, a Ray task) is reused as it is.

``TaskExecutor`` has the ``concurrent.futures`` executor interface (``submit`` returns
a ``Future``): each call runs as a Ray task with the resources given; ``slots`` is how
many such tasks the cluster runs at once (its CPUs over each task's). A task's
exception comes back as the original exception, not Ray's wrapper. Arguments and
results are numpy arrays and JSON-able values: arrays travel through Ray's object
store (zero-copy), the function itself by reference to its module.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from concurrent.futures import Future
from functools import lru_cache, partial
from typing import Any
from urllib.parse import urlsplit

from sbi_service.errors import UserError

CONNECT_TIMEOUT_S = 5.0
_lock = threading.Lock()


def _import_ray():
    try:
        import ray
    except ImportError:
        raise UserError(
            "the ray backend needs Ray: pip install 'sbi-service[ray]' (or use --backend local)"
        ) from None
    return ray


def _check_reachable(address: str) -> None:
    """Fail fast, naming the address, when nothing listens at host:port."""
    if address == "auto":
        return
    parts = urlsplit(address if "://" in address else f"//{address}")
    if not parts.hostname or parts.port is None:
        raise UserError(
            f"SBI_SERVICE_RAY_ADDRESS={address!r} must be 'auto', 'host:port' or 'ray://host:port'"
        )
    try:
        socket.create_connection((parts.hostname, parts.port), CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise UserError(
            f"cannot reach the Ray cluster at {address!r} (SBI_SERVICE_RAY_ADDRESS): {e}; "
            "start it (ray start --head) or unset the variable to run a local Ray runtime"
        ) from None


def connect(address: str | None = None, num_cpus: int | None = None) -> None:
    """Join the cluster at ``address``, or start a local runtime with ``num_cpus``."""
    ray = _import_ray()
    if address:
        _check_reachable(address)
    with _lock:
        if ray.is_initialized():
            return
        if address:
            try:
                ray.init(address=address, log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise UserError(f"cannot connect to the Ray cluster at {address!r}: {e}") from None
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)


def _configured_address() -> str | None:
    from sbi_service.config import get_settings

    return get_settings().ray_address or None


@lru_cache
def _remote(fn: Callable[..., Any]):
    return _import_ray().remote(fn)


def _unwrap(error: BaseException) -> BaseException:
    """A RayTaskError carries the task's own exception as ``cause``."""
    return getattr(error, "cause", None) or error


class TaskExecutor:
    """``submit(fn, *args) -> Future``: fn(*args) as a Ray task.

    ``num_cpus`` sizes the local runtime when this starts one (ignored on a cluster);
    ``resources`` ({"num_cpus", "num_gpus"}) are what each task asks the scheduler for.
    """

    def __init__(self, num_cpus: int | None = None, resources: dict[str, float] | None = None):
        connect(_configured_address(), num_cpus)
        self.resources = {"num_cpus": 1, **(resources or {})}
        cpus = _import_ray().cluster_resources().get("CPU", 1)
        self.slots = max(1, int(cpus / (self.resources["num_cpus"] or 1)))  # tasks at once
        self._running: set[Any] = set()  # refs of the tasks not finished yet

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        """``fn``: a module-level function, or a ``functools.partial`` of one."""
        if isinstance(fn, partial):
            fn, args = fn.func, (*fn.args, *args)
        ref = _remote(fn).options(**self.resources).remote(*args)
        self._running.add(ref)
        future: Future = Future()

        def done(ray_future: Future) -> None:
            self._running.discard(ref)
            if ray_future.cancelled():
                future.cancel()
            elif ray_future.exception() is not None:
                future.set_exception(_unwrap(ray_future.exception()))
            else:
                future.set_result(ray_future.result())

        ref.future().add_done_callback(done)
        return future

    def shutdown(self) -> None:
        """Cancel the tasks not finished yet."""
        ray = _import_ray()
        for ref in list(self._running):
            ray.cancel(ref, force=True)
        self._running.clear()
