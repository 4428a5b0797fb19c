"""Rollout state as endpoint tags: the engine's only memory between runs.

Everything the engine must remember is encoded under the `saferollout.` prefix, compactly (a tag
value holds at most 256 characters on Azure, an endpoint at most 50 tags), and decoded back into
`RolloutState`. Decoding is forgiving: a damaged or foreign tag reads as "unknown" and the
planner reports it, rather than crashing the pass.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum

from engine.providers.base import STATE_TAG_PREFIX

MAX_TAG_VALUE = 256
MAX_ROLLED_BACK = 8
TIME_FORMAT = "%Y%m%dT%H%M%SZ"


class Phase(StrEnum):
    PROGRESSING = "Progressing"
    PAUSED = "Paused"
    SUCCEEDED = "Succeeded"
    ROLLED_BACK = "RolledBack"
    FAILED = "Failed"


@dataclass(frozen=True)
class StepRecord:
    """How one step of the current rollout went: shown by `status` and `history`."""

    index: int
    started: datetime
    verdict: str = "running"  # running | passed | failed | skipped | inconclusive | restarted
    requests: int | None = None
    error_rate: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    ended: datetime | None = None  # when the step closed; None while it runs


@dataclass(frozen=True)
class Lease:
    holder: str
    until: datetime


@dataclass(frozen=True)
class RolloutState:
    stable: str | None = None
    candidate: str | None = None
    previous: str | None = None
    phase: Phase | None = None
    step: int | None = None  # index into spec.steps; None before the first step
    step_started: datetime | None = None
    rollout_started: datetime | None = None
    promoted_at: datetime | None = None
    digest: str | None = None
    traffic: dict[str, int] = field(default_factory=dict)  # what the engine last wrote
    mirror: dict[str, int] = field(default_factory=dict)
    source_errors: dict[str, tuple[int, int]] = field(default_factory=dict)  # gate: (row, total)
    decision: str = ""
    override: str = ""
    rollback_reason: str = ""  # why the candidate was last rolled back, kept past later writes
    steps: tuple[StepRecord, ...] = ()
    rolled_back: tuple[str, ...] = ()
    retired: tuple[str, ...] = ()  # deployments to delete once they carry no traffic
    lease: Lease | None = None

    @property
    def is_empty(self) -> bool:
        return self == RolloutState(lease=self.lease)

    def with_step_record(self, record: StepRecord) -> RolloutState:
        kept = tuple(r for r in self.steps if r.index != record.index)
        return replace(self, steps=tuple(sorted((*kept, record), key=lambda r: r.index)))

    def step_record(self, index: int) -> StepRecord | None:
        return next((r for r in self.steps if r.index == index), None)


def format_time(value: datetime) -> str:
    return value.astimezone(UTC).strftime(TIME_FORMAT)


def iso_time(value: datetime) -> str:
    """ISO 8601 in UTC, for JSON and for people: `2026-12-04T15:59:33Z`."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> datetime | None:
    try:
        return datetime.strptime(text, TIME_FORMAT).replace(tzinfo=UTC)
    except (TypeError, ValueError):
        return None


def _format_map(values: dict[str, int]) -> str:
    return ",".join(f"{name}={pct}" for name, pct in sorted(values.items()) if pct)


def _parse_map(text: str) -> dict[str, int]:
    result: dict[str, int] = {}
    for item in filter(None, text.split(",")):
        name, _, pct = item.partition("=")
        if pct.isdigit():
            result[name] = int(pct)
    return result


def _format_number(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"


def _parse_number(text: str) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None


def _format_step(record: StepRecord) -> str:
    figures = [
        record.verdict,
        format_time(record.started),
        "" if record.requests is None else str(record.requests),
        _format_number(record.error_rate),
        _format_number(record.p90_ms),
        _format_number(record.p99_ms),
        format_time(record.ended) if record.ended else "",
    ]
    return "|".join(figures).rstrip("|")


def _parse_step(index: int, text: str) -> StepRecord | None:
    parts = text.split("|") + [""] * 7
    started = parse_time(parts[1])
    if started is None:
        return None
    requests = int(parts[2]) if parts[2].isdigit() else None
    return StepRecord(
        index=index,
        started=started,
        verdict=parts[0] or "running",
        requests=requests,
        error_rate=_parse_number(parts[3]),
        p90_ms=_parse_number(parts[4]),
        p99_ms=_parse_number(parts[5]),
        ended=parse_time(parts[6]),
    )


def _fit(text: str) -> str:
    return text if len(text) <= MAX_TAG_VALUE else text[: MAX_TAG_VALUE - 1] + "…"


def encode(state: RolloutState) -> dict[str, str]:
    """State -> tags (only non-empty values; every value within Azure's 256 characters)."""
    p = STATE_TAG_PREFIX
    tags: dict[str, str] = {}

    def put(key: str, value: str | None) -> None:
        if value:
            tags[p + key] = _fit(value)

    put("stable", state.stable)
    put("candidate", state.candidate)
    put("previous", state.previous)
    put("phase", state.phase.value if state.phase else None)
    put("step", None if state.step is None else str(state.step))
    put("step-started", state.step_started and format_time(state.step_started))
    put("started", state.rollout_started and format_time(state.rollout_started))
    put("promoted", state.promoted_at and format_time(state.promoted_at))
    put("digest", state.digest)
    put("traffic", _format_map(state.traffic))
    put("mirror", _format_map(state.mirror))
    put(
        "source-errors",
        ",".join(f"{g}={r}/{t}" for g, (r, t) in sorted(state.source_errors.items()) if t),
    )
    put("decision", state.decision)
    put("override", state.override)
    put("rollback-reason", state.rollback_reason)
    for record in state.steps:
        put(f"step.{record.index}", _format_step(record))
    put("rolled-back", ",".join(state.rolled_back[-MAX_ROLLED_BACK:]))
    put("retired", ",".join(state.retired))
    if state.lease:
        put("lease", f"{state.lease.holder}@{format_time(state.lease.until)}")
    return tags


def decode(tags: dict[str, str]) -> RolloutState:
    """Tags -> state; tags outside the prefix are ignored, damaged values read as absent."""
    p = STATE_TAG_PREFIX
    own = {k[len(p) :]: v for k, v in tags.items() if k.startswith(p)}

    def text(key: str) -> str | None:
        return own.get(key) or None

    phase_text = text("phase")
    phase = Phase(phase_text) if phase_text in Phase._value2member_map_ else None
    step_text = text("step")
    source_errors: dict[str, tuple[int, int]] = {}
    for item in filter(None, (text("source-errors") or "").split(",")):
        gate, _, counts = item.partition("=")
        row, _, total = counts.partition("/")
        if row.isdigit() and total.isdigit():
            source_errors[gate] = (int(row), int(total))
    records = []
    for key, value in own.items():
        if key.startswith("step.") and key[5:].isdigit():
            record = _parse_step(int(key[5:]), value)
            if record:
                records.append(record)
    lease = None
    if text("lease"):
        holder, _, until = (text("lease") or "").rpartition("@")
        until_time = parse_time(until)
        if holder and until_time:
            lease = Lease(holder, until_time)
    return RolloutState(
        stable=text("stable"),
        candidate=text("candidate"),
        previous=text("previous"),
        phase=phase,
        step=int(step_text) if step_text and step_text.isdigit() else None,
        step_started=parse_time(text("step-started") or ""),
        rollout_started=parse_time(text("started") or ""),
        promoted_at=parse_time(text("promoted") or ""),
        digest=text("digest"),
        traffic=_parse_map(text("traffic") or ""),
        mirror=_parse_map(text("mirror") or ""),
        source_errors=source_errors,
        decision=text("decision") or "",
        override=text("override") or "",
        rollback_reason=text("rollback-reason") or "",
        steps=tuple(sorted(records, key=lambda r: r.index)),
        rolled_back=tuple(filter(None, (text("rolled-back") or "").split(","))),
        retired=tuple(filter(None, (text("retired") or "").split(","))),
        lease=lease,
    )


_NAME = re.compile(r"^[a-zA-Z][-a-zA-Z0-9]{0,31}$")


def damaged_tags(tags: dict[str, str]) -> list[str]:
    """The engine's tags whose values it cannot read, as `key='value'` (empty when all read).

    `decode` would read such a value as absent and the engine would then act on a wrong
    picture (restart a rollout, forget a lease), so planning stops on any of them."""
    p = STATE_TAG_PREFIX
    checks = {
        "phase": lambda v: v in Phase._value2member_map_,
        "step": str.isdigit,
        "step-started": lambda v: parse_time(v) is not None,
        "started": lambda v: parse_time(v) is not None,
        "promoted": lambda v: parse_time(v) is not None,
        "stable": _NAME.match,
        "candidate": _NAME.match,
        "previous": _NAME.match,
        "traffic": _is_map,
        "mirror": _is_map,
        "lease": lambda v: "@" in v and parse_time(v.rpartition("@")[2]) is not None,
    }
    found = []
    for key, value in sorted(tags.items()):
        if not key.startswith(p):
            continue
        name = key[len(p) :]
        check = checks.get(name)
        if check is None and name.startswith("step.") and name[5:].isdigit():
            check = lambda v, i=int(name[5:]): _parse_step(i, v) is not None  # noqa: E731
        if check is not None and value and not check(value):
            found.append(f"{key}={value!r}")
    return found


def _is_map(text: str) -> bool:
    for item in text.split(","):
        name, sep, pct = item.partition("=")
        if not (sep and _NAME.match(name) and pct.isdigit() and int(pct) <= 100):
            return False
    return True


def has_state(tags: dict[str, str]) -> bool:
    """Whether the tags record a rollout; a lease alone records nothing (a run holds it)."""
    lease = f"{STATE_TAG_PREFIX}lease"
    return any(key.startswith(STATE_TAG_PREFIX) and key != lease for key in tags)
