"""The engine's reconciler driving the `azureml` provider through the fake ARM: the checked-in
Azure manifest plans like a local one, and a first rollout ends with its deployment stable."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from engine.loader import load_manifest
from engine.reconcile import Reconciler, desired_from
from engine.render import render_plan
from tests.azure_fake import FakeAzure, block_network, checked_fake, provider_for

MANIFEST = Path(__file__).resolve().parent.parent / "rollouts" / "credit-risk.yaml"
EP = "credit-risk"


class SteppedClock:
    def __init__(self) -> None:
        self.moment = datetime(2026, 12, 4, 10, 0, tzinfo=UTC)

    def now(self) -> datetime:
        return self.moment

    def sleep(self, seconds: float) -> None:
        self.moment += timedelta(seconds=seconds)


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    block_network(monkeypatch)


@pytest.fixture
def fake_azure() -> Iterator[FakeAzure]:
    fake = FakeAzure()
    fake.register_model("credit-risk", "1")
    fake.scoring_default = (200, b'{"probabilities": [0.81, 0.34]}')
    yield from checked_fake(fake)


def reconciler(fake: FakeAzure) -> Reconciler:
    loaded = load_manifest(MANIFEST)
    return Reconciler(desired_from(loaded), provider_for(fake), SteppedClock(), "test:1")


def test_the_azure_manifest_plans_like_a_local_one_and_writes_nothing(
    fake_azure: FakeAzure,
) -> None:
    engine = reconciler(fake_azure)
    text = render_plan(engine.plan(), engine.desired)

    assert "endpoint credit-risk (azureml)" in text
    assert "+ create endpoint credit-risk" in text
    assert "+ create deployment credit-risk-1-" in text
    assert "Plan: 2 to create, 1 to test, 2 to update, 0 to delete." in text
    assert {r.method for r in fake_azure.requests} == {"GET"}


def test_a_first_rollout_ends_with_its_deployment_stable_and_every_write_valid(
    fake_azure: FakeAzure,
) -> None:
    engine = reconciler(fake_azure)
    for _ in range(6):
        engine.apply()
    live = engine.read()

    (name,) = live.deployments
    assert name.startswith("credit-risk-1-")
    assert live.live_traffic() == {name: 100}
    assert live.tags["saferollout.stable"] == name
    assert live.tags["saferollout.phase"] == "Succeeded"
    for put in fake_azure.requests_to("PUT", rf"/onlineEndpoints/{EP}$"):
        sent = put.body["properties"]
        assert sum(sent.get("traffic", {}).values()) in (0, 100)
        assert not {"createdAt", "createdBy", "lastModifiedAt"} & set(sent.get("properties", {}))
    (smoke,) = [r for r in fake_azure.requests if r.path == "/score"]
    assert smoke.headers["azureml-model-deployment"] == name
