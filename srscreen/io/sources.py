"""Find the structure inputs in a source, lazily: a folder tree, one file, or a tar/zip archive.

The parent process only lists files (and reads archive members, which must be streamed in order),
cuts multi-structure files into chunks of frames, large JSON entry dumps into chunks of entries and
ASE databases into ranges of row ids; parsing happens in the workers. Every input
gets a stable key, so a resumed run can skip what a killed run already finished, and every file
that is not a structure is reported as skipped, so counts always reconcile.
"""

from __future__ import annotations

import bz2
import errno
import gzip
import io
import lzma
import os
import sqlite3
import tarfile
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO, Callable, Iterator
from urllib.parse import quote

from srscreen.errors import InputError
from srscreen.io.compression import MAX_STRUCTURE_BYTES, TooLargeError, not_regular, read_bounded, too_large
from srscreen.io.formats.extxyz import FrameFault, split_frames
from srscreen.io.jsonstream import WholeDocument, iter_elements
from srscreen.io.names import printable
from srscreen.io.readers import MULTI_STRUCTURE_FORMATS, Format, detect_format

FRAMES_PER_ITEM = 256
_ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".zip")
_OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
# JSON files from this size on are read as a stream of entries (dumps of millions of entries);
# smaller ones go to a worker whole. Compressed files are compared after a typical 8x expansion.
STREAM_JSON_BYTES = 32 << 20
_COMPRESSION_RATIO = 8
UNKNOWN_KIND = "not a structure file (unknown extension)"


@dataclass(frozen=True)
class Item:
    """One unit of work: a whole file, or a chunk of frames of a multi-structure file.

    `path` is set when the worker should read the file itself; otherwise `data` holds the bytes
    (archive members) or the chunk's text (frames from `first_frame` on; for a JSON dump, a JSON
    array of its entries). An ASE database chunk has `path` and the row ids `first_frame` to
    `last_frame`, with the row key that names its structures in `id_key`. `error` marks an input
    that could not even be read here; the worker records it as a failure.
    """

    key: str
    source: str
    name: str
    path: str | None = None
    data: bytes | None = None
    first_frame: int = 0
    error: str | None = None
    last_frame: int | None = None
    # Structures this item holds at most (a chunk's frames or rows; 1 for a file): what a task is sized by.
    frames: int = 1
    id_key: str | None = None
    # The frame an `error` is about (a broken frame of a multi-structure file): its failure is then named
    # `stem:N` like the frames around it, as when the whole file is parsed at once.
    failed_frame: int | None = None


@dataclass(frozen=True)
class Skipped:
    source: str
    reason: str


def is_archive(name: str) -> bool:
    return name.lower().endswith(_ARCHIVE_SUFFIXES)


def iter_inputs(source: str | os.PathLike, *, id_key: str | None = None,
                ignore: Callable[[str], bool] | None = None,
                max_bytes: int = MAX_STRUCTURE_BYTES) -> Iterator[Item | Skipped]:
    """Every input under `source`, in a deterministic order; `id_key` names ASE database rows; `ignore`
    as in `walk_files`; `max_bytes` is the per-structure limit after decompression (what is larger is
    a failure, read no further than that).

    A FIFO, socket or device (a link to one too) is a failure, never opened. Keys, sources and names
    are `names.printable` (a name that is not UTF-8 or holds control characters gets `\\xNN` escapes); `path`
    stays the real one.
    """
    check_source(source)
    root = Path(source)
    if root.is_dir():
        inputs = (x for path, rel, folder in walk_files(root, ignore) for x in _file_inputs(path, rel, folder, id_key, max_bytes))
    else:
        inputs = _file_inputs(str(root), root.name, root.parent, id_key, max_bytes, named=True)
    for x in inputs:
        yield _printable(x)


def check_source(source: str | os.PathLike) -> None:
    """Refuse a source that is neither a folder nor a regular file (or a link to one), in one line."""
    if os.path.isdir(source):
        return
    reason = not_regular(source)
    if reason is not None:
        raise InputError(f"{source}: {reason}")
    if not os.path.isfile(source):
        try:
            os.stat(source)
        except OSError as e:
            if e.errno != errno.ENOENT:  # a link loop: ELOOP, 'Too many levels of symbolic links'
                raise InputError(f"{source}: {e.strerror}") from None
        raise FileNotFoundError(f"{source}: no such file or folder")


def _printable(x: Item | Skipped) -> Item | Skipped:
    if isinstance(x, Skipped):
        shown_source = printable(x.source)
        return x if shown_source == x.source else Skipped(shown_source, x.reason)
    fields = {"key": x.key, "source": x.source, "name": x.name, "error": x.error}
    shown = {k: printable(v) for k, v in fields.items() if v is not None}
    return replace(x, **shown) if any(shown[k] != fields[k] for k in shown) else x


def walk_files(root: Path, ignore: Callable[[str], bool] | None = None) -> Iterator[tuple[str, str, Path]]:
    """(path, path relative to `root` with '/', folder) of every file under the folder `root`, names sorted.

    `ignore(real path)` leaves out a file or folder (featurize's own output when it lies inside the
    source: OUT, OUT.partial/, its lock and temporary files). Two kinds of folder are listed too, their
    paths ending in '/', so that they are recorded as failures rather than pass unseen: a folder named
    like a structure file or archive (`x.cif/`; its files are still listed, each on its own), and a
    link to a folder (not followed: a link may lead back up the tree). A folder holding no file at
    all is refused: it would give an empty graph file without a word.
    """
    listed = False
    for dirpath, dirnames, filenames in os.walk(root):
        if ignore is not None:
            real = os.path.realpath(dirpath)
            dirnames[:] = [d for d in dirnames if not ignore(os.path.join(real, d))]
            filenames = [f for f in filenames if not ignore(os.path.join(real, f))]
        dirnames.sort()
        odd = [d + "/" for d in dirnames if _looks_like_a_file(d) or os.path.islink(os.path.join(dirpath, d))]
        filenames = sorted(filenames + odd) if odd else filenames
        folder = Path(dirpath)
        # Per folder, not per file: pathlib costs ~10 µs a call, a database has millions of files.
        prefix = str(folder)
        prefix = "" if prefix == "." else prefix if prefix.endswith("/") else prefix + "/"
        rel = folder.relative_to(root).as_posix()
        rel = "" if rel == "." else rel + "/"
        for filename in sorted(filenames):
            listed = True
            yield prefix + filename, rel + filename, folder
    if not listed:
        raise InputError(f"{root}: no file in this folder, nothing to featurize")


def _looks_like_a_file(name: str) -> bool:
    """A folder name that ends like a structure file or archive (`x.cif`, `x.json.gz`, `x.zip`; not `POSCARS`)."""
    return is_archive(name) or detect_format("x" + (name[name.find("."):] if "." in name else ""))[0] is not None


def _folder_reason(path: str) -> str:
    """Why a folder listed by `walk_files` (its path ends in '/') is no input."""
    if os.path.islink(path.rstrip("/")):
        return "a link to a folder, not followed (give the folder it leads to as a source of its own)"
    return "a folder named like a structure file, not a file (any files inside are read on their own)"


def _file_inputs(path: str, rel: str, folder: Path, id_key: str | None, max_bytes: int,
                 named: bool = False) -> Iterator[Item | Skipped]:
    """The inputs of one file: `path` is str(folder / name), `rel` its path under the source. A file
    the user `named` as the source is meant as structures: an unknown kind is a failure, not a skip."""
    if path.endswith("/"):
        yield Item(key=path, source=path, name=rel, error=_folder_reason(path))
        return
    odd = not_regular(path)
    if odd is not None:  # a FIFO would block the run for ever, a device never end
        yield Item(key=path, source=path, name=rel, error=odd)
        return
    if is_archive(rel):
        yield from _archive_inputs(folder / rel.rpartition("/")[2], max_bytes)
        return
    fmt, _ = detect_format(rel)
    suffix = os.path.splitext(path)[1].lower()
    if fmt is None and named:
        yield Item(key=path, source=path, name=rel, error=UNKNOWN_KIND)
    elif fmt is None:
        yield Skipped(path, UNKNOWN_KIND)
    elif fmt == "asedb" and suffix not in _OPENERS:
        yield from _ase_db_items(path, rel, id_key)
    elif fmt in MULTI_STRUCTURE_FORMATS or (fmt == "json" and _is_large(path, suffix, max_bytes)):
        opener = _OPENERS.get(suffix, open)
        try:
            with opener(path, "rb") as stream:
                if fmt == "json":
                    yield from _entry_items(path, rel, stream, max_bytes)
                else:
                    yield from _frame_items(path, rel, fmt, stream, max_bytes)
        except (OSError, EOFError, lzma.LZMAError) as e:
            yield Item(key=path, source=path, name=rel, error=f"unreadable: {e}")
    else:
        yield Item(key=path, source=path, name=rel, path=path)


def _is_large(path: str, suffix: str, max_bytes: int, size: int | None = None) -> bool:
    """Whether a JSON file is read as a stream of entries: from STREAM_JSON_BYTES on, or from the
    per-structure limit on (whole, it would be one input over the limit)."""
    try:
        size = os.stat(path).st_size if size is None else size
    except OSError:
        return False  # the worker reports why it cannot read the file
    return size * (_COMPRESSION_RATIO if suffix in _OPENERS else 1) >= min(STREAM_JSON_BYTES, max_bytes)


def _entry_items(source: str, name: str, stream: BinaryIO, max_bytes: int) -> Iterator[Item]:
    """Chunks of FRAMES_PER_ITEM entries of a JSON list, each chunk a JSON array; a file holding one
    object is one whole item. A fault in the file (an entry over `max_bytes` too) ends it with a failure
    after the entries before it."""
    text = io.TextIOWrapper(io.BufferedReader(_ForwardOnly(stream)), encoding="utf-8", errors="replace")
    entries: list[str] = []
    first = 0
    try:
        for element in iter_elements(text, max_chars=max_bytes):
            if isinstance(element, WholeDocument):  # held decompressed: named without the compression suffix
                plain = name[: -len(os.path.splitext(name)[1])] if os.path.splitext(name)[1].lower() in _OPENERS else name
                yield Item(key=source, source=source, name=plain, data=element.encode())
                return
            entries.append(element)
            if len(entries) == FRAMES_PER_ITEM:
                yield _entry_chunk(source, name, first, entries)
                first += len(entries)
                entries = []
    except ValueError as e:
        if entries:
            yield _entry_chunk(source, name, first, entries)
        n = first + len(entries)
        where = f"after entry {n - 1}" if n else "before the first entry"
        yield Item(key=f"{source}#{n}", source=source, name=name, error=f"{e} ({where})")
        return
    if entries:
        yield _entry_chunk(source, name, first, entries)
    elif first == 0:
        yield Item(key=f"{source}#0", source=source, name=name, error="empty list: no structure")


def _entry_chunk(source: str, name: str, first: int, entries: list[str]) -> Item:
    data = ("[" + ",".join(entries) + "]").encode()
    return Item(key=f"{source}#{first}", source=source, name=name, data=data, first_frame=first, frames=len(entries))


def _ase_db_items(path: str, rel: str, id_key: str | None) -> Iterator[Item]:
    """Ranges of FRAMES_PER_ITEM row ids of an ASE database (SQLite), listed in id order.

    The ids come straight from ASE's `systems` table (~1 µs a row; ase.db's own select costs ~200 µs);
    the rows themselves are read in the workers, with ase.db.
    """
    uri = f"file:{quote(os.path.abspath(path))}?mode=ro"
    listed = 0
    try:
        connection = sqlite3.connect(uri, uri=True)
        try:
            cursor = connection.execute("SELECT id FROM systems ORDER BY id")
            while rows := cursor.fetchmany(FRAMES_PER_ITEM):
                first, last = rows[0][0], rows[-1][0]
                listed += len(rows)
                yield Item(key=f"{path}#{first}", source=path, name=rel, path=path, first_frame=first,
                           last_frame=last, id_key=id_key, frames=len(rows))
        finally:
            connection.close()
    except sqlite3.Error as e:
        yield Item(key=f"{path}#", source=path, name=rel, error=f"not a readable ASE database ({e})")
        return
    if listed == 0:
        yield Item(key=f"{path}#", source=path, name=rel, error="empty ASE database: no rows")


def _frame_items(source: str, name: str, fmt: Format, stream: BinaryIO, max_bytes: int) -> Iterator[Item]:
    """Chunks of FRAMES_PER_ITEM frames, cut without parsing: bounded memory for any file size. A frame
    of more than `max_bytes` is a failure of its own (its text read past, never held)."""
    text = io.TextIOWrapper(io.BufferedReader(_ForwardOnly(stream)), encoding="utf-8", errors="replace")
    frames: list[str] = []
    first = 0
    for frame in _split_frames(text, fmt, max_bytes):
        if isinstance(frame, FrameFault):  # the chunk so far, then the frame's failure, then on after it
            if frames:
                yield _chunk(source, name, first, frames)
                first += len(frames)
                frames = []
            yield Item(key=f"{source}#{first}", source=source, name=name, error=str(frame), failed_frame=first)
            first += 1
            continue
        frames.append(frame)
        if len(frames) == FRAMES_PER_ITEM:
            yield _chunk(source, name, first, frames)
            first += len(frames)
            frames = []
    if frames:
        yield _chunk(source, name, first, frames)
    elif first == 0:  # no frame at all: still an input, recorded as a failure
        yield Item(key=f"{source}#0", source=source, name=name, error="empty file")


class _ForwardOnly(io.RawIOBase):
    """A stream read front to back. Tar members in streaming mode fail on seekable(), which
    TextIOWrapper asks; closing this wrapper leaves the member to its archive."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readinto(self, buffer) -> int:
        data = self._stream.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _chunk(source: str, name: str, first: int, frames: list[str]) -> Item:
    return Item(key=f"{source}#{first}", source=source, name=name, data="".join(frames).encode(), first_frame=first,
                frames=len(frames))


def _split_frames(text: io.TextIOBase, fmt: Format, max_chars: int) -> Iterator[str]:
    """The text of each frame (a JSON line, an extxyz frame: `extxyz.split_frames`), or a `FrameFault`
    for one over `max_chars` or broken: no line or frame is held whole past the limit, whatever the file
    says (an endless line, a header of 10^12 atoms)."""
    lines = _bounded_lines(text, max_chars)
    if fmt == "extxyz":
        yield from split_frames(lines, max_chars)
        return
    large = FrameFault(too_large(max_chars))
    yield from (large if line is None else line if line.endswith("\n") else line + "\n"
                for line in lines if line is None or line.strip())


def _bounded_lines(text: io.TextIOBase, max_chars: int) -> Iterator[str | None]:
    """The lines of `text`, or None for one over `max_chars` (read past in pieces, never held)."""
    while True:
        line = text.readline(max_chars + 1)
        if not line:
            return
        if len(line) <= max_chars:
            yield line
            continue
        while line and not line.endswith("\n"):
            line = text.readline(1 << 20)
        yield None


def _archive_inputs(path: Path, max_bytes: int) -> Iterator[Item | Skipped]:
    """Members of a tar or zip archive, read in archive order without unpacking to disk, none past `max_bytes`."""
    try:
        if path.name.lower().endswith(".zip"):
            with zipfile.ZipFile(path) as archive:
                for info in archive.infolist():
                    if info.is_dir():
                        continue
                    if info.flag_bits & 0x1:  # zipfile would stop the run asking for the password
                        yield _member_failure(path, info.filename, "encrypted zip member (a password is needed): not read")
                        continue
                    try:
                        member = archive.open(info)
                    except NotImplementedError as e:  # a compression method zipfile lacks (deflate64, ...)
                        yield _member_failure(path, info.filename, f"unreadable zip member: {e}")
                        continue
                    with member:
                        yield from _member_inputs(path, info.filename, member, max_bytes, info.file_size)
        else:
            with tarfile.open(path, "r|*") as archive:
                for info in archive:
                    if info.isfile():
                        member = archive.extractfile(info)
                        if member is not None:
                            yield from _member_inputs(path, info.name, member, max_bytes, info.size)
                    elif not info.isdir():  # counted, not dropped: inputs = featurized + failed
                        kind = ("a hard link" if info.islnk() else "a symbolic link" if info.issym()
                                else "not a regular file (a device or FIFO)")
                        yield _member_failure(path, info.name, f"archive member is {kind}, not read (archive the file itself)")
    except (OSError, EOFError, tarfile.TarError, zipfile.BadZipFile, lzma.LZMAError) as e:
        yield Item(key=f"{path}::", source=str(path), name=path.name, error=f"unreadable archive: {e}")


def _member_failure(archive: Path, member_name: str, reason: str) -> Item | Skipped:
    """A member that cannot be read: a failure with `reason` when named like a structure file, else skipped."""
    source = f"{archive}::{member_name}"
    if detect_format(member_name)[0] is None:
        return Skipped(source, UNKNOWN_KIND)
    return Item(key=source, source=source, name=member_name, error=reason)


def _member_inputs(archive: Path, member_name: str, member: BinaryIO, max_bytes: int,
                   size: int = 0) -> Iterator[Item | Skipped]:
    source = f"{archive}::{member_name}"
    fmt, _ = detect_format(member_name)
    suffix = Path(member_name).suffix.lower()
    if fmt is None:
        yield Skipped(source, UNKNOWN_KIND)
    elif fmt in MULTI_STRUCTURE_FORMATS and suffix not in _OPENERS:
        yield from _frame_items(source, member_name, fmt, member, max_bytes)
    elif fmt == "json" and suffix not in _OPENERS and _is_large(source, suffix, max_bytes, size):
        yield from _entry_items(source, member_name, member, max_bytes)
    else:
        try:  # a zip member inflating to gigabytes is read one byte past the limit, no further
            yield Item(key=source, source=source, name=member_name, data=read_bounded(member, max_bytes))
        except TooLargeError as e:
            yield Item(key=source, source=source, name=member_name, error=str(e))
