"""Saved plans: `rollout plan --out FILE` and `rollout apply --plan FILE`.

A saved plan records what it was computed from: the manifest's meaning (digest), the live
endpoint (a fingerprint of the fields the engine reads) and the actions. Applying it re-reads
and re-plans; any difference means the plan is stale and nothing is done, as with terraform.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.decide import Desired
from engine.errors import StalePlanError
from engine.live import LiveEndpoint
from engine.plan import Plan
from engine.providers.base import STATE_TAG_PREFIX
from engine.render import action_json

FORMAT = "saferollout-plan/v1"


def fingerprint(live: LiveEndpoint) -> str:
    """What the engine read of the endpoint, minus the lease (taking it is part of applying)."""
    tags = {
        k: v
        for k, v in live.tags.items()
        if k.startswith(STATE_TAG_PREFIX) and k != f"{STATE_TAG_PREFIX}lease"
    }
    meaning = {
        "exists": live.exists,
        "traffic": live.live_traffic(),
        "mirror": live.live_mirror(),
        "tags": tags,
        "deployments": {
            name: [d.model_name, d.model_version, d.state.value]
            for name, d in sorted(live.deployments.items())
        },
    }
    canonical = json.dumps(meaning, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class SavedPlan:
    manifest: str
    digest: str
    endpoint: str
    fingerprint: str
    actions: list[dict[str, Any]]

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, **self.__dict__}, indent=2) + "\n"


def save(path: Path, manifest: Path, desired: Desired, live: LiveEndpoint, plans: list[Plan]):
    saved = SavedPlan(
        manifest=str(manifest),
        digest=desired.rollout.digest(),
        endpoint=desired.endpoint,
        fingerprint=fingerprint(live),
        actions=[action_json(a) for p in plans for a in p.actions],
    )
    path.write_text(saved.to_json())
    return saved


def load(path: Path) -> SavedPlan:
    try:
        data = json.loads(path.read_text())
        if data.pop("format", None) != FORMAT:
            raise ValueError("not a saferollout plan")
        return SavedPlan(**data)
    except (OSError, ValueError, TypeError) as error:
        raise StalePlanError(f"{path} is not a readable saved plan: {error}") from None


def check_current(saved: SavedPlan, desired: Desired, live: LiveEndpoint, plans: list[Plan]):
    """Raise StalePlanError unless the saved plan is exactly what would be done now."""
    if saved.digest != desired.rollout.digest():
        raise StalePlanError(
            f"the manifest {saved.manifest} changed since the plan was made; run `rollout plan` "
            "again"
        )
    if saved.fingerprint != fingerprint(live):
        raise StalePlanError(
            f"endpoint {saved.endpoint} changed since the plan was made; nothing was applied. "
            "Run `rollout plan` again and review the new plan"
        )
    now = [action_json(a) for p in plans for a in p.actions]
    if now != saved.actions:
        raise StalePlanError(
            f"the plan for endpoint {saved.endpoint} is out of date (time or gate data moved "
            f"on: it now has {len(now)} action(s), the saved one {len(saved.actions)}); nothing "
            "was applied. Run `rollout plan` again"
        )
