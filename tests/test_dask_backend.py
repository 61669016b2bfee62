"""featurize on a dask.distributed cluster: the same file as on local processes.

The user's story: start a scheduler and workers, run ``srscreen featurize DB out.h5 --backend dask
--scheduler ADDRESS`` and get, shard for shard, the file that a local run writes. Here the cluster
is a LocalCluster of two worker processes on this machine, reached over TCP like a real one.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers.screening_data import assert_usage_error, cli

import srscreen.io.sources as sources
from srscreen.data.backends import compute_backend
from srscreen.data.integrity import CRC_ATTR
from srscreen.data.graph_file import GraphFile

distributed = pytest.importorskip("dask.distributed")
pytestmark = pytest.mark.slow  # a cluster of worker processes


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as c:
        yield c


@pytest.fixture
def mixed_source(database, prototypes, tmp_path, monkeypatch):
    """The fixture database (every file format, an archive member of none) plus an ASE database and a
    streamed entry dump, so every kind of work item crosses to the workers."""
    import ase.db
    from pymatgen.io.ase import AseAtomsAdaptor

    monkeypatch.setattr(sources, "STREAM_JSON_BYTES", 0)
    monkeypatch.setattr(sources, "FRAMES_PER_ITEM", 2)
    db = database.copy_to(tmp_path / "db")
    rows = ase.db.connect(str(db.root / "extra.db"))
    for name in ("NaCl", "Fe", "ZnO"):
        rows.write(AseAtomsAdaptor.get_atoms(prototypes[name]))
    dump = [{"entry_id": f"e-{name}", "structure": prototypes[name].as_dict(), "energy": -1.0} for name in ("Cu", "SrTiO3", "triclinic")]
    (db.root / "dump.json").write_text(json.dumps(dump))
    return db.root


def file_contents(path) -> tuple:
    """Everything a graph file holds but its creation time (and the root attributes' checksum, which covers it)."""
    with GraphFile(path) as f:
        attrs = {k: v for k, v in f.attrs.items() if k not in ("created", CRC_ATTR)}
        shards = [f.read_shard(i) for i in range(len(f.shard_names))]
        return attrs, shards, f.failures(), f.skipped()


def test_dask_cluster_writes_the_file_a_local_run_writes(cluster, mixed_source, tmp_path):
    local, remote = tmp_path / "local.h5", tmp_path / "dask.h5"
    common = ["--shard-size", "4", "-q"]
    result = cli("featurize", mixed_source, local, "--jobs", "1", *common)
    assert result.exit_code == 0, result.output
    result = cli("featurize", mixed_source, remote, "--backend", "dask", "--scheduler", cluster.scheduler_address, *common)
    assert result.exit_code == 0, result.output
    a_attrs, a_shards, a_failed, a_skipped = file_contents(local)
    b_attrs, b_shards, b_failed, b_skipped = file_contents(remote)
    assert a_attrs == b_attrs
    assert a_failed == b_failed and a_skipped == b_skipped
    assert len(a_shards) == len(b_shards) > 3
    for x, y in zip(a_shards, b_shards):
        assert (x.ids, x.formula) == (y.ids, y.formula)
        for name in ("n_atoms", "atomic_numbers", "n_edges", "nbr_idx", "nbr_dist"):
            np.testing.assert_array_equal(getattr(x, name), getattr(y, name))
    ids = {i for s in b_shards for i in s.ids}
    assert {"extra:1", "extra:3", "e-Cu", "e-triclinic", "mp-1000", "traj:3"} <= ids
    # The tasks ran on the cluster's two worker processes, not in this one.
    with distributed.Client(cluster) as client:
        transitions = client.run(lambda dask_worker: dask_worker.state.transition_counter)
    assert len(transitions) == 2 and all(n > 0 for n in transitions.values()), transitions


def test_dask_backend_needs_a_scheduler(database, tmp_path):
    assert_usage_error(cli("featurize", database.root, tmp_path / "x.h5", "--backend", "dask", "-q"), "--scheduler")
    assert_usage_error(cli("featurize", database.root, tmp_path / "x.h5", "--backend", "spark", "-q"), "--backend")
    assert_usage_error(cli("featurize", database.root, tmp_path / "x.h5", "--scheduler", "tcp://h:1", "-q"), "--scheduler")
    assert not (tmp_path / "x.h5.partial").exists(), "refused before any work is started"


def test_unreachable_scheduler_is_one_clear_error():
    with pytest.raises(ValueError, match="cannot reach the dask scheduler at tcp://127.0.0.1:9"):
        with compute_backend("dask", scheduler="tcp://127.0.0.1:9", connect_timeout=0.5):
            pass
