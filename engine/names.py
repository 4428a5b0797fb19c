"""Deployment names derived from the model, its version and its serving settings.

Azure lower-cases traffic keys and allows 3-32 characters of letters, digits and `-`, starting
with a letter and not ending with `-`. The derived name keeps a readable stem and adds a digest
of everything that makes the deployment what it is, so it is stable across runs and distinct for
distinct versions or settings.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

MAX_NAME = 32
DIGEST_LENGTH = 6
NAME_RULE = re.compile(r"^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$")


def is_valid_name(name: str) -> bool:
    return 3 <= len(name) <= MAX_NAME and NAME_RULE.match(name) is not None


def _slug(text: str) -> str:
    return re.sub(r"-{2,}", "-", re.sub(r"[^a-z0-9]+", "-", text.lower())).strip("-")


def settings_digest(model_name: str, version: str, settings: dict[str, Any]) -> str:
    payload = json.dumps([model_name, version, settings], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:DIGEST_LENGTH]


def derive_deployment_name(model_name: str, version: str, settings: dict[str, Any]) -> str:
    """`credit-risk`, `7`, {...} -> `credit-risk-7-3fa2c1` (always a valid name, <= 32 chars)."""
    digest = settings_digest(model_name, version, settings)
    stem = _slug(model_name)
    if not stem or not stem[0].isalpha():
        stem = f"m-{stem}".rstrip("-")
    version_part = _slug(version) or "v"
    room = MAX_NAME - len(digest) - 1
    # Keep the version readable before trimming the model stem; the digest keeps names distinct.
    version_part = version_part[: max(1, room // 2)].strip("-") or "v"
    stem = stem[: room - len(version_part) - 1].rstrip("-")
    return f"{stem}-{version_part}-{digest}"
