"""Training and fine-tuning: splits, the epoch loop, checkpoints that survive a kill, metrics.

Deterministic for a seed: the split is a seeded permutation of the labelled ids (sorted first), the
weights are initialised from the seed, and epoch e shuffles with a generator seeded by (seed, e), so
a resumed run draws exactly the batches the uninterrupted run would have. The normaliser is fitted
on the training targets only. The best epoch by validation MAE is what the model file keeps.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch
import torch.nn.functional as F

from srscreen.model.allocator import reuse_freed_memory
from srscreen.io.atomic_write import replace_when_done
from srscreen.model.model_file import ModelFile
from srscreen.data.training_set import GraphSet, batches
from srscreen.graph.elements import cgcnn_feature_table, table_id
from srscreen.data.labels import Matched, match, read_labels
from srscreen.model.network import CrystalGraphNet
from srscreen.data.graph_file import check_fits_model

Loss = Literal["mse", "l1", "huber"]
Schedule = Literal["multistep", "cosine", "constant"]
# Crystal-epochs from which compiling pays back its one-off ~20-60 s (it saves ~0.2 ms per crystal).
COMPILE_FROM_CRYSTAL_EPOCHS = 200_000
# A resumed run may run longer or stop earlier than first planned; anything else must match.
_EXTENSIBLE = frozenset({"epochs", "patience"})
UNITS = {"formation_energy_per_atom": "eV/atom", "band_gap": "eV", "e_form": "eV/atom", "gap": "eV"}


@dataclass(frozen=True)
class TrainConfig:
    """Every choice that shapes the result; stored in the checkpoint and the model file."""

    target: str
    steps: int = 3
    shared: bool = True
    atom_fea_len: int = 64
    h_fea_len: int = 128
    n_h: int = 1
    epochs: int = 100
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    loss: Loss = "mse"
    schedule: Schedule = "multistep"
    milestones: tuple[int, ...] = (100,)
    warmup_epochs: int = 0
    ema_decay: float = 0.0
    seed: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    patience: int = 0
    freeze_conv: bool = False


@dataclass(frozen=True)
class Split:
    """Positions (into the GraphSet) of the labelled crystals in each part."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


@dataclass
class Metrics:
    mae: float
    rmse: float
    r2: float
    count: int


def metrics(pred: np.ndarray, true: np.ndarray) -> Metrics:
    err = pred - true
    ss_tot = float(((true - true.mean()) ** 2).sum()) if len(true) else 0.0
    return Metrics(
        mae=float(np.abs(err).mean()) if len(err) else math.nan,
        rmse=float(np.sqrt((err**2).mean())) if len(err) else math.nan,
        r2=1.0 - float((err**2).sum()) / ss_tot if ss_tot > 0 else math.nan,
        count=int(len(err)),
    )


def make_split(ids: list[str], matched: Matched, config: TrainConfig, split_file: Path | None) -> Split:
    """A seeded random split of the labelled crystals, or the one a split file gives (`id,split` rows)."""
    labelled = matched.positions
    if split_file is not None:
        part_of = read_split_file(split_file)
        parts = {name: [] for name in ("train", "val", "test")}
        for p in labelled:
            part = part_of.get(ids[p])
            if part in parts:
                parts[part].append(p)
        return Split(*(np.array(parts[n], dtype=np.int64) for n in ("train", "val", "test")))
    order = labelled[np.argsort([ids[p] for p in labelled], kind="stable")]
    order = order[np.random.default_rng(config.seed).permutation(len(order))]
    n_test = int(round(config.test_fraction * len(order)))
    n_val = int(round(config.val_fraction * len(order)))
    return Split(train=order[n_test + n_val :], val=order[n_test : n_test + n_val], test=order[:n_test])


_PARTS = ("train", "val", "test")


def read_split_file(path: Path) -> dict[str, str]:
    """id -> train/val/test from `id,split` rows; a first row naming another part is a header.

    Any other part name is refused: a typo ("validation", "Train") must not silently drop crystals.
    """
    part_of: dict[str, str] = {}
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ValueError(f"{path}: cannot read split file ({e.strerror})") from None
    for line_no, row in enumerate(csv.reader(text.splitlines()), start=1):
        if not row or not "".join(row).strip():
            continue
        if len(row) < 2:
            raise ValueError(f"{path}:{line_no}: expected id,split (train, val or test)")
        id_, part = row[0].strip(), row[1].strip()
        if part not in _PARTS:
            if line_no == 1:
                continue  # header
            raise ValueError(f"{path}:{line_no}: split {part!r} of {id_} is not train, val or test")
        part_of[id_] = part
    return part_of


def check_config(config: TrainConfig) -> None:
    """Refuse settings that cannot train (rather than silently training something else)."""
    if config.loss not in ("mse", "l1", "huber"):
        raise ValueError(f"--loss must be mse, l1 or huber, not {config.loss!r}")
    if config.schedule not in ("multistep", "cosine", "constant"):
        raise ValueError(f"--schedule must be multistep, cosine or constant, not {config.schedule!r}")
    if config.epochs < 1:
        raise ValueError(f"--epochs must be at least 1, not {config.epochs}")
    if config.batch_size < 2:
        raise ValueError(f"--batch-size must be at least 2 (BatchNorm needs two crystals), not {config.batch_size}")
    if not (0 <= config.val_fraction and 0 <= config.test_fraction and config.val_fraction + config.test_fraction < 1):
        raise ValueError(
            f"--val-fraction {config.val_fraction} and --test-fraction {config.test_fraction} must be non-negative "
            "and leave a training fraction"
        )
    if config.steps < 1 or config.n_h < 1 or config.atom_fea_len < 1 or config.h_fea_len < 1:
        raise ValueError("--steps, --n-h, --atom-fea-len and --h-fea-len must be at least 1")
    if config.lr <= 0 or config.warmup_epochs < 0 or config.patience < 0 or not (0 <= config.ema_decay < 1):
        raise ValueError("--lr must be positive, --warmup-epochs and --patience non-negative, --ema-decay in [0, 1)")


def _loss(config: TrainConfig, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if config.loss == "l1":
        return F.l1_loss(out, y)
    if config.loss == "huber":
        return F.smooth_l1_loss(out, y, beta=0.1)
    return F.mse_loss(out, y)


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


def predict_positions(model: CrystalGraphNet, graphs: GraphSet, positions: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Normalised model outputs for these crystals, in order (eval mode, no autograd)."""
    model.eval()
    out = []
    with torch.inference_mode():
        for b in batches(len(positions), batch_size, None):
            out.append(model(graphs.batch(positions[b])).numpy())
    return np.concatenate(out) if out else np.zeros(0)


@dataclass
class TrainResult:
    model_file: ModelFile
    history: list[dict] = field(default_factory=list)


def _atomic_save(obj: dict, path: Path) -> None:
    with replace_when_done(path) as tmp:
        torch.save(obj, tmp)


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
    check_config(config)
    reuse_freed_memory()
    out = Path(out)
    if not out.parent.is_dir():
        raise ValueError(f"{out}: folder {out.parent} does not exist")
    ckpt_path = out.with_name(out.name + ".ckpt")
    log_path = out.with_name(out.name + ".log.jsonl")
    # Equivalent atoms merged (exact, fewer rows) for the depth of the network that will train.
    graphs = GraphSet.load(graph_path, steps=init.architecture["steps"] if init is not None else config.steps)
    labels = read_labels(labels_path, config.target)
    matched = match(graphs.ids, labels)
    if len(matched.positions) < 3:
        raise ValueError(f"{labels_path}: only {len(matched.positions)} labelled crystals match {graph_path}")
    split = make_split(graphs.ids, matched, config, Path(split_file) if split_file else None)
    if len(split.train) == 0 or len(split.val) == 0:
        raise ValueError("the split leaves no training or no validation crystals; give more data or other fractions")
    y_all = np.full(len(graphs), np.nan)
    y_all[matched.positions] = matched.values

    if init is not None:
        check_fits_model(Path(graph_path), graphs.graph_settings, graphs.feature_table_id, str(init.source),
                         init.graph_settings, init.feature_table_id)
        model = init.build_model()
        if init.target == config.target:
            normalizer = dict(init.normalizer)  # the head's output already has this target's scale
        else:  # another property (e.g. Ef -> band gap): its own scale, fitted on the training targets
            normalizer = _fit_normalizer(y_all[split.train])
        config = replace(config, steps=model.steps, shared=model.shared, atom_fea_len=model.atom_fea_len,
                         h_fea_len=model.h_fea_len, n_h=model.n_h)
    else:
        torch.manual_seed(config.seed)
        table = cgcnn_feature_table()
        if table_id(table) != graphs.feature_table_id:
            raise ValueError(
                f"{graph_path} was featurized with element table {graphs.feature_table_id}, not srscreen's built-in "
                f"{table_id(table)}; to train on it, featurize with the built-in table"
            )
        model = CrystalGraphNet(feature_table=np.array(table), steps=config.steps, shared=config.shared,
                                atom_fea_len=config.atom_fea_len, h_fea_len=config.h_fea_len, n_h=config.n_h,
                                radius=graphs.graph_settings["radius"])
        normalizer = _fit_normalizer(y_all[split.train])
    if config.freeze_conv:
        for module in (model.embedding, *model.fc_full, *model.bn1, *model.bn2):
            module.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    ema = copy.deepcopy(model) if config.ema_decay > 0 else None
    history: list[dict] = []
    best = {"val_mae": math.inf, "epoch": -1, "state": copy.deepcopy(model.state_dict())}
    start_epoch = 0

    if resume and ckpt_path.exists():
        state = torch.load(ckpt_path, weights_only=True)
        changed = sorted(k for k, v in _config_dict(config).items() if state["config"].get(k) != v and k not in _EXTENSIBLE)
        if changed:
            raise ValueError(f"{ckpt_path} was made with other {', '.join(changed)}; rerun without --resume to start over")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        best = {"val_mae": state["best_val_mae"], "epoch": state["best_epoch"], "state": state["best_state"]}
        history = [json.loads(h) for h in state["history"]]
        start_epoch = state["epoch"] + 1
        # The log is written before the checkpoint: a kill between the two leaves a line the checkpoint
        # does not know. The checkpoint's history is the truth; the log restarts from it.
        log_path.write_text("".join(json.dumps(h) + "\n" for h in history))
    elif log_path.exists():
        log_path.unlink()

    if compile if compile is not None else len(split.train) * config.epochs >= COMPILE_FROM_CRYSTAL_EPOCHS:
        model.compile_training()
    y_norm = torch.from_numpy((y_all - normalizer["mean"]) / normalizer["std"]).float()
    started = time.perf_counter() - (history[-1]["elapsed_s"] if history else 0.0)
    for epoch in range(start_epoch, config.epochs):
        for group in optimizer.param_groups:
            group["lr"] = config.lr * _lr_factor(config, epoch)
        model.train()
        if config.freeze_conv:  # frozen BatchNorms keep their running statistics
            for bn in (*model.bn1, *model.bn2):
                bn.eval()
        t0 = time.perf_counter()
        loss_sum, n_seen = 0.0, 0
        step = epoch * -(-len(split.train) // config.batch_size)  # global step, the same after a resume
        for b in batches(len(split.train), config.batch_size, np.random.default_rng([config.seed, epoch])):
            if len(b) < 2:
                continue  # BatchNorm needs two crystals
            pos = split.train[b]
            out_ = model(graphs.batch(pos))
            loss = _loss(config, out_, y_norm[pos])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if ema is not None:
                _ema_update(ema, model, config.ema_decay, step)
            step += 1
            loss_sum += loss.item() * len(b)
            n_seen += len(b)
        evaluated = ema if ema is not None else model
        val_pred = predict_positions(evaluated, graphs, split.val) * normalizer["std"] + normalizer["mean"]
        val = metrics(val_pred, y_all[split.val])
        if val.mae < best["val_mae"]:
            best = {"val_mae": val.mae, "epoch": epoch, "state": copy.deepcopy(evaluated.state_dict())}
        record = {
            "epoch": epoch + 1, "train_loss": loss_sum / max(n_seen, 1), "val_mae": val.mae, "val_rmse": val.rmse,
            "lr": optimizer.param_groups[0]["lr"], "epoch_s": time.perf_counter() - t0,
            "elapsed_s": time.perf_counter() - started, "best_epoch": best["epoch"] + 1,
        }
        history.append(record)
        with log_path.open("a") as log:
            log.write(json.dumps(record) + "\n")
        _atomic_save(
            {"config": _config_dict(config), "epoch": epoch, "model": model.state_dict(),
             "optimizer": optimizer.state_dict(), "ema": ema.state_dict() if ema is not None else {},
             "best_val_mae": best["val_mae"], "best_epoch": best["epoch"], "best_state": best["state"],
             "history": [json.dumps(h) for h in history]},
            ckpt_path,
        )
        if on_epoch is not None:
            on_epoch(record)
        if config.patience and epoch - best["epoch"] >= config.patience:
            break

    model.load_state_dict(best["state"])
    test_pred = predict_positions(model, graphs, split.test) * normalizer["std"] + normalizer["mean"]
    test = metrics(test_pred, y_all[split.test]) if len(split.test) else None
    training = {
        "data": {"graphs": str(graph_path), "labels": str(labels_path), "labelled": int(len(matched.positions)),
                 "missing_in_labels": matched.missing_in_labels, "missing_in_graphs": matched.missing_in_graphs,
                 "not_finite": matched.not_finite},
        "split": {name: [graphs.ids[p] for p in getattr(split, name)] for name in ("train", "val", "test")},
        "config": _config_dict(config),
        "epochs_run": len(history),
        "best_epoch": best["epoch"] + 1,
        "val_mae": best["val_mae"],
        "test": asdict(test) if test is not None else None,
        "wall_time_s": history[-1]["elapsed_s"] if history else 0.0,
        "finetuned_from": init.training.get("name", "model file") if init is not None else None,
        "command": command,
    }
    model_file = ModelFile.from_model(
        model,
        graph_settings=graphs.graph_settings,
        target=config.target,
        # A model fine-tuned to another target does not inherit the old target's unit.
        unit=unit or (init.unit if init is not None and init.target == config.target else UNITS.get(config.target, "")),
        normalizer=normalizer,
        training=training,
    )
    model_file.save(out)
    return TrainResult(model_file, history)


def _fit_normalizer(y_train: np.ndarray) -> dict:
    return {"mean": float(y_train.mean()), "std": float(y_train.std() or 1.0)}


def _config_dict(config: TrainConfig) -> dict:
    d = asdict(config)
    d["milestones"] = list(d["milestones"])
    return d


@torch.no_grad()
def _ema_update(ema: CrystalGraphNet, model: CrystalGraphNet, decay: float, step: int) -> None:
    """Exponential moving average of the weights and of the BatchNorm running statistics.

    The statistics are averaged like the weights (copying them paired averaged weights with the
    statistics of the latest ones, which made the validated average jump between epochs); integer
    buffers (batch counts) are copied. The decay ramps up as (1 + step) / (10 + step), so early
    averages do not drag the random initialisation along for thousands of steps.
    """
    decay = min(decay, (1.0 + step) / (10.0 + step))
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p, 1.0 - decay)
    for e, b in zip(ema.buffers(), model.buffers()):
        if e.is_floating_point():
            e.lerp_(b, 1.0 - decay)
        else:
            e.copy_(b)
