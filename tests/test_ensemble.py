"""Ensembles: N members in one model file, run as one batched network, with a calibrated spread.

A user trains a few seeds of one recipe, runs `srscreen ensemble` on them and gets one model file;
`predict` then writes `<target>_std` beside the prediction (the members' mean), `--sort` and `--where`
work on it, `models` shows the members and the calibration, `evaluate` says how well the spread ranks
the errors. The batched network computes what each member computes.
"""

from __future__ import annotations

import csv
import io
import json
import re

import numpy as np
import pytest
import torch
from helpers.screening_data import (
    assert_usage_error,
    cli,
    crystals,
    featurize_db,
    one_thread,  # noqa: F401 - fixture
    target_values,
    write_json_db,
    write_labels,
)

import srscreen
from srscreen.data.batch import batch_of
from srscreen.data.graph_file import GraphFile
from srscreen.errors import OptionError
from srscreen.graph.elements import cgcnn_feature_table
from srscreen.graph.equivalent_atoms import quotient
from srscreen.model.ensemble import EnsembleNet, calibration_scale, uncertainty_metrics
from srscreen.model.model_file import ModelFile
from srscreen.model.network import CrystalGraphNet
from srscreen.trainer.trainer import TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_thread")
EF = "formation_energy_per_atom"


def random_members(n: int, shared: bool, seed: int = 0) -> list[CrystalGraphNet]:
    """Members with random weights and random BatchNorm statistics, so that folding them is tested too."""
    torch.manual_seed(seed)
    members = []
    for _ in range(n):
        net = CrystalGraphNet(feature_table=np.array(cgcnn_feature_table()), steps=3, shared=shared,
                              atom_fea_len=8, h_fea_len=6, n_h=2)
        with torch.no_grad():
            for bn in (*net.bn1, *net.bn2):
                bn.running_mean.normal_()
                bn.running_var.uniform_(0.5, 2.0)
                bn.weight.normal_()
                bn.bias.normal_()
        members.append(net.eval())
    return members


@pytest.fixture(scope="module")
def data(tmp_path_factory, prototypes):
    root = tmp_path_factory.mktemp("ensemble")
    items = crystals(prototypes, copies=2)
    graphs = featurize_db(write_json_db(root / "db", items), root / "graphs.h5", shard_size=9)
    labels = write_labels(root / "labels.csv", target_values(items))
    ids = sorted(id_ for id_, _ in items)
    split = root / "split.csv"
    split.write_text("id,split\n" + "".join(f"{id_},{('val', 'test', 'train', 'train')[i % 4]}\n"
                                             for i, id_ in enumerate(ids)))
    members = []
    for seed in range(3):
        config = TrainConfig(target=EF, atom_fea_len=8, h_fea_len=8, epochs=2, batch_size=8, seed=seed)
        train(graphs, labels, root / f"ef{seed}.pt", config, split_file=split)
        members.append(root / f"ef{seed}.pt")
    result = cli("ensemble", *members, "--graphs", graphs, "--labels", labels, "-o", root / "ens.pt")
    assert result.exit_code == 0, (result.stderr, result.exception)
    return {"root": root, "graphs": graphs, "labels": labels, "members": members, "ensemble": root / "ens.pt"}


def predicted(data, *args) -> list[dict]:
    result = cli("predict", data["graphs"], "--threads", "1", "--quiet", *args)
    assert result.exit_code == 0, (result.stderr, result.exception)
    return list(csv.DictReader(io.StringIO(result.stdout)))


@pytest.mark.parametrize("shared", [True, False])
def test_batched_network_computes_what_each_member_computes(data, shared):
    members = random_members(4, shared)
    ensemble = EnsembleNet(members)
    with GraphFile(data["graphs"]) as graphs:
        shard = graphs.read_shard(0)
    for graphs_ in (shard, quotient(shard, 3)):  # atoms, and classes of equivalent atoms
        for dense_width in (0, 8):
            batch = batch_of(graphs_, dense_width)
            with torch.inference_mode():
                torch.testing.assert_close(ensemble(batch), torch.stack([m(batch) for m in members]),
                                           rtol=1e-5, atol=1e-5)


def test_members_of_different_architectures_cannot_share_a_network():
    narrow, wide = random_members(1, True)[0], CrystalGraphNet(feature_table=np.array(cgcnn_feature_table()))
    with pytest.raises(ValueError, match="differ in architecture"):
        EnsembleNet([narrow, wide.eval()])


def test_calibration_recovers_the_scale_of_the_errors():
    rng = np.random.default_rng(0)
    std = rng.uniform(0.01, 0.2, 40_000)
    errors = rng.normal(0.0, 2.5 * std)
    assert calibration_scale(errors, std) == pytest.approx(2.5, rel=0.03)
    # Rows where the members agree exactly say nothing about the scale.
    assert calibration_scale(np.r_[errors, 1.0], np.r_[std, 0.0]) == pytest.approx(calibration_scale(errors, std))
    with pytest.raises(ValueError, match="cannot calibrate"):
        calibration_scale(np.ones(3), np.zeros(3))


def test_calibration_of_heavy_tailed_errors_covers_both_gaussian_shares():
    """Laplace errors with a few far outliers (a misread crystal): the Gaussian-likelihood scale covers
    ~90% at 1 std, outside the 55-80% that issue 24 asks for; the calibrated scale puts the held-out
    errors inside both of its windows (55-80% at 1 std, 88-99% at 2)."""
    rng = np.random.default_rng(1)
    raw = rng.uniform(0.001, 0.3, 40_000)
    errors = rng.laplace(0.0, raw)
    outliers = rng.random(40_000) < 0.05
    errors[outliers] = rng.normal(0.0, 0.5, outliers.sum())
    scale = calibration_scale(errors[:20_000], raw[:20_000])
    figures = uncertainty_metrics(errors[20_000:], scale * raw[20_000:])
    assert 0.60 < figures["within_1std"] < 0.76 and 0.88 < figures["within_2std"] < 0.99, figures
    rms = np.sqrt(np.mean((errors / raw) ** 2))  # the Gaussian-likelihood scale, for contrast
    assert np.mean(np.abs(errors) <= rms * raw) > 0.85


def test_uncertainty_figures_of_a_well_calibrated_spread():
    rng = np.random.default_rng(1)
    std = rng.uniform(0.01, 0.2, 40_000)
    figures = uncertainty_metrics(rng.normal(0.0, std), std)
    assert figures["within_1std"] == pytest.approx(0.683, abs=0.01)
    assert figures["within_2std"] == pytest.approx(0.954, abs=0.01)
    assert figures["spearman"] > 0.3
    assert figures["mae_most_confident_10pct"] < figures["mae_least_confident_10pct"] / 3


def test_ensemble_file_holds_every_member_and_its_calibration(data):
    ensemble = ModelFile.load(data["ensemble"])
    members = [ModelFile.load(p) for p in data["members"]]
    assert ensemble.n_members == 3 and ensemble.target == EF
    for stored, member in zip(ensemble.members, members):
        for key, tensor in member.state_dict.items():
            assert torch.equal(stored["state_dict"][key], tensor)
        assert stored["normalizers"] == member.normalizers
    assert ensemble.calibration["scale"][EF] > 0 and ensemble.calibration["validation_crystals"][EF] >= 2
    assert set(ensemble.training["uncertainty"][EF]) >= {"spearman", "within_1std", "within_2std"}
    assert torch.load(data["ensemble"], weights_only=True)["schema_version"] == 4


def test_predict_writes_the_mean_and_the_calibrated_spread(data):
    rows = {r["id"]: r for r in predicted(data, "--model", data["ensemble"])}
    assert list(next(iter(rows.values()))) == ["rank", "id", "formula", "n_atoms", EF, f"{EF}_std"]
    per_member = [{r["id"]: float(r[EF]) for r in predicted(data, "--model", p)} for p in data["members"]]
    scale = ModelFile.load(data["ensemble"]).calibration["scale"][EF]
    compared = 0
    for id_, row in rows.items():
        values = np.array([member[id_] for member in per_member])
        if (values == 0.0).any():  # a crystal of one element, floored at 0 (test_predict): the members' raw values differ
            assert float(row[EF]) >= 0.0
            continue
        compared += 1
        assert float(row[EF]) == pytest.approx(values.mean(), abs=2e-5)
        assert float(row[f"{EF}_std"]) == pytest.approx(values.std(ddof=1) * scale, rel=1e-3, abs=2e-5)
    assert compared >= len(rows) // 2


def test_sort_and_where_take_the_spread_column(data):
    column = f"{EF}_std"
    rows = predicted(data, "--model", data["ensemble"], "--sort", column, "--desc")
    spreads = [float(r[column]) for r in rows]
    assert spreads == sorted(spreads, reverse=True)
    # The cut is a value as printed, and --where compares values as printed: the row printed as the cut
    # fails `<`, whatever digits lie beyond the sixth.
    cut = rows[len(rows) // 2][column]
    kept = predicted(data, "--model", data["ensemble"], "--where", f"{column}<{cut}")
    assert kept and all(float(r[column]) < float(cut) for r in kept)
    assert {r["id"] for r in kept} == {r["id"] for r in rows if float(r[column]) < float(cut)}


def test_models_and_evaluate_show_members_calibration_and_uncertainty(data):
    result = cli("models", data["ensemble"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.stderr
    assert "members   3" in result.stdout
    assert re.search(r"sigma     the spread of 3 members, calibrated formation_energy_per_atom x[0-9.]+", result.stdout)
    result = cli("evaluate", data["graphs"], "--labels", data["labels"], "--model", data["ensemble"], "--json")
    assert result.exit_code == 0, (result.stderr, result.exception)
    (figures,) = json.loads(result.stdout).values()
    assert {"mae", "spearman", "within_1std", "mae_least_confident_10pct"} <= set(figures[EF])


def test_python_api_gives_the_spread(data, prototypes):
    model = srscreen.load_model(data["ensemble"])
    structures = list(prototypes.values())[:3]
    mean, std = model.predict_structures(structures, with_std=True)
    assert mean.shape == std.shape == (3,) and np.all(std >= 0)
    np.testing.assert_allclose(mean, model.predict_structures(structures))
    with pytest.raises(OptionError, match="needs a model with a spread"):
        srscreen.load_model(data["members"][0]).predict_structures(structures, with_std=True)


def test_members_that_do_not_fit_together_are_refused_in_one_line(data, tmp_path):
    other = tmp_path / "wide.pt"
    train(data["graphs"], data["labels"], other, TrainConfig(target=EF, atom_fea_len=10, h_fea_len=8, epochs=1, batch_size=8))
    result = cli("ensemble", data["members"][0], other, "--graphs", data["graphs"], "--labels", data["labels"],
                 "-o", tmp_path / "ens.pt")
    assert_usage_error(result, "differs from", "architecture")
    result = cli("ensemble", data["members"][0], "--graphs", data["graphs"], "--labels", data["labels"],
                 "-o", tmp_path / "ens.pt")
    assert_usage_error(result, "at least 2 members")
    # The same member twice would count twice in the mean and shrink the spread.
    result = cli("ensemble", data["members"][0], data["members"][1], data["members"][0], "--graphs", data["graphs"],
                 "--labels", data["labels"], "-o", tmp_path / "ens.pt")
    assert_usage_error(result, "the same weights as", "give each member once")
    # Scale heads on some members only: named as such, not as "architecture".
    scaled = tmp_path / "scaled.pt"
    train(data["graphs"], data["labels"], scaled, TrainConfig(target=EF, atom_fea_len=8, h_fea_len=8, epochs=1,
                                                             batch_size=8, scale_head=True))
    result = cli("ensemble", data["members"][0], scaled, "--graphs", data["graphs"], "--labels", data["labels"],
                 "-o", tmp_path / "ens.pt")
    assert_usage_error(result, "has scale heads", "--scale-head, or none")


def test_members_of_different_splits_are_refused_with_what_to_do(data, tmp_path):
    """Seeds without one --split file have no validation crystal that every member left out."""
    other = tmp_path / "other-split.pt"
    train(data["graphs"], data["labels"], other, TrainConfig(target=EF, atom_fea_len=8, h_fea_len=8, epochs=1,
                                                             batch_size=8, seed=7))
    result = cli("ensemble", data["members"][0], other, "--graphs", data["graphs"], "--labels", data["labels"],
                 "-o", tmp_path / "ens.pt")
    message = assert_usage_error(result, "not trained on one split", "--split")
    assert "--validation-ids" not in message
    assert not (tmp_path / "ens.pt").exists()
