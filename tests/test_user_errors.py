"""What a careless user gives srscreen: labels with repeated, missing or impossible values, files of the
wrong kind (latin-1, binary, an HDF5 file for a CSV, a folder), nonsense settings. Each is one line on
stderr naming the file or the flag, exit 2, never a traceback; what labels lose is said on stderr.
"""

from __future__ import annotations

import math
import re
import subprocess

import pytest
import typer
from helpers.screening_data import (
    MAX_NBR,
    RADIUS,
    SRSCREEN,
    assert_usage_error,
    cli,
    crystals,
    one_thread,  # noqa: F401 - fixture
    subprocess_env,
    target_values,
    write_json_db,
    write_labels,
)

from srscreen.cli import app
from srscreen.data.labels import LABEL_LIMIT, match, read_labels
from srscreen.errors import InputError
from srscreen.io.text_file import text_lines

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--atom-fea-len", "8", "--h-fea-len", "8", "--epochs", "1", "--batch-size", "8", "--threads", "1", "--quiet"]


@pytest.fixture(scope="module")
def data(tmp_path_factory, prototypes):
    """A graph file of ~40 crystals, its labels, one tiny formation-energy model, and files of the wrong kind."""
    root = tmp_path_factory.mktemp("user-errors")
    items = crystals(prototypes)
    graphs = root / "g.h5"
    result = cli("featurize", write_json_db(root / "db", items), graphs, "--radius", str(RADIUS), "--max-nbr",
                 str(MAX_NBR), "-j", "1", "--quiet")
    assert result.exit_code == 0, (result.stderr, result.exception)
    values = target_values(items)
    labels = write_labels(root / "labels.csv", values)
    model = root / "ef.pt"
    result = cli("train", graphs, "--labels", labels, "--target", "formation_energy_per_atom", "-o", model, *TINY)
    assert result.exit_code == 0, (result.stderr, result.exception)
    ids = list(values)
    latin1 = root / "latin1.csv"
    latin1.write_bytes(("id,formation_energy_per_atom\n" + "".join(f"{i}é,-1.0\n" for i in ids)).encode("latin-1"))
    binary = root / "binary.csv"
    binary.write_bytes(bytes(range(256)) * 8)
    ranking = root / "p.csv"
    ranking.write_text("rank,id,formula,n_atoms,formation_energy_per_atom\n1,a,NaCl,2,-1.5\n")
    (root / "folder").mkdir()
    return {"root": root, "graphs": graphs, "labels": labels, "model": model, "values": values, "ids": ids,
            "latin1": latin1, "binary": binary, "ranking": ranking, "folder": root / "folder",
            "latin1_at": f"not UTF-8 text at byte {len('id,formation_energy_per_atom') + 1 + len(ids[0])}"}


def labels_file(data, name: str, rows: list[str]) -> str:
    path = data["root"] / name
    path.write_text("id,formation_energy_per_atom\n" + "".join(r + "\n" for r in rows))
    return str(path)


def user_errors(data) -> dict[str, tuple[list, list[str]]]:
    g, labels, model, root = data["graphs"], data["labels"], data["model"], data["root"]
    a, b = data["ids"][:2]
    train = ["train", g, "--labels", labels, "--target", "formation_energy_per_atom", "-o", root / "t.pt", *TINY]
    finetune = ["finetune", g, "--labels", labels, "--target", "formation_energy_per_atom", "--from", model,
                "-o", root / "f.pt", "--epochs", "1", "--quiet"]

    def with_labels(command: list, path) -> list:
        return [path if previous == "--labels" else arg for previous, arg in zip(["", *command], command)]

    evaluate = ["evaluate", g, "--labels", labels, "--model", model]
    return {
        "predict-batch-atoms-negative": (["predict", g, "--model", model, "--batch-atoms", "-5", "--quiet"],
                                         ["--batch-atoms", "-5"]),
        "predict-threads-negative": (["predict", g, "--model", model, "--threads", "-1", "--quiet"], ["--threads", "-1"]),
        "featurize-atom-features-not-a-table": (["featurize", root / "db", root / "x.h5", "--atom-features", labels,
                                                 "--quiet"], ["labels.csv", "atom feature file"]),
        "finetune-lr-nan": ([*finetune, "--lr", "nan"], ["--lr", "nan"]),
        "finetune-lr-negative": ([*finetune, "--lr", "-1"], ["--lr", "-1"]),
        "finetune-weight-decay-negative": ([*finetune, "--weight-decay", "-1"], ["--weight-decay", "-1"]),
        "train-weight-decay-inf": ([*train, "--weight-decay", "inf"], ["--weight-decay", "inf"]),
        "train-ema-decay-nan": ([*train, "--ema-decay", "nan"], ["--ema-decay", "nan"]),
        "train-threads-negative": ([*train, "--threads", "-2"], ["--threads", "-2"]),
        "train-milestone-negative": ([*train, "--milestone", "-5"], ["--milestone", "-5"]),
        "train-seed-negative": ([*train, "--seed", "-1"], ["--seed", "-1"]),
        "train-steps-huge": ([*train, "--steps", "100000"], ["--steps", "100000", "from 1 to 64"]),
        "train-h-fea-len-huge": ([*train, "--h-fea-len", "10000000"], ["--h-fea-len", "10000000"]),
        "featurize-radius-huge": (["featurize", root / "db", root / "r.h5", "--radius", "1e300", "--quiet"],
                                  ["--radius", "1e+300", "at most 30"]),
        "finetune-labels-latin1": (with_labels(finetune, data["latin1"]), ["latin1.csv", data["latin1_at"]]),
        "finetune-labels-binary": (with_labels(finetune, data["binary"]), ["binary.csv", "binary file"]),
        "evaluate-labels-latin1": (with_labels(evaluate, data["latin1"]), ["latin1.csv", data["latin1_at"]]),
        "evaluate-labels-binary": (with_labels(evaluate, data["binary"]), ["binary.csv", "binary file"]),
        "evaluate-labels-graph-file": (with_labels(evaluate, g), ["g.h5", "binary file (HDF5"]),
        "evaluate-labels-folder": (with_labels(evaluate, data["folder"]), ["folder", "cannot read a labels CSV"]),
        "evaluate-blank-labels-on-a-folder": (  # no note on the labels before the error: one line
            ["evaluate", data["folder"], "--labels", labels_file(data, "blank.csv", [f"{a},"]), "--model", model],
            ["folder", "a folder, not a graph file"]),
        "labels-two-values-for-one-id": (
            with_labels(evaluate, labels_file(data, "conflict.csv", [f"{a},-1.0", f"{b},-2.0", f"{a},-1.5"])),
            ["conflict.csv", f"id {a}", "'-1.0' on line 2", "'-1.5' on line 4"]),
        "labels-value-beyond-limit": (
            with_labels(finetune, labels_file(data, "huge.csv", [f"{a},-1.0", f"{b},1e300"])),
            ["huge.csv:3", f"id {b}", "1e300"]),
        "labels-value-overflowing": (
            with_labels(evaluate, labels_file(data, "overflow.csv", [f"{a},-1e400"])), ["overflow.csv:2", "-1e400"]),
        "labels-not-a-number": (with_labels(train, labels_file(data, "na.csv", [f"{a},NA"])),
                                ["na.csv:2", f"id {a}", "'NA'", "blank"]),
        "split-file-latin1": ([*train, "--split", data["latin1"]], ["latin1.csv", "not UTF-8", "split file"]),
        "split-file-empty": ([*train, "--split", labels_file(data, "empty-split.csv", [])], ["empty-split.csv"]),
        "merge-graph-file-as-part": (["merge", data["ranking"], g],
                                     ["g.h5", "binary file", "as `srscreen predict` writes it"]),
        "merge-text-not-a-ranking": (["merge", data["ranking"], labels], ["labels.csv", "`srscreen predict`"]),
        "predict-folder": (["predict", data["folder"], "--model", model, "--quiet"], ["folder", "a folder, not a graph file"]),
        "info-folder": (["info", data["folder"]], ["folder", "a folder, not a graph file"]),
        "info-cif": (["info", labels], ["labels.csv", "not a readable HDF5 file (file signature not found)"]),
        "fetch-mp-ids-file-binary": (["fetch-mp", root / "mp", "--ids", data["binary"], "--quiet"], ["binary.csv", "binary"]),
        "fetch-mp-range-nan": (["fetch-mp", root / "mp", "--band-gap", "nan:1", "--quiet"], ["--band-gap", "nan:1"]),
        "fetch-mp-range-reversed": (["fetch-mp", root / "mp", "--band-gap", "3:1", "--quiet"], ["--band-gap", "3:1"]),
        "fetch-mp-retries-negative": (["fetch-mp", root / "mp", "--ids", "mp-1", "--retries", "-1", "--quiet"],
                                      ["--retries", "-1"]),
    }


CASES = [
    "predict-batch-atoms-negative", "predict-threads-negative", "featurize-atom-features-not-a-table",
    "finetune-lr-nan", "finetune-lr-negative", "finetune-weight-decay-negative", "train-weight-decay-inf",
    "train-ema-decay-nan", "train-threads-negative", "train-milestone-negative", "featurize-radius-huge",
    "train-seed-negative", "train-steps-huge", "train-h-fea-len-huge", "finetune-labels-latin1", "finetune-labels-binary",
    "evaluate-labels-latin1", "evaluate-labels-binary", "evaluate-labels-graph-file", "evaluate-labels-folder",
    "evaluate-blank-labels-on-a-folder",
    "labels-two-values-for-one-id", "labels-value-beyond-limit", "labels-value-overflowing", "labels-not-a-number",
    "split-file-latin1", "split-file-empty", "merge-graph-file-as-part", "merge-text-not-a-ranking",
    "predict-folder", "info-folder", "info-cif", "fetch-mp-ids-file-binary", "fetch-mp-range-nan",
    "fetch-mp-range-reversed", "fetch-mp-retries-negative",
]


def test_every_case_is_run(data):
    assert sorted(user_errors(data)) == sorted(CASES)


def command_flags(name: str) -> set[str]:
    """Every option string the command accepts (--lr, -o, --no-compile, ...)."""
    command = typer.main.get_command(app).commands[name]
    return {o for p in command.params for o in (*p.opts, *p.secondary_opts) if o.startswith("-")}


@pytest.mark.parametrize("case", CASES)
def test_user_errors_exit_2_with_one_line_naming_the_file_or_flag(data, case):
    args, words = user_errors(data)[case]
    result = cli(*args)
    message = assert_usage_error(result, *words)
    assert result.stdout == ""
    # One mechanism for every message: a flag it names is one the command has (finetune has no --ema-decay).
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", message))
    assert named <= command_flags(args[0]), (named - command_flags(args[0]), message)


def test_labels_say_what_was_dropped_and_repeated(data):
    """60-odd rows, some repeated with the same value, some blank, NaN or inf: the run says so on stderr, and
    the count scored is the distinct finite labels."""
    ids, values = data["ids"], data["values"]
    rows = [f"{i},{values[i][0]!r}" for i in ids]
    rows[3], rows[4], rows[5], rows[6] = f"{ids[3]},", f"{ids[4]},nan", f"{ids[5]},inf", f"{ids[6]},-Infinity"
    repeated = [rows[i] for i in (0, 1, 2, 7, 8, 9, 10, 11, 12, 13)]
    path = labels_file(data, "messy.csv", rows + repeated)
    result = cli("evaluate", data["graphs"], "--labels", path, "--model", data["model"], "--json")
    assert result.exit_code == 0, (result.stderr, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2, lines
    assert f"10 of {len(rows) + 10} formation_energy_per_atom rows repeat an id" in lines[0]
    assert f"({ids[0]}, {ids[1]}, {ids[2]}, ...)" in lines[0]
    assert "4 formation_energy_per_atom values dropped" in lines[1]
    assert f"1 blank ({ids[3]}); 1 NaN ({ids[4]}); 2 inf ({ids[5]}, {ids[6]})" in lines[1]
    (count,) = re.findall(r'"count": (\d+)', result.stdout)  # one model, one target
    assert int(count) == len(ids) - 4


def test_training_says_what_its_labels_lose_unless_quiet(data, tmp_path):
    ids, values = data["ids"], data["values"]
    rows = [f"{i},{values[i][0]!r}" for i in ids]
    rows[0] = f"{ids[0]},"
    path = labels_file(data, "one-blank.csv", rows)
    args = ["train", data["graphs"], "--labels", path, "--target", "formation_energy_per_atom", "-o", tmp_path / "m.pt",
            *[a for a in TINY if a != "--quiet"]]
    result = cli(*args)
    assert result.exit_code == 0, (result.stderr, result.exception)
    assert f"1 formation_energy_per_atom value dropped, not trained or scored on: 1 blank ({ids[0]})" in result.stderr
    quiet = cli(*args[:6], "-o", tmp_path / "q.pt", *TINY)
    assert quiet.exit_code == 0 and "dropped" not in quiet.stderr


# ---------------------------------------------------------------- the library


def test_read_labels_reports_reasons_and_keeps_the_per_target_api(tmp_path):
    path = tmp_path / "l.csv"
    path.write_bytes("\ufeffmaterial_id,a,b\nx,1,\ny,nan,2\nx,1.0,\nz,INF,3\n\nw,-2,4\n".encode())
    a = read_labels(path, "a")
    assert set(a) == {"x", "y", "z", "w"} and a["x"] == 1.0 and math.isnan(a["y"]) and a["z"] == math.inf
    assert a.report.repeated == ("x",) and a.report.rows == 5
    assert a.report.dropped == {"NaN": ("y",), "inf": ("z",)}
    b = read_labels(path, "b")  # x repeats a blank b: the same (missing) value
    assert b.report.dropped == {"blank": ("x",)} and b.report.repeated == ("x",)
    matched = match(["w", "x", "y", "q"], a)
    assert sorted(matched.positions.tolist()) == [0, 1] and matched.not_finite == 1
    assert matched.missing_in_labels == 1 and matched.missing_in_graphs == 1  # q unlabelled; z not in the graphs


@pytest.mark.parametrize("cell, reason", [("1e7", "beyond"), ("-1e300", "beyond"), ("1e999", "beyond"),
                                          ("abc", "not a number"), ("0x10", "not a number")])
def test_values_that_cannot_be_meant_are_refused_with_file_line_and_id(tmp_path, cell, reason):
    path = tmp_path / "l.csv"
    path.write_text(f"id,y\nok,1\nbad,{cell}\n")
    with pytest.raises(InputError, match=re.escape(f"{path}:3: y of id bad ") + f".*{reason}"):
        read_labels(path, "y")


def test_the_limit_itself_is_a_value(tmp_path):
    path = tmp_path / "l.csv"
    path.write_text(f"id,y\na,{LABEL_LIMIT!r}\nb,{-LABEL_LIMIT!r}\n")
    assert dict(read_labels(path, "y")) == {"a": LABEL_LIMIT, "b": -LABEL_LIMIT}


@pytest.mark.parametrize("content, words", [
    (b"id,y\n,1\n", [":2: no id"]),
    (b"id,y,y\na,1,2\n", ["2 columns are named 'y'"]),
    (b"id,y\na\n", [":2: id a has no y cell"]),
    (b"", ["empty labels file"]),
    (b"id,y\na,1\n" + b"x" * (2 << 20), ["a line longer than"]),
    (b"id,y\na,\x001\n", ["binary file"]),
    ("id\ty\na\t1\n".encode("utf-16"), ["UTF-16 text", "save it as CSV UTF-8"]),  # Excel's "Unicode text"
    # a small graph file: its signature's CRLF ends the first "line" before any NUL
    (b"\x89HDF\r\n\x1a\n" + b"\x00\x08" * 100, ["binary file (HDF5: a graph file?)"]),
])
def test_malformed_labels_are_one_line(tmp_path, content, words):
    path = tmp_path / "l.csv"
    path.write_bytes(content)
    with pytest.raises(InputError) as raised:
        read_labels(path, "y")
    assert "\n" not in str(raised.value) and str(path) in str(raised.value)
    for w in words:
        assert w in str(raised.value)


def test_text_lines_says_where_the_text_stops_being_utf8(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(b"\xef\xbb\xbfid\n" + b"abc\n" * 2000 + "caf\u00e9\n".encode("latin-1"))
    lines = text_lines(path, "a test file")
    assert next(lines) == "id\n"  # the byte-order mark dropped
    with pytest.raises(InputError, match=f"not UTF-8 text at byte {3 + 3 + 4 * 2000 + 3}"):
        list(lines)


@pytest.mark.parametrize("end", ["\r", "\r\n", "\n"], ids=["CR (CSV for Macintosh)", "CRLF", "LF"])
def test_labels_and_split_files_read_with_any_line_end(tmp_path, end):
    """A labels or split file saved with CR-only line ends (Excel's "CSV (Macintosh)") was one line: refused
    (the structure readers took CR already). Each line end gives the same values, and only these three
    cut a line: U+2028 and a form feed stay inside an id."""
    from srscreen.trainer.split import read_split_file

    ids = [f"mp-{i}" for i in range(3000)] + ["odd\u2028id", "odd\x0cid"]
    labels, split = tmp_path / "l.csv", tmp_path / "s.csv"
    labels.write_bytes(end.join(["material_id,y", *(f"{i},{n}.5" for n, i in enumerate(ids))]).encode() + end.encode())
    split.write_bytes(end.join(["id,split", *(f"{i},{('train', 'val', 'test')[n % 3]}" for n, i in enumerate(ids))]
                               ).encode())  # no end on the last line
    assert read_labels(labels, "y") == {i: n + 0.5 for n, i in enumerate(ids)}
    assert read_split_file(split) == {i: ("train", "val", "test")[n % 3] for n, i in enumerate(ids)}
    lines = list(text_lines(labels, "a labels CSV"))
    assert len(lines) == len(ids) + 1 and all(line.endswith("\n") and "\r" not in line for line in lines)


def test_ids_from_file_names_with_outer_spaces_find_their_labels_and_split(tmp_path):
    """`mp-1 .cif` gives the id `mp-1 `, while labels and split files are read stripped: its row `mp-1`
    matched nothing. The stripped form finds it, unless another id claims that form (then it is counted
    as unmatched, not guessed)."""
    from srscreen.trainer.split import make_split

    ids = ["mp-1 ", " mp-2", "mp-3", "a", "a ", " b", "b "]
    labels = {"mp-1": 1.0, "mp-2": 2.0, "mp-3": 3.0, "a": 4.0, "b": 5.0}
    matched = match(ids, labels)
    assert dict(zip(matched.positions.tolist(), matched.values.tolist())) == {0: 1.0, 1: 2.0, 2: 3.0, 3: 4.0}
    assert (matched.missing_in_labels, matched.missing_in_graphs) == (3, 1)  # "a ", " b", "b "; label "b"
    split = tmp_path / "split.csv"
    split.write_text("id,split\nmp-1,val\nmp-2,test\nmp-3,train\na,train\n")
    parts = make_split(ids, matched.positions, 0, 0.1, 0.1, split)
    assert (parts.train.tolist(), parts.val.tolist(), parts.test.tolist()) == ([2, 3], [0], [1])


@pytest.mark.slow
def test_a_graph_file_given_as_a_ranking_in_a_real_process(data):
    proc = subprocess.run([*SRSCREEN, "merge", str(data["ranking"]), str(data["graphs"])], capture_output=True,
                          text=True, env=subprocess_env(), timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == "" and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "g.h5: binary file" in proc.stderr


def test_split_file_with_one_id_in_two_parts_is_refused(tmp_path):
    from srscreen.trainer.split import read_split_file

    path = tmp_path / "s.csv"
    path.write_text("id,split\na,train\nb,val\na,train\nb,test\n")
    with pytest.raises(InputError, match=re.escape(f"{path}:5: b is given to test and, on an earlier line, to val")):
        read_split_file(path)


def test_a_plot_format_matplotlib_does_not_write_is_one_line(data):
    pytest.importorskip("matplotlib")
    plot = data["root"] / "parity.txt"
    result = cli("evaluate", data["graphs"], "--labels", data["labels"], "--model", data["model"], "--plot", plot)
    assert_usage_error(result, f"--plot {plot}", "'txt'")
    assert not plot.exists()
