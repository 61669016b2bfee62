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
import os
import shutil
from dataclasses import dataclass, replace
from functools import lru_cache
from itertools import chain, islice
from pathlib import Path
from typing import Callable, Iterable, Iterator, Protocol

import numpy as np
from joblib import Parallel, delayed

from srscreen.graph import elements
from srscreen.data.backends import check_backend, compute_backend, local_workers, stop_workers
from srscreen.graph.settings import GraphSettings
from srscreen.graph.csr import Graphs
from srscreen.graph.neighbours import build_graphs
from srscreen.io.items import parse_item
from srscreen.io.parsed import DisorderPolicy, Parsed, ParseFailure
from srscreen.data.graph_file import Failure, GraphFile, partial_dir
from srscreen.data.shard_writer import ShardWriter
from srscreen.errors import DiskFullError, InputError, OptionError
from srscreen.io.atomic_write import sigterm_unwinds
from srscreen.io.compression import MAX_STRUCTURE_MB
from srscreen.io.fingerprint import SourceListing, compare, list_source
from srscreen.io.outputs import check_no_broken_link, check_not_an_input, lock_path, output_lock
from srscreen.io.sources import Item, Skipped, check_source, iter_inputs

# --max-file-mb's ceiling: far above any structure (the largest Materials Project CIF is 11 kB).
MAX_FILE_MB_LIMIT = 1e6

# Structures per worker task: ~50 ms of work for MP-sized CIFs. Fewer, larger tasks keep joblib/loky's
# per-task cost in the parent small (parent CPU for the 33k MP set: 1.4 s at 64 per task, 0.8 s at 256).
ITEMS_PER_TASK = 256
# Bytes of file content (archive members, chunks of frames) per task, at most: what the parent holds for
# the tasks in flight stays ~3 x workers x this, whatever the files.
TASK_BYTES = 16 << 20
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
    # What one structure's file (a JSON line, an extxyz frame, an archive member) may hold once
    # decompressed; larger ones are failures, never read past the limit (decompression bombs).
    max_file_mb: float = MAX_STRUCTURE_MB

    def __post_init__(self) -> None:
        """The policies a structure is judged by, checked where they are defined (the Python API's
        `load_model` passes them through, as the CLI's flags do)."""
        if self.on_disorder not in ("fail", "majority"):
            raise OptionError(f"`on_disorder` must be 'fail' or 'majority', not {self.on_disorder!r}")
        if isinstance(self.max_atoms, bool) or not isinstance(self.max_atoms, (int, np.integer)) or self.max_atoms < 1:
            raise OptionError(f"`max_atoms` must be a whole number of at least 1, not {self.max_atoms!r}")

    @property
    def max_bytes(self) -> int:
        return int(self.max_file_mb * (1 << 20))


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
    found = ((item.source, parsed) for item in items for parsed in parse_item(item, options.on_disorder, options.max_bytes))
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
    """Consecutive items holding at most `max_structures` structures and TASK_BYTES of data together (an
    item more if it alone holds more), so that a task's memory and its share of a shard stay bounded
    whatever the input (256 archive members of 60 MB each are not one task)."""
    task: list[Item | Skipped] = []
    size = held = 0
    for item in items:
        frames = getattr(item, "frames", 1)  # a Skipped input counts as one
        data = len(getattr(item, "data", None) or b"")
        if task and (size + frames > max_structures or held + data > TASK_BYTES):
            yield task
            task, size, held = [], 0, 0
        task.append(item)
        size += frames
        held += data
    if task:
        yield task


def _completed_summary(out: Path, attrs: dict, source: Path, listing: SourceListing) -> FeaturizeSummary:
    """A finished file is the answer to a rerun with the same settings from the same source (the same
    files, sizes and times: it need not be at the same path); parts left by a kill just after the rename go."""
    with GraphFile(out) as graphs:
        changed = [k for k in attrs if k != "source" and graphs.attrs.get(k) != attrs[k]]
        if changed:
            raise FileExistsError(f"{out} exists and was made with other {', '.join(changed)}; use `overwrite=True` to rebuild it")
        _check_made_from(graphs, source, listing)
        n, failed, skipped = len(graphs), int(graphs.attrs["n_failed"]), int(graphs.attrs["n_skipped"])
    leftover = partial_dir(out)
    if leftover.exists():
        shutil.rmtree(leftover)
    return FeaturizeSummary(structures=n, failed=failed, skipped=skipped, resumed=n + failed, out=str(out))


def _check_made_from(graphs: GraphFile, source: Path, listing: SourceListing) -> None:
    """Refuse a finished file that was not made from `source` as it is now (never report inputs as done
    that the file does not hold)."""
    before = graphs.source_listing()
    way_out = "use `overwrite=True` to rebuild it, or write to another path"
    if before is None:
        raise InputError(f"{graphs.path} exists but was written by an srscreen that did not record its source's "
                         f"listing, so it cannot tell whether it holds {source}; {way_out}")
    if before.digest == listing.digest:
        return
    change = compare(before, listing)
    made = f"{graphs.path} was made from {graphs.attrs.get('source')} ({_files(before.files)})"
    if change.kept == 0 and change.changed == 0:
        raise InputError(f"{made}, not from {source} ({_files(listing.files)}, none of them in it); {way_out}")
    raise InputError(f"{made}; {source} has changed since: {change.describe()}; {way_out}")


def _files(n: int) -> str:
    return f"{n:,} file{'' if n == 1 else 's'}"


def own_files(out: Path) -> Callable[[str], bool]:
    """Whether a real path is one of the files featurize writes for `out` (OUT, OUT.partial/, its lock,
    temporary files): never an input, even when OUT lies inside the source folder."""
    real = os.path.realpath(out)
    folder, name = os.path.split(real)
    exact = {real, str(partial_dir(Path(real))), str(lock_path(Path(real))), real + ".tmp"}
    hidden = os.path.join(folder, f".{name}.")
    return lambda path: path in exact or (path.startswith(hidden) and path.endswith(".tmp"))


def featurize(
    source: str | Path,
    out: str | Path,
    *,
    options: FeaturizeOptions = FeaturizeOptions(),
    atom_features: str | Path | None = None,
    like: ModelLike | None = None,
    jobs: int = -1,
    overwrite: bool = False,
    on_progress: Callable[[int, int], None] | None = None,
    backend: str = "local",
    scheduler: str | None = None,
) -> FeaturizeSummary:
    """Featurize every structure under `source` into the graph file `out`, resuming an unfinished run.

    A complete `out` made from `source` as it is now is left as it is (its summary is returned) unless
    `overwrite`; one made from another source, or from this one before files were added, changed or
    removed, is refused (the file records its source's listing: paths, sizes, modification times).
    `out` (and OUT.partial/, removed by `overwrite`) may never be, or hold, the source or the feature
    table; `out` may lie inside the source folder, whose listing then leaves out featurize's own files.
    A second run into the same `out` while one is writing it is refused (an flock on OUT.lock).
    `backend` "dask" runs the workers on the dask.distributed cluster at `scheduler` (see backends.py).
    Local workers are `jobs` processes, never more than the cores (`backends.local_workers`) nor than the
    tasks; none outlives the run, and SIGTERM unwinds it (exit status 143) like an error. A full disk raises
    `DiskFullError` naming `out`, every file whole or absent: the same call then resumes.
    `like` (a `ModelFile`) builds the graphs that model takes: its neighbour rule, radius, max_nbr, tie
    tolerance and element table replace those of `options` and `atom_features` (its policies stay).

    `on_progress(structures, failed)` is called after each chunk with running totals.
    """
    out, source = Path(out), Path(source)
    check_source(source)  # before OUT.partial is made: a mistyped source (or a FIFO) must not pin the run
    table, table_name = _element_table(atom_features, like)
    if like is not None:
        trained = GraphSettings.from_attrs(like.graph_settings)
        options = replace(options, graph=replace(options.graph, radius=trained.radius, max_nbr=trained.max_nbr,
                                                 rule=trained.rule, tie_tolerance=trained.tie_tolerance))
    attrs = {
        **options.graph.as_attrs(),
        "feature_table_id": elements.table_id(table),
        "feature_table_name": table_name,
        "policies": json.dumps(
            {"max_atoms": options.max_atoms, "on_disorder": options.on_disorder,
             "on_isolated_atoms": options.graph.on_isolated_atoms, "min_distance": options.graph.min_distance,
             "shard_size": options.shard_size,
             # Only when set, so files written before the option existed still resume.
             **({"id_key": options.id_key} if options.id_key is not None else {}),
             **({"max_file_mb": options.max_file_mb} if options.max_file_mb != MAX_STRUCTURE_MB else {})},
            sort_keys=True,
        ),
        "source": str(Path(source).resolve()),
    }
    if not 0 < options.max_file_mb <= MAX_FILE_MB_LIMIT:  # 1e30 overflowed the readers' C sizes (a traceback)
        raise OptionError(f"`max_file_mb` must be above 0 and at most {MAX_FILE_MB_LIMIT:g} (a TB), not {options.max_file_mb}")
    check_backend(backend, scheduler)
    check_not_an_input([out, partial_dir(out), lock_path(out)], [source, atom_features])
    if out.is_dir():
        raise InputError(f"{out} is a folder; name the graph file to write")
    check_no_broken_link(out, overwrite=overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    with output_lock(out), sigterm_unwinds():
        try:
            return _featurize_locked(source, out, attrs, options, table, jobs=jobs, overwrite=overwrite,
                                     on_progress=on_progress, backend=backend, scheduler=scheduler)
        except DiskFullError as e:
            raise _disk_full(out, e) from e


def _disk_full(out: Path, error: DiskFullError) -> DiskFullError:
    """A full disk said of OUT, with what a rerun does: the parts finished before it are kept."""
    parts = partial_dir(out)
    writing = "" if error.path is None or Path(error.path) == out else f" (writing {error.path})"
    kept = f"; the finished parts stay in {parts}: free some space and run the same command again to resume" \
        if parts.is_dir() else ""
    return DiskFullError(f"{out}: no space left on device{writing}{kept}", error.path)


class ModelLike(Protocol):
    """What `featurize(like=...)` reads from a model: a `ModelFile` is one (a Protocol, so that this floor
    does not import the model's)."""

    graph_settings: dict
    state_dict: dict  # "feature_table": the element table, a CPU tensor or array
    training: dict  # "atom_features": the name of the atom_init.json of an imported CGCNN model
    source: str


def _element_table(atom_features: str | Path | None, like: ModelLike | None) -> tuple[np.ndarray, str]:
    """The element table and the name the graph file records for it: srscreen's built-in table, a CGCNN
    atom_init.json, or the table of the model `like`."""
    if like is not None:
        if atom_features is not None:
            raise OptionError("give `like` or `atom_features`, not both: `like` brings the model's element table")
        table = np.asarray(like.state_dict["feature_table"], dtype=np.float32)
        if elements.table_id(table) != elements.table_id(elements.cgcnn_feature_table()):
            return table, str(like.training.get("atom_features") or f"element table of {like.source}")
    elif atom_features is not None:
        return elements.load_atom_features(atom_features), Path(atom_features).name
    return elements.cgcnn_feature_table(), elements.BUILTIN_TABLE_NAME


def _featurize_locked(source: Path, out: Path, attrs: dict, options: FeaturizeOptions, table, *, jobs: int,
                      overwrite: bool, on_progress: Callable[[int, int], None] | None, backend: str,
                      scheduler: str | None) -> FeaturizeSummary:
    """`featurize` once it holds OUT's lock: nothing else writes OUT or OUT.partial meanwhile."""
    ignore = own_files(out)
    listing = list_source(source, ignore)
    if overwrite and out.exists():
        out.unlink()
    if out.exists():
        return _completed_summary(out, attrs, source, listing)
    writer = ShardWriter(out, attrs, options.graph.as_attrs(), options.shard_size, listing=listing, overwrite=overwrite)
    skipped: list[tuple[str, str]] = []

    def pending() -> Iterator[Item]:
        # In batches of a task's size (in structures, so that a batch of chunks of a big file is not
        # 65,536 structures held at once): one numpy lookup per batch in the compact done keys.
        for batch in _tasks(iter_inputs(source, id_key=options.id_key, ignore=ignore, max_bytes=options.max_bytes),
                            ITEMS_PER_TASK):
            skipped.extend((x.source, x.reason) for x in batch if isinstance(x, Skipped))
            items = [x for x in batch if not isinstance(x, Skipped)]
            done = writer.finished([x.key for x in items])
            yield from (item for item, finished in zip(items, done) if not finished)

    supported = elements.supported_numbers(table)
    # Parts are written between tasks: a task of more structures than shard_size would overfill the shard.
    # Sized by structures, not items: an item of a multi-structure file holds up to 256 of them, and tasks
    # of 256 such items kept ~400,000 structures in flight (7.5 GB in the parent on a 10^6 JSON-lines run).
    task_size = max(1, min(ITEMS_PER_TASK, options.shard_size))
    chunks: Iterator[list[Item]] = _tasks(pending(), task_size)
    if backend == "local":  # no more workers than cores, nor than tasks (looked ahead for: 50 files never start 1,000)
        ahead = list(islice(chunks, local_workers(jobs)))
        jobs, chunks = max(1, len(ahead)), chain(ahead, chunks)
    tasks = (delayed(featurize_items)(chunk, options, supported) for chunk in chunks)
    with compute_backend(backend, jobs=jobs, scheduler=scheduler):
        # In order: which of two inputs with the same id is "first" must not depend on worker timing.
        results = Parallel(return_as="generator", pre_dispatch="3*n_jobs", batch_size=1)(tasks)
        try:
            for result in results:
                writer.add(result.keys, result.graphs, result.failures)
                if on_progress is not None:
                    on_progress(writer.resumed_structures + writer.n_structures, writer.resumed_failed + writer.n_failed)
        finally:
            stop_workers(results)  # after an error (a full disk, SIGTERM): now, not at exit
    writer.finish(skipped)
    return FeaturizeSummary(
        structures=writer.resumed_structures + writer.n_structures,
        failed=writer.resumed_failed + writer.n_failed,
        skipped=len(skipped),
        resumed=writer.resumed_structures + writer.resumed_failed,
        out=str(out),
        redone=tuple(writer.redone),
    )
