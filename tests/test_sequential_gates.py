"""Sequential gates in the manifest, in verdicts and in rollouts, tick by tick.

The manifest side: `test: sequential` with its fields and rules, each problem at its line. The
verdict side: `evaluate_gate` on a rollout's step counts. The rollout side: a reconciler on the
in-memory provider, where the gate fails a bad version within the step, lets a good one walk
every step, reads the steps already done, and with `promote_early` ends steps early.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import pytest

from engine.decide import manifest_warnings
from engine.errors import ManifestError, SourceError
from engine.gates import (
    RolloutData,
    StepData,
    Verdict,
    concluded_passed,
    evaluate_gate,
)
from engine.live import LiveEndpoint
from engine.loader import load_manifest_text
from engine.plan import Outcome
from engine.providers.base import Measurement, Window
from engine.reconcile import Reconciler
from engine.spec import Analysis, ModelRollout, SequentialGate, ThresholdGate
from engine.state import Phase, decode
from tests.fakes import Behaviour, FakeClock, FakeProvider, FakeSource, desired_for, manifest
from tests.test_loader import MINIMAL

ERRORS_GATE = {"name": "errors-vs-stable", "metric": "error_rate", "test": "sequential"}


def gate_lines(*lines: str) -> str:
    """minimal.yaml with its gates replaced by one gate of these lines (the gate is line 23)."""
    start = MINIMAL.index("  gates:\n")
    end = MINIMAL.index("  analysis:\n")
    body = "".join(f"      {line}\n" for line in lines[1:])
    return MINIMAL[:start] + f"  gates:\n    - {lines[0]}\n{body}" + MINIMAL[end:]


def problems(text: str) -> list[str]:
    with pytest.raises(ManifestError) as caught:
        load_manifest_text(text, "m.yaml")
    return [str(p) for p in caught.value.problems]


def sequential(**fields) -> SequentialGate:
    return SequentialGate.model_validate({**ERRORS_GATE, **fields})


# --- the manifest --------------------------------------------------------------------------------


def test_a_sequential_error_gate_loads_with_its_defaults():
    loaded = load_manifest_text(
        gate_lines("name: errors", "metric: error_rate", "test: sequential"), "m.yaml"
    )
    (gate,) = loaded.rollout.spec.gates

    assert isinstance(gate, SequentialGate)
    assert (gate.false_rollback_rate, gate.min_effect, gate.min_requests) == (0.01, None, 100)
    assert str(gate.effect) == "2x"
    assert loaded.rollout.spec.promote_early is False


@pytest.mark.parametrize(
    ("written", "kept"),
    [("2x", "2x"), ("1.5x", "1.5x"), ("+0.01", "+0.01"), ('"+0.01"', "+0.01"), ("0.02", "+0.02")],
)
def test_min_effect_is_a_ratio_or_an_increase_however_yaml_reads_it(written: str, kept: str):
    text = gate_lines(
        "name: errors", "metric: error_rate", "test: sequential", f"min_effect: {written}"
    )
    (gate,) = load_manifest_text(text, "m.yaml").rollout.spec.gates

    assert gate.min_effect == kept


def test_a_sequential_gate_validates_again_from_its_meaning():
    rollout = manifest(gates=[{**ERRORS_GATE, "min_effect": "+0.01"}], promote_early=True)

    assert ModelRollout.model_validate(rollout.meaning()) == rollout


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (
            ("name: e", "metric: error_rate", "test: sequential", "min_effect: 2"),
            "m.yaml:26:7: spec.gates[0].min_effect: min_effect is a ratio such as 2x or an "
            "increase in error rate such as +0.01 (got 2); write 2x for 2 times stable's error "
            "rate",
        ),
        (
            ("name: e", "metric: error_rate", "test: sequentail"),
            "m.yaml:25:7: spec.gates[0].test: test is sequential: candidate against stable, "
            "judged at every pass (got sequentail); did you mean sequential?",
        ),
        (
            ("name: e", "metric: cpu_utilization", "test: sequential"),
            "m.yaml:24:7: spec.gates[0].metric: a sequential gate compares error_rate, "
            "non_2xx_rate or a latency percentile with stable (got cpu_utilization); use a "
            "threshold gate (max, min or max_ratio_to_stable) for cpu_utilization",
        ),
        (
            ("name: e", "metric: latency_p99_ms", "test: sequential"),
            "m.yaml:23:7: spec.gates[0]: a sequential latency_p99_ms gate needs "
            "max_ratio_to_stable; add max_ratio_to_stable: 1.25 to fail a candidate 25 % slower "
            "than stable",
        ),
        (
            ("name: e", "metric: error_rate", "test: sequential", "max: 0.01"),
            "m.yaml:26:7: spec.gates[0].max: unknown key max; keys here: name, metric, test, "
            "false_rollback_rate, min_effect, max_ratio_to_stable, min_requests, dry_run",
        ),
        (
            ("name: e", "metric: error_rate", "test: sequential", "false_rollback_rate: 0.5"),
            "m.yaml:26:7: spec.gates[0].false_rollback_rate: false_rollback_rate is a "
            "probability above 0 and at most 0.2 (got 0.5); the most is 0.2",
        ),
        (
            ("name: e", "metric: error_rate", "test: sequential", "max_ratio_to_stable: 2"),
            "m.yaml:26:7: spec.gates[0].max_ratio_to_stable: a sequential error_rate gate "
            "compares with stable by itself; min_effect says which regression to catch (got 2); "
            "remove max_ratio_to_stable; e.g. min_effect: 2x",
        ),
        (
            ("name: e", "metric: latency_p90_ms", "test: sequential", "min_effect: 2x"),
            "m.yaml:26:7: spec.gates[0].min_effect: min_effect is for error_rate and "
            "non_2xx_rate; a latency comparison takes max_ratio_to_stable (got 2x); write "
            "max_ratio_to_stable: 1.25 instead",
        ),
    ],
    ids=[
        "bare number",
        "misspelt test",
        "metric without a test",
        "latency without ratio",
        "threshold bound",
        "alpha too large",
        "ratio on errors",
        "min_effect on latency",
    ],
)
def test_sequential_gate_problems_are_reported_at_their_line(lines, expected):
    found = problems(gate_lines(*lines))

    assert expected in found, found


def test_promote_early_without_a_sequential_gate_is_warned_about():
    rollout = manifest(promote_early=True)

    assert any("promote_early has no effect" in w for w in manifest_warnings(rollout))
    assert not any(
        "promote_early" in w
        for w in manifest_warnings(manifest(promote_early=True, gates=[ERRORS_GATE]))
    )


# --- verdicts ------------------------------------------------------------------------------------


def measured(requests: int, errors: int, latencies: list[float] | None = None) -> Measurement:
    latency = {99: float(np.percentile(latencies, 99))} if latencies else {99: 50.0}
    return Measurement(requests, errors, errors, latency, latencies_ms=latencies)


def rollout(*steps: tuple[float, int, int, int, int]) -> RolloutData:
    """Steps as (share, candidate requests, candidate errors, stable requests, stable errors)."""
    return RolloutData(
        tuple(
            StepData(share, False, measured(cr, ce), measured(sr, se))
            for share, cr, ce, sr, se in steps
        )
    )


def judge(gate: SequentialGate, data, errors_before=(0, 0), analysis: Analysis | None = None):
    empty = Measurement(0, 0, 0, {})
    return evaluate_gate(gate, 0, empty, empty, analysis or Analysis(), errors_before, data)


def test_the_error_gate_fails_on_conclusive_evidence_and_says_so_in_manifest_terms():
    result = judge(sequential(), rollout((0.1, 450, 12, 4050, 20)))

    assert result.verdict is Verdict.FAILED and result.concluded
    assert result.reason.startswith("errors-vs-stable: error_rate 0.0267 against stable 0.0049")
    assert "over 450 and 4,050 requests since the first step" in result.reason
    assert ">= 100 (1/false_rollback_rate)" in result.reason
    assert result.value == pytest.approx((12 / 450) / (20 / 4050))


def test_the_error_gate_passes_a_step_without_concluding_while_the_evidence_is_thin():
    result = judge(sequential(), rollout((0.1, 450, 3, 4050, 20)))

    assert result.verdict is Verdict.PASSED and not result.concluded
    assert "no regression shown yet" in result.reason and "rolls back at 100" in result.reason


def test_the_error_gate_concludes_a_pass_once_a_doubling_is_ruled_out():
    result = judge(sequential(), rollout((0.5, 20_000, 100, 20_000, 100)))

    assert result.verdict is Verdict.PASSED and result.concluded
    assert "that it is not 2x worse (min_effect): concluded" in result.reason


def test_the_error_gate_reads_every_step_of_the_rollout():
    first, second = (0.1, 450, 6, 4050, 20), (0.5, 450, 14, 450, 3)
    together = judge(sequential(), rollout(first, second))

    assert judge(sequential(), rollout(first)).verdict is Verdict.PASSED
    assert judge(sequential(), rollout(second)).verdict is Verdict.PASSED
    assert together.verdict is Verdict.FAILED
    assert together.requests == 900


def test_fewer_than_min_requests_in_the_step_is_inconclusive_unless_the_evidence_fails():
    thin = judge(sequential(), rollout((0.1, 450, 3, 4050, 20), (0.5, 40, 0, 40, 0)))
    crash = judge(sequential(), rollout((0.1, 30, 6, 270, 0)))

    assert thin.verdict is Verdict.INCONCLUSIVE
    assert "40 of 100 required requests for the candidate in this step's window" in thin.reason
    assert crash.verdict is Verdict.FAILED, "a sequential test needs no minimum to fail"


def test_an_empty_step_is_no_data():
    result = judge(sequential(), rollout((0.1, 450, 3, 4050, 20), (0.5, 0, 0, 0, 0)))

    assert result.verdict is Verdict.INCONCLUSIVE and result.no_data
    assert judge(sequential(), rollout(), analysis=Analysis(no_data="fail")).verdict is (
        Verdict.FAILED
    )


def test_a_candidate_serving_more_than_its_share_holds_the_gate_with_the_reason():
    result = judge(sequential(), rollout((0.1, 3000, 30, 7000, 30)))

    assert result.verdict is Verdict.INCONCLUSIVE
    assert "served 30.0% of the requests of the rollout's step 1" in result.reason


def test_source_errors_are_inconclusive_until_the_limit_then_an_error():
    failure = SourceError("HTTP 503 from the metrics service")
    first = judge(sequential(), failure)
    past = judge(sequential(), failure, errors_before=(4, 4))

    assert first.verdict is Verdict.INCONCLUSIVE and first.source_errors == (1, 1)
    assert past.verdict is Verdict.ERROR and "source error 5 in a row (limit 4)" in past.reason


def test_only_acting_gates_that_all_concluded_passed_end_a_step_early():
    concluded = judge(sequential(), rollout((0.5, 20_000, 100, 20_000, 100)))
    so_far = judge(sequential(), rollout((0.1, 450, 3, 4050, 20)))
    dry = judge(sequential(dry_run=True), rollout((0.1, 450, 3, 4050, 20)))

    assert concluded_passed([concluded])
    assert not concluded_passed([concluded, so_far])
    assert concluded_passed([concluded, dry])
    assert not concluded_passed([dry]), "no acting gate, nothing concluded"


def latency_gate(**fields) -> SequentialGate:
    return SequentialGate.model_validate(
        {
            "name": "p99-vs-stable",
            "metric": "latency_p99_ms",
            "test": "sequential",
            "max_ratio_to_stable": 1.25,
            **fields,
        }
    )


def test_the_latency_gate_fails_a_slower_candidate_and_concludes_an_equal_one():
    rng = np.random.default_rng(3)
    stable = measured(20_000, 0, list(rng.lognormal(3, 0.4, 20_000)))
    slower = measured(5000, 0, list(rng.lognormal(3 + np.log(1.6), 0.4, 5000)))
    equal = measured(5000, 0, list(rng.lognormal(3, 0.4, 5000)))
    data = RolloutData(exposure_steps=4)

    failed = evaluate_gate(latency_gate(), 1, slower, stable, Analysis(), (0, 0), data)
    passed = evaluate_gate(latency_gate(), 1, equal, stable, Analysis(), (0, 0), data)

    assert failed.verdict is Verdict.FAILED and "above max 1.25" in failed.reason
    assert "(error 0.0025 per side)" in failed.reason, "alpha is spread over the four steps"
    assert passed.verdict is Verdict.PASSED and passed.concluded


def test_the_latency_gate_on_per_minute_percentiles_is_a_plain_ratio_and_says_so():
    candidate = Measurement(500, 0, 0, {99: 90.0}, aggregation="maximum of 5 per-minute p99")
    stable = Measurement(4500, 0, 0, {99: 60.0}, aggregation="maximum of 5 per-minute p99")

    result = evaluate_gate(latency_gate(), 1, candidate, stable, Analysis())

    assert result.verdict is Verdict.FAILED and not result.concluded
    assert "p99 ratio to stable 1.50 > max 1.25" in result.reason
    assert "per-minute percentiles carry no sample size" in result.reason


def test_the_latency_gate_waits_for_min_requests_on_both_sides():
    candidate = measured(40, 0, [10.0] * 40)
    stable = measured(4000, 0, [10.0] * 4000)

    result = evaluate_gate(latency_gate(), 1, candidate, stable, Analysis())

    assert result.verdict is Verdict.INCONCLUSIVE
    assert "40 of 100 required requests for the candidate" in result.reason


# --- rollouts ------------------------------------------------------------------------------------


class TimelineProvider(FakeProvider):
    """The in-memory provider that also remembers when each traffic and mirror map took
    effect, so its source measures a past window by the weights of that time, as the local
    request log and Azure's metrics do (the plain fake uses today's weights for any window)."""

    def __init__(self, clock: FakeClock):
        super().__init__()
        self.clock = clock
        self.timeline: dict[str, list[tuple[datetime, dict[str, int], dict[str, int]]]] = {}
        self.source = TimelineSource(self)

    def _store(self, endpoint: str, after: LiveEndpoint, *, external: bool = False):
        stored = super()._store(endpoint, after, external=external)
        moments = self.timeline.setdefault(endpoint, [])
        moments.append((self.clock.now(), dict(stored.traffic), dict(stored.mirror)))
        return stored


@dataclass
class TimelineSource(FakeSource):
    def measure(self, endpoint: str, deployment: str, window: Window, *, mirrored: bool):
        if self.fail_next:
            return super().measure(endpoint, deployment, window, mirrored=mirrored)
        moments = self.provider.timeline[endpoint]  # type: ignore[attr-defined]
        share_seconds = 0.0
        for i, (since, traffic, mirror) in enumerate(moments):
            until = moments[i + 1][0] if i + 1 < len(moments) else window.end
            overlap = (min(until, window.end) - max(since, window.start)).total_seconds()
            if overlap > 0:
                share_seconds += overlap * (mirror if mirrored else traffic).get(deployment, 0)
        requests = int(self.requests_per_s * share_seconds / 100)
        rate = self.provider.behaviour.get(deployment, Behaviour()).error_rate
        errors = round(requests * rate)
        return Measurement(requests, errors, errors, {90: 40.0, 99: 80.0} if requests else {})


@pytest.fixture
def world():
    clock = FakeClock()
    provider = TimelineProvider(clock)
    yield provider, clock
    assert provider.violations == []


def start(provider: FakeProvider, clock: FakeClock, gates, **spec) -> tuple[Reconciler, str]:
    """v7 stable, then a reconciler rolling out v8 behind `gates`; returns it and v7's name."""
    first = Reconciler(
        desired_for(manifest(model={"name": "churn", "version": "7"})), provider, clock, "t@h:1"
    )
    first.apply()
    rec = Reconciler(desired_for(manifest(gates=gates, **spec)), provider, clock, "t@h:1")
    return rec, first.desired.name


def minutes(clock: FakeClock, count: float) -> None:
    clock.advance(count * 60)


def test_a_failing_version_is_rolled_back_within_the_first_step_long_before_its_bake(world):
    provider, clock = world
    rec, v7 = start(provider, clock, [ERRORS_GATE])
    provider.behaviour[rec.desired.name] = Behaviour(error_rate=0.05)
    rec.apply()  # create, smoke test, enter the mirror step (bake 10m)

    minutes(clock, 1)
    result = rec.apply()

    assert result.rolled_back
    assert provider.endpoints["churn"].live_traffic() == {v7: 100}
    after = decode(provider.endpoints["churn"].tags)
    assert after.phase is Phase.ROLLED_BACK
    assert "errors-vs-stable: error_rate 0.05 against stable 0" in after.decision
    assert "evidence of a regression" in after.decision


def test_a_good_version_walks_every_step_at_its_bakes_and_is_promoted(world):
    provider, clock = world
    rec, v7 = start(provider, clock, [{**ERRORS_GATE, "min_requests": 50}])
    provider.behaviour[v7] = Behaviour(error_rate=0.01)
    provider.behaviour[rec.desired.name] = Behaviour(error_rate=0.01)
    rec.apply()

    for _ in range(4):
        minutes(clock, 10.5)
        rec.apply()

    after = decode(provider.endpoints["churn"].tags)
    assert after.stable == rec.desired.name and after.phase is Phase.SUCCEEDED
    assert [r.verdict for r in after.steps] == ["passed"] * 4
    assert all(r.ended is not None for r in after.steps)


def test_evidence_from_earlier_steps_fails_a_version_the_current_step_alone_would_not(world):
    provider, clock = world
    rec, v7 = start(provider, clock, [{**ERRORS_GATE, "min_requests": 50}])
    provider.behaviour[v7] = Behaviour(error_rate=0.01)
    provider.behaviour[rec.desired.name] = Behaviour(error_rate=0.02)
    rec.apply()

    minutes(clock, 10.5)
    first = rec.apply()  # the mirror step alone does not settle it: on to 10 %
    assert not first.rolled_back and decode(provider.endpoints["churn"].tags).step == 1

    rolled = None
    for _ in range(20):
        minutes(clock, 0.5)
        result = rec.apply()
        if result.rolled_back:
            rolled = result
            break
    assert rolled is not None
    failure = next(g for g in rolled.plans[0].gates if g.verdict is Verdict.FAILED)
    mirror_copies = 1260  # 10.5 minutes of 20 % mirrored copies at 10 requests/s
    assert failure.requests > mirror_copies, "the verdict counts the mirror step's requests"


def test_promote_early_ends_each_step_once_the_gate_has_ruled_out_a_regression(world):
    provider, clock = world
    rec, v7 = start(provider, clock, [ERRORS_GATE], promote_early=True)
    provider.source.requests_per_s = 2000
    provider.behaviour[v7] = Behaviour(error_rate=0.01)
    provider.behaviour[rec.desired.name] = Behaviour(error_rate=0.01)
    rec.apply()

    reasons = []
    for _ in range(8):
        minutes(clock, 0.5)
        result = rec.apply()
        reasons += [p.summary for p in result.plans]
        if decode(provider.endpoints["churn"].tags).phase is Phase.SUCCEEDED:
            break

    after = decode(provider.endpoints["churn"].tags)
    assert after.stable == rec.desired.name
    assert clock.current - after.rollout_started < timedelta(minutes=5), "bakes are 10m each"
    assert any("concluded passed" in r and "before its bake ended" in r for r in reasons)


def test_without_promote_early_a_concluded_gate_still_waits_for_the_bake(world):
    provider, clock = world
    rec, v7 = start(provider, clock, [ERRORS_GATE])
    provider.source.requests_per_s = 2000
    provider.behaviour[v7] = Behaviour(error_rate=0.01)
    provider.behaviour[rec.desired.name] = Behaviour(error_rate=0.01)
    rec.apply()

    minutes(clock, 2)
    result = rec.apply()

    assert result.final.outcome is Outcome.WAITING and "baking" in result.final.summary
    assert result.final.gates[0].concluded


def test_a_threshold_gate_never_concludes_so_promote_early_changes_nothing(world):
    provider, clock = world
    threshold = {"name": "errs", "metric": "error_rate", "max": 0.05, "min_requests": 50}
    rec, _ = start(provider, clock, [ERRORS_GATE, threshold], promote_early=True)
    provider.source.requests_per_s = 2000
    rec.apply()

    minutes(clock, 2)
    result = rec.apply()

    assert "baking" in result.final.summary
    assert isinstance(rec.desired.rollout.spec.gates[1], ThresholdGate)
