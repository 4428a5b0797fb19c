"""The decision table, tick by tick: a reconciler on an in-memory provider and a fake clock.

Every test also checks, through the fake provider, that no write ever broke an invariant and
that the engine never attempted a write the service would refuse.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from dataclasses import replace
from datetime import timedelta

import pytest

from engine.decide import Command, OperatorError, PlanError, plan_pass
from engine.live import ProvisioningState
from engine.plan import ActionKind, Outcome
from engine.reconcile import Reconciler
from engine.state import Phase, decode
from tests.fakes import Behaviour, FakeClock, FakeProvider, desired_for, manifest


def reconciler(provider: FakeProvider, clock: FakeClock, **spec) -> Reconciler:
    return Reconciler(desired_for(manifest(**spec)), provider, clock, holder="tester@host:1")


def state(provider: FakeProvider, endpoint: str = "churn"):
    return decode(provider.endpoints[endpoint].tags)


@pytest.fixture
def world():
    provider, clock = FakeProvider(), FakeClock()
    yield provider, clock
    assert provider.violations == []


def stable_on_v7(provider: FakeProvider, clock: FakeClock) -> str:
    """Roll out version 7 into an empty endpoint; returns its deployment name."""
    first = reconciler(provider, clock, model={"name": "churn", "version": "7"})
    first.apply()
    return first.desired.name


def assert_rolled_back(result, provider: FakeProvider, stable: str, why: str) -> None:
    """The pass rolled back: all live traffic on `stable`, and the recorded reason says `why`."""
    assert result.rolled_back
    assert provider.endpoints["churn"].live_traffic() == {stable: 100}
    assert why in state(provider).decision


def bake(clock: FakeClock, minutes: float) -> None:
    clock.advance(minutes * 60)


def test_first_rollout_creates_smoke_tests_and_serves_at_100_percent(world):
    provider, clock = world
    rec = reconciler(provider, clock)
    result = rec.apply()
    live = provider.endpoints["churn"]
    assert live.live_traffic() == {rec.desired.name: 100}
    assert state(provider).stable == rec.desired.name
    assert state(provider).phase is Phase.SUCCEEDED
    kinds = [a.kind for p in result.plans for a in p.actions]
    assert kinds[:3] == [
        ActionKind.CREATE_ENDPOINT,
        ActionKind.CREATE_DEPLOYMENT,
        ActionKind.UPDATE_ENDPOINT,
    ]
    assert ActionKind.SMOKE_TEST in kinds
    assert state(provider).lease is None, "the lease is released at the end of the pass"


def test_applying_the_same_manifest_again_writes_nothing(world):
    provider, clock = world
    reconciler(provider, clock).apply()
    writes, revision = provider.writes, provider.endpoints["churn"].revision
    result = reconciler(provider, clock).apply()
    assert result.plans == ()
    assert result.final.outcome is Outcome.CONVERGED
    assert provider.writes == writes
    assert provider.endpoints["churn"].revision == revision
    assert provider.calls.count("create_deployment") == 1


def test_a_good_version_walks_every_step_and_is_promoted(world):
    provider, clock = world
    v7 = stable_on_v7(provider, clock)
    rec = reconciler(provider, clock)
    v8 = rec.desired.name

    rec.apply()
    assert provider.endpoints["churn"].live_traffic() == {v7: 100}
    assert provider.endpoints["churn"].live_mirror() == {v8: 20}
    assert state(provider).step == 0

    seen = []
    for _ in range(4):
        bake(clock, 10.5)
        rec.apply()
        live = provider.endpoints["churn"]
        seen.append((live.live_traffic(), live.live_mirror()))
    assert seen == [
        ({v7: 90, v8: 10}, {}),
        ({v7: 50, v8: 50}, {}),
        ({v8: 100}, {}),
        ({v8: 100}, {}),
    ]
    final = state(provider)
    assert (final.stable, final.previous, final.candidate) == (v8, v7, None)
    assert final.phase is Phase.SUCCEEDED
    assert [r.verdict for r in final.steps] == ["passed"] * 4


def test_the_previous_deployment_is_deleted_only_after_the_cleanup_delay(world):
    provider, clock = world
    v7 = stable_on_v7(provider, clock)
    rec = reconciler(provider, clock, cleanup={"delete_previous_after": "1h"})
    rec.apply()
    for _ in range(4):
        bake(clock, 10.5)
        rec.apply()
    assert v7 in provider.endpoints["churn"].deployments
    bake(clock, 30)
    rec.apply()
    assert v7 in provider.endpoints["churn"].deployments, "kept warm for a fast undo"
    bake(clock, 31)
    rec.apply()
    assert v7 not in provider.endpoints["churn"].deployments
    assert state(provider).previous is None


def test_a_failing_gate_rolls_back_in_one_write_and_keeps_the_candidate(world):
    provider, clock = world
    v7 = stable_on_v7(provider, clock)
    rec = reconciler(provider, clock)
    provider.behaviour[rec.desired.name] = Behaviour(error_rate=0.05)
    rec.apply()
    bake(clock, 3)
    writes = provider.writes
    result = rec.apply()
    assert result.rolled_back
    live = provider.endpoints["churn"]
    assert live.live_traffic() == {v7: 100} and live.live_mirror() == {}
    assert rec.desired.name in live.deployments, "kept for inspection"
    after = state(provider)
    assert after.phase is Phase.ROLLED_BACK
    assert "errs: error_rate 0.05 > max 0.01" in after.decision
    # lease, rollback, release: the rollback itself is a single write
    assert provider.writes - writes == 3


def test_a_rolled_back_version_is_not_retried_by_itself(world):
    """F07."""
    provider, clock = world
    stable_on_v7(provider, clock)
    rec = reconciler(provider, clock)
    provider.behaviour[rec.desired.name] = Behaviour(error_rate=0.2)
    rec.apply()
    bake(clock, 2)
    rec.apply()
    revision = provider.endpoints["churn"].revision
    for _ in range(3):
        bake(clock, 15)
        result = rec.apply()
        assert result.final.outcome is Outcome.FOUND_ROLLED_BACK
        assert "rollout retry" in result.final.summary
    assert provider.endpoints["churn"].revision == revision

    provider.behaviour[rec.desired.name] = Behaviour()
    rec.apply(Command("retry", who="alice"))
    after = state(provider)
    assert after.phase is Phase.PROGRESSING and after.step == 0
    assert [r.index for r in after.steps] == [0], "the gate history starts empty"
    assert "retry by alice" in after.override


def test_split_traffic_without_state_is_refused_naming_both_deployments(world):
    """F01 (a)."""
    provider, clock = world
    provider.create_endpoint("churn")
    provider.add_deployment("churn", "churn-6")
    provider.add_deployment("churn", "churn-7")
    provider.set_live("churn", traffic={"churn-6": 67, "churn-7": 33})
    revision = provider.endpoints["churn"].revision
    with pytest.raises(PlanError, match=r"churn-6 \(67 %\), churn-7 \(33 %\)"):
        reconciler(provider, clock).apply()
    assert provider.endpoints["churn"].revision == revision


def test_a_lone_serving_deployment_is_adopted_as_stable(world):
    provider, clock = world
    provider.create_endpoint("churn")
    provider.add_deployment("churn", "churn-7")
    provider.set_live("churn", traffic={"churn-7": 100})
    rec = reconciler(provider, clock)
    rec.apply()
    after = state(provider)
    assert after.stable == "churn-7"
    assert after.candidate == rec.desired.name
    assert provider.endpoints["churn"].live_mirror() == {rec.desired.name: 20}


@pytest.mark.parametrize("share", list(range(1, 101)))
def test_every_traffic_map_is_integers_summing_to_100_with_the_exact_share(share):
    """F01 (b), for every step percentage."""
    from engine.decide import step_targets
    from engine.spec import TrafficStep

    traffic, mirror = step_targets([TrafficStep(traffic=share)], 0, "churn-7", "churn-8")
    assert sum(traffic.values()) == 100
    assert traffic.get("churn-8") == share
    assert all(isinstance(v, int) and v > 0 for v in traffic.values())
    assert mirror == {}


def test_too_few_requests_is_inconclusive_and_never_advances(world):
    """F03 (b) and F05: a bake running out with an inconclusive gate holds."""
    provider, clock = world
    stable_on_v7(provider, clock)
    rec = reconciler(
        provider,
        clock,
        steps=[{"traffic": 10, "bake": "10m"}, {"traffic": 100, "bake": "10m"}],
    )
    provider.source.requests_per_s = 0.05  # 3 candidate requests in 11 minutes at 10 %
    rec.apply()
    bake(clock, 11)
    result = rec.apply()
    assert result.final.outcome is Outcome.PAUSED
    assert "of 50 required requests" in result.final.summary
    assert "promote or abort" in result.final.summary
    revision = provider.endpoints["churn"].revision
    traffic = provider.endpoints["churn"].live_traffic()
    for _ in range(5):
        bake(clock, 10)
        assert rec.apply().final.outcome is Outcome.PAUSED
    assert provider.endpoints["churn"].revision == revision
    assert provider.endpoints["churn"].live_traffic() == traffic


def test_no_data_fails_the_gate_when_the_manifest_says_so(world):
    """F03 with analysis.no_data: fail."""
    provider, clock = world
    v7 = stable_on_v7(provider, clock)
    rec = reconciler(provider, clock, analysis={"no_data": "fail"})
    provider.source.requests_per_s = 0
    rec.apply()
    bake(clock, 5)
    assert not rec.apply().rolled_back, "an empty window is not a failure during the bake"
    bake(clock, 5.5)
    result = rec.apply()
    assert_rolled_back(result, provider, v7, "no data")


def test_operator_promote_after_an_inconclusive_hold_moves_exactly_one_step(world):
    """F05 and F08 (a)."""
    provider, clock = world
    v7 = stable_on_v7(provider, clock)
    steps = [
        {"traffic": 10, "bake": "10m"},
        {"approval": "manual"},
        {"traffic": 50, "bake": "10m"},
        {"traffic": 100, "bake": "10m"},
    ]
    rec = reconciler(provider, clock, steps=steps)
    v8 = rec.desired.name
    rec.apply()
    bake(clock, 4)  # mid-window
    rec.apply(Command("promote", who="alice"))
    after = state(provider)
    assert after.step == 1
    assert provider.endpoints["churn"].live_traffic() == {v7: 90, v8: 10}
    assert after.step_record(0).verdict == "skipped"
    assert "promote by alice" in after.override
    assert after.phase is Phase.PAUSED

    # (b) at the approval step nothing moves however many reconciles run
    revision = provider.endpoints["churn"].revision
    for _ in range(4):
        bake(clock, 30)
        assert rec.apply().final.outcome is Outcome.PAUSED
    assert provider.endpoints["churn"].revision == revision

    # (c) approval given now: 50/50 and the new window starts now
    approved_at = clock.now()
    rec.apply(Command("promote", who="bob"))
    after = state(provider)
    assert provider.endpoints["churn"].live_traffic() == {v7: 50, v8: 50}
    assert after.step == 2 and after.step_started == approved_at


def test_abort_restores_all_traffic_to_stable(world):
    provider, clock = world
    v7 = stable_on_v7(provider, clock)
    rec = reconciler(provider, clock, steps=[{"traffic": 10, "bake": "10m"}, {"traffic": 100}])
    rec.apply()
    result = rec.apply(Command("abort", who="carol"))
    assert_rolled_back(result, provider, v7, "aborted by carol")


def test_operator_commands_that_do_not_apply_are_refused_with_a_reason(world):
    provider, clock = world
    stable_on_v7(provider, clock)
    with pytest.raises(OperatorError, match="nothing to undo"):
        reconciler(provider, clock, model={"name": "churn", "version": "7"}).apply(
            Command("undo", who="x")
        )
    with pytest.raises(OperatorError, match="nothing to retry"):
        reconciler(provider, clock).apply(Command("retry", who="x"))


def test_drift_is_restored_and_the_step_window_restarts(world):
    """F06."""
    provider, clock = world
    v7 = stable_on_v7(provider, clock)
    rec = reconciler(provider, clock)
    v8 = rec.desired.name
    rec.apply()
    bake(clock, 10.5)
    rec.apply()  # step 2: 90/10
    bake(clock, 6)
    provider.set_live("churn", traffic={v7: 50, v8: 50})
    plans = rec.plan()
    assert "live traffic {" in plans[0].notes[0] and "desired" in plans[0].notes[0]
    restored_at = clock.now()
    rec.apply()
    assert provider.endpoints["churn"].live_traffic() == {v7: 90, v8: 10}
    after = state(provider)
    assert after.step == 1 and after.step_started == restored_at
    bake(clock, 5)
    rec.apply()
    assert state(provider).step == 1, "minutes at the wrong weights do not count"


def test_a_wiped_mirror_is_restored(world):
    provider, clock = world
    stable_on_v7(provider, clock)
    rec = reconciler(provider, clock)
    rec.apply()
    provider.set_live("churn", mirror={})
    rec.apply()
    assert provider.endpoints["churn"].live_mirror() == {rec.desired.name: 20}


def test_a_stale_mirror_is_replaced_in_the_same_write(world):
    """F11 (b): never two mirror targets."""
    provider, clock = world
    v7 = stable_on_v7(provider, clock)
    provider.add_deployment("churn", "churn-6")
    provider.set_live("churn", mirror={"churn-6": 10})
    rec = reconciler(provider, clock, model={"name": "churn", "version": "8"})
    rec.apply()
    assert provider.endpoints["churn"].live_mirror() == {rec.desired.name: 20}
    assert provider.endpoints["churn"].live_traffic() == {v7: 100}


def test_mirror_is_turned_off_in_the_write_that_first_gives_live_traffic(world):
    """F11 (c) and (d)."""
    provider, clock = world
    stable_on_v7(provider, clock)
    rec = reconciler(provider, clock)
    v8 = rec.desired.name
    rec.apply()
    bake(clock, 10.5)
    plans = rec.plan()
    update = next(a for p in plans for a in p.actions if a.kind is ActionKind.UPDATE_ENDPOINT)
    assert update.mirror == ({v8: 20}, {})
    assert update.traffic[1][v8] == 10
    for _ in range(4):
        rec.apply()
        bake(clock, 10.5)
    assert provider.endpoints["churn"].live_mirror() == {}


def test_source_errors_count_in_a_row_and_become_an_error_past_the_limit(world):
    """F04: four failed queries in a row with a limit of three is an error."""
    provider, clock = world
    v7 = stable_on_v7(provider, clock)
    rec = reconciler(provider, clock, analysis={"max_source_errors": 3})
    rec.apply()
    provider.source.fail_next = 4
    for expected in (1, 2, 3):
        bake(clock, 1)
        result = rec.apply()
        assert not result.rolled_back
        assert state(provider).source_errors["errs"] == (expected, expected)
    bake(clock, 1)
    result = rec.apply()
    assert result.rolled_back
    assert provider.endpoints["churn"].live_traffic() == {v7: 100}


def test_source_errors_then_clean_values_pass_and_say_how_many_errors_there_were(world):
    provider, clock = world
    stable_on_v7(provider, clock)
    rec = reconciler(provider, clock, analysis={"max_source_errors": 3})
    rec.apply()
    provider.source.fail_next = 2
    bake(clock, 1)
    rec.apply()
    bake(clock, 1)
    rec.apply()
    bake(clock, 9)
    plans = rec.plan()
    reasons = [g.reason for g in plans[0].gates]
    assert any("2 source errors this step (limit 3 in a row)" in r for r in reasons)
    assert plans[0].gates[0].verdict.value == "passed"


def test_a_new_version_mid_rollout_withdraws_the_old_candidate_first(world):
    """Rule 6."""
    provider, clock = world
    v7 = stable_on_v7(provider, clock)
    rec8 = reconciler(provider, clock)
    rec8.apply()
    bake(clock, 10.5)
    rec8.apply()  # v8 at 10 %
    rec9 = reconciler(provider, clock, model={"name": "churn", "version": "9"})
    rec9.apply()
    live = provider.endpoints["churn"]
    after = state(provider)
    assert after.candidate == rec9.desired.name and after.step == 0
    assert live.live_traffic() == {v7: 100}
    assert live.live_mirror() == {rec9.desired.name: 20}
    assert rec8.desired.name not in live.deployments, "the withdrawn candidate is deleted"


def test_undo_puts_traffic_back_on_previous_and_does_not_roll_forward_again(world):
    provider, clock = world
    v7 = stable_on_v7(provider, clock)
    rec = reconciler(provider, clock)
    rec.apply()
    for _ in range(4):
        bake(clock, 10.5)
        rec.apply()
    rec.apply(Command("undo", who="dave"))
    assert provider.endpoints["churn"].live_traffic() == {v7: 100}
    assert state(provider).stable == v7
    bake(clock, 20)
    assert rec.apply().final.outcome is Outcome.FOUND_ROLLED_BACK


def test_a_candidate_that_fails_to_provision_is_rolled_back(world):
    provider, clock = world
    v7 = stable_on_v7(provider, clock)
    rec = reconciler(provider, clock)
    provider.behaviour[rec.desired.name] = Behaviour(provisions=False)
    result = rec.apply()
    assert result.rolled_back
    assert "failed to provision" in state(provider).decision
    assert provider.endpoints["churn"].live_traffic() == {v7: 100}


def test_a_failed_smoke_test_rolls_back_before_any_traffic(world):
    provider, clock = world
    stable_on_v7(provider, clock)
    rec = reconciler(provider, clock)
    provider.behaviour[rec.desired.name] = Behaviour(smoke_status=500)
    result = rec.apply()
    assert result.rolled_back
    assert "smoke test failed: status 500, expected 200" in state(provider).decision
    assert provider.endpoints["churn"].live_mirror() == {}


def test_the_progress_deadline_counts_as_a_failure(world):
    provider, clock = world
    v7 = stable_on_v7(provider, clock)
    rec = reconciler(provider, clock, progress_deadline="30m")
    provider.source.requests_per_s = 0.01
    rec.apply()
    bake(clock, 11)
    rec.apply()  # inconclusive: paused
    bake(clock, 20)
    result = rec.apply()
    assert_rolled_back(result, provider, v7, "progress deadline of 30m passed")


def test_a_dry_run_gate_is_reported_but_never_acts(world):
    provider, clock = world
    stable_on_v7(provider, clock)
    gates = [
        {"name": "errs", "metric": "error_rate", "max": 0.01, "min_requests": 50},
        {
            "name": "strict",
            "metric": "latency_p90_ms",
            "max": 1,
            "min_requests": 1,
            "dry_run": True,
        },
    ]
    rec = reconciler(provider, clock, gates=gates)
    rec.apply()
    bake(clock, 10.5)
    plans = rec.plan()
    assert [g.verdict.value for g in plans[0].gates] == ["passed", "failed"]
    rec.apply()
    assert state(provider).step == 1


def test_plan_shows_the_whole_pass_and_writes_nothing(world):
    provider, clock = world
    rec = reconciler(provider, clock)
    plans = plan_pass(rec.desired, provider.read_endpoint("churn"), clock.now())
    kinds = [a.kind for p in plans for a in p.actions]
    assert kinds == [
        ActionKind.CREATE_ENDPOINT,
        ActionKind.CREATE_DEPLOYMENT,
        ActionKind.UPDATE_ENDPOINT,
        ActionKind.SMOKE_TEST,
        ActionKind.UPDATE_ENDPOINT,
    ]
    assert provider.endpoints == {}


def test_a_failure_that_cannot_roll_back_is_recorded_as_failed_and_waits_for_a_human(world):
    provider, clock = world
    v7 = stable_on_v7(provider, clock)
    rec = reconciler(provider, clock)
    v8 = rec.desired.name
    rec.apply()
    bake(clock, 10.5)
    rec.apply()  # 90/10
    provider.behaviour[v8] = Behaviour(error_rate=0.3)
    broken = dict(provider.endpoints["churn"].deployments)
    broken[v7] = replace(broken[v7], state=ProvisioningState.FAILED)
    provider.set_live("churn", deployments=broken)
    bake(clock, 2)
    result = rec.apply()
    assert result.rolled_back, "reported like a rollback: exit code 3"
    assert state(provider).phase is Phase.FAILED
    assert "a human is needed" in state(provider).decision
    assert provider.endpoints["churn"].live_traffic() == {v7: 90, v8: 10}, "nothing moved"
    revision = provider.endpoints["churn"].revision
    again = rec.apply()
    assert again.final.outcome is Outcome.FAILED
    assert provider.endpoints["churn"].revision == revision, "later passes write nothing"

    repaired = dict(provider.endpoints["churn"].deployments)
    repaired[v7] = replace(repaired[v7], state=ProvisioningState.SUCCEEDED)
    provider.set_live("churn", deployments=repaired)
    rec.apply(Command("abort", who="erin"))
    assert provider.endpoints["churn"].live_traffic() == {v7: 100}
    assert state(provider).phase is Phase.ROLLED_BACK


def test_after_a_rollback_the_previous_deployment_is_still_cleaned_up_and_undo_works(world):
    provider, clock = world
    v7 = stable_on_v7(provider, clock)
    rec8 = reconciler(provider, clock, cleanup={"delete_previous_after": "1h"})
    rec8.apply()
    for _ in range(4):
        bake(clock, 10.5)
        rec8.apply()
    v8 = rec8.desired.name
    rec9 = reconciler(
        provider,
        clock,
        model={"name": "churn", "version": "9"},
        cleanup={"delete_previous_after": "1h"},
    )
    provider.behaviour[rec9.desired.name] = Behaviour(error_rate=0.5)
    rec9.apply()
    bake(clock, 2)
    assert rec9.apply().rolled_back
    assert state(provider).previous == v7

    rec9.apply(Command("undo", who="frank"))
    live = provider.endpoints["churn"]
    assert live.live_traffic() == {v7: 100}
    after = state(provider)
    assert (after.stable, after.candidate) == (v7, v8)
    bake(clock, 1)
    rec9.apply()
    assert rec9.desired.name not in provider.endpoints["churn"].deployments, "v9 retired"


def test_the_previous_deployment_is_deleted_on_time_even_after_a_rollback(world):
    provider, clock = world
    v7 = stable_on_v7(provider, clock)
    rec8 = reconciler(provider, clock, cleanup={"delete_previous_after": "1h"})
    rec8.apply()
    for _ in range(4):
        bake(clock, 10.5)
        rec8.apply()
    rec9 = reconciler(
        provider,
        clock,
        model={"name": "churn", "version": "9"},
        cleanup={"delete_previous_after": "1h"},
    )
    provider.behaviour[rec9.desired.name] = Behaviour(error_rate=0.5)
    rec9.apply()
    bake(clock, 2)
    rec9.apply()
    bake(clock, 61)
    result = rec9.apply()
    assert v7 not in provider.endpoints["churn"].deployments
    assert result.final.outcome is Outcome.FOUND_ROLLED_BACK
    assert "errs: error_rate 0.5 > max 0.01" in result.final.summary, (
        "the reason outlives later writes"
    )


@pytest.mark.parametrize(
    ("tag", "value"),
    [
        ("step", "banana"),
        ("step-started", "yesterday"),
        ("traffic", "a=b=c"),
        ("phase", "Sideways"),
        ("lease", "someone"),
        ("stable", "not a name!"),
        ("step.0", "passed|never"),
    ],
)
def test_damaged_rollout_tags_stop_the_plan_and_nothing_is_written(world, tag, value):
    provider, clock = world
    stable_on_v7(provider, clock)
    rec = reconciler(provider, clock)
    rec.apply()
    live = provider.endpoints["churn"]
    provider.set_live("churn", tags={**live.tags, f"saferollout.{tag}": value})
    revision = provider.endpoints["churn"].revision
    with pytest.raises(PlanError, match=rf"saferollout\.{re.escape(tag)}="):
        rec.apply()
    assert provider.endpoints["churn"].revision == revision


def test_every_tag_the_engine_writes_reads_back_undamaged(world):
    from engine.state import damaged_tags

    provider, clock = world
    stable_on_v7(provider, clock)
    rec = reconciler(provider, clock)
    rec.apply()
    for _ in range(5):
        assert damaged_tags(provider.endpoints["churn"].tags) == []
        bake(clock, 10.5)
        rec.apply()
    assert damaged_tags(provider.endpoints["churn"].tags) == []


def _lease_tags(provider: FakeProvider, holder: str, clock: FakeClock) -> dict[str, str]:
    from engine.state import format_time

    until = clock.now() + timedelta(minutes=10)
    return {
        **provider.endpoints["churn"].tags,
        "saferollout.lease": f"{holder}@{format_time(until)}",
    }


def test_a_local_lease_left_by_a_killed_process_on_this_machine_is_taken_over(world):
    provider, clock = world
    provider.name = "local"
    stable_on_v7(provider, clock)
    ended = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    holder = f"someone@{socket.gethostname()}:{ended.stdout.strip()}"
    provider.set_live("churn", tags=_lease_tags(provider, holder, clock))
    rec = reconciler(provider, clock)
    rec.apply()
    assert state(provider).candidate == rec.desired.name, "the pass acted"


def test_a_lease_of_a_running_process_or_another_machine_is_respected(world):
    from engine.errors import LeaseHeldError

    provider, clock = world
    provider.name = "local"
    stable_on_v7(provider, clock)
    for holder in (f"someone@{socket.gethostname()}:{os.getpid()}", "someone@elsewhere:1"):
        provider.set_live("churn", tags=_lease_tags(provider, holder, clock))
        with pytest.raises(LeaseHeldError, match=holder):
            reconciler(provider, clock).apply()
