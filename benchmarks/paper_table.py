"""The SR-CGCNN paper's table on the shared Materials Project set, and a depth sweep.

    python benchmarks/paper_table.py table [--epochs 100] [--graphs mp.h5]   # CGCNN-3 vs SR-CGCNN-3, 3 seeds, Ef and Eg
    python benchmarks/paper_table.py sweep [--epochs 100]                    # SR steps 1-8, CGCNN layers 1-4, Ef, seed 0
    python benchmarks/paper_table.py report                                  # table + plot from what has finished

Every run uses identical training: AdamW (no weight decay, i.e. Adam), lr 1e-3 divided by 10 at 80%
of the epochs, MSE loss, batch 256, the same 80/10/10 split (seed 0, written once to a split file)
and model seeds 0, 1, 2. Runs are resumable run by run (finished ones are skipped) and epoch by epoch
(each run checkpoints every epoch; rerunning the same command continues). Results, with every run's
per-epoch log and test MAE, go to benchmarks/results/paper_table.json; the sweep's plot to
benchmarks/results/depth_sweep.png. Git keeps the JSON, the logs, the split and an unfinished run's
checkpoint, not the model files (each carries its split's ids, ~1 MB).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np

from srscreen.model.model_file import ModelFile
from srscreen import featurize
from srscreen.data.labels import match, read_labels
from srscreen.data.graph_file import GraphFile
from srscreen import TrainConfig, train

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[1] / "shared" / "datasets" / "mp-cgcnn"
RESULTS = HERE / "results"
RUNS = RESULTS / "paper_runs"
TARGETS = {"formation_energy_per_atom": "Ef", "band_gap": "Eg"}
PAPER = {  # the paper's table: test MAE mean, std (three seeds)
    ("CGCNN-3", "Ef"): (0.0945, 0.0012), ("SR-CGCNN-3", "Ef"): (0.0986, 0.0015),
    ("CGCNN-3", "Eg"): (0.4346, 0.0021), ("SR-CGCNN-3", "Eg"): (0.4503, 0.0028),
}


def run_name(shared: bool, steps: int, target: str, seed: int) -> str:
    return f"{'SR-CGCNN' if shared else 'CGCNN'}-{steps}_{TARGETS[target]}_seed{seed}"


def split_file(graphs: Path, labels: Path) -> Path:
    """One 80/10/10 split of the crystals labelled for both targets, shared by every run."""
    path = RUNS / "split.csv"
    if path.exists():
        return path
    with GraphFile(graphs) as g:
        ids = list(g.ids())
    both = set(match(ids, read_labels(labels, "formation_energy_per_atom")).positions.tolist())
    both &= set(match(ids, read_labels(labels, "band_gap")).positions.tolist())
    order = sorted((ids[p] for p in both))
    order = [order[i] for i in np.random.default_rng(0).permutation(len(order))]
    n = len(order)
    parts = ["test"] * round(0.1 * n) + ["val"] * round(0.1 * n)
    parts += ["train"] * (n - len(parts))
    RUNS.mkdir(parents=True, exist_ok=True)
    path.write_text("id,split\n" + "".join(f"{i},{p}\n" for i, p in zip(order, parts)))
    return path


def run(graphs: Path, labels: Path, split: Path, *, shared: bool, steps: int, target: str, seed: int,
        epochs: int, compile: bool | None, note: str) -> dict:
    name = run_name(shared, steps, target, seed)
    out = RUNS / f"{name}.pt"
    if not out.exists():
        print(f"running {name} ({epochs} epochs)", flush=True)
        config = TrainConfig(target=target, steps=steps, shared=shared, epochs=epochs, batch_size=256, lr=1e-3,
                             loss="mse", schedule="multistep", milestones=(int(0.8 * epochs),), seed=seed)
        train(graphs, labels, out, config, split_file=split, resume=True, compile=compile,
              command=f"python benchmarks/paper_table.py {note} --epochs {epochs}")
        out.with_name(out.name + ".ckpt").unlink()  # finished: only an unfinished run's checkpoint is kept
    model = ModelFile.load(out)
    log = [json.loads(line) for line in out.with_name(out.name + ".log.jsonl").read_text().splitlines()]
    conv = model.build_model().conv_parameter_count()
    return {"name": name, "model": name.split("_")[0], "target": TARGETS[target], "seed": seed, "steps": steps,
            "shared": shared, "conv_parameters": conv, "test_mae": model.training["test"]["mae"],
            "val_mae": model.training["val_mae"], "epochs": epochs, "log": log}


def plan(kind: str) -> list[tuple[bool, int, str, int]]:
    if kind == "table":
        # Seed by seed, so that an interrupted table already compares both models on both targets.
        return [(shared, 3, target, seed) for seed in (0, 1, 2) for target in TARGETS for shared in (False, True)]
    # Shallow first and both models at each depth, so that an interrupted sweep already has both curves.
    depths = [(True, s) for s in (1, 2, 3, 4, 6, 8)] + [(False, s) for s in (1, 2, 3, 4)]
    return [(shared, s, "formation_energy_per_atom", 0) for shared, s in sorted(depths, key=lambda d: (d[1], d[0]))]


def finished() -> list[dict]:
    path = RESULTS / "paper_table.json"
    return json.loads(path.read_text())["runs"] if path.exists() else []


def save(runs: list[dict], epochs: int) -> None:
    RESULTS.mkdir(exist_ok=True)
    table = {}
    for (model, target), (mean, std) in PAPER.items():
        maes = [r["test_mae"] for r in runs if r["model"] == model and r["target"] == target and r["steps"] == 3]
        table[f"{model} {target}"] = {
            "paper": [mean, std], "ours_mean": statistics.mean(maes) if maes else None,
            "ours_std": statistics.stdev(maes) if len(maes) > 1 else None, "seeds_done": len(maes),
        }
    (RESULTS / "paper_table.json").write_text(json.dumps({"epochs": epochs, "table": table, "runs": runs}, indent=1))


def report(runs: list[dict]) -> None:
    """The table as Markdown (what README shows), then the sweep's plot once it has runs."""
    print("| model | conv params | Ef test MAE, ours (eV/atom) | Ef, paper | Eg test MAE, ours (eV) | Eg, paper |")
    print("|---|---|---|---|---|---|")
    for model in ("CGCNN-3", "SR-CGCNN-3"):
        rs = [r for r in runs if r["model"] == model]
        cells = [model, f"{rs[0]['conv_parameters']:,}" if rs else "-"]
        for target in ("Ef", "Eg"):
            maes = [r["test_mae"] for r in rs if r["target"] == target]
            ours = (f"{statistics.mean(maes):.4f} ± {statistics.stdev(maes):.4f}" if len(maes) > 1
                    else (f"{maes[0]:.4f}" if maes else "not run"))
            mean, std = PAPER[(model, target)]
            cells += [f"{ours} ({len(maes)} seed{'s' if len(maes) != 1 else ''})", f"{mean:.4f} ± {std:.4f}"]
        print("| " + " | ".join(cells) + " |")
    sweep = [r for r in runs if r["target"] == "Ef" and r["seed"] == 0]
    if len({(r["shared"], r["steps"]) for r in sweep}) > 2:
        print("\n| steps / layers | SR-CGCNN conv params | SR-CGCNN Ef test MAE | CGCNN conv params | CGCNN Ef test MAE |")
        print("|---|---|---|---|---|")
        for steps in sorted({r["steps"] for r in sweep}):
            cells = [str(steps)]
            for shared in (True, False):
                r = next((r for r in sweep if r["steps"] == steps and r["shared"] == shared), None)
                cells += [f"{r['conv_parameters']:,}", f"{r['test_mae']:.4f}"] if r else ["-", "not run"]
            print("| " + " | ".join(cells) + " |")
        plot_sweep(sweep)


def plot_sweep(sweep: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for shared, label in ((True, "SR-CGCNN (shared)"), (False, "CGCNN (stacked)")):
        rs = sorted((r for r in sweep if r["shared"] == shared), key=lambda r: r["steps"])
        if rs:
            axes[0].plot([r["steps"] for r in rs], [r["test_mae"] for r in rs], "o-", label=label)
            axes[1].plot([r["conv_parameters"] for r in rs], [r["test_mae"] for r in rs], "o-", label=label)
    axes[0].set_xticks(sorted({r["steps"] for r in sweep}))
    axes[0].set_xlabel("message-passing steps / layers")
    axes[1].set_xlabel("convolution parameters")
    axes[1].set_xscale("log")
    for ax in axes:
        ax.set_ylabel("Ef test MAE (eV/atom)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "depth_sweep.png", dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("table", "sweep", "report"))
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--graphs", type=Path, default=RUNS / "mp.h5")
    parser.add_argument("--labels", type=Path, default=SHARED / "labels.csv")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="fuse the convolutions with torch.compile (default: srscreen train's rule, on here)")
    args = parser.parse_args()
    if args.what == "report":
        report(finished())
        return
    if not args.labels.exists():
        raise SystemExit(f"no data: {args.labels} is absent")
    if not args.graphs.exists():
        args.graphs.parent.mkdir(parents=True, exist_ok=True)
        featurize(SHARED / "structures", args.graphs)
    split = split_file(args.graphs, args.labels)
    runs = {r["name"]: r for r in finished()}
    for shared, steps, target, seed in plan(args.what):
        done = runs.get(run_name(shared, steps, target, seed))
        if done is not None and done["epochs"] == args.epochs:
            continue  # recorded in the JSON (model files are not kept in git)
        r = run(args.graphs, args.labels, split, shared=shared, steps=steps, target=target, seed=seed,
                epochs=args.epochs, compile=args.compile, note=args.what)
        runs[r["name"]] = r
        save(list(runs.values()), args.epochs)
    report(list(runs.values()))


if __name__ == "__main__":
    main()
