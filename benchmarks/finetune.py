"""What fine-tuning buys: a chemistry family held out of training, then learned from a few hundred examples.

    python benchmarks/finetune.py [--graphs mp.h5] [--labels labels.csv] [--family fluorides|nitrides]
                                  [--base-subset 10000] [--base-epochs 20] [--tune-size 300]
                                  [--tune-epochs 100] [--repeats 3] [--seed 0] [--threads 1] [--compile]

The family is every crystal that contains the family's element (fluorides: at least one F atom,
nitrides: at least one N atom), whatever else it contains (oxyfluorides, oxynitrides, ... included),
read from the atomic numbers stored in the graph file. Target: formation energy (eV/atom).

1. Base model: SR-CGCNN-3 (srscreen's default architecture) trained on crystals *without* the family
   element: a seeded random --base-subset of them (90% train / 10% validation; another
   --base-test of them, never trained on, measure the base model on its own kind of chemistry).
2. The family is cut once (seeded) into a fixed held-out test set (--test-size crystals) and a pool.
   Each repeat draws a tune set of --tune-size crystals from the pool (85% train / 15% validation).
3. On the fixed family test set, in MAE (eV/atom):
   - untuned:          the base model as it is;
   - fine-tuned (all): the base model fine-tuned on the tune set, every weight trainable (--tune-lr);
   - fine-tuned (head): the same with the embedding and convolutions frozen (freeze_conv);
   - from scratch:     SR-CGCNN-3 trained on the tune set alone (--scratch-lr), same epochs, batch
                       and early stopping as fine-tuning.
   Every run keeps its best epoch by validation MAE (srscreen.trainer.trainer.train), and the table reports
   mean and standard deviation over the repeats (each repeat is another tune set and training seed).

All training goes through srscreen.trainer.trainer.train with split files; predictions through
srscreen.trainer.trainer.predict_positions. Prints a table and writes benchmarks/results/finetune.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from srscreen.model.model_file import ModelFile
from srscreen.data.training_set import GraphSet
from srscreen.data.labels import match, read_labels
from srscreen.trainer.trainer import TrainConfig, metrics, predict_positions, train

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets" / "mp-cgcnn"
TARGET = "formation_energy_per_atom"
FAMILIES = {"fluorides": ("F", 9), "nitrides": ("N", 7)}


def family_mask(graphs: GraphSet, z: int) -> np.ndarray:
    """True for every crystal with at least one atom of atomic number z."""
    has = (graphs.atomic_numbers == z).astype(np.int64)
    # Nodes per crystal are contiguous (CSR): count per crystal with a cumulative sum at the boundaries.
    csum = np.concatenate([[0], np.cumsum(has)])
    return (csum[graphs.node_start + graphs.n_nodes] - csum[graphs.node_start]) > 0


def write_split(path: Path, graphs: GraphSet, parts: dict[str, np.ndarray]) -> None:
    with path.open("w") as f:
        f.write("id,split\n")
        for name, positions in parts.items():
            for p in positions:
                f.write(f"{graphs.ids[p]},{name}\n")


def mae(model_file: ModelFile, graphs: GraphSet, positions: np.ndarray, y: np.ndarray) -> float:
    """MAE (target unit) of a model on these crystals."""
    pred = predict_positions(model_file.build_model(), graphs, positions)
    pred = pred * model_file.normalizer["std"] + model_file.normalizer["mean"]
    return metrics(pred, y[positions]).mae


def run_training(name: str, tmp: Path, graphs_path: Path, labels: Path, graphs: GraphSet, parts: dict,
                 config: TrainConfig, init: ModelFile | None = None, compile: bool = False) -> tuple[ModelFile, dict]:
    split = tmp / f"{name}.split.csv"
    write_split(split, graphs, parts)
    t0 = time.perf_counter()
    result = train(graphs_path, labels, tmp / f"{name}.pt", config, init=init, split_file=split, compile=compile,
                   command=f"benchmarks/finetune.py ({name})")
    wall = time.perf_counter() - t0
    info = {"epochs_run": len(result.history), "best_epoch": result.model_file.training["best_epoch"],
            "val_mae": result.model_file.training["val_mae"], "wall_s": wall}
    print(f"  {name}: {info['epochs_run']} epochs (best {info['best_epoch']}), val MAE {info['val_mae']:.4f}, "
          f"{wall:.0f} s", file=sys.stderr, flush=True)
    return result.model_file, info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--graphs", type=Path, help="graph file of the MP set (default: featurize it into a temp dir)")
    parser.add_argument("--labels", type=Path, default=SHARED / "labels.csv")
    parser.add_argument("--family", choices=sorted(FAMILIES), default="fluorides")
    parser.add_argument("--base-subset", type=int, default=10000,
                        help="crystals (outside the family) the base model trains and validates on; 0 = all")
    parser.add_argument("--base-test", type=int, default=1000, help="other non-family crystals, base model test")
    parser.add_argument("--base-epochs", type=int, default=20)
    parser.add_argument("--base-lr", type=float, default=1e-3)
    parser.add_argument("--tune-size", type=int, default=300, help="labelled family crystals (train + val)")
    parser.add_argument("--tune-val", type=float, default=0.15, help="fraction of the tune set used for validation")
    parser.add_argument("--test-size", type=int, default=1000, help="held-out family crystals (fixed across repeats)")
    parser.add_argument("--tune-epochs", type=int, default=100)
    parser.add_argument("--tune-batch", type=int, default=32)
    parser.add_argument("--tune-patience", type=int, default=30)
    parser.add_argument("--tune-lr", type=float, default=3e-4, help="fine-tuning learning rate")
    parser.add_argument("--scratch-lr", type=float, default=1e-3, help="from-scratch learning rate")
    parser.add_argument("--repeats", type=int, default=3, help="tune sets (and seeds) to average over")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--compile", action="store_true", help="torch.compile the base training (not the small runs)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "finetune.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    load_at_start = os.getloadavg()

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        graphs_path = args.graphs
        if graphs_path is None:
            if not (SHARED / "structures").exists():
                raise SystemExit(f"no data: {SHARED / 'structures'} is absent; pass --graphs FILE")
            from srscreen import featurize

            graphs_path = tmp / "mp.h5"
            featurize(SHARED / "structures", graphs_path, jobs=-1)
        graphs = GraphSet.load(graphs_path)
        matched = match(graphs.ids, read_labels(args.labels, TARGET))
        y = np.full(len(graphs), np.nan)
        y[matched.positions] = matched.values
        labelled = np.zeros(len(graphs), dtype=bool)
        labelled[matched.positions] = True

        symbol, z = FAMILIES[args.family]
        in_family = family_mask(graphs, z)
        rng = np.random.default_rng(args.seed)
        family = rng.permutation(np.flatnonzero(in_family & labelled))
        rest = rng.permutation(np.flatnonzero(~in_family & labelled))
        if args.test_size + args.tune_size > len(family):
            raise SystemExit(f"{args.family}: {len(family)} labelled crystals, fewer than --test-size + --tune-size")
        family_test, pool = family[: args.test_size], family[args.test_size :]
        n_base = len(rest) - args.base_test if args.base_subset == 0 else min(args.base_subset, len(rest) - args.base_test)
        base_test, base_set = rest[: args.base_test], rest[args.base_test : args.base_test + n_base]
        n_base_val = int(round(0.1 * len(base_set)))
        print(f"{args.family} (contain {symbol}): {len(family)} labelled; test {len(family_test)}, pool {len(pool)}. "
              f"Base: {len(base_set) - n_base_val} train / {n_base_val} val / {len(base_test)} test of {len(rest)} "
              f"without {symbol}", file=sys.stderr, flush=True)

        base_config = TrainConfig(target=TARGET, epochs=args.base_epochs, lr=args.base_lr, schedule="cosine",
                                  seed=args.seed)
        base, base_info = run_training(
            "base", tmp, graphs_path, args.labels, graphs,
            {"train": base_set[n_base_val:], "val": base_set[:n_base_val], "test": base_test},
            base_config, compile=args.compile)
        base_info["mae_own_test"] = mae(base, graphs, base_test, y)
        untuned = mae(base, graphs, family_test, y)
        print(f"  base: MAE {base_info['mae_own_test']:.4f} on its own test, {untuned:.4f} on {args.family}",
              file=sys.stderr, flush=True)

        variants = {
            "fine-tuned (all weights)": dict(init=base, lr=args.tune_lr, freeze_conv=False),
            "fine-tuned (head only)": dict(init=base, lr=args.tune_lr, freeze_conv=True),
            "from scratch": dict(init=None, lr=args.scratch_lr, freeze_conv=False),
        }
        repeats = []
        for r in range(args.repeats):
            tune = np.random.default_rng([args.seed, r]).permutation(pool)[: args.tune_size]
            n_val = int(round(args.tune_val * len(tune)))
            parts = {"train": tune[n_val:], "val": tune[:n_val]}
            runs = {}
            for name, v in variants.items():
                config = TrainConfig(target=TARGET, epochs=args.tune_epochs, batch_size=args.tune_batch, lr=v["lr"],
                                     schedule="cosine", patience=args.tune_patience, seed=args.seed + r,
                                     freeze_conv=v["freeze_conv"])
                tag = ("scratch" if v["init"] is None else "finetune-head" if v["freeze_conv"] else "finetune-all") + f"-r{r}"
                model_file, info = run_training(tag, tmp, graphs_path, args.labels, graphs, parts, config,
                                                init=v["init"])
                info["mae_family_test"] = mae(model_file, graphs, family_test, y)
                runs[name] = info
            repeats.append({"tune_train": len(parts["train"]), "tune_val": len(parts["val"]),
                            "untuned_val_mae": mae(base, graphs, parts["val"], y), "runs": runs})
            print(f"  repeat {r}: " + ", ".join(f"{k} {v['mae_family_test']:.4f}" for k, v in runs.items()),
                  file=sys.stderr, flush=True)

    summary = {"untuned": {"mean": untuned, "std": 0.0}}
    for name in variants:
        values = np.array([rep["runs"][name]["mae_family_test"] for rep in repeats])
        summary[name] = {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                         "values": values.tolist()}
    wall = time.perf_counter() - started

    n_tune_train = repeats[0]["tune_train"] if repeats else 0
    print(f"\nFormation energy MAE (eV/atom) on {len(family_test)} held-out {args.family} "
          f"(crystals containing {symbol}); base model trained on {len(base_set) - n_base_val} crystals "
          f"without {symbol} for {args.base_epochs} epochs; tune set {args.tune_size} "
          f"({n_tune_train} train + {args.tune_size - n_tune_train} val), {args.repeats} repeats")
    print(f"{'model':<28} {'MAE':>8} {'± sd':>8}   per repeat")
    for name, s in summary.items():
        per = " ".join(f"{v:.4f}" for v in s.get("values", []))
        print(f"{name:<28} {s['mean']:8.4f} {s['std']:8.4f}   {per}")
    print(f"{'(base on its own test set)':<28} {base_info['mae_own_test']:8.4f}   "
          f"{len(base_test)} crystals without {symbol}")
    print(f"wall time {wall / 60:.1f} min")

    result = {
        "target": TARGET,
        "unit": "eV/atom",
        "family": args.family,
        "family_definition": f"every crystal with at least one {symbol} atom (Z={z}), whatever else it contains",
        "data": {"graphs": str(args.graphs or "featurized from " + str(SHARED / "structures")),
                 "labels": str(args.labels), "crystals": len(graphs), "labelled": int(labelled.sum()),
                 "family_labelled": int(len(family)), "rest_labelled": int(len(rest))},
        "sizes": {"family_test": int(len(family_test)), "family_pool": int(len(pool)),
                  "tune": args.tune_size, "tune_train": n_tune_train, "tune_val": args.tune_size - n_tune_train,
                  "base_train": int(len(base_set) - n_base_val), "base_val": int(n_base_val),
                  "base_test": int(len(base_test))},
        "config": {"base": {**{k: v for k, v in vars(base_config).items()}, "milestones": list(base_config.milestones),
                            "compile": args.compile},
                   "tune": {"epochs": args.tune_epochs, "batch_size": args.tune_batch, "patience": args.tune_patience,
                            "schedule": "cosine", "finetune_lr": args.tune_lr, "scratch_lr": args.scratch_lr,
                            "architecture": "SR-CGCNN-3 (steps=3, shared=True, 64/128, n_h=1)"},
                   "repeats": args.repeats, "seed": args.seed, "threads": args.threads},
        "base": base_info,
        "family_test_mae": summary,
        "repeats": repeats,
        "wall_time_s": wall,
        "machine": {"cpus": os.cpu_count(), "loadavg_at_start": list(load_at_start), "python": platform.python_version(),
                    "torch": torch.__version__},
        "command": " ".join(["python", "benchmarks/finetune.py", *sys.argv[1:]]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
