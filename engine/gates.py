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
from typing import Any

from engine.errors import SourceError
from engine.providers.base import Measurement
from engine.spec import Analysis, AnyGate, Metric, SequentialGate


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
    # The verdict holds whatever data comes next (a sequential test reached its evidence);
    # `spec.promote_early` ends a step early only on concluded passes.
    concluded: bool = False

    @property
    def acts(self) -> bool:
        """A dry-run gate is reported but never changes a decision."""
        return not self.dry_run


# What a gate was given to judge: a measurement, or the error the source raised.
Observed = Measurement | SourceError


@dataclass(frozen=True)
class StepData:
    """One step of the current rollout as a sequential gate reads it: both deployments over the
    step's window and the candidate's routing share there (`engine.sequential.routing_share`)."""

    share: float
    mirrored: bool
    candidate: Measurement
    stable: Measurement


@dataclass(frozen=True)
class RolloutData:
    """What sequential gates read beyond the current window: every step of the rollout so far
    (the current one last), and how many steps expose the candidate (latency spends its
    false-rollback rate evenly over them)."""

    steps: tuple[StepData, ...] = ()
    exposure_steps: int = 1


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


def _result_fields(gate: AnyGate, index: int, errors: tuple[int, int]) -> dict[str, Any]:
    """What every result of `gate` carries, whatever its verdict."""
    return {
        "gate": gate.name,
        "index": index,
        "metric": gate.metric,
        "bound": gate.bound,
        "dry_run": gate.dry_run,
        "source_errors": errors,
    }


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
    gate: AnyGate,
    index: int,
    candidate: Observed,
    stable: Observed | None,
    analysis: Analysis,
    errors_before: tuple[int, int] = (0, 0),
    rollout: RolloutData | SourceError | None = None,
) -> GateResult:
    """Judge one gate on the candidate's (and for ratios, stable's) data over the step window;
    a sequential error gate judges the whole rollout so far (`rollout`)."""
    if isinstance(gate, SequentialGate):
        if gate.compares_errors:
            return evaluate_sequential_errors(gate, index, rollout, analysis, errors_before)
        exposure = rollout.exposure_steps if isinstance(rollout, RolloutData) else 1
        return evaluate_sequential_latency(
            gate, index, candidate, stable, analysis, errors_before, exposure
        )
    kind, bound = gate.bound
    failed_query = isinstance(candidate, SourceError) or (
        kind == "max_ratio_to_stable" and isinstance(stable, SourceError)
    )
    errors = next_source_errors(errors_before, failed_query)
    base = _result_fields(gate, index, errors)
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


# ---------------------------------------------------------------------------------------------
# Sequential gates


def _error_count(metric: Metric, data: Measurement) -> int:
    return data.server_errors if metric is Metric.ERROR_RATE else data.non_2xx


def _rate(errors: int, requests: int) -> str:
    return format_value(Metric.ERROR_RATE, errors / requests) if requests else "-"


def _evidence_text(log_value: float) -> str:
    return f"{math.exp(min(log_value, 700.0)):.3g}"


def _source_failure(
    gate: SequentialGate, index: int, base: dict, problem: SourceError, limit: int
) -> GateResult:
    row = base["source_errors"][0]
    return GateResult(
        **base,
        verdict=Verdict.ERROR if row > limit else Verdict.INCONCLUSIVE,
        reason=f"{gate.name}: source error {row} in a row (limit {limit}): {problem} "
        f"(gates[{index}])",
    )


def evaluate_sequential_errors(
    gate: SequentialGate,
    index: int,
    rollout: RolloutData | SourceError | None,
    analysis: Analysis,
    errors_before: tuple[int, int] = (0, 0),
) -> GateResult:
    """Candidate against stable on failures since the rollout's first step (engine.sequential).

    Fails as soon as the evidence of a regression reaches 1/false_rollback_rate, at any pass.
    Until then the gate passes a step whose window has `min_requests` on each side ("no
    regression shown yet"), and marks the pass concluded once the evidence that the candidate
    is not `min_effect` worse reaches the same level.
    """
    from engine.sequential import (
        StepCounts,
        error_evidence,
        share_is_plausible,
    )  # numpy: only when measured

    errors = next_source_errors(errors_before, isinstance(rollout, SourceError))
    base = _result_fields(gate, index, errors)
    where = f"(gates[{index}])"
    limit = analysis.max_source_errors
    if isinstance(rollout, SourceError):
        return _source_failure(gate, index, base, rollout, limit)
    note = _source_note(errors, limit)
    no_data_verdict = Verdict.FAILED if analysis.no_data == "fail" else Verdict.INCONCLUSIVE
    steps = rollout.steps if rollout else ()
    counts = [
        StepCounts(
            share=step.share,
            candidate_requests=step.candidate.requests,
            candidate_errors=_error_count(gate.metric, step.candidate),
            stable_requests=step.stable.requests,
            stable_errors=_error_count(gate.metric, step.stable),
            mirrored=step.mirrored,
        )
        for step in steps
    ]
    alpha = gate.false_rollback_rate
    evidence = error_evidence(counts, gate.effect)
    ratio = evidence.ratio
    subject = gate.metric.value
    summary = (
        f"{subject} {_rate(evidence.candidate_errors, evidence.candidate_requests)} against "
        f"stable {_rate(evidence.stable_errors, evidence.stable_requests)} over "
        f"{evidence.candidate_requests:,} and {evidence.stable_requests:,} requests since the "
        "first step"
    )
    shared = {**base, "value": ratio, "requests": evidence.candidate_requests}

    strays = [(i, c) for i, c in enumerate(counts) if not share_is_plausible(c)]
    if strays:
        i, stray = strays[0]
        served = stray.candidate_requests / (stray.candidate_requests + stray.stable_requests)
        return GateResult(
            **shared,
            verdict=Verdict.INCONCLUSIVE,
            reason=(
                f"{gate.name}: the candidate served {served:.1%} of the requests of the "
                f"rollout's step {i + 1}, well above its routing share of {stray.share:.1%}; "
                f"the sequential test assumes requests follow the traffic split, check it "
                f"{where}{note}"
            ),
        )

    if evidence.regressed(alpha):
        return GateResult(
            **shared,
            verdict=Verdict.FAILED,
            concluded=True,
            reason=(
                f"{gate.name}: {summary}; evidence of a regression "
                f"{_evidence_text(evidence.log_regression)} >= {1 / alpha:g} "
                f"(1/false_rollback_rate): the candidate fails more often than stable "
                f"{where}{note}"
            ),
        )

    current = counts[-1] if counts else None
    if current is None or current.candidate_requests == 0:
        return GateResult(
            **shared,
            verdict=no_data_verdict,
            no_data=True,
            reason=f"{gate.name}: no data for the candidate in this step's window {where}{note}",
        )
    short = [
        (who, n)
        for who, n in (
            ("the candidate", current.candidate_requests),
            ("stable", current.stable_requests if current.compares else gate.min_requests),
        )
        if n < gate.min_requests
    ]
    if short:
        who, n = short[0]
        return GateResult(
            **shared,
            verdict=Verdict.INCONCLUSIVE,
            reason=(
                f"{gate.name}: {n:,} of {gate.min_requests:,} required requests for {who} in "
                f"this step's window; {summary} {where}{note}"
            ),
        )
    if evidence.ruled_out(alpha):
        return GateResult(
            **shared,
            verdict=Verdict.PASSED,
            concluded=True,
            reason=(
                f"{gate.name}: {summary}; evidence {_evidence_text(evidence.log_no_regression)} "
                f">= {1 / alpha:g} that it is not {gate.effect} worse (min_effect): concluded "
                f"{where}{note}"
            ),
        )
    return GateResult(
        **shared,
        verdict=Verdict.PASSED,
        reason=(
            f"{gate.name}: {summary}; no regression shown yet (evidence "
            f"{_evidence_text(evidence.log_regression)}, rolls back at {1 / alpha:g}) "
            f"{where}{note}"
        ),
    )


def evaluate_sequential_latency(
    gate: SequentialGate,
    index: int,
    candidate: Observed,
    stable: Observed | None,
    analysis: Analysis,
    errors_before: tuple[int, int] = (0, 0),
    exposure_steps: int = 1,
) -> GateResult:
    """A latency percentile against stable's over the step window, with the sample sizes.

    Per-request latencies: confidence sequences for both percentiles bound their ratio; the
    gate fails when the ratio is shown above `max_ratio_to_stable` and concludes a pass when
    it is shown within, each wrong with probability at most false_rollback_rate spread evenly
    over the rollout's steps. Per-minute percentiles carry no sample size: the gate falls
    back to the ratio of the values the source reports, a plain threshold.
    """
    failed_query = isinstance(candidate, SourceError) or isinstance(stable, SourceError)
    errors = next_source_errors(errors_before, failed_query)
    base = _result_fields(gate, index, errors)
    where = f"(gates[{index}])"
    limit = analysis.max_source_errors
    if isinstance(candidate, SourceError):
        return _source_failure(gate, index, base, candidate, limit)
    if isinstance(stable, SourceError):
        return _source_failure(gate, index, base, stable, limit)
    note = _source_note(errors, limit)
    no_data_verdict = Verdict.FAILED if analysis.no_data == "fail" else Verdict.INCONCLUSIVE
    percentile = gate.metric.percentile or 50
    label = f"p{percentile}"

    for who, data in (("the candidate", candidate), ("stable", stable)):
        if data is None or data.requests == 0 or data.latency_ms.get(percentile) is None:
            return GateResult(
                **base,
                verdict=no_data_verdict,
                no_data=True,
                requests=candidate.requests,
                reason=f"{gate.name}: no {label} latency for {who} in the window {where}{note}",
            )
        if data.requests < gate.min_requests:
            return GateResult(
                **base,
                verdict=Verdict.INCONCLUSIVE,
                requests=candidate.requests,
                reason=(
                    f"{gate.name}: {data.requests:,} of {gate.min_requests:,} required requests "
                    f"for {who} {where}{note}"
                ),
            )
    assert stable is not None  # narrowed by the loop; not argument validation
    limit_ratio = gate.max_ratio_to_stable or 1.0
    sizes = f"over {candidate.requests:,} and {stable.requests:,} requests"

    if candidate.latencies_ms is None or stable.latencies_ms is None:
        value = candidate.latency_ms[percentile] / stable.latency_ms[percentile]
        verdict = Verdict.FAILED if value > limit_ratio else Verdict.PASSED
        relation = ">" if verdict is Verdict.FAILED else "within"
        return GateResult(
            **base,
            verdict=verdict,
            value=value,
            requests=candidate.requests,
            reason=(
                f"{gate.name}: {label} ratio to stable {value:.2f} {relation} max "
                f"{limit_ratio:g} {sizes} ({candidate.aggregation}; per-minute percentiles "
                f"carry no sample size, so this is a plain threshold) {where}{note}"
            ),
        )

    alpha = gate.false_rollback_rate / max(exposure_steps, 1)
    from engine.sequential import latency_evidence  # numpy: only when measured

    evidence = latency_evidence(candidate.latencies_ms, stable.latencies_ms, percentile, alpha)
    low = "0" if evidence.ratio_low is None else f"{evidence.ratio_low:.2f}"
    high = "inf" if evidence.ratio_high is None else f"{evidence.ratio_high:.2f}"
    figures = (
        f"{label} {evidence.candidate or 0:.1f} ms against stable {evidence.stable or 0:.1f} ms "
        f"{sizes}; the ratio lies in [{low}, {high}] (error {alpha:.2g} per side)"
    )
    shared = {**base, "value": evidence.ratio, "requests": candidate.requests}
    if evidence.ratio_low is not None and evidence.ratio_low > limit_ratio:
        return GateResult(
            **shared,
            verdict=Verdict.FAILED,
            concluded=True,
            reason=f"{gate.name}: {figures}, above max {limit_ratio:g} {where}{note}",
        )
    if evidence.ratio_high is not None and evidence.ratio_high <= limit_ratio:
        return GateResult(
            **shared,
            verdict=Verdict.PASSED,
            concluded=True,
            reason=f"{gate.name}: {figures}, within max {limit_ratio:g}: concluded {where}{note}",
        )
    return GateResult(
        **shared,
        verdict=Verdict.PASSED,
        reason=(f"{gate.name}: {figures}; not shown above max {limit_ratio:g} yet {where}{note}"),
    )


def concluded_passed(results: list[GateResult]) -> bool:
    """Every gate that acts has concluded passed (and at least one acts): the step's evidence
    is complete before its bake."""
    acting = [r for r in results if r.acts]
    return bool(acting) and all(r.verdict is Verdict.PASSED and r.concluded for r in acting)


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
