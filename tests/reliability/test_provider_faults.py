"""Provider faults: transient ones change nothing but the time taken; permanent ones stop a pass
cleanly, and the next pass continues.

Every seeded rollout runs the whole story (first rollout, promotion through every kind of step,
cleanup, a bad version rolled back) with a transient fault injected into 20 % of provider calls:
throttling with Retry-After, 503, timeouts, writes whose response is lost and reads that miss the
last write. Each must end in the same state, after the same decisions, as the run without faults;
every retry waits at least what the service asked (capped) and no call is tried more than
RETRY_ATTEMPTS times in a row. A pass that still fails is followed by the next scheduled pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from engine.errors import LeaseHeldError, PermanentError, ProviderError, TransientError
from engine.reconcile import RETRY_ATTEMPTS, RETRY_CAP_S
from engine.state import decode
from tests.fakes import FakeClock
from tests.faulty import FAULT_KINDS, Faulty, PermanentFault, Scripted
from tests.reliability.story import (
    BAD,
    PHASES,
    Tick,
    World,
    command,
    decisions,
    outcome,
    steps_entered,
    trail,
)

SEEDS = range(60)
# The whole story, then a quiet half hour: a read that lags behind the last write can make a
# pass believe it is still waiting (the next pass corrects it), so a run with faults may be a
# tick behind when the story ends; the quiet tick lets what is due happen in both runs.
STORY = [tick for _, ticks in PHASES.values() for tick in ticks] + [Tick(31, BAD)]
FIGURES = {"rollouts": 0, "faults": 0, "passes stopped": 0, "permanent faults": 0}


class SleepingClock(FakeClock):
    """A fake clock that remembers every sleep."""

    def __init__(self) -> None:
        super().__init__()
        self.slept: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        super().sleep(seconds)


@dataclass
class Run:
    world: World
    faulty: Faulty | None
    passes: list[tuple[int, int]] = field(default_factory=list)  # attempts made in each pass
    stopped: list[str] = field(default_factory=list)


def run_story(seed: int | None, rate: float = 0.2, kinds=FAULT_KINDS) -> Run:
    world = World(clock=SleepingClock())
    faulty = None
    if seed is not None:
        faulty = Faulty(world.checked, seed, clock=world.clock, rate=rate, kinds=kinds)
    run = Run(world, faulty)
    for tick in STORY:
        world.clock.advance(tick.minutes * 60)
        one_tick(run, tick)
    return run


def one_tick(run: Run, tick: Tick) -> None:
    """One scheduled pass; when it stops on a fault, the next scheduled pass follows (at once
    here, so that the timeline matches the run without faults)."""
    world, provider = run.world, run.faulty or run.world.checked
    pending = command(tick)
    for _ in range(5):
        first = len(run.faulty.attempts) if run.faulty else 0
        try:
            world.reconciler(tick, provider).apply(pending)
            return
        except LeaseHeldError as held:
            # Left by a pass whose release met a fault too, or seen on a read that lagged
            # behind the release: either way this pass wrote nothing.
            run.stopped.append(str(held))
            if decode(world.live().tags).lease is not None:
                world.unlock()
        except ProviderError as error:
            run.stopped.append(str(error))
        finally:
            if run.faulty:
                run.passes.append((first, len(run.faulty.attempts)))
        if pending and f"{pending.kind} by alice" in decode(world.live().tags).override:
            pending = None  # the command landed before the pass stopped
    raise AssertionError(f"five passes in a row stopped: {run.stopped[-5:]}")


@pytest.fixture(scope="module")
def baseline() -> Run:
    run = run_story(None)
    assert run.world.ledger.violations == []
    assert run.stopped == []
    return run


@pytest.mark.parametrize("seeds", [SEEDS[i::4] for i in range(4)], ids=lambda s: f"seeds{s[0]}+")
def test_transient_faults_in_a_fifth_of_the_calls_change_no_decision(baseline, seeds):
    for seed in seeds:
        run = run_story(seed)
        FIGURES["rollouts"] += 1
        FIGURES["faults"] += len(run.faulty.events)
        FIGURES["passes stopped"] += len(run.stopped)
        where = f"seed {seed}: {len(run.faulty.events)} faults, passes stopped: {run.stopped}"

        assert run.world.ledger.violations == [], where
        assert run.faulty.events, where
        assert decisions(run.world.live()) == decisions(baseline.world.live()), where
        assert trail(run.world.ledger.history) == trail(baseline.world.ledger.history), where
        assert steps_entered(run.world.ledger.history) == steps_entered(
            baseline.world.ledger.history
        ), where
        assert_backoff_is_bounded(run, where)


def assert_backoff_is_bounded(run: Run, where: str) -> None:
    assert all(0 < s <= RETRY_CAP_S for s in run.world.clock.slept), where
    attempts = run.faulty.attempts
    for first, end in run.passes:
        in_row = 1
        for previous, current in zip(attempts[first:end], attempts[first + 1 : end], strict=False):
            in_row = in_row + 1 if previous[0] == current[0] == "update_endpoint" else 1
            assert in_row <= RETRY_ATTEMPTS + 1, where
    # Each fault's call is tried again no sooner than the service asked (capped).
    for event in run.faulty.events:
        if event.kind == "stale-read":
            continue
        pass_end = next(end for first, end in run.passes if attempts[first][1] <= event.at)
        later = [
            at
            for operation, at in attempts[:pass_end]
            if operation == event.operation and at > event.at
        ]
        if later:
            waited = (min(later) - event.at).total_seconds()
            assert waited >= min(event.retry_after, RETRY_CAP_S), (where, event)


@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_each_kind_of_fault_alone_at_a_high_rate_changes_no_decision(baseline, kind):
    for seed in range(5):
        run = run_story(1000 + seed, rate=0.35, kinds=(kind,))
        FIGURES["rollouts"] += 1
        FIGURES["faults"] += len(run.faulty.events)
        where = f"{kind}, seed {seed}: passes stopped: {run.stopped}"
        assert run.world.ledger.violations == [], where
        assert decisions(run.world.live()) == decisions(baseline.world.live()), where
        assert trail(run.world.ledger.history) == trail(baseline.world.ledger.history), where


def test_a_fault_that_never_clears_stops_the_pass_after_bounded_retries():
    world = World(clock=SleepingClock())
    faulty = Faulty(world.checked, 7, clock=world.clock, rate=1.0, kinds=("unavailable",))
    with pytest.raises(TransientError, match="503"):
        world.reconciler(STORY[0], faulty).apply()
    assert len(faulty.attempts) == RETRY_ATTEMPTS
    assert sum(world.clock.slept) <= RETRY_CAP_S * (RETRY_ATTEMPTS - 1)
    assert not world.live().exists


@pytest.mark.parametrize("phase", list(PHASES))
def test_a_permanent_fault_at_any_call_stops_the_pass_with_a_clear_message_and_the_next_continues(
    phase,
):
    before, ticks = PHASES[phase]
    expected = World()
    expected.run(before + ticks)
    probe = World()
    probe.run(before)
    counting = PermanentFault(probe.checked, at=10**6)
    for tick in ticks:
        probe.clock.advance(tick.minutes * 60)
        probe.reconciler(tick, counting).apply(command(tick))

    for at in range(1, counting.count + 1):
        world = World()
        world.run(before)
        failing = PermanentFault(world.checked, at=at)
        messages = []
        for tick in ticks:
            world.clock.advance(tick.minutes * 60)
            try:
                world.reconciler(tick, failing).apply(command(tick))
            except LeaseHeldError:
                # The fault hit the release of the lease at the end of the previous pass: the
                # lease stays until it expires or someone runs `rollout unlock`.
                assert failing.failed in ("read_endpoint", "update_endpoint")
                world.unlock()
                world.reconciler(tick).apply(_pending(world, tick))
            except PermanentError as error:
                messages.append(str(error))
                assert "endpoint churn" in str(error) and "AuthorizationFailed" in str(error)
                assert decode(world.live().tags).lease is None, "released before stopping"
                # The next scheduled pass, once the role is back.
                world.reconciler(tick).apply(_pending(world, tick))
        FIGURES["permanent faults"] += 1
        where = f"{phase}, permanent fault at call {at} ({failing.failed}): {messages}"
        assert failing.failed is not None, where
        assert world.ledger.violations == [], where
        assert outcome(world.live()) == outcome(expected.live()), where


def _pending(world: World, tick: Tick):
    pending = command(tick)
    if pending and f"{pending.kind} by alice" in decode(world.live().tags).override:
        return None
    return pending


# -- reads that lag behind writes, one exact sequence at a time --------------------------------


def started_rollout() -> World:
    """v7 stable, v8 in its mirror step; the last write was the release of the lease."""
    world = World()
    world.run(PHASES["promotion"][0] + PHASES["promotion"][1][:1])
    return world


def test_a_lease_seen_on_a_read_that_lags_behind_its_release_does_not_stop_the_pass():
    world = started_rollout()
    released = world.live()
    world.clock.advance(60)
    lagging = Scripted(world.checked, {("read_endpoint", 1): "stale-read"})
    lagging.stale = _with_lease_of(released, "run-2@ci:1002", world.clock.now())

    world.reconciler(Tick(version="8", command="abort"), lagging).apply(
        command(Tick(command="abort"))
    )

    assert decode(world.live().tags).phase.value == "RolledBack"
    assert world.ledger.violations == []


def test_a_plan_made_from_a_read_that_missed_an_edit_is_made_again_not_refused_as_locked():
    world = started_rollout()
    stale = world.live()
    v7, v8 = decode(stale.tags).stable, decode(stale.tags).candidate
    world.fake.set_live("churn", mirror={})  # someone wiped the mirror in the portal
    world.clock.advance(60)
    lagging = Scripted(world.checked, {("read_endpoint", 1): "stale-read"}, stale=stale)

    world.reconciler(Tick(command="abort"), lagging).apply(command(Tick(command="abort")))

    after = world.live()
    assert after.live_traffic() == {v7: 100} and after.live_mirror() == {}
    assert decode(after.tags).phase.value == "RolledBack"
    assert v8 in decode(after.tags).rolled_back
    assert world.ledger.violations == []


def test_a_write_whose_answer_was_lost_and_whose_re_read_lagged_is_recognised_as_landed():
    world = started_rollout()
    world.clock.advance(10.5 * 60)
    # The lease write goes through; the step write lands but its answer is lost, and the read
    # that follows still shows the endpoint before it.
    lagging = Scripted(
        world.checked, {("update_endpoint", 2): "lost-response", ("read_endpoint", 2): "stale-read"}
    )

    world.reconciler(Tick(), lagging).apply()

    assert [fault for *_, fault in lagging.done] == ["lost-response", "stale-read"]
    assert decode(world.live().tags).step == 1
    assert decode(world.live().tags).lease is None
    assert world.ledger.violations == []


def test_a_transient_fault_while_waiting_for_a_deployment_is_retried_within_the_pass():
    world = World()
    flaky = Scripted(world.checked, {("wait_for_deployment", 1): "unavailable"})

    world.reconciler(Tick(version="7"), flaky).apply()

    assert flaky.done == [("wait_for_deployment", 1, "unavailable")]
    assert decode(world.live().tags).phase.value == "Succeeded"


def _with_lease_of(live, holder: str, now):
    from dataclasses import replace as copy

    from engine.reconcile import LEASE_TTL
    from engine.state import Lease, encode

    state = copy(decode(live.tags), lease=Lease(holder, now + LEASE_TTL))
    other = {k: v for k, v in live.tags.items() if not k.startswith("saferollout.")}
    return copy(live, tags={**other, **encode(state)})


def test_a_read_after_a_delete_that_lags_behind_it_does_not_stop_the_cleanup():
    world = World()
    world.run(PHASES["cleanup"][0])
    world.clock.advance(31 * 60)
    previous = decode(world.live().tags).previous
    # The pass reads, takes the lease, reads again, deletes the previous deployment, and the
    # read after the delete still shows it: the write that forgets it is based on that read.
    lagging = Scripted(world.checked, {("read_endpoint", 3): "stale-read"})

    world.reconciler(Tick(), lagging).apply()

    assert ("read_endpoint", 3, "stale-read") in lagging.done
    state = decode(world.live().tags)
    assert previous not in world.live().deployments and state.previous is None
    assert state.lease is None
    assert world.ledger.violations == []


def test_an_operator_command_whose_write_conflicts_is_not_given_again_by_itself():
    world = World()
    world.run(PHASES["promotion"][0] + PHASES["promotion"][1][:3])  # waiting for approval
    # The lease write goes through; the promote write meets an edit made meanwhile.
    step = decode(world.live().tags).step

    class EditBeforeSecondWrite:
        def __init__(self, inner):
            self.inner, self.name, self.writes = inner, inner.name, 0

        def update_endpoint(self, endpoint, write, *, expected_revision):
            self.writes += 1
            if self.writes == 2:
                world.fake.set_live(endpoint, tags=dict(world.fake.endpoints[endpoint].tags))
            return self.inner.update_endpoint(endpoint, write, expected_revision=expected_revision)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    with pytest.raises(PermanentError, match="changed"):
        world.reconciler(Tick(command="promote"), EditBeforeSecondWrite(world.checked)).apply(
            command(Tick(command="promote"))
        )
    assert decode(world.live().tags).step == step, "the operator decides whether to promote again"
    assert world.ledger.violations == []
