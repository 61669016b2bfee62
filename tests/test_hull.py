"""Energy above the hull (srscreen.screening.hull) against pymatgen's PhaseDiagram, built independently here."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
from pymatgen.core import Composition, Lattice, Structure

import srscreen.screening.hull as hull_module
from srscreen.screening.hull import ReferenceFileError, ReferenceHull, default_reference
from srscreen.screening.ranking import printed, shown
from srscreen.screening.reference_hull import build_reference, write_reference

# Li-O, Fe-O and Li-Fe-O with made-up formation energies (eV/atom), a polymorph above its twin,
# one compound above the elements (never a hull point) and one ternary below the binaries' hull.
ROWS = [
    ("Li2O", -2.00), ("Li2O2", -1.60), ("LiO2", -1.00), ("Li2O", -1.90),
    ("FeO", -1.40), ("Fe3O4", -1.65), ("Fe2O3", -1.70), ("FeO2", 0.10),
    ("LiFeO2", -1.95), ("Li5FeO4", -1.80), ("LiFe5O8", -1.60),
    ("Li", 0.0), ("Fe", 0.0), ("O", 0.0),
]


def pymatgen_diagram(rows, extra=()):
    """PhaseDiagram of the rows (energies Ef x atoms) plus the elements at 0, built the plain way."""
    entries = [PDEntry(Composition(f), ef * Composition(f).num_atoms) for f, ef in [*rows, *extra]]
    symbols = {el for f, _ in [*rows, *extra] for el in Composition(f).elements}
    entries += [PDEntry(Composition({el: 1}), 0.0) for el in symbols]
    return PhaseDiagram(entries)


def test_reference_rows_match_pymatgen_e_above_hull():
    hull = ReferenceHull(ROWS)
    pd = pymatgen_diagram(ROWS)
    for formula, ef in ROWS:
        comp = Composition(formula)
        expected = pd.get_e_above_hull(PDEntry(comp, ef * comp.num_atoms))
        got, notes = hull.e_above_hull([formula], np.array([ef]))
        assert notes == [None]
        assert got[0] == pytest.approx(expected, abs=1e-9), formula
    got, _ = hull.e_above_hull(["Li2O", "LiO2", "FeO2"], np.array([-1.90, -1.00, 0.10]))
    assert got[0] == pytest.approx(0.10) and got[1] > 0 and got[2] > 0.1


@pytest.mark.parametrize("seed", range(4))
def test_candidates_above_the_hull_match_pymatgen(seed):
    """Random compositions of Li-Fe-O and its subsystems, placed above the hull by a random margin."""
    rng = np.random.default_rng(seed)
    hull = ReferenceHull(ROWS)
    plain = pymatgen_diagram(ROWS)
    formulas, ef, expected = [], [], []
    for _ in range(40):
        counts = rng.integers(0, 7, size=3)
        if counts.sum() == 0:
            continue
        comp = Composition({el: int(n) for el, n in zip(("Li", "Fe", "O"), counts) if n})
        margin = float(rng.uniform(0.0, 0.5))
        e = plain.get_hull_energy_per_atom(comp) + margin
        with_candidate = pymatgen_diagram(ROWS, extra=[(comp.formula, e)])
        formulas.append(comp.formula)
        ef.append(e)
        expected.append(with_candidate.get_e_above_hull(PDEntry(comp, e * comp.num_atoms)))
    got, notes = hull.e_above_hull(formulas, np.array(ef))
    assert notes == [None] * len(formulas)
    np.testing.assert_allclose(got, expected, atol=1e-9)


def test_below_the_hull_is_negative():
    """Li3O2 lies between Li2O (x_O 1/3, -2.0) and Li2O2 (x_O 1/2, -1.6): hull -2.0 + 0.4 * 0.4 = -1.84."""
    hull = ReferenceHull(ROWS)
    energy, _ = hull.hull_energy(["Li3O2"])
    assert energy[0] == pytest.approx(-1.84)
    got, notes = hull.e_above_hull(["Li3O2"], np.array([-1.90]))
    assert got[0] == pytest.approx(-0.06) and notes == [None]
    assert energy[0] == pytest.approx(pymatgen_diagram(ROWS).get_hull_energy_per_atom(Composition("Li3O2")))


def test_elements_outside_the_reference_are_a_note():
    hull = ReferenceHull(ROWS)
    got, notes = hull.e_above_hull(["LiFeO2", "LiXeF", "PuCmO3", "Qq2O", "Fe2O3"], np.array([-2.0, -1.0, -1.0, -1.0, -1.7]))
    assert np.isnan(got[1:4]).all() and np.isfinite(got[[0, 4]]).all()
    assert notes[0] is None and notes[4] is None
    assert notes[1] == "no reference for elements F, Xe"
    assert notes[2] == "no reference for elements Cm, Pu"
    assert notes[3] == "cannot parse formula 'Qq2O'"


def test_one_element_systems():
    hull = ReferenceHull([("Fe", 0.3), ("Li", 0.0), *ROWS[:3]])  # an elemental row is not a hull point
    got, notes = hull.e_above_hull(["Fe", "Fe", "Li", "O"], np.array([0.05, -0.02, 0.0, 0.2]))
    np.testing.assert_allclose(got, [0.05, -0.02, 0.0, 0.2])
    assert notes == [None] * 4
    only_elements = ReferenceHull([("Cu", 0.0), ("Zn", 0.1)])
    got, notes = only_elements.e_above_hull(["CuZn", "Cu"], np.array([0.02, 0.01]))
    np.testing.assert_allclose(got, [0.02, 0.01])
    assert pymatgen_diagram([("Cu", 0.0), ("Zn", 0.0)]).get_hull_energy_per_atom(Composition("CuZn")) == 0


def test_each_system_is_built_once(monkeypatch):
    calls = []

    def spy(data, *args, **kwargs):
        calls.append(data.shape[1])
        return get_facets(data, *args, **kwargs)

    get_facets = hull_module.get_facets
    monkeypatch.setattr(hull_module, "get_facets", spy)
    hull = ReferenceHull(ROWS)
    base = ["Li2O", "FeO", "LiFeO2", "Li3Fe2O5", "Fe", "Li4O3", "Fe2O3"]
    formulas = base * 2000
    first, _ = hull.e_above_hull(formulas, np.zeros(len(formulas)))
    assert sorted(calls) == [2, 2, 3]  # Li-O, Fe-O, Li-Fe-O; Fe needs no hull
    again, _ = hull.e_above_hull(list(reversed(base)), np.zeros(len(base)))
    assert len(calls) == 3 and hull.systems_built == 3
    np.testing.assert_array_equal(first[: len(base)], again[::-1])
    small = ReferenceHull(ROWS, max_systems=1, max_formulas=1)  # evicted systems are built again
    for formulas in (["Li2O", "Li2O"], ["FeO"], ["Li2O"]):
        small.hull_energy(formulas)
    assert small.systems_built == 3


def test_ensemble_spread():
    hull = ReferenceHull(ROWS)
    members = np.array([[-1.9, -1.6], [-2.1, -1.5], [-2.0, -1.8]])
    got, _ = hull.e_above_hull(["Li2O", "Fe2O3"], members)
    assert got.shape == (3, 2)
    np.testing.assert_allclose(got.std(axis=0), members.std(axis=0))
    with pytest.raises(ValueError, match="2 formulas"):
        hull.e_above_hull(["Li2O", "Fe2O3"], np.zeros(3))


def test_phase_diagram_of_the_reference():
    hull = ReferenceHull(ROWS)
    pd = hull.phase_diagram(["Li", "Fe", "O"])
    comp = Composition("Li3Fe2O5")
    assert pd.get_hull_energy_per_atom(comp) == pytest.approx(hull.hull_energy(["Li3Fe2O5"])[0][0])


@pytest.mark.parametrize(("formula", "energy"), [
    ("formula", "formation_energy_per_atom"), ("composition", "e_form"), ("Formula", "Ef"),
    ("reduced_formula", "e_form_per_atom"), ("pretty_formula", "formation_energy"),
])
def test_csv_column_names(tmp_path, formula, energy):
    path = tmp_path / "refs.csv"
    lines = [f"{formula},{energy},note"] + [f"{f},{e},x" for f, e in ROWS]
    path.write_text("\n".join(lines) + "\n")
    hull = ReferenceHull.from_csv(path)
    assert hull.hull_energy(["Li3O2"])[0][0] == pytest.approx(-1.84)


def test_gzip_comments_and_fetch_mp_labels(tmp_path):
    path = tmp_path / "refs.csv.gz"
    path.write_bytes(gzip.compress(b"# made up\nformula,ef\nLi2O,-2.0\n\n# more\nLi2O2,-1.6\n"))
    assert ReferenceHull.from_csv(path).hull_energy(["Li3O2"])[0][0] == pytest.approx(-1.84)
    # fetch-mp: OUT/labels.csv (no formula) beside OUT/structures/<id>.json, empty values for missing numbers
    (tmp_path / "mp" / "structures").mkdir(parents=True)
    for id_, species in [("mp-1", ["Li", "Li", "O"]), ("mp-2", ["Li", "O"]), ("mp-3", ["Li", "O", "O"])]:
        s = Structure(Lattice.cubic(4.0), species, [[0.1 * i, 0.2 * i, 0.3 * i] for i in range(len(species))])
        (tmp_path / "mp" / "structures" / f"{id_}.json").write_text(json.dumps(s.as_dict()))
    labels = tmp_path / "mp" / "labels.csv"
    labels.write_text("material_id,formation_energy_per_atom,band_gap,energy_above_hull\n"
                      "mp-1,-2.0,5.0,0.0\nmp-2,-1.6,2.0,\nmp-3,,1.0,\n")
    hull = ReferenceHull.from_csv(labels)
    assert sorted(hull.rows()) == [("Li2O", -2.0), ("Li2O2", -1.6)]  # pymatgen writes LiO so
    moved = tmp_path / "elsewhere.csv"
    moved.write_text(labels.read_text())
    with pytest.raises(ReferenceFileError, match="no formula or composition column"):
        ReferenceHull.from_csv(moved)
    assert len(ReferenceHull.from_csv(moved, structures=tmp_path / "mp" / "structures")) == 2
    labels.write_text(labels.read_text() + "mp-9,-1.0,0,\n")
    with pytest.raises(ReferenceFileError, match=r"labels.csv line 5: no structure file for 'mp-9'"):
        ReferenceHull.from_csv(labels)


@pytest.mark.parametrize(("text", "message"), [
    ("formula,band_gap\nLi2O,1.0\n", r"refs.csv: no formation energy column \(columns: formula, band_gap;"),
    ("name,ef\nLi2O,1.0\n", r"refs.csv: no formula or composition column \(columns: name, ef;"),
    ("formula,ef\nLi2O,-2.0\nLi2Oq,-1.0\n", r"refs.csv line 3: cannot parse formula 'Li2Oq'"),
    ("# comment\nformula,ef\nLi2O,-2.0\n\nLiO2,low\n", r"refs.csv line 5: formation energy 'low' is not a number"),
    ("formula,ef\nLi2O,-2.0,extra\n", r"refs.csv line 2: 3 cells, the header has 2"),
    ("formula,ef\n", r"refs.csv: no reference rows"),
    ("formula,e_form\nLi,-1.9\nO2,-4.9\nLi2O,-4.8\n", r"refs.csv: Li has formation energy -1.9 eV/atom, below 0.*tota"),
    # qhull's error, over 40 lines, ended predict --reference in a traceback
    ("formula,ef\nLi2O,-1e20\n", r"refs.csv: formation energy of Li2O is -1e\+20 eV/atom, beyond ±1,000,000"),
    ("", r"refs.csv: empty reference file"),
])
def test_bad_reference_files(tmp_path, text, message):
    path = tmp_path / "refs.csv"
    path.write_text(text)
    with pytest.raises(ReferenceFileError, match=message) as error:
        ReferenceHull.from_csv(path)
    assert "\n" not in str(error.value) and str(path) in str(error.value)


def test_a_graph_file_given_as_reference_is_named_for_what_it_is(tmp_path):
    """An HDF5 graph file given as --reference said "'utf-8' codec can't decode byte 0x89"."""
    path = tmp_path / "graphs.h5"
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(range(256)) * 4)
    with pytest.raises(ReferenceFileError, match=r"graphs.h5: binary file \(HDF5: a graph file\?\), not a reference CSV"):
        ReferenceHull.from_csv(path)


def test_builder_keeps_the_lowest_per_composition(tmp_path):
    folder = tmp_path / "structures"
    folder.mkdir()
    rock_salt = Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.2), ["Mg", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    rock_salt.to(filename=str(folder / "a-1.cif"))
    (folder / "a-2.json").write_text(json.dumps(rock_salt.as_dict()))  # the same composition, lower
    Structure(Lattice.cubic(3.0), ["Mg"], [[0, 0, 0]]).to(filename=str(folder / "a-3.cif"))
    labels = tmp_path / "labels.csv"
    labels.write_text("material_id,formation_energy_per_atom,band_gap\na-1,-3.0,5\na-2,-3.1,5\na-3,0.0,0\n")
    rows = build_reference(labels, folder)
    assert rows == [("Mg", 0.0, "a-3"), ("MgO", -3.1, "a-2")]
    out = tmp_path / "ref.csv.gz"
    write_reference(rows, out, "made up\nfor a test")
    first = out.read_bytes()
    write_reference(rows, out, "made up\nfor a test")
    assert out.read_bytes() == first  # no timestamp in the gzip header
    assert gzip.decompress(first).decode().startswith("# made up\n# for a test\nformula,")
    assert ReferenceHull.from_csv(out).e_above_hull(["MgO"], np.array([-3.0]))[0][0] == pytest.approx(0.1)


def test_shipped_reference():
    hull = default_reference()
    assert len(hull) > 20000 and {"Li", "Fe", "O", "Si"} <= hull.elements
    rows = hull.rows()[::500]
    got, notes = hull.e_above_hull([f for f, _ in rows], np.array([e for _, e in rows]))
    assert notes == [None] * len(rows) and (got >= -1e-9).all()  # a reference row is never below its own hull
    lfo = [(f, e) for f, e in hull.rows() if set(Composition(f).chemical_system.split("-")) <= {"Li", "Fe", "O"}]
    pd = pymatgen_diagram(lfo)
    for formula in ("LiFeO2", "Li2FeO3", "LiFe5O8", "Fe2O3", "Li2O"):
        assert hull.hull_energy([formula])[0][0] == pytest.approx(pd.get_hull_energy_per_atom(Composition(formula)), abs=1e-9)


# --------------------------------------------------------------------------- predict --hull, end to end


@pytest.fixture(scope="module")
def screened(tmp_path_factory):
    """A small built database, its graphs and a tiny Ef/Eg pair (tests/helpers/screening_data.py)."""
    from conftest import build_prototypes
    from helpers.screening_data import crystals, featurize_db, target_values, train_tiny_pair, write_json_db, write_labels

    root = tmp_path_factory.mktemp("hull-predict")
    items = crystals(build_prototypes())
    graphs = featurize_db(write_json_db(root / "db", items), root / "graphs.h5")
    models = train_tiny_pair(graphs, write_labels(root / "labels.csv", target_values(items)), root, seed=0)
    return graphs, models


def test_predict_hull_places_each_predicted_energy_against_the_reference(screened, tmp_path):
    """`predict --reference` (implies --hull): e_above_hull = predicted Ef - the reference hull at that
    composition, computed here with pymatgen from the CSV's rows; an element outside the reference is a
    note; --sort and --where work on the column."""
    from helpers.screening_data import cli

    graphs, models = screened
    reference = [("NaCl", -2.1), ("Na2O", -1.5), ("MgO", -3.0), ("KCl", -2.2), ("NaBr", -1.9)]
    path = tmp_path / "refs.csv"
    path.write_text("formula,formation_energy_per_atom\n" + "".join(f"{f},{e}\n" for f, e in reference))
    args = ["predict", graphs, "--model", models["ef"], "--model", models["eg"], "--threads", "1", "-q",
            "--reference", path, "--format", "jsonl"]
    result = cli(*args)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    placed = 0
    for row in rows:
        comp = Composition(row["formula"])
        known = {str(el) for f, _ in reference for el in Composition(f).elements}
        if not {str(el) for el in comp.elements} <= known:
            assert row["e_above_hull"] is None and "no reference for element" in row["hull_note"], row
            continue
        relevant = [(f, e) for f, e in reference if set(Composition(f).elements) <= set(comp.elements)]
        hull_energy = pymatgen_diagram(relevant, extra=[(row["formula"], 0.0)]).get_hull_energy_per_atom(comp)
        assert row["e_above_hull"] == pytest.approx(row["formation_energy_per_atom"] - hull_energy, abs=1e-5), row
        assert row["hull_note"] == ""
        placed += 1
    assert placed >= 5 and placed < len(rows)
    cut = printed(float(np.median([row["e_above_hull"] for row in rows if row["e_above_hull"] is not None])))
    sorted_rows = cli(*args, "--sort", "e_above_hull", "--where", f"e_above_hull<={cut}")
    values = [json.loads(line)["e_above_hull"] for line in sorted_rows.stdout.splitlines()]
    # --where compares values as printed
    values = [shown(v) for v in values]
    assert values == sorted(values) and all(v <= float(cut) for v in values) and len(values) >= placed // 2


def test_predict_hull_needs_a_formation_energy_model(screened):
    from helpers.screening_data import assert_usage_error, cli

    graphs, models = screened
    assert_usage_error(cli("predict", graphs, "--model", models["eg"], "--hull", "-q"), "--hull", "formation-energy")
