"""The sequential error gate on per-minute counts: the Azure manifest with `test: sequential`,
reconciled minute by minute through the offline Azure of `azure_fake`, its gates reading the
`azure-metrics` source (complete minutes, a 3-minute ingestion delay, a 1-minute warm-up)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from engine.decide import Desired
from engine.gates import Verdict
from engine.loader import load_manifest
from engine.plan import PassResult
from engine.reconcile import Reconciler, desired_from
from engine.spec import SequentialGate
from engine.state import Phase, decode
from tests.azure_fake import Behaviour, FakeAzure, block_network, checked_fake, provider_for
from tests.fakes import FakeClock

MANIFEST = Path(__file__).resolve().parent.parent / "rollouts" / "credit-risk.yaml"
EP = "credit-risk"
GATE = {"name": "errors-vs-stable", "metric": "error_rate", "test": "sequential"}


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    block_network(monkeypatch)


def answers_like_the_model(endpoint: str, deployment: str, body: bytes) -> tuple[int, bytes]:
    records = json.loads(body)["data"]
    return 200, json.dumps({"probabilities": [0.7] * len(records)}).encode()


@pytest.fixture
def fake_azure() -> Iterator[FakeAzure]:
    fake = FakeAzure()
    for version in ("1", "2"):
        fake.register_model("credit-risk", version)
    fake.scorer = answers_like_the_model
    yield from checked_fake(fake, invariants=True)


def desired(version: str) -> Desired:
    """The checked-in Azure manifest at `version`, judged by one sequential error gate."""
    loaded = load_manifest(MANIFEST)
    spec = loaded.rollout.spec
    gate = SequentialGate.model_validate(GATE)
    changed = spec.model_copy(
        update={"model": spec.model.model_copy(update={"version": version}), "gates": [gate]}
    )
    return desired_from(
        replace(loaded, rollout=loaded.rollout.model_copy(update={"spec": changed}))
    )


def run_minutes(
    fake: FakeAzure, clock: FakeClock, engine: Reconciler, count: int, rpm: int
) -> list[PassResult]:
    """`count` minutes of client traffic, a scheduled pass after each."""
    results = []
    for _ in range(count):
        fake.serve(EP, clock.now(), rpm)
        clock.advance(60)
        results.append(engine.apply())
        assert fake.violations == []
    return results


def start(fake: FakeAzure) -> tuple[FakeClock, Reconciler, str, str]:
    clock = FakeClock()
    provider = provider_for(fake)
    first = Reconciler(desired("1"), provider, clock, "github-run-7-1")
    first.apply()
    engine = Reconciler(desired("2"), provider, clock, "github-run-7-1")
    engine.apply()
    return clock, engine, first.desired.name, engine.desired.name


def test_a_regression_is_rolled_back_in_the_mirror_step_from_per_minute_counts(
    fake_azure: FakeAzure,
) -> None:
    clock, engine, v1, v2 = start(fake_azure)
    fake_azure.behaviour[v1] = Behaviour(error_rate=0.005)
    fake_azure.behaviour[v2] = Behaviour(error_rate=0.05)

    results = run_minutes(fake_azure, clock, engine, 10, rpm=600)
    rolled = [i for i, r in enumerate(results) if r.rolled_back]

    assert rolled, "rolled back within the 10-minute mirror step"
    state = decode(fake_azure.live(EP).tags)
    assert state.phase is Phase.ROLLED_BACK and state.steps[0].index == 0
    assert "errors-vs-stable: error_rate 0.05 against stable 0.005" in state.decision
    # The warm-up and the ingestion delay hold the first complete minute back 5 minutes.
    assert rolled[0] <= 6


def test_the_gate_reads_the_mirror_step_again_in_the_next_step(fake_azure: FakeAzure) -> None:
    clock, engine, v1, v2 = start(fake_azure)
    fake_azure.behaviour[v1] = Behaviour(error_rate=0.01)
    fake_azure.behaviour[v2] = Behaviour(error_rate=0.01)

    results = run_minutes(fake_azure, clock, engine, 16, rpm=6000)

    assert not any(r.rolled_back for r in results)
    state = decode(fake_azure.live(EP).tags)
    assert state.step == 1, "mirror step passed at its bake: at 10 % now"
    (gate,) = results[-1].final.gates
    assert gate.verdict is Verdict.PASSED and gate.concluded
    # Complete minutes: the mirror step's 9 after its warm-up (1,200 copies each, the last 3
    # read again after their ingestion delay) and 2 at 10 % (600 each).
    assert gate.requests == 9 * 1200 + 2 * 600
    assert "over 12,000 and 64,800 requests since the first step" in gate.reason
