"""The provider boundary: the few calls the engine makes on a serving platform.

`local` (the embedded backend) and `azureml` implement it. Every method raises only the
engine's own errors (`engine.errors`): SDK and transport errors are translated here, once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from engine.live import DeploymentRequest, EndpointWrite, InvokeResult, LiveEndpoint

STATE_TAG_PREFIX = "saferollout."


class Provider(Protocol):
    name: str

    def read_endpoint(self, endpoint: str) -> LiveEndpoint:
        """The endpoint as it is now; `exists=False` when there is none."""
        ...

    def create_endpoint(self, endpoint: str) -> LiveEndpoint:
        """Create an empty endpoint with key auth; idempotent when it already exists."""
        ...

    def update_endpoint(
        self, endpoint: str, write: EndpointWrite, *, expected_revision: str
    ) -> LiveEndpoint:
        """Replace traffic, mirror and the engine's tags in one write, keeping all else.

        Raises ConflictError when the endpoint's revision is no longer `expected_revision`.
        Returns the endpoint as re-read after the write.
        """
        ...

    def create_deployment(self, endpoint: str, request: DeploymentRequest) -> None:
        """Start creating a deployment; its provisioning state shows in `read_endpoint`.
        Adopts (does nothing) when a deployment of that name already exists."""
        ...

    def wait_for_deployment(self, endpoint: str, name: str, timeout_s: float) -> LiveEndpoint:
        """Block until the deployment's provisioning settles or `timeout_s` passes."""
        ...

    def delete_deployment(self, endpoint: str, name: str) -> None:
        """Delete a deployment that carries no traffic; idempotent when it is already gone."""
        ...

    def invoke(self, endpoint: str, deployment: str, body: bytes) -> InvokeResult:
        """Call one deployment directly (never mirrored), as the smoke test does."""
        ...

    def gate_source(self, source: str, workspace_id: str | None) -> GateSource:
        """The source of gate measurements named by `analysis.source`."""
        ...


@dataclass(frozen=True)
class Window:
    start: datetime
    end: datetime


@dataclass(frozen=True)
class Measurement:
    """What a source saw of one deployment over one window.

    `latency_ms` maps a percentile (50, 90, 95, 99) to milliseconds; empty without data.
    `aggregation` says how percentiles were obtained, e.g. "exact over 1,240 requests" or
    "maximum of per-minute p90 values": per-minute percentiles cannot be re-aggregated.
    `latencies_ms` holds every request's latency when the source has them (per-request
    sources), for gates that bound percentiles with their sample size; None otherwise.
    """

    requests: int
    server_errors: int
    non_2xx: int
    latency_ms: dict[int, float]
    cpu_percent: float | None = None
    memory_percent: float | None = None
    aggregation: str = "exact"
    latencies_ms: Sequence[float] | None = field(default=None, compare=False, repr=False)


class GateSource(Protocol):
    name: str
    ingestion_delay_s: float
    per_minute: bool

    def measure(
        self, endpoint: str, deployment: str, window: Window, *, mirrored: bool
    ) -> Measurement:
        """Requests to `deployment` in `window`: live ones, or mirrored copies when `mirrored`.
        Raises SourceError when the source cannot answer."""
        ...
