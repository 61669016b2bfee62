"""Ensemble prediction speed: the Ef + Eg pair as single models, as ensembles run as one batched network,
and as the same members run one after another, in one run on the same graphs.

    python benchmarks/ensemble.py [--graphs mp.h5] [--structures 20000] [--members 5] [--threads 2]

Members are the pretrained models with their weights perturbed (speed does not depend on the weights;
the spread then is not a calibrated one). Prints structures/s per setting and the ratios; writes
benchmarks/results/ensemble.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

import srscreen
from srscreen.data.graph_file import GraphFile
from srscreen.graph.equivalent_atoms import quotient
from srscreen.model.model_file import ModelFile
from srscreen.model.registry import DEFAULT_MODELS, resolve_model
from srscreen.screening.calibrate import assemble
from srscreen.screening.predict import predict_shard

from common import MP_CIFS  # benchmarks/common.py

SHARED = MP_CIFS
RESULTS = Path(__file__).resolve().parent / "results" / "ensemble.json"


def perturbed(model: ModelFile, seed: int) -> ModelFile:
    generator = torch.Generator().manual_seed(seed)
    state = {k: v + 0.01 * torch.randn(v.shape, generator=generator) if v.is_floating_point() and k != "feature_table" else v
             for k, v in model.state_dict.items()}
    return replace(model, state_dict=state, source=f"{model.source} member {seed}")


def sequential_rate(graphs: Path, members: list[list[ModelFile]]) -> float:
    """Structures/s running every member as its own network, one after another on each batch."""
    flat = [m for group in members for m in group]
    nets = [m.build_network() for m in flat]
    started, count = time.perf_counter(), 0
    with GraphFile(graphs) as file, torch.inference_mode():
        for index in range(len(file.shard_names)):
            shard = file.read_shard(index)
            q = quotient(shard, max(m.architecture["steps"] for m in flat))
            for net, m in zip(nets, flat):  # one model per call: predict_shard takes one model per target
                predict_shard(q, [net], [m], torch.device("cpu"), 1024)
            count += len(shard.ids)
    return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--graphs", type=Path, help="a graph file with the pretrained models' graph rule")
    parser.add_argument("--structures", type=int, default=20_000, help="how many shared CIFs to featurize without --graphs")
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        graphs = args.graphs
        if graphs is None:
            if not SHARED.is_dir():
                raise SystemExit(f"{SHARED}: the shared MP set is needed (or give --graphs)")
            source = Path(tmp) / "cifs"
            source.mkdir()
            for cif in sorted(SHARED.glob("*.cif"))[: args.structures]:
                (source / cif.name).symlink_to(cif)
            graphs = Path(tmp) / "graphs.h5"
            srscreen.featurize(source, graphs, jobs=args.threads)
        singles = [resolve_model(name) for name in DEFAULT_MODELS]
        members = [[perturbed(m, seed) for seed in range(args.members)] for m in singles]
        ensembles = [assemble(group) for group in members]
        rates = {}
        for name, models in (("single pair", singles), (f"ensemble pair ({args.members} members, batched)", ensembles)):
            started = time.perf_counter()
            ranking = srscreen.predict(graphs, models, top=100, compile=False)
            with GraphFile(graphs) as file:
                rates[name] = len(file) / (time.perf_counter() - started)
            assert len(ranking) == min(100, len(file))
        rates[f"ensemble pair ({args.members} members, one after another)"] = sequential_rate(graphs, members)
    base = rates["single pair"]
    print(f"{'setting':55s} {'structures/s':>13s} {'vs single':>10s}")
    for name, rate in rates.items():
        print(f"{name:55s} {rate:13,.0f} {rate / base:10.2f}")
    RESULTS.write_text(json.dumps({"threads": args.threads, "members": args.members, "structures_per_s": rates}, indent=1) + "\n")


if __name__ == "__main__":
    main()
