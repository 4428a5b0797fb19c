"""Saved plans through the command line on the local backend: `rollout apply --plan FILE`
applies a plan only while the endpoint is as it was when the plan was made (the unit tests of
engine/savedplan.py are in tests/test_savedplan.py)."""

from __future__ import annotations

import pytest

from engine.providers.local.provider import LocalProvider
from engine.providers.local.store import ControlPlane
from engine.state import decode
from tests.reliability.local_project import ENDPOINT, project, rollout

pytestmark = pytest.mark.slow


def test_a_plan_made_before_an_out_of_band_change_is_refused_and_writes_nothing(
    local_home, toy_model, tmp_path
):
    toy_model("toy")
    manifest = project(tmp_path, "1")
    saved = tmp_path / "plan.json"
    ledger = tmp_path / "ledger.json"
    made = rollout("plan", str(manifest), "--out", str(saved), home=local_home, ledger=ledger)
    assert made.code == 0, made.stderr

    ControlPlane(local_home).create_endpoint(ENDPOINT)  # someone else got there first
    revision = LocalProvider(local_home).read_endpoint(ENDPOINT).revision

    refused = rollout("apply", "--plan", str(saved), home=local_home, ledger=ledger)
    assert refused.code == 1
    assert f"endpoint {ENDPOINT} changed since the plan was made; nothing was applied" in (
        refused.stderr
    )
    assert refused.ledger["writes"] == 0
    assert LocalProvider(local_home).read_endpoint(ENDPOINT).revision == revision
    assert not (local_home / "server.json").exists(), "a refused plan starts nothing"

    again = rollout("plan", str(manifest), "--out", str(saved), home=local_home, ledger=ledger)
    assert again.code == 0
    applied = rollout("apply", "--plan", str(saved), home=local_home, ledger=ledger)
    assert applied.code == 0, applied.stderr
    assert applied.ledger["violations"] == []
    assert decode(LocalProvider(local_home).read_endpoint(ENDPOINT).tags).stable is not None
