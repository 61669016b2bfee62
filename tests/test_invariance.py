"""A prediction is a function of the crystal: the same under any way a file can write it down.

The same crystal reaches srscreen with its atoms in another order, shifted, as a supercell, or in
another unit cell (a Niggli-reduced one or a skewed one). Under the knn-ties graph rule every one of
these gives the same prediction to 1e-5; under CGCNN's rule (exactly 12 neighbours) a shell cut by the
12th neighbour makes the prediction depend on the order of the atoms, which the last test shows, so
the property tests here are able to fail.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import build_prototypes, require_shared_mp

from srscreen.data.batch import collate, with_atoms
from srscreen.graph.elements import cgcnn_feature_table
from srscreen.graph.equivalent_atoms import quotient
from srscreen.graph.settings import GraphSettings
from srscreen.graph.neighbours import build_graphs
from srscreen.model.network import CrystalGraphNet
from srscreen.graph.csr import Graphs

TOLERANCE = 1e-5


def antiperovskite():
    """Ca3PN-like antiperovskite: its 12th-neighbour cut falls inside a shell (the issue's example)."""
    from pymatgen.core import Lattice, Structure

    return Structure.from_spacegroup("Pm-3m", Lattice.cubic(4.71), ["P", "N", "Ca"], [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0]])


def structures() -> dict:
    s = {name: x for name, x in build_prototypes().items() if name not in ("supercell", "molecule")}
    s["antiperovskite"] = antiperovskite()
    return s


STRUCTURES = structures()


@pytest.fixture(scope="module")
def net() -> CrystalGraphNet:
    """An untrained SR-CGCNN with spread-out BatchNorm statistics: any change of graph shows in its output."""
    torch.manual_seed(0)
    model = CrystalGraphNet(feature_table=cgcnn_feature_table(), steps=3)
    with torch.no_grad():
        for bn in [*model.bn1, *model.bn2]:
            bn.running_mean.normal_(0.0, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
    return model.double().eval()


def shard_of(structures: list, settings: GraphSettings) -> Graphs:
    built, errors = build_graphs([(s.lattice.matrix, s.frac_coords, s.atomic_numbers) for s in structures], settings)
    assert all(e is None for e in errors), errors
    return built


def predictions(net, structures: list, settings: GraphSettings = GraphSettings(), merged: bool = False) -> np.ndarray:
    """The network's outputs, computed in float64 so that only the graphs, not float32 rounding
    (~1e-6 relative), can tell two writings of a crystal apart."""
    shard = shard_of(structures, settings)
    with torch.no_grad():
        if not merged:
            batch = collate(shard.n_atoms, shard.atomic_numbers, shard.n_edges, shard.nbr_idx, shard.nbr_dist)
        else:
            q = quotient(shard, net.steps)
            batch = collate(q.n_nodes, q.atomic_numbers, q.n_edges, q.nbr_idx, q.nbr_dist)
            batch = with_atoms(batch, q.n_nodes, q.n_atoms, q.node_of_atom)
        return net(replace(batch, nbr_dist=batch.nbr_dist.double())).numpy()


def rewrites(structure, rng: np.random.Generator) -> dict:
    """The same crystal written down in other ways."""
    from pymatgen.core import Lattice, Structure

    perm = rng.permutation(len(structure))
    shift = rng.uniform(-1, 1, 3)
    unimodular = np.array([[1, 1, 0], [0, 1, 0], [0, 0, 1]]) @ np.array([[1, 0, 0], [0, 1, 0], [1, -1, 1]])
    assert round(np.linalg.det(unimodular)) == 1
    skewed = Structure(Lattice(unimodular @ structure.lattice.matrix), structure.species,
                       structure.frac_coords @ np.linalg.inv(unimodular))
    return {
        "permuted": Structure.from_sites([structure[int(i)] for i in perm]),
        "translated": Structure(structure.lattice, structure.species, structure.frac_coords + shift),
        "supercell 2x1x1": structure * (2, 1, 1),
        "supercell 2x2x2": structure * (2, 2, 2),
        "skewed cell": skewed,
        "Niggli-reduced": structure.get_reduced_structure("niggli"),
    }


def assert_invariant(net, name: str, structure, seed: int) -> None:
    variants = rewrites(structure, np.random.default_rng(seed))
    got = predictions(net, [structure, *variants.values()])
    for (kind, _), value in zip(variants.items(), got[1:]):
        assert abs(value - got[0]) <= TOLERANCE, f"{name}, {kind}: {value:.7f} vs {got[0]:.7f}"
    merged = predictions(net, [structure, *variants.values()], merged=True)
    np.testing.assert_allclose(merged, got, atol=TOLERANCE, rtol=0, err_msg=f"{name}: merged atoms")


@pytest.mark.parametrize("name", sorted(STRUCTURES))
@pytest.mark.parametrize("seed", range(3))
def test_prototype_predictions_do_not_depend_on_how_the_crystal_is_written(net, name, seed):
    assert_invariant(net, name, STRUCTURES[name], seed)


def test_mp_crystals_predictions_do_not_depend_on_how_the_crystal_is_written(net):
    """40 shared MP crystals (fixed seed), tie-cut ones first: each under every rewrite."""
    from pymatgen.core import Structure

    folder = require_shared_mp()
    names = sorted(p.name for p in folder.iterdir() if p.suffix == ".cif")
    picked = np.random.default_rng(11).choice(len(names), size=40, replace=False)
    for seed, i in enumerate(picked):
        structure = Structure.from_file(folder / names[i])
        if len(structure) > 40:  # a 2x2x2 supercell of a large cell only costs time
            continue
        assert_invariant(net, names[i], structure, seed)


def test_cgcnn_rule_is_not_invariant_where_the_12th_neighbour_cuts_a_shell(net):
    """The failure the knn-ties rule removes: the antiperovskite's prediction moves with the atom order."""
    structure = antiperovskite()
    cgcnn = GraphSettings(rule="cgcnn")
    orders = [Structure_from(structure, perm) for perm in ([0, 1, 2, 3, 4], [4, 3, 2, 1, 0], [1, 3, 0, 4, 2])]
    values = predictions(net, orders, cgcnn)
    assert np.ptp(values) > 100 * TOLERANCE, values
    assert np.ptp(predictions(net, orders)) <= TOLERANCE


def Structure_from(structure, perm):
    from pymatgen.core import Structure

    return Structure.from_sites([structure[i] for i in perm])
