"""Which Azure credential the `azureml` provider and the Azure gate sources use.

On a laptop or a runner with a managed identity: `DefaultAzureCredential`. In GitHub Actions
with OIDC (ACTIONS_ID_TOKEN_REQUEST_URL is set): a `ClientAssertionCredential` whose callback
asks GitHub for a fresh ID token every time Entra ID needs one, so a bake of several hours never
outlives a token the way a cached `az login` does. Tokens are never logged.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any

from engine.errors import PermanentError

log = logging.getLogger("engine.azure_auth")

GITHUB_AUDIENCE = "api://AzureADTokenExchange"
GITHUB_TOKEN_TIMEOUT_S = 30.0

Opener = Callable[..., Any]


class AzureCredentialError(PermanentError):
    """No usable credential could be set up; says which variable is missing."""


def is_github_oidc(env: Mapping[str, str]) -> bool:
    return bool(env.get("ACTIONS_ID_TOKEN_REQUEST_URL"))


def github_token_url(request_url: str, audience: str = GITHUB_AUDIENCE) -> str:
    """GitHub's token URL with the audience Entra ID expects, keeping its own query."""
    parts = urllib.parse.urlsplit(request_url)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    query = [(k, v) for k, v in query if k != "audience"] + [("audience", audience)]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def github_assertion(
    env: Mapping[str, str], *, opener: Opener = urllib.request.urlopen
) -> Callable[[], str]:
    """A callback returning a fresh GitHub OIDC token each time it is called."""
    url = github_token_url(env["ACTIONS_ID_TOKEN_REQUEST_URL"])
    request_token = env.get("ACTIONS_ID_TOKEN_REQUEST_TOKEN", "")
    if not request_token:
        raise AzureCredentialError(
            "ACTIONS_ID_TOKEN_REQUEST_TOKEN is not set: give the job `permissions: id-token: write`"
        )

    def fetch() -> str:
        request = urllib.request.Request(url, headers={"Authorization": f"bearer {request_token}"})
        try:
            with opener(request, timeout=GITHUB_TOKEN_TIMEOUT_S) as response:
                value = json.loads(response.read().decode("utf-8")).get("value")
        except (OSError, ValueError) as exc:
            # The message names the failure's kind only: URLs and bodies may carry the token.
            raise AzureCredentialError(
                f"could not get an OIDC token from GitHub ({type(exc).__name__})"
            ) from None
        if not value:
            raise AzureCredentialError("GitHub answered the OIDC token request without a token")
        log.debug("fetched a fresh GitHub OIDC token")
        return str(value)

    return fetch


def default_credential(env: Mapping[str, str] | None = None) -> Any:
    """The credential for this environment (see the module header)."""
    env = os.environ if env is None else env
    if is_github_oidc(env):
        client_id, tenant_id = env.get("AZURE_CLIENT_ID"), env.get("AZURE_TENANT_ID")
        if not (client_id and tenant_id):
            raise AzureCredentialError(
                "running in GitHub Actions with OIDC but AZURE_CLIENT_ID or AZURE_TENANT_ID is "
                "not set: set both to the federated identity's client and tenant ids"
            )
        from azure.identity import ClientAssertionCredential

        return ClientAssertionCredential(tenant_id, client_id, github_assertion(env))
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential()
