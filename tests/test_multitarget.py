"""One network, several targets: a head per target on one trunk, scale heads for sigma, and what every
command does with such a model (predict, --fast, evaluate, finetune, ensembles, p_stable)."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
import torch
from helpers.screening_data import (
    TINY,
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
from srscreen.data.labels import read_labels
from srscreen.graph.elements import cgcnn_feature_table
from srscreen.model.ensemble import calibration_scale
from srscreen.model.model_file import ModelFile
from srscreen.model.network import CrystalGraphNet
from srscreen.screening.predict import probability_stable
from srscreen.trainer.trainer import TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_thread")
EF, EG = "formation_energy_per_atom", "band_gap"


@pytest.fixture(scope="module")
def data(tmp_path_factory, prototypes):
    root = tmp_path_factory.mktemp("multitarget")
    items = crystals(prototypes, copies=2)
    graphs = featurize_db(write_json_db(root / "db", items), root / "graphs.h5")
    values = target_values(items)
    ids = sorted(values)
    # Some crystals are labelled for one target only: each head trains on its own labels.
    labels = write_labels(root / "labels.csv", values, blank={ids[1]: EG, ids[2]: EF, ids[5]: EG})
    split = root / "split.csv"
    split.write_text("id,split\n" + "".join(f"{i},{('val', 'test', 'train', 'train')[k % 4]}\n" for k, i in enumerate(ids)))
    both = root / "both.pt"
    result = cli("train", graphs, "--labels", labels, "--target", EF, "--target", EG, "--scale-head", "-o", both,
                 "--epochs", "3", "--batch-size", "8", "--split", split, *TINY)
    assert result.exit_code == 0, (result.stderr, result.exception)
    return {"root": root, "graphs": graphs, "labels": labels, "split": split, "both": both, "values": values}


def ranked(data, *args) -> list[dict]:
    result = cli("predict", data["graphs"], "--threads", "1", "--quiet", *args)
    assert result.exit_code == 0, (result.stderr, result.exception)
    return list(csv.DictReader(io.StringIO(result.stdout)))


def test_one_model_predicts_both_columns_with_their_spread(data):
    m = ModelFile.load(data["both"])
    assert m.targets == [EF, EG] and m.units == ["eV/atom", "eV"]
    assert set(m.calibration["scale"]) == {EF, EG} and all(s > 0 for s in m.calibration["scale"].values())
    assert set(m.test_metrics()) == {EF, EG}
    rows = ranked(data, "--model", data["both"])
    # each std beside its value, the order two single-target files give (scripts reading by position hold)
    assert list(rows[0]) == ["rank", "id", "formula", "n_atoms", EF, f"{EF}_std", EG, f"{EG}_std"]
    assert len(rows) == len(data["values"])
    assert all(float(r[f"{EF}_std"]) > 0 and float(r[f"{EG}_std"]) > 0 for r in rows)
    assert m.bounds == {EG: [0.0, None]} and all(float(r[EG]) >= 0 for r in rows)  # a gap is never negative
    # The partly labelled crystals trained their own head only: the counts say so, per target.
    assert m.training["data"]["labelled"] == {EF: len(data["values"]) - 1, EG: len(data["values"]) - 2}


def test_fast_mode_gives_the_same_values_without_the_spread(data):
    full = {r["id"]: r for r in ranked(data, "--model", data["both"])}
    fast = ranked(data, "--model", data["both"], "--fast")
    assert list(fast[0]) == ["rank", "id", "formula", "n_atoms", EF, EG]
    assert [r["id"] for r in fast] == list(full)  # the same ranking
    assert all(r[EF] == full[r["id"]][EF] and r[EG] == full[r["id"]][EG] for r in fast)


def test_heads_equal_single_target_models_with_the_same_weights(data):
    """A two-head network whose trunk and heads are copied from two one-target networks sharing that trunk
    predicts exactly what each of them predicts."""
    table = np.array(cgcnn_feature_table())
    torch.manual_seed(3)
    ef, eg = (CrystalGraphNet(feature_table=table, steps=2, atom_fea_len=8, h_fea_len=6, n_h=2) for _ in range(2))
    trunk = {k: v for k, v in ef.state_dict().items() if not k.startswith("heads.")}
    eg.load_state_dict({**eg.state_dict(), **trunk})
    both = CrystalGraphNet(feature_table=table, steps=2, atom_fea_len=8, h_fea_len=6, n_h=2, n_targets=2)
    heads = {f"heads.{i}.{k}": v for i, net in enumerate((ef, eg)) for k, v in net.heads[0].state_dict().items()}
    both.load_state_dict({**trunk, **heads})
    with GraphFile(data["graphs"]) as g:
        batch = batch_of(g.read_shard(0))
    for net in (ef, eg, both):
        net.eval()
    with torch.no_grad():
        out = both(batch)
        assert out.shape == (batch.n_crystals, 2)
        torch.testing.assert_close(out[:, 0], ef(batch)[:, 0], rtol=0, atol=0)
        torch.testing.assert_close(out[:, 1], eg(batch)[:, 0], rtol=0, atol=0)


def test_scale_heads_do_not_change_what_the_model_predicts(data):
    """The scale heads learn from detached features and errors: the trunk and the mean heads train exactly
    as they would without them."""
    base = dict(target=(EF, EG), atom_fea_len=8, h_fea_len=8, epochs=3, batch_size=8, seed=1, ema_decay=0.9)
    plain = train(data["graphs"], data["labels"], data["root"] / "plain.pt", TrainConfig(**base),
                  split_file=data["split"], compile=False).model_file
    scaled = train(data["graphs"], data["labels"], data["root"] / "scaled.pt", TrainConfig(**base, scale_head=True),
                   split_file=data["split"], compile=False).model_file
    assert scaled.has_std and not plain.has_std
    for key, value in plain.state_dict.items():
        torch.testing.assert_close(scaled.state_dict[key], value, rtol=0, atol=0, msg=key)
    assert any(k.startswith("heads.3.") for k in scaled.state_dict)


def test_calibration_recovers_a_known_sigma_from_a_scale_head():
    """Errors drawn with a known sigma per crystal: the raw spread of a Laplace scale b is sqrt(2) b, and
    calibration finds the factor between it and the true sigma; coverage then matches a Gaussian's."""
    rng = np.random.default_rng(4)
    b = rng.uniform(0.01, 0.3, 50_000)
    sigma = 1.7 * np.sqrt(2) * b
    errors = rng.normal(0.0, sigma)
    scale = calibration_scale(errors, np.sqrt(2) * b)
    assert scale == pytest.approx(1.7, rel=0.03)
    within = np.mean(np.abs(errors) <= scale * np.sqrt(2) * b)
    assert within == pytest.approx(0.683, abs=0.015)


def test_p_stable_matches_monte_carlo():
    """P(E_above_hull <= 0) for Ef ~ Normal(predicted, sigma²), against sampling Ef and counting."""
    rng = np.random.default_rng(5)
    e = rng.normal(0.0, 0.1, 200)
    std = rng.uniform(0.01, 0.2, 200)
    samples = e[:, None] + std[:, None] * rng.standard_normal((200, 20_000))
    np.testing.assert_allclose(probability_stable(e, std), (samples <= 0).mean(axis=1), atol=0.015)
    edge = probability_stable(np.array([-0.1, 0.0, 0.1, np.nan]), np.zeros(4))
    assert edge[:3].tolist() == [1.0, 1.0, 0.0] and np.isnan(edge[3])


def test_hull_adds_p_stable_from_the_calibrated_sigma(data):
    rows = ranked(data, "--model", data["both"], "--hull", "--sort", "p_stable", "--desc")
    assert "p_stable" in rows[0] and "e_above_hull" in rows[0]
    placed = [r for r in rows if r["p_stable"] not in ("", "nan")]
    assert placed, "no row placed against the reference hull"
    p = [float(r["p_stable"]) for r in placed]
    assert p == sorted(p, reverse=True) and all(0.0 <= x <= 1.0 for x in p)
    assert "p_stable" not in ranked(data, "--model", data["both"], "--hull", "--fast")[0]


def test_finetune_one_head_of_a_multi_target_model(data, tmp_path):
    tuned = srscreen.finetune(data["graphs"], data["labels"], tmp_path / "eg.pt", ModelFile.load(data["both"]),
                              target=EG, epochs=1, batch_size=8, split_file=data["split"]).model_file
    base = ModelFile.load(data["both"])
    assert tuned.targets == [EG] and tuned.normalizers == [base.normalizers[1]] and tuned.has_std
    assert tuned.architecture["n_targets"] == 1 and "heads.2.fc_out.bias" not in tuned.state_dict
    result = cli("finetune", data["graphs"], "--labels", data["labels"], "--from", data["both"], "--target", "efermi",
                 "-o", tmp_path / "x.pt", "--epochs", "1", "-q")
    assert result.exit_code == 2 and "--new-head" in result.stderr


def test_finetuning_both_heads_on_labels_of_one_says_how_to_tune_that_one(data, tmp_path):
    """Fine-tuning an Ef+Eg model (every head, the default) on labels whose band gaps are all blank said only
    "only 0 crystals labelled with band_gap match": it says how to tune the Ef head alone."""
    blank = tmp_path / "ef-labels.csv"
    blank.write_text(f"id,{EF},{EG}\n" + "".join(f"{i},{v[0]}," + "\n" for i, v in sorted(data["values"].items())))
    result = cli("finetune", data["graphs"], "--labels", blank, "--from", data["both"], "-o", tmp_path / "x.pt",
                 "--epochs", "1", "-q")
    assert_usage_error(result, "ef-labels.csv: only 0 crystals labelled with band_gap match",
                       f"to train {EF} alone, give only that with --target")


def test_finetuning_keeps_the_target_weights_the_model_was_trained_with(data, tmp_path):
    """finetune had no --target-weight and trained every head at 1, whatever balance the model learnt with:
    it now inherits the recorded weights (per target, 1 for a new head), and --target-weight overrides."""
    weighted = tmp_path / "weighted.pt"
    result = cli("train", data["graphs"], "--labels", data["labels"], "--target", EF, "--target", EG, "--target-weight",
                 "1", "--target-weight", "4", "-o", weighted, "--epochs", "1", "--batch-size", "8", "--split",
                 data["split"], *TINY)
    assert result.exit_code == 0, (result.stderr, result.exception)
    cases = [((), [1.0, 4.0]), (("--target", EG), [4.0]), (("--target-weight", "2", "--target-weight", "3"), [2.0, 3.0])]
    for i, (extra, want) in enumerate(cases):
        out = tmp_path / f"tuned{i}.pt"
        result = cli("finetune", data["graphs"], "--labels", data["labels"], "--from", weighted, "-o", out, "--epochs",
                     "1", "--batch-size", "8", "--split", data["split"], "-q", *extra)
        assert result.exit_code == 0, (extra, result.stderr, result.exception)
        assert ModelFile.load(out).training["config"]["target_weights"] == want, extra
    assert ModelFile.load(data["both"]).training["config"]["target_weights"] == []  # trained at 1 each: nothing to keep


def test_evaluate_names_each_model_and_reports_sigma_figures(data, tmp_path):
    """A fine-tuned model beside its base: one row per model and target, not a refusal."""
    srscreen.finetune(data["graphs"], data["labels"], tmp_path / "tuned.pt", ModelFile.load(data["both"]),
                      epochs=1, batch_size=8, split_file=data["split"])
    result = cli("evaluate", data["graphs"], "--labels", data["labels"], "--model", data["both"], "--model",
                 tmp_path / "tuned.pt", "--json")
    assert result.exit_code == 0, (result.stderr, result.exception)
    figures = json.loads(result.stdout)
    assert len(figures) == 2 and all(set(per) == {EF, EG} for per in figures.values())
    assert all({"spearman", "within_1std", "within_2std"} <= set(m) for per in figures.values() for m in per.values())


def test_evaluate_on_the_test_split_the_model_file_records(data):
    """`--split test` scores only the crystals the file records as test (labelled for each target), the
    figures that count as held out; a model without a recorded split is refused in one line."""
    recorded = ModelFile.load(data["both"]).training["split"]["test"]
    result = cli("evaluate", data["graphs"], "--labels", data["labels"], "--model", data["both"], "--split", "test", "--json")
    assert result.exit_code == 0, (result.stderr, result.exception)
    (per,) = json.loads(result.stdout).values()
    for t in (EF, EG):
        labelled = {i for i, v in read_labels(data["labels"], t).items() if np.isfinite(v)}
        assert per[t]["count"] == len(set(recorded) & labelled) > 0
    everything = json.loads(cli("evaluate", data["graphs"], "--labels", data["labels"], "--model", data["both"],
                                "--json").stdout)
    assert all(per[t]["count"] < m[t]["count"] for m in everything.values() for t in (EF, EG))
    bad = cli("evaluate", data["graphs"], "--labels", data["labels"], "--model", data["both"], "--split", "holdout")
    assert bad.exit_code == 2 and "--split" in bad.stderr and "holdout" in bad.stderr and "Traceback" not in bad.stderr


def test_split_of_an_ensemble_of_members_on_different_splits_is_refused_for_that_reason(data):
    """Such an ensemble records no common split: the refusal must say so, not blame an import or an old file."""
    from dataclasses import replace

    from srscreen.errors import OptionError
    from srscreen.screening.calibrate import assemble
    from srscreen.screening.evaluate import split_ids

    one = ModelFile.load(data["both"])
    split = one.training["split"]
    other = replace(one, training={**one.training, "split": {**split, "test": split["test"][1:]}},
                    state_dict={k: v + 1e-3 if v.is_floating_point() else v for k, v in one.state_dict.items()})
    with pytest.raises(OptionError, match="different splits"):
        split_ids(assemble([one, other]), "test")


def test_models_says_where_sigma_comes_from(data):
    result = cli("models", data["both"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.stderr
    assert f"sigma     scale heads, calibrated {EF} x" in result.stdout and f", {EG} x" in result.stdout


def test_ensemble_of_multi_target_members(data, tmp_path):
    members = []
    for seed in (0, 1):
        config = TrainConfig(target=(EF, EG), atom_fea_len=8, h_fea_len=8, epochs=2, batch_size=8, seed=seed,
                             scale_head=True)
        train(data["graphs"], data["labels"], tmp_path / f"m{seed}.pt", config, split_file=data["split"])
        members.append(tmp_path / f"m{seed}.pt")
    result = cli("ensemble", *members, "--graphs", data["graphs"], "--labels", data["labels"], "-o", tmp_path / "ens.pt")
    assert result.exit_code == 0, (result.stderr, result.exception)
    ensemble = ModelFile.load(tmp_path / "ens.pt")
    assert ensemble.n_members == 2 and set(ensemble.calibration["scale"]) == {EF, EG}
    rows = ranked(data, "--model", tmp_path / "ens.pt")
    singles = [{r["id"]: float(r[EG]) for r in ranked(data, "--model", m)} for m in members]
    for r in rows:
        assert float(r[EG]) == pytest.approx(np.mean([s[r["id"]] for s in singles]), abs=2e-5)
        assert float(r[f"{EG}_std"]) > 0


def test_selecting_targets_keeps_their_predictions(data):
    """A model trained with an auxiliary head ships without it: the kept columns are unchanged."""
    both = ModelFile.load(data["both"])
    eg = both.select([EG])
    assert eg.targets == [EG] and eg.n_heads == 2 and eg.bounds == {EG: [0.0, None]}
    with GraphFile(data["graphs"]) as g:
        batch = batch_of(g.read_shard(0))
    with torch.no_grad():
        full = both.values(both.build_model()(batch))
        kept = eg.values(eg.build_model()(batch))
    assert set(kept) == {EG, f"{EG}_std"}
    for column in kept:
        torch.testing.assert_close(kept[column], full[column], rtol=0, atol=0)


def test_pretrained_names_of_earlier_releases_keep_working(tmp_path, monkeypatch):
    """A new release (v3) adds its models; the names of earlier ones still resolve, the newest file winning."""
    import srscreen.model.registry as registry

    for release, names in (("v2", ("a", "b")), ("v3", ("b", "c")), ("notes", ("x",))):
        (tmp_path / release).mkdir()
        for name in names:
            (tmp_path / release / f"{name}.pt").write_bytes(b"")
    monkeypatch.setattr(registry, "PRETRAINED_ROOT", tmp_path)
    files = registry.pretrained_files()
    assert sorted(files) == ["a", "b", "c"] == registry.pretrained_names()
    assert files["a"].parent.name == "v2" and files["b"].parent.name == "v3" and registry.pretrained_dir().name == "v3"


def test_fast_mode_without_models_runs_the_one_network_fast_model(data, tmp_path, monkeypatch):
    """`predict --fast` with the default models runs `sr-cgcnn-fast` (one forward for both columns) where a
    release ships it, and the first member of each default model where none does."""
    import shutil

    import srscreen.model.registry as registry

    (tmp_path / "v3").mkdir()
    shutil.copy(data["both"], tmp_path / "v3" / f"{registry.FAST_MODEL}.pt")
    monkeypatch.setattr(registry, "PRETRAINED_ROOT", tmp_path)
    assert registry.default_models(fast=True) == (registry.FAST_MODEL,)
    assert registry.default_models() == registry.DEFAULT_MODELS
    assert ranked(data, "--fast") == ranked(data, "--model", data["both"], "--fast")
    (tmp_path / "v3" / f"{registry.FAST_MODEL}.pt").unlink()
    assert registry.default_models(fast=True) == registry.DEFAULT_MODELS


def test_python_api_of_a_multi_target_model(data, prototypes):
    model = srscreen.load_model(data["both"])
    structures = list(prototypes.values())[:3]
    columns = model.predict_columns(structures)
    assert set(columns) == {EF, EG, f"{EF}_std", f"{EG}_std"} and all(len(v) == 3 for v in columns.values())
    np.testing.assert_allclose(model.predict_structures(structures, target=EG), columns[EG])
    mean, std = model.predict_structures(structures, target=EF, with_std=True)
    np.testing.assert_allclose(std, columns[f"{EF}_std"])
    with pytest.raises(srscreen.errors.OptionError, match="give `target`"):
        model.predict_structures(structures)


def test_legacy_band_gap_models_never_predict_a_negative_gap(prototypes):
    """The v2 band-gap file predates bounds: it gets the band gap's on loading (it gave metals -0.005 eV)."""
    from srscreen.model.registry import pretrained_names

    if "sr-cgcnn-eg" not in pretrained_names():
        pytest.skip("the pretrained sr-cgcnn-eg is not installed")
    model = srscreen.load_model("sr-cgcnn-eg")
    assert model.file.bounds == {EG: [0.0, None]}
    assert (model.predict_structures(list(prototypes.values())) >= 0).all()


def test_a_band_gap_head_saved_without_bounds_gets_them_on_loading(data, tmp_path):
    from dataclasses import replace

    replace(ModelFile.load(data["both"]), bounds={}).save(tmp_path / "unbounded.pt")
    assert ModelFile.load(tmp_path / "unbounded.pt").bounds == {EG: [0.0, None]}


def test_one_unit_for_several_targets_is_refused_before_training(data, tmp_path):
    """The refusal came after every epoch had run (hours, on the real data set)."""
    config = TrainConfig(target=(EF, EG), atom_fea_len=8, h_fea_len=8, epochs=1, batch_size=8)
    with pytest.raises(srscreen.errors.OptionError, match="unit"):
        train(data["graphs"], data["labels"], tmp_path / "m.pt", config, split_file=data["split"], unit="eV",
              compile=False)
    assert not (tmp_path / "m.pt.ckpt").exists() and not (tmp_path / "m.pt.log.jsonl").exists()


def test_a_diverged_run_stops_at_once_and_says_so(data, tmp_path):
    """A rate far too high made the scale heads' loss infinite, then NaN, while the means' validation MAE
    stayed finite: the run went on to its last epoch and failed in calibration, blaming "members that
    never disagree". It stops at the first epoch whose loss is not finite, naming the rate."""
    config = TrainConfig(target=(EF, EG), atom_fea_len=8, h_fea_len=8, epochs=6, batch_size=8, lr=1e4,
                         scale_head=True)
    with pytest.raises(srscreen.errors.OptionError, match=r"diverged at epoch \d.*`lr`"):
        train(data["graphs"], data["labels"], tmp_path / "m.pt", config, split_file=data["split"], compile=False)
    assert not (tmp_path / "m.pt").exists()


def test_finetuning_an_ensemble_is_measured_against_the_ensemble(data, tmp_path):
    """Fine-tuning starts from the first member, but the figure printed as "ENSEMBLE on the same crystals"
    was that member's: it is the ensemble's, the model the user would otherwise run."""
    config = TrainConfig(target=(EF, EG), atom_fea_len=8, h_fea_len=8, epochs=3, batch_size=8, seed=1, scale_head=True)
    train(data["graphs"], data["labels"], tmp_path / "other.pt", config, split_file=data["split"], compile=False)
    result = cli("ensemble", data["both"], tmp_path / "other.pt", "--graphs", data["graphs"], "--labels", data["labels"],
                 "-o", tmp_path / "ens.pt")
    assert result.exit_code == 0, (result.stderr, result.exception)
    ensemble = ModelFile.load(tmp_path / "ens.pt")
    tuned = srscreen.finetune(data["graphs"], data["labels"], tmp_path / "tuned.pt", ensemble, epochs=1, batch_size=8,
                              split_file=data["split"], compile=False).model_file
    for t in (EF, EG):
        assert tuned.training["baseline_test"][t]["mae"] == pytest.approx(ensemble.test_metrics()[t]["mae"], rel=1e-5)


def test_sorting_or_filtering_on_an_absent_sigma_or_p_stable_says_what_gives_it(data):
    """A careless screen asks for p_stable without --hull, or for a σ column with --fast: the refusal names
    the flag and what adds the column (it said "filter 'p_stable': no such column" and no more)."""
    g, both = data["graphs"], data["both"]
    assert_usage_error(cli("predict", g, "--model", both, "--where", "p_stable>0.5"), "--where", "'p_stable': no such column",
                       "--hull")
    assert_usage_error(cli("predict", g, "--model", both, "--fast", "--sort", f"{EF}_std"), f"--sort {EF}_std: no such column",
                       "--fast")
    assert_usage_error(cli("predict", g, "--model", both, "--fast", "--hull", "--sort", "p_stable"), "--fast")


def test_sigma_figures_of_constant_errors_are_nan_without_a_warning():
    """Metals whose gap is predicted and labelled 0 have errors all 0: Spearman is undefined, and scipy's
    ConstantInputWarning reached the user's terminal in the middle of a training summary."""
    import warnings

    from srscreen.model.ensemble import uncertainty_metrics

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        figures = uncertainty_metrics(np.zeros(6), np.linspace(0.1, 0.6, 6))
        assert np.isnan(figures["spearman"]) and figures["within_1std"] == 1.0
        assert np.isnan(uncertainty_metrics(np.arange(6.0), np.full(6, 0.2))["spearman"])


def test_a_new_head_gets_the_unit_given(data, tmp_path):
    """finetune had no --unit: a --new-head target had no unit, in the summary and in `models`. A target
    the model predicts keeps its own unit."""
    lines = data["labels"].read_text().splitlines()
    labels = tmp_path / "labels.csv"
    labels.write_text("\n".join([lines[0] + ",efermi", *(f"{line},{k % 7 - 3.0}" for k, line in enumerate(lines[1:]))]) + "\n")
    common = ("finetune", data["graphs"], "--labels", labels, "--from", data["both"], "--epochs", "1", "--batch-size", "8",
              "--split", data["split"], "-q")
    result = cli(*common, "--target", "efermi", "--target", EF, "--new-head", "-o", tmp_path / "x.pt", "--unit", "eV")
    assert_usage_error(result, "--unit", "one target")
    result = cli(*common, "--target", "efermi", "--new-head", "-o", tmp_path / "x.pt", "--unit", "eV")
    assert result.exit_code == 0, (result.stderr, result.exception)
    assert ModelFile.load(tmp_path / "x.pt").units == ["eV"]
    result = cli(*common, "--target", EF, "-o", tmp_path / "y.pt", "--unit", "meV/atom")
    assert_usage_error(result, "--unit", "eV/atom")
    assert not (tmp_path / "y.pt.ckpt").exists()


def _labels_blank_in(data, tmp_path, part: str, target: str):
    ids = [line.split(",")[0] for line in data["split"].read_text().splitlines()[1:] if line.endswith("," + part)]
    return write_labels(tmp_path / f"no-{part}.csv", data["values"], blank=dict.fromkeys(ids, target))


def test_a_target_no_validation_crystal_is_labelled_for_is_refused_before_training(data, tmp_path):
    """Its validation MAE was NaN, so no epoch scored better than the start: the file written held the
    untrained weights ("best epoch 0"), or with scale heads calibration failed after the last epoch."""
    labels = _labels_blank_in(data, tmp_path, "val", EG)
    for scale_head in (False, True):
        config = TrainConfig(target=(EF, EG), atom_fea_len=8, h_fea_len=8, epochs=2, batch_size=8, scale_head=scale_head)
        with pytest.raises(srscreen.errors.InputError, match=f"no validation crystal.*{EG}"):
            train(data["graphs"], labels, tmp_path / "m.pt", config, split_file=data["split"], compile=False)
        assert not (tmp_path / "m.pt.ckpt").exists()


def test_a_target_no_test_crystal_is_labelled_for_has_no_test_figure(data, tmp_path):
    """It was recorded as a test MAE of nan on 0 crystals, with numpy's warnings on the terminal."""
    labels = _labels_blank_in(data, tmp_path, "test", EG)
    config = TrainConfig(target=(EF, EG), atom_fea_len=8, h_fea_len=8, epochs=1, batch_size=8, scale_head=True)
    model = train(data["graphs"], labels, tmp_path / "m.pt", config, split_file=data["split"], compile=False).model_file
    assert set(model.test_metrics()) == {EF} and model.test_metrics()[EF]["count"] > 0


def test_models_says_when_a_model_has_no_sigma_and_shows_no_empty_unit(data, tmp_path):
    """A model without σ had no sigma row (nothing said predict would give no *_std); a target without a
    unit showed as "efermi ()"."""
    from dataclasses import replace

    plain = ModelFile.load(data["both"]).without_scale_heads()
    replace(plain, units=["eV/atom", ""]).save(tmp_path / "plain.pt")
    result = cli("models", tmp_path / "plain.pt", env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.stderr
    assert "sigma     none" in result.stdout and "()" not in result.stdout and f"{EG}, test MAE" in result.stdout


@pytest.mark.parametrize("name", ["p_stable", "rank", "n_atoms", "e_above_hull"])
def test_a_target_named_like_a_ranking_column_is_refused_before_training(data, tmp_path, name):
    """Such a model trained for hours, then `predict` refused it (its column would be overwritten)."""
    labels = tmp_path / "labels.csv"
    rows = list(csv.reader(data["labels"].open()))
    labels.write_text("\n".join(",".join([*row[:2], row[1] if k else name]) for k, row in enumerate(rows)) + "\n")
    result = cli("train", data["graphs"], "--labels", labels, "--target", name, "-o", tmp_path / "m.pt",
                 "--epochs", "1", "--batch-size", "8", "--split", data["split"], *TINY)
    assert_usage_error(result, f"'{name}' is a column the ranking writes itself")
    assert not list(tmp_path.glob("m.pt*"))
    tuned = cli("finetune", data["graphs"], "--labels", labels, "--from", data["both"], "--target", name, "--new-head",
                "-o", tmp_path / "t.pt", "--epochs", "1", "--split", data["split"])
    assert_usage_error(tuned, f"'{name}' is a column the ranking writes itself")


@pytest.mark.parametrize("weight", ["1e308", "1e-30", "0", "nan"])
def test_a_target_weight_that_overflows_or_vanishes_is_refused(data, tmp_path, weight):
    """1e308 overflowed float32 losses and the run diverged; 1e-30 vanished under Adam's eps (a head that
    silently never learnt)."""
    result = cli("train", data["graphs"], "--labels", data["labels"], "--target", EF, "--target", EG,
                 "--target-weight", "1", "--target-weight", weight, "-o", tmp_path / "m.pt", "--epochs", "1",
                 "--batch-size", "8", "--split", data["split"], *TINY)
    assert_usage_error(result, "--target-weight")
    assert "from 1e-06 to 1e+06" in result.stderr
