"""Model files: a saved model predicts what it predicted before, loads as data only, fails in one line,
and an original CGCNN checkpoint converts into a model that predicts what CGCNN's own code predicts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from srscreen.batch import collate
from srscreen.checkpoint import SCHEMA_VERSION, ModelFile, ModelFileError, convert_cgcnn_checkpoint
from srscreen.model import CrystalGraphNet

REPO_ROOT = Path(__file__).resolve().parents[1]
CGCNN_REFERENCE = REPO_ROOT.parent / "shared" / "reference" / "cgcnn"
RADIUS, MAX_NBR = 8.0, 12


def small_graphs(sizes: list[int], seed: int, elements: list[int]) -> dict[str, np.ndarray]:
    """Random but valid CSR graphs: local indices, ascending distances, a few atoms padded as CGCNN pads."""
    rng = np.random.default_rng(seed)
    n = sum(sizes)
    nbr_idx = np.concatenate([rng.integers(0, s, (s, MAX_NBR)) for s in sizes]).astype(np.int32)
    nbr_dist = np.sort(rng.uniform(1.8, 7.9, (n, MAX_NBR)), axis=1).astype(np.float32)
    for row in rng.choice(n, size=2, replace=False):
        found = int(rng.integers(2, MAX_NBR))
        nbr_idx[row, found:], nbr_dist[row, found:] = 0, RADIUS + 1.0
    return {
        "n_atoms": np.asarray(sizes, dtype=np.int32),
        "atomic_numbers": rng.choice(elements, n).astype(np.uint8),
        "nbr_idx": nbr_idx,
        "nbr_dist": nbr_dist,
    }


@pytest.fixture
def model_file() -> ModelFile:
    torch.manual_seed(0)
    table = np.random.default_rng(0).random((101, 92)).astype(np.float32)
    model = CrystalGraphNet(feature_table=table, steps=3, shared=True).eval()
    return ModelFile.from_model(
        model,
        graph_settings={"radius": RADIUS, "max_nbr": MAX_NBR},
        target="formation_energy_per_atom",
        unit="eV/atom",
        normalizer={"mean": np.float64(-1.5), "std": 0.9},
        training={
            "epochs": 3,
            "split": [0.8, 0.1, 0.1],
            "metrics": {"test_mae": np.float32(0.05)},  # numpy scalars are stored as plain floats
            "command": "srscreen train",
        },
    )


def test_round_trip_predicts_the_same(model_file, tmp_path):
    path = tmp_path / "ef.pt"
    model_file.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["ef.pt"]  # no temporary file left behind
    loaded = ModelFile.load(path)
    for name in ("architecture", "feature_table_id", "graph_settings", "target", "unit", "normalizer", "training"):
        assert getattr(loaded, name) == getattr(model_file, name), name
    assert loaded.state_dict.keys() == model_file.state_dict.keys()
    assert loaded.normalizer == {"mean": -1.5, "std": 0.9}
    assert loaded.training["metrics"]["test_mae"] == pytest.approx(0.05)
    batch = collate(**small_graphs([3, 5], seed=1, elements=[8, 14, 26]))
    with torch.no_grad():
        before = model_file.denormalise(model_file.build_model()(batch))
        after = loaded.denormalise(loaded.build_model()(batch))
    torch.testing.assert_close(after, before, rtol=0, atol=0)


def test_model_file_is_data_loadable_without_unpickling_code(model_file, tmp_path):
    path = tmp_path / "ef.pt"
    model_file.save(path)
    payload = torch.load(path, weights_only=True)
    assert payload["schema_version"] == SCHEMA_VERSION
    assert payload["architecture"] == {
        "steps": 3, "shared": True, "atom_fea_len": 64, "h_fea_len": 128, "n_h": 1, "radius": 8.0, "gaussian_step": 0.2,
    }  # fmt: skip
    assert payload["graph_settings"] == {"radius": 8.0, "max_nbr": 12}
    assert payload["target"] == "formation_energy_per_atom" and payload["unit"] == "eV/atom"
    assert payload["feature_table_id"].startswith("sha256:")


def test_save_refuses_what_is_not_data(model_file, tmp_path):
    model_file.training["optimizer"] = torch.optim.SGD  # a class would need unpickling code
    with pytest.raises(TypeError, match="model file.training.optimizer"):
        model_file.save(tmp_path / "bad.pt")
    assert list(tmp_path.iterdir()) == []


def _saved_payload(model_file: ModelFile, tmp_path: Path) -> dict:
    model_file.save(tmp_path / "good.pt")
    return torch.load(tmp_path / "good.pt", weights_only=True)


def _load_error(path: Path) -> str:
    with pytest.raises(ModelFileError) as info:
        ModelFile.load(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


def test_missing_keys_are_named(model_file, tmp_path):
    payload = _saved_payload(model_file, tmp_path)
    del payload["normalizer"], payload["graph_settings"]
    torch.save(payload, tmp_path / "m.pt")
    assert "missing keys: graph_settings, normalizer" in _load_error(tmp_path / "m.pt")


def test_newer_schema_asks_for_an_upgrade(model_file, tmp_path):
    payload = _saved_payload(model_file, tmp_path)
    payload["schema_version"] = SCHEMA_VERSION + 1
    torch.save(payload, tmp_path / "m.pt")
    assert "newer srscreen" in _load_error(tmp_path / "m.pt")


class Hook:
    """An object whose loading would need this module's code."""


def test_unreadable_files_fail_in_one_line(model_file, tmp_path):
    (tmp_path / "garbage.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    assert "not a readable srscreen model file" in _load_error(tmp_path / "garbage.pt")
    model_file.save(tmp_path / "cut.pt")
    data = (tmp_path / "cut.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    _load_error(tmp_path / "cut.pt")
    assert "cannot read" in _load_error(tmp_path / "absent.pt")
    torch.save({"schema_version": 1, "training": {"hook": Hook()}}, tmp_path / "code.pt")
    assert "weights-only loader" in _load_error(tmp_path / "code.pt")  # never unpickled
    torch.save({"state_dict": {}, "args": {}, "normalizer": {}, "epoch": 1}, tmp_path / "cgcnn.pth.tar")
    assert "convert_cgcnn_checkpoint" in _load_error(tmp_path / "cgcnn.pth.tar")


def test_tampered_weights_are_caught(model_file, tmp_path):
    payload = _saved_payload(model_file, tmp_path)
    payload["state_dict"]["feature_table"][26, 0] += 1.0
    torch.save(payload, tmp_path / "table.pt")
    assert "feature_table_id" in _load_error(tmp_path / "table.pt")
    payload = _saved_payload(model_file, tmp_path)
    payload["architecture"]["steps"] = 4
    torch.save(payload, tmp_path / "arch.pt")
    assert "weights do not fit the architecture" in _load_error(tmp_path / "arch.pt")


# --- CGCNN conversion, checked against a literal port of txie-93/cgcnn (cgcnn/model.py, cgcnn/data.py) ---


class GaussianDistance:
    def __init__(self, dmin, dmax, step, var=None):
        assert dmin < dmax
        assert dmax - dmin > step
        self.filter = np.arange(dmin, dmax + step, step)
        if var is None:
            var = step
        self.var = var

    def expand(self, distances):
        return np.exp(-((distances[..., np.newaxis] - self.filter) ** 2) / self.var**2)


class ConvLayer(nn.Module):
    def __init__(self, atom_fea_len, nbr_fea_len):
        super().__init__()
        self.atom_fea_len = atom_fea_len
        self.nbr_fea_len = nbr_fea_len
        self.fc_full = nn.Linear(2 * self.atom_fea_len + self.nbr_fea_len, 2 * self.atom_fea_len)
        self.sigmoid = nn.Sigmoid()
        self.softplus1 = nn.Softplus()
        self.bn1 = nn.BatchNorm1d(2 * self.atom_fea_len)
        self.bn2 = nn.BatchNorm1d(self.atom_fea_len)
        self.softplus2 = nn.Softplus()

    def forward(self, atom_in_fea, nbr_fea, nbr_fea_idx):
        N, M = nbr_fea_idx.shape
        atom_nbr_fea = atom_in_fea[nbr_fea_idx, :]
        total_nbr_fea = torch.cat(
            [atom_in_fea.unsqueeze(1).expand(N, M, self.atom_fea_len), atom_nbr_fea, nbr_fea], dim=2
        )
        total_gated_fea = self.fc_full(total_nbr_fea)
        total_gated_fea = self.bn1(total_gated_fea.view(-1, self.atom_fea_len * 2)).view(N, M, self.atom_fea_len * 2)
        nbr_filter, nbr_core = total_gated_fea.chunk(2, dim=2)
        nbr_filter = self.sigmoid(nbr_filter)
        nbr_core = self.softplus1(nbr_core)
        nbr_sumed = torch.sum(nbr_filter * nbr_core, dim=1)
        nbr_sumed = self.bn2(nbr_sumed)
        out = self.softplus2(atom_in_fea + nbr_sumed)
        return out


class CrystalGraphConvNet(nn.Module):
    def __init__(self, orig_atom_fea_len, nbr_fea_len, atom_fea_len=64, n_conv=3, h_fea_len=128, n_h=1):
        super().__init__()
        self.embedding = nn.Linear(orig_atom_fea_len, atom_fea_len)
        self.convs = nn.ModuleList([ConvLayer(atom_fea_len=atom_fea_len, nbr_fea_len=nbr_fea_len)
                                    for _ in range(n_conv)])
        self.conv_to_fc = nn.Linear(atom_fea_len, h_fea_len)
        self.conv_to_fc_softplus = nn.Softplus()
        if n_h > 1:
            self.fcs = nn.ModuleList([nn.Linear(h_fea_len, h_fea_len) for _ in range(n_h - 1)])
            self.softpluses = nn.ModuleList([nn.Softplus() for _ in range(n_h - 1)])
        self.fc_out = nn.Linear(h_fea_len, 1)

    def forward(self, atom_fea, nbr_fea, nbr_fea_idx, crystal_atom_idx):
        atom_fea = self.embedding(atom_fea)
        for conv_func in self.convs:
            atom_fea = conv_func(atom_fea, nbr_fea, nbr_fea_idx)
        crys_fea = self.pooling(atom_fea, crystal_atom_idx)
        crys_fea = self.conv_to_fc(self.conv_to_fc_softplus(crys_fea))
        crys_fea = self.conv_to_fc_softplus(crys_fea)
        if hasattr(self, "fcs") and hasattr(self, "softpluses"):
            for fc, softplus in zip(self.fcs, self.softpluses):
                crys_fea = softplus(fc(crys_fea))
        out = self.fc_out(crys_fea)
        return out

    def pooling(self, atom_fea, crystal_atom_idx):
        assert sum([len(idx_map) for idx_map in crystal_atom_idx]) == atom_fea.data.shape[0]
        summed_fea = [torch.mean(atom_fea[idx_map], dim=0, keepdim=True) for idx_map in crystal_atom_idx]
        return torch.cat(summed_fea, dim=0)


def cgcnn_predict(checkpoint: dict, atom_init: dict, graphs: dict[str, np.ndarray]) -> np.ndarray:
    """CGCNN's own path: per-crystal inputs (AtomCustomJSONInitializer, GaussianDistance), collate_pool, model."""
    args = checkpoint["args"]
    gdf = GaussianDistance(dmin=0, dmax=RADIUS, step=0.2)
    model = CrystalGraphConvNet(
        92, len(gdf.filter), atom_fea_len=args["atom_fea_len"], n_conv=args["n_conv"],
        h_fea_len=args["h_fea_len"], n_h=args["n_h"],
    )  # fmt: skip
    model.load_state_dict(checkpoint["state_dict"])
    model.eval()
    batch_atom_fea, batch_nbr_fea, batch_nbr_fea_idx, crystal_atom_idx = [], [], [], []
    base_idx, start = 0, 0
    for n_i in graphs["n_atoms"]:
        atoms = slice(start, start + n_i)
        atom_fea = np.vstack([atom_init[str(z)] for z in graphs["atomic_numbers"][atoms]])
        nbr_fea = gdf.expand(np.array(graphs["nbr_dist"][atoms], dtype=np.float64))
        batch_atom_fea.append(torch.Tensor(atom_fea))
        batch_nbr_fea.append(torch.Tensor(nbr_fea))
        batch_nbr_fea_idx.append(torch.LongTensor(graphs["nbr_idx"][atoms].astype(np.int64)) + base_idx)
        crystal_atom_idx.append(torch.LongTensor(np.arange(n_i) + base_idx))
        base_idx += n_i
        start += n_i
    with torch.no_grad():
        out = model(torch.cat(batch_atom_fea), torch.cat(batch_nbr_fea), torch.cat(batch_nbr_fea_idx), crystal_atom_idx)
    normalizer = checkpoint["normalizer"]
    return (out.squeeze(1) * float(normalizer["std"]) + float(normalizer["mean"])).numpy()


@pytest.mark.parametrize(
    ("name", "target", "unit"),
    [("formation-energy-per-atom", "formation_energy_per_atom", "eV/atom"), ("band-gap", "band_gap", "eV")],
)
def test_converted_cgcnn_checkpoint_predicts_what_cgcnn_predicts(name, target, unit, tmp_path):
    if not CGCNN_REFERENCE.is_dir():
        pytest.skip(f"original CGCNN checkpoints not present at {CGCNN_REFERENCE}")
    checkpoint_path = CGCNN_REFERENCE / f"{name}.pth.tar"
    atom_init_path = CGCNN_REFERENCE / "atom_init.json"
    converted = convert_cgcnn_checkpoint(checkpoint_path, atom_init_path, target=target, unit=unit)
    converted.save(tmp_path / f"{name}.pt")
    model_file = ModelFile.load(tmp_path / f"{name}.pt")
    assert model_file.architecture["steps"] == 4 and model_file.architecture["shared"] is False
    assert model_file.architecture["h_fea_len"] == 32
    assert (model_file.target, model_file.unit) == (target, unit)
    assert model_file.graph_settings == {"radius": 8.0, "max_nbr": 12}

    graphs = small_graphs([2, 8, 5], seed=4, elements=[3, 8, 14, 26, 29, 56])
    with torch.no_grad():
        ours = model_file.denormalise(model_file.build_model()(collate(**graphs))).numpy()
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    want = cgcnn_predict(checkpoint, json.loads(atom_init_path.read_text()), graphs)
    np.testing.assert_allclose(ours, want, rtol=0, atol=1e-5)
    assert np.ptp(want) > 1e-3  # the crystals differ, so a constant output would have failed
