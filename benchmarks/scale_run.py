"""Scale run: featurize and predict a generated database of 10^6 structures, with wall time and memory.

    python benchmarks/scale_run.py --work /work/scale [--structures 1000000] [--jobs 2] [--pause-trainings]

1. Generates (once; kept in WORK/db for later runs with the same settings) perturbed copies of the
   shared MP set: each copy of a crystal has its cell strained (symmetric strain, entries uniform in
   ±`--strain`) and every site displaced (Gaussian, `--displacement` Å per Cartesian axis), seeded.
   They are written as JSON lines of pymatgen `Structure.as_dict()` records, `--per-file` (10,000)
   a file (`perturbed-000.jsonl` ...; ids `perturbed-000:<line>`), which is what a user with 10^6
   structures from a generator or a relaxation campaign would have. Generating is not timed.
2. Times `srscreen featurize WORK/db WORK/db.h5 --jobs J -q` and then
   `srscreen predict WORK/db.h5 --top 100 --threads 2 -q -o WORK/top100.csv` as real processes (start-up
   included; predict compiles by itself at this size), sampling the RSS (and VmHWM) of every process
   of each command's tree (the command and its joblib/loky workers) from /proc every `--interval`
   seconds: wall time, structures/s, peak RSS of every process, the largest sum over the tree, and a
   timeline of the tree's RSS against progress. The same two commands on the first `--small-files`
   files (20,000 structures) give the memory of a small database beside the large one.
3. Sizes: the inputs, the graph file, the ranking. Atoms per class of equivalent atoms on the first
   shard (the perturbed copies have no exact symmetry, so predict merges almost nothing: its rate is
   that of crystals without symmetry).
`--pause-trainings` stops other `srscreen train` processes during step 2 and resumes them at the end.
Results go to benchmarks/results/scale_run.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import threading
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cli import clear, srscreen_command  # noqa: E402  (benchmarks/cli.py)
from common import MP_CIFS, PausedTrainings, busy_jiffies, memory_kib, tree_pids, wait_quiet  # noqa: E402  (benchmarks/common.py)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = MP_CIFS
RESULTS = ROOT / "benchmarks" / "results" / "scale_run.json"
SYMBOLS: list[str] = []

# ----------------------------------------------------------------------------- the database


def base_set(data: Path, cache: Path) -> dict[str, np.ndarray]:
    """The shared CIFs as arrays (read once with srscreen's CIF reader, cached in an .npz)."""
    if cache.exists():
        return dict(np.load(cache))
    from srscreen.io.readers import parse_bytes
    from srscreen.io.parsed import Parsed

    lattices, fracs, numbers, n_atoms = [], [], [], []
    for path in sorted(p for p in data.iterdir() if p.suffix == ".cif"):
        for s in parse_bytes(path.name, path.read_bytes()):
            if isinstance(s, Parsed):
                lattices.append(np.asarray(s.lattice, dtype=np.float64))
                fracs.append(np.asarray(s.frac_coords, dtype=np.float64))
                numbers.append(np.asarray(s.numbers, dtype=np.int16))
                n_atoms.append(len(s.numbers))
    arrays = {"lattice": np.stack(lattices), "frac": np.concatenate(fracs), "numbers": np.concatenate(numbers),
              "n_atoms": np.array(n_atoms, dtype=np.int64)}
    np.savez(cache, **arrays)
    return arrays


def _symbols() -> list[str]:
    from pymatgen.core.periodic_table import Element

    return [""] + [Element.from_Z(z).symbol for z in range(1, 119)]


def _lattice_dict(m: np.ndarray) -> dict:
    lengths = np.linalg.norm(m, axis=1)
    angle = lambda i, j: float(np.degrees(np.arccos(np.clip(m[i] @ m[j] / (lengths[i] * lengths[j]), -1, 1))))  # noqa: E731
    return {"matrix": m.tolist(), "pbc": [True, True, True], "a": float(lengths[0]), "b": float(lengths[1]),
            "c": float(lengths[2]), "alpha": angle(1, 2), "beta": angle(0, 2), "gamma": angle(0, 1),
            "volume": float(abs(np.linalg.det(m)))}


def write_file(task: tuple) -> int:
    """One JSON-lines file of perturbed copies: structures first..first+count of the endless cycle over the set."""
    path, first, count, seed, strain, displacement, cache = task
    global SYMBOLS
    if not SYMBOLS:
        SYMBOLS = _symbols()
    base = dict(np.load(cache))
    starts = np.concatenate([[0], np.cumsum(base["n_atoms"])])
    n_base = len(base["n_atoms"])
    rng = np.random.default_rng([seed, first])
    tmp = Path(str(path) + ".tmp")
    with open(tmp, "wb") as fh:
        for k in range(first, first + count):
            i = k % n_base
            eps = rng.uniform(-strain, strain, (3, 3))
            lattice = base["lattice"][i] @ (np.eye(3) + (eps + eps.T) / 2)
            cart = base["frac"][starts[i] : starts[i + 1]] @ lattice
            cart += rng.normal(0.0, displacement, cart.shape)
            frac = cart @ np.linalg.inv(lattice)
            symbols = [SYMBOLS[z] for z in base["numbers"][starts[i] : starts[i + 1]]]
            record = {
                "@module": "pymatgen.core.structure", "@class": "Structure", "charge": 0,
                "lattice": _lattice_dict(lattice), "properties": {},
                "sites": [{"species": [{"element": s, "occu": 1}], "abc": a, "properties": {}, "label": s, "xyz": x}
                          for s, a, x in zip(symbols, frac.tolist(), cart.tolist())],
            }
            fh.write(orjson.dumps(record) + b"\n")
    os.replace(tmp, path)
    return count


def generate(args, db: Path) -> dict:
    """WORK/db/*.jsonl, unless it is there with the same settings."""
    settings = {"structures": args.structures, "per_file": args.per_file, "seed": args.seed, "strain": args.strain,
                "displacement": args.displacement}
    manifest = db / "manifest.txt"  # not a structure file: featurize skips and counts it
    if manifest.exists() and json.loads(manifest.read_text()) == settings:
        return {"generated": False, **settings}
    db.mkdir(parents=True, exist_ok=True)
    for old in db.glob("*.jsonl"):
        old.unlink()
    cache = args.work / "base.npz"
    start = time.perf_counter()
    base = base_set(args.data, cache)
    print(f"base set: {len(base['n_atoms'])} structures read in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    tasks = [(db / f"perturbed-{j:03d}.jsonl", first, min(args.per_file, args.structures - first), args.seed, args.strain,
              args.displacement, cache) for j, first in enumerate(range(0, args.structures, args.per_file))]
    with Pool(args.jobs) as pool:
        done = 0
        for n in pool.imap_unordered(write_file, tasks):
            done += n
            print(f"\rgenerated {done:,}/{args.structures:,}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    manifest.write_text(json.dumps(settings))
    return {"generated": True, "generate_s": time.perf_counter() - start, **settings}


# ----------------------------------------------------------------------------- measuring a command


def _role(pid: int, root: int) -> str:
    if pid == root:
        return "command"
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            argv = fh.read().split(b"\0")
    except OSError:
        return "child"
    text = b" ".join(argv).decode(errors="replace")
    return "loky worker" if "loky" in text else ("resource tracker" if "resource_tracker" in text else text[:80])


def measure(cmd: list[str], interval: float, progress: Path | None, pauser: PausedTrainings) -> dict:
    """Run cmd; sample every process of its tree. Peaks in MiB per process; a timeline of the tree's sum."""
    pauser.refresh()
    quiet = wait_quiet(pauser.quiet_s) if pauser.quiet_s > 0 else {}
    children0, busy0 = resource.getrusage(resource.RUSAGE_CHILDREN), busy_jiffies()[0]
    self0 = time.process_time()
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peaks: dict[int, dict] = {}
    timeline: list[dict] = []
    tree_peak = [0]

    def sample() -> None:
        last_line = 0.0
        while proc.poll() is None:
            total = 0
            for pid in tree_pids(proc.pid):
                st = memory_kib(pid)
                if not st:
                    continue
                entry = peaks.setdefault(pid, {"role": _role(pid, proc.pid), "peak_rss_kib": 0, "hwm_kib": 0})
                entry["peak_rss_kib"] = max(entry["peak_rss_kib"], st.get("VmRSS", 0))
                entry["hwm_kib"] = max(entry["hwm_kib"], st.get("VmHWM", 0))
                total += st.get("VmRSS", 0)
            tree_peak[0] = max(tree_peak[0], total)
            now = time.perf_counter() - start
            if now - last_line >= 10 or not timeline:
                last_line = now
                timeline.append({"t_s": round(now, 1), "tree_rss_mib": round(total / 1024, 1),
                                 "processes": len(tree_pids(proc.pid)),
                                 **({"written_mb": round(_size(progress) / 1e6, 1)} if progress else {})})
            time.sleep(interval)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, stderr = proc.communicate()
    wall = time.perf_counter() - start
    sampler.join()
    children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    ours = (children1.ru_utime + children1.ru_stime - children0.ru_utime - children0.ru_stime
            + time.process_time() - self0)
    others = (busy_jiffies()[0] - busy0) / os.sysconf("SC_CLK_TCK") - ours
    processes = [{"pid": pid, "role": p["role"], "peak_rss_mib": round(max(p["peak_rss_kib"], p["hwm_kib"]) / 1024, 1)}
                 for pid, p in sorted(peaks.items())]
    result = {"command": " ".join(cmd), "wall_s": wall, "rc": proc.returncode, "cpu_s": round(ours, 1),
              "others_cpu_s": round(max(others, 0.0), 1), **quiet, "processes": processes,
              "tree_sum_peak_mib": round(tree_peak[0] / 1024, 1), "timeline": timeline}
    if proc.returncode:
        result["error"] = stderr.strip()[-500:]
    return result


def _size(path: Path) -> int:
    """Bytes of a file, or of everything under a folder (OUT.h5.partial while featurize runs)."""
    if path.is_file():
        return path.stat().st_size
    partial = path.with_name(path.name + ".partial")
    total = 0
    for p in (path, partial):
        if p.is_dir():
            total += sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
        elif p.is_file():
            total += p.stat().st_size
    return total


def atoms_per_class(h5: Path) -> dict:
    """Atoms per class of equivalent atoms (4 steps) on the first shard."""
    from srscreen.data.graph_file import GraphFile
    from srscreen.graph.equivalent_atoms import quotient

    with GraphFile(h5) as g:
        shard = g.read_shard(0)
    q = quotient(shard, 4)
    return {"structures": len(shard.ids), "atoms": int(q.n_atoms.sum()), "classes": int(q.n_nodes.sum()),
            "atoms_per_class": float(q.n_atoms.sum() / q.n_nodes.sum())}


def info(srscreen: list[str], h5: Path) -> dict:
    proc = subprocess.run([*srscreen, "info", str(h5), "--json"], capture_output=True, text=True)
    if proc.returncode:
        return {"error": proc.stderr.strip()[-300:]}
    got = json.loads(proc.stdout)
    reasons: dict[str, int] = {}
    for failure in got["failed"]:
        reason = failure.get("reason", "?") if isinstance(failure, dict) else str(failure)
        reasons[reason[:60]] = reasons.get(reason[:60], 0) + 1
    return {"structures": got["structures"], "failed": len(got["failed"]), "skipped": len(got["skipped"]),
            "shards": len(got["shards"]), "failure_reasons": dict(sorted(reasons.items(), key=lambda kv: -kv[1])[:5])}


def run_pair(srscreen: list[str], source: Path, out: Path, args, pauser: PausedTrainings, label: str) -> dict:
    clear(out)
    ranked = out.with_suffix(".top100.csv")
    print(f"{label}: featurize ...", file=sys.stderr, flush=True)
    feat = measure([*srscreen, "featurize", str(source), str(out), "--jobs", str(args.jobs), "-q"], args.interval, out,
                   pauser)
    print(f"{label}: featurize {feat['wall_s']:.0f} s; predict ...", file=sys.stderr, flush=True)
    pred = measure([*srscreen, "predict", str(out), "--top", "100", "--threads", str(args.threads), "-q", "-o",
                    str(ranked)], args.interval, None, pauser)
    print(f"{label}: predict {pred['wall_s']:.0f} s", file=sys.stderr, flush=True)
    counts = info(srscreen, out) if out.exists() else {}
    inputs = counts.get("structures", 0) + counts.get("failed", 0)
    feat["structures_per_s"] = inputs / feat["wall_s"] if inputs else None
    pred["structures_per_s"] = counts.get("structures", 0) / pred["wall_s"] if counts.get("structures") else None
    return {"featurize": feat, "predict": pred, "counts": counts,
            "graph_file_mb": out.stat().st_size / 1e6 if out.exists() else None,
            "ranking_rows": sum(1 for _ in open(ranked)) - 1 if ranked.exists() else None}


# ----------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="folder for the database and graph files (not the repo)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--structures", type=int, default=1_000_000)
    parser.add_argument("--per-file", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--strain", type=float, default=0.01, help="largest strain component")
    parser.add_argument("--displacement", type=float, default=0.01, help="Å, standard deviation per axis")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between memory samples")
    parser.add_argument("--small-files", type=int, default=2, help="files of the small run beside the large (0: none)")
    parser.add_argument("--srscreen", help="the srscreen command (default: `srscreen` on PATH)")
    parser.add_argument("--pause-trainings", action="store_true")
    parser.add_argument("--pause-pattern")
    parser.add_argument("--quiet-wait", type=float, default=60.0,
                        help="wait up to this many seconds for the rest of the machine to go quiet before each command")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if ROOT in args.work.resolve().parents or args.work.resolve() == ROOT:
        sys.exit("--work must be outside the repository")
    args.work.mkdir(parents=True, exist_ok=True)
    srscreen = srscreen_command(args.srscreen)
    db = args.work / "db"
    report: dict = {"srscreen_command": srscreen,
                    "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                "platform": platform.platform()}}
    report["database"] = generate(args, db)
    inputs = sorted(db.glob("*.jsonl"))
    report["database"].update(files=len(inputs), input_gb=sum(p.stat().st_size for p in inputs) / 1e9)
    small = None
    if args.small_files:
        small = args.work / "small"
        small.mkdir(exist_ok=True)
        for p in inputs[: args.small_files]:
            if not (small / p.name).exists():
                (small / p.name).symlink_to(p)
    report["machine"]["load_avg_start"] = os.getloadavg()
    with PausedTrainings(args.pause_trainings, args.pause_pattern, args.quiet_wait) as pauser:
        if small is not None:
            report["small"] = run_pair(srscreen, small, args.work / "small.h5", args, pauser, "small")
        report["large"] = run_pair(srscreen, db, args.work / "db.h5", args, pauser, "large")
        report["paused_trainings"] = pauser.paused
        report["trainings_resumed_by_others"] = pauser.resumed_by_others
    report["machine"]["load_avg_end"] = os.getloadavg()
    if (args.work / "db.h5").exists():
        report["equivalent_atoms_first_shard"] = atoms_per_class(args.work / "db.h5")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print_report(report)
    print(f"\nwritten to {args.out}")


def print_report(r: dict) -> None:
    d = r["database"]
    print(f"database: {d['structures']:,} perturbed copies of the shared MP set in {d['files']} JSON-lines files, "
          f"{d['input_gb']:.2f} GB")
    print("| run | command | structures | wall s | structures/s | peak RSS, command (MiB) | largest worker | "
          "tree sum | output |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label in ("small", "large"):
        run = r.get(label)
        if not run:
            continue
        n = run["counts"].get("structures", 0) + run["counts"].get("failed", 0)
        for step in ("featurize", "predict"):
            m = run[step]
            command = [p for p in m["processes"] if p["role"] == "command"]
            workers = [p["peak_rss_mib"] for p in m["processes"] if p["role"] != "command"]
            output = (f"{run['graph_file_mb']:,.0f} MB graph file" if step == "featurize" and run["graph_file_mb"]
                      else f"{run['ranking_rows']} rows" if step == "predict" else "")
            rate = f"{m['structures_per_s']:,.0f}" if m.get("structures_per_s") else m.get("error", "failed")[:80]
            print(f"| {label} | {step} | {n:,} | {m['wall_s']:,.0f} | {rate} | "
                  f"{command[0]['peak_rss_mib'] if command else '–'} | {max(workers, default='–')} | "
                  f"{m['tree_sum_peak_mib']:,.0f} | {output} |")
    if "equivalent_atoms_first_shard" in r:
        e = r["equivalent_atoms_first_shard"]
        print(f"atoms per class of equivalent atoms (first shard): {e['atoms_per_class']:.2f}")


if __name__ == "__main__":
    main()
