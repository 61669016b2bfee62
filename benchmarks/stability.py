"""Stability screening, leave-out test: is a held-out crystal on the convex hull, from predicted Ef?

    python benchmarks/stability.py [--model sr-cgcnn-ef] [--fraction 0.1] [--seed 0] [--jobs 1]

On the shared labelled MP set (../shared/datasets/mp-cgcnn, 33,065 crystals):
- hold out `--fraction` of the labelled crystals (seeded), drawn only from the model file's own test
  split (`training.split.test`), so the srscreen model never trained or selected on them;
- featurize the held-out CIFs with the graph rule each model file records (knn-pbc-v1 or none:
  `--graph-rule cgcnn`; knn-ties-v2: the default) and predict their Ef with `srscreen predict`;
- truth: E_hull of each held-out crystal in the hull of all DFT formation energies (>= 0; 0 on the hull);
- prediction: E_hull in the hull of the other crystals' DFT Ef plus the held-out crystals' PREDICTED Ef;
- stable means E_hull <= 1e-6 eV/atom; F1, precision, recall, DAF (precision / prevalence of stable
  crystals among the held-out) and the MAE of E_hull, for srscreen's model and, in the same run, the
  original CGCNN checkpoint (`srscreen import-cgcnn`, featurized with its atom_init.json);
- also, as `predict --hull` is used: each held-out crystal against the reference of the others only
  (no held-out crystal in the hull; values may be negative), DFT and predicted Ef alike. The hull is then
  the same for both, so the E_hull MAE there is the Ef MAE: only the classification differs.
- with a model that gives a formation-energy sigma (an ensemble, or a model trained with `--scale-head`):
  `srscreen predict --hull --reference OTHERS.csv` (the other crystals' lowest DFT Ef per composition)
  gives each held-out crystal `e_above_hull` and `p_stable`. Two rankings of them are compared, by
  `p_stable` (highest first) and by `e_above_hull` (lowest first), equal values by id as `--sort` breaks
  them: precision and DAF among the first 10% of each; F1 of `p_stable > 0.5` and of `e_above_hull <= 0`
  (the same crystals in exact arithmetic: Phi(-e/sigma) > 0.5 exactly when e < 0); and a reliability
  table of p_stable (5 equal bins: mean p_stable against the fraction truly stable against the same
  reference, and their count-weighted gap, the ECE). A model without sigma skips this part with a note.
Also times `ReferenceHull.e_above_hull` on ~10^6 rows (the set's formulas x 30) with the shipped
reference, cold (every chemical system's hull built) and warm.

Writes benchmarks/results/stability.json (the p_stable comparison under `p_stable`) and stability.png
(predicted vs DFT hull distance).
Caveat printed with the table: the CGCNN checkpoint was trained on 28,046 crystals of the same MP id list
(its split is not published), so it has probably seen many held-out crystals: its figures are optimistic.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
import warnings
from importlib import resources
from pathlib import Path

import numpy as np

from srscreen.model.model_file import ModelFile
from srscreen.model.registry import resolve_model
from srscreen.screening.hull import DEFAULT_REFERENCE, ReferenceHull
from srscreen.screening.reference_hull import composition_of

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DATA = SHARED / "datasets" / "mp-cgcnn"
CGCNN = SHARED / "reference" / "cgcnn"
RESULTS = ROOT / "benchmarks" / "results"
STABLE_TOL = 1e-6  # eV/atom: E_hull at or below this is "on the hull"
RULES = {None: "cgcnn", "knn-pbc-v1": "cgcnn", "knn-ties-v2": "knn-ties"}
ENERGY = "formation_energy_per_atom"  # the column of a model's Ef head, found by target name
TOP_FRACTION = 0.1  # the share of each ranking whose precision and DAF are compared
RELIABILITY_BINS = 5


def read_labels(path: Path) -> dict[str, float]:
    with path.open(newline="") as stream:
        return {r["material_id"]: float(r["formation_energy_per_atom"]) for r in csv.DictReader(stream)
                if r["formation_energy_per_atom"].strip()}


def srscreen(*args: str) -> None:
    subprocess.run(["srscreen", *args], check=True, stdout=subprocess.DEVNULL)


def featurize_for(model, atom_features: Path | None, source: Path, work: Path, cache: dict) -> Path:
    """Graph file of `source` with the settings `model` records (one per distinct setting)."""
    settings = model.graph_settings
    algorithm = settings.get("neighbour_algorithm")
    if algorithm not in RULES:
        raise SystemExit(f"{model.source}: unknown neighbour_algorithm {algorithm!r}")
    key = (RULES[algorithm], settings["radius"], settings["max_nbr"], str(atom_features))
    if key not in cache:
        out = work / f"graphs-{len(cache)}.h5"
        args = ["featurize", str(source), str(out), "-q", "-j", str(JOBS), "--graph-rule", key[0],
                "--radius", str(key[1]), "--max-nbr", str(key[2])]
        srscreen(*args, *(["--atom-features", str(atom_features)] if atom_features else []))
        cache[key] = out
    return cache[key]


def predict_rows(graphs: Path, model: str | Path, out: Path, *options: str) -> dict[str, dict[str, str]]:
    """`srscreen predict`'s rows by id, values as printed."""
    srscreen("predict", str(graphs), "--model", str(model), "-o", str(out), "-q", "--threads", str(JOBS), *options)
    with out.open(newline="") as stream:
        return {r["id"]: r for r in csv.DictReader(stream)}


def write_reference(hull: ReferenceHull, path: Path) -> Path:
    """The hull's compositions as a `--reference` CSV, energies in full precision, so that `predict --hull`
    places crystals against the same hull as `hull`."""
    with path.open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["formula", ENERGY])
        writer.writerows((formula, repr(ef)) for formula, ef in hull.rows())
    return path


def classification(pred: np.ndarray, true: np.ndarray) -> dict:
    return {**scores(pred <= STABLE_TOL, true <= STABLE_TOL), "mae_e_hull": float(np.abs(pred - true).mean())}


def scores(p: np.ndarray, t: np.ndarray) -> dict:
    """Confusion counts, precision, recall, F1 and DAF of the stable calls `p` against the truth `t`."""
    tp, fp, fn = int((p & t).sum()), int((p & ~t).sum()), int((~p & t).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    prevalence = float(t.mean())
    return {"count": len(t), "stable_true": int(t.sum()), "stable_predicted": int(p.sum()),
            "tp": tp, "fp": fp, "fn": fn, "tn": int((~p & ~t).sum()), "prevalence": prevalence,
            "precision": precision, "recall": recall,
            "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
            "daf": precision / prevalence if prevalence else float("nan")}


def top_share(values: np.ndarray, order: np.ndarray, stable: np.ndarray) -> dict:
    """Precision and DAF among the first TOP_FRACTION of the ranking `order` of `values`; `tied_at_cut`
    counts the crystals sharing the last kept value, among which the cut falls by id."""
    k = max(1, math.ceil(TOP_FRACTION * len(order)))
    hits, precision = int(stable[order[:k]].sum()), float(stable[order[:k]].mean())
    return {"k": k, "stable": hits, "precision": precision, "daf": precision / float(stable.mean()),
            "tied_at_cut": int((values == values[order[k - 1]]).sum())}


def reliability(p: np.ndarray, stable: np.ndarray) -> dict:
    """Mean p_stable against the observed stable fraction in RELIABILITY_BINS equal bins of p_stable, and
    the expected calibration error (their gap, weighted by the crystals in each bin)."""
    edges = np.linspace(0.0, 1.0, RELIABILITY_BINS + 1)
    index = np.digitize(p, edges[1:-1])  # bin b holds edges[b] <= p < edges[b + 1]; the last includes 1
    bins = []
    for b in range(RELIABILITY_BINS):
        inside = index == b
        seen = bool(inside.any())
        bins.append({"low": float(edges[b]), "high": float(edges[b + 1]), "count": int(inside.sum()),
                     "mean_p_stable": float(p[inside].mean()) if seen else None,
                     "stable_fraction": float(stable[inside].mean()) if seen else None})
    ece = sum(b["count"] * abs(b["mean_p_stable"] - b["stable_fraction"]) for b in bins if b["count"]) / len(p)
    return {"bins": bins, "ece": ece}


def p_stable_comparison(rows: dict[str, dict[str, str]], ids: list[str], true_e: np.ndarray) -> dict:
    """Ranking the held-out crystals `ids` (sorted) by predict's `p_stable` against ranking them by its
    `e_above_hull`; `true_e` is their DFT E_hull against the same reference. Rows predict could not place
    (an element outside the reference) are left out and counted."""
    placed = [k for k, i in enumerate(ids) if rows[i]["e_above_hull"] and rows[i]["p_stable"]]
    e = np.array([float(rows[ids[k]]["e_above_hull"]) for k in placed])
    p = np.array([float(rows[ids[k]]["p_stable"]) for k in placed])
    std = np.array([float(rows[ids[k]][f"{ENERGY}_std"]) for k in placed])
    stable = true_e[placed] <= STABLE_TOL
    by_p, by_e = np.argsort(-p, kind="stable"), np.argsort(e, kind="stable")  # ids are sorted: ties by id
    return {"count": len(placed), "not_placed": len(ids) - len(placed), "prevalence": float(stable.mean()),
            "top_fraction": TOP_FRACTION, "ef_std_median": float(np.median(std)),
            "p_stable_printed_as_1": int((p == 1).sum()),
            "by_p_stable": top_share(p, by_p, stable), "by_e_above_hull": top_share(e, by_e, stable),
            "p_stable_above_half": scores(p > 0.5, stable), "e_above_hull_at_most_0": scores(e <= STABLE_TOL, stable),
            "reliability": reliability(p, stable)}


def throughput(formulas: list[str], repeat: int, seed: int) -> dict:
    rows = list(np.random.default_rng(seed).permutation(np.array(formulas * repeat, dtype=object)))
    ef = np.random.default_rng(seed).normal(-1.0, 1.0, len(rows))
    path = resources.files("srscreen").joinpath(DEFAULT_REFERENCE)
    start = time.perf_counter()
    hull = ReferenceHull.from_csv(path)
    load = time.perf_counter() - start
    result = {"rows": len(rows), "unique_formulas": len(set(formulas)), "reference_load_s": load}
    for label in ("cold", "warm"):
        start = time.perf_counter()
        values, _ = hull.e_above_hull(rows, ef)
        seconds = time.perf_counter() - start
        result[f"{label}_s"], result[f"{label}_rows_per_s"] = seconds, len(rows) / seconds
    result["systems_built"] = hull.systems_built
    result["nan_rows"] = int(np.isnan(values).sum())
    return result


def plot(results: dict, data: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    titles = {"pooled": "hull: other crystals (DFT) + held-out (predicted)",
              "reference": "against the other crystals only (as predict --hull)"}
    for ax, protocol in zip(axes, ("pooled", "reference")):
        for name, colour in zip(results["models"], ("tab:blue", "tab:orange")):
            true, pred = data[name][protocol]
            m = results["models"][name][protocol]
            ax.scatter(true, pred, s=4, alpha=0.4, color=colour,
                       label=f"{name}: MAE {m['mae_e_hull']:.3f}, F1 {m['f1']:.2f}")
        lo, hi = (-0.4, 1.0) if protocol == "reference" else (-0.05, 1.0)
        ax.plot([lo, hi], [lo, hi], "k-", lw=0.8)
        ax.axhline(0, color="grey", lw=0.5)
        ax.axvline(0, color="grey", lw=0.5)
        ax.set(xlim=(lo, hi), ylim=(lo, hi), xlabel="DFT E_hull (eV/atom)", ylabel="predicted E_hull (eV/atom)",
               title=titles[protocol])
        ax.title.set_fontsize(10)
        ax.legend(fontsize=8, loc="upper left", markerscale=3)
    fig.suptitle(f"{results['held_out']} held-out MP crystals (test split of the srscreen model)", fontsize=11)
    fig.tight_layout()
    fig.savefig(out, dpi=130)


def main() -> None:
    global JOBS
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="sr-cgcnn-ef", help="srscreen Ef model: pretrained name or file")
    parser.add_argument("--cgcnn", type=Path, default=CGCNN / "formation-energy-per-atom.pth.tar")
    parser.add_argument("--atom-init", type=Path, default=CGCNN / "atom_init.json")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--fraction", type=float, default=0.1, help="of the labelled set, from the test split")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=1, help="featurize workers and torch threads")
    parser.add_argument("--throughput-repeat", type=int, default=30, help="0 skips the 10^6-row timing")
    parser.add_argument("--out", type=Path, default=RESULTS / "stability.json")
    args = parser.parse_args()
    JOBS = args.jobs
    warnings.simplefilter("ignore", UserWarning)  # pymatgen: no electronegativity for He, ...
    started, load_start = time.perf_counter(), os.getloadavg()

    labels = read_labels(args.data / "labels.csv")
    ids = sorted(labels)
    comps = {i: composition_of(args.data / "structures" / f"{i}.cif") for i in ids}
    sr = resolve_model(args.model)
    sr_path = Path(sr.source)
    if ENERGY not in sr.targets:
        raise SystemExit(f"{args.model} predicts {', '.join(sr.targets)}, not {ENERGY}")
    test = sorted(set(sr.training["split"]["test"]) & set(labels))
    n = min(len(test), round(args.fraction * len(ids)))
    held = sorted(np.random.default_rng(args.seed).choice(test, size=n, replace=False).tolist())
    held_set = set(held)
    print(f"{len(ids)} labelled crystals; holding out {n} of the {len(test)} in {sr_path.name}'s test split")
    rest = [(comps[i], labels[i]) for i in ids if i not in held_set]
    rest_hull = ReferenceHull(rest, source="other crystals")
    with_sigma = f"{ENERGY}_std" in sr.columns
    if not with_sigma:
        print(f"{args.model} gives no {ENERGY}_std (neither an ensemble nor a scale head): "
              "the p_stable comparison is skipped")

    with tempfile.TemporaryDirectory(prefix="stability-") as tmp:
        work = Path(tmp)
        source = work / "held-out"
        source.mkdir()
        for i in held:
            (source / f"{i}.cif").symlink_to((args.data / "structures" / f"{i}.cif").resolve())
        cgcnn_path = work / "cgcnn-ef.pt"
        srscreen("import-cgcnn", str(args.cgcnn), "--atom-features", str(args.atom_init),
                 "--target", "formation_energy_per_atom", "--unit", "eV/atom", "-o", str(cgcnn_path))
        models = {args.model: (args.model, sr, None), "cgcnn (original)": (cgcnn_path, ModelFile.load(cgcnn_path), args.atom_init)}
        # With a sigma, srscreen's model also ranks as `predict --hull` does, against the other crystals.
        hull_options = ["--hull", "--reference", str(write_reference(rest_hull, work / "others.csv"))]
        cache: dict = {}
        rows = {}
        for name, (path, model, atom_features) in models.items():
            graphs = featurize_for(model, atom_features, source, work, cache)
            options = hull_options if with_sigma and name == args.model else []
            rows[name] = predict_rows(graphs, path, work / f"pred-{len(rows)}.csv", *options)
    predictions = {name: {i: float(r[ENERGY]) for i, r in by_id.items()} for name, by_id in rows.items()}
    common = [i for i in held if all(i in p for p in predictions.values())]
    print(f"{len(common)} of {n} held-out crystals predicted by both models")

    formulas = [comps[i].reduced_formula for i in common]
    dft = np.array([labels[i] for i in common])
    full_hull = ReferenceHull([(comps[i], labels[i]) for i in ids], source="all DFT")
    true_pooled, _ = full_hull.e_above_hull(formulas, dft)
    true_reference, _ = rest_hull.e_above_hull(formulas, dft)

    results = {"command": shlex.join(["python", "benchmarks/stability.py", *sys.argv[1:]]),
               "data": str(args.data), "held_out": len(common), "fraction": args.fraction, "seed": args.seed,
               "stable_tolerance_eV": STABLE_TOL, "held_out_from": f"{sr_path.name} training.split.test",
               "models": {}, "model_files": {}}
    arrays = {}
    for name, (path, model, _) in models.items():
        pred = np.array([predictions[name][i] for i in common])
        pooled_hull = ReferenceHull([*rest, *zip((comps[i] for i in common), pred)], source="pooled")
        pred_pooled, _ = pooled_hull.e_above_hull(formulas, pred)
        pred_reference, _ = rest_hull.e_above_hull(formulas, pred)
        results["models"][name] = {"ef_mae": float(np.abs(pred - dft).mean()),
                                   "pooled": classification(pred_pooled, true_pooled),
                                   "reference": classification(pred_reference, true_reference)}
        results["model_files"][name] = {"file": str(sr_path) if name == args.model else f"import-cgcnn {args.cgcnn}",
                                        "graph_settings": model.graph_settings,
                                        "trained": model.training.get("command") or model.training.get("origin")}
        arrays[name] = {"pooled": (true_pooled, pred_pooled), "reference": (true_reference, pred_reference)}
    if with_sigma:
        results["p_stable"] = {"model": args.model, **p_stable_comparison(rows[args.model], common, true_reference)}

    if args.throughput_repeat:
        results["throughput"] = throughput([comps[i].reduced_formula for i in ids], args.throughput_repeat, args.seed)
    results["wall_s"] = time.perf_counter() - started
    results["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "load_avg_start": load_start, "load_avg_end": os.getloadavg()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    plot(results, arrays, args.out.with_suffix(".png"))
    report(results)


def report(results: dict) -> None:
    print(f"\nHeld out: {results['held_out']} crystals; stable = E_hull <= {results['stable_tolerance_eV']:g} eV/atom\n")
    print("| model | hull | stable (true / predicted) | precision | recall | F1 | DAF | E_hull MAE (eV/atom) | Ef MAE |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in results["models"].items():
        for protocol, label in (("pooled", "others DFT + held-out predicted"), ("reference", "others only (predict --hull)")):
            m = r[protocol]
            print(f"| {name} | {label} | {m['stable_true']} / {m['stable_predicted']} | {m['precision']:.3f} | "
                  f"{m['recall']:.3f} | {m['f1']:.3f} | {m['daf']:.2f} | {m['mae_e_hull']:.4f} | {r['ef_mae']:.4f} |")
    print("\nPrevalence of stable crystals: " + ", ".join(
        f"{p} {results['models'][next(iter(results['models']))][p]['prevalence']:.3f}" for p in ("pooled", "reference")))
    print("Against the others only, the hull is fixed, so the E_hull MAE equals the Ef MAE.")
    print("The original CGCNN was trained on 28,046 crystals of the same MP id list (split unpublished): it has "
          "probably seen many of these crystals, so its row is optimistic.")
    if "throughput" in results:
        t = results["throughput"]
        print(f"\ne_above_hull on {t['rows']:,} rows ({t['unique_formulas']:,} formulas, {t['systems_built']:,} hulls built): "
              f"cold {t['cold_s']:.2f} s ({t['cold_rows_per_s']:,.0f} rows/s), warm {t['warm_s']:.2f} s "
              f"({t['warm_rows_per_s']:,.0f} rows/s); reference load {t['reference_load_s']:.2f} s")
    if "p_stable" in results:
        report_p_stable(results["p_stable"], results["command"])
    print(f"wall {results['wall_s']:.0f} s")


def report_p_stable(r: dict, command: str) -> None:
    top = f"top {r['top_fraction']:.0%}"
    print(f"\n`{command}`: {r['count']} held-out crystals placed by `srscreen predict --model {r['model']} --hull` "
          f"against the other crystals' hull ({r['not_placed']} not placed); truly stable: DFT E_hull <= 0 against "
          f"the same hull, prevalence {r['prevalence']:.3f}; median Ef sigma {r['ef_std_median']:.4f} eV/atom\n")
    print(f"| ranking | {top}: crystals | {top}: precision | {top}: DAF | classifier | precision | recall | F1 |")
    print("|---|---|---|---|---|---|---|---|")
    for ranking, label, classifier, name in (("by_p_stable", "`p_stable`, highest first", "p_stable_above_half", "`p_stable > 0.5`"),
                                             ("by_e_above_hull", "`e_above_hull`, lowest first", "e_above_hull_at_most_0", "`e_above_hull <= 0`")):
        t, c = r[ranking], r[classifier]
        print(f"| {label} | {t['k']} | {t['precision']:.3f} | {t['daf']:.2f} | {name} | {c['precision']:.3f} | "
              f"{c['recall']:.3f} | {c['f1']:.3f} |")
    tied = r["by_p_stable"]["tied_at_cut"]
    print("\np_stable > 0.5 exactly when e_above_hull < 0, so the two classifiers differ only at e_above_hull = 0. "
          f"p_stable is printed as 1 for {r['p_stable_printed_as_1']} of the crystals"
          + (f"; the {top} cut falls among {tied} equal p_stable values, taken in id order" if tied > 1 else "") + ".\n")
    print("| p_stable | crystals | mean p_stable | truly stable |")
    print("|---|---|---|---|")
    for b in r["reliability"]["bins"]:
        shown = (f"{b['mean_p_stable']:.3f} | {b['stable_fraction']:.3f}" if b["count"] else "– | –")
        print(f"| {b['low']:.1f}–{b['high']:.1f} | {b['count']} | {shown} |")
    print(f"\nExpected calibration error (count-weighted gap): {r['reliability']['ece']:.3f}")


JOBS = 1

if __name__ == "__main__":
    main()
