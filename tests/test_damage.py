"""Graph files that detect their own damage: a damaged file stops with one line, never a different ranking.

Graph files of millions of structures are copied between nodes and file systems; a flipped block used
to read back as plausible numbers and rank silently wrong. These tests damage small graph files the
way that happens (bytes inverted at random places, or inside one dataset) and run what a user runs.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import build_prototypes
from helpers.screening_data import MAX_NBR, RADIUS, assert_usage_error, cli, crystals, featurize_db, target_values, train_tiny_pair, write_json_db, write_labels

from srscreen.data.featurize import FeaturizeOptions, featurize
from srscreen.graph.settings import GraphSettings
from srscreen.data.graph_file import DamagedShardError, GraphFile, partial_dir

SHARD_SIZE = 16


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A ~80-crystal database in shards of 16, its graph file and a tiny Ef/Eg model pair for it."""
    root = tmp_path_factory.mktemp("damage")
    items = crystals(build_prototypes(), copies=2)
    db = write_json_db(root / "db", items)
    graphs = featurize_db(db, root / "graphs.h5", shard_size=SHARD_SIZE)
    labels = write_labels(root / "labels.csv", target_values(items))
    models = train_tiny_pair(graphs, labels, root, seed=0)
    return {"root": root, "db": db, "graphs": graphs, "models": models}


def predict_args(graphs: Path, models: dict, *extra) -> list:
    return ["predict", graphs, "--model", models["ef"], "--model", models["eg"], "--threads", "1", "-q", *extra]


def invert(path: Path, offset: int, n: int) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        data = f.read(n)
        f.seek(offset)
        f.write(bytes(b ^ 0xFF for b in data))


def dataset_offset(path: Path, name: str) -> int:
    """Where a (contiguous) dataset's bytes start in the file."""
    with h5py.File(path, "r") as f:
        offset = f[name].id.get_offset()
    assert offset is not None, name
    return offset


def test_random_damage_gives_the_intact_ranking_or_one_line(setup, tmp_path):
    """64 bytes inverted at 40 seeded random places: each run ranks exactly as the intact file does
    (the damage hit bytes predict does not read), or exits 2 with one line. Never anything else."""
    intact = cli(*predict_args(setup["graphs"], setup["models"]))
    assert intact.exit_code == 0, intact.output
    size = setup["graphs"].stat().st_size
    rng = np.random.default_rng(2024)
    outcomes = {"same": 0, "error": 0}
    for trial in range(40):
        damaged = tmp_path / f"damaged-{trial}.h5"
        shutil.copyfile(setup["graphs"], damaged)
        invert(damaged, int(rng.integers(0, size - 64)), 64)
        result = cli(*predict_args(damaged, setup["models"]))
        if result.exit_code == 0:
            assert result.stdout == intact.stdout, f"trial {trial}: a different ranking from a damaged file"
            outcomes["same"] += 1
        else:
            assert_usage_error(result, str(damaged))
            outcomes["error"] += 1
        damaged.unlink()
    print(outcomes)
    assert outcomes["error"] >= 10, outcomes  # most of a small file is data: most damage must be caught


@pytest.mark.parametrize("dataset", ["nbr_dist", "nbr_idx", "ids", "atomic_numbers", "n_edges"])
def test_damage_inside_a_shard_names_the_shard(setup, tmp_path, dataset):
    damaged = tmp_path / "damaged.h5"
    shutil.copyfile(setup["graphs"], damaged)
    invert(damaged, dataset_offset(damaged, f"shards/000002/{dataset}") + 2, 1)
    message = assert_usage_error(cli(*predict_args(damaged, setup["models"])), str(damaged), "shard 000002", "damaged")
    assert dataset in message


def test_skip_damaged_ranks_every_intact_shard_and_lists_the_rest(setup, tmp_path):
    """--skip-damaged: the ranking of the intact shards (the intact file's rows minus the damaged
    shard's), the damaged shard's ids in the list, and a warning saying so."""
    damaged = tmp_path / "damaged.h5"
    shutil.copyfile(setup["graphs"], damaged)
    with GraphFile(damaged) as g:
        lost = g.read_shard(1).ids
    invert(damaged, dataset_offset(damaged, "shards/000001/nbr_dist") + 8, 4)
    listing = tmp_path / "lost.csv"
    result = cli(*predict_args(damaged, setup["models"], "--skip-damaged", "--damaged-list", listing))
    assert result.exit_code == 0, result.output
    assert "skipped 1 damaged shard" in result.stderr and str(listing) in result.stderr
    intact = cli(*predict_args(setup["graphs"], setup["models"]))
    kept = [line.split(",", 1)[1] for line in intact.stdout.splitlines()[1:] if line.split(",")[1] not in lost]
    assert [line.split(",", 1)[1] for line in result.stdout.splitlines()[1:]] == kept
    rows = listing.read_text().splitlines()
    assert rows[0] == "shard,id,reason" and sorted(r.split(",")[1] for r in rows[1:]) == sorted(lost)
    assert all(r.startswith("000001,") and "nbr_dist" in r for r in rows[1:])


def test_info_verify_reports_every_shard(setup, tmp_path):
    ok = cli("info", "--verify", setup["graphs"])
    assert ok.exit_code == 0, ok.output
    lines = ok.stdout.splitlines()
    assert len(lines) == len(GraphFile(setup["graphs"]).shard_names) + 2 and all(line.endswith("\tok") for line in lines)
    damaged = tmp_path / "damaged.h5"
    shutil.copyfile(setup["graphs"], damaged)
    invert(damaged, dataset_offset(damaged, "shards/000003/sources") + 1, 1)  # predict never reads sources
    bad = cli("info", "--verify", damaged)
    assert_usage_error(bad, "1 of", "000003")
    assert [line.split("\t")[0] for line in bad.stdout.splitlines() if "DAMAGED" in line] == ["000003"]


def test_damaged_root_attributes_are_refused(setup, tmp_path):
    damaged = tmp_path / "damaged.h5"
    shutil.copyfile(setup["graphs"], damaged)
    with h5py.File(damaged, "r+") as f:
        f.attrs["radius"] = 7.0  # as a flipped bit in the attribute would
    assert_usage_error(cli(*predict_args(damaged, setup["models"])), str(damaged), "root attributes")


def test_structural_checks_catch_what_a_checksum_cannot(setup, tmp_path):
    """A file whose data and checksum were rewritten together (a bug, not a bit flip): the O(edges)
    structural checks still refuse a neighbour outside its structure."""
    from srscreen.data.integrity import write_checked

    damaged = tmp_path / "damaged.h5"
    shutil.copyfile(setup["graphs"], damaged)
    with h5py.File(damaged, "r+") as f:
        g = f["shards/000000"]
        idx = g["nbr_idx"][()]
        idx[3] = 10_000
        del g["nbr_idx"]
        write_checked(g, "nbr_idx", idx)
    with GraphFile(damaged) as g, pytest.raises(DamagedShardError, match="neighbour index outside its structure"):
        g.read_shard(0)


def test_version_1_files_are_refused_with_what_to_do(setup, tmp_path):
    old = tmp_path / "old.h5"
    shutil.copyfile(setup["graphs"], old)
    with h5py.File(old, "r+") as f:
        f.attrs["schema_version"] = 1
    assert_usage_error(cli(*predict_args(old, setup["models"])), "schema version 1", "featurize again")


def test_resume_redoes_a_damaged_part(setup, tmp_path, monkeypatch):
    """A run stopped before consolidating leaves its parts; one is damaged on disk. The resumed run
    notices, featurizes that part's inputs again, and the file equals an undamaged run's."""
    import srscreen.data.shard_writer as writer_module

    out = tmp_path / "resumed.h5"
    options = FeaturizeOptions(shard_size=SHARD_SIZE, graph=GraphSettings(radius=RADIUS, max_nbr=MAX_NBR))

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(writer_module, "consolidate", stop)
    with pytest.raises(KeyboardInterrupt):
        featurize(setup["db"], out, options=options, jobs=1)
    monkeypatch.undo()
    parts = sorted(partial_dir(out).glob("part-*.h5"))
    assert len(parts) >= 3
    invert(parts[1], dataset_offset(parts[1], "graphs/nbr_dist") + 4, 2)
    summary = featurize(setup["db"], out, options=options, jobs=1)
    assert len(summary.redone) == 1 and parts[1].name in summary.redone[0]
    assert summary.structures == len(GraphFile(setup["graphs"]))
    with GraphFile(out) as resumed, GraphFile(setup["graphs"]) as clean:
        assert sorted(resumed.ids()) == sorted(clean.ids())
        assert all(reason is None for _, _, reason in resumed.verify())
