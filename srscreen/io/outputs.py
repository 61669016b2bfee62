"""What every command that writes checks first: never over one of its own inputs, never over an existing
file the user did not name with `overwrite`, and never into an output another process is writing.

One owner for the rule, so that every command (featurize, predict, merge, train, finetune, ensemble,
import-cgcnn, evaluate --plot, fetch-mp) refuses the same cases with the same words:

- A written path (OUT, or what is written beside it: OUT.partial/, OUT.ckpt, ...) that is an input, or a
  folder that holds one, is refused whatever `overwrite` says: overwriting it would destroy what the run
  reads. Paths are compared after resolving symlinks, and existing files also by inode (hard links).
  An output inside an input folder is fine (`featurize . out.h5`): featurize leaves its own files out of
  the listing.
- An existing OUT is replaced only with `overwrite`; an OUT that is a folder never.
- `output_lock(OUT)` holds an flock on OUT.lock while a run writes OUT: a second run into the same OUT
  (with or without `overwrite`) is refused, naming the first one's pid. The kernel drops the lock when
  its process dies, however it dies, so a killed run never blocks the next.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from srscreen.errors import InputError

LOCK_SUFFIX = ".lock"


def _real(path: Path) -> str:
    return os.path.realpath(os.path.abspath(path))


def _inode(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def check_not_an_input(written: Iterable[Path], reads: Iterable[Path | None]) -> None:
    """Refuse when a path this command writes (or removes) is one of its inputs or a folder holding one,
    or has a name longer than its file system takes."""
    written = [Path(w) for w in written]
    _check_names_fit(written)
    reads = [Path(r) for r in reads if r is not None]
    for out in written:
        out = Path(out)
        real, inode = _real(out), _inode(out)
        for source in reads:
            source_real = _real(source)
            if real == source_real or (inode is not None and inode == _inode(source)):
                raise InputError(f"{out} is also an input of this command ({source}); write the output to another path")
            if source_real.startswith(real.rstrip(os.sep) + os.sep):
                raise InputError(f"{out} is a folder that holds the input {source}; write the output to another path")


def check_distinct_outputs(outputs: dict[str, Path | None]) -> None:
    """Refuse two outputs of one command (by parameter name; None: not written) that are one file: the
    second written would replace the first (predict's ranking over its --damaged-list, with `overwrite`;
    without it the ranking was refused as a file that appeared meanwhile)."""
    seen: dict[str, str] = {}
    for name, path in outputs.items():
        if path is None:
            continue
        first = seen.setdefault(_real(Path(path)), name)
        if first != name:
            raise InputError(f"`{first}` and `{name}` are the same file ({path}); name two")


def _check_names_fit(written: list[Path]) -> None:
    """A legal OUT name can still be too long once `.partial`, `.lock` or `.log.jsonl` is added: say so
    before any work, naming OUT, not only after it (as an errno line naming a file the user never named)."""
    for path in written:
        try:
            limit = os.pathconf(path.parent if path.parent.is_dir() else ".", "PC_NAME_MAX")
        except (OSError, ValueError):
            limit = 255
        if len(os.fsencode(path.name)) > limit:
            extra = len(os.fsencode(path.name)) - len(os.fsencode(written[0].name))
            raise InputError(f"{written[0]}: name too long ({len(os.fsencode(written[0].name))} bytes): with the "
                             f"files written beside it it must be at most {limit - extra} bytes")


def check_output(out: Path, reads: Iterable[Path | None] = (), *, overwrite: bool, beside: Iterable[Path] = ()) -> None:
    """The checks for a file a command writes whole: not an input (nor is any path written `beside` it),
    not a folder, and not an existing file unless `overwrite`."""
    out = Path(out)
    check_not_an_input([out, *beside], reads)
    if out.is_dir():
        raise InputError(f"{out} is a folder; name the file to write")
    if not out.parent.is_dir():
        raise InputError(f"{out}: folder {out.parent} does not exist")
    if out.exists() and not overwrite:
        raise InputError(f"{out} exists; use `overwrite=True` to replace it, or write to another path")
    check_no_broken_link(out, overwrite=overwrite)


def check_no_broken_link(out: Path, *, overwrite: bool) -> None:
    """A symbolic link at OUT that leads nowhere (or round in a loop) is still the user's file: the
    rename that writes OUT would replace it, so only with `overwrite`."""
    if not overwrite and os.path.islink(out) and not os.path.exists(out):
        raise InputError(f"{out} is a symbolic link that leads nowhere (to {os.readlink(out)}); use `overwrite=True` "
                         "to replace it, or write to another path")


def lock_path(out: Path) -> Path:
    return out.with_name(out.name + LOCK_SUFFIX)


@contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """Hold OUT.lock (an exclusive flock, with this process's pid in it) while the block writes OUT.

    Raises InputError at once when another live process holds it. The file goes when the block ends;
    one left by a killed process is taken over (its lock died with it).
    """
    lock = lock_path(Path(out))
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise InputError(f"{out} is being written by another srscreen process (pid {holder}); wait for it to "
                             f"finish, or write to another path") from None
        except BaseException:
            os.close(fd)
            raise
        # The holder before us may have removed the file between our open and our lock: then ours is a
        # lock on a file nobody else can see; take the one at the path instead.
        if _inode(lock) == (os.fstat(fd).st_dev, os.fstat(fd).st_ino):
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        lock.unlink(missing_ok=True)  # while still holding it, so no one locks the file we remove
        os.close(fd)
