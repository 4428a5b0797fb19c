"""GitHub Actions annotations for errors the CLI reports: `::error file=..,line=..,col=..::`.

The CLI prints these on stderr when it runs in GitHub Actions (`GITHUB_ACTIONS=true`) or with
`--github`; GitHub then marks each manifest problem on its file and line in the pull request.
Pure functions: paths are made relative to the workspace given, and every value is escaped so
that text from a manifest can never start a workflow command of its own.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from engine.errors import ManifestError, Problem, SafeRolloutError


def is_github_actions(env: Mapping[str, str]) -> bool:
    return env.get("GITHUB_ACTIONS") == "true"


def escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def workspace_path(file: str, cwd: Path, workspace: Path) -> str:
    """`file` relative to the repository checkout when it lies inside it, as GitHub expects."""
    path = Path(file)
    absolute = Path(os.path.normpath(path if path.is_absolute() else cwd / path))
    try:
        return absolute.relative_to(workspace).as_posix()
    except ValueError:
        return path.as_posix()


def problem_annotation(problem: Problem, cwd: Path, workspace: Path) -> str:
    message = f"{problem.path}: {problem.message}" if problem.path else problem.message
    if problem.value is not None:
        message += f" (got {problem.value})"
    if problem.hint:
        message += f"; {problem.hint}"
    properties = {
        "file": workspace_path(problem.file, cwd, workspace),
        "line": str(problem.line),
        "col": str(problem.column),
        "title": "invalid manifest",
    }
    listed = ",".join(f"{key}={escape_property(value)}" for key, value in properties.items())
    return f"::error {listed}::{escape_data(message)}"


def error_annotations(error: SafeRolloutError, cwd: Path, workspace: Path) -> list[str]:
    """One annotation per manifest problem; any other error as one annotation of its own."""
    if isinstance(error, ManifestError):
        return [problem_annotation(p, cwd, workspace) for p in error.problems]
    return [f"::error title={escape_property('rollout')}::{escape_data(str(error))}"]
