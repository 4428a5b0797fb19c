"""Secrets and artifacts: the endpoint key never leaves keys.json, and a tampered model artifact
is refused before it is loaded, by the server and through a rollout.

The key test runs the whole demo once (`rollout demo --fast` as a user runs it, with --verbose
so that debug logging is on), then `status`, `history` and `plan` in every format on its state
directory, and greps every byte they printed and every file left in that directory, except
keys.json, for the endpoint key.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from engine.live import ProvisioningState
from engine.loader import load_manifest
from engine.plan import Outcome
from engine.reconcile import Reconciler, desired_from
from engine.state import decode
from tests.fakes import FakeClock
from tests.faulty import Checked, Ledger
from tests.reliability.local_project import ENDPOINT, project

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
DEMO_ENDPOINT = "credit-risk-local"


def cli(*args: str, home: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    env = dict(os.environ)
    if home is not None:
        env["SAFEROLLOUT_HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-c", "from engine.cli import main; main()", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def demo_outputs() -> tuple[Path, list[tuple[str, bytes]]]:
    demo = cli("--verbose", "demo", "--fast")
    assert demo.returncode == 0, demo.stderr.decode()[-2000:]
    found = re.search(rb"state in (\S+)", demo.stdout + demo.stderr)
    assert found, "the demo names its state directory"
    home = Path(found.group(1).decode())
    outputs = [("demo stdout", demo.stdout), ("demo stderr", demo.stderr)]
    for command in ("status", "history", "plan"):
        for fmt in ("text", "json", "markdown"):
            done = cli("--verbose", command, DEMO_ENDPOINT, "--format", fmt, home=home)
            assert done.returncode == 0, done.stderr.decode()
            outputs += [
                (f"{command} {fmt} stdout", done.stdout),
                (f"{command} stderr", done.stderr),
            ]
    return home, outputs


def test_the_endpoint_key_appears_in_no_output_of_a_whole_demo_run(demo_outputs):
    home, outputs = demo_outputs
    key = json.loads((home / "keys.json").read_text())[DEMO_ENDPOINT].encode()
    assert len(key) >= 32
    assert len(outputs) == 2 + 3 * 3 * 2
    assert [name for name, data in outputs if key in data] == []


def test_the_endpoint_key_is_in_no_file_but_keys_json_tags_and_history_included(demo_outputs):
    home, _ = demo_outputs
    key = json.loads((home / "keys.json").read_text())[DEMO_ENDPOINT].encode()
    files = [p for p in home.rglob("*") if p.is_file() and p.name != "keys.json"]
    names = {p.name for p in files}
    assert {"control-plane.json", "server.log"} <= names, names  # the tags and the log
    assert [str(p.relative_to(home)) for p in files if key in p.read_bytes()] == []
    assert oct((home / "keys.json").stat().st_mode & 0o777) == "0o600"


def test_a_candidate_whose_artifact_was_tampered_with_is_never_served(
    local_server, toy_model, tmp_path
):
    """The digest check stops it before the model is loaded; the rollout rolls it back."""
    toy_model("toy")
    manifest = project(tmp_path, "1")
    clock, ledger = FakeClock(), Ledger()
    checked = Checked(local_server, ledger)
    Reconciler(desired_from(load_manifest(manifest)), checked, clock, "t@ci:1").apply()
    stable = decode(local_server.read_endpoint(ENDPOINT).tags).stable

    tampered = toy_model("toy")
    tampered.artifact.write_text(
        tampered.artifact.read_text().replace('"factor": 2', '"factor": 7')
    )
    manifest = project(tmp_path, tampered.version)
    result = Reconciler(desired_from(load_manifest(manifest)), checked, clock, "t@ci:2").apply()

    live = local_server.read_endpoint(ENDPOINT)
    candidate = decode(live.tags).candidate
    assert result.final.outcome in (Outcome.ROLLED_BACK, Outcome.FOUND_ROLLED_BACK)
    assert live.deployments[candidate].state is ProvisioningState.FAILED
    assert "refusing to load it" in live.deployments[candidate].error
    assert str(tampered.artifact.parent) not in tampered.imported_from, "never imported"
    assert live.live_traffic() == {stable: 100} and live.live_mirror() == {}
    assert ledger.violations == []
