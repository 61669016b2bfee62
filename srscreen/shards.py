"""The HDF5 graph-shard format: writing (crash-safe, resumable), consolidating, reading, validating.

Layout of a finished file (schema version 1; README documents it):

    /                     attrs: format, schema_version, srscreen_version, radius, max_nbr,
                          neighbour_algorithm, feature_table_id, feature_table_name, policies (JSON),
                          source, created, n_structures, n_failed, n_skipped
    /shards/000000/       ids, sources, formula (utf-8 strings, one per structure)
                          n_atoms int32 (one per structure; offsets are its cumulative sum)
                          atomic_numbers uint8 (one per atom, structures concatenated)
                          nbr_idx int32 (n_atoms_total, max_nbr), local to each structure
                          nbr_dist float32 (n_atoms_total, max_nbr), Å, ascending per row
    /failures/            id, source, reason (utf-8 strings): every input that has no graph
    /skipped/             source, reason: files that are not structures

While a run is in progress nothing is written to OUT itself: each full shard becomes its own file
in OUT.partial/ (written to a temporary name, then renamed), so a kill loses at most the shard being
filled. At the end the parts are copied into OUT.tmp, which is renamed to OUT: OUT exists only whole.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np

from . import __version__
from .atomic import replace_when_done
from .seen_ids import PartKeys, SeenIds

FORMAT_NAME = "srscreen-graphs"
SCHEMA_VERSION = 1
_STR = h5py.string_dtype("utf-8")
_MANIFEST = "manifest.json"


class ShardFileError(ValueError):
    """A graph file that cannot be used (missing, corrupt, wrong format or schema)."""


@dataclass(frozen=True)
class GraphRecords:
    """Featurized structures in CSR layout: the unit that travels from workers to the writer."""

    ids: list[str]
    sources: list[str]
    formula: list[str]
    n_atoms: np.ndarray  # int32 (n_structures,)
    atomic_numbers: np.ndarray  # uint8 (n_atoms_total,)
    nbr_idx: np.ndarray  # int32 (n_atoms_total, max_nbr)
    nbr_dist: np.ndarray  # float32 (n_atoms_total, max_nbr)

    def __len__(self) -> int:
        return len(self.ids)

    def select(self, keep: np.ndarray) -> "GraphRecords":
        """The structures where `keep` is True (atom rows follow their structure)."""
        atoms = np.repeat(keep, self.n_atoms)
        pick = np.flatnonzero(keep)
        return GraphRecords(
            [self.ids[i] for i in pick], [self.sources[i] for i in pick], [self.formula[i] for i in pick],
            self.n_atoms[keep], self.atomic_numbers[atoms], self.nbr_idx[atoms], self.nbr_dist[atoms],
        )

    @staticmethod
    def concat(runs: list["GraphRecords"]) -> "GraphRecords":
        return GraphRecords(
            [x for r in runs for x in r.ids], [x for r in runs for x in r.sources], [x for r in runs for x in r.formula],
            *(np.concatenate([getattr(r, name) for r in runs]) for name in ("n_atoms", "atomic_numbers", "nbr_idx", "nbr_dist")),
        )


@dataclass(frozen=True)
class Failure:
    id: str
    source: str
    reason: str


def partial_dir(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def start_parts(out: Path, attrs: dict, overwrite: bool) -> Path:
    """Create or reopen OUT.partial; refuse to resume a run made with other settings."""
    parts = partial_dir(out)
    if overwrite and parts.exists():
        shutil.rmtree(parts)
    parts.mkdir(parents=True, exist_ok=True)
    manifest = parts / _MANIFEST
    if manifest.exists():
        before = json.loads(manifest.read_text())
        if before != attrs:
            changed = ", ".join(f"{k}: {before.get(k)!r} -> {attrs.get(k)!r}" for k in attrs if before.get(k) != attrs.get(k))
            raise ShardFileError(f"{parts} holds a run with other settings ({changed}); use --overwrite to start over")
    else:
        _atomic_write_text(manifest, json.dumps(attrs, sort_keys=True))
    return parts


def _atomic_write_text(path: Path, text: str) -> None:
    with replace_when_done(path) as tmp:
        tmp.write_text(text)


def _write_strings(group: h5py.Group, name: str, values: list[str]) -> None:
    group.create_dataset(name, data=np.array(values, dtype=object), dtype=_STR)


def _write_graphs(group: h5py.Group, records: GraphRecords) -> None:
    _write_strings(group, "ids", records.ids)
    _write_strings(group, "sources", records.sources)
    _write_strings(group, "formula", records.formula)
    for name in ("n_atoms", "atomic_numbers", "nbr_idx", "nbr_dist"):
        group.create_dataset(name, data=getattr(records, name))


def write_part(parts: Path, index: int, records: GraphRecords, failures: list[Failure], done_keys: list[str]) -> None:
    """One shard's worth of results as its own file, renamed into place only once complete."""
    with replace_when_done(part_path(parts, index)) as tmp, h5py.File(tmp, "w") as f:
        if len(records):
            _write_graphs(f.create_group("graphs"), records)
        _write_failures(f.create_group("failures"), failures)
        _write_strings(f, "done_keys", done_keys)


def _write_failures(group: h5py.Group, failures: list[Failure]) -> None:
    for name in ("id", "source", "reason"):
        _write_strings(group, name, [getattr(x, name) for x in failures])


def _strings(ds: h5py.Dataset) -> list[str]:
    return [s.decode("utf-8") if isinstance(s, bytes) else s for s in ds[()]]


def part_path(parts: Path, index: int) -> Path:
    return parts / f"part-{index:06d}.h5"


def read_part_ids(parts: Path, index: int) -> tuple[list[str], list[str]]:
    """The ids and sources of the structures in one part file."""
    with h5py.File(part_path(parts, index), "r") as f:
        if "graphs" not in f:
            return [], []
        return _strings(f["graphs/ids"]), _strings(f["graphs/sources"])


def read_part_done_keys(parts: Path, index: int) -> tuple[list[str], list[str]]:
    """The input keys one part file finished, twice: PartKeys' (strings, values) with each key its own value."""
    with h5py.File(part_path(parts, index), "r") as f:
        keys = _strings(f["done_keys"])
    return keys, keys


@dataclass
class PartsState:
    """What finished parts already hold: how a resumed run knows what to skip."""

    next_index: int
    done_keys: PartKeys  # `key in done_keys`: 8 bytes per key, not a set of ~150-byte paths (10^7 inputs)
    seen_ids: SeenIds  # every id in the parts, to catch a later input with one of them
    n_structures: int
    n_failed: int


def read_parts_state(parts: Path) -> PartsState:
    done_keys = PartKeys(lambda index: read_part_done_keys(parts, index))
    state = PartsState(0, done_keys, SeenIds(lambda index: read_part_ids(parts, index)), 0, 0)
    for tmp in parts.glob("*.tmp"):
        tmp.unlink()  # a shard that was being written when the run was killed
    for path in sorted(parts.glob("part-*.h5")):
        index = int(path.stem.split("-")[1])
        with h5py.File(path, "r") as f:
            state.done_keys.load_part(index, _strings(f["done_keys"]))
            if "graphs" in f:
                ids = _strings(f["graphs/ids"])
                state.seen_ids.load_part(index, ids)
                state.n_structures += len(ids)
            state.n_failed += len(f["failures/id"])
        state.next_index = max(state.next_index, index + 1)
    return state


def consolidate(out: Path, parts: Path, attrs: dict, skipped: list[tuple[str, str]]) -> None:
    """Copy every part into OUT.tmp, then rename it to OUT; remove the parts."""
    failures: dict[str, list[str]] = {"id": [], "source": [], "reason": []}
    n_structures = 0
    with replace_when_done(out) as tmp, h5py.File(tmp, "w") as f:
        shards = f.create_group("shards")
        for path in sorted(parts.glob("part-*.h5")):
            with h5py.File(path, "r") as part:
                if "graphs" in part:
                    name = f"{len(shards):06d}"
                    part.copy(part["graphs"], shards, name=name)
                    n_structures += len(shards[name]["ids"])
                for key in failures:
                    failures[key].extend(_strings(part["failures"][key]))
        _write_failures(f.create_group("failures"), [Failure(*row) for row in zip(*failures.values())])
        group = f.create_group("skipped")
        _write_strings(group, "source", [s for s, _ in skipped])
        _write_strings(group, "reason", [r for _, r in skipped])
        f.attrs.update(
            {
                **attrs,
                "format": FORMAT_NAME,
                "schema_version": SCHEMA_VERSION,
                "srscreen_version": __version__,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "n_structures": n_structures,
                "n_failed": len(failures["id"]),
                "n_skipped": len(skipped),
            }
        )
    shutil.rmtree(parts)


def settings_differ(expected: dict, actual: dict) -> bool:
    """Whether graphs with `actual` settings differ from what a model `expected`, on the keys the model
    records (model files from before a key existed, or converted CGCNN ones, do not constrain it)."""
    return any(actual.get(k) != v for k, v in expected.items())


@dataclass(frozen=True)
class Shard:
    """One shard's arrays in memory (CSR: per-structure n_atoms, per-atom rows)."""

    ids: list[str]
    formula: list[str]
    n_atoms: np.ndarray
    atomic_numbers: np.ndarray
    nbr_idx: np.ndarray
    nbr_dist: np.ndarray


class GraphFile:
    """Read access to a finished graph file: settings, counts, failures, and shards one at a time."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.exists():
            partial = partial_dir(self.path)
            hint = f" (an unfinished run is in {partial}: rerun featurize to finish it)" if partial.exists() else ""
            raise ShardFileError(f"{self.path}: no such file{hint}")
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as e:
            raise ShardFileError(f"{self.path}: not a readable HDF5 file ({' '.join(str(e).split())})") from None
        attrs = self._file.attrs
        if attrs.get("format") != FORMAT_NAME:
            raise ShardFileError(f"{self.path}: not an srscreen graph file")
        if int(attrs["schema_version"]) > SCHEMA_VERSION:
            raise ShardFileError(
                f"{self.path}: schema version {attrs['schema_version']} is newer than this srscreen reads "
                f"({SCHEMA_VERSION}); upgrade srscreen"
            )
        self.attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in attrs.items()}
        self.shard_names = sorted(self._file["shards"].keys())

    def __enter__(self) -> "GraphFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    @property
    def graph_settings(self) -> dict:
        """What decides the graphs, as model files record it."""
        return {"radius": float(self.attrs["radius"]), "max_nbr": int(self.attrs["max_nbr"]),
                "neighbour_algorithm": str(self.attrs["neighbour_algorithm"])}

    def __len__(self) -> int:
        return int(self.attrs["n_structures"])

    def shard_sizes(self) -> list[int]:
        return [len(self._file["shards"][name]["n_atoms"]) for name in self.shard_names]

    def read_shard(self, index: int) -> Shard:
        g = self._file["shards"][self.shard_names[index]]
        return Shard(
            ids=_strings(g["ids"]),
            formula=_strings(g["formula"]),
            n_atoms=g["n_atoms"][()],
            atomic_numbers=g["atomic_numbers"][()],
            nbr_idx=g["nbr_idx"][()],
            nbr_dist=g["nbr_dist"][()],
        )

    def iter_shards(self, start: int = 0, stop: int | None = None) -> Iterator[Shard]:
        for i in range(start, len(self.shard_names) if stop is None else stop):
            yield self.read_shard(i)

    def ids(self) -> Iterator[str]:
        for name in self.shard_names:
            yield from _strings(self._file["shards"][name]["ids"])

    def failures(self) -> list[Failure]:
        g = self._file["failures"]
        return [Failure(*row) for row in zip(_strings(g["id"]), _strings(g["source"]), _strings(g["reason"]))]

    def skipped(self) -> list[tuple[str, str]]:
        g = self._file["skipped"]
        return list(zip(_strings(g["source"]), _strings(g["reason"])))
