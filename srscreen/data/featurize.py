"""The featurize pipeline: sources -> parallel workers (parse + graph) -> one shard writer.

Workers receive chunks of inputs and send back compact CSR arrays, never Python objects per atom,
so the parent (which only lists files, writes shards and reports progress) does not compete with
them. Results stream through joblib's generator, in input order, with a bounded number of chunks
in flight, so memory does not grow with the database. Every input ends up featurized, failed
(with a reason) or skipped (not a structure file): the summary reconciles the three.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from functools import lru_cache
from itertools import islice
from pathlib import Path
from typing import Callable, Iterable, Iterator, TypeVar

import numpy as np
from joblib import Parallel, delayed

from srscreen.graph import elements
from srscreen.data.backends import check_backend, compute_backend
from srscreen.errors import one_line
from srscreen.graph.neighbours import BuiltGraphs, GraphSettings, build_graphs
from srscreen.io.readers import (
    DisorderPolicy, Parsed, ParseFailure, detect_format, parse_ase_db_rows, parse_bytes, parse_entry_chunk,
    parse_extxyz_frames, parse_jsonl_lines,
)
from srscreen.data.id_index import SeenIds
from srscreen.data.graph_file import Failure, GraphFile, GraphRecords, consolidate, partial_dir, read_parts_state, start_parts, write_part
from srscreen.io.sources import Item, Skipped, iter_inputs

# Inputs per worker task: ~50 ms of work for MP-sized CIFs. Fewer, larger tasks keep joblib/loky's
# per-task cost in the parent small (parent CPU for the 33k MP set: 1.4 s at 64 per task, 0.8 s at 256).
ITEMS_PER_TASK = 256
# Structures per build_graphs call: large enough to amortise numpy's per-call cost, small enough for
# the batch's pair arrays to stay in cache (fastest at 32-64 on the MP set).
GRAPH_BATCH = 64


@dataclass(frozen=True)
class FeaturizeOptions:
    """Everything that decides what ends up in the file; saved in it and checked on resume."""

    graph: GraphSettings = GraphSettings()
    max_atoms: int = 1000
    on_disorder: DisorderPolicy = "fail"
    shard_size: int = 4096
    id_key: str | None = None  # ASE databases: the row key that names each structure (default stem:<row id>)


@dataclass(frozen=True)
class FeaturizeSummary:
    structures: int
    failed: int
    skipped: int
    resumed: int
    out: str
    redone: tuple[str, ...] = ()  # damaged part files of an earlier run, removed and featurized again

    @property
    def inputs(self) -> int:
        return self.structures + self.failed + self.skipped


@dataclass(frozen=True)
class ChunkResult:
    keys: list[str]
    records: GraphRecords
    failures: list[Failure]


@lru_cache(maxsize=1)
def _element_info() -> tuple[list[str], np.ndarray]:
    """Symbols and Pauling electronegativities by Z, for pymatgen-style reduced formulas."""
    import warnings

    from pymatgen.core.periodic_table import Element

    symbols, x = [""], [np.inf]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # noble gases and superheavies have no X: sorted last, as pymatgen does
        for z in range(1, 119):
            el = Element.from_Z(z)
            symbols.append(el.symbol)
            x.append(el.X if el.X == el.X else np.inf)
    return symbols, np.array(x)


@lru_cache(maxsize=1)
def _formula_order() -> list[tuple[float, str]]:
    """Sort key of each Z in a formula: electronegativity, then symbol."""
    symbols, x = _element_info()
    return [(float(x[z]), symbols[z]) for z in range(len(symbols))]


def reduced_formula(numbers: np.ndarray) -> str:
    """Reduced formula ordered by electronegativity, as pymatgen writes it (``Li2O``, ``SrTiO3``)."""
    symbols = _element_info()[0]
    key = _formula_order()
    tally = np.bincount(numbers)
    zs = np.flatnonzero(tally).tolist()
    counts = tally[zs].tolist()
    divisor = math.gcd(*counts)
    parts = []
    for z, n in sorted(zip(zs, counts), key=lambda zn: key[zn[0]]):
        n //= divisor
        parts.append(symbols[z] + (str(n) if n != 1 else ""))
    return "".join(parts)


def _parse_item(item: Item, policy: DisorderPolicy):
    if item.error is not None:
        return [ParseFailure(detect_format(item.name)[1], item.error)]
    if item.last_frame is not None:  # a range of rows of an ASE database
        return parse_ase_db_rows(item.path, detect_format(item.name)[1], item.first_frame, item.last_frame, item.id_key)
    if item.path is not None:
        try:
            with open(item.path, "rb") as fh:
                data = fh.read()
        except OSError as e:
            return [ParseFailure(detect_format(item.name)[1], f"unreadable: {e.strerror}")]
        return parse_bytes(item.name, data, policy)
    fmt, stem = detect_format(item.name)
    if item.key == item.source:  # a whole file held in memory (archive member)
        return parse_bytes(item.name, item.data, policy)
    text = item.data.decode("utf-8", errors="replace")
    if fmt == "jsonl":
        return parse_jsonl_lines(stem, text.splitlines(), item.first_frame, policy)
    if fmt == "json":  # a chunk of a large entry dump
        return parse_entry_chunk(stem, text, item.first_frame, policy)
    return parse_extxyz_frames(stem, text, item.first_frame)


def _parsed_or_failure(item: Item, policy: DisorderPolicy) -> Iterator[Parsed | ParseFailure]:
    """Every structure of an input, and a failure when it holds none or a parser breaks: an input is
    never dropped without a record, and one bad file never stops its chunk."""
    stem = detect_format(item.name)[1]
    found = False
    try:
        for parsed in _parse_item(item, policy):
            found = True
            yield parsed
    except Exception as e:  # noqa: BLE001 - a parser bug on one file must not lose the others
        yield ParseFailure(stem, f"cannot read: {type(e).__name__}: {one_line(e, 200)}")
        return
    if not found:
        yield ParseFailure(stem, "no structure in file")


def featurize_items(items: list[Item], options: FeaturizeOptions, supported: np.ndarray) -> ChunkResult:
    """Worker: parse and build graphs for a chunk of inputs; compact arrays back to the parent.

    Failures keep the order of the inputs.
    """
    found = ((item.source, parsed) for item in items for parsed in _parsed_or_failure(item, options.on_disorder))
    records, failures = graph_records(found, options, supported)
    return ChunkResult([item.key for item in items], records, failures)


def graph_records(found: Iterable[tuple[str, Parsed | ParseFailure]], options: FeaturizeOptions,
                  supported: np.ndarray) -> tuple[GraphRecords, list[Failure]]:
    """(source, parsed structure or parse failure) pairs -> the graphs of the usable structures, and a
    failure for every other, both in input order: what every input path (files, Python objects) shares.

    The graphs are built GRAPH_BATCH structures per `build_graphs` call (numpy's per-call cost paid once
    per batch).
    """
    todo: list[tuple[str, Parsed]] = []  # (source, structure) waiting for its graph
    outcome: list[Failure | int] = []  # per structure, in input order: a failure or an index in todo
    for source, parsed in found:
        if isinstance(parsed, ParseFailure):
            outcome.append(Failure(parsed.id, source, parsed.reason))
            continue
        reason = unusable(parsed.numbers, supported, options.max_atoms)
        if reason is not None:
            outcome.append(Failure(parsed.id, source, reason))
            continue
        outcome.append(len(todo))
        todo.append((source, parsed))
    batch = _graphs([(p.lattice, p.frac_coords) for _, p in todo], options.graph)
    ids, sources, formulas, numbers = [], [], [], []
    failures: list[Failure] = []
    for entry in outcome:
        if isinstance(entry, Failure):
            failures.append(entry)
            continue
        source, parsed = todo[entry]
        error = batch.errors[entry]
        if error is not None:
            failures.append(Failure(parsed.id, source, error))
            continue
        ids.append(parsed.id)
        sources.append(source)
        formulas.append(reduced_formula(parsed.numbers))
        numbers.append(parsed.numbers)
    records = GraphRecords(
        ids, sources, formulas, np.fromiter(map(len, numbers), dtype=np.int32, count=len(numbers)),
        np.concatenate(numbers).astype(np.uint8) if numbers else np.zeros(0, np.uint8),
        batch.n_edges, batch.nbr_idx, batch.nbr_dist,
    )
    return records, failures


def _graphs(structures: list, settings: GraphSettings) -> BuiltGraphs:
    """`build_graphs` over GRAPH_BATCH structures at a time (its pair arrays then stay in cache)."""
    if len(structures) <= GRAPH_BATCH:
        return build_graphs(structures, settings)
    parts = [build_graphs(structures[i : i + GRAPH_BATCH], settings) for i in range(0, len(structures), GRAPH_BATCH)]
    return BuiltGraphs(
        np.concatenate([b.n_edges for b in parts]),
        np.concatenate([b.nbr_idx for b in parts]),
        np.concatenate([b.nbr_dist for b in parts]),
        [e for b in parts for e in b.errors],
    )


def unusable(numbers: np.ndarray, supported: np.ndarray, max_atoms: int) -> str | None:
    """Why a parsed structure cannot be featurized (too many atoms, an element without features), or None."""
    if len(numbers) > max_atoms:
        return f"cell has {len(numbers)} atoms, more than --max-atoms {max_atoms}"
    if numbers.max() < len(supported) and supported[numbers].all():  # the usual case, in 3 numpy calls
        return None
    outside = numbers[(numbers >= len(supported)) | ~supported[np.minimum(numbers, len(supported) - 1)]]
    if outside.size:
        symbols = _element_info()[0]
        z = int(outside[0])
        return f"element {symbols[z] if z < len(symbols) else z} (Z={z}) has no features in the element table"
    return None


T = TypeVar("T")


def _chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


class _Writer:
    """Collects chunk results in the parent and writes a part file every `shard_size` records."""

    def __init__(self, parts: Path, shard_size: int, seen_ids: SeenIds, next_index: int) -> None:
        self.parts, self.shard_size, self.seen_ids, self.index = parts, shard_size, seen_ids, next_index
        self.runs: list[GraphRecords] = []
        self.failures: list[Failure] = []
        self.keys: list[str] = []
        self.buffered = 0
        self.n_structures = 0
        self.n_failed = 0

    def add(self, result: ChunkResult) -> None:
        records = result.records
        keep = np.ones(len(records), dtype=bool)
        firsts = self.seen_ids.add_all(records.ids, records.sources)
        for i, (id_, source, first) in enumerate(zip(records.ids, records.sources, firsts)):
            if first is not None:
                keep[i] = False
                result.failures.append(Failure(id_, source, f"duplicate id (already featurized from {first})"))
        if not keep.all():
            records = records.select(keep)
        self.runs.append(records)
        self.failures.extend(result.failures)
        self.keys.extend(result.keys)
        self.buffered += len(records) + len(result.failures)
        self.n_structures += len(records)
        self.n_failed += len(result.failures)
        if self.buffered >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        if not self.keys:
            return
        write_part(self.parts, self.index, GraphRecords.concat(self.runs), self.failures, self.keys)
        self.seen_ids.written(self.index)
        self.index += 1
        self.runs, self.failures, self.keys, self.buffered = [], [], [], 0


def _completed_summary(out: Path, attrs: dict) -> FeaturizeSummary:
    """A finished file is the answer to a rerun with the same settings; parts left by a kill just after
    the rename go."""
    with GraphFile(out) as graphs:
        changed = [k for k in attrs if k != "source" and graphs.attrs.get(k) != attrs[k]]
        if changed:
            raise FileExistsError(f"{out} exists and was made with other {', '.join(changed)}; use --overwrite to rebuild it")
        n, failed, skipped = len(graphs), int(graphs.attrs["n_failed"]), int(graphs.attrs["n_skipped"])
    leftover = partial_dir(out)
    if leftover.exists():
        shutil.rmtree(leftover)
    return FeaturizeSummary(structures=n, failed=failed, skipped=skipped, resumed=n + failed, out=str(out))


def featurize(
    source: str | Path,
    out: str | Path,
    *,
    options: FeaturizeOptions = FeaturizeOptions(),
    atom_features: str | Path | None = None,
    jobs: int = -1,
    overwrite: bool = False,
    on_progress: Callable[[int, int], None] | None = None,
    backend: str = "local",
    scheduler: str | None = None,
) -> FeaturizeSummary:
    """Featurize every structure under `source` into the graph file `out`, resuming an unfinished run.

    A complete `out` is left as it is (its summary is returned) unless `overwrite`.
    `backend` "dask" runs the workers on the dask.distributed cluster at `scheduler` (see backends.py).

    `on_progress(structures, failed)` is called after each chunk with running totals.
    """
    out = Path(out)
    table = elements.cgcnn_feature_table() if atom_features is None else elements.load_atom_features(atom_features)
    attrs = {
        **options.graph.as_attrs(),
        "feature_table_id": elements.table_id(table),
        "feature_table_name": elements.BUILTIN_TABLE_NAME if atom_features is None else Path(atom_features).name,
        "policies": json.dumps(
            {"max_atoms": options.max_atoms, "on_disorder": options.on_disorder,
             "on_isolated_atoms": options.graph.on_isolated_atoms, "min_distance": options.graph.min_distance,
             "shard_size": options.shard_size,
             # Only when set, so files written before the option existed still resume.
             **({"id_key": options.id_key} if options.id_key is not None else {})},
            sort_keys=True,
        ),
        "source": str(Path(source).resolve()),
    }
    if not Path(source).exists():  # before OUT.partial is made: a mistyped source must not pin the run
        raise FileNotFoundError(f"{source}: no such file or folder")
    check_backend(backend, scheduler)
    if overwrite and out.exists():
        out.unlink()
    if out.exists():
        return _completed_summary(out, attrs)
    parts = start_parts(out, attrs, overwrite)
    state = read_parts_state(parts, options.graph.as_attrs())
    writer = _Writer(parts, options.shard_size, state.seen_ids, state.next_index)
    skipped: list[tuple[str, str]] = []
    resumed = state.n_structures + state.n_failed

    def pending() -> Iterator[Item]:
        # In batches of a task's size: one numpy lookup per batch in the compact done keys.
        for batch in _chunks(iter_inputs(source, id_key=options.id_key), ITEMS_PER_TASK):
            skipped.extend((x.source, x.reason) for x in batch if isinstance(x, Skipped))
            items = [x for x in batch if not isinstance(x, Skipped)]
            done = state.done_keys.contains_all([x.key for x in items])
            yield from (item for item, finished in zip(items, done) if not finished)

    supported = elements.supported_numbers(table)
    # Parts are written between tasks: a task of more files than shard_size would overfill the shard.
    task_items = max(1, min(ITEMS_PER_TASK, options.shard_size))
    tasks = (delayed(featurize_items)(chunk, options, supported) for chunk in _chunks(pending(), task_items))
    with compute_backend(backend, jobs=jobs, scheduler=scheduler):
        # In order: which of two inputs with the same id is "first" must not depend on worker timing.
        for result in Parallel(return_as="generator", pre_dispatch="3*n_jobs", batch_size=1)(tasks):
            writer.add(result)
            if on_progress is not None:
                on_progress(state.n_structures + writer.n_structures, state.n_failed + writer.n_failed)
    writer.flush()
    consolidate(out, parts, attrs, skipped)
    return FeaturizeSummary(
        structures=state.n_structures + writer.n_structures,
        failed=state.n_failed + writer.n_failed,
        skipped=len(skipped),
        resumed=resumed,
        out=str(out),
        redone=tuple(state.redone),
    )
