"""Featurizing a database: every structure in the graph file exactly once, every other input accounted for.

The user's story: point ``featurize`` at a folder (or an archive) holding CIFs, POSCARs, JSON, JSON
lines and extxyz files; get one HDF5 graph file whose graphs are exactly what ``build_graph`` gives;
see every bad input in the failures table with its reason; kill the run and rerun to resume;
never find a half-written file.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import REPO_ROOT, assert_same_graph, cif_text, extxyz_text, graphs_in, poscar_text

from srscreen.graph.csr import rows_of, starts_of
from srscreen.data.featurize import FeaturizeOptions, FeaturizeSummary, featurize
from srscreen.graph.settings import GraphSettings
from srscreen.graph.neighbours import build_graph
from srscreen.data.integrity import CRC_ATTR
from srscreen.io.parsed import Parsed
from srscreen.io.readers import parse_bytes
from srscreen.data.graph_file import GraphFile, ShardFileError, partial_dir

SMALL_SHARDS = FeaturizeOptions(shard_size=3)


def parsed_by_id(path: Path) -> dict:
    """What srscreen's reader makes of one file (POSCARs are named with their folder, as in a walk)."""
    name = f"{path.parent.name}/{path.name}" if path.name in ("POSCAR", "CONTCAR") else path.name
    return {p.id: p for p in parse_bytes(name, path.read_bytes()) if isinstance(p, Parsed)}


def assert_graphs_are_build_graph(graphs: dict, database, settings: GraphSettings = GraphSettings()) -> None:
    """Each stored graph equals build_graph on the structure the file holds (read back by srscreen),
    and its edge counts and distances equal those of the pymatgen structure that was written (atoms paired by place)."""
    for id_, graph in graphs.items():
        source = database.sources[id_]
        parsed = parsed_by_id(source)[id_]
        assert_same_graph(graph, build_graph(parsed.lattice, parsed.frac_coords, parsed.numbers, settings), id_)
        assert graph.nbr_idx.dtype == graph.n_edges.dtype == np.int32 and graph.nbr_dist.dtype == np.float32
        assert graph.atomic_numbers.dtype == np.uint8
        # Against the structure as written, independent of the reader's atom order.
        structure = database.expected[id_]
        written = build_graph(structure.lattice.matrix, structure.frac_coords, np.array(structure.atomic_numbers), settings)
        perm = pair_atoms(parsed, structure)
        np.testing.assert_array_equal(graph.n_edges, written.n_edges[perm], err_msg=id_)
        edges = rows_of(starts_of(written.n_edges)[perm], written.n_edges[perm])
        np.testing.assert_allclose(graph.nbr_dist, written.nbr_dist[edges], atol=1e-4, err_msg=id_)


def pair_atoms(parsed: Parsed, structure) -> np.ndarray:
    """For each parsed atom, the index of the same atom in the pymatgen structure."""
    frac = structure.frac_coords
    z = np.array(structure.atomic_numbers)
    perm = []
    for f, n in zip(parsed.frac_coords, parsed.numbers):
        df = frac - f
        df -= np.round(df)
        d = np.linalg.norm(df @ parsed.lattice, axis=1)
        d[z != n] = np.inf
        perm.append(int(np.argmin(d)))
    assert sorted(perm) == list(range(len(z)))
    return np.array(perm)


def assert_reconciles(summary, out) -> None:
    """Counts agree between the summary and the file; nothing is counted twice or lost."""
    with GraphFile(out) as f:
        assert len(f) == summary.structures == sum(f.shard_sizes())
        assert int(f.attrs["n_failed"]) == summary.failed == len(f.failures())
        assert int(f.attrs["n_skipped"]) == summary.skipped == len(f.skipped())
    assert summary.inputs == summary.structures + summary.failed + summary.skipped


# --------------------------------------------------------------------------- the happy path


@pytest.mark.parametrize("jobs", [1, 2])
def test_featurize_folder_every_structure_once(database, tmp_path, jobs):
    out = tmp_path / "graphs.h5"
    summary = featurize(database.root, out, options=SMALL_SHARDS, jobs=jobs)
    assert (summary.structures, summary.failed, summary.skipped) == (len(database.expected), 0, 1)
    assert_reconciles(summary, out)
    graphs = graphs_in(out)
    assert sorted(graphs) == sorted(database.expected)
    assert_graphs_are_build_graph(graphs, database)
    with GraphFile(out) as f:
        assert f.skipped() == [(str(database.skipped[0]), "not a structure file (unknown extension)")]
        assert f.graph_settings == {"radius": 8.0, "max_nbr": 12, "neighbour_algorithm": "knn-ties-v2", "tie_tolerance": 1e-4}
        assert len(f.shard_names) > 1, "shard_size=3 must give several shards"
        assert max(f.shard_sizes()) <= 3 + 4, "a shard holds about shard_size structures (one multi-frame file over)"
        formulas = {id_: formula for shard in f.iter_shards() for id_, formula in zip(shard.ids, shard.formula)}
    assert formulas["mp-1000"] == "NaCl" and formulas["SrTiO3"] == "SrTiO3" and formulas["run1/POSCAR"] == "Fe"
    assert not partial_dir(out).exists(), "parts are removed once the file is complete"
    assert not out.with_name(out.name + ".tmp").exists()


def test_jobs_do_not_change_the_file(database, tmp_path):
    one = featurize(database.root, tmp_path / "one.h5", options=SMALL_SHARDS, jobs=1)
    two = featurize(database.root, tmp_path / "two.h5", options=SMALL_SHARDS, jobs=2)
    assert one.structures == two.structures
    a, b = graphs_in(tmp_path / "one.h5"), graphs_in(tmp_path / "two.h5")
    assert a.keys() == b.keys()
    for id_ in a:
        assert_same_graph(a[id_], b[id_], id_)


@pytest.fixture(scope="module")
def folder_file(database, tmp_path_factory) -> Path:
    """The fixture database featurized once with default options."""
    out = tmp_path_factory.mktemp("folder") / "graphs.h5"
    featurize(database.root, out, jobs=1)
    return out


@pytest.mark.parametrize("archive", ["tar_gz", "zip"])
def test_archive_gives_the_same_graphs_as_the_folder(database, folder_file, tmp_path, archive):
    folder = graphs_in(folder_file)
    out = tmp_path / f"{archive}.h5"
    summary = featurize(getattr(database, archive), out, jobs=1)
    graphs = graphs_in(out)
    want = set(database.expected) if archive == "tar_gz" else set(database.zip_ids)
    assert set(graphs) == want
    assert summary.failed == 0 and summary.skipped == (1 if archive == "tar_gz" else 0)
    assert_reconciles(summary, out)
    for id_, graph in graphs.items():
        assert_same_graph(graph, folder[id_], id_)
    with h5py.File(out, "r") as f:
        sources = [s for g in f["shards"].values() for s in g["sources"].asstr()[()]]
    archive_path = str(getattr(database, archive))
    assert all(s.startswith(archive_path + "::") for s in sources), "members are named archive::member"


# --------------------------------------------------------------------------- bad inputs and policies


def add_bad_inputs(root: Path, p: dict) -> dict:
    """Write bad inputs beside the good ones; id -> (file, words its reason must contain)."""
    import ase.io
    from ase import Atoms
    from pymatgen.core import Lattice, Structure

    def put(rel: str, data: str | bytes) -> Path:
        path = root / "bad" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
        return path

    bad = {}
    bad["empty"] = (put("empty.cif", b""), ["empty"])
    bad["garbage"] = (put("garbage.cif", bytes(range(256)) * 16), ["binary"])
    bad["truncated"] = (put("truncated.cif", cif_text(p["ZnO"])[:-40]), ["invalid cif"])
    bad["cif-in-json"] = (put("cif-in-json.json", cif_text(p["NaCl"])), ["invalid json"])
    nan = poscar_text(p["Cu"]).splitlines()
    nan[8] = "nan 0.0 0.0 Cu"
    bad["nan"] = (put("nan.vasp", "\n".join(nan) + "\n"), ["non-finite"])
    flat = p["NaCl"].as_dict()
    m = np.array(flat["lattice"]["matrix"])
    m[2] = m[0] + m[1]
    flat["lattice"]["matrix"] = m.tolist()
    bad["flat"] = (put("flat.json", json.dumps(flat)), ["degenerate"])
    bad["dummy"] = (put("dummy.cif", cif_text(p["NaCl"]).replace("  Na  Na", "  X  X")), ["element"])
    lr = p["NaCl"].copy()
    lr.replace_species({"Na": "Lr"})
    bad["lawrencium"] = (put("lawrencium.cif", cif_text(lr)), ["Lr", "no features"])
    disordered = Structure(Lattice.cubic(3.75), [{"Au": 0.75, "Cu": 0.25}, "Cu", "Cu", "Cu"],
                           [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    bad["disordered"] = (put("disordered.cif", cif_text(disordered)), ["disordered", "majority"])
    lone = Structure(Lattice.cubic(30.0), ["Ar", "Ar"], [[0, 0, 0], [0.5, 0, 0]])
    bad["lone"] = (put("lone.cif", cif_text(lone)), ["isolated atom"])
    overlap = Structure(Lattice.cubic(5.0), ["Na", "Cl"], [[0, 0, 0], [0.02, 0, 0]], validate_proximity=False)
    bad["overlap"] = (put("overlap.json", json.dumps(overlap.as_dict())), ["overlapping atoms"])
    buf = io.StringIO()
    ase.io.write(buf, Atoms("OH2", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]]), format="extxyz")
    put("mixed.extxyz", buf.getvalue() + extxyz_text([p["Fe"]]))
    bad["mixed:0"] = (root / "bad" / "mixed.extxyz", ["lattice"])
    bad["nothing"] = (put("nothing.jsonl", b""), ["empty"])
    return bad


def test_failures_table_records_every_bad_input(database, prototypes, tmp_path):
    db = database.copy_to(tmp_path / "db")
    bad = add_bad_inputs(db.root, prototypes)
    (db.root / "bad" / "notes.md").write_text("# not a structure\n")
    out = tmp_path / "graphs.h5"
    summary = featurize(db.root, out, options=SMALL_SHARDS, jobs=1)
    assert_reconciles(summary, out)
    graphs = graphs_in(out)
    assert set(graphs) == set(db.expected) | {"mixed:1"}, "good frames of a file with a bad frame are kept"
    assert summary.skipped == 2
    with GraphFile(out) as f:
        table = f.failures()
    failures = {x.id: x for x in table}
    assert len(failures) == len(table), "one failure record per bad input"
    assert sorted(failures) == sorted(bad)
    for id_, (path, words) in bad.items():
        failure = failures[id_]
        assert failure.source == str(path)
        assert failure.reason and "\n" not in failure.reason
        for word in words:
            assert word.lower() in failure.reason.lower(), f"{id_}: {word!r} not in {failure.reason!r}"
    # inputs = structures + failed + skipped, counted from what was written to disk:
    n_written = len(db.expected) + 1 + len(bad) + 2
    assert summary.inputs == n_written


def test_disorder_majority_policy_featurizes_the_disordered_crystal(database, prototypes, tmp_path):
    db = database.copy_to(tmp_path / "db")
    add_bad_inputs(db.root, prototypes)
    out = tmp_path / "graphs.h5"
    summary = featurize(db.root, out, options=FeaturizeOptions(on_disorder="majority"), jobs=1)
    with GraphFile(out) as f:
        failed = {x.id for x in f.failures()}
        assert json.loads(f.attrs["policies"])["on_disorder"] == "majority"
    assert "disordered" not in failed and "disordered" in graphs_in(out)
    assert_reconciles(summary, out)


@pytest.mark.parametrize("rule", ["knn-ties", "cgcnn"])
def test_isolated_atom_pad_policy_keeps_the_structure(prototypes, tmp_path, rule):
    """Kept with no edges; under CGCNN's rule, with its 12 padding neighbours (index 0 at radius + 1)."""
    from pymatgen.core import Lattice, Structure

    (tmp_path / "in").mkdir()
    lone = Structure(Lattice.cubic(30.0), ["Ar", "Ar"], [[0, 0, 0], [0.5, 0, 0]])
    (tmp_path / "in" / "lone.cif").write_text(cif_text(lone))
    settings = GraphSettings(on_isolated_atoms="pad", rule=rule)
    summary = featurize(tmp_path / "in", tmp_path / "g.h5", options=FeaturizeOptions(graph=settings), jobs=1)
    assert (summary.structures, summary.failed) == (1, 0)
    graph = graphs_in(tmp_path / "g.h5")["lone"]
    assert graph.atomic_numbers.tolist() == [18, 18]
    if rule == "cgcnn":
        assert graph.n_edges.tolist() == [12, 12]
        assert (graph.nbr_idx == 0).all() and (graph.nbr_dist == np.float32(9.0)).all()
    else:
        assert graph.n_edges.tolist() == [0, 0] and graph.nbr_idx.size == graph.nbr_dist.size == 0


def test_max_atoms_policy(database, tmp_path):
    """The 128-atom supercell is over max_atoms=100: a failure naming the limit; the rest is featurized."""
    out = tmp_path / "graphs.h5"
    summary = featurize(database.root, out, options=FeaturizeOptions(max_atoms=100), jobs=1)
    with GraphFile(out) as f:
        (failure,) = f.failures()
        assert json.loads(f.attrs["policies"])["max_atoms"] == 100
    assert failure.id == "supercell" and "128 atoms" in failure.reason and "100" in failure.reason
    assert set(graphs_in(out)) == set(database.expected) - {"supercell"}
    assert_reconciles(summary, out)


def test_duplicate_ids_second_is_a_failure_never_an_overwrite(prototypes, tmp_path):
    """Same stem in two folders: the first (in listing order) is kept, the second is a failure."""
    root = tmp_path / "in"
    for folder, name in (("a", "NaCl"), ("b", "Cu")):
        (root / folder).mkdir(parents=True)
        (root / folder / "mp-1.cif").write_text(cif_text(prototypes[name]))
    (root / "c").mkdir()
    (root / "c" / "mp-1.json").write_text(json.dumps(prototypes["ZnO"].as_dict()))
    out = tmp_path / "graphs.h5"
    summary = featurize(root, out, jobs=1)
    assert (summary.structures, summary.failed) == (1, 2)
    numbers = graphs_in(out)["mp-1"].atomic_numbers
    assert sorted(set(numbers.tolist())) == [11, 17], "the first mp-1 (NaCl in a/) is the one kept"
    with GraphFile(out) as f:
        failures = f.failures()
    assert [(x.id, Path(x.source).parent.name) for x in failures] == [("mp-1", "b"), ("mp-1", "c")]
    for x in failures:
        assert x.reason.startswith("duplicate id") and str(root / "a" / "mp-1.cif") in x.reason
    assert_reconciles(summary, out)


def test_duplicate_ids_resolve_in_listing_order_with_parallel_workers(prototypes, tmp_path, monkeypatch):
    """With 2 workers and one file per task, a slow first file must still win over a quick second one."""
    import srscreen.data.featurize as fz

    root = tmp_path / "in"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    big = prototypes["NaCl"] * (4, 4, 4)  # 512 atoms: slower than the 4-atom duplicate
    (root / "a" / "dup.json").write_text(json.dumps(big.as_dict()))
    (root / "b" / "dup.cif").write_text(cif_text(prototypes["Cu"]))
    monkeypatch.setattr(fz, "ITEMS_PER_TASK", 1)
    out = tmp_path / "graphs.h5"
    summary = featurize(root, out, options=FeaturizeOptions(max_atoms=1000), jobs=2)
    assert (summary.structures, summary.failed) == (1, 1)
    assert len(graphs_in(out)["dup"].atomic_numbers) == 512
    with GraphFile(out) as f:
        (failure,) = f.failures()
    assert failure.source == str(root / "b" / "dup.cif")


# --------------------------------------------------------------------------- existing output, settings


def interrupt_after_first_part(source, out, options, **kw):
    """Start a run and stop it (an exception from the progress callback) once a part is on disk."""

    class Stop(Exception):
        pass

    def stop(structures, failed):
        if list(partial_dir(out).glob("part-*.h5")):
            raise Stop

    with pytest.raises(Stop):
        featurize(source, out, options=options, jobs=1, on_progress=stop, **kw)
    assert not out.exists()
    assert list(partial_dir(out).glob("part-*.h5"))


def test_interrupted_run_resumes_in_process(database, tmp_path):
    out = tmp_path / "graphs.h5"
    interrupt_after_first_part(database.root, out, SMALL_SHARDS)
    summary = featurize(database.root, out, options=SMALL_SHARDS, jobs=1)
    assert summary.resumed > 0
    assert sorted(graphs_in(out)) == sorted(database.expected)
    assert_reconciles(summary, out)


def test_resume_with_other_settings_is_refused(database, tmp_path):
    out = tmp_path / "graphs.h5"
    interrupt_after_first_part(database.root, out, SMALL_SHARDS)
    other = FeaturizeOptions(graph=GraphSettings(radius=6.0), shard_size=3)
    with pytest.raises(ShardFileError) as err:
        featurize(database.root, out, options=other, jobs=1)
    message = str(err.value)
    assert "radius" in message and "8.0" in message and "6.0" in message and "overwrite" in message
    assert not out.exists() and partial_dir(out).exists(), "the refused run leaves the unfinished one alone"
    with pytest.raises(ShardFileError):
        featurize(database.root, out, options=FeaturizeOptions(max_atoms=10, shard_size=3), jobs=1)
    # overwrite=True starts over with the new settings.
    summary = featurize(database.root, out, options=other, jobs=1, overwrite=True)
    assert summary.resumed == 0
    with GraphFile(out) as f:
        assert f.graph_settings["radius"] == 6.0
    assert_reconciles(summary, out)


def test_like_a_model_takes_its_graph_rule_and_table_and_keeps_the_policies(database, tmp_path):
    """`like` (a ModelFile, or anything with its fields) replaces the graph settings that change the graph
    and the element table; the policies of `options` stay; `atom_features` beside it is refused."""
    from types import SimpleNamespace

    from srscreen.errors import OptionError
    from srscreen.graph.elements import BUILTIN_TABLE_NAME, cgcnn_feature_table

    model = SimpleNamespace(graph_settings={"radius": 5.0, "max_nbr": 6, "neighbour_algorithm": "knn-pbc-v1"},
                            state_dict={"feature_table": cgcnn_feature_table().copy()}, training={}, source="m.pt")
    options = FeaturizeOptions(graph=GraphSettings(radius=9.0, min_distance=0.4), max_atoms=50)
    featurize(database.root, tmp_path / "like.h5", options=options, like=model, jobs=1)
    with GraphFile(tmp_path / "like.h5") as f:
        assert f.graph_settings == {"radius": 5.0, "max_nbr": 6, "neighbour_algorithm": "knn-pbc-v1"}
        assert f.attrs["feature_table_name"] == BUILTIN_TABLE_NAME
        assert json.loads(f.attrs["policies"])["min_distance"] == 0.4
        assert json.loads(f.attrs["policies"])["max_atoms"] == 50
    with pytest.raises(OptionError, match="`like` or `atom_features`"):
        featurize(database.root, tmp_path / "both.h5", like=model, atom_features=tmp_path / "atom_init.json", jobs=1)


def test_complete_output_is_not_rewritten_without_overwrite(database, tmp_path):
    out = tmp_path / "graphs.h5"
    first = featurize(database.root, out, jobs=1)
    before, mtime = out.read_bytes(), out.stat().st_mtime_ns
    # The same settings: the finished file is the answer, reported as it stands (everything "done before").
    again = featurize(database.root, out, jobs=1)
    assert again == FeaturizeSummary(structures=first.structures, failed=first.failed, skipped=first.skipped,
                                     resumed=first.structures + first.failed, out=str(out))
    # Other settings: refused, naming the setting and the way out.
    with pytest.raises(FileExistsError, match=r"other max_nbr; use `overwrite=True`"):
        featurize(database.root, out, options=FeaturizeOptions(graph=GraphSettings(max_nbr=8)), jobs=1)
    assert out.read_bytes() == before and out.stat().st_mtime_ns == mtime, "a complete file is never touched"
    rebuilt = featurize(database.root, out, options=FeaturizeOptions(graph=GraphSettings(max_nbr=8)), jobs=1, overwrite=True)
    assert rebuilt.resumed == 0 and rebuilt.structures == first.structures
    with GraphFile(out) as f:
        assert f.graph_settings["max_nbr"] == 8
    assert_graphs_are_build_graph(graphs_in(out), database, GraphSettings(max_nbr=8))


# --------------------------------------------------------------------------- killed for real

KILL_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from srscreen.data.featurize import FeaturizeOptions, featurize
    source, out = sys.argv[1], sys.argv[2]
    # A slow consumer, so that the parent can kill the run part-way through.
    featurize(source, out, options=FeaturizeOptions(shard_size=10), jobs=1,
              on_progress=lambda s, f: time.sleep(0.05))
    """
)


def write_strained_cifs(folder: Path, prototypes: dict, n: int) -> list[str]:
    """n perturbed 2x1x1 rock-salt supercells: one CifWriter template, numbers substituted per file."""
    folder.mkdir(parents=True)
    base = prototypes["NaCl"] * (2, 1, 1)
    template = cif_text(base)
    head, sep, sites = template.partition("_atom_site_occupancy\n")
    rows = [line.split() for line in sites.strip().splitlines()]
    rng = np.random.default_rng(7)
    ids = []
    for i in range(n):
        strain = 1.0 + rng.uniform(-0.03, 0.03, 3)
        text = head
        for axis, value in zip("abc", base.lattice.abc):
            old = f"_cell_length_{axis}   {value:.8f}"
            assert old in text
            text = text.replace(old, f"_cell_length_{axis}   {value * strain['abc'.index(axis)]:.8f}")
        body = []
        for row in rows:
            xyz = np.array(row[3:6], dtype=float) + rng.normal(0, 0.002, 3)
            body.append("  ".join([*row[:3], *(f"{x:.8f}" for x in xyz), row[6]]))
        ids.append(f"strained-{i:04d}")
        (folder / f"{ids[-1]}.cif").write_text(text + sep + "\n".join(body) + "\n")
    return ids


@pytest.mark.slow
def test_killed_run_resumes_with_every_id_once(prototypes, tmp_path):
    source = tmp_path / "many"
    ids = write_strained_cifs(source, prototypes, 400)
    out = tmp_path / "graphs.h5"
    parts = partial_dir(out)
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(source), str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300  # generous: CI machines can be slow and shared
        while not list(parts.glob("part-*.h5")):
            assert proc.poll() is None, f"run ended before it could be killed: {proc.communicate()[1].decode()[-2000:]}"
            assert time.monotonic() < deadline, "no part file appeared within 300 s"
            assert not out.exists()
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists(), "a killed run never leaves OUT behind"
    assert not out.with_name(out.name + ".tmp").exists()
    done_before = len(list(parts.glob("part-*.h5")))
    assert done_before >= 1

    summary = featurize(source, out, options=FeaturizeOptions(shard_size=10), jobs=1)
    assert summary.resumed >= 10, "the finished parts were kept, not redone"
    assert (summary.structures, summary.failed, summary.skipped) == (400, 0, 0)
    assert_reconciles(summary, out)
    with GraphFile(out) as f:
        all_ids = list(f.ids())
    assert Counter(all_ids) == Counter(ids), "every id exactly once"
    graphs = graphs_in(out)
    for id_ in (ids[0], ids[199], ids[-1]):
        (p,) = parse_bytes(f"{id_}.cif", (source / f"{id_}.cif").read_bytes())
        assert_same_graph(graphs[id_], build_graph(p.lattice, p.frac_coords, p.numbers, GraphSettings()), id_)
    assert not parts.exists()


def test_graph_file_is_hdf5_with_the_documented_layout(folder_file):
    with h5py.File(folder_file, "r") as f:
        assert f.attrs["format"] == "srscreen-graphs"
        assert int(f.attrs["schema_version"]) == 2
        assert CRC_ATTR in f.attrs
        shard = f["shards"]["000000"]
        for name in ("ids", "sources", "formula", "n_atoms", "atomic_numbers", "n_edges", "nbr_idx", "nbr_dist"):
            assert name in shard and CRC_ATTR in shard[name].attrs, name
        assert shard["n_edges"].dtype == shard["nbr_idx"].dtype == np.int32 and shard["nbr_dist"].dtype == np.float32
        assert shard["nbr_idx"].ndim == shard["nbr_dist"].ndim == 1, "one row per edge"
        assert shard["n_edges"][()].sum() == len(shard["nbr_idx"]) == len(shard["nbr_dist"])
        for name in ("id", "source", "reason"):
            assert name in f["failures"] and CRC_ATTR in f["failures"][name].attrs


# --------------------------------------------------------------------------- more sources


def test_missing_source_leaves_nothing_behind(tmp_path):
    """A mistyped source fails at once and creates no OUT.partial (which would pin that source)."""
    out = tmp_path / "graphs.h5"
    with pytest.raises(FileNotFoundError):
        featurize(tmp_path / "no-such-folder", out, jobs=1)
    assert not out.exists() and not partial_dir(out).exists()


def test_an_empty_source_folder_is_refused_and_writes_nothing(tmp_path):
    """No file at all (OUT inside the folder aside): one line and exit 2, not an empty graph file."""
    from helpers.screening_data import assert_usage_error, cli

    (tmp_path / "db" / "sub").mkdir(parents=True)
    out = tmp_path / "graphs.h5"
    assert_usage_error(cli("featurize", tmp_path / "db", out, "-j", "1", "-q"), "db: no file in this folder")
    assert not out.exists() and not partial_dir(out).exists()


def test_nothing_featurized_is_an_error_with_the_failures_kept(prototypes, tmp_path):
    """A single file that is no structure, or a folder of only folders named like structure files:
    each input is a failure with its reason, and the command says nothing was featurized and exits 1."""
    from helpers.screening_data import cli

    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    db = tmp_path / "db"
    (db / "x.cif").mkdir(parents=True)
    for source, reason in [(notes, "not a structure file"), (db, "a folder named like a structure file")]:
        out = tmp_path / f"{source.name}.h5"
        result = cli("featurize", source, out, "-j", "1", "-q")
        assert result.exit_code == 1, (result.stdout, result.stderr, result.exception)
        assert result.stderr.strip() == (f"error: no structure featurized from {source} (1 failed, 0 not structure "
                                         f"files); the reasons: srscreen info {out}")
        with GraphFile(out) as g:
            assert len(g) == 0 and [reason in f.reason for f in g.failures()] == [True]


def test_long_multi_structure_files_keep_global_frame_numbers(prototypes, tmp_path, monkeypatch):
    """Files cut into chunks of frames number every frame by its place in the whole file."""
    import srscreen.io.sources as sources

    monkeypatch.setattr(sources, "FRAMES_PER_ITEM", 4)
    root = tmp_path / "in"
    root.mkdir()
    frames = [prototypes[name] for name in ("NaCl", "Fe", "ZnO", "Cu", "SrTiO3")] * 2
    (root / "db.jsonl").write_text("".join(json.dumps(s.as_dict()) + "\n" for s in frames))
    (root / "traj.extxyz").write_text(extxyz_text(frames))
    out = tmp_path / "graphs.h5"
    summary = featurize(root, out, options=FeaturizeOptions(shard_size=5), jobs=1)
    graphs = graphs_in(out)
    assert sorted(graphs) == sorted([f"db:{i}" for i in range(10)] + [f"traj:{i}" for i in range(10)])
    for stem in ("db", "traj"):
        for i, s in enumerate(frames):
            assert len(graphs[f"{stem}:{i}"].atomic_numbers) == len(s)
    assert_reconciles(summary, out)


def test_corrupt_archive_is_a_failure(database, tmp_path):
    root = tmp_path / "in"
    root.mkdir()
    data = database.tar_gz.read_bytes()
    (root / "cut.tar.gz").write_bytes(data[: len(data) // 2])
    (root / "junk.zip").write_bytes(b"PK\x03\x04 this is not a zip archive")
    out = tmp_path / "graphs.h5"
    summary = featurize(root, out, jobs=1)
    with GraphFile(out) as f:
        failures = f.failures()
    reasons = {Path(x.source).name: x.reason for x in failures if "archive" in x.reason}
    assert set(reasons) == {"cut.tar.gz", "junk.zip"}, failures
    assert all("\n" not in r for r in reasons.values())
    assert_reconciles(summary, out)


# --------------------------------------------------------------------------- duplicate ids at scale (seen_ids.py)


@pytest.mark.parametrize("collide", [False, True], ids=["hashed", "every-hash-equal"])
def test_seen_ids_gives_the_first_source_and_never_a_false_duplicate(monkeypatch, collide):
    """A repeated id gives its first source whether the first is in the shard being filled, in a recent
    part or in a merged one; with every id hashing alike (forced collisions) a new id is still new."""
    from srscreen.data import id_index as seen_ids

    monkeypatch.setattr(seen_ids, "MERGE_AT", 8)  # so that both sorted arrays are in use below
    if collide:
        monkeypatch.setattr(seen_ids, "id_hash", lambda id_: 0xDEADBEEF12345678)
    files: dict[int, tuple[list[str], list[str]]] = {}
    seen = seen_ids.SeenIds(lambda part: files[part])
    for part in range(7):
        ids = [f"id-{part}-{i}" for i in range(5)]
        assert seen.add_all(ids, [f"src/{x}" for x in ids]) == [None] * 5
        assert seen.add(ids[0], "again") == f"src/{ids[0]}", "a repeat within the shard being filled"
        files[part] = (ids, [f"src/{x}" for x in ids])
        seen.written(part)
    assert len(seen.keys) == 30 and len(seen.recent) == 5
    for part in range(7):
        assert seen.add(f"id-{part}-3", "later") == f"src/id-{part}-3"
    assert seen.add_all(["new-1", "new-2", "new-1"], ["n1", "n2", "n1 again"]) == [None, None, "n1"]


@pytest.mark.parametrize("collide", [False, True], ids=["hashed", "every-hash-equal"])
def test_duplicate_ids_across_a_resume_are_still_caught(prototypes, tmp_path, monkeypatch, collide):
    """The first strained-0001 is written by a run that is interrupted; the resumed run meets the second."""
    from srscreen.data import id_index as seen_ids
    from srscreen.data.shard_writer import read_part_ids

    if collide:  # every id hashes alike: only the exact comparison with the part files tells them apart
        monkeypatch.setattr(seen_ids, "id_hash", lambda id_: 7)
    root = tmp_path / "in"
    ids = write_strained_cifs(root / "a", prototypes, 8)
    (root / "b").mkdir()
    (root / "b" / "strained-0001.cif").write_text(cif_text(prototypes["Cu"]))
    out = tmp_path / "graphs.h5"
    interrupt_after_first_part(root, out, SMALL_SHARDS)
    parts = partial_dir(out)
    written = {i for p in parts.glob("part-*.h5") for i in read_part_ids(parts, int(p.stem.split("-")[1]))[0]}
    assert "strained-0001" in written and len(written) < 8, "the first one is in a part of the interrupted run"

    summary = featurize(root, out, options=SMALL_SHARDS, jobs=1)
    assert summary.resumed > 0 and (summary.structures, summary.failed) == (8, 1)
    with GraphFile(out) as f:
        (failure,) = f.failures()
        assert sorted(f.ids()) == ids
    assert failure.id == "strained-0001" and failure.source == str(root / "b" / "strained-0001.cif")
    assert failure.reason == f"duplicate id (already featurized from {root / 'a' / 'strained-0001.cif'})"
    assert_reconciles(summary, out)


def test_seen_ids_memory_per_id_is_small():
    """10^6 written ids take 8 bytes each (the dict this replaced took ~200): 10^7 structures ~80 MB."""
    import sys

    from srscreen.data.id_index import SeenIds

    per_part = 4000

    def part_file(part):
        ids = [f"mp-{part * per_part + i}" for i in range(per_part)]
        return ids, [f"/data/{x}.cif" for x in ids]

    seen = SeenIds(part_file)
    for part in range(250):
        seen.load_part(part, part_file(part)[0])
    assert seen.nbytes == 8 * 10**6, "one uint64 per id"
    rest = {name: value for name, value in vars(seen).items() if name not in ("keys", "recent")}
    assert sum(map(sys.getsizeof, rest.values())) < 10_000, f"nothing else grows with the ids: {rest}"
    assert seen.add("mp-123456", "x") == "/data/mp-123456.cif" and seen.add("mp-1000000", "x") is None


# --------------------------------------------------------------------------- done keys at scale (shards.py)


@pytest.mark.parametrize("collide", [False, True], ids=["hashed", "every-hash-equal"])
def test_resume_skips_exactly_the_finished_inputs(database, tmp_path, monkeypatch, collide):
    """A resumed run's done keys hold exactly the inputs the parts finished; with every key hashing
    alike (forced collisions) an unfinished input is still pending, never silently counted as done."""
    from srscreen.data import id_index as seen_ids
    from srscreen.data.shard_writer import read_part_done_keys, read_parts_state
    from srscreen.io.sources import Item, iter_inputs

    if collide:
        monkeypatch.setattr(seen_ids, "id_hash", lambda string: 0xDEADBEEF12345678)
    out = tmp_path / "graphs.h5"
    interrupt_after_first_part(database.root, out, SMALL_SHARDS)
    parts = partial_dir(out)
    finished = {k for p in parts.glob("part-*.h5") for k in read_part_done_keys(parts, int(p.stem.split("-")[1]))[0]}
    keys = [x.key for x in iter_inputs(database.root) if isinstance(x, Item)]
    assert 0 < len(finished) < len(keys) and finished <= set(keys)

    state = read_parts_state(parts, SMALL_SHARDS.graph.as_attrs())
    assert [k in state.done_keys for k in keys] == [k in finished for k in keys]
    assert state.done_keys.contains_all(keys[::-1]) == [k in finished for k in keys[::-1]], "any order"
    summary = featurize(database.root, out, options=SMALL_SHARDS, jobs=1)
    assert summary.resumed > 0
    assert sorted(graphs_in(out)) == sorted(database.expected)
    assert_reconciles(summary, out)


def test_done_keys_memory_per_key_is_small(tmp_path):
    """10^6 finished inputs take 8 bytes each in a resumed run (the set of paths this replaced took
    ~150): 10^7 inputs ~80 MB, measured on what read_parts_state keeps, not only on the arrays."""
    import tracemalloc

    from srscreen.data.shard_writer import read_parts_state, write_part
    from srscreen.graph.csr import Graphs

    parts, per_part = tmp_path / "out.h5.partial", 100_000
    parts.mkdir()
    nothing = Graphs.empty()

    def keys(part: int) -> list[str]:
        return [f"/data/materials-project/cifs/{part:03d}/mp-{part * per_part + i}.cif" for i in range(per_part)]

    for part in range(10):
        write_part(parts, part, nothing, [], keys(part))
    tracemalloc.start()
    try:
        state = read_parts_state(parts, GraphSettings().as_attrs())
        retained = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert state.done_keys.nbytes == 8 * 10**6 < 20 * 10**6, "one uint64 per key"
    assert retained < 20 * 10**6, f"{retained / 10**6:.1f} bytes per done key"
    assert keys(7)[123] in state.done_keys and "/data/materials-project/cifs/007/mp-1.cif" not in state.done_keys


def test_inputs_holding_no_structure_are_failures_not_lost(tmp_path):
    db = tmp_path / "db"
    db.mkdir()
    (db / "empty-list.json").write_text("[]")
    (db / "comment-only.cif").write_text("# a CIF with no data block\n")
    summary = featurize(db, tmp_path / "out.h5", jobs=1)
    assert (summary.structures, summary.failed, summary.skipped) == (0, 2, 0)
    with GraphFile(tmp_path / "out.h5") as g:
        assert sorted((f.id, f.reason) for f in g.failures()) == [
            ("comment-only", "no structure in file"), ("empty-list", "no structure in file")]


def test_tasks_hold_a_bounded_number_of_structures():
    """Tasks are sized in structures: chunks of a big multi-structure file (256 frames each) go one to a
    task, not 256 to a task (which held ~400,000 structures in flight on a 10^6 JSON-lines database)."""
    from srscreen.data.featurize import _tasks
    from srscreen.io.sources import Item, Skipped

    items = [Item(key=f"k{i}", source="s", name="n", frames=f) for i, f in enumerate([256, 256, 100, 100, 100, 1])]
    items.insert(3, Skipped("README", "not a structure file"))
    tasks = list(_tasks(items, 256))
    assert [sum(getattr(i, "frames", 1) for i in t) for t in tasks] == [256, 256, 201, 101]
    assert [i for t in tasks for i in t] == items  # every input once, in order
    assert list(_tasks([Item(key="big", source="s", name="n", frames=1000)], 256)) == [[Item(key="big", source="s", name="n", frames=1000)]]
