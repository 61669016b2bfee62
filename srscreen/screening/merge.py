"""Merge ranked tables written by `predict` (one per shard range, GPU or node) into one ranking.

Rows stream through: with `top`, the best `top` rows so far and the next chunk of rows are all that
is held (`ranking.best`, as predict keeps its top rows between shards: O(top) memory, any number and
size of parts); without it, parts already ranked by the sort column are merged k-way, holding one
row per part. The sort key (values as printed, rows shown equal by id), `--where`, the top-k and the
writer are the ranking's (`ranking`), shared with predict, so parts of one graph file merge into what
one `predict` run gives, ties included, in whatever order the parts are given. Values are copied as
written, never reformatted; ranks are renumbered.

Parts are not trusted: before any output every row is read and checked whole (every column, numbers
where predict writes numbers, the last line ended: `head -c` cuts a part mid-row), and an id met twice
(the same part given twice, overlapping `--shards` ranges) is refused, not written twice: rows of one
id may differ (other models, other settings), so no row can be picked as "the" one. The check holds
8 bytes a row (a hash of its id), not the rows.
"""

from __future__ import annotations

import csv
import heapq
import itertools
import json
import math
import os
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from srscreen.model.columns import FIXED_COLUMNS, NOTE_COLUMN
from srscreen.screening.ranking import (
    Condition, Table, best, check_columns, check_top, delimiter, shown, sort_key,
)
from srscreen.screening.ranking import write_table as write_merged  # noqa: F401 - the name callers know
from srscreen.errors import InputError, OptionError
from srscreen.io.text_file import text_lines

# Rows read between two top-k cuts: small next to any part, large enough that numpy does the sorting.
CHUNK_ROWS = 1024
_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
RANKING = "a ranking as `srscreen predict` writes it"
_TEXT_COLUMNS = ("id", "formula", NOTE_COLUMN)
_INTEGER_COLUMNS = ("rank", "n_atoms")


@dataclass(frozen=True)
class Part:
    """One ranked table: its path, format and columns."""

    path: Path
    fmt: str
    columns: list[str]

    @classmethod
    def open(cls, path: str | Path) -> "Part":
        path = Path(path)
        fmt = _FORMATS.get(path.suffix.lower(), "csv")
        lines = text_lines(path, RANKING)
        try:
            if fmt == "jsonl":
                line = next(lines, "")
                columns = list(json.loads(line)) if line.strip() else []
            else:
                columns = next(csv.reader(lines, delimiter=delimiter(fmt)), [])
        except (json.JSONDecodeError, csv.Error):
            raise InputError(f"{path}: not {RANKING}") from None
        finally:
            lines.close()
        if fmt == "jsonl" and not columns:
            return cls(path, fmt, [])  # no row at all: an empty part, its columns unknown
        if tuple(columns[: len(FIXED_COLUMNS)]) != FIXED_COLUMNS:
            raise InputError(f"{path}: not {RANKING} (columns {', '.join(FIXED_COLUMNS)}, then targets)")
        return cls(path, fmt, columns)

    def rows(self) -> Iterator[tuple[int, dict | list]]:
        """(line number, row) as read, each row checked whole (`_checked`): lists of cells (CSV/TSV, header
        skipped) or dicts (JSON lines). A part whose last line has no line end was cut short: predict ends
        every row, so the last row's last value may be cut (`-2.6` of `-2.6543`) and is refused."""
        last, number = "", 0

        def lines() -> Iterator[str]:
            nonlocal last
            for last in text_lines(self.path, RANKING):
                yield last

        if self.fmt == "jsonl":
            for number, line in enumerate(lines(), start=1):
                if line.strip():
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:
                        raise InputError(f"{self.path}:{number}: not a JSON line (cut short?)") from None
                    yield number, self._checked(number, row)
        else:
            reader = csv.reader(lines(), delimiter=delimiter(self.fmt))
            try:
                next(reader, None)
                for row in reader:
                    if row:
                        number = reader.line_num
                        yield number, self._checked(number, row)
            except csv.Error as e:
                raise InputError(f"{self.path}:{reader.line_num}: not a CSV row ({e})") from None
        if last and not last.endswith("\n"):
            raise InputError(f"{self.path}:{number}: cut short: the last line has no line end (predict ends every row)")

    def _checked(self, number: int, row: dict | list) -> dict | list:
        """`row`, if it holds every column, with numbers where predict writes numbers (a row cut short does not)."""
        where = f"{self.path}:{number}"
        if self.fmt == "jsonl":
            if not isinstance(row, dict) or list(row) != self.columns:
                raise InputError(f"{where}: not a row of the part's columns ({', '.join(self.columns)}; cut short?)")
            cells = list(row.values())
        elif len(row) != len(self.columns):
            raise InputError(f"{where}: {len(row)} cells where the header has {len(self.columns)} (cut short?)")
        else:
            cells = row
        for column, cell in zip(self.columns, cells):
            if not _fits(column, cell, self.fmt == "jsonl"):
                raise InputError(f"{where}: {column} is {cell!r}, not {'text' if column in _TEXT_COLUMNS else 'a number'}")
        return row


def _fits(column: str, cell: object, json_row: bool) -> bool:
    """Whether a cell holds what predict writes in `column`: text, a whole number, or a number (empty: none)."""
    if column in _TEXT_COLUMNS:
        return isinstance(cell, str)
    if json_row:
        if column in _INTEGER_COLUMNS:
            return type(cell) is int
        return cell is None or type(cell) in (int, float)
    if column in _INTEGER_COLUMNS:
        return cell.isdecimal()
    if cell == "":
        return True
    try:
        float(cell)
    except ValueError:
        return False
    return True


def merge_rankings(paths: list[str | Path], *, top: int | None = None, sort_by: str | None = None,
                   descending: bool = False, where: Sequence[Condition] = ()) -> Table:
    """Merge ranked tables into the global ranking by `sort_by` (default: the first target column,
    as `predict` ranks), lowest first unless `descending`, of the rows that pass every `where`; NaN and
    empty values rank last, rows shown equal by id."""
    if not paths:
        raise OptionError("no ranking to merge")
    check_top(top)
    parts = [Part.open(p) for p in paths]
    _check_distinct(parts)
    known = [p for p in parts if p.columns]
    if not known:
        return Table(list(FIXED_COLUMNS), parts[0].fmt, iter(()))
    columns, fmt = known[0].columns, known[0].fmt
    for p in parts:
        if p.fmt != fmt:
            raise InputError(f"{p.path}: {p.fmt} among {fmt} parts; merge parts of one format")
        if p.columns and p.columns != columns:
            raise InputError(f"{p.path} has columns {','.join(p.columns)}, {known[0].path} has {','.join(columns)}")
    values = [c for c in columns[len(FIXED_COLUMNS):] if c != NOTE_COLUMN]
    if not values:
        raise InputError(f"{known[0].path}: no target column to rank by")
    sort_by = sort_by or values[0]
    check_columns([*values, "n_atoms"], sort_by, where)
    value, id_of = _shown_of(columns, fmt, sort_by), _id_of(columns, fmt)
    tests = [(_shown_of(columns, fmt, c.column), c) for c in where]
    kept = lambda row: all(c.passes(shown_value(row)) for shown_value, c in tests)  # noqa: E731
    ids = array("q")  # every row's id hashed: a repeated id is found with 8 bytes a row

    def noted(part: Part) -> Iterator[tuple[int, dict | list]]:
        for number, row in part.rows():
            ids.append(hash(id_of(row)))
            yield number, row

    if top is not None:
        rows = _best((row for p in parts for _, row in noted(p) if kept(row)), value, id_of, top, descending)
    else:
        key = lambda row: sort_key(value(row), id_of(row), descending)  # noqa: E731
        for p in parts:  # before any output: a part that is not ranked this way cannot be merged k-way
            _check_ranked(p, noted(p), key, sort_by, descending)
        rows = heapq.merge(*((row for _, row in p.rows() if kept(row)) for p in parts), key=key)
    _check_unique(parts, ids, id_of)
    return Table(columns, fmt, _renumbered(rows, fmt))


def _check_distinct(parts: list[Part]) -> None:
    """Refuse one file given twice (by two names, too): its rows would all come out twice."""
    seen: dict[tuple[int, int], Path] = {}
    for p in parts:
        st = os.stat(p.path)
        first = seen.setdefault((st.st_dev, st.st_ino), p.path)
        if first is not p.path:
            raise InputError(f"{p.path}: given twice (also as {first}); give each part once")


def _check_unique(parts: list[Part], hashes: array, id_of: Callable[[dict | list], str]) -> None:
    """Refuse an id that two rows hold, naming both places; `hashes` are every row's `hash(id)`. Only
    when two hashes agree are the parts read again, for the ids behind them."""
    h = np.frombuffer(hashes, dtype=np.int64) if len(hashes) else np.zeros(0, np.int64)
    h.sort()  # in place: no second copy of 8 bytes a row
    repeated = set(h[1:][h[1:] == h[:-1]].tolist())
    if not repeated:
        return
    first: dict[str, str] = {}
    for part in parts:
        for number, row in part.rows():
            id_ = id_of(row)
            if hash(id_) in repeated:
                if id_ in first:
                    raise InputError(f"{part.path}:{number}: id {id_!r} again (first at {first[id_]}): merge the "
                                     f"parts of disjoint --shards ranges, each once")
                first[id_] = f"{part.path}:{number}"


def _shown_of(columns: list[str], fmt: str, name: str) -> Callable[[dict | list], float]:
    """A checked row's value in column `name` as the sort and `--where` read it: as shown in CSV (`shown`),
    n_atoms as it is; NaN where it is empty."""
    index = columns.index(name)
    exact = name == "n_atoms"

    def value(row) -> float:
        cell = row[name] if fmt == "jsonl" else row[index]
        if cell is None or cell == "":
            return math.nan
        return float(cell) if exact else shown(float(cell))

    return value


def _id_of(columns: list[str], fmt: str) -> Callable[[dict | list], str]:
    index = columns.index("id")
    return (lambda row: row["id"]) if fmt == "jsonl" else (lambda row: row[index])


def _best(rows: Iterator[dict | list], value: Callable[[dict | list], float], id_of: Callable[[dict | list], str],
          top: int, descending: bool) -> list:
    """The best `top` rows in rank order, holding at most `top` + one chunk of rows."""
    kept: list = []
    kept_values, kept_ids = np.zeros(0), []
    while chunk := list(itertools.islice(rows, CHUNK_ROWS)):
        candidates = kept + chunk
        values = np.concatenate([kept_values, np.fromiter((value(r) for r in chunk), np.float64, len(chunk))])
        ids = kept_ids + [id_of(r) for r in chunk]
        index = best(values, ids, top, descending)
        kept, kept_values, kept_ids = [candidates[i] for i in index], values[index], [ids[i] for i in index]
    return kept


def _check_ranked(part: Part, rows: Iterator[tuple[int, dict | list]], key, sort_by: str, descending: bool) -> None:
    previous = None
    for number, row in rows:
        k = key(row)
        if previous is not None and k < previous:
            order = "highest" if descending else "lowest"
            raise InputError(
                f"{part.path}:{number}: not ranked by {sort_by}, {order} first, ties by id: give --top K to merge "
                f"any parts, or the --sort/--desc the parts were predicted with"
            )
        previous = k


def _renumbered(rows, fmt: str) -> Iterator[dict | list]:
    for rank, row in enumerate(rows, start=1):
        if fmt == "jsonl":
            yield {**row, "rank": rank}
        else:
            yield [str(rank), *row[1:]]
