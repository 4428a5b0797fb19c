"""What a provider reports about an endpoint, normalised to the fields the engine owns.

Both providers translate their native objects into these values, so planning and drift
detection compare like with like and server-side noise never shows up as a change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class ProvisioningState(StrEnum):
    CREATING = "Creating"
    UPDATING = "Updating"
    SCALING = "Scaling"
    DELETING = "Deleting"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    CANCELED = "Canceled"

    @property
    def is_settled(self) -> bool:
        return self in (ProvisioningState.SUCCEEDED, ProvisioningState.FAILED, self.CANCELED)


@dataclass(frozen=True)
class LiveDeployment:
    name: str
    model_name: str
    model_version: str
    state: ProvisioningState
    error: str = ""
    instance_type: str | None = None
    instance_count: int | None = None


@dataclass(frozen=True)
class LiveEndpoint:
    """One endpoint as read. `revision` changes on every write: a write based on an older
    revision is refused (local) or detected (Azure's `lastModifiedAt`)."""

    name: str
    exists: bool
    deployments: dict[str, LiveDeployment] = field(default_factory=dict)
    traffic: dict[str, int] = field(default_factory=dict)
    mirror: dict[str, int] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    revision: str = ""
    scoring_uri: str = ""

    def live_traffic(self) -> dict[str, int]:
        """Traffic with zero entries dropped, as Azure stores it."""
        return {name: pct for name, pct in self.traffic.items() if pct}

    def live_mirror(self) -> dict[str, int]:
        return {name: pct for name, pct in self.mirror.items() if pct}


@dataclass(frozen=True)
class EndpointWrite:
    """One update of an endpoint: traffic, mirror and tags replaced together, in one write.

    `traffic` and `mirror` are complete maps (zero entries may be left out); `tags` holds only
    the engine's own tags (those under the state prefix): other tags on the endpoint are kept.
    """

    traffic: dict[str, int]
    mirror: dict[str, int]
    tags: dict[str, str]


@dataclass(frozen=True)
class DeploymentRequest:
    """What to create: the derived name, the model version and the serving settings."""

    name: str
    model_name: str
    model_version: str
    model_dir: str  # models/<name>/: scoring script, environment, sample request
    instance_type: str | None = None
    instance_count: int | None = None


@dataclass(frozen=True)
class InvokeResult:
    status: int
    body: bytes
    latency_ms: float
