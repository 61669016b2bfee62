"""Labelled targets from a CSV file, matched to the crystals of a graph file by id.

What cannot be meant is refused with one line naming the file, line and id: an id given twice with
different values (which one?), a value beyond `LABEL_LIMIT`, a cell that is not a number. What is
plainly missing (a blank cell, NaN, inf) is dropped, and an id repeated with the same value is counted
once; both are listed in the `LabelReport` that comes with the values, for the caller to say.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from srscreen.errors import InputError
from srscreen.io.text_file import text_lines

ID_COLUMNS = ("id", "material_id")
# No property srscreen learns reaches a million in its unit (energies in eV or eV/atom, band gaps in eV,
# moduli in GPa, temperatures in K): a larger magnitude is a typing or unit mistake, and trains to
# nonsense (1e300 gave "val MAE 2e299"). A column in a unit that does reach it must be rescaled.
LABEL_LIMIT = 1e6
_INFINITY = {"inf", "infinity"}


class MissingColumn(InputError):
    """A labels file without the target's column: training must refuse it, but evaluating several targets
    scores those that have one (a file of Ef labels still scores the default pair's Ef)."""


@dataclass(frozen=True)
class LabelReport:
    """What reading one target column found besides its usable values, in file order."""

    path: Path
    target: str
    rows: int
    repeated: tuple[str, ...] = ()  # ids given again with the same value: each counted once
    dropped: dict[str, tuple[str, ...]] = field(default_factory=dict)  # reason (blank, NaN, inf) -> ids

    def notes(self, shown: int = 3) -> list[str]:
        """One line for the repeated ids and one for the dropped values, naming the first `shown` ids."""
        def first(ids: tuple[str, ...]) -> str:
            return ", ".join(ids[:shown]) + (", ..." if len(ids) > shown else "")

        lines = []
        if self.repeated:
            n = len(self.repeated)
            lines.append(f"{self.path}: {n:,} of {self.rows:,} {self.target} rows {'repeat' if n > 1 else 'repeats'} "
                         f"an id with the same value, counted once ({first(self.repeated)})")
        if self.dropped:
            n = sum(len(ids) for ids in self.dropped.values())
            reasons = "; ".join(f"{len(ids):,} {reason} ({first(ids)})" for reason, ids in self.dropped.items())
            lines.append(f"{self.path}: {n:,} {self.target} {'values' if n > 1 else 'value'} dropped, not trained "
                         f"or scored on: {reasons}")
        return lines


class Labels(dict[str, float]):
    """id -> value of one column (NaN or inf where the cell gave none), with the `report` of reading it."""

    def __init__(self, values: dict[str, float], report: LabelReport) -> None:
        super().__init__(values)
        self.report = report


@dataclass(frozen=True)
class Matched:
    """Positions in the graph set that have a finite label, their values, and what could not be matched."""

    positions: np.ndarray
    values: np.ndarray
    missing_in_labels: int
    missing_in_graphs: int
    not_finite: int


def read_labels(path: str | Path, target: str) -> Labels:
    """id -> value of column `target`; the id column is `id`, `material_id`, or else the first column."""
    path = Path(path)
    reader = csv.reader(text_lines(path, "a labels CSV"))
    try:
        header = [h.strip() for h in next(reader, None) or []]
        if not any(header):
            raise InputError(f"{path}: empty labels file")
        if target not in header:
            raise MissingColumn(f"{path}: no column {target!r} (columns: {', '.join(header)})")
        if header.count(target) > 1:
            raise InputError(f"{path}: {header.count(target)} columns are named {target!r}; which one to learn?")
        id_col = next((header.index(c) for c in ID_COLUMNS if c in header), 0)
        col = header.index(target)
        values: dict[str, float] = {}
        seen: dict[str, tuple[int, str]] = {}  # id -> (line, cell) of its first row
        repeated: list[str] = []
        dropped: dict[str, list[str]] = {}
        rows = 0
        for row in reader:
            line = reader.line_num
            if not "".join(row).strip():
                continue
            rows += 1
            id_ = row[id_col].strip()
            cell = row[col].strip() if col < len(row) else None
            if not id_:
                raise InputError(f"{path}:{line}: no id")
            if cell is None:
                raise InputError(f"{path}:{line}: id {id_} has no {target} cell")
            value, reason = _value(path, line, id_, target, cell)
            if id_ in seen:
                first_line, first_cell = seen[id_]
                if not _same(values[id_], value):
                    raise InputError(f"{path}: id {id_} has two {target} values: {_shown(first_cell)} on line "
                                     f"{first_line} and {_shown(cell)} on line {line}")
                repeated.append(id_)
                continue
            seen[id_] = (line, cell)
            values[id_] = value
            if reason:
                dropped.setdefault(reason, []).append(id_)
    except csv.Error as e:
        raise InputError(f"{path}:{reader.line_num}: not a CSV row ({e})") from None
    report = LabelReport(path, target, rows, tuple(repeated), {r: tuple(ids) for r, ids in dropped.items()})
    return Labels(values, report)


def _value(path: Path, line: int, id_: str, target: str, cell: str) -> tuple[float, str | None]:
    """A cell's value and, for a missing one (NaN or inf), why it is dropped; what cannot be meant is refused."""
    if not cell:
        return math.nan, "blank"
    try:
        value = float(cell)
    except ValueError:
        raise InputError(f"{path}:{line}: {target} of id {id_} is not a number ({cell!r}; leave the cell blank "
                         "for a missing value)") from None
    if math.isnan(value):
        return value, "NaN"
    if math.isinf(value) and cell.lstrip("+-").lower() in _INFINITY:
        return value, "inf"
    if not abs(value) <= LABEL_LIMIT:
        raise InputError(f"{path}:{line}: {target} of id {id_} is {cell}, beyond ±{LABEL_LIMIT:,.0f} (a typing or unit "
                         "mistake? rescale the column)")
    return value, None


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def _shown(cell: str) -> str:
    return repr(cell) if cell else "blank"


def graph_index(ids: list[str]) -> dict[str, int]:
    """Position of each graph id, for looking up the ids of a user's table (labels, a split file).

    Tables are read with their cells stripped, while a graph id keeps its file name whole: the structure
    in `mp-1 .cif` is `mp-1 `, and its label row `mp-1` matched nothing. So an id with outer spaces is
    also found by its stripped form, unless another graph id is (or strips to) that form: then which
    crystal the row meant is not known, and it is counted as unmatched rather than guessed.
    """
    index = {id_: i for i, id_ in enumerate(ids)}
    stripped: dict[str, int | None] = {}
    for i, id_ in enumerate(ids):
        key = id_.strip()
        if key != id_ and key not in index:
            stripped[key] = None if key in stripped else i
    return index | {key: i for key, i in stripped.items() if i is not None}


def match(ids: list[str], labels: dict[str, float]) -> Matched:
    """Pair graph ids with labels; unmatched ids on either side and non-finite labels are counted, not guessed."""
    index = graph_index(ids)
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
