"""The user's own text files (labels, split files, ranked tables) read line by line as UTF-8.

A file that is not such text (a graph or model file given by mistake, a spreadsheet saved as latin-1,
a line with no end) is refused with one line naming the file and the reason, never a decoder's
traceback: a guessed encoding would turn ids into other ids, and a binary file into nonsense rows.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import BinaryIO
from pathlib import Path

from srscreen.errors import InputError

# No table row srscreen reads is near this long; a longer "line" is a binary file or a runaway field,
# and reading it whole would hold it in memory.
MAX_LINE_BYTES = 1 << 20
# How far into a file a NUL byte marks it as binary rather than badly encoded text.
SNIFF_BYTES = 4096
_LINE_END = re.compile(rb"\r\n|\r|\n")


def text_lines(path: str | Path, what: str) -> Iterator[str]:
    """The lines of a UTF-8 text file (a leading byte-order mark dropped), each ending in `\n` (or nothing,
    for a last line without an end): csv.reader's input. Lines may end with LF, CRLF or CR alone (a table
    saved as "CSV (Macintosh)"); only those three cut a line, never U+2028 or a form feed inside an id.
    `what` says what the file should be ("a labels CSV"), for the messages."""
    path = Path(path)
    try:
        with path.open("rb") as stream:
            head = stream.read(SNIFF_BYTES)  # kept for the binary check: the block reader runs ahead of the lines
            if head.startswith((b"\xff\xfe", b"\xfe\xff")):  # its NUL bytes would say "binary file"
                raise InputError(f"{path}: UTF-16 text (a spreadsheet's \"Unicode text\" export?), not {what}: "
                                 "save it as CSV UTF-8")
            offset, first = 0, b""
            for raw in _raw_lines(stream, head):
                first = first or raw
                if b"\x00" in raw:
                    raise InputError(f"{path}: binary file{binary_kind(first)}, not {what}")
                if len(raw) > MAX_LINE_BYTES:
                    raise InputError(f"{path}: a line longer than {MAX_LINE_BYTES:,} bytes at byte {offset}, not {what}")
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    if offset < SNIFF_BYTES and b"\x00" in head:
                        raise InputError(f"{path}: binary file{binary_kind(first)}, not {what}") from None
                    raise InputError(f"{path}: not UTF-8 text at byte {offset + e.start} (latin-1 or another "
                                     f"encoding?), not {what}: save it as UTF-8") from None
                if offset == 0:
                    text = text.removeprefix("\ufeff")
                offset += len(raw)
                # a raw line holds one line end, last: CRLF or CR becomes LF
                yield text.rstrip("\r\n") + "\n" if text.endswith(("\r", "\n")) else text
    except OSError as e:
        raise InputError(f"{path}: cannot read {what} ({e.strerror or e})") from None


def _raw_lines(stream: BinaryIO, pending: bytes = b"", block: int = 1 << 16) -> Iterator[bytes]:
    """The byte lines of `pending` (bytes already read) then `stream`, each with its end (LF, CRLF or CR),
    read in blocks so that no line is held past MAX_LINE_BYTES + 1 bytes (a longer one is yielded cut there,
    for the caller to refuse)."""
    while True:
        data = stream.read(block)
        pending += data
        start = 0
        for end in _LINE_END.finditer(pending):
            if end.group() == b"\r" and end.end() == len(pending) and data:
                break  # maybe the first half of a CRLF split by the block: decided by the next block
            yield pending[start:end.end()]
            start = end.end()
        pending = pending[start:]
        if len(pending) > MAX_LINE_BYTES:
            yield pending[: MAX_LINE_BYTES + 1]
            return
        if not data:
            if pending:
                yield pending
            return


def binary_kind(head: bytes) -> str:
    """What a binary file most likely is, when its first bytes say so (" (HDF5: a graph file?)"), else ""."""
    if head.startswith(b"\x89HDF"):
        return " (HDF5: a graph file?)"
    if head.startswith(b"PK\x03\x04"):
        return " (zip: a model file?)"
    return ""
