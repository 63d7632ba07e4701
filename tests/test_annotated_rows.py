"""``AnnotatedRows``: a dataset split's rows with values read alongside, one by one or in one columnar read."""

from __future__ import annotations

import numpy as np
import pytest
from datasets import Dataset

from cardiomm.training.annotated_rows import AnnotatedRows


def test_rows_carry_their_own_annotations_and_none_is_left_out() -> None:
    split = Dataset.from_dict({"ecg_id": [10, 11, 12], "age": [50, 60, 70]})
    rows = AnnotatedRows(split, target=np.array([0.5, np.nan, 2.0]), positive_id=np.array([7, 8, 7]),
                         positive_attributes=None)
    assert len(rows) == 3
    assert rows[1]["ecg_id"] == 11 and np.isnan(rows[1]["target"]) and rows[1]["positive_id"] == 8
    assert "positive_attributes" not in rows[0]
    batch = rows.__getitems__([2, 0])
    assert [r["ecg_id"] for r in batch] == [12, 10] and [r["target"] for r in batch] == [2.0, 0.5]
    assert [r["age"] for r in batch] == [70, 50] and [r["positive_id"] for r in batch] == [7, 7]


def test_an_annotation_of_the_wrong_length_is_refused() -> None:
    split = Dataset.from_dict({"ecg_id": [1, 2]})
    with pytest.raises(ValueError, match="target: 3 values for 2 rows"):
        AnnotatedRows(split, target=np.zeros(3))
