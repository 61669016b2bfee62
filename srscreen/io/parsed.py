"""What every parser returns (`Parsed` arrays or a `ParseFailure` with a one-line reason) and the checks
every parser applies: no empty, non-finite, degenerate or unknown-element cell reaches the graph builder.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np

from srscreen.io.cell import lattice_fault


DisorderPolicy = Literal["fail", "majority"]



OCCUPANCY_TOL = 1e-3



_MAX_Z = 118

# Hydrogen's isotopes as files write them. gemmi and pymatgen read D (pymatgen also T) as hydrogen without a
# word; srscreen refuses them with the reason instead of changing a crystal's elements behind the user's back.
# (The element features are per element, so a crystal meant as hydrogen is written with H.)
ISOTOPES = {"D": "deuterium", "T": "tritium"}



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



def checked(id_: str, lattice, frac, numbers) -> Parsed:
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
    check_lattice(lattice, len(numbers))
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



def isotope_reason(symbol: str) -> str | None:
    """Why a site written as D or T (`ISOTOPES`) is refused; None for any other symbol."""
    name = ISOTOPES.get(symbol)
    if name is None:
        return None
    return (f"site {symbol!r} is {name}, a hydrogen isotope: srscreen does not read it as hydrogen silently; "
            "write H to featurize the crystal with hydrogen")



def check_not_isotope(symbol: str) -> None:
    reason = isotope_reason(symbol)
    if reason is not None:
        raise ReadError(reason)



def volume_checked(id_: str, lattice: np.ndarray, frac: np.ndarray, numbers: np.ndarray) -> Parsed:
    """`checked` for arrays known to be float64/int64, finite, non-empty and of real elements."""
    check_lattice(lattice, len(numbers))
    return Parsed(id_, lattice, frac, numbers)



def check_lattice(lattice: np.ndarray, n_atoms: int) -> None:
    """The shared cell check (`cell.lattice_fault`) as a ReadError."""
    fault = lattice_fault(lattice.tolist(), n_atoms)
    if fault is not None:
        raise ReadError(fault)



def check_occupancies(occupancies: list[tuple[str, float]]) -> None:
    """A ReadError for the (species, occupancy) pairs of one position when no site can have them, under
    every disorder policy: each above 0 and together at most 1 (within OCCUPANCY_TOL). 'majority' took
    Na from a site of Na -1, and an occupancy of 1.5 passed as a full site."""
    fractions = [o for _, o in occupancies]
    if min(fractions) > 0.0 and sum(fractions) <= 1.0 + OCCUPANCY_TOL:  # NaN fails the first
        return
    shown = " ".join(f"{name}:{o:g}" for name, o in occupancies)
    raise ReadError(f"impossible occupancy ({shown}): each must be above 0 and together at most 1 at one site")


def species_number(occupancies: list[tuple[int, float]], policy: DisorderPolicy) -> int:
    """The element of a site; partial occupancy is an error unless the policy takes the majority."""
    check_occupancies([(f"Z{z}", o) for z, o in occupancies])
    if len(occupancies) == 1 and occupancies[0][1] >= 1.0 - OCCUPANCY_TOL:
        return occupancies[0][0]
    if policy == "fail":
        desc = " ".join(f"Z{z}:{o:g}" for z, o in occupancies)
        raise ReadError(f"disordered site (partial occupancy {desc}); use --on-disorder majority to order it")
    return max(occupancies, key=lambda zo: zo[1])[0]



@lru_cache(maxsize=1)
def symbol_numbers() -> dict[str, int]:
    """Element symbol as written in CIFs ('Fe') -> Z, for the symbols gemmi reads as that element."""
    import gemmi

    table = {}
    for z in range(1, _MAX_Z + 1):
        symbol = gemmi.Element(z).name
        if gemmi.Element(symbol).atomic_number == z:
            table[symbol] = z
    return table
