"""Ensembles from trained members: one model file holding them all, its spread calibrated on validation crystals.

`assemble` puts N single models of the same targets, architecture, graph rule and element table into one
file (the spread uncalibrated: scale 1). `calibrate` predicts the validation crystals the members were
trained with (their common split; or ids given) and sets the scale that makes the spread match the
errors there (`ensemble.calibration_scale`); on the test crystals it records the ensemble's MAE and
how well the calibrated spread ranks and sizes its errors (`ensemble.uncertainty_metrics`).
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from srscreen.data.labels import match, read_labels
from srscreen.errors import InputError, OptionError
from srscreen.model.ensemble import calibration_scale, uncertainty_metrics
from srscreen.model.model_file import ModelFile
from srscreen.screening.predict import predict
from srscreen.trainer.trainer import metrics

# What every member must share, so that one batched network and one set of graphs serve them all.
_SHARED = ("targets", "units", "architecture", "graph_settings", "feature_table_id")


def assemble(members: Sequence[ModelFile]) -> ModelFile:
    """One ensemble model file of `members` (single models), its spread not yet calibrated (scale 1)."""
    if len(members) < 2:
        raise OptionError(f"an ensemble needs at least 2 members, got {len(members)}")
    first = members[0]
    for i, m in enumerate(members):
        if m.members:
            raise InputError(f"{m.source}: is an ensemble already; give its single members")
        if m.architecture.get("scale_head") != first.architecture.get("scale_head"):
            raise InputError(f"{m.source}: {'has' if m.architecture.get('scale_head') else 'lacks'} scale heads and "
                             f"{first.source} does not; train every member with --scale-head, or none")
        differ = [key for key in _SHARED if getattr(m, key) != getattr(first, key)]
        if differ:
            raise InputError(f"{m.source}: differs from {first.source} in {', '.join(differ)}; "
                             "members must share targets, architecture, graph rule and element table")
        copy = next((o for o in members[:i] if o.state_dict.keys() == m.state_dict.keys()
                     and all(torch.equal(o.state_dict[k], v) for k, v in m.state_dict.items())), None)
        if copy is not None:  # a member given twice would count twice in the mean and shrink the spread
            raise InputError(f"{m.source}: the same weights as {copy.source}; give each member once")
    splits = [m.training.get("split") for m in members]
    return replace(
        first,
        training={
            "members": [{"source": str(m.source), **{k: m.training.get(k) for k in
                                                     ("name", "command", "epochs_run", "best_epoch", "val_mae")},
                         "seed": (m.training.get("config") or {}).get("seed"),
                         "test": m.training.get("test")} for m in members],
            "config": first.training.get("config"),
            # The members' common split, when they share one: what `calibrate` validates and tests on.
            "split": splits[0] if all(s == splits[0] for s in splits) else None,
        },
        members=[{"state_dict": m.state_dict, "normalizers": m.normalizers} for m in members],
        calibration={"scale": {t: 1.0 for t in first.targets}},
        source="ensemble",
    )


def calibrate(ensemble: ModelFile, graph_path: str | Path, labels_path: str | Path, *,
              validation_ids: Sequence[str] | None = None, test_ids: Sequence[str] | None = None,
              device: str = "auto") -> ModelFile:
    """`ensemble` with its spread scaled to the errors on the validation crystals (by default the split the
    members were trained with), and its test MAE and uncertainty figures in `training`."""
    split = ensemble.training.get("split") or {}
    validation_ids = list(validation_ids if validation_ids is not None else split.get("val") or [])
    test_ids = list(test_ids if test_ids is not None else split.get("test") or [])
    if not validation_ids:
        raise OptionError("the members were not trained on one split, so no crystal is unseen by all of them: train "
                          "every member with the same --split file (from Python, give validation_ids)")
    raw = replace(ensemble, calibration={"scale": {t: 1.0 for t in ensemble.targets}})
    ranking = predict(graph_path, [raw], device=device)
    row_of = {id_: i for i, id_ in enumerate(ranking.ids)}
    scales, counts, tests, uncertainty = {}, {}, {}, {}
    for t in ensemble.targets:
        labels = read_labels(labels_path, t)

        def errors_and_std(ids: Sequence[str], part: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            rows = np.array([row_of[id_] for id_ in ids if id_ in row_of], dtype=np.int64)
            matched = match([ranking.ids[i] for i in rows], labels)
            if len(matched.positions) < 2:
                raise InputError(f"{labels_path}: only {len(matched.positions)} {part} crystals labelled with {t} "
                                 f"in {graph_path}")
            picked = rows[matched.positions]
            pred = ranking.values[t][picked]
            return pred, pred - matched.values, ranking.values[f"{t}_std"][picked]

        _, val_errors, val_std = errors_and_std(validation_ids, "validation")
        scales[t], counts[t] = calibration_scale(val_errors, val_std), len(val_errors)
        if test_ids:
            pred, test_errors, test_std = errors_and_std(test_ids, "test")
            tests[t] = asdict(metrics(pred, pred - test_errors))
            uncertainty[t] = uncertainty_metrics(test_errors, test_std * scales[t])
    training = {**ensemble.training, **({"test": tests, "uncertainty": uncertainty} if tests else {})}
    return replace(ensemble, training=training, calibration={"scale": scales, "validation_crystals": counts})
