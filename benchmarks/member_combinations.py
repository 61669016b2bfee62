"""Which finished campaign members to put in each shipped ensemble: every combination, measured.

    python benchmarks/member_combinations.py --graphs mp.h5

For each target, the finished final-stage members that predict it (benchmarks/campaign.py FINAL: the
single-target members and the head of the multi-target fast network) are combined in every subset,
equal weights, and scored on the final split's validation crystals (what a choice may be made on) and
test crystals (reported, never chosen on). Each member is predicted once, as `srscreen predict --fast`
would run it (its means, gaps clipped at 0, one-element formation energies floored at 0). The question
it answers: does another member of the same network or a head of another network lower the ensemble's
error more, for the cost of one more forward in the default? Writes
benchmarks/results/campaign/member_combinations.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np

from campaign import FINAL, RESULTS, summary  # benchmarks/campaign.py
from pretrained_metrics import SHARED_LABELS  # benchmarks/pretrained_metrics.py
from srscreen.data.labels import match, read_labels
from srscreen.model.model_file import ModelFile
from srscreen.screening.predict import predict


def members_of(target: str) -> list[str]:
    """The finished final members whose network predicts `target`."""
    done = summary()
    return [f"{name}-seed{seed}" for name, targets, seeds, _ in FINAL if target in targets
            for seed in seeds if f"{name}-seed{seed}" in done]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--graphs", type=Path, required=True, help="graph file of the shared MP set")
    parser.add_argument("--labels", type=Path, default=SHARED_LABELS)
    args = parser.parse_args()
    results: dict[str, list[dict]] = {}
    for target in ("formation_energy_per_atom", "band_gap"):
        names = members_of(target)
        models = {n: ModelFile.load(RESULTS / f"{n}.pt").select([target]).fast() for n in names}
        split = next(iter(models.values())).training["split"]
        predicted = {}
        for n, m in models.items():
            ranking = predict(args.graphs, [m])
            predicted[n] = dict(zip(ranking.ids, ranking.values[target]))
        labels = read_labels(args.labels, target)
        results[target] = []
        for size in range(1, len(names) + 1):
            for combo in itertools.combinations(names, size):
                row = {"members": list(combo)}
                for part in ("val", "test"):
                    ids = [i for i in split[part] if all(i in predicted[n] for n in combo)]
                    matched = match(ids, labels)
                    mean = np.mean([[predicted[n][ids[p]] for p in matched.positions] for n in combo], axis=0)
                    row[f"{part}_mae"] = round(float(np.abs(mean - matched.values).mean()), 5)
                    row[f"{part}_crystals"] = len(matched.positions)
                results[target].append(row)
                print(f"{target:26s} {' + '.join(combo):60s} val {row['val_mae']:.5f}  test {row['test_mae']:.5f}")
    (RESULTS / "member_combinations.json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
