"""The pool of loaded models: an LRU of (model, version) -> Engine, with hot reload.

A request names a model and optionally a version; without one it gets the version the
pool currently serves as the latest. ``reload(model)`` looks for a newer version in
the store, loads and warms it (off the event loop), swaps it in as the latest, then
retires the old engine, which finishes its queued requests before its thread stops.
Loading happens in a worker thread (``asyncio.to_thread``); sampling in the model's
engine thread; nothing here runs torch on the event loop.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from sbi_service.serving.engine import Engine, EngineClosed, RowBudget
from sbi_service.serving.metrics import Metrics
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
    ):
        self.store, self.metrics, self.device = store, metrics, device
        self.cache_size, self.batch_rows, self.batching = cache_size, batch_rows, batching
        self.budget = RowBudget(max_queue_rows)
        self._models: OrderedDict[tuple[str, int], LoadedModel] = OrderedDict()
        self._latest: dict[str, int] = {}  # model -> the version served as latest
        self._locks: dict[tuple[str, int], asyncio.Lock] = {}
        metrics.gauge(
            "sbi_queue_rows", "Rows admitted and not yet finished.", lambda: self.budget.used
        )
        metrics.gauge("sbi_loaded_models", "Loaded (model, version) pairs.", lambda: len(self))

    def __len__(self) -> int:
        return len(self._models)

    def loaded(self) -> list[dict[str, Any]]:
        return [
            {"model": m.name, "version": m.version, "latest": self._latest.get(m.name) == m.version}
            for m in self._models.values()
        ]

    async def get(self, name: str, version: int | None = None) -> LoadedModel:
        """The loaded model, loading (and warming) it first if needed."""
        if version is None:
            version = self._latest.get(name)
            if version is None:
                record = await asyncio.to_thread(self.store.get_model_version, name)
                version = self._latest.setdefault(name, record["version"])
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
        x = model.posterior.check_observations(torch.from_numpy(observations))
        return await model.engine.sample(x, num_samples, seed, timeout)

    async def reload(self, name: str) -> LoadedModel:
        """Serve the store's latest version of ``name`` as its latest: load, warm, swap, drain."""
        record = await asyncio.to_thread(self.store.get_model_version, name)
        old = self._latest.get(name)
        if old == record["version"]:
            return await self.get(name, old)
        new = await self.get(name, record["version"])
        self._latest[name] = new.version
        if old is not None and (name, old) in self._models:
            self._models.pop((name, old)).engine.close()  # finishes its queue, then stops
        return new

    async def refresh(self) -> None:
        """Reload every model served as latest whose store has a newer version."""
        for name in list(self._latest):
            await self.reload(name)

    def close(self, timeout: float = 10.0) -> None:
        for model in self._models.values():
            model.engine.close()
        for model in self._models.values():
            model.engine.join(timeout)
        self._models.clear()

    @property
    def idle(self) -> bool:
        return all(m.engine.idle for m in self._models.values())

    def _load(self, name: str, version: int) -> LoadedModel:
        posterior, record = load_posterior(self.store, name, version, self.device)
        engine = Engine(
            posterior,
            f"{name}-v{version}",
            self.budget,
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
