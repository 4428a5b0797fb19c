"""The `rollout` command as a user runs it: real processes, exit codes, stdout versus stderr."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LOCAL = "rollouts/credit-risk-local.yaml"


def rollout(*args: str, home: Path, check: bool = False) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SAFEROLLOUT_HOME": str(home), "SAFEROLLOUT_OPERATOR": "tester"}
    return subprocess.run(
        [sys.executable, "-c", "from engine.cli import main; main()", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=check,
    )


def test_validate_accepts_the_checked_in_manifests(tmp_path):
    result = rollout("validate", "rollouts/", home=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "ok: rollouts/credit-risk-local.yaml" in result.stderr
    assert result.stdout == ""


def test_validate_reports_located_errors_and_no_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    text = (ROOT / LOCAL).read_text().replace("traffic: 10\n", 'traffic: "10"\n')
    bad.write_text(text.replace('version: "1"', "version: 1.10"))
    result = rollout("validate", str(bad), home=tmp_path)
    assert result.returncode == 1
    assert f"{bad}:" in result.stderr
    assert "spec.steps[1].traffic" in result.stderr
    assert "spec.model.version" in result.stderr and '"1.10"' in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_plan_of_an_empty_home_shows_the_first_rollout_and_exit_code_2(tmp_path):
    result = rollout("plan", LOCAL, "--detailed-exitcode", home=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "+ create endpoint credit-risk-local" in result.stdout
    assert "? smoke-test deployment credit-risk-1-" in result.stdout
    assert "Plan: 2 to create, 1 to test, 2 to update, 0 to delete." in result.stdout
    assert (
        not (tmp_path / "state.json").exists()
        or "credit-risk-local" not in (tmp_path / "state.json").read_text()
    ), "plan writes nothing"


def test_plan_json_is_a_parseable_contract(tmp_path):
    result = rollout("plan", LOCAL, "--format", "json", home=tmp_path)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["version"] == 1
    assert document["endpoint"] == "credit-risk-local"
    assert document["changes"] is True
    assert [a["kind"] for a in document["actions"]] == [
        "create_endpoint",
        "create_deployment",
        "update_endpoint",
        "smoke_test",
        "update_endpoint",
    ]
    assert document["actions"][-1]["traffic"]["after"] == {document["deployment"]: 100}


def test_operator_commands_out_of_order_are_refused_with_a_message(tmp_path):
    result = rollout("promote", LOCAL, home=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("error: ")
    assert "Traceback" not in result.stderr
    result = rollout("undo", LOCAL, home=tmp_path)
    assert result.returncode == 1 and "does not exist yet" in result.stderr


def test_an_unknown_target_is_a_clear_error(tmp_path):
    result = rollout("status", "no-such-endpoint", home=tmp_path)
    assert result.returncode == 1
    assert "neither a manifest file nor an endpoint named in rollouts/" in result.stderr


def test_status_of_an_endpoint_that_does_not_exist_says_so(tmp_path):
    result = rollout("status", "credit-risk-local", home=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "does not exist yet" in result.stdout


@pytest.mark.slow
def test_apply_status_and_history_on_a_real_local_backend(tmp_path):
    from engine.providers.local.provider import LocalProvider
    from training.train import train_version

    train_version(tmp_path, variant="baseline", seed=0)
    try:
        result = rollout("apply", LOCAL, home=tmp_path)
        assert result.returncode == 0, result.stderr
        assert "started the local backend in the background" in result.stderr
        assert "passed its smoke test and becomes stable" in result.stderr

        status = rollout("status", "credit-risk-local", "--format", "json", home=tmp_path)
        data = json.loads(status.stdout)
        assert data["phase"] == "Succeeded"
        assert data["traffic"] == {data["stable"]: 100}
        assert data["lease"] is None

        again = rollout("plan", LOCAL, "--detailed-exitcode", home=tmp_path)
        assert again.returncode == 0 and "No changes." in again.stdout

        key = LocalProvider(tmp_path).endpoint_key("credit-risk-local")
        for output in (result, status, again):
            assert key not in output.stdout + output.stderr
    finally:
        LocalProvider(tmp_path).stop_server()


def test_apply_of_an_unregistered_model_version_stops_before_writing_anything(tmp_path):
    plan = rollout("plan", LOCAL, home=tmp_path)
    assert "warning: apply will stop before writing anything" in plan.stderr
    assert "python -m training.train" in plan.stderr
    result = rollout("apply", LOCAL, home=tmp_path)
    assert result.returncode == 1
    assert "nothing was written: model credit-risk version 1 is not registered" in result.stderr
    assert not (tmp_path / "server.json").exists(), "no server was started"
    status = rollout("status", "credit-risk-local", home=tmp_path)
    assert "does not exist yet" in status.stdout


def test_a_usage_error_exits_1_not_the_changes_pending_code(tmp_path):
    result = rollout("plan", LOCAL, "--detailed-exitcode", "--no-such-flag", home=tmp_path)
    assert result.returncode == 1
