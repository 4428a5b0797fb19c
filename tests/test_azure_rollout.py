"""The whole rollout story on the `azureml` provider, through the offline Azure of `azure_fake`.

The checked-in Azure manifest (`rollouts/credit-risk.yaml`) is reconciled minute by minute on a
stepped clock. Between passes the fake serves one minute of client traffic at the endpoint's
split of the moment and records it as Azure Monitor platform metrics, so the `azure-metrics`
gates judge what the engine's own writes routed: a step that did not move traffic would leave
the candidate without requests. The fake checks the invariants after every change it accepts,
and the tests read back the request bodies the SDK sent.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from engine.decide import Command, Desired
from engine.loader import load_manifest
from engine.plan import PassResult
from engine.reconcile import Reconciler, desired_from
from engine.state import Phase, decode
from tests.azure_fake import (
    SUBSCRIPTION,
    Behaviour,
    FakeAzure,
    FakeCredential,
    block_network,
    checked_fake,
    provider_for,
)
from tests.fakes import FakeClock

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "rollouts" / "credit-risk.yaml"
LOCAL_MANIFEST = ROOT / "rollouts" / "credit-risk-local.yaml"
EP = "credit-risk"
ENDPOINT_PUT = rf"/onlineEndpoints/{EP}$"
RPM = 600  # client requests per minute at the endpoint


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    block_network(monkeypatch)


def answers_like_the_model(endpoint: str, deployment: str, body: bytes) -> tuple[int, bytes]:
    """The scoring script's response shape: one probability per record sent."""
    records = json.loads(body)["data"]
    return 200, json.dumps({"probabilities": [0.7] * len(records)}).encode()


@pytest.fixture
def fake_azure() -> Iterator[FakeAzure]:
    fake = FakeAzure()
    for version in ("1", "2", "3"):
        fake.register_model("credit-risk", version)
    fake.scorer = answers_like_the_model
    yield from checked_fake(fake, invariants=True)


def desired(version: str) -> Desired:
    """The checked-in Azure manifest with `model.version` set, as a pull request would."""
    loaded = load_manifest(MANIFEST)
    spec = loaded.rollout.spec
    model = spec.model.model_copy(update={"version": version})
    rollout = loaded.rollout.model_copy(update={"spec": spec.model_copy(update={"model": model})})
    return desired_from(replace(loaded, rollout=rollout))


class Story:
    """One endpoint, one provider and one clock; a reconciler per manifest version."""

    def __init__(self, fake: FakeAzure):
        self.fake = fake
        self.clock = FakeClock()
        self.provider = provider_for(fake)

    def engine(self, version: str) -> Reconciler:
        return Reconciler(desired(version), self.provider, self.clock, "github-run-7-1")

    def minutes(self, engine: Reconciler, count: int) -> list[PassResult]:
        """`count` minutes of client traffic, a scheduled reconcile pass after each."""
        results = []
        for _ in range(count):
            self.fake.serve(EP, self.clock.now(), RPM)
            self.clock.advance(60)
            results.append(engine.apply())
            assert self.fake.violations == []
        return results

    def until(self, engine: Reconciler, changed, limit: int = 40) -> tuple[int, PassResult]:
        """Minutes until `changed(state)` holds, and the pass that made it so."""
        for minute in range(1, limit + 1):
            (result,) = self.minutes(engine, 1)
            if changed(self.state()):
                return minute, result
        raise AssertionError(f"nothing changed in {limit} minutes: {self.state()}")

    def state(self):
        return decode(self.fake.live(EP).tags)

    def split(self) -> tuple[dict[str, int], dict[str, int]]:
        live = self.fake.live(EP)
        return live.live_traffic(), live.live_mirror()


def sent_splits(fake: FakeAzure, since: int = 0) -> list[tuple[dict, dict]]:
    """Traffic and mirror of each endpoint PUT, consecutive repeats (lease writes) merged."""
    splits: list[tuple[dict, dict]] = []
    for put in fake.requests_to("PUT", ENDPOINT_PUT)[since:]:
        props = put.body["properties"]
        split = (props.get("traffic") or {}, props.get("mirrorTraffic") or {})
        if not splits or splits[-1] != split:
            splits.append(split)
    return splits


def gate_reasons(result: PassResult) -> list[str]:
    return [g.reason for plan in result.plans for g in plan.gates]


def test_a_version_walks_every_step_on_azure_metrics_is_promoted_and_cleans_up(
    fake_azure: FakeAzure,
) -> None:
    story = Story(fake_azure)
    v1, v2 = desired("1").name, desired("2").name

    # First rollout: an empty workspace gets the endpoint, v1, its smoke test and 100 %.
    story.engine("1").apply()
    assert story.split() == ({v1: 100}, {})
    assert story.state().phase is Phase.SUCCEEDED
    (smoke,) = [r for r in fake_azure.requests if r.path == "/score"]
    assert smoke.headers["azureml-model-deployment"] == v1
    # Someone tags the endpoint in the portal: every later write must keep it.
    fake_azure.set_tags(EP, team="risk", **{"cost-center": "42"})
    puts_before = len(fake_azure.requests_to("PUT", ENDPOINT_PUT))

    # v2: created at 0 %, smoke-tested, then 20 % of live requests mirrored to it.
    engine = story.engine("2")
    engine.apply()
    assert story.split() == ({v1: 100}, {v2: 20})

    # Mirror step: 10 minutes of bake; the gates read the mirrored copies in Azure Monitor.
    minute, result = story.until(engine, lambda s: s.step == 1)
    assert minute == 10
    assert story.split() == ({v1: 90, v2: 10}, {}), "mirror off in the write that adds traffic"
    reasons = gate_reasons(result)
    # 120 mirrored requests a minute; the window is step start + 1 m warm-up .. now - 3 m.
    assert any("candidate-errors: error_rate 0 within max 0.01 over 720" in r for r in reasons)
    assert any("candidate-p90: latency_p90_ms 60.0 within max 120" in r for r in reasons)
    assert any("maximum of 6 per-minute" in r for r in reasons)

    # 10 % for 10 minutes, then the approval step holds 90/10 without writing.
    minute, _ = story.until(engine, lambda s: s.step == 2)
    assert minute == 10
    assert story.state().phase is Phase.PAUSED
    puts = len(fake_azure.requests_to("PUT", ENDPOINT_PUT))
    story.minutes(engine, 30)
    assert len(fake_azure.requests_to("PUT", ENDPOINT_PUT)) == puts
    assert story.split() == ({v1: 90, v2: 10}, {})

    engine.apply(Command("promote", who="alice"))
    assert story.split() == ({v1: 50, v2: 50}, {})
    minute, _ = story.until(engine, lambda s: s.step == 4)
    assert minute == 15
    assert story.split() == ({v2: 100}, {})

    # The last step passes: v2 is promoted, v1 kept warm as previous.
    minute, result = story.until(engine, lambda s: s.stable == v2)
    assert minute == 15
    state = story.state()
    assert (state.stable, state.previous, state.candidate) == (v2, v1, None)
    assert state.phase is Phase.SUCCEEDED
    assert [r.verdict for r in state.steps] == ["passed", "passed", "skipped", "passed", "passed"]
    assert all(r.requests and r.requests >= 200 for r in state.steps if r.verdict == "passed")

    # Cleanup: v1 goes one hour after the promotion, not before, and only with no traffic.
    story.clock.advance(58 * 60)
    engine.apply()
    assert v1 in fake_azure.live(EP).deployments
    story.clock.advance(3 * 60)
    engine.apply()
    assert set(fake_azure.live(EP).deployments) == {v2}
    assert story.state().previous is None
    (delete,) = fake_azure.requests_to("DELETE", r"/deployments/")
    assert delete.path.endswith(f"/deployments/{v1}")

    # What the SDK sent: the expected splits in order, foreign tags and settings kept each time.
    assert sent_splits(fake_azure, puts_before) == [
        ({v1: 100}, {}),
        ({v1: 100}, {v2: 20}),
        ({v1: 90, v2: 10}, {}),
        ({v1: 50, v2: 50}, {}),
        ({v2: 100}, {}),
    ]
    for put in fake_azure.requests_to("PUT", ENDPOINT_PUT)[puts_before:]:
        body = put.body
        assert sum(body["properties"].get("traffic", {}).values()) in (0, 100)
        assert body["tags"]["team"] == "risk" and body["tags"]["cost-center"] == "42"
        assert body["properties"]["description"] == "Managed by saferollout"
        assert body["properties"]["authMode"] == "Key"
        assert body["identity"]["type"] == "SystemAssigned"
        assert not {"createdAt", "createdBy", "lastModifiedAt"} & set(
            body["properties"].get("properties") or {}
        )
    assert fake_azure.checked_changes > 20
    assert fake_azure.violations == []


def test_a_gate_failure_under_live_traffic_rolls_back_in_one_write(fake_azure: FakeAzure) -> None:
    story = Story(fake_azure)
    v2, v3 = desired("2").name, desired("3").name
    story.engine("2").apply()
    engine = story.engine("3")
    engine.apply()
    story.until(engine, lambda s: s.step == 1)
    assert story.split() == ({v2: 90, v3: 10}, {})

    # Its fault shows once it serves live traffic (say, a leak under sustained load).
    fake_azure.behaviour[v3] = Behaviour(error_rate=0.05)
    puts = len(fake_azure.requests_to("PUT", ENDPOINT_PUT))
    minute, result = story.until(engine, lambda s: s.phase is Phase.ROLLED_BACK)

    # Step start + 1 m warm-up + 3 m ingestion: the first 60 bad requests are judged at
    # minute 5, but min_requests is 200, so the gate can only fail from minute 8 on.
    assert minute == 8
    assert result.rolled_back
    assert story.split() == ({v2: 100}, {})
    state = story.state()
    assert (state.stable, state.candidate) == (v2, v3)
    assert v3 in fake_azure.live(EP).deployments, "kept for inspection"
    assert "candidate-errors: error_rate 0.05 > max 0.01 over 240 requests" in state.decision
    # lease, rollback, release: the rollback itself is the one write that moves traffic.
    assert sent_splits(fake_azure, puts) == [({v2: 90, v3: 10}, {}), ({v2: 100}, {})]

    # Later passes report it and write nothing; the version is not retried by itself.
    puts = len(fake_azure.requests_to("PUT", ENDPOINT_PUT))
    results = story.minutes(engine, 5)
    assert all("rolled back" in r.final.summary for r in results if r.final)
    assert len(fake_azure.requests_to("PUT", ENDPOINT_PUT)) == puts


# -- `rollout plan` on the Azure manifest, through the real CLI path --------------------------


def run_cli(monkeypatch: pytest.MonkeyPatch, capsys, *args: str) -> tuple[int, str, str]:
    from engine.cli import main

    monkeypatch.setattr(sys, "argv", ["rollout", *args])
    try:
        main()
        code = 0
    except SystemExit as done:
        code = int(done.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def plan_shape(text: str, endpoint: str, deployment: str) -> list[str]:
    """A plan's lines without its header and with the names stripped: what kind of plan it is."""
    return [
        line.replace(deployment, "<deployment>").replace(f"endpoint {endpoint}", "endpoint <ep>")
        for line in text.splitlines()
        if not line.startswith("Rollout ")
    ]


def test_rollout_plan_on_the_azure_manifest_prints_the_same_kind_of_plan_as_a_local_one(
    monkeypatch: pytest.MonkeyPatch, capsys, local_home: Path
) -> None:
    from engine import cli
    from engine.providers.azure import AzureMLProvider

    # The manifest names resource group and workspace; the subscription comes from the env.
    fake = FakeAzure(resource_group="ml-prod", workspace="ml-prod-ws")
    monkeypatch.setenv("AZURE_SUBSCRIPTION_ID", SUBSCRIPTION)
    opened = []

    def offline_azure(loaded):
        provider = AzureMLProvider.from_target(
            loaded.rollout.spec.target, transport=fake.transport(), credential=FakeCredential()
        )
        opened.append(provider)
        return provider

    monkeypatch.setitem(cli.PROVIDER_FACTORIES, "azureml", offline_azure)

    code, azure_text, err = run_cli(monkeypatch, capsys, "plan", str(MANIFEST))
    assert code == 0, err
    code, local_text, err = run_cli(monkeypatch, capsys, "plan", str(LOCAL_MANIFEST))
    assert code == 0, err

    assert opened and opened[0].workspace.resource_id == fake.ws_path
    assert "endpoint credit-risk (azureml), credit-risk version 1" in azure_text
    assert "endpoint credit-risk-local (local)" in local_text
    azure_name, local_name = desired("1").name, load_local_name()
    assert plan_shape(azure_text, "credit-risk", azure_name) == plan_shape(
        local_text, "credit-risk-local", local_name
    )
    assert "Plan: 2 to create, 1 to test, 2 to update, 0 to delete." in azure_text
    assert {r.method for r in fake.requests} == {"GET"}, "a plan writes nothing"
    assert not fake.unrouted

    code, azure_json, err = run_cli(monkeypatch, capsys, "plan", str(MANIFEST), "--format", "json")
    code, local_json, err = run_cli(
        monkeypatch, capsys, "plan", str(LOCAL_MANIFEST), "--format", "json"
    )
    kinds = [[a["kind"] for a in json.loads(doc)["actions"]] for doc in (azure_json, local_json)]
    assert (
        kinds[0]
        == kinds[1]
        == [
            "create_endpoint",
            "create_deployment",
            "update_endpoint",
            "smoke_test",
            "update_endpoint",
        ]
    )


def load_local_name() -> str:
    return desired_from(load_manifest(LOCAL_MANIFEST)).name
