"""Screening one graph file on several GPUs or nodes: predict shard ranges apart, then merge.

The user's story: ``srscreen predict out.h5 --shards 0:1 --top K -o a.csv`` on one device,
``--shards 1: --top K -o b.csv`` on another, then ``srscreen merge a.csv b.csv --top K``: the same
table as ``srscreen predict out.h5 --top K`` on one device, made with memory bounded by K.
"""

from __future__ import annotations

import csv
import io
import tracemalloc

import pytest
from helpers.screening_data import (
    assert_usage_error,
    cli,
    crystals,
    featurize_db,
    one_thread,  # noqa: F401 - fixture
    target_values,
    train_tiny_pair,
    write_json_db,
    write_labels,
)

from srscreen.screening.merge import merge_rankings, write_merged
from srscreen.data.graph_file import GraphFile

pytestmark = pytest.mark.usefixtures("one_thread")

SHARD_SIZE = 7


@pytest.fixture(scope="module")
def data(tmp_path_factory, prototypes):
    root = tmp_path_factory.mktemp("merge")
    items = crystals(prototypes)
    graphs = featurize_db(write_json_db(root / "db", items), root / "graphs.h5", shard_size=SHARD_SIZE)
    labels = write_labels(root / "labels.csv", target_values(items))
    models = [arg for path in train_tiny_pair(graphs, labels, root, seed=3).values() for arg in ("--model", path)]
    with GraphFile(graphs) as g:
        n_shards = len(g.shard_names)
    assert n_shards >= 5
    return {"root": root, "graphs": graphs, "models": models, "n_shards": n_shards}


def predict(data, *args) -> str:
    result = cli("predict", data["graphs"], *data["models"], "--threads", "1", "-q", *args)
    assert result.exit_code == 0, (result.stderr, result.exception)
    return result.stdout


def merge(*args) -> str:
    result = cli("merge", *args)
    assert result.exit_code == 0, (result.stderr, result.exception)
    return result.stdout


def parts(data, tmp_path, ranges, *args, suffix=".csv") -> list:
    paths = []
    for i, span in enumerate(ranges):
        path = tmp_path / f"part{i}{suffix}"
        predict(data, "--shards", span, "-o", path, *args)
        paths.append(path)
    return paths


@pytest.mark.parametrize("k", [1, 5, 12, 1000])
def test_two_shard_ranges_merged_equal_the_whole_file(data, tmp_path, k):
    n = data["n_shards"]
    paths = parts(data, tmp_path, ["0:1", f"1:{n}"], "--top", str(k))
    assert merge(*paths, "--top", str(k)) == predict(data, "--top", str(k))


def test_many_parts_other_column_descending_and_jsonl(data, tmp_path):
    n = data["n_shards"]
    ranges = ["0:2", "2:3", f"3:{n - 1}", f"{n - 1}:{n}"]
    order = ["--sort", "band_gap", "--desc"]
    paths = parts(data, tmp_path, ranges, "--top", "9", *order)
    assert merge(*paths, "--top", "9", *order) == predict(data, "--top", "9", *order)
    paths = parts(data, tmp_path, ranges, "--format", "jsonl", suffix=".jsonl")
    whole = predict(data, "--format", "jsonl")
    assert merge(*paths, "--top", "9") == "".join(whole.splitlines(keepends=True)[:9])
    # Without --top, parts ranked by the sort column merge k-way into the whole ranking.
    assert merge(*paths) == whole


def test_ties_across_parts_rank_in_file_order(data, tmp_path):
    """c-dup repeats the first crystal: the twins tie, and the one met first in the file ranks first."""
    whole = list(csv.DictReader(io.StringIO(predict(data))))
    ids = [r["id"] for r in whole]
    first = "c00-000"
    assert abs(ids.index(first) - ids.index("c-dup")) == 1
    n = data["n_shards"]
    paths = parts(data, tmp_path, ["0:1", f"1:{n}"])
    assert merge(*paths) == predict(data)
    k = min(ids.index(first), ids.index("c-dup")) + 1  # the cut falls between the twins
    assert merge(*paths, "--top", str(k)) == predict(data, "--top", str(k))


def test_merge_to_a_file_and_renumbered_ranks(data, tmp_path):
    n = data["n_shards"]
    paths = parts(data, tmp_path, [f"{n // 2}:{n}", f"0:{n // 2}"], "--top", "4")  # given out of order
    out = tmp_path / "merged.csv"
    assert merge(*paths, "--top", "4", "-o", out) == ""
    rows = list(csv.DictReader(out.open()))
    assert [r["rank"] for r in rows] == ["1", "2", "3", "4"]
    assert [r["id"] for r in rows] == [r["id"] for r in csv.DictReader(io.StringIO(predict(data, "--top", "4")))]


def test_parts_that_cannot_be_merged_are_one_line_errors(data, tmp_path):
    n = data["n_shards"]
    a, b = parts(data, tmp_path, ["0:1", f"1:{n}"])
    assert_usage_error(cli("merge", a, b, "--sort", "band_gap"), "not ranked by band_gap", "--top")
    assert_usage_error(cli("merge", a, b, "--sort", "volume"), "volume", "no such column")
    only_ef = tmp_path / "ef.csv"
    result = cli("predict", data["graphs"], "--model", data["models"][1], "-q", "--threads", "1", "-o", only_ef)
    assert result.exit_code == 0
    assert_usage_error(cli("merge", a, only_ef, "--top", "3"), "columns")
    not_ranking = tmp_path / "labels.csv"
    not_ranking.write_text("material_id,band_gap\nx,1\n")
    assert_usage_error(cli("merge", a, not_ranking, "--top", "3"), "not a ranking")
    assert_usage_error(cli("merge", a, tmp_path / "missing.csv"), "missing.csv")
    assert_usage_error(cli("merge", a, "--top", "0"), "--top")
    assert not list(tmp_path.glob("*.tmp"))


def test_memory_is_bounded_by_k_not_by_the_parts(tmp_path):
    """200,000 rows in four parts, top 10: the merge holds ~10 rows, never a part."""
    header = "rank,id,formula,n_atoms,formation_energy_per_atom,band_gap\n"
    paths = []
    for p in range(4):
        path = tmp_path / f"p{p}.csv"
        with path.open("w") as f:
            f.write(header)
            for r in range(50_000):
                f.write(f"{r + 1},x{p}-{r},NaCl,2,{((r * 7919 + p * 104729) % 100003) / 1000:.6g},1.0\n")
        paths.append(path)
    total = sum(p.stat().st_size for p in paths)
    tracemalloc.start()
    try:
        out = io.StringIO()
        n = write_merged(merge_rankings(paths, top=10), out)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n == 10
    values = [float(line.split(",")[4]) for line in out.getvalue().splitlines()[1:]]
    assert values == sorted(values) and values[0] == 0.0
    assert peak < 2e6 and peak < total / 4, f"peak {peak / 1e6:.2f} MB for {total / 1e6:.1f} MB of parts"
