"""Files that appear whole or not at all: written under a temporary name beside the target, then renamed;
the temporary file removed on an error, Ctrl-C or SIGTERM."""

from __future__ import annotations

import errno
import os
import signal
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from srscreen.errors import DiskFullError, InputError

# errnos that mean the device (or the user's quota) is full.
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# A failed writer that gives no errno (torch.save's C++ writer says "unexpected pos 576 vs 534") is
# taken for a full disk when less than this is left free beside the file it was writing.
_FULL_BELOW_BYTES = 1 << 20


@contextmanager
def replace_when_done(path: Path, *, replace: bool = True) -> Iterator[Path]:
    """Yield a temporary file beside `path` to write; rename it over `path` only if the block finishes,
    else remove it. With `replace=False` a `path` that appeared meanwhile (another process's output, a
    file the user made) is kept and InputError raised: the file is linked into place, which fails on an
    existing name, where a rename would replace it.

    The temporary name is unique to this call (`.NAME.XXXXXXXX.tmp`, made with mkstemp), so two
    processes writing the same `path` never write into one file: each renames a whole file, the last
    one wins. A crash or a kill mid-write leaves `path` as it was; an error, Ctrl-C or SIGTERM also
    removes the temporary file (`sigterm_unwinds`; only SIGKILL or a crash can leave it). The rename
    is atomic on POSIX file systems, and the file is flushed to its device first (fsync), so a write
    error the system reports late is caught before the rename, not after.

    A full device (or quota), however the writer reports it, raises `DiskFullError` naming `path`,
    with the temporary file removed.
    """
    path = Path(path)
    with sigterm_unwinds():  # from before the file exists until it is renamed or removed
        yield from _replace_when_done(path, replace)


def _replace_when_done(path: Path, replace: bool) -> Iterator[Path]:
    try:
        # The name cut to fit: `.NAME.XXXXXXXX.tmp` of a 250-byte NAME is too long for the file system.
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name[:200]}.", suffix=".tmp")
    except OSError as e:
        if is_disk_full(e, path.parent):
            raise _no_space(path) from e
        raise
    tmp = Path(name)
    try:
        try:
            os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; the result gets what open() would give it
        finally:
            os.close(fd)
        try:
            yield tmp
            _sync(tmp)
            if replace:
                os.replace(tmp, path)
            else:
                _link_new(tmp, path)
        except DiskFullError:
            raise
        except Exception as e:
            if is_disk_full(e, path.parent):
                raise _no_space(path) from e
            raise
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """While the block runs, SIGTERM raises SystemExit(143) in the main thread instead of ending the
    process on the spot: the command then removes its temporary files and stops its workers as on any
    error (a write in progress through `data.hdf5_out` finishes its file first). Left alone when this
    is not the main thread or someone else already handles SIGTERM (an outer block, the user's program)."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return
    received: list[int] = []

    def exit_143(signum: int, frame: object) -> None:
        received.append(signum)
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, exit_143)
    try:
        yield
    except Exception as exc:
        # The SystemExit can land anywhere, e.g. inside a library starting a thread, whose own clean-up then
        # fails ("cannot join thread before it is started"): the run was still terminated, so it exits as
        # terminated (143, no traceback), not with the clean-up's error.
        if received:
            raise SystemExit(128 + received[0]) from exc
        raise
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _link_new(tmp: Path, path: Path) -> None:
    try:
        os.link(tmp, path)
        return
    except FileExistsError:
        pass
    except OSError:  # a file system without hard links: the check and the rename are then two steps
        if not os.path.lexists(path):
            os.replace(tmp, path)
            return
    raise InputError(f"{path} appeared while this command ran (another process wrote it?); it is kept: use "
                     "`overwrite=True` to replace it, or write to another path")


def is_disk_full(error: BaseException, folder: Path) -> bool:
    """Whether `error`, raised while writing into `folder`, means its device (or quota) is full."""
    if isinstance(error, OSError):
        return error.errno in _FULL_ERRNOS
    try:
        st = os.statvfs(folder)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < _FULL_BELOW_BYTES


def _no_space(path: Path) -> DiskFullError:
    return DiskFullError(f"{path}: no space left on device", path)


def _sync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
