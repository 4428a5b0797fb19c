"""The reliability soak: the suite's crash, fault and mutation tests at a larger scale.

    .venv/bin/python -m benchmarks.soak                  # 1,000 seeded rollouts, ~3 minutes
    .venv/bin/python -m benchmarks.soak --seeds 100      # a quicker look

It runs, on the in-memory provider that enforces Azure's rules (every write checked against
the design's invariants by `tests.faulty.Checked`):

1. the crash matrix: every phase of the story killed after every provider call it makes,
   once plainly and once with transient faults injected into the run that takes over;
2. `--seeds` rollouts of the whole story with a transient fault in 20 % of provider calls;
3. a permanent fault at every call of every phase;
4. `--mutations` seeded mutations of a valid manifest, each loaded under a time bound.

and prints the figures docs/reliability.md quotes, as a Markdown table. It exits 1 on the first
run whose end state or decisions differ from the run without faults, or on any violation.
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "reliability"))

from engine.errors import ManifestError, PermanentError  # noqa: E402
from engine.loader import load_manifest_text  # noqa: E402
from tests.faulty import Crash, Crashing, Faulty, PermanentFault  # noqa: E402
from tests.reliability.story import (  # noqa: E402
    PHASES,
    World,
    command,
    decisions,
    outcome,
    resume,
    trail,
)


class Failed(Exception):
    pass


def check(condition: bool, what: str) -> None:
    if not condition:
        raise Failed(what)


def crash_matrix(figures: Counter, *, with_faults: bool, seed: int) -> None:
    from test_crash_points import reference

    for phase, (before, ticks) in PHASES.items():
        reference_world, calls = reference(phase)
        for after in range(1, calls + 1):
            expected = reference_world
            world = World()
            world.run(before)
            world.ledger.history.clear()
            crashing = Crashing(world.checked, after)
            for tick in ticks:
                world.clock.advance(tick.minutes * 60)
                if crashing.crashed_on is None:
                    try:
                        world.reconciler(tick, crashing).apply(command(tick))
                        continue
                    except Crash:
                        figures["crash points tried"] += 1
                if with_faults:
                    faulty = Faulty(world.checked, seed + after, clock=world.clock)
                    _until_done(world, tick, faulty, figures)
                    figures["faults injected"] += len(faulty.events)
                else:
                    resume(world, tick)
            if with_faults:  # a lagging read may leave the run a tick behind: let it settle
                settle = type(ticks[-1])(31, ticks[-1].version)
                expected = World()
                expected.run(before)
                expected.ledger.history.clear()
                expected.run(ticks + [settle])
                world.clock.advance(settle.minutes * 60)
                _until_done(world, settle, world.checked, figures)
            figures["rollouts run"] += 1
            where = f"{phase}, killed after call {after}, faults {with_faults}"
            check(world.ledger.violations == [], f"{where}: {world.ledger.violations}")
            same = decisions if with_faults else outcome
            check(same(world.live()) == same(expected.live()), f"{where}: end state differs")
            check(trail(world.ledger.history) == trail(expected.ledger.history), where)


def _until_done(world: World, tick, provider, figures: Counter) -> None:
    """The runs after a crash, on a faulty provider: each stops or finishes; the dead run's
    lease is broken by `rollout unlock` when one is met."""
    from engine.decide import Command  # noqa: F401  (the command is re-given below)
    from engine.errors import LeaseHeldError, ProviderError
    from engine.state import decode

    pending = command(tick)
    for _ in range(10):
        if pending and f"{pending.kind} by alice" in decode(world.live().tags).override:
            pending = None
        try:
            world.reconciler(tick, provider).apply(pending)
            return
        except LeaseHeldError:
            figures["passes stopped"] += 1
            if decode(world.live().tags).lease is not None:
                world.unlock()
        except ProviderError:
            figures["passes stopped"] += 1
    raise Failed(f"ten passes in a row stopped at {tick}")


def fault_soak(figures: Counter, seeds: int) -> None:
    from test_provider_faults import assert_backoff_is_bounded, run_story

    baseline = run_story(None)
    for seed in range(seeds):
        run = run_story(seed)
        figures["rollouts run"] += 1
        figures["faults injected"] += len(run.faulty.events)
        figures["passes stopped"] += len(run.stopped)
        for event in run.faulty.events:
            figures[f"  {event.kind}"] += 1
        where = f"seed {seed}"
        check(run.world.ledger.violations == [], f"{where}: {run.world.ledger.violations}")
        check(decisions(run.world.live()) == decisions(baseline.world.live()), where)
        check(trail(run.world.ledger.history) == trail(baseline.world.ledger.history), where)
        assert_backoff_is_bounded(run, where)


def permanent_faults(figures: Counter) -> None:
    for phase, (before, ticks) in PHASES.items():
        expected = World()
        expected.run(before + ticks)
        at = 1
        while True:
            world = World()
            world.run(before)
            failing = PermanentFault(world.checked, at=at)
            for tick in ticks:
                world.clock.advance(tick.minutes * 60)
                try:
                    world.reconciler(tick, failing).apply(command(tick))
                except PermanentError:
                    _until_done(world, tick, world.checked, figures)
                except Exception:
                    world.unlock()
                    _until_done(world, tick, world.checked, figures)
            if failing.failed is None:
                break
            figures["permanent faults injected"] += 1
            figures["rollouts run"] += 1
            check(world.ledger.violations == [], f"{phase} at {at}: {world.ledger.violations}")
            check(outcome(world.live()) == outcome(expected.live()), f"{phase} at {at}")
            at += 1


def mutations(figures: Counter, count: int, seed: int) -> None:
    from test_hostile_manifests import _PATHS, _mutated

    rng = random.Random(seed)
    tokens = ["yes", "no", "~", "1.10", "0x1F", "-5", "150", "25%", "[]", "{}", "*a", "&a x",
              "!!python/object:os.system x", "[1, 2", "{x: 1}", "x" * 500, "'", "|"]  # fmt: skip
    for _ in range(count):
        path = rng.choice(_PATHS)
        value = ("raw", rng.choice(tokens)) if rng.random() < 0.6 else ("value", rng.random())
        text = _mutated(path, value)
        started = time.process_time()
        try:
            load_manifest_text(text, "m.yaml")
        except ManifestError as error:
            check(not any("internal error" in p.message for p in error.problems), text)
        check(time.process_time() - started < 5, f"slow: {path} {value}")
        figures["manifests tried"] += 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak")
    parser.add_argument("--seeds", type=int, default=1000, help="rollouts with 20 %% faults")
    parser.add_argument("--mutations", type=int, default=10000, help="mutated manifests")
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)  # retries log a warning each; the figures say enough
    figures: Counter = Counter()
    started = time.monotonic()
    try:
        crash_matrix(figures, with_faults=False, seed=0)
        crash_matrix(figures, with_faults=True, seed=10_000)
        fault_soak(figures, args.seeds)
        permanent_faults(figures)
        mutations(figures, args.mutations, seed=1)
    except Failed as failure:
        print(f"FAILED: {failure}", file=sys.stderr)
        return 1
    figures["violations found"] = 0
    print("| figure | count |\n| --- | ---: |")
    for name in sorted(figures, key=lambda n: (n.startswith("  "), n)):
        print(f"| {name} | {figures[name]:,} |")
    print(f"\n{time.monotonic() - started:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
