"""extxyz: ASE; frames without a lattice are failures (a crystal graph needs periodicity).
"""

from __future__ import annotations

import io
from typing import Iterator


from srscreen.errors import one_line
from srscreen.io.parsed import ParseFailure, Parsed, ReadError, check_lattice, checked, isotope_reason


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
            check_lattice(atoms.cell.array, len(atoms))  # before the inverse in get_scaled_positions
            yield checked(id_, atoms.cell.array, atoms.get_scaled_positions(wrap=False), atoms.numbers)
        except ReadError as e:
            yield ParseFailure(id_, str(e))
        except KeyError as e:  # ASE knows no D or T: the symbol is the key it missed
            isotope = isotope_reason(e.args[0]) if e.args and isinstance(e.args[0], str) else None
            yield ParseFailure(id_, isotope or f"invalid extxyz frame: {one_line(e)}")
        except Exception as e:  # noqa: BLE001 - ASE raises many types on malformed frames
            yield ParseFailure(id_, f"invalid extxyz frame: {one_line(e)}")
