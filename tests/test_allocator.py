"""The allocator tuning: applies once on glibc, is a no-op elsewhere, and never breaks tensor maths."""

import platform

import torch

from srscreen.allocator import reuse_freed_memory


def test_applies_on_glibc_and_is_idempotent():
    first = reuse_freed_memory()
    assert first == (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc")
    assert reuse_freed_memory() == first


def test_large_tensors_stay_correct_after_tuning():
    reuse_freed_memory()
    for _ in range(3):  # freed 64 MB blocks are reused: contents must be what was written, never stale
        x = torch.full((4096, 4096), 2.0)
        assert float(x.sum()) == 2.0 * 4096 * 4096
        del x
