"""Inputs that could hang featurize, flood its memory or stop it: FIFOs, sockets and devices, decompression
bombs and endless lines, file names that are not UTF-8, and -j 1000. Each becomes a failure with its
reason (or one line, given as the source), and everything else is featurized."""

from __future__ import annotations

import bz2
import gzip
import json
import os
import socket
import subprocess
import threading
import time
import zipfile
from pathlib import Path

import pytest
from conftest import cif_text, extxyz_text
from helpers.screening_data import SRSCREEN, assert_usage_error, cli, subprocess_env

import srscreen.data.featurize as featurize_module
from srscreen.data.backends import local_workers
from srscreen.data.featurize import FeaturizeOptions, featurize
from srscreen.data.graph_file import GraphFile
from srscreen.io.items import parse_item
from srscreen.io.parsed import Parsed, ParseFailure
from srscreen.io.sources import Item, iter_inputs

MB = 1 << 20


def _outcomes(source: Path, max_bytes: int) -> dict[str, str]:
    """id -> "ok" or the failure reason, for every structure `iter_inputs` and `parse_item` find."""
    found = {}
    for item in iter_inputs(source, max_bytes=max_bytes):
        if isinstance(item, Item):
            for parsed in parse_item(item, "fail", max_bytes):
                found[parsed.id] = "ok" if isinstance(parsed, Parsed) else parsed.reason
    return found


def _failures(out: Path) -> dict[str, str]:
    with GraphFile(out) as graphs:
        return {f.source.rsplit("/", 1)[-1]: f.reason for f in graphs.failures()}


@pytest.fixture
def good_cif(prototypes) -> str:
    return cif_text(prototypes["NaCl"])


def test_every_kind_of_oversized_input_is_a_failure_read_no_further(tmp_path, prototypes, good_cif):
    """With a 1 MB limit: a .gz, .bz2 and zip member inflating to 4 MB, a plain 4 MB file, a JSON line, an
    extxyz frame and a JSON document over the limit, and an extxyz header claiming 10^12 atoms."""
    root = tmp_path / "in"
    root.mkdir()
    (root / "good.cif").write_text(good_cif)
    padding = "#" * (4 * MB) + "\n"
    (root / "bomb.cif.gz").write_bytes(gzip.compress((padding + good_cif).encode()))
    (root / "bomb2.cif.bz2").write_bytes(bz2.compress((padding + good_cif).encode()))
    (root / "big.cif").write_text(padding + good_cif)
    with zipfile.ZipFile(root / "a.zip", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("inner/zbomb.cif", padding + good_cif)
        z.writestr("inner/fine.cif", good_cif)
    line = json.dumps(prototypes["Cu"].as_dict())
    long_line = json.dumps({**prototypes["Cu"].as_dict(), "padding": "x" * (2 * MB)})
    (root / "lines.jsonl").write_text(f"{line}\n{long_line}\n{line}\n")
    frames = extxyz_text([prototypes["Fe"]])
    (root / "frames.extxyz").write_text(frames + "1000000000000\nendless\n" + "H 0 0 0\n" * 300_000)
    (root / "doc.json").write_text(json.dumps({**prototypes["Cu"].as_dict(), "padding": "x" * (2 * MB)}))
    got = _outcomes(root, MB)
    assert got["good"] == "ok" and got["fine"] == "ok" and got["lines:0"] == "ok" and got["lines:2"] == "ok"
    assert got["frames:0"] == "ok"
    for id_ in ("bomb", "bomb2", "big"):
        assert got[id_].startswith("larger than 1 MB after decompression"), (id_, got[id_])
    assert "1 MB" in got["doc"], got["doc"]
    too_large = [reason for id_, reason in got.items() if "larger than 1 MB" in reason]
    assert len(too_large) == 6, got  # bomb, bomb2, big, the zip member, the long line, the endless frame
    assert _outcomes(root, 64 * MB)["bomb"] != got["bomb"]  # the limit decides, nothing else


def test_fifos_sockets_and_devices_are_failures_never_opened(tmp_path, good_cif):
    root = tmp_path / "in"
    root.mkdir()
    (root / "good.cif").write_text(good_cif)
    os.mkfifo(root / "x.cif")
    (root / "zero.cif").symlink_to("/dev/zero")
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(root / "s.cif"))
    except OSError:
        pass  # no unix sockets here: the FIFO and the device still count
    out = tmp_path / "out.h5"
    done = threading.Event()
    result = {}

    def run() -> None:
        result["summary"] = featurize(root, out, jobs=1)
        done.set()

    threading.Thread(target=run, daemon=True).start()
    assert done.wait(120), "featurize blocked on a FIFO"
    sock.close()
    assert result["summary"].structures == 1
    failures = _failures(out)
    assert failures["x.cif"] == "not a regular file (a FIFO)"
    assert failures["zero.cif"] == "not a regular file (a character device)"
    if "s.cif" in failures:
        assert failures["s.cif"] == "not a regular file (a socket)"


def test_a_fifo_or_device_given_as_the_source_is_one_line(tmp_path):
    os.mkfifo(tmp_path / "x.cif")
    assert_usage_error(cli("featurize", tmp_path / "x.cif", tmp_path / "out.h5"), "x.cif", "not a regular file (a FIFO)")
    assert_usage_error(cli("featurize", "/dev/zero", tmp_path / "out.h5"), "not a regular file (a character device)")
    assert not (tmp_path / "out.h5.partial").exists()


def test_a_name_that_is_not_utf8_is_featurized_with_an_escaped_id(tmp_path, good_cif, prototypes):
    root = tmp_path / "in"
    root.mkdir()
    (root / "good.cif").write_text(good_cif)
    bad = os.fsencode(root) + b"/bad\xff.cif"
    with open(bad, "w") as f:
        f.write(cif_text(prototypes["Cu"]))
    out = tmp_path / "out.h5"
    summary = featurize(root, out, options=FeaturizeOptions(shard_size=1), jobs=1)
    assert (summary.structures, summary.failed) == (2, 0)
    with GraphFile(out) as graphs:
        assert sorted(graphs.ids()) == ["bad\\xff", "good"]
    again = featurize(root, out, options=FeaturizeOptions(shard_size=1), jobs=1)  # the same keys on a rerun
    assert (again.structures, again.resumed) == (2, 2)
    result = cli("info", out, "--ids")
    assert result.exit_code == 0 and "bad\\xff" in result.stdout.split()


def test_ids_with_control_characters_are_escaped_one_line_each(tmp_path, good_cif, prototypes):
    """A newline in a file name (or in an entry's own id) printed one id over two lines in `info --ids`
    and in predict's CSV (a quoted field: valid CSV, but `sort` and `awk` cut the row); a terminal escape
    coloured the output. Each is written \\xNN, as bytes that are not UTF-8 are."""
    import json

    root = tmp_path / "in"
    root.mkdir()
    (root / "two\nlines.cif").write_text(good_cif)
    (root / "tab\there.cif").write_text(cif_text(prototypes["Cu"]))
    (root / "esc\x1b[31m.cif").write_text(cif_text(prototypes["Fe"]))
    (root / "broken\r.cif").write_text("data_x\n")
    (root / "entries.json").write_text(json.dumps([{"entry_id": "mp-1\n", "structure": prototypes["ZnO"].as_dict()}]))
    want = ["esc\\x1b[31m", "mp-1\\x0a", "tab\\x09here", "two\\x0alines"]
    out = tmp_path / "out.h5"
    summary = featurize(root, out, options=FeaturizeOptions(shard_size=2), jobs=1)
    assert (summary.structures, summary.failed) == (4, 1)
    with GraphFile(out) as graphs:
        assert sorted(graphs.ids()) == want
        assert [(f.id, f.source.rsplit("/", 1)[-1]) for f in graphs.failures()] == [("broken\\x0d", "broken\\x0d.cif")]
    again = featurize(root, out, options=FeaturizeOptions(shard_size=2), jobs=1)  # the same keys on a rerun
    assert again.resumed == 5
    result = cli("info", out, "--ids")
    assert result.exit_code == 0 and sorted(result.stdout.splitlines()) == want
    result = cli("predict", out, "--model", "sr-cgcnn-ef", "--threads", "1", "-q")
    assert result.exit_code == 0, result.output
    rows = result.stdout.splitlines()[1:]
    assert sorted(row.split(",")[1] for row in rows) == want


def test_jobs_never_exceed_the_cores_nor_the_tasks(tmp_path, good_cif, monkeypatch):
    from joblib import cpu_count

    assert local_workers(1000) == cpu_count() and local_workers(-1) == cpu_count() and local_workers(1) == 1
    root = tmp_path / "in"
    root.mkdir()
    for i in range(3):
        (root / f"s{i}.cif").write_text(good_cif)
    asked = []
    real = featurize_module.compute_backend

    def spy(backend="local", *, jobs=-1, **kwargs):
        asked.append(jobs)
        return real(backend, jobs=jobs, **kwargs)

    monkeypatch.setattr(featurize_module, "compute_backend", spy)
    featurize(root, tmp_path / "out.h5", jobs=1000)
    assert asked == [1]  # three files are one task: one worker
    if cpu_count() < 1000:
        result = cli("featurize", root, tmp_path / "cli.h5", "-j", "1000", "-q")
        assert result.exit_code == 0
        assert f"--jobs 1000 capped to {cpu_count()}" in result.stderr


def _tree_rss(pid: int) -> int:
    """Resident bytes of `pid` and every process below it, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, []))
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


@pytest.mark.slow
def test_peak_memory_stays_under_1gb_with_decompression_bombs(tmp_path, prototypes):
    """A 1.5 MB .cif.gz and a zip member that inflate to 1.5 GB each, among good files: the bombs are
    failures with their reason, the others are featurized, and the process tree stays under 1 GB."""
    root = tmp_path / "in"
    root.mkdir()
    for i, name in enumerate(("NaCl", "Cu", "Fe", "ZnO", "SrTiO3")):
        (root / f"{i}-{name}.cif").write_text(cif_text(prototypes[name]))
    zeros = b"\0" * (16 * MB)
    with gzip.open(root / "bomb.cif.gz", "wb", compresslevel=1) as f:
        for _ in range(96):
            f.write(zeros)
    with zipfile.ZipFile(root / "bombs.zip", "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        with z.open("bomb.cif", "w", force_zip64=True) as member:
            for _ in range(96):
                member.write(zeros)
    out = tmp_path / "out.h5"
    run = subprocess.Popen([*SRSCREEN, "featurize", root, out, "-j", "2", "-q"], env=subprocess_env(),
                           stderr=subprocess.PIPE, text=True)
    peak = 0
    while run.poll() is None:
        peak = max(peak, _tree_rss(run.pid))
        time.sleep(0.02)
    assert run.returncode == 0, run.stderr.read()
    assert peak < 1 << 30, f"peak RSS of the process tree {peak / MB:.0f} MB"
    failures = _failures(out)
    assert failures["bomb.cif.gz"].startswith("larger than 64 MB after decompression"), failures
    assert failures["bombs.zip::bomb.cif"].startswith("larger than 64 MB after decompression"), failures
    with GraphFile(out) as graphs:
        assert len(graphs) == 5


def test_max_file_mb_is_checked(tmp_path, good_cif):
    (tmp_path / "a.cif").write_text(good_cif)
    for bad in ("0", "-1", "nan"):
        assert_usage_error(cli("featurize", tmp_path / "a.cif", tmp_path / "o.h5", "--max-file-mb", bad), "--max-file-mb")
    with pytest.raises(Exception, match="max_file_mb"):
        featurize(tmp_path / "a.cif", tmp_path / "o.h5", options=FeaturizeOptions(max_file_mb=0))
