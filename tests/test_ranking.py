"""The one sort key, top-k and writer that predict and merge share (srscreen/screening/ranking.py)."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest

from srscreen.screening.ranking import Ranking, Table, best, order, sort_key, write_output, write_table

VALUES = np.array([0.5, math.nan, -1.0, 0.5, math.inf, -math.inf, math.nan, 2.0, -1.0, 0.0, -0.0])
IDS = ["k", "c", "j", "a", "e", "f", "b", "g", "h", "i", "d"]


@pytest.mark.parametrize("descending", [False, True])
def test_vectorised_order_is_the_sort_key(descending):
    """predict orders arrays, merge orders streamed rows one at a time: both must give one ranking."""
    by_key = sorted(range(len(VALUES)), key=lambda i: sort_key(VALUES[i], IDS[i], descending))
    assert order(VALUES, IDS, descending).tolist() == by_key
    assert [IDS[i] for i in by_key[-2:]] == ["b", "c"], "NaN ranks last either way, by id"
    assert [IDS[i] for i in by_key if VALUES[i] == 0.5] == ["a", "k"], "equal values by id"
    assert [IDS[i] for i in by_key if VALUES[i] == 0] == ["d", "i"], "-0 and 0 are equal"


def test_best_in_chunks_is_the_head_of_the_full_ranking():
    rng = np.random.default_rng(0)
    values = rng.integers(0, 5, 1000).astype(float)  # many ties
    values[rng.integers(0, 1000, 50)] = math.nan
    ids = np.array([f"id{i}" for i in rng.permutation(1000)])
    kept = np.zeros(0, dtype=np.int64)
    for start in range(0, len(values), 64):
        candidates = np.concatenate([kept, np.arange(start, min(start + 64, len(values)))])
        kept = candidates[best(values[candidates], ids[candidates], 7, True)]
    assert kept.tolist() == order(values, ids, True)[:7].tolist()


def test_rows_shown_equal_are_tied_and_ranked_by_id():
    """0.2650819 and 0.2650821 both print as 0.265082: tied, so by id, whatever the digits beyond the sixth
    (merge, reading the printed values, can only rank them so)."""
    r = Ranking(["b", "a", "c"], ["X", "Y", "Z"], np.array([1, 1, 1]), {"e": np.array([0.2650819, 0.2650821, 0.26508])})
    assert r.top("e", None, False).ids == ["c", "a", "b"]
    assert r.top("e", 2, True).ids == ["a", "b"]


def test_sort_and_filter_on_n_atoms():
    r = Ranking(["a", "b", "c"], ["X", "Y", "Z"], np.array([8, 2, 5]), {"e": np.array([1.0, 2.0, 3.0])})
    assert r.top("n_atoms", None, False).ids == ["b", "c", "a"]
    from srscreen.screening.ranking import Condition

    assert r.where([Condition.parse("n_atoms<6")]).ids == ["b", "c"]


def test_writer_header_first_and_atomic_file(tmp_path):
    r = Ranking(["a"], ["NaCl"], np.array([2]), {"e": np.array([-1.234567891]), "e_std": np.array([math.nan])})
    stream = io.StringIO()
    assert write_table(r.table("csv"), stream) == 1
    assert stream.getvalue() == "rank,id,formula,n_atoms,e,e_std\n1,a,NaCl,2,-1.23457,nan\n"
    out = tmp_path / "ranked.jsonl"
    write_output(r.table("jsonl"), out)
    assert out.read_text() == '{"rank": 1, "id": "a", "formula": "NaCl", "n_atoms": 2, "e": -1.234567891, "e_std": null}\n'

    def failing():
        yield ["1", "a", "NaCl", "2"]
        raise ValueError("part damaged mid-stream")

    with pytest.raises(ValueError):
        write_output(Table(["rank", "id", "formula", "n_atoms"], "csv", failing()), out)
    assert out.read_text().startswith('{"rank": 1'), "a failed write leaves the old file whole"
    assert not list(tmp_path.glob("*.tmp"))


def test_where_compares_values_as_printed():
    """0.2650819 prints as 0.265082, so `<0.265082` drops it: what a user sees is what was filtered."""
    from srscreen.screening.ranking import Condition

    r = Ranking(["a", "b", "c"], ["X", "Y", "Z"], np.array([1, 1, 1]), {"e": np.array([0.2650819, 0.26508, 0.2650826])})
    assert [row[4] for row in r.table().rows] == ["0.265082", "0.26508", "0.265083"]
    assert r.where([Condition.parse("e<0.265082")]).ids == ["b"]
    assert r.where([Condition.parse("e==0.265082")]).ids == ["a"]
    assert r.where([Condition.parse("e>=0.265082"), Condition.parse("e<0.265083")]).ids == ["a"]


@pytest.mark.parametrize("text", ["band_gap>nan", "band_gap!=-nan"])
def test_a_filter_against_nan_is_refused(text):
    from srscreen.errors import OptionError
    from srscreen.screening.ranking import Condition

    with pytest.raises(OptionError, match="nan"):
        Condition.parse(text)
