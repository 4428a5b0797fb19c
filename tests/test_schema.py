"""The checked-in JSON schema: current, valid, and in agreement with the loader."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from engine.errors import ManifestError
from engine.loader import load_manifest_text, read_document
from engine.schema import build_schema, main, render_schema

ROOT = Path(__file__).resolve().parents[1]
SCHEMA_FILE = ROOT / "schemas" / "rollout.schema.json"
MINIMAL = (Path(__file__).parent / "manifests" / "minimal.yaml").read_text()
STEPS = MINIMAL[MINIMAL.index("  steps:\n") : MINIMAL.index("  gates:\n")]


def validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json.loads(SCHEMA_FILE.read_text()))


def schema_errors(text: str) -> list[str]:
    document = read_document(text, "m.yaml")
    assert not document.problems, document.problems
    return [error.message for error in validator().iter_errors(document.data)]


def test_checked_in_schema_is_current():
    assert SCHEMA_FILE.read_text() == render_schema(), "schemas/ is stale: run make schema"


def test_schema_command_writes_the_rendered_schema(tmp_path: Path):
    out = tmp_path / "rollout.schema.json"

    assert main([str(out)]) == 0
    assert out.read_text() == render_schema()
    assert out.read_text().endswith("}\n")


def test_schema_is_a_valid_draft_2020_12_schema_with_an_identity():
    schema = build_schema()

    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"].startswith("urn:saferollout:")
    assert schema["title"] and schema["description"]


@pytest.mark.parametrize("path", sorted((ROOT / "rollouts").glob("*.yaml")), ids=lambda p: p.name)
def test_every_checked_in_manifest_validates_against_the_schema(path: Path):
    assert schema_errors(path.read_text()) == []


def test_the_schema_accepts_an_integer_version_like_the_loader():
    text = MINIMAL.replace('    version: "8"\n', "    version: 8\n")

    assert schema_errors(text) == []
    assert load_manifest_text(text, "m.yaml").rollout.spec.model.version == "8"


def test_fields_carry_the_loader_description_for_editor_hovers():
    traffic = build_schema()["$defs"]["TrafficStep"]["properties"]["traffic"]

    assert traffic["description"] == "traffic is an integer percent from 1 to 100"


INVALID = {
    "traffic as a string": ("    - traffic: 50\n", '    - traffic: "50"\n'),
    "traffic above 100": ("    - traffic: 50\n", "    - traffic: 150\n"),
    "traffic with a percent sign": ("    - traffic: 50\n", "    - traffic: 50%\n"),
    "mirror above 50": ("    - mirror: 20\n", "    - mirror: 60\n"),
    "unknown key": ("  progress_deadline: 6h\n", "  progress_deadline: 6h\n  colour: red\n"),
    "missing version": ('    version: "8"\n', ""),
    "two bounds": ("      max: 0.01\n", "      max: 0.01\n      min: 0.001\n"),
    "no bound": ("      max: 0.01\n", ""),
    "a rate above 1": ("      max: 0.01\n", "      max: 5\n"),
    "a ratio of 0": ("      max_ratio_to_stable: 1.25\n", "      max_ratio_to_stable: 0\n"),
    "version latest": ('    version: "8"\n', "    version: latest\n"),
    "version as a float": ('    version: "8"\n', "    version: 1.10\n"),
    "a duration in words": ("  progress_deadline: 6h\n", "  progress_deadline: 6 hours\n"),
    "a step of two kinds": (
        "    - approval: manual\n",
        "    - approval: manual\n      traffic: 20\n",
    ),
    "no traffic step": (STEPS, "  steps:\n    - mirror: 20\n    - approval: manual\n"),
    "two mirror steps": ("    - approval: manual\n", "    - mirror: 10\n    - approval: manual\n"),
    "a bad endpoint name": ("    endpoint: churn\n", "    endpoint: churn_\n"),
    "yes for a fixed word": ("  progress_deadline: 6h\n", "  on_failure: no\n"),
}


@pytest.mark.parametrize(("old", "new"), list(INVALID.values()), ids=list(INVALID))
def test_the_schema_and_the_loader_both_reject_what_the_schema_can_express(old: str, new: str):
    assert MINIMAL.count(old) == 1
    text = MINIMAL.replace(old, new)

    assert schema_errors(text) != []
    with pytest.raises(ManifestError):
        load_manifest_text(text, "m.yaml")
