"""Shared fixtures: crystals built from pymatgen prototypes, written as a small database in every format.

Nothing here is copied from /work/shared: every structure file a test reads is written by the test
session itself, with pymatgen's writers (CifWriter, Poscar, as_dict) and ASE's extxyz writer.
"""

from __future__ import annotations

import gzip
import io
import json
import shutil
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
MP_STRUCTURES = SHARED / "datasets" / "mp-cgcnn" / "structures"


def require_shared_mp() -> Path:
    """The shared Materials Project CIF folder, or skip the test with the reason."""
    if not MP_STRUCTURES.is_dir():
        pytest.skip(f"shared MP dataset not present at {MP_STRUCTURES} (tests on real MP CIFs need it)")
    return MP_STRUCTURES


def build_prototypes() -> dict:
    """Named pymatgen Structures covering the shapes of cell a screening database holds.

    Small and large cells, cubic to very skewed triclinic, dense bulk and mostly-vacuum cells.
    """
    from pymatgen.core import Lattice, Structure

    s = {}
    s["NaCl"] = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    s["SrTiO3"] = Structure(
        Lattice.cubic(3.905),
        ["Sr", "Ti", "O", "O", "O"],
        [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
    )
    s["ZnO"] = Structure.from_spacegroup(
        "P6_3mc", Lattice.hexagonal(3.25, 5.207), ["Zn", "O"], [[1 / 3, 2 / 3, 0], [1 / 3, 2 / 3, 0.3821]]
    )
    a = 2.87
    s["Fe"] = Structure(Lattice([[-a / 2, a / 2, a / 2], [a / 2, -a / 2, a / 2], [a / 2, a / 2, -a / 2]]), ["Fe"], [[0, 0, 0]])
    s["Cu"] = Structure.from_spacegroup("Fm-3m", Lattice.cubic(3.615), ["Cu"], [[0, 0, 0]])
    s["triclinic"] = Structure(
        Lattice.from_parameters(4.1, 5.3, 6.2, 70, 80, 100),
        ["Si", "O", "O", "Mg"],
        [[0.1, 0.2, 0.3], [0.45, 0.15, 0.62], [0.7, 0.81, 0.05], [0.33, 0.55, 0.9]],
    )
    s["supercell"] = s["NaCl"].get_primitive_structure() * (4, 4, 4)  # 128 atoms
    s["slab"] = cu_slab(layers=4, vacuum=20.0)
    s["molecule"] = Structure(
        Lattice.cubic(20.0), ["C", "O", "O"], [[0.5, 0.5, 0.5], [0.5, 0.5, 0.5 + 1.16 / 20], [0.5, 0.5, 0.5 - 1.16 / 20]]
    )
    return s


def cu_slab(layers: int = 4, vacuum: float = 20.0):
    """An fcc Cu(100) slab, `layers` atomic layers thick, with `vacuum` Å of empty space along c."""
    from pymatgen.core import Lattice, Structure

    a = 3.615
    c = (layers - 1) * a / 2 + vacuum
    species, frac = [], []
    for layer in range(layers):
        z = layer * a / 2 / c
        shift = 0.5 * (layer % 2)
        for x, y in ((0.0, 0.0), (0.5, 0.5)):
            species.append("Cu")
            frac.append([(x + shift) % 1.0, y, z])
    return Structure(Lattice.tetragonal(a, c), species, frac)


@pytest.fixture(scope="session")
def prototypes() -> dict:
    return build_prototypes()


def extxyz_text(structures: list) -> str:
    """A multi-frame extxyz file, written by ASE."""
    import ase.io
    from pymatgen.io.ase import AseAtomsAdaptor

    buf = io.StringIO()
    ase.io.write(buf, [AseAtomsAdaptor.get_atoms(s) for s in structures], format="extxyz")
    return buf.getvalue()


def cif_text(structure, symprec: float | None = None) -> str:
    from pymatgen.io.cif import CifWriter

    return str(CifWriter(structure, symprec=symprec))


def poscar_text(structure) -> str:
    from pymatgen.io.vasp import Poscar

    return Poscar(structure).get_str()


@dataclass
class Database:
    """A folder of structure files and what each id in it must parse to."""

    root: Path
    expected: dict = field(default_factory=dict)  # id -> pymatgen Structure written under that id
    sources: dict = field(default_factory=dict)  # id -> path of the file holding it
    skipped: list = field(default_factory=list)  # paths that are not structure files
    tar_gz: Path | None = None  # the whole folder as one .tar.gz
    zip: Path | None = None  # some of the files as one .zip
    zip_ids: list = field(default_factory=list)

    def copy_to(self, dest: Path) -> "Database":
        """The same database under `dest` (to add bad files without touching the shared one)."""
        shutil.copytree(self.root, dest)
        return Database(
            dest,
            dict(self.expected),
            {k: dest / Path(v).relative_to(self.root) for k, v in self.sources.items()},
            [dest / Path(p).relative_to(self.root) for p in self.skipped],
            self.tar_gz,
            self.zip,
            list(self.zip_ids),
        )


def write_database(root: Path, prototypes: dict) -> Database:
    """Every supported format, each holding different prototypes, plus a README that must be skipped."""
    from pymatgen.core import Lattice

    db = Database(root)
    root.mkdir(parents=True)

    def put(rel: str, text: str | bytes, ids: dict) -> None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        for id_, structure in ids.items():
            db.expected[id_] = structure
            db.sources[id_] = path

    p = prototypes
    put("cif/mp-1000.cif", cif_text(p["NaCl"]), {"mp-1000": p["NaCl"]})
    put("cif/ZnO-sym.cif", cif_text(p["ZnO"], symprec=0.1), {"ZnO-sym": p["ZnO"]})
    put("cif/triclinic.cif", cif_text(p["triclinic"]), {"triclinic": p["triclinic"]})
    put("cif/SrTiO3.cif.gz", gzip.compress(cif_text(p["SrTiO3"]).encode()), {"SrTiO3": p["SrTiO3"]})
    put("run1/POSCAR", poscar_text(p["Fe"]), {"run1/POSCAR": p["Fe"]})
    put("vasp/Cu.vasp", poscar_text(p["Cu"]), {"Cu": p["Cu"]})
    put("json/supercell.json", json.dumps(p["supercell"].as_dict()), {"supercell": p["supercell"]})
    lines = [p["slab"], p["molecule"], p["ZnO"]]
    put(
        "multi/surfaces.jsonl",
        "".join(json.dumps(s.as_dict()) + "\n" for s in lines),
        {f"surfaces:{i}": s for i, s in enumerate(lines)},
    )
    strained = [p["NaCl"].copy() for _ in range(3)]
    for i, s in enumerate(strained):
        s.lattice = Lattice(s.lattice.matrix * (1.0 + 0.01 * (i + 1)))
    frames = [*strained, p["triclinic"]]
    put("multi/traj.extxyz", extxyz_text(frames), {f"traj:{i}": s for i, s in enumerate(frames)})
    readme = root / "README.txt"
    readme.write_text("Structures for the srscreen tests; not a structure file.\n")
    db.skipped.append(readme)

    db.tar_gz = root.parent / f"{root.name}.tar.gz"
    with tarfile.open(db.tar_gz, "w:gz") as tar:
        tar.add(root, arcname=root.name)
    db.zip = root.parent / f"{root.name}-some.zip"
    with zipfile.ZipFile(db.zip, "w") as zf:
        for rel in ("cif/mp-1000.cif", "cif/SrTiO3.cif.gz", "run1/POSCAR", "multi/traj.extxyz"):
            zf.write(root / rel, arcname=f"some/{rel}")
    db.zip_ids = ["mp-1000", "SrTiO3", "run1/POSCAR", "traj:0", "traj:1", "traj:2", "traj:3"]
    return db


@pytest.fixture(scope="session")
def database(tmp_path_factory, prototypes) -> Database:
    """The session's read-only database; copy it (Database.copy_to) before adding files."""
    return write_database(tmp_path_factory.mktemp("db") / "structures", prototypes)


def graphs_in(path) -> dict:
    """id -> `Graphs` of each single structure in a graph file: the CSR counts of each shard agree with
    its arrays, each id is unique, and every structure of the file is there."""
    from srscreen.graph.csr import Graphs, starts_of
    from srscreen.data.graph_file import GraphFile

    graphs = {}
    with GraphFile(path) as f:
        for shard in f.iter_shards():
            assert len(shard.ids) == len(shard.n_atoms) == len(shard.formula)
            assert int(shard.n_atoms.sum()) == len(shard.atomic_numbers) == len(shard.n_edges)
            assert int(shard.n_edges.sum()) == len(shard.nbr_idx) == len(shard.nbr_dist)
            atom_start = starts_of(shard.n_atoms)
            edge_start = np.concatenate([starts_of(shard.n_edges), [len(shard.nbr_idx)]])
            for i, id_ in enumerate(shard.ids):
                assert id_ not in graphs, f"{id_} appears twice in {path}"
                a, b = atom_start[i], atom_start[i] + shard.n_atoms[i]
                edges = slice(edge_start[a], edge_start[b])
                graphs[id_] = Graphs(shard.n_atoms[i : i + 1], shard.atomic_numbers[a:b], shard.n_edges[a:b],
                                     shard.nbr_idx[edges], shard.nbr_dist[edges])
        assert len(graphs) == len(f)
    return graphs


def assert_same_graph(got, want, msg: str = "") -> None:
    """Two single-structure `Graphs` hold the same atoms, edge counts, neighbours and distances, to the bit."""
    for name in ("atomic_numbers", "n_edges", "nbr_idx", "nbr_dist"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=f"{msg}: {name}")


def gram(lattice: np.ndarray) -> np.ndarray:
    """Lattice metric: independent of how the cell is oriented in space."""
    lattice = np.asarray(lattice, dtype=float)
    return lattice @ lattice.T


def assert_same_structure(lattice, frac, numbers, structure, atol: float = 1e-5) -> None:
    """Arrays describe `structure`: same cell metric, same atoms at the same places, in any order.

    Positions are compared modulo lattice translations, as a minimum-image distance in Å.
    """
    lattice = np.asarray(lattice, dtype=float)
    np.testing.assert_allclose(gram(lattice), gram(structure.lattice.matrix), atol=atol * 10)
    numbers = np.asarray(numbers)
    want_numbers = np.array([site.specie.Z for site in structure])
    assert sorted(numbers.tolist()) == sorted(want_numbers.tolist())
    frac = np.asarray(frac, dtype=float)
    want = structure.frac_coords
    unmatched = set(range(len(want)))
    for f, z in zip(frac, numbers):
        best, best_d = None, np.inf
        for j in unmatched:
            if want_numbers[j] != z:
                continue
            df = f - want[j]
            df -= np.round(df)
            d = float(np.linalg.norm(df @ lattice))
            if d < best_d:
                best, best_d = j, d
        assert best is not None and best_d < atol, f"atom Z={z} at {f} has no counterpart (nearest {best_d:.2e} Å)"
        unmatched.discard(best)
    assert not unmatched
