"""Labelled targets from a CSV file, matched to the crystals of a graph file by id."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from srscreen.errors import InputError

ID_COLUMNS = ("id", "material_id")


@dataclass(frozen=True)
class Matched:
    """Positions in the graph set that have a finite label, their values, and what could not be matched."""

    positions: np.ndarray
    values: np.ndarray
    missing_in_labels: int
    missing_in_graphs: int
    not_finite: int


def read_labels(path: str | Path, target: str) -> dict[str, float]:
    """id -> value of column `target`; the id column is `id`, `material_id`, or else the first column."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if not header:
                raise InputError(f"{path}: empty labels file")
            header = [h.strip() for h in header]
            id_col = next((header.index(c) for c in ID_COLUMNS if c in header), 0)
            if target not in header:
                raise InputError(f"{path}: no column {target!r} (columns: {', '.join(header)})")
            col = header.index(target)
            labels: dict[str, float] = {}
            for line, row in enumerate(reader, start=2):
                if not row:
                    continue
                try:
                    labels[row[id_col].strip()] = float(row[col]) if row[col].strip() else math.nan
                except (ValueError, IndexError):
                    raise InputError(f"{path}:{line}: {target} is not a number ({row[col] if col < len(row) else 'missing'!r})") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read labels ({e.strerror})") from None
    return labels


def match(ids: list[str], labels: dict[str, float]) -> Matched:
    """Pair graph ids with labels; unmatched ids on either side and non-finite labels are counted, not guessed."""
    index = {id_: i for i, id_ in enumerate(ids)}
    positions, values, not_finite = [], [], 0
    for id_, value in labels.items():
        i = index.get(id_)
        if i is None:
            continue
        if not math.isfinite(value):
            not_finite += 1
            continue
        positions.append(i)
        values.append(value)
    found = len(positions) + not_finite
    return Matched(
        positions=np.array(positions, dtype=np.int64),
        values=np.array(values, dtype=np.float64),
        missing_in_labels=len(ids) - found,
        missing_in_graphs=len(labels) - found,
        not_finite=not_finite,
    )
