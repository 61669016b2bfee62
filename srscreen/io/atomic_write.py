"""Files that appear whole or not at all: written under a temporary name beside the target, then renamed."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def replace_when_done(path: Path) -> Iterator[Path]:
    """Yield PATH.tmp to write; rename it over `path` only if the block finishes, else remove it.

    A crash or a kill mid-write leaves `path` as it was (a killed process may leave PATH.tmp, which
    the next write replaces). The rename is atomic on POSIX file systems.
    """
    tmp = path.with_name(path.name + ".tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
