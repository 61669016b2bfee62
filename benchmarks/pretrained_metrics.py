"""Test-split metrics of the pretrained models, as their model cards report them.

    python benchmarks/pretrained_metrics.py --graphs mp.h5 [--labels ../shared/datasets/mp-cgcnn/labels.csv]

Uses the test ids stored in each model file (the split made at training time), so the numbers are
on crystals the model never trained or selected on. For the band gap it also reports non-metals
alone and the metal / non-metal confusion at 0 eV (a prediction below --metal-threshold counts
as metal). Writes benchmarks/results/pretrained_metrics.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from srscreen.data.training_set import GraphSet
from srscreen.data.labels import read_labels
from srscreen.model.registry import DEFAULT_MODELS, resolve_model
from srscreen.trainer.trainer import metrics, predict_positions

SHARED_LABELS = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "mp-cgcnn" / "labels.csv"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--graphs", type=Path, required=True, help="graph file of the shared MP set")
    parser.add_argument("--labels", type=Path, default=SHARED_LABELS)
    parser.add_argument("--metal-threshold", type=float, default=0.1, help="eV: predicted gaps below count as metal")
    args = parser.parse_args()
    graphs = GraphSet.load(args.graphs)
    index = {id_: i for i, id_ in enumerate(graphs.ids)}
    results = {}
    for name in DEFAULT_MODELS:
        model = resolve_model(name)
        labels = read_labels(args.labels, model.target)
        test_ids = [i for i in model.training["split"]["test"] if i in index]
        positions = np.array([index[i] for i in test_ids])
        true = np.array([labels[i] for i in test_ids])
        pred = predict_positions(model.build_model(), graphs, positions) * model.normalizer["std"] + model.normalizer["mean"]
        row = {"target": model.target, "unit": model.unit, "test": vars(metrics(pred, true)),
               "epochs_run": model.training["epochs_run"], "best_epoch": model.training["best_epoch"],
               "val_mae": model.training["val_mae"]}
        if model.target == "band_gap":
            metal, called_metal = true == 0.0, pred < args.metal_threshold
            row["non_metals"] = vars(metrics(pred[~metal], true[~metal]))
            row["metals"] = vars(metrics(pred[metal], true[metal]))
            row["confusion"] = {
                "threshold_eV": args.metal_threshold,
                "metal_called_metal": int((metal & called_metal).sum()),
                "metal_called_non_metal": int((metal & ~called_metal).sum()),
                "non_metal_called_metal": int((~metal & called_metal).sum()),
                "non_metal_called_non_metal": int((~metal & ~called_metal).sum()),
            }
        results[name] = row
        print(f"{name}: test MAE {row['test']['mae']:.4f} {model.unit} on {row['test']['count']} crystals "
              f"(RMSE {row['test']['rmse']:.4f}, R² {row['test']['r2']:.3f}); best epoch {row['best_epoch']} "
              f"of {row['epochs_run']}, val MAE {row['val_mae']:.4f}")
        if "non_metals" in row:
            c = row["confusion"]
            print(f"  non-metals: MAE {row['non_metals']['mae']:.4f} eV on {row['non_metals']['count']}; "
                  f"metals: MAE {row['metals']['mae']:.4f} eV on {row['metals']['count']}")
            print(f"  confusion at {c['threshold_eV']} eV: metals called metal {c['metal_called_metal']}, "
                  f"metals called non-metal {c['metal_called_non_metal']}, non-metals called metal "
                  f"{c['non_metal_called_metal']}, non-metals called non-metal {c['non_metal_called_non_metal']}")
    out = Path(__file__).parent / "results" / "pretrained_metrics.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
