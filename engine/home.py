"""Where the local backend keeps its state: `SAFEROLLOUT_HOME`, else `.saferollout/` here."""

from __future__ import annotations

import os
from pathlib import Path

from engine.errors import SafeRolloutError

HOME_ENV = "SAFEROLLOUT_HOME"


def state_home(explicit: str | os.PathLike[str] | None = None) -> Path:
    if explicit:
        home = Path(explicit).resolve()
    elif os.environ.get(HOME_ENV):
        home = Path(os.environ[HOME_ENV]).resolve()
    else:
        home = (Path.cwd() / ".saferollout").resolve()
    if home.exists() and not home.is_dir():
        raise SafeRolloutError(
            f"the local backend's state folder {home} is a file; point {HOME_ENV} at a folder"
        )
    return home
