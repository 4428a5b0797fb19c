"""Crash at every point on the `azureml` provider, through the offline Azure of azure_fake.

The same claim as test_crash_points.py, on the provider that has no compare-and-swap: a run
killed after any provider call of a first rollout, or of the start of the next version (create
the candidate, smoke-test it, enter the mirror step), is finished by the next run, and the
endpoint ends as an uninterrupted run leaves it. The fake checks the invariants after every
change it accepts, and the wrapper counts any write it refuses.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from engine.errors import LeaseHeldError
from engine.live import EndpointWrite
from engine.loader import load_manifest
from engine.reconcile import Reconciler, desired_from
from engine.state import decode, encode
from tests.azure_fake import FakeAzure, block_network, provider_for
from tests.fakes import FakeClock
from tests.faulty import Checked, Crash, Crashing, Ledger
from tests.reliability.story import decisions

MANIFEST = __import__("pathlib").Path(__file__).resolve().parents[2] / "rollouts/credit-risk.yaml"
EP = "credit-risk"
FIGURES = {"crash points": 0}


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    block_network(monkeypatch)


def desired(version: str):
    loaded = load_manifest(MANIFEST)
    spec = loaded.rollout.spec
    model = spec.model.model_copy(update={"version": version})
    rollout = loaded.rollout.model_copy(update={"spec": spec.model_copy(update={"model": model})})
    return desired_from(replace(loaded, rollout=rollout))


def answers_like_the_model(endpoint: str, deployment: str, body: bytes) -> tuple[int, bytes]:
    records = json.loads(body)["data"]
    return 200, json.dumps({"probabilities": [0.7] * len(records)}).encode()


class Azure:
    """One fake workspace, its provider wrapped in the invariant checker, and a clock."""

    def __init__(self) -> None:
        self.fake = FakeAzure()
        for version in ("1", "2"):
            self.fake.register_model("credit-risk", version)
        self.fake.scorer = answers_like_the_model
        self.ledger = Ledger()
        self.checked = Checked(provider_for(self.fake), self.ledger)
        self.clock = FakeClock()
        self.runs = 0

    def run(self, version: str, provider=None) -> None:
        self.runs += 1
        Reconciler(
            desired(version), provider or self.checked, self.clock, f"run-{self.runs}"
        ).apply()

    def resume(self, version: str) -> None:
        live = self.checked.read_endpoint(EP)
        try:
            self.run(version)
            return
        except LeaseHeldError:
            assert self.checked.read_endpoint(EP).revision == live.revision, "wrote nothing"
        state = decode(live.tags)
        write = EndpointWrite(
            live.live_traffic(), live.live_mirror(), encode(replace(state, lease=None))
        )
        self.checked.update_endpoint(EP, write, expected_revision=live.revision)  # unlock
        self.run(version)


def phases():
    return {"first rollout": ([], "1"), "next version starts": (["1"], "2")}


@pytest.mark.parametrize("phase", list(phases()))
def test_a_run_on_azure_killed_after_any_call_ends_where_an_uninterrupted_run_ends(phase):
    before, version = phases()[phase]
    expected = Azure()
    for setup in before:
        expected.run(setup)
    counter = Crashing(expected.checked, None)
    expected.run(version, counter)
    calls = counter.count
    want = decisions(expected.fake.live(EP))
    assert calls > 5 and expected.ledger.violations == []

    for after in range(1, calls):
        world = Azure()
        for setup in before:
            world.run(setup)
        with pytest.raises(Crash):
            world.run(version, Crashing(world.checked, after))
        FIGURES["crash points"] += 1
        world.resume(version)
        where = f"{phase}, killed after call {after} of {calls}"
        assert world.ledger.violations == [], where
        assert world.fake.violations == [], where
        got = decisions(world.fake.live(EP))
        assert got == want, where
