"""Field cases F04, F06, F07 and F08 as tests, beyond tests/test_rollout_scenarios.py, every
write checked against the invariants. (F09 is tests/reliability/test_one_writer.py and
tests/test_loader.py's endpoint clash; F04's four-errors-in-a-row, F06's traffic restore, F07's
retry and F08 (a) and (b) are in tests/test_rollout_scenarios.py.)
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import timedelta

import pytest

from engine.decide import Command, plan_pass
from engine.errors import SourceError
from engine.loader import load_manifest_text
from engine.plan import Outcome
from engine.providers.base import Measurement, Window
from engine.reconcile import Reconciler, desired_from
from engine.render import render_status, status_data
from engine.state import Phase, decode
from tests.fakes import FakeClock, FakeProvider, desired_for, manifest
from tests.faulty import Checked, Ledger

EP = "churn"
ONE_STEP = [{"traffic": 10, "bake": "10m"}, {"traffic": 100, "bake": "10m"}]


@dataclass
class ScriptedSource:
    """A gate source that answers the candidate's queries from a script, one per pass."""

    answers: list[object]
    name: str = "local"
    ingestion_delay_s: float = 0.0
    per_minute: bool = False
    windows: list[Window] = field(default_factory=list)

    def measure(self, endpoint, deployment, window, *, mirrored):
        self.windows.append(window)
        answer = self.answers.pop(0) if self.answers else Measurement(400, 0, 0, {90: 40.0})
        if isinstance(answer, Exception):
            raise answer
        return answer


@pytest.fixture
def world():
    fake, clock, ledger = FakeProvider(), FakeClock(), Ledger()
    yield fake, Checked(fake, ledger), clock
    assert fake.violations == [] and ledger.violations == []


def stable_v7(provider, clock, **spec) -> str:
    desired = desired_for(manifest(model={"name": "churn", "version": "7"}, **spec))
    Reconciler(desired, provider, clock, "setup@ci:1").apply()
    return desired.name


def reconciler(provider, clock, **spec) -> Reconciler:
    return Reconciler(desired_for(manifest(**spec)), provider, clock, "ops@ci:2")


# -- F04: a gate whose queries failed is never passed -------------------------------------------


def test_f04_a_real_value_after_two_failed_queries_fails_the_gate_at_once(world):
    fake, provider, clock = world
    v7 = stable_v7(provider, clock, steps=ONE_STEP)
    fake.source = ScriptedSource(
        [
            SourceError("HTTP 503 from the metrics service"),
            SourceError("the query timed out"),
            Measurement(requests=400, server_errors=20, non_2xx=20, latency_ms={90: 40.0}),
            SourceError("HTTP 503 from the metrics service"),
        ]
    )
    rec = reconciler(provider, clock, steps=ONE_STEP, analysis={"max_source_errors": 3})
    rec.apply()  # enters the step; its window is empty, so nothing is queried yet
    for expected in (1, 2):
        clock.advance(60)
        assert not rec.apply().rolled_back
        assert decode(fake.endpoints[EP].tags).source_errors["errs"] == (expected, expected)

    clock.advance(60)
    result = rec.apply()

    assert result.rolled_back, "0.05 > 0.01 over 400 requests fails at once, mid-bake"
    state = decode(fake.endpoints[EP].tags)
    assert "error_rate 0.05 > max 0.01 over 400 requests" in state.decision
    assert fake.endpoints[EP].live_traffic() == {v7: 100}
    assert fake.source.answers, "the fourth answer was never needed"


def test_f04_a_gate_that_never_measured_is_not_passed_whatever_ends_its_step(world):
    fake, provider, clock = world
    stable_v7(provider, clock, steps=ONE_STEP)
    fake.source = ScriptedSource([SourceError("HTTP 503")] * 50)
    rec = reconciler(provider, clock, steps=ONE_STEP, analysis={"max_source_errors": 40})
    rec.apply()
    for _ in range(12):  # past the bake: every query failed, fewer than the limit in a row
        clock.advance(60)
        result = rec.apply()
    state = decode(fake.endpoints[EP].tags)
    assert state.step == 0, "the bake ran out and the step did not advance"
    assert result.final.outcome in (Outcome.PAUSED, Outcome.WAITING)
    assert [g.verdict.value for g in result.final.gates] != ["passed"]

    rec.apply(Command("promote", who="alice"))  # an operator ends the step instead
    assert decode(fake.endpoints[EP].tags).step_record(0).verdict == "skipped"


# -- F06: out-of-band edits of traffic, mirror and tags -----------------------------------------


def in_mirror_step(provider, clock):
    v7 = stable_v7(provider, clock)
    rec = reconciler(provider, clock)
    rec.apply()
    return v7, rec


def test_f06_a_wiped_mirror_is_reported_restored_and_its_window_restarts(world):
    fake, provider, clock = world
    _, rec = in_mirror_step(fake, clock)
    rec.provider = provider
    clock.advance(6 * 60)
    fake.set_live(EP, mirror={})

    plans = rec.plan()
    assert any("mirror {}, desired {" in note for note in plans[0].notes)
    restored_at = clock.now()
    rec.apply()

    state = decode(fake.endpoints[EP].tags)
    assert fake.endpoints[EP].live_mirror() == {rec.desired.name: 20}
    assert state.step == 0 and state.step_started == restored_at
    clock.advance(5 * 60)
    rec.apply()
    assert decode(fake.endpoints[EP].tags).step == 0, "minutes without the mirror do not count"


def test_f06_status_reports_traffic_drift_in_the_manifests_terms(world):
    fake, provider, clock = world
    v7, rec = in_mirror_step(provider, clock)
    clock.advance(10.5 * 60)
    rec.apply()  # step 2: 90/10
    fake.set_live(EP, traffic={v7: 50, rec.desired.name: 50})

    live = fake.read_endpoint(EP)
    data = status_data(rec.desired, live, plan_pass(rec.desired, live, clock.now())[0], clock.now())
    text = render_status(data)

    assert f"live traffic {{{v7}: 50, {rec.desired.name}: 50}}" in text
    assert f"desired {{{v7}: 90, {rec.desired.name}: 10}}" in text


def test_f06_tags_edited_out_of_band_are_reported_and_rewritten_to_describe_the_endpoint(world):
    fake, provider, clock = world
    v7, rec = in_mirror_step(provider, clock)
    rec.provider = provider
    before = fake.endpoints[EP]
    v8 = rec.desired.name
    forged = {**before.tags, "saferollout.traffic": f"{v7}=50,{v8}=50", "saferollout.mirror": ""}
    fake.set_live(EP, tags=forged)

    plans = rec.plan()
    assert plans[0].actions and "the rollout tags record traffic" in plans[0].summary
    rec.apply()

    after = fake.endpoints[EP]
    state = decode(after.tags)
    assert (state.traffic, state.mirror) == (after.live_traffic(), after.live_mirror())
    assert after.live_traffic() == before.live_traffic() == {v7: 100}
    assert after.live_mirror() == before.live_mirror() == {v8: 20}
    assert state.step_started == decode(before.tags).step_started, "no traffic moved"
    assert state.decision == decode(before.tags).decision
    assert rec.plan()[0].actions == (), "repaired once"


# -- F07: a rolled-back version is not retried by itself, however it is re-committed -----------

MANIFEST = """\
apiVersion: saferollout/v1
kind: ModelRollout
metadata:
  name: churn
spec:
  target:
    provider: local
    endpoint: churn
  model:
    name: churn
    version: "8"
  steps:
    - traffic: 10
      bake: 10m
    - traffic: 100
      bake: 10m
  gates:
    - name: errs
      metric: error_rate
      max: 0.01
      min_requests: 50
"""
REFORMATTED = """\
# re-committed: same meaning, other layout
kind: ModelRollout
apiVersion: "saferollout/v1"
metadata: {name: churn}
spec:
  gates: [{name: errs, metric: error_rate, max: 1.0e-2, min_requests: 50}]
  model: {version: '8', name: churn}
  target: {endpoint: churn, provider: local}
  steps:
  - {traffic: 10, bake: 600s}
  - {traffic: 100, bake: 10m}
"""


def test_f07_a_rolled_back_version_recommitted_reformatted_changes_nothing_and_says_why(world):
    fake, provider, clock = world
    stable_v7(provider, clock)
    # The fake provider answers every smoke test itself: any readable file is a request body.
    original = replace(
        desired_from(load_manifest_text(MANIFEST, "churn.yaml")), smoke_request=__file__
    )
    reformatted = replace(
        desired_from(load_manifest_text(REFORMATTED, "churn.yaml")), smoke_request=__file__
    )
    assert reformatted.name == original.name
    assert reformatted.rollout.digest() == original.rollout.digest()

    from tests.fakes import Behaviour

    fake.behaviour[original.name] = Behaviour(error_rate=0.2)
    Reconciler(original, provider, clock, "ci@run:1").apply()
    clock.advance(120)
    Reconciler(original, provider, clock, "ci@run:2").apply()
    assert decode(fake.endpoints[EP].tags).phase is Phase.ROLLED_BACK
    revision = fake.endpoints[EP].revision

    for desired in (original, reformatted, reformatted):
        clock.advance(15 * 60)
        result = Reconciler(desired, provider, clock, "ci@run:3").apply()
        assert result.final.outcome is Outcome.FOUND_ROLLED_BACK
        assert "rollout retry" in result.final.summary and "error_rate" in result.final.summary
    assert fake.endpoints[EP].revision == revision


# -- F08 (c): approval starts the next window afresh ---------------------------------------------


def test_f08_approval_at_10_40_moves_to_50_50_and_the_new_window_starts_at_10_40(world):
    fake, provider, clock = world
    steps = [
        {"traffic": 10, "bake": "10m"},
        {"approval": "manual"},
        {"traffic": 50, "bake": "10m"},
        {"traffic": 100, "bake": "10m"},
    ]
    v7 = stable_v7(provider, clock, steps=steps)
    rec = reconciler(provider, clock, steps=steps, analysis={"max_source_errors": 3})
    v8 = rec.desired.name
    rec.apply()
    clock.advance(10.5 * 60)
    rec.apply()  # the approval step: paused
    assert decode(fake.endpoints[EP].tags).phase is Phase.PAUSED
    fake.source.fail_next = 2  # two failed queries while waiting
    for _ in range(2):
        clock.advance(60)
        rec.apply()
    assert decode(fake.endpoints[EP].tags).source_errors.get("errs") == (2, 2)

    clock.current = clock.current.replace(hour=10, minute=40, second=0)
    approved = clock.now()
    rec.apply(Command("promote", who="carol"))
    state = decode(fake.endpoints[EP].tags)
    assert fake.endpoints[EP].live_traffic() == {v7: 50, v8: 50}
    assert state.step == 2 and state.step_started == approved
    assert state.source_errors == {}, "nothing carried over from the approval wait"
    assert state.step_record(2).started == approved

    source = ScriptedSource([])
    fake.source = source
    clock.advance(5 * 60)
    rec.apply()
    assert source.windows and source.windows[0].start == approved
    assert source.windows[0].end - source.windows[0].start == timedelta(minutes=5)
