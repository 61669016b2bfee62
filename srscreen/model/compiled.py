"""torch.compile with a way out: a machine without a working C++ toolchain still runs, eagerly."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch

from srscreen.errors import one_line


class Compiled:
    """`fn` through torch.compile(dynamic=True), falling back to `fn` itself for good if compiling fails.

    Compiling happens at the first call, so that is where it can fail; eager gives the same numbers.
    """

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.compiled: Callable[..., Any] | None = torch.compile(fn, dynamic=True)

    def __call__(self, *args: Any) -> Any:
        if self.compiled is not None:
            try:
                return self.compiled(*args)
            except Exception as e:  # noqa: BLE001 - inductor raises many types
                warnings.warn(f"torch.compile failed, running without it: {one_line(e, 200)}")
                self.compiled = None
        return self.fn(*args)
