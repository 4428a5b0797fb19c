"""The main job end to end: real training, a real local server, real HTTP requests.

Runs `rollout demo` in its fast mode and checks the story a user sees: v1 stable, v2 promoted
through every step, v3 caught by the error-rate gate and rolled back with traffic on v2.
"""

from __future__ import annotations

import os

import pytest

from engine.demo import run_demo
from engine.home import HOME_ENV

pytestmark = pytest.mark.slow


@pytest.fixture
def demo_report():
    saved = os.environ.get(HOME_ENV)
    lines: list[str] = []
    try:
        report = run_demo(fast=True, say=lines.append)
    finally:
        if saved is None:
            os.environ.pop(HOME_ENV, None)
        else:
            os.environ[HOME_ENV] = saved
    return report, "\n".join(lines)


def test_the_demo_promotes_v2_and_rolls_back_v3_on_its_error_gate(demo_report):
    report, output = demo_report
    assert report.exit_code == 0, output
    assert report.outcomes == {"v1": "converged", "v2": "converged", "v3": "rolled_back"}
    assert report.rollback_gate == "candidate-errors"
    assert "error_rate" in report.rollback_reason
    assert "evidence of a regression" in report.rollback_reason
    assert report.stable.startswith("credit-risk-2-")
    assert report.final_traffic == {report.stable: 100}

    v2_steps = [(r["step"], r["verdict"]) for r in report.rows if r["version"] == "v2"]
    assert v2_steps == [
        ("mirror 20%", "passed"),
        ("traffic 10%", "passed"),
        ("traffic 50%", "passed"),
        ("traffic 100%", "passed"),
    ]
    v3_steps = [(r["step"], r["verdict"]) for r in report.rows if r["version"] == "v3"]
    assert v3_steps == [("mirror 20%", "failed")]
    assert report.requests_sent > 500
    assert report.client_errors == 0, "v3 failed on mirrored copies, which clients never see"
    assert "Summary" in output and "candidate-errors" in output
