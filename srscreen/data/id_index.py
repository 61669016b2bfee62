"""Which ids the featurize writer already kept, in ~8 bytes per id whatever the database size.

A dict id -> source costs ~200 bytes per structure in the parent (2 GB at 10^7 structures). Here
only the ids of the shard being filled are held exactly (id -> source). Each id already written to a
part file is one uint64 key: the top HASH_BITS bits of a stable hash of the id (blake2b: the same in
every run, unlike the salted hash()), then the index of the part file that holds it. Keys sit in
sorted arrays: a large one, and a small one for the latest parts, merged into the large one in bulk.
A key hit is confirmed by comparing the id with the ids of that part file, read back: a real
duplicate costs one part read (the last part read is kept, so a run of duplicates reads each part
once), and two different ids with one hash (a lookup meets another id's hash about once in
2^HASH_BITS / n: ~50 extra part reads over 10^7 structures) never make a duplicate.

`PartKeys` is the query-only half (the sorted keys and the confirming read), also used for the input
keys a resumed run skips (`done_keys`): there a hash collision must never skip an unfinished input.
"""

from __future__ import annotations

import hashlib
from typing import Callable

import numpy as np

from srscreen.errors import OptionError

PART_BITS = 24  # up to 16.7 million part files
HASH_BITS = 64 - PART_BITS
PART_MASK = (1 << PART_BITS) - 1
# The small array is merged into the large one at this many keys or 1/32 of the large one: each
# merge copies the large array, so geometric growth keeps the total copying linear in the ids.
MERGE_AT = 1 << 16


def id_hash(id_: str) -> int:
    """A 64-bit hash of the id, the same in every process and run."""
    return int.from_bytes(hashlib.blake2b(id_.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


def _merged(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.concatenate([a, b])
    out.sort(kind="stable")  # timsort: two sorted runs merge in linear time
    return out


def _hits(keys: np.ndarray, prefix: np.ndarray) -> np.ndarray:
    """Which prefixes (hashes >> PART_BITS) have a key in the sorted `keys`."""
    if not len(keys):
        return np.zeros(len(prefix), bool)
    at = np.minimum(np.searchsorted(keys, prefix << PART_BITS), len(keys) - 1)
    return (keys[at] >> PART_BITS) == prefix


class PartKeys:
    """Which strings the part files hold, in 8 bytes per string; a hash hit is confirmed by an exact read.

    `read_part(part)` returns part file `part`'s strings and a value for each (for SeenIds the ids and
    their sources), read only on a hash hit, so a collision never reports a string that is not there.
    """

    def __init__(self, read_part: Callable[[int], tuple[list[str], list[str]]]) -> None:
        self.read_part = read_part
        self.keys = np.zeros(0, np.uint64)  # sorted (hash prefix, part) keys
        self.recent = np.zeros(0, np.uint64)  # the same for the latest parts, merged into keys in bulk
        self._cached: tuple[int, dict[str, str]] = (-1, {})  # the last part file read: string -> value

    @property
    def nbytes(self) -> int:
        """Memory of the keys: all that grows with the number of strings."""
        return self.keys.nbytes + self.recent.nbytes

    def __contains__(self, string: str) -> bool:
        return self.contains_all([string])[0]

    def contains_all(self, strings: list[str]) -> list[bool]:
        """`string in self` for each (the array lookups done in one numpy call)."""
        if not self.nbytes:  # a fresh run: nothing to hash
            return [False] * len(strings)
        hashes = [id_hash(s) for s in strings]
        return [hit and self._first_written(s, h) is not None for s, h, hit in zip(strings, hashes, self._hit_list(hashes))]

    def load_part(self, part: int, strings: list[str]) -> None:
        """The strings that part file `part`, written by an earlier run, holds (resuming)."""
        self._record(part, [id_hash(i) for i in strings])

    def _hit_list(self, hashes: list[int]) -> list[bool]:
        """Whether each hash's prefix is in the keys: a miss is certain, a hit still to be confirmed."""
        prefix = np.array(hashes, dtype=np.uint64) >> PART_BITS
        return (_hits(self.keys, prefix) | _hits(self.recent, prefix)).tolist()

    def _record(self, part: int, hashes: list[int]) -> None:
        if part > PART_MASK:
            raise OptionError(f"more than {PART_MASK + 1} part files: use a larger `shard_size`")
        new = (np.array(hashes, dtype=np.uint64) >> PART_BITS << PART_BITS) | np.uint64(part)
        new.sort()
        self.recent = _merged(self.recent, new)
        if len(self.recent) >= max(MERGE_AT, len(self.keys) >> 5):
            self.keys, self.recent = _merged(self.keys, self.recent), np.zeros(0, np.uint64)

    def _first_written(self, id_: str, h: int) -> str | None:
        """The value of `id_` in the part files, or None: its hash prefix is absent, or there for another string."""
        if (cached := self._cached[1].get(id_)) is not None:
            return cached  # an exact match, and the usual one: resumed inputs come in part order
        low = np.uint64(h >> PART_BITS << PART_BITS)
        parts = []
        for keys in (self.keys, self.recent):
            found = keys[np.searchsorted(keys, low) : np.searchsorted(keys, low | np.uint64(PART_MASK), "right")]
            parts += (found & np.uint64(PART_MASK)).tolist()
        for part in parts:
            if self._cached[0] != part:
                self._cached = (part, dict(zip(*self.read_part(part))))
            source = self._cached[1].get(id_)
            if source is not None:
                return source
        return None


class SeenIds(PartKeys):
    """`add` ids as the writer keeps them; `written(part)` once they are in that part file.

    `read_part(part)` returns the (ids, sources) of the structures in part file `part`.
    """

    def __init__(self, read_part: Callable[[int], tuple[list[str], list[str]]]) -> None:
        super().__init__(read_part)
        self.pending: dict[str, str] = {}  # id -> source: kept, not in a part file yet
        self.pending_hashes: list[int] = []

    def add(self, id_: str, source: str) -> str | None:
        """Keep `id_` (from `source`), or, if it was kept before, the source it was first kept from."""
        return self.add_all([id_], [source])[0]

    def add_all(self, ids: list[str], sources: list[str]) -> list[str | None]:
        """`add` each in turn (the array lookups done in one numpy call)."""
        hashes = [id_hash(i) for i in ids]
        firsts: list[str | None] = []
        for id_, source, h, hit in zip(ids, sources, hashes, self._hit_list(hashes)):
            first = self.pending.get(id_)
            if first is None and hit:
                first = self._first_written(id_, h)
            if first is None:
                self.pending[id_] = source
                self.pending_hashes.append(h)
            firsts.append(first)
        return firsts

    def written(self, part: int) -> None:
        """The ids added since the last call are now in part file `part`."""
        self._record(part, self.pending_hashes)
        self.pending, self.pending_hashes = {}, []
