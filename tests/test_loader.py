"""The manifest loader: every rule reported at its line, all at once, never a traceback."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.errors import ManifestError
from engine.loader import (
    FIELDS,
    MAX_BYTES,
    LoadedManifest,
    load_manifest,
    load_manifest_text,
    load_paths,
    models_in,
)
from engine.spec import ModelRollout

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "manifests"
MINIMAL = (FIXTURES / "minimal.yaml").read_text()


def problems(text: str | bytes, file: str = "m.yaml") -> list[str]:
    with pytest.raises(ManifestError) as caught:
        load_manifest_text(text, file)
    return [str(p) for p in caught.value.problems]


def fixture_problems(name: str) -> list[str]:
    return problems((FIXTURES / name).read_bytes(), name)


def variant(*edits: tuple[str, str]) -> str:
    """minimal.yaml with whole lines replaced; each old line must occur exactly once."""
    text = "\n" + MINIMAL
    for old, new in edits:
        assert text.count(f"\n{old}\n") == 1, old
        text = text.replace(f"\n{old}\n", f"\n{new}\n" if new else "\n")
    return text[1:]


def with_steps(*steps: str) -> str:
    """minimal.yaml with its steps replaced; the first step is on line 13."""
    start, end = MINIMAL.index("  steps:\n"), MINIMAL.index("  gates:\n")
    listed = "".join(f"    - {step}\n" for step in steps)
    return MINIMAL[:start] + "  steps:\n" + listed + MINIMAL[end:]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A repository layout: models/churn/ with its sample request, and an empty rollouts/."""
    (tmp_path / "models" / "churn").mkdir(parents=True)
    (tmp_path / "models" / "churn" / "sample-request.json").write_text('{"data": []}')
    (tmp_path / "rollouts").mkdir()
    return tmp_path


# --- the checked-in manifests and the field cases ----------------------------------------------


def test_checked_in_rollouts_load_cleanly():
    loaded = load_paths([ROOT / "rollouts"])

    assert [m.path.name for m in loaded] == ["credit-risk-local.yaml", "credit-risk.yaml"]
    for manifest in loaded:
        assert manifest.model_dir == ROOT / "models" / "credit-risk"
        assert manifest.smoke_request == ROOT / "models" / "credit-risk" / "sample-request.json"


def test_f02_string_and_out_of_range_weights_are_each_reported_at_their_line():
    assert fixture_problems("f02-string-weights.yaml") == [
        "f02-string-weights.yaml:9:7: spec.steps[1].traffic: traffic is an integer percent "
        'from 1 to 100 (got "25"); write 25, an integer percent',
        "f02-string-weights.yaml:10:7: spec.steps[2].traffic: traffic is an integer percent "
        "from 1 to 100 (got 25%); write 25, an integer percent",
        "f02-string-weights.yaml:11:7: spec.steps[3].traffic: traffic is an integer percent "
        "from 1 to 100 (got 150); 100 is all of live traffic",
        "f02-string-weights.yaml:12:7: spec.steps[4].traffic: traffic is an integer percent "
        "from 1 to 100 (got -5); 1 is the smallest share; stable keeps the rest",
        "f02-string-weights.yaml:13:7: spec.steps[5].traffic: traffic is an integer percent "
        "from 1 to 100 (got 0.5); shares are whole percent: 1 is the smallest",
    ]


def test_f10_yaml_quirks_are_reported_not_coerced():
    assert fixture_problems("f10-yaml-quirks.yaml") == [
        "f10-yaml-quirks.yaml:6:7: spec.steps[0].traffic: duplicate key traffic; "
        "first at line 4; keep one of them",
        "f10-yaml-quirks.yaml:7:7: spec.steps[1].approval: approval expects manual (got no); "
        "YAML 1.1 reads no as false: write approval: manual",
        'f10-yaml-quirks.yaml:9:24: spec.model.version: a version is a pinned string such as "7" '
        '(got 1.10); quote it: "1.10"',
        "f10-yaml-quirks.yaml:14:1: kind: duplicate key kind; first at line 12; keep one of them",
    ]


def test_f11_mirror_above_50_percent_is_rejected_at_its_line():
    assert fixture_problems("f11-mirror-60.yaml") == [
        "f11-mirror-60.yaml:8:7: spec.steps[0].mirror: mirror is an integer percent from 1 to 50 "
        "(got 60); Azure mirrors at most 50 % of live traffic",
    ]


def test_f09_two_manifests_for_one_endpoint_name_each_other(project: Path):
    (project / "rollouts" / "a.yaml").write_text(MINIMAL)
    (project / "rollouts" / "b.yml").write_text(variant(("  name: churn", "  name: churn-2")))
    a, b = project / "rollouts" / "a.yaml", project / "rollouts" / "b.yml"

    with pytest.raises(ManifestError) as caught:
        load_paths([project / "rollouts"])

    assert [str(p) for p in caught.value.problems] == [
        f"{a}:8:5: spec.target.endpoint: {b} also targets the local endpoint churn; "
        "one manifest per endpoint: remove or retarget one of them",
        f"{b}:8:5: spec.target.endpoint: {a} also targets the local endpoint churn; "
        "one manifest per endpoint: remove or retarget one of them",
    ]


def test_f09_endpoint_clash_is_found_across_paths_of_one_call_and_ignores_case(project: Path):
    (project / "one").mkdir()
    (project / "one" / "a.yaml").write_text(MINIMAL)
    (project / "rollouts" / "b.yaml").write_text(
        variant(("    endpoint: churn", "    endpoint: CHURN"))
    )

    with pytest.raises(ManifestError) as caught:
        load_paths([project / "one" / "a.yaml", project / "rollouts"])

    assert [p.file for p in caught.value.problems] == [
        str(project / "one" / "a.yaml"),
        str(project / "rollouts" / "b.yaml"),
    ]


def test_same_endpoint_name_on_different_providers_is_not_a_clash(project: Path):
    azure = variant(("    provider: local", "    provider: azureml"))
    (project / "rollouts" / "a.yaml").write_text(MINIMAL)
    (project / "rollouts" / "b.yaml").write_text(azure)

    assert len(load_paths([project / "rollouts"])) == 2


def test_every_problem_in_every_file_is_reported_at_once(project: Path):
    (project / "rollouts" / "a.yaml").write_bytes((FIXTURES / "f11-mirror-60.yaml").read_bytes())
    (project / "rollouts" / "b.yaml").write_bytes((FIXTURES / "many-problems.yaml").read_bytes())

    with pytest.raises(ManifestError) as caught:
        load_paths([project / "rollouts"])

    where = [(Path(p.file).name, p.line, p.path) for p in caught.value.problems]
    assert where == [
        ("a.yaml", 8, "spec.steps[0].mirror"),
        ("b.yaml", 1, "apiVersion"),
        ("b.yaml", 5, "spec.target.provider"),
        ("b.yaml", 5, "spec.target.endpoint"),
        ("b.yaml", 6, "spec.model.version"),
        ("b.yaml", 9, "spec.steps[0].bake"),
        ("b.yaml", 12, "spec.gates[0].dryrun"),
        ("b.yaml", 13, "spec.on_failure"),
    ]


def test_many_problems_read_for_humans():
    assert fixture_problems("many-problems.yaml") == [
        "many-problems.yaml:1:1: apiVersion: apiVersion is saferollout/v1 (got saferollout/v2); "
        "did you mean saferollout/v1?",
        "many-problems.yaml:5:12: spec.target.provider: provider is azureml or local "
        "(got kubernetes)",
        "many-problems.yaml:5:34: spec.target.endpoint: an endpoint name has 3-32 characters: "
        "letters, digits and -, starting with a letter and not ending with - (got Churn_Model); "
        "try churn-model",
        'many-problems.yaml:6:24: spec.model.version: a version is a pinned string such as "7" '
        '(got latest); pin the version you mean, e.g. version: "7"',
        "many-problems.yaml:9:7: spec.steps[0].bake: bake is a duration such as 30s, 10m or 2h "
        "(got 10 minutes); write 10m",
        "many-problems.yaml:12:69: spec.gates[0].dryrun: unknown key dryrun; did you mean dry_run?",
        "many-problems.yaml:13:3: spec.on_failure: on_failure is rollback or hold (got retry)",
    ]


# --- steps -------------------------------------------------------------------------------------


def test_weights_that_decrease_are_reported_at_the_step_that_breaks_the_order():
    text = variant(("    - traffic: 50", "    - traffic: 5"))

    assert problems(text) == [
        "m.yaml:18:7: spec.steps[3].traffic: traffic never decreases from one step to the next: "
        "steps[1] already has 10 (got 5); a rollout only moves forward: to give traffic back, "
        "roll back",
    ]


def test_last_traffic_step_must_be_100():
    text = variant(("    - traffic: 100", "    - traffic: 90"))

    assert problems(text) == [
        "m.yaml:20:7: spec.steps[4].traffic: the last traffic step is 100 (got 90); "
        "add - traffic: 100 after steps[4]",
    ]


def test_steps_without_a_traffic_step_are_rejected_at_the_steps_key():
    text = with_steps("mirror: 20", "approval: manual")

    assert problems(text) == [
        "m.yaml:12:3: spec.steps: at least one traffic step, the last at 100; add - traffic: 100",
    ]


def test_an_empty_step_list_is_rejected():
    text = "\n".join(MINIMAL.splitlines()[:11]) + "\n  steps: []\n  gates: []\n"

    assert problems(text) == [
        "m.yaml:12:3: spec.steps: steps needs at least 1 item(s) (got a list); "
        "add steps: [{traffic: 100}]",
    ]


def test_a_mirror_step_after_traffic_is_rejected():
    text = variant(("    - approval: manual", "    - mirror: 10"))

    assert problems(text) == [
        "m.yaml:17:7: spec.steps[2].mirror: at most one mirror step: steps[0] already mirrors "
        "(got 10); mirror once, before the first traffic step",
    ]


def test_a_lone_mirror_step_after_traffic_says_to_move_it():
    text = with_steps("approval: manual", "traffic: 10", "mirror: 20", "traffic: 100")

    assert problems(text) == [
        "m.yaml:15:7: spec.steps[2].mirror: a mirror step comes before any traffic step "
        "(got 20); move it above steps[1]",
    ]


def test_a_step_with_two_kinds_is_rejected_at_the_second():
    text = variant(("    - approval: manual", "    - approval: manual\n      traffic: 20"))

    assert problems(text) == [
        "m.yaml:17:7: spec.steps[2].approval: a step has exactly one of mirror, traffic or "
        "approval; make it two steps",
    ]


def test_a_step_of_no_known_kind_suggests_the_closest():
    text = variant(("    - traffic: 50", "    - trafic: 50"))

    assert problems(text) == [
        "m.yaml:18:7: spec.steps[3]: a step has one of mirror, traffic or approval; "
        "this one has trafic, bake; did you mean traffic?",
    ]


@pytest.mark.parametrize(
    ("bake", "shown", "hint"),
    [
        ("10", "10", "write 10s, 10m or 10h"),
        ("1.5h", "1.5h", "write 90m"),
        ('"10 minutes"', '"10 minutes"', "write 10m"),
        ("1h30m", "1h30m", "write 90m"),
        ("soon", "soon", "write a whole number with s, m or h, e.g. 10m"),
    ],
)
def test_durations_are_whole_numbers_with_s_m_or_h(bake: str, shown: str, hint: str):
    text = variant(("      bake: 10m\n    - traffic: 10", f"      bake: {bake}\n    - traffic: 10"))

    assert problems(text) == [
        f"m.yaml:14:7: spec.steps[0].bake: bake is a duration such as 30s, 10m or 2h "
        f"(got {shown}); {hint}",
    ]


# --- gates -------------------------------------------------------------------------------------


def test_a_gate_without_a_bound_is_reported_at_the_gate():
    assert problems(variant(("      max: 0.01", ""))) == [
        "m.yaml:23:7: spec.gates[0]: a threshold gate has exactly one of max, min or "
        "max_ratio_to_stable; add one of them",
    ]


def test_a_gate_with_two_bounds_is_reported_at_the_second():
    text = variant(
        ("      max_ratio_to_stable: 1.25", "      max_ratio_to_stable: 1.25\n      max: 90")
    )

    assert problems(text) == [
        "m.yaml:27:7: spec.gates[1]: a threshold gate has exactly one of max, min or "
        "max_ratio_to_stable; this one has max and max_ratio_to_stable; one bound per gate",
    ]


@pytest.mark.parametrize(
    ("metric", "bound", "message"),
    [
        ("error_rate", "max: 5", "error_rate is a rate from 0 to 1 (got 5); write 0.05 for 5 %"),
        (
            "non_2xx_rate",
            "min: -0.1",
            "non_2xx_rate is a rate from 0 to 1 (got -0.1); a bound below 0 can never be crossed",
        ),
        (
            "cpu_utilization",
            "max: 150",
            "cpu_utilization is a percent from 0 to 100 (got 150); "
            "a bound above 100 can never be crossed",
        ),
        (
            "latency_p90_ms",
            "max: -1",
            "latency_p90_ms is at least 0 (got -1); a bound below 0 can never be crossed",
        ),
    ],
)
def test_bounds_lie_in_the_metric_range(metric: str, bound: str, message: str):
    text = variant(("      metric: error_rate", f"      metric: {metric}"), ("      max: 0.01", ""))
    text = text.replace("      min_requests: 50\n", f"      {bound}\n      min_requests: 50\n")
    key = bound.split(":")[0]

    assert problems(text) == [f"m.yaml:25:7: spec.gates[0].{key}: {message}"]


def test_a_ratio_to_stable_is_above_zero():
    text = variant(("      max_ratio_to_stable: 1.25", "      max_ratio_to_stable: 0"))

    assert problems(text) == [
        "m.yaml:29:7: spec.gates[1].max_ratio_to_stable: max_ratio_to_stable is a ratio above 0 "
        "(got 0); 1.25 lets the candidate be up to 25 % above stable",
    ]


def test_min_requests_is_not_negative():
    assert problems(variant(("      min_requests: 50", "      min_requests: -1"))) == [
        "m.yaml:26:7: spec.gates[0].min_requests: min_requests is a whole number, 0 or more "
        "(got -1); the least is 0",
    ]


def test_gate_names_are_unique_and_the_repeat_is_reported():
    assert problems(variant(("    - name: p99", "    - name: errs"))) == [
        "m.yaml:27:7: spec.gates[1].name: gate names are unique; gates[0] is also errs "
        "(got errs); rename one of them",
    ]


def test_an_explicit_null_bound_is_not_a_bound():
    text = variant(("      max: 0.01", "      max:"))

    assert problems(text) == [
        "m.yaml:23:7: spec.gates[0]: a threshold gate has exactly one of max, min or "
        "max_ratio_to_stable; add one of them",
        "m.yaml:25:7: spec.gates[0].max: max has no value (got nothing); write a number",
    ]


def test_an_explicit_null_beside_a_real_bound_is_still_reported():
    text = variant(("      max: 0.01", "      max: 0.01\n      min: null"))

    assert problems(text) == [
        "m.yaml:26:7: spec.gates[0].min: min has no value (got null); write a number",
    ]


def test_a_rollout_validates_again_from_its_meaning():
    rollout = load_manifest_text(MINIMAL, "m.yaml").rollout

    assert ModelRollout.model_validate(rollout.meaning()) == rollout


def test_a_bound_written_as_a_string_is_rejected():
    assert problems(variant(("      max: 0.01", '      max: "0.01"'))) == [
        'm.yaml:25:7: spec.gates[0].max: max is a number (got "0.01"); write 0.01, without quotes',
    ]


def test_an_unknown_metric_suggests_the_closest():
    text = variant(("      metric: latency_p99_ms", "      metric: latency_p99"))

    assert problems(text) == [
        "m.yaml:28:7: spec.gates[1].metric: metric is one of error_rate, non_2xx_rate, "
        "error_count, request_count, latency_p50_ms, latency_p90_ms, latency_p95_ms, "
        "latency_p99_ms, cpu_utilization, memory_utilization (got latency_p99); "
        "did you mean latency_p99_ms?",
    ]


# --- versions, names and YAML 1.1 traps --------------------------------------------------------


def test_an_integer_version_is_accepted_as_text():
    manifest = load_manifest_text(variant(('    version: "8"', "    version: 7")), "m.yaml")

    assert manifest.rollout.spec.model.version == "7"


@pytest.mark.parametrize(
    ("written", "shown", "hint"),
    [
        ("010", "010", 'quote it: "010"'),
        ("0x1F", "0x1F", 'quote it: "0x1F"'),
        ("1_000", "1_000", 'quote it: "1_000"'),
    ],
)
def test_an_integer_version_yaml_would_rewrite_is_rejected(written: str, shown: str, hint: str):
    text = variant(('    version: "8"', f"    version: {written}"))

    assert problems(text) == [
        f"m.yaml:11:5: spec.model.version: not a plain decimal number; YAML tools disagree on "
        f"what it is (got {shown}); {hint}",
    ]


def test_a_number_yaml_would_rewrite_is_rejected_where_a_number_is_expected():
    assert problems(variant(("    - traffic: 50", "    - traffic: 0x32"))) == [
        "m.yaml:18:7: spec.steps[3].traffic: not a plain decimal number; YAML tools disagree on "
        "what it is (got 0x32); write 50",
    ]


def test_version_latest_is_rejected():
    assert problems(variant(('    version: "8"', '    version: "latest"'))) == [
        'm.yaml:11:5: spec.model.version: a version is a pinned string such as "7" '
        '(got "latest"); pin the version you mean, e.g. version: "7"',
    ]


@pytest.mark.parametrize("word", ["on", "off", "yes", "no", "y", "n", "NO", "On"])
def test_yaml11_yes_no_words_are_rejected_where_text_is_expected(word: str):
    assert problems(variant(("  name: churn", f"  name: {word}"))) == [
        f"m.yaml:4:3: metadata.name: {word} is a yes/no word: YAML 1.1 tools read it as "
        f"{'true' if word.lower() in ('on', 'yes', 'y') else 'false'} (got {word}); "
        f'quote it: "{word}"',
    ]


def test_a_quoted_yes_no_word_is_plain_text():
    manifest = load_manifest_text(variant(("  name: churn", '  name: "no"')), "m.yaml")

    assert manifest.rollout.metadata.name == "no"


def test_a_yes_no_word_for_a_fixed_word_names_the_expected_word():
    assert problems(variant(("  progress_deadline: 6h", "  on_failure: off"))) == [
        "m.yaml:32:3: spec.on_failure: on_failure is rollback or hold (got off); "
        "YAML 1.1 reads off as false: write on_failure: rollback",
    ]


def test_a_yes_no_word_for_a_boolean_says_to_write_true_or_false():
    text = variant(
        ("      max_ratio_to_stable: 1.25", "      max_ratio_to_stable: 1.25\n      dry_run: yes")
    )

    assert problems(text) == [
        "m.yaml:30:7: spec.gates[1].dry_run: dry_run is true or false (got yes); "
        "write true: YAML 1.2 reads yes as text, YAML 1.1 as true",
    ]


def test_a_boolean_for_a_fixed_word_says_which_word():
    assert problems(variant(("    - approval: manual", "    - approval: true"))) == [
        "m.yaml:17:7: spec.steps[2].approval: approval expects manual (got true); "
        "write approval: manual",
    ]


def test_kind_is_exact():
    assert problems(variant(("kind: ModelRollout", "kind: modelrollout"))) == [
        "m.yaml:2:1: kind: kind is ModelRollout (got modelrollout); did you mean ModelRollout?",
    ]


def test_a_quoted_boolean_says_to_drop_the_quotes():
    text = variant(
        (
            "      max_ratio_to_stable: 1.25",
            '      max_ratio_to_stable: 1.25\n      dry_run: "true"',
        )
    )

    assert problems(text) == [
        'm.yaml:30:7: spec.gates[1].dry_run: dry_run is true or false (got "true"); '
        "write true or false, without quotes",
    ]


def test_a_boolean_where_text_is_expected_is_rejected():
    assert problems(variant(('    version: "8"', "    version: true"))) == [
        'm.yaml:11:5: spec.model.version: a version is a pinned string such as "7" (got true); '
        'quote it: "true"',
    ]


@pytest.mark.parametrize(
    ("endpoint", "hint"),
    [
        ("Churn_Model", "; try churn-model"),
        ("ab", ""),
        ("churn-", "; try churn"),
        ("7churn", "; try ep-7churn"),
        ("c" * 33, "; try " + "c" * 32),
    ],
)
def test_endpoint_names_follow_the_platform_rules(endpoint: str, hint: str):
    assert problems(variant(("    endpoint: churn", f"    endpoint: {endpoint}"))) == [
        "m.yaml:8:5: spec.target.endpoint: an endpoint name has 3-32 characters: letters, digits "
        f"and -, starting with a letter and not ending with - (got {endpoint}){hint}",
    ]


def test_a_derived_deployment_name_that_breaks_the_rules_is_reported(monkeypatch):
    monkeypatch.setattr("engine.spec.derive_deployment_name", lambda *_: "churn_8")

    assert problems(MINIMAL) == [
        "m.yaml:10:5: spec.model.name: the derived deployment name churn_8 breaks the name rules "
        "(3-32 characters: letters, digits and -, starting with a letter) (got churn); "
        "report this: derived names are meant to be always valid",
    ]


# --- structure ---------------------------------------------------------------------------------


def test_unknown_keys_are_rejected_with_the_closest_known_key():
    text = variant(("  progress_deadline: 6h", "  progress_deadline: 6h\n  on_failur: hold"))

    assert problems(text) == [
        "m.yaml:33:3: spec.on_failur: unknown key on_failur; did you mean on_failure?",
    ]


def test_an_unknown_key_far_from_any_lists_the_keys_allowed_there():
    text = variant(("    endpoint: churn", "    endpoint: churn\n    region: westeurope"))

    assert problems(text) == [
        "m.yaml:9:5: spec.target.region: unknown key region; "
        "keys here: provider, endpoint, workspace",
    ]


def test_a_missing_key_is_reported_at_its_parent_mapping():
    assert problems(variant(('    version: "8"', ""))) == [
        'm.yaml:9:3: spec.model.version: missing required key version; add version: "1"',
    ]


def test_missing_top_level_keys_are_reported_at_the_document():
    text = variant(("kind: ModelRollout", ""), ("apiVersion: saferollout/v1", ""))

    assert problems(text) == [
        "m.yaml:1:1: apiVersion: missing required key apiVersion; add apiVersion: saferollout/v1",
        "m.yaml:1:1: kind: missing required key kind; add kind: ModelRollout",
    ]


def test_a_mapping_where_a_list_is_expected_is_rejected():
    text = "\n".join(MINIMAL.splitlines()[:11]) + "\n  steps: {traffic: 100}\n  gates: []\n"

    assert problems(text) == [
        "m.yaml:12:3: spec.steps: steps is a list of mirror, traffic and approval steps "
        "(got a mapping)",
    ]


def test_a_document_that_is_not_a_mapping_is_rejected():
    assert problems("- apiVersion: saferollout/v1\n") == [
        "m.yaml:1:1: a manifest is a mapping with apiVersion, kind, metadata and spec (got a list)",
    ]


@pytest.mark.parametrize("document", ["~", "!", "yes", "5"])
def test_a_scalar_document_is_rejected_as_not_a_mapping(document: str):
    assert problems(document + "\n") == [
        "m.yaml:1:1: a manifest is a mapping with apiVersion, kind, metadata and spec "
        f"(got {'nothing' if document == '!' else document})",
    ]


def test_an_empty_file_is_rejected():
    assert problems("# nothing here\n") == [
        "m.yaml:1:1: the file holds no manifest; "
        "a manifest is a mapping with apiVersion, kind, metadata and spec",
    ]


def test_a_second_document_is_rejected():
    assert problems(MINIMAL + "---\nkind: ModelRollout\n") == [
        "m.yaml:34:1: a second YAML document; one manifest per file; move it to a file of its own",
    ]


def test_yaml_syntax_errors_are_located():
    text = variant(("    provider: local", "    provider: local: remote"))

    assert problems(text) == [
        "m.yaml:7:20: not valid YAML: mapping values are not allowed here",
    ]


def test_tabs_are_rejected_at_their_column():
    text = variant(("    endpoint: churn", "    endpoint:\tchurn"))

    assert problems(text) == [
        "m.yaml:8:14: a tab character; YAML manifests use spaces; replace the tab with spaces",
    ]


def test_tab_indentation_is_reported_once_as_a_tab():
    text = variant(("    endpoint: churn", "\tendpoint: churn"))

    assert problems(text) == [
        "m.yaml:8:1: a tab character; YAML manifests use spaces; replace the tab with spaces",
    ]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("!!binary aGVsbG8=", "m.yaml:4:3: metadata.name: the YAML tag !!binary is not supported"),
        ("!secret churn", "m.yaml:4:3: metadata.name: the YAML tag !secret is not supported"),
    ],
)
def test_yaml_tags_beyond_plain_data_are_rejected(value: str, message: str):
    assert problems(variant(("  name: churn", f"  name: {value}"))) == [message]


def test_merge_keys_are_rejected():
    text = variant(("  target:", "  target:\n    <<: {provider: local}"))

    assert problems(text) == [
        "m.yaml:7:5: spec.target: merge keys (<<) are not supported; write keys out",
    ]


def test_small_anchors_and_aliases_are_fine():
    text = variant(
        ("      bake: 10m\n    - traffic: 10", "      bake: &bake 10m\n    - traffic: 10")
    )
    text = text.replace("      bake: 10m\n    - approval", "      bake: *bake\n    - approval")

    manifest = load_manifest_text(text, "m.yaml")

    assert manifest.rollout.spec.steps[1].bake == manifest.rollout.spec.steps[0].bake


def test_an_alias_bomb_is_refused_quickly():
    levels = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    text = "\n".join(levels) + "\n"

    started = time.process_time()
    found = problems(text)

    assert time.process_time() - started < 5  # far below the 10**9 values it would expand to
    assert found == [
        "m.yaml:4:1: a3: anchors and aliases expand past 10000 values or 32 levels; "
        "write the manifest out without aliases",
    ]


def test_aliases_of_a_long_string_are_refused():
    text = f"a: &a {'x' * 100_000}\nb: [{', '.join(['*a'] * 20)}]\n"

    assert problems(text) == [
        "m.yaml:2:1: b: anchors and aliases expand past 1000000 characters; "
        "write the manifest out without aliases",
    ]


def test_an_alias_inside_its_own_anchor_is_refused():
    assert problems("a: &a [1, *a]\n") == [
        "m.yaml:1:1: a: anchors and aliases refer to themselves (an alias inside its own anchor); "
        "write the manifest out without aliases",
    ]


def test_deep_nesting_is_refused():
    assert problems("a: " + "[" * 5000 + "]" * 5000 + "\n") == [
        "m.yaml:1:35: nested deeper than 32 levels",
    ]


def test_an_oversized_file_is_refused_before_parsing():
    text = MINIMAL + "#" * MAX_BYTES

    assert problems(text) == [
        "m.yaml:1:1: the file is larger than 256 KiB, the most a manifest may be; "
        "is this the right file?",
    ]


def test_non_utf8_input_is_located():
    raw = MINIMAL.replace("  name: churn\n", "  name: ch\xe9rn\n").encode("latin-1")

    assert problems(raw) == ["m.yaml:4:11: not UTF-8 text (byte 0xe9); save as UTF-8"]


def test_binary_input_is_located():
    assert problems(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR") == [
        "m.yaml:3:1: a binary file, not a YAML manifest",
    ]


def test_utf16_input_is_refused():
    assert problems(MINIMAL.encode("utf-16")) == [
        "m.yaml:1:1: the file is UTF-16 text; save it as UTF-8",
    ]


def test_a_control_character_is_located():
    assert problems(MINIMAL.replace("  name: churn", "  name: ch\x1brn")) == [
        "m.yaml:4:11: a control character (U+001B) in a YAML manifest",
    ]


def test_a_utf8_byte_order_mark_is_accepted():
    manifest = load_manifest_text(b"\xef\xbb\xbf" + MINIMAL.encode(), "m.yaml")

    assert manifest.rollout.metadata.name == "churn"


def test_a_flood_of_problems_is_capped_with_a_count():
    text = MINIMAL + "".join(f"extra{i}: 1\n" for i in range(150))

    found = problems(text)

    assert len(found) == 101
    assert found[-1] == "m.yaml:133:1: 50 more problems not shown"


# --- never a traceback -------------------------------------------------------------------------


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_arbitrary_bytes_give_problems_not_tracebacks(raw: bytes):
    try:
        load_manifest_text(raw, "m.yaml")
    except ManifestError as error:
        assert error.problems
        assert all(p.line >= 1 and p.column >= 1 for p in error.problems)
        assert not any("internal error" in p.message for p in error.problems), error


_LINES = MINIMAL.splitlines()
_YAML_BITS = st.sampled_from(
    [": ", "- ", "[", "]", "{", "}", "&a ", "*a", "!!", "'", '"', "#", "\t", "~", "yes", "1.10",
     "---", "\n", "  ", "<<: ", "?", "|", ">", "%", "@", "0x1", "-5", "true", "null", "\xe9"]
)  # fmt: skip


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, len(_LINES) - 1), st.integers(0, 40), st.lists(_YAML_BITS, max_size=4))
def test_a_damaged_manifest_gives_located_problems_not_tracebacks(line, column, bits):
    lines = list(_LINES)
    lines[line] = lines[line][:column] + "".join(bits) + lines[line][column:]
    text = "\n".join(lines) + "\n"
    try:
        load_manifest_text(text, "m.yaml")
    except ManifestError as error:
        assert error.problems
        assert all(1 <= p.line <= text.count("\n") + 1 for p in error.problems), error
        assert not any("internal error" in p.message for p in error.problems), error


# --- meaning and digest ------------------------------------------------------------------------


def test_a_reformatted_manifest_with_the_same_meaning_has_the_same_digest():
    original = load_manifest_text(MINIMAL, "minimal.yaml").rollout
    reformatted = load_manifest_text(
        (FIXTURES / "minimal-reformatted.yaml").read_text(), "minimal-reformatted.yaml"
    ).rollout

    assert reformatted == original
    assert reformatted.digest() == original.digest()


def test_a_manifest_with_another_meaning_has_another_digest():
    original = load_manifest_text(MINIMAL, "m.yaml").rollout
    changed = load_manifest_text(variant(("    - traffic: 50", "    - traffic: 60")), "m.yaml")

    assert changed.rollout.digest() != original.digest()


# --- files the manifest refers to --------------------------------------------------------------


def test_model_folder_is_found_in_the_nearest_ancestor_with_models(project: Path):
    (project / "rollouts" / "team").mkdir()
    path = project / "rollouts" / "team" / "churn.yaml"
    path.write_text(MINIMAL)

    manifest = load_manifest(path)

    assert manifest == LoadedManifest(
        manifest.rollout,
        path,
        project / "models" / "churn",
        project / "models" / "churn" / "sample-request.json",
    )


def test_a_nearer_models_folder_wins_even_without_the_model(project: Path):
    (project / "rollouts" / "models").mkdir()
    path = project / "rollouts" / "churn.yaml"
    path.write_text(MINIMAL)

    with pytest.raises(ManifestError) as caught:
        load_manifest(path)

    assert [str(p) for p in caught.value.problems] == [
        f"{path}:10:5: spec.model.name: the model has no serving folder "
        f"{project / 'rollouts' / 'models' / 'churn'} (got churn); "
        "check the model name or add the folder",
    ]


def test_a_manifest_without_any_models_folder_is_a_located_problem(tmp_path: Path):
    path = tmp_path / "churn.yaml"
    path.write_text(MINIMAL)

    with pytest.raises(ManifestError) as caught:
        load_manifest(path)

    assert [str(p) for p in caught.value.problems] == [
        f"{path}:10:5: spec.model.name: no models/ folder in {tmp_path} or any folder above it "
        "(got churn); add models/churn/ with the model's scoring script",
    ]


def test_the_smoke_request_resolves_relative_to_the_manifest(project: Path):
    (project / "requests").mkdir()
    (project / "requests" / "big.json").write_text("{}")
    text = variant(("  progress_deadline: 6h", "  smoke_test: {request: ../requests/big.json}"))
    path = project / "rollouts" / "churn.yaml"
    path.write_text(text)

    assert load_manifest(path).smoke_request == project / "requests" / "big.json"


def test_a_missing_smoke_request_is_reported_at_its_key(project: Path):
    text = variant(("  progress_deadline: 6h", "  smoke_test: {request: ../nowhere.json}"))
    path = project / "rollouts" / "churn.yaml"
    path.write_text(text)

    with pytest.raises(ManifestError) as caught:
        load_manifest(path)

    assert [str(p) for p in caught.value.problems] == [
        f"{path}:32:16: spec.smoke_test.request: no such file {project / 'nowhere.json'} "
        "(got ../nowhere.json)",
    ]


def test_a_model_without_its_sample_request_is_reported(project: Path):
    (project / "models" / "churn" / "sample-request.json").unlink()
    path = project / "rollouts" / "churn.yaml"
    path.write_text(MINIMAL)

    with pytest.raises(ManifestError) as caught:
        load_manifest(path)

    assert [str(p) for p in caught.value.problems] == [
        f"{path}:5:1: spec.smoke_test.request: the model has no sample request "
        f"{project / 'models' / 'churn' / 'sample-request.json'}; "
        "add it, or set spec.smoke_test.request",
    ]


def test_text_with_a_base_dir_resolves_like_a_file_there(project: Path):
    manifest = load_manifest_text(MINIMAL, "churn.yaml", base_dir=project / "rollouts")

    assert manifest.model_dir == project / "models" / "churn"
    assert manifest.path == Path("churn.yaml")


def test_text_without_a_base_dir_does_not_touch_the_file_system():
    manifest = load_manifest_text(MINIMAL, "churn.yaml")

    assert manifest.model_dir == Path("models/churn")
    assert manifest.smoke_request == Path("models/churn/sample-request.json")


# --- paths -------------------------------------------------------------------------------------


def test_a_folder_loads_its_yaml_and_yml_files_sorted_and_nothing_else(project: Path):
    rollouts = project / "rollouts"
    (rollouts / "b.yml").write_text(variant(("    endpoint: churn", "    endpoint: churn-b")))
    (rollouts / "a.yaml").write_text(variant(("    endpoint: churn", "    endpoint: churn-a")))
    (rollouts / "notes.txt").write_text("not a manifest")
    (rollouts / "sub").mkdir()
    (rollouts / "sub" / "c.yaml").write_text("not: looked at")

    loaded = load_paths([rollouts])

    assert [m.path.name for m in loaded] == ["a.yaml", "b.yml"]


def test_a_folder_without_manifests_and_a_missing_path_are_problems(project: Path):
    with pytest.raises(ManifestError) as caught:
        load_paths([project / "rollouts", project / "nowhere.yaml"])

    assert [str(p) for p in caught.value.problems] == [
        f"{project / 'rollouts'}:1:1: no manifests (*.yaml, *.yml) in this folder",
        f"{project / 'nowhere.yaml'}:1:1: no such file or folder",
    ]


def test_load_manifest_on_a_folder_or_missing_file_is_a_problem(project: Path):
    for path, message in [
        (project / "rollouts", "is a folder, not a manifest file"),
        (project / "missing.yaml", "no such file"),
    ]:
        with pytest.raises(ManifestError) as caught:
            load_manifest(path)
        assert [str(p) for p in caught.value.problems] == [f"{path}:1:1: {message}"]


# --- the vocabulary and the import footprint ---------------------------------------------------


def _field_keys(model: type, prefix: str) -> list[str]:
    keys = []
    for name, info in model.model_fields.items():
        key = f"{prefix}.{name}" if prefix else name
        keys.append(key)
        nested = models_in(info.annotation)
        list_like = "list[" in str(info.annotation)
        for sub in nested:
            keys.extend(_field_keys(sub, f"{key}[]" if list_like else key))
        if list_like and nested:
            keys.append(f"{key}[]")
    return keys


def test_every_manifest_field_has_a_description_for_humans():
    keys = set(_field_keys(ModelRollout, ""))

    assert keys - set(FIELDS) == set()
    assert set(FIELDS) - keys == {""}


def test_importing_the_loader_stays_light():
    code = (
        "import sys, engine.loader; "
        "heavy = [m for m in sys.modules if m.split('.')[0] in "
        "('pandas', 'sklearn', 'numpy', 'azure', 'aiohttp')]; "
        "print(','.join(sorted(heavy)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )

    assert result.stdout.strip() == ""


def test_milliseconds_are_not_read_as_minutes_in_the_duration_hint():
    (found,) = problems(variant(("  progress_deadline: 6h", "  progress_deadline: 500ms")))
    assert "(got 500ms)" in found and "write 500m" not in found
    (found,) = problems(variant(("  progress_deadline: 6h", "  progress_deadline: 2000ms")))
    assert found.endswith("; write 2s")


def test_a_metadata_name_with_control_characters_is_rejected():
    (found,) = problems(variant(("  name: churn", '  name: "bad\\e[31mname"')))
    assert "metadata.name" in found and "letters, digits" in found


def test_a_gate_source_that_cannot_measure_the_provider_is_rejected_at_its_line():
    (found,) = problems(variant(("    warmup: 1m", "    warmup: 1m\n    source: azure-logs")))
    assert "spec.analysis.source" in found
    assert "the azure-logs gate source cannot measure a local endpoint" in found
    assert "write local" in found
