"""Small labelled crystal databases for the train / predict / CLI tests (helpers, not tests).

Every structure is built here from the pymatgen prototypes of conftest (strained, with species swapped),
written as pymatgen JSON files, and featurized with small graph settings so that tiny models train in
milliseconds. Nothing is read from /work/shared.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from srscreen.cli import app
from srscreen.graph.elements import cgcnn_feature_table
from srscreen.data.featurize import FeaturizeOptions, featurize
from srscreen.graph.settings import GraphSettings

RADIUS = 6.0
MAX_NBR = 8
# The graphs the shipped pretrained models (sr-cgcnn-ef, sr-cgcnn-eg) accept. They were trained on CGCNN's
# 12-neighbour graphs; once they are retrained on knn-ties graphs, make this GraphSettings() and every
# test that featurizes for them follows.
PRETRAINED_GRAPHS = GraphSettings()
PRETRAINED_FEATURIZE_FLAGS = ["--radius", str(PRETRAINED_GRAPHS.radius), "--max-nbr", str(PRETRAINED_GRAPHS.max_nbr),
                              "--graph-rule", PRETRAINED_GRAPHS.rule]
# Small enough to train an epoch of a few dozen crystals in tens of milliseconds on one busy core.
TINY = ["--atom-fea-len", "8", "--h-fea-len", "8", "--threads", "1", "--quiet"]
SRSCREEN = [str(Path(sys.executable).with_name("srscreen"))]
if not Path(SRSCREEN[0]).exists():  # not installed as a script: the same entry point through Python
    SRSCREEN = [sys.executable, "-c", "from srscreen.cli import main; main()"]


def crystals(prototypes: dict, copies: int = 1, id_prefix: str = "c") -> list[tuple[str, object]]:
    """(id, Structure) pairs: ~40 distinct crystals per copy (rock salts, perovskites, metals, ZnO,
    a triclinic cell), each copy strained a little more. The last crystal of the first copy repeats
    the first one exactly under another id (ties in a ranking)."""
    from pymatgen.core import Lattice

    def strained(s, f):
        s = s.copy()
        s.lattice = Lattice(s.lattice.matrix * f)
        return s

    out = []
    for c in range(copies):
        extra = 1.0 + 0.002 * c
        bases = []
        rocksalt = prototypes["NaCl"].get_primitive_structure()
        for a, b in (("Na", "Cl"), ("K", "Cl"), ("Na", "Br"), ("Li", "F"), ("Rb", "I"), ("Mg", "O")):
            s = rocksalt.copy()
            swap = {old: new for old, new in (("Na", a), ("Cl", b)) if old != new}
            if swap:
                s.replace_species(swap)
            bases += [strained(s, f * extra) for f in (0.98, 1.0, 1.03)]
        for a, b in (("Sr", "Ti"), ("Ba", "Ti"), ("Ca", "Ti"), ("Sr", "Zr"), ("Pb", "Ti")):
            s = prototypes["SrTiO3"].copy()
            if a != "Sr":
                s.replace_species({"Sr": a})
            if b != "Ti":
                s.replace_species({"Ti": b})
            bases += [strained(s, f * extra) for f in (0.99, 1.02)]
        for name in ("Fe", "Cu", "ZnO", "triclinic"):
            bases += [strained(prototypes[name], f * extra) for f in (0.97, 1.0, 1.04)]
        for i, s in enumerate(bases):
            out.append((f"{id_prefix}{c:02d}-{i:03d}", s))
    out.append((f"{id_prefix}-dup", out[0][1].copy()))
    return out


def write_json_db(folder: Path, items: list[tuple[str, object]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for id_, s in items:
        (folder / f"{id_}.json").write_text(json.dumps(s.as_dict()))
    return folder


def featurize_db(folder: Path, out: Path, *, radius: float = RADIUS, max_nbr: int = MAX_NBR, rule: str = "knn-ties",
                 atom_features: Path | None = None, shard_size: int = 4096) -> Path:
    options = FeaturizeOptions(graph=GraphSettings(radius=radius, max_nbr=max_nbr, rule=rule), shard_size=shard_size)
    featurize(folder, out, options=options, atom_features=atom_features, jobs=1)
    return out


def target_values(items: list[tuple[str, object]]) -> dict[str, tuple[float, float]]:
    """Synthetic but learnable labels: id -> (formation_energy_per_atom, band_gap)."""
    values = {}
    for id_, s in items:
        z = np.array(s.atomic_numbers, dtype=float)
        volume = s.volume / len(s)
        values[id_] = (round(float(-0.5 - 0.02 * z.mean() + 0.01 * volume), 6),
                       round(float(max(0.0, 4.0 - 0.06 * z.std() ** 1.2 - 0.05 * volume)), 6))
    return values


def write_labels(path: Path, values: dict[str, tuple[float, float]], *, drop: tuple[str, ...] = (),
                 blank: dict[str, str] | None = None, extra: tuple[str, ...] = ()) -> Path:
    """A labels CSV with `drop` ids left out, `blank` {id: column} values empty, and `extra` ids absent
    from the graph file."""
    blank = blank or {}
    lines = ["material_id,formation_energy_per_atom,band_gap"]
    for id_, (ef, eg) in values.items():
        if id_ in drop:
            continue
        cells = [f"{ef!r}", f"{eg!r}"]
        if id_ in blank:
            cells[["formation_energy_per_atom", "band_gap"].index(blank[id_])] = ""
        lines.append(",".join([id_, *cells]))
    for id_ in extra:
        lines.append(f"{id_},-1.0,1.0")
    path.write_text("\n".join(lines) + "\n")
    return path


def other_atom_features(path: Path) -> Path:
    """A CGCNN atom_init.json that differs from the built-in table (every row halved)."""
    table = cgcnn_feature_table()
    path.write_text(json.dumps({str(z): (table[z] * 0.5).tolist() for z in range(1, len(table)) if table[z].any()}))
    return path


runner = CliRunner()


def cli(*args, env: dict | None = None):
    """Run the Typer app in-process; stdout and stderr are captured apart."""
    return runner.invoke(app, [str(a) for a in args], env=env)


def assert_usage_error(result, *words: str) -> str:
    """Exit 2, one line on stderr naming `words`, nothing on stdout, never a traceback."""
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr, result.exception)
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.exception
    message = result.stderr.strip()
    assert "Traceback" not in result.output, result.output
    assert message.count("\n") == 0, f"more than one line:\n{message}"
    assert message.startswith("error:"), message
    for w in words:
        assert w in message, (w, message)
    return message


@pytest.fixture
def one_thread():
    """Training and predicting on one torch thread: the CI machine's cores are busy elsewhere, and a
    thread count fixes the order of floating-point sums (bitwise reproducible runs)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def state_dicts_close(a: dict, b: dict, atol: float = 1e-6) -> None:
    assert a.keys() == b.keys()
    for k in a:
        ta, tb = a[k], b[k]
        if ta.dtype.is_floating_point:
            torch.testing.assert_close(ta, tb, atol=atol, rtol=0, msg=lambda m, k=k: f"{k}: {m}")
        else:
            assert torch.equal(ta, tb), k


def without_timing(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k not in ("epoch_s", "elapsed_s")} for h in history]


def finite(x: float) -> bool:
    return isinstance(x, float) and math.isfinite(x)


def subprocess_env() -> dict:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env["COLUMNS"] = "200"
    return env


def train_tiny_pair(graphs: Path, labels: Path, root: Path, seed: int) -> dict[str, Path]:
    """Tiny formation-energy and band-gap models (width 8, 2 epochs, one thread): {"ef": path, "eg": path}."""
    from srscreen.trainer.trainer import TrainConfig, train

    models = {}
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for target, name in (("formation_energy_per_atom", "ef"), ("band_gap", "eg")):
            config = TrainConfig(target=target, atom_fea_len=8, h_fea_len=8, epochs=2, batch_size=8, seed=seed)
            train(graphs, labels, root / f"{name}.pt", config)
            models[name] = root / f"{name}.pt"
    finally:
        torch.set_num_threads(before)
    return models
