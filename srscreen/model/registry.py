"""Model names -> model files: the pretrained models installed with srscreen, or any path."""

from __future__ import annotations

import os
from pathlib import Path

from srscreen.errors import ModelFileError
from srscreen.model.model_file import ModelFile

# The models `predict` uses when none is given: formation energy and band gap.
DEFAULT_MODELS = ("sr-cgcnn-ef", "sr-cgcnn-eg")
# What `predict --fast` uses when no model is given: one network with both heads, so one forward serves
# both columns (the defaults are one ensemble per target); releases before v3 lack it.
FAST_MODEL = "sr-cgcnn-fast"
PRETRAINED_ROOT = Path(__file__).resolve().parents[1] / "pretrained"


def releases() -> list[Path]:
    """The releases of the pretrained models, oldest first: `srscreen/pretrained/vN/`, each a folder of
    model files and their card."""
    return sorted((p for p in PRETRAINED_ROOT.glob("v*") if p.is_dir() and p.name[1:].isdigit()),
                  key=lambda p: int(p.name[1:]))


def pretrained_dir() -> Path:
    """The newest release of the pretrained models."""
    found = releases()
    return found[-1] if found else PRETRAINED_ROOT


def pretrained_files() -> dict[str, Path]:
    """Every installed pretrained name and its file: a release keeps the names of those before it unless
    it ships a model of the same name, so a name once shipped keeps working."""
    return {p.stem: p for release in releases() for p in sorted(release.glob("*.pt"))}


def default_models(fast: bool = False) -> tuple[str, ...]:
    """The pretrained names `predict` runs when given none: the Ef and Eg ensembles, or for `--fast` the
    one Ef+Eg network where installed (else the same pair, each cut to its first member by the caller)."""
    if fast and FAST_MODEL in pretrained_files():
        return (FAST_MODEL,)
    return DEFAULT_MODELS


def pretrained_names() -> list[str]:
    return sorted(pretrained_files())


def model_path(name_or_path: str) -> Path | None:
    """The file a model argument names, or None for a pretrained name (see `resolve_model` for the rule)."""
    if name_or_path in pretrained_names():
        return None
    return Path(name_or_path)


def resolve_model(name_or_path: str) -> ModelFile:
    """A pretrained model by name, or a model file by path, by one rule that never looks at the current
    folder to decide which:

    - a pretrained name (`sr-cgcnn-ef`, see `pretrained_names`) always means the installed model, even
      where a file or folder of that name lies in the current folder (write `./sr-cgcnn-ef` for that);
    - a path names a file: it holds a folder separator or has a suffix (`m.pt`, `runs/m`, `./m`);
    - a bare name that is neither is refused, saying how to write either.
    """
    path = model_path(name_or_path)
    if path is None:
        path = pretrained_files()[name_or_path]
    elif os.sep not in name_or_path and "/" not in name_or_path and not path.suffix:
        known = ", ".join(pretrained_names()) or "none installed"
        exists = f"; for the file {name_or_path} here, write ./{name_or_path}" if path.exists() else ""
        raise ModelFileError(f"{name_or_path}: not a pretrained model (pretrained: {known}); "
                             f"a model file is named by a path (m.pt, ./{name_or_path}){exists}")
    model = ModelFile.load(path)
    model.training.setdefault("name", path.stem)
    return model
