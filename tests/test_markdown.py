"""Markdown, annotations and the history chart: the CLI output GitHub shows to reviewers.

The whole-output golden files of the workflow sequence are in tests/test_workflows.py; these
tests pin the pieces: escaping, when a chart appears, annotations, and the PNG chart.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.annotations import error_annotations, problem_annotation, workspace_path
from engine.chart import ChartError, draw_history_chart
from engine.errors import ManifestError, Problem, SafeRolloutError
from engine.markdown import (
    cell,
    charts,
    gate_series,
    render_history_markdown,
    render_plan_markdown,
    render_status_markdown,
)
from engine.reconcile import Reconciler
from engine.render import status_data
from tests.fakes import Behaviour, FakeClock, FakeProvider, desired_for, manifest

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from engine.cli import main; main()", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def rolled_out(steps_baked: int, error_rate: float = 0.002, into_step_s: float = 0):
    """A churn rollout of version 8 over stable 7, `steps_baked` steps into its schedule and
    `into_step_s` seconds into the step after them."""
    provider, clock = FakeProvider(), FakeClock()
    Reconciler(desired_for(manifest(model={"name": "churn", "version": "7"})), provider, clock,
               "ci").apply()  # fmt: skip
    rollout = manifest(
        gates=[
            {"name": "errs", "metric": "error_rate", "max": 0.01, "min_requests": 50},
            {"name": "p90", "metric": "latency_p90_ms", "max": 120, "min_requests": 50},
            {"name": "vs-stable", "metric": "latency_p99_ms", "max_ratio_to_stable": 1.5},
        ]
    )
    reconciler = Reconciler(desired_for(rollout), provider, clock, "ci")
    provider.behaviour[reconciler.desired.name] = Behaviour(error_rate=error_rate, p90_ms=70)
    reconciler.apply()
    for _ in range(steps_baked):
        clock.advance(10.5 * 60)
        reconciler.apply()
    clock.advance(into_step_s)
    live = reconciler.read()
    plans = reconciler.plan()
    return reconciler, status_data(reconciler.desired, live, plans[0], clock.now()), plans


# ---------------------------------------------------------------------------------------------
# Markdown


def test_a_table_cell_cannot_break_its_row_or_open_html():
    assert cell("a|b <img src=x>\nnext") == "a\\|b &lt;img src=x> next"


def test_a_plan_with_nothing_to_do_says_so_in_its_heading():
    reconciler, _, plans = rolled_out(0)
    reconciler.apply()
    text = render_plan_markdown(reconciler.plan(), reconciler.desired)
    assert text.startswith("### `churn`: no changes\n")
    assert "**Now:** step 1/4 (mirror 20%): baking" in text
    assert "| action |" not in text


def test_a_plan_in_a_step_shows_its_gate_values_against_their_bounds():
    reconciler, _, plans = rolled_out(1)
    reconciler.clock.advance(11 * 60)
    text = render_plan_markdown(reconciler.plan(), reconciler.desired)
    assert "| `errs` | `error_rate` | 0.0015 | max 0.01 | 660 | ✅ passed |" in text
    assert "| `p90` | `latency_p90_ms` | 70.0 ms | max 120.0 ms | 660 | ✅ passed |" in text
    assert "| `vs-stable` | `latency_p99_ms` | 1.00× | max ratio to stable 1.5× | 660 |" in text
    assert "step 2/4 (traffic 10%) → 3/4 (traffic 50%)" in text


def test_status_charts_each_threshold_gate_over_the_measured_steps_and_never_a_ratio():
    reconciler, data, _ = rolled_out(2, into_step_s=300)
    series = {s.gate: s for s in gate_series(data, reconciler.desired.rollout.spec.gates)}
    assert set(series) == {"errs", "p90"}, "the step log keeps no stable figures for ratios"
    assert [label for label, _, _ in series["p90"].measured()] == [
        "1 mirror 20%",
        "2 traffic 10%",
        "3 traffic 50% (now)",
    ]
    text = render_status_markdown(data, reconciler.desired.rollout.spec.gates)
    assert text.count("```mermaid") == 2
    assert 'x-axis ["1 mirror 20%", "2 traffic 10%", "3 traffic 50% (now)"]' in text
    assert "    line [120, 120, 120]" in text


def test_a_gate_measured_on_one_step_only_gets_no_chart():
    reconciler, data, _ = rolled_out(0)
    assert charts(data, reconciler.desired.rollout.spec.gates) == []


def test_history_markdown_lists_every_step_with_its_verdict():
    reconciler, data, _ = rolled_out(2)
    text = render_history_markdown(data, reconciler.desired.rollout.spec.gates)
    assert text.startswith("### History of `churn` (current rollout)\n")
    assert text.count("✅ passed") == 2 and "⏳ running" in text


def test_the_status_of_an_endpoint_not_created_yet_is_one_line():
    reconciler = Reconciler(desired_for(manifest()), FakeProvider(), FakeClock(), "ci")
    live = reconciler.read()
    data = status_data(reconciler.desired, live, reconciler.plan()[0], reconciler.clock.now())
    assert render_status_markdown(data, []) == (
        "### `churn`: does not exist yet\n\n**Now:** create the endpoint\n"
    )


# ---------------------------------------------------------------------------------------------
# Annotations


def test_a_manifest_problem_becomes_an_error_on_its_file_line_and_column(tmp_path):
    problem = Problem(
        str(tmp_path / "rollouts" / "a.yaml"), 12, 7, "spec.steps[1].traffic", "is an integer",
        '"10"', "write 10",
    )  # fmt: skip
    assert problem_annotation(problem, tmp_path, tmp_path) == (
        "::error file=rollouts/a.yaml,line=12,col=7,title=invalid manifest::"
        'spec.steps[1].traffic: is an integer (got "10"); write 10'
    )


def test_text_from_a_manifest_cannot_start_a_workflow_command_of_its_own(tmp_path):
    problem = Problem("odd,name:1.yaml", 1, 1, "metadata.name", "bad", "x\n::add-mask::y 100%")
    line = problem_annotation(problem, tmp_path, tmp_path)
    assert "\n" not in line
    assert "file=odd%2Cname%3A1.yaml," in line
    assert line.endswith("(got x%0A::add-mask::y 100%25)")


def test_paths_outside_the_workspace_are_left_as_given(tmp_path):
    assert workspace_path("/elsewhere/a.yaml", tmp_path, tmp_path / "ws") == "/elsewhere/a.yaml"
    assert workspace_path("rollouts/a.yaml", tmp_path / "ws", tmp_path / "ws") == "rollouts/a.yaml"


def test_an_error_that_is_not_about_a_manifest_is_one_annotation_without_a_file(tmp_path):
    lines = error_annotations(SafeRolloutError("endpoint x is locked"), tmp_path, tmp_path)
    assert lines == ["::error title=rollout::endpoint x is locked"]
    problems = [Problem("a.yaml", n, 1, "", f"p{n}") for n in (1, 2)]
    assert len(error_annotations(ManifestError(problems), tmp_path, tmp_path)) == 2


def test_validate_in_github_actions_annotates_every_problem_and_no_github_turns_it_off(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "tests" / "manifests" / "many-problems.yaml").read_text())
    env = {"GITHUB_ACTIONS": "true", "GITHUB_WORKSPACE": str(tmp_path)}
    result = cli("validate", str(bad), env=env)
    assert result.returncode == 1 and result.stdout == ""
    annotations = [line for line in result.stderr.splitlines() if line.startswith("::error ")]
    assert len(annotations) >= 5
    assert all(line.startswith("::error file=bad.yaml,line=") for line in annotations)
    quiet = cli("--no-github", "validate", str(bad), env=env)
    assert "::error" not in quiet.stderr and "error: " in quiet.stderr
    forced = cli("--github", "validate", str(bad), env={"GITHUB_ACTIONS": ""})
    assert "::error file=" in forced.stderr


def test_validate_json_lists_each_manifest_for_the_workflows():
    result = cli("validate", "rollouts/", "--format", "json")
    assert result.returncode == 0, result.stderr
    listed = {m["file"]: m for m in json.loads(result.stdout)["manifests"]}
    assert listed["rollouts/credit-risk.yaml"]["provider"] == "azureml"
    assert listed["rollouts/credit-risk-local.yaml"] == {
        "file": "rollouts/credit-risk-local.yaml",
        "rollout": "credit-risk-local",
        "endpoint": "credit-risk-local",
        "provider": "local",
        "model": {"name": "credit-risk", "version": "1"},
    }


# ---------------------------------------------------------------------------------------------
# The history chart


def test_the_history_chart_is_a_png_with_one_panel_per_charted_gate(tmp_path):
    reconciler, data, _ = rolled_out(2, into_step_s=300)
    path = tmp_path / "gates.png"
    drawn = draw_history_chart(data, reconciler.desired.rollout.spec.gates, path)
    assert drawn == 2
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from matplotlib import image

    height, width, _ = image.imread(path).shape
    assert width == 800 and height == 2 * 260


def test_a_chart_that_cannot_be_written_is_a_clear_error(tmp_path):
    reconciler, data, _ = rolled_out(1)
    with pytest.raises(ChartError, match="cannot write the chart to"):
        draw_history_chart(data, [], tmp_path / "missing" / "gates.png")


def test_only_drawing_a_chart_imports_matplotlib(tmp_path):
    probe = (
        "import sys\n"
        "from engine.cli import main\n"
        "sys.argv = ['rollout', 'status', 'rollouts/credit-risk-local.yaml', '--format',"
        " 'markdown']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('MATPLOTLIB', 'matplotlib' in sys.modules, file=sys.stderr)\n"
    )
    env = {**os.environ, "SAFEROLLOUT_HOME": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert "does not exist yet" in result.stdout, result.stderr
    assert "MATPLOTLIB False" in result.stderr
