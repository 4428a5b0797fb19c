"""Against a real Azure ML workspace: skipped unless explicitly asked for. Never counts as
coverage and never runs in CI (see docs/azure.md, "Running against Azure").

It needs SAFEROLLOUT_AZURE_LIVE=1, AZURE_SUBSCRIPTION_ID, AZURE_RESOURCE_GROUP,
AZUREML_WORKSPACE and SAFEROLLOUT_AZURE_LIVE_ENDPOINT (an endpoint it may create and tag), and
a credential DefaultAzureCredential can find (`az login` is enough).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

import pytest

from engine.live import EndpointWrite
from engine.providers.azure import AzureMLProvider, resolve_workspace
from engine.providers.base import Window

REQUIRED = (
    "SAFEROLLOUT_AZURE_LIVE",
    "AZURE_SUBSCRIPTION_ID",
    "AZURE_RESOURCE_GROUP",
    "AZUREML_WORKSPACE",
    "SAFEROLLOUT_AZURE_LIVE_ENDPOINT",
)

pytestmark = [
    pytest.mark.azure_live,
    pytest.mark.skipif(
        os.environ.get("CI") == "true" or not all(os.environ.get(v) for v in REQUIRED),
        reason="live Azure test: set " + ", ".join(REQUIRED) + " (never in CI)",
    ),
]


def test_an_endpoint_round_trip_on_a_real_workspace() -> None:
    endpoint = os.environ["SAFEROLLOUT_AZURE_LIVE_ENDPOINT"]
    provider = AzureMLProvider(resolve_workspace(None), progress=print)

    live = provider.create_endpoint(endpoint)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    write = EndpointWrite(
        traffic=live.live_traffic(),
        mirror=live.live_mirror(),
        tags={"saferollout.live-test": stamp},
    )
    after = provider.update_endpoint(endpoint, write, expected_revision=live.revision)
    assert after.tags["saferollout.live-test"] == stamp
    assert {k: v for k, v in after.tags.items() if not k.startswith("saferollout.")} == {
        k: v for k, v in live.tags.items() if not k.startswith("saferollout.")
    }

    now = datetime.now(UTC)
    for name in after.deployments:
        source = provider.gate_source("azure-metrics", None)
        measured = source.measure(
            endpoint, name, Window(now - timedelta(minutes=30), now), mirrored=False
        )
        assert measured.requests >= 0
