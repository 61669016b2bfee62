"""One unit of work from `sources` (a file, an archive member, a chunk of frames or rows) -> its
structures, with the format detected once per item, and never an input lost without a record."""

from __future__ import annotations

from typing import Iterator

from srscreen.errors import one_line
from srscreen.io.formats.ase_db import parse_ase_db_rows
from srscreen.io.formats.extxyz import parse_extxyz_frames
from srscreen.io.formats.pymatgen_json import parse_entry_chunk, parse_jsonl
from srscreen.io.compression import DECOMPRESSION_ERRORS, MAX_STRUCTURE_BYTES, read_structure_file
from srscreen.io.parsed import DisorderPolicy, Parsed, ParseFailure, ReadError
from srscreen.io.readers import detect_format, parse_content, parse_plain
from srscreen.io.sources import Item


def parse_item(item: Item, policy: DisorderPolicy,
               max_bytes: int = MAX_STRUCTURE_BYTES) -> Iterator[Parsed | ParseFailure]:
    """Every structure of one item, and a failure when it holds none or a parser breaks: an input is
    never dropped without a record, and one bad file never stops its chunk. A file of more than
    `max_bytes` once decompressed is a failure, read no further than that."""
    fmt, stem = detect_format(item.name)
    found = False
    try:
        for parsed in _structures(item, fmt, stem, policy, max_bytes):
            found = True
            yield parsed
    except Exception as e:  # noqa: BLE001 - a parser bug on one file must not lose the others
        yield ParseFailure(stem, f"cannot read: {type(e).__name__}: {one_line(e, 200)}")
        return
    if not found:
        yield ParseFailure(stem, "no structure in file")


def _structures(item: Item, fmt, stem: str, policy: DisorderPolicy, max_bytes: int) -> Iterator[Parsed | ParseFailure]:
    if item.error is not None:
        return iter([ParseFailure(stem if item.failed_frame is None else f"{stem}:{item.failed_frame}", item.error)])
    if item.last_frame is not None:  # a range of rows of an ASE database
        return parse_ase_db_rows(item.path, stem, item.first_frame, item.last_frame, item.id_key)
    if item.path is not None:
        try:
            data = read_structure_file(item.path, max_bytes)
        except ReadError as e:
            return iter([ParseFailure(stem, str(e))])
        except OSError as e:
            return iter([ParseFailure(stem, f"unreadable: {e.strerror}" if e.strerror else f"cannot decompress: {one_line(e)}")])
        except DECOMPRESSION_ERRORS as e:
            return iter([ParseFailure(stem, f"cannot decompress: {one_line(e)}")])
        return parse_plain(fmt, stem, data, policy)
    if item.key == item.source:  # a whole file held in memory (archive member)
        return parse_content(fmt, stem, item.name, item.data, policy, max_bytes)
    text = item.data.decode("utf-8", errors="replace")
    if fmt == "jsonl":
        return parse_jsonl(stem, text, item.first_frame, policy)
    if fmt == "json":  # a chunk of a large entry dump
        return parse_entry_chunk(stem, text, item.first_frame, policy)
    return parse_extxyz_frames(stem, text, item.first_frame)
