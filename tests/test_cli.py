"""The rest of the command line: featurize's exit codes and quiet mode, info, evaluate, models, and the
promise that arguments or files that cannot be used end with one line on stderr and exit 2, never
a traceback.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_same_graph, graphs_in
from helpers.screening_data import (
    MAX_NBR,
    RADIUS,
    SRSCREEN,
    assert_usage_error,
    cli,
    crystals,
    one_thread,  # noqa: F401 - fixture
    other_atom_features,
    subprocess_env,
    target_values,
    train_tiny_pair,
    write_json_db,
    write_labels,
)

from srscreen.model.model_file import ModelFile
from srscreen.data.graph_file import GraphFile

pytestmark = pytest.mark.usefixtures("one_thread")

BLANK = {"c00-004": "band_gap", "c00-011": "band_gap", "c00-017": "formation_energy_per_atom"}
DROPPED = ("c00-002",)
FEATURIZE = ["--radius", str(RADIUS), "--max-nbr", str(MAX_NBR), "-j", "1"]
BROKEN_CIF = "data_broken\n_cell_length_a 3\nloop_\n_atom_site_label\nXx 0 0\n"


@pytest.fixture(scope="module")
def data(tmp_path_factory, prototypes):
    """A clean folder, the same with two unreadable files and a README, its graph file, two tiny models."""
    root = tmp_path_factory.mktemp("cli")
    items = crystals(prototypes)
    clean = write_json_db(root / "clean", items)
    messy = root / "messy"
    shutil.copytree(clean, messy)
    (messy / "broken.cif").write_text(BROKEN_CIF)
    (messy / "bad.json").write_text("not a structure")
    (messy / "README.txt").write_text("notes, not a structure\n")
    graphs = root / "messy.h5"
    result = cli("featurize", messy, graphs, *FEATURIZE, "--quiet")
    assert result.exit_code == 0, (result.stderr, result.exception)
    values = target_values(items)
    labels = write_labels(root / "labels.csv", values, drop=DROPPED, blank=BLANK, extra=("elsewhere",))
    models = train_tiny_pair(graphs, labels, root, seed=2)
    return {"root": root, "items": items, "values": values, "clean": clean, "messy": messy, "graphs": graphs,
            "labels": labels, **models}


# ---------------------------------------------------------------- featurize


def test_featurize_strict_exits_0_when_nothing_failed(data, tmp_path):
    result = cli("featurize", data["clean"], tmp_path / "clean.h5", *FEATURIZE, "--strict")
    assert result.exit_code == 0, (result.stderr, result.exception)
    assert result.stdout == ""
    assert "featurized" in result.stderr  # the summary goes to stderr when not --quiet
    with GraphFile(tmp_path / "clean.h5") as g:
        assert len(g) == len(data["items"]) and g.failures() == []


def test_featurize_failures_exit_0_without_strict_and_1_with_it(data, tmp_path):
    result = cli("featurize", data["messy"], tmp_path / "a.h5", *FEATURIZE)
    assert result.exit_code == 0, (result.stderr, result.exception)
    assert "failed" in result.stderr and "srscreen info" in result.stderr
    result = cli("featurize", data["messy"], tmp_path / "b.h5", *FEATURIZE, "--strict", "--quiet")
    assert result.exit_code == 1
    assert result.stderr == "" and result.stdout == ""
    assert (tmp_path / "b.h5").exists()  # --strict reports; it does not withhold the file


@pytest.mark.slow
def test_featurize_strict_quiet_in_a_real_process(data, tmp_path):
    """Nothing at all on stderr with --quiet, warnings of the readers included, and the exit code 1."""
    proc = subprocess.run([*SRSCREEN, "featurize", str(data["messy"]), str(tmp_path / "m.h5"), *FEATURIZE, "--strict", "-q"],
                          capture_output=True, text=True, env=subprocess_env(), timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr == "" and proc.stdout == ""


# ---------------------------------------------------------------- info


def test_info_json(data):
    result = cli("info", data["graphs"], "--json")
    assert result.exit_code == 0, result.stderr
    info = json.loads(result.stdout)
    assert isinstance(info["structures"], int) and info["structures"] == len(data["items"])
    assert isinstance(info["failed"], list) and len(info["failed"]) == 2
    for f in info["failed"]:
        assert set(f) == {"id", "source", "reason"} and all(isinstance(v, str) and v for v in f.values())
    by_id = {f["id"]: f for f in info["failed"]}
    assert set(by_id) == {"broken", "bad"}
    assert by_id["broken"]["source"].endswith("broken.cif") and by_id["bad"]["source"].endswith("bad.json")
    assert info["settings"]["radius"] == RADIUS and info["settings"]["max_nbr"] == MAX_NBR
    assert info["settings"]["policies"]["on_disorder"] == "fail"
    assert [s["source"].endswith("README.txt") for s in info["skipped"]] == [True]
    assert sum(info["shards"]) == info["structures"]


def test_info_ids_one_per_line(data):
    result = cli("info", data["graphs"], "--ids")
    assert result.exit_code == 0, result.stderr
    with GraphFile(data["graphs"]) as g:
        assert result.stdout == "".join(i + "\n" for i in g.ids())
    assert sorted(result.stdout.splitlines()) == sorted(id_ for id_, _ in data["items"])


def test_info_table(data):
    result = cli("info", data["graphs"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.stderr
    assert "structures" in result.stdout and str(len(data["items"])) in result.stdout
    assert "failures by reason" in result.stdout


# ---------------------------------------------------------------- evaluate


def predictions(data) -> dict[str, dict]:
    result = cli("predict", data["graphs"], "--model", data["ef"], "--model", data["eg"], "--format", "jsonl", "-q")
    assert result.exit_code == 0, result.stderr
    return {r["id"]: r for r in map(json.loads, result.stdout.splitlines())}


def numpy_metrics(data, target: str) -> dict:
    column = ("formation_energy_per_atom", "band_gap").index(target)
    pred = predictions(data)
    pairs = [(pred[i][target], v[column]) for i, v in data["values"].items()
             if i in pred and i not in DROPPED and BLANK.get(i) != target]
    p, t = np.array(pairs).T
    return {
        "mae": np.mean(np.abs(p - t)),
        "rmse": np.sqrt(np.mean((p - t) ** 2)),
        "r2": 1 - np.sum((p - t) ** 2) / np.sum((t - t.mean()) ** 2),
        "count": len(t),
    }


def test_evaluate_metrics_are_numpy_metrics_of_the_predictions(data):
    result = cli("evaluate", data["graphs"], "--labels", data["labels"], "--model", data["ef"], "--model", data["eg"],
                 "--json")
    assert result.exit_code == 0, (result.stderr, result.exception)
    by_model = json.loads(result.stdout)
    assert set(by_model) == {"ef", "eg"}  # rows name their model
    got = {t: m for per in by_model.values() for t, m in per.items()}
    assert set(got) == {"formation_energy_per_atom", "band_gap"}
    for target, metrics in got.items():
        want = numpy_metrics(data, target)
        assert metrics["count"] == want["count"]
        for k in ("mae", "rmse", "r2"):
            assert metrics[k] == pytest.approx(want[k], rel=1e-9, abs=1e-12), (target, k)
    n = len(data["items"]) - len(DROPPED)
    assert got["band_gap"]["count"] == n - 2 and got["formation_energy_per_atom"]["count"] == n - 1


def test_evaluate_table(data):
    result = cli("evaluate", data["graphs"], "--labels", data["labels"], "--model", data["ef"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.stderr
    want = numpy_metrics(data, "formation_energy_per_atom")
    assert f"{want['mae']:.4f}" in result.stdout and "eV/atom" in result.stdout


def ef_only_labels(data, folder) -> Path:
    """The fixture's labels without their band_gap column."""
    ef_only = folder / "ef-only.csv"
    rows = csv.DictReader(data["labels"].open())
    ef_only.write_text("id,formation_energy_per_atom\n" + "".join(
        f"{r['material_id']},{r['formation_energy_per_atom']}\n" for r in rows))
    return ef_only


def test_evaluate_scores_the_targets_the_labels_have_and_names_the_others(data, tmp_path):
    """A file of Ef labels only was refused for the Ef+Eg pair (no column 'band_gap'): a user with Ef labels
    could not evaluate the default models. It scores Ef, and one warning line names what it left out."""
    ef_only = ef_only_labels(data, tmp_path)
    result = cli("evaluate", data["graphs"], "--labels", ef_only, "--model", data["ef"], "--model", data["eg"], "--json")
    assert result.exit_code == 0, (result.stderr, result.exception)
    by_model = json.loads(result.stdout)
    assert by_model["eg"] == {} and set(by_model["ef"]) == {"formation_energy_per_atom"}
    assert by_model["ef"]["formation_energy_per_atom"]["mae"] == pytest.approx(
        numpy_metrics(data, "formation_energy_per_atom")["mae"], rel=1e-9)
    assert "ef-only.csv: no column 'band_gap'; band_gap not scored" in result.stderr


def test_evaluate_scores_what_a_blank_column_leaves_and_refuses_only_nothing(data, tmp_path):
    """A band_gap column left blank for every crystal refused the whole pair ("no labelled band_gap"),
    though its Ef column was full: Ef is scored and one warning names what was left out. With no usable
    column at all, the refusal names every target it looked for."""
    blank = tmp_path / "blank-gaps.csv"
    rows = list(csv.DictReader(data["labels"].open()))
    blank.write_text("id,formation_energy_per_atom,band_gap\n" + "".join(
        f"{r['material_id']},{r['formation_energy_per_atom']},\n" for r in rows))
    result = cli("evaluate", data["graphs"], "--labels", blank, "--model", data["ef"], "--model", data["eg"], "--json")
    assert result.exit_code == 0, (result.stderr, result.exception)
    by_model = json.loads(result.stdout)
    assert by_model["eg"] == {} and set(by_model["ef"]) == {"formation_energy_per_atom"}
    assert "blank-gaps.csv: no labelled band_gap for any crystal of" in result.stderr and "not scored" in result.stderr
    result = cli("evaluate", data["graphs"], "--labels", blank, "--model", data["eg"])
    assert_usage_error(result, "blank-gaps.csv: no labelled band_gap for any crystal of")
    neither = tmp_path / "neither.csv"
    neither.write_text("id,volume\n" + "".join(f"{r['material_id']},1.0\n" for r in rows))
    result = cli("evaluate", data["graphs"], "--labels", neither, "--model", data["ef"], "--model", data["eg"])
    assert_usage_error(result, "neither.csv: no column for any target evaluated", "'formation_energy_per_atom'",
                       "'band_gap'")


def test_evaluate_json_is_strict_json_when_a_figure_is_undefined(data, tmp_path):
    """With one labelled crystal R² is undefined: --json wrote NaN, which strict JSON parsers refuse; it is
    null, as in `predict --format jsonl`."""
    row = next(csv.DictReader(data["labels"].open()))
    one = tmp_path / "one.csv"
    one.write_text(f"id,formation_energy_per_atom\n{row['material_id']},{row['formation_energy_per_atom']}\n")
    result = cli("evaluate", data["graphs"], "--labels", one, "--model", data["ef"], "--json")
    assert result.exit_code == 0, (result.stderr, result.exception)

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    figures = json.loads(result.stdout, parse_constant=refuse)["ef"]["formation_energy_per_atom"]
    assert figures["count"] == 1 and figures["r2"] is None and figures["mae"] >= 0


def test_evaluate_asks_nothing_of_a_model_it_cannot_score(data, tmp_path, monkeypatch):
    """With Ef labels only, the Eg model was still predicted over the whole graph file (half the pair's time,
    for no figure) and, with `split`, refused when its file recorded no split (an imported model)."""
    import srscreen.screening.evaluate as evaluate_module

    predicted = []

    def counting_predict(graph_path, models, **kwargs):
        predicted.extend(m.targets for m in models)
        return predict(graph_path, models, **kwargs)

    predict = evaluate_module.predict
    monkeypatch.setattr(evaluate_module, "predict", counting_predict)
    ef, eg = ModelFile.load(data["ef"]), ModelFile.load(data["eg"])
    eg.training = {k: v for k, v in eg.training.items() if k != "split"}  # as an imported model's file
    with pytest.warns(UserWarning, match="no column 'band_gap'; band_gap not scored"):  # the API says it too
        results = evaluate_module.evaluate(data["graphs"], ef_only_labels(data, tmp_path), [ef, eg], split="test")
    assert predicted == [["formation_energy_per_atom"]]
    assert [set(per) for per in results.values()] == [{"formation_energy_per_atom"}, set()]


def test_evaluate_parity_plot(data, tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "parity.png"
    result = cli("evaluate", data["graphs"], "--labels", data["labels"], "--model", data["ef"], "--model", data["eg"],
                 "--plot", png, "--json")
    assert result.exit_code == 0, (result.stderr, result.exception)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(result.stdout)  # the metrics still come


# ---------------------------------------------------------------- models


def test_models_lists_the_given_files(data):
    result = cli("models", data["ef"], data["eg"])
    assert result.exit_code == 0, result.stderr
    blocks = result.stdout.strip().split("\n\n")
    assert len(blocks) == 2
    for block, (name, target, unit) in zip(blocks, (("ef", "formation_energy_per_atom", "eV/atom"), ("eg", "band_gap", "eV"))):
        m = ModelFile.load(data[name])
        params = sum(p.numel() for p in m.build_model().parameters())
        lines = block.splitlines()
        assert lines[0] == str(data[name])  # the name as given, whole
        rows = dict(line.strip().split(maxsplit=1) for line in lines[1:])
        assert rows["target"] == f"{target} ({unit}), test MAE {m.training['test'][target]['mae']:.4f} {unit}"
        assert rows["network"] == f"SR-CGCNN-3 (8 features), {params:,} parameters"
        assert rows["graphs"] == "knn-ties, 8 neighbours, 6 Å"  # the graph rule, neighbours and radius it was trained on
        assert rows["members"] == "1"


def test_models_names_are_whole_at_80_columns(data, tmp_path):
    """A table at 80 columns cut both pretrained names to `sr-cgc…`: each model's name is whole, however long."""
    long = tmp_path / ("a-rather-long-folder-name-" * 3) / "fine-tuned-formation-energy-model.pt"
    long.parent.mkdir()
    shutil.copy(data["ef"], long)
    result = cli("models", "sr-cgcnn-ef", "sr-cgcnn-eg", long, env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.stderr
    names = [block.splitlines()[0] for block in result.stdout.strip().split("\n\n")]
    assert names == ["sr-cgcnn-ef", "sr-cgcnn-eg", str(long)]
    assert "…" not in result.stdout


# ---------------------------------------------------------------- help, version, output width


def commands() -> list[str]:
    import typer.main

    from srscreen.cli import app
    return sorted(typer.main.get_command(app).commands)


def test_help_at_80_columns_reads_as_plain_text(monkeypatch):
    """Every command's help at 80 columns: usage names its arguments in capitals (not `{source}`), no
    `<bool>` beside a switch, no line over 80 columns, `-h` the same as `--help`."""
    monkeypatch.setenv("COLUMNS", "80")
    for command in ["", *commands()]:
        args = [command] if command else []
        result = cli(*args, "--help")
        assert result.exit_code == 0, (command, result.output)
        text = result.stdout
        assert "Usage: " in text and "<bool>" not in text and "{" not in text.split("\n\n")[0], (command, text)
        assert "list[" not in text, (command, text)
        assert max(len(line) for line in text.splitlines()) <= 80, (command, text)
        assert cli(*args, "-h").stdout == text, command
    assert "Usage: root featurize [OPTIONS] SOURCE OUT" in cli("featurize", "-h").stdout


def test_predict_help_names_the_columns_hull_adds():
    """--hull adds p_stable and hull_note besides e_above_hull; its help named only e_above_hull."""
    text = " ".join(cli("predict", "--help").stdout.split())
    start = text.index("--hull Add")
    hull = text[start:text.index("--reference <path>", start)]
    assert all(column in hull for column in ("e_above_hull", "p_stable", "hull_note")), hull


def test_every_option_and_argument_has_a_description():
    import typer.main

    from srscreen.cli import app
    group = typer.main.get_command(app)
    undescribed = [f"{name} {param.name}" for name, command in group.commands.items() for param in command.params
                   if not (param.help or "").strip()]
    undescribed += [p.name for p in group.params if not (p.help or "").strip()]
    assert undescribed == []


def test_version():
    from srscreen import __version__
    result = cli("--version")
    assert result.exit_code == 0 and result.stdout == f"srscreen {__version__}\n"


def test_output_to_a_pipe_is_neither_wrapped_nor_cut(data, tmp_path):
    """Off a terminal (a pipe, a log file) rich would wrap at 80 columns: a table cell or a message holds
    its long path on one line."""
    source = tmp_path / ("structures-of-a-long-named-project-" * 4)
    shutil.copytree(data["clean"], source)
    graphs = source.with_suffix(".h5")
    result = cli("featurize", source, graphs, *FEATURIZE, env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.stderr
    assert any(str(graphs) in line for line in result.stderr.splitlines())  # the summary's first row
    result = cli("info", graphs, env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.stderr
    assert any(str(graphs) in line for line in result.stdout.splitlines())
    assert any(f" {source} " in line for line in result.stdout.splitlines())
    assert "policies" not in result.stdout and "{" not in result.stdout  # one row per policy, not a dict
    assert any(line.split() == ["│", "on_disorder", "│", "fail", "│"] for line in result.stdout.splitlines())


# ---------------------------------------------------------------- featurize --like


@pytest.fixture(scope="module")
def cgcnn_like(data):
    """A model that takes CGCNN's graphs (rule cgcnn, 5 Å, 6 neighbours) with its own element table, as
    import-cgcnn makes, and the atom_init.json of that table."""
    from srscreen.graph.elements import load_atom_features, table_id
    import torch

    root = data["root"]
    atom_init = other_atom_features(root / "atom_init.json")
    model = ModelFile.load(data["ef"])
    table = torch.as_tensor(load_atom_features(atom_init))
    model.state_dict["feature_table"] = table
    model.feature_table_id = table_id(table.numpy())
    model.graph_settings = {"radius": 5.0, "max_nbr": 6, "neighbour_algorithm": "knn-pbc-v1"}
    model.training["atom_features"] = "atom_init.json"
    model.save(root / "cgcnn-like.pt")
    return root / "cgcnn-like.pt", atom_init


def test_featurize_like_a_model_gives_the_graphs_of_the_explicit_flags(data, cgcnn_like, tmp_path):
    model, atom_init = cgcnn_like
    like, flags = tmp_path / "like.h5", tmp_path / "flags.h5"
    assert cli("featurize", data["clean"], like, "--like", model, "-j", "1", "-q").exit_code == 0
    result = cli("featurize", data["clean"], flags, "--graph-rule", "cgcnn", "--radius", "5", "--max-nbr", "6",
                 "--atom-features", atom_init, "-j", "1", "-q")
    assert result.exit_code == 0, result.stderr
    with GraphFile(like) as a, GraphFile(flags) as b:
        settings = ("radius", "max_nbr", "neighbour_algorithm", "feature_table_id", "feature_table_name", "policies")
        assert {k: a.attrs[k] for k in settings} == {k: b.attrs[k] for k in settings}
        assert a.attrs["neighbour_algorithm"] == "knn-pbc-v1" and a.attrs["radius"] == 5.0
    got, want = graphs_in(like), graphs_in(flags)
    assert sorted(got) == sorted(want) and len(got) == len(data["items"])
    for id_ in want:
        assert_same_graph(got[id_], want[id_], id_)
    result = cli("predict", like, "--model", model, "-q", "--threads", "1")
    assert result.exit_code == 0, result.stderr


def test_graphs_unfit_for_a_model_name_the_like_flag(data, cgcnn_like):
    model, _ = cgcnn_like
    message = assert_usage_error(cli("predict", data["graphs"], "--model", model, "-q"), "knn-pbc-v1")
    assert f"featurize again with --like {model}" in message
    assert "--graph-rule cgcnn" in message  # the flags it stands for, too


def test_like_with_graph_flags_is_refused(data, cgcnn_like, tmp_path):
    model, atom_init = cgcnn_like
    result = cli("featurize", data["clean"], tmp_path / "x.h5", "--like", model, "--radius", "5",
                 "--atom-features", atom_init, "-q")
    assert_usage_error(result, "--like", "--radius", "--atom-features")
    assert not (tmp_path / "x.h5").exists()


# ---------------------------------------------------------------- unusable arguments


def usage_cases(data, tmp_path) -> list[tuple[list, list]]:
    g, ef, eg, labels = data["graphs"], data["ef"], data["eg"], data["labels"]
    ef_only = tmp_path / "ef-only.csv"
    ef_only.write_text("id,formation_energy_per_atom\nc00-000,-1.0\n")
    return [
        (["featurize", data["clean"], tmp_path / "x.h5", "--on-disorder", "average"],
         ["--on-disorder", "average", "'fail' or 'majority'"]),
        (["featurize", data["clean"], tmp_path / "x.h5", "--on-isolated-atoms", "drop"],
         ["--on-isolated-atoms", "drop", "'fail' or 'pad'"]),
        (["featurize", tmp_path / "nowhere", tmp_path / "x.h5"], ["nowhere", "no such file or folder"]),
        *((["featurize", data["clean"], tmp_path / "x.h5", "--radius", r], ["--radius", "above 0 and at most 30", r])
          for r in ("nan", "inf", "-1")),
        (["featurize", data["clean"], tmp_path / "x.h5", "--tie-tolerance", "nan"], ["--tie-tolerance", "nan"]),
        # One message named four flags whichever was wrong.
        (["featurize", data["clean"], tmp_path / "x.h5", "-j", "0"], ["--jobs must be non-zero", "not 0"]),
        (["featurize", data["clean"], tmp_path / "x.h5", "--max-file-mb", "nan"], ["--max-file-mb must be above 0, not nan"]),
        (["predict", g, "--model", ef, "--where", "band_gap>nan"], ["band_gap>nan", "nothing compares with nan"]),
        (["predict", g, "--model", ef, "--where", "band_gap>>1"], ["band_gap>>1", "COLUMN OP NUMBER"]),
        (["predict", g, "--model", ef, "--where", "band_gap is large"], ["band_gap is large", "COLUMN OP NUMBER"]),
        (["predict", g, "--model", ef, "--where", "density>1"], ["'density': no such column"]),
        (["predict", g, "--model", ef, "--where", "density>1", "--shards", "1:1"], ["'density': no such column"]),
        (["predict", g, "--model", ef, "--where", "formation_energy_per_atom<1e"],
         ["formation_energy_per_atom<1e", "'1e' is not a number"]),
        (["predict", g, "--model", "sr-cgcnn-unknown"], ["sr-cgcnn-unknown: not a pretrained model", "./sr-cgcnn-unknown"]),
        (["predict", g, "--model", tmp_path / "missing.pt"], ["missing.pt: cannot read model file"]),
        (["predict", g, "--model", labels], ["labels.csv: not a readable srscreen model file"]),
        (["predict", g, "--model", ef, "--model", ef], ["two models predict formation_energy_per_atom", "give each target once"]),
        (["predict", g, "--model", ef, "--sort", "volume"], ["--sort volume: no such column"]),
        (["predict", g, "--model", ef, "--top", "0"], ["--top must be at least 1"]),
        (["predict", g, "--model", ef, "--format", "xml"], ["--format must be csv, tsv or jsonl", "xml"]),
        (["predict", g, "--model", ef, "--shards", "3:1"], ["--shards 3:1: the file has shards 0:1"]),
        (["predict", g, "--model", ef, "--shards", "0:99"], ["--shards 0:99: the file has shards 0:1"]),
        (["predict", g, "--model", ef, "--shards", "a:b"], ["--shards 'a:b': write I:J"]),
        (["predict", g, "--model", ef, "--device", "gpu"], ["--device 'gpu': write auto, cpu, cuda or cuda:N"]),
        (["predict", g, "--model", ef, "-o", tmp_path / "no-dir" / "out.csv"], ["no-dir/out.csv: folder", "does not exist"]),
        (["predict", tmp_path / "runs[old]" / "graphs.h5", "--model", ef], ["runs[old]/graphs.h5: no such file"]),
        (["predict", tmp_path / "x[/y]" / "graphs.h5", "--model", ef], ["x[/y]/graphs.h5: no such file"]),
        (["evaluate", g, "--labels", ef_only, "--model", eg], ["ef-only.csv: no column 'band_gap'"]),
        (["evaluate", g, "--labels", tmp_path / "absent.csv", "--model", ef], ["absent.csv: cannot read a labels CSV"]),
        (["train", g, "--labels", ef_only, "--target", "band_gap", "-o", tmp_path / "m.pt"],
         ["ef-only.csv: no column 'band_gap'"]),
        (["train", g, "--labels", labels, "--target", "band_gap", "-o", tmp_path / "m.pt", "--split", tmp_path / "s.csv"],
         ["s.csv: cannot read a split file"]),
        (["info", tmp_path / "absent.h5"], ["absent.h5: no such file"]),
        (["models", tmp_path / "absent.pt"], ["absent.pt: cannot read model file"]),
        (["import-cgcnn", labels, "--atom-features", labels, "--target", "x", "--unit", "eV", "-o", tmp_path / "c.pt"],
         ["labels.csv: not a readable CGCNN checkpoint"]),
        # A training checkpoint said "no schema_version"; a srscreen model file given to import-cgcnn "KeyError: 'args'".
        (["models", f"{ef}.ckpt"], [f"{Path(ef).name}.ckpt: not a srscreen model file", "a training checkpoint", "--resume"]),
        (["import-cgcnn", ef, "--atom-features", labels, "--target", "x", "--unit", "eV", "-o", tmp_path / "c.pt"],
         [f"{Path(ef).name}: a srscreen model file already", "--model"]),
        # Accepted before: a model whose column had no name, or that predict refused only later.
        (["import-cgcnn", labels, "--atom-features", labels, "--target", " ", "--unit", "eV", "-o", tmp_path / "c.pt"],
         ["--target ' ': a target needs a name"]),
        (["import-cgcnn", labels, "--atom-features", labels, "--target", "rank", "--unit", "eV", "-o", tmp_path / "c.pt"],
         ["--target 'rank' is a column the ranking writes itself"]),
    ]


CASES = [
    "featurize-on-disorder", "featurize-on-isolated", "featurize-missing-source", "radius-nan", "radius-inf",
    "radius-negative", "tie-tolerance-nan", "jobs-zero", "max-file-mb-nan", "where-nan",
    "where-operator", "where-words", "where-unknown-column", "where-unknown-column-no-shard", "where-not-a-number",
    "unknown-model-name", "missing-model-file",
    "not-a-model-file", "two-models-one-target", "sort-unknown", "top-zero", "format", "shards-reversed",
    "shards-outside", "shards-words", "device", "out-in-missing-folder", "brackets-in-path", "markup-closing-tag",
    "evaluate-labels-without-column", "evaluate-labels-missing", "train-labels-without-column", "train-split-missing",
    "info-missing", "models-missing", "import-cgcnn-not-a-checkpoint", "models-training-checkpoint",
    "import-cgcnn-srscreen-model", "import-cgcnn-blank-target", "import-cgcnn-reserved-target",
]


@pytest.mark.parametrize("case", range(len(CASES)), ids=CASES)
def test_unusable_arguments_exit_2_with_one_line(data, tmp_path, case):
    args, words = usage_cases(data, tmp_path)[case]
    result = cli(*args, "--quiet") if args[0] in ("featurize", "predict") else cli(*args)
    assert_usage_error(result, *words)
    assert result.stdout == ""


def test_wrong_labels_column_for_training_names_the_columns(data, tmp_path):
    result = cli("train", data["graphs"], "--labels", data["labels"], "--target", "gap", "-o", tmp_path / "m.pt")
    assert_usage_error(result, "'gap'", "band_gap", "formation_energy_per_atom")


@pytest.mark.slow
@pytest.mark.parametrize("command", ["predict", "train"])
def test_one_line_and_no_traceback_in_a_real_process(data, tmp_path, command):
    """The same promise outside the test runner, without --quiet: one line on a real stderr (no blank line
    left by a progress display), exit 2. The errors arise while the progress display would be running."""
    if command == "predict":
        args = ["predict", str(data["graphs"]), "--model", str(data["ef"]), "--shards", "0:99"]
        words = ["--shards 0:99"]
    else:
        args = ["train", str(data["graphs"]), "--labels", str(data["labels"]), "--target", "gap", "-o", str(tmp_path / "m.pt")]
        words = ["'gap'", "band_gap"]
    proc = subprocess.run([*SRSCREEN, *args], capture_output=True, text=True, env=subprocess_env(), timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error:"), repr(proc.stderr)
    for w in words:
        assert w in proc.stderr
