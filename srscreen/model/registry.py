"""Model names -> model files: the pretrained models installed with srscreen, or any path."""

from __future__ import annotations

from pathlib import Path

from srscreen.errors import ModelFileError
from srscreen.model.model_file import ModelFile

# The models `predict` uses when none is given: formation energy and band gap.
DEFAULT_MODELS = ("sr-cgcnn-ef", "sr-cgcnn-eg")
PRETRAINED_ROOT = Path(__file__).resolve().parents[1] / "pretrained"


def pretrained_dir() -> Path:
    """The newest release of the pretrained models: `srscreen/pretrained/vN/` with the largest N, each
    release a folder of model files and their card (older releases stay loadable by path)."""
    releases = sorted((p for p in PRETRAINED_ROOT.glob("v*") if p.is_dir() and p.name[1:].isdigit()),
                      key=lambda p: int(p.name[1:]))
    return releases[-1] if releases else PRETRAINED_ROOT


def pretrained_names() -> list[str]:
    return sorted(p.stem for p in pretrained_dir().glob("*.pt"))


def resolve_model(name_or_path: str) -> ModelFile:
    """A pretrained model by name, or a model file by path."""
    path = Path(name_or_path)
    if path.suffix == "" and not path.exists():
        candidate = pretrained_dir() / f"{name_or_path}.pt"
        if not candidate.exists():
            known = ", ".join(pretrained_names()) or "none installed"
            raise ModelFileError(f"{name_or_path}: no such model file or pretrained model (pretrained: {known})")
        path = candidate
    model = ModelFile.load(path)
    model.training.setdefault("name", path.stem)
    return model
