"""Whether torch.compile really compiled inside a block, for the compiled-vs-eager tests (helpers, not tests)."""

from __future__ import annotations

import shutil
import warnings
from contextlib import contextmanager

import pytest


@contextmanager
def really_compiled():
    """The block must compile at least one graph with torch.compile and never fall back to eager
    (srscreen.model.compiled.Compiled warns "torch.compile failed" when it does: here that is an error)."""
    if shutil.which("c++") is None:
        pytest.skip("no C++ compiler (c++) on PATH: inductor cannot build kernels, so srscreen runs eagerly")
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()  # a graph an earlier test compiled would be reused without being counted
    before = counters["stats"]["unique_graphs"]
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="torch.compile failed")
        yield
    assert counters["stats"]["unique_graphs"] > before, "torch.compile compiled nothing: the 'compiled' run ran eagerly"
