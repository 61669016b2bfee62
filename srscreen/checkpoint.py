"""Model files: weights plus everything needed to predict with them, stored as data (never pickled code).

One `torch.save` file of a dict holding only tensors, str, int, float, bool, None, lists and dicts, so it
loads with `torch.load(weights_only=True)`:
    schema_version      int, SCHEMA_VERSION
    srscreen_version    str, the version that wrote it
    architecture        dict, CrystalGraphNet constructor arguments (steps, shared, widths, Gaussians)
    state_dict          dict of tensors, including the element feature table (`feature_table`)
    feature_table_id    str, elements.table_id of that table (checked on load)
    graph_settings      dict, {"radius": Å, "max_nbr": int, ...} of the graphs the model expects
    target, unit        str, e.g. "formation_energy_per_atom", "eV/atom"
    normalizer          {"mean": float, "std": float}: prediction = output * std + mean
    training            dict, free-form: data summary, split, epochs, metrics (test MAE), command
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .atomic import replace_when_done
from .elements import load_atom_features, table_id
from .model import CrystalGraphNet

SCHEMA_VERSION = 1
_REQUIRED = (
    "schema_version",
    "srscreen_version",
    "architecture",
    "state_dict",
    "feature_table_id",
    "graph_settings",
    "target",
    "unit",
    "normalizer",
    "training",
)


class ModelFileError(ValueError):
    """A model file that cannot be used; the message is one line naming the file and the reason."""


@dataclass(eq=False)  # tensors have no single truth value: compare fields explicitly
class ModelFile:
    """A trained model as stored on disk; `build_model()` turns it into a network."""

    architecture: dict
    state_dict: dict[str, torch.Tensor] = field(repr=False)
    feature_table_id: str
    graph_settings: dict
    target: str
    unit: str
    normalizer: dict
    training: dict = field(default_factory=dict)
    srscreen_version: str = __version__
    source: str = field(default="model file", repr=False, compare=False)  # for messages only, not saved

    @classmethod
    def from_model(
        cls,
        model: CrystalGraphNet,
        *,
        graph_settings: dict,
        target: str,
        unit: str,
        normalizer: dict,
        training: dict | None = None,
    ) -> ModelFile:
        """Snapshot a model (weights copied to CPU) with what a later `predict` needs to use it."""
        state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        return cls(
            architecture=model.architecture(),
            state_dict=state,
            feature_table_id=table_id(state["feature_table"].numpy()),
            graph_settings=_plain(graph_settings, "graph_settings"),
            target=target,
            unit=unit,
            normalizer={"mean": float(normalizer["mean"]), "std": float(normalizer["std"])},
            training=_plain(training or {}, "training"),
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ModelFile:
        """Read and validate a model file; any problem raises ModelFileError."""
        source = str(path)
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except OSError as exc:
            raise ModelFileError(f"{source}: cannot read model file: {exc.strerror or exc}") from exc
        except Exception as exc:  # torch raises many types for corrupt or foreign files
            raise ModelFileError(f"{source}: not a readable srscreen model file ({_first_line(exc)})") from exc
        model_file = cls._from_payload(payload, source)
        model_file.build_model()  # weights and architecture must agree: fail here, not at predict time
        return model_file

    @classmethod
    def _from_payload(cls, payload: object, source: str) -> ModelFile:
        def fail(reason: str) -> ModelFileError:
            return ModelFileError(f"{source}: {reason}")

        if not isinstance(payload, dict) or "schema_version" not in payload:
            hint = ""
            if isinstance(payload, dict) and {"state_dict", "args", "normalizer"} <= payload.keys():
                hint = "; it looks like an original CGCNN checkpoint: convert it with convert_cgcnn_checkpoint"
            raise fail(f"not a srscreen model file (no schema_version){hint}")
        version = payload["schema_version"]
        if not isinstance(version, int) or version < 1:
            raise fail(f"invalid schema_version {version!r}")
        if version > SCHEMA_VERSION:
            raise fail(
                f"written by a newer srscreen (model file schema {version}, this srscreen "
                f"{__version__} reads up to {SCHEMA_VERSION}); upgrade srscreen"
            )
        missing = [k for k in _REQUIRED if k not in payload]
        if missing:
            raise fail(f"missing keys: {', '.join(missing)}")
        for key in _REQUIRED[1:]:
            kind = str if key in ("srscreen_version", "feature_table_id", "target", "unit") else dict
            if not isinstance(payload[key], kind):
                raise fail(f"{key} should be a {kind.__name__}, got {type(payload[key]).__name__}")
        for key, sub in (("normalizer", ("mean", "std")), ("graph_settings", ("radius", "max_nbr"))):
            absent = [s for s in sub if not isinstance(payload[key].get(s), (int, float))]
            if absent:
                raise fail(f"{key} lacks numeric {', '.join(absent)}")
        table = payload["state_dict"].get("feature_table")
        if not isinstance(table, torch.Tensor):
            raise fail("state_dict has no feature_table")
        if table_id(table.numpy()) != payload["feature_table_id"]:
            raise fail("feature table does not match feature_table_id (file corrupted or edited)")
        return cls(**{k: payload[k] for k in _REQUIRED if k != "schema_version"}, source=source)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write atomically (temporary file then rename): a crash never leaves a half-written model."""
        path = Path(path)
        if not path.parent.is_dir():
            raise ModelFileError(f"{path}: folder {path.parent} does not exist")
        payload = {"schema_version": SCHEMA_VERSION, **_plain(self._payload(), "model file")}
        with replace_when_done(path) as tmp:
            torch.save(payload, tmp)

    def _payload(self) -> dict:
        return {
            "srscreen_version": self.srscreen_version,
            "architecture": self.architecture,
            "state_dict": self.state_dict,
            "feature_table_id": self.feature_table_id,
            "graph_settings": self.graph_settings,
            "target": self.target,
            "unit": self.unit,
            "normalizer": self.normalizer,
            "training": self.training,
        }

    def build_model(self) -> CrystalGraphNet:
        """The network with these weights, in eval mode, on CPU (move it with `.to(device)`)."""
        try:
            model = CrystalGraphNet(feature_table=self.state_dict["feature_table"], **self.architecture)
            model.load_state_dict(self.state_dict)
        except (TypeError, ValueError, RuntimeError, KeyError) as exc:
            raise ModelFileError(f"{self.source}: weights do not fit the architecture ({_first_line(exc)})") from exc
        return model.eval()

    def denormalise(self, output: torch.Tensor) -> torch.Tensor:
        """Network output -> property in `unit`."""
        return output * self.normalizer["std"] + self.normalizer["mean"]


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
    source = str(checkpoint_path)
    try:
        checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
        args, weights = dict(checkpoint["args"]), checkpoint["state_dict"]
        normalizer = {k: float(checkpoint["normalizer"][k]) for k in ("mean", "std")}
    except Exception as exc:
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
    renamed = {re.sub(r"^convs\.(\d+)\.(fc_full|bn1|bn2)\.", r"\2.\1.", k): v for k, v in weights.items()}
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
        target=target,
        unit=unit,
        normalizer=normalizer,
        training={
            "origin": "CGCNN pretrained model (Xie & Grossman, PRL 120, 145301, 2018), converted",
            "checkpoint": Path(checkpoint_path).name,
            "atom_features": Path(atom_features_path).name,
            "epoch": int(checkpoint.get("epoch", -1)),
            "metrics": {"best_val_mae": float(checkpoint.get("best_mae_error", float("nan")))},
            "args": args,
        },
    )


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
    return prefix + lines[0] if lines else type(exc).__name__
