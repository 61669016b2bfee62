"""Prediction speed and memory: `predict --top 100` with the Ef + Eg pair, against reading the file alone.

    python benchmarks/predict.py [--graphs mp.h5] [--threads 2] [--device auto]

Featurizes ../shared/datasets/mp-cgcnn once (or takes --graphs; either way with the graph rule the models
were trained on), then in one run:
- read-only: stream every shard and build every batch, no model (the I/O limit); then the time to
  merge equivalent atoms alone, and how many atoms per class that leaves;
- predict: the pretrained sr-cgcnn-ef and sr-cgcnn-eg (or, if not installed, untrained models of the
  same architecture: speed does not depend on the weights) with --top 100, eager and through
  torch.compile; structures/s over the whole run (compile included) and after the first shard (the
  rate a long screening runs at, the one-off compile excluded), and the ratio to the read-only time;
- the baseline in the same run: compiled, but convolving every atom (no merging of equivalent atoms);
- peak RSS of `srscreen predict --top 100` in a fresh process on a small and on the full file
  (flat memory: it should not grow with the file).
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

import srscreen.screening.predict as predict_module
from srscreen.data.batch import collate, pack_by_atoms
from srscreen.model.model_file import ModelFile
from srscreen.graph.elements import cgcnn_feature_table
from srscreen.graph.equivalent_atoms import quotient, unmerged
from srscreen import featurize
from srscreen.data.featurize import FeaturizeOptions
from srscreen.graph.settings import ALGORITHMS, GraphSettings
from srscreen.model.network import CrystalGraphNet
from srscreen import predict
from srscreen.model.registry import DEFAULT_MODELS, pretrained_names, resolve_model
from srscreen.data.graph_file import GraphFile

from common import MP_CIFS  # benchmarks/common.py

SHARED = MP_CIFS


def models(tmp: Path) -> tuple[list[str], str]:
    """Model names or files for the pair, and where they came from."""
    if all(name in pretrained_names() for name in DEFAULT_MODELS):
        return list(DEFAULT_MODELS), "pretrained"
    files = []
    for target, unit in (("formation_energy_per_atom", "eV/atom"), ("band_gap", "eV")):
        net = CrystalGraphNet(feature_table=np.array(cgcnn_feature_table()))
        path = tmp / f"{target}.pt"
        ModelFile.from_model(net.eval(), graph_settings=GraphSettings().as_attrs(), target=target, unit=unit,
                             normalizer={"mean": 0.0, "std": 1.0}).save(path)
        files.append(str(path))
    return files, "untrained, same architecture"


def graphs_for(loaded: list[ModelFile]) -> GraphSettings:
    """The graphs the models take: the rule of the neighbour algorithm they record (none: CGCNN's)."""
    algorithms = {m.graph_settings.get("neighbour_algorithm", ALGORITHMS["cgcnn"]) for m in loaded}
    if len(algorithms) != 1:
        raise SystemExit(f"the models take graphs of different neighbour algorithms: {sorted(algorithms)}")
    (algorithm,) = algorithms
    rule = next(r for r, name in ALGORITHMS.items() if name == algorithm)
    settings = loaded[0].graph_settings
    return GraphSettings(radius=settings["radius"], max_nbr=settings["max_nbr"], rule=rule,
                         tie_tolerance=settings.get("tie_tolerance", GraphSettings.tie_tolerance))


def read_only(path: Path, batch_atoms: int) -> float:
    start = time.perf_counter()
    with GraphFile(path) as graphs:
        for shard in graphs.iter_shards():
            atom_ends = np.concatenate([[0], np.cumsum(shard.n_atoms)])
            edge_ends = np.concatenate([[0], np.cumsum(shard.n_edges)])
            for run in pack_by_atoms(shard.n_atoms, batch_atoms):
                a, b = atom_ends[run.start], atom_ends[run.stop]
                edges = slice(edge_ends[a], edge_ends[b])
                collate(shard.n_atoms[run], shard.atomic_numbers[a:b], shard.n_edges[a:b], shard.nbr_idx[edges],
                        shard.nbr_dist[edges])
    return time.perf_counter() - start


def merge_only(path: Path, steps: int) -> tuple[float, float]:
    """Seconds to merge every shard's equivalent atoms, and atoms per class."""
    atoms = nodes = 0
    elapsed = 0.0
    with GraphFile(path) as graphs:
        for shard in graphs.iter_shards():
            start = time.perf_counter()
            q = quotient(shard, steps)
            elapsed += time.perf_counter() - start
            atoms, nodes = atoms + int(q.n_atoms.sum()), nodes + int(q.n_nodes.sum())
    return elapsed, atoms / nodes


def merged_vs_every_atom(path: Path, loaded: list) -> dict[str, float]:
    """Largest |prediction with merging - prediction convolving every atom| per target, on the first shard."""
    nets = [m.build_model().eval() for m in loaded]
    steps = max(m.architecture["steps"] for m in loaded)
    with GraphFile(path) as graphs, torch.inference_mode():
        shard = graphs.read_shard(0)
        merged = predict_module.predict_shard(quotient(shard, steps), nets, loaded, torch.device("cpu"), 1024)
        plain = predict_module.predict_shard(unmerged(shard), nets, loaded, torch.device("cpu"), 1024)
    return {t: float(np.abs(merged[t] - plain[t]).max()) for t in merged}


def peak_rss_mib(graphs: Path, names: list[str], threads: int) -> float:
    """Peak RSS of one `srscreen predict --top 100` process (MiB)."""
    script = (
        "import resource, sys; from srscreen.cli import app; "
        "sys.argv = ['srscreen', 'predict', *sys.argv[1:]]\n"
        "try: app()\nexcept SystemExit: pass\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, file=sys.stderr)"
    )
    args = [sys.executable, "-c", script, str(graphs), "--top", "100", "-q", "--threads", str(threads), "-o", "/dev/null"]
    for name in names:
        args += ["--model", name]
    result = subprocess.run(args, capture_output=True, text=True, check=True)
    return float(result.stderr.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--graphs", type=Path, help="graph file of the MP set (default: featurize it into a temp dir)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-atoms", type=int, default=1024)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        names, kind = models(tmp)
        loaded = [resolve_model(n) for n in names]
        options = FeaturizeOptions(graph=graphs_for(loaded))  # the graphs these models were trained on
        full = args.graphs
        if full is None:
            if not SHARED.exists():
                raise SystemExit(f"no data: {SHARED} is absent; pass --graphs FILE")
            full = tmp / "mp.h5"
            featurize(SHARED, full, options=options, jobs=-1)
        small_src = tmp / "small"
        small_src.mkdir()
        with GraphFile(full) as g:
            n_full = len(g)
            source = Path(str(g.attrs["source"]))
        for cif in sorted(source.glob("*.cif"))[:4096]:
            (small_src / cif.name).symlink_to(cif)
        small = tmp / "small.h5"
        featurize(small_src, small, options=options, jobs=-1)

        t_read = read_only(full, args.batch_atoms)
        t_merge, atoms_per_class = merge_only(full, max(m.architecture["steps"] for m in loaded))
        deviation = merged_vs_every_atom(full, loaded)
        t_pred, steady = {}, {}
        for mode, compiled, merge in (("eager", False, quotient), ("compiled", True, quotient),
                                      ("baseline", True, lambda shard, steps: unmerged(shard))):
            marks: list[tuple[float, int]] = []
            start = time.perf_counter()
            predict_module.quotient = merge
            try:
                ranking = predict(full, loaded, top=100, device=args.device, batch_atoms=args.batch_atoms,
                                  compile=compiled, on_shard=lambda n: marks.append((time.perf_counter(), n)))
            finally:
                predict_module.quotient = quotient
            t_pred[mode] = time.perf_counter() - start
            # After the first shard (which carries the one-off compile): the rate a long screening runs at.
            steady[mode] = sum(n for _, n in marks[1:]) / (marks[-1][0] - marks[0][0])
            assert len(ranking) == 100
        rss_small = peak_rss_mib(small, names, args.threads)
        rss_full = peak_rss_mib(full, names, args.threads)

    device = str(torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                              ("cpu" if args.device == "auto" else args.device)))
    result = {
        "structures": n_full, "device": device, "threads": args.threads, "models": kind,
        "read_only_s": t_read, "read_only_per_s": n_full / t_read,
        "merge_only_s": t_merge, "atoms_per_class": atoms_per_class, "max_abs_merged_minus_every_atom": deviation,
        **{f"predict_{k}_after_first_shard_per_s": v for k, v in steady.items()},
        **{f"predict_{k}_s": v for k, v in t_pred.items()},
        **{f"predict_{k}_per_s": n_full / v for k, v in t_pred.items()},
        "peak_rss_mib": {"4096": rss_small, str(n_full): rss_full},
    }
    print(f"{n_full:,} structures, device {device}, {args.threads} threads, models: {kind}")
    print(f"read shards + batches only        : {t_read:6.2f} s  {n_full / t_read:10,.0f} structures/s")
    print(f"merge equivalent atoms only       : {t_merge:6.2f} s  ({atoms_per_class:.2f} atoms per class)")
    print("merged - every atom, first shard  : max |difference| " + ", ".join(f"{t} {d:.1e}" for t, d in deviation.items()))
    for k, v in t_pred.items():
        print(f"predict --top 100, Ef + Eg, {k:<8}: {v:6.2f} s  {n_full / v:10,.0f} structures/s  ({v / t_read:.1f}x read-only); "
              f"after the first shard: {steady[k]:,.0f} structures/s")
    print("baseline = compiled, every atom convolved: merging equivalent atoms is "
          f"{steady['compiled'] / steady['baseline']:.2f}x as fast after the first shard, "
          f"{t_pred['baseline'] / t_pred['compiled']:.2f}x over the whole run")
    print(f"peak RSS, --top 100               : {rss_small:6.0f} MiB at 4,096 structures, {rss_full:.0f} MiB at {n_full:,}")
    out = Path(__file__).parent / "results" / "predict.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
