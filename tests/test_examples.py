"""The README's first command and the examples walk-through, as a new user runs them."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers.screening_data import PRETRAINED_FEATURIZE_FLAGS, cli
from srscreen.model.model_file import ModelFile
from srscreen.model.registry import DEFAULT_MODELS, pretrained_names, resolve_model
from srscreen.data.graph_file import GraphFile

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def graphs(tmp_path_factory) -> Path:
    """The examples featurized for the pretrained models, which the walk-through predicts with."""
    out = tmp_path_factory.mktemp("examples") / "examples.h5"
    result = cli("featurize", EXAMPLES / "structures", out, *PRETRAINED_FEATURIZE_FLAGS, "--quiet")
    assert result.exit_code == 0, result.stderr
    return out


def test_examples_featurize_completely(graphs):
    with GraphFile(graphs) as g:
        assert len(g) == 31
        assert g.failures() == []
        assert [s for s, _ in g.skipped()] == [str(EXAMPLES / "structures" / "README.txt")]
        ids = set(g.ids())
    labelled = {row["id"] for row in csv.DictReader((EXAMPLES / "labels.csv").open())}
    assert labelled <= ids  # every label names a crystal the walk-through featurizes


needs_pretrained = pytest.mark.skipif(
    not set(DEFAULT_MODELS) <= set(pretrained_names()), reason="pretrained sr-cgcnn-ef/eg are not installed"
)


@needs_pretrained
def test_readme_main_command_ranks_examples(graphs):
    result = cli("predict", graphs, "--top", "10", "--quiet")
    assert result.exit_code == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    # Each default model's columns in order: its target, and its spread where it has one (v3).
    columns = [c for name in DEFAULT_MODELS for c in resolve_model(name).columns]
    assert columns[:1] == ["formation_energy_per_atom"] and "band_gap" in columns
    assert list(rows[0]) == ["rank", "id", "formula", "n_atoms", *columns]
    assert [int(r["rank"]) for r in rows] == list(range(1, 11))
    energies = [float(r["formation_energy_per_atom"]) for r in rows]
    assert energies == sorted(energies)


@needs_pretrained
def test_walkthrough_finetune_then_predict(graphs, tmp_path):
    model = tmp_path / "my-ef.pt"
    result = cli("finetune", graphs, "--labels", EXAMPLES / "labels.csv", "--target", "formation_energy_per_atom",
                 "--from", "sr-cgcnn-ef", "-o", model, "--epochs", "2", "--batch-size", "8",
                 "--val-fraction", "0.2", "--test-fraction", "0", "--threads", "1", "--quiet")
    assert result.exit_code == 0, result.stderr
    result = cli("predict", graphs, "--model", model, "--model", "sr-cgcnn-eg", "--top", "5", "--quiet")
    assert result.exit_code == 0, result.stderr
    assert len(result.stdout.splitlines()) == 6
    # The fine-tuned model is not the one it started from: other weights (not only BatchNorm statistics)...
    tuned, start = ModelFile.load(model), resolve_model("sr-cgcnn-ef")
    assert tuned.training["finetuned_from"] == "sr-cgcnn-ef"
    learned = [name for name, _ in start.build_model().named_parameters()]
    changed = [n for n in learned if not torch.equal(tuned.state_dict[n], start.state_dict[n])]
    assert len(changed) >= len(learned) // 2, f"fine-tuning changed only {changed}"
    # ...and other predictions, of the same scale (two epochs at a small rate move them a little).
    before, after = (ranked_energies(graphs, m) for m in ("sr-cgcnn-ef", model))
    diff = np.array([after[i] - before[i] for i in before])
    assert np.abs(diff).max() > 1e-4 and np.abs(diff).mean() < 0.5, diff


def ranked_energies(graphs: Path, model) -> dict[str, float]:
    result = cli("predict", graphs, "--model", model, "--quiet")
    assert result.exit_code == 0, result.stderr
    return {r["id"]: float(r["formation_energy_per_atom"]) for r in csv.DictReader(io.StringIO(result.stdout))}
