"""The `azureml` provider against the offline fake ARM: what a user of the engine would notice."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.errors import ConflictError, PermanentError, TransientError
from engine.live import DeploymentRequest, EndpointWrite, ProvisioningState
from engine.providers.azure import AzureMLProvider, resolve_workspace
from engine.spec import Target, Workspace
from tests.azure_fake import (
    RESOURCE_GROUP,
    SUBSCRIPTION,
    WORKSPACE,
    FakeAzure,
    FakeCredential,
    block_network,
    checked_fake,
    provider_for,
)

EP = "credit-risk"
ENDPOINT_PATH = rf"/onlineEndpoints/{EP}$"


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    block_network(monkeypatch)


@pytest.fixture
def fake_azure() -> Iterator[FakeAzure]:
    yield from checked_fake()


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "models" / "credit-risk"
    folder.mkdir(parents=True)
    (folder / "score.py").write_text("def init():\n    pass\n\n\ndef run(raw):\n    return [0]\n")
    (folder / "environment.yml").write_text("name: credit-risk\ndependencies:\n  - python=3.11\n")
    return folder


@pytest.fixture
def two_deployments(fake_azure: FakeAzure) -> FakeAzure:
    """`blue` (v6) serving everything, `green` (v7) at 0 %, tags and identity set by others."""
    fake_azure.add_endpoint(
        EP,
        tags={"team": "risk", "cost-center": "42", "saferollout.stale": "old"},
        identity={"type": "UserAssigned", "userAssignedIdentities": {"/ids/risk": {}}},
        properties={"description": "credit risk scoring", "properties": {"owner": "risk-team"}},
    )
    fake_azure.add_deployment(EP, "blue", ("credit-risk", "6"), capacity=2)
    fake_azure.add_deployment(EP, "green", ("credit-risk", "7"))
    fake_azure.set_traffic(EP, {"blue": 100})
    return fake_azure


def endpoint_puts(fake: FakeAzure) -> list:
    return fake.requests_to("PUT", ENDPOINT_PATH)


# -- reading ---------------------------------------------------------------------------------------


def test_a_missing_endpoint_reads_as_not_existing(fake_azure: FakeAzure) -> None:
    live = provider_for(fake_azure).read_endpoint(EP)
    assert live.exists is False
    assert live.deployments == {}


def test_read_reports_deployments_with_model_versions_traffic_tags_and_revision(
    two_deployments: FakeAzure,
) -> None:
    two_deployments.set_traffic(EP, {"blue": 100}, mirror={"green": 20})
    live = provider_for(two_deployments).read_endpoint(EP)

    assert live.exists
    assert set(live.deployments) == {"blue", "green"}
    blue = live.deployments["blue"]
    assert (blue.model_name, blue.model_version) == ("credit-risk", "6")
    assert blue.state is ProvisioningState.SUCCEEDED
    assert (blue.instance_type, blue.instance_count) == ("Standard_DS3_v2", 2)
    assert live.live_traffic() == {"blue": 100}
    assert live.live_mirror() == {"green": 20}
    assert live.tags["team"] == "risk"
    assert live.revision.startswith("2026-12-04T10:00:")
    assert live.scoring_uri.endswith("/score")


def test_revision_changes_when_someone_else_writes(two_deployments: FakeAzure) -> None:
    provider = provider_for(two_deployments)
    before = provider.read_endpoint(EP).revision
    two_deployments.set_traffic(EP, {"blue": 50, "green": 50})
    after = provider.read_endpoint(EP)
    assert after.revision != before
    assert after.live_traffic() == {"blue": 50, "green": 50}


# -- creating the endpoint -------------------------------------------------------------------------


def test_create_endpoint_uses_key_auth_and_is_idempotent(fake_azure: FakeAzure) -> None:
    provider = provider_for(fake_azure)
    live = provider.create_endpoint(EP)
    again = provider.create_endpoint(EP)

    assert live.exists and again.exists
    (put,) = endpoint_puts(fake_azure)
    assert put.body["properties"]["authMode"] == "Key"
    assert put.body["tags"] in ({}, None)


def test_invalid_names_are_refused_before_any_request(fake_azure: FakeAzure) -> None:
    with pytest.raises(PermanentError, match="must have 3-32") as refused:
        provider_for(fake_azure).create_endpoint("7-credit")
    assert refused.value.code == "InvalidName"
    assert fake_azure.requests == []


# -- updating traffic, mirror and tags -------------------------------------------------------------


def test_update_is_one_put_that_keeps_foreign_tags_identity_and_description(
    two_deployments: FakeAzure,
) -> None:
    provider = provider_for(two_deployments)
    live = provider.read_endpoint(EP)
    write = EndpointWrite(
        traffic={"blue": 90, "green": 10},
        mirror={},
        tags={"saferollout.phase": "Progressing", "saferollout.step": "1"},
    )
    after = provider.update_endpoint(EP, write, expected_revision=live.revision)

    (put,) = endpoint_puts(two_deployments)
    body = put.body
    assert body["properties"]["traffic"] == {"blue": 90, "green": 10}
    assert body["properties"]["mirrorTraffic"] == {}
    # Foreign tags kept, the engine's replaced as a whole (the stale one is gone).
    assert body["tags"] == {
        "team": "risk",
        "cost-center": "42",
        "saferollout.phase": "Progressing",
        "saferollout.step": "1",
    }
    assert body["identity"]["type"] == "UserAssigned"
    assert "/ids/risk" in body["identity"]["userAssignedIdentities"]
    assert body["properties"]["description"] == "credit risk scoring"
    # The read-only fields the SDK copies from systemData are not sent back as user properties.
    sent_properties = body["properties"].get("properties") or {}
    assert sent_properties == {"owner": "risk-team"}
    assert after.live_traffic() == {"blue": 90, "green": 10}
    assert after.revision != live.revision


def test_mirror_and_traffic_change_together_in_the_same_write(two_deployments: FakeAzure) -> None:
    two_deployments.set_traffic(EP, {"blue": 100}, mirror={"green": 20})
    provider = provider_for(two_deployments)
    live = provider.read_endpoint(EP)

    write = EndpointWrite(traffic={"blue": 90, "green": 10}, mirror={}, tags={})
    after = provider.update_endpoint(EP, write, expected_revision=live.revision)

    (put,) = endpoint_puts(two_deployments)
    assert put.body["properties"]["traffic"] == {"blue": 90, "green": 10}
    assert put.body["properties"]["mirrorTraffic"] == {}
    assert after.live_mirror() == {}


def test_a_write_based_on_a_stale_read_is_refused_and_nothing_is_written(
    two_deployments: FakeAzure,
) -> None:
    provider = provider_for(two_deployments)
    live = provider.read_endpoint(EP)
    two_deployments.set_traffic(EP, {"blue": 50, "green": 50})  # someone in the portal

    with pytest.raises(ConflictError, match="changed since it was read"):
        provider.update_endpoint(
            EP, EndpointWrite({"blue": 100}, {}, {}), expected_revision=live.revision
        )
    assert endpoint_puts(two_deployments) == []
    assert provider.read_endpoint(EP).live_traffic() == {"blue": 50, "green": 50}


def test_a_change_lost_to_a_concurrent_writer_is_reported_loudly(
    two_deployments: FakeAzure, caplog: pytest.LogCaptureFixture
) -> None:
    provider = provider_for(two_deployments)
    live = provider.read_endpoint(EP)
    # Another writer lands right after ours: without an etag, only the re-read can tell.
    two_deployments.after_endpoint_write = lambda ep: two_deployments.set_traffic(ep, {"blue": 100})

    with pytest.raises(PermanentError, match="re-read shows otherwise") as lost:
        provider.update_endpoint(
            EP, EndpointWrite({"blue": 90, "green": 10}, {}, {}), expected_revision=live.revision
        )
    assert lost.value.code == "WriteNotApplied"
    assert "traffic is {'blue': 100}, sent {'blue': 90, 'green': 10}" in str(lost.value)
    assert "re-read shows otherwise" in caplog.text


@pytest.mark.parametrize(
    ("traffic", "mirror", "why"),
    [
        ({"blue": 60, "green": 30}, {}, "sum to 0 or 100"),
        ({"blue": 100}, {"green": 60}, "at most 50%"),
        ({"blue": 90, "green": 10}, {"green": 10}, "live and mirror"),
        ({"blue": 100}, {"nowhere": 10}, "not found"),
    ],
)
def test_writes_breaking_the_service_rules_are_permanent_errors_naming_endpoint_and_code(
    two_deployments: FakeAzure, traffic: dict, mirror: dict, why: str
) -> None:
    provider = provider_for(two_deployments)
    live = provider.read_endpoint(EP)
    with pytest.raises(PermanentError) as refused:
        provider.update_endpoint(
            EP, EndpointWrite(traffic, mirror, {}), expected_revision=live.revision
        )
    message = str(refused.value)
    assert f"update endpoint on endpoint {EP} failed: BadArgument" in message
    assert why in message
    assert refused.value.code == "BadArgument"
    assert provider.read_endpoint(EP).live_traffic() == {"blue": 100}


def test_engine_tags_too_long_for_azure_are_refused_before_writing(
    two_deployments: FakeAzure,
) -> None:
    provider = provider_for(two_deployments)
    live = provider.read_endpoint(EP)
    write = EndpointWrite({"blue": 100}, {}, {"saferollout.log": "x" * 300, "owner": "me"})
    with pytest.raises(PermanentError) as refused:
        provider.update_endpoint(EP, write, expected_revision=live.revision)
    assert "300 characters, Azure keeps 256" in str(refused.value)
    assert "owner is not under the engine's prefix" in str(refused.value)
    assert endpoint_puts(two_deployments) == []


def test_a_write_that_would_exceed_azures_fifty_tags_is_refused(two_deployments: FakeAzure) -> None:
    provider = provider_for(two_deployments)
    live = provider.read_endpoint(EP)
    tags = {f"saferollout.t{n}": "x" for n in range(49)}
    with pytest.raises(PermanentError, match="51 tags, Azure keeps 50"):
        provider.update_endpoint(
            EP, EndpointWrite({"blue": 100}, {}, tags), expected_revision=live.revision
        )
    assert endpoint_puts(two_deployments) == []


# -- deployments -----------------------------------------------------------------------------------


def request_for(model_dir: Path, version: str = "7", name: str = "credit-risk-7-a1b2c3"):
    return DeploymentRequest(
        name=name,
        model_name="credit-risk",
        model_version=version,
        model_dir=str(model_dir),
        instance_type="Standard_DS3_v2",
        instance_count=2,
    )


def test_create_deployment_refuses_a_model_version_not_registered(
    fake_azure: FakeAzure, model_dir: Path
) -> None:
    fake_azure.add_endpoint(EP)
    with pytest.raises(PermanentError, match="model credit-risk version 7 is not registered"):
        provider_for(fake_azure).create_deployment(EP, request_for(model_dir))
    assert fake_azure.requests_to("PUT", r"/deployments/") == []


def test_create_deployment_sends_model_code_environment_and_instances(
    fake_azure: FakeAzure, model_dir: Path
) -> None:
    fake_azure.add_endpoint(EP)
    fake_azure.register_model("credit-risk", "7")
    provider = provider_for(fake_azure)

    provider.create_deployment(EP, request_for(model_dir))
    live = provider.wait_for_deployment(EP, "credit-risk-7-a1b2c3", timeout_s=600)

    (put,) = fake_azure.requests_to("PUT", r"/deployments/credit-risk-7-a1b2c3$")
    props = put.body["properties"]
    assert props["model"].endswith("/models/credit-risk/versions/7")
    assert props["codeConfiguration"]["scoringScript"] == "score.py"
    assert "/environments/" in props["environmentId"]
    assert props["instanceType"] == "Standard_DS3_v2"
    assert put.body["sku"]["capacity"] == 2
    (environment,) = fake_azure.requests_to("PUT", r"/environments/")
    assert "python=3.11" in environment.body["properties"]["condaFile"]
    assert environment.body["properties"]["image"].startswith("mcr.microsoft.com/azureml/")
    created = live.deployments["credit-risk-7-a1b2c3"]
    assert created.state is ProvisioningState.SUCCEEDED
    assert (created.model_name, created.model_version) == ("credit-risk", "7")
    assert live.traffic["credit-risk-7-a1b2c3"] == 0


def test_create_deployment_adopts_one_left_behind_by_a_crashed_run(
    fake_azure: FakeAzure, model_dir: Path
) -> None:
    fake_azure.add_endpoint(EP)
    fake_azure.add_deployment(EP, "credit-risk-7-a1b2c3", ("credit-risk", "7"))
    provider_for(fake_azure).create_deployment(EP, request_for(model_dir))
    assert fake_azure.requests_to("PUT", r"/deployments/") == []


def test_a_model_folder_without_scoring_script_is_refused(
    fake_azure: FakeAzure, model_dir: Path
) -> None:
    (model_dir / "score.py").unlink()
    with pytest.raises(PermanentError, match="needs score.py"):
        provider_for(fake_azure).create_deployment(EP, request_for(model_dir))
    assert fake_azure.requests == []


def test_failed_provisioning_shows_the_service_error_code(
    fake_azure: FakeAzure, model_dir: Path
) -> None:
    fake_azure.add_endpoint(EP)
    fake_azure.register_model("credit-risk", "7")
    fake_azure.failing_deployments["credit-risk-7-a1b2c3"] = (
        "ImageBuildFailure",
        "conda environment could not be solved",
    )
    provider = provider_for(fake_azure)
    provider.create_deployment(EP, request_for(model_dir))
    live = provider.wait_for_deployment(EP, "credit-risk-7-a1b2c3", timeout_s=600)

    failed = live.deployments["credit-risk-7-a1b2c3"]
    assert failed.state is ProvisioningState.FAILED
    assert "ImageBuildFailure" in failed.error
    assert "conda environment could not be solved" in failed.error


def test_waiting_gives_up_at_the_timeout_with_the_state_as_it_is(fake_azure: FakeAzure) -> None:
    fake_azure.add_endpoint(EP)
    slow = fake_azure.add_deployment(EP, "green", ("credit-risk", "7"))
    slow["properties"]["provisioningState"] = "Creating"
    lines: list[str] = []
    provider = provider_for(fake_azure, progress=lines.append, poll_interval_s=15)

    live = provider.wait_for_deployment(EP, "green", timeout_s=120)

    assert live.deployments["green"].state is ProvisioningState.CREATING
    assert "still Creating after 2m" in lines[-1]
    assert len(fake_azure.requests_to("GET", r"/deployments$")) >= 8  # polled, 15 s apart


def test_a_long_operation_past_its_timeout_is_transient(two_deployments: FakeAzure) -> None:
    two_deployments.lro_polls = 200
    provider = provider_for(two_deployments, operation_timeout_s=0, report_every_s=0)
    live = provider.read_endpoint(EP)
    with pytest.raises(TransientError, match="still running") as slow:
        provider.update_endpoint(
            EP, EndpointWrite({"blue": 100}, {}, {}), expected_revision=live.revision
        )
    assert slow.value.code == "OperationTimeout"


def test_delete_refuses_a_deployment_with_traffic_and_is_idempotent(
    two_deployments: FakeAzure,
) -> None:
    provider = provider_for(two_deployments)
    with pytest.raises(PermanentError, match="still has traffic"):
        provider.delete_deployment(EP, "blue")
    assert two_deployments.requests_to("DELETE", r"/deployments/") == []

    provider.delete_deployment(EP, "green")
    provider.delete_deployment(EP, "green")
    assert "green" not in provider.read_endpoint(EP).deployments
    assert len(two_deployments.requests_to("DELETE", r"/deployments/green$")) == 1


def test_delete_refuses_a_deployment_with_mirrored_traffic(two_deployments: FakeAzure) -> None:
    two_deployments.set_traffic(EP, {"blue": 100}, mirror={"green": 10})
    with pytest.raises(PermanentError, match="mirrored 10%"):
        provider_for(two_deployments).delete_deployment(EP, "green")


def test_the_fake_refuses_a_twenty_first_deployment(fake_azure: FakeAzure, model_dir) -> None:
    fake_azure.add_endpoint(EP)
    for n in range(20):
        fake_azure.add_deployment(EP, f"dep-{n:02d}", ("credit-risk", "6"))
    fake_azure.register_model("credit-risk", "7")
    with pytest.raises(PermanentError, match="20 deployments"):
        provider_for(fake_azure).create_deployment(EP, request_for(model_dir))


# -- calling one deployment ------------------------------------------------------------------------


def test_invoke_routes_each_call_to_its_own_deployment_with_the_key(
    two_deployments: FakeAzure,
) -> None:
    two_deployments.scoring[(EP, "blue")] = (200, b'{"blue": true}')
    two_deployments.scoring[(EP, "green")] = (500, b'{"error": "boom"}')
    provider = provider_for(two_deployments)

    green = provider.invoke(EP, "green", b'{"data": [[1, 2]]}')
    blue = provider.invoke(EP, "blue", b'{"data": [[1, 2]]}')

    assert (green.status, green.body) == (500, b'{"error": "boom"}')
    assert (blue.status, blue.body) == (200, b'{"blue": true}')  # the header did not stick
    calls = [r for r in two_deployments.requests if r.path == "/score"]
    assert [c.headers["azureml-model-deployment"] for c in calls] == ["green", "blue"]
    assert all(c.headers["authorization"] == "<redacted>" for c in calls)
    assert calls[0].body == {"data": [[1, 2]]}


def test_the_endpoint_key_appears_in_no_output_log_or_error(
    two_deployments: FakeAzure,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    provider = provider_for(two_deployments)
    provider.invoke(EP, "green", b"{}")
    two_deployments.fail("POST", r"^/score$", 503, host=f"{EP}.westeurope.inference.ml.azure.com")
    answer = provider.invoke(EP, "green", b"{}")
    two_deployments.keys[EP] = ("rotated", "rotated-2")  # our cached nothing: a fresh key is used
    assert provider.invoke(EP, "green", b"{}").status == 200

    out, err = capsys.readouterr()
    secret = f"primary-{EP}-secret"
    assert answer.status == 503
    assert secret not in caplog.text + out + err
    assert "rotated" not in caplog.text + out + err


# -- output hygiene --------------------------------------------------------------------------------


def test_sdk_progress_dots_and_info_lines_never_reach_our_output(
    fake_azure: FakeAzure, model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_azure.lro_polls = 4
    fake_azure.add_endpoint(EP)
    fake_azure.register_model("credit-risk", "7")
    provider = provider_for(fake_azure)

    provider.create_deployment(EP, request_for(model_dir))
    provider.wait_for_deployment(EP, "credit-risk-7-a1b2c3", timeout_s=600)
    provider.delete_deployment(EP, "credit-risk-7-a1b2c3")
    print("our own line")

    out, err = capsys.readouterr()
    assert out == "our own line\n"
    assert sys.stdout.encoding  # the real stream's attributes still show through
    assert "Check: endpoint" not in err
    assert len(fake_azure.requests_to("GET", r"/mfeOperationsStatus/")) >= 4


# -- transient failures ----------------------------------------------------------------------------


def test_throttling_becomes_transient_with_the_services_retry_after(
    two_deployments: FakeAzure,
) -> None:
    # azure-core retries 429 itself (three times) before giving up: throttle all four tries.
    two_deployments.fail("GET", ENDPOINT_PATH, 429, times=4, headers={"Retry-After": "37"})
    with pytest.raises(TransientError) as throttled:
        provider_for(two_deployments).read_endpoint(EP)
    assert throttled.value.retry_after == 37
    assert f"read endpoint on endpoint {EP}" in str(throttled.value)


def test_server_errors_become_transient(two_deployments: FakeAzure) -> None:
    two_deployments.fail("GET", r"/deployments$", 503, times=4)
    with pytest.raises(TransientError) as unavailable:
        provider_for(two_deployments).read_endpoint(EP)
    assert unavailable.value.retry_after > 0
    assert unavailable.value.code == "ServiceUnavailable"


def test_a_brief_server_error_is_absorbed_by_the_sdk_retry(two_deployments: FakeAzure) -> None:
    two_deployments.fail("GET", ENDPOINT_PATH, 503, times=1)
    assert provider_for(two_deployments).read_endpoint(EP).live_traffic() == {"blue": 100}


# -- workspace and construction --------------------------------------------------------------------


def test_workspace_fields_come_from_the_manifest_else_the_environment() -> None:
    env = {"AZURE_SUBSCRIPTION_ID": SUBSCRIPTION, "AZUREML_WORKSPACE": "from-env"}
    resolved = resolve_workspace(Workspace(resource_group=RESOURCE_GROUP, name=WORKSPACE), env)
    assert (resolved.subscription_id, resolved.resource_group, resolved.name) == (
        SUBSCRIPTION,
        RESOURCE_GROUP,
        WORKSPACE,
    )


def test_a_missing_workspace_field_is_a_clear_error() -> None:
    with pytest.raises(PermanentError) as missing:
        resolve_workspace(Workspace(name=WORKSPACE), {"AZURE_RESOURCE_GROUP": RESOURCE_GROUP})
    assert "spec.target.workspace.subscription_id (or AZURE_SUBSCRIPTION_ID)" in str(missing.value)
    assert "resource_group" not in str(missing.value)


def test_from_target_builds_a_provider_that_talks_only_to_the_given_transport(
    two_deployments: FakeAzure, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AZURE_SUBSCRIPTION_ID", SUBSCRIPTION)
    target = Target(
        provider="azureml",
        endpoint=EP,
        workspace=Workspace(resource_group=RESOURCE_GROUP, name=WORKSPACE),
    )
    credential = FakeCredential()
    provider = AzureMLProvider.from_target(
        target, transport=two_deployments.transport(), credential=credential
    )
    assert provider.read_endpoint(EP).exists
    assert credential.calls >= 1


def test_an_unknown_gate_source_is_refused(fake_azure: FakeAzure) -> None:
    with pytest.raises(PermanentError, match="use azure-metrics or azure-logs"):
        provider_for(fake_azure).gate_source("local", None)


def test_the_offline_guard_refuses_the_cloud_metadata_address_and_public_names() -> None:
    import socket

    with pytest.raises(OSError, match="only loopback"):
        socket.create_connection(("169.254.169.254", 80), timeout=1)
    with pytest.raises(OSError, match="only loopback"):
        socket.getaddrinfo("management.azure.com", 443)
