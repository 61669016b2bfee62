"""fetch-mp: structures and labels from the Materials Project, through mp-api's MPRester.

The user's story: ``srscreen fetch-mp mp/ --chemsys Na-Cl`` with MP_API_KEY set; get
``mp/structures/*.json`` and ``mp/labels.csv`` that ``featurize`` and ``train``/``finetune`` take;
be told plainly when the key is wrong (and never see it printed); ride out rate limits and server
errors; keep what a broken record or an interrupted run leaves, and fetch only what is missing on
the next run. The API here is a local server on 127.0.0.1 (tests/helpers/mp_server.py): no internet.
"""

from __future__ import annotations

import csv
import json
import sys

import numpy as np
import pytest
from conftest import assert_same_graph, graphs_in
from helpers.mp_server import KEY, MPServer
from helpers.screening_data import assert_usage_error, cli

from srscreen.graph.settings import GraphSettings

from srscreen.graph.neighbours import build_graph
from srscreen.data.labels import match, read_labels
from srscreen.io.mp import MPFetchError, MPKeyError, MPQuery, fetch_mp
from srscreen.data.graph_file import GraphFile


SETTINGS = GraphSettings(radius=6.0, max_nbr=8)
BROKEN = "mp-5"


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    """Requests to the test server go straight to it, whatever proxy the machine has."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.delenv("MP_API_KEY", raising=False)


@pytest.fixture
def docs(prototypes) -> list[dict]:
    """12 summary documents in 5 chemical systems; mp-5's structure is malformed."""
    out = []
    plan = ["NaCl"] * 3 + ["Fe"] * 2 + ["ZnO"] * 2 + ["SrTiO3"] * 3 + ["triclinic"] * 2
    for i, name in enumerate(plan, start=1):
        s = prototypes[name].copy()
        s.scale_lattice(s.volume * (1.0 + 0.01 * i))
        out.append({
            "material_id": f"mp-{i}",
            "elements": sorted({el.symbol for el in s.composition}),
            "structure": s.as_dict(),
            "formation_energy_per_atom": round(-0.1 * i, 4),
            "band_gap": 0.0 if name in ("Fe",) else round(0.5 * i, 3),
            "energy_above_hull": 0.0 if i % 3 == 0 else round(0.01 * i, 3),
        })
    out[4]["structure"] = {"lattice": "garbage", "sites": []}
    return out


@pytest.fixture
def server(docs):
    pytest.importorskip("mp_api", reason='mp-api is the `mp` extra: pip install ".[test]" installs it')
    with MPServer(docs) as s:
        yield s


def labels_rows(out) -> list[dict]:
    with open(out / "labels.csv", newline="") as f:
        return list(csv.DictReader(f))


def failures(out) -> dict[str, str]:
    with open(out / "failures.csv", newline="") as f:
        return {row["id"]: row["reason"] for row in csv.DictReader(f)}


def fetch(server, out, query, **kw):
    kw.setdefault("backoff", 0.01)
    return fetch_mp(out, query, api_key=KEY, endpoint=server.endpoint, **kw)


def test_fetch_by_chemsys_gives_files_that_featurize_and_train_take(server, docs, tmp_path):
    out = tmp_path / "mp"
    result = cli("fetch-mp", out, "--chemsys", "Na-Cl", "--chemsys", "O-Sr-Ti", "--endpoint", server.endpoint,
                 env={"MP_API_KEY": KEY, "COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert KEY not in result.output
    want = [d for d in docs if d["material_id"] in {"mp-1", "mp-2", "mp-3", "mp-8", "mp-9", "mp-10"}]
    assert sorted(p.stem for p in (out / "structures").iterdir()) == sorted(d["material_id"] for d in want)
    rows = {r["material_id"]: r for r in labels_rows(out)}
    assert list(rows) == [d["material_id"] for d in want]
    for d in want:
        r = rows[d["material_id"]]
        assert float(r["formation_energy_per_atom"]) == d["formation_energy_per_atom"]
        assert float(r["band_gap"]) == d["band_gap"] and float(r["energy_above_hull"]) == d["energy_above_hull"]
    assert failures(out) == {}

    from srscreen.data.featurize import FeaturizeOptions, featurize

    graphs = tmp_path / "mp.h5"
    summary = featurize(out / "structures", graphs, options=FeaturizeOptions(graph=SETTINGS), jobs=1)
    assert (summary.structures, summary.failed, summary.skipped) == (6, 0, 0)
    from pymatgen.core import Structure

    with GraphFile(graphs) as f:
        ids = list(f.ids())
    for id_, graph in graphs_in(graphs).items():
        s = Structure.from_dict(next(d["structure"] for d in want if d["material_id"] == id_))
        assert_same_graph(graph, build_graph(s.lattice.matrix, s.frac_coords, np.array(s.atomic_numbers), SETTINGS), id_)
    matched = match(ids, read_labels(out / "labels.csv", "band_gap"))
    assert len(matched.positions) == 6 and matched.missing_in_graphs == matched.missing_in_labels == 0

    from srscreen.trainer.trainer import TrainConfig, train

    config = TrainConfig(target="formation_energy_per_atom", atom_fea_len=8, h_fea_len=8, epochs=1, batch_size=4,
                         val_fraction=0.2, test_fraction=0.2)
    result = train(graphs, out / "labels.csv", tmp_path / "ef.pt", config)
    assert (tmp_path / "ef.pt").exists() and np.isfinite(result.model_file.training["val_mae"])


def test_filters_and_ranges_reach_the_server(server, tmp_path):
    summary = fetch(server, tmp_path / "mp", MPQuery(elements=("O",), band_gap=(1.0, 4.0), stable=False))
    listing = server.requests[0]
    assert listing["elements"] == "O" and listing["is_stable"] == "False"
    assert (float(listing["band_gap_min"]), float(listing["band_gap_max"])) == (1.0, 4.0)
    assert listing["_fields"] == "material_id"
    # O-bearing, gap in [1, 4], not on the hull: mp-7 (ZnO, 3.5), mp-8 (SrTiO3, 4.0).
    assert sorted(r["material_id"] for r in labels_rows(tmp_path / "mp")) == ["mp-7", "mp-8"]
    assert (summary.matched, summary.fetched, summary.failed) == (2, 2, 0)


def test_ids_inline_and_from_a_file(server, tmp_path):
    (tmp_path / "ids.txt").write_text("material_id\nmp-11\n\nmp-12\n")
    out = tmp_path / "mp"
    result = cli("fetch-mp", out, "--ids", tmp_path / "ids.txt", "--ids", "mp-1,mp-99", "--endpoint", server.endpoint,
                 "--api-key", KEY, "-q")
    assert result.exit_code == 0, result.output
    assert sorted(r["material_id"] for r in labels_rows(out)) == ["mp-1", "mp-11", "mp-12"]
    assert failures(out) == {"mp-99": "not returned by the Materials Project"}
    assert all("material_ids" in r for r in server.requests), "ids given: no listing request"


def test_a_malformed_record_is_a_failure_and_the_rest_are_kept(server, tmp_path):
    out = tmp_path / "mp"
    summary = fetch(server, out, MPQuery(chemsys=("Fe",)))
    assert (summary.matched, summary.fetched, summary.failed) == (2, 1, 1)
    assert [r["material_id"] for r in labels_rows(out)] == ["mp-4"]
    reason = failures(out)[BROKEN]
    assert "malformed record" in reason and "\n" not in reason
    assert not (out / "structures" / f"{BROKEN}.json").exists()


def test_wrong_missing_or_malformed_key_is_one_line_and_never_printed(server, tmp_path):
    wrong = "w" * 32
    result = cli("fetch-mp", tmp_path / "a", "--chemsys", "Fe", "--endpoint", server.endpoint, env={"MP_API_KEY": wrong})
    message = assert_usage_error(result, "refused the API key", "401", "MP_API_KEY")
    assert wrong not in result.output and wrong not in message
    result = cli("fetch-mp", tmp_path / "b", "--chemsys", "Fe", "--endpoint", server.endpoint)
    assert_usage_error(result, "no Materials Project API key", "MP_API_KEY")
    short = "secret-but-short"
    result = cli("fetch-mp", tmp_path / "c", "--chemsys", "Fe", "--endpoint", server.endpoint, "--api-key", short)
    assert_usage_error(result, "32")
    assert short not in result.output
    with pytest.raises(MPKeyError) as raised:
        fetch_mp(tmp_path / "d", MPQuery(chemsys=("Fe",)), api_key=wrong, endpoint=server.endpoint)
    assert wrong not in str(raised.value)


def test_rate_limits_and_server_errors_are_retried(server, tmp_path):
    server.fail_next(429, 503, 502, 500)
    seen = []
    summary = fetch(server, tmp_path / "mp", MPQuery(chemsys=("Cl-Na",)), on_progress=lambda *a: seen.append(a))
    assert (summary.matched, summary.fetched, summary.failed) == (3, 3, 0)
    assert len(server.requests) == 2 + 4, "two requests, four faults answered by retries"
    assert seen[-1] == (3, 3, 0)


def test_an_interrupted_fetch_resumes_with_only_the_missing(server, docs, tmp_path):
    out = tmp_path / "mp"
    server.broken_ids = {"mp-9"}  # the server fails every request for the chunk holding mp-9
    query = MPQuery(elements=("O",))  # mp-6..mp-12 but the Fe ones: mp-6, mp-7, mp-8, mp-9, mp-10, mp-11, mp-12
    with pytest.raises(MPFetchError, match="rerun the same command to resume"):
        fetch(server, out, query, chunk_size=2, retries=1)
    first = [r["material_id"] for r in labels_rows(out)]
    assert first == ["mp-6", "mp-7"]
    with open(out / "labels.csv", "a") as f:
        f.write("mp-8,-0.8,4.0")  # a row cut short by a kill: not counted as done
    server.broken_ids = set()
    server.requests.clear()
    summary = fetch(server, out, query, chunk_size=2)
    assert (summary.matched, summary.already, summary.fetched) == (7, 2, 5)
    asked = [i for r in server.requests if "material_ids" in r for i in r["material_ids"].split(",")]
    assert sorted(asked) == ["mp-10", "mp-11", "mp-12", "mp-8", "mp-9"]
    rows = [r["material_id"] for r in labels_rows(out)]
    assert sorted(rows) == sorted(f"mp-{i}" for i in range(6, 13)) and len(rows) == len(set(rows))
    again = fetch(server, out, query)
    assert (again.already, again.fetched) == (7, 0)


def test_a_query_is_required(tmp_path):
    assert_usage_error(cli("fetch-mp", tmp_path / "mp", "--api-key", KEY), "give a query")
    assert_usage_error(cli("fetch-mp", tmp_path / "mp", "--band-gap", "1-3", "--api-key", KEY), "--band-gap", "MIN:MAX")


def test_ids_that_give_no_id_are_refused_before_any_request(monkeypatch, tmp_path):
    """`--ids /dev/null` (or an empty file, or one of blank lines and comments) retried connecting for a
    minute, and beside --chemsys silently fetched the whole system: one line naming the file, no request."""
    import srscreen.io.mp as mp

    def no_network(*args, **kwargs):
        raise AssertionError("fetch-mp connected for a query with no ids")

    monkeypatch.setattr(mp, "_Session", no_network)
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "blank.txt").write_text("material_id\n\n  \n# to do\n")
    (tmp_path / "two.txt").write_text("mp-1\nmp-2 mp-3\n")
    out = tmp_path / "mp"
    for ids, words in [("/dev/null", ["/dev/null", "no material ids"]), (tmp_path / "empty.txt", ["empty.txt", "no material ids"]),
                       (tmp_path / "blank.txt", ["blank.txt", "no material ids"]), (tmp_path / "two.txt", ["two.txt:2", "mp-2 mp-3"]),
                       (",", ["--ids ','"]), (tmp_path / "nowhere.txt", ["nowhere.txt", "no such file"]),
                       ("ids.txt", ["ids.txt", "no such file"]), (tmp_path, ["a folder"]),
                       ("mp-1,not an id!", ["--ids", "neither a file nor"])]:
        for also in ([], ["--chemsys", "Na-Cl"]):
            assert_usage_error(cli("fetch-mp", out, "--ids", ids, *also, "--api-key", KEY, "-q"), *words)
            assert not out.exists()


def test_without_mp_api_fetch_mp_says_which_extra_to_install(monkeypatch, tmp_path):
    """mp-api is the `mp` extra, not a dependency: without it, one line naming the install command, and
    nothing written."""
    monkeypatch.setitem(sys.modules, "mp_api", None)  # `import mp_api...` now raises ImportError
    monkeypatch.setitem(sys.modules, "mp_api.client", None)
    result = cli("fetch-mp", tmp_path / "mp", "--chemsys", "Li-O", "--api-key", KEY)
    assert_usage_error(result, 'pip install "srscreen[mp]"')
    assert not (tmp_path / "mp").exists()


def test_structure_files_are_pymatgen_structures(server, docs, tmp_path):
    from pymatgen.core import Structure

    fetch(server, tmp_path / "mp", MPQuery(material_ids=("mp-11",)))
    s = Structure.from_dict(json.loads((tmp_path / "mp" / "structures" / "mp-11.json").read_text()))
    assert s == Structure.from_dict(docs[10]["structure"])


def test_ids_and_filters_together_fetch_the_ids_that_match(server, tmp_path):
    summary = fetch(server, tmp_path / "mp", MPQuery(material_ids=("mp-1", "mp-4", "mp-7"), elements=("O",)))
    assert (summary.matched, summary.fetched, summary.failed) == (1, 1, 0)
    assert [r["material_id"] for r in labels_rows(tmp_path / "mp")] == ["mp-7"]
