"""A full disk at every point where featurize and fine-tuning write, and featurize killed: each run ends
with one clean error (exit 2 from the command line), no live worker, and every file whole or absent: never
a half-written graph file that `info --verify` passes, never a half-written checkpoint. With space again,
the same command resumes to a complete file.

Faults are injected where srscreen writes (the file object under `hdf5_out`, the atomic rename, the
manifest, torch.save) and, when the tests run as root, by a real small tmpfs under a real process.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import h5py
import pytest
import torch
from conftest import cif_text
from helpers.screening_data import (
    SRSCREEN,
    TINY,
    cli,
    crystals,
    featurize_db,
    one_thread,  # noqa: F401 - fixture
    subprocess_env,
    target_values,
    write_json_db,
    write_labels,
)

import srscreen.data.hdf5_out as hdf5_out
import srscreen.io.atomic_write as atomic_write
from srscreen.data.featurize import FeaturizeOptions, featurize
from srscreen.data.graph_file import GraphFile, partial_dir
from srscreen.data.integrity import read_checked
from srscreen.errors import DiskFullError
from srscreen.graph.settings import GraphSettings

SHARD = 16  # structures per part: the test database makes several parts
OPTIONS = FeaturizeOptions(graph=GraphSettings(radius=6.0, max_nbr=8), shard_size=SHARD)
NO_SPACE = "no space left on device"


@pytest.fixture(scope="module")
def source(tmp_path_factory, prototypes) -> Path:
    return write_json_db(tmp_path_factory.mktemp("fault") / "db", crystals(prototypes, copies=2))


@pytest.fixture(scope="module")
def reference(source, tmp_path_factory) -> dict:
    """The ids a complete run gives, and the bytes each file srscreen writes through hdf5_out takes, in order."""
    disk = _Disk(capacity=None)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(hdf5_out, "open", disk.open, raising=False)
        out = featurize_db(source, tmp_path_factory.mktemp("ref") / "out.h5", shard_size=SHARD)  # named as the runs name it
    with GraphFile(out) as graphs:
        ids = sorted(graphs.ids())
    return {"ids": ids, "writes": disk.written}


class _Disk:
    """A device of `capacity` bytes under every file hdf5_out writes: a write past it is cut short there,
    then fails with ENOSPC, as a full file system does. `written` lists (file name, bytes) in order."""

    def __init__(self, capacity: int | None) -> None:
        self.left = capacity
        self.written: list[list] = []
        self.failed_in: str | None = None

    def open(self, path, mode="r", buffering=-1):
        self.written.append([re.sub(r"^\.(.*)\.[^.]+\.tmp$", r"\1", Path(path).name), 0])  # .NAME.XXXX.tmp -> NAME
        return _FillingFile(open(path, mode, buffering=buffering), self, self.written[-1])


class _FillingFile:
    def __init__(self, file, disk: _Disk, count: list) -> None:
        self._file, self._disk, self._count = file, disk, count

    def write(self, data) -> int:
        disk = self._disk
        n = len(data) if disk.left is None else min(len(data), disk.left)
        if n == 0 and len(data):
            disk.failed_in = disk.failed_in or self._count[0]
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        if disk.left is not None:
            disk.left -= n
        self._count[1] += n
        return self._file.write(bytes(memoryview(data)[:n]))

    def __getattr__(self, name):
        return getattr(self._file, name)


def _capacity(writes: list[list], stage: str) -> tuple[int, str]:
    """Bytes that fill the disk at `stage` of a run, and the name of the file written when it fills."""
    sizes = [n for _, n in writes]
    parts = [i for i, (name, _) in enumerate(writes) if name.startswith("part-")]
    out = len(writes) - 1  # OUT is written last
    assert len(parts) >= 3, writes
    if stage == "source listing":
        return 100, writes[0][0]
    if stage == "third part":
        return sum(sizes[: parts[2]]) + sizes[parts[2]] // 2, writes[parts[2]][0]
    if stage == "OUT, copying shards":
        return sum(sizes[:out]) + sizes[out] // 3, writes[out][0]
    assert stage == "OUT, tables and close"
    return sum(sizes[:out]) + sizes[out] - 200, writes[out][0]


def _no_temporary_files(folder: Path) -> None:
    left = [p for p in folder.rglob("*") if p.name.endswith(".tmp")]
    assert not left, left


def _parts_whole(out: Path) -> int:
    """Every part file left opens and passes its checksums; the structures they hold."""
    n = 0
    for part in sorted(partial_dir(out).glob("part-*.h5")):
        with h5py.File(part, "r") as f:
            read_checked(f, "done_keys")
            if "graphs" in f:
                n += len(read_checked(f["graphs"], "ids"))
    return n


def _complete(out: Path, ids: list[str]) -> None:
    result = cli("info", out, "--verify")
    assert result.exit_code == 0, (result.stdout, result.stderr)
    with GraphFile(out) as graphs:
        assert sorted(graphs.ids()) == ids


@pytest.mark.parametrize("stage", ["source listing", "third part", "OUT, copying shards", "OUT, tables and close"])
def test_a_full_disk_at_any_write_of_featurize_leaves_files_whole_or_absent(source, reference, tmp_path, monkeypatch,
                                                                             stage):
    capacity, filling = _capacity(reference["writes"], stage)
    disk = _Disk(capacity)
    monkeypatch.setattr(hdf5_out, "open", disk.open, raising=False)
    out = tmp_path / "out.h5"
    with pytest.raises(DiskFullError) as caught:
        featurize(source, out, options=OPTIONS, jobs=1)
    assert disk.failed_in == filling, (disk.failed_in, filling)
    message = str(caught.value)
    assert message.startswith(f"{out}: {NO_SPACE}") and "\n" not in message, message
    assert not out.exists()
    _no_temporary_files(tmp_path)
    kept = _parts_whole(out)
    if stage.startswith("OUT"):  # every structure is in a whole part: the rerun only consolidates
        assert kept == len(reference["ids"]) and "run the same command again to resume" in message
    monkeypatch.undo()
    summary = featurize(source, out, options=OPTIONS, jobs=1)
    assert summary.resumed == kept  # what the parts held is not featurized again
    _complete(out, reference["ids"])


def test_a_full_disk_at_the_rename_of_out_keeps_the_parts(source, reference, tmp_path, monkeypatch):
    out = tmp_path / "out.h5"
    real_replace = os.replace

    def replace(src, dst):
        if Path(dst) == out:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_replace(src, dst)

    monkeypatch.setattr(atomic_write.os, "replace", replace)
    with pytest.raises(DiskFullError, match=NO_SPACE):
        featurize(source, out, options=OPTIONS, jobs=1)
    monkeypatch.undo()
    assert not out.exists()
    _no_temporary_files(tmp_path)
    assert _parts_whole(out) == len(reference["ids"])
    assert featurize(source, out, options=OPTIONS, jobs=1).resumed >= len(reference["ids"])
    _complete(out, reference["ids"])


def test_a_full_disk_writing_the_manifest_is_one_line(source, reference, tmp_path, monkeypatch):
    out = tmp_path / "out.h5"
    real_write_text = Path.write_text

    def write_text(self, *args, **kwargs):
        if ".manifest.json." in self.name:
            real_write_text(self, "{", encoding="utf-8")  # a piece of it, then the device is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", write_text)
    result = cli("featurize", source, out, "--radius", "6", "--max-nbr", "8", "--shard-size", SHARD, "-j", "1", "-q")
    monkeypatch.undo()
    assert result.exit_code == 2 and "Traceback" not in result.output, (result.output, result.exception)
    line = result.stderr.strip()
    assert line.count("\n") == 0 and str(out) in line and NO_SPACE in line, line
    assert not (partial_dir(out) / "manifest.json").exists()
    _no_temporary_files(tmp_path)
    featurize(source, out, options=OPTIONS, jobs=1)
    _complete(out, reference["ids"])


# ---------------------------------------------------------------- fine-tuning's checkpoints


@pytest.fixture(scope="module")
def training(tmp_path_factory, prototypes) -> dict:
    root = tmp_path_factory.mktemp("ckpt")
    items = crystals(prototypes)
    graphs = featurize_db(write_json_db(root / "db", items), root / "g.h5")
    labels = write_labels(root / "labels.csv", target_values(items))
    base = root / "base.pt"
    result = cli("train", graphs, "--labels", labels, "--target", "band_gap", "-o", base, "--epochs", "1",
                 "--batch-size", "8", *TINY)
    assert result.exit_code == 0, (result.stderr, result.exception)
    return {"graphs": graphs, "labels": labels, "base": base}


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("how", ["ENOSPC", "writer without errno"])
def test_a_full_disk_at_a_finetune_checkpoint_keeps_the_last_whole_one(training, tmp_path, monkeypatch, how):
    """The second epoch's checkpoint cannot be written: one line, exit 2, and OUT.ckpt is still the first
    epoch's, whole (torch.save is cut off half-way, as on a full disk)."""
    real_save = torch.save
    saves = []

    def save(obj, f, *args, **kwargs):
        if ".ckpt." not in Path(f).name:
            return real_save(obj, f, *args, **kwargs)
        saves.append(Path(f))
        real_save(obj, f, *args, **kwargs)
        if len(saves) < 2:
            return None
        Path(f).write_bytes(Path(f).read_bytes()[: Path(f).stat().st_size // 2])
        if how == "ENOSPC":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        monkeypatch.setattr(atomic_write.os, "statvfs", lambda folder: os.statvfs_result((4096, 4096, 10, 0, 0, 10, 0, 0, 0, 255)))
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")

    monkeypatch.setattr(torch, "save", save)
    out = tmp_path / "tuned.pt"
    result = cli("finetune", training["graphs"], "--labels", training["labels"], "--target", "band_gap", "--from",
                 training["base"], "-o", out, "--epochs", "3", "--batch-size", "8", "--threads", "1", "-q")
    monkeypatch.undo()
    assert result.exit_code == 2 and "Traceback" not in result.output, (result.output, result.exception)
    line = result.stderr.strip()
    ckpt = out.with_name(out.name + ".ckpt")
    assert line.count("\n") == 0 and str(ckpt) in line and NO_SPACE in line, line
    assert len(saves) == 2 and not out.exists()
    assert torch.load(ckpt, weights_only=True)["epoch"] == 0  # the first epoch's, whole
    _no_temporary_files(tmp_path)


@pytest.mark.usefixtures("one_thread")
def test_a_full_disk_at_the_training_log_names_the_log_and_how_to_resume(training, tmp_path, monkeypatch):
    """The per-epoch log cannot grow: one line naming it and the whole checkpoint to resume from."""
    real_open = Path.open

    def open_(self, mode="r", *args, **kwargs):
        if self.name.endswith(".log.jsonl") and "a" in mode:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_open(self, mode, *args, **kwargs)

    monkeypatch.setattr(Path, "open", open_)
    out = tmp_path / "tuned.pt"
    result = cli("finetune", training["graphs"], "--labels", training["labels"], "--target", "band_gap", "--from",
                 training["base"], "-o", out, "--epochs", "2", "--batch-size", "8", "--threads", "1", "-q")
    monkeypatch.undo()
    assert result.exit_code == 2 and "Traceback" not in result.output, (result.output, result.exception)
    line = result.stderr.strip()
    assert line.count("\n") == 0 and "tuned.pt.log.jsonl" in line and NO_SPACE in line and "--resume" in line, line
    assert not out.exists()


# ---------------------------------------------------------------- real processes: a real full disk, signals


def _session_processes(session: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == session and fields[0] != "Z":
                found.append(int(entry))
    return found


def _none_left(session: int, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while (left := _session_processes(session)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, [Path(f"/proc/{p}/cmdline").read_bytes()[:120] for p in left]


def _start(*args) -> subprocess.Popen:
    return subprocess.Popen([*SRSCREEN, *map(str, args)], env=subprocess_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


@pytest.fixture(scope="module")
def many(tmp_path_factory, prototypes) -> Path:
    """2,000 small files: a run that lasts long enough to be signalled while its workers run."""
    folder = tmp_path_factory.mktemp("many") / "db"
    folder.mkdir()
    texts = [cif_text(s) for _, s in crystals(prototypes)[:40]]
    for i in range(2000):
        (folder / f"s{i:05d}.cif").write_text(texts[i % len(texts)])
    return folder


def _workers_running(pid: int, within: float = 60.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        children = [c for c in _session_processes(pid) if c != pid]  # started in a session of its own
        if any(b"popen_loky" in Path(f"/proc/{c}/cmdline").read_bytes() for c in children if Path(f"/proc/{c}").exists()):
            return True
        time.sleep(0.02)
    return False


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_killed_featurize_leaves_no_worker_and_resumes(many, tmp_path, sig):
    out = tmp_path / "out.h5"
    run = _start("featurize", many, out, "-j", "2", "--shard-size", "100", "-q")
    assert _workers_running(run.pid), run.communicate()
    os.kill(run.pid, sig)
    _, stderr = run.communicate(timeout=60)
    assert run.returncode in (128 + sig, -sig), (run.returncode, stderr)
    assert "Traceback" not in stderr, stderr
    _none_left(run.pid)
    assert not out.exists()
    rerun = subprocess.run([*SRSCREEN, "featurize", many, out, "-j", "2", "--shard-size", "100", "-q"],
                           env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert subprocess.run([*SRSCREEN, "info", out, "--verify"], env=subprocess_env(), capture_output=True).returncode == 0


@pytest.mark.parametrize("callback", ["seek", "tell", "write"])
def test_a_signal_inside_an_hdf5_callback_unwinds_cleanly(tmp_path, monkeypatch, callback):
    """Ctrl-C during featurize sometimes exited 1 with a traceback: the KeyboardInterrupt rose inside
    `seek`, called by HDF5 (H5FD_fileobj_get_eof), and h5py made it "SystemError: ... returned a result
    with an exception set". A SIGTERM sent from inside each callback now unwinds as the run's own handler
    says (here sigterm_unwinds: SystemExit 143), after HDF5 has closed the file; no file is left."""
    original = getattr(hdf5_out._HeldAfterFailure, callback)
    sent = []

    def signalled(self, *args):
        if not sent:
            sent.append(os.getpid())
            os.kill(os.getpid(), signal.SIGTERM)  # its handler runs at the next bytecode, inside this callback
        return original(self, *args)

    monkeypatch.setattr(hdf5_out._HeldAfterFailure, callback, signalled)
    out = tmp_path / "x.h5"
    with pytest.raises(SystemExit) as raised, atomic_write.sigterm_unwinds():
        with hdf5_out.new_hdf5(out) as (f, check):
            f.create_dataset("x", data=list(range(1000)))
            check()
            f.create_dataset("y", data=list(range(1000)))
    assert sent and raised.value.code == 143
    assert list(tmp_path.iterdir()) == []  # neither the file nor its temporary
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


@pytest.fixture
def tmpfs(tmp_path):
    """A folder on a tmpfs whose size a test sets (mount as root; skipped elsewhere)."""
    folder = tmp_path / "disk"
    folder.mkdir()
    if os.geteuid() != 0:
        pytest.skip("a real full disk needs root to mount a small tmpfs")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")

    def resize(size: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(folder)], check=True)

    yield folder, resize
    subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.mark.slow
@pytest.mark.parametrize("fraction", [0.0, 0.5, 1.5])
def test_a_real_full_disk_gives_one_line_and_no_worker(many, tmpfs, tmp_path, fraction):
    """On a device of about 0x, 0.5x and 1.5x the finished file's size, featurize fills it while writing
    the first files, the parts, and OUT (the parts and OUT both held): each time one line and exit 2."""
    folder, resize = tmpfs
    reference = tmp_path / "ref.h5"
    args = ["-j", "2", "--shard-size", "200", "-q"]
    subprocess.run([*SRSCREEN, "featurize", many, reference, *args], env=subprocess_env(), check=True, timeout=300)
    resize(max(16384, int(reference.stat().st_size * fraction)))
    out = folder / "out.h5"
    run = _start("featurize", many, out, *args)
    _, stderr = run.communicate(timeout=300)
    assert run.returncode == 2, (run.returncode, stderr)
    line = stderr.strip()
    assert line.count("\n") == 0 and line.startswith(f"error: {out}: {NO_SPACE}"), line
    _none_left(run.pid)
    assert not out.exists()
    assert not [p for p in folder.rglob("*") if p.name.endswith(".tmp")]
    if fraction > 1:
        assert len(list(partial_dir(out).glob("part-*.h5"))) >= 2  # the parts were whole: OUT did not fit beside them
    resize(64 << 20)
    rerun = subprocess.run([*SRSCREEN, "featurize", many, out, *args], env=subprocess_env(), capture_output=True,
                           text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    verify = subprocess.run([*SRSCREEN, "info", out, "--verify"], env=subprocess_env(), capture_output=True, text=True)
    assert verify.returncode == 0, verify.stderr
