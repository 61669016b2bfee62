"""Two releases of a pretrained model on the same crystals, none of which either trained on.

    python benchmarks/release_compare.py --graphs mp.h5 [--old srscreen/pretrained/v2] [--new srscreen/pretrained/v3]

Each release's test figures come from its own split (v2: 10% of the shared set, seed 0; v3: 5%, seed 24),
so they are not comparable: a few crystals with errors of eV/atom move a 1,653-crystal MAE by 0.01. This
scores the Ef and Eg files of both releases on the crystals that both held out of training (each file's
validation and test parts: neither took a gradient step on them; each picked its best epoch on its own
validation part, a small and equal optimism), and on the stricter intersection of the two test parts.
Predictions as `srscreen predict` gives them (whole ensembles, gaps clipped at 0). Writes
benchmarks/results/release_compare.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from pretrained_metrics import SHARED_LABELS  # benchmarks/pretrained_metrics.py
from srscreen.data.labels import match, read_labels
from srscreen.model.model_file import ModelFile
from srscreen.screening.predict import predict

ROOT = Path(__file__).resolve().parents[1]
FILES = {"formation_energy_per_atom": "sr-cgcnn-ef.pt", "band_gap": "sr-cgcnn-eg.pt"}


def held_out(model: ModelFile, parts: tuple[str, ...]) -> set[str]:
    split = model.training["split"]
    return {i for p in parts for i in split[p]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--graphs", type=Path, required=True, help="graph file of the shared MP set")
    parser.add_argument("--labels", type=Path, default=SHARED_LABELS)
    parser.add_argument("--old", type=Path, default=ROOT / "srscreen" / "pretrained" / "v2")
    parser.add_argument("--new", type=Path, default=ROOT / "srscreen" / "pretrained" / "v3")
    args = parser.parse_args()
    results: dict[str, dict] = {}
    for target, name in FILES.items():
        old, new = ModelFile.load(args.old / name), ModelFile.load(args.new / name)
        rankings = {release: predict(args.graphs, [m]) for release, m in (("old", old), ("new", new))}
        labels = read_labels(args.labels, target)
        sets = {"held out by both (validation + test of each)": held_out(old, ("val", "test")) & held_out(new, ("val", "test")),
                "in both test parts": held_out(old, ("test",)) & held_out(new, ("test",))}
        for which, ids in sets.items():
            row = {}
            for release, ranking in rankings.items():
                matched = match(ranking.ids, {i: v for i, v in labels.items() if i in ids})
                err = np.abs(ranking.values[target][matched.positions] - matched.values)
                row[release] = {"mae": float(err.mean()), "median_abs_error": float(np.median(err)), "count": len(err)}
            row["change"] = row["new"]["mae"] / row["old"]["mae"] - 1
            results.setdefault(target, {})[which] = row
            print(f"{target}, {which} ({row['new']['count']:,} crystals): {args.old.name} MAE {row['old']['mae']:.4f}, "
                  f"{args.new.name} {row['new']['mae']:.4f} ({row['change']:+.1%})")
    out = ROOT / "benchmarks" / "results" / "release_compare.json"
    out.write_text(json.dumps({"old": str(args.old.relative_to(ROOT)), "new": str(args.new.relative_to(ROOT)),
                               "targets": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
