"""Command-line paths that only a real process shows: a featurize killed (SIGKILL) or interrupted (Ctrl-C)
while its worker processes run, then resumed by the same command; fetch-mp's exit 1 and its resume;
predict, merge and evaluate writing into `head`; and a CGCNN checkpoint taken through import-cgcnn,
featurize --atom-features and predict, compared with CGCNN's own code.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shlex
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import graphs_in
from helpers.mp_server import KEY
from helpers.screening_data import RADIUS as RADIUS_SMALL
from helpers.screening_data import SRSCREEN, cli, crystals, subprocess_env, train_tiny_pair, write_json_db
from test_checkpoint import RADIUS, CrystalGraphConvNet, cgcnn_predict
from test_featurize import write_strained_cifs
from test_mp_fetch import docs, server  # noqa: F401 - fixtures

from srscreen.data.featurize import FeaturizeOptions, featurize
from srscreen.graph.settings import GraphSettings
from srscreen.data.graph_file import GraphFile, partial_dir

pytestmark = pytest.mark.slow

N_CIFS = 2000  # 128-atom cells: ~2 s of featurizing on 2 cores, a window to stop the run in
SHARD = 20


@pytest.fixture(scope="module")
def cifs(tmp_path_factory, prototypes) -> dict:
    folder = tmp_path_factory.mktemp("processes") / "cifs"
    ids = write_strained_cifs(folder, {"NaCl": prototypes["NaCl"] * (2, 2, 2)}, N_CIFS)
    return {"folder": folder, "ids": ids}


def featurize_command(source: Path, out: Path) -> list[str]:
    return [*SRSCREEN, "featurize", str(source), str(out), "--jobs", "2", "--shard-size", str(SHARD)]


def stop_after_first_part(command: list[str], out: Path, stop, logs: Path) -> int:
    """Run `command` in its own process group, call `stop(pid)` once a part file is on disk, return the exit
    status. Output goes to files: workers orphaned by a SIGKILL keep pipes open."""
    logs.mkdir(parents=True, exist_ok=True)
    with (logs / "stdout").open("w") as stdout, (logs / "stderr").open("w") as stderr:
        # A terminal's foreground job takes Ctrl-C; a test run started in the background (`nohup ... &` without
        # job control) ignores SIGINT, and the command would inherit that and finish: give it the default.
        proc = subprocess.Popen(command, stdout=stdout, stderr=stderr, env=subprocess_env(), start_new_session=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 300
        while not list(partial_dir(out).glob("part-*.h5")):
            assert proc.poll() is None, f"the run ended before it was stopped: {(logs / 'stderr').read_text()[-2000:]}"
            assert time.monotonic() < deadline, "no part file within 300 s"
            time.sleep(0.005)
        stop(proc.pid)
        return proc.wait(timeout=120)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # workers left behind by the parent
        except ProcessLookupError:
            pass


def assert_resumes(command: list[str], out: Path, ids: list[str]) -> None:
    """The same command again finishes the run: every structure there exactly once, some done before."""
    assert not out.exists() and list(partial_dir(out).glob("part-*.h5")), "the stopped run leaves its parts"
    proc = subprocess.run(command, capture_output=True, text=True, env=subprocess_env(), timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "done by an earlier run" in proc.stderr, proc.stderr
    assert sorted(graphs_in(out)) == sorted(ids)  # graphs_in also fails on an id written twice
    with GraphFile(out) as g:
        assert g.failures() == [], "an input featurized twice is recorded as a duplicate id"
    assert not partial_dir(out).exists()


def test_sigkill_of_featurize_with_workers_resumes(cifs, tmp_path):
    out = tmp_path / "graphs.h5"
    command = featurize_command(cifs["folder"], out)
    status = stop_after_first_part(command, out, lambda pid: os.kill(pid, signal.SIGKILL), tmp_path / "killed")
    assert status == -signal.SIGKILL
    assert_resumes(command, out, cifs["ids"])


def test_ctrl_c_of_featurize_exits_130_and_the_same_command_resumes(cifs, tmp_path):
    out = tmp_path / "graphs.h5"
    command = featurize_command(cifs["folder"], out)
    # A terminal's Ctrl-C signals the whole foreground process group: the command and its workers.
    status = stop_after_first_part(command, out, lambda pid: os.killpg(pid, signal.SIGINT), tmp_path / "interrupted")
    assert status == 130
    # Not asserted: a quiet stderr. Worker processes sometimes print their KeyboardInterrupt tracebacks.
    assert_resumes(command, out, cifs["ids"])


# ---------------------------------------------------------------- fetch-mp


def test_fetch_mp_exits_1_when_downloads_fail_and_the_same_command_resumes(server, tmp_path):  # noqa: F811
    out = tmp_path / "mp"
    command = [*SRSCREEN, "fetch-mp", str(out), "--elements", "O", "--chunk-size", "2", "--retries", "0",
               "--endpoint", server.endpoint]
    env = {**subprocess_env(), "MP_API_KEY": KEY, "NO_PROXY": "127.0.0.1,localhost"}
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        env.pop(name, None)
    server.broken_ids = {"mp-9"}  # every request for the chunk holding mp-9 answers 503
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == "" and "Traceback" not in proc.stderr and KEY not in proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error:"), repr(proc.stderr)
    assert "503" in proc.stderr and "rerun the same command to resume" in proc.stderr
    assert sorted(p.stem for p in (out / "structures").iterdir()) == ["mp-6", "mp-7"]
    server.broken_ids = set()
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.stem for p in (out / "structures").iterdir()) == sorted(f"mp-{i}" for i in range(6, 13))
    with open(out / "labels.csv", newline="") as f:
        assert sorted(r["material_id"] for r in csv.DictReader(f)) == sorted(f"mp-{i}" for i in range(6, 13))


# ---------------------------------------------------------------- into head


@pytest.fixture(scope="module")
def ranked(prototypes, tmp_path_factory) -> dict:
    """4000 small crystals, tiny models, and predict's ranking in two parts: outputs over twice a pipe's 64 KB,
    so a reader that leaves early always closes the pipe while srscreen is still writing."""
    root = tmp_path_factory.mktemp("ranked")
    ids = write_strained_cifs(root / "cifs", prototypes, 4000)
    graphs = root / "graphs.h5"
    featurize(root / "cifs", graphs, options=FeaturizeOptions(graph=GraphSettings(radius=RADIUS_SMALL, max_nbr=8),
                                                              shard_size=200), jobs=1)
    labels = root / "labels.csv"
    labels.write_text("material_id,formation_energy_per_atom,band_gap\n"
                      + "".join(f"{id_},{-1 - 0.001 * i},{0.002 * i}\n" for i, id_ in enumerate(ids)))
    models = train_tiny_pair(graphs, labels, root, seed=3)
    parts = []
    for span in ("0:5", "5:"):
        parts.append(root / f"part-{span.replace(':', '-')}.csv")
        result = cli("predict", graphs, "--model", models["ef"], "--model", models["eg"], "--shards", span,
                     "-o", parts[-1], "--quiet", "--threads", "1")
        assert result.exit_code == 0, result.stderr
    assert sum(p.stat().st_size for p in parts) > 2 * 65536
    return {"graphs": graphs, "labels": labels, **models, "parts": parts}


def into(reader: str, *args) -> subprocess.CompletedProcess:
    """`srscreen ARGS | READER` in bash with pipefail: the exit status is srscreen's unless it is 0."""
    command = f"{shlex.join([*SRSCREEN, *map(str, args)])} | {reader}"
    return subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True,
                          env=subprocess_env(), timeout=300)


def assert_quiet_exit(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "", proc.stderr  # no BrokenPipeError, no "Exception ignored"


def test_predict_tsv_into_head(ranked):
    proc = into("head -n 3", "predict", ranked["graphs"], "--model", ranked["ef"], "--model", ranked["eg"],
                "--format", "tsv", "--threads", "1")
    assert_quiet_exit(proc)
    lines = proc.stdout.splitlines()
    assert len(lines) == 3 and lines[0].split("\t")[:2] == ["rank", "id"] and lines[2].startswith("2\t")


def test_merge_into_head(ranked):
    proc = into("head -n 3", "merge", *ranked["parts"])
    assert_quiet_exit(proc)
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    assert [r["rank"] for r in rows] == ["1", "2"]


def test_evaluate_into_head(ranked):
    proc = into("head -n 1", "evaluate", ranked["graphs"], "--labels", ranked["labels"], "--model", ranked["ef"],
                "--model", ranked["eg"])
    assert_quiet_exit(proc)
    assert "graphs.h5" in proc.stdout  # the first line of its table


def test_evaluate_into_a_reader_that_already_left(ranked):
    """Rich's Console ended the process with exit 1 on BrokenPipeError (as Click does for --help)."""
    proc = into("head -c 0", "evaluate", ranked["graphs"], "--labels", ranked["labels"], "--model", ranked["ef"],
                "--json")
    assert_quiet_exit(proc)


@pytest.mark.parametrize("args", [["models"], ["--help"], ["--version"], ["info", "GRAPHS"], ["info", "GRAPHS", "--json"]],
                         ids=["models", "help", "version", "info", "info-json"])
def test_every_command_into_a_reader_that_already_left(ranked, args):
    assert_quiet_exit(into("head -c 0", *[ranked["graphs"] if a == "GRAPHS" else a for a in args]))


def test_merge_into_a_reader_that_already_left(ranked):
    assert_quiet_exit(into("head -c 0", "merge", *ranked["parts"]))


# ---------------------------------------------------------------- a CGCNN checkpoint, end to end


def cgcnn_files(root: Path) -> tuple[Path, Path, dict]:
    """An original-format CGCNN checkpoint (torch.save of state_dict, normalizer, args, as cgcnn's main.py
    writes it) of a small random network, and its atom_init.json (92 features per element)."""
    rng = np.random.default_rng(11)
    atom_init = {str(z): rng.integers(0, 2, 92).astype(float).tolist() for z in range(1, 101)}
    (root / "atom_init.json").write_text(json.dumps(atom_init))
    torch.manual_seed(11)
    net = CrystalGraphConvNet(92, 41, atom_fea_len=16, n_conv=3, h_fea_len=32, n_h=1)  # 41 Gaussians: 0..8 Å
    for name, value in net.state_dict().items():  # BatchNorm statistics away from 0/1, as after training
        if "running_mean" in name:
            value.uniform_(-0.5, 0.5)
        elif "running_var" in name:
            value.uniform_(0.5, 2.0)
    args = {"task": "regression", "atom_fea_len": 16, "n_conv": 3, "h_fea_len": 32, "n_h": 1, "lr": 0.01}
    torch.save({"epoch": 30, "state_dict": net.state_dict(), "best_mae_error": torch.tensor(0.04),
                "optimizer": {}, "normalizer": {"mean": torch.tensor(-1.2), "std": torch.tensor(0.8)}, "args": args},
               root / "model_best.pth.tar")
    return root / "model_best.pth.tar", root / "atom_init.json", atom_init


def test_import_cgcnn_then_featurize_with_its_features_then_predict(prototypes, tmp_path):
    checkpoint, atom_init_path, atom_init = cgcnn_files(tmp_path)
    db = write_json_db(tmp_path / "db", crystals(prototypes))
    model, graphs = tmp_path / "cgcnn.pt", tmp_path / "graphs.h5"
    steps = [
        ["import-cgcnn", checkpoint, "--atom-features", atom_init_path, "--target", "formation_energy_per_atom",
         "--unit", "eV/atom", "-o", model],
        ["featurize", db, graphs, "--atom-features", atom_init_path, "--graph-rule", "cgcnn", "--jobs", "1", "-q"],
        ["predict", graphs, "--model", model, "--format", "jsonl", "-q"],
    ]
    for args in steps:
        proc = subprocess.run([*SRSCREEN, *map(str, args)], capture_output=True, text=True, env=subprocess_env(),
                              timeout=300)
        assert proc.returncode == 0, (args[0], proc.stderr)
    got = {row["id"]: row["formation_energy_per_atom"] for row in map(json.loads, proc.stdout.splitlines())}
    # CGCNN's own code (tests/test_checkpoint.py's port of txie-93/cgcnn) on the same graphs.
    with GraphFile(graphs) as g:
        assert g.attrs["feature_table_name"] == "atom_init.json"
        shards = list(g.iter_shards())
    want = {}
    for shard in shards:
        assert (shard.n_edges == 12).all(), "rule cgcnn: 12 neighbours per atom"
        arrays = {"n_atoms": shard.n_atoms, "atomic_numbers": shard.atomic_numbers,
                  "nbr_dist": shard.nbr_dist.reshape(-1, 12), "nbr_idx": shard.nbr_idx.reshape(-1, 12)}
        want.update(zip(shard.ids, cgcnn_predict(torch.load(checkpoint, weights_only=True), atom_init, arrays)))
    assert sorted(got) == sorted(want) and len(got) == len(crystals(prototypes))
    np.testing.assert_allclose([got[i] for i in sorted(want)], [want[i] for i in sorted(want)], rtol=0, atol=1e-4)
    assert np.ptp(list(want.values())) > 0.05, "the crystals must differ for the comparison to mean anything"
    assert RADIUS == 8.0  # the port's Gaussian expansion assumes import-cgcnn's default radius
