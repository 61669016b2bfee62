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
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
from joblib import Parallel, delayed

from srscreen.graph import elements
from srscreen.data.backends import check_backend, compute_backend
from srscreen.graph.settings import GraphSettings
from srscreen.graph.csr import Graphs
from srscreen.graph.neighbours import build_graphs
from srscreen.io.items import parse_item
from srscreen.io.parsed import DisorderPolicy, Parsed, ParseFailure
from srscreen.data.graph_file import Failure, GraphFile, partial_dir
from srscreen.data.shard_writer import ShardWriter
from srscreen.io.sources import Item, Skipped, iter_inputs

# Structures per worker task: ~50 ms of work for MP-sized CIFs. Fewer, larger tasks keep joblib/loky's
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
    graphs: Graphs
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


def featurize_items(items: list[Item], options: FeaturizeOptions, supported: np.ndarray) -> ChunkResult:
    """Worker: parse and build graphs for a chunk of inputs; compact arrays back to the parent.

    Failures keep the order of the inputs.
    """
    found = ((item.source, parsed) for item in items for parsed in parse_item(item, options.on_disorder))
    graphs, failures = graph_records(found, options, supported)
    return ChunkResult([item.key for item in items], graphs, failures)


def graph_records(found: Iterable[tuple[str, Parsed | ParseFailure]], options: FeaturizeOptions,
                  supported: np.ndarray) -> tuple[Graphs, list[Failure]]:
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
    graphs, errors = _graphs([(p.lattice, p.frac_coords, p.numbers) for _, p in todo], options.graph)
    ids, sources, formulas = [], [], []
    failures: list[Failure] = []
    for entry in outcome:
        if isinstance(entry, Failure):
            failures.append(entry)
            continue
        source, parsed = todo[entry]
        if errors[entry] is not None:
            failures.append(Failure(parsed.id, source, errors[entry]))
            continue
        ids.append(parsed.id)
        sources.append(source)
        formulas.append(reduced_formula(parsed.numbers))
    return replace(graphs, ids=ids, formula=formulas, sources=sources), failures


def _graphs(structures: list, settings: GraphSettings) -> tuple[Graphs, list[str | None]]:
    """`build_graphs` over GRAPH_BATCH structures at a time (its pair arrays then stay in cache)."""
    if len(structures) <= GRAPH_BATCH:
        return build_graphs(structures, settings)
    parts = [build_graphs(structures[i : i + GRAPH_BATCH], settings) for i in range(0, len(structures), GRAPH_BATCH)]
    return Graphs.concat([g for g, _ in parts]), [e for _, errors in parts for e in errors]


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


def _tasks(items: Iterable[Item | Skipped], max_structures: int) -> Iterator[list[Item | Skipped]]:
    """Consecutive items holding at most `max_structures` structures together (an item more if it alone
    holds more), so that a task's memory and its share of a shard stay bounded whatever the input."""
    task: list[Item | Skipped] = []
    size = 0
    for item in items:
        frames = getattr(item, "frames", 1)  # a Skipped input counts as one
        if task and size + frames > max_structures:
            yield task
            task, size = [], 0
        task.append(item)
        size += frames
    if task:
        yield task


def _completed_summary(out: Path, attrs: dict) -> FeaturizeSummary:
    """A finished file is the answer to a rerun with the same settings; parts left by a kill just after
    the rename go."""
    with GraphFile(out) as graphs:
        changed = [k for k in attrs if k != "source" and graphs.attrs.get(k) != attrs[k]]
        if changed:
            raise FileExistsError(f"{out} exists and was made with other {', '.join(changed)}; use `overwrite=True` to rebuild it")
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
    writer = ShardWriter(out, attrs, options.graph.as_attrs(), options.shard_size, overwrite=overwrite)
    skipped: list[tuple[str, str]] = []

    def pending() -> Iterator[Item]:
        # In batches of a task's size (in structures, so that a batch of chunks of a big file is not
        # 65,536 structures held at once): one numpy lookup per batch in the compact done keys.
        for batch in _tasks(iter_inputs(source, id_key=options.id_key), ITEMS_PER_TASK):
            skipped.extend((x.source, x.reason) for x in batch if isinstance(x, Skipped))
            items = [x for x in batch if not isinstance(x, Skipped)]
            done = writer.finished([x.key for x in items])
            yield from (item for item, finished in zip(items, done) if not finished)

    supported = elements.supported_numbers(table)
    # Parts are written between tasks: a task of more structures than shard_size would overfill the shard.
    # Sized by structures, not items: an item of a multi-structure file holds up to 256 of them, and tasks
    # of 256 such items kept ~400,000 structures in flight (7.5 GB in the parent on a 10^6 JSON-lines run).
    task_size = max(1, min(ITEMS_PER_TASK, options.shard_size))
    tasks = (delayed(featurize_items)(chunk, options, supported) for chunk in _tasks(pending(), task_size))
    with compute_backend(backend, jobs=jobs, scheduler=scheduler):
        # In order: which of two inputs with the same id is "first" must not depend on worker timing.
        for result in Parallel(return_as="generator", pre_dispatch="3*n_jobs", batch_size=1)(tasks):
            writer.add(result.keys, result.graphs, result.failures)
            if on_progress is not None:
                on_progress(writer.resumed_structures + writer.n_structures, writer.resumed_failed + writer.n_failed)
    writer.finish(skipped)
    return FeaturizeSummary(
        structures=writer.resumed_structures + writer.n_structures,
        failed=writer.resumed_failed + writer.n_failed,
        skipped=len(skipped),
        resumed=writer.resumed_structures + writer.resumed_failed,
        out=str(out),
        redone=tuple(writer.redone),
    )
