"""Training and fine-tuning from the command line: the user's story.

Featurize a labelled database, `srscreen train` a model on it and get the same model for the same seed;
find the split, the normaliser and a count of unmatched labels in the model file; give a split file;
kill a long training and `--resume` it to exactly the weights an uninterrupted run gives; keep the
epoch with the best validation MAE; read a JSON line per epoch. Then `srscreen finetune` that model on
new labels, with or without frozen convolutions, and predict with the result.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.screening_data import (
    MAX_NBR,
    RADIUS,
    SRSCREEN,
    TINY,
    assert_usage_error,
    cli,
    crystals,
    featurize_db,
    one_thread,  # noqa: F401 - fixture
    state_dicts_close,
    subprocess_env,
    target_values,
    without_timing,
    write_json_db,
    write_labels,
)

import srscreen
import srscreen.trainer.trainer
from srscreen.model.model_file import ModelFile
from srscreen.data.training_set import GraphSet
from srscreen.errors import OptionError
from srscreen.trainer.trainer import TrainConfig, metrics, predict_positions, train

pytestmark = pytest.mark.usefixtures("one_thread")

DROPPED = ("c00-001", "c00-007", "c00-020")  # featurized, no row in the labels file
BLANK = {"c00-002": "band_gap", "c00-030": "band_gap"}  # a row, but no band gap
EXTRA = ("not-featurized-1", "not-featurized-2", "not-featurized-3", "not-featurized-4")  # labels only


@pytest.fixture(scope="module")
def data(tmp_path_factory, prototypes):
    root = tmp_path_factory.mktemp("train")
    items = crystals(prototypes)
    values = target_values(items)
    folder = write_json_db(root / "db", items)
    graphs = featurize_db(folder, root / "graphs.h5")
    labels = write_labels(root / "labels.csv", values, drop=DROPPED, blank=BLANK, extra=EXTRA)
    return {"root": root, "items": items, "values": values, "graphs": graphs, "labels": labels, "folder": folder}


def run_train(data, out: Path, *args, target: str = "band_gap", labels: Path | None = None, graphs: Path | None = None):
    result = cli("train", graphs or data["graphs"], "--labels", labels or data["labels"], "--target", target,
                 "-o", out, *TINY, *args)
    assert result.exit_code == 0, (result.stderr, result.exception)
    return ModelFile.load(out)


def log_lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in out.with_name(out.name + ".log.jsonl").read_text().splitlines()]


def labelled_band_gap(data) -> dict[str, float]:
    """id -> band gap for the crystals that are featurized and have a finite band gap."""
    ids = {id_ for id_, _ in data["items"]}
    return {i: v[1] for i, v in data["values"].items() if i in ids and i not in DROPPED and i not in BLANK}


def test_same_seed_gives_the_same_model_and_history(data, tmp_path):
    a = run_train(data, tmp_path / "a.pt", "--epochs", "3", "--batch-size", "8", "--seed", "7")
    b = run_train(data, tmp_path / "b.pt", "--epochs", "3", "--batch-size", "8", "--seed", "7")
    state_dicts_close(a.state_dict, b.state_dict, atol=0)
    assert a.normalizer == b.normalizer
    assert a.training["split"] == b.training["split"]
    assert without_timing(log_lines(tmp_path / "a.pt")) == without_timing(log_lines(tmp_path / "b.pt"))
    # Another seed is another split and other weights: the seed is what fixed them.
    c = run_train(data, tmp_path / "c.pt", "--epochs", "3", "--batch-size", "8", "--seed", "8")
    assert c.training["split"] != a.training["split"]
    assert not torch.equal(c.state_dict["embedding.weight"], a.state_dict["embedding.weight"])


def test_split_is_saved_disjoint_and_sized_by_the_fractions(data, tmp_path):
    m = run_train(data, tmp_path / "m.pt", "--epochs", "1", "--val-fraction", "0.15", "--test-fraction", "0.2")
    split = {k: m.training["split"][k] for k in ("train", "val", "test")}
    labelled = labelled_band_gap(data)
    n = len(labelled)
    assert len(split["test"]) == round(0.2 * n) and len(split["val"]) == round(0.15 * n)
    assert len(split["train"]) == n - round(0.2 * n) - round(0.15 * n)
    sets = {k: set(v) for k, v in split.items()}
    assert sum(len(s) for s in sets.values()) == n  # no id twice
    assert not (sets["train"] & sets["val"]) and not (sets["train"] & sets["test"]) and not (sets["val"] & sets["test"])
    assert sets["train"] | sets["val"] | sets["test"] == set(labelled)
    assert m.test_metrics()["band_gap"]["count"] == len(split["test"])


def test_normaliser_is_fitted_on_the_training_targets_only(data, tmp_path):
    m = run_train(data, tmp_path / "m.pt", "--epochs", "1", "--val-fraction", "0.2", "--test-fraction", "0.2")
    labelled = labelled_band_gap(data)
    train_y = np.array([labelled[i] for i in m.training["split"]["train"]])
    all_y = np.array(list(labelled.values()))
    assert m.normalizer["mean"] == pytest.approx(train_y.mean(), abs=1e-12)
    assert m.normalizer["std"] == pytest.approx(train_y.std(), abs=1e-12)
    assert abs(all_y.mean() - train_y.mean()) > 1e-6  # the two differ: the test tells them apart


def test_labels_missing_on_either_side_are_counted(data, tmp_path):
    m = run_train(data, tmp_path / "m.pt", "--epochs", "1")
    summary = {k: v["band_gap"] for k, v in m.training["data"].items() if isinstance(v, dict)}
    n_graphs = len(data["items"])
    assert summary["missing_in_labels"] == len(DROPPED)
    assert summary["missing_in_graphs"] == len(EXTRA)
    assert summary["not_finite"] == len(BLANK)
    assert summary["labelled"] == n_graphs - len(DROPPED) - len(BLANK) == len(labelled_band_gap(data))
    # The other target has no blanks: the counts are per target.
    ef = run_train(data, tmp_path / "ef.pt", "--epochs", "1", target="formation_energy_per_atom")
    assert ef.training["data"]["not_finite"] == {"formation_energy_per_atom": 0}
    assert ef.training["data"]["labelled"] == {"formation_energy_per_atom": n_graphs - len(DROPPED)}
    assert ef.unit == "eV/atom" and m.unit == "eV"


@pytest.mark.parametrize("header", [True, False], ids=["header", "no-header"])
def test_split_file_is_honoured(data, tmp_path, header):
    labelled = sorted(labelled_band_gap(data))
    want = {"train": labelled[::3] + labelled[1::3], "val": labelled[2::6], "test": labelled[5::6]}
    rows = ["id,split"] if header else []
    rows += [f"{i},{part}" for part, ids in want.items() for i in ids]
    rows += [f"{DROPPED[0]},train", "not-featurized-1,test"]  # unlabelled / unknown ids are no crystals to split
    split_file = tmp_path / "split.csv"
    split_file.write_text("\n".join(rows) + "\n")
    m = run_train(data, tmp_path / "m.pt", "--epochs", "1", "--split", split_file)
    assert {k: sorted(v) for k, v in m.training["split"].items()} == {k: sorted(v) for k, v in want.items()}


def test_split_file_with_an_unknown_part_is_refused(data, tmp_path):
    split_file = tmp_path / "split.csv"
    labelled = sorted(labelled_band_gap(data))
    split_file.write_text("id,split\n" + "".join(f"{i},{'train' if k % 4 else 'validation'}\n" for k, i in enumerate(labelled)))
    result = cli("train", data["graphs"], "--labels", data["labels"], "--target", "band_gap", "-o", tmp_path / "m.pt",
                 *TINY, "--epochs", "1", "--split", split_file)
    assert_usage_error(result, "validation")


def test_best_epoch_by_validation_mae_is_kept_and_each_epoch_logged(data, tmp_path):
    out = tmp_path / "m.pt"
    # A high rate makes the validation MAE jump about, and --patience stops the run 3 epochs after its best:
    # the best epoch is then never the last one, whatever the numbers.
    m = run_train(data, out, "--epochs", "30", "--batch-size", "4", "--lr", "0.1", "--seed", "4", "--patience", "3")
    log = log_lines(out)
    run = m.training["epochs_run"]
    assert run < 30, "patience did not stop the run: pick a noisier setup, this test needs a best epoch before the last"
    assert [r["epoch"] for r in log] == list(range(1, run + 1))
    for r in log:
        assert {"epoch", "train_loss", "val_mae", "val_rmse", "lr", "epoch_s", "elapsed_s", "best_epoch"} <= r.keys()
    val = [r["val_mae"] for r in log]
    best = int(np.argmin(val))
    assert m.training["best_epoch"] == best + 1 == log[-1]["best_epoch"] == run - 3
    assert m.training["val_mae"] == pytest.approx(val[best], abs=1e-9)
    assert min(val[best + 1 :]) > val[best] + 1e-3, "the later epochs must be measurably worse"
    # The file holds that epoch's weights: its validation MAE, recomputed, is the logged best, not the last.
    graphs = GraphSet.load(data["graphs"])
    where = {id_: p for p, id_ in enumerate(graphs.ids)}
    val_ids = m.training["split"]["val"]
    pred = predict_positions(m.build_model(), graphs, np.array([where[i] for i in val_ids]))[:, 0]
    pred = pred * m.normalizer["std"] + m.normalizer["mean"]
    true = np.array([labelled_band_gap(data)[i] for i in val_ids])
    assert metrics(pred, true).mae == pytest.approx(val[best], abs=1e-5)
    final = torch.load(out.with_name("m.pt.ckpt"), weights_only=True)["model"]
    assert not torch.equal(final["heads.0.fc_out.weight"], m.state_dict["heads.0.fc_out.weight"]), "the last epoch's weights were kept"


def test_stacked_cgcnn_trains_and_predicts(data, tmp_path):
    m = run_train(data, tmp_path / "cgcnn.pt", "--epochs", "2", "--stacked", "--steps", "2")
    assert m.architecture["shared"] is False and m.architecture["steps"] == 2
    assert len(m.build_model().fc_full) == 2
    shared = run_train(data, tmp_path / "sr.pt", "--epochs", "1", "--steps", "2")
    assert len(shared.build_model().fc_full) == 1
    result = cli("predict", data["graphs"], "--model", tmp_path / "cgcnn.pt", "--threads", "1", "-q")
    assert result.exit_code == 0, result.stderr
    assert len(result.stdout.splitlines()) == 1 + len(data["items"])


@pytest.mark.parametrize(
    "args, words",
    [
        (["--loss", "l3"], ["--loss", "l3"]),
        (["--schedule", "linear"], ["--schedule", "linear"]),
        (["--batch-size", "1"], ["--batch-size"]),
        (["--epochs", "0"], ["--epochs"]),
        (["--val-fraction", "0.6", "--test-fraction", "0.5"], ["fraction"]),
    ],
)
def test_unusable_training_options_are_refused(data, tmp_path, args, words):
    result = cli("train", data["graphs"], "--labels", data["labels"], "--target", "band_gap", "-o", tmp_path / "m.pt",
                 *TINY, "--epochs", "1", *args)
    assert_usage_error(result, *words)
    assert not (tmp_path / "m.pt").exists()


def test_missing_target_column_is_refused(data, tmp_path):
    result = cli("train", data["graphs"], "--labels", data["labels"], "--target", "bulk_modulus", "-o", tmp_path / "m.pt", *TINY)
    assert_usage_error(result, "bulk_modulus", "band_gap")


# ---------------------------------------------------------------- a killed training resumes


@pytest.fixture(scope="module")
def big(tmp_path_factory, prototypes):
    """~400 crystals: an epoch of batch size 2 lasts long enough (~0.3 s) to be killed in the middle."""
    root = tmp_path_factory.mktemp("big")
    items = crystals(prototypes, copies=10)
    graphs = featurize_db(write_json_db(root / "db", items), root / "graphs.h5")
    labels = write_labels(root / "labels.csv", target_values(items))
    return graphs, labels


@pytest.mark.slow
def test_killed_training_resumes_to_the_uninterrupted_weights(big, tmp_path):
    graphs, labels = big
    args = [str(graphs), "--labels", str(labels), "--target", "band_gap", *TINY, "--epochs", "4", "--batch-size", "2",
            "--seed", "5"]
    out = tmp_path / "killed.pt"
    log = tmp_path / "killed.pt.log.jsonl"
    proc = subprocess.Popen([*SRSCREEN, "train", *args, "-o", str(out)], env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300  # generous: CI machines can be slow and shared
        while not (log.exists() and log.read_text().count("\n") >= 1):
            assert proc.poll() is None, f"training ended before it could be killed: {proc.communicate()}"
            assert time.monotonic() < deadline, "no epoch logged in 300 s"
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:  # an assertion above failed: stop the run so that its message is reported
            proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists(), "the run was killed after writing the model: nothing left to resume"
    assert 1 <= len(log.read_text().splitlines()) < 4

    resumed = subprocess.run([*SRSCREEN, "train", *args, "-o", str(out), "--resume"], env=subprocess_env(),
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "Traceback" not in resumed.stderr

    reference = tmp_path / "reference.pt"
    config = TrainConfig(target="band_gap", atom_fea_len=8, h_fea_len=8, epochs=4, batch_size=2, seed=5)
    expected = train(graphs, labels, reference, config)
    state_dicts_close(ModelFile.load(out).state_dict, expected.model_file.state_dict, atol=1e-6)
    final = torch.load(out.with_name(out.name + ".ckpt"), weights_only=True)["model"]
    final_ref = torch.load(reference.with_name(reference.name + ".ckpt"), weights_only=True)["model"]
    state_dicts_close(final, final_ref, atol=1e-6)
    # One log line per epoch, as if never interrupted.
    history = [json.loads(x) for x in log.read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    got, want = without_timing(history), without_timing(expected.history)
    for g, w in zip(got, want):
        assert g.keys() == w.keys()
        for k in g:
            assert g[k] == pytest.approx(w[k], abs=1e-6), (g["epoch"], k)


def test_resume_with_other_settings_is_refused(data, tmp_path):
    out = tmp_path / "m.pt"
    run_train(data, out, "--epochs", "1", "--seed", "1")
    result = cli("train", data["graphs"], "--labels", data["labels"], "--target", "band_gap", "-o", out, *TINY,
                 "--epochs", "2", "--seed", "2", "--resume")
    assert_usage_error(result, "made with other --seed; rerun without --resume")  # the flags, as the user typed them
    # More epochs with the same settings is a longer run, not another one.
    m = run_train(data, out, "--epochs", "2", "--seed", "1", "--resume")
    assert m.training["epochs_run"] == 2
    assert [r["epoch"] for r in log_lines(out)] == [1, 2]


# ---------------------------------------------------------------- fine-tuning


@pytest.fixture(scope="module")
def base_model(data):
    out = data["root"] / "base.pt"
    run_train(data, out, "--epochs", "2", "--batch-size", "8",
              target="formation_energy_per_atom")
    return out


def finetune(data, base: Path, out: Path, *args, graphs: Path | None = None, target: str = "band_gap"):
    """The base model predicts formation energy: fine-tuning it to the band gap is a new head (--new-head)."""
    return cli("finetune", graphs or data["graphs"], "--labels", data["labels"], "--target", target, "--new-head",
               "--from", base, "-o", out, "--epochs", "2", "--batch-size", "8", "--lr", "0.01", "--threads", "1", "-q",
               *args)


def test_finetune_to_a_target_the_model_lacks_needs_a_new_head(data, base_model, tmp_path):
    result = cli("finetune", data["graphs"], "--labels", data["labels"], "--target", "band_gap", "--from", base_model,
                 "-o", tmp_path / "tuned.pt", "--epochs", "1", "-q")
    assert_usage_error(result, "predicts formation_energy_per_atom, not band_gap", "--new-head")
    assert not (tmp_path / "tuned.pt").exists()


CONV = ("embedding.", "fc_full.", "bn1.", "bn2.")


@pytest.mark.parametrize("freeze", [True, False], ids=["freeze-conv", "all-weights"])
def test_finetune_from_a_model_file(data, base_model, tmp_path, freeze):
    out = tmp_path / "tuned.pt"
    result = finetune(data, base_model, out, *(["--freeze-conv"] if freeze else []))
    assert result.exit_code == 0, (result.stderr, result.exception)
    base, tuned = ModelFile.load(base_model), ModelFile.load(out)
    assert tuned.target == "band_gap" and tuned.architecture == base.architecture
    assert tuned.training["finetuned_from"] == "base"
    # Another property than the base model's: its own unit, and a normaliser of its own training targets.
    assert tuned.unit == "eV"
    train_y = np.array([labelled_band_gap(data)[i] for i in tuned.training["split"]["train"]])
    assert tuned.normalizer["mean"] == pytest.approx(train_y.mean(), abs=1e-12)
    assert tuned.normalizer["std"] == pytest.approx(train_y.std(), abs=1e-12)
    conv_same = [torch.equal(base.state_dict[k], tuned.state_dict[k]) for k in base.state_dict if k.startswith(CONV)]
    head_same = [torch.equal(base.state_dict[k], tuned.state_dict[k]) for k in base.state_dict if k.startswith("heads.")]
    if freeze:
        assert all(conv_same), "frozen embedding / convolution weights (or BatchNorm statistics) changed"
    else:
        assert not all(conv_same)
    assert not any(head_same)
    # The result is a model file `predict` takes.
    result = cli("predict", data["graphs"], "--model", out, "--threads", "1", "-q")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "rank,id,formula,n_atoms,band_gap"
    assert len(lines) == 1 + len(data["items"])


def test_finetune_merges_equivalent_atoms_for_the_base_models_depth(data, tmp_path, monkeypatch):
    """Classes of equivalent atoms depend on the number of steps: a 2-step base model fine-tuned with
    the command's defaults (3 steps) must train on 2-step classes, or it would merge atoms it tells apart."""
    base = tmp_path / "two.pt"
    run_train(data, base, "--epochs", "1", "--batch-size", "8", "--steps", "2")
    loaded = []
    real_load = srscreen.trainer.trainer.GraphSet.load
    monkeypatch.setattr(srscreen.trainer.trainer.GraphSet, "load", lambda path, steps=None: loaded.append(steps) or real_load(path, steps))
    result = finetune(data, base, tmp_path / "tuned.pt")
    assert result.exit_code == 0, (result.stderr, result.exception)
    assert loaded == [2] and ModelFile.load(tmp_path / "tuned.pt").architecture["steps"] == 2


def test_finetune_on_the_same_target_keeps_the_models_scale(data, base_model, tmp_path):
    out = tmp_path / "tuned.pt"
    result = finetune(data, base_model, out, "--freeze-conv", target="formation_energy_per_atom")
    assert result.exit_code == 0, (result.stderr, result.exception)
    base, tuned = ModelFile.load(base_model), ModelFile.load(out)
    assert tuned.normalizer == base.normalizer and tuned.unit == base.unit == "eV/atom"


def test_finetune_refuses_graphs_of_other_settings(data, base_model, tmp_path):
    other = featurize_db(data["folder"], tmp_path / "r5.h5", radius=5.0)
    result = finetune(data, base_model, tmp_path / "tuned.pt", graphs=other)
    assert_usage_error(result, "5.0", str(RADIUS), str(MAX_NBR))
    assert not (tmp_path / "tuned.pt").exists()


def test_finetune_from_an_unknown_model_is_refused(data, tmp_path):
    result = finetune(data, Path("no-such-model"), tmp_path / "tuned.pt")
    assert_usage_error(result, "no-such-model")


def test_finetune_from_python_is_the_commands_finetune(data, base_model, tmp_path):
    """`srscreen.finetune` with the command's settings makes the command's model, to the bit."""
    assert finetune(data, base_model, tmp_path / "cli.pt", "--freeze-conv").exit_code == 0
    result = srscreen.finetune(data["graphs"], data["labels"], tmp_path / "py.pt", base_model, target="band_gap",
                               epochs=2, batch_size=8, lr=0.01, freeze_conv=True, new_heads=True)
    by_cli = ModelFile.load(tmp_path / "cli.pt")
    state_dicts_close(result.model_file.state_dict, by_cli.state_dict, atol=0)
    assert without_timing(result.history) == without_timing(log_lines(tmp_path / "cli.pt"))
    drop = ("command", "wall_time_s")
    assert {k: v for k, v in result.model_file.training.items() if k not in drop} == \
        {k: v for k, v in by_cli.training.items() if k not in drop}
    assert result.model_file.normalizer == by_cli.normalizer and result.model_file.unit == by_cli.unit


def test_finetune_from_python_defaults_to_the_models_target_and_refuses_other_architectures(data, base_model, tmp_path):
    tuned = srscreen.finetune(data["graphs"], data["labels"], tmp_path / "same.pt", ModelFile.load(base_model),
                              epochs=1, batch_size=8)
    assert tuned.model_file.target == "formation_energy_per_atom"
    assert tuned.model_file.training["config"]["loss"] == "l1"  # fine-tuning's defaults, not training's
    with pytest.raises(OptionError, match="`steps`.*architecture"):
        srscreen.finetune(data["graphs"], data["labels"], tmp_path / "deeper.pt", base_model, steps=4)
    with pytest.raises(OptionError, match="`epoch`"):
        srscreen.finetune(data["graphs"], data["labels"], tmp_path / "typo.pt", base_model, epoch=3)
    assert not (tmp_path / "deeper.pt").exists() and not (tmp_path / "typo.pt").exists()


def test_resume_after_a_kill_between_log_and_checkpoint_keeps_one_line_per_epoch(data, tmp_path):
    """Each epoch's line is logged before its checkpoint is saved: a kill between the two must not
    leave the resumed log with that epoch twice."""
    out = tmp_path / "m.pt"
    run_train(data, out, "--epochs", "2", "--seed", "1")
    log = out.with_name("m.pt.log.jsonl")
    lines = log.read_text().splitlines()
    # What a kill after epoch 3's log line, before its checkpoint, leaves: 3 lines, a checkpoint of epoch 2.
    log.write_text("\n".join([*lines, lines[-1].replace('"epoch": 2', '"epoch": 3')]) + "\n")
    run_train(data, out, "--epochs", "3", "--seed", "1", "--resume")
    assert [r["epoch"] for r in log_lines(out)] == [1, 2, 3]


def test_labels_written_by_a_spreadsheet(data, tmp_path):
    """Excel's "CSV UTF-8" starts with a byte-order mark; the columns are found all the same."""
    values = data["values"]
    ids = {id_ for id_, _ in data["items"]}
    text = "band_gap,material_id\n" + "".join(f"{v[1]!r},{i}\n" for i, v in values.items() if i in ids)
    labels = tmp_path / "excel.csv"
    labels.write_bytes(b"\xef\xbb\xbf" + text.encode())
    m = run_train(data, tmp_path / "m.pt", "--epochs", "1", labels=labels)
    assert m.training["data"]["labelled"] == {"band_gap": len(ids)}


def test_ema_averages_weights_and_batchnorm_statistics():
    from srscreen.graph.elements import cgcnn_feature_table
    from srscreen.model.network import CrystalGraphNet
    from srscreen.trainer.ema import ema_update

    table = np.array(cgcnn_feature_table())
    model, ema = CrystalGraphNet(feature_table=table, steps=2), CrystalGraphNet(feature_table=table, steps=2)
    with torch.no_grad():
        for net, value in ((model, 1.0), (ema, 0.0)):
            net.heads[0].fc_out.bias.fill_(value)
            net.bn1[0].running_mean.fill_(value)
        model.bn1[0].num_batches_tracked.fill_(7)
    ema_update(ema, model, decay=0.9, step=10**6)  # the ramp has reached 0.9
    assert torch.allclose(ema.heads[0].fc_out.bias, torch.tensor([0.1]))
    assert torch.allclose(ema.bn1[0].running_mean, torch.full((128,), 0.1))  # averaged, not copied
    assert int(ema.bn1[0].num_batches_tracked) == 7
    assert torch.equal(ema.feature_table, model.feature_table)
    ema_update(ema, model, decay=0.9, step=0)  # early: decay (1 + 0) / 10 = 0.1, mostly the new weights
    assert torch.allclose(ema.heads[0].fc_out.bias, torch.tensor([0.1 * 0.1 + 0.9]))


def test_finetune_summary_gives_the_starting_models_figure_and_says_when_it_stopped_early(data, base_model, tmp_path):
    """The closing line compares with the model fine-tuning started from, on the same test crystals."""
    result = cli("finetune", data["graphs"], "--labels", data["labels"], "--target", "formation_energy_per_atom",
                 "--from", base_model, "-o", tmp_path / "tuned.pt", "--epochs", "12", "--patience", "1",
                 "--batch-size", "8", "--lr", "0.05", "--threads", "1", "-q")
    assert result.exit_code == 0, (result.stderr, result.exception)
    tuned = ModelFile.load(tmp_path / "tuned.pt")
    baseline = tuned.training["baseline_test"]["formation_energy_per_atom"]
    ranking = srscreen.predict(data["graphs"], [ModelFile.load(base_model)])
    row = {id_: i for i, id_ in enumerate(ranking.ids)}
    test_ids = tuned.training["split"]["test"]
    want = np.array([data["values"][i][0] for i in test_ids])
    got = ranking.values["formation_energy_per_atom"][[row[i] for i in test_ids]]
    assert baseline["mae"] == pytest.approx(float(np.abs(got - want).mean()), rel=1e-5)
    assert f"on the same crystals: {baseline['mae']:.4f}" in result.stderr
    stopped = tuned.training["epochs_run"] < 12
    assert ("stopped early" in result.stderr) == stopped
