"""Compressed structure files (.gz, .bz2, .xz), looked through by name, and bytes -> text.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
from pathlib import PurePosixPath


from srscreen.io.parsed import ReadError


COMPRESSION = {".gz": gzip.decompress, ".bz2": bz2.decompress, ".xz": lzma.decompress}



_COMPRESSION_SUFFIXES = tuple(COMPRESSION)



def decompress(name: str, data: bytes) -> bytes:
    """The file's content with a compression suffix undone."""
    lower = name.lower()
    if not lower.endswith(_COMPRESSION_SUFFIXES):
        return data
    suffix = PurePosixPath(name).suffix.lower()
    return COMPRESSION[suffix](data) if suffix in COMPRESSION else data



def text_of(data: bytes) -> str:
    if not data.strip():
        raise ReadError("empty file")
    if b"\x00" in data[:4096]:
        raise ReadError("binary file, not a structure")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")
