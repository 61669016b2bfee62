"""Predicting pymatgen Structures from Python, no graph file in between: the two-line API.

    import srscreen
    model = srscreen.load_model("sr-cgcnn-ef")
    model.predict_structure(structure)          # -> float, in model.unit
    model.predict_structures(structures)        # -> numpy array, one value per structure

The structures go through the same checks, graph rule and network as `featurize` + `predict`: the
graph settings and element table the model was trained with, equivalent atoms merged on CPU. A
structure that cannot be featurized raises one ValueError naming its position and the reason.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch

from .checkpoint import ModelFile
from .elements import supported_numbers
from .equivalent_atoms import quotient, unmerged
from .featurize import reduced_formula, unusable
from .graph import GraphSettings, build_graphs
from .predict import pick_device, predict_shard
from .readers import ParseFailure, from_pymatgen
from .registry import resolve_model
from .shards import Shard

# The most atoms `predict_structures` takes in one cell (featurize's default --max-atoms).
MAX_ATOMS = 1000


class Model:
    """A trained model, ready to predict structures in memory."""

    def __init__(self, model_file: ModelFile, device: str = "auto") -> None:
        self.file = model_file
        self.target, self.unit = model_file.target, model_file.unit
        self.device = pick_device(device)
        self.settings = GraphSettings.from_attrs(model_file.graph_settings)
        self._net = model_file.build_model().to(self.device).eval()
        self._supported = supported_numbers(self._net.feature_table.cpu().numpy())

    def __repr__(self) -> str:
        return f"Model({self.file.source}: {self.target} in {self.unit}, {self.settings.algorithm} graphs)"

    def predict_structure(self, structure) -> float:
        """The prediction for one pymatgen Structure, in `self.unit`."""
        return float(self.predict_structures([structure])[0])

    def predict_structures(self, structures: Sequence, batch_atoms: int | None = None) -> np.ndarray:
        """Predictions for many pymatgen Structures, in input order, batched."""
        shard = self._shard(structures)
        with torch.inference_mode():
            q = quotient(shard, self._net.steps) if self.device.type == "cpu" else unmerged(shard)
            values = predict_shard(q, [self._net], [self.file], self.device,
                                   batch_atoms or (1024 if self.device.type == "cpu" else 32768))
        return values[self.target]

    def _shard(self, structures: Sequence) -> Shard:
        parsed = []
        for i, structure in enumerate(structures):
            p = from_pymatgen(str(i), structure, "fail")
            reason = p.reason if isinstance(p, ParseFailure) else unusable(p.numbers, self._supported, MAX_ATOMS)
            if reason is not None:
                raise ValueError(f"structure {i} ({structure.composition.reduced_formula}): {reason}")
            parsed.append(p)
        built = build_graphs([(p.lattice, p.frac_coords) for p in parsed], self.settings)
        for i, error in enumerate(built.errors):
            if error is not None:
                raise ValueError(f"structure {i} ({structures[i].composition.reduced_formula}): {error}")
        numbers = [np.asarray(p.numbers, dtype=np.uint8) for p in parsed]
        return Shard(
            ids=[str(i) for i in range(len(parsed))],
            formula=[reduced_formula(n) for n in numbers],
            n_atoms=np.array([len(n) for n in numbers], dtype=np.int32),
            atomic_numbers=np.concatenate(numbers) if numbers else np.zeros(0, np.uint8),
            n_edges=built.n_edges, nbr_idx=built.nbr_idx, nbr_dist=built.nbr_dist,
        )


def load_model(name_or_path: str | os.PathLike, device: str = "auto") -> Model:
    """A pretrained model by name (`srscreen models` lists them) or a model file by path."""
    return Model(resolve_model(str(name_or_path)), device=device)
