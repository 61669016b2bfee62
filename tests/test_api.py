"""The Python API: a model loaded by name predicts pymatgen Structures as the command line does."""

from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import REPO_ROOT, build_prototypes
from screening_data import PRETRAINED_GRAPHS, write_json_db

import srscreen
from srscreen.data.featurize import FeaturizeOptions, featurize
from srscreen.screening.predict import predict
from srscreen.model.registry import resolve_model


def test_readme_example_runs():
    """The ```python block of README's "Python API" section, as a user would paste it."""
    text = (REPO_ROOT / "README.md").read_text()
    section = text[text.index("## Python API"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    exec(compile(code, "README.md (Python API)", "exec"), {})


def test_predictions_equal_featurize_then_predict(tmp_path):
    """Every prototype: load_model(...).predict_structures equals the graph-file path, row for row."""
    prototypes = {name: s for name, s in build_prototypes().items() if name != "molecule"}
    graphs = tmp_path / "graphs.h5"
    featurize(write_json_db(tmp_path / "db", list(prototypes.items())), graphs,
              options=FeaturizeOptions(graph=PRETRAINED_GRAPHS), jobs=1)
    ranking = predict(graphs, [resolve_model("sr-cgcnn-ef")])
    via_files = dict(zip(ranking.ids, ranking.values["formation_energy_per_atom"]))
    model = srscreen.load_model("sr-cgcnn-ef", device="cpu")
    got = model.predict_structures(list(prototypes.values()))
    np.testing.assert_allclose(got, [via_files[name] for name in prototypes], rtol=0, atol=1e-5)
    assert model.predict_structure(prototypes["NaCl"]) == pytest.approx(via_files["NaCl"], abs=1e-5)
    assert model.unit == "eV/atom" and model.target == "formation_energy_per_atom"


def test_a_structure_that_cannot_be_featurized_is_named():
    from pymatgen.core import Lattice, Structure

    good = build_prototypes()["NaCl"]
    overlapping = Structure(Lattice.cubic(5.0), ["Na", "Cl"], [[0, 0, 0], [0.01, 0, 0]], validate_proximity=False)
    with pytest.raises(ValueError, match=r"structure 1 \(NaCl\): overlapping atoms"):
        srscreen.load_model("sr-cgcnn-ef").predict_structures([good, overlapping])


def test_import_srscreen_is_light():
    """`import srscreen` must not import torch (the API loads it on first use)."""
    import subprocess
    import sys

    code = "import sys, srscreen; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"
