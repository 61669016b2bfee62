"""Misuse beyond issue 25's list, found by trying srscreen as careless and hostile users do: each case
ends with the right result, one line naming the file or flag, or a recorded failure with its reason.
Every input is built here from the pymatgen prototypes."""

from __future__ import annotations

import resource
import subprocess

import pytest
from conftest import cif_text, graphs_in
from helpers.screening_data import SRSCREEN, subprocess_env

from srscreen.data.graph_file import GraphFile


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))


@pytest.mark.slow
def test_a_giant_sparse_cell_is_a_failure_and_far_out_atoms_are_wrapped(tmp_path, prototypes):
    """A 10^6 Å cell asked the neighbour search for petabytes (the OOM killer ended the whole run) and a
    fractional coordinate of 10^12 for 10^12 periodic images: now the first is a failure with its reason,
    the second the crystal it describes, and the run goes on, under a 4 GB address-space limit."""
    from pymatgen.core import Lattice, Structure

    src = tmp_path / "in"
    src.mkdir()
    nacl = prototypes["NaCl"].get_primitive_structure()
    (src / "good.cif").write_text(cif_text(nacl))
    giant = Structure(Lattice.cubic(1e6), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    (src / "giant.cif").write_text(cif_text(giant))
    far = cif_text(nacl).replace("  Na  Na1  1  0.00000000  0.00000000  0.00000000  1",
                                 "  Na  Na1  1  1000000000000.0  0.00000000  -3000000.0  1")
    assert far != cif_text(nacl)
    (src / "far.cif").write_text(far)
    out = tmp_path / "g.h5"
    run = subprocess.run([*SRSCREEN, "featurize", src, out, "-j", "1", "-q"], capture_output=True, text=True,
                         env=subprocess_env(), preexec_fn=_limit_memory, timeout=600)
    assert run.returncode == 0, run.stderr
    with GraphFile(out) as graphs:
        reasons = {f.id: f.reason for f in graphs.failures()}
    assert list(reasons) == ["giant"] and "too sparse a cell for the neighbour search" in reasons["giant"]
    graphs = graphs_in(out)
    assert sorted(graphs) == ["far", "good"]
    assert graphs["far"].nbr_dist.tolist() == pytest.approx(graphs["good"].nbr_dist.tolist(), abs=1e-4)


def _set_zip_header(data: bytes, member: int, local_offset: int, central_offset: int, value: int) -> bytes:
    """`data` with a 2-byte field of the `member`-th zip entry set in both its local and central headers."""
    out = bytearray(data)
    for signature, offset in ((b"PK\x03\x04", local_offset), (b"PK\x01\x02", central_offset)):
        at = -1
        for _ in range(member + 1):
            at = out.index(signature, at + 1)
        out[at + offset : at + offset + 2] = value.to_bytes(2, "little")
    return bytes(out)


def test_archive_members_that_cannot_be_read_are_failures_not_a_traceback_or_silence(tmp_path, prototypes):
    """An encrypted zip member stopped the run with zipfile's 'password required' traceback, a compression
    method zipfile lacks likewise; hard links, symbolic links and devices in a tar vanished without a
    word. Each is now a failure naming the member and why, and the readable members are featurized."""
    import io
    import tarfile
    import zipfile

    from helpers.screening_data import cli

    nacl, cu = cif_text(prototypes["NaCl"]).encode(), cif_text(prototypes["Cu"]).encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("locked.cif", nacl)
        z.writestr("deflate64.cif", nacl)
        z.writestr("open.cif", cu)
    data = _set_zip_header(buffer.getvalue(), 0, 6, 8, 0x1 | 0x8)  # general flags: encrypted
    data = _set_zip_header(data, 1, 8, 10, 9)  # compression method 9, deflate64
    (tmp_path / "a.zip").write_bytes(data)
    with tarfile.open(tmp_path / "b.tar", "w") as t:
        info = tarfile.TarInfo("real.cif")
        info.size = len(nacl)
        t.addfile(info, io.BytesIO(nacl))
        for name, kind in (("hard.cif", tarfile.LNKTYPE), ("soft.cif", tarfile.SYMTYPE), ("dev.cif", tarfile.CHRTYPE)):
            link = tarfile.TarInfo(name)
            link.type, link.linkname = kind, "real.cif"
            t.addfile(link)
    for archive, good, reasons in (
        ("a.zip", "open", {"locked": "encrypted zip member", "deflate64": "unreadable zip member"}),
        ("b.tar", "real", {"hard": "is a hard link", "soft": "is a symbolic link", "dev": "not a regular file"}),
    ):
        out = tmp_path / f"{archive}.h5"
        result = cli("featurize", tmp_path / archive, out, "-j", "1", "-q")
        assert result.exit_code == 0, (result.stderr, result.exception)
        with GraphFile(out) as graphs:
            assert list(graphs.ids()) == [good]
            found = {f.id: f.reason for f in graphs.failures()}
        assert sorted(found) == sorted(reasons)
        for id_, words in reasons.items():
            assert words in found[id_], found[id_]


def test_a_source_that_is_a_link_loop_is_one_line(tmp_path):
    """`featurize loop.cif OUT` where loop.cif links to itself stopped with pathlib's 'Symlink loop' traceback."""
    from helpers.screening_data import assert_usage_error, cli

    (tmp_path / "loop.cif").symlink_to("loop.cif")
    result = cli("featurize", tmp_path / "loop.cif", tmp_path / "g.h5", "-j", "1", "-q")
    assert_usage_error(result, "loop.cif", "Too many levels of symbolic links")
    assert not (tmp_path / "g.h5").exists() and not (tmp_path / "g.h5.partial").exists()


def test_an_out_that_is_a_broken_link_is_the_users_file(tmp_path, prototypes):
    """A symbolic link leading nowhere (or to itself) at OUT was replaced by the output without
    --overwrite: Path.exists() follows links, so the link counted as no file."""
    from helpers.screening_data import assert_usage_error, cli

    src = tmp_path / "in"
    src.mkdir()
    (src / "NaCl.cif").write_text(cif_text(prototypes["NaCl"]))
    graphs = tmp_path / "g.h5"
    assert cli("featurize", src, graphs, "-j", "1", "-q").exit_code == 0
    (tmp_path / "nowhere").symlink_to("missing")
    (tmp_path / "loop").symlink_to("loop")
    for link in ("nowhere", "loop"):
        out = tmp_path / link
        for command in (["featurize", src, out, "-j", "1", "-q"], ["predict", graphs, "-o", out, "-q"],
                        ["merge", tmp_path / "none.csv", "-o", out]):
            assert_usage_error(cli(*command), str(out), "symbolic link that leads nowhere")
            assert out.is_symlink() and not out.exists(), command
    result = cli("featurize", src, tmp_path / "nowhere", "-j", "1", "-q", "--overwrite")
    assert result.exit_code == 0 and not (tmp_path / "nowhere").is_symlink()


def test_threads_beyond_the_cores_are_capped_with_a_warning(tmp_path, prototypes, monkeypatch):
    """`predict --threads 100000` made torch start threads until the process segfaulted."""
    import torch
    from helpers.screening_data import cli

    from srscreen.data.backends import local_workers

    asked: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", asked.append)
    src = tmp_path / "in"
    src.mkdir()
    (src / "NaCl.cif").write_text(cif_text(prototypes["NaCl"]))
    assert cli("featurize", src, tmp_path / "g.h5", "-j", "1", "-q").exit_code == 0
    result = cli("predict", tmp_path / "g.h5", "--threads", "100000", "-q")
    assert result.exit_code == 0, (result.stderr, result.exception)
    assert asked == [local_workers(100000)]
    assert f"--threads 100000 capped to {asked[0]}" in result.stderr


@pytest.mark.parametrize("policy", ["fail", "majority"])
def test_impossible_occupancies_are_failures_under_every_policy(tmp_path, prototypes, policy):
    """Occupancies no site can have (-1, 0, 1.5, or 0.8 + 0.8 at one position): 'majority' featurized
    each as a full site, and 'fail' took 1.5 for one; in CIF (fast and full paths) and pymatgen JSON."""
    import json

    from helpers.screening_data import cli

    src = tmp_path / "in"
    src.mkdir()
    nacl = prototypes["NaCl"].get_primitive_structure()
    text = cif_text(nacl)
    na = "  Na  Na1  1  0.00000000  0.00000000  0.00000000  1\n"
    assert na in text
    for name, occupancy in (("neg", "-1"), ("zero", "0"), ("over", "1.5")):
        (src / f"{name}.cif").write_text(text.replace(na, na[:-2] + occupancy + "\n"))
    (src / "sum.cif").write_text(text.replace(na, na[:-2] + "0.8\n" + na.replace("Na  Na1", "K  K1")[:-2] + "0.8\n"))
    (src / "good.cif").write_text(text)
    for name, species in (("neg", [("Na", -1.0)]), ("over", [("Na", 1.5)]), ("sum", [("Na", 0.8), ("K", 0.8)])):
        d = nacl.as_dict()
        site = next(s for s in d["sites"] if s["species"][0]["element"] == "Na")
        site["species"] = [{"element": e, "occu": o} for e, o in species]
        (src / f"{name}_json.json").write_text(json.dumps(d))
    out = tmp_path / "g.h5"
    result = cli("featurize", src, out, "-j", "1", "-q", "--on-disorder", policy)
    assert result.exit_code == 0, (result.stderr, result.exception)
    with GraphFile(out) as graphs:
        assert list(graphs.ids()) == ["good"]
        reasons = {f.id: f.reason for f in graphs.failures()}
    assert sorted(reasons) == sorted(["neg", "zero", "over", "sum", "neg_json", "over_json", "sum_json"])
    assert all(r.startswith("impossible occupancy") for r in reasons.values()), reasons
    assert "Na1:0.8 K1:0.8" in reasons["sum"]


@pytest.mark.parametrize("overwrite", [False, True])
def test_an_out_that_appears_while_predict_or_merge_runs_is_kept_without_overwrite(tmp_path, prototypes, monkeypatch,
                                                                                    overwrite):
    """Two `predict -o same.csv` at once both passed the check at their start, and the later rename
    replaced the other's table without --overwrite (so would a file the user made meanwhile)."""
    from helpers.screening_data import assert_usage_error, cli

    import srscreen.screening.ranking as ranking

    src = tmp_path / "in"
    src.mkdir()
    (src / "NaCl.cif").write_text(cif_text(prototypes["NaCl"]))
    (src / "Cu.cif").write_text(cif_text(prototypes["Cu"]))
    assert cli("featurize", src, tmp_path / "g.h5", "-j", "1", "-q").exit_code == 0
    part = tmp_path / "part.csv"
    assert cli("predict", tmp_path / "g.h5", "-o", part, "-q").exit_code == 0
    real = ranking.write_table
    for command in (["predict", tmp_path / "g.h5", "-q"], ["merge", part]):
        out = tmp_path / f"{command[0]}.csv"
        out.unlink(missing_ok=True)

        def racing(table, stream, out=out):
            out.write_text("another process's table\n")
            return real(table, stream)

        monkeypatch.setattr(ranking, "write_table", racing)
        result = cli(*command, "-o", out, *(["--overwrite"] if overwrite else []))
        if overwrite:
            assert result.exit_code == 0, (result.stderr, result.exception)
            assert out.read_text() == part.read_text()
        else:
            assert_usage_error(result, str(out), "appeared while this command ran", "--overwrite")
            assert out.read_text() == "another process's table\n"
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")) == []


def test_long_out_names_work_or_are_refused_before_any_work(tmp_path, prototypes):
    """`predict -o` with a legal 255-byte name predicted everything, then failed: its temporary name
    `.NAME.XXXXXXXX.tmp` was too long. featurize and train failed on OUT.lock with an errno line naming
    a file the user never gave. Now -o takes any legal name, and an OUT too long for the files written
    beside it (OUT.partial/, OUT.log.jsonl) is refused first, naming OUT."""
    from helpers.screening_data import assert_usage_error, cli

    src = tmp_path / "in"
    src.mkdir()
    (src / "NaCl.cif").write_text(cif_text(prototypes["NaCl"]))
    result = cli("featurize", src, tmp_path / ("g" * 250), "-j", "1", "-q")
    assert_usage_error(result, "name too long", "at most 247 bytes")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]
    graphs = tmp_path / ("g" * 247)
    assert cli("featurize", src, graphs, "-j", "1", "-q").exit_code == 0
    out = tmp_path / ("r" * 255)
    result = cli("predict", graphs, "-o", out, "-q")
    assert result.exit_code == 0, (result.stderr, result.exception)
    assert out.read_text().startswith("rank,id,")


def test_a_poscar_without_its_counts_line_says_so(tmp_path, prototypes):
    """The failure's reason was pymatgen's 'list index out of range'."""
    from conftest import poscar_text
    from helpers.screening_data import cli

    lines = poscar_text(prototypes["NaCl"]).splitlines()
    assert lines[5].split() == ["Na", "Cl"] and lines[6].split() == ["4", "4"]
    src = tmp_path / "in"
    src.mkdir()
    (src / "nocounts.vasp").write_text("\n".join(lines[:6] + lines[7:]) + "\n")
    (src / "good.vasp").write_text("\n".join(lines) + "\n")
    out = tmp_path / "g.h5"
    assert cli("featurize", src, out, "-j", "1", "-q").exit_code == 0
    with GraphFile(out) as graphs:
        assert list(graphs.ids()) == ["good"]
        assert [f.reason for f in graphs.failures()] == [
            "invalid POSCAR: line 7 must give the number of atoms of each element"]


def test_a_large_max_file_mb_reads_every_file(tmp_path, prototypes):
    """--max-file-mb 1e6 failed every file with 'cannot read: MemoryError' (read(n) sets n bytes aside
    first), and 1e30 stopped an extxyz with an OverflowError traceback."""
    import gzip

    from conftest import extxyz_text
    from helpers.screening_data import assert_usage_error, cli

    src = tmp_path / "in"
    src.mkdir()
    (src / "NaCl.cif").write_text(cif_text(prototypes["NaCl"]))
    (src / "Cu.cif.gz").write_bytes(gzip.compress(cif_text(prototypes["Cu"]).encode()))
    (src / "frames.extxyz").write_text(extxyz_text([prototypes["Fe"], prototypes["ZnO"]]))
    out = tmp_path / "g.h5"
    result = cli("featurize", src, out, "-j", "1", "-q", "--max-file-mb", "1e6")
    assert result.exit_code == 0, (result.stderr, result.exception)
    with GraphFile(out) as graphs:
        assert sorted(graphs.ids()) == ["Cu", "NaCl", "frames:0", "frames:1"]
        assert graphs.failures() == []
    assert_usage_error(cli("featurize", src, tmp_path / "h.h5", "-j", "1", "--max-file-mb", "1e30"),
                       "--max-file-mb", "at most")


def test_json_lines_that_are_not_objects_and_a_bom_lose_nothing(tmp_path, prototypes):
    """A JSON line `[1, 2]` stopped its whole chunk with AttributeError: the good lines after it were
    lost under one failure for the file. A .json starting with a byte-order mark was refused."""
    import json

    from helpers.screening_data import cli

    src = tmp_path / "in"
    src.mkdir()
    nacl, cu = json.dumps(prototypes["NaCl"].as_dict()), json.dumps(prototypes["Cu"].as_dict())
    (src / "lines.jsonl").write_text("\n".join([nacl, "[1, 2]", '"text"', cu, nacl]) + "\n")
    (src / "bom.json").write_bytes(b"\xef\xbb\xbf" + cu.encode())
    out = tmp_path / "g.h5"
    result = cli("featurize", src, out, "-j", "1", "-q")
    assert result.exit_code == 0, (result.stderr, result.exception)
    with GraphFile(out) as graphs:
        assert sorted(graphs.ids()) == ["bom", "lines:0", "lines:3", "lines:4"]
        reasons = {f.id: f.reason for f in graphs.failures()}
    assert reasons == {"lines:1": "not a pymatgen structure dict: a JSON list",
                       "lines:2": "not a pymatgen structure dict: a JSON str"}


def test_an_element_table_of_empty_vectors_is_refused(tmp_path, prototypes):
    """Every structure failed as 'element Na (Z=11) has no features in the element table'."""
    import json

    from helpers.screening_data import assert_usage_error, cli

    src = tmp_path / "in"
    src.mkdir()
    (src / "NaCl.cif").write_text(cif_text(prototypes["NaCl"]))
    (tmp_path / "atom_init.json").write_text(json.dumps({"11": [], "17": []}))
    result = cli("featurize", src, tmp_path / "g.h5", "--atom-features", tmp_path / "atom_init.json", "-j", "1")
    assert_usage_error(result, "atom_init.json", "the vectors are empty")


def test_out_dash_is_stdout_for_predict_and_merge(tmp_path, prototypes, monkeypatch):
    """`predict -o - | head` wrote a file named '-' in the current folder and the pipe got nothing."""
    from helpers.screening_data import cli

    src = tmp_path / "in"
    src.mkdir()
    (src / "NaCl.cif").write_text(cif_text(prototypes["NaCl"]))
    assert cli("featurize", src, tmp_path / "g.h5", "-j", "1", "-q").exit_code == 0
    part = tmp_path / "part.csv"
    assert cli("predict", tmp_path / "g.h5", "-o", part, "-q").exit_code == 0
    monkeypatch.chdir(tmp_path)
    for command in (["predict", tmp_path / "g.h5", "-q"], ["merge", part]):
        result = cli(*command, "-o", "-")
        assert result.exit_code == 0, (result.stderr, result.exception)
        assert result.stdout == part.read_text()
        assert not (tmp_path / "-").exists()


@pytest.mark.parametrize("overwrite", [False, True])
def test_out_and_damaged_list_that_are_one_file_are_refused_before_any_work(tmp_path, prototypes, monkeypatch,
                                                                              overwrite):
    """`predict --skip-damaged -o x.csv --damaged-list x.csv`: with --overwrite the ranking replaced the list
    of skipped structures without a word (the warning still named the file); without it the ranking was
    refused as 'appeared while this command ran'. The default list (GRAPHS.damaged.csv here) counts too."""
    import h5py
    from helpers.screening_data import assert_usage_error, cli

    src = tmp_path / "in"
    src.mkdir()
    for name in ("NaCl", "Cu", "Fe"):
        (src / f"{name}.cif").write_text(cif_text(prototypes[name]))
    graphs = tmp_path / "g.h5"
    assert cli("featurize", src, graphs, "-j", "1", "-q", "--shard-size", "1").exit_code == 0
    with h5py.File(graphs, "r") as f:
        offset = f["shards/000001/nbr_dist"].id.get_offset()
    with graphs.open("r+b") as f:
        f.seek(offset)
        f.write(b"\xff\xff\xff\xff")
    monkeypatch.chdir(tmp_path)
    flags = ["--overwrite"] if overwrite else []
    for out, listing in (("x.csv", ["--damaged-list", "x.csv"]), ("g.h5.damaged.csv", [])):
        result = cli("predict", graphs, "-q", "--skip-damaged", "-o", out, *listing, *flags)
        assert_usage_error(result, "--out and --damaged-list are the same file", out)
        assert not (tmp_path / out).exists()
