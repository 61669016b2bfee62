"""POSCAR/CONTCAR/.vasp: pymatgen's Poscar, after checks of what it would silently accept.
"""

from __future__ import annotations

from typing import Iterator


from srscreen.errors import one_line
from srscreen.io.formats.pymatgen_json import from_pymatgen
from srscreen.io.parsed import DisorderPolicy, ParseFailure, Parsed, ReadError, check_not_isotope


def parse_poscar(stem: str, text: str, policy: DisorderPolicy) -> Iterator[Parsed | ParseFailure]:
    import warnings

    from pymatgen.io.vasp import Poscar

    try:
        _check_poscar_scale(text)
        _check_poscar_symbols(text)
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



def _check_poscar_symbols(text: str) -> None:
    """A ReadError for D or T on the element line (line 6, VASP 5): pymatgen reads both as hydrogen."""
    lines = text.split("\n", 6)
    tokens = lines[5].split("#")[0].split() if len(lines) > 5 else []
    if tokens and all(t.isalpha() for t in tokens):
        for symbol in tokens:
            check_not_isotope(symbol)



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
    i = 5 if len(lines) > 5 and numbers(lines[5], 1) else 6  # VASP 5 writes element symbols before the counts
    try:
        n_atoms = sum(int(x) for x in lines[i])
    except (IndexError, ValueError):  # pymatgen said 'list index out of range'
        return f"invalid POSCAR: line {i + 1} must give the number of atoms of each element"
    try:
        i += 2 if lines[i + 1] and lines[i + 1][0][0] in "sS" else 1  # "Selective dynamics"
    except IndexError:
        return None
    given = sum(1 for row in lines[i + 1 : i + 1 + n_atoms] if numbers(row, 3))
    if given < n_atoms:
        return f"invalid POSCAR: coordinates for {given} of {n_atoms} atoms (one line of three numbers per atom)"
    return None
