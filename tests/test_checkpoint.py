"""Model files: a saved model predicts what it predicted before, loads as data only, fails in one line,
detects its own damage (a digest: damaged bytes never load as a different model), and an original CGCNN
checkpoint converts into a model that predicts what CGCNN's own code predicts."""

from __future__ import annotations

import inspect
import json
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from srscreen.data.batch import collate
from srscreen.model.model_file import SCHEMA_VERSION, ModelFile, ModelFileError, convert_cgcnn_checkpoint, payload_digest
from srscreen.model.network import CrystalGraphNet

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


def batch_of(graphs: dict[str, np.ndarray]):
    """`collate` of `small_graphs`: every neighbour slot (padding too, as CGCNN has it) is an edge.

    Works with collate's fixed-width (N, M) form and with its CSR form (`n_edges` per atom, edges flat):
    the batch code is moving from the first to the second; drop the first branch once that is committed.
    """
    if "n_edges" not in inspect.signature(collate).parameters:
        return collate(**graphs)
    n, m = graphs["nbr_idx"].shape
    return collate(n_atoms=graphs["n_atoms"], atomic_numbers=graphs["atomic_numbers"], n_edges=np.full(n, m),
                   nbr_idx=graphs["nbr_idx"].reshape(-1), nbr_dist=graphs["nbr_dist"].reshape(-1))  # fmt: skip


@pytest.fixture
def model_file() -> ModelFile:
    torch.manual_seed(0)
    table = np.random.default_rng(0).random((101, 92)).astype(np.float32)
    model = CrystalGraphNet(feature_table=table, steps=3, shared=True).eval()
    return ModelFile.from_model(
        model,
        graph_settings={"radius": RADIUS, "max_nbr": MAX_NBR},
        targets=["formation_energy_per_atom"],
        units=["eV/atom"],
        normalizers=[{"mean": np.float64(-1.5), "std": 0.9}],
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
    for name in ("architecture", "feature_table_id", "graph_settings", "targets", "units", "normalizers", "training"):
        assert getattr(loaded, name) == getattr(model_file, name), name
    assert loaded.state_dict.keys() == model_file.state_dict.keys()
    assert loaded.normalizer == {"mean": -1.5, "std": 0.9}
    assert loaded.training["metrics"]["test_mae"] == pytest.approx(0.05)
    batch = batch_of(small_graphs([3, 5], seed=1, elements=[8, 14, 26]))
    with torch.no_grad():
        before = model_file.values(model_file.build_model()(batch))
        after = loaded.values(loaded.build_model()(batch))
    torch.testing.assert_close(after, before, rtol=0, atol=0)


def test_legacy_one_target_files_load_as_the_same_model(model_file, tmp_path):
    """A schema 1-3 file (target, unit, normalizer; the head as conv_to_fc/fcs/fc_out) predicts what it did."""
    model_file.save(tmp_path / "new.pt")
    payload = torch.load(tmp_path / "new.pt", weights_only=True)
    legacy = {k: v for k, v in payload.items() if k not in ("targets", "units", "normalizers", "digest")}
    legacy["architecture"] = {k: v for k, v in legacy["architecture"].items() if k not in ("n_targets", "scale_head")}
    legacy["state_dict"] = {k.removeprefix("heads.0."): v for k, v in legacy["state_dict"].items()}
    legacy.update(schema_version=2, target="formation_energy_per_atom", unit="eV/atom", normalizer={"mean": -1.5, "std": 0.9})
    assert any(k.startswith("fc_out") for k in legacy["state_dict"])
    _edited(legacy, tmp_path / "legacy.pt")
    loaded = ModelFile.load(tmp_path / "legacy.pt")
    assert (loaded.target, loaded.unit, loaded.normalizer) == ("formation_energy_per_atom", "eV/atom", {"mean": -1.5, "std": 0.9})
    batch = batch_of(small_graphs([3, 5], seed=1, elements=[8, 14, 26]))
    with torch.no_grad():
        before = model_file.values(model_file.build_model()(batch))["formation_energy_per_atom"]
        after = loaded.values(loaded.build_model()(batch))["formation_energy_per_atom"]
    torch.testing.assert_close(after, before, rtol=0, atol=0)


def test_model_file_is_data_loadable_without_unpickling_code(model_file, tmp_path):
    path = tmp_path / "ef.pt"
    model_file.save(path)
    payload = torch.load(path, weights_only=True)
    assert payload["schema_version"] == SCHEMA_VERSION
    assert payload["architecture"] == {
        "steps": 3, "shared": True, "atom_fea_len": 64, "h_fea_len": 128, "n_h": 1, "radius": 8.0, "gaussian_step": 0.2,
        "n_targets": 1, "scale_head": False,
    }  # fmt: skip
    assert payload["graph_settings"] == {"radius": 8.0, "max_nbr": 12}
    assert payload["targets"] == ["formation_energy_per_atom"] and payload["units"] == ["eV/atom"]
    assert payload["feature_table_id"].startswith("sha256:")
    assert payload["digest"].startswith("sha256:") and payload["digest"] == payload_digest(payload)


def test_save_refuses_what_is_not_data(model_file, tmp_path):
    model_file.training["optimizer"] = torch.optim.SGD  # a class would need unpickling code
    with pytest.raises(TypeError, match="model file.training.optimizer"):
        model_file.save(tmp_path / "bad.pt")
    assert list(tmp_path.iterdir()) == []


def _saved_payload(model_file: ModelFile, tmp_path: Path) -> dict:
    model_file.save(tmp_path / "good.pt")
    return torch.load(tmp_path / "good.pt", weights_only=True)


def _edited(payload: dict, path: Path) -> Path:
    """Save an edited payload with its digest recomputed: an edit, not damage, so the checks behind it run."""
    torch.save({**payload, "digest": payload_digest(payload)}, path)
    return path


def _load_error(path: Path) -> str:
    with pytest.raises(ModelFileError) as info:
        ModelFile.load(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


def test_missing_keys_are_named(model_file, tmp_path):
    payload = _saved_payload(model_file, tmp_path)
    del payload["normalizers"], payload["graph_settings"]
    assert "missing keys: graph_settings, normalizers" in _load_error(_edited(payload, tmp_path / "m.pt"))


def test_newer_schema_asks_for_an_upgrade(model_file, tmp_path):
    payload = _saved_payload(model_file, tmp_path)
    payload["schema_version"] = SCHEMA_VERSION + 1
    message = _load_error(_edited(payload, tmp_path / "m.pt"))
    assert "newer srscreen" in message and "damaged" not in message
    torch.save(payload, tmp_path / "changed.pt")  # the version alone changed: damage, or a newer digest scheme
    assert "upgrade srscreen (or the file is damaged: digest mismatch" in _load_error(tmp_path / "changed.pt")


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
    assert "feature_table_id" in _load_error(_edited(payload, tmp_path / "table.pt"))
    payload = _saved_payload(model_file, tmp_path)
    payload["architecture"]["steps"] = 4
    assert "weights do not fit the architecture" in _load_error(_edited(payload, tmp_path / "arch.pt"))


# --- the digest: a file whose bytes changed after `save` never loads as a different model ---


def test_digest_is_saved_and_checked(model_file, tmp_path):
    model_file.save(tmp_path / "a.pt")
    loaded = ModelFile.load(tmp_path / "a.pt")
    loaded.save(tmp_path / "b.pt")
    first, second = (torch.load(tmp_path / n, weights_only=True)["digest"] for n in ("a.pt", "b.pt"))
    assert first == second  # of the content, not of the file's bytes (torch writes a new serialization id)
    assert (tmp_path / "a.pt").read_bytes() != (tmp_path / "b.pt").read_bytes()


@pytest.mark.parametrize(
    "change",
    [
        lambda p: p["state_dict"]["heads.0.fc_out.weight"].view(-1)[0].add_(1e-6),  # one weight, a little
        lambda p: p["state_dict"].update({"heads.0.fc_out.bias": p["state_dict"]["heads.0.fc_out.bias"].double()}),  # dtype only
        lambda p: p["normalizers"][0].update(mean=-1.25),
        lambda p: p["training"].update(epochs=4.0),  # 3 -> 4.0: type and value
        lambda p: p.update(units=["meV/atom"]),
        lambda p: p.update(extra=1),  # keys no srscreen reads are covered too
    ],
    ids=["weight", "dtype", "normalizer", "training", "unit", "extra key"],
)
def test_any_change_without_a_new_digest_is_damage(model_file, tmp_path, change):
    payload = _saved_payload(model_file, tmp_path)
    change(payload)
    torch.save(payload, tmp_path / "changed.pt")
    message = _load_error(tmp_path / "changed.pt")
    assert message.startswith(f"{tmp_path / 'changed.pt'}: damaged model file (digest mismatch: stored sha256:")


def test_schema_1_files_load_without_a_digest(model_file, tmp_path):
    """Files written before digests still load; a damaged version byte cannot switch the check off."""
    payload = _saved_payload(model_file, tmp_path)
    old = {k: v for k, v in payload.items() if k != "digest"}
    torch.save({**old, "schema_version": 1}, tmp_path / "v1.pt")
    assert ModelFile.load(tmp_path / "v1.pt").normalizer == model_file.normalizer
    torch.save(old, tmp_path / "v2-no-digest.pt")
    assert "damaged model file (no digest)" in _load_error(tmp_path / "v2-no-digest.pt")
    torch.save({**payload, "schema_version": 1}, tmp_path / "v1-with-digest.pt")
    assert "damaged model file (digest mismatch" in _load_error(tmp_path / "v1-with-digest.pt")
    torch.save({**payload, "digest": 12}, tmp_path / "bad-digest.pt")
    assert "damaged model file (digest 12 is not a sha256 digest)" in _load_error(tmp_path / "bad-digest.pt")


def test_digest_covers_values_types_and_tensor_layout():
    base = {"a": 1, "t": torch.arange(4, dtype=torch.int32), "m": {"x": [1.0, "s", None, True]}}
    variants = [
        {**base, "a": 1.0},
        {**base, "a": True},
        {**base, "t": torch.arange(4, dtype=torch.int32).view(torch.float32)},  # same bytes, other dtype
        {**base, "t": torch.arange(4, dtype=torch.int32).view(2, 2)},  # same bytes, other shape
        {**base, "m": {"x": [1.0, "s", None, 1]}},
        {**base, "m": {"x": [1.0, "s"], "y": None}},
    ]
    digests = {payload_digest(p) for p in [base, *variants]}
    assert len(digests) == 1 + len(variants)
    assert payload_digest({"m": {"x": [1.0, "s", None, True]}, "t": torch.arange(4, dtype=torch.int32), "a": 1}) \
        == payload_digest(base)  # key order does not matter
    assert payload_digest({**base, "digest": "anything"}) == payload_digest(base)
    t = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    assert payload_digest({"t": t.t()}) == payload_digest({"t": t.t().contiguous()})  # values, not strides
    assert payload_digest({"t": t.bfloat16()}) != payload_digest({"t": t.half()})  # dtypes numpy lacks


def tiny_model_file() -> ModelFile:
    """A small model (~54 kB file) so that many damaged copies load in well under a second."""
    torch.manual_seed(1)
    table = np.random.default_rng(1).random((101, 92)).astype(np.float32)
    model = CrystalGraphNet(feature_table=table, steps=2, shared=True, atom_fea_len=8, h_fea_len=16).eval()
    return ModelFile.from_model(
        model,
        graph_settings={"radius": RADIUS, "max_nbr": MAX_NBR},
        targets=["formation_energy_per_atom"],
        units=["eV/atom"],
        normalizers=[{"mean": -1.5, "std": 0.9}],
        training={"epochs": 2, "split": {"test": ["mp-1", "mp-22"]}, "metrics": {"test_mae": 0.05}},
    )


def _damaged_copies(intact: Path, folder: Path, seed: int) -> list[tuple[int, Path]]:
    """Copies of `intact` with 16 bytes inverted at seeded offsets: anywhere in the file, and more in the two
    places where a flip is read as structure rather than numbers (the pickle, and the zip directory)."""
    data = intact.read_bytes()
    with zipfile.ZipFile(intact) as z:
        pickle_end = next(i.header_offset + 100 + i.compress_size for i in z.infolist() if i.filename.endswith("data.pkl"))
        directory = max(i.header_offset + 100 + i.compress_size for i in z.infolist())
    rng = np.random.default_rng(seed)
    offsets = np.concatenate([
        rng.integers(0, len(data) - 16, 60),
        rng.integers(0, pickle_end, 30),
        rng.integers(min(directory, len(data) - 16), len(data) - 16, 20),
    ])  # fmt: skip
    copies = []
    for offset in offsets.tolist():
        damaged = bytearray(data)
        damaged[offset : offset + 16] = bytes(b ^ 0xFF for b in damaged[offset : offset + 16])
        path = folder / f"damaged-at-{offset}.pt"
        path.write_bytes(damaged)
        copies.append((offset, path))
    return copies


def _same_model(a: ModelFile, b: ModelFile, batch) -> bool:
    fields = ("architecture", "feature_table_id", "graph_settings", "targets", "units", "normalizers", "training",
              "srscreen_version")  # fmt: skip
    if any(getattr(a, f) != getattr(b, f) for f in fields) or a.state_dict.keys() != b.state_dict.keys():
        return False
    for key, tensor in a.state_dict.items():
        other = b.state_dict[key]
        if tensor.dtype != other.dtype or tensor.shape != other.shape or not torch.equal(tensor, other):
            return False
    with torch.no_grad():
        return all(torch.equal(x, y) for x, y in zip(a.values(a.build_model()(batch)).values(),
                                                     b.values(b.build_model()(batch)).values()))


def test_damaged_bytes_give_the_intact_model_or_one_line(tmp_path):
    """16 bytes inverted at 110 seeded offsets: each copy loads as exactly the intact model, or fails with one
    line naming the file. Never a different model, never a traceback."""
    intact = tmp_path / "tiny.pt"
    tiny_model_file().save(intact)
    reference = ModelFile.load(intact)
    batch = batch_of(small_graphs([3, 5], seed=2, elements=[8, 14, 26]))
    outcomes = {"same": 0, "digest": 0, "unreadable": 0}
    for offset, path in _damaged_copies(intact, tmp_path, seed=20240611):
        try:
            loaded = ModelFile.load(path)
        except ModelFileError as exc:
            message = str(exc)
            assert "\n" not in message and message.startswith(f"{path}: "), (offset, message)
            kind = "digest" if "damaged model file (digest mismatch" in message else "unreadable"
            assert kind == "digest" or "not a readable srscreen model file" in message, (offset, message)
            outcomes[kind] += 1
        else:
            assert _same_model(loaded, reference, batch), f"damage at byte {offset} loaded as a different model"
            outcomes["same"] += 1
    assert outcomes["digest"] >= 20 and outcomes["unreadable"] >= 20, outcomes  # both defences were exercised


@pytest.mark.slow
def test_damaged_model_through_the_cli_exits_2_with_one_line(tmp_path):
    from helpers.screening_data import SRSCREEN, subprocess_env  # imports the CLI: only this test should need it

    intact = tmp_path / "tiny.pt"
    tiny_model_file().save(intact)
    copies = [path for _, path in _damaged_copies(intact, tmp_path, seed=7)]

    def fails(path: Path) -> bool:
        try:
            ModelFile.load(path)
        except ModelFileError:
            return True
        return False

    # A copy that fails to load from each part: anywhere (mostly weights: the digest), the pickle, the directory.
    picks = [next(filter(fails, part)) for part in (copies[:60], copies[60:90], copies[90:])]
    for path in picks:
        proc = subprocess.run([*SRSCREEN, "models", str(path)], capture_output=True, text=True,
                              env=subprocess_env(), timeout=120)  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        assert proc.stdout == "" and "Traceback" not in proc.stderr
        assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: "), repr(proc.stderr)
        assert str(path) in proc.stderr and "damaged" in proc.stderr


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
        ours = model_file.values(model_file.build_model()(batch_of(graphs)))[target].numpy()
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    want = cgcnn_predict(checkpoint, json.loads(atom_init_path.read_text()), graphs)
    np.testing.assert_allclose(ours, want, rtol=0, atol=1e-5)
    assert np.ptp(want) > 1e-3  # the crystals differ, so a constant output would have failed
