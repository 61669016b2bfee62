"""The training settings: one frozen dataclass, checked before anything runs, saved with the result."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

from srscreen.errors import OptionError
from srscreen.model.columns import check_target_names

Loss = Literal["mse", "l1", "huber"]
Schedule = Literal["multistep", "cosine", "constant"]
# A resumed run may run longer or stop earlier than first planned; anything else must match.
EXTENSIBLE = frozenset({"epochs", "patience"})
# Taken from the model being fine-tuned, never from the settings.
ARCHITECTURE = frozenset({"steps", "shared", "atom_fea_len", "h_fea_len", "n_h", "scale_head"})
# What fine-tuning changes from training from scratch (as `srscreen finetune` does): a lower constant
# rate, smaller batches, an L1 loss and early stopping, so a few labels do not undo what was learnt.
FINETUNE_DEFAULTS = {"batch_size": 64, "lr": 1e-4, "loss": "l1", "schedule": "constant", "patience": 20}
# The weights a target's loss may take (`target_weights`); only their ratios matter to Adam.
WEIGHT_RANGE = (1e-6, 1e6)


@dataclass(frozen=True)
class TrainConfig:
    """Every choice that shapes the result; stored in the checkpoint and the model file.

    `target` is one label column or a tuple of them: one network with a head per target (`targets`),
    trained on the sum of each target's loss on its normalised values, times `target_weights` (default
    1 each), over the crystals labelled for it. `scale_head` adds a head per target that learns the size
    of its errors (a Laplace scale, from the errors of the mean, which it does not change): predictions
    then carry a calibrated `<target>_std`. `new_heads` lets fine-tuning add targets the base model lacks.
    """

    target: str | tuple[str, ...]
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
    target_weights: tuple[float, ...] = ()
    scale_head: bool = False
    new_heads: bool = False

    def __post_init__(self) -> None:
        targets = (self.target,) if isinstance(self.target, str) else tuple(self.target)
        object.__setattr__(self, "target", targets[0] if len(targets) == 1 else targets)
        object.__setattr__(self, "target_weights", tuple(float(w) for w in self.target_weights))

    @property
    def targets(self) -> tuple[str, ...]:
        return (self.target,) if isinstance(self.target, str) else self.target

    @property
    def weights(self) -> tuple[float, ...]:
        return self.target_weights or (1.0,) * len(self.targets)


def check_config(config: TrainConfig) -> None:
    """Refuse settings that cannot train (rather than silently training something else)."""
    if not config.targets or len(set(config.targets)) != len(config.targets):
        raise OptionError(f"`target` must name distinct label columns, not {', '.join(map(repr, config.targets)) or 'none'}")
    check_target_names(config.targets)  # blank or reserved names
    # Weights scale float32 losses and Adam's squared gradients: far outside [1e-6, 1e6] those overflow to inf
    # (1e308 diverged at once) or vanish under Adam's eps (the head silently stops learning).
    if config.target_weights and (len(config.target_weights) != len(config.targets) or
                                  not all(WEIGHT_RANGE[0] <= w <= WEIGHT_RANGE[1] for w in config.target_weights)):
        raise OptionError(f"`target_weights` must be one number from {WEIGHT_RANGE[0]:g} to {WEIGHT_RANGE[1]:g} per target "
                          f"({len(config.targets)} target{'s' if len(config.targets) > 1 else ''}), "
                          f"not {', '.join(map(str, config.target_weights))}")
    if config.loss not in ("mse", "l1", "huber"):
        raise OptionError(f"`loss` must be mse, l1 or huber, not {config.loss!r}")
    if config.schedule not in ("multistep", "cosine", "constant"):
        raise OptionError(f"`schedule` must be multistep, cosine or constant, not {config.schedule!r}")
    if config.epochs < 1:
        raise OptionError(f"`epochs` must be at least 1, not {config.epochs}")
    if any(m < 1 for m in config.milestones):
        raise OptionError(f"`milestones` must be epochs of 1 or more, not {', '.join(map(str, config.milestones))}")
    if config.batch_size < 2:
        raise OptionError(f"`batch_size` must be at least 2 (BatchNorm needs two crystals), not {config.batch_size}")
    if not (0 <= config.val_fraction and 0 <= config.test_fraction and config.val_fraction + config.test_fraction < 1):
        raise OptionError(
            f"`val_fraction` {config.val_fraction} and `test_fraction` {config.test_fraction} must be non-negative "
            "and leave a training fraction"
        )
    # One setting a message, so that a command names only a flag it has (finetune has no --ema-decay);
    # comparisons that NaN fails, so NaN is refused with the rest.
    # Sizes have ceilings far above any useful network: beyond them a typo's network takes all memory
    # and the system kills the run without a word.
    for name, ok, need in (
        ("steps", 1 <= config.steps <= 64, "from 1 to 64"), ("n_h", 1 <= config.n_h <= 16, "from 1 to 16"),
        ("atom_fea_len", 1 <= config.atom_fea_len <= 2048, "from 1 to 2048"),
        ("h_fea_len", 1 <= config.h_fea_len <= 8192, "from 1 to 8192"),
        ("seed", 0 <= config.seed < 2**63, "from 0 to 2**63 - 1"),
        ("lr", 0 < config.lr < float("inf"), "a positive finite number"),
        ("weight_decay", 0 <= config.weight_decay < float("inf"), "a non-negative finite number"),
        ("warmup_epochs", config.warmup_epochs >= 0, "non-negative"), ("patience", config.patience >= 0, "non-negative"),
        ("ema_decay", 0 <= config.ema_decay < 1, "in [0, 1)"),
    ):
        if not ok:
            raise OptionError(f"`{name}` must be {need}, not {getattr(config, name)}")


def config_dict(config: TrainConfig) -> dict:
    """The settings as JSON-ready data (the checkpoint compares them key by key on resume)."""
    d = asdict(config)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
