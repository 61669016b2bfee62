"""Model files: weights plus everything needed to predict with them, stored as data (never pickled code).

One `torch.save` file of a dict holding only tensors, str, int, float, bool, None, lists and dicts, so it
loads with `torch.load(weights_only=True)`:
    schema_version      int, SCHEMA_VERSION
    srscreen_version    str, the version that wrote it
    architecture        dict, CrystalGraphNet constructor arguments (steps, shared, widths, Gaussians,
                        n_targets, scale_head)
    state_dict          dict of tensors, including the element feature table (`feature_table`)
    feature_table_id    str, elements.table_id of that table (checked on load)
    graph_settings      dict, {"radius": Å, "max_nbr": int, ...} of the graphs the model expects
    targets, units      lists of str, one per head, e.g. ["formation_energy_per_atom", "band_gap"], ["eV/atom", "eV"]
    normalizers         list of {"mean": float, "std": float}, one per target: prediction = output * std + mean
    training            dict, free-form: data summary, split, epochs, metrics (test MAE per target), command
    calibration         dict, where the model gives a spread (an ensemble, or a scale head): {"scale": {target:
                        float}, ...}, the factor that turns its raw spread into a calibrated standard deviation
    ensemble            dict, only in an ensemble: {"members": [{"state_dict", "normalizers"}, ...]}; the
                        top-level state_dict and normalizers are the first member's, so every member shares
                        one architecture, table and targets
    digest              str, "sha256:<64 hex>" of everything above (schema 2 on; see below)

Schema 4 added several targets per file and the calibration of scale heads. Files of schemas 1-3 (one
target: `target`, `unit`, `normalizer`; the head's weights as conv_to_fc, fcs, fc_out; an ensemble's
calibration inside `ensemble`) load as one-target models of the same weights (`_upgrade_legacy`).

Damage is detected, not guessed at. `digest` is SHA-256 over a canonical encoding of the whole payload
except `digest` itself (`payload_digest`): dicts in sorted key order, each value tagged with its type
and length-prefixed; floats as `float.hex`; every tensor, wherever it sits, as dtype, shape and its raw
C-order bytes in native (little-endian) order. `load` checks it before anything else is read from the
payload, so a file whose bytes changed after `save` either fails to unpickle ("not a readable srscreen
model file: damaged, ...") or fails the digest ("damaged model file (digest mismatch ...)"): it never
loads different weights or metadata. Either is one `ModelFileError` line naming the file; the check
costs ~20 ms on a pretrained model, mostly its training metadata (the split's ids).
Schema 1 files (srscreen before digests) have no digest and still load, unchecked beyond the
`feature_table_id` and architecture checks they always had; re-save them (`ModelFile.load(p).save(p)`)
to add one. A schema-1 payload that carries a digest is checked like any other (a version byte damaged
from 2 to 1 must not switch the check off); a schema-2 payload without one is refused as damaged.
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from srscreen import __version__
from srscreen.io.atomic_write import replace_when_done
from srscreen.graph.elements import load_atom_features, table_id
from srscreen.errors import ModelFileError, OptionError
from srscreen.model.columns import check_target_names
from srscreen.model.ensemble import SPREAD_DDOF, EnsembleNet
from srscreen.model.network import CrystalGraphNet

SCHEMA_VERSION = 4  # 2: `digest`; 3: `ensemble`; 4: several targets, `calibration` of any spread
DIGEST_ALGORITHM = "sha256"
_REQUIRED = (
    "schema_version",
    "srscreen_version",
    "architecture",
    "state_dict",
    "feature_table_id",
    "graph_settings",
    "targets",
    "units",
    "normalizers",
    "training",
)
# Targets that are never negative: a model file trained by srscreen carries their bound, and a legacy
# one gets it on loading (the v2 band-gap model gave metals gaps of -0.005 eV).
NON_NEGATIVE = ("band_gap", "gap")
# Formation energies per atom (what `predict --hull` places against a hull): measured from each element's
# own lowest-energy phase, so never negative for a crystal of one element (all 157 elemental crystals of
# the Materials Project set are >= 0). Predictions of those are floored at 0 (`target_columns`), else a
# polymorph of W at -0.1 eV/atom would rank as surely stable.
FORMATION_ENERGY_TARGETS = ("formation_energy_per_atom", "e_form")
# A legacy (schema 1-3) head's weights, which schema 4 keeps as the first of `heads`.
_LEGACY_HEAD = re.compile(r"^(conv_to_fc|fcs|fc_out)\.")




@dataclass(eq=False)  # tensors have no single truth value: compare fields explicitly
class ModelFile:
    """A trained model as stored on disk; `build_model()` turns it into a network."""

    architecture: dict
    state_dict: dict[str, torch.Tensor] = field(repr=False)
    feature_table_id: str
    graph_settings: dict
    targets: list[str]
    units: list[str]
    normalizers: list[dict]
    training: dict = field(default_factory=dict)
    # An ensemble's members ({"state_dict", "normalizers"} each, the first being the fields above); empty
    # for a single model.
    members: list[dict] = field(default_factory=list, repr=False)
    # How the raw spread (an ensemble's, a scale head's, or both) becomes a standard deviation:
    # {"scale": {target: float}, ...}; empty for a model without a spread.
    calibration: dict = field(default_factory=dict)
    # Physical bounds of a target's values, {target: [low or None, high or None]} (a band gap is never
    # negative): predictions are clipped to them.
    bounds: dict = field(default_factory=dict)
    srscreen_version: str = __version__
    source: str = field(default="model file", repr=False, compare=False)  # for messages only, not saved

    @classmethod
    def from_model(
        cls,
        model: CrystalGraphNet,
        *,
        graph_settings: dict,
        targets: list[str],
        units: list[str],
        normalizers: list[dict],
        training: dict | None = None,
        calibration: dict | None = None,
        bounds: dict | None = None,
    ) -> ModelFile:
        """Snapshot a model (weights copied to CPU) with what a later `predict` needs to use it."""
        if not len(targets) == len(units) == len(normalizers) == model.n_targets:
            raise ValueError(f"{model.n_targets} heads need as many targets, units and normalizers")
        state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        return cls(
            architecture=model.architecture(),
            state_dict=state,
            feature_table_id=table_id(state["feature_table"].numpy()),
            graph_settings=_plain(graph_settings, "graph_settings"),
            targets=list(targets),
            units=list(units),
            normalizers=[{"mean": float(n["mean"]), "std": float(n["std"])} for n in normalizers],
            training=_plain(training or {}, "training"),
            calibration=_plain(calibration or {}, "calibration"),
            bounds=_plain(bounds or {}, "bounds"),
        )

    @property
    def target(self) -> str:
        """The target of a one-target model (`targets` lists a multi-target model's)."""
        return self._only(self.targets, "target")

    @property
    def unit(self) -> str:
        """The unit of a one-target model's target (`units` for a multi-target model)."""
        return self._only(self.units, "unit")

    @property
    def normalizer(self) -> dict:
        """The normaliser of a one-target model's head (`normalizers` for a multi-target model)."""
        return self._only(self.normalizers, "normalizer")

    def _only(self, values: list, what: str):
        if len(values) != 1:
            raise OptionError(f"{self.source} predicts {len(values)} targets ({', '.join(self.targets)}): "
                              f"use its `{what}s`")
        return values[0]

    def unit_of(self, target: str) -> str:
        return self.units[self.targets.index(target)]

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ModelFile:
        """Read and validate a model file; any problem raises ModelFileError."""
        source = str(path)
        try:
            file = open(path, "rb")  # noqa: SIM115 - closed below; apart so that only its errors read "cannot read"
        except OSError as exc:
            raise ModelFileError(f"{source}: cannot read model file: {exc.strerror or exc}") from exc
        try:
            # Damaged pickles can make torch warn (odd protocol, deprecated storage types) before it fails:
            # the failure is the message; its warnings would be extra lines on stderr.
            with file, warnings.catch_warnings():
                warnings.simplefilter("ignore")
                payload = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for corrupt or foreign files (OSError too: bad offsets)
            raise ModelFileError(
                f"{source}: not a readable srscreen model file: damaged, cut short or another kind of file "
                f"({_first_line(exc)})"
            ) from exc
        try:
            model_file = cls._from_payload(payload, source)
            model_file.build_network()  # weights and architecture must agree: fail here, not at predict time
        except ModelFileError:
            raise
        except Exception as exc:  # a schema-1 file (no digest) can be damaged into any shape: still one line
            raise ModelFileError(f"{source}: not a usable srscreen model file ({_first_line(exc)})") from exc
        return model_file

    @classmethod
    def _from_payload(cls, payload: object, source: str) -> ModelFile:
        def fail(reason: str) -> ModelFileError:
            return ModelFileError(f"{source}: {reason}")

        if not isinstance(payload, dict) or "schema_version" not in payload:
            hint = ""
            if isinstance(payload, dict) and {"state_dict", "args", "normalizer"} <= payload.keys():
                hint = "; it looks like an original CGCNN checkpoint: convert it with convert_cgcnn_checkpoint"
            elif isinstance(payload, dict) and {"config", "epoch", "optimizer", "best_state"} <= payload.keys():
                hint = ("; it is a training checkpoint (srscreen train/finetune --resume continues it; the model "
                        "file is written beside it, without .ckpt, when training ends)")
            raise fail(f"not a srscreen model file (no schema_version){hint}")
        version = payload["schema_version"]
        damage = _digest_problem(payload)  # first: nothing below may act on bytes that changed since `save`
        if isinstance(version, int) and version > SCHEMA_VERSION:
            raise fail(
                f"written by a newer srscreen (model file schema {version}, this srscreen "
                f"{__version__} reads up to {SCHEMA_VERSION}); upgrade srscreen"
                + (f" (or the file is damaged: {damage})" if damage and "digest" in payload else "")
            )
        if damage:
            raise fail(f"damaged model file ({damage})")
        if not isinstance(version, int) or version < 1:
            raise fail(f"invalid schema_version {version!r}")
        if version < 4:
            payload = _upgrade_legacy(payload)
        missing = [k for k in _REQUIRED if k not in payload]
        if missing:
            raise fail(f"missing keys: {', '.join(missing)}")
        for key in _REQUIRED[1:]:
            kind = (str if key in ("srscreen_version", "feature_table_id") else
                    list if key in ("targets", "units", "normalizers") else dict)
            if not isinstance(payload[key], kind):
                raise fail(f"{key} should be a {kind.__name__}, got {type(payload[key]).__name__}")
        targets, units, normalizers = payload["targets"], payload["units"], payload["normalizers"]
        n_targets = payload["architecture"].get("n_targets", 1)
        if not (len(targets) == len(units) == len(normalizers) == n_targets >= 1) or len(set(targets)) != len(targets) \
                or not all(isinstance(t, str) for t in [*targets, *units]):
            raise fail(f"targets, units and normalizers should be {n_targets} distinct names, units and normalizers")
        for key, sub in [*(("normalizers", n) for n in normalizers), ("graph_settings", payload["graph_settings"])]:
            absent = [k for k in (("mean", "std") if key == "normalizers" else ("radius", "max_nbr"))
                      if not isinstance(sub, dict) or not isinstance(sub.get(k), (int, float))]
            if absent:
                raise fail(f"{key} lacks numeric {', '.join(absent)}")
        table = payload["state_dict"].get("feature_table")
        if not isinstance(table, torch.Tensor):
            raise fail("state_dict has no feature_table")
        if table_id(table.numpy()) != payload["feature_table_id"]:
            raise fail("feature table does not match feature_table_id (file corrupted or edited)")
        members = payload.get("ensemble", {"members": []}).get("members")
        calibration = payload.get("calibration", {})
        bounds = payload.get("bounds", {})
        if not isinstance(bounds, dict) or any(
                t not in targets or not isinstance(b, list) or len(b) != 2 or
                not all(x is None or isinstance(x, float) for x in b) for t, b in bounds.items()):
            raise fail("bounds should map targets to [low, high] (numbers or None)")
        if not isinstance(members, list) or any(
                not isinstance(m, dict) or not isinstance(m.get("state_dict"), dict) or
                not isinstance(m.get("normalizers"), list) or len(m["normalizers"]) != len(targets) or
                not all(isinstance(n.get(k), float) for n in m["normalizers"] for k in ("mean", "std")) for m in members):
            raise fail("ensemble should hold members (state_dict and normalizers each)")
        scales = calibration.get("scale") if isinstance(calibration, dict) else None
        if calibration and (not isinstance(scales, dict) or sorted(scales) != sorted(targets) or
                            not all(isinstance(v, float) for v in scales.values())):
            raise fail("calibration should give a numeric scale per target")
        # A target that is never negative keeps that bound even in files written without it (v2's band gap).
        bounds = {**{t: [0.0, None] for t in targets if t in NON_NEGATIVE}, **bounds}
        return cls(**{k: payload[k] for k in _REQUIRED if k != "schema_version"}, members=members,
                   calibration=calibration, bounds=bounds, source=source)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write atomically (temporary file then rename): a crash never leaves a half-written model."""
        path = Path(path)
        if not path.parent.is_dir():
            raise ModelFileError(f"{path}: folder {path.parent} does not exist")
        payload = {"schema_version": SCHEMA_VERSION, **_plain(self._payload(), "model file")}
        payload["digest"] = payload_digest(payload)
        with replace_when_done(path) as tmp:
            torch.save(payload, tmp)

    def _payload(self) -> dict:
        return {
            "srscreen_version": self.srscreen_version,
            "architecture": self.architecture,
            "state_dict": self.state_dict,
            "feature_table_id": self.feature_table_id,
            "graph_settings": self.graph_settings,
            "targets": self.targets,
            "units": self.units,
            "normalizers": self.normalizers,
            "training": self.training,
            **({"calibration": self.calibration} if self.calibration else {}),
            **({"bounds": self.bounds} if self.bounds else {}),
            **({"ensemble": {"members": self.members}} if self.members else {}),
        }

    @property
    def n_members(self) -> int:
        """1 for a single model, N for an ensemble of N."""
        return max(1, len(self.members))

    def build_model(self, state_dict: dict[str, torch.Tensor] | None = None) -> CrystalGraphNet:
        """The network with these weights (or a member's `state_dict`), in eval mode, on CPU (move it
        with `.to(device)`); for an ensemble, the first member."""
        try:
            model = CrystalGraphNet(feature_table=self.state_dict["feature_table"], **self.architecture)
            model.load_state_dict(self.state_dict if state_dict is None else state_dict)
        except (TypeError, ValueError, RuntimeError, KeyError) as exc:
            raise ModelFileError(f"{self.source}: weights do not fit the architecture ({_first_line(exc)})") from exc
        return model.eval()

    def build_network(self) -> CrystalGraphNet | EnsembleNet:
        """What `predict` runs: the model, or for an ensemble all members as one batched network whose
        output has one row per member."""
        if not self.members:
            return self.build_model()
        return EnsembleNet([self.build_model(m["state_dict"]) for m in self.members])

    @property
    def has_std(self) -> bool:
        """Whether the model gives a spread: an ensemble, or a scale head."""
        return bool(self.members) or bool(self.architecture.get("scale_head"))

    def test_metrics(self) -> dict[str, dict]:
        """Test metrics per target as training recorded them ({} if none); files of schemas 1-3 kept one
        target's metrics unkeyed."""
        test = self.training.get("test") or {}
        return {self.targets[0]: test} if "mae" in test else test

    @property
    def n_heads(self) -> int:
        """Outputs per crystal of the network: a head per target, and a scale head per target if any."""
        return len(self.targets) * (2 if self.architecture.get("scale_head") else 1)

    def select(self, targets: list[str]) -> ModelFile:
        """The same model predicting only `targets` (heads of the others dropped, every member's): a model
        trained with auxiliary targets ships with the ones users asked for."""
        missing = [t for t in targets if t not in self.targets]
        if missing or not targets:
            raise OptionError(f"{self.source} predicts {', '.join(self.targets)}; cannot select {', '.join(missing) or 'none'}")
        picks = {self.targets.index(t): i for i, t in enumerate(targets)}
        scale_head = bool(self.architecture.get("scale_head"))

        def heads(state: dict) -> dict:
            return renumber_heads(state, picks, len(self.targets), len(targets), scale_head)

        def of(values: list) -> list:
            return [values[self.targets.index(t)] for t in targets]

        # Per-target entries of the calibration ("scale", "validation_crystals") keep the selected targets.
        calibration = {k: {t: v[t] for t in targets} if isinstance(v, dict) else v for k, v in self.calibration.items()}
        return replace(self, architecture={**self.architecture, "n_targets": len(targets)},
                       state_dict=heads(self.state_dict), targets=list(targets), units=of(self.units),
                       normalizers=of(self.normalizers),
                       members=[{"state_dict": heads(m["state_dict"]), "normalizers": of(m["normalizers"])}
                                for m in self.members],
                       calibration=calibration, bounds={t: b for t, b in self.bounds.items() if t in targets})

    def member(self, index: int) -> ModelFile:
        """One member of an ensemble as a model of its own (its spread, if any, uncalibrated)."""
        if not self.members:
            return replace(self, calibration={})
        chosen = self.members[index]
        return replace(self, state_dict=chosen["state_dict"], normalizers=chosen["normalizers"], members=[],
                       calibration={})

    def without_scale_heads(self) -> ModelFile:
        """The model with every member's scale heads dropped: an ensemble's spread is then its members'
        alone (uncalibrated: scale 1 until `calibrate`), a single model has none."""
        n = len(self.targets)
        picks = {i: i for i in range(n)}

        def heads(state: dict) -> dict:
            return renumber_heads(state, picks, n, n, False)

        return replace(self, architecture={**self.architecture, "scale_head": False}, state_dict=heads(self.state_dict),
                       members=[{**m, "state_dict": heads(m["state_dict"])} for m in self.members],
                       calibration={"scale": {t: 1.0 for t in self.targets}} if self.members else {})

    def fast(self) -> ModelFile:
        """The first member's predictions of the targets at the least cost: no other members, no scale heads,
        so no `<target>_std` columns (what `predict --fast` runs)."""
        return self.member(0).without_scale_heads()

    def values(self, output: torch.Tensor, elemental: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Network output -> the columns this model adds to a ranking (`columns`): each target in its unit,
        and where the model gives a spread, `<target>_std`, its calibrated standard deviation
        (`calibration_scale`). `elemental` (bool per crystal, `Graphs.elemental`) marks crystals of one
        element, whose FORMATION_ENERGY_TARGETS are floored at 0.

        `output` is (crystals, heads), or (members, crystals, heads) for an ensemble. The raw spread
        combines what the model has: the members' disagreement (sample variance, ddof 1) and the
        scale heads' Laplace variance 2b², averaged over members; `calibration` scales it per target."""
        members = output if self.members else output.unsqueeze(0)
        normalizers = [m["normalizers"] for m in self.members] or [self.normalizers]
        values, columns = target_columns(members, normalizers, self.targets, self.bounds, elemental)
        if not self.has_std:
            return columns
        variance = values.var(0, correction=SPREAD_DDOF) if self.members else torch.zeros_like(values[0])
        if self.architecture.get("scale_head"):
            std = values.new_tensor([[n["std"] for n in member] for member in normalizers]).unsqueeze(1)
            variance = variance + (2 * (members[..., len(self.targets):].exp() * std).square()).mean(0)
        scales = self.calibration.get("scale", {})
        for i, t in enumerate(self.targets):
            columns[f"{t}_std"] = variance[..., i].sqrt() * scales.get(t, 1.0)
        return columns

    @property
    def columns(self) -> list[str]:
        """The ranking columns `values` fills, each target's std right after it: the same order whether the
        targets come from one multi-target file or from one file each, so scripts that read by position hold."""
        return [c for t in self.targets for c in ((t, f"{t}_std") if self.has_std else (t,))]


def renumber_heads(state: dict, picks: dict[int, int], n_old: int, n_new: int, scale_head: bool) -> dict:
    """A state dict with head `old` of an `n_old`-target network as head `new` of an `n_new`-target one, for
    each old: new of `picks` (and their scale heads, n_targets further on); other heads are left out."""
    moves = {**picks, **({n_old + o: n_new + n for o, n in picks.items()} if scale_head else {})}
    out = {}
    for key, value in state.items():
        if not key.startswith("heads."):
            out[key] = value
            continue
        _, index, rest = key.split(".", 2)
        if int(index) in moves:
            out[f"heads.{moves[int(index)]}.{rest}"] = value
    return out


def target_columns(members: torch.Tensor, normalizers: list[list[dict]], targets: list[str], bounds: dict,
                   elemental: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(members, crystals, heads) normalised outputs -> each member's targets in their units (members,
    crystals, targets), and per target their mean clipped to its bounds, and where `elemental` (bool per
    crystal) marks a crystal of one element, a FORMATION_ENERGY_TARGETS one floored at 0: the one
    denormalisation, which `ModelFile.values` and training's validation share, so a metric is of what
    `predict` prints."""
    std, mean = (members.new_tensor([[n[k] for n in member] for member in normalizers]).unsqueeze(1)
                 for k in ("std", "mean"))
    values = members[..., : len(targets)] * std + mean
    columns = {t: within_bounds(values[..., i].mean(0), bounds.get(t)) for i, t in enumerate(targets)}
    for t in FORMATION_ENERGY_TARGETS:
        if t in columns and elemental is not None:
            columns[t] = torch.where(elemental, columns[t].clamp(min=0.0), columns[t])
    return values, columns


def within_bounds(values: torch.Tensor, bounds: list | None) -> torch.Tensor:
    """`values` clipped to a target's [low, high] (either None: open); unchanged without bounds."""
    if not bounds:
        return values
    return values.clamp(min=bounds[0], max=bounds[1]) if bounds != [None, None] else values


def convert_cgcnn_checkpoint(
    checkpoint_path: str | os.PathLike[str],
    atom_features_path: str | os.PathLike[str],
    target: str,
    unit: str,
    *,
    radius: float = 8.0,
    max_nbr: int = 12,
    gaussian_step: float = 0.2,
) -> ModelFile:
    """An original CGCNN (txie-93/cgcnn) regression checkpoint as a srscreen model file.

    CGCNN does not save its graph settings; the defaults are those of its code and pretrained models.
    Its `convs.N.{fc_full,bn1,bn2}` become `{fc_full,bn1,bn2}.N` of a stacked (shared=False) network.
    """
    check_target_names([target])
    source = str(checkpoint_path)
    checkpoint = None
    try:
        checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
        args, weights = dict(checkpoint["args"]), checkpoint["state_dict"]
        normalizer = {k: float(checkpoint["normalizer"][k]) for k in ("mean", "std")}
    except Exception as exc:
        if isinstance(checkpoint, dict) and "schema_version" in checkpoint:  # bound above once torch.load read it
            raise ModelFileError(f"{source}: a srscreen model file already, not a CGCNN checkpoint: give it to "
                                 "predict with --model as it is") from None
        raise ModelFileError(f"{source}: not a readable CGCNN checkpoint ({_first_line(exc)})") from exc
    if args.get("task", "regression") != "regression":
        raise ModelFileError(f"{source}: only regression checkpoints convert (task is {args.get('task')!r})")

    model = CrystalGraphNet(
        feature_table=load_atom_features(atom_features_path),
        steps=int(args["n_conv"]),
        shared=False,
        atom_fea_len=int(args["atom_fea_len"]),
        h_fea_len=int(args["h_fea_len"]),
        n_h=int(args["n_h"]),
        radius=radius,
        gaussian_step=gaussian_step,
    )
    renamed = _legacy_head_keys({re.sub(r"^convs\.(\d+)\.(fc_full|bn1|bn2)\.", r"\2.\1.", k): v
                                 for k, v in weights.items()})
    state = model.state_dict()
    for key, value in renamed.items():
        if key not in state or state[key].shape != value.shape:
            raise ModelFileError(f"{source}: unexpected weight {key} {tuple(value.shape)} for this architecture")
        state[key] = value
    # Older torch saved BatchNorm without num_batches_tracked, which does not affect predictions.
    unset = [k for k in state if k not in renamed and k != "feature_table" and not k.endswith("num_batches_tracked")]
    if unset:
        raise ModelFileError(f"{source}: checkpoint lacks weights {', '.join(unset)}")
    model.load_state_dict(state)
    return ModelFile.from_model(
        model,
        graph_settings={"radius": radius, "max_nbr": max_nbr},
        targets=[target],
        units=[unit],
        normalizers=[normalizer],
        training={
            "origin": "CGCNN pretrained model (Xie & Grossman, PRL 120, 145301, 2018), converted",
            "checkpoint": Path(checkpoint_path).name,
            "atom_features": Path(atom_features_path).name,
            "epoch": int(checkpoint.get("epoch", -1)),
            "metrics": {"best_val_mae": float(checkpoint.get("best_mae_error", float("nan")))},
            "args": args,
        },
    )


def _legacy_head_keys(state: dict) -> dict:
    """One-head weights named as CGCNN and schemas 1-3 name them (conv_to_fc, fcs, fc_out) as `heads.0`."""
    return {_LEGACY_HEAD.sub(r"heads.0.\1.", k): v for k, v in state.items()}


def _upgrade_legacy(payload: dict) -> dict:
    """A schema 1-3 payload (one target) in schema 4's layout; its digest was checked before."""
    if not all(k in payload for k in ("target", "unit", "normalizer", "state_dict")):
        return payload  # the missing keys are reported as schema 4's
    upgraded = {k: v for k, v in payload.items() if k not in ("target", "unit", "normalizer", "ensemble")}
    upgraded.update(targets=[payload["target"]], units=[payload["unit"]], normalizers=[payload["normalizer"]],
                    state_dict=_legacy_head_keys(payload["state_dict"]))
    ensemble = payload.get("ensemble")
    if isinstance(ensemble, dict):
        members = ensemble.get("members")
        upgraded["ensemble"] = {"members": [
            {"state_dict": _legacy_head_keys(m["state_dict"]), "normalizers": [m["normalizer"]]}
            if isinstance(m, dict) and isinstance(m.get("state_dict"), dict) and "normalizer" in m else m
            for m in members] if isinstance(members, list) else members}
        calibration = ensemble.get("calibration")
        scale = calibration.get("scale") if isinstance(calibration, dict) else None
        upgraded["calibration"] = {**calibration, "scale": {payload["target"]: scale}} if isinstance(scale, float) \
            else calibration
    return upgraded


def payload_digest(payload: dict) -> str:
    """"sha256:<hex>" of a model file payload, leaving out its `digest` (the encoding: module docstring)."""
    parts: list[bytes] = []
    _encode({k: v for k, v in payload.items() if k != "digest"}, parts)
    return f"{DIGEST_ALGORITHM}:{hashlib.new(DIGEST_ALGORITHM, b''.join(parts)).hexdigest()}"


def _encode(value: object, parts: list[bytes]) -> None:
    """Append `value` to `parts` as type tag, length and content: equal encodings mean equal values and types."""

    def put(tag: bytes, data: bytes) -> None:
        parts.append(b"%s%d:" % (tag, len(data)))
        parts.append(data)

    if type(value) is str:  # first: most values are strings (a training split's ids)
        put(b"s", value.encode("utf-8", "surrogatepass"))
    elif isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous()
        put(b"T", f"{tensor.dtype} {tuple(tensor.shape)}".encode())
        # As bytes, not numpy: numpy has no bfloat16 and friends. Native (little-endian) byte order.
        put(b"t", tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, dict):
        put(b"d", str(len(value)).encode())
        for key in sorted(value, key=lambda k: (type(k).__name__, str(k))):
            _encode(key, parts)
            _encode(value[key], parts)
    elif isinstance(value, (list, tuple)):
        put(b"l", str(len(value)).encode())
        for item in value:
            _encode(item, parts)
    elif value is None or isinstance(value, bool):
        put(b"c", repr(value).encode())
    elif isinstance(value, int):
        put(b"i", str(value).encode())
    elif isinstance(value, float):
        put(b"f", value.hex().encode())
    elif isinstance(value, str):
        put(b"s", value.encode("utf-8", "surrogatepass"))
    else:
        raise TypeError(f"{type(value).__name__} cannot be in a model file")


def _digest_problem(payload: dict) -> str | None:
    """Why `payload` fails its digest (one line), or None if it passes or predates digests (schema 1)."""
    stored = payload.get("digest")
    if stored is None:
        return None if payload.get("schema_version") == 1 else "no digest"
    if not isinstance(stored, str) or not stored.startswith(f"{DIGEST_ALGORITHM}:"):
        return f"digest {_short(stored)} is not a {DIGEST_ALGORITHM} digest"
    try:
        computed = payload_digest(payload)
    except Exception as exc:  # a damaged payload can hold anything weights_only loading allows
        return f"cannot compute its digest: {_first_line(exc)}"
    if computed != stored:
        return f"digest mismatch: stored {_short(stored)}, computed {_short(computed)}"
    return None


def _short(value: object) -> str:
    """A stored value for a one-line message: printable, at most ~30 characters."""
    text = ascii(value) if not isinstance(value, str) else ascii(value)[1:-1]
    return text if len(text) <= 30 else text[:27] + "..."


def _plain(value: object, where: str) -> object:
    """`value` with numpy scalars made Python ones; anything weights_only loading would refuse raises."""
    if isinstance(value, torch.Tensor) or value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        bad = [k for k in value if not isinstance(k, str)]
        if bad:
            raise TypeError(f"{where}: dict keys must be str, got {bad[0]!r}")
        return {k: _plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise TypeError(f"{where}: {type(value).__name__} cannot be stored in a model file (data only)")


def _first_line(exc: BaseException) -> str:
    """The informative line of an exception; torch's weights-only refusals bury it under boilerplate."""
    text = str(exc)
    marker = "WeightsUnpickler error:"
    prefix = ""
    if marker in text:
        text, prefix = text.split(marker, 1)[1], "refused by the weights-only loader: "
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    if isinstance(exc, LookupError):  # KeyError(231) reads "231": say what it was
        prefix += f"{type(exc).__name__}: "
    return prefix + lines[0]
