"""The rollout story the reliability tests break, tick by tick on a fake clock.

A story is a list of ticks: advance the clock, then one reconcile pass (a fresh process in real
life: a fresh `Reconciler` with a holder of its own) for a manifest version, perhaps with an
operator command. The phases are the parts of the design that act: the first rollout into an
empty endpoint, a promotion through every kind of step, the cleanup of the previous deployment
and the rollback of a bad version. `outcome` and `trail` reduce a run to what must not depend on
crashes or faults: the end state and the sequence of decisions written to the endpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine.decide import Command, Desired
from engine.errors import LeaseHeldError
from engine.live import EndpointWrite, LiveEndpoint
from engine.reconcile import Reconciler
from engine.state import decode, encode, format_time
from tests.fakes import Behaviour, FakeClock, FakeProvider, desired_for, manifest
from tests.faulty import Checked, Ledger

EP = "churn"
STEPS = [
    {"mirror": 20, "bake": "10m"},
    {"traffic": 10, "bake": "10m"},
    {"approval": "manual"},
    {"traffic": 50, "bake": "10m"},
    {"traffic": 100, "bake": "10m"},
]
GATES = [{"name": "errs", "metric": "error_rate", "max": 0.01, "min_requests": 50}]
BAD = "9"  # the version whose candidate answers 5 % errors


def desired(version: str) -> Desired:
    return desired_for(
        manifest(
            model={"name": "churn", "version": version},
            steps=STEPS,
            gates=GATES,
            cleanup={"delete_previous_after": "30m"},
        )
    )


@dataclass(frozen=True)
class Tick:
    minutes: float = 0.0
    version: str = "8"
    command: str | None = None


FIRST = [Tick(0, "7")]
PROMOTION = [
    Tick(0),  # create v8, smoke-test it, mirror 20 %
    Tick(10.5),  # traffic 10 %
    Tick(10.5),  # the approval step: paused
    Tick(1, command="promote"),  # approved: traffic 50 %
    Tick(10.5),  # traffic 100 %
    Tick(10.5),  # promoted: v8 stable, v7 previous
]
CLEANUP = [Tick(31)]  # v7 deleted 30 minutes after the promotion
ROLLBACK = [Tick(0, BAD), Tick(3, BAD), Tick(10, BAD)]  # gate fails: rolled back, stays so

PHASES: dict[str, tuple[list[Tick], list[Tick]]] = {
    # name: (ticks run before, uninterrupted; ticks under test)
    "first rollout": ([], FIRST),
    "promotion": (FIRST, PROMOTION),
    "cleanup": (FIRST + PROMOTION, CLEANUP),
    "rollback": (FIRST + PROMOTION + CLEANUP, ROLLBACK),
}


@dataclass
class World:
    """One endpoint on the in-memory provider (which enforces Azure's rules), checked."""

    fake: FakeProvider = field(default_factory=FakeProvider)
    clock: FakeClock = field(default_factory=FakeClock)
    ledger: Ledger = field(default_factory=Ledger)
    runs: int = 0

    def __post_init__(self) -> None:
        self.fake.behaviour[desired(BAD).name] = Behaviour(error_rate=0.05)
        self.checked = Checked(self.fake, self.ledger)

    def holder(self) -> str:
        self.runs += 1
        return f"run-{self.runs}@ci:{1000 + self.runs}"

    def reconciler(self, tick: Tick, provider: Any = None) -> Reconciler:
        return Reconciler(
            desired(tick.version), provider or self.checked, self.clock, self.holder()
        )

    def live(self) -> LiveEndpoint:
        return self.fake.read_endpoint(EP)

    def run(self, ticks: list[Tick]) -> None:
        """Each tick: advance the clock and run one pass, uninterrupted."""
        for tick in ticks:
            self.clock.advance(tick.minutes * 60)
            self.reconciler(tick).apply(command(tick))

    def unlock(self, who: str = "oncall") -> None:
        """`rollout unlock`: break a lease left by a run that is gone, and record who did."""
        live = self.live()
        state = decode(live.tags)
        note = f"unlock by {who} at {format_time(self.clock.now())} (lease of {state.lease.holder})"
        write = EndpointWrite(
            live.live_traffic(), live.live_mirror(), encode(_without_lease(state, note))
        )
        self.checked.update_endpoint(EP, write, expected_revision=live.revision)


def _without_lease(state, note: str):
    from dataclasses import replace

    return replace(state, lease=None, override=note)


def command(tick: Tick) -> Command | None:
    return Command(tick.command, who="alice") if tick.command else None  # type: ignore[arg-type]


def resume(world: World, tick: Tick) -> str:
    """After a run died in `tick`: what a person (or the next scheduled run) does at once.

    A fresh run meets the dead run's lease and must write nothing; `rollout unlock` breaks it;
    the operator's command is given again only when `status` shows it did not land. Returns
    what happened, for the test's message.
    """
    revision = world.live().revision if world.live().exists else None
    writes = world.ledger.writes
    landed = bool(tick.command) and f"{tick.command} by alice" in decode(world.live().tags).override
    story = "resumed"
    try:
        world.reconciler(tick).apply(None if landed else command(tick))
        return story
    except LeaseHeldError as held:
        if world.ledger.writes != writes or world.live().revision != revision:
            raise AssertionError("a run that met the lease wrote something") from held
        story = f"met the lease of {held.holder}, unlocked, resumed"
    world.unlock()
    landed = bool(tick.command) and f"{tick.command} by alice" in decode(world.live().tags).override
    world.reconciler(tick).apply(None if landed else command(tick))
    return story


def outcome(live: LiveEndpoint) -> dict[str, Any]:
    """The end state that must not depend on how the run got there."""
    # The lease and the last override name who ran (an unlock after a crash is recorded there);
    # the decision's wording may say how the run got there ("already gone; forget it").
    tags = {
        k: v
        for k, v in live.tags.items()
        if k not in ("saferollout.lease", "saferollout.override", "saferollout.decision")
    }
    return {
        "traffic": live.live_traffic(),
        "mirror": live.live_mirror(),
        "deployments": {n: (d.model_version, d.state.value) for n, d in live.deployments.items()},
        "tags": tags,
    }


def trail(history: list[LiveEndpoint]) -> list[tuple[Any, ...]]:
    """The decisions a run wrote, in order: each distinct (step, traffic, mirror) the endpoint
    went through; lease writes and repeats collapse. (Bookkeeping writes between them, such as
    recording a candidate that a crash left created but unrecorded, may differ.)"""
    seen: list[tuple[Any, ...]] = []
    for live in history:
        state = decode(live.tags)
        key = (
            state.step,
            tuple(sorted(live.live_traffic().items())),
            tuple(sorted(live.live_mirror().items())),
        )
        if not seen or seen[-1] != key:
            seen.append(key)
    return seen


def steps_entered(history: list[LiveEndpoint]) -> list[tuple[str | None, int]]:
    """(candidate, step) each time a write moved the rollout into a step."""
    entered: list[tuple[str | None, int]] = []
    for live in history:
        state = decode(live.tags)
        if state.step is not None and (not entered or entered[-1] != (state.candidate, state.step)):
            entered.append((state.candidate, state.step))
    return entered


def decisions(live: LiveEndpoint) -> dict[str, Any]:
    """The end state without times and figures: what was decided, not when or over how much
    data (retries that back off move the clock, and with it every window)."""
    state = decode(live.tags)
    return {
        "traffic": live.live_traffic(),
        "mirror": live.live_mirror(),
        "deployments": sorted(live.deployments),
        "roles": (state.stable, state.candidate, state.previous),
        "phase": state.phase,
        "step": state.step,
        "verdicts": [(r.index, r.verdict) for r in state.steps],
        "rolled back": state.rolled_back,
        "retired": state.retired,
        "source errors": state.source_errors,
        "digest": state.digest,
    }
