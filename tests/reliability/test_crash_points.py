"""Crash at every point: a run that dies after any provider call loses nothing.

For each phase of the story (first rollout, promotion, rollback, cleanup) and every N from 1 to
the number of provider calls the phase makes, the run dies after call N: no exception handler
and no `finally` reaches the provider again, as with SIGKILL. A fresh run then takes over at
once: it meets the dead run's lease and writes nothing, `rollout unlock` breaks the lease, and
the story goes on. The end state must equal the uninterrupted run's, with the same decisions in
the same order (no step skipped or repeated) and the same step start times (the bake timer
resumes from the recorded start, it does not restart). Invariants are checked after every write.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from engine.decide import Command
from engine.errors import LeaseHeldError
from engine.plan import Outcome
from engine.reconcile import LEASE_TTL, Reconciler
from engine.state import Phase, decode
from tests.fakes import FakeClock, FakeProvider, desired_for, manifest
from tests.faulty import Checked, Crash, Crashing, Ledger
from tests.reliability.story import (
    EP,
    PHASES,
    World,
    outcome,
    resume,
    steps_entered,
    trail,
)

FIGURES = {"crash points": 0}


def reference(phase: str) -> tuple[World, int]:
    """The uninterrupted run of `phase`, and how many provider calls it made."""
    before, ticks = PHASES[phase]
    world = World()
    world.run(before)
    world.ledger.history.clear()
    counter = Crashing(world.checked, None)
    for tick in ticks:
        world.clock.advance(tick.minutes * 60)
        world.reconciler(tick, counter).apply(_command(tick))
    return world, counter.count


def _command(tick):
    return Command(tick.command, who="alice") if tick.command else None


def crashed_run(phase: str, after: int) -> tuple[World, list[str]]:
    before, ticks = PHASES[phase]
    world = World()
    world.run(before)
    world.ledger.history.clear()
    crashing = Crashing(world.checked, after)
    stories = []
    for tick in ticks:
        world.clock.advance(tick.minutes * 60)
        if crashing.crashed_on is not None:
            resume(world, tick)  # the dead run's lease may still be there
            continue
        try:
            world.reconciler(tick, crashing).apply(_command(tick))
        except Crash:
            stories.append(f"died before {crashing.crashed_on}; " + resume(world, tick))
    return world, stories


@pytest.mark.parametrize("phase", list(PHASES))
def test_a_run_killed_after_any_provider_call_ends_where_an_uninterrupted_run_ends(phase):
    expected, calls = reference(phase)
    assert expected.ledger.violations == []
    assert calls > 3

    for after in range(1, calls + 1):
        world, stories = crashed_run(phase, after)
        FIGURES["crash points"] += bool(stories)
        where = f"{phase}, killed after call {after} of {calls}: {stories}"

        assert world.ledger.violations == [], where
        assert outcome(world.live()) == outcome(expected.live()), where
        assert trail(world.ledger.history) == trail(expected.ledger.history), where
        assert steps_entered(world.ledger.history) == steps_entered(expected.ledger.history), where
        lease = decode(world.live().tags).lease
        if lease is not None:  # left by the dead run when the next pass had nothing to write
            assert lease.until <= world.clock.now() + LEASE_TTL, where


def test_every_phase_is_killed_at_every_call_it_makes():
    """The matrix above covers every call: a crash one call past the end changes nothing."""
    for phase in PHASES:
        _, calls = reference(phase)
        world, stories = crashed_run(phase, calls)
        assert stories == [], f"{phase}: the run made more than {calls} calls"


def test_a_fresh_run_meets_the_dead_runs_lease_until_it_expires_and_writes_nothing():
    world = World()
    world.run(PHASES["promotion"][0])
    tick = PHASES["promotion"][1][0]
    crashing = Crashing(world.checked, 6)
    with pytest.raises(Crash):
        world.reconciler(tick, crashing).apply()
    lease = decode(world.live().tags).lease
    assert lease is not None and lease.holder.startswith("run-")

    revision, writes = world.live().revision, world.ledger.writes
    with pytest.raises(LeaseHeldError) as held:
        world.reconciler(tick).apply()
    assert held.value.holder == lease.holder
    assert f"locked by {lease.holder} until " in str(held.value)
    assert (world.live().revision, world.ledger.writes) == (revision, writes)

    world.clock.current = lease.until + timedelta(seconds=1)
    world.reconciler(tick).apply()
    assert decode(world.live().tags).candidate == World().reconciler(tick).desired.name
    assert decode(world.live().tags).lease is None
    assert world.ledger.violations == []


def test_a_restart_mid_bake_keeps_the_time_already_baked():
    """Ten minutes left of a thirty-minute bake stay ten minutes across a crash."""
    fake, clock = FakeProvider(), FakeClock()
    ledger = Ledger()
    checked = Checked(fake, ledger)
    steps = [{"traffic": 10, "bake": "30m"}, {"traffic": 100, "bake": "10m"}]
    v7 = desired_for(manifest(model={"name": "churn", "version": "7"}, steps=steps))
    v8 = desired_for(manifest(steps=steps))
    Reconciler(v7, checked, clock, "first@ci:1").apply()
    Reconciler(v8, checked, clock, "second@ci:2").apply()
    started = decode(fake.endpoints[EP].tags).step_started
    assert decode(fake.endpoints[EP].tags).step == 0

    clock.advance(20 * 60)
    crashing = Crashing(checked, 1)  # dies after reading the endpoint, measuring its gates
    with pytest.raises(Crash):
        Reconciler(v8, crashing, clock, "third@ci:3").apply()

    clock.advance(1)
    plan = Reconciler(v8, checked, clock, "fourth@ci:4").plan()[0]
    assert plan.outcome is Outcome.WAITING
    assert "10m left" in plan.summary or "9m59s left" in plan.summary, plan.summary
    assert plan.wait_seconds == pytest.approx(10 * 60 - 1)

    clock.advance(10 * 60 - 2)
    Reconciler(v8, checked, clock, "fifth@ci:5").apply()
    assert decode(fake.endpoints[EP].tags).step == 0, "one second of the bake is left"
    clock.advance(1)
    Reconciler(v8, checked, clock, "sixth@ci:6").apply()
    state = decode(fake.endpoints[EP].tags)
    assert state.step == 1
    assert state.step_record(0).started == started
    assert state.step_record(0).verdict == "passed"
    assert ledger.violations == []


def test_a_dead_runs_lease_lasts_one_lease_period_from_its_last_write():
    world = World()
    world.run(PHASES["promotion"][0])
    crashing = Crashing(world.checked, 6)
    with pytest.raises(Crash):
        world.reconciler(PHASES["promotion"][1][0], crashing).apply()
    lease = decode(world.live().tags).lease
    assert lease is not None
    assert world.clock.now() < lease.until <= world.clock.now() + LEASE_TTL


def test_a_crash_after_the_rollback_write_is_found_rolled_back_by_the_next_run():
    world = World()
    before, ticks = PHASES["rollback"]
    world.run(before)
    world.run(ticks[:1])
    world.clock.advance(3 * 60)
    # read, gate source, take the lease, the rollback write; then death at the re-read.
    crashing = Crashing(world.checked, 4)
    with pytest.raises(Crash):
        world.reconciler(ticks[1], crashing).apply()
    assert crashing.crashed_on == "read_endpoint"
    assert decode(world.live().tags).phase is Phase.ROLLED_BACK
    world.unlock()
    result = world.reconciler(ticks[1]).apply()
    assert result.final.outcome is Outcome.FOUND_ROLLED_BACK
    assert world.ledger.violations == []
