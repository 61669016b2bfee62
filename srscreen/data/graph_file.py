"""The HDF5 graph file: its format, reading shards with their damage checks, and the model fit check.

Layout of a finished file (schema version 2; docs/guides/graph-file.md documents it):

    /                     attrs: format, schema_version, srscreen_version, radius, max_nbr,
                          neighbour_algorithm, tie_tolerance, feature_table_id, feature_table_name,
                          policies (JSON), source, created, n_structures, n_failed, n_skipped, crc32,
                          source_files, source_bytes, source_digest (the source's fingerprint; absent in
                          files written before srscreen kept one, which still read)
    /shards/000000/       ids, sources, formula (utf-8 strings, one per structure)
                          n_atoms int32 (one per structure; atom offsets are its cumulative sum)
                          atomic_numbers uint8 (one per atom, structures concatenated)
                          n_edges int32 (one per atom; edge offsets are its cumulative sum)
                          nbr_idx int32 (one per edge), local to each structure
                          nbr_dist float32 (one per edge), Å, ascending within each atom
    /failures/            id, source, reason (utf-8 strings): every input that has no graph
    /skipped/             source, reason: files that are not structures
    /source_listing/      path_hashes, entry_hashes uint64: one per source file (`io.fingerprint`)

Every dataset carries the CRC-32 of its contents and the root attributes theirs (`integrity`); a
shard read is checked against them and for structure (`check_graphs`), so a damaged file stops with
one line naming the shard instead of ranking garbage. Version 1 (a fixed 12 neighbours per atom, no
checksums) is refused with a message saying to featurize again.

`shard_writer` writes these files (crash-safe and resumable: OUT exists only whole).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np

from srscreen.errors import ShardFileError, one_line
from srscreen.graph.csr import Graphs
from srscreen.io.fingerprint import SourceListing
from srscreen.graph.settings import LEGACY_ALGORITHM, rule_of
from srscreen.data.integrity import CRC_ATTR, DamagedDataError, attrs_checksum, read_checked

FORMAT_NAME = "srscreen-graphs"
SCHEMA_VERSION = 2
GRAPH_ARRAYS = ("n_atoms", "atomic_numbers", "n_edges", "nbr_idx", "nbr_dist")
MAX_Z = 118
LISTING_GROUP = "source_listing"


class DamagedShardError(ShardFileError):
    """One shard of a graph file fails its checksums or its structural checks."""

    def __init__(self, path: Path, shard: str, reason: str) -> None:
        super().__init__(f"{path}: shard {shard} is damaged: {reason}")
        self.shard, self.reason = shard, reason


@dataclass(frozen=True)
class Failure:
    id: str
    source: str
    reason: str


def partial_dir(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def read_listing(f: h5py.Group) -> SourceListing | None:
    """The source fingerprint a graph file (or OUT.partial's copy of it) holds; None where srscreen did not
    keep one yet. Raises DamagedDataError when it fails its checksums."""
    if LISTING_GROUP not in f:
        return None
    g = f[LISTING_GROUP]
    return SourceListing(int(f.attrs["source_files"]), int(f.attrs["source_bytes"]), str(f.attrs["source_digest"]),
                         read_checked(g, "path_hashes"), read_checked(g, "entry_hashes"))


def read_failures(group: h5py.Group) -> list[Failure]:
    return [Failure(*row) for row in zip(*(read_checked(group, name) for name in ("id", "source", "reason")))]


def read_graphs(group: h5py.Group, settings: dict, *, sources: bool = False) -> Graphs:
    """A group of graph datasets (a shard, or a part file's graphs), each checked against its checksum,
    then the whole for structure; with `sources`, the source paths too (which predict never reads).
    Raises DamagedDataError naming what is wrong."""
    ids, formula = read_checked(group, "ids"), read_checked(group, "formula")
    paths = read_checked(group, "sources") if sources else []
    arrays = [read_checked(group, key) for key in GRAPH_ARRAYS]
    reason = check_graphs(*arrays, settings)
    if reason is None and not (len(ids) == len(formula) == len(arrays[0])):
        reason = "ids, formula and n_atoms differ in length"
    if reason is None and sources and len(paths) != len(ids):
        reason = "sources and ids differ in length"
    if reason is not None:
        raise DamagedDataError(reason)
    return Graphs(*arrays, ids=ids, formula=formula, sources=paths)


def check_graphs(n_atoms: np.ndarray, atomic_numbers: np.ndarray, n_edges: np.ndarray, nbr_idx: np.ndarray,
                 nbr_dist: np.ndarray, settings: dict) -> str | None:
    """Why these CSR graphs cannot be what featurize wrote (None when they can): counts consistent,
    every neighbour inside its own structure, distances finite, positive and within the radius (or
    CGCNN's padding), atomic numbers real. Vectorised, O(edges)."""
    if n_atoms.ndim != 1 or atomic_numbers.ndim != 1 or n_edges.ndim != 1 or nbr_idx.ndim != 1 or nbr_dist.ndim != 1:
        return "arrays of the wrong shape"
    if len(n_atoms) and int(n_atoms.min()) < 1:
        return "a structure with no atoms"
    if int(n_atoms.sum(dtype=np.int64)) != len(atomic_numbers) or len(n_edges) != len(atomic_numbers):
        return f"n_atoms sums to {int(n_atoms.sum(dtype=np.int64))} but there are {len(atomic_numbers)} atomic numbers and {len(n_edges)} edge counts"
    if len(n_edges) and int(n_edges.min()) < 0:
        return "a negative edge count"
    if int(n_edges.sum(dtype=np.int64)) != len(nbr_idx) or len(nbr_dist) != len(nbr_idx):
        return f"n_edges sums to {int(n_edges.sum(dtype=np.int64))} but there are {len(nbr_idx)} neighbour indices and {len(nbr_dist)} distances"
    if len(atomic_numbers) and not (1 <= int(atomic_numbers.min()) and int(atomic_numbers.max()) <= MAX_Z):
        return "atomic numbers outside 1-118"
    size_of_edge = np.repeat(np.repeat(n_atoms, n_atoms), n_edges)
    if len(nbr_idx) and ((nbr_idx < 0) | (nbr_idx >= size_of_edge)).any():
        return "a neighbour index outside its structure"
    radius = float(settings["radius"])
    limit = radius + float(settings.get("tie_tolerance", 0.0)) + 1e-3
    bad = ~np.isfinite(nbr_dist) | (nbr_dist <= 0) | (nbr_dist > limit)
    if rule_of(settings.get("neighbour_algorithm", LEGACY_ALGORITHM)) == "cgcnn":  # CGCNN pads short atoms at radius + 1
        bad &= nbr_dist != np.float32(radius + 1.0)
    if bad.any():
        return f"a neighbour distance that is not finite, positive and within the {radius} Å radius"
    return None


def check_fits_model(graph_path: Path, graph_settings: dict, table_id: str, model: str, model_settings: dict,
                     model_table_id: str, table_name: str | None = None) -> None:
    """Refuse graphs built with other settings or another element table than a model was trained on:
    the one check that graphs fit a model, for predict, train, finetune and evaluate alike.

    Only the keys the model records count; a model file without a neighbour algorithm predates the
    knn-ties rule, so its graphs were CGCNN's."""
    expected = {"neighbour_algorithm": LEGACY_ALGORITHM, **model_settings}
    changed = [f"{k} {graph_settings.get(k)!r} (model: {v!r})" for k, v in expected.items() if graph_settings.get(k) != v]
    if changed:
        raise ShardFileError(f"{graph_path} has graphs built with {', '.join(changed)} for model {model}; "
                             f"featurize again with `like={model}` (or {_settings_text(expected)})")
    if table_id != model_table_id:
        named = f" ({table_name})" if table_name else ""
        raise ShardFileError(f"{graph_path} uses element table {table_id}{named}, but model {model} expects {model_table_id}; "
                             f"featurize again with `like={model}` (or the model's table, `atom_features`)")


def _settings_text(settings: dict) -> str:
    """The graph settings a model needs, as `GraphSettings` parameters (the CLI shows them as flags)."""
    rule = rule_of(settings["neighbour_algorithm"])
    names = [f"`radius={settings['radius']}`", f"`max_nbr={settings['max_nbr']}`"]
    if rule is not None:
        names.append(f"`rule='{rule}'`")
    if "tie_tolerance" in settings:
        names.append(f"`tie_tolerance={settings['tie_tolerance']}`")
    return " ".join(names)


class GraphFile:
    """Read access to a finished graph file: settings, counts, failures, and shards one at a time.

    Every read is checked (`integrity`, `check_graphs`): a damaged shard raises `DamagedShardError`.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.exists():
            partial = partial_dir(self.path)
            hint = f" (an unfinished run is in {partial}: rerun featurize to finish it)" if partial.exists() else ""
            raise ShardFileError(f"{self.path}: no such file{hint}")
        if self.path.is_dir():
            raise ShardFileError(f"{self.path}: a folder, not a graph file (give the .h5 file `srscreen featurize` wrote)")
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as e:
            # h5py's message wraps the reason in its call ("Unable to synchronously open file (...)") and, for a
            # system error, a dump of its arguments: the system's reason alone is the one line to show.
            reason = os.strerror(e.errno) if e.errno else (
                one_line(e).removeprefix("Unable to synchronously open file (").removesuffix(")"))
            raise ShardFileError(f"{self.path}: not a readable HDF5 file ({reason})") from None
        try:
            self._open()
        except ShardFileError:
            self._file.close()
            raise
        except (OSError, KeyError, ValueError, TypeError, RuntimeError) as e:
            self._file.close()
            raise ShardFileError(f"{self.path}: damaged graph file ({one_line(e, 160)})") from None

    def _open(self) -> None:
        attrs = dict(self._file.attrs)
        if attrs.get("format") != FORMAT_NAME:
            raise ShardFileError(f"{self.path}: not an srscreen graph file")
        version = int(attrs.get("schema_version", 0))
        if version < SCHEMA_VERSION:
            raise ShardFileError(
                f"{self.path}: graph file schema version {version} (a fixed {attrs.get('max_nbr')} neighbours per atom, "
                f"no checksums); this srscreen reads version {SCHEMA_VERSION}: run featurize again "
                f"(with `rule='cgcnn'` for models imported from CGCNN)"
            )
        if version > SCHEMA_VERSION:
            raise ShardFileError(
                f"{self.path}: schema version {version} is newer than this srscreen reads "
                f"({SCHEMA_VERSION}); upgrade srscreen"
            )
        if int(attrs.get(CRC_ATTR, -1)) != attrs_checksum(attrs):
            raise ShardFileError(f"{self.path}: damaged graph file (root attributes do not match their checksum)")
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
        settings = {"radius": float(self.attrs["radius"]), "max_nbr": int(self.attrs["max_nbr"]),
                    "neighbour_algorithm": str(self.attrs["neighbour_algorithm"])}
        if "tie_tolerance" in self.attrs:
            settings["tie_tolerance"] = float(self.attrs["tie_tolerance"])
        return settings

    def __len__(self) -> int:
        return int(self.attrs["n_structures"])

    def shard_sizes(self) -> list[int]:
        """Structures per shard, as the ids' lengths say (0 where even that is unreadable: a damaged
        shard; reading it tells what is wrong)."""
        return [self._shard_len(name) for name in self.shard_names]

    def _shard_len(self, name: str) -> int:
        try:
            return len(self._file["shards"][name]["ids"])
        except (OSError, KeyError, ValueError, TypeError, RuntimeError):
            return 0

    def read_shard(self, index: int, *, sources: bool = False) -> Graphs:
        """Shard `index`, checked (`read_graphs`)."""
        name = self.shard_names[index]
        try:
            return read_graphs(self._file["shards"][name], self.graph_settings, sources=sources)
        except DamagedDataError as e:
            raise DamagedShardError(self.path, name, str(e)) from None
        except (OSError, KeyError, ValueError, TypeError, RuntimeError) as e:
            raise DamagedShardError(self.path, name, f"unreadable ({one_line(e, 120)})") from None

    def shard_ids(self, index: int) -> list[str] | None:
        """The ids of shard `index` when they are intact (None otherwise): what a skipped shard held."""
        try:
            return read_checked(self._file["shards"][self.shard_names[index]], "ids")
        except (DamagedDataError, OSError, KeyError, ValueError):
            return None

    def iter_shards(self, start: int = 0, stop: int | None = None) -> Iterator[Graphs]:
        for i in range(start, len(self.shard_names) if stop is None else stop):
            yield self.read_shard(i)

    def ids(self) -> Iterator[str]:
        for index, name in enumerate(self.shard_names):
            ids = self.shard_ids(index)
            if ids is None:
                raise DamagedShardError(self.path, name, "ids do not match their checksum")
            yield from ids

    def failures(self) -> list[Failure]:
        try:
            return read_failures(self._file["failures"])
        except (DamagedDataError, KeyError, OSError) as e:
            raise ShardFileError(f"{self.path}: damaged failure table ({e})") from None

    def source_listing(self) -> SourceListing | None:
        """The fingerprint of the source this file was made from (None: a file from before srscreen kept one)."""
        try:
            return read_listing(self._file)
        except (DamagedDataError, KeyError, OSError) as e:
            raise ShardFileError(f"{self.path}: damaged source listing ({e})") from None

    def skipped(self) -> list[tuple[str, str]]:
        try:
            g = self._file["skipped"]
            return list(zip(read_checked(g, "source"), read_checked(g, "reason")))
        except (DamagedDataError, KeyError, OSError) as e:
            raise ShardFileError(f"{self.path}: damaged skipped-file table ({e})") from None

    def verify(self) -> list[tuple[str, int, str | None]]:
        """Every shard checked in full: (shard, structures, reason it is damaged or None); then the
        failure and skipped tables as one row each."""
        report: list[tuple[str, int, str | None]] = []
        for index, name in enumerate(self.shard_names):
            try:
                report.append((name, len(self.read_shard(index, sources=True).ids), None))
            except DamagedShardError as e:
                report.append((name, len(self.shard_ids(index) or []), e.reason))
        for table, read in (("failures", self.failures), ("skipped", self.skipped)):
            try:
                report.append((table, len(read()), None))
            except ShardFileError as e:
                report.append((table, 0, str(e).split(": ", 1)[-1]))
        return report
