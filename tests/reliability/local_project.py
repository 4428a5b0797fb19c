"""A project on the local backend for the reliability tests, and `rollout` run as a user runs it.

`project()` writes a manifest for a toy model next to its `models/` folder. `rollout()` starts
the real command in a process of its own (through `cli_under_test.py`), optionally with the
instruments of `tests.faulty` installed in that process: an invariant checker whose findings
come back in a JSON ledger, a barrier that holds the run after its first read until a second run
has read too, and SIGKILL after the N-th provider call.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).with_name("cli_under_test.py")
ENDPOINT = "toy-ep"


def manifest_text(version: str, *, steps: str | None = None, endpoint: str = ENDPOINT) -> str:
    steps = steps or "    - traffic: 100\n      bake: 0s\n"
    return (
        "apiVersion: saferollout/v1\n"
        "kind: ModelRollout\n"
        "metadata:\n  name: toy\n"
        "spec:\n"
        f"  target:\n    provider: local\n    endpoint: {endpoint}\n"
        f'  model:\n    name: toy\n    version: "{version}"\n'
        f"  steps:\n{steps}"
        "  gates:\n"
        "    - name: errors\n      metric: error_rate\n      max: 0.01\n      min_requests: 5\n"
        "  analysis:\n    source: local\n"
    )


def project(
    root: Path, version: str, *, steps: str | None = None, endpoint: str = ENDPOINT
) -> Path:
    """`root/rollouts/toy.yaml` for toy model `version`; the toy model's folder must be
    `root/models/toy` (the `toy_model` fixture puts it there)."""
    (root / "models" / "toy").mkdir(parents=True, exist_ok=True)
    (root / "models" / "toy" / "sample-request.json").write_text('{"data": [1, 2, 3]}\n')
    (root / "rollouts").mkdir(exist_ok=True)
    path = root / "rollouts" / ("toy.yaml" if endpoint == ENDPOINT else f"{endpoint}.yaml")
    path.write_text(manifest_text(version, steps=steps, endpoint=endpoint))
    return path


@dataclass
class Finished:
    code: int
    stdout: str
    stderr: str
    ledger: dict

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def rollout_process(
    *args: str,
    home: Path,
    ledger: Path,
    kill_after: int | None = None,
    barrier: Path | None = None,
    operator: str = "tester",
    cwd: Path = ROOT,
) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "SAFEROLLOUT_HOME": str(home),
        "SAFEROLLOUT_OPERATOR": operator,
        "RELIABILITY_LEDGER": str(ledger),
    }
    if kill_after is not None:
        env["RELIABILITY_KILL_AFTER"] = str(kill_after)
    if barrier is not None:
        env["RELIABILITY_BARRIER"] = str(barrier)
    return subprocess.Popen(
        [sys.executable, str(DRIVER), *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen[str], ledger: Path, timeout: float = 120) -> Finished:
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
        raise AssertionError(f"rollout did not finish within {timeout} s: {stderr}") from None
    data = json.loads(ledger.read_text()) if ledger.exists() else {}
    return Finished(process.returncode, stdout, stderr, data)


def rollout(*args: str, home: Path, ledger: Path, **options) -> Finished:
    ledger.unlink(missing_ok=True)
    return finish(rollout_process(*args, home=home, ledger=ledger, **options), ledger)
