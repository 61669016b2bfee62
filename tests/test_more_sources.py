"""ASE databases and Materials Project / Alexandria entry dumps as featurize sources.

The user's story: point ``featurize`` at an ASE ``.db`` (ids from a row key of their choice) or at a
dump of millions of ``ComputedStructureEntry`` dicts (``.json``, ``.json.gz``, ``.json.bz2``, a list
or Alexandria's ``{"entries": [...]}``); get every structure under its own id, the graphs that
``build_graph`` gives, bad rows and entries as failures with reasons, and memory that does not grow
with the dump.
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import sqlite3
import tarfile
import tracemalloc

import numpy as np
import pytest
from conftest import assert_same_graph, assert_same_structure, graphs_in
from helpers.screening_data import cli

import srscreen.io.sources as sources
from srscreen.data.featurize import FeaturizeOptions, featurize
from srscreen.io.items import parse_item
from srscreen.graph.settings import GraphSettings
from srscreen.graph.neighbours import build_graph
from srscreen.io.parsed import Parsed, ParseFailure
from srscreen.data.graph_file import GraphFile
from srscreen.io.sources import Item, iter_inputs

SETTINGS = GraphSettings(radius=6.0, max_nbr=8)
NAMES = ("NaCl", "Fe", "ZnO", "Cu", "SrTiO3", "triclinic")


def read_file(path) -> tuple[dict, dict]:
    """(id -> single-structure Graphs, id -> failure reason) of a graph file."""
    graphs = graphs_in(path)
    with GraphFile(path) as f:
        failures = {x.id: x.reason for x in f.failures()}
        assert int(f.attrs["n_failed"]) == len(failures)
    return graphs, failures


def assert_graph_of(graph, lattice, frac, numbers) -> None:
    assert_same_graph(graph, build_graph(np.asarray(lattice), np.asarray(frac), np.asarray(numbers), SETTINGS))


def run(source, out, **kw):
    options = FeaturizeOptions(graph=SETTINGS, shard_size=kw.pop("shard_size", 5), id_key=kw.pop("id_key", None))
    summary = featurize(source, out, options=options, jobs=1, **kw)
    assert summary.inputs == summary.structures + summary.failed + summary.skipped
    return summary


# --------------------------------------------------------------------------- ASE databases


@pytest.fixture
def ase_db(tmp_path, prototypes):
    """An ASE database: 12 crystals with a material_id key (one row deleted, so ids have a gap),
    a molecule without periodicity, and a crystal without the key."""
    import ase.db
    from ase import Atoms
    from pymatgen.io.ase import AseAtomsAdaptor

    path = tmp_path / "oqmd.db"
    db = ase.db.connect(str(path))
    crystals = {}
    for i in range(13):
        structure = prototypes[NAMES[i % len(NAMES)]].copy()
        structure.scale_lattice(structure.volume * (1.0 + 0.01 * i))
        row = db.write(AseAtomsAdaptor.get_atoms(structure), material_id=f"oq-{i}")
        crystals[row] = (f"oq-{i}", structure)
    db.delete([4])
    del crystals[4]
    molecule = db.write(Atoms("CO2", positions=[[0, 0, 0], [0, 0, 1.16], [0, 0, -1.16]]), material_id="co2")
    keyless = db.write(AseAtomsAdaptor.get_atoms(prototypes["NaCl"]))
    return path, crystals, molecule, keyless


def test_ase_db_rows_featurize_under_stem_and_row_id(ase_db, tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "FRAMES_PER_ITEM", 3)  # several row ranges, one across the gap
    path, crystals, molecule, keyless = ase_db
    out = tmp_path / "graphs.h5"
    summary = run(path, out)
    graphs, failures = read_file(out)
    assert sorted(graphs) == sorted([f"oqmd:{r}" for r in crystals] + [f"oqmd:{keyless}"])
    assert set(failures) == {f"oqmd:{molecule}"} and "periodic" in failures[f"oqmd:{molecule}"]
    assert (summary.structures, summary.failed, summary.skipped) == (len(crystals) + 1, 1, 0)
    for row, (_, structure) in crystals.items():
        assert_graph_of(graphs[f"oqmd:{row}"], structure.lattice.matrix, structure.frac_coords, structure.atomic_numbers)


def test_ase_db_ids_from_a_key(ase_db, tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "FRAMES_PER_ITEM", 4)
    path, crystals, molecule, keyless = ase_db
    out = tmp_path / "graphs.h5"
    result = cli("featurize", path, out, "--id-key", "material_id", "--radius", "6", "--max-nbr", "8", "-j", "1", "-q")
    assert result.exit_code == 0, result.output
    graphs, failures = read_file(out)
    assert sorted(graphs) == sorted(id_ for id_, _ in crystals.values())
    assert set(failures) == {"co2", f"oqmd:{keyless}"}
    assert "material_id" in failures[f"oqmd:{keyless}"]
    for id_, structure in crystals.values():
        assert_graph_of(graphs[id_], structure.lattice.matrix, structure.frac_coords, structure.atomic_numbers)
    with GraphFile(out) as f:
        assert json.loads(f.attrs["policies"])["id_key"] == "material_id"
    # The id key decides the ids: resuming or reusing the file with another one is refused.
    again = cli("featurize", path, out, "--radius", "6", "--max-nbr", "8", "-j", "1", "-q")
    assert again.exit_code == 2 and "policies" in again.stderr


def test_ase_db_work_items_are_stable_row_ranges(ase_db, monkeypatch):
    monkeypatch.setattr(sources, "FRAMES_PER_ITEM", 5)
    path, crystals, molecule, keyless = ase_db
    items = list(iter_inputs(path))
    assert items == list(iter_inputs(path)), "the same keys on every listing: a resumed run skips what is done"
    assert [(i.first_frame, i.last_frame) for i in items] == [(1, 6), (7, 11), (12, 15)]
    parsed = [r for item in items for r in parse_item(item, "fail")]
    assert len(parsed) == len(crystals) + 2
    assert all(isinstance(r, Parsed) for r in parsed if r.id != f"oqmd:{molecule}")


def test_unreadable_ase_databases_are_failures(ase_db, tmp_path):
    path, *_ = ase_db
    root = tmp_path / "in"
    root.mkdir()
    (root / "Thumbs.db").write_bytes(b"\x00\x01 not sqlite at all" * 10)
    other = sqlite3.connect(root / "other.db")
    other.execute("CREATE TABLE t (x)")
    other.commit()
    other.close()
    (root / "packed.db.gz").write_bytes(gzip.compress(path.read_bytes()))
    with tarfile.open(root / "dbs.tar", "w") as tar:
        tar.add(path, arcname="inside.db")
    import ase.db
    from ase.build import bulk

    emptied = ase.db.connect(str(root / "emptied.db"))
    emptied.delete([emptied.write(bulk("Cu"))])
    out = tmp_path / "graphs.h5"
    summary = run(root, out)
    _, failures = read_file(out)
    assert summary.structures == 0 and summary.failed == 5
    assert "not a readable ASE database" in failures["Thumbs"] and "not a readable ASE database" in failures["other"]
    assert "no rows" in failures["emptied"]
    assert "plain file" in failures["packed"] and "plain file" in failures["inside"]
    assert all("\n" not in r for r in failures.values())


# --------------------------------------------------------------------------- entry dumps


def entries(prototypes, n: int) -> tuple[list[dict], list[str]]:
    """`n` ComputedStructureEntry dicts and the id each must get: entry_id when set, else the data
    dict's material_id (MP) or mat_id (Alexandria), else dump:<index>."""
    from pymatgen.entries.computed_entries import ComputedStructureEntry

    dicts, ids = [], []
    for i in range(n):
        structure = prototypes[NAMES[i % len(NAMES)]].copy()
        structure.scale_lattice(structure.volume * (1.0 + 0.002 * i))
        kind = i % 4
        entry = ComputedStructureEntry(
            structure, -5.0 - i,
            entry_id=f"agm{i:09d}" if kind == 0 else None,
            data={"material_id": f"mp-{i}"} if kind == 1 else {"mat_id": f"alex-{i}"} if kind == 2 else {},
        )
        dicts.append(entry.as_dict())
        ids.append({0: f"agm{i:09d}", 1: f"mp-{i}", 2: f"alex-{i}", 3: f"dump:{i}"}[kind])
    return dicts, ids


def structure_of(entry: dict):
    from pymatgen.core import Structure

    return Structure.from_dict(entry["structure"])


@pytest.mark.parametrize("layout", ["list.json", "list.json.gz", "alexandria.json.bz2"])
def test_entry_dump_streams_in_chunks_with_entry_ids(prototypes, tmp_path, monkeypatch, layout):
    dicts, ids = entries(prototypes, 11)
    text = json.dumps({"@module": "x", "@class": "y", "entries": dicts} if layout.startswith("alexandria") else dicts)
    data = text.encode()
    data = gzip.compress(data) if layout.endswith(".gz") else bz2.compress(data) if layout.endswith(".bz2") else data
    root = tmp_path / "in"
    root.mkdir()
    (root / ("dump" + layout[layout.index("."):])).write_bytes(data)

    whole = tmp_path / "whole.h5"  # small file: parsed whole by a worker
    run(root, whole)
    monkeypatch.setattr(sources, "STREAM_JSON_BYTES", 0)  # every JSON file streams
    monkeypatch.setattr(sources, "FRAMES_PER_ITEM", 3)
    items = [i for i in iter_inputs(root) if isinstance(i, Item)]
    assert len(items) == 4 and all(i.data is not None and i.path is None for i in items)
    streamed = tmp_path / "streamed.h5"
    summary = run(root, streamed)
    assert (summary.structures, summary.failed) == (11, 0)
    a, _ = read_file(whole)
    b, _ = read_file(streamed)
    assert sorted(a) == sorted(b) == sorted(ids)
    for id_, entry in zip(ids, dicts):
        s = structure_of(entry)
        assert_graph_of(b[id_], s.lattice.matrix, s.frac_coords, s.atomic_numbers)
        assert_same_graph(a[id_], b[id_], id_)


def test_single_structure_json_over_the_threshold_is_one_item(prototypes, tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "STREAM_JSON_BYTES", 0)
    root = tmp_path / "in"
    root.mkdir()
    supercell = prototypes["supercell"]
    (root / "big.json.gz").write_bytes(gzip.compress(json.dumps(supercell.as_dict(), indent=2).encode()))
    out = tmp_path / "g.h5"
    run(root, out)
    graphs, failures = read_file(out)
    assert list(graphs) == ["big"] and not failures
    assert_graph_of(graphs["big"], supercell.lattice.matrix, supercell.frac_coords, supercell.atomic_numbers)


def test_bad_entries_fail_alone_and_a_truncated_dump_keeps_what_came_before(prototypes, tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "STREAM_JSON_BYTES", 0)
    monkeypatch.setattr(sources, "FRAMES_PER_ITEM", 4)
    dicts, ids = entries(prototypes, 10)
    dicts[2]["structure"]["lattice"]["matrix"][0][0] = float("nan")  # monty writes NaN as a bare NaN
    dicts[5]["structure"] = "not a structure"
    text = json.dumps(dicts)  # allow_nan: `NaN` in the text, as monty's dumps have it
    assert "NaN" in text
    root = tmp_path / "in"
    root.mkdir()
    (root / "dump.json").write_text(text)
    cut = json.dumps([dict(d, entry_id=f"cut-{i}") for i, d in enumerate(entries(prototypes, 7)[0])])
    (root / "cut.json").write_text(cut[: cut.index('"cut-6"') + 3])  # ends inside entry 6
    out = tmp_path / "g.h5"
    summary = run(root, out)
    graphs, failures = read_file(out)
    want = [id_ for i, id_ in enumerate(ids) if i not in (2, 5)] + [f"cut-{i}" for i in range(6)]
    assert sorted(graphs) == sorted(want)
    assert "non-finite" in failures[ids[2]] and "structure" in failures[ids[5]]
    assert "malformed JSON" in failures["cut"] and "after entry 5" in failures["cut"], failures
    assert (summary.structures, summary.failed) == (len(want), 3)


def write_dump(path, dicts: list[dict], n: int) -> int:
    """A gzipped dump of `n` entries cycling through `dicts`; returns its uncompressed size."""
    size = 0
    with gzip.open(path, "wt", compresslevel=1) as f:
        for i in range(n):
            text = ("[" if i == 0 else ",") + json.dumps(dict(dicts[i % len(dicts)], entry_id=f"e{i}"))
            size += f.write(text)
        size += f.write("]")
    return size


def listing_peak(path) -> tuple[int, int]:
    """(work items, peak bytes allocated by Python) while listing `path` and dropping each item."""
    tracemalloc.start()
    try:
        count = sum(1 for item in iter_inputs(path) if isinstance(item, Item))
        return count, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_entry_dump_streams_with_bounded_memory(prototypes, tmp_path, monkeypatch):
    """Listing a dump holds a read block and one chunk of entries: the peak does not grow with the
    dump (the parent's share of memory; workers hold one chunk each)."""
    monkeypatch.setattr(sources, "STREAM_JSON_BYTES", 0)
    dicts, _ = entries(prototypes, 8)
    small, large = tmp_path / "small.json.gz", tmp_path / "large.json.gz"
    small_size, large_size = write_dump(small, dicts, 1500), write_dump(large, dicts, 6000)
    assert large_size > 8e6
    (n_small, peak_small), (n_large, peak_large) = listing_peak(small), listing_peak(large)
    assert (n_small, n_large) == (-(-1500 // sources.FRAMES_PER_ITEM), -(-6000 // sources.FRAMES_PER_ITEM))
    assert peak_large < 1.25 * peak_small + 1e6, (peak_small, peak_large)
    assert peak_large < 12e6, f"peak {peak_large / 1e6:.1f} MB for a {large_size / 1e6:.1f} MB dump"


def test_entry_chunks_of_an_archive_member(prototypes, tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "STREAM_JSON_BYTES", 0)
    monkeypatch.setattr(sources, "FRAMES_PER_ITEM", 2)
    dicts, ids = entries(prototypes, 5)
    data = json.dumps(dicts).encode()
    archive = tmp_path / "dumps.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("dumps/part.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    items = [i for i in iter_inputs(archive) if isinstance(i, Item)]
    assert [i.first_frame for i in items] == [0, 2, 4]
    results = [r for item in items for r in parse_item(item, "fail")]
    assert [r.id for r in results] == [id_.replace("dump:", "part:") for id_ in ids]
    for r, entry in zip(results, dicts):
        s = structure_of(entry)
        assert not isinstance(r, ParseFailure)
        assert_same_structure(r.lattice, r.frac_coords, r.numbers, s)
