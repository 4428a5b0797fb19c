"""The local backend's control plane: endpoints, deployments, traffic, mirror, tags and keys.

It lives in `<home>/control-plane.json` (keys apart, in `<home>/keys.json`, mode 0600). Every
write takes `<home>/control-plane.lock`, reads, checks the same rules Azure ML enforces, and
replaces the file atomically, so concurrent CLI processes and the server never lose an update
and a reader never sees half a file. The server polls the file's identity to notice writes.

An endpoint's `revision` changes on every write of the endpoint itself (create, traffic,
mirror, tags), like Azure's `lastModifiedAt`; deployments are resources of their own, so
creating, provisioning or deleting one leaves the endpoint's revision alone.
"""

from __future__ import annotations

import copy
import json
import os
import secrets
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from engine.errors import ConflictError, PermanentError, TransientError
from engine.live import ProvisioningState
from engine.names import is_valid_name

STATE_FILE = "control-plane.json"
KEYS_FILE = "keys.json"
LOCK_FILE = "control-plane.lock"
FORMAT = 1
LOCK_TIMEOUT_S = 10.0

# Service limits of Azure ML managed online endpoints and of ARM tags.
MAX_DEPLOYMENTS = 20
MAX_MIRROR_PERCENT = 50
MAX_TAGS = 50
MAX_TAG_VALUE = 256
MAX_TAG_KEY = 512

# Error codes, in the spirit of the service's own `error.code` values.
CODE_INVALID_NAME = "InvalidName"
CODE_NOT_FOUND = "ResourceNotFound"
CODE_CONFLICT = "Conflict"
CODE_BAD_TRAFFIC = "InvalidTraffic"
CODE_BAD_MIRROR = "InvalidMirrorTraffic"
CODE_LIVE_AND_MIRROR = "LiveAndMirrorTraffic"
CODE_UNKNOWN_DEPLOYMENT = "DeploymentNotFound"
CODE_HAS_TRAFFIC = "DeploymentHasTraffic"
CODE_TOO_MANY_DEPLOYMENTS = "DeploymentLimitExceeded"
CODE_BAD_TAGS = "InvalidTags"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class DeploymentRecord:
    """One deployment as stored. `uid` tells a re-created deployment from the one it replaced."""

    name: str
    model_name: str
    model_version: str
    model_dir: str
    uid: str
    state: str = ProvisioningState.CREATING.value
    error: str = ""
    instance_type: str | None = None
    instance_count: int | None = None
    created_at: str = ""


@dataclass(frozen=True)
class EndpointRecord:
    """One endpoint as stored; traffic and mirror hold non-zero entries only, as on Azure."""

    name: str
    revision: str
    created_at: str
    modified_at: str
    traffic: dict[str, int] = field(default_factory=dict)
    mirror: dict[str, int] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    deployments: dict[str, DeploymentRecord] = field(default_factory=dict)


# ---- the rules (pure) ------------------------------------------------------------------------


def check_name(kind: str, name: str, *, endpoint: str, operation: str) -> None:
    if not isinstance(name, str) or not is_valid_name(name):
        raise PermanentError(
            f"{operation}: {kind} name {name!r} is invalid: use 3-32 letters, digits or '-', "
            "starting with a letter and not ending with '-'",
            endpoint=endpoint,
            operation=operation,
            code=CODE_INVALID_NAME,
        )


def _is_percent(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 100


def check_traffic(
    endpoint: str,
    deployments: Mapping[str, Any],
    traffic: Mapping[str, Any],
    mirror: Mapping[str, Any],
) -> tuple[dict[str, int], dict[str, int]]:
    """The non-zero traffic and mirror maps, after checking every rule Azure enforces on them."""
    op = "update endpoint"

    def refuse(message: str, code: str) -> PermanentError:
        return PermanentError(
            f"cannot update endpoint {endpoint}: {message}; nothing was written",
            endpoint=endpoint,
            operation=op,
            code=code,
        )

    for kind, shares, code in (
        ("traffic", traffic, CODE_BAD_TRAFFIC),
        ("mirror", mirror, CODE_BAD_MIRROR),
    ):
        bad = {k: v for k, v in shares.items() if not _is_percent(v)}
        if bad:
            raise refuse(f"{kind} values must be whole percents 0..100 (got {bad})", code)
    live = {k: v for k, v in traffic.items() if v}
    mirrored = {k: v for k, v in mirror.items() if v}

    unknown = sorted((set(live) | set(mirrored)) - set(deployments))
    if unknown:
        known = ", ".join(sorted(deployments)) or "none"
        raise refuse(
            f"traffic or mirror names unknown deployment(s) {', '.join(unknown)} "
            f"(deployments: {known})",
            CODE_UNKNOWN_DEPLOYMENT,
        )
    total = sum(live.values())
    if total not in (0, 100):
        raise refuse(
            f"traffic sums to {total}, it must sum to 0 or 100 (got {live})", CODE_BAD_TRAFFIC
        )
    if len(mirrored) > 1:
        raise refuse(
            f"mirror traffic may go to one deployment only (got {mirrored})", CODE_BAD_MIRROR
        )
    over = {k: v for k, v in mirrored.items() if v > MAX_MIRROR_PERCENT}
    if over:
        raise refuse(
            f"mirror traffic is at most {MAX_MIRROR_PERCENT} % (got {over})", CODE_BAD_MIRROR
        )
    both = sorted(set(live) & set(mirrored))
    if both:
        raise refuse(
            f"deployment {', '.join(both)} cannot get live and mirrored traffic at once",
            CODE_LIVE_AND_MIRROR,
        )
    return live, mirrored


def check_tags(endpoint: str, tags: Mapping[str, Any]) -> None:
    def refuse(message: str) -> PermanentError:
        return PermanentError(
            f"cannot update endpoint {endpoint}: {message}; nothing was written",
            endpoint=endpoint,
            operation="update endpoint",
            code=CODE_BAD_TAGS,
        )

    if len(tags) > MAX_TAGS:
        raise refuse(f"{len(tags)} tags, at most {MAX_TAGS} are allowed")
    for key, value in tags.items():
        if not isinstance(key, str) or not key or len(key) > MAX_TAG_KEY:
            raise refuse(f"tag name {str(key)[:40]!r} must be 1..{MAX_TAG_KEY} characters")
        if not isinstance(value, str):
            raise refuse(f"tag {key} must have a string value (got {type(value).__name__})")
        if len(value) > MAX_TAG_VALUE:
            raise refuse(f"tag {key} has {len(value)} characters, at most {MAX_TAG_VALUE}")


def merge_tags(current: Mapping[str, str], owned: Mapping[str, str], prefix: str) -> dict[str, str]:
    """Tags under `prefix` replaced by `owned`; every other tag kept as it is."""
    kept = {k: v for k, v in current.items() if not k.startswith(prefix)}
    return {**kept, **owned}


# ---- (de)serialisation -----------------------------------------------------------------------


def endpoint_from_json(data: dict[str, Any]) -> EndpointRecord:
    deployments = {n: DeploymentRecord(**d) for n, d in data.get("deployments", {}).items()}
    return EndpointRecord(**{**data, "deployments": deployments})


def _state_from_json(text: str) -> dict[str, Any]:
    data = json.loads(text)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(
            f"unexpected format {data.get('format') if isinstance(data, dict) else data!r}"
        )
    return data


def state_text(state: dict[str, Any]) -> str:
    """The state as JSON with one endpoint a line, keys sorted: as easy to read and diff as an
    indented file, and written by json's C encoder, which indentation would turn off (for a
    fleet of 200 endpoints that is most of the time a write takes)."""
    endpoints = state.get("endpoints", {})
    rest = json.dumps({k: v for k, v in state.items() if k != "endpoints"}, sort_keys=True)
    lines = [
        f" {json.dumps(n)}: {json.dumps(endpoints[n], sort_keys=True)}" for n in sorted(endpoints)
    ]
    body = "{\n" + ",\n".join(lines) + "\n}" if lines else "{}"
    return '{"endpoints": ' + body + (", " + rest[1:] if rest != "{}" else "}") + "\n"


def _write_atomically(path: Path, text: str) -> None:
    # mkstemp creates the file 0600, which is what the keys need and harmless for the rest.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---- the store -------------------------------------------------------------------------------


# The last text read of each state file and its parse (see ControlPlane._shared).
_PARSED: dict[Path, tuple[str, dict[str, Any]]] = {}


class ControlPlane:
    """Reads and guarded writes of `<home>/control-plane.json`. Safe across processes."""

    def __init__(self, home: Path):
        self.home = Path(home)
        self.path = self.home / STATE_FILE
        self.keys_path = self.home / KEYS_FILE
        # Writes hold the lock for milliseconds: a short poll lets a waiting writer in quickly.
        self._lock = FileLock(
            str(self.home / LOCK_FILE), timeout=LOCK_TIMEOUT_S, poll_interval=0.005
        )

    # -- reads need no lock: the file is only ever replaced whole.

    def load(self) -> dict[str, Any]:
        """The whole state: `generation` (bumped on every write) and `endpoints`. A fresh
        copy, which the caller may change."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return {"format": FORMAT, "generation": 0, "endpoints": {}}
        return self._parse(text)

    def endpoints(self) -> dict[str, EndpointRecord]:
        return {n: endpoint_from_json(e) for n, e in self.load()["endpoints"].items()}

    def read_endpoint(self, name: str) -> EndpointRecord | None:
        data = self._shared()["endpoints"].get(name)
        return endpoint_from_json(copy.deepcopy(data)) if data is not None else None

    def _shared(self) -> dict[str, Any]:
        """The state as parsed from the file's current text, shared by every reader in this
        process: one that reads many endpoints (a folder plan, a fleet pass) parses the file
        once per change instead of once per endpoint. Never to be changed."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return {"format": FORMAT, "generation": 0, "endpoints": {}}
        cached = _PARSED.get(self.path)
        if cached is not None and cached[0] == text:
            return cached[1]
        state = self._parse(text)
        _PARSED[self.path] = (text, state)
        return state

    def _parse(self, text: str) -> dict[str, Any]:
        try:
            return _state_from_json(text)
        except ValueError as exc:
            raise PermanentError(
                f"the local control plane {self.path} is unreadable ({exc}); restore it from a "
                "backup or remove the state directory to start afresh",
                operation="read state",
            ) from exc

    def endpoint_key(self, name: str) -> str:
        try:
            keys = json.loads(self.keys_path.read_text())
        except FileNotFoundError:
            keys = {}
        if name not in keys:
            raise PermanentError(
                f"endpoint {name} has no key: it does not exist in {self.home}; create it first",
                endpoint=name,
                operation="get key",
                code=CODE_NOT_FOUND,
            )
        return keys[name]

    # -- writes

    def _mutate(
        self, operation: str, endpoint: str, change: Callable[[dict[str, Any]], Any]
    ) -> Any:
        """Run `change` on the loaded state under the lock and persist it if it returns normally."""
        self.home.mkdir(parents=True, exist_ok=True)
        try:
            with self._lock:
                state = self.load()
                result = change(state)
                state["generation"] = state.get("generation", 0) + 1
                _write_atomically(self.path, state_text(state))
                return result
        except Timeout:
            raise TransientError(
                f"{operation} on endpoint {endpoint}: the local control plane stayed locked for "
                f"{LOCK_TIMEOUT_S:.0f} s by another process; try again",
                retry_after=1.0,
                endpoint=endpoint,
                operation=operation,
            ) from None

    def _endpoint(self, state: dict[str, Any], name: str, operation: str) -> dict[str, Any]:
        data = state["endpoints"].get(name)
        if data is None:
            raise PermanentError(
                f"{operation}: endpoint {name} does not exist in {self.home}; create it first",
                endpoint=name,
                operation=operation,
                code=CODE_NOT_FOUND,
            )
        return data

    def create_endpoint(self, name: str) -> EndpointRecord:
        """Create an empty endpoint with a fresh key; returns the existing one unchanged."""
        check_name("endpoint", name, endpoint=name, operation="create endpoint")
        existing = self.read_endpoint(name)
        if existing is not None:
            return existing

        def change(state: dict[str, Any]) -> EndpointRecord:
            if name not in state["endpoints"]:
                now = _now()
                record = EndpointRecord(
                    name=name, revision=_new_revision(0), created_at=now, modified_at=now
                )
                state["endpoints"][name] = asdict(record)
                self._store_key(name)
            return endpoint_from_json(state["endpoints"][name])

        return self._mutate("create endpoint", name, change)

    def _store_key(self, name: str) -> None:
        try:
            keys = json.loads(self.keys_path.read_text())
        except FileNotFoundError:
            keys = {}
        keys[name] = secrets.token_urlsafe(32)
        _write_atomically(self.keys_path, json.dumps(keys) + "\n")
        os.chmod(self.keys_path, 0o600)

    def update_endpoint(
        self,
        name: str,
        *,
        traffic: Mapping[str, Any],
        mirror: Mapping[str, Any],
        tags: Mapping[str, str],
        tag_prefix: str,
        expected_revision: str,
    ) -> EndpointRecord:
        """Replace traffic, mirror and the tags under `tag_prefix` in one write.

        Raises ConflictError when the endpoint's revision is no longer `expected_revision`.
        """
        operation = "update endpoint"

        def change(state: dict[str, Any]) -> EndpointRecord:
            data = self._endpoint(state, name, operation)
            if data["revision"] != expected_revision:
                raise ConflictError(
                    f"cannot update endpoint {name}: it changed since it was read (revision "
                    f"{expected_revision}, now {data['revision']}); read it again and re-plan",
                    endpoint=name,
                    operation=operation,
                    code=CODE_CONFLICT,
                )
            live, mirrored = check_traffic(name, data["deployments"], traffic, mirror)
            merged = merge_tags(data["tags"], tags, tag_prefix)
            check_tags(name, merged)
            data.update(
                traffic=live,
                mirror=mirrored,
                tags=merged,
                revision=_new_revision(_revision_number(data["revision"]) + 1),
                modified_at=_now(),
            )
            return endpoint_from_json(data)

        return self._mutate(operation, name, change)

    def add_deployment(self, endpoint: str, record: DeploymentRecord) -> bool:
        """Record a new deployment; False (and no change) when one of that name exists."""
        operation = "create deployment"
        check_name("deployment", record.name, endpoint=endpoint, operation=operation)

        def change(state: dict[str, Any]) -> bool:
            deployments = self._endpoint(state, endpoint, operation)["deployments"]
            if record.name in deployments:
                return False
            if len(deployments) >= MAX_DEPLOYMENTS:
                raise PermanentError(
                    f"cannot create deployment {record.name} on endpoint {endpoint}: it already "
                    f"has {len(deployments)} deployments, the limit is {MAX_DEPLOYMENTS}; delete "
                    "an unused one first",
                    endpoint=endpoint,
                    operation=operation,
                    code=CODE_TOO_MANY_DEPLOYMENTS,
                )
            deployments[record.name] = asdict(replace(record, created_at=_now()))
            return True

        return self._mutate(operation, endpoint, change)

    def set_deployment_state(
        self, endpoint: str, name: str, uid: str, state: ProvisioningState, error: str = ""
    ) -> bool:
        """Record a provisioning outcome; ignored (False) when that deployment is gone or was
        replaced by a newer one of the same name."""

        def change(data: dict[str, Any]) -> bool:
            found = data["endpoints"].get(endpoint, {}).get("deployments", {}).get(name)
            if found is None or found["uid"] != uid:
                return False
            found.update(state=state.value, error=error)
            return True

        current = self.read_endpoint(endpoint)
        dep = current.deployments.get(name) if current else None
        if dep is None or dep.uid != uid or (dep.state, dep.error) == (state.value, error):
            return False
        return self._mutate("record deployment state", endpoint, change)

    def delete_deployment(self, endpoint: str, name: str) -> bool:
        """Remove a deployment that has no live or mirrored traffic; False when already gone."""
        operation = "delete deployment"

        def change(state: dict[str, Any]) -> bool:
            data = state["endpoints"].get(endpoint)
            if data is None or name not in data["deployments"]:
                return False
            shares = {
                kind: data[kind][name] for kind in ("traffic", "mirror") if data[kind].get(name)
            }
            if shares:
                described = " and ".join(f"{pct} % {kind}" for kind, pct in shares.items())
                raise PermanentError(
                    f"cannot delete deployment {name} of endpoint {endpoint}: it still has "
                    f"{described}; move its traffic to another deployment first",
                    endpoint=endpoint,
                    operation=operation,
                    code=CODE_HAS_TRAFFIC,
                )
            del data["deployments"][name]
            return True

        return self._mutate(operation, endpoint, change)


def _new_revision(number: int) -> str:
    # A counter keeps revisions readable; the random part keeps a re-created state directory
    # from reusing a revision that a saved plan may still hold.
    return f"{number}-{secrets.token_hex(3)}"


def _revision_number(revision: str) -> int:
    head = revision.split("-", 1)[0]
    return int(head) if head.isdigit() else 0


def new_uid() -> str:
    return secrets.token_hex(6)
