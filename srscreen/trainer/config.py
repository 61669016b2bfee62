"""The training settings: one frozen dataclass, checked before anything runs, saved with the result."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

from srscreen.errors import OptionError

Loss = Literal["mse", "l1", "huber"]
Schedule = Literal["multistep", "cosine", "constant"]
# A resumed run may run longer or stop earlier than first planned; anything else must match.
EXTENSIBLE = frozenset({"epochs", "patience"})
# Taken from the model being fine-tuned, never from the settings.
ARCHITECTURE = frozenset({"steps", "shared", "atom_fea_len", "h_fea_len", "n_h"})
# What fine-tuning changes from training from scratch (as `srscreen finetune` does): a lower constant
# rate, smaller batches, an L1 loss and early stopping, so a few labels do not undo what was learnt.
FINETUNE_DEFAULTS = {"batch_size": 64, "lr": 1e-4, "loss": "l1", "schedule": "constant", "patience": 20}


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


def check_config(config: TrainConfig) -> None:
    """Refuse settings that cannot train (rather than silently training something else)."""
    if config.loss not in ("mse", "l1", "huber"):
        raise OptionError(f"`loss` must be mse, l1 or huber, not {config.loss!r}")
    if config.schedule not in ("multistep", "cosine", "constant"):
        raise OptionError(f"`schedule` must be multistep, cosine or constant, not {config.schedule!r}")
    if config.epochs < 1:
        raise OptionError(f"`epochs` must be at least 1, not {config.epochs}")
    if config.batch_size < 2:
        raise OptionError(f"`batch_size` must be at least 2 (BatchNorm needs two crystals), not {config.batch_size}")
    if not (0 <= config.val_fraction and 0 <= config.test_fraction and config.val_fraction + config.test_fraction < 1):
        raise OptionError(
            f"`val_fraction` {config.val_fraction} and `test_fraction` {config.test_fraction} must be non-negative "
            "and leave a training fraction"
        )
    if config.steps < 1 or config.n_h < 1 or config.atom_fea_len < 1 or config.h_fea_len < 1:
        raise OptionError("`steps`, `n_h`, `atom_fea_len` and `h_fea_len` must be at least 1")
    if config.lr <= 0 or config.warmup_epochs < 0 or config.patience < 0 or not (0 <= config.ema_decay < 1):
        raise OptionError("`lr` must be positive, `warmup_epochs` and `patience` non-negative, `ema_decay` in [0, 1)")


def config_dict(config: TrainConfig) -> dict:
    """The settings as JSON-ready data (the checkpoint compares them key by key on resume)."""
    d = asdict(config)
    d["milestones"] = list(d["milestones"])
    return d
