"""Whole commands against another revision of srscreen, in the same run, and what the damage checks cost.

    python benchmarks/revisions.py --baseline eeaacf5 [--structures 5000] [--rounds 3]

1. `srscreen featurize --jobs 1` and `srscreen predict --top 100` (Ef + Eg pair, 2 threads) as real
   processes, start-up included, for this checkout and for the `--baseline` revision (checked out
   into a temporary git worktree and run from its source), alternating A, B, A, B ... so that both
   see the same machine load; the median and the best of `--rounds` each, and their ratios. Each revision predicts its
   own graphs with models of the same architecture (4 shared steps, width 64; speed does not depend on
   the weights), so the ratio holds the cost of the graph rule (more edges), CSR batches and the checks.
2. The damage checks alone, on this checkout's file: reading every shard checked (`GraphFile.read_shard`:
   CRC-32 and structural checks) against reading the same datasets raw with h5py, and writing every
   shard with checksums against without; each difference as a fraction of the command's time.
Results go to benchmarks/results/revisions.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from common import MP_CIFS  # benchmarks/common.py

ROOT = Path(__file__).resolve().parents[1]
SHARED = MP_CIFS


def run(cmd: list[str], env: dict, cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, cwd=cwd, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def srscreen(source: Path) -> tuple[list[str], dict]:
    """The command that runs srscreen from `source` (a source tree, also the working folder: `python -c`
    puts the working folder first on the path), and its environment."""
    env = {**os.environ, "PYTHONPATH": str(source)}
    return [sys.executable, "-c", "from srscreen.cli import main; main()"], env


def speed_models(source: Path, graphs: Path, out: Path, env: dict) -> list[str]:
    """The shipped pair re-saved for `graphs`' settings: the architecture predict runs, whatever the rule."""
    code = (  # the tree's own files, in its own layout (flat modules and pretrained/, or srscreen/pretrained/vN/)
        "import glob, sys\n"
        "try:\n    from srscreen.model.model_file import ModelFile\n    from srscreen.data.graph_file import GraphFile\n"
        "except ImportError:\n    from srscreen.checkpoint import ModelFile\n    from srscreen.shards import GraphFile\n"
        "with GraphFile(sys.argv[1]) as g: settings = g.graph_settings\n"
        "for name in ('sr-cgcnn-ef', 'sr-cgcnn-eg'):\n"
        "    found = sorted(glob.glob('srscreen/pretrained/v*/' + name + '.pt'), key=lambda p: int(p.split('/')[2][1:]))\n"
        "    m = ModelFile.load(found[-1] if found else 'pretrained/' + name + '.pt'); m.graph_settings = settings\n"
        "    m.save(sys.argv[2] + '/' + name + '.pt')\n"
    )
    subprocess.run([sys.executable, "-c", code, str(graphs), str(out)], check=True, env=env, cwd=source)
    return [str(out / f"{name}.pt") for name in ("sr-cgcnn-ef", "sr-cgcnn-eg")]


def check_costs(graphs: Path) -> dict:
    """Seconds to read (and to write) every shard with the checks and without."""
    from srscreen.data.integrity import write_checked
    from srscreen.data.graph_file import GraphFile

    names = ("ids", "formula", "n_atoms", "atomic_numbers", "n_edges", "nbr_idx", "nbr_dist")
    start = time.perf_counter()
    with GraphFile(graphs) as g:
        shards = [g.read_shard(i) for i in range(len(g.shard_names))]
    checked = time.perf_counter() - start
    start = time.perf_counter()
    with h5py.File(graphs, "r") as f:
        for name in sorted(f["shards"]):
            [f["shards"][name][key][()] for key in names]
    raw = time.perf_counter() - start
    timings = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, write in (("with", write_checked), ("without", lambda g, k, v: g.create_dataset(
                k, data=v if isinstance(v, np.ndarray) else np.array(v, dtype=object), dtype=None if isinstance(v, np.ndarray) else h5py.string_dtype()))):
            start = time.perf_counter()
            with h5py.File(Path(tmp) / f"{label}.h5", "w") as f:
                for i, s in enumerate(shards):
                    group = f.create_group(f"{i:06d}")
                    for key in names:
                        write(group, key, getattr(s, key))
            timings[label] = time.perf_counter() - start
    return {"read_checked_s": checked, "read_raw_s": raw, "write_checked_s": timings["with"], "write_raw_s": timings["without"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", required=True, help="git revision to compare with")
    parser.add_argument("--structures", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if not SHARED.is_dir():
        sys.exit(f"the shared MP set is not at {SHARED}: this benchmark needs it")
    work = Path(tempfile.mkdtemp(prefix="srscreen-revisions-"))
    try:
        baseline_tree = work / "baseline"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(baseline_tree), args.baseline],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        inputs = work / "inputs"
        inputs.mkdir()
        for path in sorted(SHARED.glob("*.cif"))[: args.structures]:
            os.symlink(path, inputs / path.name)
        revisions = {"this checkout": ROOT, f"baseline {args.baseline}": baseline_tree}
        times: dict[str, dict[str, list[float]]] = {name: {"featurize": [], "predict": []} for name in revisions}
        models: dict[str, list[str]] = {}
        for round_ in range(args.rounds):
            for name, tree in revisions.items():
                cmd, env = srscreen(tree)
                out = work / f"{name.split()[0]}-{round_}.h5"
                times[name]["featurize"].append(run([*cmd, "featurize", str(inputs), str(out), "--jobs", "1", "-q"], env, tree))
                if name not in models:
                    folder = work / f"models-{name.split()[0]}"
                    folder.mkdir()
                    models[name] = speed_models(tree, out, folder, env)
                model_flags = [flag for m in models[name] for flag in ("--model", m)]
                times[name]["predict"].append(run([*cmd, "predict", str(out), "--top", "100", "--threads", "2", "-q", *model_flags], env, tree))
        first = next(iter(revisions))
        report = {"structures": args.structures, "rounds": args.rounds, "baseline": args.baseline, "times_s": times}
        print(f"{args.structures} MP structures, {args.rounds} alternating rounds, start-up included "
              f"(median, and best: the least disturbed run on a shared machine)")
        base = [n for n in revisions if n != first][0]
        for command in ("featurize", "predict"):
            for stat, fn in (("median", statistics.median), ("best", min)):
                rates = {name: args.structures / fn(times[name][command]) for name in revisions}
                report[f"{command}_ratio_{stat}"] = rates[first] / rates[base]
                print(f"  {command:9s} {stat:6s}: " + ", ".join(f"{n} {r:,.0f}/s" for n, r in rates.items())
                      + f"; ratio {report[f'{command}_ratio_{stat}']:.3f}")
        costs = check_costs(work / "this-0.h5")
        featurize_s = min(times[first]["featurize"])
        predict_s = min(times[first]["predict"])
        report.update(costs, read_share=(costs["read_checked_s"] - costs["read_raw_s"]) / predict_s,
                      write_share=(costs["write_checked_s"] - costs["write_raw_s"]) / featurize_s)
        print(f"  checks on read: {costs['read_checked_s']:.3f} s vs {costs['read_raw_s']:.3f} s raw, "
              f"{100 * report['read_share']:.1f}% of predict's time")
        print(f"  checksums on write: {costs['write_checked_s']:.3f} s vs {costs['write_raw_s']:.3f} s raw, "
              f"{100 * report['write_share']:.1f}% of featurize's time")
        (ROOT / "benchmarks" / "results" / "revisions.json").write_text(json.dumps(report, indent=1) + "\n")
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(work / "baseline")],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
