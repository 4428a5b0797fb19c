"""The local control plane refuses what Azure ML refuses, and never loses or tears a write."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from engine.errors import ConflictError, PermanentError
from engine.live import DeploymentRequest, EndpointWrite, ProvisioningState
from engine.providers.local.provider import LocalProvider
from engine.providers.local.store import (
    KEYS_FILE,
    MAX_DEPLOYMENTS,
    STATE_FILE,
    ControlPlane,
    DeploymentRecord,
    new_uid,
)
from engine.providers.local.testing import wait_until

EP = "churn"


def _deployment(name: str) -> DeploymentRecord:
    return DeploymentRecord(name, "churn", "7", "/models/churn", new_uid())


@pytest.fixture
def control(tmp_path: Path) -> ControlPlane:
    plane = ControlPlane(tmp_path / "home")
    plane.create_endpoint(EP)
    for name in ("churn-6", "churn-7", "churn-8"):
        plane.add_deployment(EP, _deployment(name))
    return plane


def _update(control: ControlPlane, traffic=None, mirror=None, tags=None, revision=None):
    return control.update_endpoint(
        EP,
        traffic=traffic or {},
        mirror=mirror or {},
        tags=tags or {},
        tag_prefix="saferollout.",
        expected_revision=revision or control.read_endpoint(EP).revision,
    )


def _refused(control: ControlPlane, code: str, **write) -> PermanentError:
    before = control.path.read_bytes()
    with pytest.raises(PermanentError) as caught:
        _update(control, **write)
    assert caught.value.code == code
    assert caught.value.endpoint == EP
    assert f"endpoint {EP}" in str(caught.value)
    assert control.path.read_bytes() == before, "a refused write must leave the state untouched"
    return caught.value


@pytest.mark.parametrize(
    "traffic",
    [{"churn-7": 90}, {"churn-7": 60, "churn-8": 50}, {"churn-7": 1}],
    ids=["90", "110", "1"],
)
def test_traffic_not_summing_to_0_or_100_is_refused(control, traffic):
    error = _refused(control, "InvalidTraffic", traffic=traffic)
    assert "sum to 0 or 100" in str(error)


@pytest.mark.parametrize(
    "value", [-10, 10.0, "10", True, 150], ids=["negative", "float", "string", "bool", "over-100"]
)
def test_traffic_values_must_be_whole_percents(control, value):
    _refused(control, "InvalidTraffic", traffic={"churn-7": 100 - 10, "churn-8": value})


def test_traffic_to_an_unknown_deployment_is_refused_and_named(control):
    error = _refused(control, "DeploymentNotFound", traffic={"churn-7": 50, "churn-9": 50})
    assert "churn-9" in str(error)


def test_mirror_to_an_unknown_deployment_is_refused(control):
    _refused(control, "DeploymentNotFound", traffic={"churn-7": 100}, mirror={"churn-9": 10})


def test_mirror_over_50_percent_is_refused(control):
    error = _refused(
        control, "InvalidMirrorTraffic", traffic={"churn-7": 100}, mirror={"churn-8": 51}
    )
    assert "at most 50" in str(error)


def test_mirror_to_two_deployments_is_refused(control):
    _refused(
        control,
        "InvalidMirrorTraffic",
        traffic={"churn-7": 100},
        mirror={"churn-6": 10, "churn-8": 20},
    )


def test_a_deployment_cannot_get_live_and_mirrored_traffic(control):
    _refused(
        control,
        "LiveAndMirrorTraffic",
        traffic={"churn-7": 90, "churn-8": 10},
        mirror={"churn-8": 20},
    )


def test_valid_split_with_mirror_is_stored_without_zero_entries(control):
    record = _update(control, traffic={"churn-7": 100, "churn-6": 0}, mirror={"churn-8": 50})
    assert record.traffic == {"churn-7": 100}
    assert record.mirror == {"churn-8": 50}
    assert control.read_endpoint(EP).traffic == {"churn-7": 100}


def test_deleting_a_deployment_with_live_traffic_is_refused(control):
    _update(control, traffic={"churn-7": 100})
    with pytest.raises(PermanentError, match="still has 100 % traffic") as caught:
        control.delete_deployment(EP, "churn-7")
    assert caught.value.code == "DeploymentHasTraffic"
    assert "churn-7" in control.read_endpoint(EP).deployments


def test_deleting_a_deployment_with_mirrored_traffic_is_refused(control):
    _update(control, traffic={"churn-7": 100}, mirror={"churn-8": 20})
    with pytest.raises(PermanentError, match="20 % mirror"):
        control.delete_deployment(EP, "churn-8")


def test_deleting_an_idle_deployment_works_and_is_idempotent(control):
    assert control.delete_deployment(EP, "churn-6") is True
    assert control.delete_deployment(EP, "churn-6") is False
    assert "churn-6" not in control.read_endpoint(EP).deployments


@pytest.mark.parametrize("name", ["ab", "1churn", "churn-", "churn_7", "c" * 33, "churn 7"])
def test_invalid_endpoint_names_are_refused(tmp_path, name):
    with pytest.raises(PermanentError, match="name") as caught:
        ControlPlane(tmp_path).create_endpoint(name)
    assert caught.value.code == "InvalidName"


@pytest.mark.parametrize("name", ["ab", "9lives", "bad-", "under_score"])
def test_invalid_deployment_names_are_refused(control, name):
    with pytest.raises(PermanentError, match="invalid") as caught:
        control.add_deployment(EP, _deployment(name))
    assert caught.value.code == "InvalidName"


def test_more_than_20_deployments_per_endpoint_are_refused(control):
    for index in range(MAX_DEPLOYMENTS - 3):
        assert control.add_deployment(EP, _deployment(f"extra-{index}"))
    with pytest.raises(PermanentError, match="limit is 20") as caught:
        control.add_deployment(EP, _deployment("one-too-many"))
    assert caught.value.code == "DeploymentLimitExceeded"
    assert len(control.read_endpoint(EP).deployments) == MAX_DEPLOYMENTS


def test_a_tag_value_over_256_characters_is_refused(control):
    _refused(control, "InvalidTags", traffic={"churn-7": 100}, tags={"saferollout.log": "x" * 257})


def test_more_than_50_tags_are_refused(control):
    tags = {f"saferollout.t{i}": "v" for i in range(51)}
    _refused(control, "InvalidTags", traffic={"churn-7": 100}, tags=tags)


def test_a_stale_revision_raises_conflict_and_writes_nothing(control):
    stale = control.read_endpoint(EP).revision
    _update(control, traffic={"churn-7": 100}, revision=stale)
    before = control.path.read_bytes()
    with pytest.raises(ConflictError, match="changed since it was read"):
        _update(control, traffic={"churn-8": 100}, revision=stale)
    assert control.path.read_bytes() == before


def test_every_endpoint_write_changes_the_revision(control):
    seen = {control.read_endpoint(EP).revision}
    for traffic in ({"churn-7": 100}, {"churn-7": 100}, {}):
        seen.add(_update(control, traffic=traffic).revision)
    assert len(seen) == 4


def test_engine_tags_are_replaced_and_other_tags_kept(control):
    record = _update(control, tags={"saferollout.phase": "Progressing", "saferollout.step": "1"})
    # A tag someone else set, outside the engine's prefix, e.g. in the portal.
    state = json.loads(control.path.read_text())
    state["endpoints"][EP]["tags"]["owner"] = "team-risk"
    control.path.write_text(json.dumps(state))
    record = _update(control, tags={"saferollout.phase": "Succeeded"})
    assert record.tags == {"owner": "team-risk", "saferollout.phase": "Succeeded"}


def test_the_endpoint_key_is_random_private_and_kept_out_of_the_state_file(tmp_path):
    control = ControlPlane(tmp_path)
    control.create_endpoint("alpha")
    control.create_endpoint("bravo")
    keys = {control.endpoint_key("alpha"), control.endpoint_key("bravo")}
    assert len(keys) == 2 and all(len(k) >= 32 for k in keys)
    assert stat.S_IMODE((tmp_path / KEYS_FILE).stat().st_mode) == 0o600
    state = (tmp_path / STATE_FILE).read_text()
    assert not any(key in state for key in keys)
    # Creating again is idempotent and keeps the key.
    before = control.endpoint_key("alpha")
    control.create_endpoint("alpha")
    assert control.endpoint_key("alpha") == before


def test_a_provisioning_outcome_for_a_replaced_deployment_is_ignored(control):
    old_uid = control.read_endpoint(EP).deployments["churn-6"].uid
    control.delete_deployment(EP, "churn-6")
    control.add_deployment(EP, _deployment("churn-6"))
    assert not control.set_deployment_state(EP, "churn-6", old_uid, ProvisioningState.FAILED, "x")
    assert control.read_endpoint(EP).deployments["churn-6"].state == "Creating"


def test_the_state_survives_a_new_store_instance(control):
    _update(control, traffic={"churn-7": 100}, tags={"saferollout.phase": "Progressing"})
    again = ControlPlane(control.home).read_endpoint(EP)
    assert again.traffic == {"churn-7": 100}
    assert again.tags == {"saferollout.phase": "Progressing"}


WRITER = """
import sys
import time
from pathlib import Path
from engine.errors import ConflictError
from engine.providers.local.store import ControlPlane

home = Path(sys.argv[1])
control = ControlPlane(home)
tag = "saferollout." + sys.argv[2]
(home / ("ready-" + sys.argv[2])).touch()
while not (home / "go").exists():
    time.sleep(0.001)
done = conflicts = 0
while done < int(sys.argv[3]):
    record = control.read_endpoint("churn")
    count = int(record.tags.get(tag, "0"))
    time.sleep(0.002)  # deciding takes a moment, as it does for the engine
    try:
        control.update_endpoint(
            "churn", traffic={"churn-7": 100}, mirror={}, tags={**{k: v for k, v in
            record.tags.items() if k.startswith("saferollout.")}, tag: str(count + 1)},
            tag_prefix="saferollout.", expected_revision=record.revision)
    except ConflictError:
        conflicts += 1
        continue
    done += 1
print(conflicts)
"""


def test_two_processes_writing_at_once_never_lose_or_tear_an_update(control):
    writes = 60
    command = [sys.executable, "-c", WRITER, str(control.home)]
    processes = [
        subprocess.Popen([*command, name, str(writes)], stdout=subprocess.PIPE, text=True)
        for name in ("a", "b")
    ]
    wait_until(lambda: all((control.home / f"ready-{n}").exists() for n in "ab"), 30, "writers")
    (control.home / "go").touch()
    conflicts = [int(process.communicate(timeout=60)[0]) for process in processes]
    assert [process.returncode for process in processes] == [0, 0]
    assert sum(conflicts) > 0, "the writers never overlapped, so this proved nothing"
    record = control.read_endpoint(EP)
    # Each writer re-read and retried on conflict: every increment of both is there.
    assert record.tags == {"saferollout.a": str(writes), "saferollout.b": str(writes)}
    assert record.revision.startswith(f"{2 * writes}-")
    json.loads(control.path.read_text())


def test_creating_a_deployment_of_an_unregistered_model_says_to_train_it(tmp_path):
    provider = LocalProvider(tmp_path)
    provider.create_endpoint(EP)
    request = DeploymentRequest("churn-7", "churn", "7", str(tmp_path))
    with pytest.raises(PermanentError, match="train and register it first") as caught:
        provider.create_deployment(EP, request)
    assert caught.value.code == "ModelNotFound"
    assert provider.read_endpoint(EP).deployments == {}


def test_the_provider_writes_only_engine_tags(tmp_path):
    provider = LocalProvider(tmp_path)
    live = provider.create_endpoint(EP)
    write = EndpointWrite(traffic={}, mirror={}, tags={"owner": "me"})
    with pytest.raises(PermanentError, match="only tags under 'saferollout.'"):
        provider.update_endpoint(EP, write, expected_revision=live.revision)


def test_gate_sources_other_than_local_are_refused_by_name(tmp_path):
    provider = LocalProvider(tmp_path)
    assert provider.gate_source("local", None).name == "local"
    with pytest.raises(PermanentError, match="'azure-logs'"):
        provider.gate_source("azure-logs", "1111")


def test_a_missing_endpoint_reads_as_not_existing(tmp_path):
    live = LocalProvider(tmp_path).read_endpoint("nothing-here")
    assert live.exists is False and live.deployments == {}
