"""A source's fingerprint: which files it held (paths relative to the source), their sizes and modification
times, and one digest of it all, so that a graph file knows what it was made from.

featurize stores it in the graph file and in OUT.partial/; a rerun compares the source as it is now with
it, and never calls "done" what was not: another source, or files added, changed or removed since, are
told apart (`SourceChange`). Per file it keeps two 64-bit hashes (its path; its path, size and mtime):
16 bytes a file, so 10^7 files cost 160 MB at most, and only what a comparison needs.
"""

from __future__ import annotations

import hashlib
import os
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from srscreen.io.sources import walk_files


@dataclass(frozen=True)
class SourceListing:
    files: int
    bytes: int
    digest: str  # sha256 of every (path, size, mtime) in listing order: equal digests, equal listings
    path_hashes: np.ndarray  # uint64 per file: its relative path
    entry_hashes: np.ndarray  # uint64 per file: its relative path, size and mtime

    def describe(self) -> str:
        return f"{self.files:,} files, {self.bytes:,} bytes, digest {self.digest[:12]}"


@dataclass(frozen=True)
class SourceChange:
    """How a source differs from a listing made earlier (counts of files)."""

    added: int
    changed: int
    removed: int
    kept: int  # unchanged

    def describe(self) -> str:
        return f"{self.added:,} new, {self.changed:,} changed, {self.removed:,} removed, {self.kept:,} unchanged"


def _hash8(text: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little")


def list_source(source: str | os.PathLike, ignore: Callable[[str], bool] | None = None) -> SourceListing:
    """The fingerprint of `source` (a folder tree, walked as `iter_inputs` walks it, or one file);
    `ignore` leaves out what `iter_inputs` leaves out."""
    root = Path(source)
    digest = hashlib.sha256()
    paths, entries = array("Q"), array("Q")
    total = 0

    def add(path: str, rel: str) -> None:
        nonlocal total
        try:
            st = os.stat(path)
            size, mtime = st.st_size, st.st_mtime_ns
        except OSError:  # a dangling link or an unreadable entry: listed as such
            size, mtime = -1, -1
        name = rel.encode("utf-8", "surrogateescape")
        entry = name + b"\0" + f"{size}\0{mtime}".encode()
        digest.update(entry + b"\n")
        paths.append(_hash8(name))
        entries.append(_hash8(entry))
        total += max(size, 0)

    if root.is_dir():
        for path, rel, _ in walk_files(root, ignore):
            add(path, rel)
    else:
        add(str(root), root.name)
    return SourceListing(len(paths), total, digest.hexdigest(), np.frombuffer(paths, dtype=np.uint64).copy(),
                         np.frombuffer(entries, dtype=np.uint64).copy())


def compare(before: SourceListing, now: SourceListing) -> SourceChange:
    """Files added, changed (same path, other size or mtime), removed and kept since `before`."""
    common_paths = int(np.isin(now.path_hashes, before.path_hashes).sum())
    kept = int(np.isin(now.entry_hashes, before.entry_hashes).sum())
    return SourceChange(added=now.files - common_paths, changed=common_paths - kept,
                        removed=before.files - common_paths, kept=kept)
