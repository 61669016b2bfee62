"""Merge ranked tables written by `predict` (one per shard range, GPU or node) into one ranking.

Rows stream through: with `top`, the best `top` rows so far and the next chunk of rows are all that
is held (`ranking.best`, as predict keeps its top rows between shards: O(top) memory, any number and
size of parts); without it, parts already ranked by the sort column are merged k-way, holding one
row per part. Ties keep the order of the parts as given, then of the rows in each part, so parts of
one graph file given in shard order rank ties as one `predict` run does. Values are copied as
written, never reformatted; ranks are renumbered. The sort key, the top-k and the writer are the
ranking's (`ranking`), shared with predict.
"""

from __future__ import annotations

import csv
import heapq
import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from srscreen.screening.ranking import FIXED_COLUMNS, Table, best, check_columns, check_top, delimiter, sort_key
from srscreen.screening.ranking import write_table as write_merged  # noqa: F401 - the name callers know
from srscreen.errors import InputError, OptionError

# Rows read between two top-k cuts: small next to any part, large enough that numpy does the sorting.
CHUNK_ROWS = 1024
_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


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
        try:
            with path.open(newline="", encoding="utf-8") as stream:
                if fmt == "jsonl":
                    line = stream.readline()
                    columns = list(json.loads(line)) if line.strip() else []
                else:
                    columns = next(csv.reader(stream, delimiter=delimiter(fmt)), [])
        except OSError as e:
            raise InputError(f"{path}: cannot read ({e.strerror or e})") from None
        except json.JSONDecodeError:
            raise InputError(f"{path}: not JSON lines as `predict --format jsonl` writes them") from None
        if fmt == "jsonl" and not columns:
            return cls(path, fmt, [])  # no row at all: an empty part, its columns unknown
        if tuple(columns[: len(FIXED_COLUMNS)]) != FIXED_COLUMNS:
            raise InputError(f"{path}: not a ranking as `predict` writes it (columns {', '.join(FIXED_COLUMNS)}, then targets)")
        return cls(path, fmt, columns)

    def rows(self) -> Iterator[dict | list]:
        """Rows as read: lists of cells (CSV/TSV, header skipped) or dicts (JSON lines)."""
        with self.path.open(newline="", encoding="utf-8") as stream:
            if self.fmt == "jsonl":
                for number, line in enumerate(stream, start=1):
                    if line.strip():
                        try:
                            yield json.loads(line)
                        except json.JSONDecodeError:
                            raise InputError(f"{self.path}:{number}: not a JSON line") from None
            else:
                reader = csv.reader(stream, delimiter=delimiter(self.fmt))
                next(reader, None)
                yield from (row for row in reader if row)


def merge_rankings(paths: list[str | Path], *, top: int | None = None, sort_by: str | None = None,
                   descending: bool = False) -> Table:
    """Merge ranked tables into the global ranking by `sort_by` (default: the first target column,
    as `predict` ranks), lowest first unless `descending`; NaN and empty values rank last."""
    if not paths:
        raise OptionError("no ranking to merge")
    check_top(top)
    parts = [Part.open(p) for p in paths]
    known = [p for p in parts if p.columns]
    if not known:
        return Table(list(FIXED_COLUMNS), parts[0].fmt, iter(()))
    columns, fmt = known[0].columns, known[0].fmt
    for p in parts:
        if p.fmt != fmt:
            raise InputError(f"{p.path}: {p.fmt} among {fmt} parts; merge parts of one format")
        if p.columns and p.columns != columns:
            raise InputError(f"{p.path} has columns {','.join(p.columns)}, {known[0].path} has {','.join(columns)}")
    targets = columns[len(FIXED_COLUMNS):]
    if not targets:
        raise InputError(f"{known[0].path}: no target column to rank by")
    sort_by = sort_by or targets[0]
    check_columns([*targets, "n_atoms"], sort_by)
    value = _value_of(columns, fmt, sort_by)
    if top is not None:
        rows = _best(itertools.chain.from_iterable(p.rows() for p in parts), value, top, descending)
    else:
        key = lambda row: sort_key(value(row), descending)  # noqa: E731
        for p in parts:  # before any output: a part that is not ranked this way cannot be merged k-way
            _check_ranked(p, key, sort_by, descending)
        rows = heapq.merge(*(p.rows() for p in parts), key=key)
    return Table(columns, fmt, _renumbered(rows, fmt))


def _value_of(columns: list[str], fmt: str, sort_by: str) -> Callable[[dict | list], float]:
    """A row's value in the `sort_by` column as a number; NaN where it is empty or not a number."""
    index = columns.index(sort_by)

    def value(row) -> float:
        cell = row.get(sort_by) if fmt == "jsonl" else (row[index] if index < len(row) else "")
        try:
            return float(cell) if cell not in (None, "") else math.nan
        except (TypeError, ValueError):
            return math.nan

    return value


def _best(rows: Iterator[dict | list], value: Callable[[dict | list], float], top: int, descending: bool) -> list:
    """The best `top` rows in rank order, holding at most `top` + one chunk of rows."""
    kept: list = []
    kept_values = np.zeros(0)
    while chunk := list(itertools.islice(rows, CHUNK_ROWS)):
        candidates = kept + chunk  # the rows kept come first in the input: ties stay theirs
        values = np.concatenate([kept_values, np.fromiter((value(r) for r in chunk), np.float64, len(chunk))])
        index = best(values, top, descending)
        kept, kept_values = [candidates[i] for i in index], values[index]
    return kept


def _check_ranked(part: Part, key, sort_by: str, descending: bool) -> None:
    previous = None
    for number, row in enumerate(part.rows(), start=1):
        k = key(row)
        if previous is not None and k < previous:
            order = "highest" if descending else "lowest"
            raise InputError(
                f"{part.path} is not ranked by {sort_by}, {order} first (row {number}): "
                f"give --top K to merge any parts, or the --sort/--desc the parts were predicted with"
            )
        previous = k


def _renumbered(rows, fmt: str) -> Iterator[dict | list]:
    for rank, row in enumerate(rows, start=1):
        if fmt == "jsonl":
            yield {**row, "rank": rank}
        else:
            yield [str(rank), *row[1:]]
