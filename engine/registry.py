"""The local model registry: versioned artifacts with their sha256, under `<home>/registry/`.

Layout: `registry/<model>/<version>/` holds the artifact file and `registration.json`
(name, version, artifact file name, sha256, metrics, time). Versions are whole numbers assigned
in order. A deployment re-hashes the artifact before loading it (`verified_artifact`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from filelock import FileLock

from engine.errors import SafeRolloutError

REGISTRATION = "registration.json"


class RegistryError(SafeRolloutError):
    """A model version is missing from the registry or its artifact does not match."""


@dataclass(frozen=True)
class RegisteredModel:
    name: str
    version: str
    directory: Path
    artifact: str
    sha256: str
    metrics: dict[str, Any]

    @property
    def artifact_path(self) -> Path:
        return self.directory / self.artifact


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _model_root(home: Path, name: str) -> Path:
    return home / "registry" / name


def versions(home: Path, name: str) -> list[str]:
    root = _model_root(home, name)
    if not root.is_dir():
        return []
    found = [p.name for p in root.iterdir() if (p / REGISTRATION).is_file()]
    return sorted(found, key=lambda v: (not v.isdigit(), int(v) if v.isdigit() else 0, v))


def register(
    home: Path,
    name: str,
    artifact: Path,
    *,
    metrics: dict[str, Any] | None = None,
    description: str = "",
) -> RegisteredModel:
    """Copy `artifact` in as the next version of `name` and record its sha256."""
    root = _model_root(home, name)
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / ".lock")):
        numbers = [int(v) for v in versions(home, name) if v.isdigit()]
        version = str(max(numbers, default=0) + 1)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=root))
        shutil.copyfile(artifact, staging / artifact.name)
        record = {
            "name": name,
            "version": version,
            "artifact": artifact.name,
            "sha256": sha256_of(staging / artifact.name),
            "metrics": metrics or {},
            "description": description,
            "registered_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        (staging / REGISTRATION).write_text(json.dumps(record, indent=2) + "\n")
        os.replace(staging, root / version)
    return resolve(home, name, version)


def resolve(home: Path, name: str, version: str) -> RegisteredModel:
    directory = _model_root(home, name) / version
    try:
        record = json.loads((directory / REGISTRATION).read_text())
    except FileNotFoundError:
        known = ", ".join(versions(home, name)) or "none"
        raise RegistryError(
            f"model {name} version {version} is not registered in {home / 'registry'} "
            f"(registered versions: {known}); train and register it first"
        ) from None
    return RegisteredModel(
        name=name,
        version=version,
        directory=directory,
        artifact=record["artifact"],
        sha256=record["sha256"],
        metrics=record.get("metrics", {}),
    )


def verified_artifact(model: RegisteredModel) -> Path:
    """The artifact's path, after checking its bytes still hash to the registered digest."""
    actual = sha256_of(model.artifact_path)
    if actual != model.sha256:
        raise RegistryError(
            f"model {model.name} version {model.version}: artifact {model.artifact} has sha256 "
            f"{actual[:12]}…, registered {model.sha256[:12]}…; refusing to load it"
        )
    return model.artifact_path
