"""Manifest loading: files and folders -> validated `ModelRollout`s, or every problem located.

The first step of every command. Bytes are checked (size, UTF-8, tabs), YAML is composed into
nodes and built into plain data while remembering where each key and item sits, the spec models
judge the data, and each complaint becomes a `Problem` that reads
`FILE:LINE:COL: spec.path: message (got VALUE); hint`. Nothing here contacts a provider.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, get_args

from pydantic import BaseModel, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.nodes import MappingNode, ScalarNode
from ruamel.yaml.reader import ReaderError

from engine.durations import to_manifest_form
from engine.errors import ManifestError, Problem
from engine.names import is_valid_name
from engine.spec import RULE_ERROR, Metric, ModelRollout

# Limits that keep hostile or mistaken input cheap: a real manifest is a few KiB, a dozen levels
# deep and a few hundred values once its aliases are expanded. Pure-Python YAML reads about
# 250 KiB a second, so the byte cap also bounds the time spent on one file.
MAX_BYTES = 256 * 1024
MAX_DEPTH = 32
MAX_VALUES = 10_000
MAX_EXPANDED_CHARS = 1_000_000
MAX_PROBLEMS = 100

MANIFEST_SUFFIXES = (".yaml", ".yml")
SAMPLE_REQUEST = "sample-request.json"

Loc = tuple[str | int, ...]

_TAG = "tag:yaml.org,2002:"
_SCALAR_KINDS = {f"{_TAG}{kind}": kind for kind in ("str", "int", "float", "bool", "null")}
_TIMESTAMP = f"{_TAG}timestamp"
_MERGE = f"{_TAG}merge"
# Words YAML 1.1 reads as booleans; YAML 1.2 (and this loader) reads them as text. Either way
# the manifest would not mean what other tools think it means, so they are never accepted.
_YAML11_TRUE = {"y", "Y", "yes", "Yes", "YES", "on", "On", "ON"}
_YAML11_FALSE = {"n", "N", "no", "No", "NO", "off", "Off", "OFF"}
_CANONICAL_INT = re.compile(r"-?(0|[1-9][0-9]*)")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_STEP_KINDS = ("mirror", "traffic", "approval")
_GATE_KINDS = ("sequential", "threshold")
_UNION_TAGS = {"steps": _STEP_KINDS, "gates": _GATE_KINDS}  # list -> tags its union adds
_VERSION_LOC: Loc = ("spec", "model", "version")
_BOUND_KEYS = ("max", "min", "max_ratio_to_stable")


@dataclass(frozen=True)
class LoadedManifest:
    """A valid manifest and the files it refers to, resolved and known to exist."""

    rollout: ModelRollout
    path: Path
    model_dir: Path
    smoke_request: Path


@dataclass(frozen=True)
class Spot:
    """Where a value sits (its key or list item, 1-based) and how the source wrote it."""

    line: int
    column: int
    kind: str  # map, seq, str, int, float, bool or null
    text: str | None = None  # a scalar's text as written, without quotes
    plain: bool = True  # an unquoted scalar


@dataclass
class Document:
    """One manifest file read as plain data, with the source position of every value."""

    file: str
    data: Any = None
    spots: dict[Loc, Spot] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    claimed: set[Loc] = field(default_factory=set)  # already explained; validation stays quiet

    @property
    def readable(self) -> bool:
        return () in self.spots

    def spot(self, loc: Loc) -> Spot:
        """The spot of `loc`, or of its nearest ancestor that exists (a missing key's parent)."""
        for end in range(len(loc), -1, -1):
            if loc[:end] in self.spots:
                return self.spots[loc[:end]]
        return Spot(1, 1, "null")

    def problem(
        self, loc: Loc, message: str, value: str | None = None, hint: str | None = None
    ) -> Problem:
        spot = self.spot(loc)
        return Problem(self.file, spot.line, spot.column, format_loc(loc), message, value, hint)

    def add(self, problem: Problem, loc: Loc | None = None) -> None:
        self.problems.append(problem)
        if loc is not None:
            self.claimed.add(loc)


def format_loc(loc: Loc) -> str:
    """`("spec", "steps", 1, "traffic")` -> `spec.steps[1].traffic`."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


# --- public entry points -----------------------------------------------------------------------


def load_manifest(path: str | os.PathLike[str]) -> LoadedManifest:
    """Load and validate one manifest file; raises `ManifestError` listing every problem."""
    outcome = _load_file(Path(path))
    if outcome.problems:
        raise ManifestError(outcome.problems)
    return outcome.manifest  # type: ignore[return-value]


def load_manifest_text(
    text: str | bytes,
    file: str | os.PathLike[str] = "<manifest>",
    base_dir: str | os.PathLike[str] | None = None,
) -> LoadedManifest:
    """Load manifest text as if it were `file`.

    With `base_dir`, paths resolve as if the manifest sat in that folder, and the model folder
    and smoke request must exist. Without it the file system is not consulted: `model_dir` is
    `models/<name>` and `smoke_request` is `smoke_test.request` as written, or the model's
    `sample-request.json`.
    """
    folder = Path(base_dir).resolve() if base_dir is not None else None
    outcome = _load_source(text, str(file), Path(file), folder)
    if outcome.problems:
        raise ManifestError(outcome.problems)
    return outcome.manifest  # type: ignore[return-value]


def load_paths(paths: Iterable[str | os.PathLike[str]]) -> list[LoadedManifest]:
    """Load files and folders (each folder's *.yaml and *.yml, sorted) as one set.

    Raises one `ManifestError` with every problem in every file, including two manifests that
    target the same endpoint.
    """
    files, problems = _manifest_files([Path(p) for p in paths])
    outcomes = [_load_file(f) for f in files]
    by_file: dict[str, list[Problem]] = {o.doc.file: list(o.problems) for o in outcomes}
    for problem in _endpoint_clashes(outcomes):
        by_file[problem.file].append(problem)
    for file_problems in by_file.values():
        problems.extend(sorted(file_problems, key=lambda p: (p.line, p.column)))
    if problems:
        raise ManifestError(problems)
    return [o.manifest for o in outcomes if o.manifest is not None]


def read_document(source: str | bytes, file: str = "<manifest>") -> Document:
    """Read YAML into plain data with positions; problems so far are in `Document.problems`."""
    doc = Document(file)
    text = _decode(source, doc)
    if text is None:
        return doc
    tab_lines = _report_tabs(text, doc)
    root = _compose(text, doc, tab_lines)
    if root is not None:
        _build(root, doc)
    return doc


# --- reading files -----------------------------------------------------------------------------


@dataclass
class _Outcome:
    doc: Document
    problems: list[Problem]
    manifest: LoadedManifest | None = None


def _manifest_files(paths: list[Path]) -> tuple[list[Path], list[Problem]]:
    files: list[Path] = []
    problems: list[Problem] = []
    for path in paths:
        if path.is_dir():
            found = sorted(
                p for p in path.iterdir() if p.suffix in MANIFEST_SUFFIXES and p.is_file()
            )
            if not found:
                problems.append(
                    Problem(str(path), 1, 1, "", "no manifests (*.yaml, *.yml) in this folder")
                )
            files.extend(found)
        elif path.exists():
            files.append(path)
        else:
            problems.append(Problem(str(path), 1, 1, "", "no such file or folder"))
    unique: dict[Path, Path] = {}
    for f in files:
        unique.setdefault(f.resolve(), f)
    return list(unique.values()), problems


def _load_file(path: Path) -> _Outcome:
    raw, problem = _read_bytes(path)
    if problem is not None:
        return _Outcome(Document(str(path)), [problem])
    # The folder the manifest was named in (not a symlink's target) anchors its relative paths.
    return _load_source(raw, str(path), path, Path(os.path.abspath(path)).parent)


def _read_bytes(path: Path) -> tuple[bytes, Problem | None]:
    def refuse(message: str) -> tuple[bytes, Problem]:
        return b"", Problem(str(path), 1, 1, "", message)

    if path.is_dir():
        return refuse("is a folder, not a manifest file")
    if not path.exists():
        return refuse("no such file")
    if not path.is_file():
        return refuse("not a regular file")
    try:
        with path.open("rb") as handle:
            # One byte past the limit is enough to know the file is too big.
            return handle.read(MAX_BYTES + 1), None
    except OSError as error:
        return refuse(f"cannot read the file: {error.strerror or error}")


def _load_source(source: str | bytes, file: str, path: Path, folder: Path | None) -> _Outcome:
    manifest = None
    doc = Document(file)
    try:
        doc = read_document(source, file)
        rollout = _validate(doc) if doc.readable else None
        if rollout is not None:
            model_dir, request = _resolve_files(rollout, doc, folder)
            manifest = LoadedManifest(rollout, path, model_dir, request)
    except Exception as error:  # noqa: BLE001 - a loader bug must not become a traceback
        message = f"internal error while reading the manifest ({type(error).__name__}: {error})"
        doc.add(Problem(file, 1, 1, "", message, hint="please report it with this file"))
    problems = _capped(sorted(doc.problems, key=lambda p: (p.line, p.column)))
    return _Outcome(doc, problems, None if problems else manifest)


def _capped(problems: list[Problem]) -> list[Problem]:
    if len(problems) <= MAX_PROBLEMS:
        return problems
    rest = problems[MAX_PROBLEMS]
    more = f"{len(problems) - MAX_PROBLEMS} more problems not shown"
    return [*problems[:MAX_PROBLEMS], Problem(rest.file, rest.line, rest.column, "", more)]


# --- bytes and text ----------------------------------------------------------------------------


def _position(data: bytes | str, offset: int) -> tuple[int, int]:
    newline = b"\n" if isinstance(data, bytes) else "\n"
    line = data.count(newline, 0, offset) + 1
    start = data.rfind(newline, 0, offset) + 1
    prefix = data[start:offset]
    column = len(prefix.decode("utf-8", "replace") if isinstance(prefix, bytes) else prefix)
    return line, column + 1


def _decode(source: str | bytes, doc: Document) -> str | None:
    raw = source.encode("utf-8", "surrogatepass") if isinstance(source, str) else source
    if len(raw) > MAX_BYTES:
        doc.add(
            Problem(
                doc.file,
                1,
                1,
                "",
                f"the file is larger than {MAX_BYTES // 1024} KiB, the most a manifest may be",
                hint="is this the right file?",
            )
        )
        return None
    if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
        doc.add(Problem(doc.file, 1, 1, "", "the file is UTF-16 text", hint="save it as UTF-8"))
        return None
    if b"\x00" in raw:
        line, column = _position(raw, raw.index(b"\x00"))
        doc.add(Problem(doc.file, line, column, "", "a binary file, not a YAML manifest"))
        return None
    try:
        text = raw.removeprefix(b"\xef\xbb\xbf").decode("utf-8")
    except UnicodeDecodeError as error:
        offset = error.start + (3 if raw.startswith(b"\xef\xbb\xbf") else 0)
        line, column = _position(raw, offset)
        bad = raw[offset : offset + 1].hex()
        doc.add(
            Problem(
                doc.file, line, column, "", f"not UTF-8 text (byte 0x{bad})", hint="save as UTF-8"
            )
        )
        return None
    control = _CONTROL.search(text)
    if control is not None:
        line, column = _position(text, control.start())
        code = f"U+{ord(control.group()):04X}"
        doc.add(
            Problem(doc.file, line, column, "", f"a control character ({code}) in a YAML manifest")
        )
        return None
    return text


def _report_tabs(text: str, doc: Document) -> set[int]:
    lines = set()
    for number, line in enumerate(text.splitlines(), start=1):
        if "\t" in line:
            lines.add(number)
            doc.add(
                Problem(
                    doc.file,
                    number,
                    line.index("\t") + 1,
                    "",
                    "a tab character; YAML manifests use spaces",
                    hint="replace the tab with spaces",
                )
            )
    return lines


# --- YAML --------------------------------------------------------------------------------------


def _yaml() -> YAML:
    yaml = YAML(typ="safe", pure=True)
    yaml.max_depth = MAX_DEPTH
    # Re-defining an anchor is valid YAML; ruamel would warn about it, which is not our concern.
    yaml.composer.warn_double_anchors = False
    return yaml


def _compose(text: str, doc: Document, tab_lines: set[int]) -> Any:
    yaml = _yaml()
    try:
        documents = list(yaml.compose_all(text))
    except MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        if line not in tab_lines:  # a tab already explains it
            doc.add(Problem(doc.file, line, column, "", _syntax_message(error)))
        return None
    except ReaderError as error:
        line, column = _position(text, error.position)
        doc.add(Problem(doc.file, line, column, "", f"not valid YAML: {error.reason}"))
        return None
    except (YAMLError, RecursionError, ValueError) as error:
        doc.add(Problem(doc.file, 1, 1, "", f"not valid YAML: {error}"))
        return None
    documents = [d for d in documents if d is not None]
    if not documents:
        doc.add(
            Problem(
                doc.file,
                1,
                1,
                "",
                "the file holds no manifest",
                hint="a manifest is a mapping with apiVersion, kind, metadata and spec",
            )
        )
        return None
    for extra in documents[1:]:
        mark = extra.start_mark
        doc.add(
            Problem(
                doc.file,
                mark.line + 1,
                mark.column + 1,
                "",
                "a second YAML document; one manifest per file",
                hint="move it to a file of its own",
            )
        )
    return documents[0]


def _syntax_message(error: MarkedYAMLError) -> str:
    if "maximum depth" in str(error.problem):
        return f"nested deeper than {MAX_DEPTH} levels"
    detail = str(error.problem or error.context or error).strip()
    return f"not valid YAML: {detail}"


class _TooLarge(Exception):
    def __init__(self, loc: Loc, reason: str):
        self.loc, self.reason = loc, reason


class _Builder:
    """Builds plain data from composed nodes, counting every value an alias expands to."""

    def __init__(self, doc: Document):
        self.doc = doc
        self.constructor = _yaml().constructor
        self.values = 0
        self.chars = 0
        self.open_nodes: set[int] = set()

    def build(self, node: Any, loc: Loc, line: int, column: int) -> Any:
        self.values += 1
        if self.values > MAX_VALUES or len(loc) > MAX_DEPTH:
            raise _TooLarge(loc, f"expand past {MAX_VALUES} values or {MAX_DEPTH} levels")
        if isinstance(node, ScalarNode):
            return self.scalar(node, loc, line, column)
        if id(node) in self.open_nodes:
            raise _TooLarge(loc, "refer to themselves (an alias inside its own anchor)")
        self.open_nodes.add(id(node))
        try:
            if isinstance(node, MappingNode):
                self.doc.spots[loc] = Spot(line, column, "map")
                return self.mapping(node, loc)
            self.doc.spots[loc] = Spot(line, column, "seq")
            return [self.build(item, (*loc, i), *_start(item)) for i, item in enumerate(node.value)]
        finally:
            self.open_nodes.discard(id(node))

    def mapping(self, node: MappingNode, loc: Loc) -> dict[str, Any]:
        result: dict[str, Any] = {}
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            line, column = _start(key_node)
            if _tag(key_node) == _MERGE:
                self.refuse(
                    loc, line, column, "merge keys (<<) are not supported", "write keys out"
                )
                continue
            if not isinstance(key_node, ScalarNode):
                self.refuse(loc, line, column, "a key is a plain word, not a list or mapping")
                continue
            key = str(key_node.value)
            if key in first_line:
                message = f"duplicate key {key}; first at line {first_line[key]}"
                self.refuse((*loc, key), line, column, message, "keep one of them")
                continue
            first_line[key] = line
            result[key] = self.build(value_node, (*loc, key), line, column)
        return result

    def scalar(self, node: ScalarNode, loc: Loc, line: int, column: int) -> Any:
        text = str(node.value)
        self.chars += len(text)
        if self.chars > MAX_EXPANDED_CHARS:
            raise _TooLarge(loc, f"expand past {MAX_EXPANDED_CHARS} characters")
        tag = _tag(node)
        kind = _SCALAR_KINDS.get(tag)
        if kind is None:
            # No manifest field is a date: keep what was written. Other tags are refused.
            if tag != _TIMESTAMP:
                shown = tag.replace(_TAG, "!!")
                # Its value is a stand-in: validation says nothing more about it.
                self.refuse(loc, line, column, f"the YAML tag {shown} is not supported", claim=True)
            kind = "str"
        self.doc.spots[loc] = Spot(line, column, kind, text, node.style is None)
        if kind == "str":
            return text
        try:
            return self.constructor.construct_object(node, deep=True)
        except (YAMLError, ValueError, OverflowError, KeyError, TypeError):
            self.refuse(loc, line, column, f"cannot read {text!r} as {kind}", claim=True)
            return text

    def refuse(
        self,
        loc: Loc,
        line: int,
        column: int,
        message: str,
        hint: str | None = None,
        *,
        claim: bool = False,
    ) -> None:
        problem = Problem(self.doc.file, line, column, format_loc(loc), message, hint=hint)
        self.doc.add(problem, loc if claim else None)


def _start(node: Any) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


def _tag(node: Any) -> str:
    return str(getattr(node.tag, "value", node.tag))


def _build(root: Any, doc: Document) -> None:
    builder = _Builder(doc)
    try:
        doc.data = builder.build(root, (), *_start(root))
    except _TooLarge as too_large:
        # Report at the top-level key being built: node marks inside an expansion point at the
        # anchor, not at the alias that expanded it.
        doc.add(
            doc.problem(
                too_large.loc[:1],
                f"anchors and aliases {too_large.reason}",
                hint="write the manifest out without aliases",
            )
        )
        doc.spots.clear()
        doc.data = None


# --- validation --------------------------------------------------------------------------------


def _validate(doc: Document) -> ModelRollout | None:
    errors: list[dict[str, Any]] = []
    rollout = None
    try:
        rollout = ModelRollout.model_validate(doc.data)
    except ValidationError as error:
        errors = list(error.errors())
    except Exception as error:  # noqa: BLE001 - a validator bug must still read as a problem
        doc.add(Problem(doc.file, 1, 1, "", f"could not validate the manifest: {error}"))
        return None

    unknown = [_manifest_loc(e["loc"]) for e in errors if e["type"] == "extra_forbidden"]
    explained: set[Loc] = set()
    for error in errors:
        loc = _manifest_loc(error["loc"])
        if loc not in doc.claimed:
            explained.add(loc)
            doc.add(_explain(error, loc, doc))
    # Quirks the models accepted; values under an unknown key are already reported with it.
    for loc, spot in doc.spots.items():
        if loc in explained or loc in doc.claimed or any(loc[: len(u)] == u for u in unknown):
            continue
        problem = _trap(loc, spot, doc)
        if problem is not None:
            doc.add(problem, loc)
    return None if doc.problems else rollout


def _manifest_loc(loc: tuple[Any, ...]) -> Loc:
    """Drop the tags the step and gate unions add: (steps, 1, traffic, traffic) ->
    steps[1].traffic, (gates, 0, sequential, min_effect) -> gates[0].min_effect."""
    out: list[str | int] = []
    for i, part in enumerate(loc):
        in_union = i >= 2 and isinstance(loc[i - 1], int)
        tags = _UNION_TAGS.get(str(loc[i - 2]), ()) if in_union else ()
        # A step's tag is also its field's name, so it is a tag only with a field after it.
        tagged = part in tags and (i + 1 < len(loc) or part not in _STEP_KINDS)
        if not tagged:
            out.append(part)
    return tuple(out)


def _field_key(loc: Loc) -> str:
    """The manifest field a location is an instance of: spec.steps[1].bake -> spec.steps[].bake."""
    return format_loc(tuple("[]" if isinstance(p, int) else p for p in loc)).replace(".[]", "[]")


def _shown(spot: Spot) -> str:
    if spot.kind == "map":
        return "a mapping"
    if spot.kind == "seq":
        return "a list"
    text = spot.text or ""
    if spot.kind == "null" and text in ("", "~", "null", "Null", "NULL"):
        return text or "nothing"
    shown = text if spot.plain and "\n" not in text else json.dumps(text, ensure_ascii=False)
    return shown if len(shown) <= 60 else shown[:57] + "..."


def _is_bool_word(spot: Spot) -> bool:
    return spot.plain and spot.kind in ("str", "bool") and spot.text in _YAML11_TRUE | _YAML11_FALSE


def _yaml11_reading(word: str) -> str:
    return "true" if word in _YAML11_TRUE else "false"


def _trap(loc: Loc, spot: Spot, doc: Document) -> Problem | None:
    """YAML quirks the models accepted but that would not mean what the author meant."""
    text = spot.text or ""
    if spot.kind == "null" and _field_key(loc) in {f"spec.gates[].{k}" for k in _BOUND_KEYS}:
        # The models read a null bound as no bound; written out, it is a mistake.
        return doc.problem(loc, f"{loc[-1]} has no value", _shown(spot), "write a number")
    if _is_bool_word(spot):
        return doc.problem(
            loc,
            f"{text} is a yes/no word: YAML 1.1 tools read it as {_yaml11_reading(text)}",
            text,
            f'quote it: "{text}"',
        )
    if spot.kind == "int" and not _CANONICAL_INT.fullmatch(text):
        # A version is text (an integer one is accepted for convenience); elsewhere a number.
        hint = f'quote it: "{text}"' if loc == _VERSION_LOC else f"write {_value_at(doc.data, loc)}"
        return doc.problem(
            loc, "not a plain decimal number; YAML tools disagree on what it is", text, hint
        )
    return None


def _value_at(data: Any, loc: Loc) -> Any:
    for part in loc:
        data = data[part]
    return data


# --- messages ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FieldText:
    """How a manifest field is described to a person: what it is, an example, and its kind."""

    what: str
    example: str | None = None
    kind: str = "text"  # text, word, name, version, percent, duration, whole, number, bool, map


_DURATION_WHAT = "is a duration such as 30s, 10m or 2h"
_NAME_CHARS = "letters, digits, ., _ and -, starting with a letter or digit"
ENDPOINT_RULE = (
    "an endpoint name has 3-32 characters: letters, digits and -, "
    "starting with a letter and not ending with -"
)

FIELDS: dict[str, FieldText] = {
    "": FieldText("a manifest is a mapping with apiVersion, kind, metadata and spec", kind="map"),
    "apiVersion": FieldText("apiVersion is saferollout/v1", "apiVersion: saferollout/v1", "word"),
    "kind": FieldText("kind is ModelRollout", "kind: ModelRollout", "word"),
    "metadata": FieldText("metadata is a mapping with a name", "metadata: {name: NAME}", "map"),
    "metadata.name": FieldText(
        "metadata.name has 1 to 63 letters, digits, '.', '_' or '-', starting with a letter or "
        "digit",
        "name: NAME",
    ),
    "spec": FieldText("spec is a mapping with target, model, steps and gates", "spec:", "map"),
    "spec.target": FieldText(
        "target is a mapping with provider and endpoint",
        "target: {provider: local, endpoint: NAME}",
        "map",
    ),
    "spec.target.provider": FieldText("provider is azureml or local", "provider: local", "word"),
    "spec.target.endpoint": FieldText(ENDPOINT_RULE, "endpoint: NAME", "name"),
    "spec.target.workspace": FieldText(
        "workspace is a mapping of subscription_id, resource_group and name", kind="map"
    ),
    "spec.target.workspace.subscription_id": FieldText("subscription_id is an Azure id"),
    "spec.target.workspace.resource_group": FieldText("resource_group is an Azure name"),
    "spec.target.workspace.name": FieldText("workspace.name is an Azure ML workspace name"),
    "spec.model": FieldText(
        "model is a mapping with name and version", 'model: {name: NAME, version: "1"}', "map"
    ),
    "spec.model.name": FieldText(f"a model name has {_NAME_CHARS}", "name: NAME"),
    "spec.model.version": FieldText(
        'a version is a pinned string such as "7"', 'version: "1"', "version"
    ),
    "spec.deployment": FieldText("deployment is a mapping of serving settings", kind="map"),
    "spec.deployment.instance_type": FieldText(
        "instance_type is a VM size such as Standard_DS3_v2"
    ),
    "spec.deployment.instance_count": FieldText(
        "instance_count is a whole number from 1 to 100", kind="whole"
    ),
    "spec.smoke_test": FieldText(
        "smoke_test is a mapping of request and expect_status", kind="map"
    ),
    "spec.smoke_test.request": FieldText("request is a JSON file's path, relative to the manifest"),
    "spec.smoke_test.expect_status": FieldText(
        "expect_status is an HTTP status from 100 to 599", kind="whole"
    ),
    "spec.steps": FieldText(
        "steps is a list of mirror, traffic and approval steps", "steps: [{traffic: 100}]", "map"
    ),
    "spec.steps[]": FieldText("a step has one of mirror, traffic or approval", kind="map"),
    "spec.steps[].mirror": FieldText("mirror is an integer percent from 1 to 50", kind="percent"),
    "spec.steps[].traffic": FieldText(
        "traffic is an integer percent from 1 to 100", kind="percent"
    ),
    "spec.steps[].bake": FieldText(f"bake {_DURATION_WHAT}", kind="duration"),
    "spec.steps[].approval": FieldText("approval expects manual", kind="word"),
    "spec.gates": FieldText("gates is a list of gates", "gates: []", "map"),
    "spec.gates[]": FieldText(
        "a gate is a mapping with name, metric and one bound, or test: sequential", kind="map"
    ),
    "spec.gates[].name": FieldText(
        f"a gate name has 1 to 63 {_NAME_CHARS}", "name: candidate-errors"
    ),
    "spec.gates[].metric": FieldText(
        "metric is one of " + ", ".join(m.value for m in Metric), "metric: error_rate", "word"
    ),
    "spec.gates[].max": FieldText("max is a number", kind="number"),
    "spec.gates[].min": FieldText("min is a number", kind="number"),
    "spec.gates[].max_ratio_to_stable": FieldText(
        "max_ratio_to_stable is a number above 0", kind="number"
    ),
    "spec.gates[].min_requests": FieldText(
        "min_requests is a whole number, 0 or more", kind="whole"
    ),
    "spec.gates[].dry_run": FieldText("dry_run is true or false", kind="bool"),
    "spec.gates[].test": FieldText(
        "test is sequential: candidate against stable, judged at every pass",
        "test: sequential",
        "word",
    ),
    "spec.gates[].false_rollback_rate": FieldText(
        "false_rollback_rate is a probability above 0 and at most 0.2", kind="number"
    ),
    "spec.gates[].min_effect": FieldText(
        "min_effect is a ratio such as 2x or an increase in error rate such as +0.01"
    ),
    "spec.analysis": FieldText("analysis is a mapping of gate source settings", kind="map"),
    "spec.analysis.source": FieldText("source is local, azure-metrics or azure-logs", kind="word"),
    "spec.analysis.workspace_id": FieldText("workspace_id is a Log Analytics workspace id"),
    "spec.analysis.warmup": FieldText(f"warmup {_DURATION_WHAT}", kind="duration"),
    "spec.analysis.no_data": FieldText("no_data is inconclusive or fail", kind="word"),
    "spec.analysis.max_source_errors": FieldText(
        "max_source_errors is a whole number, 0 or more", kind="whole"
    ),
    "spec.on_failure": FieldText("on_failure is rollback or hold", kind="word"),
    "spec.on_inconclusive": FieldText("on_inconclusive is hold or rollback", kind="word"),
    "spec.promote_early": FieldText("promote_early is true or false", kind="bool"),
    "spec.progress_deadline": FieldText(f"progress_deadline {_DURATION_WHAT}", kind="duration"),
    "spec.cleanup": FieldText("cleanup is a mapping with delete_previous_after", kind="map"),
    "spec.cleanup.delete_previous_after": FieldText(
        f"delete_previous_after {_DURATION_WHAT}", kind="duration"
    ),
}


def _explain(error: dict[str, Any], loc: Loc, doc: Document) -> Problem:
    """One pydantic complaint, in the manifest's terms."""
    kind = error["type"]
    ctx = error.get("ctx") or {}
    text = FIELDS.get(_field_key(loc))
    if kind == "missing":
        hint = f"add {text.example}" if text and text.example else None
        return doc.problem(loc, f"missing required key {loc[-1]}", hint=hint)
    if kind == "extra_forbidden":
        return _explain_unknown_key(loc, doc)
    spot = doc.spot(loc)
    value = _shown(spot)
    if kind == RULE_ERROR:
        shown = value if spot.kind not in ("map", "seq") else None
        return doc.problem(loc, ctx["message"], shown, ctx.get("hint") or None)
    if kind == "step_kind":
        return _explain_step_kind(loc, doc)
    if kind in ("too_short", "too_long") and spot.kind == "seq":
        limit = ctx.get("min_length") if kind == "too_short" else ctx.get("max_length")
        bound = "at least" if kind == "too_short" else "at most"
        hint = f"add {text.example}" if kind == "too_short" and text and text.example else None
        return doc.problem(loc, f"{loc[-1]} needs {bound} {limit} item(s)", value, hint)
    what = text.what if text else _generic_what(error)
    return doc.problem(loc, what, value, _hint(error, loc, spot, text))


def _generic_what(error: dict[str, Any]) -> str:
    # Only reached for a field missing from FIELDS (a test keeps that from happening).
    return str(error.get("msg", "invalid value")).replace("Input should be", "expects")


def _explain_unknown_key(loc: Loc, doc: Document) -> Problem:
    key = str(loc[-1])
    if key in _STEP_KINDS and len(loc) >= 3 and loc[-3] == "steps":
        return doc.problem(
            loc, "a step has exactly one of mirror, traffic or approval", hint="make it two steps"
        )
    allowed = _allowed_keys(loc[:-1], doc.data)
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    if close:
        hint = f"did you mean {close[0]}?"
    else:
        hint = f"keys here: {', '.join(allowed)}" if allowed else None
    return doc.problem(loc, f"unknown key {key}", hint=hint)


def _explain_step_kind(loc: Loc, doc: Document) -> Problem:
    item = _value_at(doc.data, loc)
    if isinstance(item, dict) and item:
        keys = ", ".join(str(k) for k in item)
        close = [m for k in item for m in difflib.get_close_matches(str(k), _STEP_KINDS, n=1)]
        hint = f"did you mean {close[0]}?" if close else "e.g. - traffic: 10"
        return doc.problem(
            loc, f"a step has one of mirror, traffic or approval; this one has {keys}", hint=hint
        )
    return doc.problem(
        loc,
        "a step has one of mirror, traffic or approval",
        _shown(doc.spot(loc)),
        "e.g. - traffic: 10",
    )


def _allowed_keys(loc: Loc, data: Any) -> list[str]:
    model = _model_at(loc, data)
    return list(model.model_fields) if model else []


def models_in(annotation: Any) -> list[type[BaseModel]]:
    """The models an annotation can hold: `list[Annotated[A | B, ...]]` -> [A, B]."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in models_in(arg)]


def _model_at(loc: Loc, data: Any) -> type[BaseModel] | None:
    """The model that validates the mapping at `loc`, choosing among step kinds by the data."""
    candidates: list[type[BaseModel]] = [ModelRollout]
    node = data
    for part in loc:
        if isinstance(part, int):
            node = node[part] if isinstance(node, list) and part < len(node) else None
            continue
        model = _pick(candidates, node)
        if model is None or part not in model.model_fields:
            return None
        candidates = models_in(model.model_fields[part].annotation)
        node = node.get(part) if isinstance(node, dict) else None
    return _pick(candidates, node)


def _pick(candidates: list[type[BaseModel]], node: Any) -> type[BaseModel] | None:
    keys = set(node) if isinstance(node, dict) else set()
    for model in candidates:
        required = {name for name, f in model.model_fields.items() if f.is_required()}
        if required <= keys:
            return model
    return candidates[0] if candidates else None


# --- hints -------------------------------------------------------------------------------------


def _hint(error: dict[str, Any], loc: Loc, spot: Spot, text: FieldText | None) -> str | None:
    kind = text.kind if text else "text"
    given = error.get("input")
    if kind == "map" or not loc:
        return None
    if _is_bool_word(spot):
        return _bool_word_hint(spot.text or "", loc, kind, error)
    if spot.kind == "null":
        return f"write a value after {loc[-1]}:"
    if kind == "percent":
        return _percent_hint(loc, given)
    if kind == "duration":
        return _duration_hint(given)
    if kind == "word":
        return _word_hint(loc, given, error)
    if kind in ("whole", "number"):
        return _number_hint(given, kind, error)
    if kind == "bool":
        return "write true or false, without quotes"
    if error["type"] == "string_type" and spot.kind not in ("map", "seq"):
        return f'quote it: "{spot.text}"'
    if kind == "version" and isinstance(given, str):
        if given.lower() == "latest":
            return 'pin the version you mean, e.g. version: "7"'
        return f"use {_NAME_CHARS}"
    if kind == "name" and isinstance(given, str):
        suggestion = _suggest_name(given)
        return f"try {suggestion}" if suggestion else None
    return None


def _bool_word_hint(word: str, loc: Loc, kind: str, error: dict[str, Any]) -> str:
    reading = _yaml11_reading(word)
    if kind == "bool":
        return f"write {reading}: YAML 1.2 reads {word} as text, YAML 1.1 as {reading}"
    expected = _expected_words(error)
    if expected:
        return f"YAML 1.1 reads {word} as {reading}: write {loc[-1]}: {expected[0]}"
    return f'YAML 1.1 reads {word} as {reading}: quote it if you mean the text, "{word}"'


def _expected_words(error: dict[str, Any]) -> list[str]:
    expected = str((error.get("ctx") or {}).get("expected", ""))
    return re.findall(r"'([^']*)'", expected)


def _as_number(given: Any) -> float | None:
    if isinstance(given, bool):
        return None
    if isinstance(given, int | float):
        return float(given)
    if isinstance(given, str):
        try:
            return float(given.strip().removesuffix("%").strip())
        except ValueError:
            return None
    return None


def _percent_hint(loc: Loc, given: Any) -> str:
    top = 50 if loc[-1] == "mirror" else 100
    number = _as_number(given)
    if number is None:
        return "write a whole percent, e.g. 10"
    if number.is_integer() and 1 <= number <= top:
        return f"write {int(number)}, an integer percent"
    if number > top:
        return (
            "Azure mirrors at most 50 % of live traffic"
            if top == 50
            else "100 is all of live traffic"
        )
    if number <= 0:
        return "1 is the smallest share; stable keeps the rest"
    if number < 1:
        return "shares are whole percent: 1 is the smallest"
    return f"write a whole percent, e.g. {int(number)} or {int(number) + 1}"


_UNIT_SECONDS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600, "d": 86400}


def _duration_hint(given: Any) -> str:
    fallback = "write a whole number with s, m or h, e.g. 10m"
    if isinstance(given, int) and not isinstance(given, bool) and given >= 0:
        return f"write {given}s, {given}m or {given}h"
    if not isinstance(given, str):
        return fallback
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]+)", given.lower())
    if not parts or re.sub(r"[\d.\sa-z]", "", given.lower()):
        return fallback
    seconds = 0.0
    for number, unit in parts:
        if unit in ("ms", "msec", "msecs", "millisecond", "milliseconds"):
            seconds += float(number) / 1000  # `500ms` is not 500 minutes
            continue
        unit = unit.rstrip("s") if len(unit) > 1 else unit
        unit = {"second": "s", "minute": "min", "mi": "min", "hour": "h", "day": "d"}.get(
            unit, unit
        )
        if unit not in _UNIT_SECONDS:
            return fallback
        seconds += float(number) * _UNIT_SECONDS[unit]
    if not seconds.is_integer():
        return fallback
    return f"write {to_manifest_form(timedelta(seconds=seconds))}"


def _word_hint(loc: Loc, given: Any, error: dict[str, Any]) -> str | None:
    expected = _expected_words(error)
    if isinstance(given, str) and expected:
        close = difflib.get_close_matches(given.lower(), expected, n=1, cutoff=0.5)
        if close:
            return f"did you mean {close[0]}?"
    if len(expected) == 1:
        return f"write {loc[-1]}: {expected[0]}"
    return None


def _number_hint(given: Any, kind: str, error: dict[str, Any]) -> str | None:
    number = _as_number(given)
    if number is None:
        return None
    if isinstance(given, str) and not given.strip().endswith("%"):
        shown = int(number) if number.is_integer() else number
        return f"write {shown}, without quotes"
    if kind == "whole" and not number.is_integer():
        return "write a whole number"
    if kind == "whole" and isinstance(given, float):
        return f"write {int(number)}"
    if error["type"] == "greater_than_equal":
        return f"the least is {error['ctx']['ge']}"
    if error["type"] == "less_than_equal":
        return f"the most is {error['ctx']['le']}"
    return None


def _suggest_name(name: str) -> str | None:
    slug = re.sub(r"-{2,}", "-", re.sub(r"[^a-z0-9]+", "-", name.lower())).strip("-")
    if slug and not slug[0].isalpha():
        slug = f"ep-{slug}"
    slug = slug[:32].rstrip("-")
    return slug if is_valid_name(slug) and slug != name else None


# --- files the manifest refers to --------------------------------------------------------------


def _resolve_files(rollout: ModelRollout, doc: Document, folder: Path | None) -> tuple[Path, Path]:
    spec = rollout.spec
    request = spec.smoke_test.request
    if folder is None:
        model_dir = Path("models") / spec.model.name
        return model_dir, Path(request) if request else model_dir / SAMPLE_REQUEST

    name_loc: Loc = ("spec", "model", "name")
    request_loc: Loc = ("spec", "smoke_test", "request")
    home = _models_home(folder)
    if home is None:
        doc.add(
            doc.problem(
                name_loc,
                f"no models/ folder in {_display(folder)} or any folder above it",
                spec.model.name,
                f"add models/{spec.model.name}/ with the model's scoring script",
            )
        )
        model_dir = folder / "models" / spec.model.name
    else:
        model_dir = home / "models" / spec.model.name
        if not model_dir.is_dir():
            doc.add(
                doc.problem(
                    name_loc,
                    f"the model has no serving folder {_display(model_dir)}",
                    spec.model.name,
                    "check the model name or add the folder",
                )
            )
    if request:
        smoke_request = Path(os.path.normpath(folder / request))
        if not smoke_request.is_file():
            doc.add(doc.problem(request_loc, f"no such file {_display(smoke_request)}", request))
    else:
        smoke_request = model_dir / SAMPLE_REQUEST
        if model_dir.is_dir() and not smoke_request.is_file():
            doc.add(
                doc.problem(
                    request_loc,
                    f"the model has no sample request {_display(smoke_request)}",
                    hint="add it, or set spec.smoke_test.request",
                )
            )
    return model_dir, smoke_request


def _models_home(folder: Path) -> Path | None:
    for candidate in (folder, *folder.parents):
        if (candidate / "models").is_dir():
            return candidate
    return None


def _display(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


# --- across manifests --------------------------------------------------------------------------


def _endpoint_clashes(outcomes: list[_Outcome]) -> list[Problem]:
    """Two manifests steering one endpoint would fight over it: name both, at each endpoint."""
    owners: dict[tuple[str, str], list[_Outcome]] = {}
    for outcome in outcomes:
        if outcome.manifest is None:
            continue
        target = outcome.manifest.rollout.spec.target
        owners.setdefault((target.provider, target.endpoint.lower()), []).append(outcome)
    problems = []
    loc: Loc = ("spec", "target", "endpoint")
    for (provider, endpoint), group in owners.items():
        if len(group) < 2:
            continue
        for outcome in group:
            others = ", ".join(o.doc.file for o in group if o is not outcome)
            problems.append(
                outcome.doc.problem(
                    loc,
                    f"{others} also targets the {provider} endpoint {endpoint}",
                    hint="one manifest per endpoint: remove or retarget one of them",
                )
            )
            outcome.manifest = None
    return problems
