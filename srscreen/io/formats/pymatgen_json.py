"""pymatgen JSON: `Structure.as_dict()`, or any dict with a "structure" key such as a
ComputedStructureEntry, one per file, a list of them, one per line (.jsonl), or chunks of large entry
dumps; orjson and arrays, no pymatgen objects built. Also pymatgen Structures in memory.
"""

from __future__ import annotations

from typing import Iterator

import orjson

from srscreen.errors import one_line
from srscreen.io.parsed import DisorderPolicy, ParseFailure, Parsed, ReadError, check_not_isotope, checked, species_number


def from_pymatgen(id_: str, structure, policy: DisorderPolicy) -> Parsed | ParseFailure:
    """A pymatgen Structure as arrays, with the checks every reader applies."""
    from pymatgen.core.periodic_table import DummySpecies

    try:
        numbers = [
            # A DummySpecies' Z is hash(symbol): random, often positive. It has no element: 0.
            species_number([(0 if isinstance(sp, DummySpecies) else getattr(sp, "Z", 0), occ)
                             for sp, occ in site.species.items()], policy)
            for site in structure
        ]
        return checked(id_, structure.lattice.matrix, structure.frac_coords, numbers)
    except ReadError as e:
        return ParseFailure(id_, str(e))



def structure_from_dict(id_: str, d: dict, policy: DisorderPolicy) -> Parsed | ParseFailure:
    """A pymatgen Structure dict (or an entry dict holding one under "structure") to arrays, no objects built."""
    from pymatgen.core.periodic_table import Element

    try:
        if not isinstance(d, dict):  # a JSON line or list element [1, 2] stopped its whole chunk (AttributeError)
            raise ReadError(f"not a pymatgen structure dict: a JSON {type(d).__name__}")
        if "structure" in d and isinstance(d["structure"], dict):
            d = d["structure"]
        lattice = d.get("lattice")
        if not isinstance(lattice, dict) or "matrix" not in lattice:
            what = "lattice.matrix" if isinstance(lattice, dict) else "lattice"
            raise ReadError(f"not a pymatgen structure dict: no {what}")
        if not isinstance(d.get("sites"), list):
            raise ReadError("not a pymatgen structure dict: no list of sites")
        frac, numbers = [], []
        for k, site in enumerate(d["sites"]):
            if "abc" not in site:
                raise ReadError(f"site {k} has no fractional coordinates (abc)")
            occ = [(_element_number(Element, sp["element"]), float(sp.get("occu", 1.0))) for sp in site["species"]]
            numbers.append(species_number(occ, policy))
            frac.append(site["abc"])
        return checked(id_, lattice["matrix"], frac, numbers)
    except ReadError as e:
        return ParseFailure(id_, str(e))
    except (KeyError, TypeError, ValueError, IndexError) as e:
        return ParseFailure(id_, f"not a pymatgen structure dict ({type(e).__name__}: {one_line(e)})")



def _element_number(element_class, symbol: str) -> int:
    check_not_isotope(symbol)
    try:
        return element_class(symbol).Z
    except ValueError:
        raise ReadError(f"site without a chemical element ({symbol!r}: dummy or unknown species)") from None



def entry_id(d: object, fallback: str) -> str:
    """The id an entry gives itself: `entry_id`, else its data dict's `material_id` or `mat_id`
    (Materials Project, Alexandria); `fallback` for a bare structure."""
    if isinstance(d, dict):
        value = d.get("entry_id")
        if value in (None, "") and isinstance(d.get("data"), dict):
            value = d["data"].get("material_id") or d["data"].get("mat_id")
        if value not in (None, "") and isinstance(value, (str, int)):
            return str(value)
    return fallback



def _loads(text: str | bytes):
    """orjson, or the standard library for what only it reads (NaN and Infinity, which monty writes).
    A leading byte-order mark (Windows editors write one) is dropped: both refused the file for it."""
    if isinstance(text, str) and text.startswith("\ufeff"):
        text = text[1:]
    elif isinstance(text, bytes) and text.startswith(b"\xef\xbb\xbf"):
        text = text[3:]
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        import json

        return json.loads(text)



def parse_json(stem: str, text: str, policy: DisorderPolicy) -> Iterator[Parsed | ParseFailure]:
    try:
        obj = _loads(text)
    except ValueError as e:
        yield ParseFailure(stem, f"invalid JSON: {one_line(e)}")
        return
    if isinstance(obj, dict) and isinstance(obj.get("entries"), list):  # Alexandria's layout
        obj = obj["entries"]
    if isinstance(obj, list):
        for i, d in enumerate(obj):
            yield structure_from_dict(entry_id(d, f"{stem}:{i}"), d, policy)
    else:
        yield structure_from_dict(stem, obj, policy)



def parse_entry_chunk(stem: str, text: str, first: int, policy: DisorderPolicy) -> Iterator[Parsed | ParseFailure]:
    """Structures from a chunk of a large JSON list (a JSON array of its elements); elements are
    numbered from `first` so ids without an entry id stay global."""
    try:
        elements = _loads(text)
    except ValueError as e:
        yield ParseFailure(f"{stem}:{first}", f"invalid JSON: {one_line(e)}")
        return
    for i, d in enumerate(elements, start=first):
        yield structure_from_dict(entry_id(d, f"{stem}:{i}"), d, policy)



def parse_jsonl(stem: str, text: str, first: int, policy: DisorderPolicy) -> Iterator[Parsed | ParseFailure]:
    """Structures from the non-blank JSON lines of `text` (line ends already `\\n`); frame numbers count
    from `first` so chunks keep global ids. Cut at `\\n` only: str.splitlines also cuts at U+2028,
    U+2029 and U+0085, which a JSON string may hold raw (json.dumps(..., ensure_ascii=False))."""
    lines = [line for line in text.split("\n") if line.strip()]
    for i, line in enumerate(lines, start=first):
        id_ = f"{stem}:{i}"
        try:
            yield structure_from_dict(id_, _loads(line), policy)  # NaN as in .json: a non-finite failure
        except ValueError as e:
            yield ParseFailure(id_, f"invalid JSON line: {one_line(e)}")
