"""Model accuracy on labelled crystals: MAE, RMSE, R² per target (and for an ensemble, how well its
spread ranks and sizes the errors), and a parity plot."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from srscreen.model.ensemble import uncertainty_metrics
from srscreen.model.model_file import ModelFile
from srscreen.data.labels import match, read_labels
from srscreen.screening.predict import predict
from srscreen.trainer.trainer import Metrics, metrics
from srscreen.errors import InputError, OptionError


@dataclass
class EnsembleMetrics(Metrics):
    """An ensemble's metrics plus `ensemble.uncertainty_metrics` of its calibrated spread."""

    spearman: float
    within_1std: float
    within_2std: float
    mae_most_confident_10pct: float
    mae_least_confident_10pct: float


def evaluate(graph_path: str | Path, labels_path: str | Path, models: list[ModelFile], *, device: str = "auto",
             plot: str | Path | None = None) -> dict[str, Metrics]:
    """Metrics of each model on the crystals of `graph_path` that have a label for its target."""
    ranking = predict(graph_path, models, device=device)
    results: dict[str, Metrics] = {}
    pairs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for m in models:
        matched = match(ranking.ids, read_labels(labels_path, m.target))
        if len(matched.positions) == 0:
            raise InputError(f"{labels_path}: no labelled {m.target} for any crystal of {graph_path}")
        pred = ranking.values[m.target][matched.positions]
        results[m.target] = metrics(pred, matched.values)
        if m.members:
            std = ranking.values[f"{m.target}_std"][matched.positions]
            results[m.target] = EnsembleMetrics(**asdict(results[m.target]),
                                                **uncertainty_metrics(pred - matched.values, std))
        pairs[m.target] = (matched.values, pred)
    if plot is not None:
        parity_plot(pairs, {m.target: m.unit for m in models}, results, plot)
    return results


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
    fig.savefig(path, dpi=120)
    plt.close(fig)
