"""Stream graph shards through one or more models and rank the crystals.

Shards are read by a background thread while the device computes, so the models wait on the file
only when the file is the bottleneck. On CPU that thread also merges each shard's equivalent atoms
(`equivalent_atoms`), so the models convolve each class once. Batches are cut by node count (classes,
or atoms on a GPU), moved to the device once, and every model runs on that one copy. With `top`, only the best `top` rows
survive each shard (a bounded selection), so memory is O(top + one shard) whatever the file size.
"""

from __future__ import annotations

import os
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, TypeVar

import numpy as np
import torch

from srscreen.model.allocator import reuse_freed_memory
from srscreen.data.batch import collate, pack_by_atoms, with_atoms
from srscreen.model.model_file import FORMATION_ENERGY_TARGETS, ModelFile
from srscreen.model.registry import resolve_model
from srscreen.model.compiled import Compiled
from srscreen.graph.equivalent_atoms import quotient, unmerged
from srscreen.data.graph_file import DamagedShardError, GraphFile, check_fits_model
from srscreen.graph.csr import Graphs
from srscreen.model.columns import FIXED_COLUMNS, HULL_COLUMNS
from srscreen.screening.ranking import Condition, Ranking, check_columns, check_top
from srscreen.errors import OptionError

if TYPE_CHECKING:  # pymatgen's phase diagrams take ~0.8 s to import: only runs with --hull pay it
    from srscreen.screening.hull import ReferenceHull


def pick_device(name: str) -> torch.device:
    """`auto` is the first CUDA device when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise OptionError(f"--device {name!r}: write auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise OptionError(f"--device {name}: CUDA is not available on this machine")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise OptionError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def check_compatible(graphs: GraphFile, models: list[ModelFile]) -> None:
    """Refuse graphs that a model was not trained on."""
    for m in models:
        check_fits_model(graphs.path, graphs.graph_settings, str(graphs.attrs["feature_table_id"]), str(m.source),
                         m.graph_settings, m.feature_table_id, str(graphs.attrs["feature_table_name"]))


def model_files(models: object) -> list[ModelFile]:
    """The Python API's `models` as model files: each may be a ModelFile, a `srscreen.load_model` Model, a
    pretrained name or a path (`resolve_model`); one alone needs no list. Anything else is refused in one
    line, not an AttributeError deep in the ranking."""
    if isinstance(models, (str, os.PathLike, ModelFile)) or hasattr(models, "file"):
        models = [models]
    if not isinstance(models, (list, tuple)):
        raise OptionError(f"`models` must be a list of model files, names or loaded models, "
                          f"not {type(models).__name__}")
    files = []
    for m in models:
        m = getattr(m, "file", m)  # a srscreen.load_model Model carries its ModelFile
        if isinstance(m, (str, os.PathLike)):
            m = resolve_model(os.fspath(m))
        if not isinstance(m, ModelFile):
            raise OptionError(f"`models`: {m!r} is not a model (give a ModelFile, a srscreen.load_model(...) Model, "
                              "a pretrained name or a model file's path)")
        files.append(m)
    return files


def check_targets(models: list[ModelFile]) -> None:
    """Refuse two models of one target, or a column that another already is: a ranking has one column per
    name (a model of a target named p_stable had its values replaced by --hull's, silently)."""
    targets = [t for m in models for t in m.targets]
    twice = sorted({t for t in targets if targets.count(t) > 1})
    if twice:
        raise OptionError(f"two models predict {', '.join(twice)} ({', '.join(str(m.source) for m in models)}); "
                          "give each target once")
    taken = [*FIXED_COLUMNS, *HULL_COLUMNS]
    for m in models:
        others = taken + [c for other in models if other is not m for c in other.columns]
        for column in (c for c in m.columns if c in others):
            raise OptionError(f"{m.source} writes a column {column!r}, which the ranking has already "
                              f"({', '.join(taken)}, and each target and its _std); train it under another target name")


# Structures from which compiling pays back its one-off cost on CPU: 7-12 s against ~0.07 ms saved each
# (benchmarks/predict.py, Ef + Eg, 2 threads).
COMPILE_FROM_STRUCTURES = 150_000

# Crystals per piece that the reader thread merges and hands to the model on CPU.
MERGE_PIECE = 1024

T = TypeVar("T")


def _prefetch(items: Iterator[T], depth: int = 2) -> Iterator[T]:
    """Run `items` on a background thread: reading shards (HDF5 I/O, decompression) and merging their
    equivalent atoms (numpy, which releases the GIL in its larger loops) overlap with the model."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()

    def reader() -> None:
        try:
            for item in items:
                q.put(item)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised there
            q.put(e)
        q.put(done)

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    while (item := q.get()) is not done:
        if isinstance(item, BaseException):
            raise item
        yield item


def batch_atoms_for(device: torch.device, batch_atoms: int | None) -> int:
    """The atoms per batch asked for (at least 1), or by default what suits the device: 1,024 nodes
    (atoms, or classes of them) keep a CPU's working set in cache (measured fastest on atoms); a GPU
    wants large batches."""
    if batch_atoms is None:
        return 32768 if device.type == "cuda" else 1024
    if isinstance(batch_atoms, bool) or not isinstance(batch_atoms, (int, np.integer)) or batch_atoms < 1:
        raise OptionError(f"`batch_atoms` must be a whole number of at least 1, not {batch_atoms!r}")
    return int(batch_atoms)


def predict_shard(q: Graphs, nets: list[torch.nn.Module], models: list[ModelFile], device: torch.device,
                  batch_atoms: int) -> dict[str, np.ndarray]:
    """Every model's columns (`ModelFile.values`: its prediction in its unit, and an ensemble's spread) for
    every crystal of one shard, given as its `quotient`: each class of equivalent atoms is convolved once
    (2.3x fewer than atoms on Materials Project)."""
    outputs: list[list[torch.Tensor]] = [[] for _ in models]
    dense_width = int(models[0].graph_settings["max_nbr"])  # most atoms have exactly max_nbr edges (`collate`)
    node_starts = np.concatenate([[0], np.cumsum(q.n_nodes)])
    atom_starts = np.concatenate([[0], np.cumsum(q.n_atoms)])
    edge_starts = np.concatenate([[0], np.cumsum(q.n_edges)])
    cuda = device.type == "cuda"
    for run in pack_by_atoms(q.n_nodes, batch_atoms):
        a, b = node_starts[run.start], node_starts[run.stop]
        batch = collate(q.n_nodes[run], q.atomic_numbers[a:b], q.n_edges[a:b],
                        q.nbr_idx[edge_starts[a] : edge_starts[b]], q.nbr_dist[edge_starts[a] : edge_starts[b]],
                        dense_width=dense_width)
        if q.node_of_atom is not None:
            atoms = q.node_of_atom[atom_starts[run.start] : atom_starts[run.stop]]
            batch = with_atoms(batch, q.n_nodes[run], q.n_atoms[run], atoms)
        batch = (batch.pin_memory() if cuda else batch).to(device, non_blocking=cuda)
        for net, out in zip(nets, outputs):
            out.append(net(batch))  # stays on the device: no sync until the shard is done
    columns: dict[str, np.ndarray] = {}
    elemental = torch.from_numpy(q.elemental)
    for m, out in zip(models, outputs):
        # (crystals, heads) for a model, (members, crystals, heads) for an ensemble.
        empty = (m.n_members, 0, m.n_heads) if m.members else (0, m.n_heads)
        joined = torch.cat(out, dim=-2) if out else torch.zeros(empty)
        columns.update({k: v.numpy() for k, v in m.values(joined.cpu().double(), elemental).items()})
    return columns


def predict(
    graph_path: str | Path,
    models: list[ModelFile | str],
    *,
    top: int | None = None,
    sort_by: str | None = None,
    descending: bool = False,
    where: list[Condition | str] = (),
    device: str = "auto",
    batch_atoms: int | None = None,
    shards: tuple[int, int | None] = (0, None),
    compile: bool | None = None,
    on_shard: Callable[[int], None] | None = None,
    on_damaged: Callable[[DamagedShard], None] | None = None,
    hull: ReferenceHull | bool | None = None,
) -> Ranking:
    """Predict every crystal of a graph file with `models` and rank them by `sort_by`.

    `models` are model files, `srscreen.load_model` Models, pretrained names or paths (`model_files`);
    `where` conditions or their text ('band_gap>=1'). `sort_by` defaults to the first model's target,
    ascending (lowest formation energy first).
    `on_shard(n_structures)` is called after each shard (on CPU, each piece of `MERGE_PIECE` crystals).
    A damaged shard raises `DamagedShardError`,
    unless `on_damaged` is given: then it is skipped and handed to `on_damaged` with the ids it held
    (when those are intact), so nothing is lost silently. `compile` runs the models through
    torch.compile (~1.2x faster on CPU after a ~7-60 s one-off compile); None decides by file size.
    With `hull` (True: the shipped reference), the predicted formation energy is also placed against that
    reference hull: column `e_above_hull` (eV/atom), and a note for each row it cannot place (an element
    outside the reference); where the formation energy has a spread, also `p_stable` (`probability_stable`).
    """
    models = model_files(models)
    if not models:
        raise OptionError("no model given")
    if isinstance(hull, bool):  # from Python, as --hull: the shipped reference
        from srscreen.screening.hull import default_reference

        hull = default_reference() if hull else None
    if hull is not None and not hasattr(hull, "e_above_hull"):
        raise OptionError(f"`hull` must be True or a ReferenceHull (srscreen.screening.hull), not {hull!r}")
    where = [Condition.parse(c) if isinstance(c, str) else c for c in ([where] if isinstance(where, str) else where)]
    check_targets(models)
    targets = [t for m in models for t in m.targets]
    energy = next((t for t in targets if t in FORMATION_ENERGY_TARGETS), None)
    if hull is not None and energy is None:
        raise OptionError(f"--hull needs a formation-energy model (targets: {', '.join(targets)})")
    columns = [c for m in models for c in m.columns]
    # With a spread of the formation energy, the probability that the crystal is on or below the hull.
    stability = ["e_above_hull", *(["p_stable"] if f"{energy}_std" in columns else [])] if hull is not None else []
    outputs = [*columns, *stability]
    sort_by = sort_by or targets[0]
    check_columns([*outputs, "n_atoms"], sort_by, where)  # before any work, even when the chosen shards are empty
    check_top(top)
    dev = pick_device(device)
    batch_atoms = batch_atoms_for(dev, batch_atoms)
    reuse_freed_memory()
    with GraphFile(graph_path) as graphs:
        check_compatible(graphs, models)
        start, stop = shards
        n_shards = len(graphs.shard_names)
        if not (0 <= start <= (n_shards if stop is None else stop) <= n_shards):
            raise OptionError(f"--shards {start}:{stop}: the file has shards 0:{n_shards}")
        if compile is None:
            compile = len(graphs) >= COMPILE_FROM_STRUCTURES
        nets = [Compiled(m.build_network().to(dev).eval()) if compile else m.build_network().to(dev).eval() for m in models]
        parts: list[Ranking] = []
        with torch.inference_mode():
            steps = max(m.architecture["steps"] for m in models)
            merge = (lambda s: quotient(s, steps)) if dev.type == "cpu" else unmerged
            # On CPU the reader thread merges equivalent atoms; in pieces, the model waits for one piece's
            # merge at the start, not a whole shard's (1.5-1.7 s of a 7 s run of 20,000 structures).
            piece = MERGE_PIECE if dev.type == "cpu" else None
            for index, shard, q in _prefetch(_read_shards(graphs, start, stop, merge, on_damaged is not None, piece)):
                if isinstance(shard, DamagedShardError):
                    on_damaged(DamagedShard(shard.shard, shard.reason, graphs.shard_ids(index)))
                    continue
                values = predict_shard(q, nets, models, dev, batch_atoms)
                notes = None
                if hull is not None:
                    values["e_above_hull"], placed = hull.e_above_hull(shard.formula, values[energy])
                    if "p_stable" in stability:
                        values["p_stable"] = probability_stable(values["e_above_hull"], values[f"{energy}_std"])
                    notes = [note or "" for note in placed]
                rows = Ranking(shard.ids, shard.formula, shard.n_atoms.astype(np.int64), values, notes)
                parts.append(rows.where(where))
                if top is not None:  # keep at most `top` rows between shards
                    merged = Ranking.concat(parts, outputs, hull is not None)
                    parts = [merged.top(sort_by, top, descending) if len(merged) > top else merged]
                if on_shard is not None:
                    on_shard(len(shard.ids))
    return Ranking.concat(parts, outputs, hull is not None).top(sort_by, top, descending)


@dataclass(frozen=True)
class DamagedShard:
    """A shard that predict skipped: its name, what is wrong, and its ids (None when they are damaged too)."""

    shard: str
    reason: str
    ids: list[str] | None


def probability_stable(e_above_hull: np.ndarray, std: np.ndarray) -> np.ndarray:
    """P(E_above_hull <= 0) when the true formation energy is Normal(predicted, std²): the reference hull
    is fixed, so E_above_hull moves one for one with Ef and the probability is Φ(-e / std). A zero std
    gives 1 on or below the hull and 0 above it; NaN stays NaN."""
    from scipy.special import ndtr

    e, std = np.asarray(e_above_hull, dtype=np.float64), np.asarray(std, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = ndtr(-e / std)
    return np.where(std > 0, p, np.where(np.isnan(e), np.nan, (e <= 0).astype(np.float64)))


def _read_shards(graphs: GraphFile, start: int, stop: int | None, merge: Callable[[Graphs], Graphs], skip: bool,
                 piece: int | None = None):
    """(index, graphs, quotient) per shard, or per `piece` crystals of it; with `skip`, a damaged shard comes
    as (index, error, None)."""
    for index in range(start, len(graphs.shard_names) if stop is None else stop):
        try:
            shard = graphs.read_shard(index)
        except DamagedShardError as e:
            if not skip:
                raise
            yield index, e, None
            continue
        if piece is None or len(shard.ids) <= piece:
            yield index, shard, merge(shard)
            continue
        for start in range(0, len(shard.ids), piece):  # the model starts on the first piece, not the whole shard
            part = shard.take(np.arange(start, min(start + piece, len(shard.ids))))
            yield index, part, merge(part)
