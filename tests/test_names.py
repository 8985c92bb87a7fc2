"""The pure rules of pipeline/names.py: identifiers, table names, output columns, rollbacks."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import TableError
from pipeline.names import (MAX_IDENTIFIER_LENGTH, MAX_TABLE_LENGTH, check_alias, check_identifier, check_table_name,
                            column_suffix, output_columns, output_labels, previous_version, version_table)

# -- check_identifier -------------------------------------------------------------

@pytest.mark.parametrize("name", ["a", "_", "customer_id", "X1", "_private", "a__b", "pipeline_x",
                                  "a" * MAX_IDENTIFIER_LENGTH])
def test_check_identifier_returns_a_plain_name_unchanged(name):
    assert check_identifier(name) == name


@pytest.mark.parametrize("name", [
    pytest.param("churn; DROP TABLE x", id="injection"),
    pytest.param("a b", id="space"),
    pytest.param('"a b"', id="quoted"),
    pytest.param("1abc", id="leading-digit"),
    pytest.param("", id="empty"),
    pytest.param("a-b", id="dash"),
    pytest.param("a.b", id="dot"),
    pytest.param("naïve", id="non-ascii"),
    pytest.param("abc\n", id="trailing-newline"),
    pytest.param(None, id="none"),
    pytest.param(12, id="int"),
])
def test_check_identifier_refuses_unsafe_names(name):
    with pytest.raises(ValueError, match="is not a safe SQL identifier") as info:
        check_identifier(name)
    assert repr(name) in str(info.value)


def test_check_identifier_refuses_names_longer_than_the_limit():
    name = "a" * (MAX_IDENTIFIER_LENGTH + 1)
    with pytest.raises(ValueError, match=f"is longer than {MAX_IDENTIFIER_LENGTH} characters"):
        check_identifier(name)


# -- check_table_name --------------------------------------------------------------

def test_table_length_keeps_room_for_the_longest_suffix():
    assert MAX_IDENTIFIER_LENGTH == 63
    assert MAX_TABLE_LENGTH == 63 - len("__v12345__key") == 50


@pytest.mark.parametrize("name", ["scores", "churn_scores", "Scores2", "_t", "a" * MAX_TABLE_LENGTH])
def test_check_table_name_accepts_plain_names(name):
    assert check_table_name(name) == name


@pytest.mark.parametrize("name, message", [
    pytest.param("churn; DROP TABLE x", "is not a safe SQL identifier", id="injection"),
    pytest.param('"a b"', "is not a safe SQL identifier", id="quoted"),
    pytest.param("1abc", "is not a safe SQL identifier", id="leading-digit"),
    pytest.param("a" * (MAX_TABLE_LENGTH + 1), f"is longer than {MAX_TABLE_LENGTH} characters", id="too-long"),
    pytest.param("a" * (MAX_IDENTIFIER_LENGTH + 1), f"is longer than {MAX_IDENTIFIER_LENGTH} characters",
                 id="longer-than-identifier"),
    pytest.param("pipeline_versions", "names starting with 'pipeline_' are the pipeline's own", id="reserved"),
    pytest.param("Pipeline_Scores", "names starting with 'pipeline_' are the pipeline's own", id="reserved-case"),
    pytest.param("scores__v1", "'__' is reserved for version tables", id="double-underscore"),
    pytest.param("a__b", "'__' is reserved for version tables", id="double-underscore-middle"),
])
def test_check_table_name_refuses(name, message):
    with pytest.raises(ValueError) as info:
        check_table_name(name)
    assert message in str(info.value)
    assert repr(name) in str(info.value)


def test_pipeline_without_underscore_is_not_reserved():
    assert check_table_name("pipelines") == "pipelines"


# -- version_table -------------------------------------------------------------------

def test_version_table_names():
    assert version_table("scores", 1) == "scores__v1"
    assert version_table("scores", 12345) == "scores__v12345"


def test_version_table_of_a_longest_table_still_fits_with_its_key_suffix():
    name = version_table("t" * MAX_TABLE_LENGTH, 99999)
    assert len(name + "__key") == MAX_IDENTIFIER_LENGTH


@pytest.mark.parametrize("version", [0, -1])
def test_version_table_refuses_non_positive_versions(version):
    with pytest.raises(ValueError, match=f"version must be a positive integer, got {version}"):
        version_table("scores", version)


def test_version_table_refuses_an_unsafe_table():
    with pytest.raises(ValueError, match="is not a safe SQL identifier"):
        version_table("a b", 1)


@pytest.mark.parametrize("alias", ["ab", "default", "gate", "served"])
def test_check_alias_refuses_the_names_of_the_pipelines_own_objects(alias):
    """``pipeline activate churn_scores 2 --alias served`` on MariaDB failed with ``database error:
    'wt_readme.churn_scores__served' is not of type 'VIEW'``: the alias's view would have been the table that marks
    the versions copied into the serving table."""
    with pytest.raises(TableError, match="not one of ab, default, gate, served"):
        check_alias("scores", alias)


@pytest.mark.parametrize("alias", ["_v1", "_gate", "_x"])
def test_check_alias_refuses_a_leading_underscore(alias):
    """Alias ``_v1`` of ``scores`` named the view ``scores___v1``, which is version 1 of a table ``scores_`` (seen on
    SQLite as the database's own "use DROP TABLE to delete table scores___v1")."""
    with pytest.raises(TableError, match="must not begin with '_'"):
        check_alias("scores", alias)


# -- column_suffix -----------------------------------------------------------------------

@pytest.mark.parametrize("label, suffix", [
    (0, "0"),
    (np.int64(7), "7"),
    (True, "true"),
    (np.bool_(False), "false"),
    ("Yes", "yes"),
    ("high risk", "high_risk"),
    ("a-b/c", "a_b_c"),
    ("__x__", "x"),
    (1.5, "1_5"),
    (-1, "neg1"),
    (-0.5, "neg0_5"),
    ("", ""),
    ("!!!", ""),
    ("né", "ne"),
    ("Élevé", "eleve"),
    ("高", ""),
])
def test_column_suffix(label, suffix):
    assert column_suffix(label) == suffix


# -- output_columns ------------------------------------------------------------------------

def test_predict_is_one_prediction_column():
    assert output_columns("predict", None, 1) == ["prediction"]
    assert output_columns("predict", [0, 1, 2], 1) == ["prediction"]


def test_a_predict_of_several_named_outputs_is_one_column_each():
    columns = output_columns("predict", ["score", "Band"], 2)
    assert columns == ["prediction_score", "prediction_band"]
    assert output_labels("predict", ["score", "Band"], columns) == [("prediction_score", "score"),
                                                                    ("prediction_band", "Band")]


@pytest.mark.parametrize("classes, expected", [
    pytest.param([0, 1], ["proba_0", "proba_1"], id="int"),
    pytest.param(np.array([3, 1, 2]), ["proba_3", "proba_1", "proba_2"], id="numpy-int-order-kept"),
    pytest.param([False, True], ["proba_false", "proba_true"], id="bool"),
    pytest.param(np.array([False, True]), ["proba_false", "proba_true"], id="numpy-bool"),
    pytest.param(["no", "Yes"], ["proba_no", "proba_yes"], id="string"),
    pytest.param(["low risk", "high-risk"], ["proba_low_risk", "proba_high_risk"], id="string-sanitised"),
])
def test_predict_proba_is_one_column_per_class(classes, expected):
    assert output_columns("predict_proba", classes, len(classes)) == expected


def test_predict_proba_without_classes_numbers_the_columns():
    assert output_columns("predict_proba", None, 3) == ["proba_0", "proba_1", "proba_2"]


def test_decision_function_binary_is_one_score_column():
    assert output_columns("decision_function", [0, 1], 1) == ["score"]
    assert output_columns("decision_function", None, 1) == ["score"]


def test_decision_function_multiclass_is_one_score_per_class():
    assert output_columns("decision_function", ["a", "b", "c"], 3) == ["score_a", "score_b", "score_c"]


def test_decision_function_numbers_columns_when_classes_do_not_match_the_width():
    assert output_columns("decision_function", ["a", "b", "c"], 2) == ["score_0", "score_1"]
    assert output_columns("decision_function", None, 3) == ["score_0", "score_1", "score_2"]


@pytest.mark.parametrize("method, classes", [
    pytest.param("predict_proba", ["a b", "a_b"], id="proba-sanitised"),
    pytest.param("predict_proba", ["A", "a"], id="proba-case"),
    pytest.param("predict_proba", ["", "!"], id="proba-blank"),
    pytest.param("predict_proba", ["高", "低"], id="proba-no-ascii-form"),
    pytest.param("predict_proba", ["x" * 60, "y"], id="proba-too-long"),
    pytest.param("decision_function", ["x", "X", "y"], id="decision"),
])
def test_labels_that_cannot_name_distinct_columns_number_every_column(method, classes):
    prefix = "proba" if method == "predict_proba" else "score"
    assert output_columns(method, classes, len(classes)) == [f"{prefix}_{i}" for i in range(len(classes))]


def test_output_labels_record_which_class_each_column_holds():
    columns = output_columns("predict_proba", ["高", "低"], 2)
    assert output_labels("predict_proba", ["高", "低"], columns) == [("proba_0", "高"), ("proba_1", "低")]
    assert output_labels("predict_proba", np.array([False, True]), ["proba_false", "proba_true"]) == [
        ("proba_false", False), ("proba_true", True)]
    assert output_labels("predict", [0, 1], ["prediction"]) == []
    assert output_labels("decision_function", [0, 1], ["score"]) == []


# -- previous_version -----------------------------------------------------------------------

@pytest.mark.parametrize("usable, active, expected", [
    ([1, 2, 3], 3, 2),
    ([3, 1, 2], 3, 2),
    ([1, 3, 5], 4, 3),
    ([1, 2, 3], 2, 1),
    ([1, 5], 5, 1),
    ([2, 3], 2, None),
    ([5, 6], 4, None),
    ([], 3, None),
    ([3], 3, None),
])
def test_previous_version_is_the_newest_usable_version_before_the_active_one(usable, active, expected):
    assert previous_version(usable, active) == expected


def test_previous_version_accepts_any_iterable():
    assert previous_version(iter([1, 2, 4]), 4) == 2
    assert previous_version((v for v in range(1, 10)), 5) == 4
