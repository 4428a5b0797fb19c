"""Where the local backend keeps its state: `SAFEROLLOUT_HOME`, else `.saferollout/` here."""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "SAFEROLLOUT_HOME"


def state_home(explicit: str | os.PathLike[str] | None = None) -> Path:
    if explicit:
        return Path(explicit).resolve()
    if os.environ.get(HOME_ENV):
        return Path(os.environ[HOME_ENV]).resolve()
    return (Path.cwd() / ".saferollout").resolve()
