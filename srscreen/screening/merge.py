"""Merge ranked tables written by `predict` (one per shard range, GPU or node) into one ranking.

Rows stream through: with `top`, a heap of the best `top` rows is all that is held (O(top) memory,
any number and size of parts); without it, parts already ranked by the sort column are merged
k-way, holding one row per part. Ties keep the order of the parts as given, then of the rows in
each part, so parts of one graph file given in shard order rank ties as one `predict` run does.
Values are copied as written, never reformatted; ranks are renumbered.
"""

from __future__ import annotations

import csv
import heapq
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, TextIO

FIXED_COLUMNS = ("rank", "id", "formula", "n_atoms")
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
                    columns = next(csv.reader(stream, delimiter=_delimiter(fmt)), [])
        except OSError as e:
            raise ValueError(f"{path}: cannot read ({e.strerror or e})") from None
        except json.JSONDecodeError:
            raise ValueError(f"{path}: not JSON lines as `predict --format jsonl` writes them") from None
        if fmt == "jsonl" and not columns:
            return cls(path, fmt, [])  # no row at all: an empty part, its columns unknown
        if tuple(columns[: len(FIXED_COLUMNS)]) != FIXED_COLUMNS:
            raise ValueError(f"{path}: not a ranking as `predict` writes it (columns {', '.join(FIXED_COLUMNS)}, then targets)")
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
                            raise ValueError(f"{self.path}:{number}: not a JSON line") from None
            else:
                reader = csv.reader(stream, delimiter=_delimiter(self.fmt))
                next(reader, None)
                yield from (row for row in reader if row)


def _delimiter(fmt: str) -> str:
    return "\t" if fmt == "tsv" else ","


@dataclass(frozen=True)
class Ranked:
    """The merged ranking: the parts' columns and format, and its rows in rank order (a stream)."""

    columns: list[str]
    fmt: str
    rows: Iterator[dict | list]


def merge_rankings(paths: list[str | Path], *, top: int | None = None, sort_by: str | None = None,
                   descending: bool = False) -> Ranked:
    """Merge ranked tables into the global ranking by `sort_by` (default: the first target column,
    as `predict` ranks), lowest first unless `descending`; NaN and empty values rank last."""
    if not paths:
        raise ValueError("no ranking to merge")
    if top is not None and top < 1:
        raise ValueError("--top must be at least 1")
    parts = [Part.open(p) for p in paths]
    known = [p for p in parts if p.columns]
    if not known:
        return Ranked(list(FIXED_COLUMNS), parts[0].fmt, iter(()))
    columns, fmt = known[0].columns, known[0].fmt
    for p in parts:
        if p.fmt != fmt:
            raise ValueError(f"{p.path}: {p.fmt} among {fmt} parts; merge parts of one format")
        if p.columns and p.columns != columns:
            raise ValueError(f"{p.path} has columns {','.join(p.columns)}, {known[0].path} has {','.join(columns)}")
    targets = columns[len(FIXED_COLUMNS):]
    if not targets:
        raise ValueError(f"{known[0].path}: no target column to rank by")
    sort_by = sort_by or targets[0]
    if sort_by not in targets and sort_by != "n_atoms":
        raise ValueError(f"--sort {sort_by}: no such column (columns: {', '.join(targets)}, n_atoms)")
    key = _key_function(columns, fmt, sort_by, descending)
    if top is not None:
        rows = _best(parts, key, top)
    else:
        for p in parts:  # before any output: a part that is not ranked this way cannot be merged k-way
            _check_ranked(p, key, sort_by, descending)
        rows = heapq.merge(*(p.rows() for p in parts), key=key)
    return Ranked(columns, fmt, _renumbered(rows, fmt))


def _key_function(columns: list[str], fmt: str, sort_by: str, descending: bool):
    index = columns.index(sort_by)
    sign = -1.0 if descending else 1.0

    def key(row) -> tuple[bool, float]:
        cell = row.get(sort_by) if fmt == "jsonl" else (row[index] if index < len(row) else "")
        try:
            value = float(cell) if cell not in (None, "") else math.nan
        except (TypeError, ValueError):
            value = math.nan
        return (True, 0.0) if math.isnan(value) else (False, sign * value)

    return key


def _best(parts: list[Part], key, top: int) -> list:
    """The best `top` rows in rank order, holding at most `top` rows: a heap whose root is the worst
    row kept (keys negated), so each new row costs one comparison unless it enters."""
    heap: list[tuple] = []
    for p, part in enumerate(parts):
        for r, row in enumerate(part.rows()):
            nan, value = key(row)
            entry = (-int(nan), -value, -p, -r, row)  # larger is better: rank order, then input order
            if len(heap) < top:
                heapq.heappush(heap, entry)
            elif entry[:4] > heap[0][:4]:
                heapq.heapreplace(heap, entry)
    return [entry[4] for entry in sorted(heap, key=lambda e: e[:4], reverse=True)]


def _check_ranked(part: Part, key, sort_by: str, descending: bool) -> None:
    previous = None
    for number, row in enumerate(part.rows(), start=1):
        k = key(row)
        if previous is not None and k < previous:
            order = "highest" if descending else "lowest"
            raise ValueError(
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


def write_merged(ranked: Ranked, stream: TextIO) -> int:
    """Write the merged ranking in its parts' format; returns the number of rows."""
    n = 0
    if ranked.fmt == "jsonl":
        for row in ranked.rows:
            stream.write(json.dumps(row) + "\n")
            n += 1
        return n
    writer = csv.writer(stream, delimiter=_delimiter(ranked.fmt), lineterminator="\n")
    writer.writerow(ranked.columns)
    for row in ranked.rows:
        writer.writerow(row)
        n += 1
    return n
