"""In-memory stand-ins for tests of the engine: a provider that enforces the service's rules and
checks the invariants after every write, a gate source driven by simulated traffic, a clock."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from engine.decide import Desired
from engine.errors import ConflictError, PermanentError, SourceError
from engine.invariants import transition_violations
from engine.live import (
    DeploymentRequest,
    EndpointWrite,
    InvokeResult,
    LiveDeployment,
    LiveEndpoint,
    ProvisioningState,
)
from engine.names import derive_deployment_name, is_valid_name
from engine.providers.base import STATE_TAG_PREFIX, Measurement, Window
from engine.spec import ModelRollout

T0 = datetime(2026, 12, 4, 10, 0, tzinfo=UTC)


class FakeClock:
    def __init__(self, start: datetime = T0):
        self.current = start

    def now(self) -> datetime:
        return self.current

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)

    def advance(self, seconds: float) -> None:
        self.current += timedelta(seconds=seconds)


@dataclass
class Behaviour:
    """How a deployment behaves under simulated traffic."""

    error_rate: float = 0.0
    p90_ms: float = 40.0
    p99_ms: float = 80.0
    provisions: bool = True
    smoke_status: int = 200


@dataclass
class FakeSource:
    provider: FakeProvider
    name: str = "local"
    ingestion_delay_s: float = 0.0
    per_minute: bool = False
    requests_per_s: float = 10.0
    fail_next: int = 0  # how many of the next queries raise SourceError

    def measure(
        self, endpoint: str, deployment: str, window: Window, *, mirrored: bool
    ) -> Measurement:
        if self.fail_next:
            self.fail_next -= 1
            raise SourceError("HTTP 503 from the metrics service")
        live = self.provider.endpoints[endpoint]
        share = (live.mirror if mirrored else live.traffic).get(deployment, 0)
        seconds = max(0.0, (window.end - window.start).total_seconds())
        requests = int(self.requests_per_s * seconds * share / 100)
        behaviour = self.provider.behaviour.get(deployment, Behaviour())
        if requests == 0:
            return Measurement(requests=0, server_errors=0, non_2xx=0, latency_ms={})
        errors = round(requests * behaviour.error_rate)
        return Measurement(
            requests=requests,
            server_errors=errors,
            non_2xx=errors,
            latency_ms={50: behaviour.p90_ms / 2, 90: behaviour.p90_ms, 99: behaviour.p99_ms},
        )


class FakeProvider:
    """Keeps endpoints in memory and refuses what Azure ML refuses."""

    name = "fake"

    def __init__(self) -> None:
        self.endpoints: dict[str, LiveEndpoint] = {}
        self.behaviour: dict[str, Behaviour] = {}
        self.calls: list[str] = []
        self.writes = 0
        self.violations: list[str] = []
        self.source = FakeSource(self)
        self._revision = 0

    # -- helpers for tests ---------------------------------------------------------------

    def _store(self, endpoint: str, after: LiveEndpoint, *, external: bool = False) -> LiveEndpoint:
        before = self.endpoints.get(endpoint, LiveEndpoint(endpoint, exists=False))
        self._revision += 1
        after = replace(after, revision=str(self._revision))
        if not external:
            self.violations.extend(transition_violations(before, after))
        self.endpoints[endpoint] = after
        return after

    def set_live(self, endpoint: str, **changes: Any) -> LiveEndpoint:
        """An out-of-band edit (someone in the portal)."""
        return self._store(endpoint, replace(self.endpoints[endpoint], **changes), external=True)

    def add_deployment(self, endpoint: str, name: str, version: str = "0") -> None:
        live = self.endpoints[endpoint]
        deployments = dict(live.deployments)
        deployments[name] = LiveDeployment(name, "m", version, ProvisioningState.SUCCEEDED)
        self._store(endpoint, replace(live, deployments=deployments), external=True)

    # -- Provider -------------------------------------------------------------------------

    def read_endpoint(self, endpoint: str) -> LiveEndpoint:
        self.calls.append("read")
        return self.endpoints.get(endpoint, LiveEndpoint(endpoint, exists=False))

    def create_endpoint(self, endpoint: str) -> LiveEndpoint:
        self.calls.append("create_endpoint")
        if endpoint in self.endpoints:
            return self.endpoints[endpoint]
        return self._store(endpoint, LiveEndpoint(endpoint, exists=True))

    def update_endpoint(
        self, endpoint: str, write: EndpointWrite, *, expected_revision: str
    ) -> LiveEndpoint:
        self.calls.append("update_endpoint")
        live = self.endpoints[endpoint]
        if live.revision != expected_revision:
            raise ConflictError(f"endpoint {endpoint} changed", endpoint=endpoint)
        traffic = {k: v for k, v in write.traffic.items() if v}
        mirror = {k: v for k, v in write.mirror.items() if v}
        problems = []
        if sum(traffic.values()) not in (0, 100):
            problems.append("traffic must sum to 0 or 100")
        if len(mirror) > 1 or any(v > 50 for v in mirror.values()):
            problems.append("mirror at most 50 % to one deployment")
        if set(traffic) & set(mirror):
            problems.append("a deployment cannot have live and mirror traffic")
        if (set(traffic) | set(mirror)) - set(live.deployments):
            problems.append("traffic names an unknown deployment")
        if any(len(v) > 256 for v in write.tags.values()) or len(write.tags) > 50:
            problems.append("tag limits")
        if problems:
            self.violations.extend(f"refused write: {p}" for p in problems)
            raise PermanentError("; ".join(problems), endpoint=endpoint, code="BadRequest")
        other = {k: v for k, v in live.tags.items() if not k.startswith(STATE_TAG_PREFIX)}
        self.writes += 1
        return self._store(
            endpoint,
            replace(live, traffic=traffic, mirror=mirror, tags={**other, **write.tags}),
        )

    def create_deployment(self, endpoint: str, request: DeploymentRequest) -> None:
        self.calls.append("create_deployment")
        if not is_valid_name(request.name):
            raise PermanentError(f"bad name {request.name}", endpoint=endpoint)
        live = self.endpoints[endpoint]
        if request.name in live.deployments:
            return
        behaviour = self.behaviour.get(request.name, Behaviour())
        state = ProvisioningState.SUCCEEDED if behaviour.provisions else ProvisioningState.FAILED
        deployments = dict(live.deployments)
        deployments[request.name] = LiveDeployment(
            request.name, request.model_name, request.model_version, state,
            error="" if behaviour.provisions else "init() raised",
        )  # fmt: skip
        self._store(endpoint, replace(live, deployments=deployments))

    def wait_for_deployment(self, endpoint: str, name: str, timeout_s: float) -> LiveEndpoint:
        return self.endpoints[endpoint]

    def delete_deployment(self, endpoint: str, name: str) -> None:
        self.calls.append("delete_deployment")
        live = self.endpoints[endpoint]
        if live.traffic.get(name) or live.mirror.get(name):
            self.violations.append(f"refused delete of {name} with traffic")
            raise PermanentError(f"{name} has traffic", endpoint=endpoint)
        deployments = {k: v for k, v in live.deployments.items() if k != name}
        self._store(endpoint, replace(live, deployments=deployments))

    def invoke(self, endpoint: str, deployment: str, body: bytes) -> InvokeResult:
        self.calls.append("invoke")
        status = self.behaviour.get(deployment, Behaviour()).smoke_status
        return InvokeResult(status, json.dumps({"probabilities": [0.5]}).encode(), 12.0)

    def gate_source(self, source: str, workspace_id: str | None) -> FakeSource:
        return self.source


def manifest(**spec_changes: Any) -> ModelRollout:
    """A valid manifest for endpoint `churn`, model `churn` version 8, with overrides."""
    spec: dict[str, Any] = {
        "target": {"provider": "local", "endpoint": "churn"},
        "model": {"name": "churn", "version": "8"},
        "steps": [
            {"mirror": 20, "bake": "10m"},
            {"traffic": 10, "bake": "10m"},
            {"traffic": 50, "bake": "10m"},
            {"traffic": 100, "bake": "10m"},
        ],
        "gates": [{"name": "errs", "metric": "error_rate", "max": 0.01, "min_requests": 50}],
    }
    spec.update(spec_changes)
    return ModelRollout.model_validate(
        {
            "apiVersion": "saferollout/v1",
            "kind": "ModelRollout",
            "metadata": {"name": "churn"},
            "spec": spec,
        }
    )


def desired_for(rollout: ModelRollout, model_dir: str = "/nonexistent") -> Desired:
    spec = rollout.spec
    name = derive_deployment_name(
        spec.model.name, spec.model.version, spec.deployment.model_dump(mode="json")
    )
    request = DeploymentRequest(name, spec.model.name, spec.model.version, model_dir)
    return Desired(rollout=rollout, deployment=request, smoke_request=__file__)


@dataclass
class World:
    """A provider, a clock and a manifest wired into a reconciler."""

    provider: FakeProvider = field(default_factory=FakeProvider)
    clock: FakeClock = field(default_factory=FakeClock)
