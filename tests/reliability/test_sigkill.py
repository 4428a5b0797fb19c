"""SIGKILL of a real `rollout apply` on the local backend, at chosen provider calls.

The process kills itself with SIGKILL just before provider call N + 1, so no exception handler,
`finally` or atexit hook runs: whatever it wrote stays as it was. The next `rollout apply`
meets the dead run's lease (when it had taken one), exits 1 naming it and writes nothing;
`rollout unlock` breaks it; the next apply finishes the job. The end state matches an
uninterrupted run's, decision for decision, and no deployment is created twice.
"""

from __future__ import annotations

import signal

import pytest

from engine.providers.local.provider import LocalProvider
from engine.state import decode
from tests.reliability.local_project import project, rollout
from tests.reliability.story import decisions

pytestmark = pytest.mark.slow
FIGURES = {"crash points": 0}
# A first rollout on the local backend makes these calls: 1 read, 2 create endpoint, 3 take the
# lease, 4 create deployment, 5 wait for it, 6 record the candidate, 7 smoke test, 8 make it
# stable, 9-10 read and release the lease. Killed after each of those that leaves something
# behind: an empty endpoint, a lease, an unrecorded deployment, a recorded candidate, a stable.
KILL_AFTER = (2, 3, 4, 6, 8)


def same_meaning(live) -> dict:
    """`decisions`, less the manifest digest: each endpoint here has a manifest of its own."""
    return {k: v for k, v in decisions(live).items() if k != "digest"}


@pytest.fixture
def served(local_server, toy_model) -> LocalProvider:
    toy_model("toy")
    return local_server


def test_a_first_rollout_killed_at_any_step_is_finished_by_the_next_runs(served, tmp_path):
    home = served.home
    reference = project(tmp_path, "1", endpoint="toy-ref")
    done = rollout("apply", str(reference), home=home, ledger=tmp_path / "ref.json")
    assert done.code == 0, done.stderr
    assert done.ledger["calls"] == 10, "the call numbers above describe this pass"
    expected = same_meaning(served.read_endpoint("toy-ref"))

    for after in KILL_AFTER:
        endpoint = f"toy-kill-{after}"
        manifest = project(tmp_path, "1", endpoint=endpoint)
        ledger = tmp_path / f"{endpoint}.json"

        killed = rollout("apply", str(manifest), home=home, ledger=ledger, kill_after=after)
        FIGURES["crash points"] += 1
        assert killed.code == -signal.SIGKILL, killed.stderr
        assert killed.ledger == {}, "nothing ran after the kill, not even atexit"
        left = served.read_endpoint(endpoint)
        lease = decode(left.tags).lease if left.exists else None

        resumed = rollout("apply", str(manifest), home=home, ledger=ledger)
        if resumed.code == 1:  # the dead run's lease, met by a pass with something to do
            assert lease is not None, resumed.stderr
            assert f"locked by {lease.holder} until " in resumed.stderr
            assert resumed.ledger["writes"] == 0
            assert served.read_endpoint(endpoint).revision == left.revision
            unlocked = rollout("unlock", str(manifest), home=home, ledger=ledger)
            assert unlocked.code == 0, unlocked.stderr
            resumed = rollout("apply", str(manifest), home=home, ledger=ledger)
        assert resumed.code == 0, (after, resumed.stderr)
        assert resumed.ledger["violations"] == [], after
        assert same_meaning(served.read_endpoint(endpoint)) == expected, f"killed after {after}"


def test_a_candidate_created_before_a_kill_is_adopted_not_created_again(
    served, toy_model, tmp_path
):
    home = served.home
    first = project(tmp_path, "1", endpoint="toy-adopt")
    assert rollout("apply", str(first), home=home, ledger=tmp_path / "a.json").code == 0
    toy_model("toy")
    second = project(tmp_path, "2", endpoint="toy-adopt")
    # read, gate source, lease, create deployment: killed before waiting for it.
    killed = rollout("apply", str(second), home=home, ledger=tmp_path / "b.json", kill_after=4)
    assert killed.code == -signal.SIGKILL
    created = served.read_endpoint("toy-adopt").deployments
    assert len(created) == 2

    assert rollout("unlock", str(second), home=home, ledger=tmp_path / "c.json").code == 0
    resumed = rollout("apply", str(second), home=home, ledger=tmp_path / "d.json")

    assert resumed.code == 0, resumed.stderr
    live = served.read_endpoint("toy-adopt")
    assert set(live.deployments) == set(created), "the same two deployments, none re-created"
    state = decode(live.tags)
    assert state.candidate in created and state.step == 0
    assert live.live_traffic() == {state.candidate: 100}
    assert resumed.ledger["violations"] == []
