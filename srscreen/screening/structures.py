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
import re
from dataclasses import replace
from typing import Sequence

import numpy as np
import torch

from srscreen.model.model_file import ModelFile
from srscreen.graph.elements import supported_numbers
from srscreen.graph.equivalent_atoms import quotient, unmerged
from srscreen.data.featurize import FeaturizeOptions, graph_records
from srscreen.graph.settings import GraphSettings
from srscreen.screening.predict import batch_atoms_for, pick_device, predict_shard
from srscreen.io.formats.pymatgen_json import from_pymatgen
from srscreen.model.registry import resolve_model
from srscreen.errors import InputError, OptionError
from srscreen.graph.csr import Graphs

# A failure's reason names featurize's flags; from Python, the same choices are load_model's arguments.
_API_SPELLING = ((re.compile(r"--on-disorder (\w+)"), r"srscreen.load_model(..., on_disorder='\1')"),
                 (re.compile(r"--on-isolated-atoms (\w+)"), r"srscreen.load_model(..., on_isolated_atoms='\1')"),
                 (re.compile(r"--max-atoms (\d+)"), r"max_atoms=\1 (srscreen.load_model(..., max_atoms=N) raises it)"))


class Model:
    """A trained model, ready to predict structures in memory. `on_disorder` ("fail", or "majority": each
    partly occupied site takes its majority species), `on_isolated_atoms` ("fail", or "pad": CGCNN's
    padding for an atom with no neighbour within the radius) and `max_atoms` are featurize's policies."""

    def __init__(self, model_file: ModelFile, device: str = "auto", *, on_disorder: str = "fail",
                 max_atoms: int = 1000, on_isolated_atoms: str = "fail") -> None:
        graph = replace(GraphSettings.from_attrs(model_file.graph_settings), on_isolated_atoms=on_isolated_atoms)
        self._options = FeaturizeOptions(graph=graph, max_atoms=max_atoms, on_disorder=on_disorder)  # checks them
        self.settings = self._options.graph
        self.file = model_file
        self.targets, self.units = model_file.targets, model_file.units
        self.device = pick_device(device)
        self._net = model_file.build_network().to(self.device).eval()
        self._supported = supported_numbers(model_file.state_dict["feature_table"].numpy())

    def __repr__(self) -> str:
        targets = ", ".join(f"{t} in {u}" for t, u in zip(self.targets, self.units))
        return f"Model({self.file.source}: {targets}, {self.settings.algorithm} graphs)"

    @property
    def target(self) -> str:
        """A one-target model's target (`targets` lists a multi-target model's)."""
        return self.file.target

    @property
    def unit(self) -> str:
        return self.file.unit

    def predict_structure(self, structure, target: str | None = None) -> float:
        """The prediction of `target` (a one-target model's own by default) for one pymatgen Structure."""
        return float(self.predict_structures([structure], target=target)[0])

    def predict_structures(self, structures: Sequence, batch_atoms: int | None = None, with_std: bool = False,
                           target: str | None = None) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Predictions of `target` (a one-target model's own by default) for many pymatgen Structures, in
        input order, batched; with `with_std` (a model with a spread), also each prediction's calibrated
        standard deviation. `predict_columns` gives every target at once."""
        if target is None and len(self.targets) > 1:
            raise OptionError(f"{self.file.source} predicts {', '.join(self.targets)}: give `target`, or take every "
                              "column with predict_columns")
        target = target or self.targets[0]
        if target not in self.targets:
            raise OptionError(f"`target` {target!r}: {self.file.source} predicts {', '.join(self.targets)}")
        if with_std and not self.file.has_std:
            raise OptionError(f"`with_std=True` needs a model with a spread (an ensemble or scale heads); "
                              f"{self.file.source} has none")
        values = self.predict_columns(structures, batch_atoms)
        return (values[target], values[f"{target}_std"]) if with_std else values[target]

    def predict_columns(self, structures: Sequence, batch_atoms: int | None = None) -> dict[str, np.ndarray]:
        """Every column the model gives (each target, and `<target>_std` where it has a spread) for many
        pymatgen Structures, in input order."""
        batch_atoms = batch_atoms_for(self.device, batch_atoms)  # before the graphs: a bad value fails at once
        shard = self._shard(structures)
        with torch.inference_mode():
            q = quotient(shard, self.file.architecture["steps"]) if self.device.type == "cpu" else unmerged(shard)
            return predict_shard(q, [self._net], [self.file], self.device, batch_atoms)

    def _shard(self, structures: Sequence) -> Graphs:
        if hasattr(structures, "lattice"):  # iterating one Structure gives its sites: "KeyError: 'Invalid key=0'"
            raise OptionError("`structures` is one Structure: give a list of them, or call predict_structure")
        structures = list(structures)  # a generator too: a failure names its structure by position
        for i, s in enumerate(structures):
            if not (hasattr(s, "lattice") and hasattr(s, "frac_coords")):
                molecule = hasattr(s, "cart_coords")
                box = "; a Molecule has no cell: give Molecule.get_boxed_structure(a, b, c)" if molecule else ""
                raise InputError(f"structure {i}: a {type(s).__name__}, not a pymatgen Structure{box}")
        found = ((str(i), from_pymatgen(str(i), s, self._options.on_disorder)) for i, s in enumerate(structures))
        graphs, failures = graph_records(found, self._options, self._supported)
        if failures:
            first = failures[0]
            reason = first.reason
            for flag, argument in _API_SPELLING:
                reason = flag.sub(argument, reason)
            raise InputError(f"structure {first.id} ({structures[int(first.id)].composition.reduced_formula}): {reason}")
        return graphs


def load_model(name_or_path: str | os.PathLike, device: str = "auto", *, on_disorder: str = "fail",
               max_atoms: int = 1000, on_isolated_atoms: str = "fail") -> Model:
    """A pretrained model by name (`srscreen models` lists them) or a model file by path. `on_disorder`,
    `on_isolated_atoms` and `max_atoms` are what `featurize --on-disorder/--on-isolated-atoms/--max-atoms`
    are: "majority" orders partly occupied sites by their majority species (default: such a structure
    fails), "pad" keeps an atom with no neighbour within the radius (default: it fails), and larger cells
    than `max_atoms` fail."""
    return Model(resolve_model(str(name_or_path)), device=device, on_disorder=on_disorder, max_atoms=max_atoms,
                 on_isolated_atoms=on_isolated_atoms)
