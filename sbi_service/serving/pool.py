"""The pool of loaded models: an LRU of (model, version) -> Engine, with hot reload.

A request names a model and optionally a version; without one it gets the version the
pool currently serves as the latest. Which versions may be served is the promotion
policy's (``serving.policy``): ``latest`` serves any, ``passed`` only those whose
diagnostics passed or that were force-promoted (``NotServable``, a 409, otherwise).
``reload(model)`` reads the store, loads and warms the version the policy picks (off the
event loop), swaps it in as the latest, then retires the old engine, which finishes its
queued requests before its thread stops. ``promote`` records an explicit choice first.
Loading happens in a worker thread (``asyncio.to_thread``); sampling in the model's
engine thread; nothing here runs torch on the event loop.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from sbi_service.errors import UserError
from sbi_service.serving.admission import Admission
from sbi_service.serving.engine import Engine, EngineClosed
from sbi_service.serving.metrics import Metrics
from sbi_service.serving.policy import POLICIES, ModelStatus, NotServable
from sbi_service.store.db import Store
from sbi_service.workflows.models import load_posterior


@dataclass
class LoadedModel:
    name: str
    version: int
    record: dict[str, Any]
    engine: Engine

    @property
    def posterior(self):
        return self.engine.posterior


class ModelPool:
    """Loaded models by (name, version), least recently used evicted past ``cache_size``."""

    def __init__(
        self,
        store: Store,
        metrics: Metrics,
        device: str = "cpu",
        cache_size: int = 4,
        max_queue_rows: int = 2_000_000,
        batch_rows: int = 8192,
        batching: bool = True,
        policy: str = "latest",
    ):
        if policy not in POLICIES:
            raise ValueError(f"unknown serve policy {policy!r}; expected one of {POLICIES}")
        self.store, self.metrics, self.device, self.policy = store, metrics, device, policy
        self.cache_size, self.batch_rows, self.batching = cache_size, batch_rows, batching
        self.admission = Admission(metrics, max_queue_rows)
        self._models: OrderedDict[tuple[str, int], LoadedModel] = OrderedDict()
        self._latest: dict[str, int] = {}  # model -> the version served as latest
        self._status: dict[str, ModelStatus] = {}  # model -> its store snapshot
        self._locks: dict[tuple[str, int], asyncio.Lock] = {}

    def __len__(self) -> int:
        return len(self._models)

    def loaded(self) -> list[dict[str, Any]]:
        return [
            {"model": m.name, "version": m.version, "latest": self._latest.get(m.name) == m.version}
            for m in self._models.values()
        ]

    async def get(self, name: str, version: int | None = None) -> LoadedModel:
        """The loaded model, loading (and warming) it first if needed.

        Raises ``NotFoundError`` for an unknown model or version and ``NotServable`` when
        the policy forbids the version (or, unpinned, every version).
        """
        if version is None:
            version = self._latest.get(name)
            if version is None:
                status = await self.status(name, refresh=True)
                version = self._latest.setdefault(name, status.served_version(self.policy))
        else:
            status = await self.status(name)
            try:
                status.check_pinned(version, self.policy)
            except UserError:  # perhaps a new version or verdict since the snapshot
                status = await self.status(name, refresh=True)
                status.check_pinned(version, self.policy)
        key = (name, version)
        if key not in self._models:
            async with self._locks.setdefault(key, asyncio.Lock()):
                if key not in self._models:
                    self._insert(await asyncio.to_thread(self._load, name, version))
        self._models.move_to_end(key)
        return self._models[key]

    async def sample(
        self,
        name: str,
        version: int | None,
        observations: np.ndarray,
        num_samples: int,
        seed: int,
        timeout: float | None,
    ) -> tuple[LoadedModel, np.ndarray]:
        """observations (num_obs, *x_shape) -> samples (num_obs, num_samples, d).

        Raises ``UserError`` for observations the model cannot take (checked by
        ``Posterior.check_observations``), else as ``Engine.sample``.
        """
        model = await self.get(name, version)
        try:
            return model, await self._sample(model, observations, num_samples, seed, timeout)
        except EngineClosed:  # swapped out by a reload between get() and submit
            model = await self.get(name, version)
            return model, await self._sample(model, observations, num_samples, seed, timeout)

    @staticmethod
    async def _sample(
        model: LoadedModel,
        observations: np.ndarray,
        num_samples: int,
        seed: int,
        timeout: float | None,
    ) -> np.ndarray:
        x = model.posterior.check_observations(observations)
        return await model.engine.sample(x, num_samples, seed, timeout)

    async def status(self, name: str, refresh: bool = False) -> ModelStatus:
        """The store snapshot of ``name`` (read again when ``refresh`` or not yet read)."""
        if refresh or name not in self._status:
            self._status[name] = await asyncio.to_thread(ModelStatus.read, self.store, name)
        return self._status[name]

    def verdict(self, name: str, version: int) -> str:
        """The verdict of a version served (passed, failed or not_diagnosed)."""
        return self._status[name].verdict(version)

    async def reload(self, name: str) -> LoadedModel:
        """Serve the version the policy picks now as ``name``'s latest: load, warm, swap, drain.

        When the policy allows no version, ``name`` stops being served and ``NotServable``
        is raised.
        """
        status = await self.status(name, refresh=True)
        old = self._latest.get(name)
        try:
            target = status.served_version(self.policy)
        except NotServable:
            self._latest.pop(name, None)
            raise
        if old == target:
            return await self.get(name, old)
        new = await self.get(name, target)
        self._latest[name] = new.version
        if old is not None and (name, old) in self._models:
            self._models.pop((name, old)).engine.close()  # finishes its queue, then stops
            self.metrics.loaded_models.set(len(self._models))
        return new

    async def promote(self, name: str, version: int, force: bool, actor: str) -> LoadedModel:
        """Record ``actor``'s choice of ``version`` and serve it (``force``: despite the
        policy). ``NotServable`` when the policy forbids it and ``force`` is not set."""
        status = await self.status(name, refresh=True)
        verdict = status.verdict(version)
        if not force:
            status.check_pinned(version, self.policy)
        await asyncio.to_thread(self.store.add_promotion, name, version, force, actor, verdict)
        return await self.reload(name)

    async def refresh(self, names: list[str] | None = None) -> None:
        """Read the store again for ``names`` (default: every model seen) and reload those
        served as latest; a model the policy no longer allows stops being served."""
        for name in list(self._status) if names is None else names:
            if name in self._latest:
                try:
                    await self.reload(name)
                except NotServable:
                    pass
            elif name in self._status:
                await self.status(name, refresh=True)

    def close(self, timeout: float = 10.0) -> None:
        for model in self._models.values():
            model.engine.close()
        for model in self._models.values():
            model.engine.join(timeout)
        self._models.clear()
        self.metrics.loaded_models.set(0)

    @property
    def idle(self) -> bool:
        return all(m.engine.idle for m in self._models.values())

    def _load(self, name: str, version: int) -> LoadedModel:
        posterior, record = load_posterior(self.store, name, version, self.device)
        engine = Engine(
            posterior,
            f"{name}-v{version}",
            self.admission,
            self.metrics,
            batch_rows=self.batch_rows,
            batching=self.batching,
        )
        engine.warm()
        return LoadedModel(name, version, record, engine)

    def _insert(self, model: LoadedModel) -> None:
        self._models[(model.name, model.version)] = model
        while len(self._models) > self.cache_size:
            (name, version), evicted = self._models.popitem(last=False)
            if self._latest.get(name) == version:
                del self._latest[name]
            evicted.engine.close()
        self.metrics.loaded_models.set(len(self._models))
