"""The Python API: the commands as functions of `srscreen`, and a model loaded by name that predicts
pymatgen Structures as the command line does. (The examples of docs/api.md and README run in test_docs.)"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import build_prototypes
from helpers.screening_data import PRETRAINED_GRAPHS, write_json_db

import srscreen
from srscreen.data.featurize import FeaturizeOptions, featurize
from srscreen.errors import OptionError
from srscreen.screening.predict import predict
from srscreen.model.registry import resolve_model


def test_top_level_names_are_the_library_functions():
    from srscreen.data import featurize as featurize_module
    from srscreen.screening import evaluate, predict as predict_module, structures
    from srscreen.trainer import config, trainer

    expected = {
        "featurize": featurize_module.featurize, "predict": predict_module.predict, "evaluate": evaluate.evaluate,
        "train": trainer.train, "finetune": trainer.finetune, "TrainConfig": config.TrainConfig,
        "load_model": structures.load_model, "Model": structures.Model,
    }
    for name, value in expected.items():
        assert getattr(srscreen, name) is value, name
        assert name in srscreen.__all__ and name in dir(srscreen)
    with pytest.raises(AttributeError, match="no_such_name"):
        srscreen.no_such_name  # noqa: B018


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


@pytest.mark.slow
def test_import_srscreen_is_light():
    """`import srscreen` must not import torch (the API loads it on first use), nor must listing its names."""
    import subprocess
    import sys

    code = "import sys, srscreen; dir(srscreen); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"


def test_what_is_not_a_list_of_structures_is_named():
    """One Structure where a list belongs, a Molecule, None or a name: one line saying what was given
    (they failed with KeyError 'Invalid key=0', AttributeError or TypeError); a generator is a list."""
    from pymatgen.core import Molecule

    model = srscreen.load_model("sr-cgcnn-ef", device="cpu")
    nacl, cu = build_prototypes()["NaCl"], build_prototypes()["Cu"]
    with pytest.raises(OptionError, match="`structures` is one Structure: give a list"):
        model.predict_structures(nacl)
    carbon_monoxide = Molecule(["C", "O"], [[0, 0, 0], [0, 0, 1.13]])
    for bad, shown in ((carbon_monoxide, "a Molecule, not a pymatgen Structure; a Molecule has no cell"),
                       (None, "a NoneType, not"), ("NaCl", "a str, not")):
        with pytest.raises(ValueError, match=f"structure 1: {shown}"):
            model.predict_structures([nacl, bad])
    overlapping = nacl.copy()
    overlapping.append("Na", [0.01, 0, 0], validate_proximity=False)
    with pytest.raises(ValueError, match=r"structure 1 \(Na5Cl4\): overlapping atoms"):
        model.predict_structures(s for s in [cu, overlapping])  # named from a generator too (TypeError before)
    np.testing.assert_array_equal(model.predict_structures(s for s in [nacl, cu]), model.predict_structures([nacl, cu]))
    for bad in (0, -1, 2.5, True):  # 0 silently took the default; -1 named `max_atoms`
        with pytest.raises(OptionError, match=f"`batch_atoms` must be a whole number of at least 1, not {bad!r}"):
            model.predict_structures([nacl], batch_atoms=bad)
    np.testing.assert_allclose(model.predict_structures([nacl, cu], batch_atoms=1), model.predict_structures([nacl, cu]),
                               atol=1e-5)


def test_featurize_policies_are_load_models_arguments():
    """A partly occupied structure failed with "use --on-disorder majority", which a Python user could not
    do: load_model takes on_disorder and max_atoms, and the messages name them."""
    nacl = build_prototypes()["NaCl"]
    mixed = nacl.copy()
    mixed.replace(0, {"Na": 0.75, "K": 0.25})
    strict = srscreen.load_model("sr-cgcnn-ef", device="cpu")
    with pytest.raises(ValueError, match=r"structure 0 \(.*\): disordered site.*srscreen.load_model\(\.\.\., on_disorder='majority'\)"):
        strict.predict_structures([mixed])
    ordered = nacl.copy()
    ordered.replace(0, "Na")
    majority = srscreen.load_model("sr-cgcnn-ef", device="cpu", on_disorder="majority")
    assert majority.predict_structure(mixed) == pytest.approx(strict.predict_structure(ordered), abs=1e-6)
    small = srscreen.load_model("sr-cgcnn-ef", device="cpu", max_atoms=4)
    with pytest.raises(ValueError, match=r"more than max_atoms=4 \(srscreen.load_model\(\.\.\., max_atoms=N\) raises it\)"):
        small.predict_structures([nacl])  # 8 atoms in the conventional cell
    # An atom with no neighbour within 8 Å (a 20 Å box): its message named --on-isolated-atoms, a flag.
    from pymatgen.core import Lattice, Structure

    lone = Structure(Lattice.cubic(20.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    with pytest.raises(ValueError, match=r"isolated atom.*srscreen.load_model\(\.\.\., on_isolated_atoms='pad'\)"):
        strict.predict_structures([lone])
    padded = srscreen.load_model("sr-cgcnn-ef", device="cpu", on_isolated_atoms="pad")
    assert np.isfinite(padded.predict_structure(lone))
    for bad in ({"on_disorder": "average"}, {"max_atoms": 0}, {"on_isolated_atoms": "drop"}):
        with pytest.raises(OptionError, match=f"`{next(iter(bad))}` must be"):
            srscreen.load_model("sr-cgcnn-ef", device="cpu", **bad)


@pytest.fixture(scope="module")
def small_graphs(tmp_path_factory):
    """Three prototypes featurized for the shipped models, with Ef labels."""
    root = tmp_path_factory.mktemp("api")
    chosen = {name: s for name, s in build_prototypes().items() if name in ("NaCl", "ZnO", "Cu")}
    graphs = root / "graphs.h5"
    featurize(write_json_db(root / "db", list(chosen.items())), graphs,
              options=FeaturizeOptions(graph=PRETRAINED_GRAPHS), jobs=1)
    labels = root / "labels.csv"
    labels.write_text("id,formation_energy_per_atom\nNaCl,-2.1\nZnO,-1.8\nCu,0.0\n")
    return graphs, labels


def test_predict_and_evaluate_take_names_paths_and_loaded_models(small_graphs):
    """What `srscreen.load_model` returns, a pretrained name or a model file's path work as the ModelFile
    does (they failed with "'str' object has no attribute 'targets'"), and so do `where` as text and
    `hull=True`; anything else is refused in one line."""
    graphs, labels = small_graphs
    model = srscreen.load_model("sr-cgcnn-ef", device="cpu")
    want = predict(graphs, [model.file], device="cpu")
    for given in (["sr-cgcnn-ef"], "sr-cgcnn-ef", [model], model, [model.file.source]):
        got = srscreen.predict(graphs, given, device="cpu")
        assert got.ids == want.ids
        np.testing.assert_array_equal(got.values["formation_energy_per_atom"], want.values["formation_energy_per_atom"])
        scored = srscreen.evaluate(graphs, labels, given, device="cpu")
        assert scored["sr-cgcnn-ef"]["formation_energy_per_atom"].count == 3
    below = srscreen.predict(graphs, model, where="formation_energy_per_atom<-1", hull=True, device="cpu")
    assert sorted(below.ids) == ["NaCl", "ZnO"] and "p_stable" in below.values
    assert "e_above_hull" not in srscreen.predict(graphs, model, hull=False, device="cpu").values
    for bad, match in (([42], "42 is not a model"), ({"ef": model}, "must be a list")):
        with pytest.raises(OptionError, match=match):
            srscreen.predict(graphs, bad)
    with pytest.raises(OptionError, match="`hull` must be True or a ReferenceHull"):
        srscreen.predict(graphs, model, hull="mp")


@pytest.mark.parametrize("name", ["p_stable", "formation_energy_per_atom_std", "n_atoms", "rank", "hull_note"])
def test_a_target_named_like_another_column_is_refused(small_graphs, name):
    """A model whose target is named like a column the ranking has already (a fixed column, a --hull column,
    another model's target or _std) is refused: beside sr-cgcnn-ef with --hull, a target named p_stable had
    its values replaced by the hull's, and one named formation_energy_per_atom_std by sr-cgcnn-ef's σ."""
    from dataclasses import replace

    graphs, _ = small_graphs
    ef = srscreen.load_model("sr-cgcnn-ef", device="cpu").file
    renamed = replace(ef, targets=[name], calibration={"scale": {name: 1.0}}, source=f"{name}.pt")
    with pytest.raises(OptionError, match=f"{name}.pt writes a column '{name}', which the ranking has already"):
        predict(graphs, [renamed, ef], hull=True, device="cpu")
