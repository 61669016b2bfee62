"""The package as a user gets it: the built wheel, installed into a fresh virtual environment, run as the
real `srscreen` script and through `python -c`, outside the source tree.

The wheel is built once per session from the working tree (tracked and untracked, not ignored, files),
with SOURCE_DATE_EPOCH fixed so that the same sources give the same wheel. The environment is cached by
the wheel's hash under $XDG_CACHE_HOME/srscreen-tests/ (default ~/.cache): torch==2.13.0 first (pip then
takes the CPU build it names), then the wheel with its dependencies. A new wheel costs one environment
build (~1-2 min); an unchanged one costs only the wheel build.

README.md's first command is read from README.md itself (the first ```bash block, without its
`pip install` steps), so this tier runs whatever the README tells a new user, graph flags included.
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.installed

REPO_ROOT = Path(__file__).resolve().parents[2]
README = REPO_ROOT / "README.md"
PRETRAINED = ("sr-cgcnn-ef", "sr-cgcnn-eg")


def default_header() -> list[str]:
    """The header predict writes with the pretrained pair, from the repository's model files (the package
    installs the same): each model's target, and its `_std` where the shipped model has a spread (v3)."""
    from srscreen.model.registry import resolve_model

    return ["rank", "id", "formula", "n_atoms", *(c for name in PRETRAINED for c in resolve_model(name).columns)]


HEADER = default_header()
# Cache entries kept besides the one in use (~2 GB each): the most recently used, none unused for STALE_S.
KEEP = 2
STALE_S = 6 * 3600


def readme_block(language: str) -> str:
    """The first fenced block of `language` in README.md."""
    match = re.search(rf"^```{language}\n(.*?)^```", README.read_text(encoding="utf-8"), flags=re.M | re.S)
    assert match, f"README.md has no ```{language} block"
    return match.group(1)


def readme_first_command() -> str:
    """README's first command without its `pip install` steps: what runs once the package is installed."""
    line = readme_block("bash").strip().splitlines()[0]
    steps = [s.strip() for s in line.split("&&")]
    kept = [s for s in steps if not s.startswith("pip install")]
    assert kept and kept[0].startswith("srscreen featurize"), f"README's first command changed shape: {line}"
    return " && ".join(kept)


def source_files(root: Path) -> list[str]:
    """What `pip install .` reads from a checkout: the files git tracks or would track."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                                capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: every file but the usual clutter
        skip = {".git", ".venv", "build", "dist", "__pycache__", "runs"}
        return [str(p.relative_to(root)) for p in root.rglob("*")
                if p.is_file() and not skip & set(p.relative_to(root).parts) and ".egg-info" not in str(p)]
    return [name for name in listed.decode().split("\0") if name and (root / name).is_file()]


def build_wheel(dest: Path) -> Path:
    """The wheel of the working tree, built from a copy (nothing is written into the checkout)."""
    src = dest / "src"
    for name in source_files(REPO_ROOT):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / name, src / name)
    env = dict(os.environ, SOURCE_DATE_EPOCH="315532800")  # 1980: zip timestamps do not depend on the day
    command = [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "-q", "-w", str(dest / "wheel")]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = (dest / "wheel").glob("srscreen-*.whl")
    return wheel


def cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "srscreen-tests"


def remove_stale(root: Path, keep: Path) -> None:
    """Other environments beyond the KEEP most recently used, or unused for STALE_S, unless one is in use."""
    def last_used(entry: Path) -> float:
        marker = entry / "complete"
        return marker.stat().st_mtime if marker.exists() else 0.0

    others = sorted((e for e in root.iterdir() if e.is_dir() and e != keep), key=last_used, reverse=True)
    for rank, entry in enumerate(others):
        if rank < KEEP and time.time() - last_used(entry) < STALE_S:
            continue
        with (root / f"{entry.name}.lock").open("w") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # another session is building it
            shutil.rmtree(entry, ignore_errors=True)
        (root / f"{entry.name}.lock").unlink(missing_ok=True)


def clean_env() -> dict:
    """This process's environment without what would let another Python's packages in (a PYTHONPATH holding
    a checkout with srscreen.egg-info makes pip take the wheel as installed already)."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}


def pip(python: Path, *args: str) -> None:
    proc = subprocess.run([str(python), "-m", "pip", "install", "-q", *args], capture_output=True, text=True,
                          env=clean_env(), cwd=python.parent, timeout=900)
    assert proc.returncode == 0, f"pip install {' '.join(args)}:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"


@pytest.fixture(scope="session")
def venv(tmp_path_factory) -> Path:
    """A virtual environment with the wheel installed (no system site-packages), reused while the wheel is the same."""
    wheel = build_wheel(tmp_path_factory.mktemp("wheel"))
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()[:20]
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    entry = root / digest
    with (root / f"{digest}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_SH)
        if (entry / "complete").exists():
            (entry / "complete").touch()
            return entry / "venv"
        fcntl.flock(lock, fcntl.LOCK_EX)  # build it (or find that another session just did)
        if not (entry / "complete").exists():
            shutil.rmtree(entry, ignore_errors=True)  # half-built by a killed session
            subprocess.run([sys.executable, "-m", "venv", str(entry / "venv")], check=True, env=clean_env(),
                           timeout=300)
            python = entry / "venv" / "bin" / "python"
            pip(python, "torch==2.13.0")  # first and pinned: the CPU build on this disk, never a GB download
            pip(python, str(wheel))
            found = subprocess.run([str(python), "-c", "import srscreen; print(srscreen.__file__)"], env=clean_env(),
                                   cwd=python.parent, capture_output=True, text=True, timeout=300)
            assert Path(found.stdout.strip() or "/").resolve().is_relative_to(entry.resolve()), (
                f"the wheel did not install into {entry}: {found.stdout}{found.stderr}")
            (entry / "wheel.txt").write_text(wheel.name + "\n")
            (entry / "complete").touch()
    remove_stale(root, entry)
    return entry / "venv"


def run(venv: Path, command: str | list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """A command in the installed environment, outside the source tree: bash for a string, exec for a list."""
    env = clean_env()
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", VIRTUAL_ENV=str(venv), COLUMNS="200")
    argv = ["bash", "-o", "pipefail", "-c", command] if isinstance(command, str) else command
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def assert_clean(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, (
        f"exit {proc.returncode}\nstdout:\n{proc.stdout[-2000:]}\nstderr:\n{proc.stderr[-4000:]}")
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr, proc.stderr


def ranking(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


@pytest.fixture(scope="module")
def readme_run(venv, tmp_path_factory) -> dict:
    """README's first command, as a shell pipeline into `head -5`, in a folder holding a copy of examples/."""
    work = tmp_path_factory.mktemp("readme")
    shutil.copytree(REPO_ROOT / "examples", work / "examples")
    command = readme_first_command()
    proc = run(venv, f"{command} | head -5", work)
    graphs = sorted(work.glob("*.h5"))
    return {"work": work, "command": command, "proc": proc, "graphs": graphs[0] if len(graphs) == 1 else None}


def test_readme_first_command_ranks_the_examples(readme_run):
    proc = readme_run["proc"]
    assert_clean(proc)
    lines = proc.stdout.splitlines()
    assert len(lines) == 5, proc.stdout
    assert lines[0].split(",") == HEADER
    rows = ranking(proc.stdout)
    assert [int(r["rank"]) for r in rows] == [1, 2, 3, 4]
    energies = [float(r["formation_energy_per_atom"]) for r in rows]
    assert energies == sorted(energies) and all(math.isfinite(e) for e in energies)
    assert readme_run["graphs"] is not None, f"{readme_run['command']!r} must leave one graph file"


def test_predict_with_the_pretrained_names(venv, readme_run):
    assert_clean(readme_run["proc"])
    proc = run(venv, ["srscreen", "predict", str(readme_run["graphs"]), "--model", "sr-cgcnn-ef",
                      "--model", "sr-cgcnn-eg", "--quiet"], readme_run["work"])
    assert_clean(proc)
    rows = ranking(proc.stdout)
    assert list(rows[0]) == HEADER
    assert len(rows) == 31  # every example crystal
    gaps = {r["formula"]: float(r["band_gap"]) for r in rows}
    assert gaps["NaCl"] > 2.0 and gaps["Cu"] < 1.0, gaps  # an insulator and a metal, told apart


def test_predict_hull_uses_the_reference_in_the_wheel(venv, readme_run):
    assert_clean(readme_run["proc"])
    proc = run(venv, ["srscreen", "predict", str(readme_run["graphs"]), "--hull", "--top", "5", "--quiet"],
               readme_run["work"])
    assert_clean(proc)
    rows = ranking(proc.stdout)
    assert len(rows) == 5 and "e_above_hull" in rows[0], rows[:1]
    assert all(math.isfinite(float(r["e_above_hull"])) for r in rows), rows


def test_readme_python_api_example(venv, tmp_path):
    proc = run(venv, ["python", "-c", readme_block("python")], tmp_path)
    assert_clean(proc)
    lines = proc.stdout.splitlines()
    # README prints the rock salt's formation energy (eV/atom), then the same for it and its supercell.
    assert len(lines) == 2 and -3.0 < float(lines[0]) < -1.2, proc.stdout
    pair = [float(x) for x in lines[1].strip("[]").split()]
    assert len(pair) == 2 and all(abs(x - float(lines[0])) < 1e-4 for x in pair), proc.stdout


API = """
import json, srscreen
from pymatgen.core import Lattice, Structure
rock_salt = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
print(json.dumps({name: srscreen.load_model(name).predict_structure(rock_salt) for name in %r}))
""" % (PRETRAINED,)


def test_two_line_api_predicts_rock_salt(venv, tmp_path):
    proc = run(venv, ["python", "-c", API], tmp_path)
    assert_clean(proc)
    values = json.loads(proc.stdout)
    # Materials Project (PBE): NaCl Ef -2.09 eV/atom, gap 5.0 eV; any working model is near both.
    assert -3.0 < values["sr-cgcnn-ef"] < -1.2, values
    assert values["sr-cgcnn-eg"] > 2.5, values


CONTENTS = """
import json, srscreen
from srscreen.model.registry import pretrained_dir, pretrained_names
from importlib import resources
print(json.dumps({"module": srscreen.__file__, "pretrained_dir": str(pretrained_dir()), "names": pretrained_names(),
                  "reference": resources.files("srscreen").joinpath("data_files/mp_reference.csv.gz").is_file()}))
"""


def test_wheel_holds_the_models_and_the_reference(venv, tmp_path):
    proc = run(venv, ["python", "-c", CONTENTS], tmp_path)
    assert_clean(proc)
    found = json.loads(proc.stdout)
    site = str(venv.resolve())
    assert Path(found["module"]).resolve().is_relative_to(site), f"imported {found['module']}, not the installed one"
    assert Path(found["pretrained_dir"]).resolve().is_relative_to(site), found
    assert set(PRETRAINED) <= set(found["names"]), found
    assert found["reference"], "srscreen/data_files/mp_reference.csv.gz is not in the wheel"
