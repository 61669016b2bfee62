"""Model accuracy on labelled crystals: MAE, RMSE, R² per model and target (and for a model with a
spread, how well it ranks and sizes the errors), and a parity plot."""

from __future__ import annotations

import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np

from srscreen.model.ensemble import uncertainty_metrics
from srscreen.model.model_file import ModelFile
from srscreen.data.labels import Labels, MissingColumn, match, read_labels
from srscreen.screening.predict import model_files, predict
from srscreen.trainer.metrics import Metrics, UncertainMetrics, metrics
from srscreen.errors import InputError, OptionError


SPLIT_PARTS = ("train", "val", "test")


def evaluate(graph_path: str | Path, labels_path: str | Path, models: list[ModelFile | str], *, device: str = "auto",
             plot: str | Path | None = None, split: str | None = None,
             warn: Callable[[str], None] | None = None) -> dict[str, dict[str, Metrics]]:
    """Metrics of each model (by `model_label`; `models` as `predict` takes them) on each of its targets,
    over the crystals of `graph_path` labelled for that target; for a model with a spread, `UncertainMetrics`. Models may share targets
    (a fine-tuned model beside its base): each is predicted on its own. `split` ("test", "val" or
    "train") keeps only the crystals of that part of the split each model's file records, so that a
    model's figures on a set it was trained on are not mistaken for held-out ones. A target the labels
    file has no column for, or no label of any crystal evaluated, is left out of a model's results and
    `warn` (default: `warnings.warn`) says so in one line: a file of Ef labels, or one whose band gaps are
    all blank, still scores the default pair's Ef. Nothing to score at all is refused."""
    warn = warn or (lambda note: warnings.warn(note, stacklevel=3))
    models = model_files(models)
    labels, missing = labelled_targets(labels_path, models)
    for t in missing:
        warn(f"{labels_path}: no column {t!r}; {t} not scored")
    results: dict[str, dict[str, Metrics]] = {}
    nothing: list[str] = []  # why each (model, target) with a column scored nothing
    pairs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    units: dict[str, str] = {}
    panels: dict[str, Metrics] = {}
    for m in models:
        label = model_label(m, models)
        results[label] = {}
        if not any(t in labels for t in m.targets):
            continue  # nothing to score: neither a prediction over the whole file nor its split asked for
        keep = None if split is None else split_ids(m, split)
        ranking = predict(graph_path, [m], device=device)
        for t in (t for t in m.targets if t in labels):
            labelled = labels[t] if keep is None else {i: v for i, v in labels[t].items() if i in keep}
            matched = match(ranking.ids, labelled)
            if len(matched.positions) == 0:
                part = "" if keep is None else f" in {label}'s {split} split"
                nothing.append(f"{labels_path}: no labelled {t} for any crystal of {graph_path}{part}")
                continue
            pred = ranking.values[t][matched.positions]
            result = metrics(pred, matched.values)
            if f"{t}_std" in ranking.values:
                std = ranking.values[f"{t}_std"][matched.positions]
                result = UncertainMetrics(**asdict(result), **uncertainty_metrics(pred - matched.values, std))
            results[label][t] = result
            panel = t if len(models) == 1 else f"{label}: {t}"
            pairs[panel], units[panel], panels[panel] = (matched.values, pred), m.unit_of(t), result
    if nothing and not any(results.values()):
        raise InputError(nothing[0])
    for note in nothing:
        warn(f"{note}; not scored")
    if plot is not None:
        parity_plot(pairs, units, panels, plot)
    return results


def labelled_targets(labels_path: str | Path, models: list[ModelFile]) -> tuple[dict[str, Labels], list[str]]:
    """The labels of each target of `models` that `labels_path` has a column for, and the targets it has
    none for; if it has a column for none of them, the refusal naming every one missing."""
    labels: dict[str, Labels] = {}
    missing: list[MissingColumn] = []
    targets = list(dict.fromkeys(t for m in models for t in m.targets))
    for t in targets:
        try:
            labels[t] = read_labels(labels_path, t)
        except MissingColumn as e:
            missing.append(e)
    if not labels:
        raise missing[0] if len(missing) == 1 else MissingColumn(
            f"{labels_path}: no column for any target evaluated ({', '.join(repr(t) for t in targets)})")
    return labels, [t for t in targets if t not in labels]


def split_ids(model: ModelFile, part: str) -> set[str]:
    """The ids of one part of the split `model`'s file records (every member trained on it)."""
    if part not in SPLIT_PARTS:
        raise OptionError(f"`split` must be {', '.join(SPLIT_PARTS[:-1])} or {SPLIT_PARTS[-1]}, not {part!r}")
    recorded = model.training.get("split") or {}
    if part not in recorded:
        why = ("its members were trained on different splits, so it records none" if model.members and "split" in model.training
               else "its file records no training split (imported, or trained before splits were recorded)")
        raise OptionError(f"{model.training.get('name') or model.source}: {why}; evaluate it without `split`")
    return set(recorded[part])


def model_label(model: ModelFile, models: list[ModelFile]) -> str:
    """How a model is named in a report: its pretrained name or its file, made unique among `models`."""
    label = str(model.training.get("name") or model.source)
    same = [m for m in models if str(m.training.get("name") or m.source) == label]
    return label if len(same) == 1 else f"{label}#{same.index(model) + 1}"


def parity_plot(pairs: dict[str, tuple[np.ndarray, np.ndarray]], units: dict[str, str],
                results: dict[str, Metrics], path: str | Path) -> None:
    """Predicted vs true, one panel per target, with MAE and R² in the title."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise OptionError("--plot needs matplotlib: pip install 'srscreen[plot]'") from None
    fig, axes = plt.subplots(1, len(pairs), figsize=(4.5 * len(pairs), 4.5), squeeze=False)
    for ax, (target, (true, pred)) in zip(axes[0], pairs.items()):
        lo, hi = float(min(true.min(), pred.min())), float(max(true.max(), pred.max()))
        ax.plot([lo, hi], [lo, hi], color="0.6", lw=1)
        ax.scatter(true, pred, s=min(30.0, max(3.0, 3000.0 / len(true))), alpha=0.5, edgecolors="none")
        r = results[target]
        ax.set_title(f"{target}\nMAE {r.mae:.3f} {units[target]}, R² {r.r2:.3f}, n={r.count}", fontsize=10)
        ax.set_xlabel(f"true ({units[target]})")
        ax.set_ylabel(f"predicted ({units[target]})")
        ax.set_aspect("equal")
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=120)
    except ValueError as e:  # a format matplotlib does not write, named by the extension
        raise OptionError(f"`plot` {path}: {e}") from None
    finally:
        plt.close(fig)
