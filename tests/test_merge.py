"""Screening one graph file on several GPUs or nodes: predict shard ranges apart, then merge.

The user's story: ``srscreen predict out.h5 --shards 0:1 --top K -o a.csv`` on one device,
``--shards 1: --top K -o b.csv`` on another, then ``srscreen merge a.csv b.csv --top K``: the same
table as ``srscreen predict out.h5 --top K`` on one device, made with memory bounded by K.
"""

from __future__ import annotations

import csv
import io
import json
import math
import tracemalloc

import numpy as np

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

from srscreen.errors import InputError
from srscreen.screening.merge import merge_rankings, write_merged
from srscreen.screening.ranking import Ranking, write_output
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


def test_ties_across_parts_rank_by_id(data, tmp_path):
    """c-dup repeats the first crystal, c00-000: the twins tie, and rank by id (c-dup first, though the
    file holds it last), whatever the order of the parts."""
    whole = list(csv.DictReader(io.StringIO(predict(data))))
    ids = [r["id"] for r in whole]
    assert ids.index("c-dup") + 1 == ids.index("c00-000")
    n = data["n_shards"]
    paths = parts(data, tmp_path, ["0:1", f"1:{n}"])
    assert merge(*paths) == merge(*reversed(paths)) == predict(data)
    k = ids.index("c-dup") + 1  # the cut falls between the twins
    assert merge(*reversed(paths), "--top", str(k)) == predict(data, "--top", str(k))


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_crafted_ties_merge_as_one_ranking(tmp_path, fmt):
    """Rows tied as printed but not in full precision (0.2650819 / 0.2650821), exactly tied, and NaN: split
    into parts every which way and merged, they rank as the whole ranking does (predict's `Ranking.top`)."""
    rng = np.random.default_rng(1)
    n = 60
    values = rng.choice([0.2650819, 0.2650821, 0.26508, -1.5, math.nan, 2.0], n)
    ids = [f"m-{i}" for i in rng.permutation(n)]
    whole = Ranking(ids, ["X"] * n, np.full(n, 2), {"e": values, "g": rng.random(n)})
    for seed in range(4):
        pieces = np.array_split(rng.permutation(n), 3)
        paths = []
        for i, rows in enumerate(pieces):
            path = tmp_path / f"{seed}-{i}.{fmt}"
            write_output(whole.take(rows).top("e", None, False).table(fmt), path)  # ranked, as predict writes parts
            paths.append(path)
        for top in (None, 1, 7, n):
            want = io.StringIO()
            write_merged(whole.top("e", top, False).table(fmt), want)
            got = io.StringIO()
            write_merged(merge_rankings(paths[::-1] if seed % 2 else paths, top=top), got)
            assert got.getvalue() == want.getvalue(), (seed, top)


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
    """200,000 rows in four parts, top 10: the merge holds ~10 rows and 8 bytes a row (a hash of its id,
    for the repeated-id check), never a part."""
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
    rows = 4 * 50_000
    assert peak < 1e6 + 8 * 1.25 * rows and peak < total / 2, f"peak {peak / 1e6:.2f} MB for {total / 1e6:.1f} MB of parts"


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_a_part_cut_anywhere_mid_row_is_refused_naming_file_and_line(data, tmp_path, suffix):
    """`head -c N part > cut`: at every N that falls inside a row (a cut value, missing columns, half a
    JSON line), merge refuses with the file and line; at a line end the part is whole and merges."""
    n = data["n_shards"]
    [path] = parts(data, tmp_path, [f"0:{n}"], "--top", "6", *(["--format", "jsonl"] if suffix == ".jsonl" else []),
                   suffix=suffix)
    text = path.read_bytes()
    cut = tmp_path / f"cut{suffix}"
    start = text.index(b"\n") + 1
    for size in range(start, len(text)):
        cut.write_bytes(text[:size])
        if text[size - 1 : size] == b"\n":
            merge_rankings([cut], top=100)
            continue
        line = text[:size].count(b"\n") + 1
        with pytest.raises(InputError, match=rf"^{cut}:{line}: "):
            merge_rankings([cut], top=100)
    cut.write_bytes(text[: text.rindex(b",")])  # the CLI: one line, exit 2
    rows = text.count(b"\n")  # the cut falls in the last line
    assert_usage_error(cli("merge", cut), f"{cut}:{rows}: ", "cut short")


def test_rows_that_are_not_what_predict_writes_are_refused(tmp_path):
    header = "rank,id,formula,n_atoms,e\n"
    for row, words in [("1,a,X,2\n", ["3:", "4 cells where the header has 5"]),
                       ("1,a,X,2,0.5,9\n", ["3:", "6 cells"]),
                       ("1,a,X,two,0.5\n", ["3:", "n_atoms is 'two', not a number"]),
                       ("1,a,X,2,-2.6x\n", ["3:", "e is '-2.6x', not a number"])]:
        path = tmp_path / "p.csv"
        path.write_text(header + "1,z,X,2,0.1\n" + row)
        assert_usage_error(cli("merge", path, "--top", "5"), *words)
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"rank": 1, "id": "a", "formula": "X", "n_atoms": 2, "e": 0.5}) + "\n"
                    + json.dumps({"rank": 2, "id": "b", "formula": "X", "n_atoms": 2}) + "\n")
    assert_usage_error(cli("merge", path), "p.jsonl:2: not a row of the part's columns")


def test_the_same_part_twice_or_an_id_in_two_parts_is_refused(data, tmp_path):
    """Never an id written twice: one file given twice (by two names, too), or overlapping shard ranges."""
    n = data["n_shards"]
    a, b = parts(data, tmp_path, ["0:2", f"1:{n}"])  # shard 1 in both
    assert_usage_error(cli("merge", a, a, "--top", "3"), "part0.csv: given twice")
    assert_usage_error(cli("merge", a, tmp_path / "." / a.name), "given twice")
    copy = tmp_path / "copy.csv"
    copy.write_bytes(a.read_bytes())
    for args in ([a, copy], [a, copy, "--top", "1"], [a, b], [a, b, "--top", "1"]):
        message = assert_usage_error(cli("merge", *args), "again (first at", "--shards")
        assert f"{a}:" in message
    assert not list(tmp_path.glob("*.tmp"))


def test_merge_where_is_predict_where(data, tmp_path):
    n = data["n_shards"]
    gaps = sorted(float(r["band_gap"]) for r in csv.DictReader(io.StringIO(predict(data))))
    cut = f"{gaps[len(gaps) // 2]:.6g}"  # a value as printed: --where compares values as printed
    paths = parts(data, tmp_path, ["0:1", f"1:{n}"])
    for args in (["--where", f"band_gap<{cut}"], ["--where", f"band_gap>={cut}", "--where", "n_atoms<4", "--top", "3"]):
        assert merge(*paths, *args) == predict(data, *args)
    assert_usage_error(cli("merge", *paths, "--where", "band_gap>nan"), "nothing compares with nan")
    assert_usage_error(cli("merge", *paths, "--where", "volume>1"), "'volume': no such column")
