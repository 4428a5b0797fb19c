"""Choosing the Azure credential; GitHub's OIDC token fetched fresh on every request for one."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import urllib.parse

import pytest

from engine.azure_auth import (
    AzureCredentialError,
    default_credential,
    github_assertion,
    github_token_url,
)
from tests.azure_fake import block_network

ACTIONS = {
    "ACTIONS_ID_TOKEN_REQUEST_URL": "https://token.actions.example/oidc?api-version=2.0",
    "ACTIONS_ID_TOKEN_REQUEST_TOKEN": "runner-request-token",
    "AZURE_CLIENT_ID": "client-id",
    "AZURE_TENANT_ID": "tenant-id",
}


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    block_network(monkeypatch)


class FakeGitHub:
    """Answers GitHub's OIDC token endpoint with a new token on each call."""

    def __init__(self) -> None:
        self.requests: list = []

    def __call__(self, request, timeout: float):
        self.requests.append(request)
        return io.BytesIO(json.dumps({"value": f"oidc-token-{len(self.requests)}"}).encode())


def test_the_token_url_asks_for_entra_ids_audience_and_keeps_githubs_query() -> None:
    url = github_token_url("https://token.actions.example/oidc?api-version=2.0&audience=other")
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
    assert query == {"api-version": "2.0", "audience": "api://AzureADTokenExchange"}


def test_every_call_fetches_a_fresh_github_token_so_a_long_bake_never_outlives_one() -> None:
    github = FakeGitHub()
    assertion = github_assertion(ACTIONS, opener=github)

    assert [assertion(), assertion()] == ["oidc-token-1", "oidc-token-2"]
    request = github.requests[0]
    assert request.get_header("Authorization") == "bearer runner-request-token"
    assert "audience=api%3A%2F%2FAzureADTokenExchange" in request.full_url


def test_a_failed_token_request_says_so_without_showing_any_token(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def refuse(request, timeout):
        raise OSError(f"refused {request.full_url} with {request.get_header('Authorization')}")

    caplog.set_level(logging.DEBUG)
    with pytest.raises(AzureCredentialError, match=r"could not get an OIDC token .*OSError") as err:
        github_assertion(ACTIONS, opener=refuse)()
    assert "runner-request-token" not in str(err.value) + caplog.text
    assert err.value.__cause__ is None


def test_in_github_actions_the_credential_refreshes_through_github() -> None:
    from azure.identity import ClientAssertionCredential

    assert isinstance(default_credential(ACTIONS), ClientAssertionCredential)


def test_in_github_actions_without_client_and_tenant_ids_the_error_names_them() -> None:
    env = {k: v for k, v in ACTIONS.items() if k != "AZURE_TENANT_ID"}
    with pytest.raises(AzureCredentialError, match="AZURE_CLIENT_ID or AZURE_TENANT_ID"):
        default_credential(env)


def test_a_job_without_id_token_permission_is_told_what_to_add() -> None:
    env = {k: v for k, v in ACTIONS.items() if k != "ACTIONS_ID_TOKEN_REQUEST_TOKEN"}
    with pytest.raises(AzureCredentialError, match="id-token: write"):
        default_credential(env)


def test_elsewhere_the_default_azure_credential_is_used() -> None:
    from azure.identity import DefaultAzureCredential

    assert isinstance(default_credential({}), DefaultAzureCredential)


def test_importing_the_azure_modules_imports_no_azure_package() -> None:
    # Commands on local manifests import the engine; azure-ai-ml alone costs about a second.
    code = (
        "import sys, engine.providers.azure, engine.providers.azureml, "
        "engine.sources.azure_metrics, "
        "engine.sources.azure_logs, engine.azure_auth; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'azure'))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
