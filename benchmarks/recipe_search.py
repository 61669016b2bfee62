"""The recipe search and the deep ensembles for the pretrained models, run as a resumable compute budget.

    python benchmarks/recipe_search.py plan                  # the runs, their cost, what is done
    nice -n 10 python benchmarks/recipe_search.py run --graphs mp.h5 [--workers 2] [--stage screen]
    python benchmarks/recipe_search.py report                # Markdown table: MAE vs parameters vs compute

Every run is one `srscreen train` with `--resume`, writing `benchmarks/results/recipe/NAME.pt` and its
per-epoch log `NAME.pt.log.jsonl`; a finished run adds its line (parameters, compute, val and test MAE)
to `recipe/summary.jsonl`. Logs and the summary are kept in git; weights and checkpoints are not, so
the summary, not the weights, says which runs are done. Stopping the script
at any moment loses at most the epoch in progress: `run` again resumes every unfinished run from its
checkpoint and skips the finished ones, across sessions. All runs share one split: the 80/10/10 split
(seed 0) the shipped models were trained on, written once to `recipe/split.csv`, so test MAEs compare.

Budget on 2 cores: an SR-CGCNN-4 epoch of width 64 takes ~25 s on one thread beside another run
(width 96 ~1.9x, width 128 ~3x: the edge block grows with the square of the width). The screening stage
compares recipes with 60-epoch Ef runs (~25 min each, two at a time: ~4 h for its 14 runs); the final
stage trains the chosen recipe for Ef and Eg with 5 seeds each at 500 epochs (~3.5 h per member per
thread: ~18 h for the 10 members, two at a time), about 6 sessions of 3 h in all.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import read_jsonl  # benchmarks/common.py

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "recipe"
LABELS = ROOT.parent / "shared" / "datasets" / "mp-cgcnn" / "labels.csv"
EF, EG = "formation_energy_per_atom", "band_gap"

BASE = {"steps": 4, "atom-fea-len": 64, "batch-size": 128, "lr": 1e-3, "weight-decay": 0.0, "loss": "l1",
        "schedule": "cosine", "warmup-epochs": 5, "ema-decay": 0.999, "epochs": 60}


def _screen(name: str, **change) -> dict:
    return {"name": f"screen-{name}", "stage": "screen", "target": EF, "seed": 0, "options": {**BASE, **change}}


# What each screening run changes from the shipped recipe (BASE), one factor at a time.
SCREEN = [
    _screen("base"),
    _screen("width96", **{"atom-fea-len": 96}),
    _screen("width128", **{"atom-fea-len": 128}),
    _screen("steps3", steps=3),
    _screen("steps5", steps=5),
    _screen("batch64", **{"batch-size": 64}),
    _screen("batch256", **{"batch-size": 256, "lr": 2e-3}),
    _screen("lr2e-3", lr=2e-3),
    _screen("lr5e-4", lr=5e-4),
    _screen("wd1e-4", **{"weight-decay": 1e-4}),
    _screen("wd1e-3", **{"weight-decay": 1e-3}),
    _screen("huber", loss="huber"),
    _screen("no-ema", **{"ema-decay": 0.0}),
    _screen("ema0.9995", **{"ema-decay": 0.9995}),
    # The one-factor screen (60 epochs, val MAE against base 0.0627): width 128 -11%, width 96 -5%,
    # batch 64 -6%, lr 2e-3 -3%; steps 3-5, weight decay, Huber, EMA on/off within ±1% (noise). Before
    # the ensembles are paid for (days of CPU), the levers that helped, combined:
    _screen("w128-lr2e-3", **{"atom-fea-len": 128, "lr": 2e-3}),
    _screen("w128-batch64", **{"atom-fea-len": 128, "batch-size": 64}),
]
# The final recipe is chosen from the screening table (report), the combined runs included; until then,
# the shipped one at 500 epochs. At width 128 an epoch costs ~3x (batch 64: ~1.4x more), so 10 members of
# 300-500 epochs are 40-120 core-hours: 7-20 sessions on 2 cores, or minutes on one lent GPU.
FINAL = {**BASE, "epochs": 500}
ENSEMBLE = [{"name": f"final-{short}-seed{seed}", "stage": "final", "target": target, "seed": seed, "options": FINAL}
            for short, target in (("ef", EF), ("eg", EG)) for seed in range(5)]
PLAN = SCREEN + ENSEMBLE


def log_of(run: dict) -> list[dict]:
    return read_jsonl(RESULTS / f"{run['name']}.pt.log.jsonl")


def summary() -> dict[str, dict]:
    return {row["name"]: row for row in read_jsonl(RESULTS / "summary.jsonl")}


def finished(run: dict) -> bool:
    return run["name"] in summary()


def record(run: dict) -> None:
    """Append a finished run's figures to summary.jsonl, from its model file and its log."""
    from srscreen.model.model_file import ModelFile

    model = ModelFile.load(RESULTS / f"{run['name']}.pt")
    log = log_of(run)
    row = {"name": run["name"], "target": run["target"], "seed": run["seed"], "options": run["options"],
           "parameters": parameters(run["options"]), "epochs": len(log), "best_epoch": model.training["best_epoch"],
           "compute_h": round(sum(r["epoch_s"] for r in log) / 3600, 3), "val_mae": round(model.training["val_mae"], 4),
           "test_mae": round(model.training["test"]["mae"], 4), "test_count": model.training["test"]["count"]}
    with (RESULTS / "summary.jsonl").open("a") as out:
        out.write(json.dumps(row) + "\n")


def parameters(options: dict) -> int:
    """Trainable parameters of a run's network, counted as `srscreen models` counts them (every one, the
    per-step BatchNorms included; summary lines written before this function counted those out)."""
    import torch

    from srscreen.model.network import CrystalGraphNet

    net = CrystalGraphNet(feature_table=torch.zeros(100, 92), steps=options["steps"], shared=True,
                          atom_fea_len=options["atom-fea-len"])
    return sum(p.numel() for p in net.parameters())


def write_split(path: Path) -> None:
    """The shipped models' split (stored in their model files), as `id,split` rows."""
    from srscreen.model.registry import resolve_model

    split = resolve_model("sr-cgcnn-ef").training["split"]
    rows = [f"{id_},{part}" for part in ("train", "val", "test") for id_ in split[part]]
    path.write_text("id,split\n" + "\n".join(rows) + "\n")


def command(run: dict, graphs: Path) -> list[str]:
    flags = [item for key, value in run["options"].items() for item in (f"--{key}", str(value))]
    return [sys.executable, "-c", "from srscreen.cli import main; main()", "train", str(graphs), "--labels", str(LABELS),
            "--target", run["target"], "-o", str(RESULTS / f"{run['name']}.pt"), "--split", str(RESULTS / "split.csv"),
            "--seed", str(run["seed"]), "--threads", "1", "--compile", "--resume", "-q", *flags]


def run_one(run: dict, graphs: Path) -> None:
    started = time.time()
    print(f"{time.strftime('%H:%M:%S')} start {run['name']} (epoch {len(log_of(run))} of {run['options']['epochs']})", flush=True)
    result = subprocess.run(command(run, graphs))
    done = result.returncode == 0 and len(log_of(run)) >= run["options"]["epochs"]
    if done:
        record(run)
    status = "done" if done else f"stopped (exit {result.returncode})"
    print(f"{time.strftime('%H:%M:%S')} {status} {run['name']} after {time.time() - started:.0f} s", flush=True)


def report() -> None:
    done = summary()
    print("| run | target | width | steps | changes | parameters | epochs | compute (h) | val MAE | test MAE |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for run in PLAN:
        log = log_of(run)
        if not log:
            continue
        row = done.get(run["name"], {})
        changes = ", ".join(f"{k} {v}" for k, v in run["options"].items() if BASE.get(k) != v) or "shipped recipe"
        params = f"{parameters(run['options']):,}"
        print(f"| {run['name']} | {run['target']} | {run['options']['atom-fea-len']} | {run['options']['steps']} | {changes} | "
              f"{params} | {len(log)}/{run['options']['epochs']} | "
              f"{sum(r['epoch_s'] for r in log) / 3600:.2f} | {min(r['val_mae'] for r in log):.4f} | "
              f"{row.get('test_mae', '–')} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("plan")
    run_parser = sub.add_parser("run")
    run_parser.add_argument("--graphs", type=Path, required=True, help="the shared MP set featurized with the default graph rule")
    run_parser.add_argument("--workers", type=int, default=2)
    run_parser.add_argument("--stage", choices=("screen", "final", "all"), default="all")
    sub.add_parser("report")
    args = parser.parse_args()
    if args.action == "plan":
        for run in PLAN:
            print(f"{run['name']:24s} {run['stage']:6s} {len(log_of(run)):4d}/{run['options']['epochs']} epochs"
                  f"{'  done' if finished(run) else ''}")
        return
    if args.action == "report":
        report()
        return
    if not LABELS.exists():
        sys.exit(f"{LABELS}: the shared MP labels are needed")
    RESULTS.mkdir(parents=True, exist_ok=True)
    if not (RESULTS / "split.csv").exists():
        write_split(RESULTS / "split.csv")
    todo = [r for r in PLAN if not finished(r) and args.stage in ("all", r["stage"])]
    with ThreadPoolExecutor(args.workers) as pool:
        list(pool.map(lambda r: run_one(r, args.graphs.resolve()), todo))


if __name__ == "__main__":
    main()
