"""Training registers model versions in Azure ML (`--register azureml`), through the offline fake:
the artifact into the default datastore, a model version created from the REST shapes, and the
`azureml:name:version` to put in the manifest printed."""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.errors import PermanentError
from engine.providers.azure import AzureWorkspace
from engine.registry import sha256_of
from tests.azure_fake import (
    ACCOUNT,
    CONTAINER,
    RESOURCE_GROUP,
    SUBSCRIPTION,
    WORKSPACE,
    FakeAzure,
    FakeCredential,
    block_network,
    checked_fake,
)
from training import register_azure
from training.train import main

WS = AzureWorkspace(SUBSCRIPTION, RESOURCE_GROUP, WORKSPACE)
MODEL_VERSIONS = r"/models/credit-risk/versions/[^/]+$"


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    block_network(monkeypatch)


@pytest.fixture
def fake_azure(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeAzure]:
    fake = FakeAzure()
    monkeypatch.setattr(
        register_azure, "azure_connection", lambda: (FakeCredential(), fake.transport())
    )
    yield from checked_fake(fake)


def already_registered(fake: FakeAzure, *versions: str) -> None:
    for version in versions:
        uri = (
            f"azureml://subscriptions/s/resourcegroups/r/workspaces/w/datastores/d/paths/{version}"
        )
        resource = fake._model_version("credit-risk", version, {"modelUri": uri})
        fake.model_versions[("credit-risk", version)] = resource


def register(fake: FakeAzure, artifact: Path, **options):
    return register_azure.register_model(
        artifact,
        name="credit-risk",
        sha256=sha256_of(artifact),
        workspace=WS,
        credential=FakeCredential(),
        transport=fake.transport(),
        **options,
    )


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    path = tmp_path / "credit-risk.joblib"
    path.write_bytes(b"a trained pipeline")
    return path


def test_training_registers_the_next_version_and_prints_the_reference_for_the_manifest(
    fake_azure: FakeAzure,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    already_registered(fake_azure, "5", "6", "experiment-a")
    monkeypatch.setenv("AZURE_SUBSCRIPTION_ID", SUBSCRIPTION)
    monkeypatch.setenv("AZURE_RESOURCE_GROUP", RESOURCE_GROUP)
    monkeypatch.setenv("AZUREML_WORKSPACE", WORKSPACE)

    assert main(["--home", str(tmp_path), "--register", "azureml"]) == 0

    out, err = capsys.readouterr()
    assert out.splitlines()[-1] == "azureml:credit-risk:7"
    assert "registered in Azure ML as version 7" in out
    (put,) = fake_azure.requests_to("PUT", MODEL_VERSIONS)
    assert put.path.endswith("/models/credit-risk/versions/7")
    props = put.body["properties"]
    local = tmp_path / "registry" / "credit-risk" / "1" / "credit-risk.joblib"
    sha = sha256_of(local)
    assert props["modelType"] == "custom_model"
    assert props["modelUri"] == (
        f"azureml://subscriptions/{SUBSCRIPTION}/resourcegroups/{RESOURCE_GROUP}/workspaces/"
        f"{WORKSPACE}/datastores/workspaceblobstore/paths/saferollout-models/credit-risk/{sha}/"
        "credit-risk.joblib"
    )
    assert props["properties"]["sha256"] == sha
    assert props["properties"]["variant"] == "baseline"
    assert float(props["properties"]["roc_auc"]) > 0.75
    assert props["properties"]["local-version"] == "1"
    path = f"saferollout-models/credit-risk/{sha}/credit-risk.joblib"
    assert fake_azure.blobs[(ACCOUNT, CONTAINER, path)] == local.read_bytes()
    assert fake_azure.blob_auth == ["SAS"], "signed with the datastore's short-lived SAS"
    assert "fake-sig" not in out + err, "the datastore's SAS token is never shown"


def test_the_same_artifact_registered_again_gets_its_version_back_without_an_upload(
    fake_azure: FakeAzure, artifact: Path
) -> None:
    first = register(fake_azure, artifact)
    again = register(fake_azure, artifact)

    assert (first.version, first.created) == ("1", True)
    assert (again.version, again.created) == ("1", False)
    assert again.reference == "azureml:credit-risk:1"
    assert len(fake_azure.requests_to("PUT", MODEL_VERSIONS)) == 1
    assert len([r for r in fake_azure.requests if r.host.endswith(".blob.core.windows.net")]) == 1


def test_a_datastore_with_an_account_key_signs_the_upload_and_the_key_is_never_shown(
    fake_azure: FakeAzure,
    artifact: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    key = base64.b64encode(b"storage-account-key").decode()
    fake_azure.datastore_secrets = {"secretsType": "AccountKey", "key": key}

    registered = register(fake_azure, artifact)

    assert registered.created
    assert fake_azure.blob_auth == ["SharedKey"]
    out, err = capsys.readouterr()
    assert key not in caplog.text + out + err


def test_without_a_workspace_training_stops_before_training_and_names_the_variables(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--home", str(tmp_path), "--register", "azureml"]) == 1
    err = capsys.readouterr().err
    assert "AZURE_SUBSCRIPTION_ID" in err and "AZUREML_WORKSPACE" in err
    assert not (tmp_path / "registry").exists(), "nothing was trained"


def test_a_refused_registration_names_the_workspace_operation_and_service_code(
    fake_azure: FakeAzure, artifact: Path
) -> None:
    fake_azure.fail("PUT", MODEL_VERSIONS, 400, "UserError")
    with pytest.raises(PermanentError) as refused:
        register(fake_azure, artifact)
    message = str(refused.value)
    assert f"register model credit-risk on workspace {WORKSPACE} failed: UserError" in message
    assert "UserError" in message


@pytest.mark.parametrize(
    ("versions", "expected"),
    [([], "1"), (["1", "2", "10"], "11"), (["exp-a", "3"], "4"), (["exp-a"], "1")],
)
def test_the_next_version_follows_the_highest_whole_number(versions, expected) -> None:
    assert register_azure.next_version(versions) == expected
