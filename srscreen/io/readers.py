"""Parse structure files into plain arrays: (id, lattice, fractional coordinates, atomic numbers).

Every parser takes the file's bytes and yields one `Parsed` per structure in it, or a `ParseFailure`
with a one-line reason: a bad structure never stops the others in the same file.

Parsers, fastest that is correct first:
- CIF: gemmi (~0.1 ms a file, symmetry expanded), pymatgen's CifParser as the fallback for what gemmi
  rejects. Coordinates are taken as written: no snapping of near-special values (pymatgen's CifParser
  moves fractional coordinates within 1e-4 of 1/3, 1/2, ... onto them; we keep the file's numbers).
- pymatgen JSON (`Structure.as_dict()`, or any dict with a "structure" key such as a
  ComputedStructureEntry), one per file, a list of them, or one per line (.jsonl): orjson + arrays.
- POSCAR/CONTCAR/.vasp: pymatgen's Poscar.
- extxyz: ASE; frames without a lattice are failures (a crystal graph needs periodicity).
- ASE databases (.db): rows read by id range with ase.db; rows without a periodic cell are failures.
- Entry dumps (lists of `ComputedStructureEntry` dicts): ids from `entry_id`, else the data dict's
  `material_id`/`mat_id`; large dumps are cut into chunks by `sources` and parsed a chunk at a time.

No parser fills in a default for what a file lacks: a missing, unreadable or impossible cell, a
missing or non-numeric coordinate is a failure naming it. Every lattice goes through the shared
`cell.lattice_fault`; a CIF's six written cell numbers through `cell.cell_parameters_fault` first,
and the cell gemmi (or pymatgen, the fallback) builds must be made of those numbers.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import PurePosixPath
from typing import Iterator, Literal

import numpy as np
import orjson

from srscreen.io.cell import cell_parameters_fault, lattice_fault
from srscreen.errors import one_line

Format = Literal["cif", "json", "jsonl", "poscar", "extxyz", "asedb"]
DisorderPolicy = Literal["fail", "majority"]

_COMPRESSION = {".gz": gzip.decompress, ".bz2": bz2.decompress, ".xz": lzma.decompress}
_COMPRESSION_SUFFIXES = tuple(_COMPRESSION)
_SUFFIX_FORMAT: dict[str, Format] = {
    ".cif": "cif", ".mcif": "cif", ".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl",
    ".vasp": "poscar", ".poscar": "poscar", ".extxyz": "extxyz", ".xyz": "extxyz", ".db": "asedb",
}
MULTI_STRUCTURE_FORMATS: frozenset[Format] = frozenset({"jsonl", "extxyz"})
_OCCUPANCY_TOL = 1e-3
_MAX_Z = 118


@dataclass(frozen=True)
class Parsed:
    """A structure as arrays; lattice rows are the cell vectors in Å."""

    id: str
    lattice: np.ndarray
    frac_coords: np.ndarray
    numbers: np.ndarray


@dataclass(frozen=True)
class ParseFailure:
    id: str
    reason: str


class ReadError(ValueError):
    """The structure in hand cannot be used (the message is the one-line reason)."""


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
    if suffixes and suffixes[-1] in _COMPRESSION:
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


def decompress(name: str, data: bytes) -> bytes:
    """The file's content with a compression suffix undone."""
    lower = name.lower()
    if not lower.endswith(_COMPRESSION_SUFFIXES):
        return data
    suffix = PurePosixPath(name).suffix.lower()
    return _COMPRESSION[suffix](data) if suffix in _COMPRESSION else data


def _text(data: bytes) -> str:
    if not data.strip():
        raise ReadError("empty file")
    if b"\x00" in data[:4096]:
        raise ReadError("binary file, not a structure")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _checked(id_: str, lattice, frac, numbers) -> Parsed:
    """Reject what no graph can be built from: empty, non-finite, degenerate or unknown-element cells."""
    numbers = np.asarray(numbers, dtype=np.int64).reshape(-1)
    if len(numbers) == 0:
        raise ReadError("structure has no atoms")
    try:
        lattice = np.asarray(lattice, dtype=np.float64)
    except (TypeError, ValueError):
        raise ReadError("lattice is not a 3x3 matrix of numbers") from None
    if lattice.shape != (3, 3):
        raise ReadError(f"lattice is not a 3x3 matrix of numbers (shape {lattice.shape})")
    _check_lattice(lattice, len(numbers))
    try:
        frac = np.asarray(frac, dtype=np.float64)
    except (TypeError, ValueError):
        raise ReadError("coordinates are not 3 numbers per site") from None
    if frac.shape != (len(numbers), 3):
        raise ReadError(f"coordinates are not 3 numbers per site ({len(numbers)} sites, shape {frac.shape})")
    if not np.isfinite(frac).all():
        raise ReadError("non-finite coordinates (NaN, infinite or missing)")
    if ((numbers <= 0) | (numbers > _MAX_Z)).any():
        raise ReadError("site without a chemical element (dummy or unknown species)")
    return Parsed(id_, lattice, frac, numbers)


def _volume_checked(id_: str, lattice: np.ndarray, frac: np.ndarray, numbers: np.ndarray) -> Parsed:
    """`_checked` for arrays known to be float64/int64, finite, non-empty and of real elements."""
    _check_lattice(lattice, len(numbers))
    return Parsed(id_, lattice, frac, numbers)


def _check_lattice(lattice: np.ndarray, n_atoms: int) -> None:
    """The shared cell check (`cell.lattice_fault`) as a ReadError."""
    fault = lattice_fault(lattice.tolist(), n_atoms)
    if fault is not None:
        raise ReadError(fault)


def _species_number(occupancies: list[tuple[int, float]], policy: DisorderPolicy) -> int:
    """The element of a site; partial occupancy is an error unless the policy takes the majority."""
    if len(occupancies) == 1 and occupancies[0][1] >= 1.0 - _OCCUPANCY_TOL:
        return occupancies[0][0]
    if policy == "fail":
        desc = " ".join(f"Z{z}:{o:g}" for z, o in occupancies)
        raise ReadError(f"disordered site (partial occupancy {desc}); use --on-disorder majority to order it")
    return max(occupancies, key=lambda zo: zo[1])[0]


def _parse_cif(stem: str, text: str, policy: DisorderPolicy) -> Iterator[Parsed | ParseFailure]:
    import gemmi

    try:
        doc = gemmi.cif.read_string(text)
    except (RuntimeError, ValueError) as gemmi_error:
        yield from _parse_cif_pymatgen(stem, text, policy, str(gemmi_error))
        return
    blocks = list(doc)
    for i, block in enumerate(blocks):
        id_ = stem if len(blocks) == 1 else f"{stem}:{i}"
        try:
            fast = _p1_block_arrays(block)
            if fast is not None:  # finite, known elements, at least one site, a valid cell: only the volume to check
                yield _volume_checked(id_, *fast)
                continue
            # gemmi falls back on a 1 Å cube for a missing or unreadable cell and on 0 for a missing
            # coordinate column: check the block's own numbers first, then that gemmi used them.
            _check_cif_coordinate_tags(lambda tag: bool(block.find_values(tag)))
            params = _cif_cell_parameters(block.find_value)
            small = gemmi.make_small_structure_from_block(block)
            cell = small.cell
            _check_cell_used((cell.a, cell.b, cell.c, cell.alpha, cell.beta, cell.gamma), params)
            sites = small.get_all_unit_cell_sites()
            if not sites:
                raise ReadError("no atom sites in CIF block")
            partial = [s for s in sites if s.occ < 1.0 - _OCCUPANCY_TOL]
            if partial and policy == "fail":
                raise ReadError(
                    f"disordered site {partial[0].label} (occupancy {partial[0].occ:g}); "
                    "use --on-disorder majority to order it"
                )
            if partial:
                sites = _majority_sites(sites)
            frac = [s.fract.tolist() for s in sites]
            numbers = [s.element.atomic_number for s in sites]
            yield _checked(id_, np.array(cell.orth.mat.tolist()).T, frac, numbers)
        except ReadError as e:
            yield ParseFailure(id_, str(e))
        except (RuntimeError, ValueError, IndexError) as e:
            yield ParseFailure(id_, f"invalid CIF: {one_line(e)}")


_SYMOP_TAGS = ("_space_group_symop_operation_xyz", "_symmetry_equiv_pos_as_xyz")  # gemmi's order
_SG_NUMBER_TAGS = ("_space_group_IT_number", "_symmetry_Int_Tables_number")
_CELL_TAGS = ["_cell_length_a", "_cell_length_b", "_cell_length_c", "_cell_angle_alpha", "_cell_angle_beta", "_cell_angle_gamma"]
_FRACT_TAGS = ("_atom_site_fract_x", "_atom_site_fract_y", "_atom_site_fract_z")
_SITE_COLUMNS = ["_atom_site_type_symbol", "_atom_site_fract_x", "_atom_site_fract_y", "_atom_site_fract_z"]


def _cif_cell_parameters(find) -> list[float]:
    """a, b, c, alpha, beta, gamma as the CIF writes them (`find(tag)` gives a tag's raw value or
    None); a ReadError naming the tag when one is missing, unknown (? or .) or not a number, or
    when the six make no cell. Uncertainties are dropped: 5.43(2) is 5.43."""
    import gemmi

    params = []
    for tag in _CELL_TAGS:
        raw = find(tag)
        if isinstance(raw, list):  # pymatgen's CifBlock: a looped value
            raw = raw[0] if len(raw) == 1 else " ".join(raw)
        if raw is None:
            raise ReadError(f"CIF has no {tag}: a cell needs all six _cell_length_* and _cell_angle_* values")
        value = gemmi.cif.as_number(raw)
        if math.isnan(value):
            what = "unknown" if raw.strip() in ("?", ".") else "not a number"
            raise ReadError(f"CIF {tag} is {what} ({one_line(raw)[:40]!r}): the cell is not given")
        params.append(value)
    fault = cell_parameters_fault(*params)
    if fault is not None:
        raise ReadError(fault)
    return params


def _check_cif_coordinate_tags(has) -> None:
    """A ReadError unless the block has fractional coordinate columns (`has(tag)`: tag present)."""
    missing = [tag for tag in _FRACT_TAGS if not has(tag)]
    if not missing:
        return
    if has("_atom_site_cartn_x"):
        raise ReadError(
            "CIF gives Cartesian coordinates only (_atom_site_Cartn_*): srscreen needs _atom_site_fract_x/y/z"
        )
    if len(missing) == 3 and not (has("_atom_site_label") or has("_atom_site_type_symbol")):
        raise ReadError("no atom sites in CIF block")
    raise ReadError(f"atom sites without fractional coordinates (no {', '.join(missing)})")


def _check_cell_used(used: tuple[float, ...], params: list[float]) -> None:
    """A ReadError when the parser built its cell from other numbers than the CIF's (a default cell)."""
    if any(not abs(u - p) <= 1e-6 * max(1.0, abs(p)) for u, p in zip(used, params)):
        raise ReadError(
            f"cell read ({' '.join(f'{x:g}' for x in used)}) is not the CIF's "
            f"_cell_* values ({' '.join(f'{x:g}' for x in params)})"
        )


@lru_cache(maxsize=1)
def _symbol_numbers() -> dict[str, int]:
    """Element symbol as written in CIFs ('Fe') -> Z, for the symbols gemmi reads as that element."""
    import gemmi

    table = {}
    for z in range(1, _MAX_Z + 1):
        symbol = gemmi.Element(z).name
        if gemmi.Element(symbol).atomic_number == z:
            table[symbol] = z
    return table


def _p1_block_arrays(block) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(lattice, frac, numbers) read as columns from a plain, ordered P1 block; None for anything else.

    The fast path for what databases write (Materials Project, pymatgen's CifWriter): the only
    symmetry operation is the identity, every site has an element type symbol and full occupancy,
    and every number is a plain decimal. It gives what gemmi's SmallStructure gives for such a block
    (same cell matrix, coordinates as written, sites in file order); any other block (symmetry to
    expand, partial occupancy, labels without type symbols, uncertainties like 0.123(4), ?, quotes)
    returns None and goes through SmallStructure.
    """
    import gemmi

    for tag in _SYMOP_TAGS:
        ops = block.find_values(tag)
        if ops:
            break
    else:
        return None  # symmetry from a space-group name or number: let gemmi expand it
    if len(ops) != 1 or gemmi.cif.as_string(ops[0]).replace(" ", "").lower() != "x,y,z":
        return None
    for tag in _SG_NUMBER_TAGS:  # gemmi rejects a block whose space-group number is not an integer
        number = block.find_value(tag)
        if number is not None:
            if number not in ("?", ".") and not (number.isascii() and number.isdigit()):
                return None
            break
    column = block.find_loop("_atom_site_fract_x")
    loop = column.get_loop() if column else None
    if loop is None or loop.length() == 0:
        return None
    # Tags are case-insensitive; gemmi reads the site table from the loop that holds _atom_site_label.
    tags = [t.lower() for t in loop.tags]
    if "_atom_site_label" not in tags or not all(t in tags for t in _SITE_COLUMNS):
        return None
    try:
        cell = [block.find_value(tag) for tag in _CELL_TAGS]
        params = [float(v) for v in cell]
        if cell_parameters_fault(*params) is not None:
            return None  # the full path names the fault
        # The whole loop in one call, then columns by slicing: far cheaper than a Column per tag.
        values, width = loop.values, len(tags)
        ks, kx, ky, kz = (tags.index(t) for t in _SITE_COLUMNS)
        symbols = _symbol_numbers()
        numbers = np.array([symbols[v] for v in values[ks::width]], dtype=np.int64)
        coords = values[kx::width] + values[ky::width] + values[kz::width]
        occupancies = values[tags.index("_atom_site_occupancy") :: width] if "_atom_site_occupancy" in tags else []
        # Python's float() reads more than CIF numbers ('1_0', non-ASCII digits): those go to gemmi.
        written = "".join(cell) + "".join(coords) + "".join(occupancies)
        if not written.isascii() or "_" in written:
            return None
        frac = np.ascontiguousarray(np.array(coords, dtype=np.float64).reshape(3, -1).T)
        if occupancies and min(map(float, occupancies)) < 1.0 - _OCCUPANCY_TOL:
            return None  # disorder: the policy decides, in the full path
    except (KeyError, ValueError, TypeError):
        return None  # no cell value, not a plain element symbol or decimal number
    if not np.isfinite(frac).all():
        return None
    unit_cell = gemmi.UnitCell(*params)
    if not (unit_cell.volume > 0 and math.isfinite(unit_cell.volume)):
        return None
    return np.array(unit_cell.orth.mat.tolist()).T, frac, numbers


def _majority_sites(sites: list) -> list:
    """Keep, at each position, the most occupied species (the 'majority' disorder policy)."""
    best: dict[tuple[float, float, float], object] = {}
    for s in sites:
        key = tuple(round(c % 1.0, 3) % 1.0 for c in s.fract.tolist())
        if key not in best or s.occ > best[key].occ:
            best[key] = s
    return list(best.values())


def _parse_cif_pymatgen(stem: str, text: str, policy: DisorderPolicy, first_error: str) -> Iterator[Parsed | ParseFailure]:
    """Fallback for CIFs gemmi rejects, a block at a time, under the same cell and coordinate checks
    as gemmi's path; failures pymatgen cannot explain report gemmi's reason, which names the bad line."""
    import warnings

    from pymatgen.io.cif import CifFile, CifParser

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            blocks = list(CifFile.from_str(text).data.values())
    except Exception:  # noqa: BLE001 - pymatgen raises anything on bad input; gemmi's reason is the useful one
        blocks = []
    if not blocks:
        yield ParseFailure(stem, f"invalid CIF: {one_line(first_error)}")
        return
    for i, block in enumerate(blocks):
        id_ = stem if len(blocks) == 1 else f"{stem}:{i}"
        lower: dict[str, list] = {}
        for tag, value in block.data.items():  # tags are case-insensitive: pymatgen's dict is not
            lower.setdefault(tag.lower(), []).append(value)
        try:
            _check_cif_coordinate_tags(lambda tag: tag in lower)
            _check_cif_coordinate_values(lower)
            params = _cif_cell_parameters(lambda tag: _one_value(lower, tag))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                structures = CifParser.from_str(str(block), frac_tolerance=0.0).parse_structures(primitive=False)
            if len(structures) != 1:
                raise ValueError(f"{len(structures)} structures in one block")
            _check_cell_used(structures[0].lattice.parameters, params)
        except ReadError as e:
            yield ParseFailure(id_, str(e))
            continue
        except Exception:  # noqa: BLE001 - as above
            yield ParseFailure(id_, f"invalid CIF: {one_line(first_error)}")
            continue
        yield from_pymatgen(id_, structures[0], policy)


def _check_cif_coordinate_values(values: dict[str, list]) -> None:
    """A ReadError for a fractional coordinate that is not a number (pymatgen would drop the block
    without saying why); `values` by lower-cased tag, as in `_parse_cif_pymatgen`."""
    import gemmi

    for tag in _FRACT_TAGS:
        for column in values[tag]:
            for raw in column if isinstance(column, list) else [column]:
                if math.isnan(gemmi.cif.as_number(raw)):
                    raise ReadError(f"non-finite coordinates: {tag} value {one_line(raw)[:40]!r} is not a number")


def _one_value(values: dict[str, list], tag: str):
    """The value of `tag` (lower case) among a block's values by lower-cased tag; None if absent,
    a ReadError if the block gives it twice, differently (which pymatgen would resolve silently)."""
    import gemmi

    found = values.get(tag)
    if not found:
        return None
    first = found[0]
    for other in found[1:]:
        same_number = (isinstance(other, str) and isinstance(first, str)
                       and gemmi.cif.as_number(other) == gemmi.cif.as_number(first))
        if other != first and not same_number:
            raise ReadError(f"CIF gives {tag} {len(found)} times with different values")
    return first


def from_pymatgen(id_: str, structure, policy: DisorderPolicy) -> Parsed | ParseFailure:
    """A pymatgen Structure as arrays, with the checks every reader applies."""
    from pymatgen.core.periodic_table import DummySpecies

    try:
        numbers = [
            # A DummySpecies' Z is hash(symbol): random, often positive. It has no element: 0.
            _species_number([(0 if isinstance(sp, DummySpecies) else getattr(sp, "Z", 0), occ)
                             for sp, occ in site.species.items()], policy)
            for site in structure
        ]
        return _checked(id_, structure.lattice.matrix, structure.frac_coords, numbers)
    except ReadError as e:
        return ParseFailure(id_, str(e))


def structure_from_dict(id_: str, d: dict, policy: DisorderPolicy) -> Parsed | ParseFailure:
    """A pymatgen Structure dict (or an entry dict holding one under "structure") to arrays, no objects built."""
    from pymatgen.core.periodic_table import Element

    try:
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
            numbers.append(_species_number(occ, policy))
            frac.append(site["abc"])
        return _checked(id_, lattice["matrix"], frac, numbers)
    except ReadError as e:
        return ParseFailure(id_, str(e))
    except (KeyError, TypeError, ValueError, IndexError) as e:
        return ParseFailure(id_, f"not a pymatgen structure dict ({type(e).__name__}: {one_line(e)})")


def _element_number(element_class, symbol: str) -> int:
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
    """orjson, or the standard library for what only it reads (NaN and Infinity, which monty writes)."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        import json

        return json.loads(text)


def _parse_json(stem: str, text: str, policy: DisorderPolicy) -> Iterator[Parsed | ParseFailure]:
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


def parse_ase_db_rows(path: str, stem: str, first_id: int, last_id: int,
                      id_key: str | None = None) -> Iterator[Parsed | ParseFailure]:
    """Rows `first_id`..`last_id` of an ASE database; ids `stem:<row id>`, or the row's `id_key` value."""
    import ase.db

    try:
        db = ase.db.connect(path, type="db", create_indices=False, use_lock_file=False)
        rows = db.select(f"id>={first_id},id<={last_id}")
        for row in rows:
            name = f"{stem}:{row.id}"
            try:
                if id_key is not None:
                    value = row.get(id_key)
                    if value is None or value == "":
                        raise ReadError(f"row {row.id} has no key {id_key!r} (--id-key)")
                    name = str(value)
                if not np.asarray(row.pbc).all():
                    raise ReadError("row has no periodic cell (pbc must be true along a, b and c)")
                cell = np.asarray(row.cell, dtype=np.float64)
                _check_lattice(cell, len(row.numbers))  # before the inverse: a zero cell is a reason, not an error
                frac = np.asarray(row.positions, dtype=np.float64) @ np.linalg.inv(cell)
                yield _checked(name, cell, frac, row.numbers)
            except ReadError as e:
                yield ParseFailure(name, str(e))
            except (KeyError, TypeError, ValueError, AttributeError) as e:
                yield ParseFailure(name, f"unusable ASE row: {one_line(e)}")
    except Exception as e:  # noqa: BLE001 - sqlite and ase raise many types on a damaged file
        yield ParseFailure(f"{stem}:{first_id}", f"unreadable ASE database: {one_line(e)}")


def parse_jsonl_lines(stem: str, lines: list[str], first: int, policy: DisorderPolicy) -> Iterator[Parsed | ParseFailure]:
    """Structures from JSON lines; frame numbers count from `first` so chunks keep global ids."""
    for i, line in enumerate(lines, start=first):
        id_ = f"{stem}:{i}"
        try:
            yield structure_from_dict(id_, _loads(line), policy)  # NaN as in .json: a non-finite failure
        except ValueError as e:
            yield ParseFailure(id_, f"invalid JSON line: {one_line(e)}")


def parse_extxyz_frames(stem: str, text: str, first: int) -> Iterator[Parsed | ParseFailure]:
    """Structures from consecutive extxyz frames; frame numbers count from `first`."""
    import ase.io

    lines = text.splitlines()
    pos, frame = 0, first
    while pos < len(lines):
        if not lines[pos].strip():
            pos += 1
            continue
        id_ = f"{stem}:{frame}"
        try:
            n = int(lines[pos].split()[0])
        except ValueError:
            yield ParseFailure(id_, f"extxyz frame does not start with an atom count (line {pos + 1})")
            return
        block = "\n".join(lines[pos : pos + n + 2])
        pos += n + 2
        frame += 1
        try:
            atoms = ase.io.read(io.StringIO(block), format="extxyz")
            if not atoms.cell.array.any():
                raise ReadError('frame has no lattice (extxyz needs Lattice="..." and pbc="T T T")')
            if not atoms.pbc.all():
                pbc = " ".join("T" if p else "F" for p in atoms.pbc)
                raise ReadError(f'frame has no periodic lattice along a, b and c (pbc="{pbc}"; '
                                'a crystal graph needs pbc="T T T")')
            _check_lattice(atoms.cell.array, len(atoms))  # before the inverse in get_scaled_positions
            yield _checked(id_, atoms.cell.array, atoms.get_scaled_positions(wrap=False), atoms.numbers)
        except ReadError as e:
            yield ParseFailure(id_, str(e))
        except Exception as e:  # noqa: BLE001 - ASE raises many types on malformed frames
            yield ParseFailure(id_, f"invalid extxyz frame: {one_line(e)}")


def _parse_poscar(stem: str, text: str, policy: DisorderPolicy) -> Iterator[Parsed | ParseFailure]:
    import warnings

    from pymatgen.io.vasp import Poscar

    try:
        _check_poscar_scale(text)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            structure = Poscar.from_str(text).structure
    except ReadError as e:
        yield ParseFailure(stem, str(e))
        return
    except Exception as e:  # noqa: BLE001 - pymatgen raises anything on bad input
        yield ParseFailure(stem, _poscar_fault(text) or f"invalid POSCAR: {one_line(e)}")
        return
    yield from_pymatgen(stem, structure, policy)


def _check_poscar_scale(text: str) -> None:
    """A ReadError for a zero scale factor (line 2), which pymatgen takes: it would zero the lattice.
    A negative one is a target volume (VASP's and pymatgen's meaning) and stays."""
    head = text.split("\n", 2)
    tokens = head[1].split("#")[0].split() if len(head) > 1 else []
    try:
        zero = bool(tokens) and all(float(x) == 0.0 for x in tokens)
    except ValueError:
        return  # pymatgen names what it cannot read
    if zero:
        raise ReadError("POSCAR scale factor (line 2) is 0: it multiplies the lattice, so the cell would be a point")


def _poscar_fault(text: str) -> str | None:
    """What a POSCAR pymatgen rejects lacks, when it is a lattice row or coordinate lines; else None."""
    import re

    lines = [ln.split("#")[0].split("!")[0].split() for ln in re.split(r"\n\s*\n", text.strip())[0].splitlines()]

    def numbers(tokens: list[str], n: int) -> bool:
        try:
            [float(x) for x in tokens[:n]]
        except ValueError:
            return False
        return len(tokens) >= n

    if len(lines) < 5 or not all(numbers(row, 3) for row in lines[2:5]):
        return "invalid POSCAR: lines 3-5 must be the three lattice vectors, three numbers each"
    try:
        i = 5 if numbers(lines[5], 1) else 6  # VASP 5 writes element symbols before the counts
        n_atoms = sum(int(x) for x in lines[i])
        i += 2 if lines[i + 1] and lines[i + 1][0][0] in "sS" else 1  # "Selective dynamics"
    except (IndexError, ValueError):
        return None
    given = sum(1 for row in lines[i + 1 : i + 1 + n_atoms] if numbers(row, 3))
    if given < n_atoms:
        return f"invalid POSCAR: coordinates for {given} of {n_atoms} atoms (one line of three numbers per atom)"
    return None


def parse_bytes(name: str, data: bytes, policy: DisorderPolicy = "fail") -> Iterator[Parsed | ParseFailure]:
    """Every structure in one file's content; the format comes from the name."""
    yield from parse_content(*detect_format(name), name, data, policy)


def parse_content(fmt: Format | None, stem: str, name: str, data: bytes,
                  policy: DisorderPolicy) -> Iterator[Parsed | ParseFailure]:
    """Every structure in a file's content whose format and stem `detect_format(name)` gave: the one
    dispatch from a format to its parser."""
    if fmt == "asedb":  # SQLite needs a file on disk: sources hands plain .db files over by path and row range
        yield ParseFailure(stem, "an ASE database is read only as a plain file (not compressed, not in an archive)")
        return
    try:
        text = _text(decompress(name, data))
    except ReadError as e:
        yield ParseFailure(stem, str(e))
        return
    except (OSError, EOFError, lzma.LZMAError) as e:
        yield ParseFailure(stem, f"cannot decompress: {one_line(e)}")
        return
    if fmt == "cif":
        yield from _parse_cif(stem, text, policy)
    elif fmt == "json":
        yield from _parse_json(stem, text, policy)
    elif fmt == "jsonl":
        yield from parse_jsonl_lines(stem, [ln for ln in text.splitlines() if ln.strip()], 0, policy)
    elif fmt == "extxyz":
        yield from parse_extxyz_frames(stem, text, 0)
    elif fmt == "poscar":
        yield from _parse_poscar(stem, text, policy)
    else:
        yield ParseFailure(stem, "unknown format")
