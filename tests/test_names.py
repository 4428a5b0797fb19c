"""Derived deployment names (F12): always valid on the platform, stable, distinct per version."""

from __future__ import annotations

import json
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.loader import load_manifest_text
from engine.names import derive_deployment_name, is_valid_name

AZURE_NAME = re.compile(r"^[a-z][a-z0-9-]{1,30}[a-z0-9]$")
SETTINGS = {"instance_type": None, "instance_count": None}

# What the manifest accepts as a model name and a version (engine.spec.ModelRef).
model_names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,80}", fullmatch=True)
versions = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", fullmatch=True).filter(
    lambda v: v.lower() != "latest"
)


def test_f12a_a_long_model_name_derives_a_valid_stable_name():
    first = derive_deployment_name("customer-churn-gradient-boosted-classifier", "12", SETTINGS)
    again = derive_deployment_name("customer-churn-gradient-boosted-classifier", "12", SETTINGS)

    assert AZURE_NAME.match(first), first
    assert first == again
    assert "-12-" in first and not first.endswith("-")


def test_f12b_a_model_name_starting_with_a_digit_and_holding_dots_derives_a_valid_name():
    name = derive_deployment_name("2024_fraud.model", "3", SETTINGS)

    assert AZURE_NAME.match(name), name
    assert "_" not in name and "." not in name


def test_f12c_two_versions_never_share_a_name():
    names = {derive_deployment_name("churn", str(v), SETTINGS) for v in range(1, 500)}

    assert len(names) == 499


def test_other_serving_settings_derive_another_name():
    small = derive_deployment_name("churn", "8", {"instance_type": "a", "instance_count": 1})
    large = derive_deployment_name("churn", "8", {"instance_type": "a", "instance_count": 2})

    assert small != large


@settings(max_examples=300, deadline=None)
@given(model_names, versions)
def test_any_accepted_model_and_version_derive_a_valid_deterministic_name(model, version):
    name = derive_deployment_name(model, version, SETTINGS)

    assert AZURE_NAME.match(name), name
    assert is_valid_name(name)
    assert derive_deployment_name(model, version, SETTINGS) == name


@settings(max_examples=300, deadline=None)
@given(model_names, versions, versions)
def test_distinct_versions_of_a_model_derive_distinct_names(model, first, second):
    if first == second:
        return
    assert derive_deployment_name(model, first, SETTINGS) != derive_deployment_name(
        model, second, SETTINGS
    )


@settings(max_examples=50, deadline=None)
@given(model_names, versions)
def test_the_loader_accepts_every_manifest_whose_model_and_version_the_spec_allows(model, version):
    text = (
        "apiVersion: saferollout/v1\nkind: ModelRollout\nmetadata: {name: m}\nspec:\n"
        "  target: {provider: local, endpoint: churn}\n"
        f"  model: {{name: {json_string(model)}, version: {json_string(version)}}}\n"
        "  steps: [{traffic: 100}]\n  gates: []\n"
    )

    rollout = load_manifest_text(text, "m.yaml").rollout

    assert (rollout.spec.model.name, rollout.spec.model.version) == (model, version)


def json_string(text: str) -> str:
    # A double-quoted YAML scalar reads like a JSON string.
    return json.dumps(text, ensure_ascii=False)
