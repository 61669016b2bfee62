"""A ranking: its rows and columns, the one sort key, top-k, `--where` filters, and the one writer.

`predict` ranks arrays of predictions; `merge` streams rows that `predict` wrote. Both rank by one key
(lowest first, or highest with `descending`; NaN or an empty cell last either way; ties by id), cut
with one top-k, and write through one writer: CSV or TSV with the header first, or JSON lines; on
stdout, where a reader closing the pipe (`| head`) ends the output quietly, or to a file that appears
whole or not at all.

The sort and `--where` read each value as CSV shows it (`shown`: 6 significant digits), in every
format: a row shown as 0.265082 fails `<0.265082`, and rows shown equal are tied (then ranked by id),
whatever digits lie beyond. So what a user sees is what was filtered and ranked, and `merge`, which
reads only printed values, ranks exactly as one `predict` does.

Columns: rank, id, formula, n_atoms, then one per value (a model's target; beside it `<target>_std`
for an ensemble; e_above_hull with --hull), then hull_note with --hull.
"""

from __future__ import annotations

import csv
import json
import math
import operator
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence, TextIO

import numpy as np

from srscreen.errors import OptionError
from srscreen.io.atomic_write import replace_when_done
from srscreen.model.columns import FIXED_COLUMNS, NOTE_COLUMN

FORMATS = ("csv", "tsv", "jsonl")
_OPS: dict[str, Callable[[np.ndarray, float], np.ndarray]] = {
    ">=": operator.ge, "<=": operator.le, "==": operator.eq, "!=": operator.ne, ">": operator.gt, "<": operator.lt,
}
_WHERE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(>=|<=|==|!=|>|<)\s*([-+0-9.eE]+|[-+]?inf|[-+]?nan)\s*$")
SIGNIFICANT_DIGITS = 6


def printed(value: float) -> str:
    """A value as CSV and TSV write it (6 significant digits; nan, inf, -inf)."""
    return f"{value:.{SIGNIFICANT_DIGITS}g}"


def shown(value: float) -> float:
    """A value as the CSV shows it, read back: the number the sort and `--where` use."""
    return float(printed(value))


def as_shown(values: np.ndarray) -> np.ndarray:
    """`shown` for an array."""
    return np.array([shown(v) for v in values.tolist()], dtype=np.float64)


@dataclass(frozen=True)
class Condition:
    """A filter such as ``band_gap>=1.0``."""

    column: str
    op: str
    value: float

    @classmethod
    def parse(cls, text: str) -> Condition:
        m = _WHERE.match(text)
        if not m:
            raise OptionError(f"cannot read filter {text!r}: write COLUMN OP NUMBER, e.g. 'band_gap>=1.0' (OP: >= <= > < == !=)")
        try:
            value = float(m.group(3))
        except ValueError:  # matched the number's characters but is none, e.g. "1e" or "-"
            raise OptionError(f"cannot read filter {text!r}: {m.group(3)!r} is not a number") from None
        if math.isnan(value):  # every comparison with NaN is false (`!=` true): the filter would mean nothing
            raise OptionError(f"cannot use filter {text!r}: nothing compares with nan; to drop rows without a value, "
                              f"write '{m.group(1)}>-inf'")
        return cls(m.group(1), m.group(2), value)

    def mask(self, ranking: Ranking) -> np.ndarray:
        """Rows that pass, comparing values as shown; NaN passes no comparison but `!=`."""
        return _OPS[self.op](ranking.shown(self.column), self.value)

    def passes(self, value: float) -> bool:
        """Whether one row whose `column` is shown as `value` passes (merge's rows, one at a time)."""
        return bool(_OPS[self.op](value, self.value))


def check_columns(columns: Sequence[str], sort_by: str, where: Sequence[Condition] = ()) -> None:
    """Refuse a sort or filter column the ranking lacks, before any work."""
    if sort_by not in columns:
        raise OptionError(f"`sort_by={sort_by!r}`: no such column (columns: {', '.join(columns)}){_absent(sort_by)}")
    for condition in where:
        if condition.column not in columns:
            raise OptionError(f"`where` filter {condition.column!r}: no such column (columns: {', '.join(columns)})"
                              f"{_absent(condition.column)}")


def _absent(column: str) -> str:
    """What adds a σ or stability column a ranking lacks (plain words, no parameter: merge has no such flags)."""
    sigma = "model with sigma (an ensemble or scale heads), not predict --fast"
    if column == "p_stable":
        return f"; p_stable comes from predict --hull with a formation-energy {sigma}"
    if column.endswith("_std"):
        return f"; {column} comes from a {sigma}"
    if column == "e_above_hull":
        return "; e_above_hull comes from predict --hull"
    return ""


def check_top(top: int | None) -> None:
    if top is not None and top < 1:
        raise OptionError("`top` must be at least 1")


def sort_key(value: float, id_: str, descending: bool) -> tuple[bool, float, str]:
    """The rank of one row from its value as shown: NaN last either way, then lowest first (highest if
    `descending`), rows shown equal by id. The id, not the order rows come in, breaks ties, so a ranking
    does not depend on how its rows were split into shards, pieces or merge parts, nor on their order."""
    return (True, 0.0, id_) if math.isnan(value) else (False, -value if descending else value, id_)


def order(values: np.ndarray, ids: Sequence[str], descending: bool) -> np.ndarray:
    """Row indices in `sort_key` order, vectorised (`values` as shown)."""
    nan = np.isnan(values)
    signed = np.where(nan, 0.0, -values if descending else values)
    return np.lexsort((np.asarray(ids, dtype=str), signed, nan))


def best(values: np.ndarray, ids: Sequence[str], top: int | None, descending: bool) -> np.ndarray:
    """The first `top` rows in `sort_key` order (all with None). The order is total (ids are unique), so
    the best K of the rows kept so far plus the next chunk, chunk after chunk, is the head of the full
    ranking (an argpartition would pick among equal values arbitrarily)."""
    return order(values, ids, descending)[:top]


@dataclass
class Ranking:
    """Ranked rows in memory: `values` are the value columns, arrays as long as `ids`."""

    ids: list[str]
    formula: list[str]
    n_atoms: np.ndarray
    values: dict[str, np.ndarray]
    notes: list[str] | None = None  # with --hull: why a row has no e_above_hull ("" where it has one)

    @classmethod
    def empty(cls, columns: list[str], notes: bool = False) -> Ranking:
        return cls([], [], np.zeros(0, np.int64), {t: np.zeros(0) for t in columns}, [] if notes else None)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def columns(self) -> list[str]:
        return [*FIXED_COLUMNS, *self.values, *([NOTE_COLUMN] if self.notes is not None else [])]

    def shown(self, name: str) -> np.ndarray:
        """A value column as the CSV shows it, or n_atoms: what a sort or a filter reads."""
        return self.n_atoms.astype(np.float64) if name == "n_atoms" else as_shown(self.values[name])

    def where(self, conditions: Sequence[Condition]) -> Ranking:
        """The rows that pass every condition."""
        keep = np.ones(len(self), dtype=bool)
        for condition in conditions:
            keep &= condition.mask(self)
        return self.take(np.flatnonzero(keep))

    def top(self, sort_by: str, top: int | None, descending: bool) -> Ranking:
        """The first `top` rows (all with None) ranked by `sort_by`."""
        return self.take(best(self.shown(sort_by), self.ids, top, descending))

    def take(self, index: np.ndarray) -> Ranking:
        return Ranking([self.ids[i] for i in index], [self.formula[i] for i in index], self.n_atoms[index],
                       {k: v[index] for k, v in self.values.items()},
                       None if self.notes is None else [self.notes[i] for i in index])

    @staticmethod
    def concat(parts: list[Ranking], columns: list[str], notes: bool = False) -> Ranking:
        if not parts:
            return Ranking.empty(columns, notes)
        return Ranking([i for p in parts for i in p.ids], [f for p in parts for f in p.formula],
                       np.concatenate([p.n_atoms for p in parts]),
                       {t: np.concatenate([p.values[t] for p in parts]) for t in columns},
                       [n for p in parts for n in p.notes] if notes else None)

    def table(self, fmt: str = "csv") -> Table:
        """The rows as written: values to 6 significant digits in CSV/TSV, numbers (NaN as null) in JSON."""
        return Table(self.columns, fmt, self._rows(fmt))

    def _rows(self, fmt: str) -> Iterator[list | dict]:
        columns = self.columns
        for i in range(len(self)):
            fixed = [i + 1, self.ids[i], self.formula[i], int(self.n_atoms[i])]
            note = [self.notes[i]] if self.notes is not None else []
            if fmt == "jsonl":
                values = [None if math.isnan(v[i]) else float(v[i]) for v in self.values.values()]
                yield dict(zip(columns, [*fixed, *values, *note]))
            else:
                yield [*fixed, *(printed(v[i]) for v in self.values.values()), *note]


@dataclass(frozen=True)
class Table:
    """A ranking as written: column names, format, and rows in rank order (lists of cells for CSV and
    TSV, dicts for JSON lines), possibly a stream read once."""

    columns: list[str]
    fmt: str
    rows: Iterable[list | dict]


def delimiter(fmt: str) -> str:
    return "\t" if fmt == "tsv" else ","


def write_table(table: Table, stream: TextIO) -> int:
    """Write `table` to `stream` (CSV and TSV header first); returns the number of rows."""
    n = 0
    if table.fmt == "jsonl":
        for row in table.rows:
            stream.write(json.dumps(row) + "\n")
            n += 1
        return n
    writer = csv.writer(stream, delimiter=delimiter(table.fmt), lineterminator="\n")
    writer.writerow(table.columns)
    for row in table.rows:
        writer.writerow(row)
        n += 1
    return n


def write_output(table: Table, out: str | os.PathLike | None = None, *, overwrite: bool = True) -> None:
    """`table` into `out`, whole or not at all (written beside it, renamed when complete), or on stdout,
    where a reader that stops early (`| head`) ends the output without an error. Without `overwrite`
    an `out` that appeared while the table was computed is kept (InputError)."""
    if out is not None:
        with replace_when_done(Path(out), replace=overwrite) as tmp, tmp.open("w", newline="", encoding="utf-8") as stream:
            write_table(table, stream)
        return
    try:
        write_table(table, sys.stdout)
        sys.stdout.flush()
    except BrokenPipeError:
        reader_closed_stdout()


def reader_closed_stdout() -> None:
    """The reader closed the pipe: its choice, not an error. Later writes and the exit flush go nowhere."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
