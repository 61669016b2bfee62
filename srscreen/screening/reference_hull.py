"""Build a compact reference for `srscreen.screening.hull` from a labelled structure set.

    python -m srscreen.screening.reference_hull build LABELS.csv STRUCTURES_DIR -o mp_reference.csv.gz [--note TEXT]

LABELS.csv has `material_id` and `formation_energy_per_atom` (eV/atom), e.g. the shared mp-cgcnn set or
a folder written by `srscreen fetch-mp`; each id's composition is read from STRUCTURES_DIR/<id>.cif,
.json (a pymatgen Structure dict, as fetch-mp writes) or any file pymatgen reads. A hull only needs the
lowest formation energy of each reduced composition, so that is all the output keeps:
`formula,formation_energy_per_atom,material_id`, gzip-compressed with a fixed timestamp (the same
input gives the same bytes), provenance in leading `#` lines. The shipped
`srscreen/data_files/mp_reference.csv.gz` was made with:

    python -m srscreen.screening.reference_hull build ../shared/datasets/mp-cgcnn/labels.csv \\
        ../shared/datasets/mp-cgcnn/structures -o srscreen/data_files/mp_reference.csv.gz --mp-note
"""

from __future__ import annotations

import argparse
import collections
import csv
import gzip
import io
import math
import sys
import warnings
from pathlib import Path

import orjson
from pymatgen.core import Composition

MP_NOTE = ("Lowest formation energy per reduced composition of the mp-cgcnn set: 33,065 Materials Project "
           "crystals of the CGCNN paper's id list as published with MT-CGCNN (Sanyal et al. 2018), PBE "
           "formation energies as served 2018-2020. Cite: A. Jain et al., APL Materials 1, 011002 (2013). "
           "Materials Project data, CC BY 4.0.")
SUFFIXES = (".cif", ".json", ".json.gz", ".vasp", ".poscar", "")


def structure_file(folder: Path, id_: str) -> Path | None:
    """The structure file of `id_` in `folder`, trying the usual suffixes."""
    for suffix in SUFFIXES:
        path = folder / f"{id_}{suffix}"
        if path.is_file():
            return path
    return None


def composition_of(path: Path) -> Composition:
    """Composition of the unit cell in a structure file (occupancies counted)."""
    name = path.name.lower()
    if name.endswith(".cif"):
        import gemmi

        counts: collections.Counter[str] = collections.Counter()
        for site in gemmi.read_small_structure(str(path)).get_all_unit_cell_sites():
            counts[site.element.name] += site.occ
        if not counts:
            raise ValueError("no atom sites")
        return Composition(dict(counts))
    if name.endswith((".json", ".json.gz")):
        raw = path.read_bytes()
        data = orjson.loads(gzip.decompress(raw) if name.endswith(".gz") else raw)
        counts = collections.Counter()
        for site in data["sites"]:
            for species in site["species"]:
                counts[species["element"]] += float(species.get("occu", 1.0))
        return Composition(dict(counts))
    from pymatgen.core import Structure

    return Structure.from_file(path).composition


def build_reference(labels: str | Path, structures: str | Path,
                    column: str = "formation_energy_per_atom") -> list[tuple[str, float, str]]:
    """(reduced formula, lowest Ef, material id) per reduced composition, sorted by formula."""
    labels, structures = Path(labels), Path(structures)
    best: dict[str, tuple[float, str]] = {}
    with labels.open(newline="", encoding="utf-8") as stream:
        for line, row in enumerate(csv.DictReader(stream), 2):
            text = (row.get(column) or "").strip()
            if not text:
                continue
            ef = float(text)
            if not math.isfinite(ef):
                continue
            id_ = row["material_id"]
            path = structure_file(structures, id_)
            if path is None:
                raise FileNotFoundError(f"{labels} line {line}: no structure file for {id_} in {structures}")
            with warnings.catch_warnings():  # no electronegativity for He, ...: irrelevant here
                warnings.simplefilter("ignore", UserWarning)
                formula = composition_of(path).reduced_formula
            if formula not in best or (ef, id_) < best[formula]:
                best[formula] = (ef, id_)
    return [(formula, ef, id_) for formula, (ef, id_) in sorted(best.items())]


def write_reference(rows: list[tuple[str, float, str]], out: str | Path, note: str = "") -> None:
    """Write rows as the reference format; gzip (with mtime 0) when `out` ends in .gz."""
    text = io.StringIO()
    for line in filter(None, note.splitlines()):
        text.write(f"# {line}\n")
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["formula", "formation_energy_per_atom", "material_id"])
    writer.writerows((formula, f"{ef:.6f}", id_) for formula, ef, id_ in rows)
    data = text.getvalue().encode()
    out = Path(out)
    if out.name.endswith(".gz"):
        data = gzip.compress(data, compresslevel=9, mtime=0)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m srscreen.screening.reference_hull", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="lowest Ef per reduced composition of a labelled structure set")
    build.add_argument("labels", type=Path)
    build.add_argument("structures", type=Path)
    build.add_argument("-o", "--out", type=Path, required=True)
    build.add_argument("--column", default="formation_energy_per_atom")
    build.add_argument("--note", default="", help="provenance written as leading # lines")
    build.add_argument("--mp-note", action="store_true", help="write the mp-cgcnn provenance (MP_NOTE)")
    args = parser.parse_args(argv)
    rows = build_reference(args.labels, args.structures, args.column)
    write_reference(rows, args.out, MP_NOTE if args.mp_note else args.note)
    print(f"{args.out}: {len(rows)} compositions ({args.out.stat().st_size:,} bytes)", file=sys.stderr)


if __name__ == "__main__":
    main()
