"""Where a local server for a state directory is found, and the names both sides share.

Kept apart from `server.py` so that the provider, which every local command loads, finds a
running server without importing the data plane (aiohttp alone costs a quarter of a second
of start-up on a small machine).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SERVER_FILE = "server.json"
SERVER_LOCK = "server.lock"
DEPLOYMENT_HEADER = "azureml-model-deployment"


def read_server_file(home: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((Path(home) / SERVER_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return None
    return data if isinstance(data, dict) else None
