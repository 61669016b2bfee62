"""CIF: gemmi (~0.1 ms a file, symmetry expanded; a column fast path for plain P1 blocks), pymatgen's
CifParser as the fallback for what gemmi rejects. Coordinates are taken as written: no snapping of
near-special values (pymatgen moves fractional coordinates within 1e-4 of 1/3, 1/2, ... onto them).
"""

from __future__ import annotations

import math
import re
from typing import Iterator

import numpy as np

from srscreen.io.cell import cell_parameters_fault
from srscreen.errors import one_line
from srscreen.io.formats.pymatgen_json import from_pymatgen
from srscreen.io.parsed import DisorderPolicy, OCCUPANCY_TOL, ParseFailure, Parsed, ReadError, check_not_isotope, check_occupancies, checked, symbol_numbers, volume_checked


def parse_cif(stem: str, text: str, policy: DisorderPolicy) -> Iterator[Parsed | ParseFailure]:
    import gemmi

    try:
        doc = gemmi.cif.read_string(text)
    except (RuntimeError, ValueError) as gemmi_error:
        pieces = _block_texts(text)
        if len(pieces) > 1:  # gemmi refuses the whole file for one bad block: each block on its own
            for i, piece in enumerate(pieces):
                yield from parse_cif(f"{stem}:{i}", piece, policy)
            return
        yield from _parse_cif_pymatgen(stem, text, policy, str(gemmi_error))
        return
    blocks = list(doc)
    for i, block in enumerate(blocks):
        id_ = stem if len(blocks) == 1 else f"{stem}:{i}"
        try:
            fast = _p1_block_arrays(block)
            if fast is not None:  # finite, known elements, at least one site, a valid cell: only the volume to check
                yield volume_checked(id_, *fast)
                continue
            # gemmi falls back on a 1 Å cube for a missing or unreadable cell and on 0 for a missing
            # coordinate column: check the block's own numbers first, then that gemmi used them.
            _check_cif_coordinate_tags(lambda tag: bool(block.find_values(tag)))
            params = _cif_cell_parameters(block.find_value)
            small = gemmi.make_small_structure_from_block(block)
            _settle_space_group(small)
            cell = small.cell
            _check_cell_used((cell.a, cell.b, cell.c, cell.alpha, cell.beta, cell.gamma), params)
            sites = small.get_all_unit_cell_sites()
            if not sites:
                raise ReadError("no atom sites in CIF block")
            for s in sites:
                if s.element.atomic_number <= 1:  # gemmi reads D as hydrogen and T as no element
                    check_not_isotope(re.match(r"[A-Za-z]*", s.type_symbol or s.label).group())
            positions = _by_position(sites)
            for group in positions:
                check_occupancies([(s.label, s.occ) for s in group])
            partial = [s for s in sites if s.occ < 1.0 - OCCUPANCY_TOL]
            if partial and policy == "fail":
                raise ReadError(
                    f"disordered site {partial[0].label} (occupancy {partial[0].occ:g}); "
                    "use --on-disorder majority to order it"
                )
            if partial:  # the 'majority' policy: the most occupied species at each position
                sites = [max(group, key=lambda s: s.occ) for group in positions]
            frac = [s.fract.tolist() for s in sites]
            numbers = [s.element.atomic_number for s in sites]
            yield checked(id_, np.array(cell.orth.mat.tolist()).T, frac, numbers)
        except ReadError as e:
            yield ParseFailure(id_, str(e))
        except Exception as e:  # noqa: BLE001 - gemmi raises several types on malformed blocks; one costs no other
            yield ParseFailure(id_, f"invalid CIF: {one_line(e)}")



_BLOCK_START = re.compile(r"[ \t]*data_", re.IGNORECASE)


def _block_texts(text: str) -> list[str]:
    """The text of each data block of a CIF, cut before each data_ line but the first (none inside a
    ;-delimited text field); what comes before the first stays with it."""
    blocks: list[str] = []
    current: list[str] = []
    in_field = seen = False
    for line in text.splitlines(keepends=True):
        if line.startswith(";"):
            in_field = not in_field
        elif not in_field and _BLOCK_START.match(line):
            if seen:
                blocks.append("".join(current))
                current = []
            seen = True
        current.append(line)
    return [*blocks, "".join(current)]



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
        symbols = symbol_numbers()
        numbers = np.array([symbols[v] for v in values[ks::width]], dtype=np.int64)
        coords = values[kx::width] + values[ky::width] + values[kz::width]
        occupancies = values[tags.index("_atom_site_occupancy") :: width] if "_atom_site_occupancy" in tags else []
        # Python's float() reads more than CIF numbers ('1_0', non-ASCII digits): those go to gemmi.
        written = "".join(cell) + "".join(coords) + "".join(occupancies)
        if not written.isascii() or "_" in written:
            return None
        frac = np.ascontiguousarray(np.array(coords, dtype=np.float64).reshape(3, -1).T)
        if occupancies and not 1.0 - OCCUPANCY_TOL <= min(map(float, occupancies)) <= max(map(float, occupancies)) <= 1.0 + OCCUPANCY_TOL:
            return None  # disorder (the policy decides) or an impossible occupancy: the full path says which
    except (KeyError, ValueError, TypeError):
        return None  # no cell value, not a plain element symbol or decimal number
    if not np.isfinite(frac).all():
        return None
    unit_cell = gemmi.UnitCell(*params)
    if not (unit_cell.volume > 0 and math.isfinite(unit_cell.volume)):
        return None
    return np.array(unit_cell.orth.mat.tolist()).T, frac, numbers



def _settle_space_group(small) -> None:
    """gemmi takes a block's symmetry from its operations, Hall or H-M symbol, and without any reads its
    sites as P1: a block naming its group by number only, or by a symbol gemmi does not know ('F 4/m -3
    2/m', 'Fm-3m (225)'), became its asymmetric unit alone, another crystal, without a word. The number
    is used where given; an unknown symbol is a ReadError. '?' and '.' name no group (P1, as before)."""
    if small.spacegroup is not None or small.symops:  # operations gemmi found no table entry for still apply
        return
    if small.spacegroup_number > 0:
        small.determine_and_set_spacegroup("N")
        if small.spacegroup is not None:
            return
        raise ReadError(f"unknown space group number {small.spacegroup_number}")
    for kind, symbol in (("Hall", small.spacegroup_hall), ("H-M", small.spacegroup_hm)):
        if symbol.strip() not in ("", "?", "."):
            raise ReadError(f"unknown space group {kind} symbol {one_line(symbol)[:40]!r}: give its number "
                            "(_space_group_IT_number) or its operations (_space_group_symop_operation_xyz)")


def _by_position(sites: list) -> list[list]:
    """The sites grouped by position (to 0.001 of the cell), in order of first appearance."""
    groups: dict[tuple[float, float, float], list] = {}
    for s in sites:
        groups.setdefault(tuple(round(c % 1.0, 3) % 1.0 for c in s.fract.tolist()), []).append(s)
    return list(groups.values())



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
