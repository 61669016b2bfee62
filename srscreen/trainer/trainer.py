"""Training and fine-tuning: one `Trainer` run step by step, behind `train` and `finetune`.

Deterministic for a seed: the split is a seeded permutation of the labelled ids (sorted first), the
weights are initialised from the seed, and epoch e shuffles with a generator seeded by (seed, e), so
a resumed run draws exactly the batches the uninterrupted run would have. The normaliser is fitted
on the training targets only. The best epoch by validation MAE is what the model file keeps.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from srscreen.data.graph_file import check_fits_model
from srscreen.data.labels import match, read_labels
from srscreen.data.training_set import GraphSet, batches
from srscreen.errors import DiskFullError, InputError, OptionError
from srscreen.graph.elements import cgcnn_feature_table, table_id
from srscreen.io.atomic_write import is_disk_full, replace_when_done
from srscreen.model.allocator import reuse_freed_memory
from srscreen.model.ensemble import calibration_scale, uncertainty_metrics
from srscreen.model.model_file import NON_NEGATIVE, ModelFile, renumber_heads, target_columns
from srscreen.model.network import CrystalGraphNet
from srscreen.model.registry import resolve_model
from srscreen.trainer.config import (
    ARCHITECTURE,
    EXTENSIBLE,
    FINETUNE_DEFAULTS,
    Loss,
    Schedule,
    TrainConfig,
    check_config,
    config_dict,
)
from srscreen.trainer.ema import ema_update
from srscreen.trainer.metrics import Metrics, UncertainMetrics, metrics
from srscreen.trainer.split import Split, make_split, read_split_file

# Names other modules (the CLI, evaluate, benchmarks) import from here.
__all__ = [
    "COMPILE_FROM_CRYSTAL_EPOCHS", "FINETUNE_DEFAULTS", "Loss", "Metrics", "Schedule", "Split", "TrainConfig",
    "TrainResult", "Trainer", "UNITS", "check_config", "finetune", "make_split", "metrics", "predict_positions",
    "read_split_file", "train",
]

# Crystal-epochs from which compiling pays back its one-off ~20-60 s (it saves ~0.2 ms per crystal).
COMPILE_FROM_CRYSTAL_EPOCHS = 200_000
UNITS = {"formation_energy_per_atom": "eV/atom", "band_gap": "eV", "e_form": "eV/atom", "gap": "eV"}


@dataclass
class TrainResult:
    model_file: ModelFile
    history: list[dict] = field(default_factory=list)


def predict_positions(model: CrystalGraphNet, graphs: GraphSet, positions: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Normalised model outputs for these crystals, in order (eval mode, no autograd): (crystals, heads)."""
    model.eval()
    out = []
    with torch.inference_mode():
        for b in batches(len(positions), batch_size, None):
            out.append(model(graphs.batch(positions[b])).numpy())
    return np.concatenate(out) if out else np.zeros((0, len(model.heads)))


class Trainer:
    """One training run: `prepare` once, then `epoch`, `validate` and `checkpoint` per epoch, then
    `finish`; `run` does the epochs and the finish in order.

    The steps are kept apart so that what a resumed run must reproduce (the data, the split, the
    weights, the optimiser and the RNG draws, in the same order) is in one place, `prepare`.
    """

    def __init__(self, graph_path: str | Path, labels_path: str | Path, out: str | Path, config: TrainConfig, *,
                 init: ModelFile | None = None, split_file: str | Path | None = None, unit: str | None = None,
                 command: str = "", compile: bool | None = None) -> None:
        if init is not None and not config.target_weights:
            config = replace(config, target_weights=inherited_weights(init, config.targets))
        check_config(config)
        if unit is not None and len(config.targets) != 1:  # before any epoch, not after all of them
            raise OptionError("`unit` names the unit of one target; several targets take their known units")
        if unit is not None and init is not None and config.targets[0] in init.targets and unit != init.unit_of(config.targets[0]):
            raise OptionError(f"`unit` {unit!r}: {init.source} predicts {config.targets[0]} in "
                              f"{init.unit_of(config.targets[0])!r}, which its fine-tuned head keeps; `unit` names a new head's unit")
        new = [t for t in config.targets if init is not None and t not in init.targets]
        if new and not config.new_heads:
            raise OptionError(
                f"{init.source} predicts {', '.join(init.targets)}, not {', '.join(new)}: fine-tuning it to another "
                "target starts that head from random weights; ask for it with `new_heads=True`")
        reuse_freed_memory()
        self.out = Path(out)
        if not self.out.parent.is_dir():
            raise OptionError(f"{self.out}: folder {self.out.parent} does not exist")
        self.ckpt_path = self.out.with_name(self.out.name + ".ckpt")
        self.log_path = self.out.with_name(self.out.name + ".log.jsonl")
        self.graph_path, self.labels_path, self.config, self.init = graph_path, labels_path, config, init
        self.split_file = Path(split_file) if split_file else None
        self.unit, self.command, self.compile = unit, command, compile
        self.history: list[dict] = []
        self.start_epoch = 0

    def __repr__(self) -> str:
        source = f", fine-tuning {self.init.source}" if self.init is not None else ""
        return f"Trainer({self.graph_path} -> {self.out}: {self.config.target}{source})"

    def prepare(self, resume: bool = False) -> None:
        """Everything the epochs need, in the order a resumed run repeats it: data and split, model
        (seeded) and optimiser, then the checkpoint's state over them when resuming."""
        self._load_data()
        self._build_model()
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=self.config.lr, weight_decay=self.config.weight_decay)
        self.ema = copy.deepcopy(self.model) if self.config.ema_decay > 0 else None
        self.best = {"val_mae": math.inf, "epoch": -1, "state": copy.deepcopy(self.model.state_dict())}
        if resume and self.ckpt_path.exists():
            self._resume()
        elif self.log_path.exists():
            self.log_path.unlink()
        crystal_epochs = len(self.split.train) * self.config.epochs
        if self.compile if self.compile is not None else crystal_epochs >= COMPILE_FROM_CRYSTAL_EPOCHS:
            self.model.compile_training()
        mean, std = (np.array([n[k] for n in self.normalizers]) for k in ("mean", "std"))
        self.y_norm = torch.from_numpy((self.y_all - mean) / std).float()  # (crystals, targets), NaN: unlabelled
        self.started = time.perf_counter() - (self.history[-1]["elapsed_s"] if self.history else 0.0)

    def _load_data(self) -> None:
        """The graphs, their labels and the split; refused when too few crystals are left to train."""
        init, config = self.init, self.config
        # Equivalent atoms merged (exact, fewer rows) for the depth of the network that will train.
        self.graphs = GraphSet.load(self.graph_path, steps=init.architecture["steps"] if init is not None else config.steps)
        self.matched = {t: match(self.graphs.ids, read_labels(self.labels_path, t)) for t in config.targets}
        for t, m in self.matched.items():
            if len(m.positions) < 3:
                others = [o for o in config.targets if o != t]
                hint = (f"; to train {', '.join(others)} alone, give only {'that' if len(others) == 1 else 'those'} "
                        "with `target`") if others else ""
                raise InputError(f"{self.labels_path}: only {len(m.positions)} crystals labelled with {t} match "
                                 f"{self.graph_path}{hint}")
        # (crystals, targets): a crystal labelled for some targets trains those heads only.
        self.y_all = np.full((len(self.graphs), len(config.targets)), np.nan)
        for i, m in enumerate(self.matched.values()):
            self.y_all[m.positions, i] = m.values
        labelled = np.flatnonzero(np.isfinite(self.y_all).any(axis=1))
        self.split = make_split(self.graphs.ids, labelled, config.seed, config.val_fraction, config.test_fraction,
                                self.split_file)
        if len(self.split.train) == 0 or len(self.split.val) == 0:
            raise InputError("the split leaves no training or no validation crystals; give more data or other fractions")
        # A head with no labelled validation crystal never scores, so no epoch beats the untrained weights.
        for part in ("train", "val"):
            unlabelled = [t for i, t in enumerate(config.targets) if not np.isfinite(self.y_all[getattr(self.split, part), i]).any()]
            if unlabelled:
                where = f"the split of {self.split_file}" if self.split_file else "the split"
                raise InputError(f"{self.labels_path}: no {'training' if part == 'train' else 'validation'} crystal of {where} "
                                 f"is labelled with {', '.join(unlabelled)}; every target needs some")

    def _build_model(self) -> None:
        """A new seeded network, or one from the `init` model (its trunk, and its heads of the targets
        asked for; its architecture replaces the config's), and the normalisers: the base model's for
        its own targets, else fitted on the training targets."""
        init, config, graphs = self.init, self.config, self.graphs
        torch.manual_seed(config.seed)
        fitted = [_fit_normalizer(self.y_all[self.split.train, i]) for i in range(len(config.targets))]
        if init is not None:
            check_fits_model(Path(self.graph_path), graphs.graph_settings, graphs.feature_table_id, str(init.source),
                             init.graph_settings, init.feature_table_id)
            model = _with_heads(init, config.targets)
            self.normalizers = [init.normalizers[init.targets.index(t)] if t in init.targets else fitted[i]
                                for i, t in enumerate(config.targets)]
            self.config = replace(config, **{name: getattr(model, name) for name in sorted(ARCHITECTURE)})
        else:
            table = cgcnn_feature_table()
            if table_id(table) != graphs.feature_table_id:
                raise InputError(
                    f"{self.graph_path} was featurized with element table {graphs.feature_table_id}, not srscreen's "
                    f"built-in {table_id(table)}; to train on it, featurize with the built-in table"
                )
            model = CrystalGraphNet(feature_table=np.array(table), steps=config.steps, shared=config.shared,
                                    atom_fea_len=config.atom_fea_len, h_fea_len=config.h_fea_len, n_h=config.n_h,
                                    radius=graphs.graph_settings["radius"], n_targets=len(config.targets),
                                    scale_head=config.scale_head)
            self.normalizers = fitted
        if config.freeze_conv:
            for module in (model.embedding, *model.fc_full, *model.bn1, *model.bn2):
                module.requires_grad_(False)
        self.model = model

    def _resume(self) -> None:
        """Take over the checkpoint's weights, optimiser, EMA, best epoch and history, if it was made
        with the same settings (more epochs or another patience is the same run, longer or shorter)."""
        state = torch.load(self.ckpt_path, weights_only=True)
        changed = sorted(k for k, v in config_dict(self.config).items() if state["config"].get(k) != v and k not in EXTENSIBLE)
        if changed:
            settings = ", ".join(f"`{k}`" for k in changed)  # the command line names their flags
            raise OptionError(f"{self.ckpt_path} was made with other {settings}; rerun without `resume` to start over")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.best = {"val_mae": state["best_val_mae"], "epoch": state["best_epoch"], "state": state["best_state"]}
        self.history = [json.loads(h) for h in state["history"]]
        self.start_epoch = state["epoch"] + 1
        # The log is written before the checkpoint: a kill between the two leaves a line the checkpoint
        # does not know. The checkpoint's history is the truth; the log restarts from it.
        self.log_path.write_text("".join(json.dumps(h) + "\n" for h in self.history))

    def epoch(self, epoch: int) -> float:
        """One pass over the training crystals; the mean training loss.

        The rate and the batch order are functions of (seed, epoch) alone, so a resumed epoch draws
        what the uninterrupted run would have drawn."""
        config, model, optimizer, split = self.config, self.model, self.optimizer, self.split
        for group in optimizer.param_groups:
            group["lr"] = config.lr * _lr_factor(config, epoch)
        model.train()
        if config.freeze_conv:  # frozen BatchNorms keep their running statistics
            for bn in (*model.bn1, *model.bn2):
                bn.eval()
        loss_sum, n_seen = 0.0, 0
        step = epoch * -(-len(split.train) // config.batch_size)  # global step, the same after a resume
        for b in batches(len(split.train), config.batch_size, np.random.default_rng([config.seed, epoch])):
            if len(b) < 2:
                continue  # BatchNorm needs two crystals
            pos = split.train[b]
            loss = _loss(config, model(self.graphs.batch(pos)), self.y_norm[pos], self.model.scale_head)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if self.ema is not None:
                ema_update(self.ema, model, config.ema_decay, step)
            step += 1
            loss_sum += loss.item() * len(b)
            n_seen += len(b)
        return loss_sum / max(n_seen, 1)

    def validate(self, epoch: int) -> dict[str, Metrics]:
        """Metrics on the validation crystals of the weights the run would keep (the EMA's, if any);
        when they are the best so far, those weights become the ones `finish` writes."""
        evaluated = self.ema if self.ema is not None else self.model
        val = self._metrics(evaluated, self.split.val)
        score = self._score(val)
        if score < self.best["val_mae"]:
            self.best = {"val_mae": score, "epoch": epoch, "state": copy.deepcopy(evaluated.state_dict())}
        return val

    def _score(self, val: dict[str, Metrics]) -> float:
        """What picks the best epoch: the validation MAE of a one-target model; with several targets,
        the weighted mean of each target's MAE over its normaliser's std (a unitless error)."""
        if len(val) == 1:
            return next(iter(val.values())).mae
        w = self.config.weights
        return sum(wi * m.mae / n["std"] for wi, m, n in zip(w, val.values(), self.normalizers)) / sum(w)

    def checkpoint(self, epoch: int, record: dict) -> None:
        """Log the epoch's line, then replace OUT.ckpt atomically: a kill at any moment leaves a
        whole checkpoint to resume from (and `_resume` trims a line logged after it)."""
        self.history.append(record)
        try:
            with self.log_path.open("a") as log:
                log.write(json.dumps(record) + "\n")
        except OSError as e:  # the checkpoint before this epoch is whole: say so, and which file failed
            resume = f"{self.ckpt_path} holds the epochs before; free space and run the same command with --resume"
            if is_disk_full(e, self.log_path.parent):
                raise DiskFullError(f"{self.log_path}: no space left on device; {resume}", self.log_path) from e
            raise InputError(f"{self.log_path}: cannot write the training log ({e.strerror or e}); {resume}") from e
        ema = self.ema.state_dict() if self.ema is not None else {}
        state = {"config": config_dict(self.config), "epoch": epoch, "model": self.model.state_dict(),
                 "optimizer": self.optimizer.state_dict(), "ema": ema, "best_val_mae": self.best["val_mae"],
                 "best_epoch": self.best["epoch"], "best_state": self.best["state"],
                 "history": [json.dumps(h) for h in self.history]}
        with replace_when_done(self.ckpt_path) as tmp:
            torch.save(state, tmp)

    def run(self, on_epoch: Callable[[dict], None] | None = None) -> TrainResult:
        """The epochs left (all of them, or those after the checkpoint), stopping early after
        `patience` epochs without a better validation MAE; then `finish`."""
        config = self.config
        for epoch in range(self.start_epoch, config.epochs):
            t0 = time.perf_counter()
            train_loss = self.epoch(epoch)
            if not math.isfinite(train_loss):  # weights gone to inf/NaN: no later epoch or calibration can mend them
                raise OptionError(f"training diverged at epoch {epoch + 1} (training loss {train_loss}); "
                                  "run it again with a lower `lr`")
            val = self.validate(epoch)
            record = {
                "epoch": epoch + 1, "train_loss": train_loss, "val_mae": self._score(val),
                **({"val_rmse": next(iter(val.values())).rmse} if len(val) == 1 else
                   {"val_mae_by_target": {t: m.mae for t, m in val.items()}}),
                "lr": self.optimizer.param_groups[0]["lr"], "epoch_s": time.perf_counter() - t0,
                "elapsed_s": time.perf_counter() - self.started, "best_epoch": self.best["epoch"] + 1,
            }
            self.checkpoint(epoch, record)
            if on_epoch is not None:
                on_epoch(record)
            if config.patience and epoch - self.best["epoch"] >= config.patience:
                break
        return self.finish()

    def finish(self) -> TrainResult:
        """Write the model file: the best epoch's weights, their test metrics per target, how they were
        made (data, split, settings), and with scale heads their spread calibrated on the validation
        crystals, so the file alone tells what it is."""
        init, config, graphs, split = self.init, self.config, self.graphs, self.split
        self.model.load_state_dict(self.best["state"])
        units = [self.unit if self.unit is not None else
                 init.unit_of(t) if init is not None and t in init.targets else UNITS.get(t, "") for t in config.targets]
        training = {
            "data": {"graphs": str(self.graph_path), "labels": str(self.labels_path),
                     "labelled": {t: int(len(m.positions)) for t, m in self.matched.items()},
                     "missing_in_labels": {t: m.missing_in_labels for t, m in self.matched.items()},
                     "missing_in_graphs": {t: m.missing_in_graphs for t, m in self.matched.items()},
                     "not_finite": {t: m.not_finite for t, m in self.matched.items()}},
            "split": {name: [graphs.ids[p] for p in getattr(split, name)] for name in ("train", "val", "test")},
            "config": config_dict(config),
            "epochs_run": len(self.history),
            "best_epoch": self.best["epoch"] + 1,
            "val_mae": self.best["val_mae"],
            "wall_time_s": self.history[-1]["elapsed_s"] if self.history else 0.0,
            "finetuned_from": init.training.get("name", "model file") if init is not None else None,
            "command": self.command,
        }
        model_file = ModelFile.from_model(self.model, graph_settings=graphs.graph_settings, targets=list(config.targets),
                                          units=units, normalizers=self.normalizers, training=training,
                                          bounds=self._bounds())
        if model_file.has_std:
            model_file = replace(model_file, calibration=self._calibration(model_file))
        if len(split.test):
            model_file.training["test"] = {t: asdict(m) for t, m in self._metrics(self.model, split.test, model_file).items()}
            if init is not None:
                model_file.training["baseline_test"] = self._baseline()
        model_file.save(self.out)
        return TrainResult(model_file, self.history)

    def _baseline(self) -> dict[str, dict]:
        """The starting model's metrics on the same test crystals, for the targets it predicts: what
        fine-tuning is measured against. For an ensemble, the whole ensemble's (fine-tuning starts from its
        first member, but the ensemble is what the user would otherwise run, and what the report names)."""
        start = self.init
        out = np.stack([predict_positions(start.member(k).build_model(), self.graphs, self.split.test)
                        for k in range(max(len(start.members), 1))])
        output = torch.from_numpy(out if start.members else out[0]).double()
        columns = {k: v.numpy() for k, v in start.values(output, self._elemental(self.split.test)).items()}
        baseline = {}
        for i, t in enumerate(self.config.targets):
            y = self.y_all[self.split.test, i]
            known = np.isfinite(y)
            if t in start.targets and known.any():
                baseline[t] = asdict(metrics(columns[t][known], y[known]))
        return baseline

    def _bounds(self) -> dict[str, list]:
        """The targets' physical bounds, which predictions are clipped to (the same in validation as in use)."""
        return {t: [0.0, None] for t in self.config.targets if t in NON_NEGATIVE}

    def _columns(self, model_file: ModelFile, positions: np.ndarray) -> dict[str, np.ndarray]:
        """The model file's ranking columns (each target in its unit, and its spread) for these crystals."""
        output = torch.from_numpy(predict_positions(self.model, self.graphs, positions)).double()
        return {k: v.numpy() for k, v in model_file.values(output, self._elemental(positions)).items()}

    def _elemental(self, positions: np.ndarray) -> torch.Tensor:
        """Which of these crystals are of one element (their formation energy is floored at 0, as in `predict`)."""
        return torch.from_numpy(self.graphs.elemental[positions])

    def _calibration(self, model_file: ModelFile) -> dict:
        """The scale per target that sizes the raw spread to the validation errors (`calibration_scale`)."""
        columns = self._columns(model_file, self.split.val)
        scales = {}
        for i, t in enumerate(model_file.targets):
            y = self.y_all[self.split.val, i]
            known = np.isfinite(y)
            scales[t] = calibration_scale(columns[t][known] - y[known], columns[f"{t}_std"][known])
        return {"scale": scales, "validation_crystals": {t: int(np.isfinite(self.y_all[self.split.val, i]).sum())
                                                         for i, t in enumerate(model_file.targets)}}

    def _metrics(self, model: CrystalGraphNet, positions: np.ndarray,
                 model_file: ModelFile | None = None) -> dict[str, Metrics]:
        """Per target, over the crystals labelled for it: MAE, RMSE, R² (and, given the calibrated model
        file of a model with a spread, how well its spread ranks and sizes the errors)."""
        if model_file is not None and model_file.has_std:
            columns = self._columns(model_file, positions)
        else:
            out = torch.from_numpy(predict_positions(model, self.graphs, positions)).double()
            _, means = target_columns(out.unsqueeze(0), [self.normalizers], list(self.config.targets), self._bounds(),
                                      self._elemental(positions))
            columns = {t: v.numpy() for t, v in means.items()}
        results = {}
        for i, t in enumerate(self.config.targets):
            y = self.y_all[positions, i]
            known = np.isfinite(y)
            if not known.any():  # a test slice without this target's labels: no figure rather than NaN of 0 crystals
                continue
            results[t] = metrics(columns[t][known], y[known])
            if f"{t}_std" in columns:
                results[t] = UncertainMetrics(**asdict(results[t]), **uncertainty_metrics(
                    columns[t][known] - y[known], columns[f"{t}_std"][known]))
        return results


def inherited_weights(init: ModelFile, targets: tuple[str, ...]) -> tuple[float, ...]:
    """The loss weight each target had when `init` was trained (1 for a new head, or where the file records
    none: an ensemble, an imported model), so that fine-tuning keeps the balance between heads the model
    learnt with unless told otherwise; () where that is 1 each, the default."""
    recorded = init.training.get("config") or {}
    names = recorded.get("target") or ()
    trained = dict(zip([names] if isinstance(names, str) else names, recorded.get("target_weights") or ()))
    weights = tuple(float(trained.get(t, 1.0)) for t in targets)
    return () if all(w == 1.0 for w in weights) else weights


def train(
    graph_path: str | Path,
    labels_path: str | Path,
    out: str | Path,
    config: TrainConfig,
    *,
    init: ModelFile | None = None,
    split_file: str | Path | None = None,
    resume: bool = False,
    unit: str | None = None,
    command: str = "",
    compile: bool | None = None,
    on_epoch: Callable[[dict], None] | None = None,
) -> TrainResult:
    """Train (or, with `init`, fine-tune) a model on the labelled crystals of a graph file; write `out`.

    Each epoch is checkpointed to OUT.ckpt and logged to OUT.log.jsonl; `resume` continues from the
    checkpoint after a kill. `compile` fuses the convolutions' training forward with torch.compile
    (2x faster epochs on 2 CPU cores, benchmarks/train.py, after a one-off compile of ~20-60 s);
    None compiles when the run is long enough to pay that back (COMPILE_FROM_CRYSTAL_EPOCHS).
    """
    trainer = Trainer(graph_path, labels_path, out, config, init=init, split_file=split_file, unit=unit,
                      command=command, compile=compile)
    trainer.prepare(resume=resume)
    return trainer.run(on_epoch)


def finetune(
    graph_path: str | Path,
    labels_path: str | Path,
    out: str | Path,
    from_model: str | os.PathLike | ModelFile,
    *,
    target: str | tuple[str, ...] | None = None,
    split_file: str | Path | None = None,
    resume: bool = False,
    unit: str | None = None,
    command: str = "",
    compile: bool | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    **settings,
) -> TrainResult:
    """Fine-tune a trained model (a pretrained name, a model file or a loaded ModelFile) on the labelled
    crystals of a graph file; write `out`. What `srscreen finetune` does.

    `target` (one name or several) defaults to the model's own targets; the result predicts those
    targets only. A target the model lacks needs `new_heads=True`. `settings` are TrainConfig fields
    (`epochs=30`, `freeze_conv=True`, ...) over FINETUNE_DEFAULTS; the architecture is the model's.
    """
    known = {f.name for f in fields(TrainConfig)} - ARCHITECTURE - {"target"}
    unknown = sorted(set(settings) - known)
    if unknown:
        why = "the architecture is the model's own" if set(unknown) & ARCHITECTURE else f"settings: {', '.join(sorted(known))}"
        raise OptionError(f"`{unknown[0]}` is not a fine-tuning setting ({why})")
    init = from_model if isinstance(from_model, ModelFile) else resolve_model(os.fspath(from_model))
    config = TrainConfig(target=target or tuple(init.targets), **{**FINETUNE_DEFAULTS, **settings})
    return train(graph_path, labels_path, out, config, init=init, split_file=split_file, resume=resume, unit=unit,
                 command=command, compile=compile, on_epoch=on_epoch)


def _loss(config: TrainConfig, out: torch.Tensor, y: torch.Tensor, scale_head: bool) -> torch.Tensor:
    """The weighted sum over targets of each one's loss on the crystals labelled for it (normalised
    values); with scale heads, plus each one's Laplace negative log-likelihood of the errors of the
    mean, detached, so the scale learns the errors' size without pulling the mean towards them."""
    total = out.new_zeros(())
    n = y.shape[1]
    for i, w in enumerate(config.weights):
        known = torch.isfinite(y[:, i])
        if not known.any():
            continue
        mean, target = out[known, i], y[known, i]
        if config.loss == "l1":
            loss = F.l1_loss(mean, target)
        elif config.loss == "huber":
            loss = F.smooth_l1_loss(mean, target, beta=0.1)
        else:
            loss = F.mse_loss(mean, target)
        if scale_head:
            log_b = out[known, n + i]
            loss = loss + (log_b + (target - mean.detach()).abs() * torch.exp(-log_b)).mean()
        total = total + w * loss
    return total


def _lr_factor(config: TrainConfig, epoch: int) -> float:
    """Learning-rate multiplier for an epoch (0-based), as a pure function so resuming needs no state."""
    if epoch < config.warmup_epochs:
        return (epoch + 1) / config.warmup_epochs
    if config.schedule == "cosine":
        span = max(config.epochs - config.warmup_epochs, 1)
        return 0.5 * (1.0 + math.cos(math.pi * (epoch - config.warmup_epochs) / span))
    if config.schedule == "multistep":
        return 0.1 ** sum(epoch >= m for m in config.milestones)
    return 1.0


def _fit_normalizer(y_train: np.ndarray) -> dict:
    y_train = y_train[np.isfinite(y_train)]
    if not len(y_train):
        return {"mean": 0.0, "std": 1.0}
    return {"mean": float(y_train.mean()), "std": float(y_train.std() or 1.0)}


def _with_heads(init: ModelFile, targets: tuple[str, ...]) -> CrystalGraphNet:
    """A network with `init`'s trunk and, for each of `targets`, `init`'s head (and scale head) of that
    target, or a new head (seeded by the caller) where `init` has none."""
    base = init.build_model()
    model = CrystalGraphNet(feature_table=base.feature_table, **{**base.architecture(), "n_targets": len(targets)})
    picks = {init.targets.index(t): i for i, t in enumerate(targets) if t in init.targets}
    state = renumber_heads(base.state_dict(), picks, base.n_targets, len(targets), base.scale_head)
    model.load_state_dict({**model.state_dict(), **state})
    return model
