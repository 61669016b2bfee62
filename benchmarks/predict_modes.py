"""predict's modes against an earlier revision's default pair, from the command line, in one run (issue 24's
speed goals).

    python benchmarks/predict_modes.py [--baseline 3b96fdf] [--structures 20000] [--rounds 3] [--threads 2]
                                       [--pause-pattern TEXT | --no-pause] [--quiet-wait 30] [--group-nice -10]
                                       [--work DIR]

On the 20,000 MP crystals benchmarks/cli.py times (its seeded sample of the shared CIFs: `--seed 0`), each
revision featurizes the crystals once with its own code (`featurize --jobs 2`, not timed; whether the two
graph files hold the same graphs is recorded), then these commands run as real processes, start-up
included, each `predict GRAPHS --top 100 --threads 2 -q -o ranked.csv`, in alternating rounds (the first
command of a round rotates, so no mode always follows the same one):
  (a) the baseline (`--baseline`, checked out into a temporary git worktree and run from its source with
      PYTHONPATH) with its default models: the pair sr-cgcnn-ef + sr-cgcnn-eg;
  (b) this checkout, `--fast`: the fast model (sr-cgcnn-fast, one network with an Ef and an Eg head);
  (c) this checkout, the default: sr-cgcnn-ef and sr-cgcnn-eg, each an ensemble of 2 single-target members
      with scale heads, writing `*_std`;
  (d) this checkout, `--model v2/sr-cgcnn-ef.pt --model v2/sr-cgcnn-eg.pt`: the baseline's models under
      today's code, which separates what the code changed from what the models changed.
(b) and (c) are the commands a user types, without --model, once the v3 release is installed
(benchmarks/campaign.py ship). Until then they name stand-in files of v3's design (benchmarks/campaign.py
FINAL: SR-CGCNN steps 4 (3 for the fast network), width 64, h_fea_len 128, n_h 1, a scale head per target),
made from v2's weights
(the trunk and BatchNorm statistics of sr-cgcnn-ef or -eg, heads copied, each member with its own seeded 2%
noise so that members differ): speed does not depend on the weights' values, but trained statistics keep
the activations, and so any denormal arithmetic, as a real model's are.

The campaign's trainings (commands writing into benchmarks/results/campaign/) are paused (SIGSTOP) while
timing and always resumed; before each command the script waits up to `--quiet-wait` s for the rest of
the machine to go quiet, and records the CPU others used meanwhile. Where other sessions keep both cores
busy (the machine never goes quiet), `--group-nice -10` (root) lets the timed commands have the cores first:
with scheduler autogroups, each session gets an equal share whatever its processes' nice values. Prints each mode's median and best
wall time and its speed against (a) (baseline's median time / the mode's: above 1 is faster), and the
goals (fast >= 1.5x, default with sigma >= 0.5x), judged on the medians' ratio; also each round's ratio and
the ratio of the commands' CPU seconds (less moved by other load). Writes benchmarks/results/predict_modes.json.

These timings are checked here and only here: no test asserts a speed (a shared or slower machine would
fail it at random); tests check what the modes output, this script what they cost.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import torch

from campaign import FINAL  # benchmarks/campaign.py: v3's design, which the stand-ins copy
from common import MP_CIFS, PausedTrainings, link_folder, run_timed  # benchmarks/common.py

ROOT = Path(__file__).resolve().parents[1]
CAMPAIGN = ROOT / "benchmarks" / "results" / "campaign"
RESULTS = ROOT / "benchmarks" / "results" / "predict_modes.json"
EF, EG = "formation_energy_per_atom", "band_gap"
MEMBERS = 2  # per target in the default (benchmarks/campaign.py FINAL)
PLANNED = {"steps": 4, "shared": True, "atom_fea_len": 64, "h_fea_len": 128, "n_h": 1, "scale_head": True}
FAST_STEPS = next(options for name, _, _, options in FINAL if name == "fast-efeg").get("steps", PLANNED["steps"])
CALIBRATION_SCALE = 1.25  # any value: it is one multiply per column
GOALS = {"fast": 1.5, "default": 0.5}  # issue 24: speed against the baseline's default pair
MODES = {
    "baseline_pair": "(a) baseline: predict (default pair sr-cgcnn-ef + sr-cgcnn-eg)",
    "fast": "(b) this checkout: predict --fast (sr-cgcnn-fast)",
    "default": "(c) this checkout: predict (sr-cgcnn-ef + sr-cgcnn-eg, the installed members (2 each in stand-ins), with sigma)",
    "current_pair": "(d) this checkout: predict --model v2/sr-cgcnn-ef.pt --model v2/sr-cgcnn-eg.pt",
}


def mp_sample(n: int, seed: int) -> list[Path]:
    """The crystals benchmarks/cli.py times at size n: a seeded sample of the shared CIFs, in name order."""
    files = sorted(p for p in MP_CIFS.iterdir() if p.suffix.lower() == ".cif")
    return sorted(random.Random(seed).sample(files, min(n, len(files))))


def srscreen_in(tree: Path) -> tuple[list[str], dict]:
    """srscreen run from the source tree `tree` (PYTHONPATH first, so an editable install elsewhere loses)."""
    return [sys.executable, "-c", "from srscreen.cli import main; main()"], {**os.environ, "PYTHONPATH": str(tree)}


def imported_from(tree: Path) -> str:
    cmd, env = srscreen_in(tree)
    return subprocess.run([cmd[0], "-c", "import srscreen; print(srscreen.__file__)"], env=env, cwd=tree,
                          capture_output=True, text=True, check=True).stdout.strip()


def featurize(tree: Path, inputs: Path, out: Path, jobs: int) -> None:
    """Featurize once (not timed) with the code of `tree`; reuses an existing file (`--work`)."""
    if out.exists():
        return
    cmd, env = srscreen_in(tree)
    proc = subprocess.run([*cmd, "featurize", str(inputs), str(out), "--jobs", str(jobs), "-q"], env=env, cwd=tree,
                          capture_output=True, text=True)
    if proc.returncode or not out.exists():
        sys.exit(f"featurize with {tree} failed (exit {proc.returncode}): {proc.stderr.strip()[-400:]}")


def graph_digest(path: Path) -> str:
    """SHA-256 of the graphs a file holds (ids, elements, edges, distances, shards concatenated in order):
    equal digests mean both revisions predict the same graphs, however they cut their shards."""
    digest = hashlib.sha256()
    with h5py.File(path, "r") as f:
        shards = [f["shards"][name] for name in sorted(f["shards"])]
        for key in ("ids", "n_atoms", "atomic_numbers", "n_edges", "nbr_idx", "nbr_dist"):
            for shard in shards:
                data = shard[key][()]
                digest.update(b"\0".join(data.tolist()) if data.dtype == object else np.ascontiguousarray(data).tobytes())
    return digest.hexdigest()


def v3_flags(folder: Path) -> tuple[dict[str, list[str]], str]:
    """predict's flags for modes (b) and (c): none but `--fast` once the v3 release is installed (what a user
    types); until then `--model` stand-in files of its design, saved in `folder`. And where they came from."""
    from srscreen.model.registry import FAST_MODEL, pretrained_files

    if FAST_MODEL in pretrained_files():
        from srscreen.model.model_file import ModelFile

        members = ", ".join(f"{name} {ModelFile.load(pretrained_files()[name]).n_members}"
                            for name in ("sr-cgcnn-ef", "sr-cgcnn-eg"))
        return ({"fast": ["--fast"], "default": []},
                f"the installed release (members: {members}): "
                f"{os.path.relpath(pretrained_files()[FAST_MODEL].parent, ROOT)}")
    from srscreen.screening.calibrate import assemble

    paths = {}
    for name, targets in (("sr-cgcnn-ef", [EF]), ("sr-cgcnn-eg", [EG]), ("sr-cgcnn-fast", [EF, EG])):
        steps = FAST_STEPS if name == "sr-cgcnn-fast" else PLANNED["steps"]
        members = [stand_in(targets, seed, steps) for seed in range(MEMBERS if len(targets) == 1 else 1)]
        model = assemble(members) if len(members) > 1 else members[0]
        model = replace(model, calibration={"scale": {t: CALIBRATION_SCALE for t in model.targets}})
        paths[name] = folder / f"stand-in-{name}.pt"
        model.save(paths[name])
    return ({"fast": ["--model", str(paths["sr-cgcnn-fast"]), "--fast"],
             "default": ["--model", str(paths["sr-cgcnn-ef"]), "--model", str(paths["sr-cgcnn-eg"])]},
            "stand-ins of v3's design made from v2's weights (no v3 release installed yet)")


V2_PAIR = [f"srscreen/pretrained/v2/{name}.pt" for name in ("sr-cgcnn-ef", "sr-cgcnn-eg")]


def v2_pair() -> list:
    from srscreen.model.model_file import ModelFile

    return [ModelFile.load(ROOT / path) for path in V2_PAIR]


def stand_in(targets: list[str], seed: int, steps: int):
    """One member of v3's design for `targets`: the trunk of v2's sr-cgcnn-ef (Ef members and the fast model)
    or -eg, each target's head from v2's model of it, scale heads copied from the target heads; every weight
    then times (1 + 0.02 N(0, 1))."""
    from srscreen.model.model_file import ModelFile
    from srscreen.model.network import CrystalGraphNet

    pair = dict(zip((EF, EG), v2_pair()))
    trunk = pair[targets[0]]
    net = CrystalGraphNet(feature_table=trunk.state_dict["feature_table"], radius=trunk.architecture["radius"],
                          gaussian_step=trunk.architecture["gaussian_step"], n_targets=len(targets),
                          **{**PLANNED, "steps": steps})
    heads = {f"heads.{k}.": pair[targets[k % len(targets)]] for k in range(2 * len(targets))}  # targets, then scales
    state = {}
    generator = torch.Generator().manual_seed(seed)
    for key, value in net.state_dict().items():
        prefix = next((p for p in heads if key.startswith(p)), None)
        source = heads[prefix].state_dict[key.replace(prefix, "heads.0.")] if prefix else trunk.state_dict[key]
        if source.shape != value.shape:
            raise SystemExit(f"v2's {key} {tuple(source.shape)} does not fit v3's design's {tuple(value.shape)}")
        noisy = key != "feature_table" and source.is_floating_point() and not key.endswith("running_var")
        state[key] = source * (1 + 0.02 * torch.randn(source.shape, generator=generator)) if noisy else source.clone()
    net.load_state_dict(state)
    return ModelFile.from_model(net.eval(), graph_settings=trunk.graph_settings, targets=targets,
                                units=[pair[t].unit for t in targets], normalizers=[pair[t].normalizer for t in targets],
                                training={"name": f"stand-in-{'-'.join(targets)}-{seed}", "config": {"seed": seed}})


def set_group_nice(value: int) -> int:
    """Set the nice value of this session's autogroup (the timed commands are in it too); the old value."""
    path = Path("/proc/self/autogroup")
    try:
        old = int(path.read_text().split("nice")[1])
        path.write_text(str(value))
    except (OSError, IndexError, ValueError) as exc:
        sys.exit(f"--group-nice: cannot set the autogroup's nice value ({exc})")
    return old


def header_and_rows(path: Path) -> tuple[list[str], int]:
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    return (rows[0] if rows else []), max(len(rows) - 1, 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", default="3b96fdf", help="git revision whose default pair is (a)")
    parser.add_argument("--structures", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=0, help="the sample's seed (benchmarks/cli.py's)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="predict's --threads")
    parser.add_argument("--top", type=int, default=100)
    parser.add_argument("--jobs", type=int, default=2, help="featurize's --jobs (not timed)")
    parser.add_argument("--pause-pattern", default=f"-o {CAMPAIGN}/",
                        help="pause processes whose command line holds this text (default: the campaign's trainings)")
    parser.add_argument("--no-pause", action="store_true")
    parser.add_argument("--quiet-wait", type=float, default=30.0,
                        help="before each command, wait up to this many seconds for the rest of the machine to go quiet")
    parser.add_argument("--group-nice", type=int, default=0,
                        help="nice value of this run's scheduler autogroup (Linux, needs root below 0), restored at "
                             "the end: on a machine kept busy by other sessions, e.g. -10 gives the timed commands "
                             "the cores a quiet machine would (with autogroups, a process's own nice value only "
                             "orders it within its session)")
    parser.add_argument("--work", type=Path,
                        help="keep the sample, graphs and model here (reused when present) instead of a temporary folder")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if not MP_CIFS.is_dir():
        sys.exit(f"the shared MP set is not at {MP_CIFS}: this benchmark needs it")
    if args.rounds < 1:
        sys.exit("--rounds must be at least 1")

    work = args.work or Path(tempfile.mkdtemp(prefix="srscreen-predict-modes-"))
    work.mkdir(parents=True, exist_ok=True)
    baseline_tree = work / "baseline-tree"
    group_nice = set_group_nice(args.group_nice) if args.group_nice else None
    try:
        shutil.rmtree(baseline_tree, ignore_errors=True)
        subprocess.run(["git", "-C", str(ROOT), "worktree", "prune"], check=True)
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(baseline_tree), args.baseline],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        report = run_benchmark(args, work, baseline_tree)
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(baseline_tree)],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
        if group_nice is not None:
            set_group_nice(group_nice)
    report["group_nice"] = args.group_nice
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"written to {args.out}")


def run_benchmark(args: argparse.Namespace, work: Path, baseline_tree: Path) -> dict:
    inputs = work / f"cifs-{args.structures}-seed{args.seed}"
    if not inputs.is_dir():
        link_folder(mp_sample(args.structures, args.seed), inputs)
    trees = {"baseline": baseline_tree, "current": ROOT}
    graphs = {name: work / f"graphs-{name}.h5" for name in trees}
    for name, tree in trees.items():
        print(f"featurizing {args.structures} crystals with the {name} code (not timed) ...", file=sys.stderr, flush=True)
        featurize(tree, inputs, graphs[name], args.jobs)
    digests = {name: graph_digest(path) for name, path in graphs.items()}
    v3, origin = v3_flags(work)
    v2 = [str(ROOT / path) for path in V2_PAIR]

    common_flags = ["--top", str(args.top), "--threads", str(args.threads), "-q"]
    modes = {
        "baseline_pair": ("baseline", []),
        "fast": ("current", v3["fast"]),
        "default": ("current", v3["default"]),
        "current_pair": ("current", ["--model", v2[0], "--model", v2[1]]),
    }
    runs: dict[str, list[dict]] = {mode: [] for mode in modes}
    outputs: dict[str, dict] = {}
    order = list(modes)
    with PausedTrainings(not args.no_pause, args.pause_pattern, args.quiet_wait) as pauser:
        for round_ in range(args.rounds):
            for mode in order[round_ % len(order):] + order[: round_ % len(order)]:
                tree_name, flags = modes[mode]
                cmd, env = srscreen_in(trees[tree_name])
                ranked = work / f"ranked-{mode}.csv"
                ranked.unlink(missing_ok=True)
                print(f"round {round_ + 1}/{args.rounds}: {MODES[mode]} ...", file=sys.stderr, flush=True)
                result = run_timed([*cmd, "predict", str(graphs[tree_name]), *common_flags, "-o", str(ranked), *flags],
                                   cwd=trees[tree_name], env=env, pauser=pauser)
                if result["rc"]:
                    sys.exit(f"{MODES[mode]} failed: {result['error']}")
                runs[mode].append(result)
                header, rows = header_and_rows(ranked)
                outputs[mode] = {"columns": header, "rows": rows}
        paused, resumed_by_others = sorted(pauser.paused.values()), pauser.resumed_by_others

    medians = {mode: statistics.median(r["wall_s"] for r in runs[mode]) for mode in modes}
    bests = {mode: min(r["wall_s"] for r in runs[mode]) for mode in modes}
    speed = {mode: medians["baseline_pair"] / medians[mode] for mode in modes}
    speed_best = {mode: bests["baseline_pair"] / bests[mode] for mode in modes}
    # CPU seconds of each command (its threads, start-up included): less moved by other sessions' load than
    # wall time, though not untouched (shared caches, and the threads' spin-waits when descheduled).
    cpu = {mode: statistics.median(r["cpu_s"] for r in runs[mode]) for mode in modes}
    speed_cpu = {mode: cpu["baseline_pair"] / cpu[mode] for mode in modes}
    # Each round's own ratio: a round's commands ran minutes apart, under much the same load.
    per_round = {mode: [a["wall_s"] / r["wall_s"] for a, r in zip(runs["baseline_pair"], runs[mode])] for mode in modes}
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no", "srscreen"],
                           capture_output=True, text=True).stdout.strip()
    report = {
        "baseline": args.baseline,
        "current": {"head": head.stdout.strip(), "srscreen_has_uncommitted_changes": bool(dirty)},
        "structures": args.structures, "seed": args.seed, "rounds": args.rounds, "threads": args.threads,
        "command": f"{sys.executable} -c 'from srscreen.cli import main; main()' predict GRAPHS "
                   + " ".join(common_flags) + " -o ranked.csv [mode's flags], run from each revision's tree "
                   "with PYTHONPATH=TREE",
        "modes": MODES, "mode_flags": {mode: flags for mode, (_, flags) in modes.items()},
        "srscreen_imported_from": {name: imported_from(tree) for name, tree in trees.items()},
        "same_graphs": digests["baseline"] == digests["current"], "graph_digests": digests,
        "v3": {"stand_ins": {"members_per_target": MEMBERS, "architecture": PLANNED}, "origin": origin},
        "wall_s": {mode: [r["wall_s"] for r in runs[mode]] for mode in modes},
        "runs": runs, "median_s": medians, "best_s": bests,
        "speed_vs_baseline_median": speed, "speed_vs_baseline_best": speed_best, "speed_vs_baseline_per_round": per_round,
        "median_cpu_s": cpu, "speed_vs_baseline_cpu": speed_cpu,
        "goals": {mode: {"at_least": goal, "met": speed[mode] >= goal} for mode, goal in GOALS.items()},
        "outputs": outputs,
        "paused_trainings": paused, "trainings_resumed_by_others": resumed_by_others,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
                    "platform": platform.platform()},
    }
    print(f"\n{args.structures:,} MP crystals, {args.rounds} alternating rounds, start-up included, "
          f"--threads {args.threads}; speed = baseline's median time / the mode's")
    print("| mode | median s | best s | crystals/s (median) | speed vs (a), median | best | per round | by CPU s |")
    print("|---|---|---|---|---|---|---|---|")
    for mode in modes:
        print(f"| {MODES[mode]} | {medians[mode]:.2f} | {bests[mode]:.2f} | {args.structures / medians[mode]:,.0f} | "
              f"{speed[mode]:.2f}x | {speed_best[mode]:.2f}x | {', '.join(f'{x:.2f}' for x in per_round[mode])} | "
              f"{speed_cpu[mode]:.2f}x |")
    for mode, goal in GOALS.items():
        print(f"goal {mode} >= {goal}x: {speed[mode]:.2f}x, {'met' if speed[mode] >= goal else 'MISSED'}")
    print(f"same graphs in both revisions' files: {report['same_graphs']}; v3 models: {origin}")
    return report


if __name__ == "__main__":
    main()
