"""Plans, status and history as text (for people) and JSON (a stable contract for machines).

Rendering is separate from deciding: these functions take plain values and return strings, so
tests compare whole outputs. Future tense for what a plan will change; present perfect for
drift that has been found.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from engine.decide import Desired, manifest_warnings, step_label
from engine.durations import format_duration
from engine.gates import GateResult
from engine.live import LiveEndpoint
from engine.plan import Action, ActionKind, Outcome, Plan
from engine.state import RolloutState, decode, iso_time

JSON_VERSION = 1
SYMBOLS = {
    ActionKind.CREATE_ENDPOINT: "+",
    ActionKind.CREATE_DEPLOYMENT: "+",
    ActionKind.SMOKE_TEST: "?",
    ActionKind.UPDATE_ENDPOINT: "~",
    ActionKind.DELETE_DEPLOYMENT: "-",
}
TITLES = {
    ActionKind.CREATE_ENDPOINT: "create endpoint",
    ActionKind.CREATE_DEPLOYMENT: "create deployment",
    ActionKind.SMOKE_TEST: "smoke-test deployment",
    ActionKind.UPDATE_ENDPOINT: "update endpoint",
    ActionKind.DELETE_DEPLOYMENT: "delete deployment",
}


def shares(values: dict[str, int]) -> str:
    if not values:
        return "{}"
    return "{" + ", ".join(f"{k}: {v}" for k, v in sorted(values.items())) + "}"


def state_changes(
    before: RolloutState, after: RolloutState, desired: Desired
) -> list[tuple[str, str | None, str | None]]:
    """(label, before, after) for each rollout field a write changes; every renderer shows these."""
    fields = (
        ("phase", before.phase and before.phase.value, after.phase and after.phase.value),
        ("stable", before.stable, after.stable),
        ("candidate", before.candidate, after.candidate),
        ("previous", before.previous, after.previous),
        ("step", step_text(before, desired), step_text(after, desired)),
    )
    return [(label, old, new) for label, old, new in fields if old != new]


def step_text(state: RolloutState, desired: Desired) -> str | None:
    steps = desired.rollout.spec.steps
    if state.step is None or not steps:
        return None
    index = min(state.step, len(steps) - 1)
    return f"{index + 1}/{len(steps)} ({step_label(steps[index])})"


def render_action(action: Action, desired: Desired) -> list[str]:
    lines = [f"  {SYMBOLS[action.kind]} {TITLES[action.kind]} {action.subject}"]
    detail: list[str] = []
    if action.traffic and action.traffic[0] != action.traffic[1]:
        detail.append(f"traffic   {shares(action.traffic[0])} -> {shares(action.traffic[1])}")
    if action.mirror and action.mirror[0] != action.mirror[1]:
        detail.append(f"mirror    {shares(action.mirror[0])} -> {shares(action.mirror[1])}")
    if action.state:
        detail.extend(
            f"{label:<9} {old or '-'} -> {new or '-'}"
            for label, old, new in state_changes(action.state[0], action.state[1], desired)
        )
    if action.deployment:
        request = action.deployment
        detail.append(f"model     {request.model_name} version {request.model_version}")
    detail.append(f"because   {action.reason}")
    lines.extend(f"      {line}" for line in detail)
    return lines


def render_gates(gates: tuple[GateResult, ...] | list[GateResult]) -> list[str]:
    lines = []
    for result in gates:
        marker = " (dry run)" if result.dry_run else ""
        lines.append(f"  {result.verdict.value:<13}{result.reason}{marker}")
    return lines


def progress_line(plan: Plan, now: datetime) -> str:
    """`10:42:31 step 2/4 (traffic 10%): baking, 12s left | errs passed 0.002 (85 req)`."""
    gates = []
    for result in plan.gates:
        ratio = result.bound is not None and result.bound[0] == "max_ratio_to_stable"
        value = "" if result.value is None else f" {result.value:.4g}{'x stable' if ratio else ''}"
        dry = ", dry run" if result.dry_run else ""
        gates.append(f"{result.gate} {result.verdict.value}{value} ({result.requests} req{dry})")
    figures = f" | {'; '.join(gates)}" if gates else ""
    return f"{now:%H:%M:%S} {plan.summary}{figures}"


def render_plan(plans: list[Plan], desired: Desired, *, source: str = "") -> str:
    spec = desired.rollout.spec
    header = (
        f"Rollout {desired.rollout.metadata.name}: endpoint {desired.endpoint} "
        f"({spec.target.provider}), {spec.model.name} version {spec.model.version} "
        f"as deployment {desired.name}"
    )
    lines = [header, ""]
    for warning in manifest_warnings(desired.rollout):
        lines.append(f"  warning: {warning}")
    actions = [a for p in plans for a in p.actions]
    for plan in plans:
        for note in plan.notes:
            lines.append(f"  ! {note}")
    if actions:
        lines.append("saferollout will perform these actions:")
        lines.append("")
        for action in actions:
            lines.extend(render_action(action, desired))
            lines.append("")
    measured = next((p.gates for p in plans if p.gates), ())
    if measured:
        lines.append("Gates over the current step's window:")
        lines.extend(render_gates(measured))
        lines.append("")
    final = plans[-1]
    counts = {kind: sum(1 for a in actions if a.kind is kind) for kind in ActionKind}
    if actions:
        lines.append(
            f"Plan: {counts[ActionKind.CREATE_ENDPOINT] + counts[ActionKind.CREATE_DEPLOYMENT]} "
            f"to create, {counts[ActionKind.SMOKE_TEST]} to test, "
            f"{counts[ActionKind.UPDATE_ENDPOINT]} to update, "
            f"{counts[ActionKind.DELETE_DEPLOYMENT]} to delete. Afterwards: {final.summary}"
        )
    else:
        lines.append(f"No changes. {final.summary}")
    return "\n".join(lines).rstrip() + "\n"


def action_json(action: Action) -> dict[str, Any]:
    data: dict[str, Any] = {"kind": action.kind.value, "subject": action.subject}
    if action.traffic:
        data["traffic"] = {"before": action.traffic[0], "after": action.traffic[1]}
    if action.mirror:
        data["mirror"] = {"before": action.mirror[0], "after": action.mirror[1]}
    if action.state:
        before, after = action.state
        data["phase"] = {
            "before": before.phase and before.phase.value,
            "after": after.phase and after.phase.value,
        }
        data["step"] = {"before": before.step, "after": after.step}
    if action.deployment:
        data["model"] = {
            "name": action.deployment.model_name,
            "version": action.deployment.model_version,
        }
    data["reason"] = action.reason
    return data


def gate_json(result: GateResult) -> dict[str, Any]:
    return {
        "gate": result.gate,
        "index": result.index,
        "metric": result.metric.value,
        "verdict": result.verdict.value,
        "value": result.value,
        "bound": {"kind": result.bound[0], "value": result.bound[1]} if result.bound else None,
        "requests": result.requests,
        "dry_run": result.dry_run,
        "source_errors": {"in_a_row": result.source_errors[0], "step": result.source_errors[1]},
        "reason": result.reason,
    }


def plan_json(plans: list[Plan], desired: Desired) -> str:
    final = plans[-1]
    spec = desired.rollout.spec
    document = {
        "version": JSON_VERSION,
        "rollout": desired.rollout.metadata.name,
        "endpoint": desired.endpoint,
        "provider": spec.target.provider,
        "model": {"name": spec.model.name, "version": spec.model.version},
        "deployment": desired.name,
        "changes": any(p.actions for p in plans),
        "outcome": final.outcome.value,
        "phase": final.phase.value if final.phase else None,
        "summary": final.summary,
        "actions": [action_json(a) for p in plans for a in p.actions],
        "gates": [gate_json(g) for g in next((p.gates for p in plans if p.gates), ())],
        "notes": [n for p in plans for n in p.notes],
        "warnings": manifest_warnings(desired.rollout),
    }
    return json.dumps(document, indent=2) + "\n"


# ---------------------------------------------------------------------------------------------
# Status and history


def status_data(desired: Desired, live: LiveEndpoint, plan: Plan, now: datetime) -> dict[str, Any]:
    state = decode(live.tags)
    steps = desired.rollout.spec.steps
    current = None
    if state.step is not None and state.candidate and steps:
        index = min(state.step, len(steps) - 1)
        step = steps[index]
        current = {
            "index": index,
            "label": step_label(step),
            "started": state.step_started and iso_time(state.step_started),
            "bake_left_s": plan.wait_seconds,
        }
    return {
        "version": JSON_VERSION,
        "endpoint": desired.endpoint,
        "exists": live.exists,
        "scoring_uri": live.scoring_uri or None,
        "phase": state.phase.value if state.phase else None,
        "stable": state.stable,
        "candidate": state.candidate,
        "previous": state.previous,
        "desired": desired.name,
        "step": current,
        "traffic": live.live_traffic(),
        "mirror": live.live_mirror(),
        "outcome": plan.outcome.value,
        "summary": plan.summary,
        "gates": [gate_json(g) for g in plan.gates],
        "notes": list(plan.notes),
        "last_decision": state.decision or None,
        "override": state.override or None,
        "rolled_back": list(state.rolled_back),
        "lease": (
            {"holder": state.lease.holder, "until": iso_time(state.lease.until)}
            if state.lease and state.lease.until > now
            else None
        ),
        "steps": [
            {
                "index": r.index,
                "label": step_label(steps[r.index]) if r.index < len(steps) else "?",
                "started": iso_time(r.started),
                "verdict": r.verdict,
                "requests": r.requests,
                "error_rate": r.error_rate,
                "p90_ms": r.p90_ms,
                "p99_ms": r.p99_ms,
            }
            for r in state.steps
        ],
    }


def render_status(data: dict[str, Any]) -> str:
    if not data["exists"]:
        return f"Endpoint {data['endpoint']} does not exist yet. {data['summary']}\n"
    lines = [
        f"Endpoint {data['endpoint']}: {data['phase'] or 'not managed yet'}",
        f"  stable     {data['stable'] or '-'}",
        f"  candidate  {data['candidate'] or '-'}",
        f"  previous   {data['previous'] or '-'}",
        f"  traffic    {shares(data['traffic'])}",
        f"  mirror     {shares(data['mirror'])}",
    ]
    if data.get("scoring_uri"):
        lines.append(f"  scoring    {data['scoring_uri']}")
    step = data["step"]
    if step:
        left = step["bake_left_s"]
        bake = f", bake {format_duration(left)} left" if left else ""
        lines.append(
            f"  step       {step['index'] + 1} ({step['label']}) since {step['started']}{bake}"
        )
    if data["lease"]:
        lines.append(f"  locked by  {data['lease']['holder']} until {data['lease']['until']}")
    if data["override"]:
        lines.append(f"  override   {data['override']}")
    if data["rolled_back"]:
        lines.append(f"  rolled back (not retried by itself): {', '.join(data['rolled_back'])}")
    if data["gates"]:
        lines.append("Gates:")
        for gate in data["gates"]:
            marker = " (dry run)" if gate["dry_run"] else ""
            lines.append(f"  {gate['verdict']:<13}{gate['reason']}{marker}")
    for note in data["notes"]:
        lines.append(f"  ! {note}")
    lines.append(f"Now: {data['summary']}")
    return "\n".join(lines) + "\n"


def render_history(data: dict[str, Any]) -> str:
    lines = [f"History of endpoint {data['endpoint']} (current rollout):"]
    if not data["steps"]:
        lines.append("  no steps recorded")
    for record in data["steps"]:
        figures = []
        if record["requests"] is not None:
            figures.append(f"{record['requests']:,} requests")
        if record["error_rate"] is not None:
            figures.append(f"error rate {record['error_rate']:.4f}")
        if record["p90_ms"] is not None:
            figures.append(f"p90 {record['p90_ms']:.1f} ms")
        if record["p99_ms"] is not None:
            figures.append(f"p99 {record['p99_ms']:.1f} ms")
        lines.append(
            f"  step {record['index'] + 1} {record['label']:<16} started {record['started']}  "
            f"{record['verdict']:<12} {', '.join(figures)}"
        )
    if data["override"]:
        lines.append(f"  operator: {data['override']}")
    if data["last_decision"]:
        lines.append(f"  last decision: {data['last_decision']}")
    if data["rolled_back"]:
        lines.append(f"  rolled back: {', '.join(data['rolled_back'])}")
    return "\n".join(lines) + "\n"


def outcome_exit_code(outcome: Outcome) -> int:
    return 3 if outcome in (Outcome.ROLLED_BACK, Outcome.FAILED) else 0
