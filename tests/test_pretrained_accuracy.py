"""An accuracy guard for every shipped model: crystals this test builds itself, with known labels.

The labels are the Materials Project's (GGA/GGA+U formation energies per atom and PBE band gaps of the
mp-cgcnn training set, Jain et al., APL Materials 1, 011002 (2013), CC BY 4.0), rounded: approximate
reference values, not exact targets. The crystals are built from their prototypes with MP's relaxed
lattice constants (conventional cells, rounded to 0.01 Å; internal parameters of wurtzite, rutile and
corundum from the literature), so they are close to, not equal to, MP's structures.

The bounds hold for any decent model of the two properties (the shipped ones reach ~0.05 eV/atom and
~0.3 eV on MP's test split) and fail by a wide margin for the same network with shuffled weights: each
test runs that negative control too, so a guard without teeth fails as well.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import srscreen
from helpers.screening_data import one_thread  # noqa: F401 - fixture
from srscreen.model.registry import DEFAULT_MODELS, pretrained_names

pytestmark = pytest.mark.skipif(not set(DEFAULT_MODELS) <= set(pretrained_names()),
                                reason="pretrained sr-cgcnn-ef/eg are not installed")

# name: (prototype, species, conventional lattice constant(s) in Å, MP Ef in eV/atom, MP PBE gap in eV)
CRYSTALS = {
    "NaCl (mp-22862)": ("rocksalt", ("Na", "Cl"), 5.69, -2.11, 5.00),
    "KCl (mp-23193)": ("rocksalt", ("K", "Cl"), 6.38, -2.25, 5.04),
    "MgO (mp-1265)": ("rocksalt", ("Mg", "O"), 4.26, -3.06, 4.44),
    "CaO (mp-2605)": ("rocksalt", ("Ca", "O"), 4.84, -3.32, 3.63),
    "LiF (mp-1138)": ("rocksalt", ("Li", "F"), 4.08, -3.18, 8.72),
    "NaF (mp-682)": ("rocksalt", ("Na", "F"), 4.70, -2.96, 6.20),
    "KBr (mp-23251)": ("rocksalt", ("K", "Br"), 6.70, -1.76, 4.32),
    "LiCl (mp-22905)": ("rocksalt", ("Li", "Cl"), 5.15, -2.11, 6.25),
    "SrO (mp-2472)": ("rocksalt", ("Sr", "O"), 5.21, -3.08, 3.29),
    "BaO (mp-1342)": ("rocksalt", ("Ba", "O"), 5.62, -2.83, 2.09),
    "KF (mp-463)": ("rocksalt", ("K", "F"), 5.42, -2.95, 6.00),
    "PbS (mp-21276)": ("rocksalt", ("Pb", "S"), 6.01, -0.87, 0.47),
    "GaAs (mp-2534)": ("zincblende", ("Ga", "As"), 5.75, -0.35, 0.19),
    "ZnS (mp-10695)": ("zincblende", ("Zn", "S"), 5.45, -1.14, 2.02),
    "CdTe (mp-406)": ("zincblende", ("Cd", "Te"), 6.63, -0.46, 0.59),
    "GaP (mp-2490)": ("zincblende", ("Ga", "P"), 5.51, -0.41, 1.59),
    "SiC (mp-8062)": ("zincblende", ("Si", "C"), 4.38, -0.20, 1.39),
    "BN (mp-1639)": ("zincblende", ("B", "N"), 3.63, -1.40, 4.47),
    "AlAs (mp-2172)": ("zincblende", ("Al", "As"), 5.73, -0.49, 1.52),
    "Si (mp-149)": ("diamond", ("Si",), 5.47, 0.0, 0.62),
    "ZnO (mp-2133)": ("wurtzite", ("Zn", "O"), (3.29, 5.31, 0.382), -1.80, 0.73),
    "AlN (mp-661)": ("wurtzite", ("Al", "N"), (3.13, 5.02, 0.382), -1.60, 4.04),
    "CaF2 (mp-2741)": ("fluorite", ("Ca", "F"), 5.52, -4.25, 7.11),
    "SrF2 (mp-981)": ("fluorite", ("Sr", "F"), 5.87, -4.25, 6.75),
    "BaF2 (mp-1029)": ("fluorite", ("Ba", "F"), 6.28, -4.18, 6.62),
    "TiO2 rutile (mp-2657)": ("rutile", ("Ti", "O"), (4.65, 2.97, 0.305), -3.47, 1.78),
    "SnO2 (mp-856)": ("rutile", ("Sn", "O"), (4.83, 3.24, 0.307), -2.12, 0.65),
    "BaTiO3 (mp-2998)": ("perovskite", ("Ba", "Ti", "O"), 4.04, -3.49, 1.68),
    "KTaO3 (mp-3614)": ("perovskite", ("K", "Ta", "O"), 4.03, -3.09, 2.11),
    "Al2O3 (mp-1143)": ("corundum", ("Al", "O"), (4.81, 13.12, 0.3522, 0.3062), -3.44, 5.85),
    "Cu (mp-30)": ("fcc", ("Cu",), 3.62, 0.0, 0.0),
    "Al (mp-134)": ("fcc", ("Al",), 4.04, 0.0, 0.0),
    "Ni (mp-23)": ("fcc", ("Ni",), 3.51, 0.0, 0.0),
    "Ag (mp-124)": ("fcc", ("Ag",), 4.16, 0.0, 0.0),
    "Pt (mp-126)": ("fcc", ("Pt",), 3.98, 0.0, 0.0),
    "Fe (mp-13)": ("bcc", ("Fe",), 2.84, 0.0, 0.0),
    "W (mp-91)": ("bcc", ("W",), 3.19, 0.0, 0.0),
    "Na (mp-127)": ("bcc", ("Na",), 4.17, 0.0, 0.0),
    "V (mp-146)": ("bcc", ("V",), 2.99, 0.0, 0.0),
    "Nb (mp-75)": ("bcc", ("Nb",), 3.32, 0.0, 0.0),
    "NiAl (mp-1487)": ("cscl", ("Ni", "Al"), 2.89, -0.66, 0.0),
    "FeAl (mp-2658)": ("cscl", ("Fe", "Al"), 2.87, -0.33, 0.0),
    "CuZn (mp-987)": ("cscl", ("Cu", "Zn"), 2.96, -0.09, 0.0),
    "Cu3Au (mp-2258)": ("l12", ("Au", "Cu"), 3.77, -0.04, 0.0),
}

# Bounds any decent model meets here, and the factor by which shuffled weights must miss the MAE bound.
EF_MAE = 0.25  # eV/atom
EG_MAE = 0.6  # eV
METAL_GAP_BELOW = 1.0  # eV, for each crystal with no MP gap
WIDE_GAP_ABOVE = 2.5  # eV, for each crystal with an MP gap of 4 eV or more
MARGIN = 3.0


def build(prototype: str, species: tuple, a) -> object:
    from pymatgen.core import Lattice, Structure

    sg = Structure.from_spacegroup
    if prototype == "rocksalt":
        return sg("Fm-3m", Lattice.cubic(a), species, [[0, 0, 0], [0.5, 0.5, 0.5]])
    if prototype == "zincblende":
        return sg("F-43m", Lattice.cubic(a), species, [[0, 0, 0], [0.25, 0.25, 0.25]])
    if prototype == "diamond":
        return sg("Fd-3m", Lattice.cubic(a), species, [[0, 0, 0]])
    if prototype == "fluorite":
        return sg("Fm-3m", Lattice.cubic(a), species, [[0, 0, 0], [0.25, 0.25, 0.25]])
    if prototype == "perovskite":
        return sg("Pm-3m", Lattice.cubic(a), species, [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0]])
    if prototype == "fcc":
        return sg("Fm-3m", Lattice.cubic(a), species, [[0, 0, 0]])
    if prototype == "bcc":
        return sg("Im-3m", Lattice.cubic(a), species, [[0, 0, 0]])
    if prototype == "cscl":
        return sg("Pm-3m", Lattice.cubic(a), species, [[0, 0, 0], [0.5, 0.5, 0.5]])
    if prototype == "l12":
        return sg("Pm-3m", Lattice.cubic(a), species, [[0, 0, 0], [0.5, 0.5, 0]])
    if prototype == "wurtzite":
        a, c, u = a
        return sg("P6_3mc", Lattice.hexagonal(a, c), species, [[1 / 3, 2 / 3, 0], [1 / 3, 2 / 3, u]])
    if prototype == "rutile":
        a, c, u = a
        return sg("P4_2/mnm", Lattice.tetragonal(a, c), species, [[0, 0, 0], [u, u, 0]])
    if prototype == "corundum":
        a, c, z, x = a
        return sg("R-3c", Lattice.hexagonal(a, c), species, [[0, 0, z], [x, 0, 0.25]])
    raise ValueError(prototype)


@pytest.fixture(scope="module")
def crystals() -> dict:
    return {name: build(proto, species, a) for name, (proto, species, a, _, _) in CRYSTALS.items()}


def test_the_crystals_are_the_intended_ones(crystals):
    """The prototypes give the compositions and cells meant: a typo in a builder must not pass as accuracy."""
    from pymatgen.core import Composition

    for name, s in crystals.items():
        assert s.composition.reduced_composition == Composition(name.split()[0]).reduced_composition, (name, s)
        assert min(s.distance_matrix[np.triu_indices(len(s), 1)], default=9.0) > 1.2, name


def shuffled(name: str, tmp_path) -> "srscreen.Model":
    """The same network and normalisers with every weight tensor's entries permuted (every member's, in an
    ensemble): what a model file mixed up at loading (or saved before training) gives, with the weights'
    own scale."""
    model = srscreen.load_model(name)
    gen = torch.Generator().manual_seed(0)

    def permuted(state: dict) -> dict:
        return {k: (v.flatten()[torch.randperm(v.numel(), generator=gen)].view_as(v)
                    if v.is_floating_point() and v.numel() > 1 and "running" not in k and k != "feature_table" else v)
                for k, v in state.items()}

    model.file.state_dict = permuted(model.file.state_dict)
    model.file.members = [{**m, "state_dict": permuted(m["state_dict"])} for m in model.file.members]
    path = tmp_path / f"{name}-shuffled.pt"
    model.file.save(path)
    return srscreen.load_model(path)


EF, EG = "formation_energy_per_atom", "band_gap"
# Every head of every shipped model, and the reference column (of CRYSTALS) it is checked against.
REFERENCE_COLUMN = {EF: 3, EG: 4}
HEADS = [(name, target) for name in pretrained_names() for target in srscreen.load_model(name).targets]


def predictions(model, crystals: dict, target: str) -> np.ndarray:
    return model.predict_structures(list(crystals.values()), target=target)


def references(column: int) -> np.ndarray:
    return np.array([v[column] for v in CRYSTALS.values()])


def test_every_shipped_head_has_a_reference():
    assert HEADS, "no pretrained model installed"
    assert {t for _, t in HEADS} <= set(REFERENCE_COLUMN), f"heads without an accuracy guard: {HEADS}"
    assert set(REFERENCE_COLUMN) <= {t for _, t in HEADS}, "a target users get has no shipped model"


@pytest.mark.parametrize(("name", "target"), [h for h in HEADS if h[1] == EF])
def test_formation_energy_heads_are_accurate_on_known_crystals(name, target, crystals, tmp_path, one_thread):
    want = references(REFERENCE_COLUMN[target])
    got = predictions(srscreen.load_model(name), crystals, target)
    errors = dict(zip(CRYSTALS, np.round(got - want, 3)))
    mae = float(np.abs(got - want).mean())
    assert mae < EF_MAE, f"MAE {mae:.3f} eV/atom; errors {errors}"
    control = float(np.abs(predictions(shuffled(name, tmp_path), crystals, target) - want).mean())
    assert control > MARGIN * EF_MAE, f"shuffled weights reach MAE {control:.3f}: the guard has no teeth"


def gap_faults(got: np.ndarray) -> list[str]:
    want = references(REFERENCE_COLUMN[EG])
    faults = [f"{n}: {g:.2f} eV for a metal" for n, g, w in zip(CRYSTALS, got, want) if w == 0 and g >= METAL_GAP_BELOW]
    faults += [f"{n}: {g:.2f} eV for a {w} eV insulator" for n, g, w in zip(CRYSTALS, got, want)
               if w >= 4.0 and g <= WIDE_GAP_ABOVE]
    mae = float(np.abs(got - want).mean())
    if mae >= EG_MAE:
        faults.append(f"MAE {mae:.3f} eV")
    return faults


@pytest.mark.parametrize(("name", "target"), [h for h in HEADS if h[1] == EG])
def test_band_gap_heads_tell_metals_from_insulators(name, target, crystals, tmp_path, one_thread):
    want = references(REFERENCE_COLUMN[target])
    got = predictions(srscreen.load_model(name), crystals, target)
    assert gap_faults(got) == [], dict(zip(CRYSTALS, np.round(got, 2)))
    control = predictions(shuffled(name, tmp_path), crystals, target)
    assert float(np.abs(control - want).mean()) > MARGIN * EG_MAE, "shuffled weights pass the MAE bound's margin"
    assert len(gap_faults(control)) >= 5, "shuffled weights pass the metal/insulator checks"
