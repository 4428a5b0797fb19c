"""One writer per endpoint (field case F09) on the local backend: threads and processes.

Two runs that read the endpoint at the same moment both decide to act; the lease in the
endpoint's tags plus the store's revision check let exactly one of them act. The other exits
non-zero with "locked by HOLDER until TIME" and writes nothing. A holder that stalls past its
lease's expiry cannot write when it wakes up, even on a provider without compare-and-swap.
`rollout unlock` breaks a stuck lease and records who did.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from engine.errors import ConflictError, LeaseHeldError, SafeRolloutError
from engine.live import EndpointWrite
from engine.loader import load_manifest
from engine.providers.local.provider import LocalProvider
from engine.reconcile import LEASE_TTL, LeaseLostError, Reconciler, desired_from
from engine.state import Lease, decode, encode
from tests.fakes import FakeClock
from tests.faulty import Checked, Ledger
from tests.reliability.local_project import (
    ENDPOINT,
    finish,
    project,
    rollout,
    rollout_process,
)

pytestmark = pytest.mark.slow
FIGURES = {"races": 0}
THREAD_RACES = 8


@pytest.fixture
def served(local_server, toy_model, tmp_path) -> tuple[LocalProvider, Path]:
    """Toy version 1 stable on the endpoint (rolled out by a real `rollout apply`)."""
    toy_model("toy")
    manifest = project(tmp_path, "1")
    done = rollout("apply", str(manifest), home=local_server.home, ledger=tmp_path / "l.json")
    assert done.code == 0, done.stderr
    assert done.ledger["violations"] == []
    return local_server, manifest


def drift(provider: LocalProvider) -> str:
    """Someone takes all live traffic off the endpoint in the portal; returns the revision."""
    live = provider.read_endpoint(ENDPOINT)
    state_tags = {k: v for k, v in live.tags.items() if k.startswith("saferollout.")}
    write = EndpointWrite({}, {}, state_tags)
    return provider.update_endpoint(ENDPOINT, write, expected_revision=live.revision).revision


class ReadTogether:
    """Holds each run after its first read until the other has read too. A run that takes the
    lease then works for a moment, as a real pass does (creating, waiting, smoke-testing)."""

    def __init__(self, inner, barrier: threading.Barrier):
        self.inner, self.barrier, self.name, self.waited = inner, barrier, inner.name, False

    def read_endpoint(self, endpoint):
        live = self.inner.read_endpoint(endpoint)
        if not self.waited:
            self.waited = True
            self.barrier.wait(timeout=30)
        return live

    def update_endpoint(self, endpoint, write, *, expected_revision):
        after = self.inner.update_endpoint(endpoint, write, expected_revision=expected_revision)
        time.sleep(0.1)
        return after

    def __getattr__(self, name):
        return getattr(self.inner, name)


def race_threads(provider: LocalProvider, desired) -> tuple[list[Ledger], list[object]]:
    """Two runs in threads of this process, each on a provider of its own, reading at once."""
    barrier = threading.Barrier(2)
    ledgers = [Ledger(), Ledger()]
    outcomes: list[object] = [None, None]

    def run(i: int) -> None:
        checked = Checked(LocalProvider(provider.home), ledgers[i])
        reconciler = Reconciler(desired, ReadTogether(checked, barrier), FakeClock(), f"t{i}")
        try:
            outcomes[i] = reconciler.apply()
        except SafeRolloutError as error:
            outcomes[i] = error

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return ledgers, outcomes


def test_two_apply_threads_reading_at_once_exactly_one_acts_the_other_writes_nothing(served):
    provider, manifest = served
    desired = desired_from(load_manifest(manifest))
    stable = decode(provider.read_endpoint(ENDPOINT).tags).stable
    for race in range(THREAD_RACES):
        drift(provider)
        ledgers, outcomes = race_threads(provider, desired)
        FIGURES["races"] += 1

        refused = [i for i in range(2) if isinstance(outcomes[i], LeaseHeldError)]
        assert len(refused) == 1, outcomes
        (loser,) = refused
        winner = 1 - loser
        assert ledgers[loser].writes == 0, f"race {race}: the loser wrote"
        assert ledgers[winner].writes >= 2, f"race {race}: lease, restore (and release)"
        assert re.search(rf"locked by t{winner} until \d{{8}}T\d{{6}}Z", str(outcomes[loser]))
        assert ledgers[0].violations + ledgers[1].violations == []
        live = provider.read_endpoint(ENDPOINT)
        assert live.live_traffic() == {stable: 100}
        assert decode(live.tags).lease is None


def test_two_apply_processes_started_together_exactly_one_acts_the_other_exits_1(
    served, toy_model, tmp_path
):
    provider, _ = served
    toy_model("toy")
    manifest = project(tmp_path, "2")
    before = provider.read_endpoint(ENDPOINT)
    barrier = tmp_path / "barrier"
    ledgers = [tmp_path / "a.json", tmp_path / "b.json"]
    processes = [
        rollout_process("apply", str(manifest), home=provider.home, ledger=ledger, barrier=barrier)
        for ledger in ledgers
    ]
    done = [finish(p, ledger) for p, ledger in zip(processes, ledgers, strict=True)]
    FIGURES["races"] += 1

    assert sorted(d.code for d in done) == [0, 1], [d.stderr for d in done]
    winner, loser = (done[0], done[1]) if done[0].code == 0 else (done[1], done[0])
    winner_pid = processes[done.index(winner)].pid
    assert re.search(rf"locked by \S+:{winner_pid} until \d{{8}}T\d{{6}}Z", loser.stderr), loser
    assert "nothing was written" in loser.stderr
    assert loser.ledger["writes"] == 0
    assert winner.ledger["writes"] > 2
    assert winner.ledger["violations"] == loser.ledger["violations"] == []
    after = provider.read_endpoint(ENDPOINT)
    assert after.revision != before.revision
    assert (
        decode(after.tags).candidate is not None
        or decode(after.tags).stable != decode(before.tags).stable
    )


def stalled_pass(provider, manifest: Path, *, compare_and_swap: bool):
    """Run A takes the lease and stalls past its expiry; run B takes over and acts; A wakes."""
    clock = FakeClock()
    desired = desired_from(load_manifest(manifest))
    drift(provider)
    ledger_a, ledger_b = Ledger(), Ledger()
    inner = provider if compare_and_swap else NoCompareAndSwap(provider)
    a = Reconciler(desired, Checked(inner, ledger_a), clock, "run-a@ci:1")
    b = Reconciler(desired, Checked(inner, ledger_b), clock, "run-b@ci:2")
    seen = {}

    def stall(reason: str) -> None:
        if seen:
            return
        seen["lease of a"] = decode(provider.read_endpoint(ENDPOINT).tags).lease
        clock.advance((LEASE_TTL + timedelta(minutes=1)).total_seconds())
        seen["b"] = b.apply()
        seen["writes of a before waking"] = ledger_a.writes

    a.on_event = stall
    with pytest.raises(SafeRolloutError) as raised:
        a.apply()
    return seen, raised.value, ledger_a, ledger_b


def test_a_holder_that_stalls_past_its_expiry_cannot_write_after_waking(served):
    provider, manifest = served
    stable = decode(provider.read_endpoint(ENDPOINT).tags).stable
    seen, error, ledger_a, ledger_b = stalled_pass(provider, manifest, compare_and_swap=True)
    FIGURES["races"] += 1

    assert seen["lease of a"].holder == "run-a@ci:1"
    assert ledger_b.writes >= 2, "B took over the expired lease and restored the endpoint"
    assert ledger_a.writes == seen["writes of a before waking"], "A wrote nothing after waking"
    assert isinstance(error, ConflictError | LeaseLostError), error
    assert provider.read_endpoint(ENDPOINT).live_traffic() == {stable: 100}
    assert ledger_a.violations + ledger_b.violations == []


class NoCompareAndSwap:
    """A provider that ignores the revision a write is based on (as a control plane without
    etags would): only the engine's own checks stand between a stale run and a write."""

    def __init__(self, inner):
        self.inner, self.name = inner, inner.name

    def update_endpoint(self, endpoint, write, *, expected_revision):
        current = self.inner.read_endpoint(endpoint).revision
        return self.inner.update_endpoint(endpoint, write, expected_revision=current)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_a_holder_that_stalls_past_its_expiry_writes_nothing_even_without_compare_and_swap(
    served,
):
    provider, manifest = served
    seen, error, ledger_a, ledger_b = stalled_pass(provider, manifest, compare_and_swap=False)
    FIGURES["races"] += 1

    assert ledger_b.writes >= 2
    assert ledger_a.writes == seen["writes of a before waking"], "A wrote after losing its lease"
    assert isinstance(error, LeaseLostError), error
    assert "this run's lease expired at" in str(error) and "nothing more was written" in str(error)
    assert decode(provider.read_endpoint(ENDPOINT).tags).lease is None


def test_unlock_breaks_a_stuck_lease_and_records_who_did(served, tmp_path):
    provider, manifest = served
    live = provider.read_endpoint(ENDPOINT)
    stable = decode(live.tags).stable
    dead = Lease("ci-run-77@runner:4242", (FakeClock().now() + timedelta(days=3650)))
    tags = encode(replace(decode(live.tags), lease=dead))
    provider.update_endpoint(
        ENDPOINT,
        EndpointWrite({}, {}, {**tags, "saferollout.traffic": ""}),
        expected_revision=live.revision,
    )
    stuck = provider.read_endpoint(ENDPOINT)
    ledger = tmp_path / "ledger.json"

    refused = rollout("apply", str(manifest), home=provider.home, ledger=ledger)
    assert refused.code == 1
    assert "locked by ci-run-77@runner:4242 until 20361" in refused.stderr
    assert "rollout unlock toy-ep" in refused.stderr
    assert refused.ledger["writes"] == 0
    assert provider.read_endpoint(ENDPOINT).revision == stuck.revision

    unlocked = rollout("unlock", str(manifest), home=provider.home, ledger=ledger, operator="dana")
    assert unlocked.code == 0, unlocked.stderr
    assert "broke the lease held by ci-run-77@runner:4242" in unlocked.stderr
    after = provider.read_endpoint(ENDPOINT)
    state = decode(after.tags)
    assert state.lease is None
    assert state.override.startswith("unlock by dana at ")
    assert "(lease of ci-run-77@runner:4242)" in state.override
    assert after.live_traffic() == stuck.live_traffic()
    assert after.live_mirror() == stuck.live_mirror(), "unlocking moves no traffic"

    applied = rollout("apply", str(manifest), home=provider.home, ledger=ledger)
    assert applied.code == 0, applied.stderr
    assert provider.read_endpoint(ENDPOINT).live_traffic() == {stable: 100}
    assert applied.ledger["violations"] == []


def test_two_manifests_for_one_endpoint_are_refused_naming_both(tmp_path, local_home):
    manifest = project(tmp_path, "1")
    twin = manifest.with_name("toy-copy.yaml")
    twin.write_text(manifest.read_text().replace("name: toy\nspec", "name: toy-copy\nspec"))

    done = rollout("plan", ENDPOINT, home=local_home, ledger=tmp_path / "l.json", cwd=tmp_path)

    assert done.code == 1
    assert "rollouts/toy.yaml" in done.stderr and "rollouts/toy-copy.yaml" in done.stderr
    assert "one manifest per endpoint" in done.stderr
    assert done.ledger == {} or done.ledger["calls"] == 0
