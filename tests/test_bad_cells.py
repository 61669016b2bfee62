"""Impossible or missing cells and coordinates: a named one-line failure, never a default structure.

gemmi builds a 1 Å cube with 90° angles for a CIF whose cell it cannot read, and 0 for a missing
coordinate column; pymatgen's POSCAR reader takes a scale factor of 0. Every parser must turn such
input into a failure whose reason names the fault, and good input must read as before. Every bad
file here is made by the test from a good one written by pymatgen or ASE.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from conftest import cif_text, extxyz_text, poscar_text
from test_readers import assert_failure, assert_parses_to, parse_all, parse_one

from srscreen.io.cell import cell_parameters_fault, lattice_fault
from srscreen.io.formats.ase_db import parse_ase_db_rows
from srscreen.io.parsed import Parsed

# --------------------------------------------------------------------------- CIF text surgery


def set_tag(text: str, tag: str, value: str) -> str:
    new, n = re.subn(rf"^{re.escape(tag)}\s+\S+[ \t]*$", f"{tag}   {value}", text, flags=re.M)
    assert n == 1, tag
    return new


def drop_tag(text: str, tag: str) -> str:
    new, n = re.subn(rf"^{re.escape(tag)}\s+\S+[ \t]*\n", "", text, flags=re.M)
    assert n == 1, tag
    return new


def p1(p) -> str:
    """NaCl as CifWriter writes it: P1, the readers' column fast path."""
    return cif_text(p["NaCl"])


def sym(p) -> str:
    """Wurtzite with its symmetry operations: the gemmi SmallStructure path."""
    return cif_text(p["ZnO"], symprec=0.1)


def fallback(text: str) -> str:
    """The same CIF with a harmless duplicate tag: gemmi rejects it, so pymatgen's reader takes it."""
    line = re.search(r"^_cell_volume\s+\S+$", text, flags=re.M).group(0)
    return text.replace(line, line + "\n" + line.upper())


def first_site_column(text: str, column: int, value: str) -> str:
    """The first atom site's `column` (0 type, 1 label, 2 multiplicity, 3-5 fract) set to `value`."""
    head, sep, sites = text.partition("_atom_site_occupancy\n")
    first, _, rest = sites.partition("\n")
    cols = first.split()
    cols[column] = value
    return head + sep + "  " + "  ".join(cols) + "\n" + rest


BAD_CIFS = {
    "angle 0 (P1)": (lambda p: set_tag(p1(p), "_cell_angle_alpha", "0"), ["angle alpha", "0°"]),
    "angle 0 (symmetry)": (lambda p: set_tag(sym(p), "_cell_angle_beta", "0"), ["angle beta", "0°"]),
    "angle 180": (lambda p: set_tag(p1(p), "_cell_angle_gamma", "180"), ["angle gamma", "180"]),
    "negative angle": (lambda p: set_tag(sym(p), "_cell_angle_gamma", "-120"), ["angle gamma"]),
    "angles that close no cell": (
        lambda p: set_tag(set_tag(p1(p), "_cell_angle_alpha", "170"), "_cell_angle_beta", "10"),
        ["angles", "make no cell"],
    ),
    "flat angles (alpha + beta = gamma)": (
        lambda p: set_tag(set_tag(sym(p), "_cell_angle_alpha", "60"), "_cell_angle_beta", "60"),
        ["angles", "make no cell"],
    ),
    "angles summing to 360": (
        lambda p: set_tag(set_tag(set_tag(p1(p), "_cell_angle_alpha", "120"), "_cell_angle_beta", "120"),
                          "_cell_angle_gamma", "120"),
        ["make no cell"],
    ),
    "zero length": (lambda p: set_tag(p1(p), "_cell_length_c", "0"), ["length c", "positive"]),
    "negative length": (lambda p: set_tag(sym(p), "_cell_length_a", "-3.25"), ["length a", "positive"]),
    "missing length (P1)": (lambda p: drop_tag(p1(p), "_cell_length_b"), ["_cell_length_b"]),
    "missing angle (symmetry)": (lambda p: drop_tag(sym(p), "_cell_angle_gamma"), ["_cell_angle_gamma"]),
    "no cell at all": (
        lambda p: re.sub(r"^_cell_(length|angle)_\w+\s+\S+\n", "", p1(p), flags=re.M),
        ["no _cell_length_a"],
    ),
    "mmCIF-style cell names": (lambda p: p1(p).replace("_cell_length_a", "_cell.length_a"), ["_cell_length_a"]),
    "unknown angle ?": (lambda p: set_tag(sym(p), "_cell_angle_beta", "?"), ["_cell_angle_beta", "unknown"]),
    "unknown length .": (lambda p: set_tag(p1(p), "_cell_length_a", "."), ["_cell_length_a", "unknown"]),
    "non-numeric length": (lambda p: set_tag(p1(p), "_cell_length_b", "five"), ["_cell_length_b", "not a number"]),
    "nan length": (lambda p: set_tag(sym(p), "_cell_length_c", "nan"), ["_cell_length_c", "not a number"]),
    "no fract_z column": (lambda p: sym(p).replace("_atom_site_fract_z", "_atom_site_height"), ["_atom_site_fract_z"]),
    "Cartesian coordinates only": (
        lambda p: p1(p).replace("_atom_site_fract_", "_atom_site_Cartn_"), ["cartesian", "_atom_site_fract"]
    ),
    "unknown coordinate ?": (lambda p: first_site_column(sym(p), 5, "?"), ["coordinates"]),
    "non-numeric coordinate": (lambda p: first_site_column(p1(p), 4, "half"), ["coordinates"]),
    "no atom sites": (lambda p: p1(p).split("loop_\n _atom_site_type_symbol")[0], ["no atom sites"]),
}


@pytest.mark.parametrize("case", sorted(BAD_CIFS))
def test_bad_cif_cell_or_coordinates_fail_with_the_reason(prototypes, case):
    make, words = BAD_CIFS[case]
    assert_failure(parse_one("bad.cif", make(prototypes)), *words)


FALLBACK_CASES = ["angle 0 (symmetry)", "angles that close no cell", "missing angle (symmetry)", "unknown angle ?",
                  "Cartesian coordinates only", "no fract_z column", "non-numeric coordinate"]


@pytest.mark.parametrize("case", FALLBACK_CASES)
def test_pymatgen_fallback_applies_the_same_checks(prototypes, case):
    """A CIF gemmi cannot read goes to pymatgen's CifParser: it must not get past the same checks."""
    make, words = BAD_CIFS[case]
    text = fallback(make(prototypes))
    import gemmi

    with pytest.raises(RuntimeError, match="duplicate"):
        gemmi.cif.read_string(text)
    assert_failure(parse_one("bad.cif", text), *words)


def test_pymatgen_fallback_reads_good_cifs_and_refuses_conflicting_duplicates(prototypes):
    for name, text in (("NaCl", p1(prototypes)), ("ZnO", sym(prototypes))):
        assert_parses_to(parse_one("ok.cif", fallback(text)), prototypes[name])
    clash = p1(prototypes).replace("_cell_length_b   5.64000000", "_cell_length_b   5.64000000\n_CELL_LENGTH_B 6.0")
    assert_failure(parse_one("clash.cif", clash), "_cell_length_b", "different values")


def test_gemmi_default_cell_is_caught(prototypes, monkeypatch):
    """Should gemmi ever build its cell from other numbers than the CIF's (its default 1 Å cube for a
    cell it did not read), the structure fails rather than being featurized in that cube."""
    import gemmi

    real = gemmi.make_small_structure_from_block

    def default_cell(block):
        small = real(block)
        small.cell = gemmi.UnitCell(1, 1, 1, 90, 90, 90)
        return small

    monkeypatch.setattr(gemmi, "make_small_structure_from_block", default_cell)
    assert_failure(parse_one("zno.cif", sym(prototypes)), "cell read", "_cell_")


@pytest.mark.parametrize("name", ["NaCl", "ZnO", "triclinic", "slab", "Fe"])
def test_good_cif_reads_the_cifs_own_numbers(prototypes, name):
    """The checks change nothing for a good CIF: the lattice is gemmi's for the written cell, bit for
    bit, coordinates are the written ones, and uncertainties such as 5.43(2) are read as 5.43."""
    import gemmi

    text = cif_text(prototypes[name])
    params = [float(re.search(rf"^{t}\s+(\S+)$", text, flags=re.M).group(1)) for t in
              ("_cell_length_a", "_cell_length_b", "_cell_length_c", "_cell_angle_alpha", "_cell_angle_beta",
               "_cell_angle_gamma")]
    site_lines = text.split("_atom_site_occupancy\n")[1].splitlines()
    written = np.array([[float(x) for x in line.split()[3:6]] for line in site_lines])
    want_lattice = np.array(gemmi.UnitCell(*params).orth.mat.tolist()).T
    result = parse_one("ok.cif", text)
    assert isinstance(result, Parsed), result
    np.testing.assert_array_equal(result.lattice, want_lattice)
    np.testing.assert_array_equal(result.frac_coords, written)
    assert_parses_to(result, prototypes[name])
    with_su = set_tag(text, "_cell_length_a", f"{params[0]:.8f}(2)")  # not the fast path: gemmi's SmallStructure
    result = parse_one("su.cif", with_su)
    np.testing.assert_allclose(result.lattice, want_lattice, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(result.frac_coords, written)


# --------------------------------------------------------------------------- POSCAR


def poscar_lines(p, name="NaCl") -> list[str]:
    return poscar_text(p[name]).splitlines()


BAD_POSCARS = {
    "scale factor 0": (lambda L: [L[0], "0.0"] + L[2:], ["scale factor", "0"]),
    "two coordinate lines missing": (lambda L: L[:-2], ["coordinates", "6 of 8"]),
    "no coordinate lines": (lambda L: L[:8], ["coordinates", "0 of 8"]),
    "zero lattice vector": (lambda L: L[:2] + ["0 0 0"] + L[3:], ["lattice vector a", "zero length"]),
    "coplanar lattice": (lambda L: L[:4] + ["5.64 5.64 0"] + L[5:], ["degenerate", "coplanar"]),
    "lattice row of two numbers": (lambda L: L[:2] + ["5.64 0"] + L[3:], ["lattice", "three numbers"]),
}


@pytest.mark.parametrize("case", sorted(BAD_POSCARS))
def test_bad_poscar_fails_with_the_reason(prototypes, case):
    change, words = BAD_POSCARS[case]
    assert_failure(parse_one("bad.vasp", "\n".join(change(poscar_lines(prototypes))) + "\n"), *words)


def test_negative_poscar_scale_is_a_volume(prototypes):
    """VASP's (and pymatgen's) meaning of a negative scale: the cell volume. It stays accepted."""
    lines = poscar_lines(prototypes)
    result = parse_one("vol.vasp", "\n".join([lines[0], "-200.0"] + lines[2:]) + "\n")
    assert isinstance(result, Parsed), result
    assert abs(abs(np.linalg.det(result.lattice)) - 200.0) < 1e-9


# --------------------------------------------------------------------------- pymatgen dicts


def edited(structure, change) -> str:
    d = json.loads(json.dumps(structure.as_dict()))
    change(d)
    return json.dumps(d)


BAD_DICTS = {
    "no lattice": (lambda d: d.pop("lattice"), ["no lattice"]),
    "no lattice matrix": (lambda d: d["lattice"].pop("matrix"), ["lattice.matrix"]),
    "no sites": (lambda d: d.pop("sites"), ["sites"]),
    "site without abc": (lambda d: d["sites"][2].pop("abc"), ["site 2", "coordinates"]),
    "site with two coordinates": (lambda d: d["sites"][1].__setitem__("abc", [0.5, 0.5]), ["3 numbers per site"]),
    "null coordinate": (lambda d: d["sites"][1].__setitem__("abc", [0.5, None, 0.5]), ["non-finite coordinates"]),
    "NaN coordinate": (lambda d: d["sites"][0].__setitem__("abc", [float("nan"), 0, 0]), ["non-finite coordinates"]),
    "NaN lattice": (lambda d: d["lattice"]["matrix"][1].__setitem__(1, float("nan")), ["non-finite lattice"]),
    "zero matrix": (lambda d: d["lattice"].__setitem__("matrix", [[0, 0, 0]] * 3), ["no cell", "zeros"]),
    "zero vector": (lambda d: d["lattice"]["matrix"].__setitem__(2, [0, 0, 0]), ["lattice vector c", "zero length"]),
    "2x3 matrix": (lambda d: d["lattice"].__setitem__("matrix", d["lattice"]["matrix"][:2]), ["3x3"]),
}


@pytest.mark.parametrize("case", sorted(BAD_DICTS))
def test_bad_structure_dict_fails_with_the_reason(prototypes, case):
    change, words = BAD_DICTS[case]
    text = edited(prototypes["NaCl"], change)
    assert_failure(parse_one("bad.json", text), *words)
    # the same dict as an entry's structure, and as a JSON line
    assert_failure(parse_one("bad.json", json.dumps({"energy": -1.0, "structure": json.loads(text)})), *words)
    assert_failure(parse_one("bad.jsonl", text + "\n"), *words)


# --------------------------------------------------------------------------- extxyz


def xyz(p) -> str:
    return extxyz_text([p["NaCl"]])


def set_lattice(text: str, lattice: str) -> str:
    return re.sub(r'Lattice="[^"]*"', f'Lattice="{lattice}"', text)


BAD_EXTXYZ = {
    "no Lattice=": (lambda p: re.sub(r'Lattice="[^"]*" ', "", xyz(p)), ["no lattice", "Lattice="]),
    "pbc not all true": (lambda p: xyz(p).replace('pbc="T T T"', 'pbc="T T F"'), ["periodic", "T T F"]),
    "zero c vector": (lambda p: set_lattice(xyz(p), "5.64 0 0 0 5.64 0 0 0 0"), ["lattice vector c", "zero length"]),
    "coplanar lattice": (lambda p: set_lattice(xyz(p), "5.64 0 0 0 5.64 0 5.64 5.64 0"), ["coplanar"]),
    "NaN lattice": (lambda p: set_lattice(xyz(p), "5.64 0 0 0 5.64 0 0 0 nan"), ["non-finite lattice"]),
    "NaN position": (
        lambda p: re.sub(r"^(Na\s+)\S+", r"\1nan", xyz(p), count=1, flags=re.M), ["non-finite coordinates"]
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_EXTXYZ))
def test_bad_extxyz_frame_fails_with_the_reason(prototypes, case):
    make, words = BAD_EXTXYZ[case]
    text = make(prototypes) + xyz(prototypes)  # a good frame after it still parses
    bad, good = parse_all("bad.extxyz", text)
    assert_failure(bad, *words)
    assert_parses_to(good, prototypes["NaCl"])


# --------------------------------------------------------------------------- ASE database


def test_ase_db_rows_with_unusable_cells_fail_with_the_reason(tmp_path, prototypes):
    import ase.db
    from ase import Atoms
    from pymatgen.io.ase import AseAtomsAdaptor

    path = str(tmp_path / "cells.db")
    db = ase.db.connect(path)
    positions = [[0, 0, 0], [1.4, 1.4, 1.4]]
    db.write(Atoms("NaCl", positions=positions, cell=np.zeros((3, 3)), pbc=True))
    db.write(Atoms("NaCl", positions=positions, cell=[[3, 0, 0], [0, 3, 0], [3, 3, 0]], pbc=True))
    db.write(Atoms("NaCl", positions=positions, cell=[[3, 0, 0], [0, 3, 0], [0, 0, 0]], pbc=True))
    db.write(Atoms("NaCl", positions=positions, cell=np.eye(3) * 3, pbc=[True, True, False]))
    db.write(AseAtomsAdaptor.get_atoms(prototypes["NaCl"]))
    results = list(parse_ase_db_rows(path, "cells", 1, 5))
    assert [r.id for r in results] == [f"cells:{i}" for i in range(1, 6)]
    assert_failure(results[0], "no cell", "zeros")
    assert_failure(results[1], "coplanar")
    assert_failure(results[2], "lattice vector c", "zero length")
    assert_failure(results[3], "periodic")
    assert_parses_to(results[4], prototypes["NaCl"])


# --------------------------------------------------------------------------- the shared checks


def test_cell_parameter_check():
    assert cell_parameters_fault(4.1, 5.3, 6.2, 70, 80, 100) is None
    assert cell_parameters_fault(1, 1, 1, 60, 60, 119.99) is None  # skewed, but a cell
    assert "make no cell" in cell_parameters_fault(1, 1, 1, 60, 60, 120)
    assert "make no cell" in cell_parameters_fault(1, 1, 1, 100, 130, 140)  # sum 370°
    assert "angle alpha" in cell_parameters_fault(1, 1, 1, float("nan"), 90, 90)
    assert "length b" in cell_parameters_fault(1, float("inf"), 1, 90, 90, 90)


def test_lattice_check():
    cube = [[3.0, 0, 0], [0, 3.0, 0], [0, 0, 3.0]]
    assert lattice_fault(cube, 8) is None
    assert "27 Å^3 for 300 atoms" in lattice_fault(cube, 300)
    assert "non-finite lattice" in lattice_fault([[float("nan"), 0, 0], [0, 1, 0], [0, 0, 1]], 1)
    assert "3x3" in lattice_fault([[1, 0], [0, 1, 0], [0, 0, 1]], 1)
    skewed = [[30.0, 0, 0], [0, 30.0, 0], [300.0, 300.0, 0.01]]  # V / abc ~ 2e-5: valid, if absurd
    assert lattice_fault(skewed, 1) is None
    assert "coplanar" in lattice_fault([[30.0, 0, 0], [0, 30.0, 0], [300.0, 300.0, 1e-4]], 1)  # ~2e-7


# --------------------------------------------------------------------------- end to end


def test_featurize_records_the_bad_cif_with_its_reason(tmp_path, prototypes):
    from typer.testing import CliRunner

    from srscreen.cli import app

    src = tmp_path / "in"
    src.mkdir()
    (src / "good.cif").write_text(p1(prototypes))
    (src / "bad.cif").write_text(set_tag(p1(prototypes), "_cell_angle_alpha", "0"))
    out = tmp_path / "g.h5"
    runner = CliRunner()
    result = runner.invoke(app, ["featurize", str(src), str(out), "-j", "1", "-q"])
    assert result.exit_code == 0, (result.output, result.exception)
    result = runner.invoke(app, ["info", str(out), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["structures"] == 1
    (failed,) = info["failed"]
    assert failed["id"] == "bad" and failed["source"].endswith("bad.cif")
    assert "angle alpha" in failed["reason"] and "\n" not in failed["reason"], failed
