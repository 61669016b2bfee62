"""Structure bytes, bounded: compressed files (.gz, .bz2, .xz) looked through by name, never inflated past
the per-structure limit; files opened only when they are regular files; bytes -> text.

The limit (`max_bytes`, featurize's --max-file-mb) is what one structure's file may hold after
decompression. Decompression streams and stops one byte past it, so a bomb (a few MB that inflate to
gigabytes) costs the limit in memory, never its inflated size; a FIFO, socket or device is never opened
(a FIFO would block for ever, /dev/zero never end).
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import stat
import zlib
from pathlib import PurePosixPath
from typing import BinaryIO, Callable

from srscreen.io.parsed import ReadError

# The largest structure file in the Materials Project set is an 11 kB CIF, and a cell of featurize's
# default 1,000 atoms takes ~100 kB of CIF or ~1 MB of pymatgen JSON: 64 MB leaves room for 100x that
# while a worker's memory stays bounded.
MAX_STRUCTURE_MB = 64
MAX_STRUCTURE_BYTES = MAX_STRUCTURE_MB << 20

COMPRESSION: dict[str, Callable[[BinaryIO], BinaryIO]] = {
    ".gz": lambda raw: gzip.GzipFile(fileobj=raw),
    ".bz2": lambda raw: bz2.BZ2File(raw),
    ".xz": lambda raw: lzma.LZMAFile(raw),
}
_COMPRESSION_SUFFIXES = tuple(COMPRESSION)
# What a damaged compressed stream raises besides OSError (gzip.BadGzipFile is one).
DECOMPRESSION_ERRORS = (EOFError, lzma.LZMAError, zlib.error)


class TooLargeError(ReadError):
    """More than the per-structure limit after decompression."""


_READ_CHUNK = 1 << 20


def too_large(max_bytes: int) -> str:
    """The failure reason of an input over the limit (the flag named, so the user knows what to raise)."""
    return f"larger than {max_bytes / (1 << 20):g} MB after decompression (the per-structure limit, --max-file-mb)"


def compression_of(name: str) -> str | None:
    """The compression suffix of a file name (".gz", ".bz2", ".xz"), or None."""
    if not name.lower().endswith(_COMPRESSION_SUFFIXES):
        return None
    suffix = PurePosixPath(name).suffix.lower()
    return suffix if suffix in COMPRESSION else None


def read_bounded(stream: BinaryIO, max_bytes: int) -> bytes:
    """All of `stream`, or TooLargeError once it holds more than `max_bytes` (reading one byte past it).

    A chunk at a time: read(n) sets n bytes aside first, so one read up to a large limit
    (--max-file-mb 1e6) failed every file with MemoryError."""
    chunks: list[bytes] = []
    held = 0
    while held <= max_bytes:
        chunk = stream.read(min(_READ_CHUNK, max_bytes + 1 - held))
        if not chunk:
            break
        chunks.append(chunk)
        held += len(chunk)
    if held > max_bytes:
        raise TooLargeError(too_large(max_bytes))
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def decompress(name: str, data: bytes, max_bytes: int = MAX_STRUCTURE_BYTES) -> bytes:
    """The file's content with a compression suffix undone, at most `max_bytes` of it (else TooLargeError)."""
    suffix = compression_of(name)
    if suffix is None:
        if len(data) > max_bytes:
            raise TooLargeError(too_large(max_bytes))
        return data
    with COMPRESSION[suffix](io.BytesIO(data)) as stream:
        return read_bounded(stream, max_bytes)


def not_regular(path: str | os.PathLike) -> str | None:
    """Why `path` (symlinks followed) is not to be opened: a FIFO, socket, device or folder; None for a
    regular file, and for one that cannot be looked at (opening it then says why)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    return _not_regular_mode(mode)


def _not_regular_mode(mode: int) -> str | None:
    if stat.S_ISREG(mode):
        return None
    kinds = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a folder"))
    kind = next((k for test, k in kinds if test(mode)), "not a file")
    return f"not a regular file ({kind})"


def open_regular(path: str | os.PathLike) -> BinaryIO:
    """`path` opened for reading if it is a regular file, else ReadError: checked on the open descriptor
    (O_NONBLOCK, so that opening a FIFO swapped in after a listing cannot block), never by name alone."""
    reason = not_regular(path)
    if reason is not None:
        raise ReadError(reason)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        reason = _not_regular_mode(os.fstat(fd).st_mode)
        if reason is not None:
            raise ReadError(reason)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_structure_file(path: str | os.PathLike, max_bytes: int = MAX_STRUCTURE_BYTES) -> bytes:
    """A structure file's content, decompressed by its name's suffix, if it is a regular file of at most
    `max_bytes` after decompression (ReadError, TooLargeError or OSError otherwise)."""
    suffix = compression_of(os.fsdecode(path))
    with open_regular(path) as raw:
        if suffix is None:
            if os.fstat(raw.fileno()).st_size > max_bytes:
                raise TooLargeError(too_large(max_bytes))
            return read_bounded(raw, max_bytes)
        with COMPRESSION[suffix](raw) as stream:
            return read_bounded(stream, max_bytes)


def text_of(data: bytes) -> str:
    """A whole structure file's text, its line ends made `\\n`: the one place they are normalised for the
    parsers (gemmi and pymatgen read a CR-only file, old Mac style, as one line, hence no structure).
    Chunks of multi-structure files arrive normalised by the text stream that cut them (`sources`)."""
    if not data.strip():
        raise ReadError("empty file")
    if b"\x00" in data[:4096]:
        raise ReadError("binary file, not a structure")
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")
