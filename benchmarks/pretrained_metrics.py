"""Test-split metrics of the pretrained models, as their model cards report them.

    python benchmarks/pretrained_metrics.py --graphs mp.h5 [--labels ../shared/datasets/mp-cgcnn/labels.csv]

Every installed pretrained name (`srscreen models`), run as `srscreen predict` runs it (every member,
band gaps clipped at 0), on the test ids stored in its file (the split made at training time), so the
numbers are on crystals the model never trained or selected on: what `srscreen evaluate GRAPHS
--labels LABELS --model NAME --split test` prints, with sigma's figures for a model that has one. For
the band gap it also reports non-metals alone and the metal / non-metal confusion at 0 eV (a
prediction below --metal-threshold counts as metal). Writes benchmarks/results/pretrained_metrics.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from srscreen.data.labels import match, read_labels
from srscreen.model.registry import pretrained_names, resolve_model
from srscreen.screening.evaluate import evaluate, split_ids
from srscreen.screening.predict import predict
from srscreen.trainer.metrics import metrics

SHARED_LABELS = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "mp-cgcnn" / "labels.csv"
METAL_THRESHOLD = 0.1  # eV: a predicted gap below it calls the crystal a metal


def gap_by_kind(model, graphs: Path, labels: Path, threshold: float) -> dict:
    """Band-gap MAE on the test crystals that are metals (gap 0) and non-metals, and the confusion of
    metal against non-metal at `threshold` eV."""
    test = split_ids(model, "test")
    ranking = predict(graphs, [model])
    matched = match(ranking.ids, {i: v for i, v in read_labels(labels, "band_gap").items() if i in test})
    true, pred = matched.values, ranking.values["band_gap"][matched.positions]
    metal, called_metal = true == 0.0, pred < threshold
    return {"non_metals": vars(metrics(pred[~metal], true[~metal])), "metals": vars(metrics(pred[metal], true[metal])),
            "confusion": {"threshold_eV": threshold,
                          "metal_called_metal": int((metal & called_metal).sum()),
                          "metal_called_non_metal": int((metal & ~called_metal).sum()),
                          "non_metal_called_metal": int((~metal & called_metal).sum()),
                          "non_metal_called_non_metal": int((~metal & ~called_metal).sum())}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--graphs", type=Path, required=True, help="graph file of the shared MP set")
    parser.add_argument("--labels", type=Path, default=SHARED_LABELS)
    parser.add_argument("--metal-threshold", type=float, default=METAL_THRESHOLD, help="eV: predicted gaps below count as metal")
    args = parser.parse_args()
    results = {}
    for name in pretrained_names():
        model = resolve_model(name)
        per_target = evaluate(args.graphs, args.labels, [model], split="test")[name]
        results[name] = {"file": str(model.source), "members": model.n_members,
                         "best_epoch": model.training.get("best_epoch"), "targets": {}}
        for target, figures in per_target.items():
            row = {"unit": model.unit_of(target), "test": vars(figures)}
            if target == "band_gap":
                row |= gap_by_kind(model, args.graphs, args.labels, args.metal_threshold)
            results[name]["targets"][target] = row
            sigma = (f"; sigma within 1/2: {figures.within_1std:.3f}/{figures.within_2std:.3f}, Spearman "
                     f"{figures.spearman:.3f}" if hasattr(figures, "spearman") else "")
            print(f"{name} {target}: test MAE {figures.mae:.4f} {row['unit']} on {figures.count} crystals "
                  f"(RMSE {figures.rmse:.4f}, R² {figures.r2:.3f}){sigma}")
            if "non_metals" in row:
                c = row["confusion"]
                print(f"  non-metals: MAE {row['non_metals']['mae']:.4f} eV on {row['non_metals']['count']}; "
                      f"metals: MAE {row['metals']['mae']:.4f} eV on {row['metals']['count']}; at {c['threshold_eV']} eV "
                      f"metals called non-metal {c['metal_called_non_metal']}, non-metals called metal "
                      f"{c['non_metal_called_metal']}")
    out = Path(__file__).parent / "results" / "pretrained_metrics.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
