"""Misuse beyond issue 25's list, found by trying srscreen as careless and hostile users do: each case
ends with the right result, one line naming the file or flag, or a recorded failure with its reason.
Every input is built here from the pymatgen prototypes."""

from __future__ import annotations

import resource
import subprocess

import pytest
from conftest import cif_text, graphs_in
from helpers.screening_data import SRSCREEN, subprocess_env

from srscreen.data.graph_file import GraphFile


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))


@pytest.mark.slow
def test_a_giant_sparse_cell_is_a_failure_and_far_out_atoms_are_wrapped(tmp_path, prototypes):
    """A 10^6 Å cell asked the neighbour search for petabytes (the OOM killer ended the whole run) and a
    fractional coordinate of 10^12 for 10^12 periodic images: now the first is a failure with its reason,
    the second the crystal it describes, and the run goes on, under a 4 GB address-space limit."""
    from pymatgen.core import Lattice, Structure

    src = tmp_path / "in"
    src.mkdir()
    nacl = prototypes["NaCl"].get_primitive_structure()
    (src / "good.cif").write_text(cif_text(nacl))
    giant = Structure(Lattice.cubic(1e6), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    (src / "giant.cif").write_text(cif_text(giant))
    far = cif_text(nacl).replace("  Na  Na1  1  0.00000000  0.00000000  0.00000000  1",
                                 "  Na  Na1  1  1000000000000.0  0.00000000  -3000000.0  1")
    assert far != cif_text(nacl)
    (src / "far.cif").write_text(far)
    out = tmp_path / "g.h5"
    run = subprocess.run([*SRSCREEN, "featurize", src, out, "-j", "1", "-q"], capture_output=True, text=True,
                         env=subprocess_env(), preexec_fn=_limit_memory, timeout=600)
    assert run.returncode == 0, run.stderr
    with GraphFile(out) as graphs:
        reasons = {f.id: f.reason for f in graphs.failures()}
    assert list(reasons) == ["giant"] and "too sparse a cell for the neighbour search" in reasons["giant"]
    graphs = graphs_in(out)
    assert sorted(graphs) == ["far", "good"]
    assert graphs["far"].nbr_dist.tolist() == pytest.approx(graphs["good"].nbr_dist.tolist(), abs=1e-4)
