"""Reading structure files: every format to the same arrays, stable ids, and bad files as reasons.

A user points srscreen at a database with CIFs, POSCARs, pymatgen JSON, JSON lines and extxyz
trajectories. Each structure must come out as the crystal that was written, under an id the user
recognises; a bad file must become a failure with a one-line reason and never stop the run.
"""

from __future__ import annotations

import gzip
import io
import json

import numpy as np
import pytest
from conftest import assert_same_structure, cif_text, extxyz_text, poscar_text

from srscreen.errors import InputError
from srscreen.io.parsed import Parsed, ParseFailure
from srscreen.io.readers import detect_format, parse_bytes
from srscreen.io.sources import Item, Skipped, iter_inputs


def parse_all(name: str, data: bytes | str, policy="fail") -> list:
    if isinstance(data, str):
        data = data.encode()
    return list(parse_bytes(name, data, policy))


def parse_one(name: str, data: bytes | str, policy="fail"):
    (result,) = parse_all(name, data, policy)
    return result


def assert_failure(result, *words: str) -> str:
    """A ParseFailure whose reason is one non-empty line mentioning `words`."""
    assert isinstance(result, ParseFailure), f"expected a failure, got {result}"
    reason = result.reason
    assert reason and "\n" not in reason and len(reason) < 400, repr(reason)
    for word in words:
        assert word.lower() in reason.lower(), f"{word!r} not in {reason!r}"
    return reason


def assert_parses_to(result, structure, id_=None, atol=1e-5):
    assert isinstance(result, Parsed), f"expected a structure, got {result}"
    if id_ is not None:
        assert result.id == id_
    assert_same_structure(result.lattice, result.frac_coords, result.numbers, structure, atol=atol)


# --------------------------------------------------------------------------- every format, same crystal

FORMATS = {
    "cif (P1, CifWriter)": ("mp-1000.cif", lambda s: cif_text(s)),
    "cif (symmetry ops, CifWriter symprec=0.1)": ("mp-1000.cif", lambda s: cif_text(s, symprec=0.1)),
    "cif.gz": ("mp-1000.cif.gz", lambda s: gzip.compress(cif_text(s).encode())),
    "POSCAR": ("run1/POSCAR", poscar_text),
    "CONTCAR": ("run1/CONTCAR", poscar_text),
    ".vasp": ("mp-1000.vasp", poscar_text),
    "pymatgen JSON": ("mp-1000.json", lambda s: json.dumps(s.as_dict())),
    "entry JSON (structure key)": ("mp-1000.json", lambda s: json.dumps({"energy": -1.0, "structure": s.as_dict()})),
    "jsonl (one line)": ("mp-1000.jsonl", lambda s: json.dumps(s.as_dict()) + "\n"),
    "extxyz (one frame)": ("mp-1000.extxyz", lambda s: extxyz_text([s])),
}


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@pytest.mark.parametrize("name", ["NaCl", "SrTiO3", "ZnO", "Fe", "triclinic", "slab", "molecule"])
def test_every_format_reads_back_the_crystal_written(prototypes, fmt, name):
    filename, write = FORMATS[fmt]
    structure = prototypes[name]
    results = parse_all(filename, write(structure))
    assert len(results) == 1
    if "symprec" in fmt:
        # CifWriter(symprec=...) writes the refined standard cell (conventional, origin and
        # setting of the space group): the same crystal, described by another cell.
        assert_same_crystal(results[0], structure)
    else:
        # CIF keeps 8 decimals of fractional coordinates: ~1e-7 of a 20 Å cell.
        assert_parses_to(results[0], structure, atol=1e-5)


def assert_same_crystal(result, structure):
    from pymatgen.analysis.structure_matcher import StructureMatcher
    from pymatgen.core import Lattice, Structure

    assert isinstance(result, Parsed), result
    read = Structure(Lattice(result.lattice), result.numbers.tolist(), result.frac_coords)
    assert abs(read.volume / len(read) - structure.volume / len(structure)) < 1e-4
    matcher = StructureMatcher(ltol=1e-3, stol=1e-3, angle_tol=0.01, scale=False, attempt_supercell=True)
    assert matcher.fit(read, structure), f"{read.composition} does not match {structure.composition}"


def test_symmetry_cif_is_expanded_to_the_full_cell(prototypes):
    """The symmetrised CIF lists 2 unique sites of wurtzite; the reader expands them to all 4."""
    text = cif_text(prototypes["ZnO"], symprec=0.1)
    assert "P6_3mc" in text and text.count("  Zn  ") == 1
    result = parse_one("ZnO.cif", text)
    assert len(result.numbers) == 4
    assert_parses_to(result, prototypes["ZnO"])
    nacl = parse_one("NaCl.cif", cif_text(prototypes["NaCl"], symprec=0.1))
    assert len(nacl.numbers) == 8


def test_cif_space_group_by_number_or_unknown_symbol_is_never_read_as_p1(prototypes):
    """Without symmetry operations, a block naming its group by number alone (or by a symbol gemmi does not
    know, beside the number) was read as P1: wurtzite's 2 unique sites as a 2-atom crystal, predicted
    1.1 eV/atom off. The number is used; an unknown symbol with no number is a failure naming it."""
    text = cif_text(prototypes["ZnO"], symprec=0.1)
    ops = text[text.index("loop_\n _symmetry_equiv_pos_site_id"):text.index("loop_\n _atom_site_type_symbol")]
    assert ops.count("\n") == 15
    no_ops = text.replace(ops, "")
    number_only = no_ops.replace("_symmetry_space_group_name_H-M   P6_3mc\n", "")
    unknown_and_number = no_ops.replace("P6_3mc", "'P6_3mc (186)'")
    unknown_only = unknown_and_number.replace("_symmetry_Int_Tables_number   186\n", "")
    assert len({text, no_ops, number_only, unknown_and_number, unknown_only}) == 5
    for variant in (no_ops, number_only, unknown_and_number):
        result = parse_one("ZnO.cif", variant)
        assert len(result.numbers) == 4
        assert_parses_to(result, prototypes["ZnO"])
    assert_failure(parse_one("ZnO.cif", unknown_only), "unknown space group H-M symbol 'P6_3mc (186)'")


def test_cif_coordinates_are_kept_as_written(prototypes):
    """No snapping: 0.33330000 stays 0.3333 (pymatgen's CifParser would make it 1/3)."""
    text = cif_text(prototypes["ZnO"]).replace("0.33333333", "0.33330000").replace("0.66666667", "0.66670000")
    result = parse_one("ZnO.cif", text)
    values = np.sort(np.round(result.frac_coords[:, :2] % 1.0, 8).ravel())
    assert 0.3333 in values and 0.6667 in values
    assert not np.isclose(values, 1 / 3, atol=1e-6).any()


# --------------------------------------------------------------------------- ids


@pytest.mark.parametrize(
    "name, fmt, id_",
    [
        ("mp-1000.cif", "cif", "mp-1000"),
        ("some/folder/mp-1000.cif", "cif", "mp-1000"),
        ("mp-1000.cif.gz", "cif", "mp-1000"),
        ("mp-1000.CIF", "cif", "mp-1000"),
        ("run1/POSCAR", "poscar", "run1/POSCAR"),
        ("calcs/run1/CONTCAR", "poscar", "run1/CONTCAR"),
        ("run1/POSCAR.gz", "poscar", "run1/POSCAR"),
        ("POSCAR", "poscar", "POSCAR"),
        ("Fe.vasp", "poscar", "Fe"),
        ("mp-1.json", "json", "mp-1"),
        ("db.jsonl", "jsonl", "db"),
        ("traj.extxyz", "extxyz", "traj"),
        ("traj.xyz", "extxyz", "traj"),
        ("README.txt", None, "README"),
        ("notes", None, "notes"),
    ],
)
def test_ids_and_formats_from_file_names(name, fmt, id_):
    assert detect_format(name) == (fmt, id_)


def test_id_is_the_file_stem(prototypes):
    assert parse_one("mp-1000.cif", cif_text(prototypes["NaCl"])).id == "mp-1000"
    assert parse_one("a/b/mp-1000.cif.gz", gzip.compress(cif_text(prototypes["NaCl"]).encode())).id == "mp-1000"


def test_poscar_id_names_its_folder(prototypes):
    assert parse_one("run1/POSCAR", poscar_text(prototypes["Fe"])).id == "run1/POSCAR"


def test_multi_structure_files_number_their_frames(prototypes):
    frames = [prototypes["NaCl"], prototypes["Fe"], prototypes["ZnO"]]
    jsonl = "".join(json.dumps(s.as_dict()) + "\n" for s in frames)
    xyz = extxyz_text(frames)
    json_list = json.dumps([s.as_dict() for s in frames])
    for name, data in (("db.jsonl", jsonl), ("db.extxyz", xyz), ("db.json", json_list)):
        results = parse_all(name, data)
        assert [r.id for r in results] == ["db:0", "db:1", "db:2"], name
        for result, structure in zip(results, frames):
            assert_parses_to(result, structure)


def test_bad_frame_does_not_stop_the_others(prototypes):
    """One broken line in a JSON lines file fails alone; the frames around it still parse."""
    lines = [json.dumps(prototypes["NaCl"].as_dict()), '{"lattice": ', json.dumps(prototypes["Fe"].as_dict())]
    results = parse_all("db.jsonl", "\n".join(lines) + "\n")
    assert [r.id for r in results] == ["db:0", "db:1", "db:2"]
    assert_parses_to(results[0], prototypes["NaCl"])
    assert_failure(results[1], "json")
    assert_parses_to(results[2], prototypes["Fe"])


@pytest.mark.parametrize("ending", ["\r", "\r\n"], ids=["CR (old Mac)", "CRLF (Windows)"])
def test_files_with_other_line_ends_read_like_unix_ones(tmp_path, prototypes, ending):
    """Saved with CR-only line ends, a CIF or POSCAR was 'no structure in file' (gemmi and pymatgen see
    one line): every format, plain or compressed, must read as the same crystals as with '\\n'."""
    from srscreen.io.items import parse_item

    nacl, zno = prototypes["NaCl"], prototypes["ZnO"]
    files = {"a.cif": cif_text(nacl), "b.cif.gz": cif_text(zno), "run1/POSCAR": poscar_text(zno),
             "c.vasp": poscar_text(nacl), "t.extxyz": extxyz_text([nacl, zno])}
    expected = {"a": nacl, "b": zno, "run1/POSCAR": zno, "c": nacl, "t:0": nacl, "t:1": zno}
    for name, text in files.items():
        data = text.replace("\n", ending).encode()
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    results = [r for e in iter_inputs(tmp_path) for r in parse_item(e, "fail")]
    assert sorted(r.id for r in results) == sorted(expected), results
    for r in results:
        assert_parses_to(r, expected[r.id])


FIVE = ["Fe", "NaCl", "ZnO", "SrTiO3", "Cu"]


def _break_frame(frame: str, how: str) -> str:
    count, comment, *atoms = frame.splitlines(keepends=True)
    n = int(count)
    if how == "unreadable count":
        return "".join(["eight\n", comment, *atoms])
    if how == "count too large":
        return "".join([f"{n + 2}\n", comment, *atoms])
    if how == "count too small":
        return "".join([f"{n - 1}\n", comment, *atoms])
    if how == "an atom line missing":
        return "".join([count, comment, *atoms[:-1]])
    assert how == "a coordinate not a number"
    return "".join([count, comment, atoms[0].replace(atoms[0].split()[1], "x", 1), *atoms[1:]])


def _break_block(block: str, how: str) -> str:
    if how == "a loop row short of a value (syntax)":
        head, _, rows = block.rpartition("_atom_site_occupancy\n")
        first, rest = rows.split("\n", 1)
        return f"{head}_atom_site_occupancy\n{first.rsplit(' ', 1)[0]}\n{rest}"
    assert how == "no cell length a"
    return "".join(line for line in block.splitlines(keepends=True) if not line.startswith("_cell_length_a"))


@pytest.mark.parametrize("fmt,how", [
    *(("extxyz", how) for how in ["unreadable count", "count too large", "count too small", "an atom line missing",
                                  "a coordinate not a number"]),
    *(("cif", how) for how in ["a loop row short of a value (syntax)", "no cell length a"]),
])
def test_one_broken_structure_costs_no_other_in_its_file(tmp_path, prototypes, fmt, how):
    """Five structures in one file, the second broken: the four others are read (an unreadable extxyz
    count, or one saying more or fewer atoms than the frame holds, and a CIF syntax error lost every
    structure after it), and the broken one is one failure that says where it is."""
    from srscreen.io.items import parse_item

    structures = [prototypes[name] for name in FIVE]
    if fmt == "extxyz":
        parts = [extxyz_text([s]) for s in structures]
        parts[1] = _break_frame(parts[1], how)
    else:
        parts = [cif_text(s).replace(f"data_{s.composition.reduced_formula}", f"data_s{i}") for i, s in enumerate(structures)]
        parts[1] = _break_block(parts[1], how)
    (tmp_path / f"five.{fmt}").write_text("".join(parts))
    for results in ([r for e in iter_inputs(tmp_path) for r in parse_item(e, "fail")],  # as featurize reads it
                    parse_all(f"five.{fmt}", "".join(parts))):  # whole, as parse_bytes reads it
        good = {r.id: r for r in results if isinstance(r, Parsed)}
        assert sorted(good) == ["five:0", "five:2", "five:3", "five:4"], results
        for i in (0, 2, 3, 4):
            assert_parses_to(good[f"five:{i}"], structures[i])
        (failure,) = [r for r in results if not isinstance(r, Parsed)]
        assert_failure(failure)
        # the same id whether the frame splitter cut it out (chunked) or the parser met it (whole file)
        assert failure.id == "five:1", failure


def test_a_damaged_ase_database_row_costs_no_other_row(tmp_path, prototypes):
    """A row ase.db cannot decode stopped the read: the rows after it were lost, and the failure was
    recorded under the id of the row before it."""
    import sqlite3

    import ase.db
    from pymatgen.io.ase import AseAtomsAdaptor

    from srscreen.io.items import parse_item

    path = tmp_path / "five.db"
    db = ase.db.connect(str(path))
    for name in FIVE:
        db.write(AseAtomsAdaptor.get_atoms(prototypes[name]))
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE systems SET positions = ? WHERE id = 2", (b"\x01\x02 damaged",))
    results = [r for e in iter_inputs(path) for r in parse_item(e, "fail")]
    good = {r.id: r for r in results if isinstance(r, Parsed)}
    assert sorted(good) == ["five:1", "five:3", "five:4", "five:5"], results
    for row, name in zip((1, 3, 4, 5), ("Fe", "ZnO", "SrTiO3", "Cu")):
        assert_parses_to(good[f"five:{row}"], prototypes[name])
    (failure,) = [r for r in results if not isinstance(r, Parsed)]
    assert failure.id == "five:2" and "row 2" in assert_failure(failure), failure


def test_json_lines_are_cut_at_newlines_only(tmp_path, prototypes):
    """JSON strings may hold U+2028, U+2029 and U+0085 raw (json.dumps(..., ensure_ascii=False) writes
    them so), and str.splitlines cuts lines there too: such an entry was two failures, and every entry
    after it numbered one too many."""
    from srscreen.io.items import parse_item

    structures = [prototypes[name] for name in ("NaCl", "ZnO", "Cu")]
    entries = [{**s.as_dict(), "comment": comment} for s, comment in zip(structures, ["a\u2028b", "c\u0085d\u2029", "e"])]
    text = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries)
    (tmp_path / "three.jsonl").write_text(text, encoding="utf-8")
    for results in ([r for e in iter_inputs(tmp_path) for r in parse_item(e, "fail")],  # as featurize reads it
                    parse_all("three.jsonl", text)):  # whole, as parse_bytes reads it
        assert [r.id for r in results] == ["three:0", "three:1", "three:2"], results
        for r, s in zip(results, structures):
            assert_parses_to(r, s)


# --------------------------------------------------------------------------- bad inputs: never raise


def _nan_poscar(s) -> str:
    lines = poscar_text(s).splitlines()
    first_site = 8  # title, scale, 3 lattice rows, species, counts, "direct"
    lines[first_site] = "nan 0.0 0.0 " + lines[first_site].split()[-1]
    return "\n".join(lines) + "\n"


def _nan_cif(s) -> str:
    text = cif_text(s)
    head, sep, sites = text.partition("_atom_site_occupancy\n")
    first, _, rest = sites.partition("\n")
    cols = first.split()
    cols[3] = "nan"
    return head + sep + "  " + "  ".join(cols) + "\n" + rest


def _flat(s):
    """The same sites in a cell whose third vector lies in the plane of the other two."""
    d = s.as_dict()
    m = np.array(d["lattice"]["matrix"])
    m[2] = m[0] + m[1]
    d["lattice"]["matrix"] = m.tolist()
    return d


BAD_INPUTS = {
    "empty file": ("empty.cif", lambda p: b"", ["empty"]),
    "whitespace only": ("blank.json", lambda p: b"  \n\n\t\n", ["empty"]),
    "binary garbage": ("junk.cif", lambda p: bytes(range(256)) * 40, ["binary file"]),
    "binary garbage as gzip": (
        "junk.cif.gz", lambda p: bytes(range(256)) * 40, ["cannot decompress", "not a gzipped file"]
    ),
    "truncated gzip": (
        "cut.cif.gz", lambda p: gzip.compress(cif_text(p["NaCl"]).encode())[:60], ["cannot decompress", "ended before"]
    ),
    "truncated CIF (mid loop)": ("cut.cif", lambda p: cif_text(p["ZnO"])[:-30], ["invalid cif"]),
    "truncated CIF (header only)": ("cut.cif", lambda p: cif_text(p["ZnO"]).split("loop_")[0], ["no atom sites"]),
    "CIF in a .json file": ("mp-1.json", lambda p: cif_text(p["NaCl"]), ["invalid JSON"]),
    "CIF in a .vasp file": ("mp-1.vasp", lambda p: cif_text(p["NaCl"]), ["invalid POSCAR", "lattice vectors"]),
    "CIF in an .extxyz file": ("mp-1.extxyz", lambda p: cif_text(p["NaCl"]), ["extxyz frame", "atom count"]),
    "JSON that is not a structure": (
        "mp-1.json", lambda p: json.dumps({"material_id": "mp-1"}), ["not a pymatgen structure dict", "no lattice"]
    ),
    "NaN coordinate (POSCAR)": ("nan.vasp", lambda p: _nan_poscar(p["ZnO"]), ["non-finite"]),
    "NaN coordinate (CIF)": ("nan.cif", lambda p: _nan_cif(p["ZnO"]), ["non-finite"]),
    "NaN lattice (JSON)": (
        "nan.json",
        lambda p: json.dumps(p["NaCl"].as_dict()).replace("5.64", "NaN", 1).replace('"NaN"', "NaN"),
        ["non-finite lattice"],
    ),
    "zero-volume cell (JSON)": ("flat.json", lambda p: json.dumps(_flat(p["NaCl"])), ["degenerate"]),
    "zero-volume cell (CIF)": (
        "flat.cif",
        lambda p: cif_text(p["NaCl"]).replace("_cell_length_c   5.64000000", "_cell_length_c   0"),
        ["cell length c = 0", "positive"],
    ),
    "dummy species X (CIF)": (
        "x.cif", lambda p: cif_text(p["NaCl"]).replace("  Na  Na", "  X  X"), ["without a chemical element"]
    ),
    "dummy species X (POSCAR)": (
        "x.vasp", lambda p: poscar_text(p["NaCl"]).replace("Na", "X"), ["without a chemical element"]
    ),
    "dummy species X (JSON)": ("x.json", lambda p: _dummy_json(p["NaCl"]), ["without a chemical element", "'X'"]),
    "no atoms (CIF)": (
        "none.cif",
        lambda p: cif_text(p["NaCl"]).split("loop_\n _atom_site_type_symbol")[0],
        ["no atom sites"],
    ),
}


def _dummy_json(s) -> str:
    from pymatgen.core import DummySpecies

    s = s.copy()
    s.replace_species({"Na": DummySpecies("X")})
    return json.dumps(s.as_dict())


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_a_one_line_failure_never_an_exception(prototypes, case):
    name, make, words = BAD_INPUTS[case]
    results = parse_all(name, make(prototypes))
    assert results, "a bad file must still produce a record"
    for result in results:
        assert_failure(result, *words)
        assert result.id == detect_format(name)[1] or result.id.startswith(detect_format(name)[1] + ":")


def test_dummy_species_json_reason_says_what_is_wrong(prototypes):
    """A valid pymatgen dict with a dummy species is not 'not a structure dict': it names the species."""
    reason = assert_failure(parse_one("x.json", _dummy_json(prototypes["NaCl"])))
    assert "element" in reason.lower() or "species" in reason.lower()


def test_dummy_species_never_becomes_an_atomic_number(prototypes):
    """pymatgen gives a DummySpecies Z = hash(symbol): random per process and often positive.
    Whatever the hash, a dummy site is a failure (several symbols, so a regression shows)."""
    for symbol in ("X", "Xa", "Xb", "Xc", "Xd", "Xf", "Xg", "Xh"):
        result = parse_one("x.vasp", poscar_text(prototypes["NaCl"]).replace("Na", symbol))
        assert_failure(result, "element")


def test_element_outside_the_feature_table_parses(prototypes):
    """Lr (Z=103) is a real element: reading succeeds, and featurize records the failure (see
    test_featurize) because the feature table stops at Z=100."""
    s = prototypes["NaCl"].copy()
    s.replace_species({"Na": "Lr"})
    for name, data in (("lr.cif", cif_text(s)), ("lr.json", json.dumps(s.as_dict())), ("lr.vasp", poscar_text(s))):
        result = parse_one(name, data)
        assert isinstance(result, Parsed), f"{name}: {result}"
        assert 103 in result.numbers


def disordered(prototypes):
    """Cu3Au-like cell with one site 75% Au / 25% Cu."""
    from pymatgen.core import Lattice, Structure

    return Structure(
        Lattice.cubic(3.75),
        [{"Au": 0.75, "Cu": 0.25}, "Cu", "Cu", "Cu"],
        [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
    )


@pytest.mark.parametrize("name, write", [("dis.cif", cif_text), ("dis.json", lambda s: json.dumps(s.as_dict()))])
def test_disordered_site_fails_unless_majority_policy(prototypes, name, write):
    from pymatgen.core import Structure

    s = disordered(prototypes)
    assert_failure(parse_one(name, write(s)), "disordered", "majority")
    ordered = parse_one(name, write(s), policy="majority")
    want = Structure(s.lattice, ["Au", "Cu", "Cu", "Cu"], s.frac_coords)
    assert_parses_to(ordered, want)


def test_partially_occupied_single_species_is_disorder_too(prototypes):
    """A half-occupied site (vacancy disorder) is not a full atom: fail by default, keep with majority."""
    from pymatgen.core import Lattice, Structure

    s = Structure(Lattice.cubic(4.0), [{"Na": 0.5}, "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    for name, data in (("v.cif", cif_text(s)), ("v.json", json.dumps(s.as_dict()))):
        assert_failure(parse_one(name, data), "disordered")
        kept = parse_one(name, data, policy="majority")
        assert sorted(kept.numbers.tolist()) == [11, 17]


def test_extxyz_frame_without_lattice_fails_alone(prototypes):
    import ase.io
    from ase import Atoms

    buf = io.StringIO()
    water = Atoms("OH2", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
    ase.io.write(buf, water, format="extxyz")
    text = buf.getvalue() + extxyz_text([prototypes["Fe"]])
    results = parse_all("mixed.extxyz", text)
    assert [r.id for r in results] == ["mixed:0", "mixed:1"]
    assert_failure(results[0], "lattice")
    assert_parses_to(results[1], prototypes["Fe"])


def test_extxyz_with_lattice_but_no_pbc_fails(prototypes):
    import ase.io
    from pymatgen.io.ase import AseAtomsAdaptor

    atoms = AseAtomsAdaptor.get_atoms(prototypes["NaCl"])
    atoms.pbc = False
    buf = io.StringIO()
    ase.io.write(buf, atoms, format="extxyz")
    assert_failure(parse_one("nopbc.extxyz", buf.getvalue()), "lattice")


def test_unknown_format_is_a_failure_not_a_crash():
    assert_failure(parse_one("notes.txt", b"hello"), "unknown format")


# --------------------------------------------------------------------------- sources


def test_sources_list_every_file_and_skip_the_readme(database):
    entries = list(iter_inputs(database.root))
    skipped = [e for e in entries if isinstance(e, Skipped)]
    items = [e for e in entries if isinstance(e, Item)]
    assert [s.source for s in skipped] == [str(database.skipped[0])]
    assert "unknown extension" in skipped[0].reason
    assert len({i.key for i in items}) == len(items), "work item keys are unique"
    assert entries == list(iter_inputs(database.root)), "listing order is deterministic"


def test_every_database_id_parses_to_what_was_written(database):
    from srscreen.io.items import parse_item

    seen = {}
    for entry in iter_inputs(database.root):
        if isinstance(entry, Item):
            for result in parse_item(entry, "fail"):
                assert isinstance(result, Parsed), result
                assert result.id not in seen
                seen[result.id] = result
    assert set(seen) == set(database.expected)
    for id_, structure in database.expected.items():
        assert_parses_to(seen[id_], structure)


@pytest.mark.parametrize("archive", ["tar_gz", "zip"])
def test_archives_give_the_same_ids_and_structures(database, archive):
    from srscreen.io.items import parse_item

    path = getattr(database, archive)
    entries = list(iter_inputs(path))
    results = [r for e in entries if isinstance(e, Item) for r in parse_item(e, "fail")]
    ids = [r.id for r in results]
    want = sorted(database.expected) if archive == "tar_gz" else sorted(database.zip_ids)
    assert sorted(ids) == want
    for r in results:
        assert_parses_to(r, database.expected[r.id])
    if archive == "tar_gz":
        assert [s.source.rsplit("/", 1)[-1] for s in entries if isinstance(s, Skipped)] == ["README.txt"]


def test_missing_source_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        list(iter_inputs(tmp_path / "nowhere"))


def test_folders_named_like_structures_and_links_to_folders_are_failures(tmp_path, prototypes):
    """Neither passes unseen: a folder `x.cif/` is a failure (its files are still read, each on its own),
    and so is a link to a folder (not followed: it may lead back up the tree)."""
    (tmp_path / "x.cif").mkdir()
    (tmp_path / "x.cif" / "inside.cif").write_text(cif_text(prototypes["NaCl"]))
    (tmp_path / "empty.zip").mkdir()
    (tmp_path / "POSCARS").mkdir()  # a folder of POSCARs: an ordinary folder
    (tmp_path / "POSCARS" / "POSCAR").write_text(poscar_text(prototypes["NaCl"]))
    elsewhere = tmp_path.parent / f"{tmp_path.name}-elsewhere"
    elsewhere.mkdir()
    (elsewhere / "far.cif").write_text(cif_text(prototypes["NaCl"]))
    (tmp_path / "link").symlink_to(elsewhere)
    entries = {e.name: e for e in iter_inputs(tmp_path)}
    assert set(entries) == {"x.cif/", "x.cif/inside.cif", "empty.zip/", "link/", "POSCARS/POSCAR"}
    assert "a folder named like a structure file" in entries["x.cif/"].error
    assert "a folder named like a structure file" in entries["empty.zip/"].error
    assert "a link to a folder, not followed" in entries["link/"].error
    assert entries["x.cif/inside.cif"].error is None and entries["POSCARS/POSCAR"].error is None


def test_a_folder_without_files_is_refused(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(InputError, match="no file in this folder"):
        list(iter_inputs(tmp_path / "empty"))


def test_a_file_named_as_the_source_is_meant_as_structures(tmp_path):
    """In a folder an unknown file is skipped (a README); named on its own, it is a failure with its reason."""
    (tmp_path / "notes.txt").write_text("hello")
    [entry] = iter_inputs(tmp_path / "notes.txt")
    assert isinstance(entry, Item) and entry.error == "not a structure file (unknown extension)"
    [entry] = iter_inputs(tmp_path)
    assert isinstance(entry, Skipped)


def test_empty_multi_structure_file_is_an_input_that_fails(tmp_path):
    """An empty .jsonl or .extxyz is an input like any other: it must be recorded, not vanish."""
    from srscreen.io.items import parse_item

    for name in ("empty.jsonl", "empty.extxyz"):
        (tmp_path / name).write_bytes(b"")
    results = []
    for entry in iter_inputs(tmp_path):
        assert isinstance(entry, Item)
        results.extend(parse_item(entry, "fail"))
    assert sorted(r.id for r in results) == ["empty", "empty"]
    for r in results:
        assert_failure(r, "empty")


@pytest.mark.parametrize("isotope", ["D", "T"])
@pytest.mark.parametrize("fmt", ["cif", "json", "poscar", "extxyz"])
def test_hydrogen_isotopes_are_refused_not_read_as_hydrogen(fmt, isotope):
    """gemmi reads D as H (T as no element), pymatgen both as H, ASE neither: one policy for every format,
    a failure that names the isotope and says to write H."""
    import re

    from pymatgen.core import Lattice, Structure

    lih = Structure(Lattice.cubic(4.0), ["Li", "H"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    name, text = {
        "cif": ("LiH.cif", cif_text(lih)),
        "json": ("LiH.json", json.dumps(lih.as_dict())),
        "poscar": ("POSCAR", poscar_text(lih)),
        "extxyz": ("LiH.extxyz", extxyz_text([lih])),
    }[fmt]
    assert list(parse_one(name, text).numbers) == [3, 1], "written with H, it is hydrogen"
    swapped = {
        "cif": lambda t: re.sub(r"(?m)^(\s*)H(\s+)H1\b", rf"\g<1>{isotope}\g<2>{isotope}1", t),
        "json": lambda t: t.replace('"element": "H"', f'"element": "{isotope}"'),
        "poscar": lambda t: re.sub(r"(?m)^Li H$", f"Li {isotope}", t),
        "extxyz": lambda t: re.sub(r"(?m)^H(\s)", rf"{isotope}\1", t),
    }[fmt](text)
    assert swapped != text
    assert_failure(parse_one(name, swapped), f"'{isotope}'", "hydrogen isotope", "write H")
