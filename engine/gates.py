"""Gate verdicts: what a step's measurements say about the candidate, in the manifest's terms.

Pure functions only. The reconciler measures (through a `GateSource`) and hands the
measurements here; `evaluate_gate` turns one gate plus its data into a `GateResult` that explains
itself, and `combine` folds results worst first. Could-not-measure is data: a failed query is
`inconclusive` until `analysis.max_source_errors` is exceeded in a row, then `error`; an empty
window is `inconclusive`, never `passed`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

from engine.errors import SourceError
from engine.providers.base import Measurement
from engine.spec import Analysis, Gate, Metric


class Verdict(StrEnum):
    PASSED = "passed"
    INCONCLUSIVE = "inconclusive"
    FAILED = "failed"
    ERROR = "error"

    @property
    def severity(self) -> int:
        return {"passed": 0, "inconclusive": 1, "failed": 2, "error": 2}[self.value]

    @property
    def is_failure(self) -> bool:
        return self in (Verdict.FAILED, Verdict.ERROR)


@dataclass(frozen=True)
class GateResult:
    gate: str
    index: int
    metric: Metric
    verdict: Verdict
    reason: str
    value: float | None = None
    bound: tuple[str, float] | None = None
    requests: int = 0
    dry_run: bool = False
    source_errors: tuple[int, int] = (0, 0)  # (in a row, in this step)
    no_data: bool = False  # judged on an empty window: only final once the bake is over

    @property
    def acts(self) -> bool:
        """A dry-run gate is reported but never changes a decision."""
        return not self.dry_run


# What a gate was given to judge: a measurement, or the error the source raised.
Observed = Measurement | SourceError


def metric_value(metric: Metric, data: Measurement) -> float | None:
    """The metric's value in a measurement, or None when the measurement cannot say."""
    if metric is Metric.REQUEST_COUNT:
        return float(data.requests)
    if metric is Metric.ERROR_COUNT:
        return float(data.server_errors)
    if metric is Metric.ERROR_RATE:
        return data.server_errors / data.requests if data.requests else None
    if metric is Metric.NON_2XX_RATE:
        return data.non_2xx / data.requests if data.requests else None
    if metric is Metric.CPU_UTILIZATION:
        return data.cpu_percent
    if metric is Metric.MEMORY_UTILIZATION:
        return data.memory_percent
    percentile = metric.percentile
    return data.latency_ms.get(percentile) if percentile is not None else None


def format_value(metric: Metric, value: float) -> str:
    if math.isinf(value):
        return "inf"
    if metric in (Metric.ERROR_RATE, Metric.NON_2XX_RATE):
        return f"{value:.4f}".rstrip("0").rstrip(".") if value else "0"
    if metric in (Metric.ERROR_COUNT, Metric.REQUEST_COUNT):
        return f"{int(value):,}"
    return f"{value:.1f}"


def _bound_text(kind: str, bound: float) -> str:
    return {"max": "max", "min": "min", "max_ratio_to_stable": "max ratio to stable"}[kind] + (
        f" {bound:g}"
    )


def _violates(kind: str, value: float, bound: float) -> bool:
    return value < bound if kind == "min" else value > bound


def next_source_errors(previous: tuple[int, int], failed: bool) -> tuple[int, int]:
    """(errors in a row, errors this step) after one more query."""
    row, total = previous
    return (row + 1, total + 1) if failed else (0, total)


def _source_note(errors: tuple[int, int], limit: int) -> str:
    row, total = errors
    if not total:
        return ""
    return f"; {total} source error{'s' if total != 1 else ''} this step (limit {limit} in a row)"


def evaluate_gate(
    gate: Gate,
    index: int,
    candidate: Observed,
    stable: Observed | None,
    analysis: Analysis,
    errors_before: tuple[int, int] = (0, 0),
) -> GateResult:
    """Judge one gate on the candidate's (and for ratios, stable's) data over the step window."""
    kind, bound = gate.bound
    failed_query = isinstance(candidate, SourceError) or (
        kind == "max_ratio_to_stable" and isinstance(stable, SourceError)
    )
    errors = next_source_errors(errors_before, failed_query)
    base = {
        "gate": gate.name,
        "index": index,
        "metric": gate.metric,
        "bound": (kind, bound),
        "dry_run": gate.dry_run,
        "source_errors": errors,
    }
    where = f"(gates[{index}])"
    limit = analysis.max_source_errors

    if failed_query:
        problem = candidate if isinstance(candidate, SourceError) else stable
        row = errors[0]
        verdict = Verdict.ERROR if row > limit else Verdict.INCONCLUSIVE
        return GateResult(
            **base,
            verdict=verdict,
            reason=f"{gate.name}: source error {row} in a row (limit {limit}): {problem} {where}",
        )

    assert isinstance(candidate, Measurement)  # narrowed above; not argument validation
    note = _source_note(errors, limit)
    no_data_verdict = Verdict.FAILED if analysis.no_data == "fail" else Verdict.INCONCLUSIVE

    def short_of_data(who: str, data: Measurement) -> GateResult | None:
        if data.requests == 0:
            return GateResult(
                **base,
                verdict=no_data_verdict,
                requests=0,
                no_data=True,
                reason=f"{gate.name}: no data for {who} in the window {where}{note}",
            )
        if data.requests < gate.min_requests:
            return GateResult(
                **base,
                verdict=Verdict.INCONCLUSIVE,
                requests=data.requests,
                reason=(
                    f"{gate.name}: {data.requests:,} of {gate.min_requests:,} required requests "
                    f"for {who} {where}{note}"
                ),
            )
        return None

    shortfall = short_of_data("the candidate", candidate)
    if shortfall:
        return shortfall
    value = metric_value(gate.metric, candidate)
    if value is None:
        return GateResult(
            **base,
            verdict=no_data_verdict,
            requests=candidate.requests,
            no_data=True,
            reason=f"{gate.name}: the source reported no {gate.metric.value} {where}{note}",
        )

    subject = gate.metric.value
    if kind == "max_ratio_to_stable":
        if not isinstance(stable, Measurement):
            return GateResult(
                **base,
                verdict=no_data_verdict,
                requests=candidate.requests,
                no_data=True,
                reason=f"{gate.name}: no stable data to compare with {where}{note}",
            )
        shortfall = short_of_data("stable", stable)
        if shortfall:
            return shortfall
        reference = metric_value(gate.metric, stable)
        if reference is None:
            return GateResult(
                **base,
                verdict=no_data_verdict,
                requests=candidate.requests,
                no_data=True,
                reason=f"{gate.name}: the source reported no {subject} for stable {where}{note}",
            )
        if reference == 0:
            value = 1.0 if value == 0 else math.inf
        else:
            value = value / reference
        subject = f"{gate.metric.value} ratio to stable"

    verdict = Verdict.FAILED if _violates(kind, value, bound) else Verdict.PASSED
    relation = ("<" if kind == "min" else ">") if verdict is Verdict.FAILED else "within"
    aggregation = "" if candidate.aggregation.startswith("exact") else f", {candidate.aggregation}"
    return GateResult(
        **base,
        verdict=verdict,
        value=value,
        requests=candidate.requests,
        reason=(
            f"{gate.name}: {subject} {format_value(gate.metric, value)} {relation} "
            f"{_bound_text(kind, bound)} over {candidate.requests:,} requests{aggregation} "
            f"{where}{note}"
        ),
    )


def combine(results: list[GateResult]) -> Verdict:
    """The step's verdict from the gates that act: worst first; no gates means passed."""
    acting = [r.verdict for r in results if r.acts]
    return max(acting, key=lambda v: v.severity, default=Verdict.PASSED)


def first_failure(results: list[GateResult], *, bake_over: bool = True) -> GateResult | None:
    """The first acting gate that failed. During the bake an empty window is not yet a
    failure, even with `no_data: fail`: data has had no time to arrive."""
    return next(
        (r for r in results if r.acts and r.verdict.is_failure and (bake_over or not r.no_data)),
        None,
    )
