"""Predicting and ranking from the command line: the user's story.

Run `srscreen predict out.h5 --model ef.pt --model eg.pt` and get a ranked table of every crystal,
with the values the models give each crystal on its own; cut it with --top, --where and --shards
(the cuts agree with the full ranking); get CSV, TSV or JSON lines on stdout or in a file; pipe it
into `head`; be told in one line, never with a traceback, when the graph file does not fit the models.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.compile_probe import really_compiled
from helpers.screening_data import (
    MAX_NBR,
    RADIUS,
    SRSCREEN,
    assert_usage_error,
    cli,
    crystals,
    featurize_db,
    one_thread,  # noqa: F401 - fixture
    other_atom_features,
    subprocess_env,
    target_values,
    train_tiny_pair,
    write_json_db,
    write_labels,
)

import srscreen
import srscreen.screening.predict as predict_module
from srscreen.data.batch import collate
from srscreen.model.model_file import ModelFile
from srscreen.graph.settings import GraphSettings
from srscreen.graph.neighbours import build_graph
from srscreen.screening.predict import predict
from srscreen.screening.ranking import printed, shown
from srscreen.data.graph_file import GraphFile

pytestmark = pytest.mark.usefixtures("one_thread")

SHARD_SIZE = 7
HEADER = ["rank", "id", "formula", "n_atoms", "formation_energy_per_atom", "band_gap"]


@pytest.fixture(scope="module")
def data(tmp_path_factory, prototypes):
    root = tmp_path_factory.mktemp("predict")
    items = crystals(prototypes)
    folder = write_json_db(root / "db", items)
    graphs = featurize_db(folder, root / "graphs.h5", shard_size=SHARD_SIZE)
    labels = write_labels(root / "labels.csv", target_values(items))
    models = train_tiny_pair(graphs, labels, root, seed=1)
    return {"root": root, "items": items, "folder": folder, "graphs": graphs, "ef": models["ef"], "eg": models["eg"]}


def run(data, *args, models=("ef", "eg")):
    model_args = [a for m in models for a in ("--model", data[m])]
    result = cli("predict", data["graphs"], *model_args, "--threads", "1", "--quiet", *args)
    assert result.exit_code == 0, (result.stderr, result.exception)
    return result


def rows(text: str, delimiter: str = ",") -> list[dict]:
    return list(csv.DictReader(io.StringIO(text), delimiter=delimiter))


@pytest.fixture(scope="module")
def full(data) -> list[dict]:
    """The whole ranking, as JSON lines (full precision)."""
    return [json.loads(line) for line in run(data, "--format", "jsonl").stdout.splitlines()]


def test_header_and_every_structure_ranked(data, full):
    result = run(data)
    lines = result.stdout.splitlines()
    assert lines[0].split(",") == HEADER
    table = rows(result.stdout)
    assert len(table) == len(data["items"])
    assert sorted(r["id"] for r in table) == sorted(id_ for id_, _ in data["items"])
    assert [int(r["rank"]) for r in table] == list(range(1, len(table) + 1))
    ef = [float(r["formation_energy_per_atom"]) for r in table]
    assert ef == sorted(ef)  # default: the first model's target, lowest first
    structures = dict(data["items"])
    for r in table:
        s = structures[r["id"]]
        assert int(r["n_atoms"]) == len(s)
        assert r["formula"] == s.composition.reduced_formula
    # The CSV and the JSON lines are the same table.
    assert [r["id"] for r in table] == [r["id"] for r in full]
    for r, j in zip(table, full):
        for t in HEADER[4:]:
            assert float(r[t]) == pytest.approx(j[t], rel=1e-5, abs=1e-6)


def test_predictions_are_the_model_on_each_crystal_alone(data, full):
    settings = GraphSettings(radius=RADIUS, max_nbr=MAX_NBR)
    nets = {}
    for name in ("ef", "eg"):
        m = ModelFile.load(data[name])
        nets[m.target] = (m, m.build_model().eval())
    got = {r["id"]: r for r in full}
    with torch.inference_mode():
        for id_, s in data["items"]:
            numbers = np.array(s.atomic_numbers)
            g = build_graph(s.lattice.matrix, s.frac_coords, numbers, settings)
            batch = collate(np.array([len(s)]), g.atomic_numbers, g.n_edges, g.nbr_idx, g.nbr_dist)
            elemental = torch.tensor([len(set(s.atomic_numbers)) == 1])
            for target, (m, net) in nets.items():
                want = float(m.values(net(batch), elemental)[m.target][0])
                assert got[id_][target] == pytest.approx(want, abs=1e-5), (id_, target)


@pytest.mark.parametrize("target", predict_module.FORMATION_ENERGY_TARGETS)
def test_a_crystal_of_one_element_never_gets_a_negative_formation_energy(data, tmp_path, target):
    """A formation energy is measured from the element's own lowest-energy phase: for a crystal of one
    element it is >= 0, so a prediction below 0 is floored there (it would otherwise rank as surely stable);
    crystals of several elements keep their negative values. So under every name `--hull` takes as a
    formation energy (an imported CGCNN `e_form` model put Al at -0.07 eV/atom below the hull)."""
    m = ModelFile.load(data["ef"])
    low = replace(m, targets=[target], normalizers=[{"mean": -50.0, "std": m.normalizers[0]["std"]}])  # all < 0
    low.save(tmp_path / "low.pt")
    table = rows(cli("predict", data["graphs"], "--model", tmp_path / "low.pt", "--hull", "--threads", "1",
                     "--quiet").stdout)
    got = {r["id"]: float(r[target]) for r in table}
    elemental = {id_ for id_, s in data["items"] if len(set(s.atomic_numbers)) == 1}
    assert elemental and len(elemental) < len(got)
    assert all(got[i] == 0.0 for i in elemental)
    assert all(float(r["e_above_hull"]) >= 0.0 for r in table if r["id"] in elemental)
    assert all(v < -1.0 for i, v in got.items() if i not in elemental)
    structures = [s for _, s in data["items"]]  # the Python API applies the same floor
    api = srscreen.load_model(str(tmp_path / "low.pt")).predict_structures(structures)
    assert [v == 0.0 for v in api] == [len(set(s.atomic_numbers)) == 1 for s in structures]


@pytest.mark.parametrize("k", [1, 5, SHARD_SIZE + 3, 1000])
def test_top_k_is_the_head_of_the_full_ranking(data, full, k):
    top = [json.loads(x) for x in run(data, "--format", "jsonl", "--top", str(k)).stdout.splitlines()]
    assert top == full[:k]


def test_top_k_with_ties_is_the_head_of_the_full_ranking(data, full):
    """The same crystal under two ids predicts the same: a cut between them keeps the one the full ranking
    puts first (by id: c-dup before c00-000, though the file holds it last), whatever shard it came from."""
    ef = {r["id"]: r["formation_energy_per_atom"] for r in full}
    first = data["items"][0][0]
    assert ef[first] == ef["c-dup"]
    for order in ([], ["--desc"]):
        whole = [json.loads(x) for x in run(data, "--format", "jsonl", *order).stdout.splitlines()]
        ids = [r["id"] for r in whole]
        assert ids.index("c-dup") + 1 == ids.index(first), "tied, so by id"
        k = ids.index("c-dup") + 1  # the cut falls between the twins
        top = [json.loads(x) for x in run(data, "--format", "jsonl", "--top", str(k), *order).stdout.splitlines()]
        assert top == whole[:k]


def test_sort_by_band_gap_descending(data, full):
    table = rows(run(data, "--sort", "band_gap", "--desc").stdout)
    gaps = [float(r["band_gap"]) for r in table]
    assert gaps == sorted(gaps, reverse=True)
    want = sorted(full, key=lambda r: (-shown(r["band_gap"]), r["id"]))  # as printed, equal values by id
    assert [r["id"] for r in table] == [r["id"] for r in want]
    top = rows(run(data, "--sort", "band_gap", "--desc", "--top", "4").stdout)
    assert [r["id"] for r in top] == [r["id"] for r in table[:4]]


def test_where_filters_keep_the_order_of_the_full_ranking(data, full):
    gaps = sorted(r["band_gap"] for r in full)
    x = printed(gaps[len(gaps) // 2])  # half the crystals pass; --where compares values as printed
    table = rows(run(data, "--where", f"band_gap>={x}", "--where", "n_atoms<4").stdout)
    want = [r for r in full if shown(r["band_gap"]) >= float(x) and r["n_atoms"] < 4]
    assert 0 < len(want) < len(full)
    assert [r["id"] for r in table] == [r["id"] for r in want]
    assert [int(r["rank"]) for r in table] == list(range(1, len(want) + 1))
    top = rows(run(data, "--where", f"band_gap>={x}", "--where", "n_atoms<4", "--top", "2").stdout)
    assert [r["id"] for r in top] == [r["id"] for r in want[:2]]


def test_tsv_jsonl_and_out_file(data, full, tmp_path):
    csv_text = run(data).stdout
    tsv_text = run(data, "--format", "tsv").stdout
    assert tsv_text.splitlines()[0].split("\t") == HEADER
    assert rows(tsv_text, "\t") == rows(csv_text)
    assert all(list(r) == HEADER for r in full)
    assert [r["rank"] for r in full] == list(range(1, len(full) + 1))
    for fmt, text in (("csv", csv_text), ("tsv", tsv_text), ("jsonl", "".join(json.dumps(r) + "\n" for r in full))):
        out = tmp_path / f"ranking.{fmt}"
        result = run(data, "--format", fmt, "-o", out)
        assert result.stdout == ""
        assert out.read_text() == text


def shard_ids(graphs: Path) -> list[list[str]]:
    with GraphFile(graphs) as g:
        return [g.read_shard(i).ids for i in range(len(g.shard_names))]


def test_shard_ranges_cover_only_their_shards_and_add_up(data, full):
    shards = shard_ids(data["graphs"])
    assert len(shards) >= 4
    first = [json.loads(x) for x in run(data, "--format", "jsonl", "--shards", "0:2").stdout.splitlines()]
    rest = [json.loads(x) for x in run(data, "--format", "jsonl", "--shards", "2:").stdout.splitlines()]
    middle = [json.loads(x) for x in run(data, "--format", "jsonl", "--shards", "1:3").stdout.splitlines()]
    assert sorted(r["id"] for r in first) == sorted(shards[0] + shards[1])
    assert sorted(r["id"] for r in middle) == sorted(shards[1] + shards[2])
    assert sorted(r["id"] for r in rest) == sorted(i for s in shards[2:] for i in s)
    # The union of two ranges is the whole file, with the same values (ranks differ, being per range).
    def values(part):
        return {r["id"]: (r["formation_energy_per_atom"], r["band_gap"], r["n_atoms"]) for r in part}
    union = {**values(first), **values(rest)}
    assert len(union) == len(first) + len(rest) == len(full)
    assert union == values(full)


def test_top_keeps_at_most_k_plus_one_shard_in_memory(data, full, monkeypatch):
    largest = 0
    concat = predict_module.Ranking.concat

    def watching(parts, columns, notes=False):
        nonlocal largest
        merged = concat(parts, columns, notes)
        largest = max(largest, len(merged))
        return merged

    monkeypatch.setattr(predict_module.Ranking, "concat", staticmethod(watching))
    models = [ModelFile.load(data["ef"]), ModelFile.load(data["eg"])]
    ranking = predict(data["graphs"], models, top=3, device="cpu")
    assert ranking.ids == [r["id"] for r in full[:3]]
    assert 0 < largest <= 3 + SHARD_SIZE


# ---------------------------------------------------------------- graph files that do not fit


@pytest.fixture(scope="module")
def other_radius(data):
    return featurize_db(data["folder"], data["root"] / "r5.h5", radius=5.0)


@pytest.fixture(scope="module")
def other_table(data):
    table = other_atom_features(data["root"] / "atom_init.json")
    return featurize_db(data["folder"], data["root"] / "table.h5", atom_features=table)


def test_graphs_of_another_radius_are_refused_naming_both(data, other_radius):
    result = cli("predict", other_radius, "--model", data["ef"], "-q")
    message = assert_usage_error(result, "radius")
    assert "5.0" in message and str(RADIUS) in message, message
    assert "--radius" in message


def test_graphs_of_another_element_table_are_refused_naming_both(data, other_table):
    result = cli("predict", other_table, "--model", data["ef"], "-q")
    with GraphFile(other_table) as g:
        theirs = g.attrs["feature_table_id"]
    ours = ModelFile.load(data["ef"]).feature_table_id
    assert theirs != ours
    assert_usage_error(result, theirs, ours, "atom_init.json")


def test_missing_graph_file_is_one_line(data, tmp_path):
    result = cli("predict", tmp_path / "nothing.h5", "--model", data["ef"], "-q")
    assert_usage_error(result, "nothing.h5")


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "other-hdf5"])
def test_corrupt_graph_file_is_one_line(data, tmp_path, damage):
    bad = tmp_path / "bad.h5"
    whole = data["graphs"].read_bytes()
    if damage == "garbage":
        bad.write_bytes(b"this is not an HDF5 file\n" * 50)
    elif damage == "truncated":
        bad.write_bytes(whole[: len(whole) // 2])
    elif damage == "empty":
        bad.write_bytes(b"")
    else:
        import h5py

        with h5py.File(bad, "w") as f:
            f["x"] = np.arange(3)
    result = cli("predict", bad, "--model", data["ef"], "-q")
    assert_usage_error(result, "bad.h5")


# ---------------------------------------------------------------- a pipe closed early


@pytest.fixture(scope="module")
def many(tmp_path_factory, prototypes):
    """~400 crystals with long ids: a ranking of >100 kB, more than a pipe holds."""
    root = tmp_path_factory.mktemp("many")
    items = crystals(prototypes, copies=10, id_prefix="crystal-with-a-deliberately-long-identifier-" + "x" * 195 + "-")  # 250-character file names
    return featurize_db(write_json_db(root / "db", items), root / "graphs.h5")


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_predict_into_head_exits_quietly(data, many, fmt):
    if len(SRSCREEN) > 1:
        pytest.skip("the srscreen script is not installed")
    command = (f"'{SRSCREEN[0]}' predict '{many}' --model '{data['ef']}' --model '{data['eg']}' --threads 1 "
               f"--format {fmt} | head -1")
    full_size = len(cli("predict", many, "--model", data["ef"], "--model", data["eg"], "--threads", "1", "-q",
                        "--format", fmt).stdout)
    assert full_size > 100_000
    result = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True,
                            env=subprocess_env(), timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "BrokenPipeError" not in result.stderr, result.stderr
    assert "Exception ignored" not in result.stderr, result.stderr
    first = result.stdout.splitlines()
    assert len(first) == 1
    if fmt == "csv":
        assert first[0].split(",") == HEADER
    else:
        assert json.loads(first[0])["rank"] == 1


@pytest.mark.slow
def test_info_ids_into_head_exits_quietly(many):
    if len(SRSCREEN) > 1:
        pytest.skip("the srscreen script is not installed")
    result = subprocess.run(["bash", "-o", "pipefail", "-c", f"'{SRSCREEN[0]}' info '{many}' --ids | head -1"],
                            capture_output=True, text=True, env=subprocess_env(), timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    with GraphFile(many) as g:
        assert result.stdout == next(g.ids()) + "\n"


def test_compiled_models_predict_what_eager_models_predict(data):
    models = [ModelFile.load(data["ef"]), ModelFile.load(data["eg"])]
    eager = predict(data["graphs"], models, compile=False, batch_atoms=64)
    with really_compiled():
        compiled = predict(data["graphs"], models, compile=True, batch_atoms=64)
    assert compiled.ids == eager.ids
    for target in eager.values:
        np.testing.assert_allclose(compiled.values[target], eager.values[target], rtol=1e-4, atol=1e-5)


def test_graphs_of_another_neighbour_algorithm_are_refused(data, tmp_path):
    model = ModelFile.load(data["ef"])
    model.graph_settings = {**model.graph_settings, "neighbour_algorithm": "some-future-algorithm"}
    model.save(tmp_path / "future.pt")
    result = cli("predict", data["graphs"], "--model", tmp_path / "future.pt", "--quiet")
    assert_usage_error(result, "some-future-algorithm", GraphSettings().algorithm)


def test_a_model_from_before_the_knn_ties_rule_takes_cgcnn_graphs_only(data, tmp_path):
    """A model file that records no neighbour algorithm (as the first pretrained models) was trained on
    CGCNN's graphs: knn-ties graphs are refused with the flag that makes graphs it takes, and those work."""
    model = ModelFile.load(data["ef"])
    model.graph_settings = {"radius": RADIUS, "max_nbr": MAX_NBR}
    model.save(tmp_path / "old.pt")
    result = cli("predict", data["graphs"], "--model", tmp_path / "old.pt", "--quiet")
    assert_usage_error(result, "knn-pbc-v1", GraphSettings().algorithm, "--graph-rule cgcnn")
    cgcnn = featurize_db(data["folder"], tmp_path / "cgcnn.h5", rule="cgcnn")
    result = cli("predict", cgcnn, "--model", tmp_path / "old.pt", "--threads", "1", "--quiet")
    assert result.exit_code == 0, result.stderr
    assert len(result.stdout.splitlines()) == len(data["items"]) + 1


def test_shards_merged_in_pieces_predict_what_whole_shards_predict(data, monkeypatch):
    """On CPU the reader merges equivalent atoms piece by piece of a shard; the ranking is the same."""
    models = [ModelFile.load(data[m]) for m in ("ef", "eg")]
    whole = predict(data["graphs"], models, device="cpu")
    monkeypatch.setattr(predict_module, "MERGE_PIECE", 3)  # shards of 7 crystals: pieces of 3, 3 and 1
    seen: list[int] = []
    pieces = predict(data["graphs"], models, device="cpu", on_shard=seen.append)
    assert pieces.ids == whole.ids and sum(seen) == len(whole.ids) and max(seen) == 3
    for target in whole.values:
        np.testing.assert_allclose(pieces.values[target], whole.values[target], rtol=1e-5, atol=1e-6)
