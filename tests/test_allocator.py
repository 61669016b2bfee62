"""The allocator tuning: applies once on glibc, is a no-op elsewhere, never breaks tensor maths, and is in
force once `train` or `predict` has started (read back from glibc, in a fresh process)."""

import json
import platform
import subprocess
import sys

import pytest
import torch
from helpers.screening_data import crystals, featurize_db, subprocess_env, target_values, write_json_db, write_labels

from srscreen.model.allocator import reuse_freed_memory

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
needs_glibc = pytest.mark.skipif(not GLIBC, reason="the tuning and its read-back (mallinfo2) are glibc's")

# What a 64 MB tensor costs glibc, read back with mallinfo2: `mmapped` is 1 when the block is a fresh mmap
# (glibc's default for blocks this large: a page fault per 4 KiB page at every allocation), 0 when it comes
# from the heap. The last of a few allocate-free cycles is the steady state a training loop sees.
PROBE = r"""
import ctypes, json, resource, torch

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

def probe():
    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = MallInfo2
    for _ in range(4):
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        before = libc.mallinfo2().hblks
        x = torch.ones(8 * 1024 * 1024, dtype=torch.float64)
        mmapped = libc.mallinfo2().hblks - before
        del x
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    return {"mmapped": mmapped, "faults": faults}
"""

COMMAND = PROBE + r"""
import sys
from srscreen.cli import main
default = probe()
sys.argv = ["srscreen", *sys.argv[1:]]
try:
    main()
except SystemExit as e:
    assert e.code in (0, None), e.code
print(json.dumps({"default": default, "after": probe()}))
"""


def test_applies_on_glibc_and_is_idempotent():
    first = reuse_freed_memory()
    assert first == GLIBC
    assert reuse_freed_memory() == first


@needs_glibc
def test_large_blocks_come_from_the_heap_once_applied():
    assert reuse_freed_memory()
    namespace: dict = {}
    exec(PROBE, namespace)
    # Only the mmap count here: how many pages a recycled block faults in depends on this process's history.
    assert namespace["probe"]()["mmapped"] == 0, "64 MB blocks still come from mmap"


def test_large_tensors_stay_correct_after_tuning():
    reuse_freed_memory()
    for _ in range(3):  # freed 64 MB blocks are reused: contents must be what was written, never stale
        x = torch.full((4096, 4096), 2.0)
        assert float(x.sum()) == 2.0 * 4096 * 4096
        del x


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, prototypes):
    from srscreen.trainer.trainer import TrainConfig, train

    root = tmp_path_factory.mktemp("allocator")
    items = crystals(prototypes)
    graphs = featurize_db(write_json_db(root / "db", items), root / "graphs.h5")
    labels = write_labels(root / "labels.csv", target_values(items))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(graphs, labels, root / "ef.pt", TrainConfig(target="formation_energy_per_atom", atom_fea_len=8,
                                                          h_fea_len=8, epochs=1, batch_size=8))
    finally:
        torch.set_num_threads(before)
    return {"root": root, "graphs": graphs, "labels": labels, "model": root / "ef.pt"}


@pytest.mark.slow
@needs_glibc
@pytest.mark.parametrize("command", ["train", "predict"])
def test_tuning_is_in_force_after_the_command_starts(tiny, command):
    args = {
        "train": ["train", tiny["graphs"], "--labels", tiny["labels"], "--target", "formation_energy_per_atom",
                  "-o", tiny["root"] / "again.pt", "--epochs", "1", "--atom-fea-len", "8", "--h-fea-len", "8",
                  "--threads", "1", "--quiet"],
        "predict": ["predict", tiny["graphs"], "--model", tiny["model"], "--threads", "1", "--quiet",
                    "-o", tiny["root"] / "ranking.csv"],
    }[command]
    proc = subprocess.run([sys.executable, "-c", COMMAND, *map(str, args)], capture_output=True, text=True,
                          env=subprocess_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout.splitlines()[-1])
    assert found["default"]["mmapped"] == 1, f"the probe cannot see glibc's default here: {found}"
    assert found["after"]["mmapped"] == 0 and found["after"]["faults"] < 1000, f"not in force after {command}: {found}"
