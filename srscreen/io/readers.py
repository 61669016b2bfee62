"""Structure files -> plain arrays (id, lattice, fractional coordinates, atomic numbers): the format from
the file name (`detect_format`, compression suffixes looked through), then its parser.

Every parser yields one `Parsed` per structure in a file, or a `ParseFailure` with a one-line reason:
a bad structure never stops the others in the same file. One module per format in `io.formats`,
fastest that is correct first: CIF (gemmi, pymatgen's CifParser as the fallback), pymatgen JSON
(dicts, lists, JSON lines, entry dumps: orjson and arrays), POSCAR/CONTCAR/.vasp (pymatgen), extxyz
and ASE databases (ASE).

No parser fills in a default for what a file lacks: a missing, unreadable or impossible cell, a
missing or non-numeric coordinate is a failure naming it. Every lattice goes through the shared
`cell.lattice_fault` (`io.parsed`); a CIF's six written cell numbers through
`cell.cell_parameters_fault` first, and the cell gemmi (or pymatgen, the fallback) builds must be made
of those numbers.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Iterator, Literal


from srscreen.errors import one_line
from srscreen.io.compression import COMPRESSION, DECOMPRESSION_ERRORS, MAX_STRUCTURE_BYTES, decompress, text_of
from srscreen.io.formats.cif import parse_cif
from srscreen.io.formats.extxyz import parse_extxyz_frames
from srscreen.io.formats.poscar import parse_poscar
from srscreen.io.formats.pymatgen_json import parse_json, parse_jsonl
from srscreen.io.parsed import DisorderPolicy, ParseFailure, Parsed, ReadError


Format = Literal["cif", "json", "jsonl", "poscar", "extxyz", "asedb"]



_SUFFIX_FORMAT: dict[str, Format] = {
    ".cif": "cif", ".mcif": "cif", ".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl",
    ".vasp": "poscar", ".poscar": "poscar", ".extxyz": "extxyz", ".xyz": "extxyz", ".db": "asedb",
}



MULTI_STRUCTURE_FORMATS: frozenset[Format] = frozenset({"jsonl", "extxyz"})



def detect_format(name: str) -> tuple[Format | None, str]:
    """(format, id stem) from a file name; format None when srscreen does not read it.

    Compression suffixes (.gz, .bz2, .xz) are looked through. POSCAR/CONTCAR-named files take
    their folder's name in the id (``run1/POSCAR``) since the bare stem would repeat in every folder.
    """
    if "//" in name or "/." in name or name.endswith("/") or name.startswith("."):
        # Not a plain relative/absolute name: let pathlib normalise it.
        name = str(PurePosixPath(name))
        if name == ".":
            name = ""
    parent, _, filename = name.rpartition("/")
    # Suffixes as pathlib gives them: none after a trailing dot, leading dots are not separators.
    suffixes = [] if filename.endswith(".") else ["." + x.lower() for x in filename.lstrip(".").split(".")[1:]]
    stem = filename
    if suffixes and suffixes[-1] in COMPRESSION:
        stem = stem[: -len(suffixes[-1])]
        suffixes = suffixes[:-1]
    upper = stem.upper()
    if upper.startswith(("POSCAR", "CONTCAR")) and not (suffixes and suffixes[-1] in _SUFFIX_FORMAT):
        parent = parent.rpartition("/")[2]
        return "poscar", f"{parent}/{stem}" if parent else stem
    dot = stem.rfind(".")
    base_stem = stem[:dot] if 0 < dot < len(stem) - 1 else stem
    if not suffixes or suffixes[-1] not in _SUFFIX_FORMAT:
        return None, base_stem
    return _SUFFIX_FORMAT[suffixes[-1]], base_stem



def parse_bytes(name: str, data: bytes, policy: DisorderPolicy = "fail",
                max_bytes: int = MAX_STRUCTURE_BYTES) -> Iterator[Parsed | ParseFailure]:
    """Every structure in one file's content; the format comes from the name."""
    yield from parse_content(*detect_format(name), name, data, policy, max_bytes)



def parse_content(fmt: Format | None, stem: str, name: str, data: bytes, policy: DisorderPolicy,
                  max_bytes: int = MAX_STRUCTURE_BYTES) -> Iterator[Parsed | ParseFailure]:
    """Every structure in a file's content as the file holds it (compressed when its name says so), whose
    format and stem `detect_format(name)` gave; a failure when it holds more than `max_bytes` once
    decompressed (never inflated further)."""
    try:
        plain = decompress(name, data, max_bytes)
    except ReadError as e:
        yield ParseFailure(stem, str(e))
        return
    except (OSError, *DECOMPRESSION_ERRORS) as e:
        yield ParseFailure(stem, f"cannot decompress: {one_line(e)}")
        return
    yield from parse_plain(fmt, stem, plain, policy)



def parse_plain(fmt: Format | None, stem: str, data: bytes, policy: DisorderPolicy) -> Iterator[Parsed | ParseFailure]:
    """Every structure in a file's decompressed content: the one dispatch from a format to its parser."""
    if fmt == "asedb":  # SQLite needs a file on disk: sources hands plain .db files over by path and row range
        yield ParseFailure(stem, "an ASE database is read only as a plain file (not compressed, not in an archive)")
        return
    try:
        text = text_of(data)
    except ReadError as e:
        yield ParseFailure(stem, str(e))
        return
    if fmt == "cif":
        yield from parse_cif(stem, text, policy)
    elif fmt == "json":
        yield from parse_json(stem, text, policy)
    elif fmt == "jsonl":
        yield from parse_jsonl(stem, text, 0, policy)
    elif fmt == "extxyz":
        yield from parse_extxyz_frames(stem, text, 0)
    elif fmt == "poscar":
        yield from parse_poscar(stem, text, policy)
    else:
        yield ParseFailure(stem, "unknown format")
