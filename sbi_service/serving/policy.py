"""Which version of a model is served: the promotion policy (``SBI_SERVICE_SERVE_POLICY``).

    latest   every version may be served; an unpinned request gets the newest
    passed   only versions whose latest diagnose run passed, or that an operator
             force-promoted, may be served; an unpinned request gets the newest of them

A version is *eligible* under a policy from a moment on: its creation (``latest``) or
its passing verdict (``passed``). An explicit promotion of version V at time T
(``POST /v1/models/{model}/reload {"version": V}``, recorded in the store) makes V the
served version until some version becomes eligible after T; the served version is then
the newest of V and those. So a rollback sticks, and the next trained (``latest``) or
validated (``passed``) version still takes over. A promotion that was not forced stops
counting under ``passed`` once V's verdict is no longer a pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sbi_service.errors import NotFoundError, UserError
from sbi_service.store.db import Store

POLICIES = ("latest", "passed")
PASSED, FAILED, NOT_DIAGNOSED = "passed", "failed", "not_diagnosed"


class NotServable(UserError):
    """The policy does not allow serving the version asked for (or any version)."""

    status_code = 409


@dataclass(frozen=True)
class ModelStatus:
    """A snapshot of one model's versions, verdicts and promotions in the store."""

    name: str
    created: dict[int, float]  # version -> created_at
    verdicts: dict[int, dict[str, Any]]  # version -> Store.verdicts() entry
    promotions: list[dict[str, Any]]  # Store.promotions(), oldest first

    @classmethod
    def read(cls, store: Store, name: str) -> ModelStatus:
        created = {v["version"]: v["created_at"] for v in store.list_versions(name)}
        if not created:
            store.get_model_version(name)  # raises NotFoundError naming the known models
        return cls(name, created, store.verdicts(name), store.promotions(name))

    def verdict(self, version: int) -> str:
        """passed, failed or not_diagnosed."""
        if version not in self.created:
            raise NotFoundError(
                f"model {self.name!r} has no version {version} "
                f"(versions: {', '.join(map(str, sorted(self.created)))})"
            )
        entry = self.verdicts.get(version)
        if entry is None:
            return NOT_DIAGNOSED
        return PASSED if entry["passed"] else FAILED

    def eligible_since(self, version: int, policy: str) -> float | None:
        """When ``version`` became servable under ``policy`` (None: it is not)."""
        if policy == "latest":
            return self.created[version]
        if self.verdict(version) == PASSED:
            return self.verdicts[version]["diagnosed_at"]
        return None

    def forced(self, version: int) -> bool:
        return any(p["forced"] and p["version"] == version for p in self.promotions)

    def served_version(self, policy: str) -> int:
        """The version an unpinned request gets; ``NotServable`` when there is none."""
        eligible = {v: t for v in self.created if (t := self.eligible_since(v, policy)) is not None}
        last = self.promotions[-1] if self.promotions else None
        if last is not None and (last["forced"] or last["version"] in eligible):
            later = [v for v, t in eligible.items() if t > last["at"]]
            return max([last["version"], *later])
        if not eligible:
            raise NotServable(
                f"model {self.name!r} has no version that passed its diagnostics "
                f"({self._verdict_list()}), and the server's policy "
                "SBI_SERVICE_SERVE_POLICY=passed serves only those. Run a diagnose job "
                '(POST /v1/jobs {"kind": "diagnose", "model": ...}) on a version and serve it '
                "once it passes, or force one with POST "
                f'/v1/models/{self.name}/reload {{"version": N, "force": true}}'
            )
        return max(eligible)

    def check_pinned(self, version: int, policy: str) -> None:
        """A request pinned to ``version``: ``NotServable`` when the policy forbids it."""
        verdict = self.verdict(version)
        if self.eligible_since(version, policy) is None and not self.forced(version):
            raise NotServable(
                f"version {version} of model {self.name!r} is {verdict.replace('_', ' ')}, "
                "and the server's policy SBI_SERVICE_SERVE_POLICY=passed serves only versions "
                f"whose diagnostics passed ({self._verdict_list()}). Pin a version that passed, "
                "run a diagnose job on this one, or force it with POST "
                f'/v1/models/{self.name}/reload {{"version": {version}, "force": true}}'
            )

    def _verdict_list(self) -> str:
        return ", ".join(f"v{v}: {self.verdict(v)}" for v in sorted(self.created))
