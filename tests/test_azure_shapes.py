"""Pure translations between azure-ai-ml endpoint objects and the engine's live values."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from engine.live import EndpointWrite, LiveEndpoint, ProvisioningState
from engine.providers.azure import shapes


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("azureml:credit-risk:7", ("credit-risk", "7")),
        (
            "/subscriptions/s/resourceGroups/rg/providers/Microsoft.MachineLearningServices/"
            "workspaces/ws/models/credit-risk/versions/12",
            ("credit-risk", "12"),
        ),
        ("azureml://registries/shared/models/credit-risk/versions/3", ("credit-risk", "3")),
        (SimpleNamespace(id=None, name="credit-risk", version="4"), ("credit-risk", "4")),
        ("something else", ("", "")),
        (None, ("", "")),
    ],
)
def test_model_name_and_version_are_read_from_every_reference_form(model, expected) -> None:
    assert shapes.parse_model_ref(model) == expected


def test_provisioning_states_are_read_case_insensitively_and_unknown_ones_are_unsettled() -> None:
    enum_like = SimpleNamespace(value="Succeeded")
    assert shapes.parse_state(enum_like) is ProvisioningState.SUCCEEDED
    assert shapes.parse_state("failed") is ProvisioningState.FAILED
    assert not shapes.parse_state("Provisioning").is_settled
    assert not shapes.parse_state(None).is_settled


def endpoint(**fields):
    base = {
        "name": "credit-risk",
        "traffic": {"Blue": 100, "green": 0},
        "mirror_traffic": {},
        "tags": {"team": "risk", "saferollout.phase": "Progressing"},
        "properties": {
            "createdBy": "someone",
            "createdAt": "2026-12-01T00:00:00.000000+0000",
            "lastModifiedAt": "2026-12-04T10:00:01.250000+0000",
            "owner": "risk-team",
        },
        "scoring_uri": "https://credit-risk.westeurope.inference.ml.azure.com/score",
    }
    return SimpleNamespace(**{**base, **fields})


def deployment(name: str, model: str, state: str = "Succeeded"):
    return SimpleNamespace(
        name=name,
        model=model,
        provisioning_state=state,
        instance_type="Standard_DS3_v2",
        instance_count=2,
    )


def test_live_endpoint_lower_cases_names_and_lists_deployments_without_traffic() -> None:
    live = shapes.live_endpoint(
        endpoint(traffic={"Blue": 100}),
        [deployment("Blue", "azureml:credit-risk:6"), deployment("green", "azureml:credit-risk:7")],
    )
    assert live.traffic == {"blue": 100, "green": 0}
    assert live.deployments["green"].model_version == "7"
    assert live.revision == "2026-12-04T10:00:01.250000+0000"


def test_a_write_replaces_traffic_mirror_and_engine_tags_and_strips_read_only_fields() -> None:
    ep = endpoint(mirror_traffic={"green": 20})
    shapes.apply_write(
        ep,
        EndpointWrite(
            traffic={"Blue": 90, "green": 10, "old": 0},
            mirror={},
            tags={"saferollout.phase": "Paused", "saferollout.step": "2"},
        ),
    )
    assert ep.traffic == {"blue": 90, "green": 10}
    assert ep.mirror_traffic == {}
    assert ep.tags == {"team": "risk", "saferollout.phase": "Paused", "saferollout.step": "2"}
    assert ep.properties == {"owner": "risk-team"}


def test_engine_tags_are_checked_against_azures_limits() -> None:
    problems = shapes.tag_problems({"saferollout.ok": "x" * 256, "saferollout.big": "x" * 257})
    assert problems == ["tag saferollout.big is 257 characters, Azure keeps 256"]
    assert shapes.tag_problems({"team": "risk"}) == [
        "tag team is not under the engine's prefix saferollout."
    ]


def test_verification_names_each_field_the_reread_does_not_show() -> None:
    write = EndpointWrite({"blue": 90, "green": 10}, {}, {"saferollout.phase": "Progressing"})
    live = LiveEndpoint(
        name="credit-risk",
        exists=True,
        traffic={"blue": 100, "green": 0},
        mirror={"green": 0},
        tags={"team": "ops", "saferollout.phase": "Paused"},
    )
    problems = shapes.unapplied_changes(write, {"team": "risk"}, live)
    assert problems == [
        "traffic is {'blue': 100}, sent {'blue': 90, 'green': 10}",
        "engine tags differ from what was sent: saferollout.phase",
        "tags not owned by the engine changed during the write",
    ]
    same = LiveEndpoint(
        name="credit-risk",
        exists=True,
        traffic={"blue": 90, "green": 10},
        tags={"team": "risk", "saferollout.phase": "Progressing"},
    )
    assert shapes.unapplied_changes(write, {"team": "risk"}, same) == []
