"""Training speed: seconds per epoch of SR-CGCNN-3 (defaults) over the MP training split, and where they go.

    python benchmarks/train.py [--graphs mp.h5] [--batches N] [--threads 2]

Featurizes ../shared/datasets/mp-cgcnn once (or takes --graphs), then times training steps, each mode
in a fresh process of this same run (so no mode inherits another's thread pool, allocator settings or
compiled kernels): plain eager with glibc's default allocator settings (the baseline), eager with
srscreen's allocator settings (`srscreen.model.allocator`), torch.compile on top, and the last two on classes
of equivalent atoms (`srscreen.graph.equivalent_atoms`, counted once per atom in the batch statistics):
merged-eager and merged (compiled), which is what `srscreen train` runs for long trainings.
Each mode's epoch time is its mean step time times the steps in one epoch over the 80% training
split (26,452 crystals at batch 256); the breakdown splits a step into batch gather, forward,
backward and optimizer. Ratios are against the baseline measured in this same run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from srscreen.model.allocator import reuse_freed_memory
from srscreen.data.training_set import GraphSet, batches
from srscreen.graph.elements import cgcnn_feature_table
from srscreen import featurize
from srscreen.model.network import CrystalGraphNet

from common import MP_CIFS  # benchmarks/common.py

SHARED = MP_CIFS
TRAIN_CRYSTALS = 26452
STEPS = 3


def time_steps(graphs: GraphSet, mode: str, n_batches: int, batch_size: int) -> dict[str, float]:
    if mode != "baseline":
        reuse_freed_memory()
    torch.manual_seed(0)
    model = CrystalGraphNet(feature_table=np.array(cgcnn_feature_table()), steps=STEPS)
    compiled = mode in ("compiled", "merged")
    if compiled:
        model.compile_training()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    y = torch.randn(len(graphs))
    runs = batches(len(graphs), batch_size, np.random.default_rng(0))
    warmup = 3 if compiled else 1
    parts = {"gather": 0.0, "forward": 0.0, "backward": 0.0, "optimizer": 0.0}
    for i, b in enumerate(runs[: warmup + n_batches]):
        t0 = time.perf_counter()
        batch = graphs.batch(b)
        t1 = time.perf_counter()
        loss = F.l1_loss(model(batch), y[b])
        t2 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t3 = time.perf_counter()
        optimizer.step()
        t4 = time.perf_counter()
        if i >= warmup:
            for key, dt in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                parts[key] += dt / n_batches
    steps = -(-TRAIN_CRYSTALS // batch_size)
    return {"epoch_s": sum(parts.values()) * steps, **{f"{k}_s": v * steps for k, v in parts.items()},
            "atoms_per_row": float(graphs.n_atoms.sum() / graphs.n_nodes.sum())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--graphs", type=Path, help="graph file of the MP set (default: featurize it into a temp dir)")
    parser.add_argument("--batches", type=int, default=30, help="timed steps per mode")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--modes", default="baseline,eager,compiled,merged-eager,merged")
    parser.add_argument("--only", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.only:
        graphs = GraphSet.load(args.graphs, steps=STEPS if args.only.startswith("merged") else None)
        print(json.dumps(time_steps(graphs, args.only, args.batches, args.batch_size)))
        return
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = args.graphs
        if path is None:
            if not SHARED.exists():
                raise SystemExit(f"no data: {SHARED} is absent; pass --graphs FILE")
            path = Path(tmp) / "mp.h5"
            featurize(SHARED, path, jobs=-1)
        for mode in args.modes.split(","):
            cmd = [sys.executable, __file__, "--graphs", str(path), "--only", mode, "--batches", str(args.batches),
                   "--batch-size", str(args.batch_size), "--threads", str(args.threads)]
            run = subprocess.run(cmd, check=True, capture_output=True, text=True)
            results[mode] = json.loads(run.stdout.splitlines()[-1])
    base = results.get("baseline", next(iter(results.values())))["epoch_s"]
    print(f"SR-CGCNN-3, batch {args.batch_size}, {args.threads} threads, {args.batches} timed steps per mode")
    print(f"{'mode':<13}{'s/epoch':>9}{'vs base':>10}{'gather':>9}{'forward':>9}{'backward':>10}{'optim':>8}")
    for mode, r in results.items():
        print(f"{mode:<13}{r['epoch_s']:>9.1f}{base / r['epoch_s']:>9.2f}x{r['gather_s']:>9.1f}{r['forward_s']:>9.1f}"
              f"{r['backward_s']:>10.1f}{r['optimizer_s']:>8.1f}   ({r['atoms_per_row']:.2f} atoms per graph row)")
    out = Path(__file__).parent / "results" / "train.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"threads": args.threads, "batch_size": args.batch_size, "modes": results}, indent=1))


if __name__ == "__main__":
    main()
