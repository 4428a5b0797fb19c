"""Plans, status and history as GitHub Markdown: pull-request comments and job summaries.

Sits beside `engine.render` (text and JSON) and reads the same values: plans from
`engine.decide`, status from `render.status_data`. Pure functions returning strings, so tests
compare whole outputs. Where a picture says more than a table (a gate's value over several
steps) a Mermaid chart follows the table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from engine.decide import Desired, manifest_warnings
from engine.durations import format_duration
from engine.gates import format_value
from engine.plan import Action, ActionKind, Plan
from engine.render import TITLES, gate_json, shares, state_changes
from engine.spec import Gate, Metric

ICONS = {
    ActionKind.CREATE_ENDPOINT: "➕",
    ActionKind.CREATE_DEPLOYMENT: "➕",
    ActionKind.SMOKE_TEST: "🧪",
    ActionKind.UPDATE_ENDPOINT: "🔁",
    ActionKind.DELETE_DEPLOYMENT: "➖",
}
VERDICTS = {
    "passed": "✅ passed",
    "failed": "❌ failed",
    "error": "⛔ error",
    "inconclusive": "❔ inconclusive",
    "running": "⏳ running",
    "skipped": "⏭️ skipped",
    "restarted": "↩️ restarted",
}
PHASES = {
    "Progressing": "🚀 Progressing",
    "Paused": "⏸️ Paused",
    "Succeeded": "✅ Succeeded",
    "RolledBack": "↩️ RolledBack",
    "Failed": "🛑 Failed",
}
# The step log keeps these figures per step; a gate on another metric has only its current value.
STEP_FIGURES = {
    Metric.ERROR_RATE: "error_rate",
    Metric.LATENCY_P90_MS: "p90_ms",
    Metric.LATENCY_P99_MS: "p99_ms",
    Metric.REQUEST_COUNT: "requests",
}
BOUND_WORDS = {"max": "max", "min": "min", "max_ratio_to_stable": "max ratio to stable"}


def cell(text: object) -> str:
    """Text made safe for one Markdown table cell: no pipes, no raw HTML, no line breaks."""
    value = str(text).replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;")
    return " ".join(value.splitlines())


def code(text: str) -> str:
    return f"`{text.replace('`', 'ʼ')}`"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines.extend("| " + " | ".join(row) + " |" for row in rows)
    return lines


def verdict_text(verdict: str | None, dry_run: bool = False) -> str:
    text = VERDICTS.get(verdict or "", verdict or "–")
    return f"{text} (dry run)" if dry_run else text


def value_text(metric: str, value: float | None, ratio: bool = False) -> str:
    if value is None:
        return "–"
    if ratio:
        return f"{value:.2f}×"
    text = format_value(Metric(metric), value)
    if Metric(metric).percentile is not None:
        return f"{text} ms"
    if metric in (Metric.CPU_UTILIZATION, Metric.MEMORY_UTILIZATION):
        return f"{text} %"
    return text


def bound_text(metric: str, bound: dict[str, Any] | None) -> str:
    if not bound:
        return "–"
    if bound["kind"] == "max_ratio_to_stable":
        return f"{BOUND_WORDS[bound['kind']]} {bound['value']:g}×"
    return f"{BOUND_WORDS[bound['kind']]} {value_text(metric, bound['value'])}"


def gates_table(gates: Sequence[dict[str, Any]]) -> list[str]:
    """Gate results (as `render.gate_json` gives them) as a table, then each one's reason."""
    rows = []
    for gate in gates:
        ratio = bool(gate["bound"]) and gate["bound"]["kind"] == "max_ratio_to_stable"
        rows.append(
            [
                code(gate["gate"]),
                code(gate["metric"]),
                value_text(gate["metric"], gate["value"], ratio),
                bound_text(gate["metric"], gate["bound"]),
                f"{gate['requests']:,}",
                verdict_text(gate["verdict"], gate["dry_run"]),
            ]
        )
    lines = table(["gate", "metric", "value", "bound", "requests", "verdict"], rows)
    lines.append("")
    lines.append("<details><summary>Why</summary>")
    lines.append("")
    lines.extend(f"- {cell(gate['reason'])}" for gate in gates)
    lines.append("")
    lines.append("</details>")
    return lines


# ---------------------------------------------------------------------------------------------
# Plans


def _changes(action: Action, desired: Desired) -> list[str]:
    changes = []
    if action.traffic and action.traffic[0] != action.traffic[1]:
        changes.append(f"traffic {shares(action.traffic[0])} → {shares(action.traffic[1])}")
    if action.mirror and action.mirror[0] != action.mirror[1]:
        changes.append(f"mirror {shares(action.mirror[0])} → {shares(action.mirror[1])}")
    if action.state:
        before, after = action.state
        for label, old, new in state_changes(before, after, desired):
            changes.append(f"{label} {old or '–'} → {new or '–'}")
    if action.deployment:
        request = action.deployment
        changes.append(f"model {request.model_name} version {request.model_version}")
    return changes


def plan_headline(plans: Sequence[Plan]) -> str:
    actions = [a for p in plans for a in p.actions]
    if not actions:
        return "no changes"
    count = {kind: sum(1 for a in actions if a.kind is kind) for kind in ActionKind}
    created = count[ActionKind.CREATE_ENDPOINT] + count[ActionKind.CREATE_DEPLOYMENT]
    return (
        f"{created} to create, {count[ActionKind.SMOKE_TEST]} to test, "
        f"{count[ActionKind.UPDATE_ENDPOINT]} to update, "
        f"{count[ActionKind.DELETE_DEPLOYMENT]} to delete"
    )


def render_plan_markdown(plans: Sequence[Plan], desired: Desired) -> str:
    """One manifest's plan as a section of a pull-request comment."""
    spec = desired.rollout.spec
    actions = [a for p in plans for a in p.actions]
    final = plans[-1]
    lines = [
        f"### {code(desired.rollout.metadata.name)}: {plan_headline(plans)}",
        "",
        f"Endpoint {code(desired.endpoint)} ({spec.target.provider}) · model "
        f"{code(spec.model.name)} version **{cell(spec.model.version)}** as deployment "
        f"{code(desired.name)}",
        "",
    ]
    warnings = manifest_warnings(desired.rollout)
    if warnings:
        lines.append("> [!WARNING]")
        lines.append("> " + "<br>".join(cell(w) for w in warnings))
        lines.append("")
    notes = [n for p in plans for n in p.notes]
    if notes:
        lines.extend(f"- ℹ️ {cell(note)}" for note in notes)
        lines.append("")
    if actions:
        rows = [
            [
                ICONS[a.kind],
                TITLES[a.kind],
                code(a.subject),
                "<br>".join(cell(c) for c in _changes(a, desired)) or "–",
                cell(a.reason),
            ]
            for a in actions
        ]
        lines.extend(table(["", "action", "on", "change", "because"], rows))
        lines.append("")
    measured = next((p.gates for p in plans if p.gates), ())
    if measured:
        lines.append("**Gates** over the current step's window:")
        lines.append("")
        lines.extend(gates_table([gate_json(g) for g in measured]))
        lines.append("")
    label = "Afterwards" if actions else "Now"
    lines.append(f"**{label}:** {cell(final.summary)}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Gate values per step, for charts


@dataclass(frozen=True)
class GateSeries:
    """One gate's value at each step of the current rollout, against its bound."""

    gate: str
    metric: str
    bound_kind: str
    bound: float
    labels: tuple[str, ...]  # "1 mirror 20%", ...
    values: tuple[float | None, ...]
    verdicts: tuple[str, ...]

    def measured(self) -> list[tuple[str, float, str]]:
        """(label, value, verdict) of the steps that have a value."""
        return [
            (label, value, verdict)
            for label, value, verdict in zip(self.labels, self.values, self.verdicts, strict=True)
            if value is not None
        ]

    @property
    def title(self) -> str:
        bound = value_text(self.metric, self.bound)
        return f"{self.gate}: {self.metric} per step ({BOUND_WORDS[self.bound_kind]} {bound})"


def gate_series(data: dict[str, Any], gates: Sequence[Gate]) -> list[GateSeries]:
    """Per-step values of each threshold gate whose metric the step log records.

    Closed steps give the figures kept in the endpoint's step log; the running step gives the
    gate's current value. Ratio gates are left out: the log keeps no stable figures to divide by.
    """
    current = {g["gate"]: g for g in data["gates"]}
    series = []
    for gate in gates:
        kind, bound = gate.bound
        field = STEP_FIGURES.get(gate.metric)
        if field is None or kind == "max_ratio_to_stable":
            continue
        labels, values, verdicts = [], [], []
        for record in data["steps"]:
            value = record[field]
            verdict = record["verdict"]
            label = f"{record['index'] + 1} {record['label']}"
            if verdict == "running" and gate.name in current:
                value = current[gate.name]["value"]
                verdict = current[gate.name]["verdict"]
                label += " (now)"
            labels.append(label)
            values.append(None if value is None else float(value))
            verdicts.append(verdict)
        if labels:
            series.append(
                GateSeries(gate.name, gate.metric.value, kind, float(bound), tuple(labels),
                           tuple(values), tuple(verdicts))
            )  # fmt: skip
    return series


def _number(value: float) -> str:
    return f"{value:.6g}"


def mermaid_chart(series: GateSeries) -> list[str]:
    """An xychart: the gate's value at each measured step as bars, its bound as a line."""
    points = series.measured()
    values = [value for _, value, _ in points]
    top = max([*values, series.bound]) * 1.2 or 1.0
    labels = ", ".join('"' + label.replace('"', "'") + '"' for label, _, _ in points)
    return [
        "```mermaid",
        "xychart-beta",
        f'    title "{series.title}"',
        f"    x-axis [{labels}]",
        f'    y-axis "{series.metric}" 0 --> {_number(top)}',
        f"    bar [{', '.join(_number(v) for v in values)}]",
        f"    line [{', '.join(_number(series.bound) for _ in values)}]",
        "```",
    ]


def charts(data: dict[str, Any], gates: Sequence[Gate]) -> list[str]:
    """Charts for gates measured on at least two steps; fewer points read better in a table."""
    lines: list[str] = []
    for series in gate_series(data, gates):
        if len(series.measured()) < 2:
            continue
        lines.extend(mermaid_chart(series))
        lines.append("")
    return lines


# ---------------------------------------------------------------------------------------------
# Status and history


def _traffic(values: dict[str, int]) -> str:
    if not values:
        return "–"
    return ", ".join(f"{code(k)} {v} %" for k, v in sorted(values.items()))


def steps_table(data: dict[str, Any]) -> list[str]:
    rows = []
    for record in data["steps"]:
        rate = record["error_rate"]
        rows.append(
            [
                f"{record['index'] + 1} {cell(record['label'])}",
                record["started"],
                verdict_text(record["verdict"]),
                "–" if record["requests"] is None else f"{record['requests']:,}",
                "–" if rate is None else value_text("error_rate", rate),
                "–" if record["p90_ms"] is None else f"{record['p90_ms']:.1f}",
                "–" if record["p99_ms"] is None else f"{record['p99_ms']:.1f}",
            ]
        )
    header = ["step", "started", "verdict", "requests", "error rate", "p90 ms", "p99 ms"]
    return table(header, rows)


def status_headline(data: dict[str, Any]) -> str:
    phase = PHASES.get(data["phase"] or "", data["phase"] or "not managed yet")
    step = data["step"]
    where = f", step {step['index'] + 1} ({step['label']})" if step else ""
    return f"### {code(data['endpoint'])}: {phase}{where}"


def render_status_markdown(data: dict[str, Any], gates: Sequence[Gate]) -> str:
    """The rollout's status as a job-summary section; `data` is `render.status_data`."""
    if not data["exists"]:
        heading = f"### {code(data['endpoint'])}: does not exist yet"
        return f"{heading}\n\n**Now:** {cell(data['summary'])}\n"
    rows = [
        ["stable", code(data["stable"]) if data["stable"] else "–"],
        ["candidate", code(data["candidate"]) if data["candidate"] else "–"],
        ["previous", code(data["previous"]) if data["previous"] else "–"],
        ["traffic", _traffic(data["traffic"])],
        ["mirror", _traffic(data["mirror"])],
    ]
    step = data["step"]
    if step:
        left = step["bake_left_s"]
        bake = f", bake {format_duration(left)} left" if left else ""
        rows.append(
            ["step", f"{step['index'] + 1} ({step['label']}) since {step['started']}{bake}"]
        )
    if data["lease"]:
        rows.append(
            ["locked by", f"{cell(data['lease']['holder'])} until {data['lease']['until']}"]
        )
    if data["override"]:
        rows.append(["override", cell(data["override"])])
    if data["last_decision"]:
        rows.append(["last decision", cell(data["last_decision"])])
    if data["rolled_back"]:
        rows.append(["rolled back", ", ".join(code(v) for v in data["rolled_back"])])
    lines = [status_headline(data), "", *table(["", ""], rows), ""]
    if data["gates"]:
        lines.append("**Gates** over the current step's window:")
        lines.append("")
        lines.extend(gates_table(data["gates"]))
        lines.append("")
    if data["steps"]:
        lines.append("**Steps** of the current rollout:")
        lines.append("")
        lines.extend(steps_table(data))
        lines.append("")
        lines.extend(charts(data, gates))
    lines.extend(f"- ℹ️ {cell(note)}" for note in data["notes"])
    if data["notes"]:
        lines.append("")
    lines.append(f"**Now:** {cell(data['summary'])}")
    return "\n".join(lines) + "\n"


def render_history_markdown(data: dict[str, Any], gates: Sequence[Gate]) -> str:
    lines = [f"### History of {code(data['endpoint'])} (current rollout)", ""]
    if not data["steps"]:
        lines.append("No steps recorded.")
    else:
        lines.extend(steps_table(data))
        lines.append("")
        lines.extend(charts(data, gates))
    for label, key in (("Operator", "override"), ("Last decision", "last_decision")):
        if data[key]:
            lines.append(f"- {label}: {cell(data[key])}")
    if data["rolled_back"]:
        lines.append(f"- Rolled back: {', '.join(code(v) for v in data['rolled_back'])}")
    return "\n".join(lines).rstrip() + "\n"
