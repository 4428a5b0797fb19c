"""Scoring script of the credit-risk model, on the Azure ML online-endpoint contract.

The serving host (Azure ML's inference server, or one deployment process of the local backend)
calls `init()` once with `AZUREML_MODEL_DIR` pointing at the registered model's folder, then
`run(raw_data)` per request. The same file serves every model version: whatever differs between
versions lives in the joblib artifact.

Errors: `ValueError` means the request is at fault (not JSON, no `data`, wrong fields or types);
`ScoringError` (a `RuntimeError`) means the model failed on a well-formed request.
Importing this file has no side effects; scikit-learn and pandas are loaded by `init()`.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

NUMERIC_FIELDS = ("age", "credit_amount", "duration", "job")
CATEGORICAL_FIELDS = ("sex", "housing", "saving_accounts", "checking_account", "purpose")
FIELDS = (*NUMERIC_FIELDS, *CATEGORICAL_FIELDS)
MAX_RECORDS = 1000  # one request; larger batches belong to a batch endpoint
MAX_PROBLEMS = 5  # listed in one error message

_model: Any = None
_good_column = 0  # index of class 1 (good risk) in predict_proba's output


class ScoringError(RuntimeError):
    """The model could not score a well-formed request: a fault of the model, not the caller."""


def init() -> None:
    """Load the model artifact found under `AZUREML_MODEL_DIR`."""
    global _model, _good_column
    import joblib  # loads scikit-learn and pandas with the pipeline

    model_dir = os.environ.get("AZUREML_MODEL_DIR")
    if not model_dir:
        raise RuntimeError("AZUREML_MODEL_DIR is not set; it must name the model's folder")
    model = joblib.load(find_artifact(Path(model_dir)))
    classes = [int(c) for c in model.classes_]
    if 1 not in classes:
        raise RuntimeError(
            f"the model predicts classes {classes}; expected 1 (good risk) among them"
        )
    _model, _good_column = model, classes.index(1)


def find_artifact(model_dir: Path) -> Path:
    """The one .joblib file under `model_dir`, at any depth (Azure nests registered files)."""
    if not model_dir.is_dir():
        raise RuntimeError(f"AZUREML_MODEL_DIR {model_dir} is not a folder")
    found = sorted(model_dir.rglob("*.joblib"))
    if len(found) != 1:
        listed = ", ".join(str(p.relative_to(model_dir)) for p in found) or "none"
        raise RuntimeError(
            f"expected exactly one .joblib file under {model_dir}, found {len(found)}: {listed}"
        )
    return found[0]


def run(raw_data: str | bytes) -> dict[str, list[float]]:
    """`{"data": [record, ...]}` -> `{"probabilities": [p_good, ...]}`, one per record, in order."""
    if _model is None:
        raise RuntimeError("init() has not run: the model is not loaded")
    records = parse_request(raw_data)

    import pandas as pd  # already loaded by init(); imported here to keep module import light

    frame = pd.DataFrame(records, columns=list(FIELDS))
    # Integers and floats may be mixed across records; the model sees floats either way.
    frame[list(NUMERIC_FIELDS)] = frame[list(NUMERIC_FIELDS)].astype("float64")
    try:
        scores = _model.predict_proba(frame)[:, _good_column]
    except Exception as exc:
        # The request passed validation, so whatever fails now is the model's fault.
        raise ScoringError(f"the model could not score this request: {exc}") from exc
    return {"probabilities": [round(float(p), 6) for p in scores]}


def parse_request(raw_data: str | bytes) -> list[dict[str, Any]]:
    """The request's records, checked; ValueError naming every problem (up to a limit)."""
    if not isinstance(raw_data, str | bytes | bytearray):
        raise ValueError(f"expected the request body as JSON text, got {type(raw_data).__name__}")
    try:
        body = json.loads(raw_data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict) or "data" not in body:
        raise ValueError('the request must be a JSON object with a "data" list of records')
    records = body["data"]
    if not isinstance(records, list) or not records:
        raise ValueError('"data" must be a non-empty list of records')
    if len(records) > MAX_RECORDS:
        raise ValueError(f'"data" holds {len(records)} records; at most {MAX_RECORDS} per request')

    problems = [p for i, record in enumerate(records) for p in record_problems(i, record)]
    if problems:
        shown = "; ".join(problems[:MAX_PROBLEMS])
        more = len(problems) - MAX_PROBLEMS
        raise ValueError(f"invalid request: {shown}" + (f"; and {more} more" if more > 0 else ""))
    return records


def record_problems(index: int, record: Any) -> list[str]:
    where = f"data[{index}]"
    if not isinstance(record, dict):
        return [f"{where}: expected an object with fields {', '.join(FIELDS)}"]
    problems = []
    missing = [f for f in FIELDS if f not in record]
    if missing:
        problems.append(f"{where}: missing field(s) {', '.join(missing)}")
    unknown = sorted(set(record) - set(FIELDS))
    if unknown:
        names = ", ".join(name[:40] for name in unknown[:MAX_PROBLEMS])
        problems.append(f"{where}: unknown field(s) {names}")
    for field in NUMERIC_FIELDS:
        if field in record and not _is_number(record[field]):
            problems.append(f"{where}.{field}: expected a number (got {_json_type(record[field])})")
    for field in CATEGORICAL_FIELDS:
        if field in record and not isinstance(record[field], str):
            problems.append(f"{where}.{field}: expected a string (got {_json_type(record[field])})")
    return problems


def _is_number(value: Any) -> bool:
    # JSON true/false arrive as bool, a subclass of int; NaN and Infinity are not amounts.
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        return False


def _json_type(value: Any) -> str:
    # Names the type only: request values are personal data and must not reach logs.
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return "a non-finite or out-of-range number"
    return {str: "a string", list: "an array", dict: "an object"}.get(type(value), "another type")
