"""Writing a graph file: crash-safe, resumable, every input accounted for.

While a run is in progress nothing is written to OUT itself: each full shard becomes its own file in
OUT.partial/ (written to a temporary name, then renamed), so a kill loses at most the shard being
filled. A resumed run checks every part as a reader would, removes the damaged ones (their inputs run
again) and skips the inputs the others finished. At the end the parts are copied into OUT.tmp, which
is renamed to OUT: OUT exists only whole. `ShardWriter` owns all of it, including the id index that
turns a repeated id into a failure record. A full disk at any of these writes raises `DiskFullError`,
with every file whole or absent (`hdf5_out`): the parts written before it stay, for a rerun to resume.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from srscreen import __version__
from srscreen.data.graph_file import (FORMAT_NAME, GRAPH_ARRAYS, LISTING_GROUP, SCHEMA_VERSION, Failure, partial_dir,
                                      read_failures, read_graphs, read_listing)
from srscreen.data.id_index import PartKeys, SeenIds
from srscreen.data.integrity import CRC_ATTR, DamagedDataError, attrs_checksum, read_checked, write_checked
from srscreen.errors import ShardFileError, one_line
from srscreen.graph.csr import Graphs
from srscreen.data.hdf5_out import new_hdf5
from srscreen.io.atomic_write import replace_when_done
from srscreen.io.fingerprint import SourceListing, compare

_MANIFEST = "manifest.json"
_LISTING = "source_listing.h5"  # the fingerprint of the source the run started on


class ShardWriter:
    """Collects featurized graphs and failures, writes a part file every `shard_size` inputs' worth,
    and consolidates the parts into OUT at `finish`.

    Opening resumes what OUT.partial/ holds when it was made with the same `attrs` from a source with
    the same `listing`, and refuses one made otherwise (unless `overwrite`); its parts are checked
    against `graph_settings` as a reader checks shards. OUT gets the `listing` with its graphs.
    """

    def __init__(self, out: Path, attrs: dict, graph_settings: dict, shard_size: int, *, listing: SourceListing,
                 overwrite: bool = False) -> None:
        self.out, self.attrs, self.shard_size, self.listing = out, attrs, shard_size, listing
        self.parts = start_parts(out, attrs, listing, overwrite)
        state = read_parts_state(self.parts, graph_settings)
        self.done_keys, self.seen_ids, self.index = state.done_keys, state.seen_ids, state.next_index
        self.resumed_structures, self.resumed_failed, self.redone = state.n_structures, state.n_failed, state.redone
        self.n_structures = self.n_failed = 0  # written by this run
        self._runs: list[Graphs] = []
        self._failures: list[Failure] = []
        self._keys: list[str] = []
        self._buffered = 0

    def finished(self, keys: list[str]) -> list[bool]:
        """Which input keys an earlier run already wrote to a part."""
        return self.done_keys.contains_all(keys)

    def add(self, keys: list[str], graphs: Graphs, failures: list[Failure]) -> None:
        """The results of the inputs `keys`: their graphs (a repeated id becomes a failure) and failures."""
        failures = list(failures)
        firsts = self.seen_ids.add_all(graphs.ids, graphs.sources)
        repeated = [i for i, first in enumerate(firsts) if first is not None]
        for i in repeated:
            failures.append(Failure(graphs.ids[i], graphs.sources[i], f"duplicate id (already featurized from {firsts[i]})"))
        if repeated:
            keep = np.ones(len(graphs), dtype=bool)
            keep[repeated] = False
            graphs = graphs.take(np.flatnonzero(keep))
        self._runs.append(graphs)
        self._failures.extend(failures)
        self._keys.extend(keys)
        self._buffered += len(graphs) + len(failures)
        self.n_structures += len(graphs)
        self.n_failed += len(failures)
        if self._buffered >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        """Write what is buffered as the next part file."""
        if not self._keys:
            return
        write_part(self.parts, self.index, Graphs.concat(self._runs), self._failures, self._keys)
        self.seen_ids.written(self.index)
        self.index += 1
        self._runs, self._failures, self._keys, self._buffered = [], [], [], 0

    def finish(self, skipped: list[tuple[str, str]]) -> None:
        """Write the last part, then OUT from all parts (and the files that were not structures)."""
        self.flush()
        consolidate(self.out, self.parts, self.attrs, skipped, self.listing)


def start_parts(out: Path, attrs: dict, listing: SourceListing, overwrite: bool) -> Path:
    """Create or reopen OUT.partial; refuse to resume a run made with other settings or from a source
    that has changed since (its parts would be called done for inputs they do not hold)."""
    parts = partial_dir(out)
    if overwrite and parts.exists():
        shutil.rmtree(parts)
    parts.mkdir(parents=True, exist_ok=True)
    manifest = parts / _MANIFEST
    if manifest.exists():
        before = json.loads(manifest.read_text())
        if before != attrs:
            changed = ", ".join(f"{k}: {before.get(k)!r} -> {attrs.get(k)!r}" for k in attrs if before.get(k) != attrs.get(k))
            raise ShardFileError(f"{parts} holds a run with other settings ({changed}); use `overwrite=True` to start over")
        _check_same_source(parts, listing)
    else:  # the listing first: a manifest without one is a run begun by an older srscreen
        with new_hdf5(parts / _LISTING) as (f, _):
            write_listing(f, listing)
        _atomic_write_text(manifest, json.dumps(attrs, sort_keys=True))
    return parts


def _check_same_source(parts: Path, listing: SourceListing) -> None:
    """Refuse to resume a run whose source has changed since it started, or that did not record it."""
    try:
        with h5py.File(parts / _LISTING, "r") as f:
            before = read_listing(f)
    except FileNotFoundError:
        before = None
    except (OSError, DamagedDataError) as e:
        raise ShardFileError(f"{parts / _LISTING}: unreadable ({one_line(e, 120)}); use `overwrite=True` to start over") from None
    if before is None:
        raise ShardFileError(f"{parts} holds a run begun by an older srscreen, which did not record its source's "
                             f"listing, so it cannot tell what is done; use `overwrite=True` to start over")
    if before.digest != listing.digest:
        raise ShardFileError(f"{parts} holds a run begun on another listing of its source (now: "
                             f"{compare(before, listing).describe()}); use `overwrite=True` to start over")


def write_listing(f: h5py.Group, listing: SourceListing) -> None:
    """The source fingerprint as `graph_file.read_listing` reads it: root attributes and a group."""
    f.attrs.update(listing_attrs(listing))
    group = f.create_group(LISTING_GROUP)
    write_checked(group, "path_hashes", listing.path_hashes)
    write_checked(group, "entry_hashes", listing.entry_hashes)


def listing_attrs(listing: SourceListing) -> dict:
    return {"source_files": listing.files, "source_bytes": listing.bytes, "source_digest": listing.digest}


def _atomic_write_text(path: Path, text: str) -> None:
    with replace_when_done(path) as tmp:
        tmp.write_text(text)


def _write_graphs(group: h5py.Group, records: Graphs) -> None:
    for name in ("ids", "sources", "formula", *GRAPH_ARRAYS):
        write_checked(group, name, getattr(records, name))


def write_part(parts: Path, index: int, records: Graphs, failures: list[Failure], done_keys: list[str]) -> None:
    """One shard's worth of results as its own file, renamed into place only once complete."""
    with new_hdf5(part_path(parts, index)) as (f, _):
        if len(records):
            _write_graphs(f.create_group("graphs"), records)
        _write_failures(f.create_group("failures"), failures)
        write_checked(f, "done_keys", done_keys)


def _write_failures(group: h5py.Group, failures: list[Failure]) -> None:
    for name in ("id", "source", "reason"):
        write_checked(group, name, [getattr(x, name) for x in failures])


def part_path(parts: Path, index: int) -> Path:
    return parts / f"part-{index:06d}.h5"


def read_part_ids(parts: Path, index: int) -> tuple[list[str], list[str]]:
    """The ids and sources of the structures in one part file."""
    with h5py.File(part_path(parts, index), "r") as f:
        if "graphs" not in f:
            return [], []
        return read_checked(f["graphs"], "ids"), read_checked(f["graphs"], "sources")


def read_part_done_keys(parts: Path, index: int) -> tuple[list[str], list[str]]:
    """The input keys one part file finished, twice: PartKeys' (strings, values) with each key its own value."""
    with h5py.File(part_path(parts, index), "r") as f:
        keys = read_checked(f, "done_keys")
    return keys, keys


@dataclass
class PartsState:
    """What finished parts already hold: how a resumed run knows what to skip."""

    next_index: int
    done_keys: PartKeys  # `key in done_keys`: 8 bytes per key, not a set of ~150-byte paths (10^7 inputs)
    seen_ids: SeenIds  # every id in the parts, to catch a later input with one of them
    n_structures: int
    n_failed: int
    redone: list[str]  # "part file: reason" for each damaged part removed, whose inputs run again


def read_parts_state(parts: Path, settings: dict) -> PartsState:
    """What the parts hold, after checking each as a reader would: a damaged part is removed, never
    trusted, so its inputs are featurized again."""
    done_keys = PartKeys(lambda index: read_part_done_keys(parts, index))
    state = PartsState(0, done_keys, SeenIds(lambda index: read_part_ids(parts, index)), 0, 0, [])
    for tmp in parts.glob("*.tmp"):
        tmp.unlink()  # a shard that was being written when the run was killed
    for path in sorted(parts.glob("part-*.h5")):
        index = int(path.stem.split("-")[1])
        state.next_index = max(state.next_index, index + 1)
        try:
            keys, ids, n_failed = _checked_part(path, settings)
        except (DamagedDataError, OSError) as e:
            state.redone.append(f"{path.name}: {one_line(e, 160)}")
            path.unlink()
            continue
        state.done_keys.load_part(index, keys)
        state.seen_ids.load_part(index, ids)
        state.n_structures += len(ids)
        state.n_failed += n_failed
    return state


def _checked_part(path: Path, settings: dict) -> tuple[list[str], list[str], int]:
    """(done keys, ids, failures) of a part file whose every dataset passed its checks."""
    with h5py.File(path, "r") as f:
        keys = read_checked(f, "done_keys")
        n_failed = len(read_failures(f["failures"]))
        ids = read_graphs(f["graphs"], settings, sources=True).ids if "graphs" in f else []
    return keys, ids, n_failed


def consolidate(out: Path, parts: Path, attrs: dict, skipped: list[tuple[str, str]], listing: SourceListing) -> None:
    """Copy every part into a temporary file, then rename it to OUT (with the source's `listing`); remove
    the parts. A full disk leaves the parts as they were (a rerun consolidates them) and no OUT."""
    failures: dict[str, list[str]] = {"id": [], "source": [], "reason": []}
    n_structures = 0
    with new_hdf5(out) as (f, check):
        shards = f.create_group("shards")
        for path in sorted(parts.glob("part-*.h5")):
            with h5py.File(path, "r") as part:
                if "graphs" in part:
                    name = f"{len(shards):06d}"
                    part.copy(part["graphs"], shards, name=name)
                    n_structures += len(shards[name]["ids"])
                for key in failures:
                    failures[key].extend(read_checked(part["failures"], key))
            check()  # a full disk stops the copy here, with at most one part's worth held in memory
        _write_failures(f.create_group("failures"), [Failure(*row) for row in zip(*failures.values())])
        group = f.create_group("skipped")
        write_checked(group, "source", [s for s, _ in skipped])
        write_checked(group, "reason", [r for _, r in skipped])
        write_listing(f, listing)
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
        f.attrs[CRC_ATTR] = np.uint32(attrs_checksum(dict(f.attrs)))
    shutil.rmtree(parts)
