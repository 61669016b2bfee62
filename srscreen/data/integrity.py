"""Datasets that carry their own checksum, so a damaged file is caught on read, not ranked.

Graph files of 10^6-10^7 structures are copied between nodes and file systems; a flipped block then
reads back as plausible numbers. Every dataset srscreen writes into a graph file carries the CRC-32 of
its contents as an attribute (strings: their UTF-8 bytes, NUL-separated), and every read recomputes
it. CRC-32 runs at ~2 GB/s here, so checking costs ~40 ms on the 33,065-crystal MP file. HDF5's own
fletcher32 filter would cover numeric data only: not variable-length strings, where ids live.
Damage to HDF5's own structures usually makes h5py raise; `read_checked` turns that into the same error.
"""

from __future__ import annotations

import zlib

import h5py
import numpy as np

from srscreen.errors import ShardFileError, one_line
from srscreen.io.names import printable

_STR = h5py.string_dtype("utf-8")
CRC_ATTR = "crc32"


class DamagedDataError(ShardFileError):
    """A dataset whose contents do not match its checksum, or that cannot be read at all."""


def _crc(values: np.ndarray | list[str]) -> int:
    if isinstance(values, np.ndarray) and values.dtype != object:
        return zlib.crc32(np.ascontiguousarray(values))
    return zlib.crc32("\0".join(values).encode("utf-8", "surrogatepass"))


def write_checked(group: h5py.Group, name: str, values: np.ndarray | list[str]) -> None:
    """Write an array, or a list of strings, with its checksum. Strings are stored `printable`: HDF5
    holds UTF-8 only, and a name that is not UTF-8 must not stop the run (its bytes become \\xNN)."""
    if isinstance(values, np.ndarray) and values.dtype != object:
        ds = group.create_dataset(name, data=values)
    else:
        values = [printable(v) for v in values]
        ds = group.create_dataset(name, data=np.array(values, dtype=object), dtype=_STR, shape=(len(values),))
    ds.attrs[CRC_ATTR] = np.uint32(_crc(values))


def read_checked(group: h5py.Group, name: str) -> np.ndarray | list[str]:
    """The dataset's contents (strings as a list), after checking them against the stored checksum."""
    try:
        ds = group[name]
        stored = ds.attrs.get(CRC_ATTR)
        if ds.dtype.kind == "O":
            values: np.ndarray | list[str] = [s.decode("utf-8", "surrogateescape") if isinstance(s, bytes) else s
                                              for s in ds[()]]
        else:
            values = ds[()]
    except (OSError, KeyError, ValueError, TypeError, RuntimeError, UnicodeError) as e:
        raise DamagedDataError(f"{name} unreadable ({one_line(e, 120)})") from None
    if stored is None:
        raise DamagedDataError(f"{name} has no checksum")
    if _crc(values) != int(stored):
        raise DamagedDataError(f"{name} does not match its checksum")
    return values


def attrs_checksum(attrs: dict) -> int:
    """CRC-32 of a group's attributes (all but the checksum itself), in a fixed order."""
    text = repr(sorted((k, _plain(v)) for k, v in attrs.items() if k != CRC_ATTR))
    return zlib.crc32(text.encode("utf-8", "surrogatepass"))


def _plain(v: object) -> object:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, bytes):
        return v.decode("utf-8", "surrogateescape")
    return v
