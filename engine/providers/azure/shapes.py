"""Pure translations between azure-ai-ml's endpoint objects and the engine's `engine.live` values.

Reading: an `OnlineEndpoint` and its `OnlineDeployment`s become one `LiveEndpoint`. Writing: the
fields we own (traffic, mirror, the tags under the state prefix) are merged into what was read,
and the read-only fields the SDK copies into `properties` are dropped. Verifying: what was sent is
compared with what a fresh read shows. Nothing here talks to Azure; attributes are read by name,
so tests can feed plain objects shaped like the SDK's.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from engine.live import EndpointWrite, LiveDeployment, LiveEndpoint, ProvisioningState
from engine.providers.base import STATE_TAG_PREFIX

# Fields `OnlineEndpoint._from_rest_object` copies from systemData into `properties`; sent back on
# a PUT they would be stored as user properties, so they are removed before every write.
READ_ONLY_PROPERTIES = frozenset(
    {
        "createdBy",
        "createdByType",
        "createdAt",
        "lastModifiedAt",
        "lastModifiedBy",
        "lastModifiedByType",
    }
)
MAX_TAGS = 50
MAX_TAG_VALUE = 256
MAX_TAG_KEY = 512

_ARM_MODEL = re.compile(r"/models/(?P<name>[^/]+)/versions/(?P<version>[^/]+)/?$", re.IGNORECASE)
_SHORT_MODEL = re.compile(r"^azureml:(?P<name>[^:/]+):(?P<version>[^:/]+)$")
_STATES = {state.value.lower(): state for state in ProvisioningState}


def parse_model_ref(model: Any) -> tuple[str, str]:
    """("credit-risk", "7") from `azureml:credit-risk:7`, an ARM asset id
    (`/subscriptions/.../models/credit-risk/versions/7`) or a registry id
    (`azureml://registries/r/models/credit-risk/versions/7`); ("", "") when unreadable."""
    text = model if isinstance(model, str) else getattr(model, "id", None) or ""
    for pattern in (_SHORT_MODEL, _ARM_MODEL):
        match = pattern.search(text.strip())
        if match:
            return match["name"], match["version"]
    name = getattr(model, "name", None)
    version = getattr(model, "version", None)
    if name and version:
        return str(name), str(version)
    return "", ""


def parse_state(value: Any) -> ProvisioningState:
    """A provisioning state, case-insensitively; an unknown one counts as still updating."""
    text = getattr(value, "value", value)  # the SDK hands out its own enums or plain strings
    return _STATES.get(str(text or "").lower(), ProvisioningState.UPDATING)


def revision_of(endpoint: Any) -> str:
    """The endpoint's `lastModifiedAt`: Azure has no etag, this is the only change detector."""
    properties = getattr(endpoint, "properties", None) or {}
    return str(properties.get("lastModifiedAt") or "")


def live_deployment(deployment: Any) -> LiveDeployment:
    name, version = parse_model_ref(getattr(deployment, "model", None))
    count = getattr(deployment, "instance_count", None)
    return LiveDeployment(
        name=str(deployment.name).lower(),
        model_name=name,
        model_version=version,
        state=parse_state(getattr(deployment, "provisioning_state", None)),
        instance_type=getattr(deployment, "instance_type", None),
        instance_count=int(count) if count is not None else None,
    )


def _percentages(mapping: Mapping[str, Any] | None) -> dict[str, int]:
    return {str(k).lower(): int(v) for k, v in (mapping or {}).items()}


def live_endpoint(endpoint: Any, deployments: Iterable[Any]) -> LiveEndpoint:
    """One `LiveEndpoint` from the SDK's endpoint and the endpoint's deployments."""
    live = {d.name: d for d in (live_deployment(x) for x in deployments)}
    traffic = {name: 0 for name in live}
    traffic.update(_percentages(getattr(endpoint, "traffic", None)))
    return LiveEndpoint(
        name=str(endpoint.name),
        exists=True,
        deployments=live,
        traffic=traffic,
        mirror=_percentages(getattr(endpoint, "mirror_traffic", None)),
        tags={str(k): str(v) for k, v in (getattr(endpoint, "tags", None) or {}).items()},
        revision=revision_of(endpoint),
        scoring_uri=str(getattr(endpoint, "scoring_uri", None) or ""),
    )


def nonzero(mapping: Mapping[str, int]) -> dict[str, int]:
    """Lower-cased keys, zero entries dropped: how Azure stores traffic and mirror maps."""
    return {str(k).lower(): int(v) for k, v in mapping.items() if int(v)}


def tag_problems(tags: Mapping[str, str]) -> list[str]:
    """Why these engine tags cannot be written as they are; empty when they can."""
    problems = []
    for key, value in tags.items():
        if not key.startswith(STATE_TAG_PREFIX):
            problems.append(f"tag {key} is not under the engine's prefix {STATE_TAG_PREFIX}")
        if len(key) > MAX_TAG_KEY:
            problems.append(f"tag key {key[:40]}... is longer than {MAX_TAG_KEY} characters")
        if not isinstance(value, str):
            problems.append(f"tag {key} is not a string")
        elif len(value) > MAX_TAG_VALUE:
            problems.append(f"tag {key} is {len(value)} characters, Azure keeps {MAX_TAG_VALUE}")
    return problems


def merged_tags(current: Mapping[str, Any], engine_tags: Mapping[str, str]) -> dict[str, str]:
    """Every tag that is not the engine's kept as it is; the engine's replaced as a whole."""
    kept = {str(k): str(v) for k, v in current.items() if not str(k).startswith(STATE_TAG_PREFIX)}
    return {**kept, **engine_tags}


def writable_properties(properties: Mapping[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (properties or {}).items() if k not in READ_ONLY_PROPERTIES}


def apply_write(endpoint: Any, write: EndpointWrite) -> None:
    """Set traffic, mirror and the engine's tags on the freshly read SDK endpoint, in place,
    keeping identity, description and every other tag; strip the copied read-only fields."""
    # Complete maps: a deployment the write leaves out gets no traffic and no mirror.
    endpoint.traffic = nonzero(write.traffic)
    endpoint.mirror_traffic = nonzero(write.mirror)
    endpoint.tags = merged_tags(getattr(endpoint, "tags", None) or {}, write.tags)
    endpoint.properties = writable_properties(getattr(endpoint, "properties", None))


def unapplied_changes(
    write: EndpointWrite, other_tags: Mapping[str, str], live: LiveEndpoint
) -> list[str]:
    """What a fresh read shows differently from what was written: each a readable line."""
    problems = []
    if live.live_traffic() != nonzero(write.traffic):
        problems.append(f"traffic is {live.live_traffic()}, sent {nonzero(write.traffic)}")
    if live.live_mirror() != nonzero(write.mirror):
        problems.append(f"mirror is {live.live_mirror()}, sent {nonzero(write.mirror)}")
    engine_tags = {k: v for k, v in live.tags.items() if k.startswith(STATE_TAG_PREFIX)}
    if engine_tags != dict(write.tags):
        changed = sorted(set(engine_tags.items()) ^ set(write.tags.items()))
        keys = sorted({k for k, _ in changed})
        problems.append(f"engine tags differ from what was sent: {', '.join(keys)}")
    kept = {k: v for k, v in live.tags.items() if not k.startswith(STATE_TAG_PREFIX)}
    if kept != dict(other_tags):
        problems.append("tags not owned by the engine changed during the write")
    return problems
