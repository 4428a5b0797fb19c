"""The `saferollout/v1` ModelRollout manifest as pydantic models: the user contract.

The loader (`engine.loader`) turns YAML into these models and reports every problem located in
the file; `engine.schema` generates `schemas/rollout.schema.json` from them. Field names here
are the manifest's own, so error paths read exactly as the user wrote them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
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
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from engine.durations import DURATION_PATTERN, parse_duration, to_manifest_form
from engine.names import derive_deployment_name, is_valid_name

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


def duration_default(value: timedelta) -> Any:
    """A duration field's default, shown in the schema as the manifest writes it (`10m`)."""
    return Field(default=value, json_schema_extra={"default": to_manifest_form(value)})


def _no_schema_default(schema: dict[str, Any]) -> None:
    # An absent bound is not a null bound: editors should not offer `max: null`.
    schema.pop("default", None)


ResourceName = Annotated[str, Field(min_length=3, max_length=32, pattern=NAME_PATTERN)]

# Rules over several fields are reported as errors of this type, located at the field that breaks
# them; ctx carries `message` and `hint` separately so the loader can render them its own way.
RULE_ERROR = "manifest_rule"


@dataclass(frozen=True)
class Violation:
    """A broken rule over several fields, located relative to the model or list that checks it."""

    loc: tuple[str | int, ...]
    message: str
    hint: str = ""


def _raise_violations(title: str, violations: list[Violation]) -> None:
    if not violations:
        return
    details = []
    for v in violations:
        template = "{message}; {hint}" if v.hint else "{message}"
        error = PydanticCustomError(RULE_ERROR, template, {"message": v.message, "hint": v.hint})
        details.append(InitErrorDetails(type=error, loc=v.loc, input=None))
    raise ValidationError.from_exception_data(title, details)


class StrictModel(BaseModel):
    """Unknown keys are errors and values are never coerced between types."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Metadata(StrictModel):
    # Printed in plans, comments and logs: plain words only, no control characters.
    name: Annotated[
        str, Field(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    ]


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


# Spelled out in ASCII: `\w` means three different things in pydantic (Rust), jsonschema (Python)
# and editors (JavaScript), and the engine and the schema must agree.
ASSET_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
VERSION_PATTERN = ASSET_NAME_PATTERN
# The schema spells "not latest" as a look-ahead, which editors and jsonschema understand.
_SCHEMA_VERSION_PATTERN = r"^(?![Ll][Aa][Tt][Ee][Ss][Tt]$)[A-Za-z0-9][A-Za-z0-9_.-]*$"


class ModelRef(StrictModel):
    name: Annotated[str, Field(min_length=1, max_length=255, pattern=ASSET_NAME_PATTERN)]
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
    bake: Duration = duration_default(timedelta(0))


class TrafficStep(StrictModel):
    traffic: Annotated[int, Field(ge=1, le=100)]
    bake: Duration = duration_default(timedelta(0))


class ApprovalStep(StrictModel):
    approval: Literal["manual"]


def _step_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        for kind in ("mirror", "traffic", "approval"):
            if kind in value:
                return kind
        return None
    return {MirrorStep: "mirror", TrafficStep: "traffic", ApprovalStep: "approval"}.get(type(value))


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


def assess_steps(steps: Sequence[MirrorStep | TrafficStep | ApprovalStep]) -> list[Violation]:
    """Order rules: mirror once and first, traffic never decreasing and ending at 100."""
    found: list[Violation] = []
    first_mirror: int | None = None
    first_traffic: int | None = None
    highest: tuple[int, int] | None = None  # (index, weight) of the highest traffic so far
    last_traffic: tuple[int, int] | None = None
    for i, step in enumerate(steps):
        if isinstance(step, MirrorStep):
            if first_mirror is not None:
                found.append(
                    Violation(
                        (i, "mirror"),
                        f"at most one mirror step: steps[{first_mirror}] already mirrors",
                        "mirror once, before the first traffic step",
                    )
                )
            elif first_traffic is not None:
                found.append(
                    Violation(
                        (i, "mirror"),
                        "a mirror step comes before any traffic step",
                        f"move it above steps[{first_traffic}]",
                    )
                )
            first_mirror = i if first_mirror is None else first_mirror
        elif isinstance(step, TrafficStep):
            if highest is not None and step.traffic < highest[1]:
                found.append(
                    Violation(
                        (i, "traffic"),
                        "traffic never decreases from one step to the next: "
                        f"steps[{highest[0]}] already has {highest[1]}",
                        "a rollout only moves forward: to give traffic back, roll back",
                    )
                )
            if highest is None or step.traffic > highest[1]:
                highest = (i, step.traffic)
            first_traffic = i if first_traffic is None else first_traffic
            last_traffic = (i, step.traffic)
    if last_traffic is None:
        found.append(
            Violation((), "at least one traffic step, the last at 100", "add - traffic: 100")
        )
    elif last_traffic[1] != 100:
        found.append(
            Violation(
                (last_traffic[0], "traffic"),
                "the last traffic step is 100",
                f"add - traffic: 100 after steps[{last_traffic[0]}]",
            )
        )
    return found


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


Number = Annotated[
    float,
    BeforeValidator(lambda v: float(v) if type(v) is int else v),
    Field(allow_inf_nan=False),
]
BOUNDS = ("max", "min", "max_ratio_to_stable")


def _bound_range_schema() -> list[dict[str, Any]]:
    """`if metric is a rate then max/min <= 1`, and so on, from `Metric.value_range`."""
    by_upper: dict[float, list[str]] = {}
    for metric in Metric:
        upper = metric.value_range[1]
        if upper is not None:
            by_upper.setdefault(upper, []).append(metric.value)
    return [
        {
            "if": {"properties": {"metric": {"enum": metrics}}, "required": ["metric"]},
            "then": {"properties": {"max": {"maximum": upper}, "min": {"maximum": upper}}},
        }
        for upper, metrics in sorted(by_upper.items())
    ]


def _describe_range(metric: Metric) -> str:
    low, high = metric.value_range
    if high == 1.0:
        return f"{metric.value} is a rate from 0 to 1"
    if high is not None:
        return f"{metric.value} is a percent from 0 to {high:g}"
    return f"{metric.value} is at least {low:g}"


def _range_hint(metric: Metric, value: float) -> str:
    high = metric.value_range[1]
    if high == 1.0 and 1.0 < value <= 100.0:
        return f"write {value / 100:g} for {value:g} %"
    if value < 0:
        return "a bound below 0 can never be crossed"
    return f"a bound above {high:g} can never be crossed"


def assess_gate_bounds(gate: ThresholdGate) -> list[Violation]:
    """Exactly one bound, set to a value the metric can take.

    A bound of None counts as absent, so a dumped rollout validates again; the loader reports
    an explicit `max:` with no value in the manifest itself.
    """
    given = [key for key in BOUNDS if getattr(gate, key) is not None]
    exactly_one = "a threshold gate has exactly one of max, min or max_ratio_to_stable"
    if not given:
        return [Violation((), exactly_one, "add one of them")]
    found = []
    if len(given) > 1:
        found.append(
            Violation(
                (), f"{exactly_one}; this one has {' and '.join(given)}", "one bound per gate"
            )
        )
    for key in given:
        value = getattr(gate, key)
        if key == "max_ratio_to_stable" and value <= 0:
            found.append(
                Violation(
                    (key,),
                    "max_ratio_to_stable is a ratio above 0",
                    "1.25 lets the candidate be up to 25 % above stable",
                )
            )
        elif key != "max_ratio_to_stable":
            low, high = gate.metric.value_range
            if value < low or (high is not None and value > high):
                found.append(
                    Violation((key,), _describe_range(gate.metric), _range_hint(gate.metric, value))
                )
    return found


def assess_gate_names(gates: Sequence[AnyGate]) -> list[Violation]:
    first_seen: dict[str, int] = {}
    found = []
    for i, gate in enumerate(gates):
        if gate.name in first_seen:
            found.append(
                Violation(
                    (i, "name"),
                    f"gate names are unique; gates[{first_seen[gate.name]}] is also {gate.name}",
                    "rename one of them",
                )
            )
        first_seen.setdefault(gate.name, i)
    return found


_BOUND_SCHEMA = {"type": "number", "minimum": 0}


class ThresholdGate(StrictModel):
    model_config = ConfigDict(
        json_schema_extra={
            "oneOf": [{"required": [key]} for key in BOUNDS],
            "allOf": _bound_range_schema(),
        }
    )

    name: Annotated[str, Field(min_length=1, max_length=63, pattern=ASSET_NAME_PATTERN)]
    # Not strict: a manifest spells the metric as its string value, never as the enum member.
    metric: Annotated[Metric, Field(strict=False)]
    # Null is not a bound: the schema says number, and an explicit null is reported as empty.
    max: Annotated[Number | None, WithJsonSchema(_BOUND_SCHEMA)] = Field(
        default=None, json_schema_extra=_no_schema_default
    )
    min: Annotated[Number | None, WithJsonSchema(_BOUND_SCHEMA)] = Field(
        default=None, json_schema_extra=_no_schema_default
    )
    max_ratio_to_stable: Annotated[
        Number | None, WithJsonSchema({"type": "number", "exclusiveMinimum": 0})
    ] = Field(default=None, json_schema_extra=_no_schema_default)
    min_requests: Annotated[int, Field(ge=0)] = 100
    dry_run: bool = False

    @property
    def bound(self) -> tuple[str, float]:
        """The one bound this gate has, e.g. ("max", 0.01) or ("max_ratio_to_stable", 1.25)."""
        for key in ("max", "min", "max_ratio_to_stable"):
            value = getattr(self, key)
            if value is not None:
                return key, value
        raise ValueError(f"gate {self.name} has no bound")  # validation guarantees one

    @model_validator(mode="after")
    def _one_bound_in_range(self) -> ThresholdGate:
        _raise_violations("ThresholdGate", assess_gate_bounds(self))
        return self


# -- sequential gates: candidate against stable, valid at every look ----------------------------

SEQUENTIAL_ERROR_METRICS = (Metric.ERROR_RATE, Metric.NON_2XX_RATE)
SEQUENTIAL_METRICS = (
    *SEQUENTIAL_ERROR_METRICS,
    *(m for m in Metric if m.percentile is not None),
)
DEFAULT_MIN_EFFECT = "2x"
_MIN_EFFECT_PATTERN = r"^([0-9]+(\.[0-9]+)?x|\+(0?\.[0-9]+))$"


@dataclass(frozen=True)
class MinEffect:
    """The smallest regression worth catching: a ratio (`2x`) or an increase (`+0.01`)."""

    ratio: float | None = None
    increase: float | None = None

    def __post_init__(self) -> None:
        if (self.ratio is None) == (self.increase is None):
            raise ValueError("a min_effect is either a ratio or an increase")
        if self.ratio is not None and not 1 < self.ratio <= 1000:
            raise ValueError("a ratio min_effect lies above 1 and at most 1000")
        if self.increase is not None and not 0 < self.increase < 1:
            raise ValueError("an increase min_effect lies between 0 and 1")

    @classmethod
    def parse(cls, text: str) -> MinEffect:
        """`"2x"` -> ratio 2, `"+0.01"` -> increase 0.01; ValueError for anything else."""
        text = text.strip()
        try:
            if text.endswith("x"):
                return cls(ratio=float(text[:-1]))
            if text.startswith("+"):
                return cls(increase=float(text[1:]))
        except ValueError:
            pass
        raise ValueError(f"not a min_effect: {text!r}")

    def __str__(self) -> str:
        return f"{self.ratio:g}x" if self.ratio is not None else f"+{self.increase:g}"


def _min_effect(value: Any) -> str:
    """A manifest's min_effect in its written form; YAML reads `+0.01` as the number 0.01."""
    what = "min_effect is a ratio such as 2x or an increase in error rate such as +0.01"
    if isinstance(value, float | int) and not isinstance(value, bool):
        if 0 < value < 1:
            return str(MinEffect(increase=float(value)))
        hint = f"write {value:g}x for {value:g} times stable's error rate" if value > 1 else ""
        raise PydanticCustomError(
            RULE_ERROR,
            "{message}; {hint}" if hint else "{message}",
            {"message": what, "hint": hint},
        )
    if isinstance(value, str):
        try:
            return str(MinEffect.parse(value))
        except ValueError:
            pass
    hint = "e.g. 2x to catch a doubling, +0.01 to catch one more failure in a hundred"
    raise PydanticCustomError(RULE_ERROR, "{message}; {hint}", {"message": what, "hint": hint})


MinEffectText = Annotated[
    str,
    BeforeValidator(_min_effect),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": _MIN_EFFECT_PATTERN, "examples": ["2x", "+0.01"]},
                {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
            ]
        }
    ),
]


def assess_sequential_gate(gate: SequentialGate) -> list[Violation]:
    """Which comparison the metric takes: min_effect for errors, max_ratio_to_stable for
    latency; other metrics have no sequential test."""
    metric = gate.metric
    if metric not in SEQUENTIAL_METRICS:
        return [
            Violation(
                ("metric",),
                "a sequential gate compares error_rate, non_2xx_rate or a latency percentile "
                "with stable",
                f"use a threshold gate (max, min or max_ratio_to_stable) for {metric.value}",
            )
        ]
    found = []
    if metric in SEQUENTIAL_ERROR_METRICS and gate.max_ratio_to_stable is not None:
        found.append(
            Violation(
                ("max_ratio_to_stable",),
                f"a sequential {metric.value} gate compares with stable by itself; min_effect "
                "says which regression to catch",
                "remove max_ratio_to_stable; e.g. min_effect: 2x",
            )
        )
    if metric not in SEQUENTIAL_ERROR_METRICS:
        if gate.min_effect is not None:
            found.append(
                Violation(
                    ("min_effect",),
                    "min_effect is for error_rate and non_2xx_rate; a latency comparison takes "
                    "max_ratio_to_stable",
                    "write max_ratio_to_stable: 1.25 instead",
                )
            )
        if gate.max_ratio_to_stable is None:
            found.append(
                Violation(
                    (),
                    f"a sequential {metric.value} gate needs max_ratio_to_stable",
                    "add max_ratio_to_stable: 1.25 to fail a candidate 25 % slower than stable",
                )
            )
        elif gate.max_ratio_to_stable < 1:
            found.append(
                Violation(
                    ("max_ratio_to_stable",),
                    "max_ratio_to_stable of a sequential gate is 1 or more",
                    "1.25 lets the candidate's percentile be up to 25 % above stable's",
                )
            )
    return found


def _sequential_schema() -> dict[str, Any]:
    latency = [m.value for m in SEQUENTIAL_METRICS if m not in SEQUENTIAL_ERROR_METRICS]
    return {
        "if": {"properties": {"metric": {"enum": latency}}, "required": ["metric"]},
        "then": {
            "required": ["max_ratio_to_stable"],
            "properties": {"max_ratio_to_stable": {"minimum": 1}},
            "not": {"required": ["min_effect"]},
        },
        "else": {"not": {"required": ["max_ratio_to_stable"]}},
    }


class SequentialGate(StrictModel):
    """Candidate against stable with a test that may be judged at every pass.

    Errors: fails as soon as the rollout's failures show the candidate failing more often than
    stable (false rollbacks at most `false_rollback_rate` over the rollout), tuned to catch
    `min_effect` quickly. Latency: fails when the percentile's ratio to stable is shown to
    exceed `max_ratio_to_stable`, within each step. See docs/gates.md.
    """

    model_config = ConfigDict(json_schema_extra={"allOf": [_sequential_schema()]})

    name: Annotated[str, Field(min_length=1, max_length=63, pattern=ASSET_NAME_PATTERN)]
    metric: Annotated[
        Metric,
        Field(strict=False),
        WithJsonSchema({"type": "string", "enum": [m.value for m in SEQUENTIAL_METRICS]}),
    ]
    test: Literal["sequential"]
    false_rollback_rate: Annotated[Number, Field(gt=0, le=0.2)] = 0.01
    min_effect: MinEffectText | None = Field(default=None, json_schema_extra=_no_schema_default)
    max_ratio_to_stable: Annotated[
        Number | None, WithJsonSchema({"type": "number", "exclusiveMinimum": 0})
    ] = Field(default=None, json_schema_extra=_no_schema_default)
    min_requests: Annotated[int, Field(ge=0)] = 100
    dry_run: bool = False

    @property
    def compares_errors(self) -> bool:
        return self.metric in SEQUENTIAL_ERROR_METRICS

    @property
    def effect(self) -> MinEffect:
        """min_effect as numbers; 2x when the manifest leaves it out."""
        return MinEffect.parse(self.min_effect or DEFAULT_MIN_EFFECT)

    @property
    def bound(self) -> tuple[str, float]:
        """The hypothesis the gate rolls back on: the ratio to stable it must not exceed
        (1 for errors: any regression, once the evidence is conclusive)."""
        return "max_ratio_to_stable", self.max_ratio_to_stable or 1.0

    @model_validator(mode="after")
    def _comparison_fits_metric(self) -> SequentialGate:
        _raise_violations("SequentialGate", assess_sequential_gate(self))
        return self


def _gate_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        return "sequential" if "test" in value else "threshold"
    return {SequentialGate: "sequential", ThresholdGate: "threshold"}.get(type(value))


# A gate with `test:` is sequential; one without is a threshold gate. Sequential comes first so
# the loader, which picks a model by the keys present, tries it before the threshold gate.
Gate = Annotated[
    Annotated[SequentialGate, Tag("sequential")] | Annotated[ThresholdGate, Tag("threshold")],
    Discriminator(
        _gate_kind,
        custom_error_type="gate_kind",
        custom_error_message="a gate is a mapping with name, metric and one bound",
    ),
]
AnyGate = SequentialGate | ThresholdGate


class Analysis(StrictModel):
    source: Literal["local", "azure-metrics", "azure-logs"] | None = None
    workspace_id: str | None = None
    warmup: Duration = duration_default(timedelta(0))
    no_data: Literal["inconclusive", "fail"] = "inconclusive"
    max_source_errors: Annotated[int, Field(ge=0)] = 4


class Cleanup(StrictModel):
    delete_previous_after: Duration = duration_default(timedelta(hours=1))


class Spec(StrictModel):
    target: Target
    model: ModelRef
    deployment: DeploymentSettings = DeploymentSettings()
    smoke_test: SmokeTest = SmokeTest()
    steps: Annotated[
        list[Step],
        Field(
            min_length=1,
            json_schema_extra={
                "allOf": [
                    {"contains": {"type": "object", "required": ["traffic"]}},
                    {
                        "contains": {"type": "object", "required": ["mirror"]},
                        "minContains": 0,
                        "maxContains": 1,
                    },
                ]
            },
        ),
    ]
    gates: list[Gate]
    analysis: Analysis = Analysis()
    on_failure: Literal["rollback", "hold"] = "rollback"
    on_inconclusive: Literal["hold", "rollback"] = "hold"
    # A step ends before its bake once every acting gate has concluded passed (sequential only).
    promote_early: bool = False
    progress_deadline: Duration | None = None
    cleanup: Cleanup = Cleanup()

    @property
    def analysis_source(self) -> str:
        """The gate source in force: the manifest's, else the provider's default."""
        if self.analysis.source:
            return self.analysis.source
        return "local" if self.target.provider == "local" else "azure-metrics"

    @field_validator("steps")
    @classmethod
    def _steps_in_order(cls, steps: list[Any]) -> list[Any]:
        _raise_violations("steps", assess_steps(steps))
        return steps

    @field_validator("gates")
    @classmethod
    def _gate_names_unique(cls, gates: list[AnyGate]) -> list[AnyGate]:
        _raise_violations("gates", assess_gate_names(gates))
        return gates

    @model_validator(mode="after")
    def _source_fits_provider(self) -> Spec:
        source, provider = self.analysis.source, self.target.provider
        if source and (source == "local") != (provider == "local"):
            fits = "local" if provider == "local" else "azure-metrics or azure-logs"
            violation = Violation(
                ("analysis", "source"),
                f"the {source} gate source cannot measure a {provider} endpoint",
                f"write {fits}, or leave analysis.source out for the provider's default",
            )
            _raise_violations("Spec", [violation])
        return self

    @model_validator(mode="after")
    def _deployment_name_valid(self) -> Spec:
        settings = self.deployment.model_dump(mode="json")
        name = derive_deployment_name(self.model.name, self.model.version, settings)
        if not is_valid_name(name):
            violation = Violation(
                ("model", "name"),
                f"the derived deployment name {name} breaks the name rules "
                "(3-32 characters: letters, digits and -, starting with a letter)",
                "report this: derived names are meant to be always valid",
            )
            _raise_violations("Spec", [violation])
        return self


class ModelRollout(StrictModel):
    """A valid manifest; `engine.loader.LoadedManifest` adds the file and the files it names."""

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
