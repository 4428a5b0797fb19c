"""The `saferollout/v1` ModelRollout manifest as pydantic models: the user contract.

The loader (`engine.loader`) turns YAML into these models and reports every problem located in
the file; `engine.schema` generates `schemas/rollout.schema.json` from them. Field names here
are the manifest's own, so error paths read exactly as the user wrote them.
"""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PlainSerializer,
    Tag,
    WithJsonSchema,
)

from engine.durations import DURATION_PATTERN, parse_duration, to_manifest_form

API_VERSION = "saferollout/v1"
KIND = "ModelRollout"
NAME_PATTERN = r"^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$"


def _duration(value: Any) -> timedelta:
    if isinstance(value, timedelta):
        return value
    if not isinstance(value, str):
        raise ValueError("a duration is a string such as 30s, 10m or 2h")
    return parse_duration(value)


Duration = Annotated[
    timedelta,
    BeforeValidator(_duration),
    PlainSerializer(to_manifest_form, return_type=str),
    WithJsonSchema({"type": "string", "pattern": DURATION_PATTERN, "examples": ["30s", "10m"]}),
]

ResourceName = Annotated[str, Field(min_length=3, max_length=32, pattern=NAME_PATTERN)]


class StrictModel(BaseModel):
    """Unknown keys are errors and values are never coerced between types."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Metadata(StrictModel):
    name: Annotated[str, Field(min_length=1, max_length=63)]


class Workspace(StrictModel):
    subscription_id: str | None = None
    resource_group: str | None = None
    name: str | None = None


class Target(StrictModel):
    provider: Literal["azureml", "local"]
    endpoint: ResourceName
    workspace: Workspace | None = None


def _version(value: Any) -> Any:
    # An integer version is unambiguous and accepted; floats are rejected by the loader with a
    # hint to quote them, because YAML has already turned `1.10` into 1.1.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


def _pinned(value: str) -> str:
    # Checked here rather than in the pattern: pydantic's regex engine has no look-ahead.
    if value.lower() == "latest":
        raise ValueError("a version is pinned; latest is not allowed")
    return value


VERSION_PATTERN = r"^[A-Za-z0-9][\w.-]*$"
# The schema spells "not latest" as a look-ahead, which editors and jsonschema understand.
_SCHEMA_VERSION_PATTERN = r"^(?![Ll][Aa][Tt][Ee][Ss][Tt]$)[A-Za-z0-9][\w.-]*$"


class ModelRef(StrictModel):
    name: Annotated[str, Field(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9][\w.-]*$")]
    version: Annotated[
        str,
        BeforeValidator(_version),
        Field(min_length=1, max_length=64, pattern=VERSION_PATTERN),
        AfterValidator(_pinned),
        WithJsonSchema(
            {
                "anyOf": [
                    {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": 64,
                        "pattern": _SCHEMA_VERSION_PATTERN,
                    },
                    {"type": "integer", "minimum": 0},
                ]
            }
        ),
    ]


class DeploymentSettings(StrictModel):
    instance_type: str | None = None
    instance_count: Annotated[int, Field(ge=1, le=100)] | None = None


class SmokeTest(StrictModel):
    request: str | None = None
    expect_status: Annotated[int, Field(ge=100, le=599)] = 200


class MirrorStep(StrictModel):
    mirror: Annotated[int, Field(ge=1, le=50)]
    bake: Duration = timedelta(0)


class TrafficStep(StrictModel):
    traffic: Annotated[int, Field(ge=1, le=100)]
    bake: Duration = timedelta(0)


class ApprovalStep(StrictModel):
    approval: Literal["manual"]


def _step_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        for kind in ("mirror", "traffic", "approval"):
            if kind in value:
                return kind
        return None
    return getattr(value, "kind", None)


Step = Annotated[
    Annotated[MirrorStep, Tag("mirror")]
    | Annotated[TrafficStep, Tag("traffic")]
    | Annotated[ApprovalStep, Tag("approval")],
    Discriminator(
        _step_kind,
        custom_error_type="step_kind",
        custom_error_message="a step has one of mirror, traffic or approval",
    ),
]


class Metric(StrEnum):
    ERROR_RATE = "error_rate"
    NON_2XX_RATE = "non_2xx_rate"
    ERROR_COUNT = "error_count"
    REQUEST_COUNT = "request_count"
    LATENCY_P50_MS = "latency_p50_ms"
    LATENCY_P90_MS = "latency_p90_ms"
    LATENCY_P95_MS = "latency_p95_ms"
    LATENCY_P99_MS = "latency_p99_ms"
    CPU_UTILIZATION = "cpu_utilization"
    MEMORY_UTILIZATION = "memory_utilization"

    @property
    def percentile(self) -> int | None:
        """50 for latency_p50_ms, and so on; None for the other metrics."""
        if self.value.startswith("latency_p"):
            return int(self.value.removeprefix("latency_p").removesuffix("_ms"))
        return None

    @property
    def value_range(self) -> tuple[float, float | None]:
        """The bounds a threshold on this metric must lie in (None: unbounded above)."""
        if self in (Metric.ERROR_RATE, Metric.NON_2XX_RATE):
            return (0.0, 1.0)
        if self in (Metric.CPU_UTILIZATION, Metric.MEMORY_UTILIZATION):
            return (0.0, 100.0)
        return (0.0, None)


Number = Annotated[float, BeforeValidator(lambda v: float(v) if type(v) is int else v)]


class ThresholdGate(StrictModel):
    name: Annotated[str, Field(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9][\w.-]*$")]
    # Not strict: a manifest spells the metric as its string value, never as the enum member.
    metric: Annotated[Metric, Field(strict=False)]
    max: Number | None = None
    min: Number | None = None
    max_ratio_to_stable: Number | None = None
    min_requests: Annotated[int, Field(ge=0)] = 100
    dry_run: bool = False

    @property
    def bound(self) -> tuple[str, float]:
        """The one bound this gate has, e.g. ("max", 0.01) or ("max_ratio_to_stable", 1.25)."""
        for key in ("max", "min", "max_ratio_to_stable"):
            value = getattr(self, key)
            if value is not None:
                return key, value
        raise ValueError(f"gate {self.name} has no bound")  # the loader guarantees one


Gate = ThresholdGate


class Analysis(StrictModel):
    source: Literal["local", "azure-metrics", "azure-logs"] | None = None
    workspace_id: str | None = None
    warmup: Duration = timedelta(0)
    no_data: Literal["inconclusive", "fail"] = "inconclusive"
    max_source_errors: Annotated[int, Field(ge=0)] = 4


class Cleanup(StrictModel):
    delete_previous_after: Duration = timedelta(hours=1)


class Spec(StrictModel):
    target: Target
    model: ModelRef
    deployment: DeploymentSettings = DeploymentSettings()
    smoke_test: SmokeTest = SmokeTest()
    steps: Annotated[list[Step], Field(min_length=1)]
    gates: list[Gate]
    analysis: Analysis = Analysis()
    on_failure: Literal["rollback", "hold"] = "rollback"
    on_inconclusive: Literal["hold", "rollback"] = "hold"
    progress_deadline: Duration | None = None
    cleanup: Cleanup = Cleanup()

    @property
    def analysis_source(self) -> str:
        """The gate source in force: the manifest's, else the provider's default."""
        if self.analysis.source:
            return self.analysis.source
        return "local" if self.target.provider == "local" else "azure-metrics"


class ModelRollout(StrictModel):
    """A loaded, valid manifest. `source_file` is where it came from (not part of the contract)."""

    apiVersion: Literal["saferollout/v1"]  # noqa: N815 - the manifest's own spelling
    kind: Literal["ModelRollout"]
    metadata: Metadata
    spec: Spec

    def meaning(self) -> dict[str, Any]:
        """The manifest's meaning as plain data: reformatting the YAML never changes it."""
        return self.model_dump(mode="json")

    def digest(self) -> str:
        """A short digest of the meaning, recorded on the endpoint to spot manifest changes."""
        canonical = json.dumps(self.meaning(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def traffic_steps(spec: Spec) -> list[TrafficStep]:
    return [s for s in spec.steps if isinstance(s, TrafficStep)]
