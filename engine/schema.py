"""The manifest's JSON schema, generated from the spec models: `python -m engine.schema OUT`.

Editors validate manifests with it through the `$schema` comment; `make schema` regenerates the
checked-in `schemas/rollout.schema.json`, and a test fails when that file is stale. Rules over
several fields that JSON schema can express (one bound per gate, ranges per metric, at least one
traffic step, at most one mirror) are declared on the models so the engine and editors agree.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from engine.loader import FIELDS
from engine.spec import API_VERSION, ModelRollout

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
# An identifier, never fetched: a URN keeps editors and validators from looking it up.
SCHEMA_ID = "urn:saferollout:schema:rollout:v1"


def build_schema() -> dict[str, Any]:
    schema = ModelRollout.model_json_schema()
    _describe_fields(schema, schema, "")
    schema.update(
        {
            "$schema": SCHEMA_DIALECT,
            "$id": SCHEMA_ID,
            "title": "saferollout ModelRollout manifest",
            "description": (
                f"A manifest ({API_VERSION}) that says which model version should serve behind "
                "an online endpoint, through which traffic steps and behind which gates. "
                "`rollout validate` checks the rules this schema cannot express."
            ),
        }
    )
    return schema


def _describe_fields(root: dict[str, Any], node: dict[str, Any], key: str) -> None:
    """Give each property the sentence `rollout validate` uses for it, for editor hovers."""
    if "$ref" in node:
        _describe_fields(root, root["$defs"][node["$ref"].rsplit("/", 1)[-1]], key)
    for variant in node.get("anyOf", []) + node.get("oneOf", []):
        _describe_fields(root, variant, key)
    for name, sub in node.get("properties", {}).items():
        child = f"{key}.{name}" if key else name
        if child in FIELDS:
            sub["description"] = FIELDS[child].what
        _describe_fields(root, sub, child)
    if isinstance(node.get("items"), dict):
        _describe_fields(root, node["items"], f"{key}[]")


def render_schema() -> str:
    return json.dumps(build_schema(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m engine.schema OUT", file=sys.stderr)
        return 2
    Path(args[0]).write_text(render_schema(), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
