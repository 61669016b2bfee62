"""Build the bundled example database from textbook prototypes (pymatgen), in every input format.

    python examples/make_examples.py      # rewrites examples/structures/

Lattice constants are rounded experimental values; the point is a realistic, varied little database
(rock salt, caesium chloride, zinc blende, wurtzite, perovskite, fluorite, rutile, elements),
written as CIF, POSCAR, pymatgen JSON, JSON lines and extxyz, plus one file that is not a structure,
and `labels.csv` (approximate MP values) for the fine-tuning walk-through.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ase.io import write as ase_write
from pymatgen.core import Lattice, Structure
from pymatgen.io.ase import AseAtomsAdaptor
from pymatgen.io.cif import CifWriter
from pymatgen.io.vasp import Poscar

HERE = Path(__file__).resolve().parent
OUT = HERE / "structures"

ROCK_SALT = {"NaCl": 5.64, "KCl": 6.29, "LiF": 4.03, "MgO": 4.21, "CaO": 4.81, "NaF": 4.63, "KBr": 6.60, "PbS": 5.94}
CSCL = {"CsCl": 4.12, "CsBr": 4.29}
ZINC_BLENDE = {"GaAs": 5.65, "ZnS": 5.41, "SiC": 4.36, "InP": 5.87, "CdTe": 6.48}
WURTZITE = {"ZnO": (3.25, 5.21), "GaN": (3.19, 5.19), "AlN": (3.11, 4.98)}
PEROVSKITE = {"SrTiO3": 3.905, "BaTiO3": 4.00, "KNbO3": 4.02, "CaZrO3": 4.02}
FLUORITE = {"CaF2": 5.46, "CeO2": 5.41, "ZrO2": 5.07}
# Approximate Materials Project (PBE) formation energies (eV/atom) and band gaps (eV), rounded:
# labels for the fine-tuning walk-through, not reference data.
LABELS = {
    "NaCl": (-2.09, 5.0), "KCl": (-2.19, 5.0), "LiF": (-3.08, 8.7), "MgO": (-3.05, 4.45), "CaO": (-3.29, 3.6),
    "NaF": (-2.98, 6.1), "SrTiO3": (-3.55, 1.8), "ZnO": (-1.78, 0.73), "GaN": (-0.66, 1.7), "AlN": (-1.60, 4.0),
    "CaF2": (-4.10, 7.2), "TiO2": (-3.50, 1.8), "Cu": (0.0, 0.0), "Al": (0.0, 0.0), "Fe": (0.0, 0.0),
    "W": (0.0, 0.0), "Si": (0.0, 0.61),
}
ELEMENTS = {"Fe": ("Im-3m", 2.87), "Cu": ("Fm-3m", 3.61), "Al": ("Fm-3m", 4.05), "W": ("Im-3m", 3.16)}


def _split(formula: str) -> tuple[str, str]:
    """'GaAs' -> ('Ga', 'As'): cation then anion of a binary prototype name."""
    i = next(i for i in range(1, len(formula)) if formula[i].isupper())
    return formula[:i], formula[i:].rstrip("0123456789")


def build() -> dict[str, Structure]:
    s: dict[str, Structure] = {}
    for f, a in ROCK_SALT.items():
        s[f] = Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), list(_split(f)), [[0, 0, 0], [0.5, 0.5, 0.5]])
    for f, a in CSCL.items():
        s[f] = Structure(Lattice.cubic(a), list(_split(f)), [[0, 0, 0], [0.5, 0.5, 0.5]])
    for f, a in ZINC_BLENDE.items():
        s[f] = Structure.from_spacegroup("F-43m", Lattice.cubic(a), list(_split(f)), [[0, 0, 0], [0.25, 0.25, 0.25]])
    for f, (a, c) in WURTZITE.items():
        s[f] = Structure.from_spacegroup("P6_3mc", Lattice.hexagonal(a, c), list(_split(f)), [[1 / 3, 2 / 3, 0], [1 / 3, 2 / 3, 0.382]])
    for f, a in PEROVSKITE.items():
        a_site, rest = f[: 2 if f[1].islower() else 1], f[2 if f[1].islower() else 1 :]
        b_site = rest[: 2 if rest[1].islower() else 1]
        s[f] = Structure(Lattice.cubic(a), [a_site, b_site, "O", "O", "O"],
                         [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    for f, a in FLUORITE.items():
        cation, anion = _split(f)
        s[f] = Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), [cation, anion], [[0, 0, 0], [0.25, 0.25, 0.25]])
    s["TiO2"] = Structure.from_spacegroup("P4_2/mnm", Lattice.tetragonal(4.59, 2.96), ["Ti", "O"], [[0, 0, 0], [0.305, 0.305, 0]])
    for f, (group, a) in ELEMENTS.items():
        s[f] = Structure.from_spacegroup(group, Lattice.cubic(a), [f], [[0, 0, 0]])
    s["Si"] = Structure.from_spacegroup("F-43m", Lattice.cubic(5.43), ["Si", "Si"], [[0, 0, 0], [0.25, 0.25, 0.25]])
    return s


def write(structures: dict[str, Structure]) -> None:
    """Spread the structures over the formats; labels.csv uses the ids srscreen will give them."""
    if OUT.exists():
        shutil.rmtree(OUT)
    (OUT / "poscar" / "TiO2-rutile").mkdir(parents=True)
    ids: dict[str, str] = {}
    lines, frames = [], []
    for i, name in enumerate(sorted(structures)):
        st = structures[name]
        kind = i % 5
        if name == "TiO2":
            Poscar(st).write_file(OUT / "poscar" / "TiO2-rutile" / "POSCAR")
            ids[name] = "TiO2-rutile/POSCAR"
        elif name == "Si":
            Poscar(st).write_file(OUT / "poscar" / "Si.vasp")
            ids[name] = "Si"
        elif kind in (0, 1):
            CifWriter(st, symprec=0.01 if kind == 1 else None).write_file(OUT / f"{name}.cif")
            ids[name] = name
        elif kind == 2:
            (OUT / f"{name}.json").write_text(json.dumps(st.as_dict()))
            ids[name] = name
        elif kind == 3:
            ids[name] = f"batch-a:{len(lines)}"
            lines.append(json.dumps(st.as_dict()))
        else:
            ids[name] = f"batch-b:{len(frames)}"
            frames.append(AseAtomsAdaptor.get_atoms(st))
    (OUT / "batch-a.jsonl").write_text("\n".join(lines) + "\n")
    ase_write(OUT / "batch-b.extxyz", frames, format="extxyz")
    (OUT / "README.txt").write_text("Example structures built by examples/make_examples.py (not a structure file).\n")
    rows = [f"{ids[name]},{ef},{eg},{name}" for name, (ef, eg) in LABELS.items()]
    (HERE / "labels.csv").write_text("id,formation_energy_per_atom,band_gap,formula\n" + "\n".join(rows) + "\n")


if __name__ == "__main__":
    write(build())
    print(f"wrote {OUT}")
