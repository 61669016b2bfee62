"""Model names -> model files: the pretrained models installed with srscreen, or any path."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from .checkpoint import ModelFile, ModelFileError

# The models `predict` uses when none is given: formation energy and band gap.
DEFAULT_MODELS = ("sr-cgcnn-ef", "sr-cgcnn-eg")


def pretrained_dir() -> Path:
    """Where the pretrained model files are: installed as `srscreen.pretrained`, or, when srscreen is
    imported from a source checkout (its top-level `pretrained/` is only mapped in at install), there."""
    try:
        return Path(str(resources.files("srscreen.pretrained")))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[1] / "pretrained"


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
