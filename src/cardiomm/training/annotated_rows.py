"""A dataset split whose rows carry per-row values computed outside the dataset (targets, positive-pair keys)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from torch.utils.data import Dataset


class AnnotatedRows(Dataset):
    """The rows of ``split`` (a ``datasets`` split), each with ``name: values[index]`` for every annotation given.

    ``AnnotatedRows(split, classification_labels=array, regression_labels=array)`` adds two keys to every row;
    an annotation given as ``None`` is left out. A batch of indices is read from the split in one columnar read.
    ``ValueError`` when an annotation does not have one entry per row.
    """

    def __init__(self, split: Any, **annotations: np.ndarray | None) -> None:
        self.split = split
        self.annotations = {name: values for name, values in annotations.items() if values is not None}
        for name, values in self.annotations.items():
            if len(values) != len(split):
                raise ValueError(f"{name}: {len(values)} values for {len(split)} rows")

    def __len__(self) -> int:
        return len(self.split)

    def _annotated(self, row: Mapping[str, Any], index: int) -> dict[str, Any]:
        return {**row, **{name: values[index] for name, values in self.annotations.items()}}

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self._annotated(self.split[int(index)], int(index))

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        batch = self.split[[int(i) for i in indices]]  # one columnar read
        rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
        return [self._annotated(row, int(i)) for row, i in zip(rows, indices)]


__all__ = ["AnnotatedRows"]
